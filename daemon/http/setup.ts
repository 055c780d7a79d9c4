/**
 * The first-run setup server: what `outpost run` serves while it has no valid config (the
 * file does not exist yet, or the checks of `check-config` refuse it). Nothing of the site
 * runs meanwhile: no bus, device or relay is opened, so every relay stays as it is wired to
 * rest (open). A first valid config saved here is written atomically (daemon/config-store.ts)
 * and handed back to `outpost run`, which starts the site in the same process.
 *
 * The page is protected by a one-time setup code, in the manner of Jupyter's token and Home
 * Assistant's onboarding: printed in the log (stdout, the systemd journal) and written to a file
 * of mode 0600. The first right code opens one setup session (a cookie) and is spent; a wrong one
 * counts against the address as a wrong API token does (auth.ts AuthThrottle).
 *
 * Owns: the setup code (made, compared in constant time, spent once), the setup session, the
 * setup routes (docs/contract.md "First run"), saving the first valid config.
 * Must never: open anything of the site, save a config the checks refuse (the same code as
 * `check-config`: daemon/config.ts), or accept the code a second time.
 */
import { randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { hostname, networkInterfaces } from 'node:os'
import { unlink } from 'node:fs/promises'
import type { SiteConfig } from '../../core/types.js'
import type { Logger } from '../log.js'
import { checkConfigText, type ConfigProblem } from '../config.js'
import type { ConfigStore } from '../config-store.js'
import { writeAtomic } from '../journal/fsync.js'
import { isOutpostError } from '../errors.js'
import { AuthThrottle, crossSite, readCookie, sameSecret } from './auth.js'
import { configText, invalidConfig } from './config-routes.js'
import { parseListen } from './server.js'
import { LINE_HINTS } from './scan-routes.js'
import { listSerialPorts } from '../../drivers/scan.js'
import { ModelRegistry } from '../../drivers/models.js'
import { StaticFiles } from './static.js'
import { HttpError, allow, mediaType, readBody, sendError, sendJson } from './util.js'

/**
 * Where the setup page listens unless `--listen` says otherwise: every interface, so that an
 * installer's laptop on the site's LAN reaches it (a fresh gateway has no screen). The code
 * keeps strangers on that LAN out; plain HTTP means someone who can watch the LAN's traffic
 * could read it (docs/contract.md "First run").
 */
export const DEFAULT_SETUP_LISTEN = '0.0.0.0:8080'
export const SETUP_COOKIE = 'outpost_setup'

/** Why there is no site to run: no config file yet, or one the checks refuse. */
export type SetupState = 'missing' | 'invalid'

export interface SetupOptions {
  /** The config file as named on the command line. */
  file: string
  store: ConfigStore
  state: SetupState
  /** The problems of the file as it is (state `invalid`). */
  problems: ConfigProblem[]
  listen: string
  /** Where the code is written (mode 0600). */
  codeFile: string
  logger: Logger
  now: () => number
}

/** Where the setup code is written: the service's state directory under systemd ($STATE_DIRECTORY), else beside the config. */
export function setupCodeFile(configFile: string, env: NodeJS.ProcessEnv = process.env): string {
  const state = env.STATE_DIRECTORY?.split(':')[0]
  return state ? `${state.replace(/\/+$/, '')}/setup-code` : `${configFile}.setup-code`
}

/** 20 characters of an alphabet without look-alikes (100 bits), in groups of four: typed from a journal line. */
function makeCode(): string {
  const alphabet = '23456789ABCDEFGHJKLMNPQRSTUVWXYZ' // 32: no 0/O, 1/I
  const bytes = randomBytes(20)
  const chars = [...bytes].map((b) => alphabet[b & 31]!)
  return [0, 4, 8, 12, 16].map((i) => chars.slice(i, i + 4).join('')).join('-')
}

const normalize = (code: string): string => code.toUpperCase().replace(/[\s-]/g, '')

export class SetupServer {
  readonly code = makeCode()
  /** Resolves with the first valid config once it is saved (and its answer sent). */
  readonly saved: Promise<SiteConfig>
  private resolveSaved!: (c: SiteConfig) => void
  private readonly server: Server
  private readonly files = new StaticFiles()
  private readonly throttle: AuthThrottle
  private readonly sockets = new Set<Socket>()
  private readonly host: string
  private readonly port: number
  private spent = false
  private session: string | undefined
  private done = false
  private lock: Promise<unknown> = Promise.resolve()
  private boundPort: number | undefined

  constructor(private readonly opts: SetupOptions) {
    const { host, port } = parseListen(opts.listen)
    this.host = host
    this.port = port
    this.throttle = new AuthThrottle(opts.now)
    this.saved = new Promise((r) => {
      this.resolveSaved = r
    })
    this.server = createServer((req, res) => void this.handle(req, res))
    this.server.on('connection', (s) => {
      this.sockets.add(s)
      s.once('close', () => this.sockets.delete(s))
    })
  }

  /** Listens (throws when it cannot), then prints the URLs and the code and writes the code file. */
  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(this.port, this.host, () => {
        this.server.off('error', reject)
        resolve()
      })
    })
    const a = this.server.address()
    this.boundPort = a && typeof a === 'object' ? a.port : this.port
    const urls = this.urls()
    let codeFile: string | null = this.opts.codeFile
    try {
      await writeAtomic(this.opts.codeFile, `${this.code}\n${urls.join('\n')}\n`, 0o600)
    } catch (err) {
      codeFile = null
      this.opts.logger.error(
        { codeFile: this.opts.codeFile, err: (err as Error).message },
        'setup: cannot write the setup code file; the code is in this log only',
      )
    }
    const why =
      this.opts.state === 'missing'
        ? `no config at ${this.opts.file} yet`
        : `the config at ${this.opts.file} has ${this.opts.problems.length} problem(s)`
    this.opts.logger.info(
      { setup: this.opts.state, urls, setupCode: this.code, codeFile, listen: `${this.host}:${this.boundPort}` },
      `setup: ${why}; nothing is opened on the buses (every relay stays open). Open ${urls[0]} and enter the setup code ${this.code}`,
    )
  }

  /** The URLs an installer can open: one per address of this host when it listens on every interface. */
  urls(): string[] {
    const port = this.boundPort ?? this.port
    const url = (h: string): string => `http://${h.includes(':') ? `[${h}]` : h}:${port}/`
    if (this.host !== '0.0.0.0' && this.host !== '::') return [url(this.host)]
    const addrs = Object.values(networkInterfaces())
      .flat()
      .filter((i) => i !== undefined && !i.internal && i.family === 'IPv4')
      .map((i) => i!.address)
    return [...addrs.map(url), url(hostname()), url('127.0.0.1')]
  }

  address(): { host: string; port: number } | undefined {
    return this.boundPort === undefined ? undefined : { host: this.host, port: this.boundPort }
  }

  async stop(): Promise<void> {
    if (!this.server.listening) return
    const closed = new Promise<void>((r) => this.server.close(() => r()))
    for (const s of this.sockets) s.destroy()
    await closed
    await unlink(this.opts.codeFile).catch(() => undefined)
  }

  // ---------------------------------------------------------------- requests

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      await this.route(req, res)
    } catch (err) {
      const e = err instanceof HttpError ? err : new HttpError(500, 'internal', `the request failed: ${(err as Error).message}`)
      if (e.status >= 500) this.opts.logger.error({ method: req.method, url: req.url, code: e.code, err: e.message }, 'setup request failed')
      if (!res.headersSent) sendError(res, e)
      else res.destroy()
    }
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname
    const method = req.method ?? 'GET'
    if (this.files.route(res, method, path, 'setup.html')) return
    if (path === '/api/health') return sendJson(res, 503, { ok: false, setup: this.opts.state })
    if (path === '/api/setup/session') {
      allow(method, ['POST'])
      return this.signIn(req, res)
    }
    if (path === '/api/setup' || path.startsWith('/api/setup/')) {
      this.checkSession(req)
      if (method !== 'GET' && method !== 'HEAD') {
        const why = crossSite(req)
        if (why) throw new HttpError(403, 'cross-site', `${method} ${path} refused: ${why}`)
      }
      const sub = path.slice('/api/setup'.length)
      if (sub === '') {
        allow(method, ['GET', 'HEAD'])
        const disk = await this.opts.store.onDisk()
        return sendJson(res, 200, {
          state: this.opts.state,
          file: this.opts.store.file,
          problems: this.opts.problems,
          text: disk.version === null ? null : disk.text,
        })
      }
      if (sub === '/ports') {
        // What the form offers: the serial ports found, the line settings to try, the meter
        // models a feeder meter may be (the same lists as the running site's bus scan).
        allow(method, ['GET', 'HEAD'])
        return sendJson(res, 200, {
          ports: await listSerialPorts(),
          ...LINE_HINTS,
          meterModels: new ModelRegistry()
            .all()
            .filter((m) => m.kinds.includes('meter') && m.transport === 'modbus')
            .map((m) => ({ name: m.name, phases: m.phases })),
        })
      }
      if (sub === '/check') {
        allow(method, ['POST'])
        const checked = checkConfigText(await configText(req))
        return sendJson(res, 200, checked.ok ? { ok: true, problems: [] } : { ok: false, problems: checked.problems })
      }
      if (sub === '/config') {
        allow(method, ['PUT'])
        const run = this.lock.then(() => this.save(req, res))
        this.lock = run.catch(() => undefined)
        return run
      }
    }
    throw new HttpError(
      503,
      'setup-mode',
      `${path}: the site is not running: ${this.opts.state === 'missing' ? 'it has no config yet' : 'its config has problems'}; set it up at / with the setup code`,
    )
  }

  /** The setup code, once: a right one opens the setup session (a cookie) and is spent. */
  private async signIn(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (mediaType(req) !== 'application/json')
      throw new HttpError(415, 'unsupported-media-type', 'the body must be {"code": "<setup code>"} (content-type: application/json)')
    let code: unknown
    try {
      code = (JSON.parse(await readBody(req, 4096)) as { code?: unknown } | null)?.code
    } catch {
      code = undefined
    }
    if (typeof code !== 'string' || code === '') throw new HttpError(400, 'invalid-request', 'body/code: the setup code is required')
    const addr = req.socket.remoteAddress ?? ''
    this.refuseIfThrottled(addr)
    if (!sameSecret(normalize(code), normalize(this.code))) {
      this.throttle.fail(addr)
      this.opts.logger.warn({ from: addr }, 'setup: a wrong setup code')
      throw new HttpError(401, 'wrong-setup-code', 'that is not the setup code (it is in the log, and in the setup code file)')
    }
    if (this.spent) throw new HttpError(410, 'setup-code-used', 'the setup code was used already, by one browser; restart the service for a new one')
    this.spent = true
    this.session = randomBytes(32).toString('base64url')
    await unlink(this.opts.codeFile).catch(() => undefined)
    this.opts.logger.info({ from: addr }, 'setup: the setup code was used; a setup session is open')
    sendJson(res, 200, { ok: true }, { 'set-cookie': `${SETUP_COOKIE}=${this.session}; HttpOnly; SameSite=Strict; Path=/` })
  }

  private checkSession(req: IncomingMessage): void {
    const cookie = readCookie(req, SETUP_COOKIE)
    if (cookie === undefined) throw new HttpError(401, 'setup-code-required', 'enter the setup code first (POST /api/setup/session)')
    const addr = req.socket.remoteAddress ?? ''
    this.refuseIfThrottled(addr)
    if (this.session === undefined || !sameSecret(cookie, this.session)) {
      this.throttle.fail(addr)
      throw new HttpError(401, 'setup-code-required', 'this setup session is not the one the setup code opened; enter the code')
    }
  }

  private refuseIfThrottled(addr: string): void {
    const wait = this.throttle.blockedFor(addr)
    if (wait > 0)
      throw new HttpError(429, 'too-many-attempts', `too many wrong setup codes from ${addr}; try again in ${wait} s`, {
        'retry-after': String(wait),
      })
  }

  /** The first valid config: checked as `check-config` does, written atomically, then handed to `outpost run`. */
  private async save(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.done) throw new HttpError(409, 'setup-done', 'a config was saved already; the site is starting')
    const text = await configText(req)
    const checked = checkConfigText(text)
    if (!checked.ok) throw invalidConfig(checked.problems)
    const store = this.opts.store
    const disk = await store.onDisk()
    const expected = this.opts.state === 'missing' ? null : store.current().version
    if (disk.version !== expected)
      throw new HttpError(
        409,
        'config-edited-on-disk',
        `${store.file} changed on disk since this setup started (edited by hand?): restart the service to run it as it is; nothing was changed`,
      )
    let version: string
    try {
      version = await store.save(text)
    } catch (err) {
      if (isOutpostError(err, 'CONFIG_WRITE_FAILED')) throw new HttpError(507, 'config-write-failed', err.message)
      throw err
    }
    this.done = true
    this.opts.logger.info({ configHash: version, file: store.file }, 'setup: a valid config was saved; starting the site')
    res.once('finish', () => this.resolveSaved(checked.config))
    sendJson(res, 200, { version, starting: true, api: checked.config.api?.listen ?? null })
  }
}
