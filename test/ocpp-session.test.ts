import { mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { type Csms, type CsmsCall, journalRecords, ocppSection, startCsms, statusesOf } from './helpers/csms.js'
import {
  isEnded,
  startCloud,
  startDaemon,
  startPeer,
  startSession,
  tempDir,
  waitFor,
  writeSiteConfig,
  type Ended,
  type Started,
} from './helpers/e2e-kit.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { makePki } from './helpers/pki.js'

t.test('remote start at boot, meter values, unplug; auto-start with Authorize; a refused idTag', async (t) => {
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 3 })
  let remote: Promise<Record<string, unknown>> | undefined
  const csms: Csms = await startCsms(t, {
    password: 'sesame-1',
    invalidTags: ['mallory'],
    // The moment the charge point is online, the central system starts a session on it.
    onAccepted: () => {
      remote ??= csms.call('RemoteStartTransaction', { connectorId: 1, idTag: 'driver-7' })
    },
  })
  await peer.plug(1, 16)
  const e0 = (await peer.outlet(1)).energyWh
  const config = writeSiteConfig({
    dir,
    port: peer.port,
    outlets: 3,
    outlet: { 2: { autoStart: { userId: 'resident' } }, 3: { autoStart: { userId: 'mallory' } } },
    extra: { ocpp: ocppSection(csms, { password: 'sesame-1', meterValueSampleS: 1 }), logging: { level: 'info' } },
  })
  const daemon = startDaemon(t, config)

  await t.test('boot, statuses, and the start sent at once', async (t) => {
    const boot = await csms.waitCall('BootNotification')
    t.equal(boot.identity, 'outpost-e2e', 'the identity is the last path segment')
    t.equal(boot.params.chargePointVendor, 'Outpost')
    await waitFor(() => remote, 'the remote start was sent')
    const answer = await remote!
    t.same(answer, { status: 'Accepted' }, 'a RemoteStartTransaction sent the moment the boot was accepted is accepted')
    const start = await csms.waitCall('StartTransaction', (c) => c.params.connectorId === 1)
    t.equal(start.params.idTag, 'driver-7')
    t.ok((start.params.meterStart as number) >= Math.floor(e0) - 1, 'meterStart is the register before the relay closed')
    t.equal(csms.of('Authorize').filter((c) => c.params.idTag === 'driver-7').length, 0, 'no Authorize for a remote start')
    for (const c of [0, 1, 2, 3]) t.ok(statusesOf(csms, c).length > 0, `a StatusNotification for connector ${c} after boot`)
    const first = csms.calls.findIndex((c) => c.action === 'StatusNotification')
    const boots = csms.calls.findIndex((c) => c.action === 'BootNotification')
    t.ok(first > boots, 'no StatusNotification before the boot was accepted')
    await waitFor(() => statusesOf(csms, 1).includes('Charging'), 'connector 1 Charging')
  })

  await t.test('meter values while charging, then an unplug', async (t) => {
    const tx = await csms.waitCall('StartTransaction', (c) => c.params.connectorId === 1)
    await waitFor(() => csms.of('MeterValues').filter((c) => c.params.connectorId === 1).length >= 2, 'two MeterValues of connector 1')
    const mv = csms.of('MeterValues').find((c) => c.params.connectorId === 1)!
    const values = (mv.params.meterValue as { timestamp: string; sampledValue: { measurand: string; unit: string; value: string }[] }[])[0]!
    t.same(values.sampledValue.map((v) => v.measurand).sort(), ['Current.Import', 'Energy.Active.Import.Register', 'Power.Active.Import', 'Voltage'])
    t.equal(
      (Date.parse(values.timestamp) - Date.parse(tx.params.timestamp as string)) % 1000,
      0,
      'sampled every second from the start of the transaction',
    )
    t.equal((values.sampledValue[0] as unknown as { context: string }).context, 'Sample.Periodic')
    // The first sample may come before the current rose (the relay had just closed); a later one shows the car drawing.
    await waitFor(
      () =>
        csms
          .of('MeterValues')
          .filter((c) => c.params.connectorId === 1)
          .some((c) =>
            (c.params.meterValue as (typeof values)[]).some((m) => Number(m.sampledValue.find((v) => v.measurand === 'Current.Import')!.value) > 10),
          ),
      'a sample with the current of a 16 A car',
    )
    t.pass('a sample shows the 16 A car drawing')
    const txId = await waitFor(() => transactionIdOf(csms, tx), 'the transaction id')
    t.ok(mv.params.transactionId === txId, 'MeterValues carry the transaction id')

    await waitFor(async () => (await peer.outlet(1)).energyWh > e0 + 3, 'a few Wh charged')
    await peer.unplug(1)
    const stop = await csms.waitCall('StopTransaction', (c) => c.params.transactionId === txId)
    t.equal(stop.params.reason, 'EVDisconnected')
    await waitFor(() => statusesOf(csms, 1).at(-1) === 'Available', 'connector 1 Available again')
    const after = statusesOf(csms, 1)
    t.ok(after.indexOf('Finishing') > after.indexOf('Charging'), 'Finishing between Charging and Available')
    t.ok(stop.params.transactionData, 'transactionData carries the billing lines')
    t.context.stop = stop
    t.context.start = tx
  })

  await t.test('auto-start at the gateway: Authorize, then StartTransaction; a refused idTag ends DeAuthorized', async (t) => {
    await peer.plug(2, 10)
    const auth = await csms.waitCall('Authorize', (c) => c.params.idTag === 'resident')
    const start = await csms.waitCall('StartTransaction', (c) => c.params.connectorId === 2)
    t.ok(csms.calls.indexOf(auth) < csms.calls.indexOf(start), 'Authorize before StartTransaction')
    await peer.plug(3, 10)
    await csms.waitCall('Authorize', (c) => c.params.idTag === 'mallory')
    const start3 = await csms.waitCall('StartTransaction', (c) => c.params.connectorId === 3)
    const tx3 = await waitFor(() => transactionIdOf(csms, start3), 'transaction 3')
    const stop3 = await csms.waitCall('StopTransaction', (c) => c.params.transactionId === tx3)
    t.equal(stop3.params.reason, 'DeAuthorized', 'the refused idTag ends its session DeAuthorized')
    await waitFor(async () => !(await peer.outlet(3)).coil, 'coil 3 open after the refusal')
    await peer.unplug(2)
    const tx2 = await waitFor(() => transactionIdOf(csms, start), 'transaction 2')
    await csms.waitCall('StopTransaction', (c) => c.params.transactionId === tx2)
  })

  await t.test('the journal bills what the central system was told', async (t) => {
    t.equal((await daemon.stop('SIGTERM')).code, 0)
    const records = journalRecords(config)
    const started = records.find((r): r is Started => r.type === 'session.started' && r.outlet === 'E1')!
    const ended = records.find((r): r is Ended => r.type === 'session.ended' && r.sessionId === started.sessionId)!
    t.equal(ended.reason, 'unplugged')
    t.equal(started.userId, 'driver-7', 'the idTag is the userId')
    t.ok(ended.total > 0, 'priced locally although driver-7 has no local wallet (the central system bills)')
    const start = csms.of('StartTransaction').find((c) => c.params.connectorId === 1)!
    const stop = csms.of('StopTransaction').find((c) => c.params.transactionId === transactionIdOf(csms, start))!
    t.equal(start.params.meterStart, Math.round(started.meterWh))
    t.equal(stop.params.meterStop, Math.round(ended.meterEndWh))
    const delta = (stop.params.meterStop as number) - (start.params.meterStart as number)
    t.ok(Math.abs(delta - ended.energyWh) < 1, `meterStop − meterStart (${delta}) is the session's energy (${ended.energyWh} Wh) to the Wh`)
    const lines = (stop.params.transactionData as { sampledValue: { measurand: string; value: string }[] }[]).filter(
      (m) => m.sampledValue[0]!.measurand === 'Energy.Active.Import.Interval',
    )
    t.equal(lines.length, ended.lines.length, 'one interval value per billing line')
    t.equal(
      lines.reduce((a, m) => a + Number(m.sampledValue[0]!.value), 0),
      delta,
      'the lines, in whole Wh, add up to meterStop − meterStart',
    )
    const data = stop.params.transactionData as { timestamp: string; sampledValue: { measurand: string; value: string; context: string }[] }[]
    t.same(
      [data[0]!.sampledValue[0]!.context, data[0]!.sampledValue[0]!.value, data[0]!.timestamp],
      ['Transaction.Begin', String(start.params.meterStart), start.params.timestamp],
      'transactionData begins with the register at the start',
    )
    t.same(
      [data.at(-1)!.sampledValue[0]!.context, data.at(-1)!.sampledValue[0]!.value],
      ['Transaction.End', String(stop.params.meterStop)],
      'and ends with the register at the end',
    )
  })

  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
  t.equal(csms.badMessages.length, 0, 'no bad message')
})

t.test('a wrong password is refused; the site charges on', async (t) => {
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 1 })
  const csms = await startCsms(t, { password: 'right' })
  const config = writeSiteConfig({
    dir,
    port: peer.port,
    outlets: 1,
    outlet: { 1: { autoStart: { userId: 'u1' } } },
    extra: { ocpp: ocppSection(csms, { password: 'wrong' }) },
  })
  const daemon = startDaemon(t, config)
  await daemon.waitLog((l) => l.msg === 'ocpp: the central system refused the connection' && l.status === 401, 'the 401 logged')
  await peer.plug(1, 10)
  await daemon.waitLog((l) => l.msg === 'session started', 'an auto-start session starts without the central system')
  t.equal(csms.calls.length, 0, 'nothing reached the central system')
  t.notOk(JSON.stringify(daemon.logs()).includes('wrong'), 'the password is never logged')
  t.equal((await daemon.stop('SIGTERM')).code, 0)
  t.equal(csms.violations.length, 0)
})

/** The transactionId the central system gave a StartTransaction. */
function transactionIdOf(_csms: Csms, start: CsmsCall): number | undefined {
  return start.reply?.transactionId as number | undefined
}

t.test('beside the MQTT uplink: a central system that is not there stops neither charging nor the uplink', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 1 })
  // Once back, it refuses the first three StopTransactions: the stop is held (shown), then sent after a reconnect.
  const csms = await startCsms(t, { refuse: (action, nth) => (action === 'StopTransaction' && nth <= 3 ? 'InternalError' : undefined) })
  await csms.down() // the port is known, nothing listens on it
  const config = writeSiteConfig({
    dir,
    port: peer.port,
    outlets: 1,
    brokerUrl: broker.url,
    extra: { ocpp: ocppSection(csms, { transactionMessageRetryIntervalS: 1 }), api: { listen: '127.0.0.1:0', token: 'ocpp-test-token' } },
  })
  const cloud = await startCloud(t, broker.url, dir)
  const daemon = startDaemon(t, config)
  const api = String((await daemon.waitLog((l) => l.msg === 'local API listening', 'the local API')).url).replace(/\/$/, '')
  const metrics = async (): Promise<Map<string, number>> => {
    const text = await (await fetch(`${api}/metrics`, { headers: { authorization: 'Bearer ocpp-test-token' } })).text()
    return new Map(
      text
        .split('\n')
        .filter((l) => l.startsWith('outpost_ocpp_'))
        .map((l) => [l.split(' ')[0]!, Number(l.split(' ')[1])]),
    )
  }
  // The cloud's user has a wallet: a local wallet still caps a session the central system also sees.
  const s = await startSession(t, peer, cloud, { outlet: 1, userId: 'walleted', wallet: 100_000, amps: 16, chargeWh: 2 })
  await peer.unplug(1)
  const ended = await cloud.waitRecord(isEnded(s.sessionId), 'the session reaches the cloud over MQTT')
  t.equal(ended.reason, 'unplugged')
  t.ok(ended.total > 0)
  t.equal(csms.calls.length, 0, 'the central system was away throughout')
  const away = await metrics()
  t.same([away.get('outpost_ocpp_enabled'), away.get('outpost_ocpp_online')], [1, 0], '/metrics: configured, not online')
  t.ok(away.get('outpost_ocpp_queued_messages')! >= 2, '/metrics: the Start and Stop wait in the journal')
  t.equal(((await (await fetch(`${api}/api/health`)).json()) as { ocpp: string }).ocpp, 'offline', '/api/health says so')
  await csms.up()
  const start = await csms.waitCall('StartTransaction', () => true, 'the queued start once the central system is back')
  t.equal(start.params.idTag, 'walleted')
  const stop = await csms.waitCall('StopTransaction', () => true, 'the queued stop')
  t.equal(stop.params.transactionId, start.reply!.transactionId)
  t.equal(stop.params.meterStop, Math.round(ended.meterEndWh))
  t.equal(csms.of('Authorize').length, 0, 'no Authorize for a session that had already ended when it could be sent')
  await waitFor(async () => (await metrics()).get('outpost_ocpp_held_messages') === 1, '/metrics: the stop refused three times is held')
  const status = (await (await fetch(`${api}/api/status`, { headers: { authorization: 'Bearer ocpp-test-token' } })).json()) as {
    ocpp: { held: { action: string; attempts: number }[]; queued: number; configuration: { key: string; value: string; source: string }[] }
  }
  t.match(status.ocpp.held, [{ action: 'StopTransaction', attempts: 3 }], '/api/status shows the held stop')
  t.equal(status.ocpp.queued, 1, 'still in the queue')
  t.match(
    status.ocpp.configuration.find((k) => k.key === 'TransactionMessageRetryInterval'),
    { value: '1', source: 'config' },
    '/api/status shows the keys in force and where they come from',
  )
  await csms.down()
  await csms.up()
  await waitFor(() => csms.of('StopTransaction').find((c) => c.reply), 'the stop answered after the reconnect')
  t.equal(csms.of('StopTransaction').length, 4, 'three refusals, then the fourth attempt')
  await waitFor(async () => (await metrics()).get('outpost_ocpp_queued_messages') === 0, '/metrics: the queue drained')
  t.equal((await metrics()).get('outpost_ocpp_held_messages'), 0, '/metrics: nothing held')
  t.equal((await metrics()).get('outpost_ocpp_online'), 1, '/metrics: online')
  t.equal((await daemon.stop('SIGTERM')).code, 0)
  t.equal(csms.violations.length, 0)
  t.equal(csms.badMessages.length, 0)
})

t.test("security profile 2: wss:// with the central system's CA and Basic auth; an unknown CA is refused", async (t) => {
  const dir = tempDir(t)
  const pki = makePki(dir)
  const peer = await startPeer(t, { outlets: 1 })
  const csms = await startCsms(t, { password: 'tls-pw', tls: { key: readFileSync(pki.serverKey), cert: readFileSync(pki.serverCert) } })
  t.match(csms.url, /^wss:/)
  for (const d of ['a', 'b']) mkdirSync(join(dir, d))
  const good = writeSiteConfig({
    dir: join(dir, 'a'),
    port: peer.port,
    outlets: 1,
    extra: { ocpp: ocppSection(csms, { password: 'tls-pw', caFile: pki.ca }) },
  })
  const daemon = startDaemon(t, good)
  await daemon.waitLog((l) => l.msg === 'ocpp: boot accepted', 'accepted over wss:// with the CA')
  t.equal(csms.of('BootNotification').length, 1)
  t.equal((await daemon.stop('SIGTERM')).code, 0)
  // Without the CA the central system's certificate cannot be verified: no connection, and the site runs on.
  const untrusted = writeSiteConfig({ dir: join(dir, 'b'), port: peer.port, outlets: 1, extra: { ocpp: ocppSection(csms, { password: 'tls-pw' }) } })
  const blind = startDaemon(t, untrusted)
  await blind.waitLog((l) => l.msg === 'outpost running', 'running without the central system')
  await new Promise((r) => setTimeout(r, 2500))
  t.equal(csms.of('BootNotification').length, 1, 'no boot over an unverified link')
  t.equal((await blind.stop('SIGTERM')).code, 0)
  t.equal(csms.violations.length, 0)
})
