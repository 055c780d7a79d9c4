/**
 * Power cuts: the seeded workload runs through the journal over a storage layer
 * that loses every write not yet fsynced (keeping any subset of them, as
 * LevelDB's log recovery may) when the power dies at a random write — during
 * boot recovery too. After each cut the disk image is reopened and checked:
 * - open never fails (no JOURNAL_CORRUPT from a cut);
 * - every record whose commit resolved is there, unchanged; the chain verifies
 *   with no gap; no session ends twice; nothing billed exceeds the meter delta;
 * - each persisted state entry is one that was committed at or after the last
 *   fsynced step that wrote it (a durable step writes the entries it changed;
 *   an entry changed by readings alone waits for the checkpoint, and its
 *   readings are on disk to rebuild it): a power cut loses at most the readings
 *   since the last sync, never a record, and never mixes in something that was
 *   not committed;
 * - after boot, every session.started has exactly one session.ended, closed at
 *   a reading that survived the cut.
 */
import t from 'tap'
import { isDeepStrictEqual } from 'node:util'
import { Journal, verifyRecords } from '../daemon/journal/index.js'
import type { JournalRecord } from '../core/types.js'
import { tinySessionEnded } from './helpers/memory-log.js'
import { PowerCutLevel } from './fixtures/power-cut-level.js'
import { BASE, Workload, checkLog, rng, type SimState } from './fixtures/journal-workload.js'

const SEEDS = [1, 2, 3, 4, 5, 6, 7, 8]
const CUTS_PER_SEED = 30
const OUTLETS = 4

async function readAll(j: Journal): Promise<JournalRecord[]> {
  return j.head() === 0 ? [] : j.read(j.oldest(), 1_000_000)
}

function isCut(err: unknown): boolean {
  return (err as { code?: string }).code === 'JOURNAL_WRITE_FAILED'
}

for (const seed of SEEDS) {
  t.test(`seed ${seed}: ${CUTS_PER_SEED} power cuts`, async (t) => {
    const random = rng(seed)
    let now = BASE + seed * 1_000_000
    const clock = (): number => now
    let db = new PowerCutLevel()
    await db.open()
    const reported = new Map<number, string>()
    const problems: string[] = []
    let lostReadings = 0
    let cutsDuringBoot = 0

    for (let cycle = 0; cycle <= CUTS_PER_SEED && problems.length === 0; cycle++) {
      const bootId = `s${seed}c${cycle}`
      let journal: Journal
      try {
        journal = await Journal.open('power-cut', {
          bootId,
          clockSynced: () => random() < 0.9,
          now: clock,
          compactEveryMs: 0,
          readingSyncMs: random() < 0.2 ? 0 : 600_000,
          db,
        })
      } catch (err) {
        problems.push(`cycle ${cycle}: open failed after a power cut: ${(err as Error).message}`)
        break
      }
      // The disk image: nothing reported committed is missing, the chain holds.
      const records = await readAll(journal)
      problems.push(...checkLog(records, false).map((p) => `cycle ${cycle} after the cut: ${p}`))
      const bySeq = new Map(records.map((r) => [r.seq, r.hash]))
      for (const [seq, hash] of reported)
        if (bySeq.get(seq) !== hash)
          problems.push(`cycle ${cycle}: seq ${seq} was reported committed but is ${bySeq.has(seq) ? 'different' : 'missing'}`)

      // History of what this run commits: the state entries that may be on disk after the next cut.
      const loaded = (await journal.loadState()) as SimState | undefined
      const history: SimState[] = loaded ? [loaded] : []
      let lastDurable = loaded ? 0 : -1
      /** Per state entry ('site' or an outlet id): the history index of the last fsynced step that wrote it. */
      const lastWritten = new Map<string, number>()
      if (loaded) for (const id of ['site', ...Object.keys(loaded.outlets)]) lastWritten.set(id, 0)
      const workload = new Workload(journal, random, clock, OUTLETS, bootId, {
        attempted: (state) => {
          history.push(state)
        },
        committed: (sealed, state, durable) => {
          for (const r of sealed) reported.set(r.seq, r.hash)
          if (!durable) return
          const k = history.lastIndexOf(state)
          const prev = history[k - 1]
          // The first state ever persisted goes out whole; afterwards a durable step writes what it changed.
          const first = lastDurable < 0
          if (first || prev?.site !== state.site) lastWritten.set('site', k)
          for (const id of Object.keys(state.outlets)) if (first || prev?.outlets[id] !== state.outlets[id]) lastWritten.set(id, k)
          lastDurable = k
        },
      })
      const checkCut = async (image: Map<string, string>): Promise<void> => {
        const next = await PowerCutLevel.fromImage(image)
        let j: Journal
        try {
          j = await Journal.open('power-cut', { bootId: 'check', clockSynced: () => true, now: clock, compactEveryMs: 0, db: next })
        } catch (err) {
          await next.close()
          return void problems.push(`cycle ${cycle}: the image after the cut does not open: ${(err as Error).message}`)
        }
        const survived = (await j.loadState()) as SimState | undefined
        await j.close({ clean: false })
        await next.close()
        if (lastDurable >= 0 && !survived) return void problems.push(`cycle ${cycle}: a durable state was lost entirely`)
        if (!survived) return
        const since = (id: string): SimState[] => history.slice(lastWritten.get(id) ?? 0)
        for (const [id, entry] of Object.entries(survived.outlets)) {
          if (!since(id).some((s) => isDeepStrictEqual(s.outlets[id], entry)))
            problems.push(
              `cycle ${cycle}: outlet ${id} came back as a state that was never committed since the last sync that wrote it: ${JSON.stringify(entry)}`,
            )
        }
        if (!since('site').some((s) => isDeepStrictEqual(s.site, survived.site)))
          problems.push(`cycle ${cycle}: site section came back as ${JSON.stringify(survived.site)}`)
        const newest = history[history.length - 1]
        if (newest && !isDeepStrictEqual(newest.outlets, survived.outlets)) lostReadings++
      }

      if (cycle === CUTS_PER_SEED) {
        // The last run: boot recovery, then a clean stop; the whole log must be final.
        await workload.boot()
        await workload.shutdown()
        const db2 = await PowerCutLevel.fromImage(db.everything())
        const j = await Journal.open('power-cut', { bootId: 'final', clockSynced: () => true, now: clock, compactEveryMs: 0, db: db2 })
        t.equal(j.previousCleanShutdown, true, 'the final stop was clean')
        problems.push(...checkLog(await readAll(j), true).map((p) => `final: ${p}`))
        await j.close({ clean: true })
        break
      }

      // The power dies at a random write from here: during boot about one time in five.
      db.cutDuringWrite(random() < 0.2 ? 1 : 2 + Math.floor(random() * 25), random)
      let bootDone = false
      try {
        const boot = await workload.boot()
        bootDone = true
        const head = boot[boot.length - 1]!.seq
        problems.push(
          ...checkLog(
            (await readAll(journal)).filter((r) => r.seq <= head),
            true,
          ).map((p) => `cycle ${cycle} after boot: ${p}`),
        )
        for (;;) {
          now += 50 + Math.floor(random() * 3000)
          await workload.step()
        }
      } catch (err) {
        if (!isCut(err) || !db.poweredOff) {
          problems.push(`cycle ${cycle}: unexpected failure: ${(err as Error).stack}`)
          break
        }
      }
      if (!bootDone) cutsDuringBoot++
      const image = db.image(random)
      await checkCut(image)
      await db.close()
      db = await PowerCutLevel.fromImage(image)
      now += 60_000 + Math.floor(random() * 600_000)
    }
    await db.close()
    t.same(problems.slice(0, 10), [], 'no invariant broken')
    t.ok(reported.size > CUTS_PER_SEED, `records committed across the cuts (${reported.size})`)
    t.comment(`readings lost to cuts in ${lostReadings} of ${CUTS_PER_SEED} cuts; ${cutsDuringBoot} cuts during boot recovery`)
  })
}

t.test('power cuts during retention never leave a hole in the log', async (t) => {
  const random = rng(99)
  const DAY = 86_400_000
  let holes = 0
  let cutsDuringCompaction = 0
  for (let round = 0; round < 40; round++) {
    let now = BASE
    const db = new PowerCutLevel()
    await db.open()
    const j = await Journal.open('retention', {
      bootId: `r${round}`,
      clockSynced: () => true,
      now: () => now,
      compactEveryMs: 0,
      retentionDays: 1,
      db,
    })
    // 5000 old records with readings of their sessions, all acknowledged, then 10 recent ones.
    for (let i = 0; i < 50; i++) {
      await j.commit({
        records: Array.from({ length: 100 }, (_, k) => tinySessionEnded(`s-${i}-${k}`, now)),
        readings: Array.from({ length: 100 }, (_, k) => ({
          outlet: 'A1',
          sessionId: `s-${i}-${k}`,
          reading: { ts: now, currentA: 1, powerW: 1, energyWh: 1, voltageV: 230 },
        })),
      })
    }
    now += 2 * DAY
    await j.commit({
      records: Array.from({ length: 10 }, () => ({ type: 'outlet.fault' as const, ts: new Date(now).toISOString(), outlet: 'A1', detail: 'x' })),
    })
    await j.ack(j.head())
    // Compaction writes: per chunk of 2000 records, their sessions' readings, then the records; then a final fsync.
    db.cutDuringWrite(1 + Math.floor(random() * 7), random)
    try {
      await j.compact()
    } catch (err) {
      if ((err as { code?: string }).code !== 'JOURNAL_WRITE_FAILED') throw err
      cutsDuringCompaction++
    }
    if (!db.poweredOff) db.cutNow()
    const after = await PowerCutLevel.fromImage(db.image(random))
    const j2 = await Journal.open('retention', { bootId: 'check', clockSynced: () => true, now: () => now, compactEveryMs: 0, db: after })
    const held = await j2.read(j2.oldest(), 100_000)
    const contiguous = held.length === j2.head() - j2.oldest() + 1 && held.every((r, i) => r.seq === j2.oldest() + i)
    if (!contiguous || verifyRecords(held) !== undefined || j2.head() !== 5010) holes++
    await j2.close({ clean: true })
    await after.close()
    await db.close()
  }
  t.equal(holes, 0, 'the held records are always one contiguous, verified range up to the head')
  t.ok(cutsDuringCompaction > 30, `most cuts hit the compaction (${cutsDuringCompaction} of 40)`)
})
