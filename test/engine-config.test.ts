/**
 * A config applied while the site runs (the `config` event with a hash and a change): the
 * `config.applied` record, an outlet with a session keeping its plan and wiring until the
 * session ends (then taking the change), the running session's price never changed, and the
 * same outcome when the state went through the journal (JSON) in between.
 */
import t from 'tap'
import type { PlanConfig, SiteConfig } from '../core/types.js'
import { Rig, WED_NOON, siteConfig } from './engine-fixtures.js'

const plan = (perKwh: number, activationFee = 0): PlanConfig => ({
  id: 'standard',
  currency: 'CAD',
  activationFee,
  periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh }],
})

/** Outlet An on meter unit n and coil n-1 of the relay board. */
const outlet = (n: number, ratingA: number): unknown => ({
  id: `A${n}`,
  bus: 'lan',
  meter: { model: 'eastron-sdm120', unit: n },
  relay: { model: 'modbus-coil', unit: 100, coil: n - 1 },
  plan: 'standard',
  ratingA,
})
const outlets = (ratingA2 = 32, ratingA1 = 32): unknown[] => [outlet(1, ratingA1), outlet(2, ratingA2)]

function site(perKwh: number, ratingA2 = 32, ratingA1 = 32): SiteConfig {
  return siteConfig({ plans: [plan(perKwh)], outlets: outlets(ratingA2, ratingA1) })
}

/** A1 charging at 10 A for a minute on the old price, A2 idle but read. */
function running(): Rig {
  const r = new Rig(site(1), WED_NOON)
  r.apply({ type: 'config', config: r.config, hash: 'a'.repeat(64) })
  r.boot()
  r.wallet('u1', 100_000)
  r.wallet('u2', 100_000)
  r.run(1, {})
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u1' })
  t.equal(r.result().ok, true, 'A1 started')
  r.run(60, { A1: 10 })
  return r
}

t.test('a price change while A1 charges: A1 ends at the old price, a new session on A2 pays the new one', async (t) => {
  const r = running()
  const next = site(3, 20, 25)
  const changed = ['/plans/0/periods/0/perKwh', '/outlets/0/ratingA', '/outlets/1/ratingA']
  const fx = r.apply({ type: 'config', config: next, hash: 'b'.repeat(64), change: { who: 'owner:olga', changed } })
  const [rec] = r.records('config.applied', fx)
  t.match(rec, {
    who: 'owner:olga',
    configHash: 'b'.repeat(64),
    previousHash: 'a'.repeat(64),
    changed,
  })
  t.same(rec!.pendingOutlets, ['A1'], 'A1 has a session: its change waits')
  t.equal(r.state.outlets.A2!.ratingA, 20, 'A2, idle, takes its new rating at once')
  t.equal(r.state.outlets.A1!.pending?.ratingA, 25, 'A1 holds its change until its session ends')
  t.equal(r.state.outlets.A1!.ratingA, 32, 'and keeps its rating meanwhile')
  t.equal(r.state.gateway.configHash, 'b'.repeat(64))

  // Through the journal: the state as JSON behaves the same.
  r.state = JSON.parse(JSON.stringify(r.state))
  r.cmd({ action: 'start', outlet: 'A2', userId: 'u2' })
  t.equal(r.result().ok, true, 'A2 started on the new price')
  r.run(60, { A1: 10, A2: 10 })
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  r.cmd({ action: 'stop', outlet: 'A2', by: 'user' })
  const [a1, a2] = [r.ended().find((e) => e.outlet === 'A1')!, r.ended().find((e) => e.outlet === 'A2')!]
  t.ok(a1.energyWh > 60 && a2.energyWh > 30, `both drew (${a1.energyWh} Wh, ${a2.energyWh} Wh)`)
  // 1 CAD/kWh before, 3 after: each line is billed at the plan its session started with.
  for (const l of a1.lines) t.equal(l.perKwh, 1, 'A1 billed at the old price throughout')
  for (const l of a2.lines) t.equal(l.perKwh, 3, 'A2 billed at the new price')
  t.equal(r.state.outlets.A1!.pending ?? null, null, 'A1 took the change when its session ended')
  t.equal(r.state.outlets.A1!.ratingA, 25)
})

t.test('an outlet with a session keeps its plan; a config that changes it back clears what waited', async (t) => {
  const r = running()
  const cheap: PlanConfig = { ...plan(0.5), id: 'cheap' }
  const twoPlans = (a1Plan: string): SiteConfig =>
    siteConfig({ plans: [plan(1), cheap], outlets: [{ ...(outlets()[0] as object), plan: a1Plan }, outlets()[1]] })
  r.apply({ type: 'config', config: twoPlans('cheap'), hash: 'c'.repeat(64), change: { who: 'owner:olga', changed: ['/outlets/0/plan'] } })
  t.equal(r.state.outlets.A1!.planId, 'standard', 'the plan stays while the session runs')
  t.equal(r.state.outlets.A1!.pending?.plan, 'cheap')
  r.apply({ type: 'config', config: twoPlans('standard'), hash: 'd'.repeat(64), change: { who: 'owner:olga', changed: ['/outlets/0/plan'] } })
  t.equal(r.state.outlets.A1!.pending ?? null, null, 'changed back: nothing waits')
  r.apply({ type: 'config', config: twoPlans('cheap'), hash: 'e'.repeat(64), change: { who: 'owner:olga', changed: ['/outlets/0/plan'] } })
  r.run(3, { A1: 10 })
  r.run(3, { A1: 0 }) // unplugged: the session ends by itself
  t.equal(r.ended().length, 1, 'the session ended by the unplug')
  t.equal(r.state.outlets.A1!.planId, 'cheap', 'then the outlet sells the new plan')
})

t.test('boot closes a restored session, then the change that waited applies', async (t) => {
  const r = running()
  r.apply({ type: 'config', config: site(2, 32, 16), hash: 'f'.repeat(64), change: { who: 'file', changed: [''] } })
  t.equal(r.state.outlets.A1!.pending?.ratingA, 16, 'waits for the session')
  const restored = JSON.parse(JSON.stringify(r.state))
  r.state = restored
  r.state.gateway.running = true
  r.boot()
  const [ended] = r.ended()
  t.equal(ended!.reason, 'power-loss')
  for (const l of ended!.lines) t.equal(l.perKwh, 1, 'billed at the price it started with')
  t.equal(r.state.outlets.A1!.pending ?? null, null)
  t.equal(r.state.outlets.A1!.ratingA, 16, 'applied once boot closed the session')
})

t.test('a config without a change, or with the hash in force, journals nothing', async (t) => {
  const r = new Rig(site(1), WED_NOON)
  t.same(r.records('config.applied', r.apply({ type: 'config', config: r.config, hash: 'a'.repeat(64) })), [], 'no change given: none')
  t.equal(r.state.gateway.configHash, 'a'.repeat(64), 'the hash is kept')
  t.same(r.records('config.applied', r.apply({ type: 'config', config: r.config, hash: 'a'.repeat(64), change: { who: 'x', changed: [] } })), [])
  const many = Array.from({ length: 70 }, (_, i) => `/plans/0/periods/${i}`)
  const [rec] = r.records('config.applied', r.apply({ type: 'config', config: r.config, hash: 'b'.repeat(64), change: { who: 'x', changed: many } }))
  t.equal(rec!.changed.length, 64)
  t.equal(rec!.changedOmitted, 6)
})

t.test('an outlet whose relay leaves the config has it opened first, even once armed', async (t) => {
  const auto = (relay: boolean): SiteConfig =>
    siteConfig({
      plans: [plan(1)],
      outlets: [{ ...(outlet(1, 32) as object), ...(relay ? { autoStart: { userId: 'u1' } } : { relay: undefined }) }],
    })
  const r = new Rig(auto(true), WED_NOON)
  r.boot()
  r.wallet('u1', 100_000)
  r.run(1, {})
  t.equal(r.stateOf('A1'), 'armed', 'armed: its relay is closed')
  const fx = r.apply({ type: 'config', config: auto(false), hash: 'c'.repeat(64), change: { who: 'admin', changed: ['/outlets/0/relay'] } })
  t.same(r.relays(fx), [{ outlet: 'A1', closed: false }], 'the relay is opened')
  t.equal(r.state.outlets.A1!.hasRelay, false)
})
