/**
 * OCPP meter values by the book, in this process on an injected clock (test/helpers/ocpp-rig.ts,
 * ocpp-rpc's strict central system, zero violations): the central system sets each key and the
 * charge point honours it.
 * - MeterValueSampleInterval: Sample.Periodic values of each transaction, every interval from its start;
 * - ClockAlignedDataInterval: Sample.Clock values of every connector, connector 0 included, on the clock;
 * - MeterValuesSampledData / MeterValuesAlignedData: the measurands asked for, in their order;
 * - StopTxnSampledData / StopTxnAlignedData: StopTransaction.transactionData between Transaction.Begin and
 *   Transaction.End, from the journaled readings;
 * - registers in whole Wh; impossible values Rejected and nothing changed.
 */
import t from 'tap'
import { startCsms } from './helpers/csms.js'
import { waitFor } from './helpers/e2e-kit.js'
import { OcppRig } from './helpers/ocpp-rig.js'

interface Sampled {
  value: string
  context: string
  measurand: string
  unit: string
}
interface MV {
  timestamp: string
  sampledValue: Sampled[]
}

t.test('two intervals, the measurands asked for, transactionData', async (t) => {
  const csms = await startCsms(t)
  const T0 = Date.parse('2026-06-10T12:07:10.500Z')
  const rig = await OcppRig.open(t, csms, { at: T0 })
  await rig.online()
  const change = async (key: string, value: string) => ((await csms.call('ChangeConfiguration', { key, value })) as { status: string }).status
  t.equal(await change('MeterValueSampleInterval', '60'), 'Accepted')
  t.equal(await change('ClockAlignedDataInterval', '900'), 'Accepted')
  t.equal(await change('MeterValuesSampledData', 'Energy.Active.Import.Register,Power.Active.Import'), 'Accepted')
  t.equal(await change('MeterValuesAlignedData', 'Energy.Active.Import.Register'), 'Accepted')
  t.equal(await change('StopTxnSampledData', 'Energy.Active.Import.Register'), 'Accepted')
  t.equal(await change('StopTxnAlignedData', 'Current.Import'), 'Accepted')
  // Impossible content: Rejected, nothing changed.
  t.equal(await change('MeterValuesSampledData', 'Energy.Reactive.Import.Register'), 'Rejected', 'a measurand it cannot give')
  t.equal(await change('MeterValuesSampledData', 'Voltage,Voltage'), 'Rejected', 'a measurand twice')
  t.equal(await change('ClockAlignedDataInterval', '-900'), 'Rejected', 'a negative interval')
  t.equal(await change('MeterValueSampleInterval', '1.5'), 'Rejected', 'not a whole number')
  t.equal(await change('MeterValueSampleInterval', '86401'), 'Rejected', 'more than a day')
  t.equal(await change('NumberOfConnectors', '3'), 'Rejected', 'read-only')
  const keys = [
    'MeterValueSampleInterval',
    'ClockAlignedDataInterval',
    'MeterValuesSampledData',
    'MeterValuesAlignedData',
    'StopTxnSampledData',
    'StopTxnAlignedData',
  ]
  const got = (await csms.call('GetConfiguration', { key: keys })) as { configurationKey: { key: string; value: string; readonly: boolean }[] }
  t.same(
    Object.fromEntries(got.configurationKey.map((k) => [k.key, [k.value, k.readonly]])),
    {
      MeterValueSampleInterval: ['60', false],
      ClockAlignedDataInterval: ['900', false],
      MeterValuesSampledData: ['Energy.Active.Import.Register,Power.Active.Import', false],
      MeterValuesAlignedData: ['Energy.Active.Import.Register', false],
      StopTxnSampledData: ['Energy.Active.Import.Register', false],
      StopTxnAlignedData: ['Current.Import', false],
    },
    'each key reads back as set, the two intervals apart',
  )

  // A1 charges from 12:07:10.5 to 12:16:10.5; A2 has a reading and no session.
  rig.reading('A2', 5000.4, { currentA: 0, powerW: 0 })
  await rig.start('A1', 'drv-mv', 1000.2)
  const start = await csms.waitCall('StartTransaction', (c) => c.reply !== undefined)
  const txId = start.reply!.transactionId as number
  let wh = 1000.2
  for (let i = 0; i < 54; i++) {
    wh += 1.234
    rig.now += 10_000
    await rig.step('A1', wh, { currentA: 16 + (i % 3) / 10 })
    rig.cp.tick()
    await rig.cp.idle()
  }
  await rig.end('A1')
  const stop = await csms.waitCall('StopTransaction', (c) => c.reply !== undefined)
  await rig.cp.idle()

  const mvs = csms.of('MeterValues')
  const periodic = mvs.filter((c) => (c.params.meterValue as MV[])[0]!.sampledValue[0]!.context === 'Sample.Periodic')
  t.same(
    periodic.map((c) => (c.params.meterValue as MV[])[0]!.timestamp),
    [1, 2, 3, 4, 5, 6, 7, 8, 9].map((k) => new Date(T0 + k * 60_000).toISOString()),
    'Sample.Periodic every 60 s from the start of the transaction',
  )
  t.ok(
    periodic.every((c) => c.params.transactionId === txId && c.params.connectorId === 1),
    'each with its transaction and connector',
  )
  const first = (periodic[0]!.params.meterValue as MV[])[0]!.sampledValue
  t.same(
    first.map((v) => [v.measurand, v.unit]),
    [
      ['Energy.Active.Import.Register', 'Wh'],
      ['Power.Active.Import', 'W'],
    ],
    'the sampled measurands asked for, in their order',
  )
  t.equal(first[0]!.value, String(Math.round(1000.2 + 6 * 1.234)), 'the register at that instant, in whole Wh')
  const clock = mvs.filter((c) => (c.params.meterValue as MV[])[0]!.sampledValue[0]!.context === 'Sample.Clock')
  t.same(
    clock.map((c) => [c.params.connectorId, c.params.transactionId ?? null, (c.params.meterValue as MV[])[0]!.timestamp]).sort(),
    [
      [0, null, '2026-06-10T12:15:00.000Z'],
      [1, txId, '2026-06-10T12:15:00.000Z'],
      [2, null, '2026-06-10T12:15:00.000Z'],
    ],
    'Sample.Clock at 12:15:00 for every connector, 0 included; only the transaction carries its id',
  )
  const valuesOf = (connectorId: number) => (clock.find((c) => c.params.connectorId === connectorId)!.params.meterValue as MV[])[0]!.sampledValue
  // Live values are the reading in hand when the instant is noticed: here the clock moves in 10 s steps and
  // 12:15:00 is noticed at 12:15:00.5, with that step's reading (the daemon looks every 250 ms).
  const a1AtClock = 1000.2 + 47 * 1.234
  t.same(
    valuesOf(1).map((v) => [v.measurand, v.value]),
    [['Energy.Active.Import.Register', String(Math.round(a1AtClock))]],
    'the aligned measurands asked for',
  )
  t.equal(valuesOf(2)[0]!.value, '5000', 'a connector without a transaction has its register')
  t.ok(Number.isInteger(Number(valuesOf(0)[0]!.value)), 'connector 0 in whole Wh')
  t.equal(valuesOf(0)[0]!.value, String(Math.round(5000.4 + a1AtClock)), 'connector 0: the outlets added up')
  for (const c of mvs)
    for (const v of (c.params.meterValue as MV[])[0]!.sampledValue)
      if (v.measurand.startsWith('Energy')) t.ok(/^\d+$/.test(v.value), `register ${v.value} is whole Wh`)

  const data = stop.params.transactionData as MV[]
  t.same(data[0], {
    timestamp: new Date(T0).toISOString(),
    sampledValue: [{ value: '1000', context: 'Transaction.Begin', measurand: 'Energy.Active.Import.Register', unit: 'Wh' }],
  })
  t.same(data.at(-1), {
    timestamp: new Date(T0 + 540_000).toISOString(),
    sampledValue: [{ value: String(Math.round(wh)), context: 'Transaction.End', measurand: 'Energy.Active.Import.Register', unit: 'Wh' }],
  })
  const middle = data.slice(1, -1)
  t.same(
    middle.map((m) => [m.timestamp, m.sampledValue.map((v) => `${v.context}:${v.measurand}`).join()]),
    [
      ...[1, 2, 3, 4, 5, 6, 7].map((k) => [new Date(T0 + k * 60_000).toISOString(), 'Sample.Periodic:Energy.Active.Import.Register']),
      ['2026-06-10T12:15:00.000Z', 'Sample.Clock:Current.Import'],
      [new Date(T0 + 8 * 60_000).toISOString(), 'Sample.Periodic:Energy.Active.Import.Register'],
    ],
    'StopTxnSampledData every interval from the start and StopTxnAlignedData on the clock, in time order, between Begin and End',
  )
  t.equal(middle[0]!.sampledValue[0]!.value, String(Math.round(1000.2 + 6 * 1.234)), 'from the journaled reading at that instant')
  // transactionData is built from the journal at the end: the last reading at or before 12:15:00 (12:14:50.5, step 45).
  t.equal(middle[7]!.sampledValue[0]!.value, (16 + (45 % 3) / 10).toFixed(3), 'the current of the journaled reading before 12:15:00')
  await waitFor(() => rig.cp.state().queued === 0, 'the queue drained')
  await rig.close()
  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
  t.equal(csms.badMessages.length, 0, 'no bad message')
})

t.test('an interval of 0 and an empty list send nothing; a new interval starts on the clock', async (t) => {
  const csms = await startCsms(t)
  const T0 = Date.parse('2026-06-10T12:00:05.000Z')
  const rig = await OcppRig.open(t, csms, { at: T0, ocpp: { meterValueSampleS: 10, clockAlignedDataS: 30 } })
  await rig.online()
  t.equal(((await csms.call('ChangeConfiguration', { key: 'MeterValuesSampledData', value: '' })) as { status: string }).status, 'Accepted')
  await rig.start('A1', 'drv-quiet', 10)
  await csms.waitCall('StartTransaction', (c) => c.reply !== undefined)
  for (let i = 0; i < 6; i++) await rig.advance(10_000)
  t.equal(
    csms.of('MeterValues').filter((c) => (c.params.meterValue as MV[])[0]!.sampledValue[0]!.context === 'Sample.Periodic').length,
    0,
    'no sampled measurand: no Sample.Periodic',
  )
  const clock = () => csms.of('MeterValues').filter((c) => (c.params.meterValue as MV[])[0]!.sampledValue[0]!.context === 'Sample.Clock')
  await waitFor(() => clock().length >= 4, 'aligned values at :30 and :60 for connectors 0, 1 (A2 has no reading)')
  t.same(
    [...new Set(clock().map((c) => (c.params.meterValue as MV[])[0]!.timestamp))],
    ['2026-06-10T12:00:30.000Z', '2026-06-10T12:01:00.000Z'],
    'on the clock, from the config file (clockAlignedDataS)',
  )
  t.equal(((await csms.call('ChangeConfiguration', { key: 'ClockAlignedDataInterval', value: '0' })) as { status: string }).status, 'Accepted')
  const n = csms.of('MeterValues').length
  for (let i = 0; i < 6; i++) await rig.advance(10_000)
  await new Promise((r) => setTimeout(r, 300))
  t.equal(csms.of('MeterValues').length, n, 'interval 0: no more aligned values')
  await rig.close()
  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
  t.equal(csms.badMessages.length, 0, 'no bad message')
})
