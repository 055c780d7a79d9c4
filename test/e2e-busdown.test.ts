/**
 * End to end: the site's Modbus TCP gateway is not there when the daemon boots (it
 * powers up after the Pi). The daemon starts anyway, faults the outlets, refuses
 * sessions on them, keeps reopening the bus, and once the peer appears on that port
 * the outlets recover and a session runs normally.
 */
import t from 'tap'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { freePort, startMosquitto } from './helpers/mosquitto.js'
import { isEnded, startCloud, startDaemon, startPeer, startSession, tempDir, waitFor, writeSiteConfig } from './helpers/e2e-kit.js'

t.test('a bus that is down at boot comes up later', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const port = await freePort()
  const config = writeSiteConfig({ dir, port, outlets: 2, brokerUrl: broker.url })
  const cloud = await startCloud(t, broker.url, dir)
  const daemon = startDaemon(t, config)
  await daemon.waitLog((l) => l.msg === 'not every bus is open yet; continuing', 'the boot says the bus is not open')
  await daemon.waitLog((l) => l.msg === 'outpost running', 'running anyway')
  await cloud.waitRecord((r) => r.type === 'outlet.fault' && r.outlet === 'E1', 'E1 in fault')
  t.ok((await cloud.command({ action: 'set-wallet', userId: 'u1', currency: 'CAD', balance: 100_000 })).ok, 'commands work while the bus is down')
  const refused = await cloud.command({ action: 'start', outlet: 'E1', userId: 'u1' })
  t.equal(!refused.ok && refused.error.code, 'outlet-fault', 'no session on an outlet that cannot be read')

  const peer = await startPeer(t, { outlets: 2, port })
  await daemon.waitLog((l) => l.msg === 'bus open' && l.bus === 'site', 'the bus reopens by itself', 60_000)
  const recovered = await cloud.waitRecord((r) => r.type === 'outlet.recovered' && r.outlet === 'E1', 'E1 recovers')
  t.ok(recovered.seq > 0)
  await waitFor(() => cloud.outlet('E1')?.state === 'off', 'E1 off, ready for a session')

  // Accepted once the bus is up.
  const { sessionId, e0 } = await startSession(t, peer, cloud, { outlet: 1, userId: 'u1', amps: 16, chargeWh: 2, charging: 'charging' })
  await peer.unplug(1)
  const ended = await cloud.waitRecord(isEnded(sessionId), 'session.ended')
  t.equal(ended.reason, 'unplugged')
  t.ok(Math.abs(ended.energyWh - ((await peer.outlet(1)).energyWh - e0)) < 0.02, 'billed from the meter')
  await waitFor(async () => !(await peer.outlet(1)).coil, 'coil 0 open')
  const lines = daemon.logs().filter((l) => l.outlet === 'E1' || l.outlet === 'E2' || l.bus === 'site')
  // About 9 per outlet (relay failed, fault ×2, read failed, answering again ×2, recovered ×2,
  // session lines) plus `bus open`; a flood (one per poll of two outlets for ~10 s) would be 80+.
  t.ok(lines.length <= 30, `${lines.length} log lines about the bus and its outlets over the whole run`, { lines })
  t.equal((await daemon.stop('SIGTERM')).code, 0, 'clean exit')
})

t.test('outpost run with an invalid config: every problem named, nothing touched, the setup page instead of a restart loop', async (t) => {
  const dir = tempDir(t)
  const file = writeSiteConfig({ dir, port: 1, outlets: 1 })
  const raw = JSON.parse(readFileSync(file, 'utf8')) as { sessions: Record<string, unknown>; outlets: Record<string, unknown>[] }
  raw.sessions.pollMs = 5
  raw.outlets[0]!.plan = 'nope'
  writeFileSync(file, JSON.stringify(raw))
  const daemon = startDaemon(t, file, {}, undefined, [], ['--listen', `127.0.0.1:${await freePort()}`])
  await daemon.waitLog((l) => l.setup === 'invalid', 'the setup page for the invalid config')
  const stderr = daemon.stderr().join('\n')
  t.match(stderr, `${file}: /sessions/pollMs: must be >= 100`, 'names the pointer and the problem')
  t.match(stderr, `${file}: /outlets/0/plan: unknown plan "nope"`, 'and every other problem')
  t.notOk(existsSync(join(dir, 'journal')), 'no journal created')
  t.equal((await daemon.stop('SIGTERM')).code, 0, 'a clean stop from the setup page')
})
