/**
 * OCPP and shared circuits together: two 16 A cars on a 20 A circuit, both started
 * by the central system. The second session opens `queued`, which the central system
 * sees as `SuspendedEVSE` (the charge point, not the car, holds it) inside a started
 * transaction; when the first car leaves, its share goes to the second at once and
 * the connector reports `Charging`. The waiting time is not billed per hour
 * (`pausedS`), and the transaction's meterStop − meterStart is still the session's energy.
 * Against ocpp-rpc's strict central system and the pymodbus site peer.
 */
import t from 'tap'
import { bayOfTwo, journalRecords, statusesOf } from './helpers/csms.js'
import { startDaemon, waitFor } from './helpers/e2e-kit.js'

t.test('a queued session is SuspendedEVSE inside its transaction, and Charging when its turn comes', async (t) => {
  const { peer, csms, file } = await bayOfTwo(t, { maxA: 20, slotS: 3600 })
  const daemon = startDaemon(t, file)

  await csms.waitCall('BootNotification')
  t.same(await csms.call('RemoteStartTransaction', { connectorId: 1, idTag: 'driver-1' }), { status: 'Accepted' })
  await waitFor(() => statusesOf(csms, 1).includes('Charging'), 'connector 1 Charging')
  t.same(await csms.call('RemoteStartTransaction', { connectorId: 2, idTag: 'driver-2' }), { status: 'Accepted' })

  const start2 = await csms.waitCall('StartTransaction', (c) => c.params.connectorId === 2)
  t.equal(start2.params.idTag, 'driver-2', 'the queued session is a started transaction')
  await waitFor(() => statusesOf(csms, 2).includes('SuspendedEVSE'), 'connector 2 SuspendedEVSE')
  t.notOk(statusesOf(csms, 2).includes('Charging'), 'connector 2 never Charging while the circuit is full')
  t.notOk((await peer.outlet(2)).coil, 'its relay is open')

  // Two seconds of waiting, so the pause is worth measuring.
  await new Promise((r) => setTimeout(r, 2000))
  t.notOk((await peer.outlet(2)).coil, 'still open two seconds later')
  const e2 = (await peer.outlet(2)).energyWh
  await peer.unplug(1)
  await csms.waitCall('StopTransaction', (c) => c.params.reason === 'EVDisconnected', 'the first StopTransaction')
  await waitFor(() => statusesOf(csms, 2).includes('Charging'), 'connector 2 Charging once the first car left', 20_000)
  const suspended = statusesOf(csms, 2).indexOf('SuspendedEVSE')
  t.ok(statusesOf(csms, 2).lastIndexOf('Charging') > suspended, 'SuspendedEVSE, then Charging')
  await waitFor(async () => (await peer.outlet(2)).energyWh > e2 + 2, 'the second car draws')
  await peer.unplug(2)

  const tx2 = start2.reply?.transactionId
  t.type(tx2, 'number', 'the central system gave the queued session its transactionId')
  const stopOf2 = await csms.waitCall('StopTransaction', (c) => c.params.transactionId === tx2, 'the second StopTransaction', 30_000)
  t.equal(stopOf2.params.reason, 'EVDisconnected', `stop reason ${String(stopOf2.params.reason)}`)
  await daemon.stop()
  const ended = await waitFor(() => {
    const e = journalRecords(file).find((r) => r.type === 'session.ended' && r.outlet === 'E2')
    return e?.type === 'session.ended' ? e : undefined
  }, 'the second session ended in the journal')
  t.equal(ended.reason, 'unplugged', `the journal says ${ended.reason}`)
  t.ok(ended.pausedS >= 2, `the wait is pausedS (${ended.pausedS} s), not billed per hour`)
  t.equal(
    (stopOf2.params.meterStop as number) - (start2.params.meterStart as number),
    Math.round(ended.meterEndWh) - Math.round(ended.meterStartWh),
    'meterStop − meterStart is the queued session’s energy',
  )
  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
})
