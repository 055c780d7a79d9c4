/**
 * Pricing: period lookup (first match wins, wrap past midnight, 24:00, gaps are
 * unavailable), DST nights (spring-forward and fall-back), boundary splitting by
 * interpolation, integer money and rounding once, the price timeline.
 */
import t from 'tap'
import { Rig, siteConfig } from './engine-fixtures.js'
import { priceSession } from './helpers/bill-oracle.js'
import {
  lineAmountMicros,
  periodAt,
  planProblems,
  priceTimeline,
  divRoundHalfUp,
  outletPrices,
  outletStatuses,
  outletPlan,
} from '../daemon/engine/index.js'
import type { PlanConfig, Weekday } from '../core/types.js'

const ALL: Weekday[] = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun']
const VAN = 'America/Vancouver'
/** Local Vancouver wall time in June (PDT, UTC-7) as epoch ms. */
const pdt = (d: number, h: number, m = 0): number => Date.UTC(2026, 5, d, h + 7, m)

const night: PlanConfig = {
  id: 'night',
  currency: 'CAD',
  periods: [
    { days: ['mon', 'tue', 'wed', 'thu', 'fri'], from: '07:00', to: '19:00', unavailable: true },
    { days: ALL, from: '00:00', to: '24:00', perKwh: 0.1 },
  ],
}

t.test('periodAt: the first matching period wins; a weekend falls through to the catch-all', async (t) => {
  t.match(periodAt(night, VAN, pdt(10, 12)), { index: 0, available: false }, 'Wednesday noon: the unavailable window')
  t.match(periodAt(night, VAN, pdt(10, 20)), { index: 1, available: true, perKwh: 0.1, perHour: null, perKwhMicros: 100_000 })
  t.match(periodAt(night, VAN, pdt(13, 12)), { index: 1, available: true }, 'Saturday noon')
  t.match(periodAt(night, VAN, pdt(10, 6, 59)), { index: 1 })
  t.match(periodAt(night, VAN, pdt(10, 7, 0)), { index: 0 }, 'from is inclusive')
  t.match(periodAt(night, VAN, pdt(10, 19, 0)), { index: 1 }, 'to is exclusive')
  t.equal(periodAt(night, VAN, pdt(10, 12)).until, pdt(10, 19), 'valid until the window closes')
})

t.test('periodAt: windows that wrap past midnight belong to the day they start; 24:00 ends the day; gaps are unavailable', async (t) => {
  const plan: PlanConfig = {
    id: 'p',
    currency: 'CAD',
    periods: [
      { days: ['fri'], from: '19:00', to: '07:00', perKwh: 0.2 },
      { days: ['wed'], from: '18:00', to: '24:00', perHour: 1 },
    ],
  }
  t.equal(periodAt(plan, VAN, pdt(12, 23)).index, 0, 'Friday 23:00')
  t.equal(periodAt(plan, VAN, pdt(13, 3)).index, 0, 'Saturday 03:00, still the Friday night window')
  t.equal(periodAt(plan, VAN, pdt(13, 8)).index, -1, 'Saturday 08:00: no period, unavailable')
  t.equal(periodAt(plan, VAN, pdt(13, 8)).available, false)
  t.equal(periodAt(plan, VAN, pdt(12, 5)).index, -1, 'Friday 05:00: Thursday night is not in the plan')
  t.equal(periodAt(plan, VAN, pdt(13, 20)).index, -1, 'Saturday 20:00')
  t.equal(periodAt(plan, VAN, pdt(10, 23, 59)).index, 1, 'Wednesday 23:59 up to 24:00')
  t.equal(periodAt(plan, VAN, pdt(11, 0, 0)).index, -1, 'Thursday 00:00')
})

const dstPlan: PlanConfig = {
  id: 'standard',
  currency: 'CAD',
  periods: [
    { days: ALL, from: '01:00', to: '04:00', perHour: 2 },
    { days: ALL, from: '00:00', to: '24:00', perHour: 1 },
  ],
}

/** A three-real-hour session from `startUtc`, read every minute at 16 A, stopped by the user. */
function nightSession(startUtc: number) {
  const r = new Rig(siteConfig({ plans: [dstPlan], sessions: { meterFaultMs: 120_000 } }), startUtc - 60_000)
  r.boot()
  r.read('A1', 0, 60_000)
  r.wallet('u-1', 1_000_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  for (let i = 0; i < 180; i++) r.read('A1', 16, 60_000)
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  return r.ended()[0]!
}

t.test('spring-forward night (Vancouver 2026-03-08): 01:00-04:00 local lasts two real hours', async (t) => {
  const end = nightSession(Date.UTC(2026, 2, 8, 8, 30)) // 00:30 PST
  t.equal(end.durationS, 3 * 3600)
  t.same(
    end.lines.map((l) => [l.from, l.to, l.seconds, l.perHour, l.amountMicros]),
    [
      ['2026-03-08T08:30:00.000Z', '2026-03-08T09:00:00.000Z', 1800, 1, 500_000],
      ['2026-03-08T09:00:00.000Z', '2026-03-08T11:00:00.000Z', 7200, 2, 4_000_000], // 01:00 PST to 04:00 PDT
      ['2026-03-08T11:00:00.000Z', '2026-03-08T11:30:00.000Z', 1800, 1, 500_000],
    ],
  )
  t.equal(end.total, 500)
  t.equal(Math.round(end.lines.reduce((a, l) => a + l.energyWh * 1000, 0)), Math.round(end.energyWh * 1000), 'energy is split, never lost')
})

t.test('fall-back night (Vancouver 2026-11-01): 01:00-04:00 local lasts four real hours', async (t) => {
  const end = nightSession(Date.UTC(2026, 10, 1, 7, 30)) // 00:30 PDT
  t.same(
    end.lines.map((l) => [l.from, l.to, l.seconds, l.perHour]),
    [
      ['2026-11-01T07:30:00.000Z', '2026-11-01T08:00:00.000Z', 1800, 1],
      ['2026-11-01T08:00:00.000Z', '2026-11-01T10:30:00.000Z', 9000, 2], // 01:00 PDT, through the repeated hour, to 02:30 PST
    ],
  )
  t.equal(end.total, 550)
  t.same(
    priceTimeline(dstPlan, VAN, Date.UTC(2026, 10, 1, 7, 0), 25).map((e) => [e.from, e.to, e.perHour]),
    [
      ['2026-11-01T07:00:00.000Z', '2026-11-01T08:00:00.000Z', 1],
      ['2026-11-01T08:00:00.000Z', '2026-11-01T12:00:00.000Z', 2],
      ['2026-11-01T12:00:00.000Z', '2026-11-02T08:00:00.000Z', 1],
    ],
    'the 25-hour local day',
  )
})

t.test('priceTimeline: the next 24 hours across a DST change, adjacent spans merged', async (t) => {
  t.same(priceTimeline(dstPlan, VAN, Date.UTC(2026, 2, 8, 8, 0), 24), [
    { from: '2026-03-08T08:00:00.000Z', to: '2026-03-08T09:00:00.000Z', available: true, perKwh: null, perHour: 1 },
    { from: '2026-03-08T09:00:00.000Z', to: '2026-03-08T11:00:00.000Z', available: true, perKwh: null, perHour: 2 },
    { from: '2026-03-08T11:00:00.000Z', to: '2026-03-09T08:00:00.000Z', available: true, perKwh: null, perHour: 1 },
  ])
  const tl = priceTimeline(night, VAN, pdt(10, 12, 30), 24)
  t.same(
    tl.map((e) => [e.from, e.to, e.available, e.perKwh]),
    [
      ['2026-06-10T19:30:00.000Z', '2026-06-11T02:00:00.000Z', false, null],
      ['2026-06-11T02:00:00.000Z', '2026-06-11T14:00:00.000Z', true, 0.1],
      ['2026-06-11T14:00:00.000Z', '2026-06-11T19:30:00.000Z', false, null],
    ],
  )
  t.throws(() => priceTimeline(night, VAN, pdt(10, 12), 0), { code: 'ENGINE_BAD_ARGUMENT' })
  t.throws(() => priceTimeline(night, 'Mars/Olympus', pdt(10, 12), 24), { code: 'ENGINE_BAD_TIMEZONE' })
})

t.test('a reading interval across a period boundary is split by linear interpolation in time', async (t) => {
  const plan: PlanConfig = {
    id: 'standard',
    currency: 'CAD',
    periods: [
      { days: ALL, from: '19:00', to: '24:00', perKwh: 0.2 },
      { days: ALL, from: '00:00', to: '24:00', perKwh: 0.1 },
    ],
  }
  const r = new Rig(siteConfig({ plans: [plan], sessions: { meterFaultMs: 120_000 } }), pdt(10, 18, 58) + 30_000)
  r.boot()
  r.read('A1', 0, 30_000) // 18:59:00
  r.wallet('u-1', 100_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.read('A1', 16, 30_000) // 18:59:30: 30 667 mWh
  r.read('A1', 16, 60_000) // 19:00:30: 61 333 mWh, half before 19:00
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  const end = r.ended()[0]!
  t.same(
    end.lines.map((l) => [l.from, l.to, l.energyWh, l.seconds, l.perKwh]),
    [
      ['2026-06-11T01:59:00.000Z', '2026-06-11T02:00:00.000Z', 61.334, 60, 0.1],
      ['2026-06-11T02:00:00.000Z', '2026-06-11T02:00:30.000Z', 30.666, 30, 0.2],
    ],
  )
  t.equal(end.energyWh, 92)
})

t.test('money: integer micro-units per line, the total rounded once, half-up, to minor units', async (t) => {
  t.equal(lineAmountMicros(5, 0, 100_000, 0), 1, '0.5 µ rounds up')
  t.equal(lineAmountMicros(4, 0, 100_000, 0), 0)
  t.equal(lineAmountMicros(0, 3_600_000, 0, 1_500_000), 1_500_000, 'one hour at 1.50/h')
  t.equal(lineAmountMicros(3_000_000_000, 0, 123_457, 0), 370_371_000, '3 MWh at 0.123457/kWh, exact beyond 2^53 intermediates')
  t.equal(divRoundHalfUp(15_000, 10_000), 2)
  t.equal(divRoundHalfUp(14_999, 10_000), 1)
  t.equal(divRoundHalfUp(9_007_199_254_740_990, 10), 900_719_925_474_099, 'exact near 2^53')
  // Two lines of 0.4 cent: rounded once the total is 1 cent (per line it would be 0).
  const two = priceSession(
    [
      { energyWh: 40, seconds: 0, perKwh: 0.1, perHour: null },
      { energyWh: 40, seconds: 0, perKwh: 0.1, perHour: null },
    ],
    0,
    'CAD',
  )
  t.same(
    two.lines.map((l) => l.amountMicros),
    [4000, 4000],
  )
  t.equal(two.total, 1)
  t.equal(priceSession([{ energyWh: 100, seconds: 0, perKwh: 0.05, perHour: null }], 0, 'CAD').total, 1, '0.5 cent rounds up')
  t.equal(priceSession([{ energyWh: 99.98, seconds: 0, perKwh: 0.05, perHour: null }], 0, 'CAD').total, 0, 'just under half (4999 µ) rounds down')
  const yen = priceSession([{ energyWh: 1000, seconds: 0, perKwh: 1.5, perHour: null }], 30, 'JPY')
  t.same({ fee: yen.activationFee, total: yen.total }, { fee: 30, total: 32 }, 'JPY has no minor digits: 30 + 1.5 → 32')
  const bhd = priceSession([{ energyWh: 1, seconds: 0, perKwh: 0.0005, perHour: null }], 0.125, 'BHD')
  t.same({ fee: bhd.activationFee, total: bhd.total }, { fee: 125, total: 125 }, 'BHD has three')
})

t.test('planProblems names every problem of a pushed plan; set-plan refuses it and changes nothing', async (t) => {
  t.same(planProblems(night), [])
  const bad = {
    id: 'x y',
    currency: 'XXQ',
    activationFee: -1,
    periods: [{ days: ['funday'], from: '25:00', to: '07:00', perKwh: 0.1234567, unavailable: true }],
    extra: 1,
  }
  const problems = planProblems(bad)
  for (const p of [
    'plan/extra',
    'plan/id',
    'plan/currency',
    'plan/activationFee',
    'plan/periods/0/days',
    'plan/periods/0/from',
    'plan/periods/0/perKwh',
    'plan/periods/0/unavailable',
  ]) {
    t.ok(
      problems.some((x) => x.startsWith(p + ':')),
      `reports ${p}`,
    )
  }
  t.same(planProblems({ id: 'p', currency: 'CAD', periods: [] }), ['plan/periods: must be a non-empty array'])
  const r = new Rig(siteConfig(), pdt(10, 12))
  r.boot()
  const before = r.state.plans
  r.cmd({ action: 'set-plan', plan: bad as never })
  t.equal(r.result().code, 'invalid-plan')
  t.equal(r.state.plans, before)
})

t.test('set-plan and assign-plan: new sessions use the new prices, a running session keeps the prices it started with', async (t) => {
  const r = new Rig(siteConfig(), pdt(10, 12))
  r.boot()
  r.run(1, {})
  r.wallet('u-1', 100_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(10, { A1: 16 })
  r.cmd({ action: 'set-plan', plan: { id: 'standard', currency: 'CAD', periods: [{ days: ALL, from: '00:00', to: '24:00', perKwh: 9 }] } })
  t.equal(r.result().ok, true)
  r.run(10, { A1: 16 })
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  t.same(
    r.ended()[0]!.lines.map((l) => l.perKwh),
    [0.15],
    'the running session kept its plan',
  )
  r.cmd({ action: 'assign-plan', outlet: 'A1', planId: 'ghost' })
  t.equal(r.result().code, 'unknown-plan')
  r.cmd({ action: 'set-plan', plan: night })
  r.cmd({ action: 'assign-plan', outlet: 'A1', planId: 'night' })
  t.equal(r.result().ok, true)
  t.equal(r.stateOf('A1'), 'unavailable', 'Wednesday noon is in the night plan’s unavailable window')
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  t.equal(r.result().code, 'plan-unavailable')
})

t.test('the API views: an outlet’s prices for the next hours and every outlet’s status', async (t) => {
  const r = new Rig(siteConfig({ plans: [{ ...night, id: 'standard', activationFee: 0.25 }] }), pdt(10, 20))
  r.boot()
  r.run(1, {})
  const p = outletPrices(r.state, 'A1', pdt(10, 20), 24)
  t.same({ planId: p.planId, currency: p.currency, activationFee: p.activationFee }, { planId: 'standard', currency: 'CAD', activationFee: 0.25 })
  t.same(
    p.timeline.map((e) => [e.from, e.available]),
    [
      ['2026-06-11T03:00:00.000Z', true],
      ['2026-06-11T14:00:00.000Z', false],
      ['2026-06-12T02:00:00.000Z', true],
    ],
  )
  t.equal(outletPlan(r.state, 'A1')?.id, 'standard')
  t.throws(() => outletPrices(r.state, 'Z', pdt(10, 20), 24), { code: 'ENGINE_UNKNOWN_OUTLET' })
  r.wallet('u-1', 1000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(10, { A1: 16 })
  const st = outletStatuses(r.state, r.now)
  t.match(st[0], { outlet: 'A1', state: 'charging', userId: 'u-1', currentA: 16, energyWh: 10.22, cost: 25, currency: 'CAD' })
  t.match(st[1], { outlet: 'A2', state: 'off', energyWh: 0, cost: 0 })
  t.notOk('sessionId' in st[1]!)
})

t.test('set-wallet and other commands validate their fields and change nothing when malformed', async (t) => {
  const r = new Rig(siteConfig(), pdt(10, 12))
  r.boot()
  const before = r.state.wallets
  for (const cmd of [
    { action: 'set-wallet', userId: 'u-1', currency: 'CAD', balance: 1.5 },
    { action: 'set-wallet', userId: 'u-1', currency: 'cad', balance: 1 },
    { action: 'set-wallet', userId: '', currency: 'CAD', balance: 1 },
    { action: 'set-wallet', userId: '__proto__', currency: 'CAD', balance: 1 },
    { action: 'stop', outlet: 'A1', by: 'nobody' },
    { action: 'set-availability', outlet: 'A1', available: 'no' },
    { action: 'set-auto-start', outlet: 'A1', userId: 7 },
  ]) {
    r.cmd(cmd as never)
    t.equal(r.result().code, 'invalid-command', JSON.stringify(cmd))
  }
  t.equal(r.state.wallets, before)
  const meterOnly = new Rig(
    siteConfig({ outlets: [{ id: 'M', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'standard' }] }),
    pdt(10, 12),
  )
  meterOnly.boot()
  meterOnly.cmd({ action: 'set-auto-start', outlet: 'M', userId: 'u-1' })
  t.equal(meterOnly.result().code, 'no-relay')
})
