/**
 * Embedded Node-RED (node-red 4.1, in the daemon's process): the interface the
 * local HTTP server (daemon/http) mounts, and the settings Outpost runs it with.
 *
 * Owns: Node-RED's settings (user directory under storage.dir, the flow file and
 * its first-start seed from flows/examples, adminAuth, Outpost's nodes from
 * flows/ as a node package, logging into pino, nothing reaching the network on
 * its own), the bridge the nodes use (./bridge.ts), and a clean stop.
 *
 * Must never: serve the editor without a password unless the API listens on
 * loopback (daemon/config.ts refuses such a config; this file refuses it again),
 * overwrite an existing flow file (the installer's edits survive upgrades), or
 * let Node-RED install anything. Node-RED is one per process (a singleton
 * module): a second start while one runs is refused.
 */
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { dirname, isAbsolute, join, resolve } from 'node:path'
import { inspect } from 'node:util'
import { createRequire } from 'node:module'
import type { SiteConfig } from '../../core/types.js'
import { OutpostError } from '../errors.js'
import type { Daemon } from '../daemon.js'
import type { Logger } from '../log.js'
import { packagePath } from '../../core/paths.js'
import { isLoopbackListen } from '../config.js'
import { DaemonBridge, type OutpostBridge } from './bridge.js'

export type { OutpostBridge } from './bridge.js'

/**
 * An express-style handler: Node-RED's httpAdmin and httpNode apps. The local API
 * mounts them as `app.use(root, app)` would: the handler sees `req.url` without the
 * root (`req.originalUrl` keeps the full one); a request no route answers goes to `next()`.
 */
export type HttpHandler = (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void

export interface NodeRedHandle {
  /** Path prefix of the editor and its admin API (config nodeRed.httpAdminRoot). */
  adminRoot: string
  admin: HttpHandler
  /** Path prefix of flows' own HTTP endpoints (http-in nodes), or undefined if none: served behind the API token. */
  nodeRoot?: string
  node?: HttpHandler
  /** Node-RED's user directory (flow file, credentials, runtime settings). */
  userDir?: string
  /** The flow file Node-RED runs and the editor deploys to. */
  flowFile?: string
  /** Milliseconds from startNodeRed to flows started. */
  startMs?: number
  stop(): Promise<void>
}

export interface NodeRedOptions {
  daemon: Daemon
  config: SiteConfig
  /** The local API's HTTP server (Node-RED's websocket for the editor attaches to it). */
  server: Server
  logger: Logger
}

/** The shipped flows (one tab per file), the seed of a missing flow file and the editor's Import > Examples. */
export const SHIPPED_FLOWS_DIR = packagePath('flows', 'examples')
/** Outpost's Node-RED node package. */
export const NODES_DIR = packagePath('flows')

/** Where Node-RED keeps its files for this config. */
export function nodeRedPaths(config: SiteConfig): { userDir: string; flowFile: string; billingCsvDir: string } {
  const userDir = join(resolve(config.storage.dir), 'node-red')
  const fromConfig = config.nodeRed?.flowFile
  const flowFile = fromConfig ? (isAbsolute(fromConfig) ? fromConfig : resolve(config.storage.dir, fromConfig)) : join(userDir, 'flows.json')
  return { userDir, flowFile, billingCsvDir: join(resolve(config.storage.dir), 'billing-csv') }
}

/** The shipped flows as one flow file: every example's nodes, in file-name order. */
export function shippedFlows(): unknown[] {
  const files = readdirSync(SHIPPED_FLOWS_DIR)
    .filter((f) => f.endsWith('.json'))
    .sort()
  return files.flatMap((f) => {
    const nodes = JSON.parse(readFileSync(join(SHIPPED_FLOWS_DIR, f), 'utf8')) as unknown
    if (!Array.isArray(nodes)) throw new OutpostError('NODE_RED_FLOWS', `${join(SHIPPED_FLOWS_DIR, f)} is not a Node-RED flow (an array of nodes)`)
    return nodes
  })
}

/** Node-RED is a singleton module; a second init in one process leaves http-in nodes on the first runtime's app. */
let started = false

export async function startNodeRed(opts: NodeRedOptions): Promise<NodeRedHandle> {
  const { daemon, config, server, logger } = opts
  const nr = config.nodeRed
  if (!nr?.enabled) throw new OutpostError('NODE_RED_DISABLED', 'nodeRed.enabled is not true in the config')
  const listen = config.api?.listen ?? '127.0.0.1:8080'
  if (!nr.adminAuth && !isLoopbackListen(listen)) {
    throw new OutpostError(
      'NODE_RED_NO_AUTH',
      `refusing to serve the Node-RED editor on ${listen} without nodeRed.adminAuth (only loopback may go without a password)`,
    )
  }
  if (!daemon.records)
    throw new OutpostError('NODE_RED_EARLY', 'start the daemon before Node-RED (its nodes need the command gateway and the journal)')
  if (started) {
    throw new OutpostError(
      'NODE_RED_ONCE',
      "embedded Node-RED starts once per process (its HTTP nodes keep the first runtime's routes): restart the daemon to restart Node-RED",
    )
  }
  started = true
  const t0 = performance.now()
  const log = logger.child({ component: 'node-red' })
  const adminRoot = trimSlash(nr.httpAdminRoot) || '/'
  const nodeRoot = trimSlash(nr.httpNodeRoot ?? '/red-api') || '/'
  const paths = nodeRedPaths(config)
  let bridge: DaemonBridge | undefined
  let red: { stop(): Promise<void> } | undefined
  const upgradeBefore = new Set(server.listeners('upgrade'))
  const detach = (): void => {
    for (const l of server.listeners('upgrade')) if (!upgradeBefore.has(l)) server.off('upgrade', l as () => void)
  }
  const sockets = new Set<Socket>()
  const commsPath = `${adminRoot === '/' ? '' : adminRoot}/comms`
  const trackComms = (req: IncomingMessage, socket: Socket): void => {
    if ((req.url ?? '').split('?')[0] !== commsPath) return
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  }
  try {
    const { seeded, credentialSecret } = prepareUserDir(config)
    const RED = (await import('node-red')).default
    bridge = new DaemonBridge(daemon, log)
    await bridge.load()
    server.on('upgrade', trackComms)
    red = RED
    RED.init(server, settings({ config, paths, adminRoot, nodeRoot, bridge, log, credentialSecret }))
    await RED.start()
    const startMs = Math.round(performance.now() - t0)
    log.info(
      { adminRoot, nodeRoot, userDir: paths.userDir, flowFile: paths.flowFile, seeded, version: RED.version, startMs, auth: Boolean(nr.adminAuth) },
      'node-red started',
    )
    let stopped: Promise<void> | undefined
    const b = bridge
    return {
      adminRoot,
      admin: RED.httpAdmin,
      nodeRoot,
      // Flows' own endpoints (today's billing CSV...) are API routes: mounted behind the local API's token.
      node: RED.httpNode,
      userDir: paths.userDir,
      flowFile: paths.flowFile,
      startMs,
      stop: () =>
        (stopped ??= (async () => {
          b.close()
          try {
            await RED.stop()
          } catch (err) {
            log.error({ err: (err as Error).message }, 'node-red did not stop cleanly')
          }
          releaseSessionTimer()
          // Node-RED leaves its upgrade listener on the server and open editor websockets behind.
          detach()
          for (const s of sockets) s.destroy()
          log.info('node-red stopped')
        })()),
    }
  } catch (err) {
    bridge?.close()
    // A runtime that got halfway stops again; whatever it attached to the server goes.
    if (red) await red.stop().catch(() => undefined)
    else started = false // Node-RED was never initialised: a later start may try again
    releaseSessionTimer()
    detach()
    const e = err as Error
    throw new OutpostError('NODE_RED_START', `embedded Node-RED did not start: ${e.message}`)
  }
}

// ---------------------------------------------------------------- settings

interface SettingsInput {
  config: SiteConfig
  paths: ReturnType<typeof nodeRedPaths>
  adminRoot: string
  nodeRoot: string
  bridge: OutpostBridge
  log: Logger
  credentialSecret: string
}

function settings({ config, paths, adminRoot, nodeRoot, bridge, log, credentialSecret }: SettingsInput): Record<string, unknown> {
  const auth = config.nodeRed?.adminAuth
  return {
    userDir: paths.userDir,
    flowFile: paths.flowFile,
    flowFilePretty: true,
    // Credentials (flows_cred.json) are encrypted with a key of our own, kept beside them (see docs/nodered.md).
    credentialSecret,
    httpAdminRoot: adminRoot,
    httpNodeRoot: nodeRoot,
    ...(auth
      ? {
          adminAuth: { type: 'credentials', users: [{ username: auth.username, password: auth.passwordHash, permissions: '*' }] },
        }
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
      outpost: {
        siteId: config.site.id,
        timezone: config.site.timezone,
        storageDir: resolve(config.storage.dir),
        billingCsvDir: paths.billingCsvDir,
      },
    },
    exportGlobalContextKeys: false,
    editorTheme: {
      page: { title: `Outpost ${config.site.id} · Node-RED` },
      header: { title: `Outpost · ${config.site.name ?? config.site.id}` },
      tours: false,
      palette: { categories: ['outpost', 'common', 'function', 'network', 'sequence', 'parser', 'storage'] },
    },
    logging: { outpost: { level: log.isLevelEnabled('trace') ? 'trace' : 'info', metrics: false, audit: false, handler: () => logHandler(log) } },
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
 * Node-RED's log into pino. Its start-up chatter (info) is debug here; a flow node's own
 * node.log() stays info; warnings and errors keep their level. Node-RED's "fatal" is an error
 * here: in Outpost, fatal means the daemon stops billing, which Node-RED never decides.
 */
function logHandler(log: Logger): (m: NodeRedLogMessage) => void {
  return (m) => {
    const text = typeof m.msg === 'string' ? m.msg : m.msg instanceof Error ? m.msg.message : inspect(m.msg, { depth: 3, breakLength: Infinity })
    const fields = m.type ? { node: { type: m.type, id: m.id, ...(m.name ? { name: m.name } : {}), ...(m.z ? { flow: m.z } : {}) } } : {}
    if (m.level <= 20) log.error(fields, text)
    else if (m.level === 30 && !m.type && BENIGN_WARNINGS.some((w) => text.startsWith(w))) log.debug(fields, text)
    else if (m.level === 30) log.warn(fields, text)
    else if (m.level === 40) m.type ? log.info(fields, text) : log.debug(fields, text)
    else if (m.level <= 60) log.trace(fields, text)
  }
}

/**
 * Node-RED 4.1 never clears the timer that expires editor login sessions (up to 7 days
 * away) when it stops, so a stopped Node-RED would keep the process alive. Its token
 * module clears that timer whenever it reloads sessions and finds none: make it do so
 * (with a storage that holds none, and is dropped again at the next start's init).
 */
function releaseSessionTimer(): void {
  try {
    const tokens = nodeRedRequire('@node-red/editor-api/lib/auth/tokens.js') as {
      init(settings: object, storage: object): Promise<void>
      get(token: string): Promise<unknown>
    }
    const none = { getSessions: async () => ({}), saveSessions: async () => undefined }
    void tokens
      .init({}, none)
      .then(() => tokens.get(''))
      .catch(() => undefined)
  } catch {
    // A later Node-RED may have moved the module; then it may also have fixed the timer.
  }
}
const nodeRedRequire = createRequire(createRequire(import.meta.url).resolve('node-red'))

// ---------------------------------------------------------------- files

/**
 * Creates the user directory (0700) and, on first start, the flow file (from the shipped flows)
 * and the credential key (0600). What exists is never touched: the installer's flows, as deployed
 * from the editor, survive restarts and upgrades.
 */
export function prepareUserDir(config: SiteConfig): { seeded: boolean; credentialSecret: string } {
  const paths = nodeRedPaths(config)
  mkdirSync(paths.userDir, { recursive: true, mode: 0o700 })
  return { seeded: seedFlowFile(paths.flowFile), credentialSecret: credentialSecret(paths.userDir) }
}

/** Writes the shipped flows to a flow file that does not exist yet; an existing one is never touched. */
function seedFlowFile(flowFile: string): boolean {
  if (existsSync(flowFile)) return false
  mkdirSync(dirname(flowFile), { recursive: true })
  writeFileSync(flowFile, JSON.stringify(shippedFlows(), null, 4) + '\n', { flag: 'wx' })
  return true
}

function credentialSecret(userDir: string): string {
  const file = join(userDir, '.outpost-credential-secret')
  if (!existsSync(file)) writeFileSync(file, randomBytes(32).toString('hex') + '\n', { mode: 0o600, flag: 'wx' })
  const key = readFileSync(file, 'utf8').trim()
  if (key.length < 32) throw new OutpostError('NODE_RED_SECRET', `${file} holds no usable key (delete it only together with flows_cred.json)`)
  return key
}

// ---------------------------------------------------------------- http

function trimSlash(p: string): string {
  return p.length > 1 && p.endsWith('/') ? p.replace(/\/+$/, '') : p === '/' ? '' : p
}
