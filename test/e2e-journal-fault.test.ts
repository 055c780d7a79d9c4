/**
 * End to end: the journal cannot write any more mid-session (the daemon's file
 * size limit is dropped to one byte with prlimit, so LevelDB's next append fails
 * with EFBIG — a full disk as far as the daemon can tell). Nothing may be billed
 * that cannot be journaled: every relay opens, the daemon exits non-zero, and the
 * next start closes the session `power-loss` at the last journaled reading.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { startMosquitto } from './helpers/mosquitto.js'
import { isEnded, startCloud, startDaemon, startPeer, startSession, tempDir, waitFor, writeSiteConfig } from './helpers/e2e-kit.js'

const WH_EPS = 0.02

t.test('a journal write failure mid-session opens every relay and stops the daemon', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 2 })
  const config = writeSiteConfig({ dir, port: peer.port, outlets: 2, brokerUrl: broker.url, outlet: { 2: { autoStart: { userId: 'resident' } } } })
  const cloud = await startCloud(t, broker.url, dir)
  const d1 = startDaemon(t, config)
  await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')
  for (const userId of ['u1', 'resident'])
    t.ok((await cloud.command({ action: 'set-wallet', userId, currency: 'CAD', balance: 100_000 })).ok, `wallet of ${userId}`)
  await waitFor(async () => (await peer.outlet(2)).coil, 'E2 armed (relay closed, nobody charging)')
  const { sessionId, e0 } = await startSession(t, peer, cloud, { outlet: 1, userId: 'u1', amps: 16, chargeWh: 3, charging: 'charging' })

  const limit = spawnSync('prlimit', ['--pid', String(d1.pid), '--fsize=1:1'], { encoding: 'utf8' })
  t.equal(limit.status, 0, 'file size limit set: ' + limit.stderr)
  const atFault = (await peer.outlet(1)).energyWh
  const fatal = await d1
    .waitLog((l) => l.level === 'fatal', 'the daemon reports the journal fault')
    .catch((err: Error) => {
      // The daemon may already have exited: its log is still there.
      const hit = d1.logs().find((l) => l.level === 'fatal')
      if (!hit) throw err
      return hit
    })
  t.match(fatal.msg, /journal write failed/, fatal.msg)
  const exit = await d1.exited
  t.not(exit.code, 0, `non-zero exit on a fatal fault (${exit.code})`)
  t.equal(exit.signal, null, 'exited by itself', { signal: exit.signal, stderr: d1.stderr(), log: d1.logs().slice(-8) })
  const after = await peer.state()
  t.equal(after.find((o) => o.outlet === 1)!.coil, false, "the charging outlet's relay is open")
  t.equal(after.find((o) => o.outlet === 2)!.coil, false, "the armed outlet's relay is open too")
  t.ok(after.find((o) => o.outlet === 1)!.plugged, 'the car is still plugged')

  const d2 = startDaemon(t, config)
  const boots = await waitFor(() => {
    const b = cloud.records().filter((r) => r.type === 'gateway.started')
    return b.length >= 2 ? b : undefined
  }, 'second gateway.started')
  t.equal((boots[1] as { cleanShutdown: boolean }).cleanShutdown, false, 'the restart reports an unclean shutdown')
  const ended = await cloud.waitRecord(isEnded(sessionId), 'the session ends at the restart')
  t.equal(ended.reason, 'power-loss')
  t.ok(ended.meterEndWh <= atFault + WH_EPS, `closed at a journaled reading (${ended.meterEndWh} <= ${atFault})`)
  t.ok(ended.meterEndWh > e0 + 1, 'the readings journaled before the fault are billed')
  t.equal(cloud.records().filter(isEnded(sessionId)).length, 1, 'one billing record')
  t.equal((await d2.stop('SIGTERM')).code, 0, 'the restarted daemon stops cleanly')
})
