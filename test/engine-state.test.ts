/**
 * The engine's state as the journal sees it, and the rules about faults and
 * restarts: boot and shutdown, meter and relay faults, reconciliation, structural
 * sharing, JSON round trips, command idempotency, config reconciliation.
 */
import t from 'tap'
import { Rig, siteConfig, WED_NOON } from './engine-fixtures.js'
import { step, type EngineState } from '../daemon/engine/index.js'

function charging(over: Parameters<typeof siteConfig>[0] = {}): Rig {
  const r = new Rig(siteConfig(over), WED_NOON)
  r.boot()
  r.run(1, {})
  r.wallet('u-1', 100_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(30, { A1: 16 })
  return r
}

const roundTrip = (s: EngineState): EngineState => JSON.parse(JSON.stringify(s)) as EngineState

t.test(
  'boot after a crash: gateway.started first, the open session closed power-loss at its last journaled reading, every relay opened',
  async (t) => {
    const r = charging()
    const lastTs = r.state.outlets.A1!.last!.ts
    const lastWh = r.meter.A1! / 1000
    r.state = roundTrip(r.state) // what the journal persisted
    r.advance(5 * 60_000) // the gateway was down five minutes; the meter kept its register
    r.meter.A1! += 999_000
    const fx = r.boot(false)
    t.equal(fx[0]?.type === 'record' && fx[0].record.type, 'gateway.started', 'gateway.started first')
    t.match(fx[0], { record: { cleanShutdown: false, version: 'test' } })
    const ended = r.records('session.ended', fx)
    t.equal(ended.length, 1)
    t.equal(ended[0]!.reason, 'power-loss')
    t.equal(ended[0]!.endedAt, new Date(lastTs).toISOString(), 'closed at the last journaled reading, not at boot time')
    t.equal(ended[0]!.meterEndWh, lastWh)
    t.equal(ended[0]!.energyWh, Math.round(30 * 1022) / 1000, 'the session energy, never the lifetime register')
    t.same(r.relays(fx), [
      { outlet: 'A1', closed: false },
      { outlet: 'A2', closed: false },
    ])
    t.equal(r.stateOf('A1'), 'off')
    r.run(1, {})
    t.equal(
      r.boot(false).filter((e) => e.type === 'record' && e.record.type === 'session.ended').length,
      0,
      'exactly one session.ended: a second boot has nothing to close',
    )
    t.equal(r.state.gateway.nextSession, 2, 'the session counter survived the restart')
  },
)

t.test('readings before boot are not billed into the restored session', async (t) => {
  const r2 = charging()
  r2.state = roundTrip(r2.state)
  r2.state = { ...r2.state, gateway: { ...r2.state.gateway, running: false } }
  const before = r2.state
  r2.read('A1', 16)
  t.equal(r2.state, before, 'ignored before boot')
  t.same(r2.last, [])
  r2.boot()
  t.equal(r2.ended()[0]!.energyWh, Math.round(30 * 1022) / 1000)
})

t.test('a gap between readings longer than meterFaultMs (stall or clock step) is never billed', async (t) => {
  const r = charging()
  const last = r.state.outlets.A1!.last!
  r.read('A1', 16, 3 * 86_400_000) // the clock jumped three days ahead
  const end = r.ended()[0]!
  t.equal(end.reason, 'meter-fault')
  t.equal(end.endedAt, new Date(last.ts).toISOString(), 'ended at the reading before the gap')
  t.equal(end.durationS, 30)
  t.same(r.records('outlet.fault').length, 1)
  t.same(r.records('outlet.recovered').length, 1, 'and the reading after it recovers the outlet')
  t.equal(r.stateOf('A1'), 'off')
})

t.test('after a restart the first reading may carry an earlier clock than the journal (no RTC)', async (t) => {
  const r = charging()
  r.state = roundTrip(r.state)
  r.now -= 3_600_000 // the Pi came up an hour in the past
  r.boot()
  r.run(1, {})
  t.equal(r.stateOf('A1'), 'off')
  t.equal(r.state.outlets.A1!.badDetail, null, 'accepted: not an impossible reading')
  r.run(12, {})
  t.equal(r.stateOf('A1'), 'off', 'and no fault follows')
})

t.test('clean shutdown closes sessions reboot at their last reading and opens every relay; the next boot says cleanShutdown', async (t) => {
  const r = charging()
  r.read('A1', 16) // the daemon's final reading
  const fx = r.apply({ type: 'shutdown' })
  const ended = r.records('session.ended', fx)
  t.equal(ended.length, 1)
  t.equal(ended[0]!.reason, 'reboot')
  t.equal(ended[0]!.energyWh, Math.round(31 * 1022) / 1000)
  t.same(r.relays(fx), [
    { outlet: 'A1', closed: false },
    { outlet: 'A2', closed: false },
  ])
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  t.equal(r.result().code, 'not-running')
  r.state = roundTrip(r.state)
  const b = r.boot(true)
  t.match(b[0], { type: 'record', record: { type: 'gateway.started', cleanShutdown: true } })
  t.equal(r.records('session.ended', b).length, 0)

  const crash = charging()
  crash.state = roundTrip(crash.state)
  t.equal(crash.records('session.ended', crash.boot(true))[0]?.reason, 'reboot', 'an open session after a clean stop is closed reboot')
})

t.test('meter fault: failed reads for meterFaultMs put the outlet in fault and end the session at the last good reading', async (t) => {
  const r = charging()
  const last = r.state.outlets.A1!.last!
  for (let i = 0; i < 9; i++) {
    r.advance(1000)
    r.apply({ type: 'read-failed', outlet: 'A1', error: 'timeout' })
    r.apply({ type: 'tick' })
  }
  t.equal(r.stateOf('A1'), 'charging', '9 s of failures: not yet')
  r.advance(1000)
  const fx = r.apply({ type: 'read-failed', outlet: 'A1', error: 'timeout' })
  t.equal(r.stateOf('A1'), 'fault')
  t.match(r.records('outlet.fault', fx)[0], { outlet: 'A1', detail: 'meter: read failed: timeout' })
  const end = r.ended()[0]!
  t.equal(end.reason, 'meter-fault')
  t.equal(end.endedAt, new Date(last.ts).toISOString())
  t.equal(end.meterEndWh, last.mWh / 1000)
  t.same(r.relays(fx), [{ outlet: 'A1', closed: false }])
  r.read('A1', 0)
  t.equal(r.records('outlet.recovered').length, 1)
  t.equal(r.stateOf('A1'), 'off', 'a good reading recovers the outlet')
})

t.test('meter fault: silence alone (no events at all) faults the outlet on ticks', async (t) => {
  const r = charging()
  r.tick(9_999)
  t.equal(r.stateOf('A1'), 'charging')
  r.tick(1)
  t.equal(r.stateOf('A1'), 'fault')
  t.equal(r.ended()[0]?.reason, 'meter-fault')
  t.match(r.records('outlet.fault')[0]?.detail, /no good reading for 10 s/)
})

t.test(
  'impossible readings: one is ignored; NaN, negative current, current far above the rating, a register back or ahead of what the outlet could draw all count toward a fault',
  async (t) => {
    const r = charging()
    const e0 = r.state.outlets.A1!
    const bad = (reading: Record<string, number>): void => {
      r.advance(1000)
      r.apply({
        type: 'reading',
        outlet: 'A1',
        reading: { ts: r.now, currentA: 16, powerW: 3680, energyWh: r.meter.A1! / 1000, voltageV: 230, ...reading },
      })
    }
    bad({ energyWh: Number.NaN })
    t.equal(r.state.outlets.A1!.last, e0.last, 'a NaN is not a reading')
    t.match(r.state.outlets.A1!.badDetail, /energyWh is not a finite number/)
    r.read('A1', 16)
    t.equal(r.state.outlets.A1!.badDetail, null)
    bad({ currentA: -2 })
    t.match(r.state.outlets.A1!.badDetail, /negative current/)
    bad({ currentA: 49 }) // rating 32 A (default): 1.5 × 32 = 48
    t.match(r.state.outlets.A1!.badDetail, /above 1.5 x the rating/)
    bad({ energyWh: r.meter.A1! / 1000 - 100 }) // 100 Wh back: more than the counter's resolution
    t.match(r.state.outlets.A1!.badDetail, /went back from/)
    r.read('A1', 16)
    bad({ energyWh: r.meter.A1! / 1000 + 5_000_000 }) // a corrupt high word: 5,000 kWh in a second
    t.match(r.state.outlets.A1!.badDetail, /more than the outlet could draw/)
    r.read('A1', 16)
    t.equal(r.stateOf('A1'), 'charging', 'isolated bad samples end nothing')
    for (let i = 0; i < 10; i++) bad({ currentA: 100 })
    t.equal(r.stateOf('A1'), 'fault')
    t.equal(r.ended()[0]?.reason, 'meter-fault')
    t.ok(r.ended()[0]!.energyWh > 0)
  },
)

t.test('a meter swapped mid-session (register jumps back for good): a rebase, the session goes on, nothing billed across the jump', async (t) => {
  const r = charging()
  const before = r.meter.A1!
  const billedBefore = before - r.state.outlets.A1!.session!.meterStartMWh
  r.meter.A1 = 5_000 // the new meter's register: 5 Wh
  r.read('A1', 16)
  t.equal(r.stateOf('A1'), 'charging', 'one reading back is held, not a fault')
  const swappedAt = r.now
  const first = r.meter.A1! // the new meter's first reading
  for (let i = 0; i < 10; i++) r.read('A1', 16)
  t.equal(r.stateOf('A1'), 'charging', 'the next reading confirmed the reset: the session goes on')
  t.same(r.records('outlet.fault'), [])
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  const end = r.ended()[0]!
  t.equal(end.reason, 'user-stopped')
  t.equal(end.meterEndWh, r.meter.A1! / 1000, 'ends at the new meter’s last reading')
  t.equal(end.energyWh, (billedBefore + (r.meter.A1! - first)) / 1000, 'the old meter’s energy plus the new one’s since its first reading')
  t.same(end.meterEvents, [
    { at: new Date(swappedAt).toISOString(), kind: 'rejected', fromWh: before / 1000, toWh: first / 1000 },
    { at: new Date(swappedAt).toISOString(), kind: 'rebase', fromWh: before / 1000, toWh: first / 1000 },
  ])
  t.equal(
    end.energyWh,
    Math.round((end.meterEndWh - end.meterStartWh - (first - before) / 1000) * 1000) / 1000,
    'energy = register span minus the rebase jump',
  )
})

t.test(
  'a meter in fault comes back with a lower register: once the next reading follows it, the new baseline (outlet.recovered says rebased); never negative energy',
  async (t) => {
    const r = charging()
    const before = r.meter.A1!
    for (let i = 0; i < 11; i++) {
      r.advance(1000)
      r.apply({ type: 'read-failed', outlet: 'A1', error: 'timeout' })
    }
    const end = r.ended()[0]!
    t.equal(end.reason, 'meter-fault')
    t.equal(end.meterEndWh, before / 1000, 'billed to the last reading of the old meter')
    t.ok(end.energyWh > 0)
    r.meter.A1 = 5_000 // swapped while it was silent
    r.read('A1', 0)
    t.same(r.records('outlet.recovered'), [], 'a register far from the last good one is held')
    r.read('A1', 0)
    t.match(r.records('outlet.recovered')[0]?.detail, /rebased from 10000\d+(\.\d+)? to 5 Wh/, 'the next reading followed it: the new baseline')
    t.equal(r.stateOf('A1'), 'off')
    r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
    r.run(10, { A1: 16 })
    r.run(3, {})
    const second = r.ended()[1]!
    t.equal(second.energyWh, 10.22)
    t.ok(second.meterStartWh < 20, 'the new session starts from the new register')
  },
)

t.test('relay fault: the outlet goes to fault, the session ends meter-fault, relay-ok recovers', async (t) => {
  const r = charging()
  const fx = r.apply({ type: 'relay-failed', outlet: 'A1', error: 'read-back says open' })
  t.equal(r.stateOf('A1'), 'fault')
  t.equal(r.ended()[0]?.reason, 'meter-fault')
  t.match(r.records('outlet.fault', fx)[0], { detail: 'relay: read-back says open' })
  t.equal(r.apply({ type: 'relay-failed', outlet: 'A1', error: 'again' }).length, 0, 'one fault record, not one per retry')
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  t.equal(r.result().code, 'outlet-fault')
  r.apply({ type: 'relay-ok', outlet: 'A1' })
  t.equal(r.records('outlet.recovered').length, 1)
  t.equal(r.stateOf('A1'), 'off')
})

t.test('reconciliation: energy drawn outside any session is reported per outlet each period', async (t) => {
  const r = new Rig(siteConfig({ sessions: { reconciliationMinutes: 1 } }), WED_NOON)
  r.boot()
  r.run(1, {})
  r.wallet('u-1', 100_000)
  r.run(20, { A1: 10 }) // a stuck relay: current with no session
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(20, { A1: 10 })
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  r.run(30, {})
  const rec = r.records('meter.reconciliation').filter((x) => x.outlet === 'A1')
  t.equal(rec.length, 1)
  const session = r.ended()[0]!
  const per = Math.round((10 * 230 * 1000) / 3600)
  t.equal(rec[0]!.billedWh, session.energyWh, 'energy inside sessions')
  t.equal(rec[0]!.unbilledWh, (20 * per) / 1000, 'the 20 s drawn with no session')
  t.equal(Math.round((rec[0]!.meterEndWh - rec[0]!.meterStartWh) * 1000), Math.round((rec[0]!.billedWh + rec[0]!.unbilledWh) * 1000))
  t.equal(r.records('meter.reconciliation').filter((x) => x.outlet === 'A2')[0]?.unbilledWh, 0)
})

t.test('structural sharing: unchanged sections and outlet entries keep their identity; an idle tick returns the same state', async (t) => {
  const r = charging()
  const s0 = r.state
  const tick = step(s0, { type: 'tick' }, r.now)
  t.equal(tick.state, s0, 'nothing to do: the very same state')
  t.same(tick.effects, [])
  r.read('A1', 16)
  const s1 = r.state
  t.not(s1.outlets.A1, s0.outlets.A1)
  t.equal(s1.outlets.A2, s0.outlets.A2, 'the other outlet entry is shared')
  for (const k of ['gateway', 'settings', 'wallets', 'plans', 'commands'] as const) t.equal(s1[k], s0[k], `${k} shared`)
  t.equal(s0.outlets.A1!.session!.lines.length, 1, 'the old state was not mutated')
  r.cmd({ action: 'set-wallet', userId: 'u-9', currency: 'CAD', balance: 5 })
  t.equal(r.state.outlets, s1.outlets, 'a wallet change touches no outlet')
  t.equal(r.state.settings, s1.settings)
})

t.test('a state that went through JSON behaves identically', async (t) => {
  const script = (r: Rig, rt: boolean): string[] => {
    const out: string[] = []
    const go = (f: () => void): void => {
      if (rt) r.state = roundTrip(r.state)
      const n = r.effects.length
      f()
      out.push(JSON.stringify(r.effects.slice(n)))
    }
    go(() => r.boot())
    go(() => r.run(1, {}))
    go(() => r.wallet('u-1', 1000))
    go(() => r.wallet('u-42', 1000))
    go(() => r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' }))
    for (let i = 0; i < 40; i++) go(() => r.run(1, { A1: 16, A2: i > 5 && i < 30 ? 8 : 0 }))
    go(() => r.cmd({ action: 'stop', outlet: 'A1', by: 'user' }))
    go(() => r.apply({ type: 'shutdown' }))
    out.push(JSON.stringify(r.state))
    return out
  }
  const plain = script(new Rig(siteConfig(), WED_NOON), false)
  const viaJson = script(new Rig(siteConfig(), WED_NOON), true)
  t.same(viaJson, plain)
  t.ok(plain.some((x) => x.includes('"auto-start"')))
})

t.test('commands apply at most once per id: a repeated id returns the first result and changes nothing', async (t) => {
  const r = new Rig(siteConfig(), WED_NOON)
  r.boot()
  r.run(1, {})
  r.wallet('u-1', 1000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' }, 'cmd-7')
  const first = r.last.find((e) => e.type === 'result')
  const s = r.state
  const again = r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' }, 'cmd-7')
  t.same(again, [first])
  t.equal(r.state, s)
  t.equal(r.records('session.started').length, 1)
  t.throws(() => step(r.state, { type: 'reading', outlet: 'nope', reading: { ts: 1, currentA: 0, powerW: 0, energyWh: 0, voltageV: 0 } }, r.now), {
    code: 'ENGINE_UNKNOWN_OUTLET',
  })
  t.throws(() => step(r.state, { type: 'tick' }, Number.NaN), { code: 'ENGINE_BAD_EVENT' })
})

t.test('config after a restart: outlets added and removed, the installer’s plan change wins, an unchanged file keeps cloud choices', async (t) => {
  const r = charging()
  r.cmd({
    action: 'set-plan',
    plan: {
      id: 'cheap',
      currency: 'CAD',
      periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 0.01 }],
    },
  })
  r.cmd({
    action: 'set-plan',
    plan: {
      id: 'standard',
      currency: 'CAD',
      periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 0.02 }],
    },
  })
  r.cmd({ action: 'assign-plan', outlet: 'A2', planId: 'cheap' })
  r.state = roundTrip(r.state)
  const cfg = siteConfig({
    outlets: [
      { id: 'A1', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, relay: { model: 'modbus-coil', unit: 100, coil: 0 }, plan: 'standard' },
      {
        id: 'A2',
        bus: 'lan',
        meter: { model: 'eastron-sdm120', unit: 2 },
        relay: { model: 'modbus-coil', unit: 100, coil: 1 },
        plan: 'standard',
        autoStart: { userId: 'u-42' },
      },
      { id: 'B1', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 3 }, plan: 'standard' },
    ],
  })
  r.apply({ type: 'config', config: cfg })
  t.ok(r.state.outlets.B1, 'a new outlet is added')
  t.equal(r.state.outlets.A2!.planId, 'cheap', 'the file did not change A2’s plan: the cloud’s assign-plan stays')
  r.boot()
  t.equal(r.ended()[0]?.reason, 'power-loss')
  r.run(1, {})
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(5, { A1: 16 })
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  t.same(
    r.ended()[1]!.lines.map((l) => l.perKwh),
    [0.02],
    'a cloud plan wins over the config plan of the same id',
  )
  const moved = siteConfig({
    outlets: [
      { id: 'A2', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 2 }, relay: { model: 'modbus-coil', unit: 100, coil: 1 }, plan: 'night' },
    ],
    plans: [
      { id: 'standard', currency: 'CAD', periods: [{ days: ['mon'], from: '00:00', to: '24:00', perKwh: 1 }] },
      { id: 'night', currency: 'CAD', periods: [{ days: ['mon'], from: '00:00', to: '24:00', perKwh: 1 }] },
    ],
  })
  r.apply({ type: 'config', config: moved })
  t.same(Object.keys(r.state.outlets), ['A2'], 'outlets no longer configured are dropped')
  t.equal(r.state.outlets.A2!.planId, 'night', 'the installer changed A2’s plan in the file: that wins')
  t.equal(r.state.outlets.A2!.autoStartUser, null, 'and removed its auto-start')
})

t.test('an outlet removed from the config before boot: boot closes its session power-loss, then drops it', async (t) => {
  const r = charging()
  r.state = roundTrip(r.state)
  r.state = { ...r.state, gateway: { ...r.state.gateway, running: false } }
  const only2 = siteConfig({
    outlets: [
      { id: 'A2', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 2 }, relay: { model: 'modbus-coil', unit: 100, coil: 1 }, plan: 'standard' },
    ],
  })
  r.apply({ type: 'config', config: only2 })
  t.ok(r.state.outlets.A1, 'kept until boot has closed its session')
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  t.equal(r.result().code, 'unknown-outlet', 'but no longer addressable')
  const fx = r.boot(false)
  t.equal(r.records('session.ended', fx)[0]?.reason, 'power-loss')
  t.same(Object.keys(r.state.outlets), ['A2'])
  t.same(r.relays(fx), [{ outlet: 'A2', closed: false }])
})

t.test('a meter-only outlet: sessions are metered and billed, never switched', async (t) => {
  const r = new Rig(siteConfig({ outlets: [{ id: 'M', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'standard' }] }), WED_NOON)
  r.boot()
  r.run(1, {})
  r.wallet('u-1', 10_000)
  r.cmd({ action: 'start', outlet: 'M', userId: 'u-1' })
  r.run(10, { M: 16 })
  r.run(3, {})
  t.equal(r.ended()[0]?.reason, 'unplugged')
  t.equal(r.ended()[0]?.energyWh, 10.22)
  t.same(r.relays(r.effects), [], 'no relay effect, ever')
})

t.test('the command memo is bounded: the last 256 ids are remembered, older ones are forgotten', async (t) => {
  const r = new Rig(siteConfig(), WED_NOON)
  r.boot()
  r.cmd({ action: 'set-wallet', userId: 'u-1', currency: 'CAD', balance: 1 }, 'first')
  for (let i = 0; i < 255; i++) r.cmd({ action: 'set-wallet', userId: 'u-2', currency: 'CAD', balance: i }, `n${i}`)
  r.cmd({ action: 'set-wallet', userId: 'u-1', currency: 'CAD', balance: 2 }, 'first')
  t.equal(r.state.wallets['u-1']!.balance, 1, '256 commands later, still remembered')
  r.cmd({ action: 'set-wallet', userId: 'u-2', currency: 'CAD', balance: 0 }, 'one-more')
  r.cmd({ action: 'set-wallet', userId: 'u-1', currency: 'CAD', balance: 2 }, 'first')
  t.equal(r.state.wallets['u-1']!.balance, 2, 'after 257 it is forgotten and applies again')
  t.equal(r.state.commands.ids.length, 256)
  t.equal(Object.keys(r.state.commands.results).length, 256)
})

t.test('a command the gateway refused before the engine (refused): nothing applied, the refusal remembered for its id', async (t) => {
  const r = new Rig(siteConfig(), WED_NOON)
  r.boot(true)
  r.read('A1', 0)
  const start = { action: 'start', outlet: 'A1', userId: 'u-1' } as const
  const result = (effects: ReturnType<Rig['apply']>) =>
    effects.find((e) => e.type === 'result')?.type === 'result' && effects.find((e) => e.type === 'result')
  const refused = { code: 'not-authorized', message: 'the central system is unreachable' } as const
  const first = r.apply({ type: 'command', id: 'c1', source: 'local', command: start, refused })
  t.same(result(first), { type: 'result', result: { id: 'c1', ok: false, error: refused } })
  t.equal(first.filter((e) => e.type === 'record').length, 0, 'nothing recorded')
  t.same(r.state.commands.results.c1, { id: 'c1', ok: false, error: refused }, 'kept in the state the journal commits')
  t.equal(r.state.outlets.A1!.session, null, 'nothing started')
  const again = r.apply({ type: 'command', id: 'c1', source: 'local', command: start })
  t.same(result(again), { type: 'result', result: { id: 'c1', ok: false, error: refused } }, 'the same id: the same answer')
  const bad = r.apply({ type: 'command', id: 'c2', source: 'local', command: start, refused: { code: 5 } as never })
  t.match(result(bad), { result: { ok: false, error: { code: 'invalid-command', message: /refused/ } } })
})
