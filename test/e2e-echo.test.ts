/**
 * End to end over an RS-485 adapter that echoes every request: the built daemon on
 * one socat pty pair, test/fixtures/echo_relay.py between it and a second pair, the
 * site peer (pymodbus) on the far end. With `echo: true` a whole session runs (start,
 * relay closed by FC05, billed from the meter, unplug, relay opened). Without it the
 * first poll names the fix, once in the log, and the outlet faults, while an outlet
 * on another bus charges.
 */
import t from 'tap'
import { join } from 'node:path'
import {
  ROOT,
  PY,
  ptyPair,
  startCloud,
  startDaemon,
  startPeer,
  startProc,
  unplugSession,
  tempDir,
  waitFor,
  writeSiteConfig,
} from './helpers/e2e-kit.js'
import { startMosquitto } from './helpers/mosquitto.js'
import type { Test } from 'tap'

/** gateway ↔ pty pair ↔ echo relay ↔ pty pair ↔ site peer; returns the gateway's path and the peer. */
async function echoingAdapter(t: Test, outlets: number): Promise<{ path: string; peer: Awaited<ReturnType<typeof startPeer>> }> {
  const gw = await ptyPair(t)
  const dev = await ptyPair(t)
  const peer = await startPeer(t, { outlets, rtu: dev.b, baud: 9600 })
  const relay = startProc(t, PY, [join(ROOT, 'test', 'fixtures', 'echo_relay.py'), '--gateway', gw.b, '--device', dev.a])
  await waitFor(() => relay.out.includes('READY') || (!relay.running() && 'exited'), 'echo relay READY', 30_000).then((v) => {
    if (v === 'exited') throw new Error(`echo relay exited:\n${relay.err.join('\n')}`)
  })
  return { path: gw.a, peer }
}

t.test('a full session on an RS-485 bus whose adapter echoes (echo: true)', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const { path, peer } = await echoingAdapter(t, 2)
  const config = writeSiteConfig({ dir, rtuPath: path, bus: { echo: true }, outlets: 2, brokerUrl: broker.url })
  const cloud = await startCloud(t, broker.url, dir)
  const daemon = startDaemon(t, config)
  await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')

  await unplugSession(t, peer, cloud, 'through the echoing adapter')
  t.equal((await peer.outlet(2)).coil, false, 'the other outlet was never switched')
  t.notOk(
    cloud.records().some((r) => r.type === 'outlet.fault'),
    'no outlet faulted',
    { status: cloud.outlet('E2') },
  )
  const echoLines = daemon.logs().filter((l) => /echo/i.test(String(l.err ?? '')) || String(l.code ?? '').startsWith('BUS_ECHO'))
  t.same(echoLines, [], 'no echo error in the log')
  t.equal((await daemon.stop('SIGTERM')).code, 0, 'clean exit')
})

t.test('echo not set on an echoing adapter: the first poll says so, once; the outlet faults; another bus charges', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const { path, peer } = await echoingAdapter(t, 1)
  const plain = await ptyPair(t)
  const other = await startPeer(t, { outlets: 1, rtu: plain.b, baud: 9600 })
  const config = writeSiteConfig({
    dir,
    rtuPath: path,
    outlets: 1,
    brokerUrl: broker.url,
    extraBuses: [{ id: 'plain', type: 'modbus-rtu', path: plain.a, baudRate: 9600, timeoutMs: 500, retries: 1 }],
    extraOutlets: [
      { id: 'X1', bus: 'plain', meter: { model: 'eastron-sdm120', unit: 1 }, relay: { model: 'modbus-coil', unit: 100, coil: 0 }, plan: 'standard' },
    ],
  })
  const cloud = await startCloud(t, broker.url, dir)
  const daemon = startDaemon(t, config)
  await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')
  const fault = await cloud.waitRecord((r) => r.type === 'outlet.fault' && r.outlet === 'E1', 'outlet.fault for E1')
  t.match(fault, { detail: /BUS_ECHO_UNEXPECTED.*set echo: true on bus "site"/ }, 'the fault names the fix')
  await waitFor(() => cloud.outlet('E1')?.state === 'fault', 'E1 reported in fault')
  const refused = await cloud.command({ action: 'start', outlet: 'E1', userId: 'u1' })
  t.notOk(refused.ok, 'no session on the misconfigured bus')

  // The other bus is untouched: a session there charges.
  await other.plug(1, 16)
  const x0 = (await other.outlet(1)).energyWh
  t.ok((await cloud.command({ action: 'set-wallet', userId: 'u1', currency: 'CAD', balance: 100_000 })).ok, 'wallet of u1')
  const start = await cloud.start('X1', 'u1')
  t.ok(start.ok, 'X1 starts: ' + JSON.stringify(start))
  await waitFor(async () => (await other.outlet(1)).energyWh > x0 + 1, 'X1 charging')

  // Let the echoing bus be polled for a while: the diagnosis stays one line.
  const polls = (await peer.outlet(1)).polls
  await waitFor(async () => (await peer.outlet(1)).polls >= polls + 20, '20 more requests reached the meter on the echoing bus')
  const said = daemon.logs().filter((l) => l.msg === 'bus echo setting does not match the adapter')
  t.equal(said.length, 1, 'logged once', { said })
  t.match(said[0], { bus: 'site', code: 'BUS_ECHO_UNEXPECTED', err: /set echo: true on bus "site"/ })
  t.equal((await daemon.stop('SIGTERM')).code, 0, 'clean exit')
})
