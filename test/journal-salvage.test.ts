/**
 * What `outpost run` does when the journal is damaged beyond what LevelDB's own
 * recovery absorbs (JOURNAL_CORRUPT at start): the damaged directory is moved
 * aside untouched (`journal.corrupt-<time>`), and the site charges on a repaired
 * copy (when LevelDB's repair gives back a whole verified chain) or on a fresh
 * journal that carries over what could be read. Real LevelDB on disk, damaged by
 * hand: CURRENT, MANIFEST, a table file, an edited record. Also: the crash-safe
 * swap that repair and salvage share (journal.next), and that a locked journal is
 * refused as before, not salvaged.
 */
import t, { type Test } from 'tap'
import { existsSync, mkdirSync, renameSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import { Journal, journalLocation, verifyRecords } from '../daemon/journal/index.js'
import { openJournalForRun } from '../daemon/journal/salvage.js'
import { settleJournalDir } from '../daemon/journal/swap.js'
import { initialState, step, type EngineState } from '../daemon/engine/index.js'
import type { JournalRecord } from '../core/types.js'
import { siteConfig } from './fixtures/engine-site-config.js'
import { recordKey } from '../daemon/journal/keys.js'
import { charge, editOnDisk, fingerprint, opts, quietLog, T0 } from './helpers/journal-charge.js'
import { MARKER_FILE, readMarker } from '../daemon/journal/seq-marker.js'

const config = siteConfig()

async function bootAfterDamage(t: Test, damage: (location: string) => void, expectMode: 'repaired' | 'fresh') {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-salvage-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const before = await charge(dir, 60, 10)
  t.ok(before.length > 8, `records written (${before.length})`)
  const location = journalLocation(dir)
  damage(location)
  const damaged = fingerprint(location)
  await t.rejects(
    Journal.open(
      dir,
      opts(() => T0 + 10_000_000),
    ),
    { code: 'JOURNAL_CORRUPT' },
    'the damage is refused by a plain open',
  )
  const log = quietLog()
  const clock = T0 + 10_000_000
  const { journal, salvage } = await openJournalForRun(
    dir,
    opts(() => clock),
    log,
  )
  t.teardown(() => journal.close({ clean: true }))
  t.equal(salvage?.mode, expectMode, `salvaged as ${expectMode}`)
  t.match(log.lines[0], /^JOURNAL DAMAGED: moved to .*journal\.corrupt-20260101T024640Z/, 'logged loudly, naming where the damaged journal went')
  t.ok(existsSync(salvage!.movedTo!), 'the damaged journal is kept beside the new one')
  t.same(fingerprint(salvage!.movedTo!), damaged, 'the damaged journal is kept exactly as it was found')
  t.notOk(existsSync(`${location}.next`) || existsSync(`${location}.salvage`), 'no staging left behind')
  // The engine boots on it and charges: boot closes what was open (power-loss), and the chain continues.
  let state = ((await journal.loadState()) as EngineState | undefined) ?? initialState(config)
  state = step(state, { type: 'config', config }, clock).state
  const boot = step(state, { type: 'boot', cleanShutdown: journal.previousCleanShutdown, version: 't', journalSalvage: salvage }, clock)
  const sealed = await journal.commit({ records: boot.effects.flatMap((e) => (e.type === 'record' ? [e.record] : [])), state: boot.state })
  const started = sealed.find((r) => r.type === 'gateway.started') as JournalRecord & { journalSalvage?: unknown; cleanShutdown: boolean }
  t.same(started.journalSalvage, salvage, 'gateway.started says what happened')
  t.equal(started.cleanShutdown, false, 'the boot after a salvage reads as unclean')
  const held = await journal.read(journal.oldest(), 10_000)
  t.equal(verifyRecords(held), undefined, 'the held log verifies')
  t.ok(journal.acked() <= journal.head())
  return { dir, before, held, salvage: salvage!, journal, boot }
}

t.test('CURRENT garbled: LevelDB repair gives back the whole chain, the daemon runs on the repaired copy', async (t) => {
  const { before, held, salvage, boot } = await bootAfterDamage(t, (loc) => writeFileSync(join(loc, 'CURRENT'), 'MANIFEST-99999x'), 'repaired')
  t.same(salvage.lost, null)
  t.same(
    held.slice(0, before.length).map((r) => r.hash),
    before.map((r) => r.hash),
    'every record is there, unchanged',
  )
  const ended = boot.effects.filter((e) => e.type === 'record' && e.record.type === 'session.ended')
  t.ok(ended.length > 0, 'the session left open was closed at boot')
})

t.test('MANIFEST truncated: repaired, nothing lost', async (t) => {
  const { before, held, salvage } = await bootAfterDamage(
    t,
    (loc) => {
      for (const f of readdirSync(loc)) if (f.startsWith('MANIFEST-')) truncateSync(join(loc, f), 0)
    },
    'repaired',
  )
  t.same(salvage.lost, null)
  t.same(
    held.slice(0, before.length).map((r) => r.hash),
    before.map((r) => r.hash),
  )
})

t.test('a record edited in the middle: a fresh journal carries every record on both sides of it, the edited seq a hole', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-salvage-edit-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const records = await charge(dir, 60, 2)
  const victim = records[records.length - 5]!
  await editOnDisk(dir, [victim])
  const log = quietLog()
  const { journal, salvage: s } = await openJournalForRun(
    dir,
    opts(() => T0 + 10_000_000),
    log,
  )
  t.teardown(() => journal.close({ clean: true }))
  t.equal(s?.mode, 'fresh')
  t.same(s?.carried, { from: 2, to: records.at(-1)!.seq }, 'every record from the acknowledged one to the last is carried')
  t.same(s?.lost, [{ from: victim.seq, to: victim.seq }], 'only the edited record is lost, named as a hole')
  t.equal(s?.newChain, false, 'the last seq is known: no new chain')
  t.same(journal.holes(), [{ from: victim.seq, to: victim.seq }])
  t.equal(journal.head(), records.at(-1)!.seq, 'new records continue the seq')
  t.equal(journal.acked(), 2, 'the carried records wait for the cloud as before')
  const below = await journal.read(journal.oldest(), 100)
  t.same(
    below.map((r) => r.hash),
    records.filter((r) => r.seq >= 2 && r.seq < victim.seq).map((r) => r.hash),
    'a read stops before the hole; the records below it are unchanged',
  )
  const inside = await journal.read(victim.seq, 100)
  t.same(
    inside.map((r) => r.hash),
    records.filter((r) => r.seq > victim.seq).map((r) => r.hash),
    'a read from inside the hole starts after it; the records above it are unchanged',
  )
  await journal.ack(victim.seq - 1)
  t.equal(journal.acked(), victim.seq, 'acknowledging the record before the hole acknowledges the hole')
  t.ok(await journal.loadState(), 'the engine state was carried over')
  t.match(log.lines[0], new RegExp(`records ${victim.seq}\\.\\.${victim.seq} could not be read`))
  await journal.close({ clean: true })
  const again = await Journal.open(
    dir,
    opts(() => T0 + 10_000_001),
  )
  t.teardown(() => again.close({ clean: true }))
  t.same(again.holes(), [{ from: victim.seq, to: victim.seq }], 'the hole survives a restart')
  const [next] = await again.commit({ records: [{ type: 'gateway.started', ts: new Date(T0).toISOString(), version: 't', cleanShutdown: true }] })
  t.equal(next!.seq, records.at(-1)!.seq + 1, 'the next record follows the last carried one')
  t.equal(next!.prev, records.at(-1)!.hash, 'and chains to it')
})

t.test('a table file garbled: the daemon still starts, and every record it holds verifies', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-salvage-ldb-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const records = await charge(dir, 120, 10)
  const marker = await readMarker(dir)
  if (marker.state !== 'ok') throw new Error('the seq marker is not readable')
  const loc = journalLocation(dir)
  const tables = readdirSync(loc).filter((f) => f.endsWith('.ldb'))
  t.ok(tables.length > 0, `a small write buffer leaves table files (${tables.length})`)
  for (const f of tables) {
    const b = readFileSync(join(loc, f))
    for (let i = 0; i < b.length; i += 97) b[i] = b[i]! ^ 0xff
    writeFileSync(join(loc, f), b)
  }
  const log = quietLog()
  const { journal, salvage } = await openJournalForRun(
    dir,
    opts(() => T0 + 10_000_000),
    log,
  )
  t.teardown(() => journal.close({ clean: true }))
  t.ok(salvage, `salvaged (${salvage?.mode}, carried ${JSON.stringify(salvage?.carried)}, lost ${JSON.stringify(salvage?.lost)})`)
  const held = await journal.read(journal.oldest(), 10_000).catch(() => [])
  t.equal(verifyRecords(held), undefined, 'what it holds verifies')
  t.ok(journal.acked() <= journal.head())
  const [first] = await journal.commit({
    records: [{ type: 'gateway.started', ts: new Date(T0 + 10_000_000).toISOString(), version: 't', cleanShutdown: false }],
  })
  // Which records a garbled table takes with it is not known (LevelDB's repair drops what it cannot
  // read, the newest records included): the highest seq ever given out is then unknown, and the next
  // record starts a new chain past the seq marker's reservation, above every seq the old chain used.
  t.ok(records.at(-1)!.seq > 10)
  t.equal(salvage?.newChain, true, 'a new chain starts')
  t.equal(
    salvage?.unknownAbove,
    Math.max(records.at(-1)!.seq, held.filter((r) => r.seq <= records.at(-1)!.seq).at(-1)?.seq ?? 0),
    'records above the highest seq seen may be lost',
  )
  t.equal(salvage?.sessionsMayBeLost, true)
  t.ok(marker.marker.reserved > records.at(-1)!.seq)
  t.equal(first!.seq, marker.marker.reserved + 1, "it takes new records past the marker's reservation, never reusing a seq")
  t.equal(first!.prev, '0'.repeat(64), 'in a new chain')
})

t.test('a fresh journal that carried no record goes on past the seqs the damaged one showed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-salvage-base-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const records = await charge(dir, 30, 5)
  const loc = journalLocation(dir)
  // Every record's value unreadable, keys intact (and the ack watermark, 5): nothing chains, so nothing is carried.
  const db = new Level<string, string>(loc, { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  await db.open()
  for (const r of records) await db.put(recordKey(r.seq), '{garbled')
  await db.close()
  const { journal, salvage } = await openJournalForRun(
    dir,
    opts(() => T0 + 1e7),
    quietLog(),
  )
  t.teardown(() => journal.close({ clean: true }))
  t.match(
    salvage,
    { mode: 'fresh', carried: null, lost: [{ from: 6, to: records.at(-1)!.seq }] },
    'the unreadable unacknowledged records are named as lost',
  )
  t.equal(journal.head(), records.at(-1)!.seq, 'the log starts after the highest seq the damaged journal showed')
  t.equal(journal.oldest(), records.at(-1)!.seq + 1)
  await t.rejects(journal.read(1, 10), { code: 'JOURNAL_COMPACTED' }, 'seqs before it are not held here')
  const [first] = await journal.commit({
    records: [{ type: 'gateway.started', ts: new Date(T0 + 1e7).toISOString(), version: 't', cleanShutdown: false }],
  })
  t.equal(first!.seq, records.at(-1)!.seq + 1, "the next record continues the gateway's seq: none reuses one the cloud may hold")
  t.equal(first!.prev, '0'.repeat(64), 'and starts a new chain (journalSalvage says why)')
  await journal.close({ clean: true })
  const again = await Journal.open(
    dir,
    opts(() => T0 + 2e7),
  )
  t.equal(again.head(), first!.seq, 'a reopen finds the log where it was')
  t.equal(again.oldest(), first!.seq)
  await again.close({ clean: true })
})

t.test('only JOURNAL_CORRUPT is salvaged: a journal held by another process is refused as before', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-salvage-lock-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const first = await Journal.open(dir, opts(Date.now))
  t.teardown(() => first.close({ clean: true }))
  await t.rejects(openJournalForRun(dir, opts(Date.now), quietLog()), { code: 'JOURNAL_LOCKED' })
  t.same(readdirSync(dir), ['journal', MARKER_FILE], 'nothing moved')
})

t.test('a cut between the two renames of a swap: boot finishes it; a leftover staging is discarded', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-swap-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const records = await charge(dir, 10, 0)
  const loc = journalLocation(dir)
  // journal moved aside, journal.next (complete) not yet in place.
  renameSync(loc, `${loc}.next`)
  mkdirSync(join(dir, 'journal.pre-repair-x'))
  const log = quietLog()
  const { journal, salvage } = await openJournalForRun(
    dir,
    opts(() => T0 + 1e7),
    log,
  )
  t.equal(salvage, undefined)
  t.equal(journal.head(), records.at(-1)!.seq, 'the finished replacement was moved in, not a fresh journal created')
  t.match(log.lines[0], /cut off after its result was on disk/)
  await journal.close({ clean: true })
  mkdirSync(`${loc}.next`)
  t.equal(await settleJournalDir(dir), false)
  t.notOk(existsSync(`${loc}.next`), 'an unfinished staging beside a journal is removed')
})
