/**
 * Node-RED beside the daemon: the interface the local HTTP server (daemon/http)
 * mounts, the user directory, and the user Node-RED runs as. Node-RED itself runs in
 * a process of its own (child.ts), supervised by supervisor.ts, reaching the daemon
 * only through the channel (channel.ts). docs/nodered.md says why.
 *
 * Owns: Node-RED's files (its user directory, apart from storage.dir: `nodeRed.userDir`,
 * default `<storage.dir>-node-red`; the flow file and its first-start seed from
 * flows/examples; the credential key), moving an older user directory out of
 * storage.dir, and choosing the user: a daemon running as root runs Node-RED as
 * `nodeRed.user` (default `outpost-node-red`), never as root.
 *
 * Must never: serve the editor without a password unless the API listens on loopback
 * (daemon/config.ts refuses such a config; this file refuses it again), overwrite an
 * existing flow file (the installer's edits survive upgrades), run flows as root, or
 * put Node-RED's files where Node-RED's user could read the journal or the key.
 */
import { chmodSync, chownSync, cpSync, statSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, lstatSync } from 'node:fs'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import { dirname, isAbsolute, join, resolve } from 'node:path'
import type { SiteConfig } from '../../core/types.js'
import { OutpostError } from '../errors.js'
import type { Daemon } from '../daemon.js'
import type { Logger } from '../log.js'
import type { Clock } from '../clock.js'
import { isLoopbackListen } from '../config.js'
import { NodeRedSupervisor } from './supervisor.js'
import type { NodeRedStatus } from './status.js'
import { prepareFiles } from './files.js'
import { CHANNEL_CREDENTIAL, CHANNEL_SOCKET } from './wire.js'

export { SHIPPED_FLOWS_DIR, shippedFlows } from './files.js'

export type { OutpostBridge } from './bridge.js'
export type { NodeRedStatus } from './status.js'

/**
 * An express-style handler. The local API mounts it as `app.use(root, app)` would: the handler
 * sees `req.url` without the root (`req.originalUrl` keeps the full one); a request no route
 * answers goes to `next()`.
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
  /** Resolves once Node-RED answers requests (again, after a restart). */
  ready?(): Promise<void>
  /** State, restarts, counters: the status page and /metrics. */
  status?(): NodeRedStatus
  /** The Node-RED process, while one runs. */
  pid?(): number | undefined
  stop(): Promise<void>
}

export interface NodeRedOptions {
  daemon: Daemon
  config: SiteConfig
  /** The local API's HTTP server (the editor's websocket is proxied from its `upgrade` event). */
  server: Server
  logger: Logger
  /** The config file the daemon runs (its secrets): Node-RED's user must not be able to read it. */
  configFile?: string
  /** The daemon's clock (the status's times; the rate limit's and watchdog's intervals). */
  clock?: Clock
  /** Watchdog tuning (tests): ping interval, how long unanswered before a kill. */
  pingMs?: number
  hangMs?: number
}

/** The user Node-RED runs as when the daemon runs as root and nodeRed.user is not set. */
export const DEFAULT_NODE_RED_USER = 'outpost-node-red'

/** Where Node-RED keeps its files for this config. */
export function nodeRedPaths(config: SiteConfig): { userDir: string; flowFile: string; billingCsvDir: string } {
  const userDir = config.nodeRed?.userDir ? resolve(config.nodeRed.userDir) : `${resolve(config.storage.dir)}-node-red`
  const fromConfig = config.nodeRed?.flowFile
  const flowFile = fromConfig ? (isAbsolute(fromConfig) ? fromConfig : resolve(userDir, fromConfig)) : join(userDir, 'flows.json')
  return { userDir, flowFile, billingCsvDir: join(userDir, 'billing-csv') }
}

/** One Node-RED per daemon. */
const running = new WeakSet<Daemon>()

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
  if (running.has(daemon)) throw new OutpostError('NODE_RED_ONCE', 'Node-RED already runs for this daemon')
  const log = logger.child({ component: 'node-red' })
  const paths = nodeRedPaths(config)
  // Under the installed units Node-RED has a unit (and a user) of its own and owns its files; otherwise the daemon spawns it.
  const unit = unitChannel()
  const runAs = unit ? undefined : nodeRedUser(config, log)
  if (runAs) keepOut(config, opts.configFile, log)
  const { seeded, migrated } = unit ? { seeded: false, migrated: [] } : prepareUserDir(config, runAs)
  if (migrated.length)
    log.warn({ moved: migrated, userDir: paths.userDir }, "node-red's files moved out of storage.dir (its own user cannot read storage.dir)")
  const adminRoot = trimSlash(nr.httpAdminRoot) || '/'
  const nodeRoot = trimSlash(nr.httpNodeRoot ?? '/red-api') || '/'
  const sup = new NodeRedSupervisor({
    daemon,
    config,
    server,
    logger,
    runAs,
    ...(unit ? { unit } : {}),
    ...(opts.clock ? { now: opts.clock.monotonic, wallNow: opts.clock.now } : {}),
    ...(opts.pingMs ? { pingMs: opts.pingMs } : {}),
    ...(opts.hangMs ? { hangMs: opts.hangMs } : {}),
    settings: {
      userDir: paths.userDir,
      flowFile: paths.flowFile,
      adminRoot,
      nodeRoot,
      ...(nr.adminAuth ? { adminAuth: nr.adminAuth } : {}),
      siteId: config.site.id,
      siteName: config.site.name ?? config.site.id,
      timezone: config.site.timezone,
      billingCsvDir: paths.billingCsvDir,
    },
  })
  running.add(daemon)
  daemon.nodeRed = sup
  try {
    await sup.start()
  } catch (err) {
    running.delete(daemon)
    daemon.nodeRed = undefined
    await sup.stop()
    throw new OutpostError('NODE_RED_CHANNEL', `cannot listen on ${unit?.socket} for Node-RED's unit: ${(err as Error).message}`)
  }
  log.info(
    { adminRoot, nodeRoot, userDir: paths.userDir, flowFile: paths.flowFile, seeded, user: sup.status().user, supervisor: sup.status().supervisor },
    'node-red starting',
  )
  return {
    adminRoot,
    admin: sup.admin,
    nodeRoot,
    node: sup.node,
    userDir: paths.userDir,
    flowFile: paths.flowFile,
    ready: () => sup.ready(),
    status: () => sup.status(),
    pid: () => sup.pid(),
    stop: async () => {
      await sup.stop()
      running.delete(daemon)
      if (daemon.nodeRed === sup) daemon.nodeRed = undefined
    },
  }
}

// ---------------------------------------------------------------- the user

/**
 * Node-RED under its own unit: the installed outpost.service hands the daemon the channel's
 * credential (LoadCredential=node-red-channel) and a RuntimeDirectory for the socket; outside
 * those units there is no credential and the daemon spawns Node-RED itself.
 */
export function unitChannel(env: NodeJS.ProcessEnv = process.env): { socket: string; token: string } | undefined {
  const creds = env.CREDENTIALS_DIRECTORY
  const file = creds ? join(creds, CHANNEL_CREDENTIAL) : undefined
  if (!file || !existsSync(file)) return undefined
  const token = readFileSync(file, 'utf8').trim()
  if (token.length < 16) throw new OutpostError('NODE_RED_CHANNEL', `${file} holds no usable channel credential (16 characters or more)`)
  const runtime = env.RUNTIME_DIRECTORY?.split(':')[0] || '/run/outpost'
  return { socket: join(runtime, CHANNEL_SOCKET), token }
}

/**
 * Node-RED's user: as root, `nodeRed.user` (default outpost-node-red), which must exist and not be
 * root; otherwise the daemon's own user (Node-RED is then apart in its process only, docs/nodered.md).
 */
export function nodeRedUser(config: SiteConfig, log: Logger): { name: string; uid: number; gid: number } | undefined {
  const wanted = config.nodeRed?.user
  if (process.getuid?.() !== 0) {
    if (wanted) log.warn({ user: wanted }, 'nodeRed.user needs a daemon started as root: Node-RED runs as the daemon’s user, in a process of its own')
    return undefined
  }
  const name = wanted ?? DEFAULT_NODE_RED_USER
  const entry = passwdEntry(name)
  if (!entry)
    throw new OutpostError(
      'NODE_RED_USER',
      `the daemon runs as root and there is no user "${name}" (nodeRed.user${wanted ? '' : `, default ${DEFAULT_NODE_RED_USER}`}) to run Node-RED as: create it (useradd --system --no-create-home --shell /usr/sbin/nologin ${name}); Node-RED never runs as root`,
    )
  if (entry.uid === 0) throw new OutpostError('NODE_RED_USER', `nodeRed.user "${name}" is root: Node-RED never runs as root`)
  return { name, ...entry }
}

/**
 * What Node-RED's user must not read, as the daemon (root) can make sure of: storage.dir (the
 * journal, the key) loses any access for other users (the daemon creates it with the umask's
 * mode); a config file other users may read is an error in the log (it is the site's to change).
 */
function keepOut(config: SiteConfig, configFile: string | undefined, log: Logger): void {
  const dir = resolve(config.storage.dir)
  try {
    const mode = statSync(dir).mode & 0o7777
    if (mode & 0o007) {
      chmodSync(dir, mode & ~0o007)
      log.info({ dir, mode: (mode & ~0o007).toString(8) }, "storage.dir closed to other users (Node-RED's among them)")
    }
  } catch (err) {
    log.error({ dir, err: (err as Error).message }, "could not close storage.dir to other users: Node-RED's user may reach the journal")
  }
  if (configFile && existsSync(configFile) && statSync(configFile).mode & 0o004)
    log.error({ file: configFile }, `the config file is readable by every user, Node-RED's too: chmod o-r ${configFile}`)
}

function passwdEntry(name: string): { uid: number; gid: number } | undefined {
  let text: string
  try {
    text = readFileSync('/etc/passwd', 'utf8')
  } catch {
    return undefined
  }
  for (const line of text.split('\n')) {
    const f = line.split(':')
    if (f[0] === name && f.length >= 4) return { uid: Number(f[2]), gid: Number(f[3]) }
  }
  return undefined
}

// ---------------------------------------------------------------- files

/**
 * Creates the user directory (0700) and, on first start, the flow file (from the shipped flows)
 * and the credential key (0600); moves an older user directory out of storage.dir. What exists is
 * never rewritten: the installer's flows, as deployed from the editor, survive restarts and
 * upgrades. With `owner`, the user directory is handed to Node-RED's user.
 */
export function prepareUserDir(
  config: SiteConfig,
  owner?: { uid: number; gid: number },
): { seeded: boolean; credentialSecret: string; migrated: string[] } {
  const paths = nodeRedPaths(config)
  const migrated = migrate(config, paths)
  const { seeded, credentialSecret: secret } = prepareFiles(paths.userDir, paths.flowFile)
  if (owner) {
    chownTree(paths.userDir, owner.uid, owner.gid)
    if (!paths.flowFile.startsWith(paths.userDir + '/') && existsSync(paths.flowFile)) chownSync(paths.flowFile, owner.uid, owner.gid)
  }
  return { seeded, credentialSecret: secret, migrated }
}

/**
 * Before Node-RED had a process and a user of its own its files were under storage.dir:
 * `node-red/` (the user directory), `billing-csv/` (the shipped CSV flow) and a relative
 * nodeRed.flowFile. Each moves to the new user directory once, if nothing is there yet.
 */
function migrate(config: SiteConfig, paths: ReturnType<typeof nodeRedPaths>): string[] {
  const storage = resolve(config.storage.dir)
  const moves: [string, string][] = [
    [join(storage, 'node-red'), paths.userDir],
    [join(storage, 'billing-csv'), paths.billingCsvDir],
  ]
  const ff = config.nodeRed?.flowFile
  if (ff && !isAbsolute(ff)) moves.push([resolve(storage, ff), paths.flowFile])
  const done: string[] = []
  for (const [from, to] of moves) {
    if (from === to || !existsSync(from) || existsSync(to)) continue
    try {
      mkdirSync(dirname(to), { recursive: true, mode: 0o700 })
      try {
        renameSync(from, to)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err
        cpSync(from, to, { recursive: true, preserveTimestamps: true })
        rmSync(from, { recursive: true })
      }
      done.push(`${from} -> ${to}`)
    } catch (err) {
      throw new OutpostError('NODE_RED_MIGRATE', `could not move ${from} to ${to}: ${(err as Error).message}`)
    }
  }
  return done
}

function chownTree(path: string, uid: number, gid: number): void {
  const st = lstatSync(path)
  if (st.isSymbolicLink()) return
  chownSync(path, uid, gid)
  if (st.isDirectory()) for (const name of readdirSync(path)) chownTree(join(path, name), uid, gid)
}

function trimSlash(p: string): string {
  return p.length > 1 && p.endsWith('/') ? p.replace(/\/+$/, '') : p === '/' ? '' : p
}
