/**
 * The OCPP outbox across restarts, in this process (test/helpers/ocpp-rig.ts: the charge
 * point on a real journal and an injected clock, ocpp-rpc's strict central system):
 * - an answered StartTransaction keeps its connector with its transactionId, so a
 *   transaction whose session no state holds after a restart is closed on its own
 *   connector; an entry written before the connector was kept is closed on the outlet of
 *   its last reading, and the log says so;
 * - a transaction message the central system refuses is sent again after TransactionMessageRetryInterval
 *   times the attempt number, and after TransactionMessageAttempts it is held, not dropped: shown in the
 *   state, the queue going on with other sessions' messages, sent again after the next reconnect
 *   (a central system that answers InternalError to the first five StopTransactions still gets the stop).
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
  t.equal((await waitFor(() => closeLine(rig), 'the close logged')).connectorId, 2, 'closed on connector 2')
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
  const warn = await waitFor(
    () => rig.lines.find((l) => /older outbox names no connector; its last reading's outlet is taken/.test(l.msg)),
    'the warning',
  )
  t.ok(warn, 'the fallback is logged')
  t.equal(warn?.connectorId, 2)
  t.equal((await waitFor(() => closeLine(rig), 'the close logged')).connectorId, 2, "closed on the last reading's connector")
  await rig.close()
  checkStrict(t, csms)
})

t.test('a StopTransaction refused five times: back-off, held, shown, sent again after the reconnect', async (t) => {
  const csms = await startCsms(t, { refuse: (action, nth) => (action === 'StopTransaction' && nth <= 5 ? 'InternalError' : undefined) })
  const rig = await OcppRig.open(t, csms)
  await rig.online()
  t.same(await csms.call('ChangeConfiguration', { key: 'TransactionMessageRetryInterval', value: '1' }), { status: 'Accepted' })
  t.same(await csms.call('ChangeConfiguration', { key: 'TransactionMessageAttempts', value: '0' }), { status: 'Rejected' }, 'at least one attempt')
  t.same(await csms.call('ChangeConfiguration', { key: 'TransactionMessageAttempts', value: '3' }), { status: 'Accepted' })
  const get = (await csms.call('GetConfiguration', { key: ['TransactionMessageAttempts', 'TransactionMessageRetryInterval'] })) as {
    configurationKey: { key: string; value: string; readonly: boolean }[]
  }
  t.same(
    get.configurationKey.map((k) => [k.key, k.value, k.readonly]),
    [
      ['TransactionMessageAttempts', '3', false],
      ['TransactionMessageRetryInterval', '1', false],
    ],
  )

  const s1 = await rig.start('A1', 'drv-bill', 100)
  await csms.waitCall('StartTransaction', (c) => c.reply !== undefined && c.params.idTag === 'drv-bill')
  await rig.step('A1', 160)
  await rig.end('A1')
  await waitFor(() => rig.cp.state().held.length === 1, 'the stop held after three refusals', 20_000)
  const tries = csms.of('StopTransaction')
  t.equal(tries.length, 3, 'three attempts')
  const gap1 = tries[1]!.at - tries[0]!.at
  const gap2 = tries[2]!.at - tries[1]!.at
  t.ok(gap1 >= 950 && gap1 < 1900, `1 s after the first refusal (${gap1} ms)`)
  t.ok(gap2 >= 1950 && gap2 < 3500, `2 s after the second (${gap2} ms): the interval times the attempt number`)
  const held = rig.cp.state().held[0]!
  t.match(held, { action: 'StopTransaction', sessionId: s1, connectorId: 1, attempts: 3, messageId: tries[0]!.messageId }, 'shown with what it is')
  t.match(held.error, /InternalError/)
  t.equal(rig.cp.state().queued, 1, 'still queued')
  t.ok(
    await waitFor(() => rig.lines.find((l) => /held until the next reconnect/.test(l.msg) && l.level === 'error'), 'the log line'),
    'logged at error level',
  )

  // The queue goes on with other sessions' messages meanwhile.
  await rig.start('A2', 'drv-other', 10)
  const other = await csms.waitCall('StartTransaction', (c) => c.reply !== undefined && c.params.idTag === 'drv-other')
  t.equal(other.params.connectorId, 2, "another session's StartTransaction is not held up")
  await new Promise((r) => setTimeout(r, 1500))
  t.equal(csms.of('StopTransaction').length, 3, 'the held stop waits for the reconnect')

  await csms.down()
  await csms.up()
  const stop = await csms.waitCall('StopTransaction', (c) => c.reply !== undefined, 'the stop accepted after the reconnect', 30_000)
  t.equal(csms.of('StopTransaction').length, 6, 'two more refusals, then the sixth attempt is answered')
  t.equal(new Set(csms.of('StopTransaction').map((c) => c.messageId)).size, 1, 'the same message id every time')
  t.equal(stop.params.meterStop, 160)
  await waitFor(() => rig.cp.state().held.length === 0 && rig.cp.state().queued === 0, 'nothing held or queued')
  await rig.close()
  checkStrict(t, csms)
})
