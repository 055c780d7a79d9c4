/**
 * Disk writes, the SD card's wear: the BUILT daemon as a real subprocess (what
 * systemd runs) against `outpost sim --outlets 64` over loopback Modbus TCP, 64
 * auto-start outlets polled at pollMs 1000 (within about a minute all are
 * charging), the journal on disk with the default settings (readingSyncMs 5000),
 * the uplink to a real mosquitto with the reconciling consumer acking.
 *
 * After a warm-up (the sessions start), /proc/PID/io is read at the start and
 * the end of the measuring window:
 *  - bytes written per outlet-day: (write_bytes - cancelled_write_bytes) grown
 *    over the window, per outlet, scaled to 24 h, against 20 MB;
 *  - write amplification: the same bytes against the RAW FACTS journaled in the
 *    window, against 10x. Raw facts are the bytes of the values of the reading
 *    entries (`g!` keys, reading ts in the window) and of the sealed record texts
 *    (`r!` keys, record ts in the window), read back from the journal after the
 *    run: what the journal exists to keep, without LevelDB's keys, log framing,
 *    tables, compactions, the engine state or the filesystem's own writes.
 *
 * A run of minutes shows LevelDB's log and fsyncs, but hardly a memtable flush
 * (4 MB) and no compaction. So a second measure drives the journal itself (this
 * process, no daemon) through SIMULATED time at 64 outlets, as fast as it goes
 * (4 hours by default, ~2 min here; OUTPOST_BENCH_DISK_SIM_S=86400 for a day):
 * one reading per outlet per second with a ~2 kB outlet entry changed each time,
 * a session ending and the next starting every two hours per outlet (two
 * records), the state checkpointed every simulated minute (flush); its own
 * write_bytes against the raw facts it journaled: LevelDB's log, flushes and
 * compactions over a day's data. (Fsyncs are fewer than in real time: the
 * daemon run measures those.)
 *
 * Runs alone: node dist/bench/disk.js [--short]  (short: 20 s warm-up, 40 s
 * window, a simulated hour). OUTPOST_BENCH_MINUTES sets the window (default 3);
 * OUTPOST_BENCH_DISK_CLI measures another build's dist/daemon/cli.js (a
 * before/after on the same machine).
 */
import { readFileSync, mkdtempSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { startMosquitto } from '../test/helpers/mosquitto.js'
import { CLI, startCloud, startDaemon, waitFor, writeSiteConfig, type DaemonProc } from '../test/helpers/e2e-kit.js'
import { Journal, openOffline } from '../daemon/journal/index.js'
import * as K from '../daemon/journal/keys.js'
import { bounded, startSimProcess, Teardowns, type BenchRow } from './lib.js'

const OUTLETS = 64
const DAY_S = 86_400
const MB = 1_000_000
const PER_OUTLET_DAY_GOAL_MB = 20
const AMPLIFICATION_GOAL = 10

export interface ProcIo {
  writeBytes: number
  cancelledWriteBytes: number
}

/** write_bytes and cancelled_write_bytes from a /proc/PID/io text. */
export function parseProcIo(text: string): ProcIo {
  const field = (name: string): number => {
    const m = text.match(new RegExp(`^${name}:\\s+(\\d+)$`, 'm'))
    if (!m) throw new Error(`no ${name} line in /proc/PID/io (process gone, or no I/O accounting in this kernel?)`)
    return Number(m[1])
  }
  return { writeBytes: field('write_bytes'), cancelledWriteBytes: field('cancelled_write_bytes') }
}

export function readProcIo(pid: number): ProcIo {
  return parseProcIo(readFileSync(`/proc/${pid}/io`, 'utf8'))
}

export interface RawFacts {
  readings: number
  readingBytes: number
  records: number
  recordBytes: number
}

/**
 * The raw facts journaled in [from, to] (epoch ms) in the journal of `storageDir`
 * (daemon stopped): reading values by their key's ts, record texts by their ts.
 */
export async function rawFacts(storageDir: string, from: number, to: number): Promise<RawFacts> {
  const j = await openOffline(storageDir)
  const out: RawFacts = { readings: 0, readingBytes: 0, records: 0, recordBytes: 0 }
  try {
    for await (const [key, value] of j.db.iterator(K.READINGS)) {
      const ts = Number(key.slice(key.lastIndexOf('!') + 1))
      if (ts < from || ts > to) continue
      out.readings++
      out.readingBytes += Buffer.byteLength(value)
    }
    for await (const [key, value] of j.db.iterator(K.RECORDS)) {
      const ts = Date.parse((JSON.parse(value) as { ts: string }).ts)
      if (!(ts >= from && ts <= to)) continue
      void key
      out.records++
      out.recordBytes += Buffer.byteLength(value)
    }
  } finally {
    await j.close()
  }
  return out
}

export interface DiskFigures {
  /** Net bytes written by the daemon over the window. */
  bytes: number
  windowS: number
  perOutletDayMB: number
  raw: RawFacts
  amplification: number
  charging: number
}

/** One run of the daemon at `outlets` outlets; bytes written over a window after warm-up. */
export async function measureDisk(opts: { warmupMs: number; windowMs: number; outlets?: number; cli?: string }): Promise<DiskFigures> {
  const outlets = opts.outlets ?? OUTLETS
  const td = new Teardowns()
  const root = mkdtempSync(join(tmpdir(), 'outpost-bench-disk-'))
  td.teardown(() => rmSync(root, { recursive: true, force: true }))
  try {
    const broker = await startMosquitto(td)
    const sim = await startSimProcess(['--outlets', String(outlets), '--speed', '1', '--seed', '9'])
    td.teardown(() => sim.stop())
    const users = Array.from({ length: outlets }, (_, i) => `r${i + 1}`)
    const storageDir = join(root, 'journal')
    const config = writeSiteConfig({
      dir: root,
      port: sim.port,
      outlets,
      brokerUrl: broker.url,
      outlet: Object.fromEntries(users.map((u, i) => [i + 1, { autoStart: { userId: u } }])),
      sessions: { pollMs: 1000, graceSeconds: 60, noCurrentHoldMs: 2000, meterFaultMs: 10_000 },
      // The schema's default: what a site runs with.
      storage: { readingSyncMs: 5000 },
      extra: { logging: { level: 'info' } },
    })
    const cloud = await startCloud(td, broker.url, root)
    const daemon: DaemonProc = startDaemon(td, config, {}, opts.cli ?? CLI)
    await waitFor(() => cloud.records().some((r) => r.type === 'gateway.started') || (!daemon.running() && 'exited'), 'gateway.started', 60_000).then(
      (v) => {
        if (v === 'exited') throw new Error(`the daemon exited at start: ${daemon.stderr().slice(-5).join(' | ')}`)
      },
    )
    for (const userId of users) {
      const r = await cloud.command({ action: 'set-wallet', userId, currency: 'CAD', balance: 100_000_000 })
      if (!r.ok) throw new Error(`set-wallet ${userId}: ${JSON.stringify(r)}`)
    }
    await new Promise((r) => setTimeout(r, opts.warmupMs))
    const from = Date.now()
    const io0 = readProcIo(daemon.pid)
    const t0 = performance.now()
    process.stderr.write(`bench: disk: measuring pid ${daemon.pid} for ${(opts.windowMs / 1000).toFixed(0)} s\n`)
    await new Promise((r) => setTimeout(r, opts.windowMs))
    if (!daemon.running()) throw new Error(`the daemon exited during the window: ${daemon.stderr().slice(-5).join(' | ')}`)
    const io1 = readProcIo(daemon.pid)
    const windowS = (performance.now() - t0) / 1000
    const to = Date.now()
    const charging = [...Array(outlets).keys()].filter((i) => cloud.outlet(`E${i + 1}`)?.state === 'charging').length
    const stop = await daemon.stop('SIGTERM')
    if (stop.code !== 0)
      throw new Error(`the daemon exited ${String(stop.code ?? stop.signal)} at SIGTERM; stderr: ${daemon.stderr().slice(-5).join(' | ')}`)
    const bytes = io1.writeBytes - io1.cancelledWriteBytes - (io0.writeBytes - io0.cancelledWriteBytes)
    const raw = await rawFacts(storageDir, from, to)
    if (raw.readings === 0) throw new Error("no reading was journaled in the window: no session was charging, the figures would not be a site's")
    return {
      bytes,
      windowS,
      perOutletDayMB: ((bytes / windowS / outlets) * DAY_S) / MB,
      raw,
      amplification: bytes / (raw.readingBytes + raw.recordBytes),
      charging,
    }
  } finally {
    await td.run()
  }
}

/** A ~2 kB outlet entry, like the engine's while charging (last reading, lines, taper window). */
function outletEntry(i: number, t: number, mWh: number): unknown {
  return {
    id: `E${i + 1}`,
    hasRelay: true,
    ratingA: 32,
    configPlan: 'standard',
    planId: 'standard',
    configAutoStart: `r${i + 1}`,
    autoStartUser: `r${i + 1}`,
    autoStartSuspended: false,
    available: true,
    state: 'charging',
    relayClosed: true,
    last: { ts: t, mWh, currentA: 16.02, powerW: 3684.6, voltageV: 230.1 },
    fresh: true,
    goodAt: t,
    badDetail: null,
    meterFault: null,
    relayFault: null,
    session: {
      id: `s-${i}-${Math.floor(t / 7_200_000)}`,
      userId: `r${i + 1}`,
      planId: 'standard',
      currency: 'CAD',
      trigger: 'auto-start',
      startedAt: t - 3_600_000,
      meterStartMWh: mWh - 58_000_000,
      lastTs: t,
      lastMWh: mWh,
      plan: {
        id: 'standard',
        currency: 'CAD',
        activationFee: 0.5,
        periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 2.5, perHour: 36 }],
      },
      lines: [
        {
          from: t - 3_600_000,
          to: t,
          period: 0,
          mWh: 58_000_000,
          ms: 3_600_000,
          perKwh: 2.5,
          perHour: 36,
          perKwhMicros: 2_500_000,
          perHourMicros: 36_000_000,
        },
      ],
      drewCurrent: true,
      peakA: 16.4,
      window: Array.from({ length: 13 }, (_, k) => [t - 60_000 + k * 5000, 16 + (k % 3) * 0.01]),
      lowSince: null,
      taperedAtLow: false,
      capMinor: 100_000_000,
      feeMicros: 500_000,
      offline: false,
    },
    recon: { from: t - 600_000, startMWh: mWh - 600_000, meterMWh: 600_000, sessionMWh: 600_000 },
    removed: false,
  }
}

export interface SimulatedDay {
  simulatedS: number
  bytes: number
  raw: number
  perOutletDayMB: number
  amplification: number
}

/** The journal alone through `simulatedS` seconds of a 64-outlet site (see the header); this process's write_bytes. */
export async function simulatedDay(simulatedS: number, outlets = OUTLETS): Promise<SimulatedDay> {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-bench-disk-sim-'))
  const T0 = Date.parse('2026-06-10T00:00:00Z')
  let now = T0
  const j = await Journal.open(dir, { bootId: 'bench-disk', clockSynced: () => true, now: () => now, compactEveryMs: 0 })
  let raw = 0
  try {
    let state: { outlets: Record<string, unknown> } = { outlets: {} }
    const io0 = readProcIo(process.pid)
    for (let s = 0; s < simulatedS; s++) {
      now = T0 + s * 1000
      for (let i = 0; i < outlets; i++) {
        const mWh = 1_000_000_000 + Math.round(s * 1022.5) + i
        const entry = outletEntry(i, now, mWh) as { session: { id: string } }
        state = { ...state, outlets: { ...state.outlets, [`E${i + 1}`]: entry } }
        const records: RecordBodyLike[] = []
        // Every two hours per outlet (staggered): the session ends and the next starts.
        if ((s + i * 97) % 7200 === 0) {
          const iso = new Date(now).toISOString()
          records.push({
            type: 'session.ended',
            ts: iso,
            sessionId: `${entry.session.id}-prev`,
            outlet: `E${i + 1}`,
            userId: `r${i + 1}`,
            planId: 'standard',
            trigger: 'auto-start',
            reason: 'charge-complete',
            startedAt: iso,
            endedAt: iso,
            meterStartWh: 1000,
            meterEndWh: 1058,
            energyWh: 58,
            durationS: 7200,
            activationFee: 50,
            lines: [{ from: iso, to: iso, energyWh: 58, seconds: 7200, perKwh: 2.5, perHour: 36, amountMicros: 217_000_000 }],
            total: 21750,
            currency: 'CAD',
            offline: false,
          })
          records.push({
            type: 'session.started',
            ts: iso,
            sessionId: entry.session.id,
            outlet: `E${i + 1}`,
            userId: `r${i + 1}`,
            planId: 'standard',
            trigger: 'auto-start',
            meterWh: mWh / 1000,
            capMinor: 100_000_000,
          })
        }
        const reading = { ts: now, currentA: 16.02, powerW: 3684.6, energyWh: mWh / 1000, voltageV: 230.1 }
        const sealed = await j.commit({
          records: records as never,
          state,
          readings: [{ outlet: `E${i + 1}`, sessionId: entry.session.id, reading, now: now + 3 }],
        })
        raw += Buffer.byteLength(JSON.stringify([reading.currentA, reading.powerW, reading.energyWh, reading.voltageV, `E${i + 1}`, 3]))
        for (const r of sealed) raw += Buffer.byteLength(JSON.stringify(r))
      }
      if (s % 60 === 59) await j.flush() // the checkpoint, once a simulated minute
    }
    await j.flush()
    const io1 = readProcIo(process.pid)
    const bytes = io1.writeBytes - io1.cancelledWriteBytes - (io0.writeBytes - io0.cancelledWriteBytes)
    return { simulatedS, bytes, raw, perOutletDayMB: ((bytes / simulatedS / outlets) * DAY_S) / MB, amplification: bytes / raw }
  } finally {
    await j.close({ clean: true })
    rmSync(dir, { recursive: true, force: true })
  }
}

type RecordBodyLike = Record<string, unknown>

function windowMs(): { warmupMs: number; windowMs: number } {
  if (process.argv.includes('--short')) return { warmupMs: 20_000, windowMs: 40_000 }
  const env = Number(process.env.OUTPOST_BENCH_MINUTES)
  return { warmupMs: 60_000, windowMs: (Number.isFinite(env) && env > 0 ? env : 3) * 60_000 }
}

export async function run(): Promise<BenchRow[]> {
  const w = windowMs()
  const cli = process.env.OUTPOST_BENCH_DISK_CLI || undefined
  const f = await measureDisk({ ...w, cli })
  const build = cli ? ` (${cli})` : ''
  const raw = f.raw.readingBytes + f.raw.recordBytes
  const facts = `${f.raw.readings} readings (${(f.raw.readingBytes / f.raw.readings).toFixed(0)} B each) + ${f.raw.records} records (${f.raw.recordBytes} B) journaled in ${f.windowS.toFixed(0)} s = ${(raw / 1000).toFixed(1)} kB raw; the daemon wrote ${(f.bytes / 1000).toFixed(1)} kB (${(f.bytes / f.windowS / 1000).toFixed(1)} kB/s); ${f.charging} of ${OUTLETS} charging at the end`
  const simS = process.argv.includes('--short') ? 3600 : Number(process.env.OUTPOST_BENCH_DISK_SIM_S) || 14_400
  process.stderr.write(`bench: disk: the journal through a simulated ${(simS / 3600).toFixed(0)} h at ${OUTLETS} outlets\n`)
  const t0 = performance.now()
  const day = cli ? undefined : await simulatedDay(simS)
  const simNote = day
    ? `${(day.bytes / MB).toFixed(1)} MB written for ${(day.raw / MB).toFixed(1)} MB of raw facts over a simulated ${(simS / 3600).toFixed(0)} h (${((performance.now() - t0) / 1000).toFixed(0)} s)`
    : ''
  return [
    ...(day
      ? [
          bounded(
            `journal alone, a simulated ${(simS / 3600).toFixed(0)} h at ${OUTLETS} outlets charging: disk writes per outlet-day (log, memtable flushes, compactions)`,
            'MB',
            day.perOutletDayMB,
            PER_OUTLET_DAY_GOAL_MB,
            '<=',
            simNote,
          ),
          bounded(`journal alone, the same: write amplification vs the raw facts`, 'x', day.amplification, AMPLIFICATION_GOAL, '<=', simNote),
        ]
      : []),
    bounded(
      `daemon disk writes per outlet-day, ${OUTLETS} outlets at 1 Hz, readingSyncMs 5000${build}`,
      'MB',
      f.perOutletDayMB,
      PER_OUTLET_DAY_GOAL_MB,
      '<=',
      facts,
    ),
    bounded(
      `daemon disk write amplification vs the raw facts journaled${build}`,
      'x',
      f.amplification,
      AMPLIFICATION_GOAL,
      '<=',
      `bytes written / (reading values + sealed record texts); ${(((f.bytes / f.windowS / OUTLETS) * DAY_S * 365) / 1e9).toFixed(2)} GB per outlet-year`,
    ),
  ]
}

if (process.argv[1]?.endsWith('/bench/disk.js')) {
  run().then(
    (rows) => {
      for (const r of rows)
        process.stdout.write(
          `${r.met ? 'met ' : 'MISS'}  ${r.figure}: ${r.value.toFixed(2)} ${r.unit} vs ${r.baseline} (${r.goal})${r.note ? ' — ' + r.note : ''}\n`,
        )
    },
    (err: unknown) => {
      process.stderr.write(`bench/disk: ${(err as Error).stack ?? String(err)}\n`)
      process.exitCode = 1
    },
  )
}
