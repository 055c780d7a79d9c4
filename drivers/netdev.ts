/**
 * Network devices: a Shelly or a Tasmota plug is a bus of its own, meter and
 * relay in one box on the local network. This module holds what both share:
 * HTTP with digest auth, the device's queue and health, and turning a model's
 * JSON paths into a Reading.
 *
 * Owns: one device's requests (relay commands never wait behind a poll; at
 * most one poll and one relay command in flight), timeouts and retries,
 * the counters behind health(), the auto-off re-arm rule, and decoding a reply
 * into quantities through the model's `device` section.
 * Must never: decide anything about sessions, hide a failed read (a silent
 * device is a failed read, which the engine turns into an outlet fault),
 * or smooth a counter (the engine judges resets and glitches from the raw value).
 */
import { createHash, randomBytes } from 'node:crypto'
import { Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { readFileSync } from 'node:fs'
import type { Logger } from 'pino'
import { OutpostError } from './errors.js'
import type { NetDeviceConfig, OutletConfig, Reading } from '../core/types.js'
import type { BusHealth, DeviceHealth, Priority } from './scheduler.js'
import { defaultChannel, toReading, type DeviceModel, type NetDeviceSpec, type NetValue } from './models.js'
import type { OutletIO } from './outlet.js'

// ---------------------------------------------------------------- HTTP

export interface HttpReply {
  status: number
  headers: IncomingHttpHeaders
  body: string
}

/** Bodies larger than this are not a device's reply (and are never buffered whole). */
const MAX_BODY = 256 * 1024

/** One HTTP exchange with a deadline; NET_TIMEOUT or NET_UNREACHABLE, never a hang. */
export function httpExchange(
  agent: Agent,
  o: { host: string; port: number; method: 'GET' | 'POST'; path: string; body?: string; headers?: Record<string, string>; timeoutMs: number },
): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const where = `http://${o.host}:${o.port}${o.path.split('?')[0]}`
    const req = httpRequest({
      agent,
      host: o.host,
      port: o.port,
      method: o.method,
      path: o.path,
      headers: { ...(o.body !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(o.body) } : {}), ...o.headers },
    })
    const timer = setTimeout(() => {
      req.destroy(new OutpostError('NET_TIMEOUT', `${where} did not answer within ${o.timeoutMs} ms`))
    }, o.timeoutMs)
    req.on('response', (res) => {
      const chunks: Buffer[] = []
      let size = 0
      res.on('data', (c: Buffer) => {
        size += c.length
        if (size > MAX_BODY) req.destroy(new OutpostError('NET_BAD_REPLY', `${where} sent more than ${MAX_BODY} bytes`))
        else chunks.push(c)
      })
      res.on('end', () => {
        clearTimeout(timer)
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') })
      })
      res.on('error', () => undefined) // the request's error carries the reason
    })
    req.on('error', (err: Error & { code?: string }) => {
      clearTimeout(timer)
      if (err instanceof OutpostError) reject(err)
      else reject(new OutpostError('NET_UNREACHABLE', `${where}: ${err.code ?? ''} ${err.message}`.replace(/\s+/g, ' '), { cause: err }))
    })
    if (o.body !== undefined) req.write(o.body)
    req.end()
  })
}

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex')

/** RFC 7616's response with SHA-256 and qop "auth": what HTTP digest and Shelly's WebSocket auth both send. */
export function digestResponse(
  user: string,
  realm: string,
  password: string,
  nonce: string | number,
  nc: string | number,
  cnonce: string | number,
  ha2Of: string,
): string {
  const ha1 = sha256(`${user}:${realm}:${password}`)
  return sha256(`${ha1}:${nonce}:${nc}:${cnonce}:auth:${sha256(ha2Of)}`)
}

/**
 * RFC 7616 digest with SHA-256 and qop=auth, as Shelly Gen2+ requires (user admin).
 * The last challenge is kept and its nonce reused with a growing nc, so a device that
 * accepts it costs one round trip per request; a 401 with a new nonce is answered once.
 */
export class DigestAuth {
  private challenge: { realm: string; nonce: string; opaque?: string; qop?: string } | undefined
  private nc = 0
  constructor(
    readonly user: string,
    private readonly password: () => string,
  ) {}

  /** Takes a WWW-Authenticate header; false if it is not a SHA-256 digest challenge we can answer. */
  accept(header: string | undefined): boolean {
    if (!header || !/^\s*Digest\s/i.test(header)) return false
    const f = parseAuthParams(header.replace(/^\s*Digest\s+/i, ''))
    const alg = (f.algorithm ?? 'MD5').toUpperCase()
    if (alg !== 'SHA-256' || !f.realm || !f.nonce) return false
    this.challenge = { realm: f.realm, nonce: f.nonce, opaque: f.opaque, qop: f.qop }
    this.nc = 0
    return true
  }

  get ready(): boolean {
    return this.challenge !== undefined
  }

  get realm(): string | undefined {
    return this.challenge?.realm
  }

  /** The Authorization header for `method uri` under the last challenge. */
  header(method: string, uri: string): string {
    const c = this.challenge!
    const nc = (++this.nc).toString(16).padStart(8, '0')
    const cnonce = randomBytes(8).toString('hex')
    const response = digestResponse(this.user, c.realm, this.password(), c.nonce, nc, cnonce, `${method}:${uri}`)
    const parts = [
      `username="${this.user}"`,
      `realm="${c.realm}"`,
      `nonce="${c.nonce}"`,
      `uri="${uri}"`,
      'algorithm=SHA-256',
      `response="${response}"`,
      'qop=auth',
      `nc=${nc}`,
      `cnonce="${cnonce}"`,
    ]
    if (c.opaque !== undefined) parts.push(`opaque="${c.opaque}"`)
    return `Digest ${parts.join(', ')}`
  }
}

/** key=value and key="value" pairs of an auth header, keys lower-cased. */
function parseAuthParams(s: string): Record<string, string> {
  const out: Record<string, string> = {}
  const re = /([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g
  for (let m = re.exec(s); m; m = re.exec(s)) out[m[1]!.toLowerCase()] = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3]!
  return out
}

/** The first line of a password file, read when needed (a file fixed on disk is picked up at the next request). */
export function passwordReader(cfg: NetDeviceConfig): (() => string) | undefined {
  const file = cfg.passwordFile
  if (file === undefined) return undefined
  return () => {
    try {
      return readFileSync(file, 'utf8').split(/\r?\n/)[0] ?? ''
    } catch (err) {
      throw new OutpostError('NET_AUTH', `device ${cfg.id}: cannot read passwordFile ${file}: ${(err as Error).message}`, { cause: err })
    }
  }
}

// ---------------------------------------------------------------- JSON replies

/** Parses a device's reply body as a JSON object; an HTML error page or garbage is NET_BAD_REPLY naming what came. */
export function parseJsonReply(where: string, r: HttpReply): Record<string, unknown> {
  let v: unknown
  try {
    v = JSON.parse(r.body)
  } catch {
    const ct = String(r.headers['content-type'] ?? '')
    const what = /html/i.test(ct) || /^\s*</.test(r.body) ? 'an HTML page' : 'not JSON'
    throw new OutpostError('NET_BAD_REPLY', `${where}: HTTP ${r.status}, ${what}: ${JSON.stringify(r.body.slice(0, 80))}`)
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new OutpostError('NET_BAD_REPLY', `${where}: HTTP ${r.status}, a JSON ${Array.isArray(v) ? 'array' : typeof v}, not an object`)
  return v as Record<string, unknown>
}

function pathGet(obj: unknown, path: string): unknown {
  let cur = obj
  for (const k of path.split('.')) {
    if (typeof cur !== 'object' || cur === null || Array.isArray(cur)) return undefined
    cur = (cur as Record<string, unknown>)[k]
  }
  return cur
}

/** One quantity from a reply: a finite number at `path` (minus `minus` where present), scaled; NET_BAD_REPLY otherwise. */
export function netValue(where: string, reply: unknown, q: string, v: NetValue): number {
  const raw = pathGet(reply, v.path)
  if (typeof raw !== 'number' || !Number.isFinite(raw))
    throw new OutpostError('NET_BAD_REPLY', `${where}: ${q} at ${v.path} is ${raw === undefined ? 'missing' : JSON.stringify(raw)}, not a number`)
  let x = raw
  if (v.minus !== undefined) {
    const m = pathGet(reply, v.minus)
    if (m !== undefined && m !== null) {
      if (typeof m !== 'number' || !Number.isFinite(m))
        throw new OutpostError('NET_BAD_REPLY', `${where}: ${v.minus} is ${JSON.stringify(m)}, not a number`)
      x = raw - m
    }
  }
  const scale = v.scale ?? 1
  // Round away binary noise (1.234 kWh × 1000 is 1234 Wh), as the Modbus decoder does.
  return Number((x * scale).toPrecision(12))
}

// ---------------------------------------------------------------- the device

/** Failures that mean "the device did not answer": retried. */
const SILENT = new Set(['NET_TIMEOUT', 'NET_UNREACHABLE'])

export interface NetOpenOptions {
  now: () => number
  logger?: Logger
  /** The password itself, for a device not in the config yet (the page's find); else the config's passwordFile is read. */
  password?: () => string
}

/**
 * One network device: two lanes (relay commands, polls), each one request at a
 * time, so opening a relay never waits behind a poll that is timing out on Wi-Fi.
 */
export abstract class NetDevice {
  protected readonly agent = new Agent({ keepAlive: true, maxSockets: 4, keepAliveMsecs: 5000 })
  private readonly lanes: Record<Priority, Promise<unknown>> = { relay: Promise.resolve(), poll: Promise.resolve() }
  private readonly queued: Record<Priority, number> = { relay: 0, poll: 0 }
  protected state: BusHealth['state'] = 'opening'
  protected closed = false
  private lastError: BusHealth['lastError']
  protected readonly stats = { opens: 0, transactions: 0, timeouts: 0, exceptions: 0, garbage: 0, retries: 0, refused: 0 }
  private readonly dev: DeviceHealth = { unit: 0, transactions: 0, failures: 0, consecutiveFailures: 0 }
  private readonly openWaiters = new Set<() => void>()
  private probeTimer: NodeJS.Timeout | undefined
  private probeDelay = 1000

  constructor(
    readonly config: NetDeviceConfig,
    protected readonly opts: NetOpenOptions,
  ) {}

  get id(): string {
    return this.config.id
  }

  /** Begins probing the device (and whatever else the kind of device keeps open). */
  start(): void {
    this.closed = false
    this.probe()
  }

  /** One exchange that shows the device is there (and, for a Shelly, speaks its outlets' models); rejects when it did not answer. */
  protected abstract probeOnce(): Promise<void>

  /** probeOnce until it answers, backing off from 1 s to 30 s: health shows the device open before the first poll. */
  private probe(): void {
    if (this.closed) return
    this.probeOnce().then(
      () => undefined,
      () => {
        this.probeTimer = setTimeout(() => this.probe(), this.probeDelay)
        this.probeDelay = Math.min(this.probeDelay * 2, 30_000)
      },
    )
  }

  /** Runs `fn` (one device exchange) in its lane with the bus's retries; the device's health follows the result. */
  run<T>(priority: Priority, what: string, fn: () => Promise<T>): Promise<T> {
    if (this.closed) {
      this.stats.refused++
      return Promise.reject(new OutpostError('BUS_CLOSED', `device ${this.id} is closed`))
    }
    this.queued[priority]++
    const job = this.lanes[priority].then(async () => {
      this.queued[priority]--
      let err: unknown
      for (let attempt = 0; attempt <= this.config.retries; attempt++) {
        if (attempt > 0) this.stats.retries++
        if (this.closed) throw new OutpostError('BUS_CLOSED', `device ${this.id} is closed`)
        this.stats.transactions++
        this.dev.transactions++
        try {
          const v = await fn()
          this.ok()
          return v
        } catch (e) {
          err = e
          const code = (e as { code?: string }).code ?? ''
          if (code === 'NET_TIMEOUT') this.stats.timeouts++
          if (!SILENT.has(code)) break
        }
      }
      this.failed(err, what)
      throw err
    })
    this.lanes[priority] = job.catch(() => undefined)
    return job
  }

  protected ok(): void {
    if (this.state !== 'open') {
      this.state = 'open'
      this.opts.logger?.info({ bus: this.id, host: this.config.host }, 'device answering')
      for (const w of this.openWaiters) w()
    }
    this.dev.consecutiveFailures = 0
    this.dev.lastOkTs = this.opts.now()
  }

  protected failed(err: unknown, what: string): void {
    const e = err as { code?: string; message?: string }
    const code = e.code ?? 'NET_ERROR'
    if (code === 'NET_BAD_REPLY') this.stats.garbage++
    if (code === 'NET_RPC_ERROR') this.stats.exceptions++
    this.lastError = { code, message: `${what}: ${e.message ?? String(err)}`, ts: this.opts.now() }
    this.dev.failures++
    this.dev.lastError = this.lastError
    // A device that answered, even with an error, is alive; only silence makes it a device in error.
    if (SILENT.has(code) || code === 'NET_AUTH') {
      this.dev.consecutiveFailures++
      if (this.state === 'open') this.opts.logger?.warn({ bus: this.id, code, err: e.message }, 'device not answering')
      this.state = 'error'
    }
  }

  /** Resolves once the device has answered (rejects after `ms`). */
  waitOpen(ms: number): Promise<void> {
    if (this.state === 'open') return Promise.resolve()
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer)
        this.openWaiters.delete(done)
        resolve()
      }
      const timer = setTimeout(() => {
        this.openWaiters.delete(done)
        reject(new OutpostError('BUS_CLOSED', `device ${this.id} did not answer within ${ms} ms: ${this.lastError?.message ?? 'no answer yet'}`))
      }, ms)
      this.openWaiters.add(done)
    })
  }

  health(): BusHealth {
    return {
      id: this.id,
      type: this.config.type,
      port: `http://${this.config.host}:${this.config.port}`,
      state: this.closed ? 'closed' : this.state,
      lastError: this.lastError,
      ...this.stats,
      crcErrors: 0,
      strayBytes: 0,
      garbageBytes: 0,
      echoErrors: 0,
      queued: this.queued.relay + this.queued.poll,
      devices: [{ ...this.dev }],
      backedOff: [],
    }
  }

  async close(): Promise<void> {
    this.closed = true
    clearTimeout(this.probeTimer)
    this.agent.destroy()
  }
}

/** The channel an outlet's meter or relay uses on a network device (Shelly's component id; Tasmota's relay number). */
function netChannel(cfg: OutletConfig, part: 'meter' | 'relay', type: NetDeviceConfig['type']): number {
  return cfg[part]?.channel ?? defaultChannel(type)
}

/**
 * The auto-off rule both devices follow: a relay the gateway closed is re-armed while
 * the gateway reads it, at most every third of autoOffS, so the device opens it by
 * itself autoOffS after the gateway stops (crash, power loss, hang of the poll loop).
 */
class AutoOff {
  private armedAt = -Infinity
  /** The gateway wants the relay closed (set by setRelay). */
  wanted = false
  constructor(
    private readonly autoOffS: number,
    private readonly monotonic: () => number = () => performance.now(),
  ) {}

  armed(): void {
    this.armedAt = this.monotonic()
  }

  /** Whether a read that found the relay `closed` should re-arm it now. */
  due(closed: boolean): boolean {
    return this.wanted && closed && this.monotonic() - this.armedAt >= (this.autoOffS * 1000) / 3
  }
}

type ReadCall = NetDeviceSpec['read'][number]
type SwitchSpec = NonNullable<NetDeviceSpec['switch']>

/**
 * An outlet on a network device: a model's read calls into a Reading, the switch with its
 * read-back, and the auto-off re-arm. The protocol (which request a call is) is the subclass's.
 */
export abstract class NetOutlet implements OutletIO {
  readonly hasRelay: boolean
  protected readonly meterCh: number
  protected readonly relayCh: number
  protected readonly autoOff: AutoOff

  constructor(
    readonly id: string,
    dev: NetDevice,
    cfg: OutletConfig,
    protected readonly meter: DeviceModel,
    protected readonly relay: DeviceModel | undefined,
    private readonly now: () => number,
  ) {
    this.hasRelay = relay !== undefined
    this.meterCh = netChannel(cfg, 'meter', dev.config.type)
    this.relayCh = netChannel(cfg, 'relay', dev.config.type)
    this.autoOff = new AutoOff(dev.config.autoOffS)
  }

  /** One of the meter model's read calls: the device's reply, and what to call it in errors. */
  protected abstract ask(r: ReadCall): Promise<{ reply: unknown; what: string }>
  /** The switch's state query (`get`): the reply. */
  protected abstract state(sw: SwitchSpec, priority: Priority): Promise<unknown>
  /** Switch; closing arms the auto-off. */
  protected abstract switchTo(sw: SwitchSpec, closed: boolean): Promise<void>
  /** Re-arm the auto-off of a relay that is closed. */
  protected abstract rearmCall(sw: SwitchSpec): Promise<void>
  /** A state path as sent (Tasmota fills in the relay number). */
  protected statePath(p: string): string {
    return p
  }
  /** A read reply that already holds the switch's state, so re-arming needs no query of its own. */
  protected stateFrom(_replies: Map<ReadCall, unknown>, _sw: SwitchSpec): unknown {
    return undefined
  }

  private sw(): SwitchSpec {
    const sw = this.relay?.device?.switch
    if (!sw) throw new OutpostError('NO_RELAY', `outlet ${this.id} has no relay`)
    return sw
  }

  async read(): Promise<Reading> {
    const q: Record<string, number> = {}
    const replies = new Map<ReadCall, unknown>()
    for (const r of this.meter.device!.read) {
      const { reply, what } = await this.ask(r)
      replies.set(r, reply)
      for (const [name, v] of Object.entries(r.values)) q[name] = netValue(`outlet ${this.id} ${what}`, reply, name, v)
    }
    const reading = toReading(this.id, q, this.now())
    await this.rearm(replies)
    return reading
  }

  /** Re-arms the auto-off of a relay the gateway closed and the device still reports closed. */
  private async rearm(replies: Map<ReadCall, unknown>): Promise<void> {
    const sw = this.relay?.device?.switch
    if (!sw || !this.autoOff.wanted) return
    try {
      const status = this.stateFrom(replies, sw) ?? (await this.state(sw, 'poll'))
      if (!this.autoOff.due(this.closedIn(sw, status))) return
      await this.rearmCall(sw)
      this.autoOff.armed()
    } catch {
      // The device keeps its last timer: if the gateway is gone for good, the relay opens by itself.
    }
  }

  protected closedIn(sw: SwitchSpec, reply: unknown): boolean {
    for (const p of sw.path) {
      const v = pathGet(reply, this.statePath(p))
      if (v !== undefined) return v === sw.closedValue
    }
    throw new OutpostError(
      'NET_BAD_REPLY',
      `outlet ${this.id}: the switch state (${sw.path.map((p) => this.statePath(p)).join(' or ')}) is missing from ${sw.get}`,
    )
  }

  async setRelay(closed: boolean): Promise<void> {
    const sw = this.sw()
    this.autoOff.wanted = closed
    await this.switchTo(sw, closed)
    if (closed) this.autoOff.armed()
    const back = this.closedIn(sw, await this.state(sw, 'relay'))
    if (back !== closed)
      throw new OutpostError(
        'RELAY_MISMATCH',
        `outlet ${this.id}: relay ${this.relayCh} reads ${back ? 'closed' : 'open'} after being told to ${closed ? 'close' : 'open'}`,
      )
  }

  async readRelay(): Promise<boolean> {
    const sw = this.sw()
    return this.closedIn(sw, await this.state(sw, 'poll'))
  }
}

export type { DeviceModel }
