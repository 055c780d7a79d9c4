/**
 * Journal benchmarks, each a ratio against a baseline measured in the same run:
 * - durable appends/s: Journal.commit of one engine record per step (sealed,
 *   hashed, state section, fsync) vs raw classic-level batch(..., {sync: true})
 *   of the same encoded records (goal >= 0.8x);
 * - readings/s with group commit vs the same readings each fsynced, and vs a
 *   raw un-synced batch of the same entries;
 * - start time (open + tail verification + state load + close) with a
 *   1,000,000-record journal vs an empty one (goal <= 1.5x);
 * - bytes on disk per record and per reading (after LevelDB compaction) vs
 *   their JSON size.
 * Runs alone with `node dist/bench/journal.js`.
 */
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import { Journal, journalLocation, sealRecordText, GENESIS_PREV } from '../daemon/journal/index.js'
import type { PersistedEngineState, RecordBody, SessionEndedBody } from '../core/types.js'
import { row, type BenchRow } from './lib.js'

const T0 = Date.UTC(2026, 0, 1)

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'outpost-bench-journal-'))
}

/** classic-level's compactRange (not in the `level` typings): settles LevelDB so sizes and opens are steady-state. */
function compactAll(db: Level<string, string>): Promise<void> {
  return (db as unknown as { compactRange: (a: string, b: string) => Promise<void> }).compactRange('\u0000', '\uffff')
}

function dirBytes(dir: string): number {
  let total = 0
  for (const f of readdirSync(dir)) total += statSync(join(dir, f)).size
  return total
}

/** The journal's options for a bench: a fixed clock, no compaction. */
export const options = (now = (): number => T0) => ({ bootId: 'bench-boot', clockSynced: () => true, now, compactEveryMs: 0 })

/** A billing record as the engine writes it: the largest and most common kind (the signing bench signs it). */
export function ended(i: number): SessionEndedBody {
  const at = (ms: number): string => new Date(T0 + ms).toISOString()
  return {
    type: 'session.ended',
    ts: at(i * 60_000),
    sessionId: `01J${String(i).padStart(10, '0')}`,
    outlet: `A${(i % 8) + 1}`,
    userId: `u-${i % 97}`,
    planId: 'standard',
    trigger: 'activation',
    startedAt: at(i * 60_000 - 3_600_000),
    endedAt: at(i * 60_000),
    reason: 'unplugged',
    durationS: 3600,
    energyWh: 7012.5,
    meterStartWh: 1_234_567.5,
    meterEndWh: 1_241_580,
    currency: 'CAD',
    lines: [
      { from: at(i * 60_000 - 3_600_000), to: at(i * 60_000), energyWh: 7012.5, seconds: 3600, perKwh: 0.15, perHour: 0.5, amountMicros: 1_551_875 },
    ],
    activationFee: 50,
    total: 205,
    offline: false,
    pausedS: 0,
  }
}

function started(i: number): RecordBody {
  return {
    type: 'session.started',
    ts: new Date(T0 + i * 1000).toISOString(),
    sessionId: `01J${String(i).padStart(10, '0')}`,
    outlet: `A${(i % 8) + 1}`,
    userId: `u-${i % 97}`,
    planId: 'standard',
    trigger: 'activation',
    meterWh: 1_234_567.5 + i,
  }
}

function outletState(i: number): unknown {
  return {
    state: 'charging',
    session: {
      id: `01J${String(i).padStart(10, '0')}`,
      userId: `u-${i % 97}`,
      startedAt: T0,
      meterStartWh: 1_234_567.5,
      lastTs: T0 + i * 1000,
      lastWh: 1_234_567.5 + i * 2,
      peakA: 31.2,
      costMicros: i * 100,
    },
  }
}

/**
 * Durable appends: sequential commits of one billing record vs raw synced
 * batches of the same encoded records. The two run interleaved, one operation
 * each in turn, so that both see the same disk and CPU weather on a shared
 * machine. `withState` adds the outlet's state entry to each journal step (more
 * bytes than the baseline writes, so it is reported apart).
 */
async function durableAppends(withState: boolean): Promise<BenchRow> {
  const N = 400
  // The engine builds the bodies; neither side's timing includes that.
  const bodies = Array.from({ length: N + 1 }, (_, i) => ended(i))
  const sealed: { key: string; value: string }[] = []
  let prev = GENESIS_PREV
  for (let i = 1; i <= N; i++) {
    const { record, text } = sealRecordText(bodies[i]!, i, prev, 'bench-boot', true)
    sealed.push({ key: 'r!' + String(i).padStart(12, '0'), value: text })
    prev = record.hash
  }
  const round = async (): Promise<[number, number]> => {
    const rawDir = tmp()
    const jDir = tmp()
    const db = new Level<string, string>(rawDir, { keyEncoding: 'utf8', valueEncoding: 'utf8' })
    await db.open()
    const j = await Journal.open(jDir, options())
    let state: PersistedEngineState = { outlets: {}, wallets: { 'u-1': 1000 } }
    let rawMs = 0
    let jMs = 0
    const rawOne = async (i: number): Promise<void> => {
      const e = sealed[i - 1]!
      const t = performance.now()
      await db.batch([{ type: 'put', key: e.key, value: e.value }], { sync: true } as object)
      rawMs += performance.now() - t
    }
    const journalOne = async (i: number): Promise<void> => {
      if (withState) state = { ...state, outlets: { ...state.outlets, [`A${(i % 8) + 1}`]: { state: 'off', lastWh: i } } }
      const t = performance.now()
      await j.commit(withState ? { records: [bodies[i]!], state } : { records: [bodies[i]!] })
      jMs += performance.now() - t
    }
    for (let i = 1; i <= N; i++) {
      // Alternate who goes first: an fsync right after another file's fsync costs differently.
      if (i % 2 === 0) {
        await rawOne(i)
        await journalOne(i)
      } else {
        await journalOne(i)
        await rawOne(i)
      }
    }
    await db.close()
    await j.close({ clean: true })
    rmSync(rawDir, { recursive: true, force: true })
    rmSync(jDir, { recursive: true, force: true })
    return [N / (rawMs / 1000), N / (jMs / 1000)]
  }
  await round()
  const rawRuns: number[] = []
  const journalRuns: number[] = []
  for (let k = 0; k < 5; k++) {
    const [r, j] = await round()
    rawRuns.push(r)
    journalRuns.push(j)
  }
  return withState
    ? row(
        'journal durable appends/s, each step also writing an outlet state entry, vs raw synced batches of the records alone',
        'appends/s',
        rawRuns,
        journalRuns,
        { op: '>=', ratio: 0.7 },
      )
    : row(
        'journal durable appends/s (1 billing record per fsynced step) vs raw classic-level batch sync of the same encoded records',
        'appends/s',
        rawRuns,
        journalRuns,
        { op: '>=', ratio: 0.8 },
      )
}

/**
 * Readings: state-only steps with one journaled reading each (the outlet's
 * state entry + the reading). Three writers run interleaved, one operation each
 * in turn: the journal with its default "group commit" (readingSyncMs 5000: each
 * reading written unsynced at once, fsynced on the timer, the state entry
 * waiting for the checkpoint), the journal fsyncing every reading
 * (readingSyncMs 0), and raw un-synced classic-level batches of the same two
 * entries (so the journal writes less than the raw writer: no state entry).
 */
async function readings(): Promise<BenchRow[]> {
  const N = 1500
  const round = async (): Promise<[number, number, number]> => {
    const dirs = [tmp(), tmp(), tmp()]
    const grouped = await Journal.open(dirs[0]!, { ...options(), readingSyncMs: 5000 })
    const synced = await Journal.open(dirs[1]!, { ...options(), readingSyncMs: 0 })
    const db = new Level<string, string>(dirs[2]!, { keyEncoding: 'utf8', valueEncoding: 'utf8' })
    await db.open()
    const ms = [0, 0, 0]
    let gState: PersistedEngineState = { outlets: {} }
    let sState: PersistedEngineState = { outlets: {} }
    for (let i = 1; i <= N; i++) {
      const id = `A${(i % 8) + 1}`
      const reading = {
        outlet: id,
        sessionId: `s-${id}`,
        reading: { ts: T0 + i * 1000, currentA: 31.2, powerW: 7180, energyWh: 1_234_567.5 + i * 2, voltageV: 231.4 },
      }
      let t = performance.now()
      gState = { ...gState, outlets: { ...gState.outlets, [id]: outletState(i) } }
      await grouped.commit({ records: [], state: gState, readings: [reading] })
      ms[0] += performance.now() - t
      t = performance.now()
      sState = { ...sState, outlets: { ...sState.outlets, [id]: outletState(i) } }
      await synced.commit({ records: [], state: sState, readings: [reading] })
      ms[1] += performance.now() - t
      t = performance.now()
      await db.batch([
        { type: 'put', key: 'o!' + id, value: JSON.stringify(outletState(i)) },
        {
          type: 'put',
          key: `g!s-${id}!${String(T0 + i * 1000).padStart(15, '0')}`,
          value: JSON.stringify([31.2, 7180, 1_234_567.5 + i * 2, 231.4, id]),
        },
      ])
      ms[2] += performance.now() - t
    }
    // The group commit's one fsync belongs to its cost, and the raw writer gets one too.
    let t = performance.now()
    await grouped.flush()
    ms[0] += performance.now() - t
    t = performance.now()
    await db.put('m!sync', '1', { sync: true } as object)
    ms[2] += performance.now() - t
    await grouped.close({ clean: true })
    await synced.close({ clean: true })
    await db.close()
    for (const d of dirs) rmSync(d, { recursive: true, force: true })
    return [N / (ms[0]! / 1000), N / (ms[1]! / 1000), N / (ms[2]! / 1000)]
  }
  await round()
  const g: number[] = []
  const sy: number[] = []
  const raw: number[] = []
  for (let k = 0; k < 5; k++) {
    const [a, b, c] = await round()
    g.push(a)
    sy.push(b)
    raw.push(c)
  }
  return [
    row('journal readings/s, group commit (readingSyncMs 5000) vs every reading fsynced (readingSyncMs 0)', 'readings/s', sy, g, {
      op: '>=',
      ratio: 5,
    }),
    row('journal readings/s, group commit vs raw un-synced classic-level batches of the same entries', 'readings/s', raw, g, {
      op: '>=',
      ratio: 0.7,
    }),
  ]
}

/** Start time: open (lock, tail verification, state load) + close, with 1,000,000 records vs none. */
async function startTime(): Promise<{ row: BenchRow; buildS: number; bytesPerRecord: number }> {
  const RECORDS = 1_000_000
  const STEP = 2000
  const emptyDir = tmp()
  const bigDir = tmp()
  try {
    const state: PersistedEngineState = {
      outlets: Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`A${i + 1}`, outletState(i)])),
      wallets: { 'u-1': 1000 },
    }
    for (const dir of [emptyDir, bigDir]) {
      const j = await Journal.open(dir, options())
      await j.commit({ records: [], state })
      await j.close({ clean: true })
    }
    const t0 = performance.now()
    const big = await Journal.open(bigDir, options())
    for (let i = 0; i < RECORDS; i += STEP) {
      await big.commit({ records: Array.from({ length: STEP }, (_, k) => ((i + k) % 2 === 0 ? started(i + k) : ended(i + k))) })
    }
    await big.close({ clean: true })
    const buildS = (performance.now() - t0) / 1000
    // Let LevelDB settle its compactions so that the measured opens are steady-state.
    const settle = new Level<string, string>(journalLocation(bigDir), { keyEncoding: 'utf8', valueEncoding: 'utf8' })
    await settle.open()
    await compactAll(settle)
    await settle.close()
    const bytesPerRecord = dirBytes(journalLocation(bigDir)) / RECORDS
    const openClose = (dir: string) => async (): Promise<number> => {
      const t = performance.now()
      const j = await Journal.open(dir, options())
      await j.loadState()
      const dt = performance.now() - t
      if (dir === bigDir && j.head() !== RECORDS) throw new Error(`expected ${RECORDS} records, found ${j.head()}`)
      await j.close({ clean: true })
      return dt
    }
    const emptyRuns: number[] = []
    const bigRuns: number[] = []
    await openClose(emptyDir)()
    await openClose(bigDir)()
    // Many short runs: each is a few ms, dominated by two fsyncs (the running marker, the clean close).
    for (let k = 0; k < 31; k++) {
      emptyRuns.push(await openClose(emptyDir)())
      bigRuns.push(await openClose(bigDir)())
    }
    return {
      row: row('journal start time, 1,000,000 records vs empty (open, tail check, state load, close)', 'ms', emptyRuns, bigRuns, {
        op: '<=',
        ratio: 1.5,
      }),
      buildS,
      bytesPerRecord,
    }
  } finally {
    rmSync(emptyDir, { recursive: true, force: true })
    rmSync(bigDir, { recursive: true, force: true })
  }
}

/** Bytes on disk per record and per reading after compaction, against their JSON size. */
async function footprint(): Promise<BenchRow[]> {
  const measure = async (kind: 'record' | 'reading'): Promise<{ json: number; disk: number }> => {
    const N = 100_000
    const dir = tmp()
    try {
      const j = await Journal.open(dir, options())
      let json = 0
      for (let i = 0; i < N; i += 1000) {
        if (kind === 'record') {
          const sealed = await j.commit({ records: Array.from({ length: 1000 }, (_, k) => ((i + k) % 2 === 0 ? started(i + k) : ended(i + k))) })
          for (const r of sealed) json += JSON.stringify(r).length
        } else {
          const rs = Array.from({ length: 1000 }, (_, k) => ({
            outlet: 'A1',
            sessionId: `01J${String(Math.floor((i + k) / 3600)).padStart(10, '0')}`,
            reading: {
              ts: T0 + (i + k) * 1000,
              currentA: 31.2 + ((i + k) % 7) / 10,
              powerW: 7180 + ((i + k) % 13),
              energyWh: 1_234_567.5 + (i + k) * 2,
              voltageV: 231.4,
            },
          }))
          await j.commit({ records: [], readings: rs })
          for (const r of rs) json += JSON.stringify(r.reading).length
        }
      }
      await j.close({ clean: true })
      const db = new Level<string, string>(journalLocation(dir), { keyEncoding: 'utf8', valueEncoding: 'utf8' })
      await db.open()
      await compactAll(db)
      await db.close()
      return { json: json / N, disk: dirBytes(journalLocation(dir)) / N }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }
  const rec = await measure('record')
  const rd = await measure('reading')
  const r1 = row('journal bytes on disk per record (half session.started, half session.ended) vs its JSON', 'bytes', [rec.json], [rec.disk], {
    op: '<=',
    ratio: 1,
  })
  const r2 = row('journal bytes on disk per reading vs the reading as JSON', 'bytes', [rd.json], [rd.disk], { op: '<=', ratio: 1.5 })
  return [r1, r2]
}

/** All rows; `parts` (appends, readings, start, footprint) picks some, for `node dist/bench/journal.js appends`. */
export async function run(parts: string[] = ['appends', 'readings', 'start', 'footprint']): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  if (parts.includes('appends')) {
    rows.push(await durableAppends(false))
    rows.push(await durableAppends(true))
  }
  if (parts.includes('readings')) rows.push(...(await readings()))
  if (parts.includes('start')) {
    const start = await startTime()
    start.row.note = [
      start.row.note,
      `building the 1,000,000-record journal took ${start.buildS.toFixed(1)} s (${(1_000_000 / start.buildS).toFixed(0)} records/s in 2000-record steps); ${start.bytesPerRecord.toFixed(0)} bytes/record on disk`,
    ]
      .filter(Boolean)
      .join('; ')
    rows.push(start.row)
  }
  if (parts.includes('footprint')) rows.push(...(await footprint()))
  return rows
}

const invoked = process.argv[1] ?? ''
if (invoked.endsWith('/bench/journal.js')) {
  const t0 = performance.now()
  process.stdout.on('error', () => {})
  run(process.argv.length > 2 ? process.argv.slice(2) : undefined).then(
    (rows) => {
      for (const r of rows) {
        process.stdout.write(
          `${r.met ? 'met ' : 'MISS'}  ${r.figure}: ${r.value.toFixed(1)} vs ${r.baseline.toFixed(1)} ${r.unit} = ${r.ratio.toFixed(2)}x (goal ${r.goal})${r.note ? ` — ${r.note}` : ''}\n`,
        )
      }
      process.stdout.write(`(${((performance.now() - t0) / 1000).toFixed(1)} s)\n`)
    },
    (err: unknown) => {
      process.stderr.write(`bench/journal: ${(err as Error).stack ?? String(err)}\n`)
      process.exitCode = 1
    },
  )
}
