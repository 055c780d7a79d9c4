/**
 * OCPP 1.6J through outages and crashes, end to end (the built daemon, ocpp-rpc's
 * strict central system, the pymodbus site peer):
 * - a central-system outage across two sessions, with a kill -9 of the daemon while
 *   their messages are queued: afterwards every transaction message arrives, in
 *   order, once, each Stop and MeterValues with its own StartTransaction's id;
 * - kill -9 mid-session: one StopTransaction PowerLoss at the last journaled reading;
 * - SIGTERM mid-session: one StopTransaction Reboot, sent before the process exits;
 * - offline authorization through the daemon: with AllowOfflineTxForUnknownId false, the local API's start
 *   of an unknown idTag is refused not-authorized (403) while the central system is away, one on the local
 *   list starts.
 */
import t, { type Test } from 'tap'
import { type Csms, type CsmsCall, journalRecords, ocppSection, startCsms } from './helpers/csms.js'
import { localStart, startDaemon, startPeer, tempDir, type Ended, type Started, waitFor, writeSiteConfig } from './helpers/e2e-kit.js'

const TX_ACTIONS = ['StartTransaction', 'StopTransaction', 'MeterValues']

function checkStrict(t: Test, csms: Csms): void {
  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
  t.equal(csms.badMessages.length, 0, 'no bad message')
}

/** A one-outlet site on the pymodbus peer, a charge point of the strict central system: `ocpp` goes into its ocpp section. */
async function site(
  t: Test,
  opts: { ocpp?: Record<string, unknown>; outlet?: Record<number, Record<string, unknown>>; api?: Record<string, unknown> },
) {
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 1 })
  const csms = await startCsms(t)
  const config = writeSiteConfig({
    dir,
    port: peer.port,
    outlets: 1,
    ...(opts.outlet ? { outlet: opts.outlet } : {}),
    extra: { ocpp: ocppSection(csms, opts.ocpp), ...(opts.api ? { api: opts.api } : {}) },
  })
  return { config, peer, csms }
}

t.test('an outage across two sessions and a kill -9 while their messages wait', async (t) => {
  const { config, peer, csms } = await site(t, { outlet: { 1: { autoStart: { userId: 'resident' } } }, ocpp: { meterValueSampleS: 1 } })
  let daemon = startDaemon(t, config)
  await daemon.waitLog((l) => l.msg === 'ocpp: boot accepted', 'boot accepted')
  await csms.down()
  await daemon.waitLog((l) => String(l.msg).startsWith('ocpp: disconnected'), 'the charge point sees the outage')
  const outageAt = Date.now()

  for (let i = 1; i <= 2; i++) {
    await waitFor(async () => (await peer.outlet(1)).coil, `armed for session ${i}`)
    const e0 = (await peer.outlet(1)).energyWh
    await peer.plug(1, 16)
    await waitFor(async () => (await peer.outlet(1)).energyWh > e0 + 4, `session ${i} charging`)
    await peer.unplug(1)
    await daemon.waitLog((l) => l.msg === 'session ended' && daemon.logs().filter((x) => x.msg === 'session ended').length >= i, `session ${i} ended`)
  }
  t.equal(csms.of('StartTransaction').length, 0, 'nothing reached the central system during the outage')
  // The process dies with every message queued; the next run must still send each of them once.
  await daemon.stop('SIGKILL')
  daemon = startDaemon(t, config)
  await daemon.waitLog((l) => l.msg === 'ocpp: connecting to the central system', 'restarted')
  const statusesBefore = csms.of('StatusNotification').length
  await csms.up()
  await waitFor(() => csms.of('StopTransaction').length >= 2 && csms.of('StartTransaction').length >= 2, 'both sessions reach the central system')
  const resent = csms.of('StatusNotification').slice(statusesBefore)
  t.same(
    [...new Set(resent.map((c) => c.params.connectorId))].sort(),
    [0, 1],
    'after the reconnect every connector (and 0) is sent its current status',
  )
  t.equal(resent.find((c) => c.params.connectorId === 1)?.params.status, 'Available', 'the current state, not the queued history')
  await waitFor(() => daemon.logs().filter((l) => l.msg === 'ocpp: transaction stopped').length >= 2, 'both stops answered')
  // A duplicate would follow the queue at once: give it a moment to show before counting.
  await new Promise((r) => setTimeout(r, 1500))

  const tx = csms.calls.filter((c) => TX_ACTIONS.includes(c.action))
  t.equal(new Set(tx.map((c) => c.messageId)).size, tx.length, 'every transaction message arrived once (no message id twice)')
  const starts = tx.filter((c) => c.action === 'StartTransaction')
  const stops = tx.filter((c) => c.action === 'StopTransaction')
  t.equal(starts.length, 2, 'two StartTransactions')
  t.equal(stops.length, 2, 'two StopTransactions')
  const ids = starts.map((s) => s.reply!.transactionId as number)
  // In order: Start 1, its MeterValues, Stop 1, then the same for session 2.
  const order = tx.map((c) => `${c.action}:${c.action === 'StartTransaction' ? ids[starts.indexOf(c)] : c.params.transactionId}`)
  const firstStop = order.indexOf(`StopTransaction:${ids[0]}`)
  t.ok(order.indexOf(`StartTransaction:${ids[0]}`) === 0, 'the first session starts first')
  t.ok(firstStop < order.indexOf(`StartTransaction:${ids[1]}`), 'session 1 stops before session 2 starts')
  t.equal(order.at(-1), `StopTransaction:${ids[1]}`, 'session 2 stops last')
  const mv = tx.filter((c) => c.action === 'MeterValues')
  t.ok(mv.filter((c) => c.params.transactionId === ids[0]).length >= 2, 'session 1 sampled while offline')
  t.ok(mv.filter((c) => c.params.transactionId === ids[1]).length >= 2, 'session 2 sampled while offline')
  t.ok(
    tx.filter((c) => c.action !== 'StartTransaction').every((c) => ids.includes(c.params.transactionId as number)),
    'every Stop and MeterValues carries a transactionId the central system gave (never -1)',
  )
  const sampleTimes = mv.map((c) => Date.parse((c.params.meterValue as { timestamp: string }[])[0]!.timestamp))
  t.same(
    sampleTimes,
    [...sampleTimes].sort((a, b) => a - b),
    'MeterValues in the order they were sampled',
  )
  t.ok(
    starts.every((s) => Date.parse(s.params.timestamp as string) >= outageAt - 1000 && s.at > Date.parse(s.params.timestamp as string)),
    'the starts carry the time they happened (during the outage), not the time they were sent',
  )

  t.equal((await daemon.stop('SIGTERM')).code, 0)
  const records = journalRecords(config)
  const ended = records.filter((r): r is Ended => r.type === 'session.ended')
  t.equal(ended.length, 2)
  for (const [i, e] of ended.entries()) {
    const start = records.find((r): r is Started => r.type === 'session.started' && r.sessionId === e.sessionId)!
    t.equal(starts[i]!.params.meterStart, Math.round(start.meterWh), `session ${i + 1}: meterStart from the journal`)
    t.equal(stops[i]!.params.meterStop, Math.round(e.meterEndWh), `session ${i + 1}: meterStop from the journal`)
    t.equal(stops[i]!.params.reason, 'EVDisconnected')
  }
  checkStrict(t, csms)
})

t.test('kill -9 mid-session: one StopTransaction PowerLoss; SIGTERM mid-session: Reboot', async (t) => {
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 1 })
  const csms = await startCsms(t)
  const config = writeSiteConfig({ dir, port: peer.port, outlets: 1, extra: { ocpp: ocppSection(csms) } })
  let daemon = startDaemon(t, config)

  const session = async (what: string): Promise<CsmsCall> => {
    await daemon.waitLog((l) => l.msg === 'ocpp: boot accepted', `boot accepted (${what})`)
    await peer.plug(1, 16)
    const before = csms.of('StartTransaction').length
    t.same(await csms.call('RemoteStartTransaction', { connectorId: 1, idTag: `drv-${what}` }), { status: 'Accepted' }, `remote start (${what})`)
    const start = await waitFor(() => csms.of('StartTransaction')[before]?.reply && csms.of('StartTransaction')[before], `StartTransaction (${what})`)
    const e0 = (await peer.outlet(1)).energyWh
    await waitFor(async () => (await peer.outlet(1)).energyWh > e0 + 3, `charging (${what})`)
    return start
  }

  const s1 = await session('kill')
  await daemon.stop('SIGKILL')
  await peer.unplug(1)
  const boots = csms.of('BootNotification').length
  daemon = startDaemon(t, config)
  await waitFor(() => csms.of('BootNotification').length > boots, 'the restarted daemon boots')
  const tx1 = s1.reply!.transactionId as number
  const stop1 = await csms.waitCall('StopTransaction', (c) => c.params.transactionId === tx1, 'the StopTransaction after the crash')
  t.equal(stop1.params.reason, 'PowerLoss')

  const s2 = await session('term')
  t.equal((await daemon.stop('SIGTERM')).code, 0, 'SIGTERM: exit 0')
  const tx2 = s2.reply!.transactionId as number
  const stop2 = csms.of('StopTransaction').find((c) => c.params.transactionId === tx2)
  t.ok(stop2, 'the StopTransaction went out before the process exited')
  t.equal(stop2?.params.reason, 'Reboot')

  // A further run sends neither again.
  daemon = startDaemon(t, config)
  await daemon.waitLog((l) => l.msg === 'ocpp: boot accepted', 'a third run is accepted')
  // Anything left in its outbox goes at once after the boot: give it a moment to show before counting.
  await new Promise((r) => setTimeout(r, 1500))
  t.equal(csms.of('StopTransaction').filter((c) => c.params.transactionId === tx1).length, 1, 'exactly one StopTransaction for the crashed session')
  t.equal(csms.of('StopTransaction').filter((c) => c.params.transactionId === tx2).length, 1, 'exactly one StopTransaction for the stopped one')
  t.equal(csms.of('StartTransaction').length, 2, 'no StartTransaction twice')
  t.equal((await daemon.stop('SIGTERM')).code, 0)

  const records = journalRecords(config)
  const ended = records.filter((r): r is Ended => r.type === 'session.ended')
  t.same(
    ended.map((e) => e.reason),
    ['power-loss', 'reboot'],
  )
  t.equal(stop1.params.meterStop, Math.round(ended[0]!.meterEndWh), 'meterStop is the last journaled reading')
  t.equal(stop2?.params.meterStop, Math.round(ended[1]!.meterEndWh))
  checkStrict(t, csms)
})

t.test(
  'offline authorization through the daemon: the local API start of an unknown idTag is refused (journaled, kept for its id), a listed one starts',
  async (t) => {
    const { config, peer, csms } = await site(t, {
      ocpp: { allowOfflineTxForUnknownId: false },
      api: { listen: '127.0.0.1:0', token: 'ocpp-auth-token' },
    })
    const daemon = startDaemon(t, config)
    const api = String((await daemon.waitLog((l) => l.msg === 'local API listening', 'the local API')).url).replace(/\/$/, '')
    await daemon.waitLog((l) => l.msg === 'ocpp: boot accepted', 'boot accepted')
    t.same(
      await csms.call('SendLocalList', {
        listVersion: 1,
        updateType: 'Full',
        localAuthorizationList: [{ idTag: 'on-list', idTagInfo: { status: 'Accepted' } }],
      }),
      { status: 'Accepted' },
    )
    await csms.down()
    await daemon.waitLog((l) => String(l.msg).startsWith('ocpp: disconnected'), 'the charge point sees the outage')
    const start = (userId: string, id?: string) => localStart(api, 'ocpp-auth-token', 'E1', userId, id)
    const refused = await start('stranger', 'offline-1')
    t.equal(refused.status, 403)
    const refusal = await refused.json()
    t.match(refusal, { ok: false, error: { code: 'not-authorized', message: /not on its local list nor in the authorization cache/ } })
    t.equal(journalRecords(config).filter((r) => r.type === 'session.started').length, 0, 'nothing started')
    await peer.plug(1, 16)
    const ok = await start('on-list')
    t.equal(ok.status, 200, 'an idTag on the local list starts while the central system is away')
    await daemon.waitLog((l) => l.msg === 'session started', 'the session started')
    await csms.up()
    const tx = await csms.waitCall('StartTransaction', (c) => c.reply !== undefined, 'the StartTransaction after the reconnect')
    t.equal(tx.params.idTag, 'on-list')
    // The refusal went through the engine: journaled with its id, so the same id gets the same answer, online too.
    const again = await start('stranger', 'offline-1')
    t.equal(again.status, 403)
    t.same(await again.json(), refusal, 'the same id: the first answer, not a new decision')
    t.equal((await daemon.stop('SIGTERM')).code, 0)
    t.equal(csms.violations.length, 0)
    t.equal(csms.badMessages.length, 0)
  },
)
