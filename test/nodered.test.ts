/**
 * Node-RED, for real: a Daemon in this process (journal on disk, its bus against the
 * in-process Modbus TCP simulator), Node-RED started by startNodeRed in its own process
 * (as its own user when the tests run as root) and proxied by the real local API
 * (daemon/http), its handles mounted as daemon/service.ts does, the shipped flows seeded
 * into the user directory, Outpost's nodes loaded from flows/ and reaching the daemon over
 * the channel. A test flow deployed through the admin API drives the command and
 * outlet-state nodes over http-in endpoints and reports the events node's messages to a
 * collector server here.
 */
import t from 'tap'
import http from 'node:http'
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { readFile } from 'node:fs/promises'
import { chromium } from 'playwright-core'
import { startSim, type Sim } from '../drivers/index.js'
import { Daemon } from '../daemon/daemon.js'
import { systemClock } from '../daemon/clock.js'
import { createLogger } from '../daemon/log.js'
import { validateConfig } from '../daemon/config.js'
import { startNodeRed, shippedFlows, prepareUserDir, nodeRedPaths, type NodeRedHandle } from '../daemon/nodered/index.js'
import type { CommandResult, JournalRecord, SiteConfig } from '../core/types.js'
import { tempDir, waitFor, writeSiteConfig } from './helpers/e2e-kit.js'
import { LocalApi } from '../daemon/http/server.js'
import { ensureNodeRedUser, httpClient, passable } from './helpers/node-red-kit.js'

const CHROMIUM = '/usr/bin/chromium'
const USER = 'installer'
const PASSWORD = 'outpost-node-red-test'
// bcrypt of PASSWORD, made with the bcryptjs Node-RED ships: require('bcryptjs').hashSync(PASSWORD, 8)
const HASH = '$2b$08$vVmNK1VDdiGAqRm4K/74wO2C0h7zOYdCc7h36GeYheqjYFxBnVro.'
const API_TOKEN = 'local-api-token'
const BEARER = `Bearer ${API_TOKEN}`

interface Posted {
  path: string
  body: any
}

/** A local HTTP server that keeps every POST (the webhook's target and the test flow's collector). */
async function collector(t: { teardown(fn: () => unknown): void }): Promise<{ url: string; posts: Posted[] }> {
  const posts: Posted[] = []
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8')
      let body: unknown = text
      try {
        body = JSON.parse(text)
      } catch {
        // kept as text
      }
      posts.push({ path: req.url ?? '', body })
      res.writeHead(204).end()
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))))
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, posts }
}

const logLines: Record<string, any>[] = []
const logStream = new Writable({
  write(chunk: Buffer, _enc, cb) {
    for (const l of chunk.toString('utf8').split('\n')) if (l.trim()) logLines.push(JSON.parse(l) as Record<string, any>)
    cb()
  },
})

let sim: Sim
let daemon: Daemon
let config: SiteConfig
let handle: NodeRedHandle
let base: string
let hooks: { url: string; posts: Posted[] }
let apiServer: http.Server
let api: LocalApi
/** The daemon's listeners before Node-RED started (the local API has its own). */
let apiListeners = 0
const daemonListeners = (): number => daemon.listenerCount('record') + daemon.listenerCount('status') + daemon.listenerCount('result')
let token = ''
const measured: { startMs?: number; rssMb?: number } = {}

t.before(async () => {
  const dir = tempDir(t, 'outpost-nodered-')
  ensureNodeRedUser()
  passable(dir)
  hooks = await collector(t)
  // The shipped fault flow reads its webhook URL from the environment (or the tab's env).
  process.env.OUTPOST_FAULT_WEBHOOK_URL = `${hooks.url}/hook`
  sim = await startSim({ outlets: 2, port: 0, script: false, speed: 1 })
  t.teardown(() => sim.close())
  const file = writeSiteConfig({ dir, port: sim.port, outlets: 2 })
  const raw = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
  raw.api = { listen: '127.0.0.1:8080', token: API_TOKEN }
  // Both bays on one 16 A circuit: a second session waits its turn (queued).
  raw.circuits = [{ id: 'row', maxA: 16 }]
  for (const o of raw.outlets as Record<string, unknown>[]) Object.assign(o, { circuit: 'row', ratingA: 16 })
  raw.nodeRed = { enabled: true, adminAuth: { username: USER, passwordHash: HASH } }
  const v = validateConfig(raw)
  if (!v.ok) throw new Error(JSON.stringify(v.problems))
  config = v.config
  const logger = createLogger('debug', logStream)
  daemon = new Daemon({ config, clock: systemClock, logger, version: 'test' })
  await daemon.start()
  t.teardown(() => daemon.stop())

  // The real local API on a free port, mounting the handles as daemon/service.ts does.
  api = new LocalApi({ daemon, config: { ...config.api!, listen: '127.0.0.1:0' }, logger, now: () => Date.now() })
  await api.start()
  t.teardown(() => api.stop())
  apiServer = api.server
  base = `http://127.0.0.1:${api.address()!.port}`

  apiListeners = daemonListeners()
  handle = await startNodeRed({ daemon, config, server: apiServer, logger })
  api.mount(handle.adminRoot, handle.admin)
  api.mount(handle.nodeRoot!, handle.node!, { token: true })
  t.teardown(() => handle.stop())
  await handle.ready!()
  measured.startMs = handle.status!().startMs ?? undefined
  const vmRss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${handle.pid!()}/status`, 'utf8'))
  measured.rssMb = vmRss ? Math.round((Number(vmRss[1]) / 1024) * 10) / 10 : undefined
})

const client = httpClient(() => base)
const req = (method: string, path: string, opts: { body?: unknown; text?: string; auth?: string } = {}) =>
  client(method, path, { body: opts.body, text: opts.text, headers: opts.auth ? { authorization: opts.auth } : {} })

const admin = (method: string, path: string, body?: unknown) => req(method, `/red${path}`, { body, auth: `Bearer ${token}` })
/** POST to the test flow's command endpoint: what comes back is the outpost-command node's msg.payload. */
const command = async (body: unknown): Promise<CommandResult> =>
  (await req('POST', '/red-api/test/command', { body, auth: BEARER })).json as CommandResult
const journal = async (): Promise<JournalRecord[]> => daemon.records!.read(1, 10_000)

t.test('Node-RED starts with the shipped flows and the outpost nodes, behind the password', async (t) => {
  t.comment(`Node-RED start: ${measured.startMs} ms, its process's RSS: ${measured.rssMb} MiB`)
  t.match(
    logLines.find((l) => l.msg === 'node-red starting'),
    { component: 'node-red', adminRoot: '/red', nodeRoot: '/red-api', seeded: true },
    'one info line says where it runs',
  )
  t.match(
    logLines.find((l) => l.msg === 'node-red running'),
    { component: 'node-red', adminRoot: '/red', auth: true, pid: handle.pid!() },
  )
  t.not(handle.pid!(), process.pid, 'in a process of its own')

  const flowFile = join(`${config.storage.dir}-node-red`, 'flows.json')
  t.equal(handle.flowFile, flowFile, 'the flow file lives in the user directory beside storage.dir, not in it')
  t.same(JSON.parse(readFileSync(flowFile, 'utf8')), shippedFlows(), 'seeded from the shipped flows on first start')
  t.ok(existsSync(join(handle.userDir!, '.outpost-credential-secret')), 'the credential key is kept in the user directory')

  t.equal((await req('GET', '/red/flows')).status, 401, 'the admin API refuses a request without a token')
  t.equal((await req('GET', '/red/nodes')).status, 401)
  const wrong = await req('POST', '/red/auth/token', {
    body: { client_id: 'node-red-admin', grant_type: 'password', scope: '*', username: USER, password: 'not-it' },
  })
  t.not(wrong.status, 200, 'a wrong password gets no token')
  t.notOk(wrong.json?.access_token)
  const login = await req('POST', '/red/auth/token', {
    body: { client_id: 'node-red-admin', grant_type: 'password', scope: '*', username: USER, password: PASSWORD },
  })
  t.equal(login.status, 200, 'the configured user and password get a token')
  token = login.json.access_token as string
  t.ok(token)

  const nodes = await admin('GET', '/nodes')
  t.equal(nodes.status, 200)
  const ours = (nodes.json as { module: string; types: string[]; enabled: boolean; err?: string }[]).filter((s) => s.module === 'outpost-node-red')
  t.same(ours.flatMap((s) => s.types).sort(), ['outpost-command', 'outpost-events', 'outpost-outlet-state'], "Outpost's three nodes are registered")
  t.ok(
    ours.every((s) => s.enabled && !s.err),
    'and loaded without error',
  )

  const flows = await admin('GET', '/flows')
  t.equal(flows.status, 200)
  const running = flows.json as { id: string; type: string; label?: string }[]
  t.same(
    running
      .filter((n) => n.type === 'tab')
      .map((n) => n.label)
      .sort(),
    ['Daily billing CSV', 'Fault notification (webhook)'],
    'both shipped flows are running',
  )
  t.equal(running.filter((n) => n.type === 'outpost-events').length, 2)
  const complaints = logLines.filter((l) => l.component === 'node-red' && (l.level === 'error' || l.level === 'warn'))
  t.same(complaints, [], 'no warning or error while loading')

  const examples = await admin('GET', '/library/examples/flows/outpost-node-red')
  t.equal(examples.status, 200)
  t.same(examples.json, [{ fn: 'daily-billing-csv' }, { fn: 'fault-webhook' }], 'the shipped flows are in the editor under Import > Examples')

  const editor = await req('GET', '/red')
  t.equal(editor.status, 200, 'the editor page itself loads (it asks for the login)')
  t.match(editor.text, /<title>Outpost e2e · Node-RED<\/title>/)
  const open = await req('GET', '/red-api/billing/today.csv')
  t.equal(open.status, 401, `flows' endpoints need the API token, as every API route: ${open.text}`)
  t.equal((await req('GET', '/red-api/billing/today.csv', { auth: 'Bearer wrong-token-xx' })).status, 401)
  t.equal((await req('GET', '/red-api/billing/today.csv', { auth: `Bearer ${token}` })).status, 401, "an editor token is not the API's")
})

t.test('a test flow deploys through the admin API', async (t) => {
  const z = 'feed000000000001'
  const wrap = 'msg.payload = { topic: msg.topic, payload: msg.payload, previous: msg.previous, changed: msg.changed }\nreturn msg'
  const fn = (id: string, next: string) => ({ id, type: 'function', z, name: '', func: wrap, outputs: 1, libs: [], x: 300, y: 100, wires: [[next]] })
  const post = (id: string, path: string) => ({
    id,
    type: 'http request',
    z,
    method: 'POST',
    ret: 'txt',
    url: `${hooks.url}${path}`,
    paytoqs: 'ignore',
    x: 500,
    y: 100,
    wires: [[]],
  })
  const nodes = [
    { id: 'feed000000000002', type: 'http in', z, url: '/test/command', method: 'post', x: 100, y: 100, wires: [['feed000000000003']] },
    { id: 'feed000000000003', type: 'outpost-command', z, name: 'test command', x: 300, y: 100, wires: [['feed000000000004']] },
    { id: 'feed000000000004', type: 'http response', z, x: 500, y: 100, wires: [] },
    { id: 'feed000000000005', type: 'http in', z, url: '/test/state', method: 'get', x: 100, y: 200, wires: [['feed000000000006']] },
    { id: 'feed000000000006', type: 'outpost-outlet-state', z, outlet: '', onChange: false, x: 300, y: 200, wires: [['feed000000000007']] },
    { id: 'feed000000000007', type: 'http response', z, x: 500, y: 200, wires: [] },
    {
      id: 'feed000000000008',
      type: 'outpost-events',
      z,
      types: ['session.started', 'session.ended', 'outlet.fault', 'outlet.recovered', 'meter.reconciliation', 'gateway.started'],
      outlet: '',
      statuses: 'changes',
      x: 100,
      y: 300,
      wires: [['feed000000000009']],
    },
    fn('feed000000000009', 'feed00000000000a'),
    post('feed00000000000a', '/events'),
    { id: 'feed00000000000b', type: 'outpost-outlet-state', z, outlet: 'E1', onChange: true, x: 100, y: 400, wires: [['feed00000000000c']] },
    fn('feed00000000000c', 'feed00000000000d'),
    post('feed00000000000d', '/state-changes'),
    {
      id: 'feed00000000000e',
      type: 'outpost-events',
      z,
      types: ['outlet.fault'],
      outlet: 'E2',
      statuses: 'none',
      x: 100,
      y: 500,
      wires: [['feed00000000000f']],
    },
    fn('feed00000000000f', 'feed000000000010'),
    post('feed000000000010', '/e2-faults'),
    // GET /test/state/:outlet: msg.outlet from the path; an unknown outlet is the node's error, caught into a 404.
    { id: 'feed000000000011', type: 'http in', z, url: '/test/state/:outlet', method: 'get', x: 100, y: 600, wires: [['feed000000000012']] },
    {
      id: 'feed000000000012',
      type: 'function',
      z,
      func: 'msg.outlet = msg.req.params.outlet\nreturn msg',
      outputs: 1,
      libs: [],
      x: 300,
      y: 600,
      wires: [['feed000000000013']],
    },
    { id: 'feed000000000013', type: 'outpost-outlet-state', z, outlet: '', onChange: false, x: 500, y: 600, wires: [['feed000000000014']] },
    { id: 'feed000000000014', type: 'http response', z, x: 700, y: 600, wires: [] },
    { id: 'feed000000000015', type: 'catch', z, scope: ['feed000000000013'], uncaught: false, x: 300, y: 660, wires: [['feed000000000016']] },
    {
      id: 'feed000000000016',
      type: 'function',
      z,
      func: 'msg.statusCode = 404\nmsg.payload = { error: msg.error.message }\nreturn msg',
      outputs: 1,
      libs: [],
      x: 500,
      y: 660,
      wires: [['feed000000000014']],
    },
  ]
  const added = await admin('POST', '/flow', { id: z, label: 'test', nodes })
  t.equal(added.status, 200, added.text)
  const flowFile = JSON.parse(readFileSync(handle.flowFile!, 'utf8')) as { id: string }[]
  t.ok(
    flowFile.some((n) => n.id === 'feed000000000003'),
    'the deploy is saved to the flow file in the user directory',
  )
  t.ok(
    flowFile.some((n) => n.id === '0a7f1a0000000001'),
    'beside the shipped flows',
  )
})

t.test('the events node sends this boot’s gateway.started once', async (t) => {
  const boot = await waitFor(
    () => hooks.posts.find((p) => p.path === '/events' && p.body.topic === 'gateway.started'),
    'gateway.started from the events node',
    30_000,
  )
  t.equal(boot.body.payload.bootId, daemon.bootId)
  t.equal(boot.body.payload.seq, (await journal()).find((r) => r.type === 'gateway.started' && r.bootId === daemon.bootId)!.seq)
  t.notOk(
    hooks.posts.some((p) => p.path === '/e2-faults' && p.body.topic === 'gateway.started'),
    'a node filtered to one outlet does not get it',
  )
})

t.test('the command node goes through the gateway: the same validation, journal and results', async (t) => {
  await waitFor(() => Object.values(daemon.engineState.outlets).every((o) => o.last !== undefined && o.last !== null), 'both outlets have been read')
  const head0 = daemon.records!.head()
  const invalid = await command({ action: 'start', outlet: 'E1' })
  t.equal(invalid.ok, false)
  t.match(
    invalid,
    { ok: false, error: { code: 'invalid-command', message: /userId: is required/ } },
    'a malformed command is refused with invalid-command',
  )
  t.match(invalid.id, /^node-red-[0-9a-f-]{36}$/, 'an id was generated for it')
  t.equal(daemon.records!.head(), head0, 'and nothing was journaled')
  await waitFor(
    () =>
      logLines.find((l) => l.component === 'node-red' && l.level === 'error' && l.node?.type === 'outpost-command' && /invalid-command/.test(l.msg)),
    'the node reported the error',
  )
  const notObject = (await req('POST', '/red-api/test/command', { text: 'start E1', auth: BEARER })).json
  t.match(notObject, { ok: false, error: { code: 'invalid-command' } }, 'a payload that is not a command is invalid too')

  const wallet = await command({ id: 'nr-wallet-1', action: 'set-wallet', userId: 'u-nr', currency: 'CAD', balance: 5000 })
  t.same(wallet.ok, true, JSON.stringify(wallet))
  t.same(await daemon.records!.commandResult('nr-wallet-1'), wallet, 'the result is in the journal’s command ledger')

  const started = await waitFor(async () => {
    const r = await command({ action: 'start', outlet: 'E1', userId: 'u-nr' })
    return !r.ok && r.error.code === 'outlet-not-ready' ? undefined : r
  }, 'start past outlet-not-ready')
  t.equal(started.ok, true, JSON.stringify(started))
  t.same(await daemon.records!.commandResult(started.id), started)
  const rec = (await journal()).find((r) => r.type === 'session.started' && r.outlet === 'E1')
  t.match(rec, { type: 'session.started', outlet: 'E1', userId: 'u-nr', trigger: 'activation' }, 'session.started is journaled')

  const busy = await command({ action: 'start', outlet: 'E1', userId: 'u-nr' })
  t.match(busy, { ok: false, error: { code: 'outlet-busy' } }, "the site's own refusal comes back as it is")

  sim.plug(1, { needWh: 100_000, maxA: 16 })
  await waitFor(() => (daemon.outletStatuses().find((s) => s.outlet === 'E1')?.energyWh ?? 0) > 1, 'E1 charges a little')

  const states = await req('GET', '/red-api/test/state', { auth: BEARER })
  t.equal(states.status, 200)
  t.same(
    (states.json as { outlet: string }[]).map((s) => s.outlet),
    ['E1', 'E2'],
    'the outlet-state node reports every outlet',
  )
  t.match((states.json as { outlet: string; state: string }[])[0], { outlet: 'E1', state: 'charging', userId: 'u-nr' })

  const one = await req('GET', '/red-api/test/state/E1', { auth: BEARER })
  t.match(one.json, { outlet: 'E1', state: 'charging' }, 'msg.outlet picks one outlet')
  const unknown = await req('GET', '/red-api/test/state/Z9', { auth: BEARER })
  t.equal(unknown.status, 404, 'an unknown outlet is an error of the node (a Catch node sees it)')
  t.same(unknown.json, { error: 'unknown outlet "Z9" (outlets: E1, E2)' })

  const stop = await command({ id: 'nr-stop-1', action: 'stop', outlet: 'E1', by: 'manager' })
  t.equal(stop.ok, true, JSON.stringify(stop))
  const ended = await waitFor(
    async () =>
      (await journal()).find((r): r is Extract<JournalRecord, { type: 'session.ended' }> => r.type === 'session.ended' && r.outlet === 'E1'),
    'session.ended',
  )
  t.equal(ended.reason, 'manager-stopped')
  const head1 = daemon.records!.head()
  t.same(await command({ id: 'nr-stop-1', action: 'stop', outlet: 'E1', by: 'manager' }), stop, 'a repeated id gets the first result')
  t.equal(daemon.records!.head(), head1, 'and changes nothing')
  sim.unplug(1)

  const sources = logLines.filter((l) => l.msg === 'session started' && l.outlet === 'E1')
  t.equal(sources.length, 1)
})

t.test('the events node sends records and state changes; the outlet-state node sends E1’s changes', async (t) => {
  const events = () => hooks.posts.filter((p) => p.path === '/events').map((p) => p.body)
  await waitFor(() => events().some((e) => e.topic === 'session.ended'), 'session.ended from the events node')
  const started = events().find((e) => e.topic === 'session.started')
  const records = await journal()
  t.same(
    started.payload,
    records.find((r) => r.type === 'session.started'),
    'topic = record type, payload = the journaled record',
  )
  t.same(
    events().find((e) => e.topic === 'session.ended').payload,
    records.find((r) => r.type === 'session.ended'),
  )
  const e1 = events()
    .filter((e) => e.topic === 'outlet.status' && e.payload.outlet === 'E1')
    .map((e) => `${e.previous}>${e.payload.state}`)
  t.same(e1, ['off>pending', 'pending>charging', 'charging>off'], 'state changes are sent')
  t.equal(new Set(e1).size, e1.length, 'only changes, not every reading')

  const changes = await waitFor(() => {
    const c = hooks.posts.filter((p) => p.path === '/state-changes').map((p) => p.body)
    return c.some((x) => x.payload?.state !== 'charging' && x.previous === 'charging') && c
  }, 'E1 leaves charging (on-change outlet-state)')
  t.ok(
    changes.every((c: any) => c.topic === 'E1' && c.payload.outlet === 'E1' && c.changed === 'E1'),
    'only E1, with the outlet as topic',
  )
  t.same(
    changes.map((c: any) => `${c.previous}>${c.payload.state}`),
    ['off>pending', 'pending>charging', 'charging>off'],
    'each change of E1, once',
  )
})

t.test('the shipped CSV flow appends a line per session.ended, with a header, and serves the day', async (t) => {
  const ended = (await journal()).find((r): r is Extract<JournalRecord, { type: 'session.ended' }> => r.type === 'session.ended')!
  const dir = join(handle.userDir!, 'billing-csv')
  const file = await waitFor(() => existsSync(dir) && readdirSync(dir).find((f) => /^billing-\d{4}-\d{2}-\d{2}\.csv$/.test(f)), 'a billing CSV')
  const day = new Intl.DateTimeFormat('en-CA', { timeZone: config.site.timezone, year: 'numeric', month: '2-digit', day: '2-digit' }).format(
    new Date(ended.endedAt),
  )
  t.equal(file, `billing-${day}.csv`, 'named after the site-local day the session ended')
  const text = await readFile(join(dir, file), 'utf8')
  const [header, line, ...rest] = text.trimEnd().split('\n')
  t.equal(
    header,
    'seq,sessionId,outlet,userId,planId,trigger,startedAt,endedAt,reason,durationS,energyWh,currency,activationFee,total,amount,offline',
  )
  t.same(rest, [], 'one line per session.ended')
  const cols = header!.split(',')
  const row = Object.fromEntries(line!.split(',').map((v, i) => [cols[i], v]))
  t.equal(Number(row.total), ended.total, 'the line carries the record’s total (minor units)')
  t.equal(row.amount, (ended.total / 100).toFixed(2))
  t.match(row, {
    seq: String(ended.seq),
    sessionId: ended.sessionId,
    outlet: 'E1',
    userId: 'u-nr',
    reason: 'manager-stopped',
    currency: 'CAD',
    energyWh: String(ended.energyWh),
  })

  const served = await req('GET', '/red-api/billing/today.csv', { auth: BEARER })
  if (
    day === new Intl.DateTimeFormat('en-CA', { timeZone: config.site.timezone, year: 'numeric', month: '2-digit', day: '2-digit' }).format(new Date())
  ) {
    t.equal(served.status, 200)
    t.equal(served.text, text, 'GET /red-api/billing/today.csv serves the file')
  }
  const byDay = await req('GET', `/red-api/billing/${day}.csv`, { auth: BEARER })
  t.equal(byDay.text, text, 'and by date')
  t.equal((await req('GET', '/red-api/billing/1999-01-01.csv', { auth: BEARER })).status, 404)
  t.equal((await req('GET', '/red-api/billing/..%2Fsite.csv', { auth: BEARER })).status, 400, 'anything but a date is refused')
})

t.test('the shipped fault flow POSTs to the webhook when a meter goes silent, and on recovery', async (t) => {
  sim.control({ cmd: 'fault', unit: 2, fault: 'silent' })
  const fault = await waitFor(() => hooks.posts.find((p) => p.path === '/hook' && p.body.event === 'outlet.fault'), 'webhook: outlet.fault')
  const faultRec = (await journal()).find((r) => r.type === 'outlet.fault' && r.outlet === 'E2')!
  t.match(fault.body, {
    site: 'e2e',
    event: 'outlet.fault',
    outlet: 'E2',
    seq: faultRec.seq,
    at: faultRec.ts,
    detail: String((faultRec as { detail: string }).detail),
  })
  t.match(fault.body.text, /^e2e: outlet E2 in fault/)
  await waitFor(() => hooks.posts.find((p) => p.path === '/e2-faults'), 'the E2-only events node got it')

  sim.control({ cmd: 'fault', unit: 2, fault: 'none' })
  const recovered = await waitFor(
    () => hooks.posts.find((p) => p.path === '/hook' && p.body.event === 'outlet.recovered'),
    'webhook: outlet.recovered',
  )
  t.match(recovered.body, { site: 'e2e', event: 'outlet.recovered', outlet: 'E2' })
  t.equal(hooks.posts.filter((p) => p.path === '/hook').length, 2, 'one POST each')
  t.equal(hooks.posts.filter((p) => p.path === '/e2-faults').length, 1, 'the fault-only filter kept the recovery out')
})

t.test('a session waiting on a full circuit: queued through the command node and the outlet-state node', async (t) => {
  for (const userId of ['u-q1', 'u-q2'])
    t.equal((await command({ action: 'set-wallet', userId, currency: 'CAD', balance: 5000 })).ok, true, `wallet of ${userId}`)
  const first = await waitFor(async () => {
    const r = await command({ action: 'start', outlet: 'E1', userId: 'u-q1' })
    return !r.ok && r.error.code === 'outlet-not-ready' ? undefined : r
  }, 'start E1')
  t.equal(first.ok, true, JSON.stringify(first))
  const second = await waitFor(async () => {
    const r = await command({ action: 'start', outlet: 'E2', userId: 'u-q2' })
    return !r.ok && (r.error.code === 'outlet-not-ready' || r.error.code === 'outlet-fault') ? undefined : r
  }, 'start E2 (its meter answering again after the fault test)')
  t.equal(second.ok, true, 'a start on a full circuit is accepted')
  const e2 = await req('GET', '/red-api/test/state/E2', { auth: BEARER })
  t.match(e2.json, { outlet: 'E2', state: 'queued', circuit: 'row', userId: 'u-q2' }, 'the outlet-state node says queued')
  t.match((e2.json as { queuedSince?: string }).queuedSince, /^\d{4}-\d\d-\d\dT/, 'and since when')
  const limit = await command({ action: 'set-circuit-limit', circuit: 'row', maxA: 10 })
  t.same(limit, { id: limit.id, ok: true, result: { circuit: 'row', maxA: 10 } }, 'set-circuit-limit through the command node')
  t.same(await daemon.records!.commandResult(limit.id), limit, 'its result is in the journal')
  const queued = (await journal()).filter((r) => r.type === 'session.queued')
  t.ok(
    queued.some((r) => r.outlet === 'E2'),
    'session.queued journaled',
  )
  for (const outlet of ['E1', 'E2']) t.equal((await command({ action: 'stop', outlet, by: 'manager' })).ok, true, `stop ${outlet}`)
  t.equal((await command({ action: 'set-circuit-limit', circuit: 'row', maxA: null })).ok, true)
})

t.test("the editor in a browser: login, the outpost palette, the nodes' edit dialogs and help", async (t) => {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  const errors: string[] = []
  page.on('pageerror', (e) => errors.push(e.message))
  const elsewhere: string[] = []
  page.on('request', (r) => void (r.url().startsWith(base) || r.url().startsWith('data:') || elsewhere.push(r.url())))
  await page.goto(`${base}/red/`)
  await page.fill('#node-dialog-login-username', USER)
  await page.fill('#node-dialog-login-password', PASSWORD)
  await page.click('#node-dialog-login-submit')
  for (const type of ['outpost-events', 'outpost-command', 'outpost-outlet-state']) {
    await page.waitForSelector(`.red-ui-palette-node[data-palette-type="${type}"]`, { state: 'attached', timeout: 60_000 })
  }
  t.pass('the three nodes are in the palette')
  // The palette comes before the flows: the shipped flow's nodes exist once the workspace has loaded them.
  await page.waitForFunction(() => Boolean((globalThis as any).RED?.nodes?.node('0a7f1a0000000002')), undefined, { timeout: 60_000 })
  const seen = await page.evaluate(() => {
    const RED = (globalThis as any).RED
    const help = (type: string) => String(RED.nodes.getNodeHelp(type) ?? '')
    const events = RED.nodes.node('0a7f1a0000000002')
    const label = RED.nodes.getType('outpost-events').label.call(events)
    const category = RED.nodes.getType('outpost-command').category
    return { label, category, help: ['outpost-events', 'outpost-command', 'outpost-outlet-state'].map(help) }
  })
  t.equal(seen.category, 'outpost')
  t.equal(seen.label, 'fault / recovered', "the shipped flow's events node shows its name")
  t.match(seen.help[0], /<h3>Outputs<\/h3>/, 'events help has its sections')
  t.match(seen.help[1], /invalid-command/, 'command help names the error code')
  t.match(seen.help[2], /<h3>Inputs<\/h3>/)
  // The events node's edit dialog: one checkbox per record type, the configured ones ticked.
  await page.evaluate(() => (globalThis as any).RED.editor.edit((globalThis as any).RED.nodes.node('0a7f1a0000000002')))
  await page.waitForSelector('#node-input-types-box input[type=checkbox]', { timeout: 30_000 })
  const boxes = await page.$$eval('#node-input-types-box input[type=checkbox]', (els) =>
    els.map((e) => [(e as any).dataset.type, (e as any).checked]),
  )
  t.same(boxes, [
    ['session.started', false],
    ['session.ended', false],
    ['outlet.fault', true],
    ['outlet.recovered', true],
    ['meter.reconciliation', false],
    ['gateway.started', false],
    ['session.queued', false],
    ['session.resumed', false],
    ['config.applied', false],
  ])
  t.same(errors, [], 'no script error in the editor')
  t.same(elsewhere, [], 'the editor asked nothing of any other host')
  await browser.close()
})

/** Opens the editor's websocket (a raw HTTP upgrade, as a browser does); resolves with the socket once switched. */
function openComms(): Promise<import('node:net').Socket> {
  return new Promise((resolve, reject) => {
    const r = http.request(`${base}/red/comms`, {
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': Buffer.from('outpost-test-key').toString('base64'),
      },
    })
    r.on('upgrade', (res, socket) => (res.statusCode === 101 ? resolve(socket) : reject(new Error(`upgrade answered ${res.statusCode}`))))
    r.on('response', (res) => reject(new Error(`no upgrade: ${res.statusCode}`)))
    r.on('error', reject)
    r.end()
  })
}

t.test('the bridge is not visible to the editor', async (t) => {
  const settings = await admin('GET', '/settings')
  t.equal(settings.status, 200)
  t.notMatch(
    settings.text,
    /outpost-credential|billingCsvDir|"outpost"\s*:/,
    'neither the bridge nor the global context values are in the editor settings',
  )
  t.equal((await req('GET', '/red/settings')).status, 401)
})

t.test('one Node-RED per daemon', async (t) => {
  await t.rejects(startNodeRed({ daemon, config, server: apiServer, logger: createLogger('fatal') }), {
    code: 'NODE_RED_ONCE',
  })
  t.equal(apiServer.listeners('upgrade').length, 1, 'nothing more was attached')
})

t.test('Node-RED stops cleanly and lets go of the server', async (t) => {
  const ws = await openComms()
  const closed = new Promise<void>((r) => ws.once('close', () => r()))
  await handle.stop()
  await closed
  t.pass('an open editor websocket is closed by the stop')
  t.equal(apiServer.listeners('upgrade').length, 0, 'no upgrade listener is left')
  t.ok(logLines.some((l) => l.msg === 'node-red stopped'))
  const after = await req('POST', '/red-api/test/command', { body: { action: 'stop', outlet: 'E1', by: 'manager' }, auth: BEARER })
  t.equal(after.status, 404, 'flows are gone: their endpoint no longer answers')
  const records = daemon.records!.head()
  t.equal(daemonListeners(), apiListeners, 'the bridge let go of the daemon (the local API keeps its own)')
  t.equal(daemon.records!.head(), records)
})

t.test('the next start keeps the flows as deployed and the credential key (edits survive restarts and upgrades)', async (t) => {
  const flowFile = handle.flowFile!
  const before = readFileSync(flowFile, 'utf8')
  t.ok(
    JSON.parse(before).some((n: { id: string }) => n.id === 'feed000000000003'),
    'the flow file holds the deploy',
  )
  const userDir = handle.userDir!
  const secret = readFileSync(join(userDir, '.outpost-credential-secret'), 'utf8')
  const again = prepareUserDir(config)
  t.equal(again.seeded, false, 'an existing flow file is not seeded again')
  t.equal(readFileSync(flowFile, 'utf8'), before, 'nor rewritten')
  t.equal(again.credentialSecret, secret.trim(), 'the same credential key')
  const key = statSync(join(userDir, '.outpost-credential-secret'))
  t.equal(key.mode & 0o777, 0o600, "readable by Node-RED's user only")
  t.equal(statSync(userDir).mode & 0o777, 0o700)
  const ids = ensureNodeRedUser()
  if (ids)
    t.same(
      [key.uid, statSync(userDir).uid, statSync(flowFile).uid],
      [ids.uid, ids.uid, ids.uid],
      "owned by Node-RED's user (the daemon runs as root)",
    )

  const own = { ...config, nodeRed: { ...config.nodeRed!, flowFile: 'site-flows.json' } }
  t.equal(nodeRedPaths(own).flowFile, join(userDir, 'site-flows.json'), 'a relative nodeRed.flowFile is under the user directory')
  t.equal(prepareUserDir(own).seeded, true, 'a configured flow file that does not exist yet is seeded')
  t.same(JSON.parse(readFileSync(nodeRedPaths(own).flowFile, 'utf8')), shippedFlows())
})

t.test('startNodeRed refuses an open editor off loopback, whatever the config says', async (t) => {
  const open: SiteConfig = {
    ...config,
    api: { listen: '0.0.0.0:8080', token: API_TOKEN },
    nodeRed: { enabled: true, httpAdminRoot: '/red', httpNodeRoot: '/red-api' },
  }
  await t.rejects(startNodeRed({ daemon, config: open, server: apiServer, logger: createLogger('fatal') }), {
    code: 'NODE_RED_NO_AUTH',
    message: /without nodeRed.adminAuth/,
  })
  t.equal(apiServer.listeners('upgrade').length, 0, 'nothing was attached')
})
