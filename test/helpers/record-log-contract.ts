/**
 * The RecordLog contract (daemon/types.ts) as the uplink relies on it, as one suite that
 * runs against every implementation: test/record-log.test.ts runs it against the
 * in-memory MemoryLog the uplink tests use and against the real Journal on LevelDB on
 * disk, so the stand-in cannot drift from the journal it stands in for.
 *
 * Owns: the cases (head/acked/oldest on an empty log, read ranges and limits, the hash
 * chain the cloud verifies, ack's ignore-and-clamp rule, onAppend after a durable append,
 * compaction and JOURNAL_COMPACTED, the same log after a reopen). Must never: know which
 * implementation it runs against (what differs goes in the Subject an implementation
 * hands in).
 */
import type { Test } from 'tap'
import { CHAIN_START, recordHash, verifyChain } from '../../daemon/uplink/chain.js'
import type { JournalRecord, RecordBody, RecordLog } from '../../core/types.js'
import { bodies } from './memory-log.js'

/** One implementation under test, as its owner drives it. */
export interface Subject {
  log: RecordLog
  /** One durable step holding `records` (the journal's commit); resolves with the sealed records. */
  append(records: RecordBody[]): Promise<JournalRecord[]>
  /** Retention: drops the acknowledged records it may (all records are older than retention here). */
  compact(): Promise<void>
  /** The same log as the next run of the process finds it (the journal: closed cleanly and opened again). */
  reopen(): Promise<Subject>
  close(): Promise<void>
}

export type Make = (t: Test) => Promise<Subject>

async function open(t: Test, make: Make): Promise<Subject> {
  const s = await make(t)
  let current = s
  t.teardown(() => current.close())
  const track = (x: Subject): Subject => ({ ...x, reopen: async () => (current = track(await x.reopen())) })
  return (current = track(s))
}

async function code(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p
    return undefined
  } catch (err) {
    return (err as { code?: string }).code ?? String(err)
  }
}

export function recordLogContract(t: Test, make: Make): void {
  t.test('empty: head 0, acked 0, oldest head+1, reads nothing', async (t) => {
    const { log } = await open(t, make)
    t.equal(log.head(), 0)
    t.equal(log.acked(), 0)
    t.equal(log.oldest(), 1)
    t.same(await log.read(1, 10), [])
    await log.ack(5)
    t.equal(log.acked(), 0, 'an ack on an empty log is clamped to head 0')
  })

  t.test('appends: gapless seq from 1, in order, read by range and limit, a chain the cloud verifies', async (t) => {
    const s = await open(t, make)
    const first = await s.append(bodies(3))
    const second = await s.append(bodies(2, 3))
    t.same(
      [...first, ...second].map((r) => r.seq),
      [1, 2, 3, 4, 5],
      'sealed with seq 1..5',
    )
    t.equal(s.log.head(), 5)
    t.equal(s.log.oldest(), 1)
    const all = await s.log.read(1, 100)
    t.same(
      all.map((r) => r.seq),
      [1, 2, 3, 4, 5],
    )
    t.same(all, [...first, ...second], 'read returns the records append sealed')
    t.same(
      all.map((r) => (r as { sessionId: string }).sessionId),
      ['s-0', 's-1', 's-2', 's-3', 's-4'],
      'bodies kept',
    )
    t.match(verifyChain(all, CHAIN_START), { ok: true, end: { seq: 5, hash: all[4]!.hash } }, "the uplink's chain check holds from the genesis")
    for (const r of all)
      t.equal(r.hash, recordHash(r as unknown as Record<string, unknown>), `seq ${r.seq}: hash is SHA-256 of the canonical record without hash`)
    t.ok(
      all.every((r) => typeof r.bootId === 'string' && r.bootId !== '' && typeof r.clockSynced === 'boolean'),
      'bootId and clockSynced stamped',
    )
    t.same(
      (await s.log.read(2, 2)).map((r) => r.seq),
      [2, 3],
      'from 2, at most 2',
    )
    t.same(
      (await s.log.read(5, 100)).map((r) => r.seq),
      [5],
      'from the head',
    )
    t.same(await s.log.read(6, 10), [], 'past the head: nothing')
    t.same(
      (await s.log.read(4, 1)).map((r) => r.seq),
      [4],
      'limit 1',
    )
  })

  t.test('onAppend: once per durable append, with the new head, already readable; unsubscribe stops it', async (t) => {
    const s = await open(t, make)
    const seen: { given: number; head: number; read: Promise<JournalRecord[]> }[] = []
    const other: number[] = []
    const off = s.log.onAppend((given) => seen.push({ given, head: s.log.head(), read: s.log.read(given, 10) }))
    s.log.onAppend((given) => other.push(given))
    await s.append(bodies(2))
    t.equal(seen.length, 1, 'called by the time append resolved')
    await s.append(bodies(3, 2))
    t.same(
      seen.map((x) => x.given),
      [2, 5],
      'once per append, with the new head',
    )
    t.same(
      seen.map((x) => x.head),
      [2, 5],
      'head() already says so inside the listener',
    )
    // (It may also find later records: the read runs on after the listener returned.)
    t.same(
      (await Promise.all(seen.map((x) => x.read))).map((rs) => rs[0]?.seq),
      [2, 5],
      'a read started inside the listener finds the new head record',
    )
    off()
    await s.append(bodies(1, 5))
    t.equal(seen.length, 2, 'not called after unsubscribing')
    t.same(other, [2, 5, 6], 'the other listener still is')
  })

  t.test('ack: advances the watermark; lower values ignored, values past head clamped', async (t) => {
    const s = await open(t, make)
    await s.append(bodies(5))
    await s.log.ack(2)
    t.equal(s.log.acked(), 2)
    await s.log.ack(1)
    t.equal(s.log.acked(), 2, 'a lower ack is ignored')
    await s.log.ack(2)
    t.equal(s.log.acked(), 2)
    await Promise.all([s.log.ack(4), s.log.ack(3)])
    t.equal(s.log.acked(), 4, 'concurrent acks: the highest wins')
    await s.log.ack(99)
    t.equal(s.log.acked(), 5, 'clamped to the head')
    await s.append(bodies(1, 5))
    t.equal(s.log.acked(), 5, 'an append does not move it')
    t.equal(s.log.head(), 6)
  })

  t.test('compaction drops only acknowledged records; reading below oldest is JOURNAL_COMPACTED', async (t) => {
    const s = await open(t, make)
    await s.append(bodies(10))
    await s.log.ack(6)
    await s.compact()
    t.equal(s.log.oldest(), 7, 'the acknowledged prefix is gone')
    t.ok(s.log.oldest() - 1 <= s.log.acked(), "oldest()-1 <= acked(): the uplink's resume point after JOURNAL_COMPACTED is safe")
    t.equal(s.log.head(), 10, 'head unchanged')
    t.equal(s.log.acked(), 6, 'acked unchanged')
    const held = await s.log.read(7, 100)
    t.same(
      held.map((r) => r.seq),
      [7, 8, 9, 10],
      'every unacknowledged record is still held',
    )
    t.match(verifyChain(held, { seq: 6, hash: held[0]!.prev }), { ok: true }, 'and still chains')
    t.equal(await code(s.log.read(6, 10)), 'JOURNAL_COMPACTED', 'from oldest-1')
    t.equal(await code(s.log.read(1, 1)), 'JOURNAL_COMPACTED', 'from 1')
    t.same(await s.log.read(11, 10), [], 'past the head: still nothing, not an error')
    await s.append(bodies(1, 10))
    t.same(
      (await s.log.read(7, 100)).map((r) => r.seq),
      [7, 8, 9, 10, 11],
      'appends go on after a compaction',
    )
  })

  t.test('reopened: the same head, acked, oldest and records; appends continue the chain', async (t) => {
    const s = await open(t, make)
    await s.append(bodies(4))
    await s.append(bodies(4, 4))
    await s.log.ack(5)
    await s.compact()
    const before = { head: s.log.head(), acked: s.log.acked(), oldest: s.log.oldest(), records: await s.log.read(s.log.oldest(), 100) }
    const again = await s.reopen()
    t.same(
      { head: again.log.head(), acked: again.log.acked(), oldest: again.log.oldest(), records: await again.log.read(again.log.oldest(), 100) },
      before,
    )
    t.same(before.oldest, 6, 'the compaction held')
    const heads: number[] = []
    again.log.onAppend((h) => heads.push(h))
    const [next] = await again.append(bodies(1, 8))
    t.equal(next!.seq, 9, 'seq continues')
    t.equal(next!.prev, before.records.at(-1)!.hash, 'prev is the hash of the head before the reopen')
    t.same(heads, [9], 'onAppend works on the reopened log')
  })
}
