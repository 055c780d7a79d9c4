/**
 * Shared-circuit benchmarks: the cost the circuit rules add to one engine step. A site of
 * 256 outlets on 8 buses, every outlet charging, stepped one reading at a time, against the
 * very same site and steps without circuits (measured in the same run, interleaved, medians of
 * 7 rounds, in wall time and in this process's CPU time):
 *  - 16 circuits with room for everyone (the common case: nobody waits);
 *  - 16 circuits each with room for a quarter of its cars (12 of 16 wait and take turns).
 * Goal: ≤ 1.3x the time of a step without circuits.
 * Run alone: node dist/bench/circuits.js
 */
import { validateConfig } from '../daemon/config.js'
import type { SiteConfig } from '../core/types.js'
import { initialState, step, type EngineState } from '../daemon/engine/index.js'
import { row, type BenchRow, readingAt } from './lib.js'

const OUTLETS = 256
const CIRCUITS = 16
const BUSES = 8
const AMPS = 8
const T0 = Date.UTC(2026, 5, 10, 19, 0)

function site(circuitMaxA: number | null): SiteConfig {
  const r = validateConfig({
    site: { id: 'bench', timezone: 'America/Vancouver' },
    storage: { dir: '/tmp/unused' },
    buses: Array.from({ length: BUSES }, (_, b) => ({ id: `bus${b}`, type: 'modbus-tcp', host: '127.0.0.1', port: 5020 + b })),
    ...(circuitMaxA === null ? {} : { circuits: Array.from({ length: CIRCUITS }, (_, c) => ({ id: `c${c}`, maxA: circuitMaxA, slotS: 600 })) }),
    outlets: Array.from({ length: OUTLETS }, (_, i) => ({
      id: `O${i}`,
      bus: `bus${i % BUSES}`,
      meter: { model: 'eastron-sdm120', unit: Math.floor(i / BUSES) + 1 },
      relay: { model: 'modbus-coil', unit: 100, coil: Math.floor(i / BUSES) },
      plan: 'flat',
      ratingA: 16,
      ...(circuitMaxA === null ? {} : { circuit: `c${i % CIRCUITS}` }),
    })),
    plans: [
      {
        id: 'flat',
        currency: 'CAD',
        activationFee: 0.5,
        periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 0.15, perHour: 0.5 }],
      },
    ],
  })
  if (!r.ok) throw new Error(JSON.stringify(r.problems.slice(0, 3)))
  return r.config
}

/** Every outlet with a session for ten minutes already (whoever is switched on drawing AMPS). */
function chargingSite(config: SiteConfig): { state: EngineState; now: number; wh: number[] } {
  let now = T0
  let state = initialState(config)
  const wh = Array.from({ length: OUTLETS }, () => 1_000_000)
  const feed = (i: number): void => {
    const a = state.outlets[`O${i}`]!.relayClosed ? AMPS : 0
    wh[i]! += (a * 230) / 3600
    state = step(state, readingAt(`O${i}`, now, a, wh[i]!), now).state
  }
  state = step(state, { type: 'boot', cleanShutdown: true, version: 'bench' }, now).state
  now += 1000
  for (let i = 0; i < OUTLETS; i++) feed(i)
  for (let i = 0; i < OUTLETS; i++) {
    const wallet = { action: 'set-wallet', userId: `u${i}`, currency: 'CAD', balance: 10_000_000 } as const
    state = step(state, { type: 'command', id: `w${i}`, source: 'cloud', command: wallet }, now).state
    state = step(state, { type: 'command', id: `s${i}`, source: 'cloud', command: { action: 'start', outlet: `O${i}`, userId: `u${i}` } }, now).state
  }
  for (let s = 0; s < 600; s++) {
    now += 1000
    for (let i = 0; i < OUTLETS; i++) feed(i)
  }
  return { state, now, wh }
}

/**
 * µs per reading step, stepping every outlet once a second for a while; `cpu` gets the same in
 * CPU time of this process (less shaken by other work on a shared machine than wall time).
 */
function timeSteps(base: { state: EngineState; now: number; wh: number[] }, n: number, cpu: number[]): number {
  let { state, now } = base
  const wh = [...base.wh]
  const c0 = process.cpuUsage()
  const t0 = performance.now()
  for (let k = 0; k < n; k++) {
    const i = k % OUTLETS
    if (i === 0) now += 1000
    const a = state.outlets[`O${i}`]!.relayClosed ? AMPS : 0
    wh[i]! += (a * 230) / 3600
    state = step(state, readingAt(`O${i}`, now, a, wh[i]!), now).state
  }
  const wall = ((performance.now() - t0) * 1000) / n
  const c = process.cpuUsage(c0)
  cpu.push((c.user + c.system) / n)
  return wall
}

export async function run(): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  const N = 5 * OUTLETS
  const plain = chargingSite(site(null))
  const roomy = chargingSite(site(16 * AMPS + 16)) // 16 cars of 8 A and a margin: everyone on
  const tight = chargingSite(site(4 * AMPS + 16)) // room for about a quarter: the rest wait their turn
  const waiting = Object.values(tight.state.outlets).filter((e) => e.session?.queuedAt != null).length
  if (Object.values(roomy.state.outlets).some((e) => e.session?.queuedAt != null)) throw new Error('bench: somebody waits on the roomy site')
  if (waiting < OUTLETS / 2) throw new Error(`bench: only ${waiting} sessions wait on the tight site`)
  // Interleaved rounds (plain, roomy, tight, plain, …), so a burst of load elsewhere on the
  // machine falls on all three alike; the first round warms up and is dropped.
  const wall = { plain: [] as number[], roomy: [] as number[], tight: [] as number[] }
  const cpu = { plain: [] as number[], roomy: [] as number[], tight: [] as number[] }
  for (let round = 0; round < 8; round++) {
    for (const [k, base] of [
      ['plain', plain],
      ['roomy', roomy],
      ['tight', tight],
    ] as const) {
      const c: number[] = []
      const w = timeSteps(base, N, c)
      if (round === 0) continue
      wall[k].push(w)
      cpu[k].push(c[0]!)
    }
  }
  const roomyFigure = `engine reading step, ${OUTLETS} outlets on ${CIRCUITS} circuits, everyone switched on, vs the same step without circuits`
  const tightFigure = `engine reading step, ${OUTLETS} outlets on ${CIRCUITS} circuits, ${waiting} sessions waiting their turn, vs the same step without circuits`
  rows.push(row(roomyFigure, 'µs/step', wall.plain, wall.roomy, { op: '<=', ratio: 1.3 }))
  rows.push(row(tightFigure, 'µs/step', wall.plain, wall.tight, { op: '<=', ratio: 1.3 }))
  rows.push(row(`${roomyFigure}, CPU time`, 'µs CPU/step', cpu.plain, cpu.roomy, { op: '<=', ratio: 1.3 }))
  rows.push(row(`${tightFigure}, CPU time`, 'µs CPU/step', cpu.plain, cpu.tight, { op: '<=', ratio: 1.3 }))
  return rows
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const r of await run()) console.log(JSON.stringify(r))
}
