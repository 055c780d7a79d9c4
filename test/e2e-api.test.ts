/**
 * `outpost run` (the built daemon as a subprocess, against the pymodbus peer)
 * with `api` configured: the service starts the local API after the daemon, it
 * serves with the token, Node-RED runs in its own process and is served through it,
 * and SIGTERM stops everything cleanly (exit 0).
 */
import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { startDaemon, startPeer, tempDir, writeSiteConfig } from './helpers/e2e-kit.js'
import { parseMetrics } from './helpers/api-kit.js'
import { ensureNodeRedUser, passable } from './helpers/node-red-kit.js'

const TOKEN = 'e2e-api-token-42'

t.test('outpost run serves the local API and stops it cleanly', async (t) => {
  const dir = tempDir(t)
  // Run as root (as here), the daemon starts Node-RED as its own user, which reaches its user directory in dir.
  ensureNodeRedUser()
  passable(dir)
  const peer = await startPeer(t, { outlets: 2 })
  const file = writeSiteConfig({ dir, port: peer.port, outlets: 2 })
  const config = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
  // Port 0: a free one (the log line says which). Node-RED enabled: served by the same listener.
  config.api = { listen: '127.0.0.1:0', token: TOKEN }
  config.nodeRed = { enabled: true }
  writeFileSync(file, JSON.stringify(config, null, 2))
  const daemon = startDaemon(t, file)
  const listening = await daemon.waitLog((l) => l.msg === 'local API listening', 'local API listening')
  const base = String(listening.url)
  t.match(base, /^http:\/\/127\.0\.0\.1:\d+\/$/)
  const logs = daemon.logs()
  const running = logs.findIndex((l) => l.msg === 'outpost running')
  t.ok(running >= 0 && running < logs.findIndex((l) => l.msg === 'local API listening'), 'the daemon is running before the API listens')
  t.ok(!daemon.logs().some((l) => l.level === 'fatal'), 'nothing fatal')
  await daemon.waitLog((l) => l.msg === 'node-red started' && l.component === undefined, 'node-red started')
  t.notOk(daemon.logs().some((l) => l.msg === 'node-red did not start; charging continues without it'))
  // Its own process: the daemon does not wait for it to be ready.
  await daemon.waitLog((l) => l.msg === 'node-red running' && l.component === 'node-red', 'node-red running', 60_000)
  const editor = await fetch(base + 'red/')
  t.equal(editor.status, 200, 'the Node-RED editor is served on the loopback listener (no adminAuth needed there)')
  t.match(await editor.text(), /Node-RED/)
  t.equal((await fetch(base + 'red-api/billing/today.csv')).status, 401, "flows' own endpoints need the API token")

  const health = (await (await fetch(base + 'api/health')).json()) as { ok: boolean; uplink: string }
  t.match(health, { ok: true, uplink: 'disabled' })
  t.equal((await fetch(base + 'api/outlets')).status, 401, 'the token is needed')
  const auth = { authorization: `Bearer ${TOKEN}` }
  const outlets = (await (await fetch(base + 'api/outlets', { headers: auth })).json()) as { outlet: string }[]
  t.same(
    outlets.map((o) => o.outlet),
    ['E1', 'E2'],
  )
  const metrics = parseMetrics(await (await fetch(base + 'metrics', { headers: auth })).text())
  t.equal(metrics.get('outpost_bus_open{bus="site"}'), 1)
  t.ok(metrics.get('outpost_journal_head_seq')! >= 1)
  t.ok(!JSON.stringify(daemon.logs()).includes(TOKEN), 'the token never reaches the log')

  const exit = await daemon.stop('SIGTERM')
  t.equal(exit.code, 0, 'clean stop')
  t.ok(daemon.logs().some((l) => l.msg === 'outpost stopped'))
  await t.rejects(fetch(base + 'api/health'), 'the API is gone with the daemon')
})
