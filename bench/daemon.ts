/**
 * Daemon benchmark: what the composition root costs on top of the work it must do.
 *
 *  - value: reading steps per second through `Daemon.dispatch` (the one-at-a-time queue,
 *    the engine step, the journal commit with the billed reading, effect routing: statuses,
 *    records, events) on an 8-outlet site with every outlet charging, the daemon started for
 *    real against the simulator over loopback Modbus TCP. The feed continues each meter's
 *    register from where the simulator's stands (the daemon reads every meter once at boot: a
 *    feed starting below that is a register stepping back, a meter fault that ends the session),
 *    and the daemon runs without poll or tick timers of its own, so the feed is its one source of
 *    readings (a poll of the carless simulator would read 0 A and the simulator's register);
 *  - baseline: the same sequence as a bare loop of `step()` + `journal.commit()` on a
 *    journal of its own (the floor: what any daemon would have to do per reading).
 *
 * Goal: the daemon keeps at least 0.8x of the bare loop. Readings come from a virtual clock
 * 100 ms apart so the engine sees a plausible site; the journal uses the default group
 * commit (storage.readingSyncMs 5000), as a site does.
 *
 * Run alone: node dist/bench/daemon.js
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { validateConfig } from '../daemon/config.js'
import type { Reading, SiteConfig, RecordBody } from '../core/types.js'
import { Daemon } from '../daemon/daemon.js'
import { createLogger } from '../daemon/log.js'
import type { Clock } from '../daemon/clock.js'
import { initialState, step, type EngineEvent, type EngineState } from '../daemon/engine/index.js'
import { Journal } from '../daemon/journal/index.js'
import { startSim } from '../drivers/index.js'
import { repeat, row, type BenchRow } from './lib.js'

const OUTLETS = 8
const READINGS = 20_000
const T0 = Date.UTC(2026, 5, 10, 12, 0)

function site(dir: string, port: number): SiteConfig {
  const r = validateConfig({
    site: { id: 'bench', timezone: 'America/Vancouver' },
    storage: { dir },
    buses: [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port }],
    outlets: Array.from({ length: OUTLETS }, (_, i) => ({
      id: `O${i}`,
      bus: 'lan',
      meter: { model: 'eastron-sdm120', unit: i + 1 },
      relay: { model: 'modbus-coil', unit: 100, coil: i },
      plan: 'p',
    })),
    plans: [
      {
        id: 'p',
        currency: 'CAD',
        activationFee: 0.5,
        periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 0.15, perHour: 0.5 }],
      },
    ],
    // The longest poll period, though the daemon runs without its poll timers here (timers: false).
    sessions: { pollMs: 60_000 },
    logging: { level: 'fatal' },
  })
  if (!r.ok) throw new Error(JSON.stringify(r.problems))
  return r.config
}

/** The events of one site: wallets, a first reading, a start per outlet, then charging readings round-robin. */
class Feed {
  t = T0
  private readonly wh: number[]
  /**
   * Each register starts 1 Wh past the simulator's (the daemon reads every meter once at boot,
   * and float32 kWh registers decode within a fraction of a Wh), a minute after that read: a
   * plausible draw, neither a step back nor a glitch.
   */
  constructor(startWh: number[]) {
    this.wh = startWh.map((wh) => wh + 1)
  }
  private cmd = 0
  reading(i: number): EngineEvent {
    this.t += 100
    this.wh[i]! += 0.1
    const reading: Reading = { ts: this.t, currentA: 16, powerW: 3680, energyWh: Math.round(this.wh[i]! * 1000) / 1000, voltageV: 230 }
    return { type: 'reading', outlet: `O${i}`, reading }
  }
  setup(): EngineEvent[] {
    this.t += 60_000
    const ev: EngineEvent[] = []
    for (let i = 0; i < OUTLETS; i++) {
      ev.push({
        type: 'command',
        id: `w${++this.cmd}`,
        source: 'local',
        command: { action: 'set-wallet', userId: `u${i}`, currency: 'CAD', balance: 1_000_000_000 },
      })
      ev.push(this.reading(i))
      ev.push({ type: 'command', id: `s${++this.cmd}`, source: 'local', command: { action: 'start', outlet: `O${i}`, userId: `u${i}` } })
    }
    return ev
  }
}

async function bare(dir: string, config: SiteConfig, startWh: number[]): Promise<{ run: () => Promise<number>; close: () => Promise<void> }> {
  const feed = new Feed(startWh)
  const journal = await Journal.open(dir, {
    bootId: randomUUID(),
    clockSynced: () => true,
    now: () => feed.t,
    version: 'bench',
    readingSyncMs: config.storage.readingSyncMs,
  })
  let state: EngineState = initialState(config)
  const apply = async (event: EngineEvent): Promise<void> => {
    const r = step(state, event, feed.t)
    const records: RecordBody[] = []
    for (const e of r.effects) if (e.type === 'record') records.push(e.record)
    const session = event.type === 'reading' ? r.state.outlets[event.outlet]?.session : undefined
    const readings = event.type === 'reading' && session ? [{ outlet: event.outlet, sessionId: session.id, reading: event.reading }] : undefined
    await journal.commit({ records, state: r.state, readings })
    state = r.state
  }
  await apply({ type: 'boot', cleanShutdown: true, version: 'bench' })
  for (const e of feed.setup()) await apply(e)
  return {
    run: async () => {
      const t0 = performance.now()
      for (let k = 0; k < READINGS; k++) await apply(feed.reading(k % OUTLETS))
      return READINGS / ((performance.now() - t0) / 1000)
    },
    close: () => journal.close({ clean: true }),
  }
}

async function composed(dir: string, config: SiteConfig, startWh: number[]): Promise<{ run: () => Promise<number>; close: () => Promise<void> }> {
  const feed = new Feed(startWh)
  const clock: Clock = { now: () => feed.t, monotonic: () => performance.now(), synced: () => true }
  // No poll or tick timers of its own: the feed is the one source of readings and of time.
  const daemon = new Daemon({
    config: { ...config, storage: { ...config.storage, dir } },
    clock,
    logger: createLogger('fatal'),
    version: 'bench',
    timers: false,
  })
  await daemon.start()
  for (const e of feed.setup()) await daemon.dispatch(e)
  return {
    run: async () => {
      const t0 = performance.now()
      for (let k = 0; k < READINGS; k++) await daemon.dispatch(feed.reading(k % OUTLETS))
      const rate = READINGS / ((performance.now() - t0) / 1000)
      // Measure the right thing: every outlet must still be charging (readings accepted, sessions open).
      const open = daemon.outletStatuses().filter((s) => s.state === 'charging').length
      if (open !== OUTLETS) throw new Error(`bench/daemon: ${open} of ${OUTLETS} outlets charging; the feed is wrong`)
      return rate
    },
    close: () => daemon.stop(),
  }
}

export async function run(): Promise<BenchRow[]> {
  const root = mkdtempSync(join(tmpdir(), 'outpost-bench-daemon-'))
  const sim = await startSim({ outlets: OUTLETS, port: 0, speed: 0, script: false })
  // Closed whatever happens: a daemon left connected would keep the simulator, and the process, from ending.
  const closing: (() => Promise<void>)[] = []
  try {
    const config = site(join(root, 'unused'), sim.port)
    // The daemon's boot read sees these registers; a feed starting elsewhere would be a meter
    // stepping back (a fault, the session ended) or jumping ahead (a glitch, not billed).
    const startWh = [...sim.outlets()].sort((x, y) => x.outlet - y.outlet).map((o) => o.energyWh)
    if (startWh.length !== OUTLETS) throw new Error(`bench/daemon: the simulator has ${startWh.length} meters, not ${OUTLETS}`)
    const a = await bare(join(root, 'bare'), config, startWh)
    closing.unshift(a.close)
    const b = await composed(join(root, 'daemon'), config, startWh)
    closing.unshift(b.close)
    // Interleave the two so load on this shared machine hits both alike.
    const base: number[] = []
    const value: number[] = []
    await repeat(7, 1, async () => {
      base.push(await a.run())
      value.push(await b.run())
      return 0
    })
    base.shift()
    value.shift()
    return [row(`reading steps/s through Daemon.dispatch (${OUTLETS} outlets charging)`, 'steps/s', base, value, { op: '>=', ratio: 0.8 })]
  } finally {
    for (const close of closing) await close().catch(() => undefined)
    await sim.close()
    rmSync(root, { recursive: true, force: true })
  }
}

if (process.argv[1]?.endsWith('/bench/daemon.js')) {
  run().then(
    (rows) => {
      for (const r of rows) {
        process.stdout.write(
          `${r.figure}: ${r.value.toFixed(0)} ${r.unit} vs bare loop ${r.baseline.toFixed(0)} = ${r.ratio.toFixed(2)}x (goal ${r.goal}: ${r.met ? 'met' : 'NOT met'})${r.note ? ' — ' + r.note : ''}\n`,
        )
      }
    },
    (err: unknown) => {
      process.stderr.write(`bench/daemon: ${(err as Error).stack ?? String(err)}\n`)
      process.exitCode = 1
    },
  )
}
