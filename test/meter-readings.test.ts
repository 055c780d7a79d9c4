/**
 * Readings that can never overbill (daemon/engine/meter-readings.ts): the verdict on one
 * register value by example, then property tests that drive the engine with generated reading
 * streams full of glitches, resets and ppm steps back, and compare the bill with the energy
 * the outlet truly drew.
 */
import t from 'tap'
import fc from 'fast-check'
import {
  BOUND_MAX_V,
  BOUND_MIN_V,
  boundVolts,
  judgeReading,
  maxDrawMWh,
  resolutionMWh,
  type EnergyMark,
  type JudgeInput,
} from '../daemon/engine/meter-readings.js'
import { oneMeterSite, Rig, siteConfig, WED_NOON } from './engine-fixtures.js'

const T0 = WED_NOON
/** A single-phase 32 A outlet (an SDM120's, a Shelly's), unless `more` says otherwise. */
const judge = (last: EnergyMark, reading: EnergyMark, more: Partial<JudgeInput> = {}) =>
  judgeReading({ last, anchor: null, suspect: null, phases: 1, ratingA: 32, volts: boundVolts(230), reading, ...more })

t.test('the bound: the meter’s phases × 1.5 × rating × volts × time, volts within [253, 500] V', async (t) => {
  t.equal(boundVolts(230), BOUND_MIN_V, 'a measured 230 V: the bound uses 230 V + 10 %')
  t.equal(boundVolts(0, Number.NaN), BOUND_MIN_V, 'no voltage or a NaN: still the nominal bound, never 0')
  t.equal(boundVolts(277, 240), 277, 'the higher measured voltage above the nominal one')
  t.equal(boundVolts(65_000), BOUND_MAX_V, 'a corrupt voltage never widens the bound past 500 V')
  // 32 A single-phase: 1.5 × 32 × 253 = 12,144 W; one second = 3.373 Wh. Three-phase: 10.12 Wh.
  t.equal(Math.round(maxDrawMWh(1, 32, 253, 1000)), 3_373)
  t.equal(Math.round(maxDrawMWh(3, 32, 253, 1000)), 10_120)
  t.equal(maxDrawMWh(1, 32, 253, 0), 0)
  t.equal(maxDrawMWh(3, 32, 253, -5000), 0, 'no time (or a clock that went back): nothing could be drawn')
  t.equal(resolutionMWh(1_000_000), 10_000, '10 Wh at least')
  t.equal(resolutionMWh(5_000_000_000_000), 50_000_000, '10 ppm of a 5 GWh register')
})

t.test('the defect: a register 5,000 kWh too high for one poll is rejected, the next reading bills what was drawn', async (t) => {
  const last = { ts: T0, mWh: 1_000_000_000 }
  const spike = judge(last, { ts: T0 + 1000, mWh: 1_000_000_000 + 5_000_000_000 + 2_000 })
  t.match(spike, { kind: 'rejected', detail: /stepped 5000002 Wh in 1 s, more than the outlet could draw \(3\.\d+ Wh at 1 × 32 A\)/ })
  const next = judge(last, { ts: T0 + 2000, mWh: 1_000_004_000 }, { suspect: { ts: T0 + 1000, mWh: 6_000_002_000 } })
  t.same(next, { kind: 'step', deltaMWh: 4_000, markMWh: 1_000_004_000, zeroStep: false }, '4 Wh billed, not 5,000,004 Wh')
})

t.test('a single-phase outlet: a step of twice what it could draw is rejected (a three-phase bound would bill it)', async (t) => {
  // 32 A on one phase for 10 s: at most 1.5 × 32 A × 253 V × 10 s = 33.7 Wh (+ 10 Wh resolution).
  const last = { ts: T0, mWh: 500_000_000 }
  const step = { ts: T0 + 10_000, mWh: last.mWh + Math.round(2 * maxDrawMWh(1, 32, 253, 10_000)) }
  t.match(judge(last, step), { kind: 'rejected', detail: /stepped 67\.\d+ Wh in 10 s, more than the outlet could draw \(33\.\d+ Wh at 1 × 32 A\)/ })
  t.match(judge(last, step, { phases: 3 }), { kind: 'step', zeroStep: false }, 'the same step on a three-phase meter is physically possible')
  // Just inside the single-phase bound is billed: the bound rejects nothing honest.
  const honest = { ts: T0 + 10_000, mWh: last.mWh + Math.floor(maxDrawMWh(1, 32, 253, 10_000)) }
  t.same(judge(last, honest), { kind: 'step', deltaMWh: honest.mWh - last.mWh, markMWh: honest.mWh, zeroStep: false })
})

t.test('the outlet’s phases come from its meter model through the config', async (t) => {
  const one = new Rig(siteConfig(), T0)
  one.boot()
  t.equal(one.state.outlets.A1!.phases, 1, 'eastron-sdm120: single-phase')
  const three = new Rig(oneMeterSite('eastron-sdm630'), T0)
  three.boot()
  t.equal(three.state.outlets.A1!.phases, 3, 'eastron-sdm630: three-phase')
})

t.test('a step back within the resolution counts as zero and keeps the baseline; one past it is held', async (t) => {
  const last = { ts: T0, mWh: 2_000_000_000 }
  t.same(judge(last, { ts: T0 + 1000, mWh: 2_000_000_000 - 9_000 }), { kind: 'step', deltaMWh: 0, markMWh: 2_000_000_000, zeroStep: true })
  t.match(judge(last, { ts: T0 + 1000, mWh: 2_000_000_000 - 30_000 }), { kind: 'rejected', detail: /went back from 2000000 Wh to 1999970 Wh/ })
  // 10 ppm of a 5,000 kWh register is 50 Wh: a float32 total's rounding there is no step back.
  const big = { ts: T0, mWh: 5_000_000_000 }
  t.match(judge(big, { ts: T0 + 1000, mWh: 5_000_000_000 - 40_000 }), { kind: 'step', deltaMWh: 0, zeroStep: true })
})

t.test('a reset: the reading that follows the held register confirms it; nothing across the jump is billed', async (t) => {
  const last = { ts: T0, mWh: 3_000_000 }
  const zero = judge(last, { ts: T0 + 1000, mWh: 0 })
  t.match(zero, { kind: 'rejected' }, 'the counter reads 0 after a restart: held')
  const after = judge(last, { ts: T0 + 2000, mWh: 2_500 }, { suspect: { ts: T0 + 1000, mWh: 0 } })
  t.same(after, { kind: 'rebase', fromMWh: 3_000_000, toMWh: 0, deltaMWh: 2_500, markMWh: 2_500 }, 'only what the new counter measured')
  const glitch = judge(last, { ts: T0 + 2000, mWh: 3_002_000 }, { suspect: { ts: T0 + 1000, mWh: 0 } })
  t.same(glitch, { kind: 'step', deltaMWh: 2_000, markMWh: 3_002_000, zeroStep: false }, 'the next reading follows the old one: the 0 was a glitch')
  const other = judge(last, { ts: T0 + 2000, mWh: 900_000 }, { suspect: { ts: T0 + 1000, mWh: 0 } })
  t.match(other, { kind: 'rejected' }, 'follows neither: held in turn')
})

t.test('a register that jumps up and stays is a rebase too (a swapped meter), never billed as the bound catches up', async (t) => {
  const last = { ts: T0, mWh: 1_000_000 }
  const up = { ts: T0 + 1000, mWh: 1_800_000 }
  t.match(judge(last, up), { kind: 'rejected' })
  t.same(judge(last, { ts: T0 + 2000, mWh: 1_801_000 }, { suspect: up }), {
    kind: 'rebase',
    fromMWh: 1_000_000,
    toMWh: 1_800_000,
    deltaMWh: 1_000,
    markMWh: 1_801_000,
  })
})

t.test('the whole run is bounded: per-step slack never adds up past the bound since the run began', async (t) => {
  // A counter creeping 11 Wh a second at a single-phase 6 A outlet (bound 0.63 Wh/s + 10 Wh slack per step).
  const anchor = { ts: T0, mWh: 1_000_000 }
  let last = anchor
  let rejected = 0
  for (let i = 1; i <= 20; i++) {
    const r = { ts: T0 + i * 1000, mWh: last.mWh + 11_000 }
    const v = judgeReading({ last, anchor, suspect: null, phases: 1, ratingA: 6, volts: 253, reading: r })
    if (v.kind === 'step') last = { ts: r.ts, mWh: v.markMWh }
    else rejected++
  }
  t.ok(rejected > 0, 'the creep is caught')
  t.ok(last.mWh - anchor.mWh <= maxDrawMWh(1, 6, 253, last.ts - anchor.ts) + resolutionMWh(anchor.mWh), 'never more than the bound over the run')
  // A 10 Wh counter ticking at 1 kW polled every second: every tick passes.
  let tick = { ts: T0, mWh: 1_000_000 }
  const a2 = tick
  for (let s = 1; s <= 120; s++) {
    const trueMWh = 1_000_000 + Math.round((1000 * s * 1000) / 3600)
    const shown = Math.floor(trueMWh / 10_000) * 10_000
    const v = judgeReading({ last: tick, anchor: a2, suspect: null, phases: 1, ratingA: 6, volts: 253, reading: { ts: T0 + s * 1000, mWh: shown } })
    t.equal(v.kind, 'step', `tick at ${s} s`)
    if (v.kind === 'step') tick = { ts: T0 + s * 1000, mWh: v.markMWh }
    if (v.kind !== 'step') break
  }
})

// ---------------------------------------------------------------- property tests against the engine

type Glitch =
  | { kind: 'none' }
  /** One poll far too high (a corrupt high word). */
  | { kind: 'spike'; addMWh: number }
  /** One poll low: anywhere from 0 to just below the truth. */
  | { kind: 'dip'; frac: number }
  /** The device restarts: its counter reads a sentinel (−1 or NaN) or nothing, then counts from 0. */
  | { kind: 'reset'; sentinel: 'neg' | 'nan' | 'none' }
  /** The counter steps back by some ppm and stays there (a total truncated at a restart). */
  | { kind: 'ppm'; ppm: number }
  /** Any value at all for one poll (the bound property only). */
  | { kind: 'any'; mWh: number }

interface Poll {
  dtMs: number
  amps: number
  glitch: Glitch
}

const named: fc.Arbitrary<Glitch> = fc.oneof(
  { weight: 10, arbitrary: fc.constant<Glitch>({ kind: 'none' }) },
  { weight: 1, arbitrary: fc.integer({ min: 1_000_000_000, max: 10_000_000_000_000 }).map((addMWh): Glitch => ({ kind: 'spike', addMWh })) },
  { weight: 1, arbitrary: fc.double({ min: 0, max: 0.999, noNaN: true }).map((frac): Glitch => ({ kind: 'dip', frac })) },
  { weight: 1, arbitrary: fc.constantFrom<'neg' | 'nan' | 'none'>('neg', 'nan', 'none').map((sentinel): Glitch => ({ kind: 'reset', sentinel })) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 60 }).map((ppm): Glitch => ({ kind: 'ppm', ppm })) },
)
const anyValue: fc.Arbitrary<Glitch> = fc.oneof(
  named,
  fc.integer({ min: 0, max: 10_000_000_000_000 }).map((mWh): Glitch => ({ kind: 'any', mWh })),
)
const polls = (glitch: fc.Arbitrary<Glitch>): fc.Arbitrary<Poll[]> =>
  fc.array(fc.record({ dtMs: fc.integer({ min: 200, max: 3000 }), amps: fc.integer({ min: 0, max: 32 }), glitch }), { minLength: 1, maxLength: 120 })

interface Outcome {
  billedMWh: number
  drawnMWh: number
  spanMs: number
  rebases: number
  startMWh: number
  /** The phases the engine holds for A1 (its SDM120: 1). */
  phases: number
}

/**
 * One session on outlet A1 (32 A) over a generated stream: the meter's counter shows its count
 * truncated to `tickMWh`; the true energy is what the current drew. Returns the billed energy
 * (every session.ended of A1: a fault may end it early), the energy drawn since the counter stood
 * at the session's start value, and the time from the start reading to the last one.
 */
function runStream(register0: number, stream: Poll[], tickMWh = 1): Outcome {
  const r = new Rig(siteConfig({ sessions: { meterFaultMs: 3_600_000, noCurrentHoldMs: 600_000 }, uplink: false }), T0)
  r.boot()
  let trueMWh = register0 // the meter's own counter (before truncation)
  let drawn = 0
  const shown = (): number => Math.floor(trueMWh / tickMWh) * tickMWh
  const feed = (amps: number, energyWh: number): void => {
    r.apply({ type: 'reading', outlet: 'A1', reading: { ts: r.now, currentA: amps, powerW: amps * 230, energyWh, voltageV: 230 } })
  }
  feed(0, shown() / 1000)
  r.wallet('u-1', 100_000_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  const start = r.now
  const startMWh = shown()
  const drawnAtStart = drawn - (trueMWh - startMWh) // the truncated part was drawn before the start reading
  for (const p of stream) {
    r.advance(p.dtMs)
    const inc = Math.round((p.amps * 230 * p.dtMs) / 3600)
    trueMWh += inc
    drawn += inc
    const g = p.glitch
    if (g.kind === 'spike') feed(p.amps, (shown() + g.addMWh) / 1000)
    else if (g.kind === 'dip') feed(p.amps, Math.floor(shown() * g.frac) / 1000)
    else if (g.kind === 'any') feed(p.amps, g.mWh / 1000)
    else if (g.kind === 'reset') {
      trueMWh = 0
      if (g.sentinel !== 'none') feed(p.amps, g.sentinel === 'neg' ? -1 : Number.NaN)
      else feed(p.amps, 0)
    } else if (g.kind === 'ppm') {
      trueMWh = Math.floor(trueMWh - (trueMWh * g.ppm) / 1e6)
      feed(p.amps, shown() / 1000)
    } else feed(p.amps, shown() / 1000)
  }
  if (r.state.outlets.A1!.session) r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  const ended = r.ended().filter((e) => e.outlet === 'A1')
  let billed = 0
  let rebases = 0
  for (const e of ended) {
    billed += Math.round(e.energyWh * 1000)
    rebases += (e.meterEvents ?? []).filter((x) => x.kind === 'rebase').length + (e.meterEventsOmitted ?? 0)
  }
  return { billedMWh: billed, drawnMWh: drawn - drawnAtStart, spanMs: r.now - start, rebases, startMWh, phases: r.state.outlets.A1!.phases! }
}

t.test('property: with glitches, resets and ppm steps back, the bill never exceeds the energy truly drawn', async (t) => {
  let runs = 0
  let withRebase = 0
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 0, max: 5_000_000_000_000 }), polls(named), async (register0, stream) => {
      const o = runStream(register0, stream)
      runs++
      if (o.rebases > 0) withRebase++
      return o.billedMWh >= 0 && o.billedMWh <= o.drawnMWh
    }),
    { numRuns: 400, seed: 241 },
  )
  t.ok(withRebase > runs / 10, `the streams rebased often enough to mean something (${withRebase} of ${runs})`)
})

t.test('property: a counter in 10 Wh steps bills at most one step more than drawn per reset', async (t) => {
  // After a reset or a step back the counter's first value is truncated like every other: the
  // new base may sit up to one step below where the count truly stood, which no reading can show.
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 0, max: 5_000_000_000_000 }), polls(named), async (register0, stream) => {
      const o = runStream(register0, stream, 10_000)
      return o.billedMWh >= 0 && o.billedMWh <= o.drawnMWh + o.rebases * 10_000
    }),
    { numRuns: 400, seed: 243 },
  )
  t.pass('400 streams of a 10 Wh counter')
})

t.test('property: whatever the meter says, the bill never exceeds the bound over the session’s time', async (t) => {
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 0, max: 5_000_000_000_000 }), polls(anyValue), async (register0, stream) => {
      const o = runStream(register0, stream)
      // Each continuous run (the first, and one after each rebase) is bounded with one counter resolution of slack,
      // at the outlet's own phases: one for A1's SDM120, a third of a bound that assumed three.
      if (o.phases !== 1) return false
      const bound = maxDrawMWh(1, 32, BOUND_MIN_V, o.spanMs) + (o.rebases + 1) * resolutionMWh(5_000_000_000_000 + 10_000_000_000_000)
      return o.billedMWh <= bound
    }),
    { numRuns: 400, seed: 242 },
  )
  t.pass('400 streams of arbitrary values')
})

t.test('the glitch and the rebase are recorded in session.ended; energy = register span minus the rebase jumps', async (t) => {
  const r = new Rig(siteConfig(), T0)
  r.boot()
  r.run(1, {})
  r.wallet('u-1', 100_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(5, { A1: 16 })
  const before = r.meter.A1!
  r.advance(1000)
  r.meter.A1! += Math.round((16 * 230 * 1000) / 3600) // 16 A for a second
  r.apply({
    type: 'reading',
    outlet: 'A1',
    reading: { ts: r.now, currentA: 16, powerW: 3680, energyWh: (r.meter.A1! + 5_000_000_000) / 1000, voltageV: 230 },
  })
  const spikeAt = r.now
  r.run(5, { A1: 16 })
  r.meter.A1 = 0 // the meter restarted
  r.run(1, { A1: 16 })
  const resetAt = r.now
  const firstNew = r.meter.A1!
  r.run(5, { A1: 16 })
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  const end = r.ended()[0]!
  t.equal(end.meterEvents?.length, 3)
  t.match(end.meterEvents, [
    { at: new Date(spikeAt).toISOString(), kind: 'rejected', fromWh: before / 1000 },
    { at: new Date(resetAt).toISOString(), kind: 'rejected', toWh: firstNew / 1000 },
    { at: new Date(resetAt).toISOString(), kind: 'rebase', toWh: firstNew / 1000 },
  ])
  t.ok(end.rebasedWh! < 0)
  t.equal(Math.round(end.energyWh * 1000), Math.round((end.meterEndWh - end.meterStartWh - end.rebasedWh!) * 1000))
  t.ok(end.energyWh < 20, `16 s at 16 A billed (${end.energyWh} Wh), not 5,000 kWh`)
  // Reconciliation shows the difference.
  r.tick(60 * 60_000)
  const rc = r.records('meter.reconciliation').find((x) => x.outlet === 'A1')!
  t.equal(rc.rejectedReadings, 2)
  t.equal(rc.rebasedWh, end.rebasedWh)
  t.equal(
    Math.round((rc.meterEndWh - rc.meterStartWh) * 1000),
    Math.round((rc.billedWh + rc.unbilledWh + rc.rebasedWh!) * 1000),
    'the register span is billed + unbilled + rebased',
  )
})
