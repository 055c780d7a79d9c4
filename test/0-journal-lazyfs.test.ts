/**
 * Power cuts on a real file system: the session engine and the journal run in a
 * child with `storage.dir` on LazyFS (a FUSE file system that drops every write
 * not fsynced on command), so LevelDB's own files — the log, MANIFEST, CURRENT,
 * table files written by memtable flushes and compactions (forced: a 16 kB write
 * buffer) — are cut for real. The test SIGKILLs the child and clears LazyFS's
 * cache at random points: while charging (mid-session, mid-batch, mid-compaction),
 * during boot recovery (Journal.open and the boot step), and during `outpost
 * repair` (repairJournal in a child). After every cut, on a copy of what survived:
 * LevelDB opens, every record reported committed is there unchanged, the chain
 * verifies from seq 1 with no gap, no session ends twice, nothing is billed above
 * the meter's delta. After every boot: every session that started has ended, and
 * a session closed by power-loss was billed up to at least the meter readingSyncMs
 * before the last round the child started (the cut itself is at most one poll
 * later). No boot may meet JOURNAL_CORRUPT or need the salvage path.
 *
 * Then bit rot on top of cuts: after a cut, bytes flipped in one file of the journal (a log,
 * a table, MANIFEST, CURRENT) or in its seq marker, and a boot. Whatever the flip hit, the
 * boot either opens the journal as it was or salvages (and says so in gateway.started), and
 * it never gives out a seq an earlier run had given.
 */
import t, { type Test } from 'tap'
import type { ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { access, cp, mkdir, readdir, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { openOffline, storedRecords } from '../daemon/journal/index.js'
import type { JournalRecord, SiteConfig } from '../core/types.js'
import { offlineRecords, rng } from './fixtures/journal-workload.js'
import { checkEngineLog, registerMWh } from './fixtures/engine-site.js'
import { siteConfig } from './fixtures/engine-site-config.js'
import { type LineChild, spawnLineChild, untilCommitAfterReady } from './helpers/line-child.js'
import { flipBytes, LazyFsHang, mountLazyfs, type LazyFs } from './helpers/lazyfs.js'

// The whole file may take as long as its one long chain is allowed to (more than .taprc's 240 s
// when it shares the cores with other files).
t.setTimeout(900_000)

const CHAINS = 7
const CUTS_PER_CHAIN = 30
const SEED = 0x1a2f5

// The child is the compiled fixture beside this file (npm test builds before it runs).
const childJs = fileURLToPath(new URL('./fixtures/lazyfs-child.js', import.meta.url))

const config: SiteConfig = siteConfig()
const { pollMs } = config.sessions
const syncMs = config.storage.readingSyncMs
const configDir = mkdtempSync(join(tmpdir(), 'outpost-lazyfs-config-'))
const configFile = join(configDir, 'site.json')
writeFileSync(configFile, JSON.stringify(config))
t.teardown(() => rmSync(configDir, { recursive: true, force: true }))

const children = new Set<ChildProcess>()
t.teardown(() => {
  for (const c of children) c.kill('SIGKILL')
})

type Run = LineChild

function start(args: string[]): Run {
  return spawnLineChild([childJs, ...args], children)
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

async function kill(fs: LazyFs, run: Run): Promise<void> {
  run.child.kill('SIGKILL')
  await fs.guard('the child dying', run.exited)
}

/** Let a charging child boot, run `ms` more (and commit at least once), then SIGKILL it. */
async function bootThenKill(fs: LazyFs, run: Run, ms: number): Promise<void> {
  await fs.guard(
    'the child booting',
    run.waitFor((l) => l.startsWith('ready ')),
  )
  await sleep(ms)
  await fs.guard('the child committing', untilCommitAfterReady(run, 5000))
  await kill(fs, run)
}
const wh = (i: number, t: number): number => registerMWh(i, t) / 1000

/** The LevelDB LOG, read through the mount after the child died and before the cut drops it. */
async function readLog(fs: LazyFs, storageDir: string): Promise<string> {
  return fs.guard('reading the LevelDB LOG', readFile(join(storageDir, 'journal', 'LOG'), 'utf8')).catch((err: unknown) => {
    if (err instanceof LazyFsHang) throw err
    return '' // not created yet, or being rotated by a repair
  })
}

/** Whether the LOG shows a table write or a compaction that had started and not finished. */
function compactionInFlight(log: string): boolean {
  let open = 0
  for (const l of log.split('\n')) {
    if (/Compacting \d+@\d+/.test(l) || /Level-0 table #\d+: started/.test(l)) open++
    else if (/Compacted \d+@\d+/.test(l) || /Level-0 table #\d+: \d+ bytes/.test(l) || /compaction error|Compaction error/i.test(l))
      open = Math.max(0, open - 1)
  }
  return open > 0
}

function compactions(log: string): number {
  return (log.match(/Compacted \d+@\d+/g) ?? []).length
}

const exists = (path: string): Promise<boolean> =>
  access(path).then(
    () => true,
    () => false,
  )

/** What survived the cut, read from a copy (so that the next boot is the first to open the cut directory). */
async function survivors(fs: LazyFs, storageDir: string): Promise<JournalRecord[] | 'missing'> {
  // A cut between the two renames of a repair's swap leaves the finished replacement in journal.next (boot moves it in).
  const from = (await fs.guard('looking for the journal', exists(join(storageDir, 'journal'))))
    ? join(storageDir, 'journal')
    : join(storageDir, 'journal.next')
  if (!(await fs.guard('looking for CURRENT', exists(join(from, 'CURRENT'))))) return 'missing'
  const copy = mkdtempSync(join(tmpdir(), 'outpost-lazyfs-copy-'))
  try {
    await fs.guard('copying the journal', cp(from, join(copy, 'journal'), { recursive: true, filter: (src) => !src.endsWith('/LOCK') }))
    return await offlineRecords(copy)
  } finally {
    rmSync(copy, { recursive: true, force: true })
  }
}

/** The log's invariants, registers to within 0.5 mWh. */
const checkLog = (records: JournalRecord[], final: boolean): string[] => checkEngineLog(records, final, 0.0005)

/**
 * LazyFS locking up or dying (its own failure, not the code under test): the children are
 * killed, the mount replaced, and the caller runs the chain again; at most twice per test.
 */
function retries(t: Test): { readonly hangs: number; remount(err: unknown, fs: LazyFs, chain: number): Promise<LazyFs> } {
  let hangs = 0
  return {
    get hangs() {
      return hangs
    },
    async remount(err, fs, chain) {
      if (!(err instanceof LazyFsHang) || ++hangs > 2) throw err
      for (const c of children) c.kill('SIGKILL')
      t.comment(`${err.message}: chain ${chain} runs again on a fresh mount`)
      fs.unmount()
      return mountLazyfs()
    },
  }
}

type Scenario = 'charging' | 'boot' | 'repair'

t.test(
  `${CHAINS * CUTS_PER_CHAIN} power cuts on LazyFS: LevelDB opens, nothing committed is lost, the chain holds, every session ends once`,
  { timeout: 900_000 },
  async (t) => {
    let fs = await mountLazyfs()
    t.teardown(() => fs.unmount())
    // LazyFS itself can lock up (rarely: a FUSE request that never gets its answer). That is the
    // tool failing, not a cut: the chain it was on runs again from scratch on a fresh mount.
    const lazyFs = retries(t)
    const began = Date.now()
    const random = rng(SEED)
    const cuts: Record<Scenario, number> = { charging: 0, boot: 0, repair: 0 }
    let midCompaction = 0
    let killedInRecovery = 0
    let compacted = 0
    let powerLossChecked = 0
    let problems = 0
    let salvages = 0
    let settled = 0
    let recordsSeen = 0

    for (let chain = 0; chain < CHAINS && problems <= 3; chain++) {
      try {
        const storageDir = join(fs.mnt, `chain-${chain}`)
        await fs.guard('creating the chain directory', mkdir(storageDir))
        const committed = new Map<number, string>()
        let clock = 1_767_225_600_000 + chain * 86_400_000 // 2026-01-01, one day per chain
        let lastP: number | undefined
        /** Power-loss bound to check at the next completed boot: the last round started before the cut. */
        let pendingBound: number | undefined
        let lastHead = 0

        for (let cut = 0; cut < CUTS_PER_CHAIN && problems <= 3; cut++) {
          const roll = random()
          const scenario: Scenario = cut === 0 ? 'charging' : roll < 0.6 ? 'charging' : roll < 0.82 ? 'boot' : 'repair'
          let run: Run
          clock = Math.max(clock, lastP ?? 0) + 60_000
          if (scenario === 'repair') {
            run = start(['repair', storageDir])
            await fs.guard(
              'the repair starting',
              run.waitFor((l) => l === 'repairing'),
            )
            await sleep(Math.floor(random() * 60))
          } else {
            run = start(['run', storageDir, String(SEED + chain * 1000 + cut), configFile, String(clock)])
            if (scenario === 'boot') {
              await fs.guard(
                'the child opening the journal',
                run.waitFor((l) => l === 'opening'),
              )
              await sleep(Math.floor(random() * 25))
              if (!run.lines.some((l) => l.startsWith('ready'))) killedInRecovery++
            } else {
              await bootThenKill(fs, run, Math.floor(random() * 120))
            }
          }
          if (scenario !== 'charging') await kill(fs, run)
          // What the LOG shows of the moment of the kill (nothing writes it now): a table write or compaction cut short?
          const log = await readLog(fs, storageDir)
          if (compactionInFlight(log)) midCompaction++
          compacted = Math.max(compacted, compactions(log))
          await fs.guard('clear-cache', fs.clearCache())
          cuts[scenario]++

          const found: string[] = []
          for (const l of run.lines) {
            if (l.startsWith('error')) found.push(`child: ${l}`)
            if (l.startsWith('settled')) settled++
            if (l.startsWith('salvaged')) {
              salvages++
              found.push(`boot needed the salvage path: ${l}`)
            }
          }
          const ready = run.lines.find((l) => l.startsWith('ready '))
          const bootHead = ready ? Number(ready.split(' ')[1]) : undefined
          for (const l of run.lines) {
            if (l.startsWith('c ')) {
              const [, seq, hash] = l.split(' ')
              committed.set(Number(seq), hash!)
            } else if (l.startsWith('p ')) lastP = Number(l.slice(2))
          }
          const records = await survivors(fs, storageDir).catch((err: Error) => {
            if (err instanceof LazyFsHang) throw err
            found.push(`LevelDB did not open after the cut: ${err.message}`)
            return [] as JournalRecord[]
          })
          if (records === 'missing') {
            if (committed.size > 0) found.push('the journal vanished')
          } else {
            recordsSeen = Math.max(recordsSeen, records.length)
            found.push(...checkLog(records, false))
            const bySeq = new Map(records.map((r) => [r.seq, r]))
            for (const [seq, hash] of committed)
              if (bySeq.get(seq)?.hash !== hash) found.push(`seq ${seq} was reported committed but is ${bySeq.has(seq) ? 'different' : 'missing'}`)
            if (bootHead !== undefined) {
              found.push(
                ...checkLog(
                  records.filter((r) => r.seq <= bootHead),
                  true,
                ).map((p) => `after boot: ${p}`),
              )
              if (pendingBound !== undefined) {
                // Sessions the cut left open were closed by this boot: billed up to at least readingSyncMs before the last round started.
                for (const r of records) {
                  if (r.seq <= lastHead || r.seq > bootHead || r.type !== 'session.ended' || r.reason !== 'power-loss') continue
                  powerLossChecked++
                  const i = Number(r.outlet.slice(1)) - 1
                  const floor = wh(i, pendingBound - syncMs)
                  if (r.meterEndWh < floor - 0.0005)
                    found.push(
                      `${r.sessionId}: billed up to ${r.meterEndWh} Wh at the cut, below the bound ${floor} Wh (meter ${wh(i, pendingBound + pollMs)} Wh one poll after the last round)`,
                    )
                }
              }
              pendingBound = undefined
              lastHead = bootHead
            }
            if (run.lines.some((l) => l.startsWith('p '))) pendingBound = lastP
          }
          if (found.length > 0) {
            t.fail(`chain ${chain} cut ${cut + 1} (${scenario}): ${found.slice(0, 5).join('; ')}`)
            problems++
          }
        }

        // A clean run at the end of the chain: boot closes what the last cut left open, then a clean stop.
        const last = start(['run', storageDir, String(SEED + chain * 1000 + 999), configFile, String(Math.max(clock, lastP ?? 0) + 60_000), '--stop'])
        t.equal(await fs.guard('the clean run', last.exited, 120_000), 0, `chain ${chain}: a clean run after the last cut`)
        for (const l of last.lines) if (l.startsWith('c ')) committed.set(Number(l.split(' ')[1]), l.split(' ')[2]!)
        const final = await survivors(fs, storageDir)
        t.not(final, 'missing')
        if (final !== 'missing') {
          t.same(checkLog(final, true), [], `chain ${chain}: final log holds every invariant`)
          t.ok(
            final.some((r) => r.type === 'session.ended'),
            `chain ${chain}: sessions ran`,
          )
        }
      } catch (err) {
        fs = await lazyFs.remount(err, fs, chain)
        chain--
      }
    }
    const total = cuts.charging + cuts.boot + cuts.repair
    t.equal(problems, 0, `${total} cuts without a broken invariant`)
    t.equal(salvages, 0, 'no cut left LevelDB unopenable or the tail of the chain broken (no boot needed the salvage path)')
    t.ok(total >= 200, `at least 200 cuts (${total})`)
    t.ok(cuts.boot > 10 && killedInRecovery > 5, `cuts during boot recovery: ${cuts.boot} (${killedInRecovery} before boot was committed)`)
    t.ok(cuts.repair > 10, `cuts during outpost repair: ${cuts.repair}`)
    t.ok(midCompaction > 5, `cuts with a table write or compaction in flight: ${midCompaction}`)
    t.ok(compacted > 0, `LevelDB compacted (${compacted} compactions in one chain's LOG)`)
    t.ok(powerLossChecked > 10, `power-loss closures checked against the bound: ${powerLossChecked}`)
    t.comment(
      `cuts: ${JSON.stringify(cuts)}, mid-compaction ${midCompaction}, killed in recovery ${killedInRecovery}, power-loss checked ${powerLossChecked}, swaps finished at boot ${settled}, LazyFS lock-ups ${lazyFs.hangs}, largest log ${recordsSeen} records, ${((Date.now() - began) / 1000).toFixed(1)} s`,
    )
  },
)

t.test(
  'after a cut, bytes flipped in one file of the journal, then a boot: no seq is ever given twice, a loss is always reported',
  { timeout: 600_000 },
  async (t) => {
    const FLIP_CHAINS = 3
    const FLIPS_PER_CHAIN = 6
    let fs = await mountLazyfs()
    t.teardown(() => fs.unmount())
    const random = rng(SEED + 77)
    const lazyFs = retries(t)
    let salvaged = 0
    let intact = 0
    let refused = 0
    const hit = new Map<string, number>()
    for (let chain = 0; chain < FLIP_CHAINS; chain++) {
      try {
        const storageDir = join(fs.mnt, `flip-${chain}`)
        await fs.guard('creating the chain directory', mkdir(storageDir))
        /** Every seq any run ever reported giving out, with its hash. */
        const given = new Map<number, string>()
        /** The seqs the journal must still hold: every one given out, less those a salvage reported lost. */
        let expected = new Set<number>()
        let clock = 1_767_225_600_000 + chain * 86_400_000
        for (let flip = 0; flip < FLIPS_PER_CHAIN; flip++) {
          // Charge, then the cut.
          clock += 3_600_000
          const run = start(['run', storageDir, String(SEED + chain * 100 + flip), configFile, String(clock)])
          await bootThenKill(fs, run, Math.floor(random() * 150))
          await fs.guard('clear-cache', fs.clearCache())
          for (const l of run.lines)
            if (l.startsWith('c ')) {
              given.set(Number(l.split(' ')[1]), l.split(' ')[2]!)
              expected.add(Number(l.split(' ')[1]))
            }
          if (run.lines.some((l) => l.startsWith('salvaged'))) salvaged++
          // Bit rot in one file.
          const jdir = join(storageDir, 'journal')
          const files = (await fs.guard('listing the journal', readdir(jdir))).filter((f) => !['LOCK', 'LOG', 'LOG.old'].includes(f))
          const target = random() < 0.15 ? join(storageDir, 'journal-seq.json') : join(jdir, files[Math.floor(random() * files.length)]!)
          const kind = target.endsWith('journal-seq.json') ? 'marker' : (target.match(/\.(log|ldb)$|MANIFEST|CURRENT/)?.[0] ?? 'other')
          hit.set(kind, (hit.get(kind) ?? 0) + 1)
          await flipBytes(fs, target, random)
          // The boot on it: a short clean run.
          const highest = Math.max(0, ...given.keys())
          clock += 3_600_000
          const boot = start(['run', storageDir, String(SEED + chain * 100 + flip + 50), configFile, String(clock), '--stop'])
          const code = await fs.guard('the boot after the flip', boot.exited, 120_000)
          const where = `chain ${chain} flip ${flip + 1} (${kind} ${target.slice(storageDir.length + 1)})`
          const error = boot.lines.find((l) => l.startsWith('error'))
          if (code !== 0) {
            // Refusing to start is the safe side (nothing is given twice), but it stops the site: counted, and shown.
            refused++
            t.comment(`${where}: the boot refused: ${error}`)
            continue
          }
          const salvage = boot.lines.find((l) => l.startsWith('salvaged'))
          if (salvage) salvaged++
          else intact++
          const sealed = boot.lines.filter((l) => l.startsWith('c ')).map((l) => ({ seq: Number(l.split(' ')[1]), hash: l.split(' ')[2]! }))
          const reused = sealed.filter((r) => given.has(r.seq))
          t.same(
            reused,
            [],
            `${where}: no seq given twice (boot from seq ${sealed[0]?.seq}, highest before ${highest})${salvage ? ' — salvaged' : ''}`,
          )
          for (const r of sealed) {
            given.set(r.seq, r.hash)
            expected.add(r.seq)
          }
          // What the journal holds now: every record from before is the one that was given, never another under its seq.
          const copy = mkdtempSync(join(tmpdir(), 'outpost-lazyfs-flip-'))
          try {
            await fs.guard('copying the journal', cp(jdir, join(copy, 'journal'), { recursive: true, filter: (src) => !src.endsWith('/LOCK') }))
            const j = await openOffline(copy)
            try {
              const changed: number[] = []
              const held = new Set<number>()
              for await (const { record } of storedRecords(j.db)) {
                if (record) held.add(record.seq)
                if (record && given.has(record.seq) && given.get(record.seq) !== record.hash) changed.push(record.seq)
              }
              t.same(changed, [], `${where}: every record held is the one given out under its seq`)
              if (!salvage) {
                // The killed run may have committed records it had no time to print: the chain goes on right after them.
                const skipped: number[] = []
                for (let seq = highest + 1; seq < (sealed[0]?.seq ?? highest + 1); seq++) if (!held.has(seq)) skipped.push(seq)
                t.same(
                  skipped,
                  [],
                  `${where}: no salvage: the chain continues right after the journal's head (from ${sealed[0]?.seq}, ${highest} reported)`,
                )
              }
              const gone = [...expected].filter((seq) => !held.has(seq))
              if (salvage) expected = new Set([...expected].filter((seq) => held.has(seq)))
              else t.same(gone, [], `${where}: no salvage, so nothing was lost: every seq given out is still held`)
            } finally {
              await j.close()
            }
          } finally {
            rmSync(copy, { recursive: true, force: true })
          }
        }
      } catch (err) {
        fs = await lazyFs.remount(err, fs, chain)
        chain--
      }
    }
    t.ok(
      salvaged + intact > (FLIP_CHAINS * FLIPS_PER_CHAIN) / 2,
      `boots: ${intact} found the journal intact, ${salvaged} salvaged, ${refused} refused`,
    )
    t.comment(`files hit: ${JSON.stringify(Object.fromEntries(hit))}; LazyFS lock-ups ${lazyFs.hangs}`)
  },
)
