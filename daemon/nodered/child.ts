/**
 * The Node-RED process (`node dist/daemon/nodered/child.js`, started by the daemon's
 * supervisor, supervisor.ts): Node-RED 4.1 with Outpost's settings, its editor and
 * flows' endpoints on a loopback HTTP server that answers only the daemon's proxy,
 * and Outpost's nodes reaching the daemon through the channel on fd 3.
 *
 * Owns: Node-RED's settings, the bridge the nodes see (`RED.settings.outpost`, the
 * same interface as before the move: flows/lib/bridge.js), Node-RED's log onto the
 * channel, answering the supervisor's pings, and exiting when the channel closes
 * (the daemon is gone: nothing is left running).
 *
 * Must never: hold anything of the site but what `hello` gave it; serve a request
 * that lacks the proxy's secret; let Node-RED install anything.
 */
import { createServer, type IncomingMessage } from 'node:http'
import { createRequire } from 'node:module'
import { Socket, connect } from 'node:net'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { timingSafeEqual } from 'node:crypto'
import { inspect } from 'node:util'
import type { Duplex } from 'node:stream'
import { packagePath } from '../../core/paths.js'
import type { CommandResult, JournalRecord, OutletStatus } from '../../core/types.js'
import type { OutpostBridge } from './bridge.js'
import { SystemdNotifier } from '../systemd.js'
import { credentialSecret, prepareFiles } from './files.js'
import {
  CHANNEL_CREDENTIAL,
  CHANNEL_FD,
  type ChildSettings,
  type DownMessage,
  type Hello,
  PROXY_HEADER,
  type UpMessage,
  readLines,
  writeLine,
} from './wire.js'

const NODES_DIR = packagePath('flows')
type Event = 'record' | 'status' | 'result'
type Payload<E extends Event> = E extends 'record' ? JournalRecord : E extends 'status' ? OutletStatus : CommandResult

/** OutpostBridge over the channel: the statuses are kept here from the stream, commands wait for their reply. */
export class ChannelBridge implements OutpostBridge {
  readonly version = 1 as const
  readonly recordTypes: readonly string[]
  readonly siteId: string
  readonly timezone: string
  private readonly ids: string[]
  private readonly statuses = new Map<string, OutletStatus>()
  private readonly subs: { [E in Event]: Set<(p: Payload<E>) => void> } = { record: new Set(), status: new Set(), result: new Set() }
  private readonly waiting = new Map<number, (r: CommandResult) => void>()
  private n = 0
  private boot: JournalRecord | undefined
  private readonly bootGiven = new Set<string>()
  private closed = false

  constructor(
    hello: Hello,
    private readonly stream: Duplex,
    private readonly onError: (event: string, err: Error) => void,
  ) {
    this.recordTypes = hello.recordTypes
    this.siteId = hello.settings.siteId
    this.timezone = hello.settings.timezone
    this.ids = hello.outletIds
    for (const s of hello.statuses) this.statuses.set(s.outlet, s)
    this.boot = hello.boot
  }

  deliver(m: DownMessage): void {
    if (m.t === 'reply') {
      const done = this.waiting.get(m.n)
      this.waiting.delete(m.n)
      done?.(m.p)
      return
    }
    if (m.t === 'status') this.statuses.set(m.p.outlet, m.p)
    if (m.t === 'record' || m.t === 'status' || m.t === 'result') this.fanOut(m.t, m.p as Payload<typeof m.t>)
  }

  outletIds(): string[] {
    return [...this.ids]
  }

  outlets(): OutletStatus[] {
    return this.ids.flatMap((id) => {
      const s = this.statuses.get(id)
      return s ? [structuredClone(s)] : []
    })
  }

  on<E extends Event>(event: E, fn: (payload: Payload<E>) => void): () => void {
    const set = this.subs[event] as Set<(p: Payload<E>) => void> | undefined
    if (!set) throw new TypeError(`unknown Outpost event "${String(event)}" (one of: record, status, result)`)
    set.add(fn)
    return () => void set.delete(fn)
  }

  command(raw: unknown): Promise<CommandResult> {
    if (this.closed || this.stream.destroyed) return Promise.resolve(unavailable('the channel to the daemon is closed: the command was not sent'))
    const n = ++this.n
    return new Promise((resolve) => {
      this.waiting.set(n, resolve)
      writeLine(this.stream, { t: 'command', n, p: raw === undefined ? null : raw })
    })
  }

  bootRecord(nodeId: string): JournalRecord | undefined {
    if (!this.boot || this.bootGiven.has(nodeId)) return undefined
    this.bootGiven.add(nodeId)
    return structuredClone(this.boot)
  }

  close(): void {
    this.closed = true
    for (const done of this.waiting.values()) done(unavailable('the channel to the daemon closed before the answer'))
    this.waiting.clear()
  }

  private fanOut<E extends Event>(event: E, payload: Payload<E>): void {
    for (const fn of [...(this.subs[event] as Set<(p: Payload<E>) => void>)]) {
      try {
        // Each subscriber gets its own copy: a flow that edits msg.payload edits nobody else's.
        fn(structuredClone(payload))
      } catch (err) {
        this.onError(event, err as Error)
      }
    }
  }
}

function unavailable(message: string): CommandResult {
  return { id: '', ok: false, error: { code: 'unavailable', message } }
}

// ---------------------------------------------------------------- the process

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace']

async function main(): Promise<void> {
  const at = process.argv.indexOf('--connect')
  const unit = at > 0 ? process.argv[at + 1] : undefined
  const stream = unit ? await connectUnit(unit) : new Socket({ fd: CHANNEL_FD, readable: true, writable: true })
  const up = (m: UpMessage): void => void writeLine(stream, m)
  const notify = unit ? new SystemdNotifier() : undefined
  let bridge: ChannelBridge | undefined
  let started: Promise<void> | undefined
  stream.on('close', () => {
    bridge?.close()
    // Spawned by the daemon: it is gone or stopping us. Under a unit: systemd starts a new one, which connects again.
    process.exit(unit ? 1 : 0)
  })
  stream.on('error', () => undefined)
  if (unit) up({ t: 'auth', token: readFileSync(join(process.env.CREDENTIALS_DIRECTORY ?? '', CHANNEL_CREDENTIAL), 'utf8').trim() })
  readLines(
    stream,
    (m) => {
      const msg = m as DownMessage | undefined
      if (!msg || typeof msg !== 'object') return
      if (msg.t === 'ping') return up({ t: 'pong', n: msg.n })
      if (msg.t === 'hello') {
        if (started) return
        started = start(msg, stream, up, (b) => (bridge = b), Boolean(unit))
          .then(() => notify?.ready('node-red running'))
          .catch((err: Error) => {
            up({ t: 'log', level: 'error', msg: `node-red did not start: ${err.message}` })
            // The supervisor (or systemd) restarts a process that exits.
            setTimeout(() => process.exit(1), 100)
          })
        return
      }
      bridge?.deliver(msg)
    },
    () => process.exit(1),
  )
}

/** Under its own unit: the daemon's socket, tried every second for a minute (the daemon may still be starting). */
async function connectUnit(path: string): Promise<Socket> {
  for (let i = 0; ; i++) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect(path)
        s.once('connect', () => resolve(s))
        s.once('error', reject)
      })
    } catch (err) {
      if (i >= 60) throw err
      await new Promise((r) => setTimeout(r, 1000))
    }
  }
}

async function start(
  hello: Hello,
  stream: Duplex,
  up: (m: UpMessage) => void,
  setBridge: (b: ChannelBridge) => void,
  ownFiles: boolean,
): Promise<void> {
  const t0 = performance.now()
  const s = hello.settings
  // Spawned by the daemon, it prepared the user directory; under its own unit Node-RED owns it alone.
  if (ownFiles) prepareFiles(s.userDir, s.flowFile)
  const logAt = Math.max(0, LEVELS.indexOf(s.logLevel))
  const log = (level: 'error' | 'warn' | 'info' | 'debug' | 'trace', msg: string, node?: Record<string, string>): void => {
    if (LEVELS.indexOf(level) <= logAt) up({ t: 'log', level, msg: msg.slice(0, 8192), ...(node ? { node } : {}) })
  }
  const bridge = new ChannelBridge(hello, stream, (event, err) => log('error', `an Outpost node failed on a daemon event (${event}): ${err.message}`))
  setBridge(bridge)
  const nodeRedRequire = createRequire(createRequire(import.meta.url).resolve('node-red'))
  const express = nodeRedRequire('express') as () => ExpressApp
  const RED = (await import('node-red')).default
  const app = express()
  const server = createServer((req, res) => {
    if (!fromProxy(req, s.proxySecret)) {
      res.writeHead(403, { 'content-type': 'text/plain' }).end('only the Outpost daemon may ask\n')
      return
    }
    app(req, res)
  })
  RED.init(server, settings(s, bridge, log))
  // Node-RED's editor websocket: only the daemon's proxy may open one.
  const upgrades = server.listeners('upgrade') as ((req: IncomingMessage, socket: Duplex, head: Buffer) => void)[]
  server.removeAllListeners('upgrade')
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    if (!fromProxy(req, s.proxySecret)) return void socket.destroy()
    for (const l of upgrades) l.call(server, req, socket, head)
  })
  app.use(s.adminRoot || '/', RED.httpAdmin)
  app.use(s.nodeRoot || '/', RED.httpNode)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  // start() resolves before the flows run (their http-in routes among them): ready means the flows run.
  const flowsStarted = new Promise<void>((resolve) => {
    RED.events.once('flows:started', () => resolve())
    setTimeout(resolve, 60_000).unref()
  })
  await RED.start()
  await flowsStarted
  const port = (server.address() as { port: number }).port
  up({ t: 'ready', port, startMs: Math.round(performance.now() - t0), version: RED.version, pid: process.pid })
}

interface ExpressApp {
  (req: IncomingMessage, res: import('node:http').ServerResponse): void
  use(path: string, handler: unknown): void
}

/** The proxy's secret, taken off the request so that no flow sees it in msg.req.headers. */
function fromProxy(req: IncomingMessage, secret: string): boolean {
  const given = req.headers[PROXY_HEADER]
  delete req.headers[PROXY_HEADER]
  if (typeof given !== 'string' || given.length !== secret.length) return false
  return timingSafeEqual(Buffer.from(given), Buffer.from(secret))
}

function settings(
  s: ChildSettings,
  bridge: OutpostBridge,
  log: (level: 'error' | 'warn' | 'info' | 'debug' | 'trace', msg: string, node?: Record<string, string>) => void,
): Record<string, unknown> {
  return {
    userDir: s.userDir,
    flowFile: s.flowFile,
    flowFilePretty: true,
    // Credentials (flows_cred.json) are encrypted with a key of our own, kept beside them (see docs/nodered.md).
    credentialSecret: credentialSecret(s.userDir),
    httpAdminRoot: s.adminRoot,
    httpNodeRoot: s.nodeRoot,
    ...(s.adminAuth
      ? { adminAuth: { type: 'credentials', users: [{ username: s.adminAuth.username, password: s.adminAuth.passwordHash, permissions: '*' }] } }
      : {}),
    // Outpost's nodes: flows/ is a Node-RED node package (package.json "node-red").
    nodesDir: [NODES_DIR],
    // Nothing reaches the network or installs anything on its own.
    telemetry: { enabled: false, updateNotification: false },
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    externalModules: {
      autoInstall: false,
      palette: { allowInstall: false, allowUpdate: false, allowUpload: false },
      modules: { allowInstall: false },
    },
    // Function nodes may use Node's built-in modules (the CSV flow uses fs), never npm installs.
    functionExternalModules: true,
    functionGlobalContext: {
      outpost: { siteId: s.siteId, timezone: s.timezone, billingCsvDir: s.billingCsvDir },
    },
    exportGlobalContextKeys: false,
    editorTheme: {
      page: { title: `Outpost ${s.siteId} · Node-RED` },
      header: { title: `Outpost · ${s.siteName}` },
      tours: false,
      palette: { categories: ['outpost', 'common', 'function', 'network', 'sequence', 'parser', 'storage'] },
    },
    logging: { outpost: { level: s.logLevel === 'trace' ? 'trace' : 'info', metrics: false, audit: false, handler: () => logHandler(log) } },
    // The bridge Outpost's nodes use (RED.settings.outpost); never exported to the editor.
    outpost: bridge,
  }
}

/** Node-RED warnings at every start that need nobody's attention in Outpost. */
const BENIGN_WARNINGS = [
  'Projects disabled', // Outpost never enables projects
  'Encrypted credentials not found', // no flow has credentials yet (flows_cred.json is written with the first)
]

interface NodeRedLogMessage {
  level: number
  msg?: unknown
  type?: string
  id?: string
  name?: string
  z?: string
}

/**
 * Node-RED's log onto the channel (the daemon writes it with pino). Its start-up chatter (info)
 * is debug; a flow node's own node.log() stays info; warnings and errors keep their level.
 * Node-RED's "fatal" is an error: in Outpost, fatal means the daemon stops billing, which
 * Node-RED never decides.
 */
function logHandler(
  log: (level: 'error' | 'warn' | 'info' | 'debug' | 'trace', msg: string, node?: Record<string, string>) => void,
): (m: NodeRedLogMessage) => void {
  return (m) => {
    const text = typeof m.msg === 'string' ? m.msg : m.msg instanceof Error ? m.msg.message : inspect(m.msg, { depth: 3, breakLength: Infinity })
    const node = m.type
      ? { type: m.type, ...(m.id ? { id: m.id } : {}), ...(m.name ? { name: m.name } : {}), ...(m.z ? { flow: m.z } : {}) }
      : undefined
    if (m.level <= 20) log('error', text, node)
    else if (m.level === 30 && !m.type && BENIGN_WARNINGS.some((w) => text.startsWith(w))) log('debug', text, node)
    else if (m.level === 30) log('warn', text, node)
    else if (m.level === 40) log(m.type ? 'info' : 'debug', text, node)
    else if (m.level <= 60) log('trace', text, node)
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) void main()
