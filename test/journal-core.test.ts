/**
 * The journal on real LevelDB on disk (and on the power-cut layer where a fault
 * must be injected): sequencing and chain, state by sections, command results,
 * ack watermark, clean-shutdown marker, lock, corruption, invalid input, write
 * failures, group commit and retention.
 */
import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import fc from 'fast-check'
import { isDeepStrictEqual } from 'node:util'
import { Journal, journalLocation, verifyRecords, GENESIS_PREV, type JournalOptions, type JournalDb } from '../daemon/journal/index.js'
import type { RecordBody, PersistedEngineState, CommandResult } from '../core/types.js'
import { tinySessionEnded } from './helpers/memory-log.js'
import { PowerCutLevel, StorageFault } from './fixtures/power-cut-level.js'

const T0 = Date.UTC(2026, 0, 5, 12, 0, 0)
const DAY = 86_400_000

function tempDir(t: { teardown: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-journal-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function clock(start = T0): { now: () => number; advance: (ms: number) => void } {
  let now = start
  return { now: () => now, advance: (ms) => (now += ms) }
}

function options(extra: Partial<JournalOptions> = {}, c = clock()): JournalOptions {
  return { bootId: 'boot-a', clockSynced: () => true, now: c.now, compactEveryMs: 0, ...extra }
}

const fault = (i: number, ts = T0 + i * 1000): RecordBody => ({
  type: 'outlet.fault',
  ts: new Date(ts).toISOString(),
  outlet: `A${(i % 3) + 1}`,
  detail: `timeout ${i}`,
})

t.test('a new journal is empty; commits get gapless seq, the chain, bootId and clockSynced', async (t) => {
  const dir = tempDir(t)
  let synced = false
  const j = await Journal.open(dir, options({ clockSynced: () => synced }))
  t.equal(j.head(), 0)
  t.equal(j.oldest(), 1)
  t.equal(j.acked(), 0)
  t.equal(j.previousCleanShutdown, true, 'a new journal had no unclean run before it')
  const heads: number[] = []
  const off = j.onAppend((h) => heads.push(h))
  const first = await j.commit({ records: [fault(1), fault(2)] })
  synced = true
  const second = await j.commit({ records: [fault(3)] })
  t.same(
    first.map((r) => r.seq),
    [1, 2],
  )
  t.same(
    second.map((r) => r.seq),
    [3],
  )
  t.equal(first[0]!.prev, GENESIS_PREV)
  t.equal(first[1]!.prev, first[0]!.hash)
  t.equal(second[0]!.prev, first[1]!.hash)
  t.same(
    first.map((r) => r.clockSynced),
    [false, false],
  )
  t.equal(second[0]!.clockSynced, true)
  t.equal(second[0]!.bootId, 'boot-a')
  t.same(heads, [2, 3], 'onAppend reports each durable head')
  off()
  await j.commit({ records: [fault(4)] })
  t.same(heads, [2, 3], 'unsubscribed')
  t.equal(j.head(), 4)
  const all = await j.read(1, 100)
  t.equal(all.length, 4)
  t.equal(verifyRecords(all), undefined)
  t.same(all.slice(0, 3), [...first, ...second], 'read returns exactly what commit returned')
  t.same(
    (await j.read(2, 2)).map((r) => r.seq),
    [2, 3],
  )
  t.same(await j.read(5, 10), [], 'past the head: nothing')
  await t.rejects(j.read(0, 1), { code: 'JOURNAL_BAD_RANGE' })
  await t.rejects(j.read(1, 0), { code: 'JOURNAL_BAD_RANGE' })
  await t.rejects(j.read(1.5, 1), { code: 'JOURNAL_BAD_RANGE' })
  const empty = await j.commit({ records: [] })
  t.same(empty, [], 'a step with no records appends nothing')
  t.equal(j.head(), 4)
  await j.close({ clean: true })
  t.ok(journalLocation(dir).endsWith('/journal'))
})

t.test('concurrent commits are applied in call order', async (t) => {
  const dir = tempDir(t)
  const j = await Journal.open(dir, options())
  const results = await Promise.all(Array.from({ length: 50 }, (_, i) => j.commit({ records: [fault(i)] })))
  t.same(
    results.map((r) => (r[0] as { detail?: string }).detail),
    Array.from({ length: 50 }, (_, i) => `timeout ${i}`),
  )
  t.same(
    results.map((r) => r[0]!.seq),
    Array.from({ length: 50 }, (_, i) => i + 1),
  )
  t.equal(verifyRecords(await j.read(1, 100)), undefined)
  await j.close({ clean: true })
})

t.test('clean and unclean shutdowns are reported to the next open; the chain continues across runs', async (t) => {
  const dir = tempDir(t)
  const j1 = await Journal.open(dir, options())
  await j1.commit({ records: [fault(1)] })
  await j1.close({ clean: true })
  const j2 = await Journal.open(dir, options({ bootId: 'boot-b' }))
  t.equal(j2.previousCleanShutdown, true)
  t.equal(j2.head(), 1)
  const [r2] = await j2.commit({ records: [fault(2)] })
  t.equal(r2!.seq, 2)
  t.equal(r2!.bootId, 'boot-b')
  await j2.close({ clean: false })
  const j3 = await Journal.open(dir, options({ bootId: 'boot-c' }))
  t.equal(j3.previousCleanShutdown, false, 'close({clean:false}) leaves the running marker')
  t.equal(verifyRecords(await j3.read(1, 10)), undefined)
  await j3.close({ clean: true })
})

t.test('a second journal on the same directory is refused with JOURNAL_LOCKED', async (t) => {
  const dir = tempDir(t)
  const j = await Journal.open(dir, options())
  await t.rejects(Journal.open(dir, options()), { code: 'JOURNAL_LOCKED', message: `another outpost is already running on ${journalLocation(dir)}` })
  await j.commit({ records: [fault(1)] })
  t.equal(j.head(), 1, 'the first journal is unaffected')
  await j.close({ clean: true })
})

t.test('engine state is persisted by sections, only what changed identity, and loads back exactly', async (t) => {
  const dir = tempDir(t)
  const location = journalLocation(dir)
  const db = new Level<string, string>(location, { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  t.teardown(() => db.close())
  const writes: string[][] = []
  const batch = db.batch.bind(db) as (ops: { type: string; key: string }[], o: object) => Promise<void>
  ;(db as unknown as { batch: typeof batch }).batch = (ops, o) => {
    writes.push(ops.map((op) => `${op.type} ${op.key}`))
    return batch(ops, o)
  }
  // readingSyncMs 0: every step is written at once, so each batch shows exactly one step's entries.
  const j = await Journal.open(location, options({ db: db as unknown as JournalDb, readingSyncMs: 0 }))
  t.equal(await j.loadState(), undefined, 'nothing persisted yet')
  const a1 = { state: 'off', lastWh: 10 }
  const a2 = { state: 'armed', lastWh: 20 }
  const wallets = { 'u-1': { currency: 'CAD', balance: 500 } }
  const s1: PersistedEngineState = { outlets: { A1: a1, 'A!2': a2 }, wallets, plans: { standard: { id: 'standard' } } }
  await j.commit({ records: [], state: s1 })
  t.same(writes.at(-1)!.sort(), ['put m!state', 'put o!A%212', 'put o!A1', 'put s!plans', 'put s!wallets'])
  // One outlet changes: only its entry is written.
  const s2: PersistedEngineState = { ...s1, outlets: { ...s1.outlets, A1: { state: 'charging', lastWh: 11 } } }
  await j.commit({ records: [], state: s2 })
  t.same(writes.at(-1), ['put o!A1'])
  // A section changes and one disappears; an outlet is removed.
  const s3: PersistedEngineState = { outlets: { A1: s2.outlets.A1 }, wallets: { 'u-1': { currency: 'CAD', balance: 400 } } }
  await j.commit({ records: [fault(1)], state: s3 })
  t.same(
    writes
      .at(-1)!
      .filter((w) => !w.startsWith('put r!'))
      .sort(),
    ['del o!A%212', 'del s!plans', 'put s!wallets'],
  )
  // Same state object again: nothing but the record.
  await j.commit({ records: [fault(2)], state: s3 })
  t.same(writes.at(-1), ['put r!000000000002'])
  t.equal(await j.loadState(), s3)
  await j.close({ clean: true })
  const j2 = await Journal.open(location, options({ db: db as unknown as JournalDb, readingSyncMs: 0 }))
  t.same(await j2.loadState(), s3, 'reopened: exactly what was persisted')
  const loaded = await j2.loadState()
  // Handing back the loaded state writes nothing for it.
  await j2.commit({ records: [fault(3)], state: loaded! })
  t.same(writes.at(-1), ['put r!000000000003'])
  await j2.close({ clean: true })
})

t.test('command results: the first stored result of an id wins', async (t) => {
  const dir = tempDir(t)
  const j = await Journal.open(dir, options())
  const ok: CommandResult = { id: 'c-1', ok: true, result: { sessionId: 's-1' } }
  const no: CommandResult = { id: 'c-1', ok: false, error: { code: 'busy', message: 'outlet busy' } }
  t.equal(await j.commandResult('c-1'), undefined)
  await j.commit({
    records: [],
    commandResults: [
      { id: 'c-1', result: ok },
      { id: 'c-1', result: no },
    ],
  })
  t.same(await j.commandResult('c-1'), ok, 'first within a step')
  await j.commit({
    records: [],
    commandResults: [
      { id: 'c-1', result: no },
      { id: 'c!2', result: { ...no, id: 'c!2' } },
    ],
  })
  t.same(await j.commandResult('c-1'), ok, 'first across steps')
  t.same(await j.commandResult('c!2'), { ...no, id: 'c!2' })
  await j.close({ clean: true })
  const j2 = await Journal.open(dir, options())
  t.same(await j2.commandResult('c-1'), ok, 'after reopening')
  await j2.close({ clean: true })
})

t.test('ack: durable, monotonic, clamped to the head', async (t) => {
  const dir = tempDir(t)
  const j = await Journal.open(dir, options())
  await j.commit({ records: [fault(1), fault(2), fault(3)] })
  await j.ack(2)
  t.equal(j.acked(), 2)
  await j.ack(1)
  t.equal(j.acked(), 2, 'lower values are ignored')
  await j.ack(99)
  t.equal(j.acked(), 3, 'clamped to the head')
  await j.commit({ records: [fault(4)] })
  t.same(j.status(), { head: 4, acked: 3, oldest: 1, unacked: 1, waitingWrites: 0, fault: null })
  await t.rejects(j.ack(Number.NaN), { code: 'JOURNAL_BAD_RANGE' })
  await j.close({ clean: true })
  const j2 = await Journal.open(dir, options())
  t.equal(j2.acked(), 3)
  await j2.close({ clean: true })
})

t.test('bad input is refused with a clear error, writes nothing, and the journal carries on', async (t) => {
  const dir = tempDir(t)
  const j = await Journal.open(dir, options())
  await j.commit({ records: [fault(1)] })
  const bad: [unknown, RegExp][] = [
    [{ records: [{ type: 'session.exploded', ts: new Date(T0).toISOString() }] }, /records\[0\]\.type "session.exploded" is not a record type/],
    [{ records: [{ ...fault(2), ts: 'yesterday' }] }, /records\[0\]\.ts "yesterday"/],
    [{ records: 'x' }, /step.records must be an array/],
    [{ records: [], state: { wallets: {} } }, /state.outlets must be an object/],
    [{ records: [], commandResults: [{ id: '', result: {} }] }, /commandResults\[0\]\.id/],
    [
      { records: [], readings: [{ outlet: 'A1', sessionId: 's', reading: { ts: 1, currentA: NaN, powerW: 0, energyWh: 0, voltageV: 0 } }] },
      /readings\[0\]\.reading/,
    ],
    [{ records: [{ ...fault(2), detail: Number.POSITIVE_INFINITY }] }, /not canonical JSON: Infinity/],
  ]
  for (const [step, message] of bad) {
    await t.rejects(j.commit(step as never), { code: /JOURNAL_INVALID_(STEP|RECORD)/, message }, String(message))
  }
  t.equal(j.head(), 1, 'nothing was appended')
  t.equal(j.fault, undefined, 'bad input is not a storage fault')
  const [r] = await j.commit({ records: [fault(2)] })
  t.equal(r!.seq, 2)
  t.equal(verifyRecords(await j.read(1, 10)), undefined)
  await t.rejects(Journal.open(dir, { ...options(), bootId: '' }), { code: 'JOURNAL_BAD_OPTIONS' })
  await t.rejects(Journal.open(dir, { ...options(), retentionDays: 0 }), { code: 'JOURNAL_BAD_OPTIONS' })
  await j.close({ clean: true })
})

t.test('a corrupt database is refused with JOURNAL_CORRUPT pointing to outpost repair, and left as it was', async (t) => {
  const dir = tempDir(t)
  const j = await Journal.open(dir, options())
  await j.commit({ records: [fault(1), fault(2)] })
  await j.close({ clean: true })
  writeFileSync(join(journalLocation(dir), 'CURRENT'), 'garbage')
  await t.rejects(Journal.open(dir, options()), { code: 'JOURNAL_CORRUPT', message: /outpost repair/ })
  await t.rejects(Journal.open(dir, options()), { code: 'JOURNAL_CORRUPT' }, 'still refused: nothing was reset')
})

t.test('an edited or missing record at the tail is refused with JOURNAL_CORRUPT naming the seq', async (t) => {
  const dir = tempDir(t)
  const j = await Journal.open(dir, options())
  await j.commit({ records: [fault(1), fault(2), fault(3)] })
  await j.close({ clean: true })
  const raw = new Level<string, string>(journalLocation(dir), { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  const r2 = JSON.parse((await raw.get('r!000000000002'))!) as { detail: string }
  r2.detail = 'edited'
  await raw.put('r!000000000002', JSON.stringify(r2))
  await raw.close()
  await t.rejects(Journal.open(dir, options()), { code: 'JOURNAL_CORRUPT', message: /seq 2: hash mismatch/ })
  const raw2 = new Level<string, string>(journalLocation(dir), { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  await raw2.del('r!000000000002')
  await raw2.close()
  await t.rejects(Journal.open(dir, options()), { code: 'JOURNAL_CORRUPT', message: /seq 3: gap/ })
})

t.test('a write failure rejects with JOURNAL_WRITE_FAILED, stops the journal, reports once, and damages nothing', async (t) => {
  const db = new PowerCutLevel()
  await db.open()
  const j = await Journal.open('mem', options({ db }))
  const s1: PersistedEngineState = { outlets: { A1: { lastWh: 1 } } }
  await j.commit({ records: [fault(1)], state: s1 })
  const faults: string[] = []
  j.onFault((e) => faults.push(e.code))
  db.failWrites = new StorageFault('LEVEL_IO_ERROR', 'IO error: No space left on device')
  await t.rejects(j.commit({ records: [fault(2)], state: { outlets: { A1: { lastWh: 2 } } } }), {
    code: 'JOURNAL_WRITE_FAILED',
    message: /No space left on device/,
  })
  t.equal(j.head(), 1)
  db.failWrites = undefined
  await t.rejects(j.commit({ records: [fault(3)] }), { code: 'JOURNAL_WRITE_FAILED' }, 'refuses further commits even once the disk recovers')
  await t.rejects(j.ack(1), { code: 'JOURNAL_WRITE_FAILED' })
  t.same(faults, ['JOURNAL_WRITE_FAILED'], 'reported once')
  t.equal(j.fault?.code, 'JOURNAL_WRITE_FAILED')
  t.same(
    (await j.read(1, 10)).map((r) => r.seq),
    [1],
    'reads still work',
  )
  await j.close({ clean: true })
  // Reopened (the daemon restarts): everything committed before the fault is intact and the chain continues.
  const j2 = await Journal.open('mem', options({ db }))
  t.equal(j2.previousCleanShutdown, false, 'a failed journal cannot mark its shutdown clean')
  t.same(await j2.loadState(), s1)
  const [r] = await j2.commit({ records: [fault(4)] })
  t.equal(r!.seq, 2)
  t.equal(verifyRecords(await j2.read(1, 10)), undefined)
  await j2.close({ clean: true })
  await db.close()
})

t.test('a failed group commit (by the timer, or flush) also stops the journal and is reported', async (t) => {
  const db = new PowerCutLevel()
  await db.open()
  const j = await Journal.open('mem', options({ db, readingSyncMs: 20, checkpointMs: 20 }))
  const faults: string[] = []
  j.onFault((e) => faults.push(e.code))
  db.failWrites = new StorageFault('LEVEL_IO_ERROR', 'IO error: Input/output error')
  await j.commit({ records: [], state: { outlets: { A1: 1 } } })
  // The step waits in memory for the checkpoint; the checkpoint timer (20 ms here) meets the error and reports it.
  while (faults.length === 0) await new Promise((r) => setTimeout(r, 10))
  t.same(faults, ['JOURNAL_WRITE_FAILED'])
  db.failWrites = undefined
  await t.rejects(j.commit({ records: [fault(1)] }), { code: 'JOURNAL_WRITE_FAILED' })
  await t.rejects(j.flush(), { code: 'JOURNAL_WRITE_FAILED' })
  await j.close({ clean: false })
  await db.close()
})

t.test(
  'a state-only step: its readings are handed to LevelDB at once (unsynced), its state waits for the checkpoint; records and command results never wait',
  async (t) => {
    const db = new PowerCutLevel()
    await db.open()
    const j = await Journal.open('mem', options({ db, readingSyncMs: 60_000 }))
    const writes = db.writes
    const g1 = { ts: T0, currentA: 1, powerW: 230, energyWh: 1, voltageV: 230 }
    const s1 = { outlets: { A1: { wh: 1 } } }
    await j.commit({ records: [], state: s1, readings: [{ outlet: 'A1', sessionId: 's-1', reading: g1, now: T0 + 3 }] })
    t.equal(db.writes, writes + 1, 'the reading was written before commit() resolved')
    t.equal(db.unsyncedBatches, 1, 'without an fsync')
    t.equal(
      await db.get('g!s-1!' + String(T0).padStart(15, '0')),
      JSON.stringify([1, 230, 1, 230, 'A1', 3]),
      'the reading with its stepped-at now (as an offset from ts)',
    )
    t.equal(await db.get('o!A1'), undefined, 'the state it changed waits for the checkpoint')
    const s2 = { outlets: { A1: { wh: 2 } } }
    await j.commit({ records: [], state: s2 })
    t.equal(db.writes, writes + 1, 'a state-only step without readings writes nothing yet')
    t.equal(await j.loadState(), s2, 'loadState() answers the newest committed state')
    t.equal(j.status().waitingWrites, 2, 'the outlet entry and the state marker wait')
    await j.commit({ records: [], commandResults: [{ id: 'x', result: { id: 'x', ok: true } }] })
    t.equal(db.writes, writes + 2, 'one batch carried the command result and the waiting state')
    t.equal(db.unsyncedBatches, 0, 'and it was fsynced (with the reading before it)')
    t.equal(await db.get('o!A1'), JSON.stringify({ wh: 2 }), 'merged by key: the newest entry')
    t.same(
      (await j.readings('s-1')).map((g) => g.now),
      [T0 + 3],
    )
    await j.commit({ records: [], state: { outlets: { A1: { wh: 3 } } } })
    t.equal(db.writes, writes + 2)
    await j.flush()
    t.equal(db.writes, writes + 3, 'flush() writes and fsyncs')
    t.equal(db.unsyncedBatches, 0)
    t.equal(await db.get('o!A1'), JSON.stringify({ wh: 3 }))
    // checkpoint: true writes the state now, with what waited before it, unsynced.
    await j.commit({ records: [], state: { outlets: { A1: { wh: 4 }, A2: { wh: 0 } } } })
    await j.commit({ records: [], state: { outlets: { A1: { wh: 4 }, A2: { wh: 1 } } }, checkpoint: true })
    t.equal(db.writes, writes + 4, 'checkpoint: one write')
    t.equal(db.unsyncedBatches, 1, 'unsynced')
    t.equal(j.status().waitingWrites, 0)
    t.equal(await db.get('o!A2'), JSON.stringify({ wh: 1 }))
    await t.rejects(j.commit({ records: [], checkpoint: 'yes' as unknown as boolean }), {
      code: 'JOURNAL_INVALID_STEP',
      message: /step\.checkpoint must be a boolean/,
    })
    await t.rejects(j.commit({ records: [], readings: [{ outlet: 'A1', sessionId: 's-1', reading: g1, now: NaN }] }), {
      code: 'JOURNAL_INVALID_STEP',
      message: /readings\[0\]\.now must be a finite epoch ms/,
    })
    t.equal(db.writes, writes + 4, 'a refused step wrote nothing')
    // A power cut now loses what waits, and at worst what was not fsynced: never the fsynced state.
    await j.commit({ records: [], state: { outlets: { A1: { wh: 5 } } } })
    db.cutNow()
    const after = await PowerCutLevel.fromImage(db.image(() => 0)) // every un-synced batch lost
    const j2 = await Journal.open('mem', options({ db: after }))
    t.same(await j2.loadState(), { outlets: { A1: { wh: 3 } } }, 'the last synced state survives the cut')
    await j2.close({ clean: true })
    await after.close()
    await db.close()

    // The fsync timer (readingSyncMs) fsyncs what LevelDB has; it does not write the waiting state.
    const db2 = new PowerCutLevel()
    await db2.open()
    const j3 = await Journal.open('mem', options({ db: db2, readingSyncMs: 20 }))
    await j3.commit({ records: [], state: { outlets: { A1: { wh: 5 } } }, readings: [{ outlet: 'A1', sessionId: 's-9', reading: g1 }] })
    t.equal(db2.unsyncedBatches, 1)
    while (db2.unsyncedBatches > 0) await new Promise((r) => setTimeout(r, 10))
    t.pass('fsynced by the timer')
    t.equal(await db2.get('o!A1'), undefined, 'the state still waits for its checkpoint')
    await j3.close({ clean: true })
    t.equal(await db2.get('o!A1'), JSON.stringify({ wh: 5 }), 'close() writes it')

    // The checkpoint timer writes the waiting state; the fsync timer follows.
    const db5 = new PowerCutLevel()
    await db5.open()
    const j6 = await Journal.open('mem', options({ db: db5, readingSyncMs: 20, checkpointMs: 30 }))
    await j6.commit({ records: [], state: { outlets: { A1: { wh: 8 } } } })
    while ((await db5.get('o!A1')) === undefined) await new Promise((r) => setTimeout(r, 10))
    while (db5.unsyncedBatches > 0) await new Promise((r) => setTimeout(r, 10))
    t.pass('checkpointed by its timer, then fsynced')
    await j6.close({ clean: true })
    await t.rejects(Journal.open('mem', options({ db: db5, checkpointMs: 0 })), {
      code: 'JOURNAL_BAD_OPTIONS',
      message: /checkpointMs must be an integer >= 1/,
    })

    // readingSyncMs 0: every state step is written and fsynced at once.
    const db3 = new PowerCutLevel()
    await db3.open()
    const j4 = await Journal.open('mem', options({ db: db3, readingSyncMs: 0 }))
    await j4.commit({ records: [], state: { outlets: { A1: { wh: 6 } } } })
    t.equal(await db3.get('o!A1'), JSON.stringify({ wh: 6 }))
    t.equal(db3.unsyncedBatches, 0)
    await j4.close({ clean: true })
    // close() writes what waits.
    const db4 = new PowerCutLevel()
    await db4.open()
    const j5 = await Journal.open('mem', options({ db: db4, readingSyncMs: 60_000 }))
    await j5.commit({ records: [], state: { outlets: { A1: { wh: 7 } } } })
    await j5.close({ clean: true })
    t.equal(await db4.get('o!A1'), JSON.stringify({ wh: 7 }))
    await Promise.all([db2.close(), db3.close(), db4.close(), db5.close()])
  },
)

t.test('readings are journaled per session and read back in order', async (t) => {
  const dir = tempDir(t)
  const j = await Journal.open(dir, options({ readingSyncMs: 0 }))
  for (let i = 0; i < 5; i++) {
    await j.commit({
      records: [],
      readings: [
        { outlet: 'A1', sessionId: 's-1', reading: { ts: T0 + i * 1000, currentA: 10 + i, powerW: 2300, energyWh: 100 + i * 0.5, voltageV: 230 } },
        { outlet: 'A2', sessionId: 's-2', reading: { ts: T0 + i * 1000, currentA: 1, powerW: 1, energyWh: 7, voltageV: 231 } },
      ],
    })
  }
  const r1 = await j.readings('s-1')
  t.equal(r1.length, 5)
  t.same(r1[4], {
    outlet: 'A1',
    sessionId: 's-1',
    reading: { ts: T0 + 4000, currentA: 14, powerW: 2300, energyWh: 102, voltageV: 230 },
    now: T0 + 4000,
  })
  t.same(
    r1.map((r) => r.reading.ts),
    [0, 1, 2, 3, 4].map((i) => T0 + i * 1000),
  )
  t.equal((await j.readings('s-2')).length, 5)
  t.same(await j.readings('s-'), [], 'a prefix of an id is another id')
  await j.close({ clean: true })
  // Between fsyncs, readings are answered too (LevelDB has them).
  const j2 = await Journal.open(dir, options({ readingSyncMs: 60_000 }))
  await j2.commit({
    records: [],
    readings: [{ outlet: 'A1', sessionId: 's-1', reading: { ts: T0 + 9000, currentA: 1, powerW: 1, energyWh: 200, voltageV: 230 }, now: T0 + 9004 }],
  })
  t.same(
    (await j2.readings('s-1')).map((r) => r.reading.ts),
    [0, 1, 2, 3, 4, 9].map((i) => T0 + i * 1000),
  )
  t.same(
    (await j2.readings('s-1', { after: T0 + 3000 })).map((r) => [r.reading.ts, r.now]),
    [
      [T0 + 4000, T0 + 4000],
      [T0 + 9000, T0 + 9004],
    ],
    'after: only newer readings; now defaults to ts',
  )
  await t.rejects(j2.readings('s-1', { after: NaN }), { code: 'JOURNAL_BAD_RANGE' })
  await j2.close({ clean: true })
})

t.test("retention: acknowledged old records with their sessions' readings, and old command results go; nothing unacknowledged does", async (t) => {
  const dir = tempDir(t)
  const c = clock()
  const j = await Journal.open(dir, options({ retentionDays: 30 }, c))
  const ended = (sessionId: string): RecordBody => tinySessionEnded(sessionId, c.now(), c.now() - 1000)
  const reading = (sessionId: string) => ({ outlet: 'A1', sessionId, reading: { ts: c.now(), currentA: 1, powerW: 1, energyWh: 1, voltageV: 230 } })
  // Day 0: ten records, session old-1 closed, a command.
  for (let i = 1; i <= 10; i++) await j.commit({ records: [fault(i, c.now())] })
  await j.commit({
    records: [ended('old-1')],
    readings: [reading('old-1')],
    commandResults: [{ id: 'cmd-old', result: { id: 'cmd-old', ok: true } }],
  })
  await j.commit({ records: [], readings: [reading('open-1')] })
  c.advance(40 * DAY)
  // Day 40: five more records, a fresh command.
  for (let i = 12; i <= 16; i++)
    await j.commit({ records: [fault(i, c.now())], commandResults: [{ id: `cmd-${i}`, result: { id: `cmd-${i}`, ok: true } }] })
  await j.ack(7)
  let r = await j.compact()
  t.same(r, { records: 7, readings: 0, commands: 1, oldest: 8 }, 'only acknowledged records go')
  t.equal(j.oldest(), 8)
  await t.rejects(j.read(1, 5), { code: 'JOURNAL_COMPACTED', message: /oldest seq held is 8/ })
  t.same(
    (await j.read(8, 100)).map((x) => x.seq),
    [8, 9, 10, 11, 12, 13, 14, 15, 16],
  )
  t.equal((await j.readings('old-1')).length, 1, 'readings stay while their billing record is unacknowledged')
  t.equal(await j.commandResult('cmd-old'), undefined)
  t.ok(await j.commandResult('cmd-12'))
  await j.ack(16)
  r = await j.compact()
  t.same(r, { records: 4, readings: 1, commands: 0, oldest: 12 }, 'records newer than the retention stay even when acknowledged')
  t.same(await j.readings('old-1'), [], 'the readings went with their billing record')
  t.equal((await j.readings('open-1')).length, 1, 'readings of an open session stay')
  c.advance(40 * DAY)
  r = await j.compact()
  t.equal(r.records, 4, 'the head record is always kept, so the chain continues')
  t.equal(j.oldest(), 16)
  t.equal(j.head(), 16)
  await j.close({ clean: true })
  const j2 = await Journal.open(dir, options({}, c))
  t.equal(j2.oldest(), 16, 'oldest is found again on open')
  const [next] = await j2.commit({ records: [fault(17, c.now())] })
  t.equal(next!.prev, (await j2.read(16, 1))[0]!.hash)
  t.equal(verifyRecords(await j2.read(16, 10)), undefined)
  await j2.close({ clean: true })
})

t.test('property: any interleaving of commits, acks and reopenings keeps a gapless verified chain and the last state', async (t) => {
  const dir = tempDir(t)
  let n = 0
  await fc.assert(
    fc.asyncProperty(
      fc.array(
        fc.oneof(
          fc.record({
            kind: fc.constant('commit' as const),
            records: fc.integer({ min: 0, max: 4 }),
            outlet: fc.constantFrom('A1', 'A2', 'B!1'),
            wh: fc.integer({ min: 0, max: 1e6 }),
            wallet: fc.boolean(),
          }),
          fc.record({ kind: fc.constant('ack' as const), upTo: fc.integer({ min: -2, max: 40 }) }),
          fc.record({ kind: fc.constant('reopen' as const), clean: fc.boolean() }),
        ),
        { maxLength: 25 },
      ),
      async (ops) => {
        const here = join(dir, String(n++))
        let j = await Journal.open(here, options({ readingSyncMs: 1000 }))
        let state: PersistedEngineState = { outlets: { A1: { wh: 0 } }, wallets: { u: 1 } }
        let committed = 0
        let acked = 0
        let lastClean = true
        try {
          for (const op of ops) {
            if (op.kind === 'commit') {
              state = { ...state, outlets: { ...state.outlets, [op.outlet]: { wh: op.wh } }, ...(op.wallet ? { wallets: { u: op.wh } } : {}) }
              const sealed = await j.commit({ records: Array.from({ length: op.records }, (_, i) => fault(committed + i)), state })
              if (sealed.some((r, i) => r.seq !== committed + i + 1)) return false
              committed += op.records
            } else if (op.kind === 'ack') {
              await j.ack(op.upTo)
              acked = Math.max(acked, Math.min(op.upTo, committed))
              if (j.acked() !== acked) return false
            } else {
              await j.close({ clean: op.clean })
              lastClean = op.clean
              j = await Journal.open(here, options())
              if (j.previousCleanShutdown !== lastClean) return false
              const loaded = await j.loadState()
              // Nothing committed yet means nothing persisted yet.
              if (loaded !== undefined) state = loaded
            }
          }
          if (j.head() !== committed || j.acked() !== acked) return false
          const all = committed > 0 ? await j.read(1, 1000) : []
          if (all.length !== committed || verifyRecords(all) !== undefined) return false
          await j.close({ clean: true })
          j = await Journal.open(here, options())
          const loaded = await j.loadState()
          const anyState = ops.some((o) => o.kind === 'commit')
          return anyState ? isDeepStrictEqual(loaded, state) : loaded === undefined
        } finally {
          await j.close({ clean: true })
          rmSync(here, { recursive: true, force: true })
        }
      },
    ),
    { numRuns: 40 },
  )
  t.pass('40 random histories held the invariants')
})

t.test('retention runs by itself every compactEveryMs; a closed journal refuses work', async (t) => {
  const dir = tempDir(t)
  const c = clock()
  const j = await Journal.open(dir, options({ retentionDays: 1, compactEveryMs: 20 }, c))
  for (let i = 1; i <= 5; i++) await j.commit({ records: [fault(i, c.now())] })
  await j.ack(5)
  c.advance(2 * DAY)
  // Wait for the timer's compaction (a condition, not a fixed sleep).
  while (j.oldest() === 1) await new Promise((r) => setTimeout(r, 10))
  t.equal(j.oldest(), 5, 'acknowledged old records went, the head stayed')
  await j.close({ clean: true })
  await t.rejects(j.commit({ records: [fault(6)] }), { code: 'JOURNAL_CLOSED' })
  await t.rejects(j.read(5, 1), { code: 'JOURNAL_CLOSED' })
  await t.rejects(j.loadState(), { code: 'JOURNAL_CLOSED' })
  await j.close({ clean: true })
  t.pass('closing twice is harmless')
})

t.test('readings between fsyncs: a kill -9 keeps every one; a power cut loses at most those after the last fsync, never a record', async (t) => {
  const db = new PowerCutLevel()
  await db.open()
  const j = await Journal.open('mem', options({ db, readingSyncMs: 600_000 }))
  const g = (i: number) => ({
    outlet: 'A1',
    sessionId: 's-1',
    reading: { ts: T0 + i * 1000, currentA: 16, powerW: 3680, energyWh: 100 + i, voltageV: 230 },
  })
  for (let i = 0; i < 5; i++) await j.commit({ records: [], state: { outlets: { A1: { i } } }, readings: [g(i)] })
  const [rec] = await j.commit({ records: [fault(1)] }) // fsynced: readings 0-4 with it
  for (let i = 5; i < 9; i++) await j.commit({ records: [], state: { outlets: { A1: { i } } }, readings: [g(i)] })
  db.cutNow()
  const tsOf = async (image: Map<string, string>): Promise<{ readings: number[]; head: number }> => {
    const copy = await PowerCutLevel.fromImage(image)
    const j2 = await Journal.open('mem', options({ db: copy }))
    const out = { readings: (await j2.readings('s-1')).map((x) => (x.reading.ts - T0) / 1000), head: j2.head() }
    await j2.close({ clean: true })
    await copy.close()
    return out
  }
  t.same(await tsOf(db.everything()), { readings: [0, 1, 2, 3, 4, 5, 6, 7, 8], head: rec!.seq }, 'kill -9 (what LevelDB accepted): every reading')
  const random = (
    (seed) => () =>
      (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31
  )(7)
  for (let k = 0; k < 20; k++) {
    const after = await tsOf(db.image(random))
    t.equal(after.head, rec!.seq, `power cut ${k}: the record survives`)
    t.same(
      after.readings.filter((x) => x < 5),
      [0, 1, 2, 3, 4],
      `power cut ${k}: every reading before the last fsync survives (kept after it: ${after.readings.filter((x) => x >= 5).join(',') || 'none'})`,
    )
  }
  await j.close({ clean: false })
  await db.close()
})

t.test('a durable step writes the state entries it changed; entries changed by readings alone keep waiting for the checkpoint', async (t) => {
  const db = new PowerCutLevel()
  await db.open()
  const j = await Journal.open('mem', options({ db, readingSyncMs: 600_000 }))
  const s1 = { outlets: { A1: { wh: 1 }, B1: { wh: 1 } } }
  await j.commit({ records: [], state: s1 })
  t.equal(await db.get('o!A1'), undefined, 'the first state waits')
  await j.commit({ records: [fault(1)], state: s1 })
  t.equal(await db.get('m!state'), '1', 'a durable step writes the first state whole')
  t.equal(await db.get('o!B1'), JSON.stringify({ wh: 1 }))
  const s2 = { outlets: { A1: s1.outlets.A1, B1: { wh: 2 } } } // B1 changed by a reading
  await j.commit({ records: [], state: s2 })
  const s3 = { outlets: { A1: { wh: 5 }, B1: s2.outlets.B1 } } // A1 changed by a step with a record
  const before = db.writes
  await j.commit({ records: [fault(2)], state: s3 })
  t.equal(db.writes, before + 1)
  t.equal(await db.get('o!A1'), JSON.stringify({ wh: 5 }), 'the entry the durable step changed is written')
  t.equal(await db.get('o!B1'), JSON.stringify({ wh: 1 }), 'the entry changed by readings alone is not (boot rebuilds it from its readings)')
  t.equal(j.status().waitingWrites, 1)
  await j.flush()
  t.equal(await db.get('o!B1'), JSON.stringify({ wh: 2 }), 'flush() writes it')
  await j.close({ clean: true })
  await db.close()
})
