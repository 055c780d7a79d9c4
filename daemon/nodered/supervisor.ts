/**
 * Node-RED's supervisor in the daemon: Node-RED runs in a process of its own
 * (child.ts), as a user of its own when the daemon runs as root, and the daemon only
 * ever talks to it through the channel (channel.ts) and proxies HTTP to it.
 *
 * Owns: spawning the Node-RED process (node flags, environment, user), watching it
 * (a ping every `pingMs`; unanswered for `hangMs`, or no `ready` within `startMs`, it
 * is killed), restarting it with back-off after it exits (1 s, doubling up to 30 s
 * while it keeps dying within a minute of its start), the HTTP and websocket proxy
 * for the editor and flows' endpoints (what the local API mounts), the counters the
 * status page and /metrics show, and a clean stop.
 *
 * Must never: make the daemon wait on Node-RED (start() returns once the process is
 * spawned; a request while it is down gets 503 at once); pass the API token or the
 * status page's cookie on to Node-RED; hand Node-RED the systemd notify socket (it
 * could feed the daemon's watchdog) or any descriptor but its channel.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmodSync, rmSync } from 'node:fs'
import { request, Agent, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { connect, createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { setPriority } from 'node:os'
import type { SiteConfig } from '../../core/types.js'
import type { Daemon } from '../daemon.js'
import type { Logger } from '../log.js'
import { HttpError, sendError } from '../http/util.js'
import { SESSION_COOKIE } from '../http/auth.js'
import { type ChannelCounters, DaemonChannel } from './channel.js'
import { type ChildSettings, PROXY_HEADER } from './wire.js'
import type { NodeRedState, NodeRedStatus } from './status.js'

export const CHILD_PATH = fileURLToPath(new URL('./child.js', import.meta.url))

/** Back-off after an exit: 1 s, doubling while it keeps dying within STABLE_MS of its start, at most 30 s. */
export const BACKOFF_MIN_MS = 1000
export const BACKOFF_MAX_MS = 30_000
export const STABLE_MS = 60_000
/** Node-RED's nice value (the daemon's is 0): the daemon gets the CPU first. Its unit says Nice=10 too. */
export const NODE_RED_NICE = 10
/** Environment the daemon never passes on: systemd's notify socket and watchdog, its credentials, socket activation. */
const WITHHELD_ENV = [
  'NOTIFY_SOCKET',
  'WATCHDOG_USEC',
  'WATCHDOG_PID',
  'CREDENTIALS_DIRECTORY',
  'LISTEN_FDS',
  'LISTEN_PID',
  'LISTEN_FDNAMES',
  'NODE_OPTIONS',
]

export type { NodeRedState, NodeRedStatus } from './status.js'

export interface SupervisorOptions {
  daemon: Daemon
  config: SiteConfig
  server: Server
  logger: Logger
  settings: Omit<ChildSettings, 'proxySecret' | 'logLevel'>
  /** Who to run it as (uid/gid), or undefined: the daemon's own user. */
  runAs?: { name: string; uid: number; gid: number }
  /** Node-RED runs under its own unit (the installed units): listen here and take the connection that gives `token`. */
  unit?: { socket: string; token: string }
  /** Monotonic milliseconds. */
  now?: () => number
  /** Wall clock for `since`/`at` (the daemon's injected clock). */
  wallNow?: () => number
  pingMs?: number
  hangMs?: number
  startMs?: number
}

export class NodeRedSupervisor {
  private child: ChildProcess | undefined
  private channel: DaemonChannel | undefined
  private listener: NetServer | undefined
  private port: number | undefined
  private readyPid: number | undefined
  private readonly secret = randomBytes(24).toString('base64url')
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 16 })
  private readonly sockets = new Set<Duplex>()
  private state: NodeRedState = 'starting'
  private since: number
  private restarts = 0
  private attached = 0
  private failures = 0
  private spawnedAt = 0
  private adoptedAt = 0
  private lastPong = 0
  private lastExit: NodeRedStatus['lastExit'] = null
  private startMs: number | null = null
  private killedWhy: string | undefined
  private timer: NodeJS.Timeout | undefined
  private pinger: NodeJS.Timeout | undefined
  private stopping = false
  private waiters: (() => void)[] = []
  readonly counters: ChannelCounters = { commands: 0, refused: 0, droppedEvents: 0, droppedLogs: 0, malformed: 0 }
  private readonly log: Logger
  private readonly now: () => number
  private readonly wallNow: () => number
  private readonly onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => this.upgrade(req, socket, head)

  constructor(private readonly o: SupervisorOptions) {
    this.log = o.logger.child({ component: 'node-red' })
    this.now = o.now ?? (() => performance.now())
    this.wallNow = o.wallNow ?? Date.now
    this.since = this.wallNow()
  }

  /** Spawns Node-RED (or, under its own unit, listens for it) and returns: the daemon never waits for it to be ready. */
  async start(): Promise<void> {
    this.o.server.on('upgrade', this.onUpgrade)
    if (this.o.unit) await this.listen(this.o.unit)
    else this.spawn()
  }

  /** Resolves once Node-RED is (again) ready for requests. */
  ready(): Promise<void> {
    if (this.state === 'running') return Promise.resolve()
    return new Promise((r) => this.waiters.push(r))
  }

  pid(): number | undefined {
    return this.child?.pid ?? this.readyPid
  }

  status(): NodeRedStatus {
    const c = this.counters
    return {
      state: this.state,
      supervisor: this.o.unit ? 'unit' : 'daemon',
      pid: this.pid() ?? null,
      user: this.o.unit ? null : (this.o.runAs?.name ?? currentUser()),
      restarts: this.restarts,
      since: new Date(this.since).toISOString(),
      lastExit: this.lastExit,
      startMs: this.startMs,
      commands: c.commands,
      refused: c.refused,
      droppedEvents: c.droppedEvents,
    }
  }

  /** The editor and its admin API (mounted without the API token: Node-RED has its own login). */
  readonly admin = (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void): void => this.proxy(req, res, next, false)
  /** Flows' own endpoints (mounted behind the API token, which is not passed on). */
  readonly node = (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void): void => this.proxy(req, res, next, true)

  async stop(): Promise<void> {
    if (this.stopping) return
    this.stopping = true
    clearTimeout(this.timer)
    clearInterval(this.pinger)
    this.o.server.off('upgrade', this.onUpgrade)
    for (const s of this.sockets) s.destroy()
    const child = this.child
    this.channel?.close()
    if (this.listener) {
      const l = this.listener
      await new Promise<void>((r) => l.close(() => r()))
      rmSync(this.o.unit!.socket, { force: true })
    }
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((r) => child.once('exit', () => r()))
      // The channel's end tells it to exit; a Node-RED that does not within 5 s is killed.
      const kill = setTimeout(() => child.kill('SIGKILL'), 5000)
      child.kill('SIGTERM')
      await exited
      clearTimeout(kill)
    }
    this.agent.destroy()
    this.setState('stopped')
    this.log.info('node-red stopped')
  }

  // ---------------------------------------------------------------- the process

  private spawn(): void {
    if (this.stopping) return
    const { config, runAs } = this.o
    const env: NodeJS.ProcessEnv = { ...process.env, HOME: this.o.settings.userDir }
    for (const k of WITHHELD_ENV) delete env[k]
    const maxMb = config.nodeRed?.maxMemoryMb ?? 256
    this.killedWhy = undefined
    this.spawnedAt = this.now()
    let child: ChildProcess
    try {
      child = spawn(process.execPath, [...sizeFlags(), `--max-old-space-size=${maxMb}`, CHILD_PATH], {
        cwd: this.o.settings.userDir,
        env,
        stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
        ...(runAs ? { uid: runAs.uid, gid: runAs.gid } : {}),
      })
    } catch (err) {
      this.exited(null, null, `spawn failed: ${(err as Error).message}`)
      return
    }
    this.child = child
    child.on('error', (err) => this.log.error({ err: err.message }, 'node-red process error'))
    // Below the daemon on the CPU: a flow that busy-loops takes only what the daemon leaves.
    if (child.pid !== undefined) {
      try {
        setPriority(child.pid, NODE_RED_NICE)
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'could not lower node-red’s CPU priority')
      }
    }
    for (const [name, s] of [
      ['stdout', child.stdout],
      ['stderr', child.stderr],
    ] as const)
      if (s) logOutput(s, name, this.log)
    const hung = (why: string): void => this.kill(why)
    const channel = this.attach(child.stdio[3] as Duplex, undefined, hung)
    this.adopt(channel, hung)
    void channel.open().catch((err: Error) => this.kill(`the channel did not open: ${err.message}`))
    child.once('exit', (code, signal) => {
      if (child === this.child) this.exited(code, signal, this.killedWhy ?? (signal ? `killed by ${signal}` : `exited with ${code}`))
    })
    this.setState(this.restarts === 0 && this.lastExit === null ? 'starting' : 'restarting')
  }

  /** A channel on `stream` (the child's fd 3, or a connection to the unit's socket); it becomes Node-RED's at `adopt`. */
  private attach(stream: Duplex, token: string | undefined, hung: (why: string) => void): DaemonChannel {
    const channel: DaemonChannel = new DaemonChannel({
      daemon: this.o.daemon,
      stream,
      log: this.log,
      settings: { ...this.o.settings, proxySecret: this.secret, logLevel: this.log.level },
      commandRate: this.o.config.nodeRed?.commandRate ?? 20,
      now: this.now,
      counters: this.counters,
      ...(token !== undefined ? { token, onAuthed: () => this.authed(channel, hung) } : {}),
      onReady: (m) => {
        if (channel !== this.channel || typeof m.port !== 'number') return
        this.port = m.port
        this.readyPid = typeof m.pid === 'number' ? m.pid : undefined
        this.startMs = Math.round(this.now() - this.adoptedAt)
        this.setState('running')
        const o = this.o.settings
        this.log.info(
          {
            pid: this.pid(),
            user: this.status().user,
            supervisor: this.status().supervisor,
            adminRoot: o.adminRoot,
            nodeRoot: o.nodeRoot,
            userDir: o.userDir,
            flowFile: o.flowFile,
            version: m.version,
            startMs: this.startMs,
            restarts: this.restarts,
            auth: Boolean(o.adminAuth),
          },
          'node-red running',
        )
        for (const w of this.waiters.splice(0)) w()
      },
      onPong: () => {
        if (channel === this.channel) this.lastPong = this.now()
      },
      onBroken: (why) => hung(`the channel broke: ${why}`),
    })
    return channel
  }

  /** `channel` is Node-RED's from now on: pinged every pingMs; unanswered for hangMs (or not ready within startMs), `hung`. */
  private adopt(channel: DaemonChannel, hung: (why: string) => void): void {
    this.channel = channel
    this.port = undefined
    this.readyPid = undefined
    this.adoptedAt = this.now()
    this.lastPong = this.adoptedAt
    clearInterval(this.pinger)
    const pingMs = this.o.pingMs ?? 5000
    const hangMs = this.o.hangMs ?? 15_000
    const startMs = this.o.startMs ?? 120_000
    this.pinger = setInterval(() => {
      if (channel !== this.channel) return
      const now = this.now()
      if (now - this.lastPong > hangMs) return hung(`did not answer for ${Math.round((now - this.lastPong) / 1000)} s`)
      if (this.port === undefined && now - this.adoptedAt > startMs) return hung(`not ready ${Math.round(startMs / 1000)} s after its start`)
      channel.ping()
    }, pingMs)
    this.pinger.unref()
  }

  private kill(why: string): void {
    const child = this.child
    if (!child || child.exitCode !== null || child.signalCode !== null) return
    this.killedWhy = why
    this.log.error({ pid: child.pid, why }, 'node-red is killed')
    child.kill('SIGKILL')
  }

  private exited(code: number | null, signal: string | null, why: string): void {
    clearInterval(this.pinger)
    this.detach()
    this.lastExit = { code, signal, at: new Date(this.wallNow()).toISOString(), why }
    if (this.stopping) return
    const ranMs = this.now() - this.spawnedAt
    this.failures = ranMs >= STABLE_MS ? 0 : this.failures + 1
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.max(0, this.failures - 1))
    this.log.error({ code, signal, why, restartInMs: delay, restarts: this.restarts }, 'node-red exited; charging goes on, restarting it')
    this.setState('restarting')
    this.timer = setTimeout(() => {
      this.restarts++
      this.spawn()
    }, delay)
    this.timer.unref()
  }

  private detach(): void {
    this.channel?.close()
    this.channel = undefined
    this.port = undefined
    this.readyPid = undefined
    for (const s of this.sockets) s.destroy()
  }

  // ---------------------------------------------------------------- under its own unit

  /**
   * Node-RED under its own systemd unit (its user, its sandbox, systemd's restarts and watchdog)
   * connects here; the connection that gives the credential first becomes the channel (a new one
   * replaces the old: a restarted Node-RED). Connections without it are closed unheard.
   */
  private async listen(unit: { socket: string; token: string }): Promise<void> {
    rmSync(unit.socket, { force: true })
    const server = createNetServer((conn) => {
      if (this.stopping) return void conn.destroy()
      // Unauthenticated connections get 5 s to say who they are.
      const t = setTimeout(() => conn.destroy(), 5000)
      conn.once('close', () => clearTimeout(t))
      const channel = this.attachUnit(conn, unit.token, () => clearTimeout(t))
      conn.once('close', () => {
        if (channel !== this.channel || this.stopping) return
        this.detach()
        this.lastExit = { code: null, signal: null, at: new Date(this.wallNow()).toISOString(), why: 'its connection closed' }
        this.log.error('node-red disconnected; charging goes on (its unit restarts it)')
        this.setState('waiting')
      })
    })
    this.listener = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(unit.socket, () => resolve())
    })
    server.on('error', (err) => this.log.error({ err: err.message }, 'node-red channel socket error'))
    // Anyone may connect; only the credential's holder is heard (docs/nodered.md).
    chmodSync(unit.socket, 0o666)
    this.setState('waiting')
    this.log.info({ socket: unit.socket }, 'node-red runs under its own unit: waiting for it on the channel socket')
  }

  private attachUnit(conn: Socket, token: string, heard: () => void): DaemonChannel {
    const channel = this.attach(conn, token, (why) => {
      this.log.error({ why }, "node-red's channel closed (its unit's watchdog restarts a Node-RED that hangs)")
      conn.destroy()
    })
    this.pending.set(channel, heard)
    conn.once('close', () => this.pending.delete(channel))
    return channel
  }

  private readonly pending = new Map<DaemonChannel, () => void>()

  private authed(channel: DaemonChannel, hung: (why: string) => void): void {
    this.pending.get(channel)?.()
    this.pending.delete(channel)
    if (this.channel && this.channel !== channel) this.detach()
    if (this.attached++ > 0) this.restarts++
    this.adopt(channel, hung)
    this.setState('starting')
    void channel.open().catch((err: Error) => this.log.error({ err: err.message }, 'the node-red channel did not open'))
  }

  private setState(s: NodeRedState): void {
    if (s !== this.state) this.since = this.wallNow()
    this.state = s
  }

  // ---------------------------------------------------------------- HTTP

  private proxy(req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void, isNode: boolean): void {
    if (this.stopping) return void next()
    const port = this.port
    if (port === undefined) {
      return void sendError(
        res,
        new HttpError(503, 'node-red-unavailable', `Node-RED is ${this.state} (see the status page); charging goes on without it`, {
          'retry-after': '5',
        }),
      )
    }
    const path = (req as IncomingMessage & { originalUrl?: string }).originalUrl ?? req.url ?? '/'
    const headers = forwardHeaders(req, this.secret, isNode)
    const up = request({ host: '127.0.0.1', port, method: req.method, path, headers, agent: this.agent }, (ures) => {
      res.writeHead(ures.statusCode ?? 502, ures.headers)
      ures.pipe(res)
    })
    up.setTimeout(60_000, () => up.destroy(new Error('Node-RED did not answer within 60 s')))
    up.on('error', (err) => {
      if (res.headersSent) return void res.destroy()
      sendError(res, new HttpError(502, 'node-red-unavailable', `Node-RED did not answer: ${err.message}`))
    })
    req.pipe(up)
  }

  /** The editor's websocket: piped to Node-RED's, the secret added. */
  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const root = this.o.settings.adminRoot === '/' ? '' : this.o.settings.adminRoot
    if ((req.url ?? '').split('?')[0] !== `${root}/comms`) return
    const port = this.port
    if (port === undefined || this.stopping) return void socket.destroy()
    const upstream: Socket = connect(port, '127.0.0.1')
    this.sockets.add(socket)
    this.sockets.add(upstream)
    const drop = (): void => {
      socket.destroy()
      upstream.destroy()
      this.sockets.delete(socket)
      this.sockets.delete(upstream)
    }
    socket.on('error', drop).on('close', drop)
    upstream.on('error', drop).on('close', drop)
    upstream.on('connect', () => {
      const headers = forwardHeaders(req, this.secret, false)
      const lines = [`${req.method} ${req.url} HTTP/1.1`]
      for (const [k, v] of Object.entries(headers)) for (const one of Array.isArray(v) ? v : [v]) if (one !== undefined) lines.push(`${k}: ${one}`)
      upstream.write(lines.join('\r\n') + '\r\n\r\n')
      if (head.length) upstream.write(head)
      socket.pipe(upstream)
      upstream.pipe(socket)
    })
  }
}

/** The request's headers for Node-RED: the proxy's secret in, the status page's cookie out, and for flows' endpoints the API token out. */
function forwardHeaders(req: IncomingMessage, secret: string, isNode: boolean): Record<string, string | string[] | undefined> {
  const h: Record<string, string | string[] | undefined> = { ...req.headers }
  delete h[PROXY_HEADER]
  if (isNode) delete h.authorization
  if (typeof h.cookie === 'string') {
    const kept = h.cookie
      .split(';')
      .map((c) => c.trim())
      .filter((c) => c && !c.startsWith(`${SESSION_COOKIE}=`))
    if (kept.length) h.cookie = kept.join('; ')
    else delete h.cookie
  }
  h[PROXY_HEADER] = secret
  return h
}

/** The process's stdout/stderr (a crash's stack, V8's out-of-memory report) into the log, at most 50 lines a second. */
function logOutput(s: NodeJS.ReadableStream, stream: string, log: Logger): void {
  let held = ''
  let window = { at: 0, n: 0 }
  s.setEncoding('utf8')
  s.on('data', (chunk: string) => {
    const lines = (held + chunk).split('\n')
    held = (lines.pop() ?? '').slice(0, 8192)
    const now = Date.now()
    if (now - window.at >= 1000) window = { at: now, n: 0 }
    for (const line of lines) if (line.trim() && ++window.n <= 50) log.warn({ stream }, line.slice(0, 8192))
  })
}

/** The daemon's own V8 size flags (the unit's, the bin's), which Node-RED runs with too; nothing else of its command line (loaders, inspectors). */
function sizeFlags(): string[] {
  return process.execArgv.filter((a) => /^--(max-semi-space-size=\d+|optimize-for-size|lite-mode)$/.test(a))
}

function currentUser(): string {
  try {
    return process.env.USER ?? String(process.getuid?.() ?? '')
  } catch {
    return ''
  }
}
