/**
 * Node-RED under its own unit, as the installed units run it (systemd/outpost-node-red.service):
 * `outpost run` (the built daemon, a subprocess) is given the channel credential and a runtime
 * directory as systemd's LoadCredential= and RuntimeDirectory= give them, and listens; this test
 * plays systemd for Node-RED: it starts `dist/daemon/nodered/child.js --connect <socket>` as
 * outpost-node-red with its own copy of the credential, kills it with SIGKILL, and starts it again.
 * A connection without the credential is never heard.
 */
import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { chownSync, existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import { startDaemon, startPeer, tempDir, waitFor, writeSiteConfig, type DaemonProc } from './helpers/e2e-kit.js'
import { ensureNodeRedUser, installedLayout, httpClient, passable } from './helpers/node-red-kit.js'
import { CHILD_PATH } from '../daemon/nodered/supervisor.js'
import { CHANNEL_CREDENTIAL, CHANNEL_SOCKET } from '../daemon/nodered/wire.js'

const TOKEN = 'unit-test-api-token'
const AUTH = { authorization: `Bearer ${TOKEN}` }
const CHANNEL_TOKEN = 'the-node-red-channel-credential-0123456789'

let daemon: DaemonProc
let base = ''
let socket = ''
let nrCreds = ''
let userDir = ''
let storageDir = ''
let configFile = ''
const ids = ensureNodeRedUser()

const http = httpClient(() => base)
const api = (method: string, path: string, body?: unknown, headers: Record<string, string> = AUTH) => http(method, path, { body, headers })
const status = async () =>
  (await api('GET', '/api/status')).json.nodeRed as { state: string; supervisor: string; pid: number | null; restarts: number }

/** Node-RED as its unit starts it: its user, its credential, the daemon's socket. */
function startUnit(): ChildProcess {
  const child = spawn(process.execPath, ['--max-old-space-size=256', CHILD_PATH, '--connect', socket], {
    cwd: userDir,
    env: { PATH: process.env.PATH, HOME: userDir, CREDENTIALS_DIRECTORY: nrCreds },
    stdio: ['ignore', 'ignore', 'inherit'],
    ...(ids ? { uid: ids.uid, gid: ids.gid } : {}),
  })
  t.teardown(() => void child.kill('SIGKILL'))
  return child
}

t.before(async () => {
  const dir = tempDir(t, 'outpost-nr-unit-')
  passable(dir)
  const peer = await startPeer(t, { outlets: 2 })
  const written = writeSiteConfig({
    dir,
    port: peer.port,
    outlets: 2,
    extra: { api: { listen: '127.0.0.1:0', token: TOKEN }, nodeRed: { enabled: true }, logging: { level: 'info' } },
  })
  ;({ configFile, storageDir } = installedLayout(dir, written))
  mkdirSync(storageDir, { mode: 0o750 })
  // What systemd gives outpost.service: $CREDENTIALS_DIRECTORY/node-red-channel and $RUNTIME_DIRECTORY (0755).
  const creds = join(dir, 'creds-daemon')
  mkdirSync(creds, { mode: 0o500 })
  writeFileSync(join(creds, CHANNEL_CREDENTIAL), `${CHANNEL_TOKEN}\n`, { mode: 0o400 })
  const run = join(dir, 'run')
  mkdirSync(run, { mode: 0o755 })
  socket = join(run, CHANNEL_SOCKET)
  // And what it gives outpost-node-red.service: its own copy, and its StateDirectory.
  nrCreds = join(dir, 'creds-node-red')
  mkdirSync(nrCreds, { mode: 0o500 })
  writeFileSync(join(nrCreds, CHANNEL_CREDENTIAL), `${CHANNEL_TOKEN}\n`, { mode: 0o400 })
  userDir = join(dir, 'journal-node-red')
  mkdirSync(userDir, { mode: 0o700 })
  if (ids) {
    for (const p of [nrCreds, join(nrCreds, CHANNEL_CREDENTIAL), userDir]) chownSync(p, ids.uid, ids.gid)
  }
  daemon = startDaemon(t, configFile, { CREDENTIALS_DIRECTORY: creds, RUNTIME_DIRECTORY: run })
  const listening = await daemon.waitLog((l) => l.msg === 'local API listening', 'local API listening')
  base = String(listening.url).replace(/\/$/, '')
  await daemon.waitLog((l) => l.msg === 'node-red runs under its own unit: waiting for it on the channel socket', 'the daemon waits for Node-RED')
})

t.test('the daemon does not start Node-RED itself: it waits on its socket', async (t) => {
  t.match(await status(), { state: 'waiting', supervisor: 'unit', pid: null })
  t.equal(statSync(socket).mode & 0o777, 0o666, 'anyone may connect')
  const editor = await api('GET', '/red/', undefined, {})
  t.equal(editor.status, 503, 'the editor answers 503 until it is there')
  t.match(editor.json, { error: { code: 'node-red-unavailable' } })
})

t.test('a connection without the credential is closed unheard', async (t) => {
  const head0 = (await api('GET', '/api/records?limit=1')).json.head
  for (const first of [
    { t: 'auth', token: 'not-the-credential-at-all-xxxxxxxxxxxxx' },
    { t: 'command', n: 1, p: { id: 'sneaky', action: 'set-wallet', userId: 'x', currency: 'CAD', balance: 1 } },
  ]) {
    const c = connect(socket)
    let heard = ''
    c.on('data', (d) => (heard += d.toString()))
    await new Promise<void>((r) => c.once('connect', () => r()))
    c.write(JSON.stringify(first) + '\n')
    await new Promise<void>((r) => c.once('close', () => r()))
    t.equal(heard, '', `${first.t} first: closed, nothing said to it (no hello, no settings)`)
  }
  t.equal((await api('GET', '/api/records?limit=1')).json.head, head0, 'nothing applied or journaled')
  t.equal((await status()).state, 'waiting')
})

t.test('Node-RED under its unit connects, prepares its own user directory, and its nodes work over the channel', async (t) => {
  const child = startUnit()
  const running = await daemon.waitLog((l) => l.msg === 'node-red running', 'node-red running')
  t.match(running, { supervisor: 'unit', pid: child.pid })
  t.match(await status(), { state: 'running', supervisor: 'unit', pid: child.pid, restarts: 0 })
  const flows = join(userDir, 'flows.json')
  t.ok(existsSync(flows) && existsSync(join(userDir, '.outpost-credential-secret')), 'it seeded its flow file and made its credential key')
  if (ids) t.equal(statSync(flows).uid, ids.uid, "as its own user: the daemon's user never writes there")
  t.equal((await api('GET', '/red/', undefined, {})).status, 200, 'the editor through the daemon')
  const z = 'c0ffee0000000000'
  const read = [
    'const out = {}',
    'for (const p of msg.payload.paths) {',
    '  try { out[p] = "read " + fs.readFileSync(p).length } catch (err) { out[p] = err.code || String(err) }',
    '}',
    'msg.payload = out',
    'return msg',
  ].join('\n')
  const nodes = [
    { id: 'c0ffee0000000001', type: 'http in', z, url: '/unit/command', method: 'post', wires: [['c0ffee0000000002']] },
    { id: 'c0ffee0000000002', type: 'outpost-command', z, wires: [['c0ffee0000000003']] },
    { id: 'c0ffee0000000003', type: 'http response', z, wires: [] },
    { id: 'c0ffee0000000004', type: 'http in', z, url: '/unit/read', method: 'post', wires: [['c0ffee0000000005']] },
    { id: 'c0ffee0000000005', type: 'function', z, func: read, outputs: 1, libs: [{ var: 'fs', module: 'fs' }], wires: [['c0ffee0000000006']] },
    { id: 'c0ffee0000000006', type: 'http response', z, wires: [] },
  ]
  t.equal((await api('POST', '/red/flow', { id: z, label: 'unit', nodes }, {})).status, 200, 'a flow deploys')
  const r = await waitFor(async () => {
    const x = await api('POST', '/red-api/unit/command', { id: 'unit-wallet', action: 'set-wallet', userId: 'u1', currency: 'CAD', balance: 500 })
    return x.status === 200 ? x : undefined
  }, 'the flow answers')
  t.match(r.json, { id: 'unit-wallet', ok: true }, 'a command through the outpost-command node, the channel and the gateway')
  if (ids) {
    // As the installer lays them out: /var/lib/outpost 0750 and /etc/outpost 0750 (the daemon's), site.json 0640.
    const paths = [join(storageDir, 'gateway-key.pem'), join(storageDir, 'journal', 'CURRENT'), configFile]
    t.ok(
      paths.every((p) => existsSync(p)),
      'they exist',
    )
    const got = (await api('POST', '/red-api/unit/read', { paths })).json as Record<string, string>
    t.same(got, Object.fromEntries(paths.map((p) => [p, 'EACCES'])), 'a flow reading the key, the journal or the config file: EACCES')
  }
})

t.test('kill -9 of Node-RED under its unit: the daemon runs on; the unit restarts it; flows intact', async (t) => {
  const before = await status()
  process.kill(before.pid!, 'SIGKILL')
  await daemon.waitLog((l) => l.msg === 'node-red disconnected; charging goes on (its unit restarts it)', 'node-red disconnected')
  t.match(await status(), { state: 'waiting', pid: null })
  t.equal((await api('GET', '/red-api/unit/command')).status, 503, "flows' endpoints answer 503 meanwhile")
  t.ok(daemon.running(), 'the daemon runs on')
  // systemd's Restart=always: a new Node-RED connects.
  const again = startUnit()
  await waitFor(async () => (await status()).state === 'running', 'Node-RED back')
  t.match(await status(), { state: 'running', pid: again.pid, restarts: 1 })
  const r = await waitFor(async () => {
    const x = await api('POST', '/red-api/unit/command', { id: 'unit-wallet', action: 'set-wallet', userId: 'u1', currency: 'CAD', balance: 500 })
    return x.status === 200 ? x : undefined
  }, 'the deployed flow answers again')
  t.match(r.json, { id: 'unit-wallet', ok: true }, 'the deployed flow is intact; the same id gets its first result')
  const exited = new Promise((res) => again.once('exit', (code) => res(code)))
  t.equal((await daemon.stop('SIGTERM')).code, 0, 'the daemon stops cleanly')
  t.equal(await exited, 1, 'and Node-RED, its channel closed, exits (systemd starts a new one, which waits for the daemon)')
})
