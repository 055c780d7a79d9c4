/**
 * Example tests for every session rule: activation and its refusals, grace, unplug
 * and taper, wallet cap and offline debit, stops, availability, auto-start.
 */
import t from 'tap'
import { Rig, siteConfig, WED_NOON } from './engine-fixtures.js'
import type { Effect } from '../daemon/engine/index.js'

function ready(over: Parameters<typeof siteConfig>[0] = {}): Rig {
  const r = new Rig(siteConfig(over), WED_NOON)
  r.boot()
  r.run(1, {}) // every meter answers once: outlets are ready
  return r
}

const kinds = (effects: Effect[]): string[] =>
  effects.map((e) =>
    e.type === 'record' ? `record:${e.record.type}` : e.type === 'relay' ? `relay:${e.outlet}:${e.closed ? 'close' : 'open'}` : e.type,
  )

t.test('activation opens a session, closes the relay after the record, and an abrupt drop ends it unplugged', async (t) => {
  const r = ready()
  r.wallet('u-1', 10_000)
  const fx = r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  t.same(kinds(fx), ['record:session.started', 'relay:A1:close', 'status', 'result'], 'record first, then the relay close, then status and result')
  t.equal(r.stateOf('A1'), 'pending')
  t.equal(r.result().ok, true)
  r.run(10, { A1: 16 })
  t.equal(r.stateOf('A1'), 'charging')
  r.run(2, {})
  t.equal(r.ended().length, 0, 'two low samples (1 s apart) are under the 2 s hold')
  r.read('A1', 0)
  const [end] = r.ended()
  t.ok(end, 'the third low sample ends it')
  t.equal(end!.reason, 'unplugged')
  t.equal(end!.energyWh, 10.22, '10 s at 16 A, 230 V: 10 × 1.022 Wh')
  t.equal(end!.durationS, 13, 'from activation to the concluding reading')
  t.equal(end!.lines.length, 1)
  // 10.22 Wh × 0.15/kWh = 1533 µ; 13 s × 0.50/h = 1805.6 µ; one line, rounded half-up once: 3339 µ
  t.equal(end!.lines[0]!.amountMicros, 3339)
  t.equal(end!.activationFee, 50)
  t.equal(end!.total, 50, '0.50 fee + 0.003339 → 50 cents')
  t.same(kinds(r.last), ['record:session.ended', 'relay:A1:open', 'status'])
  t.equal(r.stateOf('A1'), 'off')
  t.equal(r.state.wallets['u-1']!.balance, 9950, 'the local wallet copy is debited')
})

t.test('one low sample does not end a session; the hold restarts when current returns', async (t) => {
  const r = ready()
  r.wallet('u-1', 10_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(5, { A1: 16 })
  r.run(1, {})
  r.run(1, { A1: 16 })
  r.run(2, {})
  t.equal(r.stateOf('A1'), 'charging', 'a glitch and a short drop do not end it')
  t.equal(r.ended().length, 0)
  r.run(1, {})
  t.equal(r.ended()[0]?.reason, 'unplugged')
})

t.test('the hold is met within half a poll: samples that arrive a little early do not cost another poll', async (t) => {
  const r = ready() // pollMs 1000, noCurrentHoldMs 2000
  r.wallet('u-1', 10_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(5, { A1: 16 })
  r.read('A1', 0, 1000) // the first low sample: the hold starts here
  r.read('A1', 0, 990)
  t.equal(r.ended().length, 0, '990 ms of no current is not the hold')
  r.read('A1', 0, 988) // 1978 ms after the first low sample: two polls, answered a little early
  t.equal(r.ended()[0]?.reason, 'unplugged', 'ends on the sample that completes two polls, not one poll later')
})

t.test('the slack never lets one low sample end a session, even with a hold shorter than a poll', async (t) => {
  const r = ready({ sessions: { noCurrentHoldMs: 400 } })
  r.wallet('u-1', 10_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(5, { A1: 16 })
  r.read('A1', 0, 1000)
  t.equal(r.ended().length, 0, 'the first low sample alone never ends it')
  r.read('A1', 0, 250)
  t.equal(r.ended().length, 0, '250 ms is under 400 ms less its 100 ms slack')
  r.read('A1', 0, 60)
  t.equal(r.ended()[0]?.reason, 'unplugged', '310 ms ≥ 300 ms')
})

t.test('current that tapered before falling ends the session charge-complete', async (t) => {
  const r = ready()
  r.wallet('u-1', 100_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(120, { A1: 16 })
  r.run(70, { A1: 5 }) // the last minute's mean 5 A < 0.5 × 16 A peak
  r.run(3, {})
  t.equal(r.ended()[0]?.reason, 'charge-complete')
})

t.test('a dip that is not under half the peak still counts as unplugged', async (t) => {
  const r = ready()
  r.wallet('u-1', 100_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(120, { A1: 16 })
  r.run(70, { A1: 9 }) // 9 A ≥ 8 A: not tapered
  r.run(3, {})
  t.equal(r.ended()[0]?.reason, 'unplugged')
})

t.test('grace: no current above minChargeA within graceSeconds ends grace-expired and costs nothing', async (t) => {
  const r = ready()
  r.wallet('u-1', 10_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(59, { A1: 0.3 })
  t.equal(r.stateOf('A1'), 'pending', 'still waiting at 59 s')
  r.read('A1', 0.3)
  const [end] = r.ended()
  t.equal(end?.reason, 'grace-expired')
  t.equal(end?.total, 0)
  t.equal(end?.activationFee, 0)
  t.same(end?.lines, [])
  t.ok(end!.energyWh > 0, 'the small load is reported, not billed')
  t.equal(r.state.wallets['u-1']!.balance, 10_000)
  t.same(r.relays(), [{ outlet: 'A1', closed: false }])
})

t.test('grace ends as soon as the current rises above minChargeA', async (t) => {
  const r = ready()
  r.wallet('u-1', 10_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(40, {})
  r.run(60, { A1: 10 })
  t.equal(r.stateOf('A1'), 'charging')
  t.equal(r.ended().length, 0)
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  const end = r.ended()[0]!
  t.equal(end.reason, 'user-stopped')
  t.equal(end.durationS, 100, 'time is billed from activation, pending included')
})

t.test('activation refusals: each with its own code, each changing nothing', async (t) => {
  const check = async (name: string, r: Rig, cmd: Parameters<Rig['cmd']>[0], code: string): Promise<void> => {
    const before = r.state
    r.cmd(cmd)
    const res = r.result()
    t.same({ ok: res.ok, code: res.code }, { ok: false, code }, name)
    t.equal(r.state.outlets, before.outlets, `${name}: outlets untouched`)
    t.equal(r.state.wallets, before.wallets, `${name}: wallets untouched`)
    t.equal(r.records('session.started', r.last).length, 0)
    t.equal(r.relays().length, 0, `${name}: no relay moves`)
  }
  let r = new Rig(siteConfig(), WED_NOON)
  r.wallet('u-1', 1000)
  await check('before boot', r, { action: 'start', outlet: 'A1', userId: 'u-1' }, 'not-running')
  r.boot()
  await check('meter not read since boot', r, { action: 'start', outlet: 'A1', userId: 'u-1' }, 'outlet-not-ready')
  r = ready()
  await check('unknown outlet', r, { action: 'start', outlet: 'Z9', userId: 'u-1' }, 'unknown-outlet')
  await check('unknown user', r, { action: 'start', outlet: 'A1', userId: 'u-404' }, 'unknown-user')
  await check('malformed', r, { action: 'start', outlet: 'A1' } as never, 'invalid-command')
  await check('unknown action', r, { action: 'explode', outlet: 'A1' } as never, 'invalid-command')
  r.wallet('u-0', 0)
  await check('zero balance', r, { action: 'start', outlet: 'A1', userId: 'u-0' }, 'no-balance')
  r.wallet('u-n', -20)
  await check('negative balance', r, { action: 'start', outlet: 'A1', userId: 'u-n' }, 'no-balance')
  r.wallet('u-f', 50)
  await check('balance not above the activation fee', r, { action: 'start', outlet: 'A1', userId: 'u-f' }, 'no-balance')
  r.wallet('u-y', 5000, 'JPY')
  await check('wallet in another currency', r, { action: 'start', outlet: 'A1', userId: 'u-y' }, 'currency-mismatch')
  r.wallet('u-1', 1000)
  r.wallet('u-2', 1000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  await check('busy', r, { action: 'start', outlet: 'A1', userId: 'u-2' }, 'outlet-busy')
  r.cmd({ action: 'set-availability', outlet: 'A1', available: false })
  await check('unavailable', r, { action: 'start', outlet: 'A1', userId: 'u-2' }, 'outlet-unavailable')
  for (let i = 0; i < 11; i++) {
    r.advance(1000)
    r.apply({ type: 'read-failed', outlet: 'A2', error: 'timeout' })
  }
  t.equal(r.stateOf('A2'), 'fault')
  await check('fault', r, { action: 'start', outlet: 'A2', userId: 'u-2' }, 'outlet-fault')
  await check('stop without session', r, { action: 'stop', outlet: 'A2', by: 'user' }, 'no-session')
})

t.test('plan windows: activation refused in an unavailable window, a running session ends plan-unavailable at its start', async (t) => {
  const plans = [
    {
      id: 'standard',
      currency: 'CAD',
      periods: [
        { days: ['mon', 'tue', 'wed', 'thu', 'fri'] as const, from: '13:00', to: '14:00', unavailable: true },
        { days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const, from: '00:00', to: '24:00', perKwh: 0.1 },
      ],
    },
  ]
  const r = new Rig(siteConfig({ plans: plans as never }), WED_NOON + 58 * 60_000) // 12:58 local
  r.boot()
  r.run(1, {})
  r.wallet('u-1', 10_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(130, { A1: 10 }) // runs through 13:00
  const end = r.ended()[0]!
  t.equal(end.reason, 'plan-unavailable')
  t.equal(end.endedAt, '2026-06-10T20:00:00.000Z', 'ended by the reading at 13:00 local')
  t.equal(r.stateOf('A1'), 'unavailable')
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  t.equal(r.result().code, 'plan-unavailable')
  r.now = WED_NOON + 2 * 3_600_000 // 14:00 local
  r.run(1, {})
  t.equal(r.stateOf('A1'), 'off', 'available again after the window')
})

t.test('wallet: the session ends wallet-depleted within one reading, never billed above the balance at start', async (t) => {
  const r = ready()
  r.wallet('u-1', 60) // 0.60 CAD: 0.50 fee + 0.10 of charging
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  const costs: number[] = []
  for (let i = 0; i < 1000 && r.ended().length === 0; i++) {
    r.read('A1', 32)
    for (const e of r.last) if (e.type === 'status' && e.status.outlet === 'A1' && e.status.sessionId) costs.push(e.status.cost)
  }
  const end = r.ended()[0]!
  t.equal(end.reason, 'wallet-depleted')
  t.equal(end.total, 60, 'exactly the balance: the overshoot of the last reading is waived')
  t.ok(costs[costs.length - 2]! < 60, 'the reading before the end was still under the balance')
  const waived = end.lines.reduce((a, l) => a + (l.waivedMicros ?? 0), 0)
  t.ok(waived >= 0 && waived < 10_000 * 1, 'at most the last reading is waived')
  t.equal(r.state.wallets['u-1']!.balance, 0)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  t.equal(r.result().code, 'no-balance', 'no second session on an empty wallet')
  r.wallet('u-1', 5000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  t.equal(r.result().ok, true, "the cloud's set-wallet is authoritative")
})

t.test('wallet: offline, each session debits the local copy, so sessions cannot outspend the balance', async (t) => {
  const r = ready() // the uplink never came up: offline since boot
  r.wallet('u-1', 200)
  let billed = 0
  for (let n = 0; n < 10; n++) {
    r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
    if (!r.result().ok) {
      t.equal(r.result().code, 'no-balance')
      break
    }
    r.run(30, { A1: 32 })
    r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
    billed += r.ended()[r.ended().length - 1]!.total
  }
  t.ok(
    r.ended().every((e) => e.offline),
    'records say the sessions ran offline',
  )
  t.ok(billed <= 200, `billed ${billed} of a 200 balance`)
  t.equal(r.state.wallets['u-1']!.balance, 200 - billed)
  t.ok(r.ended().length >= 2)
})

t.test('wallet: a session reserves the balance; a second concurrent session of the same user is refused', async (t) => {
  const r = ready()
  r.wallet('u-1', 1000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.cmd({ action: 'start', outlet: 'A2', userId: 'u-1' })
  t.equal(r.result().code, 'no-balance')
})

t.test('wallet: a lower set-wallet during a session shrinks its cap', async (t) => {
  const r = ready()
  r.wallet('u-1', 100_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(5, { A1: 16 })
  r.wallet('u-1', 51)
  r.run(100, { A1: 16 })
  const end = r.ended()[0]!
  t.equal(end.reason, 'wallet-depleted')
  t.equal(end.total, 51)
})

t.test('stops and availability', async (t) => {
  const r = ready()
  r.wallet('u-1', 10_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(5, { A1: 16 })
  r.cmd({ action: 'stop', outlet: 'A1', by: 'manager' })
  t.equal(r.ended()[0]?.reason, 'manager-stopped')
  t.same(r.relays(), [{ outlet: 'A1', closed: false }])
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(5, { A1: 16 })
  r.cmd({ action: 'set-availability', outlet: 'A1', available: false })
  t.equal(r.ended()[1]?.reason, 'manager-stopped', 'set-availability false ends the open session manager-stopped')
  t.equal(r.stateOf('A1'), 'unavailable')
  t.equal(r.state.outlets.A1!.relayClosed, false)
  r.cmd({ action: 'set-availability', outlet: 'A1', available: true })
  t.equal(r.stateOf('A1'), 'off')
})

t.test('single-user auto-start: armed, starts on current, re-arms after unplug, suspended by a user stop', async (t) => {
  const r = ready()
  t.equal(r.stateOf('A2'), 'off', 'no wallet known for u-42: not armed, relay open')
  r.wallet('u-42', 10_000)
  t.equal(r.stateOf('A2'), 'armed')
  t.same(r.relays(), [{ outlet: 'A2', closed: true }], 'armed closes the relay')
  r.run(3, { A2: 0.3 })
  t.equal(r.records('session.started').length, 0, 'small loads under autoStartA start nothing')
  r.run(1, { A2: 12 })
  const started = r.records('session.started')
  t.equal(started.length, 1)
  t.equal(started[0]!.trigger, 'auto-start')
  t.equal(started[0]!.userId, 'u-42')
  t.equal(r.stateOf('A2'), 'charging')
  r.run(20, { A2: 12 })
  r.run(3, {})
  t.equal(r.ended()[0]?.reason, 'unplugged')
  t.equal(r.stateOf('A2'), 'armed', 're-armed after unplug')
  t.equal(r.state.outlets.A2!.relayClosed, true)
  r.run(5, { A2: 12 })
  t.equal(r.records('session.started').length, 2)
  r.cmd({ action: 'stop', outlet: 'A2', by: 'user' })
  t.equal(r.ended()[1]?.reason, 'user-stopped')
  t.equal(r.stateOf('A2'), 'off', 'suspended after a user stop')
  t.same(r.relays(), [{ outlet: 'A2', closed: false }])
  r.run(5, { A2: 12 })
  t.equal(r.records('session.started').length, 2, 'no auto-start while suspended')
  r.cmd({ action: 'start', outlet: 'A2', userId: 'u-42' })
  t.equal(r.records('session.started')[2]?.trigger, 'activation', 'the user starts manually')
  r.run(5, { A2: 12 })
  r.run(3, {})
  t.equal(r.stateOf('A2'), 'armed', 'which re-enabled auto-start')
  r.wallet('u-42', 0)
  t.equal(r.stateOf('A2'), 'off', 'auto-start needs a positive balance')
  r.cmd({ action: 'set-auto-start', outlet: 'A1', userId: 'u-1' })
  r.wallet('u-1', 100)
  t.equal(r.stateOf('A1'), 'armed', 'set-auto-start arms another outlet')
  r.cmd({ action: 'set-auto-start', outlet: 'A1', userId: null })
  t.equal(r.stateOf('A1'), 'off')
})

t.test('offline limit: sessions end offline-limit when the uplink has been down that long (off by default)', async (t) => {
  const r = ready({ offline: { limitMinutes: 1 } })
  r.apply({ type: 'uplink', online: true })
  r.wallet('u-1', 10_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.run(5, { A1: 16 })
  r.apply({ type: 'uplink', online: false })
  r.run(59, { A1: 16 })
  t.equal(r.ended().length, 0)
  r.run(1, { A1: 16 })
  const end = r.ended()[0]!
  t.equal(end.reason, 'offline-limit')
  t.equal(end.offline, true)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  t.equal(r.result().code, 'offline-limit')
  r.apply({ type: 'uplink', online: true })
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  t.equal(r.result().ok, true)

  const d = ready() // default: no limit
  d.wallet('u-1', 1_000_000)
  d.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  d.run(600, { A1: 16 })
  t.equal(d.ended().length, 0, 'charges through a 10-minute outage')
})

t.test('a reading sampled just before the activation it follows: its energy joins the session, no negative time', async (t) => {
  const r = ready()
  r.wallet('u-1', 10_000)
  r.advance(500)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  const activatedAt = r.now
  r.meter.A1! += 100
  r.apply({
    type: 'reading',
    outlet: 'A1',
    reading: { ts: activatedAt - 200, currentA: 16, powerW: 3680, energyWh: r.meter.A1! / 1000, voltageV: 230 },
  })
  r.run(5, { A1: 16 })
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  const end = r.ended()[0]!
  t.equal(end.startedAt, new Date(activatedAt).toISOString())
  t.equal(end.energyWh, (100 + 5 * 1022) / 1000)
  t.equal(end.lines.length, 1, 'merged into one line')
  t.equal(end.lines[0]!.energyWh, end.energyWh)
  t.equal(end.lines[0]!.seconds, end.durationS)
})
