/**
 * Engine benchmarks. Each figure is a ratio against a baseline measured in the same
 * run (median of several runs after warm-up):
 *  - a reading step of a charging outlet on an 8-outlet site, against serialising the
 *    changed outlet entry (what the journal must do for every step anyway);
 *  - journal bytes a reading step changes (structural sharing), against the whole state;
 *  - a period lookup (plan + IANA zone, DST-aware), against one luxon zone conversion.
 * Run alone: node dist/bench/engine.js
 */
import { DateTime } from 'luxon'
import { validateConfig } from '../daemon/config.js'
import type { SiteConfig } from '../core/types.js'
import { initialState, periodAt, step, type EngineState } from '../daemon/engine/index.js'
import { repeat, row, type BenchRow, readingAt } from './lib.js'

const OUTLETS = 8
const T0 = Date.UTC(2026, 5, 10, 19, 0)

function site(): SiteConfig {
  const r = validateConfig({
    site: { id: 'bench', timezone: 'America/Vancouver' },
    storage: { dir: '/tmp/unused' },
    buses: [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: 5020 }],
    outlets: Array.from({ length: OUTLETS }, (_, i) => ({
      id: `O${i}`,
      bus: 'lan',
      meter: { model: 'eastron-sdm120', unit: i + 1 },
      relay: { model: 'modbus-coil', unit: 100, coil: i },
      plan: 'tou',
    })),
    plans: [
      {
        id: 'tou',
        currency: 'CAD',
        activationFee: 0.5,
        periods: [
          { days: ['mon', 'tue', 'wed', 'thu', 'fri'], from: '16:00', to: '21:00', perKwh: 0.3, perHour: 1 },
          { days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '22:00', to: '06:00', perKwh: 0.08 },
          { days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 0.15, perHour: 0.5 },
        ],
      },
    ],
  })
  if (!r.ok) throw new Error(JSON.stringify(r.problems))
  return r.config
}

/** A site with every outlet charging for an hour already (lines, taper window full). */
function chargingSite(): { state: EngineState; now: number; wh: number[] } {
  let now = T0
  let state = initialState(site())
  const wh = Array.from({ length: OUTLETS }, () => 1_000_000)
  const feed = (i: number, a: number): void => {
    wh[i]! += (a * 230) / 3600
    state = step(state, readingAt(`O${i}`, now, a, wh[i]!), now).state
  }
  state = step(state, { type: 'boot', cleanShutdown: true, version: 'bench' }, now).state
  now += 1000
  for (let i = 0; i < OUTLETS; i++) feed(i, 0)
  for (let i = 0; i < OUTLETS; i++) {
    state = step(
      state,
      { type: 'command', id: `w${i}`, source: 'cloud', command: { action: 'set-wallet', userId: `u${i}`, currency: 'CAD', balance: 10_000_000 } },
      now,
    ).state
    state = step(state, { type: 'command', id: `s${i}`, source: 'cloud', command: { action: 'start', outlet: `O${i}`, userId: `u${i}` } }, now).state
  }
  for (let s = 0; s < 3600; s++) {
    now += 1000
    for (let i = 0; i < OUTLETS; i++) feed(i, 16)
  }
  return { state, now, wh }
}

export async function run(): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  const base = chargingSite()
  const N = 20_000

  // 1. Reading steps against serialising the changed entry.
  const stepRuns = await repeat(5, 1, async () => {
    let { state, now } = base
    const wh = [...base.wh]
    const t0 = performance.now()
    for (let k = 0; k < N; k++) {
      const i = k % OUTLETS
      if (i === 0) now += 1000
      wh[i]! += 1.02
      state = step(state, readingAt(`O${i}`, now, 16, wh[i]!), now).state
    }
    return N / ((performance.now() - t0) / 1000)
  })
  const serialiseRuns = await repeat(5, 1, async () => {
    const entries = Object.values(base.state.outlets)
    let bytes = 0
    const t0 = performance.now()
    for (let k = 0; k < N; k++) bytes += JSON.stringify(entries[k % OUTLETS]).length
    if (bytes === 0) throw new Error('unreachable')
    return N / ((performance.now() - t0) / 1000)
  })
  rows.push(
    row('engine reading steps/s (charging, 8 outlets) vs JSON.stringify of the changed outlet entry/s', 'ops/s', serialiseRuns, stepRuns, {
      op: '>=',
      ratio: 0.5,
    }),
  )

  // 2. Bytes a reading step changes, against the whole state.
  {
    const { state, now } = base
    const next = step(state, readingAt('O3', now + 1000, 16, base.wh[3]! + 1.02), now + 1000).state
    let changed = 0
    for (const k of Object.keys(next)) {
      if (k === 'outlets') {
        for (const id of Object.keys(next.outlets)) if (next.outlets[id] !== state.outlets[id]) changed += JSON.stringify(next.outlets[id]).length
      } else if (next[k] !== state[k]) changed += JSON.stringify(next[k]).length
    }
    const whole = JSON.stringify(next).length
    rows.push(
      row('journal bytes changed by one reading step (structural sharing) vs whole state', 'bytes', [whole], [changed], { op: '<=', ratio: 0.25 }),
    )
  }

  // 3. Period lookups against one luxon zone conversion.
  {
    const plan = site().plans[0]!
    const year = 365 * 86_400_000
    const M = 50_000
    const instants = Array.from({ length: M }, (_, i) => T0 + Math.floor(((i * 7919) % M) * (year / M)))
    const lookupRuns = await repeat(5, 1, async () => {
      let s = 0
      const t0 = performance.now()
      for (const t of instants) s += periodAt(plan, 'America/Vancouver', t).index
      if (Number.isNaN(s)) throw new Error('unreachable')
      return M / ((performance.now() - t0) / 1000)
    })
    const luxonRuns = await repeat(5, 1, async () => {
      let s = 0
      const t0 = performance.now()
      for (const t of instants) s += DateTime.fromMillis(t, { zone: 'America/Vancouver' }).weekday
      if (Number.isNaN(s)) throw new Error('unreachable')
      return M / ((performance.now() - t0) / 1000)
    })
    rows.push(
      row('periodAt lookups/s (random instants over a year, DST zone) vs luxon DateTime.fromMillis(t, zone)/s', 'ops/s', luxonRuns, lookupRuns, {
        op: '>=',
        ratio: 1,
      }),
    )
  }
  return rows
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const r of await run()) console.log(JSON.stringify(r))
}
