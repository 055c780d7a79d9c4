/**
 * The shared-circuit rules, one example per rule, through the pure engine with a virtual
 * clock: queued starts, turn taking with break-before-make, a share freed at once, waiting
 * not billed per hour (pausedS), the grace after a resume, priorities, shedding on a feeder
 * reading, the failsafe of a silent feeder meter, set-circuit-limit, parents and phases.
 */
import t from 'tap'
import { validateConfig } from '../daemon/config.js'
import type { RecordBody, SiteConfig } from '../core/types.js'
import { circuitMemoCheck, initialState, step, type Effect, type EngineEvent, type EngineState } from '../daemon/engine/index.js'

// Every step also checks the engine's memo of each circuit's load against a walk of every outlet.
circuitMemoCheck.enabled = true

const VOLTS = 230
const T0 = Date.UTC(2026, 5, 10, 19, 0)

function config(over: { outlets: Record<string, unknown>[]; circuits: Record<string, unknown>[]; sessions?: Record<string, number> }): SiteConfig {
  const r = validateConfig({
    site: { id: 'garage', timezone: 'UTC' },
    storage: { dir: '/tmp/unused' },
    buses: [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: 5020 }],
    circuits: over.circuits,
    outlets: over.outlets.map((o, i) => ({
      bus: 'lan',
      meter: { model: 'eastron-sdm120', unit: i + 1 },
      relay: { model: 'modbus-coil', unit: 100, coil: i },
      plan: 'std',
      ratingA: 16,
      ...o,
    })),
    plans: [
      {
        id: 'std',
        currency: 'CAD',
        activationFee: 0.5,
        periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 0.15, perHour: 1.2 }],
      },
    ],
    sessions: { graceSeconds: 30, noCurrentHoldMs: 2000, meterFaultMs: 10000, ...over.sessions },
  })
  if (!r.ok) throw new Error(JSON.stringify(r.problems))
  return r.config
}

class Garage {
  state: EngineState
  now = T0
  reg: Record<string, number> = {}
  /** What each car would draw through a closed relay. */
  car: Record<string, number> = {}
  relay: Record<string, boolean> = {}
  all: Effect[] = []
  last: Effect[] = []
  /** Every effect of the last poll (its readings and its tick). */
  lastPoll: Effect[] = []
  constructor(readonly cfg: SiteConfig) {
    this.state = initialState(cfg)
    for (const o of cfg.outlets) {
      this.reg[o.id] = 5_000_000
      this.car[o.id] = 0
      this.relay[o.id] = false
    }
    this.apply({ type: 'boot', cleanShutdown: true, version: 't' })
    this.apply({ type: 'uplink', online: true })
    // One driver per bay: a wallet is reserved whole by its session.
    for (const o of cfg.outlets)
      this.apply({
        type: 'command',
        id: `w-${o.id}`,
        source: 'cloud',
        command: { action: 'set-wallet', userId: `u-${o.id}`, currency: 'CAD', balance: 1_000_000 },
      })
    this.poll(0)
  }
  /** Also step a JSON round-tripped copy of the state and count where they differ. */
  roundTrip = false
  diverged = 0
  apply(ev: EngineEvent): Effect[] {
    const r = step(this.state, ev, this.now)
    if (this.roundTrip) {
      const r2 = step(JSON.parse(JSON.stringify(this.state)) as EngineState, ev, this.now)
      if (JSON.stringify(r2) !== JSON.stringify(r)) this.diverged++
    }
    this.state = r.state
    this.last = r.effects
    this.all.push(...r.effects)
    for (const e of r.effects) if (e.type === 'relay') this.relay[e.outlet] = e.closed
    return r.effects
  }
  drawing(id: string): number {
    return this.relay[id] ? this.car[id]! : 0
  }
  /** Every meter read once after `dt` ms, then a tick. */
  poll(dt = 1000): void {
    const from = this.all.length
    this.now += dt
    for (const o of this.cfg.outlets) {
      const a = this.drawing(o.id)
      this.reg[o.id]! += Math.round((a * VOLTS * dt) / 3600)
      this.apply({
        type: 'reading',
        outlet: o.id,
        reading: { ts: this.now, currentA: a, powerW: a * VOLTS, energyWh: this.reg[o.id]! / 1000, voltageV: VOLTS },
      })
    }
    this.apply({ type: 'tick' })
    this.lastPoll = this.all.slice(from)
  }
  run(ms: number, dt = 1000): void {
    for (let t = 0; t < ms; t += dt) this.poll(dt)
  }
  start(outlet: string, id = `s-${outlet}-${this.now}`): Effect[] {
    return this.apply({ type: 'command', id, source: 'local', command: { action: 'start', outlet, userId: `u-${outlet}` } })
  }
  states(): Record<string, string> {
    return Object.fromEntries(Object.values(this.state.outlets).map((e) => [e.id, e.state]))
  }
  records<T extends RecordBody['type']>(type: T): Extract<RecordBody, { type: T }>[] {
    return this.all.flatMap((e) => (e.type === 'record' && e.record.type === type ? [e.record as Extract<RecordBody, { type: T }>] : []))
  }
  onCount(): number {
    return Object.values(this.relay).filter(Boolean).length
  }
}

const six = (extra: Record<string, unknown> = {}) =>
  config({
    circuits: [{ id: 'feeder', maxA: 40, slotS: 60, ...extra }],
    outlets: ['B1', 'B2', 'B3', 'B4', 'B5', 'B6'].map((id) => ({ id, circuit: 'feeder' })),
  })

t.test('six 16 A cars on a 40 A circuit: two on, four queued, every start accepted', async (t) => {
  const g = new Garage(six())
  for (const id of ['B1', 'B2', 'B3', 'B4', 'B5', 'B6']) {
    g.car[id] = 16
    const r = g.start(id).find((e) => e.type === 'result')
    t.ok(r?.type === 'result' && r.result.ok, `start on ${id} accepted`)
  }
  t.same(g.states(), { B1: 'pending', B2: 'pending', B3: 'queued', B4: 'queued', B5: 'queued', B6: 'queued' })
  t.equal(g.onCount(), 2)
  t.same(
    g.records('session.queued').map((r) => [r.outlet, r.why]),
    [
      ['B3', 'start'],
      ['B4', 'start'],
      ['B5', 'start'],
      ['B6', 'start'],
    ],
  )
  g.run(5000)
  t.same(g.states(), { B1: 'charging', B2: 'charging', B3: 'queued', B4: 'queued', B5: 'queued', B6: 'queued' })
  // A queued outlet says since when it waits.
  const b3 = Object.values(g.state.outlets).find((e) => e.id === 'B3')!
  t.equal(b3.session!.queuedAt, T0, 'waiting since its start')
})

t.test('turns of slotS, longest waiting first, break-before-make', async (t) => {
  const g = new Garage(six())
  for (const id of ['B1', 'B2', 'B3', 'B4']) {
    g.car[id] = 16
    g.start(id)
    g.poll(1000)
  }
  t.same(g.states(), { B1: 'charging', B2: 'charging', B3: 'queued', B4: 'queued', B5: 'off', B6: 'off' })
  let maxOn = 0
  const swaps: Effect[][] = []
  for (let i = 0; i < 70; i++) {
    g.poll(1000)
    maxOn = Math.max(maxOn, g.onCount())
    const switches = g.lastPoll.filter((e) => e.type === 'relay')
    if (switches.length > 0) swaps.push(switches)
  }
  t.equal(maxOn, 2, 'never more than two drawing')
  t.same(g.states(), { B1: 'queued', B2: 'queued', B3: 'charging', B4: 'charging', B5: 'off', B6: 'off' })
  t.equal(swaps.length, 2, 'B1 and B2 started a poll apart: two swaps a poll apart')
  for (const sw of swaps) {
    t.same(
      sw.map((e) => e.type === 'relay' && e.closed),
      [false, true],
      'one opens, then one closes, in one step',
    )
  }
  t.same(
    g
      .records('session.queued')
      .filter((r) => r.why === 'rotation')
      .map((r) => r.outlet),
    ['B1', 'B2'],
  )
  const resumed = g.records('session.resumed')
  t.same(
    resumed.map((r) => r.outlet),
    ['B3', 'B4'],
    'the two that waited longest',
  )
  const b1Start = g.records('session.started').find((r) => r.outlet === 'B1')!
  const b1Off = g.records('session.queued').find((r) => r.outlet === 'B1')!
  t.ok(Date.parse(b1Off.ts) - Date.parse(b1Start.ts) >= 60_000, 'B1 had its whole slot of 60 s')
})

t.test('a session that ends frees its share at once', async (t) => {
  const g = new Garage(six())
  for (const id of ['B1', 'B2', 'B3']) {
    g.car[id] = 16
    g.start(id)
  }
  g.run(3000)
  t.equal(g.states().B3, 'queued')
  g.apply({ type: 'command', id: 'stop-1', source: 'local', command: { action: 'stop', outlet: 'B1', by: 'user' } })
  t.same(g.states(), { B1: 'off', B2: 'charging', B3: 'pending', B4: 'off', B5: 'off', B6: 'off' }, 'in the same step')
  t.ok(g.last.some((e) => e.type === 'relay' && e.outlet === 'B3' && e.closed))
})

t.test('waiting is not billed per hour: pausedS, and the lines still add up', async (t) => {
  const g = new Garage(six({ slotS: 30 }))
  for (const id of ['B1', 'B2', 'B3']) {
    g.car[id] = 16
    g.start(id)
  }
  g.run(100_000)
  g.apply({ type: 'command', id: 'stop-3', source: 'local', command: { action: 'stop', outlet: 'B3', by: 'user' } })
  const ended = g.records('session.ended').find((r) => r.outlet === 'B3')!
  t.ok(ended.pausedS > 0, `B3 waited ${ended.pausedS} s`)
  const seconds = ended.lines.reduce((a, l) => a + l.seconds, 0)
  const paused = ended.lines.reduce((a, l) => a + (l.pausedS ?? 0), 0)
  t.equal(Math.round((seconds + paused) * 1000), Math.round(ended.durationS * 1000), 'billed + paused seconds = the duration')
  t.equal(Math.round(paused * 1000), Math.round(ended.pausedS * 1000), 'the lines carry the pause')
  // Per line: energy at perKwh + billed seconds at perHour, to the micro-unit; the total is fee + lines rounded once.
  let micros = 500_000
  for (const l of ended.lines) {
    const expect = Math.round(l.energyWh * 0.15 * 1000 + (l.seconds / 3600) * 1.2 * 1e6)
    t.ok(Math.abs(l.amountMicros - expect) <= 1, `line ${l.amountMicros} ≈ ${expect}`)
    micros += l.amountMicros
  }
  t.equal(ended.total, Math.floor((micros * 2 + 10_000) / 20_000))
  // What it would have cost had the waiting been billed per hour: more.
  const hourly = Math.round((ended.pausedS / 3600) * 1.2 * 100)
  t.ok(hourly > 0, 'the pause was worth something at the hourly rate, and was not charged')
  const b1 = g.state.outlets.B1!.session
  t.ok(b1, 'B1 still open')
})

t.test('a car that leaves soon after its turn came is unplugged, not charge-complete: waiting is no taper', async (t) => {
  const g = new Garage(
    config({
      circuits: [{ id: 'bay', maxA: 20, slotS: 3600 }],
      outlets: [
        { id: 'B1', circuit: 'bay' },
        { id: 'B2', circuit: 'bay' },
      ],
    }),
  )
  g.car.B1 = 16
  g.car.B2 = 16
  g.start('B1')
  g.poll(1000)
  g.start('B2')
  g.poll(1000)
  t.same(g.states(), { B1: 'charging', B2: 'queued' })
  g.run(30_000)
  g.car.B1 = 0
  g.run(5_000)
  t.same(g.states(), { B1: 'off', B2: 'charging' }, 'B1 left; B2 had its turn')
  g.run(20_000)
  g.car.B2 = 0
  g.run(5_000)
  const ended = g.records('session.ended')
  t.same(
    ended.map((r) => [r.outlet, r.reason]),
    [
      ['B1', 'unplugged'],
      ['B2', 'unplugged'],
    ],
    "the minute before B2's current fell held its wait at 0 A, which is not a car tapering off",
  )
})

t.test('a resumed session gets the grace period; no current within it ends it unplugged', async (t) => {
  const g = new Garage(six({ slotS: 30 }))
  for (const id of ['B1', 'B2', 'B3']) {
    g.car[id] = 16
    g.start(id)
  }
  g.run(35_000)
  t.equal(g.states().B1, 'queued', 'B1 waits its turn after its slot')
  g.car.B1 = 0 // its car left while it waited
  g.run(40_000)
  const resumed = g.records('session.resumed').find((r) => r.outlet === 'B1')
  t.ok(resumed, 'it was switched on again')
  const ended = g.records('session.ended').find((r) => r.outlet === 'B1')
  t.equal(ended?.reason, 'unplugged', 'no current within the grace after its resume: the car left while it waited')
  t.ok(Date.parse(ended!.ts) - Date.parse(resumed!.ts) >= 30_000, 'only once the grace period was over')
  // A car that does draw again keeps charging.
  t.notOk(
    g.records('session.ended').some((r) => r.outlet === 'B2' || r.outlet === 'B3'),
    'the cars that draw again charge on',
  )
})

t.test('a session queued at its start that never draws ends grace-expired at its turn, free', async (t) => {
  const g = new Garage(six({ slotS: 60 }))
  for (const id of ['B1', 'B2']) {
    g.car[id] = 16
    g.start(id)
  }
  g.start('B3') // no car draws on B3
  g.run(50_000)
  t.equal(g.states().B3, 'queued', 'past its 30 s grace, still waiting: the grace does not run while queued')
  t.notOk(
    g.records('session.ended').some((r) => r.outlet === 'B3'),
    'no grace-expired while queued',
  )
  g.run(15_000)
  t.equal(g.states().B3, 'pending', 'its turn: the relay closes and the grace begins')
  g.run(31_000)
  const ended = g.records('session.ended').find((r) => r.outlet === 'B3')
  t.equal(ended?.reason, 'grace-expired')
  t.equal(ended?.total, 0)
})

t.test('priorities: the resident bay is served first and shed last', async (t) => {
  const cfg = config({
    circuits: [{ id: 'feeder', maxA: 40, slotS: 60 }],
    outlets: [
      { id: 'P1', circuit: 'feeder' },
      { id: 'P2', circuit: 'feeder' },
      { id: 'R1', circuit: 'feeder', priority: 10 },
    ],
  })
  const g = new Garage(cfg)
  for (const id of ['P1', 'P2']) {
    g.car[id] = 16
    g.start(id)
  }
  g.run(70_000)
  g.car.R1 = 16
  g.start('R1')
  g.run(2000)
  t.equal(g.states().R1, 'charging', 'the resident bay takes a turn at once (a public one has been on past its minimum)')
  t.equal(g.onCount(), 2)
  g.run(300_000)
  t.equal(g.states().R1, 'charging', 'and never yields it to a lower priority')
})

t.test('an unmanaged load on the feeder meter sheds sessions within one reading, lowest priority first', async (t) => {
  const cfg = config({
    circuits: [{ id: 'feeder', maxA: 40, meter: { bus: 'lan', model: 'eastron-sdm630', unit: 50 } }],
    outlets: [
      { id: 'P1', circuit: 'feeder', priority: 1 },
      { id: 'P2', circuit: 'feeder' },
    ],
  })
  const g = new Garage(cfg)
  const feed = (extra: number): void => {
    g.apply({ type: 'circuit-reading', circuit: 'feeder', reading: { ts: g.now, currentsA: [g.drawing('P1') + g.drawing('P2') + extra, 0, 0] } })
  }
  for (const id of ['P1', 'P2']) {
    g.car[id] = 16
    g.start(id)
  }
  g.run(3000)
  feed(0)
  t.same([g.states().P1, g.states().P2], ['charging', 'charging'])
  feed(20) // a 20 A heater on the same feeder: 52 A
  t.same([g.states().P1, g.states().P2], ['charging', 'queued'], 'the lower priority is shed in the same step (36 A left)')
  t.equal(g.records('session.queued').at(-1)?.why, 'shed')
  g.poll(1000)
  feed(30) // 30 A unmanaged: 10 A left, not enough for any 16 A car
  t.same([g.states().P1, g.states().P2], ['queued', 'queued'], 'both off')
  g.poll(1000)
  feed(0)
  g.run(20_000, 1000)
  feed(0)
  g.poll(1000)
  t.same([g.states().P1, g.states().P2], ['charging', 'charging'], 'the heater off: both back after their minimum off time')
})

t.test('a silent feeder meter counts as a full circuit: failsafe down to failsafeA', async (t) => {
  const cfg = config({
    circuits: [{ id: 'feeder', maxA: 40, failsafeA: 16, meter: { bus: 'lan', model: 'eastron-sdm630', unit: 50 } }],
    outlets: [
      { id: 'P1', circuit: 'feeder' },
      { id: 'P2', circuit: 'feeder' },
      { id: 'A3', circuit: 'feeder', autoStart: { userId: 'u-A3' } },
    ],
  })
  const g = new Garage(cfg)
  for (const id of ['P1', 'P2']) {
    g.car[id] = 16
    g.start(id)
  }
  for (let i = 0; i < 5; i++) {
    g.apply({ type: 'circuit-reading', circuit: 'feeder', reading: { ts: g.now, currentsA: [32, 0, 0] } })
    g.poll(1000)
  }
  t.equal(g.states().A3, 'armed')
  t.same([g.states().P1, g.states().P2], ['charging', 'charging'])
  for (let i = 0; i < 11; i++) {
    g.apply({ type: 'circuit-read-failed', circuit: 'feeder', error: 'timeout' })
    g.poll(1000)
  }
  t.equal(g.onCount(), 1, 'one 16 A session left on')
  t.equal(g.states().A3, 'off', 'an armed outlet opens too')
  t.ok(g.records('session.queued').some((r) => r.why === 'failsafe'))
  for (let i = 0; i < 20; i++) {
    g.apply({ type: 'circuit-reading', circuit: 'feeder', reading: { ts: g.now, currentsA: [g.drawing('P1') + g.drawing('P2'), 0, 0] } })
    g.poll(1000)
  }
  t.equal(g.onCount(), 3, 'the meter answers again: both sessions on, A3 armed')
})

t.test('set-circuit-limit: demand response, journaled like any command, never above the wiring', async (t) => {
  const g = new Garage(six())
  for (const id of ['B1', 'B2']) {
    g.car[id] = 16
    g.start(id)
  }
  g.run(3000)
  const cmd = (id: string, command: Record<string, unknown>) =>
    g.apply({ type: 'command', id, source: 'cloud', command: command as never }).find((e) => e.type === 'result')
  const r1 = cmd('dr-1', { action: 'set-circuit-limit', circuit: 'feeder', maxA: 20 })
  t.same(r1?.type === 'result' && r1.result, { id: 'dr-1', ok: true, result: { circuit: 'feeder', maxA: 20 } })
  t.equal(g.onCount(), 1, 'shed to one session at once')
  const again = cmd('dr-1', { action: 'set-circuit-limit', circuit: 'feeder', maxA: 40 })
  t.same(again?.type === 'result' && again.result, r1?.type === 'result' && r1.result, 'a repeated id returns the first result and changes nothing')
  t.equal(g.onCount(), 1)
  const above = cmd('dr-2', { action: 'set-circuit-limit', circuit: 'feeder', maxA: 63 })
  t.equal(above?.type === 'result' && !above.result.ok && above.result.error.code, 'limit-above-circuit')
  const unknown = cmd('dr-3', { action: 'set-circuit-limit', circuit: 'nope', maxA: 10 })
  t.equal(unknown?.type === 'result' && !unknown.result.ok && unknown.result.error.code, 'unknown-circuit')
  const bad = cmd('dr-4', { action: 'set-circuit-limit', circuit: 'feeder', maxA: -1 })
  t.match(bad?.type === 'result' && !bad.result.ok && bad.result.error.message, /maxA/)
  cmd('dr-5', { action: 'set-circuit-limit', circuit: 'feeder', maxA: null })
  g.run(20_000)
  t.equal(g.onCount(), 2, 'back to the configured 40 A')
  // It survives a restart (it is in the journaled state).
  cmd('dr-6', { action: 'set-circuit-limit', circuit: 'feeder', maxA: 16 })
  const persisted = JSON.parse(JSON.stringify(g.state)) as EngineState
  t.equal(persisted.circuits.feeder!.limitA, 16)
})

t.test('a parent circuit limits its children together; phases do not compete', async (t) => {
  const cfg = config({
    circuits: [
      { id: 'main', maxA: 32 },
      { id: 'left', maxA: 32, parent: 'main' },
      { id: 'right', maxA: 32, parent: 'main' },
    ],
    outlets: [
      { id: 'L1a', circuit: 'left' },
      { id: 'R1a', circuit: 'right' },
      { id: 'R1b', circuit: 'right' },
      { id: 'R2', circuit: 'right', phase: 'L2' },
    ],
  })
  const g = new Garage(cfg)
  for (const id of ['L1a', 'R1a', 'R1b', 'R2']) {
    g.car[id] = 16
    g.start(id)
  }
  g.run(3000)
  t.same(g.states(), { L1a: 'charging', R1a: 'charging', R1b: 'queued', R2: 'charging' }, 'main carries 32 A on L1; L2 has its own 32 A')
})

t.test('a JSON round-tripped state plans the same', async (t) => {
  const g = new Garage(six({ slotS: 30 }))
  g.roundTrip = true
  for (const id of ['B1', 'B2', 'B3', 'B4']) {
    g.car[id] = 16
    g.start(id)
  }
  g.run(100_000)
  t.ok(g.records('session.resumed').length >= 2, 'turns were taken')
  t.equal(g.diverged, 0, 'every step identical on the round-tripped state')
})

const limit = (g: Garage, outlet: string, maxA: number | null, id = `l-${outlet}-${g.now}`) =>
  g.apply({ type: 'command', id, source: 'ocpp', command: { action: 'set-outlet-limit', outlet, maxA } })

t.test("an outlet's own limit below the minimum pauses its session (queued limit, not billed per hour); any other lets it run", async (t) => {
  const g = new Garage(six())
  g.car.B1 = 16
  g.start('B1')
  g.run(5000)
  t.equal(g.states().B1, 'charging')
  const r = limit(g, 'B1', 0).find((e) => e.type === 'result')
  t.same(r?.type === 'result' && r.result, { id: `l-B1-${g.now}`, ok: true, result: { outlet: 'B1', maxA: 0 } })
  t.equal(g.states().B1, 'queued', 'paused in the step of the limit')
  t.notOk(g.relay.B1, 'its relay open')
  t.same(
    g.records('session.queued').map((q) => [q.outlet, q.why]),
    [['B1', 'limit']],
  )
  g.run(120_000)
  t.equal(g.states().B1, 'queued', 'still paused two minutes later: a limit is not a turn')
  // Above the minimum (0.5 A), even far below the car's 16 A: it runs (an outlet switches, it does not dim).
  limit(g, 'B1', 6)
  t.equal(g.states().B1, 'pending', 'switched on again at once (minimum off time long over)')
  t.ok(g.relay.B1)
  t.same(
    g.records('session.resumed').map((q) => q.outlet),
    ['B1'],
  )
  g.run(5000)
  t.equal(g.states().B1, 'charging')
  limit(g, 'B1', null)
  g.apply({ type: 'command', id: 'stop-B1', source: 'local', command: { action: 'stop', outlet: 'B1', by: 'user' } })
  const ended = g.records('session.ended')[0]!
  t.ok(ended.pausedS !== undefined && ended.pausedS >= 120, `the pause is not billed per hour (pausedS ${ended.pausedS})`)
})

t.test('a paused session holds nobody up; a start on a paused outlet opens queued limit; a limit on an unknown outlet is refused', async (t) => {
  const g = new Garage(
    config({
      circuits: [{ id: 'feeder', maxA: 20, slotS: 60 }],
      outlets: ['B1', 'B2'].map((id) => ({ id, circuit: 'feeder' })),
    }),
  )
  limit(g, 'B1', 0.4)
  g.car.B1 = 16
  g.car.B2 = 16
  g.start('B1')
  t.equal(g.states().B1, 'queued', 'opened waiting')
  t.same(
    g.records('session.queued').map((q) => [q.outlet, q.why]),
    [['B1', 'limit']],
  )
  g.poll()
  g.start('B2')
  g.run(3000)
  t.equal(g.states().B2, 'charging', 'the paused one, first in line, does not hold the second back')
  const bad = limit(g, 'nope', 0).find((e) => e.type === 'result')
  t.same(bad?.type === 'result' && !bad.result.ok && bad.result.error.code, 'unknown-outlet')
  const neg = limit(g, 'B1', -1).find((e) => e.type === 'result')
  t.same(neg?.type === 'result' && !neg.result.ok && neg.result.error.code, 'invalid-command')
})

t.test('a site with an OCPP central system and no circuits has one circuit, every outlet on it, that holds nobody back until cut', async (t) => {
  const base = six()
  const cfg = { ...base, circuits: [], ocpp: { url: 'ws://127.0.0.1:1', identity: 'cp' } } as unknown as SiteConfig
  cfg.outlets = cfg.outlets.map(({ circuit: _c, ...o }) => o)
  const g = new Garage(cfg)
  t.same(Object.keys(g.state.settings.circuits), ['site'])
  t.equal(g.state.settings.circuits.site!.maxA, 96, 'the sum of the ratings')
  t.same(g.state.settings.circuits.site!.members, ['B1', 'B2', 'B3', 'B4', 'B5', 'B6'])
  for (const id of ['B1', 'B2', 'B3', 'B4', 'B5', 'B6']) {
    g.car[id] = 16
    g.start(id)
  }
  g.run(3000)
  t.equal(g.onCount(), 6, 'all six on a 96 A site')
  g.apply({ type: 'command', id: 'cut', source: 'ocpp', command: { action: 'set-circuit-limit', circuit: 'site', maxA: 32 } })
  t.equal(g.onCount(), 2, 'a 32 A site limit: two on, in the step of the limit')
  t.equal(g.records('session.queued').filter((q) => q.why === 'shed').length, 4)
})
