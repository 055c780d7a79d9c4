/**
 * The OCPP outbox across restarts, in this process (test/helpers/ocpp-rig.ts: the charge
 * point on a real journal and an injected clock, ocpp-rpc's strict central system):
 * - an answered StartTransaction keeps its connector with its transactionId, so a
 *   transaction whose session no state holds after a restart is closed on its own
 *   connector; an entry written before the connector was kept is closed on the outlet of
 *   its last reading, and the log says so.
 */
import t, { type Test } from 'tap'
import { type Csms, startCsms } from './helpers/csms.js'
import { waitFor } from './helpers/e2e-kit.js'
import { OcppRig } from './helpers/ocpp-rig.js'

function checkStrict(t: Test, csms: Csms): void {
  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
  t.equal(csms.badMessages.length, 0, 'no bad message')
}

const closeLine = (rig: OcppRig) => rig.lines.find((l) => /closed PowerLoss at its last known meter value/.test(l.msg))

t.test('an orphaned transaction is closed on its own connector after a restart', async (t) => {
  const csms = await startCsms(t)
  let rig = await OcppRig.open(t, csms)
  await rig.online()
  const sessionId = await rig.start('A2', 'drv-2', 1000)
  const start = await csms.waitCall('StartTransaction', (c) => c.reply !== undefined)
  t.equal(start.params.connectorId, 2)
  await waitFor(async () => (await rig.journal.asideRead('ocpp', 't!')).length === 1, 'the answer on disk')
  const [[, entry]] = (await rig.journal.asideRead('ocpp', 't!')) as [[string, string]]
  t.same(JSON.parse(entry), { sessionId, transactionId: start.reply!.transactionId, connectorId: 2, meterStart: 1000 }, 'the connector is kept')
  await rig.step('A2', 1003.4)
  const dir = rig.dir
  await rig.close()

  // The restart: no outlet holds the session any more (a salvage lost it); the outbox still has it.
  rig = await OcppRig.open(t, csms, { dir })
  const stop = await csms.waitCall('StopTransaction', (c) => c.params.transactionId === start.reply!.transactionId)
  t.equal(stop.params.reason, 'PowerLoss')
  t.equal(stop.params.meterStop, 1003, 'at the last journaled reading')
  t.equal(closeLine(rig)?.connectorId, 2, 'closed on connector 2')
  t.notOk(
    rig.lines.some((l) => /older outbox/.test(l.msg)),
    'no fallback needed',
  )
  await rig.close()
  checkStrict(t, csms)
})

t.test('an entry from before the connector was kept: the outlet of its last reading, logged', async (t) => {
  const csms = await startCsms(t)
  let rig = await OcppRig.open(t, csms)
  await rig.online()
  const sessionId = await rig.start('A2', 'drv-old', 500)
  const start = await csms.waitCall('StartTransaction', (c) => c.reply !== undefined)
  await waitFor(async () => (await rig.journal.asideRead('ocpp', 't!')).length === 1, 'the answer on disk')
  await rig.step('A2', 507.6)
  // Rewritten as an outbox before the connector was kept wrote it.
  const [[key]] = (await rig.journal.asideRead('ocpp', 't!')) as [[string, string]]
  await rig.journal.asideWrite('ocpp', [{ key, value: JSON.stringify({ sessionId, transactionId: start.reply!.transactionId, meterStart: 500 }) }])
  const dir = rig.dir
  await rig.close()

  rig = await OcppRig.open(t, csms, { dir })
  const stop = await csms.waitCall('StopTransaction', (c) => c.params.transactionId === start.reply!.transactionId)
  t.equal(stop.params.meterStop, 508)
  const warn = rig.lines.find((l) => /older outbox names no connector; its last reading's outlet is taken/.test(l.msg))
  t.ok(warn, 'the fallback is logged')
  t.equal(warn?.connectorId, 2)
  t.equal(closeLine(rig)?.connectorId, 2, "closed on the last reading's connector")
  await rig.close()
  checkStrict(t, csms)
})
