/**
 * End to end, over Modbus TCP: the broker dies while sessions keep running (they
 * auto-start and end with nobody online), comes back on the same port, and the
 * cloud ends up with every record exactly once, gapless, chain intact, identical
 * to the journal; then a meter goes silent mid-session (meter-fault at the last
 * good reading, relay open) and answers again (outlet.recovered).
 */
import t from 'tap'
import { startMosquitto } from './helpers/mosquitto.js'
import { runCli } from './helpers/cli.js'
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
import { verifyChain } from '../daemon/uplink/chain.js'
import type { JournalRecord } from '../core/types.js'

const WH_EPS = 0.02

t.test('broker outage across sessions, then a silent meter', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 2 })
  const config = writeSiteConfig({ dir, port: peer.port, outlets: 2, brokerUrl: broker.url, outlet: { 1: { autoStart: { userId: 'resident' } } } })
  const cloud = await startCloud(t, broker.url, dir)
  const outer = t // children that outlive a subtest are torn down with the whole test
  let daemon = startDaemon(outer, config)
  await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')
  for (const userId of ['resident', 'visitor'])
    t.ok((await cloud.command({ action: 'set-wallet', userId, currency: 'CAD', balance: 100_000 })).ok, `wallet of ${userId}`)
  await waitFor(async () => (await peer.outlet(1)).coil, 'E1 armed')

  await t.test('three sessions while the broker is down arrive afterwards, each once', async (t) => {
    await broker.kill()
    await daemon.waitLog((l) => l.msg === 'uplink offline', 'the daemon notices the broker is gone')
    const outage: string[] = []
    for (let i = 0; i < 3; i++) {
      await waitFor(async () => (await peer.outlet(1)).coil, `E1 armed (${i + 1})`)
      const before = daemon.logs().filter((l) => l.msg === 'session ended').length
      await peer.plug(1, 16)
      const started = await daemon.waitLog(
        (l) => l.msg === 'session started' && l.outlet === 'E1' && !outage.includes(String(l.sessionId)),
        `session ${i + 1} starts offline`,
      )
      outage.push(String(started.sessionId))
      const e = (await peer.outlet(1)).energyWh
      await waitFor(async () => (await peer.outlet(1)).energyWh > e + 1, 'charging')
      await peer.unplug(1)
      await waitFor(() => daemon.logs().filter((l) => l.msg === 'session ended').length > before, `session ${i + 1} ends offline`)
    }
    t.equal(
      cloud.records().filter((r) => r.type === 'session.started' && outage.includes(r.sessionId)).length,
      0,
      'nothing reached the cloud during the outage',
    )

    await broker.restart()
    await daemon.waitLog(
      (l) => l.msg === 'uplink online' && l.time > daemon.logs().find((x) => x.msg === 'uplink offline')!.time,
      'the daemon reconnects',
    )
    for (const sid of outage) {
      const ended = await cloud.waitRecord(isEnded(sid), `session ${sid} after the outage`)
      t.equal(ended.reason, 'unplugged')
      t.equal(ended.offline, true, 'ran without uplink: offline true')
      t.equal(ended.trigger, 'auto-start')
    }
    // Online again: a session now is not offline.
    await waitFor(async () => (await peer.outlet(1)).coil, 'E1 armed again')
    await peer.plug(1, 16)
    const s = await cloud.waitRecord((r): r is Started => isStarted('E1')(r) && !outage.includes(r.sessionId), 'a session after the outage')
    const e = (await peer.outlet(1)).energyWh
    await waitFor(async () => (await peer.outlet(1)).energyWh > e + 1, 'charging')
    await peer.unplug(1)
    const online = await cloud.waitRecord(isEnded(s.sessionId), 'its record')
    t.equal(online.offline, false, 'online session: offline false')
  })

  await t.test('a meter goes silent mid-session: meter-fault, relay open, then recovered', async (t) => {
    const { sessionId } = await startSession(t, peer, cloud, { outlet: 2, userId: 'visitor', amps: 16 })
    const e0 = (await peer.outlet(2)).energyWh
    await waitFor(async () => (await peer.outlet(2)).energyWh > e0 + 2, 'charging')
    const atSilence = await peer.silence(2)
    const eSilence = atSilence.find((o) => o.outlet === 2)!.energyWh
    const ended = await cloud.waitRecord(isEnded(sessionId), 'session ends')
    t.equal(ended.reason, 'meter-fault')
    t.ok(ended.meterEndWh <= eSilence + WH_EPS, `closed at the last good reading ${ended.meterEndWh} (register when it fell silent: ${eSilence})`)
    t.ok(ended.meterEndWh > e0 + 1, `the readings before the silence are billed (${ended.meterEndWh} from ${e0})`)
    t.ok(eSilence - ended.meterEndWh < 3, 'within a few polls of the silence')
    t.ok(ended.total > 50, 'billed')
    const fault = await cloud.waitRecord((r) => r.type === 'outlet.fault' && r.outlet === 'E2', 'outlet.fault')
    t.match((fault as { detail: string }).detail, /meter/, 'the fault names the meter')
    await waitFor(async () => !(await peer.outlet(2)).coil, 'coil 1 opened (the relay board still answers)')
    await waitFor(() => cloud.outlet('E2')?.state === 'fault', 'E2 reported in fault')
    const refused = await cloud.command({ action: 'start', outlet: 'E2', userId: 'visitor' })
    t.equal(!refused.ok && refused.error.code, 'outlet-fault', 'no session on a faulted outlet')
    await peer.answer(2)
    const rec = await cloud.waitRecord((r) => r.type === 'outlet.recovered' && r.outlet === 'E2', 'outlet.recovered')
    t.ok(rec.seq > fault.seq, 'recovered after the fault')
    await waitFor(() => cloud.outlet('E2')?.state === 'off', 'E2 back to off')
    t.equal((await peer.outlet(2)).coil, false, 'relay still open: nobody activated it')
    await peer.unplug(2)
  })

  await t.test('kill -9 while records wait for the broker: they survive and arrive once', async (t) => {
    await broker.kill()
    await waitFor(() => daemon.logs().filter((l) => l.msg === 'uplink offline').length >= 2, 'offline again')
    await waitFor(async () => (await peer.outlet(1)).coil, 'E1 armed')
    const known = new Set(
      daemon
        .logs()
        .filter((l) => l.msg === 'session started')
        .map((l) => String(l.sessionId)),
    )
    await peer.plug(1, 16)
    const started = await daemon.waitLog(
      (l) => l.msg === 'session started' && l.outlet === 'E1' && !known.has(String(l.sessionId)),
      'an offline session',
    )
    const sid = String(started.sessionId)
    const e = (await peer.outlet(1)).energyWh
    await waitFor(async () => (await peer.outlet(1)).energyWh > e + 1, 'charging')
    await peer.unplug(1)
    await daemon.waitLog((l) => l.msg === 'session ended' && l.sessionId === sid, 'it ends, offline')
    t.notOk(
      cloud.records().some((r) => r.type === 'session.ended' && r.sessionId === sid),
      'not at the cloud yet',
    )
    t.equal((await daemon.stop('SIGKILL')).signal, 'SIGKILL', 'killed with the records unsent')
    await broker.restart()
    daemon = startDaemon(outer, config)
    const ended = await cloud.waitRecord(isEnded(sid), 'the queued record after the restart')
    t.equal(ended.reason, 'unplugged')
    t.equal(ended.offline, true)
    const boots = await cloud.waitRecord((r) => r.type === 'gateway.started' && r.seq > ended.seq, 'the new boot')
    t.equal((boots as { cleanShutdown: boolean }).cleanShutdown, false, 'after a kill')
  })

  const last = await daemon.stop('SIGTERM')
  t.equal(last.code, 0, 'clean exit', { signal: last.signal, stderr: daemon.stderr(), log: daemon.logs().slice(-10) })
  // The journal itself, read by the CLI after the stop, against what the cloud holds.
  const out = runCli(['records', '--config', config])
  t.equal(out.status, 0, 'outpost records: ' + out.stderr)
  const journal = out.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as JournalRecord)
  const held = cloud.records()
  t.ok(held.length >= journal.length - 3, `the cloud holds the log up to the stop (${held.length} of ${journal.length})`)
  t.same(
    held.map((r) => r.seq),
    held.map((_, i) => i + 1),
    'gapless, in order, each seq once',
  )
  const v = verifyChain(held)
  t.ok(v.ok, 'chain intact' + (v.ok ? '' : `: ${v.break.message}`))
  t.same(
    held.map((r) => r.hash),
    journal.slice(0, held.length).map((r) => r.hash),
    'identical to the journal, record by record',
  )
  const sessions = held.filter((r) => r.type === 'session.ended').map((r) => (r as { sessionId: string }).sessionId)
  t.equal(new Set(sessions).size, sessions.length, 'one billing record per session')
})
