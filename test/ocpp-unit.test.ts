/**
 * OCPP without a network: the config section and connector checks, the engine's
 * rule for users without a local wallet when a central system authorizes, the
 * status and stop-reason tables and the messages built from records, and the
 * CALLERROR codes of refused calls.
 */
import t from 'tap'
import { validateConfig } from '../daemon/config.js'
import { checkCall } from '../daemon/ocpp/calls.js'
import { CallError } from '../daemon/ocpp/rpc.js'
import { MEASURANDS } from '../daemon/ocpp/settings.js'
import { CONNECTOR_STATUS, STOP_REASON, meterSample, startPayload, stopPayload, type Ended, type Started } from '../daemon/ocpp/tables.js'
import { Rig, siteConfig, WED_NOON } from './engine-fixtures.js'

const withOcpp = (ocpp: Record<string, unknown>, outlets?: unknown[]): unknown => {
  const base = JSON.parse(JSON.stringify(siteConfig())) as Record<string, unknown>
  return { ...base, ...(outlets ? { outlets } : {}), ocpp }
}

t.test('config: the ocpp section and connector ids', async (t) => {
  const ok = validateConfig(withOcpp({ url: 'wss://csms.example.net/ocpp', identity: 'lot-7', password: 'pw' }))
  t.ok(ok.ok, ok.ok ? 'valid' : JSON.stringify(ok.problems))
  if (ok.ok) t.same({ h: ok.config.ocpp!.heartbeatS, m: ok.config.ocpp!.meterValueSampleS }, { h: 300, m: 60 }, 'defaults from the schema')
  const problems = (cfg: unknown): string[] => {
    const r = validateConfig(cfg)
    return r.ok ? [] : r.problems.map((p) => `${p.pointer}: ${p.message}`)
  }
  t.match(problems(withOcpp({ url: 'http://csms/ocpp', identity: 'x' })), [/^\/ocpp\/url: /], 'not ws:// or wss://')
  t.match(problems(withOcpp({ url: 'ws://csms/ocpp/', identity: 'x' })), [/^\/ocpp\/url: /], 'a trailing slash')
  t.match(problems(withOcpp({ url: 'ws://csms/ocpp' })), [/^\/ocpp\/identity: is required/], 'no identity')
  t.match(problems(withOcpp({ url: 'ws://csms/ocpp', identity: 'a/b' })), [/^\/ocpp\/identity: /], 'an identity that is not one path segment')
  const outlets = [
    { id: 'A1', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'standard' },
    { id: 'A2', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 2 }, plan: 'standard', connectorId: 1 },
  ]
  t.same(
    problems(withOcpp({ url: 'ws://csms/ocpp', identity: 'x' }, outlets)),
    ["/outlets/1/connectorId: connectorId 1 is already outlet A1's (each outlet needs its own connector; set outlets[].connectorId)"],
    'two outlets on one connector, named where the clash is',
  )
  const swapped = [
    { ...outlets[0], connectorId: 2 },
    { ...outlets[1], connectorId: 1 },
  ]
  t.same(problems(withOcpp({ url: 'ws://csms/ocpp', identity: 'x' }, swapped)), [], 'explicit ids in any order')
})

t.test('engine: a central system authorizes users without a local wallet; a wallet still caps', async (t) => {
  const r = validateConfig(withOcpp({ url: 'ws://csms/ocpp', identity: 'x' }))
  if (!r.ok) throw new Error(JSON.stringify(r.problems))
  const rig = new Rig(r.config, WED_NOON)
  rig.boot()
  rig.run(1, {})
  rig.cmd({ action: 'start', outlet: 'A1', userId: 'no-wallet' })
  t.ok(rig.result().ok, 'no unknown-user with a central system')
  rig.run(3600, { A1: 16 })
  t.equal(rig.stateOf('A1'), 'charging', 'an hour later still charging: no local cap')
  rig.wallet('empty', 0)
  rig.cmd({ action: 'start', outlet: 'A2', userId: 'empty' })
  t.same({ ok: rig.result().ok, code: rig.result().code }, { ok: false, code: 'no-balance' }, 'a user with an empty wallet is still refused')
  const plain = new Rig(siteConfig(), WED_NOON)
  plain.boot()
  plain.run(1, {})
  plain.cmd({ action: 'start', outlet: 'A1', userId: 'no-wallet' })
  t.equal(plain.result().code, 'unknown-user', 'without ocpp: unknown-user as before')
})

t.test('tables: statuses, stop reasons, messages from records', async (t) => {
  const facts = { currentA: 16, minChargeA: 0.5, meterFault: null, relayFault: null }
  t.same(Object.fromEntries(Object.entries(CONNECTOR_STATUS).map(([s, f]) => [s, f(facts).status])), {
    off: 'Available',
    armed: 'Available',
    pending: 'Preparing',
    charging: 'Charging',
    queued: 'SuspendedEVSE',
    unavailable: 'Unavailable',
    fault: 'Faulted',
  })
  t.equal(CONNECTOR_STATUS.charging({ ...facts, currentA: 0.1 }).status, 'SuspendedEV', 'plugged in, not drawing')
  t.same(CONNECTOR_STATUS.fault({ ...facts, meterFault: 'MODBUS_TIMEOUT: no answer' }), {
    status: 'Faulted',
    errorCode: 'PowerMeterFailure',
    info: 'MODBUS_TIMEOUT: no answer',
  })
  t.equal(CONNECTOR_STATUS.fault({ ...facts, relayFault: 'x'.repeat(80) }).info!.length, 50, 'info within OCPP 1.6 limits')
  t.same(
    [STOP_REASON.unplugged, STOP_REASON['power-loss'], STOP_REASON.reboot, STOP_REASON['wallet-depleted'], STOP_REASON['user-stopped']],
    ['EVDisconnected', 'PowerLoss', 'Reboot', 'DeAuthorized', 'Local'],
  )
  const started = {
    type: 'session.started',
    ts: '2026-06-10T19:00:00.000Z',
    sessionId: 's1',
    outlet: 'A1',
    userId: 'a-very-long-user-id-of-30-chars',
    planId: 'p',
    trigger: 'activation',
    meterWh: 1234.5678,
  } as unknown as Started
  t.same(startPayload(started, 3), { connectorId: 3, idTag: 'a-very-long-user-id-', meterStart: 1235, timestamp: '2026-06-10T19:00:00.000Z' })
  const ended = {
    type: 'session.ended',
    userId: 'u',
    startedAt: '2026-06-10T19:00:00.000Z',
    meterStartWh: 1234,
    meterEndWh: 2000.4,
    endedAt: '2026-06-10T20:00:00.000Z',
    lines: [
      { from: 'a', to: '2026-06-10T19:30:00.000Z', energyWh: 300.1, seconds: 1, perKwh: 1, perHour: null, amountMicros: 1 },
      { from: 'b', to: '2026-06-10T20:00:00.000Z', energyWh: 465.8, seconds: 1, perKwh: 1, perHour: null, amountMicros: 1 },
    ],
  } as unknown as Ended
  const stop = stopPayload(ended, 'EVDisconnected') as {
    meterStop: number
    transactionData: { sampledValue: { measurand: string; value: string; context: string }[] }[]
  }
  t.equal(stop.meterStop, 2000)
  t.same(
    stop.transactionData.map((m) => [m.sampledValue[0]!.measurand, m.sampledValue[0]!.context, m.sampledValue[0]!.value]),
    [
      ['Energy.Active.Import.Register', 'Transaction.Begin', '1234'],
      ['Energy.Active.Import.Interval', 'Other', '300'],
      ['Energy.Active.Import.Interval', 'Other', '466'],
      ['Energy.Active.Import.Register', 'Transaction.End', '2000'],
    ],
    'Begin, the billing lines in whole Wh rounded on the running sum (they add up to meterStop - meterStart), End',
  )
  const mv = meterSample(
    2,
    '2026-06-10T19:01:00.000Z',
    { currentA: 15.9876, powerW: 3600.04, energyWh: 1300.5004, voltageV: 229.96 },
    MEASURANDS,
    'Sample.Periodic',
  ) as {
    meterValue: { sampledValue: { value: string; context: string }[] }[]
  }
  t.same(
    mv.meterValue[0]!.sampledValue.map((v) => v.value),
    ['1301', '3600.0', '15.988', '230.0'],
    'the register in whole Wh',
  )
  t.same(
    (
      meterSample(2, 'x', { currentA: 1, powerW: 1, energyWh: 1, voltageV: 1 }, ['Voltage', 'Power.Active.Import'], 'Sample.Clock') as typeof mv
    ).meterValue[0]!.sampledValue.map((v) => [v.value, v.context]),
    [
      ['1.0', 'Sample.Clock'],
      ['1.0', 'Sample.Clock'],
    ],
    'the measurands asked for, in their order, with the context given',
  )
})

t.test('calls: CALLERROR codes, nothing else accepted', async (t) => {
  const code = (action: string, payload: unknown): string => {
    try {
      checkCall(action, payload)
      return 'ok'
    } catch (err) {
      return err instanceof CallError ? err.code : `threw ${String(err)}`
    }
  }
  t.equal(code('RemoteStartTransaction', { idTag: 'a' }), 'ok')
  t.equal(code('RemoteStartTransaction', {}), 'FormationViolation', 'a required field missing')
  t.equal(code('RemoteStartTransaction', []), 'FormationViolation', 'not an object')
  t.equal(code('RemoteStartTransaction', { idTag: 7 }), 'TypeConstraintViolation')
  t.equal(code('RemoteStartTransaction', { idTag: 'x'.repeat(21) }), 'PropertyConstraintViolation', 'too long')
  t.equal(code('Reset', { type: 'Warm' }), 'PropertyConstraintViolation', 'not in the enum')
  t.equal(code('Reset', { type: 'Soft', extra: true }), 'PropertyConstraintViolation', 'an unknown field')
  t.equal(
    code('RemoteStartTransaction', {
      idTag: 'a',
      chargingProfile: {
        chargingProfileId: 1,
        stackLevel: 0,
        chargingProfilePurpose: 'TxProfile',
        chargingProfileKind: 'Absolute',
        validFrom: 'yesterday',
        chargingSchedule: { chargingRateUnit: 'A', chargingSchedulePeriod: [{ startPeriod: 0, limit: 16 }] },
      },
    }),
    'PropertyConstraintViolation',
    'a date-time that is not one',
  )
  t.equal(code('ReserveNow', {}), 'NotSupported')
  t.equal(code('Teleport', {}), 'NotImplemented')
  try {
    checkCall('RemoteStartTransaction', { connectorId: 1 })
  } catch (err) {
    t.match((err as Error).message, /RemoteStartTransaction: \/idTag: /, 'the description names the field')
  }
})
