/**
 * kill -9: a child process runs the session engine and the journal on real
 * LevelDB on disk, the way the daemon drives them, against meters that are a
 * deterministic function of time; the test kills it at random moments (during
 * start-up and boot recovery too), 200 times, and after every kill checks the
 * log: the chain verifies with no seq gap, no session ends twice, every register
 * a record claims is one the meter had, nothing billed exceeds the meter's
 * register delta, and every record the child reported committed is there with
 * the same hash, and every session closed `power-loss` ends at or after the last
 * reading the child reported stepped into it (a process death loses no reading).
 * After every boot, every session.started has exactly one session.ended. Also: a second process gets JOURNAL_LOCKED, and reading works
 * on a snapshot while the daemon runs (with the lighter journal-only workload).
 */
import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'
import { Journal, openOffline, storedRecords, verifyDb } from '../daemon/journal/index.js'
import type { JournalRecord } from '../core/types.js'
import { checkLog, offlineRecords, rng } from './fixtures/journal-workload.js'
import { checkEngineLog } from './fixtures/engine-site.js'
import { siteConfig } from './fixtures/engine-site-config.js'
import { type LineChild, spawnLineChild, untilCommitAfterReady } from './helpers/line-child.js'

// The whole file may take as long as its one long chain is allowed to (more than .taprc's 240 s
// when it shares the cores with other files).
t.setTimeout(600_000)

const KILLS = 200
const OUTLETS = 3
const SEED = 0x5eed

// The children are the compiled fixtures beside this file (npm test builds before it runs).
const fixture = (name: string): string => fileURLToPath(new URL(`./fixtures/${name}.js`, import.meta.url))
const workloadChild = fixture('journal-child')
const engineChild = fixture('journal-engine-child')
const readingsChild = fixture('journal-readings-child')

const dir = mkdtempSync(join(tmpdir(), 'outpost-crash-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

const configFile = join(mkdtempSync(join(tmpdir(), 'outpost-crash-config-')), 'site.json')
writeFileSync(configFile, JSON.stringify(siteConfig()))
t.teardown(() => rmSync(join(configFile, '..'), { recursive: true, force: true }))

const children = new Set<ChildProcess>()
t.teardown(() => {
  for (const c of children) c.kill('SIGKILL')
})

interface Run extends LineChild {
  ready: Promise<number>
}

function start(seed: number, flag?: string, kind: 'engine' | 'workload' = 'engine', where = dir): Run {
  const args = kind === 'engine' ? [engineChild, where, String(seed), configFile] : [workloadChild, where, String(seed), String(OUTLETS)]
  const run = spawnLineChild([...args, ...(flag ? [flag] : [])], children)
  const ready = run.waitFor((l) => l.startsWith('ready ')).then(() => Number(run.lines.find((l) => l.startsWith('ready '))!.split(' ')[1]))
  ready.catch(() => {})
  return { ...run, ready }
}

async function allRecords(): Promise<JournalRecord[]> {
  return offlineRecords(dir).catch((err: unknown) => {
    // Killed before its first open created the journal: nothing was ever committed.
    if ((err as { code?: string }).code === 'JOURNAL_MISSING' && committed.size === 0) return []
    throw err
  })
}

const committed = new Map<number, string>()
/** The ts of the last reading each session was stepped with, as the children reported once its commit resolved. */
const lastStepped = new Map<string, number>()
function collect(run: Run): void {
  for (const l of run.lines) {
    if (l.startsWith('g ')) {
      const [, sessionId, ts] = l.split(' ')
      lastStepped.set(sessionId!, Math.max(lastStepped.get(sessionId!) ?? 0, Number(ts)))
    }
    if (!l.startsWith('c ')) continue
    const [, seq, hash] = l.split(' ')
    committed.set(Number(seq), hash!)
  }
}

/** A session closed `power-loss` must be billed up to the last reading stepped into it before the kill. */
function checkNothingLost(records: JournalRecord[]): string[] {
  const problems: string[] = []
  for (const r of records) {
    if (r.type !== 'session.ended' || r.reason !== 'power-loss') continue
    const last = lastStepped.get(r.sessionId)
    if (last !== undefined && Date.parse(r.endedAt) < last)
      problems.push(
        `${r.sessionId} closed power-loss at ${r.endedAt}, before its last stepped reading ${new Date(last).toISOString()} (${last - Date.parse(r.endedAt)} ms of metering lost)`,
      )
  }
  return problems
}

t.test(`kill -9 at ${KILLS} random moments: nothing committed is lost, the chain holds, every session ends once`, { timeout: 600_000 }, async (t) => {
  const random = rng(SEED)
  let problems = 0
  let readyRuns = 0
  let killedBeforeReady = 0
  for (let i = 0; i < KILLS; i++) {
    const run = start(SEED + i)
    const early = random() < 0.25
    if (early) {
      // Anywhere from process start-up to the middle of boot recovery.
      await new Promise((r) => setTimeout(r, 20 + Math.floor(random() * 150)))
      if (run.lines.some((l) => l.startsWith('ready'))) readyRuns++
      else killedBeforeReady++
    } else {
      await run.ready
      readyRuns++
      await new Promise((r) => setTimeout(r, Math.floor(random() * 120)))
      await untilCommitAfterReady(run, 5000)
    }
    run.child.kill('SIGKILL')
    await run.exited
    collect(run)
    const errorLine = run.lines.find((l) => l.startsWith('error'))
    if (errorLine) {
      t.fail(`run ${i}: ${errorLine}`)
      problems++
      break
    }
    const records = await allRecords()
    const found = checkEngineLog(records, false)
    found.push(...checkNothingLost(records))
    const stoppedLine = run.lines.find((l) => l.startsWith('replay-stopped'))
    if (stoppedLine) found.push(`run ${i}: ${stoppedLine}`)
    const bySeq = new Map(records.map((r) => [r.seq, r.hash]))
    for (const [seq, hash] of committed)
      if (bySeq.get(seq) !== hash) found.push(`seq ${seq} was reported committed but is ${bySeq.has(seq) ? 'different' : 'missing'}`)
    if (run.lines.some((l) => l.startsWith('ready'))) {
      // Boot ran to the end in this run: everything started before it has ended.
      const bootHead = Number(run.lines.find((l) => l.startsWith('ready'))!.split(' ')[1])
      found.push(
        ...checkEngineLog(
          records.filter((r) => r.seq <= bootHead),
          true,
        ).map((p) => `after boot: ${p}`),
      )
    }
    if (found.length > 0) {
      t.fail(`after kill ${i + 1}: ${found.slice(0, 5).join('; ')}`)
      problems++
      if (problems > 3) break
    }
  }
  t.equal(problems, 0, `${KILLS} kills without a broken invariant`)
  t.ok(committed.size > KILLS, `records were committed between kills (${committed.size})`)
  t.ok(
    readyRuns > KILLS / 2 && killedBeforeReady > 0,
    `kills landed both while running (${readyRuns}) and during start-up/recovery (${killedBeforeReady})`,
  )

  // A clean run at the end: recovery closes what the last kill left open, then a clean stop.
  const last = start(SEED + KILLS, '--stop')
  t.equal(await last.exited, 0)
  t.ok(last.lines.includes('stopped'))
  collect(last)
  const records = await allRecords()
  t.same(checkEngineLog(records, true), [], 'final log: every session.started has exactly one session.ended')
  t.same(checkNothingLost(records), [], 'every session closed power-loss is billed up to its last stepped reading')
  const checkedLoss = records.filter((r) => r.type === 'session.ended' && r.reason === 'power-loss' && lastStepped.has(r.sessionId)).length
  t.ok(checkedLoss > KILLS / 10, `sessions closed power-loss after readings were stepped into them: ${checkedLoss}`)
  t.ok(records.filter((r) => r.type === 'session.ended').length > KILLS / 4, 'sessions ran between kills')
  const powerLoss = records.filter((r) => r.type === 'session.ended' && r.reason === 'power-loss').length
  t.ok(powerLoss > 0, `sessions left open by kills were closed with power-loss (${powerLoss})`)
  const starts = records.filter((r) => r.type === 'gateway.started')
  t.equal((starts.at(-1) as { cleanShutdown: boolean }).cleanShutdown, false, 'the run after a kill reports an unclean shutdown')

  const again = start(SEED + KILLS + 1, '--stop')
  t.equal(await again.exited, 0)
  const after = await allRecords()
  const lastStart = after.filter((r) => r.type === 'gateway.started').at(-1) as { cleanShutdown: boolean }
  t.equal(lastStart.cleanShutdown, true, 'the run after a clean stop reports a clean shutdown')
  const j = await openOffline(dir)
  const report = await verifyDb(j.db)
  await j.close()
  t.equal(report.break, undefined)
  t.equal(report.count, after.length)
})

t.test('a second process on the same directory gets JOURNAL_LOCKED; a snapshot can be read meanwhile', async (t) => {
  const lockDir = mkdtempSync(join(tmpdir(), 'outpost-lock-'))
  t.teardown(() => rmSync(lockDir, { recursive: true, force: true }))
  const first = start(1, undefined, 'workload', lockDir)
  await first.ready
  const second = start(2, undefined, 'workload', lockDir)
  await second.waitFor((l) => l.startsWith('error'))
  t.equal(await second.exited, 3)
  t.match(
    second.lines.find((l) => l.startsWith('error')),
    /^error JOURNAL_LOCKED another outpost is already running on /,
  )
  await t.rejects(openOffline(lockDir), { code: 'JOURNAL_LOCKED' }, 'direct open is refused while the daemon runs')
  await first.waitFor((l) => l.startsWith('c '))
  const snap = await openOffline(lockDir, { allowSnapshot: true })
  t.equal(snap.mode, 'snapshot')
  const report = await verifyDb(snap.db)
  const snapRecords: JournalRecord[] = []
  for await (const { record } of storedRecords(snap.db)) if (record) snapRecords.push(record)
  await snap.close()
  t.equal(report.break, undefined, 'the snapshot of a live journal verifies')
  t.same(checkLog(snapRecords, false), [], 'and holds the workload invariants')
  t.ok((report.last ?? 0) > 0)
  first.child.kill('SIGTERM')
  t.equal(await first.exited, 0, 'SIGTERM stops the child cleanly')
  t.ok(first.lines.includes('stopped'))
})

t.test("kill -9 right after a reading's commit resolved, never fsynced: the reopened journal has every reading reported", async (t) => {
  for (const [n, after] of [
    [1, 5],
    [2, 400],
    [3, 1500],
  ] as const) {
    const where = mkdtempSync(join(tmpdir(), 'outpost-readings-kill-'))
    t.teardown(() => rmSync(where, { recursive: true, force: true }))
    const child = spawn(process.execPath, [readingsChild, where, `s-${n}`], { stdio: ['ignore', 'pipe', 'pipe'] })
    children.add(child)
    const reported: number[] = []
    const exited = new Promise<void>((resolve) => child.on('exit', () => (children.delete(child), resolve())))
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (line.startsWith('error')) reject(new Error(line))
        if (!line.startsWith('g ')) return
        reported.push(Number(line.slice(2)))
        // Killed synchronously on the line: the child may be anywhere in its next commit.
        if (reported.length === after) child.kill('SIGKILL'), resolve()
      })
    })
    await exited
    const j = await Journal.open(where, { bootId: 'check', clockSynced: () => true, now: Date.now, compactEveryMs: 0 })
    const held = await j.readings(`s-${n}`)
    await j.close({ clean: true })
    const ts = new Set(held.map((g) => g.reading.ts))
    const missing = reported.filter((x) => !ts.has(x))
    t.same(missing, [], `killed after ${after} readings: all ${reported.length} reported readings are held (${held.length} held)`)
    t.equal(held.find((g) => g.reading.ts === reported.at(-1))?.now, reported.at(-1)! + 2, 'with the now they were stepped at')
  }
})
