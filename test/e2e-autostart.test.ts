/**
 * End to end, over Modbus TCP: single-user auto-start (armed relay, plug starts a
 * session, a user stop suspends it while the car stays plugged, a manual start
 * re-enables it), and a manager taking an outlet out of service.
 */
import t from 'tap'
import { startMosquitto } from './helpers/mosquitto.js'
import {
  isEnded,
  isStarted,
  startCloud,
  startDaemon,
  startPeer,
  startSession,
  tempDir,
  waitFor,
  writeSiteConfig,
  type Started,
} from './helpers/e2e-kit.js'

t.test('auto-start and manager availability over Modbus TCP', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 2 })
  const config = writeSiteConfig({ dir, port: peer.port, outlets: 2, brokerUrl: broker.url, outlet: { 1: { autoStart: { userId: 'resident' } } } })
  const cloud = await startCloud(t, broker.url, dir)
  const daemon = startDaemon(t, config)
  await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')
  for (const userId of ['resident', 'visitor'])
    t.ok((await cloud.command({ action: 'set-wallet', userId, currency: 'CAD', balance: 100_000 })).ok, `wallet of ${userId}`)

  await t.test('auto-start: armed, plug starts, user stop suspends, manual start re-arms', async (t) => {
    await waitFor(async () => (await peer.outlet(1)).coil, 'E1 armed: coil 0 closed with nobody charging')
    await waitFor(() => cloud.outlet('E1')?.state === 'armed', 'E1 reported armed')
    await peer.plug(1, 16)
    const s1 = await cloud.waitRecord(isStarted('E1'), 'auto-started session')
    t.equal(s1.trigger, 'auto-start')
    t.equal(s1.userId, 'resident')
    const eStart = (await peer.outlet(1)).energyWh
    await waitFor(async () => (await peer.outlet(1)).energyWh > eStart + 1, 'charging')

    const stop = await cloud.command({ action: 'stop', outlet: 'E1', by: 'user' })
    t.ok(stop.ok, 'user stop accepted: ' + JSON.stringify(stop))
    const e1 = await cloud.waitRecord(isEnded(s1.sessionId), 'the auto-started session ends')
    t.equal(e1.reason, 'user-stopped')
    t.ok(e1.total > 0, 'billed')
    await waitFor(async () => !(await peer.outlet(1)).coil, 'coil 0 opens')
    await waitFor(() => cloud.outlet('E1')?.state === 'off', 'E1 reported off (suspended)')
    // The car is still plugged and wants current; auto-start is suspended, so the relay must stay open.
    // Let the daemon poll the plugged car a dozen more times, then check nothing re-closed the relay.
    const polls = (await peer.outlet(1)).polls
    await waitFor(async () => (await peer.outlet(1)).polls >= polls + 12, '12 more polls of meter 1')
    const after = await peer.outlet(1)
    t.ok(after.plugged, 'the car is still plugged')
    t.equal(after.coil, false, 'relay stays open while suspended')
    t.equal(cloud.records().filter(isStarted('E1')).length, 1, 'no new auto-start session')

    const manual = await cloud.start('E1', 'resident')
    t.ok(manual.ok, 'manual start by the auto-start user: ' + JSON.stringify(manual))
    const s2 = await cloud.waitRecord((r): r is Started => isStarted('E1')(r) && r.sessionId !== s1.sessionId, 'manual session')
    t.equal(s2.trigger, 'activation')
    await waitFor(async () => (await peer.outlet(1)).coil, 'coil 0 closes for the manual session')
    const e = (await peer.outlet(1)).energyWh
    await waitFor(async () => (await peer.outlet(1)).energyWh > e + 1, 'charging')
    await peer.unplug(1)
    const e2 = await cloud.waitRecord(isEnded(s2.sessionId), 'manual session ends')
    t.equal(e2.reason, 'unplugged')
    // Re-enabled: after the unplug the outlet arms again by itself.
    await waitFor(() => cloud.outlet('E1')?.state === 'armed', 'E1 re-armed')
    await waitFor(async () => (await peer.outlet(1)).coil, 'coil 0 closed again (armed)')
    await peer.plug(1, 10)
    const s3 = await cloud.waitRecord(
      (r): r is Started => isStarted('E1')(r) && r.sessionId !== s1.sessionId && r.sessionId !== s2.sessionId,
      'auto-start again',
    )
    t.equal(s3.trigger, 'auto-start', 'auto-start works again after the manual start')
    await peer.unplug(1)
    const e3 = await cloud.waitRecord(isEnded(s3.sessionId), 'third session ends')
    t.equal(e3.reason, 'unplugged')
  })

  await t.test('manager makes an outlet unavailable mid-session', async (t) => {
    const { sessionId } = await startSession(t, peer, cloud, { outlet: 2, userId: 'visitor', amps: 16 })
    const e0 = (await peer.outlet(2)).energyWh
    await waitFor(async () => (await peer.outlet(2)).energyWh > e0 + 1, 'charging')
    const off = await cloud.command({ action: 'set-availability', outlet: 'E2', available: false })
    t.ok(off.ok, 'set-availability false accepted')
    const ended = await cloud.waitRecord(isEnded(sessionId), 'session ends')
    t.equal(ended.reason, 'manager-stopped')
    t.ok(ended.total > 0, 'billed up to the stop')
    await waitFor(async () => !(await peer.outlet(2)).coil, 'coil 1 open')
    await waitFor(() => cloud.outlet('E2')?.state === 'unavailable', 'E2 reported unavailable')
    const refused = await cloud.command({ action: 'start', outlet: 'E2', userId: 'visitor' })
    t.notOk(refused.ok, 'start refused')
    t.equal(!refused.ok && refused.error.code, 'outlet-unavailable', "the engine's code")
    t.equal((await peer.outlet(2)).coil, false, 'the refusal changed nothing: relay still open')
    const on = await cloud.command({ action: 'set-availability', outlet: 'E2', available: true })
    t.ok(on.ok, 'back in service')
    await waitFor(() => cloud.outlet('E2')?.state === 'off', 'E2 reported off')
    const { sessionId: sid } = await startSession(t, peer, cloud, { outlet: 2, userId: 'visitor' })
    await peer.unplug(2)
    const last = await cloud.waitRecord(isEnded(sid), 'last session ends')
    t.ok(['unplugged', 'grace-expired'].includes(last.reason), `ended ${last.reason}`)
  })

  const code = await daemon.stop('SIGTERM')
  t.equal(code.code, 0, 'clean exit', { stderr: daemon.stderr(), log: daemon.logs().slice(-15) })
})
