/**
 * End to end over Modbus RTU on a socat pty pair (the daemon on one end, the
 * pymodbus peer on the other), with two dead buses in the same config (a TCP port
 * nobody listens on, a serial path that does not exist): the live bus's sessions
 * work, the dead ones fault their outlets without flooding the log, and
 * `outpost run` tells systemd it is ready over NOTIFY_SOCKET (and feeds the
 * watchdog, and says STOPPING on SIGTERM). Then the RTU adapter is pulled
 * mid-session and plugged back.
 */
import t from 'tap'
import { join } from 'node:path'
import { existsSync } from 'node:fs'
import { freePort, startMosquitto } from './helpers/mosquitto.js'
import {
  isEnded,
  ptyPair,
  startCloud,
  startDaemon,
  startPeer,
  startSession,
  unplugSession,
  tempDir,
  waitFor,
  writeSiteConfig,
  type LogLine,
} from './helpers/e2e-kit.js'
import { fakeNotifySocket } from './helpers/node-red-kit.js'

const WH_EPS = 0.02
/** systemd-notify is what `outpost run` uses to talk to systemd (Debian package `systemd`). */
const HAS_NOTIFY = (process.env.PATH ?? '/usr/bin:/bin').split(':').some((d) => existsSync(join(d, 'systemd-notify')))
const DEAD = new Set(['D1', 'D2'])
const aboutDead = (l: LogLine): boolean =>
  DEAD.has(String(l.outlet)) || l.bus === 'dead-tcp' || l.bus === 'dead-rtu' || (Array.isArray(l.buses) && l.buses.length > 0)

t.test('Modbus RTU over a pty pair, dead buses beside it, systemd notify', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const pty = await ptyPair(t)
  const peer = await startPeer(t, { outlets: 2, rtu: pty.b, baud: 9600 })
  const deadPort = await freePort() // nobody listens here
  const deadPath = '/dev/ttyUSB-outpost-e2e-missing' // an adapter that is not plugged in
  const config = writeSiteConfig({
    dir,
    rtuPath: pty.a,
    outlets: 2,
    brokerUrl: broker.url,
    extraBuses: [
      { id: 'dead-tcp', type: 'modbus-tcp', host: '127.0.0.1', port: deadPort, timeoutMs: 300 },
      { id: 'dead-rtu', type: 'modbus-rtu', path: deadPath, baudRate: 9600, parity: 'none', stopBits: 1, timeoutMs: 300 },
    ],
    extraOutlets: [
      {
        id: 'D1',
        bus: 'dead-tcp',
        meter: { model: 'eastron-sdm120', unit: 1 },
        relay: { model: 'modbus-coil', unit: 100, coil: 0 },
        plan: 'standard',
      },
      {
        id: 'D2',
        bus: 'dead-rtu',
        meter: { model: 'eastron-sdm120', unit: 1 },
        relay: { model: 'modbus-coil', unit: 100, coil: 0 },
        plan: 'standard',
      },
    ],
  })

  // systemd's side of NOTIFY_SOCKET: a unix datagram socket.
  let notified = ''
  const notifySocket = await fakeNotifySocket(t, dir, (text) => (notified += text))

  const cloud = await startCloud(t, broker.url, dir)
  const daemon = startDaemon(t, config, { NOTIFY_SOCKET: notifySocket, WATCHDOG_USEC: '2000000' })
  await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')

  await t.test('systemd readiness and watchdog over NOTIFY_SOCKET', async (t) => {
    if (HAS_NOTIFY) {
      await waitFor(() => notified.includes('READY=1'), 'READY=1 on the notify socket')
      t.match(notified, /STATUS=charging 4 outlets/, 'a status line')
      await waitFor(() => notified.includes('WATCHDOG=1'), 'a watchdog keep-alive (WATCHDOG_USEC=2 s: fed every second)')
    } else {
      // No systemd-notify on this machine (Debian package `systemd`): notifying is best effort,
      // so the daemon must run exactly as without NOTIFY_SOCKET.
      await daemon.waitLog((l) => l.msg === 'outpost running', 'the daemon runs without systemd-notify')
      t.equal(notified, '', 'nothing on the socket without systemd-notify')
    }
  })

  await t.test('a session over RTU, billed from the meter', async (t) => {
    await unplugSession(t, peer, cloud, 'over RTU')
  })

  await t.test('the dead buses fault their outlets, quietly', async (t) => {
    for (const id of DEAD) {
      await cloud.waitRecord((r) => r.type === 'outlet.fault' && r.outlet === id, `outlet.fault for ${id}`)
      await waitFor(() => cloud.outlet(id)?.state === 'fault', `${id} reported in fault`)
    }
    const refused = await cloud.command({ action: 'start', outlet: 'D1', userId: 'u1' })
    t.notOk(refused.ok, 'no session on an outlet whose bus is down')
    const before = daemon.logs().filter(aboutDead).length
    // Let the live bus poll for a while (60 more answered requests to meter 1: 30 readings, about 8 s) and count
    // what the dead buses added to the log meanwhile.
    const polls = (await peer.outlet(1)).polls
    await waitFor(async () => (await peer.outlet(1)).polls >= polls + 60, '60 more answered requests (30 readings) on the live bus')
    const during = daemon.logs().filter(aboutDead).length - before
    // 30 poll rounds of 2 dead outlets: a flood would be 60+ lines. A late meter-fault line per
    // outlet may still fall in the window on a slow run, hence 4, not 0.
    t.ok(during <= 4, `at most 4 lines about the dead buses during the window, got ${during}`, {
      lines: daemon.logs().filter(aboutDead).slice(before),
    })
    const all = daemon.logs().filter(aboutDead)
    t.ok(
      all.length <= 12,
      `${all.length} lines about the dead buses since boot (the boot warning, then per dead outlet: relay failed, fault, read failed, fault)`,
      { lines: all },
    )
  })

  const exit = await daemon.stop('SIGTERM')
  t.equal(exit.code, 0, 'clean exit with dead buses', { stderr: daemon.stderr(), log: daemon.logs().slice(-10) })
  if (HAS_NOTIFY) {
    await waitFor(() => notified.includes('STOPPING=1'), 'STOPPING=1 on the notify socket')
    t.pass('told systemd it is stopping')
  }
})

t.test('RTU adapter unplugged mid-session and plugged back', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  let pty = await ptyPair(t)
  let peer = await startPeer(t, { outlets: 1, rtu: pty.b, baud: 9600 })
  const config = writeSiteConfig({ dir, rtuPath: pty.a, outlets: 1, brokerUrl: broker.url })
  const cloud = await startCloud(t, broker.url, dir)
  const daemon = startDaemon(t, config)
  await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')
  const { sessionId, e0 } = await startSession(t, peer, cloud, {
    outlet: 1,
    userId: 'u1',
    amps: 16,
    wallet: 100_000,
    chargeWh: 2,
    charging: 'charging over RTU',
  })
  // The gateway has read the session past its first Wh (on a loaded machine its polls can lag the peer).
  await waitFor(() => Number(cloud.outlet('E1')?.energyWh) > 1, 'the gateway reading the session past 1 Wh')
  // Unplug the adapter: both pty ends vanish, and with them the site (its contactor drops out too).
  // The meter goes quiet first, so the register sampled here is at least anything the gateway
  // read: sampled while it still answered, a poll could read the few ms of charge after it, and
  // the site restarted below would then start a step behind what the gateway last saw.
  await peer.silence(1)
  const atUnplug = (await peer.outlet(1)).energyWh
  await peer.kill()
  await pty.close()
  const ended = await cloud.waitRecord(isEnded(sessionId), 'the session ends')
  t.equal(ended.reason, 'meter-fault', 'the meter cannot be read: meter-fault')
  t.ok(ended.meterEndWh <= atUnplug + WH_EPS && ended.meterEndWh > e0 + 1, `at the last good reading (${ended.meterEndWh})`)
  await waitFor(() => cloud.outlet('E1')?.state === 'fault', 'E1 in fault')
  // Plug it back: same link names, the site powers up with its registers where they were.
  pty = await ptyPair(t, pty.dir)
  peer = await startPeer(t, { outlets: 1, rtu: pty.b, baud: 9600, energyKwh: atUnplug / 1000 })
  await daemon.waitLog(
    (l) => l.msg === 'bus open' && daemon.logs().filter((x) => x.msg === 'bus open').length >= 2,
    'the bus reopens by itself',
    60_000,
  )
  await cloud.waitRecord((r) => r.type === 'outlet.recovered' && r.outlet === 'E1' && r.seq > ended.seq, 'E1 recovers')
  await waitFor(() => cloud.outlet('E1')?.state === 'off', 'E1 off again')
  t.equal((await peer.outlet(1)).coil, false, 'the relay came back open')
  await peer.plug(1, 16)
  const e1 = (await peer.outlet(1)).energyWh
  t.ok(Math.abs(e1 - atUnplug) < WH_EPS, 'the register continues where it was')
  const { sessionId: sid } = await startSession(t, peer, cloud, { outlet: 1, userId: 'u1' })
  await waitFor(async () => (await peer.outlet(1)).energyWh > e1 + 1, 'charging over the new link')
  await peer.unplug(1)
  const last = await cloud.waitRecord(isEnded(sid), 'it ends')
  t.equal(last.reason, 'unplugged')
  const e2 = (await peer.outlet(1)).energyWh
  t.ok(Math.abs(last.energyWh - (e2 - e1)) < WH_EPS, 'billed from the meter', { billed: last.energyWh, registers: [e1, e2], record: last })
  t.equal((await daemon.stop('SIGTERM')).code, 0, 'clean exit')
})
