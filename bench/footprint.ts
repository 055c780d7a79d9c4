/**
 * The whole daemon's footprint on a small machine: the BUILT daemon as a real
 * subprocess (`node dist/daemon/cli.js run --config F`, what systemd runs)
 * against `outpost sim --outlets 64` (its own subprocess, scripted vehicles at
 * real speed) over loopback Modbus TCP, 64 outlets polled at pollMs 1000, every
 * outlet an auto-start bay so each arriving vehicle starts a billed session
 * (within about a minute all 64 are charging), the journal on disk with the
 * default group commit, the uplink to a real mosquitto with the reconciling
 * consumer acking: what a real site does.
 *
 * Sampled every SAMPLE_MS from /proc/PID/status (VmRSS) and /proc/PID/stat
 * (utime + stime) for OUTPOST_BENCH_MINUTES (default 3) per variant:
 *  - RSS median and max against the bound (80 MB, the daemon alone, Node-RED on or off);
 *  - CPU % of one core over the second half (steady state) against 5 %;
 *  - RSS slope, MB/min by least squares over the second half (after warm-up),
 *    of its GC floor (floorSlope), against |slope| <= 0.5 MB/min: a leak of
 *    that rate would eat a Pi's spare hundreds of MB within a day or two of a
 *    site's weeks of uptime, yet it is about the smallest a few minutes can
 *    tell from a collected heap's sawtooth; run longer
 *    (OUTPOST_BENCH_MINUTES=30) to bound a slower one.
 * The goals are absolute, so each row's baseline is the bound itself (ratio =
 * value / bound); a bare idle `node` process's RSS, sampled in the same run, is
 * given in a note as the floor any Node daemon pays.
 *
 * Measured twice: with node's defaults and with the flags on the bin's
 * interpreter line (dist/bin/outpost.js), before and
 * after. The Node-RED variant (with the bin's flags) enables Node-RED (api.listen + nodeRed.enabled), which runs
 * in a process of its own, and measures only if the editor really answers at http://LISTEN/red/ (otherwise
 * its rows say "not measured" instead of a number): the daemon alone against the same 80 MB, and Node-RED
 * alone (its process, pid from /api/status) against NODE_RED_RSS_GOAL_MB.
 *
 * Runs alone: node dist/bench/footprint.js [--short] [--no-node-red] [--flags-only] [--node-red-only]
 * (short: 1 minute per variant). Started as root (as here), Node-RED runs as outpost-node-red, created if missing.
 */
import { execFileSync, spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { mkdtempSync, rmSync } from 'node:fs'
import { startMosquitto, freePort } from '../test/helpers/mosquitto.js'
import { CLI, startCloud, startDaemon, waitFor, writeSiteConfig, type DaemonProc } from '../test/helpers/e2e-kit.js'
import { ensureNodeRedUser, passable } from '../test/helpers/node-red-kit.js'
import { binNodeFlags, bounded, median, notMeasured, startSimProcess, Teardowns, type BenchRow } from './lib.js'

const OUTLETS = 64
const SAMPLE_MS = 2000
const RSS_GOAL_MB = 80
/** Node-RED alone, idle flows (the shipped ones) at 64 outlets' events: what it was allowed beside the daemon before it had its own process (160 - 80). */
const NODE_RED_RSS_GOAL_MB = 80
const CPU_GOAL_PCT = 5
const SLOPE_GOAL_MB_PER_MIN = 0.5

export interface ProcSample {
  /** ms since the first sample. */
  t: number
  rssMB: number
  /** utime + stime, seconds. */
  cpuS: number
}

let clkTck: number | undefined
/** Clock ticks per second for /proc/PID/stat (getconf CLK_TCK; 100 on every Linux we ship to). */
export function clockTicks(): number {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
    } catch {
      clkTck = 100
    }
  }
  return clkTck
}

/** VmRSS (MB) from a /proc/PID/status text. */
export function parseRssMB(status: string): number {
  const m = status.match(/^VmRSS:\s+(\d+)\s+kB/m)
  if (!m) throw new Error('no VmRSS line in /proc/PID/status (process gone or a zombie?)')
  return Number(m[1]) / 1024
}

/** utime + stime (seconds) from a /proc/PID/stat line; the command name may hold spaces and parentheses. */
export function parseCpuS(stat: string, ticks = clockTicks()): number {
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // After "pid (comm) ", field 3 (state) is rest[0]: utime is field 14, stime field 15.
  const utime = Number(rest[11])
  const stime = Number(rest[12])
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error(`cannot read utime/stime from /proc/PID/stat: ${stat.slice(0, 80)}`)
  return (utime + stime) / ticks
}

export function sampleProc(pid: number): { rssMB: number; cpuS: number } {
  return { rssMB: parseRssMB(readFileSync(`/proc/${pid}/status`, 'utf8')), cpuS: parseCpuS(readFileSync(`/proc/${pid}/stat`, 'utf8')) }
}

/** Least-squares slope of y over x. */
export function slope(points: { x: number; y: number }[]): number {
  const n = points.length
  if (n < 2) return NaN
  const mx = points.reduce((a, p) => a + p.x, 0) / n
  const my = points.reduce((a, p) => a + p.y, 0) / n
  let num = 0
  let den = 0
  for (const p of points) {
    num += (p.x - mx) * (p.y - my)
    den += (p.x - mx) ** 2
  }
  return den === 0 ? NaN : num / den
}

/**
 * The leak indicator: RSS MB/min by least squares over the floor of the
 * samples, the lowest sample of each of `windows` equal slices of time. A
 * collected heap's RSS is a sawtooth (it grows until a collection, drops), and
 * over a few minutes the raw slope says more about where the collections fell
 * than about growth; what a leak raises is the floor the collections return to.
 */
export function floorSlope(samples: ProcSample[], windows = 4): number {
  if (samples.length < windows * 2) return slope(samples.map((s) => ({ x: s.t / 60_000, y: s.rssMB })))
  const t0 = samples[0]!.t
  const span = samples[samples.length - 1]!.t - t0
  const floors: { x: number; y: number }[] = []
  for (let w = 0; w < windows; w++) {
    const inWindow = samples.filter(
      (s) => s.t - t0 >= (w * span) / windows && (w === windows - 1 ? s.t - t0 <= span : s.t - t0 < ((w + 1) * span) / windows),
    )
    if (inWindow.length === 0) continue
    const low = inWindow.reduce((a, b) => (b.rssMB < a.rssMB ? b : a))
    floors.push({ x: low.t / 60_000, y: low.rssMB })
  }
  return slope(floors)
}

export interface Summary {
  rssMedianMB: number
  rssMaxMB: number
  /** CPU % of one core over the second half. */
  cpuPct: number
  /** CPU % of one core over the whole window. */
  cpuPctAll: number
  /** RSS MB per minute, least squares over the GC floor of the second half (see floorSlope). */
  slopeMBPerMin: number
  /** The same over every sample of the second half (a GC sawtooth dominates it over a few minutes). */
  rawSlopeMBPerMin: number
  samples: number
}

/** The figures from a series of samples: CPU and slope over the second half (after warm-up). */
export function summarise(samples: ProcSample[]): Summary {
  if (samples.length < 4) throw new Error(`only ${samples.length} samples: too few to summarise`)
  const half = samples.slice(Math.floor(samples.length / 2))
  const first = samples[0]!
  const last = samples[samples.length - 1]!
  const h0 = half[0]!
  const pct = (a: ProcSample, b: ProcSample): number => ((b.cpuS - a.cpuS) / ((b.t - a.t) / 1000)) * 100
  return {
    rssMedianMB: median(samples.map((s) => s.rssMB)),
    rssMaxMB: Math.max(...samples.map((s) => s.rssMB)),
    cpuPct: pct(h0, last),
    cpuPctAll: pct(first, last),
    slopeMBPerMin: floorSlope(half),
    rawSlopeMBPerMin: slope(half.map((s) => ({ x: s.t / 60_000, y: s.rssMB }))),
    samples: samples.length,
  }
}

/** Samples pid every everyMs for durationMs; stops early (throwing) if the process dies. */
export async function sampleFor(pid: number, durationMs: number, everyMs: number, alive: () => boolean = () => true): Promise<ProcSample[]> {
  const out: ProcSample[] = []
  const t0 = performance.now()
  for (;;) {
    if (!alive()) throw new Error(`process ${pid} exited while being sampled`)
    const s = sampleProc(pid)
    const t = performance.now() - t0
    out.push({ t, ...s })
    if (t >= durationMs) return out
    await new Promise((r) => setTimeout(r, Math.min(everyMs, durationMs - t + 1)))
  }
}

/** A bare idle Node process's RSS (MB): the floor any Node daemon pays on this machine. */
async function idleNodeRssMB(): Promise<number> {
  const p = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' })
  try {
    await new Promise((r) => setTimeout(r, 1500))
    const s = await sampleFor(p.pid!, 2000, 500)
    return median(s.map((x) => x.rssMB))
  } finally {
    p.kill('SIGKILL')
  }
}

function minutes(): number {
  const env = Number(process.env.OUTPOST_BENCH_MINUTES)
  if (process.argv.includes('--short')) return 1
  return Number.isFinite(env) && env > 0 ? env : 3
}

/** GET url; true when it answers 200 (the Node-RED editor's page). */
async function answers(url: string): Promise<boolean> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(3000) })
    await r.arrayBuffer()
    return r.status === 200
  } catch {
    return false
  }
}

interface Variant {
  name: string
  nodeRed: boolean
  goalMB: number
  /** node/V8 flags before the script. */
  nodeArgs: string[]
}

async function measure(v: Variant, idleMB: number): Promise<BenchRow[]> {
  const td = new Teardowns()
  const root = mkdtempSync(join(tmpdir(), 'outpost-bench-footprint-'))
  td.teardown(() => rmSync(root, { recursive: true, force: true }))
  const flags = v.nodeArgs.length ? v.nodeArgs.join(' ') : "node's defaults"
  const label = (what: string, who = 'daemon'): string =>
    `${who} ${what}, ${OUTLETS} outlets at 1 Hz, uplink on${v.nodeRed ? ', Node-RED on (its own process)' : ''} (${flags})`
  if (v.nodeRed) {
    // Started as root, the daemon runs Node-RED as its own user, which must reach its directory here.
    ensureNodeRedUser()
    passable(root)
  }
  try {
    const broker = await startMosquitto(td)
    const sim = await startSimProcess(['--outlets', String(OUTLETS), '--speed', '1', '--seed', '9'])
    td.teardown(() => sim.stop())
    const apiPort = await freePort()
    const users = Array.from({ length: OUTLETS }, (_, i) => `r${i + 1}`)
    const config = writeSiteConfig({
      dir: root,
      port: sim.port,
      outlets: OUTLETS,
      brokerUrl: broker.url,
      outlet: Object.fromEntries(users.map((u, i) => [i + 1, { autoStart: { userId: u } }])),
      // A site's own timings (the schema's defaults), not the end-to-end tests' short ones.
      sessions: { pollMs: 1000, graceSeconds: 60, noCurrentHoldMs: 2000, meterFaultMs: 10_000 },
      storage: { readingSyncMs: 5000 },
      extra: {
        logging: { level: 'info' },
        api: { listen: `127.0.0.1:${apiPort}`, token: 'bench-footprint-token' },
        ...(v.nodeRed ? { nodeRed: { enabled: true } } : {}),
      },
    })
    const cloud = await startCloud(td, broker.url, root)
    const daemon: DaemonProc = startDaemon(td, config, {}, CLI, v.nodeArgs)
    await waitFor(() => cloud.records().some((r) => r.type === 'gateway.started') || (!daemon.running() && 'exited'), 'gateway.started', 60_000).then(
      (v) => {
        if (v === 'exited') throw new Error(`the daemon exited at start: ${daemon.stderr().slice(-5).join(' | ')}`)
      },
    )
    let nodeRedPid: number | undefined
    if (v.nodeRed) {
      const url = `http://127.0.0.1:${apiPort}/red/`
      const up = await waitFor(async () => (await answers(url)) || (!daemon.running() && 'exited'), `Node-RED editor at ${url}`, 90_000).catch(
        () => false,
      )
      if (up !== true) {
        const why = `not measured: Node-RED not running (${url} did not answer 200${daemon.running() ? '' : '; the daemon exited: ' + daemon.stderr().slice(-3).join(' | ')})`
        return [
          notMeasured(label('RSS median'), 'MB', `<= ${v.goalMB} MB`, why),
          notMeasured(label('CPU, % of one core'), '%', `<= ${CPU_GOAL_PCT} %`, why),
          notMeasured(label('RSS slope (leak indicator)'), 'MB/min', `|x| <= ${SLOPE_GOAL_MB_PER_MIN}`, why),
          notMeasured(label('RSS median', 'Node-RED alone'), 'MB', `<= ${NODE_RED_RSS_GOAL_MB} MB`, why),
        ]
      }
      const status = (await (
        await fetch(`http://127.0.0.1:${apiPort}/api/status`, { headers: { authorization: 'Bearer bench-footprint-token' } })
      ).json()) as { nodeRed: { pid: number } }
      nodeRedPid = status.nodeRed.pid
    }
    for (const userId of users) {
      const r = await cloud.command({ action: 'set-wallet', userId, currency: 'CAD', balance: 100_000_000 })
      if (!r.ok) throw new Error(`set-wallet ${userId}: ${JSON.stringify(r)}`)
    }
    const durationMs = minutes() * 60_000
    process.stderr.write(`bench: footprint ${v.name}: sampling pid ${daemon.pid} for ${minutes()} min\n`)
    const nrSampling = nodeRedPid === undefined ? undefined : sampleFor(nodeRedPid, durationMs, SAMPLE_MS, () => daemon.running())
    const samples = await sampleFor(daemon.pid, durationMs, SAMPLE_MS, () => daemon.running())
    const nrSamples = await nrSampling
    const started = cloud.records().filter((r) => r.type === 'session.started').length
    const charging = [...Array(OUTLETS).keys()].filter((i) => cloud.outlet(`E${i + 1}`)?.state === 'charging').length
    const s = summarise(samples)
    const stop = await daemon.stop('SIGTERM')
    if (stop.code !== 0)
      throw new Error(`the daemon exited ${String(stop.code ?? stop.signal)} at SIGTERM; stderr: ${daemon.stderr().slice(-5).join(' | ')}`)
    if (started === 0) throw new Error("no session started during the run: the site was idle, the figures would not be a site's")
    const load = `${charging} of ${OUTLETS} outlets charging at the end, ${started} sessions started, ${cloud.records().length} records acked by the consumer; ${s.samples} samples every ${SAMPLE_MS / 1000} s over ${minutes()} min`
    const rss = bounded(
      label('RSS median'),
      'MB',
      s.rssMedianMB,
      v.goalMB,
      '<=',
      `max ${s.rssMaxMB.toFixed(1)} MB (${(s.rssMaxMB / v.goalMB).toFixed(2)}x); a bare idle node process: ${idleMB.toFixed(1)} MB; ${load}`,
    )
    const rssMax = bounded(label('RSS max'), 'MB', s.rssMaxMB, v.goalMB)
    const cpu = bounded(
      label('CPU, % of one core (second half)'),
      '%',
      s.cpuPct,
      CPU_GOAL_PCT,
      '<=',
      `whole run incl. start and 64 session starts: ${s.cpuPctAll.toFixed(2)} %`,
    )
    const leak = bounded(
      label('RSS slope over the second half (leak indicator)'),
      'MB/min',
      Math.abs(s.slopeMBPerMin),
      SLOPE_GOAL_MB_PER_MIN,
      '<=',
      `floor slope ${sign(s.slopeMBPerMin)} MB/min (least squares over the lowest sample of each quarter of the second half); over every sample ${sign(s.rawSlopeMBPerMin)} MB/min (a GC sawtooth)`,
    )
    if (!nrSamples) return [rss, rssMax, cpu, leak]
    const nr = summarise(nrSamples)
    const nodeRed = bounded(
      label('RSS median', 'Node-RED alone'),
      'MB',
      nr.rssMedianMB,
      NODE_RED_RSS_GOAL_MB,
      '<=',
      `max ${nr.rssMaxMB.toFixed(1)} MB; CPU ${nr.cpuPct.toFixed(2)} % of one core (second half); daemon + Node-RED: ${(s.rssMedianMB + nr.rssMedianMB).toFixed(1)} MB`,
    )
    return [rss, rssMax, cpu, leak, nodeRed]
  } finally {
    await td.run()
  }
}

const sign = (x: number): string => `${x >= 0 ? '+' : ''}${x.toFixed(3)}`

export async function run(): Promise<BenchRow[]> {
  const idleMB = await idleNodeRssMB()
  const rows: BenchRow[] = []
  // OUTPOST_BENCH_DAEMON_NODE_ARGS: measure other node/V8 flags (space-separated) instead of the bin's, before adopting them.
  const env = process.env.OUTPOST_BENCH_DAEMON_NODE_ARGS
  const flags = env !== undefined ? env.split(' ').filter(Boolean) : binNodeFlags()
  // Before and after: plain `node` (what a unit without the flags gets), then the bin's flags.
  const nodeRedOnly = process.argv.includes('--node-red-only')
  if (!process.argv.includes('--flags-only') && !nodeRedOnly)
    rows.push(...(await measure({ name: "node's defaults", nodeRed: false, goalMB: RSS_GOAL_MB, nodeArgs: [] }, idleMB)))
  if (flags.length > 0 && !nodeRedOnly)
    rows.push(...(await measure({ name: flags.join(' '), nodeRed: false, goalMB: RSS_GOAL_MB, nodeArgs: flags }, idleMB)))
  if (!process.argv.includes('--no-node-red'))
    rows.push(...(await measure({ name: 'with Node-RED', nodeRed: true, goalMB: RSS_GOAL_MB, nodeArgs: flags }, idleMB)))
  return rows
}

if (process.argv[1]?.endsWith('/bench/footprint.js')) {
  run().then(
    (rows) => {
      for (const r of rows)
        process.stdout.write(
          `${r.notMeasured ? 'n/m ' : r.met ? 'met ' : 'MISS'}  ${r.figure}: ${r.value.toFixed(2)} ${r.unit} vs ${r.baseline} (${r.goal})${r.note ? ' — ' + r.note : ''}\n`,
        )
    },
    (err: unknown) => {
      process.stderr.write(`bench/footprint: ${(err as Error).stack ?? String(err)}\n`)
      process.exitCode = 1
    },
  )
}
