/**
 * The local HTTP server (node:http, no framework): the JSON API of
 * docs/contract.md "Local HTTP API", the status page at `/` with its live
 * stream (`/api/events`), `/metrics`, and mount points for embedded Node-RED.
 *
 * Owns: binding `api.listen` (and, when the port is taken, logging one clear
 * error and trying again every `retryMs` while the daemon keeps charging — the
 * API is not worth stopping billing for), the token check on every route but
 * `/api/health` and the sign-in form (see auth.ts), the refusal of a change by a viewer
 * or made with the cookie from another page (CSRF), request size limits, and
 * routing mounted handlers (express-style) under their prefixes WITHOUT the token
 * (Node-RED has its own adminAuth).
 *
 * Must never: change anything for a refused request, let a handler's failure
 * take the daemon down, or start/stop a session other than through the command
 * gateway (`daemon.gateway.handle(..., 'local')`).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { TLSSocket } from 'node:tls'
import type { Socket } from 'node:net'
import type { Daemon } from '../daemon.js'
import type { Logger } from '../log.js'
import type { ApiConfig } from '../../core/types.js'
import { OutpostError } from '../errors.js'
import type { HttpHandler } from '../nodered/index.js'
import { AuthThrottle, TokenAuth, crossSite, presentsCredentials, signOutCookie, type Principal } from './auth.js'
import { HttpError, allow, mediaType, readBody, sendError } from './util.js'
import { ApiRoutes } from './routes.js'
import { StaticFiles } from './static.js'
import type { ConfigStore } from '../config-store.js'

export interface LocalApiOptions {
  daemon: Daemon
  config: ApiConfig
  logger: Logger
  /** Wall clock (the daemon's injected clock). */
  now: () => number
  /** The config file as the daemon runs it: the config routes (GET, check, save, versions, rollback) need it; without it they answer 404. */
  configStore?: ConfigStore
  /** A taken port is tried again this often (default 10 s). */
  retryMs?: number
  /** When the port is taken, listen on any free port of the same host instead of retrying (the demo). */
  anyPortIfTaken?: boolean
  /** The live stream sends a full snapshot this often (default 2 s). */
  snapshotMs?: number
  /** The chart's history (sent to a page when it connects) is sampled this often (default 5 s, 5 minutes kept). */
  chartSampleMs?: number
}

interface Mount {
  prefix: string
  handler: HttpHandler
  /** Whether the API's token (Bearer or a signed-in browser) is required. */
  token: boolean
}

export const DEFAULT_LISTEN = '127.0.0.1:8080'

/** Splits `host:port` (`[::1]:8080` for IPv6). */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})$/.exec(listen)
  const port = m ? Number(m[3]) : NaN
  if (!m || port > 65535) throw new OutpostError('API_BAD_LISTEN', `api.listen must be host:port, got ${JSON.stringify(listen)}`)
  return { host: m[1] ?? m[2]!, port }
}

export class LocalApi {
  readonly server: Server
  private tokens: { of: ApiConfig; auth: TokenAuth }
  private readonly throttle: AuthThrottle
  private readonly routes: ApiRoutes
  private readonly files = new StaticFiles()
  private readonly mounts: Mount[] = []
  private readonly log: Logger
  private readonly host: string
  private readonly port: number
  private retry: NodeJS.Timeout | undefined
  private stopped = false
  private bound: { host: string; port: number } | undefined
  private readonly sockets = new Set<Socket>()

  constructor(private readonly opts: LocalApiOptions) {
    this.log = opts.logger
    this.tokens = { of: opts.config, auth: new TokenAuth(opts.config.token, opts.config.tokens) }
    this.throttle = new AuthThrottle(opts.now)
    const { host, port } = parseListen(opts.config.listen || DEFAULT_LISTEN)
    this.host = host
    this.port = port
    this.routes = new ApiRoutes({
      daemon: opts.daemon,
      configStore: opts.configStore,
      now: opts.now,
      snapshotMs: opts.snapshotMs ?? 2000,
      chartSampleMs: opts.chartSampleMs ?? 5000,
      logger: opts.logger,
    })
    this.server = createServer((req, res) => void this.handle(req, res))
    this.server.on('connection', (s) => {
      this.sockets.add(s)
      s.once('close', () => this.sockets.delete(s))
    })
    this.server.on('clientError', (_err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n')
      else socket.destroy()
    })
  }

  /**
   * Serves `handler` (an express-style `(req, res, next)`, e.g. Node-RED's httpAdmin app)
   * for every path equal to `prefix` or under `prefix/`, without the API token unless
   * `opts.token` (Node-RED's editor has its own adminAuth; flows' endpoints take the token). As
   * express's `app.use(prefix, app)` does, the handler sees `req.url` without the prefix
   * (`req.originalUrl` keeps the full one, `req.baseUrl` the prefix). The API's own routes
   * come first; among mounts the longest prefix wins; `next()` answers 404.
   */
  mount(prefix: string, handler: HttpHandler, opts: { token?: boolean } = {}): void {
    if (typeof prefix !== 'string' || !prefix.startsWith('/'))
      throw new OutpostError('API_BAD_MOUNT', `mount: the prefix must start with '/', got ${JSON.stringify(prefix)}`)
    const p = prefix === '/' ? '/' : prefix.replace(/\/+$/, '')
    if (this.mounts.some((m) => m.prefix === p)) throw new OutpostError('API_BAD_MOUNT', `mount: ${p} is already mounted`)
    this.mounts.push({ prefix: p, handler, token: opts.token ?? false })
    this.mounts.sort((a, b) => b.prefix.length - a.prefix.length)
  }

  /**
   * Binds api.listen. Resolves after the first attempt whether or not it succeeded:
   * a taken port is logged and retried in the background (or, with anyPortIfTaken,
   * replaced by a free one).
   */
  async start(): Promise<void> {
    await this.tryListen(this.port)
  }

  /** Where it listens, once it does. */
  address(): { host: string; port: number } | undefined {
    return this.bound
  }

  /** The status page's URL, once listening. */
  url(): string | undefined {
    if (!this.bound) return undefined
    const h = this.bound.host.includes(':') ? `[${this.bound.host}]` : this.bound.host
    return `http://${h}:${this.bound.port}/`
  }

  async stop(): Promise<void> {
    this.stopped = true
    if (this.retry) clearTimeout(this.retry)
    this.routes.close()
    if (!this.server.listening) return
    const closed = new Promise<void>((r) => this.server.close(() => r()))
    for (const s of this.sockets) s.destroy()
    await closed
    this.bound = undefined
  }

  private async tryListen(port: number): Promise<void> {
    const err = await this.listenOnce(port)
    if (!err) return
    if (this.opts.anyPortIfTaken && err.code === 'EADDRINUSE' && port !== 0) {
      this.log.warn({ listen: `${this.host}:${port}` }, 'local API port is taken; listening on a free port instead')
      return this.tryListen(0)
    }
    const retryMs = this.opts.retryMs ?? 10_000
    this.log.error(
      { listen: `${this.host}:${port}`, code: err.code, err: err.message, retryMs },
      'local API cannot listen; charging continues, retrying',
    )
    // Later attempts log only on success: the first failure said it all.
    const again = async (): Promise<void> => {
      if (this.stopped) return
      if (await this.listenOnce(port)) this.retry = setTimeout(() => void again(), retryMs)
    }
    if (!this.stopped) this.retry = setTimeout(() => void again(), retryMs)
  }

  /** One bind attempt: undefined once listening, else the error. */
  private listenOnce(port: number): Promise<NodeJS.ErrnoException | undefined> {
    return new Promise((resolve) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        this.server.off('listening', onListening)
        resolve(err)
      }
      const onListening = (): void => {
        this.server.off('error', onError)
        if (this.stopped) {
          this.server.close()
          resolve(undefined)
          return
        }
        const a = this.server.address()
        this.bound = { host: this.host, port: a && typeof a === 'object' ? a.port : port }
        this.log.info({ url: this.url() }, 'local API listening')
        resolve(undefined)
      }
      this.server.once('error', onError)
      this.server.once('listening', onListening)
      this.server.listen(port, this.host)
    })
  }

  // ---------------------------------------------------------------- requests

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      await this.route(req, res)
    } catch (err) {
      const e = err instanceof HttpError ? err : new HttpError(500, 'internal', `the request failed: ${(err as Error).message}`)
      if (e.status >= 500) this.log.error({ method: req.method, url: req.url, code: e.code, err: e.message }, 'local API request failed')
      if (!res.headersSent) sendError(res, e)
      else res.destroy()
    }
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost')
    const path = url.pathname
    const method = req.method ?? 'GET'

    // Open: health, the sign-in form and its POST.
    if (path === '/api/health') return this.routes.health(method, res)
    if (path === '/login') return this.login(req, res, method)
    if (path === '/logout') {
      allow(method, ['POST'])
      res.writeHead(303, { location: '/', 'set-cookie': signOutCookie(), 'cache-control': 'no-store' })
      return void res.end()
    }

    const builtin = path === '/' || path === '/metrics' || path.startsWith('/api/') || path === '/api' || path.startsWith('/static/')
    if (!builtin) {
      const m = this.mounts.find((x) => x.prefix === '/' || path === x.prefix || path.startsWith(x.prefix + '/'))
      if (!m) throw notFound(path)
      if (m.token) {
        const who = this.checkAuth(req)
        if (!who) throw unauthorized(m.prefix)
        refuseChange(req, method, path, who)
      }
      return this.runMount(m, req, res, url)
    }

    const who = this.checkAuth(req)
    if (!who) {
      if (path === '/' && (method === 'GET' || method === 'HEAD')) return this.files.signIn(res, 401, '')
      throw unauthorized('this route')
    }
    refuseChange(req, method, path, who)
    if (this.files.route(res, method, path, 'index.html')) return
    // A browser's cookie travels with cross-site requests only for navigations it starts itself
    // (SameSite=Strict), a cross-site form cannot send application/json, and a change made with
    // the cookie must carry this page's Origin (above): CSRF is refused three times over.
    return this.routes.handle(req, res, method, path, url.searchParams, who)
  }

  /** The tokens in force: a config applied while the daemon runs may change `api.token` and `api.tokens` (the listener stays). */
  private auth(): TokenAuth {
    const api = this.opts.daemon.config.api ?? this.opts.config
    if (api !== this.tokens.of) this.tokens = { of: api, auth: new TokenAuth(api.token, api.tokens) }
    return this.tokens.auth
  }

  /** The token check, with the guessing throttle (429 after too many wrong tokens from one address). */
  private checkAuth(req: IncomingMessage): (Principal & { how: 'bearer' | 'cookie' }) | undefined {
    if (!presentsCredentials(req)) return undefined
    const addr = req.socket.remoteAddress ?? ''
    this.refuseIfThrottled(addr)
    const how = this.auth().check(req)
    if (!how) this.throttle.fail(addr)
    return how
  }

  private refuseIfThrottled(addr: string): void {
    const wait = this.throttle.blockedFor(addr)
    if (wait > 0)
      throw new HttpError(429, 'too-many-attempts', `too many wrong tokens from ${addr}; try again in ${wait} s`, { 'retry-after': String(wait) })
  }

  private async login(req: IncomingMessage, res: ServerResponse, method: string): Promise<void> {
    if (method === 'GET' || method === 'HEAD') return this.files.signIn(res, 200, '')
    allow(method, ['GET', 'HEAD', 'POST'])
    const type = mediaType(req)
    if (type !== 'application/x-www-form-urlencoded')
      throw new HttpError(
        415,
        'unsupported-media-type',
        `POST /login takes a form (application/x-www-form-urlencoded) with the field "token", got ${type || 'no content type'}`,
      )
    const form = new URLSearchParams(await readBody(req, 4096))
    const token = form.get('token')
    if (token === null || token === '') return this.files.signIn(res, 400, 'Enter the token (api.token in the site configuration).')
    const addr = req.socket.remoteAddress ?? ''
    this.refuseIfThrottled(addr)
    if (!this.auth().accepts(token)) {
      this.throttle.fail(addr)
      this.log.warn({ from: addr }, 'local API: a sign-in with a wrong token')
      return this.files.signIn(res, 401, 'That token is not right.')
    }
    const secure = (req.socket as TLSSocket).encrypted === true
    res.writeHead(303, { location: '/', 'set-cookie': this.auth().signInCookie(token, secure), 'cache-control': 'no-store' })
    res.end()
  }

  private runMount(m: Mount, req: IncomingMessage, res: ServerResponse, url: URL): void {
    const original = req.url ?? '/'
    const method = req.method ?? 'GET'
    if (m.prefix !== '/' && url.pathname === m.prefix && (method === 'GET' || method === 'HEAD')) {
      // An editor at /red must be /red/ for its relative URLs to resolve.
      res.writeHead(301, { location: m.prefix + '/' + url.search })
      return void res.end()
    }
    const r = req as IncomingMessage & { originalUrl?: string; baseUrl?: string }
    r.originalUrl ??= original
    r.baseUrl = m.prefix === '/' ? '' : m.prefix
    if (m.prefix !== '/') r.url = original.slice(m.prefix.length) || '/'
    const next = (err?: unknown): void => {
      r.url = original
      if (res.headersSent) return void res.end()
      if (err) {
        this.log.error({ prefix: m.prefix, err: (err as Error)?.message ?? String(err) }, 'mounted handler failed')
        sendError(res, new HttpError(500, 'internal', `the handler under ${m.prefix} failed`))
      } else {
        sendError(res, notFound(url.pathname))
      }
    }
    try {
      m.handler(r, res, next)
    } catch (err) {
      next(err)
    }
  }
}

/** A change (any method but GET and HEAD) made with the cookie from another page, or by a viewer: refused, 403. */
function refuseChange(req: IncomingMessage, method: string, path: string, who: Principal & { how: 'bearer' | 'cookie' }): void {
  if (method === 'GET' || method === 'HEAD') return
  if (who.how === 'cookie') {
    const why = crossSite(req)
    if (why) throw new HttpError(403, 'cross-site', `${method} ${path} refused: ${why}`)
  }
  if (who.role === 'viewer') throw new HttpError(403, 'forbidden', `${who.who} may only read: the viewer role cannot ${method} ${path}`)
}

function unauthorized(what: string): HttpError {
  return new HttpError(401, 'unauthorized', `${what} needs Authorization: Bearer <api.token> (or a browser signed in at /)`, {
    'www-authenticate': 'Bearer realm="outpost"',
  })
}

function notFound(path: string): HttpError {
  return new HttpError(404, 'not-found', `no route ${path} (see docs/contract.md "Local HTTP API")`)
}
