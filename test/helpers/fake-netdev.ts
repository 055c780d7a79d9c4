/**
 * Fakes of a Shelly Gen2+ device and a Tasmota plug, written from their published
 * APIs (Shelly: gen2 RPC over HTTP POST /rpc and WebSocket /rpc, NotifyStatus,
 * digest authentication RFC 7616 with SHA-256, Switch/PM1/EM1/EM1Data components,
 * toggle_after; Tasmota: /cm?cmnd= with user and password, Status 10, Power,
 * PulseTime), on loopback, for the drivers' and the end-to-end tests.
 *
 * Owns: a load that draws current while the relay is closed and a car is plugged,
 * the energy counter it integrates, and the faults a test injects: silence (Wi-Fi
 * lost: connections accepted, never answered), garbage JSON, an HTML error page,
 * a reboot that resets the counter, a Tasmota power cut that falls back to the
 * last saved total.
 * Must never: share code with the drivers it tests (the digest check, the JSON
 * shapes and the command parsing are written here again, from the docs).
 */
import { createHash, randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { WebSocketServer, type WebSocket } from 'ws'

const h = (s: string) => createHash('sha256').update(s).digest('hex')

export type FaultMode = 'none' | 'silent' | 'garbage' | 'html'

/** The electrical side: a car that draws `amps` while the relay is closed; energy in Wh, integrated in real time. */
class Load {
  closed = false
  amps = 0
  voltage = 230
  energyWh: number
  /** What really flowed since the fake started: never reset, for tests to bound the bill. */
  deliveredWh = 0
  private last = performance.now()
  private timer: NodeJS.Timeout
  constructor(
    energyWh: number,
    private readonly onChange: () => void,
  ) {
    this.energyWh = energyWh
    this.timer = setInterval(() => this.tick(), 50)
  }

  get current(): number {
    return this.closed ? this.amps : 0
  }

  get power(): number {
    return Number((this.current * this.voltage).toFixed(1))
  }

  tick(): void {
    const t = performance.now()
    const wh = (this.power * (t - this.last)) / 3_600_000
    this.energyWh += wh
    this.deliveredWh += wh
    this.last = t
  }

  set(next: Partial<Pick<Load, 'closed' | 'amps'>>): void {
    this.tick()
    const before = this.power
    const closedBefore = this.closed
    Object.assign(this, next)
    if (before !== this.power || closedBefore !== this.closed) this.onChange()
  }

  stop(): void {
    clearInterval(this.timer)
  }
}

/** An HTTP server whose connections can be held unanswered (Wi-Fi lost) and are all destroyed at close. */
class FakeServer {
  readonly server: Server
  readonly sockets = new Set<Socket>()
  mode: FaultMode = 'none'
  /** Each answer is made when its request arrives and sent this much later (a slow Wi-Fi round trip). */
  replyDelayMs = 0
  /** Requests held while silent: never answered. */
  private held: ServerResponse[] = []
  port = 0

  constructor(handler: (req: IncomingMessage, body: string, res: ServerResponse) => void) {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        if (this.mode === 'silent') {
          this.held.push(res)
          return
        }
        if (this.mode === 'html') {
          res.writeHead(500, { 'content-type': 'text/html' })
          res.end('<html><head><title>500 Internal Server Error</title></head><body><h1>Internal Server Error</h1></body></html>')
          return
        }
        if (this.mode === 'garbage') {
          res.writeHead(200, { 'content-type': 'application/json' })
          res.end('{"id":1,"result":{"apower":12.5,"aenergy":{"tot')
          return
        }
        if (this.replyDelayMs > 0) {
          // The answer is made now and sent later: a reply on the wire that predates what happens next.
          const end = res.end.bind(res) as (...a: unknown[]) => ServerResponse
          const delay = this.replyDelayMs
          res.end = ((...a: unknown[]) => {
            setTimeout(() => end(...a), delay)
            return res
          }) as typeof res.end
        }
        handler(req, Buffer.concat(chunks).toString('utf8'), res)
      })
    })
    this.server.on('connection', (s) => {
      this.sockets.add(s)
      s.on('close', () => this.sockets.delete(s))
    })
  }

  async listen(port = 0): Promise<number> {
    await new Promise<void>((r) => this.server.listen(port, '127.0.0.1', r))
    this.port = (this.server.address() as { port: number }).port
    return this.port
  }

  /** Leaves silence: held requests stay unanswered (their client has timed out long ago). */
  answer(): void {
    this.mode = 'none'
    for (const r of this.held.splice(0)) r.destroy()
  }

  dropConnections(): void {
    for (const s of this.sockets) s.destroy()
  }

  async close(): Promise<void> {
    for (const r of this.held.splice(0)) r.destroy()
    this.dropConnections()
    await new Promise<void>((r) => this.server.close(() => r()))
  }
}

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers })
  res.end(JSON.stringify(body))
}

/** What both fakes share: the HTTP side, the load, the switch log, fault modes. */
abstract class FakeDevice {
  abstract readonly load: Load
  protected abstract readonly http: FakeServer
  /** Every switch change, in order (the bench and the dead-gateway test read it). */
  readonly switches: SwitchEvent[] = []
  /** Requests that came with credentials and were refused. */
  authFailures = 0

  get port(): number {
    return this.http.port
  }

  listen(port = 0): Promise<number> {
    return this.http.listen(port)
  }

  get output(): boolean {
    return this.load.closed
  }

  set mode(m: FaultMode) {
    if (m === 'none') this.http.answer()
    else this.http.mode = m
    this.onMode(m)
  }

  get mode(): FaultMode {
    return this.http.mode
  }

  protected onMode(_m: FaultMode): void {}

  /** Answers are made when a request arrives and sent this much later. */
  set replyDelayMs(ms: number) {
    this.http.replyDelayMs = ms
  }

  plug(amps: number): void {
    this.load.set({ amps })
  }

  unplug(): void {
    this.load.set({ amps: 0 })
  }
}

// ---------------------------------------------------------------- Shelly

export type ShellyProfile = 'switch' | 'pm1' | 'em1'

export interface FakeShellyOptions {
  profile?: ShellyProfile
  /** Digest auth on, with this password (user admin). */
  password?: string
  energyWh?: number
  /** Also report ret_aenergy (a bidirectional meter) with this total. */
  retWh?: number
  port?: number
}

/** Methods a profile offers (Shelly.ListMethods), from the gen2 docs of each device family. */
const METHODS: Record<ShellyProfile, string[]> = {
  switch: ['Switch.GetStatus', 'Switch.Set', 'Switch.Toggle', 'Switch.GetConfig'],
  pm1: ['PM1.GetStatus', 'PM1.GetConfig', 'PM1.ResetCounters'],
  em1: ['EM1.GetStatus', 'EM1Data.GetStatus', 'Switch.GetStatus', 'Switch.Set', 'Switch.Toggle'],
}
const COMMON = ['Shelly.GetStatus', 'Shelly.GetDeviceInfo', 'Shelly.ListMethods', 'Shelly.Reboot', 'Sys.GetStatus']

export interface SwitchEvent {
  on: boolean
  source: string
  at: number
}

export class FakeShelly extends FakeDevice {
  readonly profile: ShellyProfile
  readonly deviceId: string
  readonly load: Load
  retWh: number | undefined
  protected readonly http: FakeServer
  private readonly wss = new WebSocketServer({ noServer: true })
  private readonly clients = new Map<WebSocket, string | undefined>()
  private readonly nonces = new Set<string>()
  private wsNonce = 0
  private toggleTimer: NodeJS.Timeout | undefined
  /** What `source` the switch reports (Shelly: the last command's origin). */
  private source = 'init'
  private readonly password: string | undefined
  readonly calls: string[] = []

  constructor(o: FakeShellyOptions = {}) {
    super()
    this.profile = o.profile ?? 'switch'
    this.password = o.password
    this.retWh = o.retWh
    this.deviceId = `shelly${this.profile}-${randomBytes(6).toString('hex')}`
    this.load = new Load(o.energyWh ?? 12_345.678, () => this.notify())
    this.http = new FakeServer((req, body, res) => this.onHttp(req, body, res))
    this.http.server.on('upgrade', (req, socket, head) => {
      if (this.http.mode === 'silent' || req.url !== '/rpc') return // never answered
      this.wss.handleUpgrade(req, socket, head, (ws) => this.onWs(ws))
    })
  }

  /** Wi-Fi lost: open WebSockets stop reading too, so pings go unanswered. */
  protected override onMode(m: FaultMode): void {
    if (m === 'silent') for (const ws of this.clients.keys()) (ws as unknown as { _socket: Socket })._socket.pause()
  }

  /**
   * A reboot: connections dropped, nonces forgotten, the counter at `energyWh` (0: reset);
   * the relay comes back as it was with initial_state "restore_last", else open.
   */
  reboot(energyWh = 0, o: { restore?: boolean } = {}): void {
    clearTimeout(this.toggleTimer)
    this.nonces.clear()
    for (const ws of this.clients.keys()) ws.terminate()
    this.clients.clear()
    this.http.dropConnections()
    if (!o.restore) this.setSwitch(false, 'init')
    this.load.energyWh = energyWh
    if (this.retWh !== undefined) this.retWh = 0
  }

  private setSwitch(on: boolean, source: string): void {
    this.source = source
    if (this.load.closed !== on) this.switches.push({ on, source, at: performance.now() })
    this.load.set({ closed: on })
  }

  // ------------------------------------------------------------ components

  private switchStatus(): Record<string, unknown> {
    this.load.tick()
    const s: Record<string, unknown> = { id: 0, source: this.source, output: this.load.closed, temperature: { tC: 41.2, tF: 106.2 } }
    if (this.profile === 'switch') {
      Object.assign(s, {
        apower: this.load.power,
        voltage: this.load.voltage,
        freq: 50,
        current: this.load.current,
        aenergy: { total: Number(this.load.energyWh.toFixed(3)), by_minute: [0, 0, 0], minute_ts: Math.floor(Date.now() / 1000) },
      })
      if (this.retWh !== undefined) s.ret_aenergy = { total: this.retWh, by_minute: [0, 0, 0], minute_ts: Math.floor(Date.now() / 1000) }
    }
    return s
  }

  private pm1Status(): Record<string, unknown> {
    this.load.tick()
    const s: Record<string, unknown> = {
      id: 0,
      voltage: this.load.voltage,
      current: this.load.current,
      apower: this.load.power,
      freq: 50,
      aenergy: { total: Number(this.load.energyWh.toFixed(3)), by_minute: [0, 0, 0], minute_ts: Math.floor(Date.now() / 1000) },
    }
    if (this.retWh !== undefined) s.ret_aenergy = { total: this.retWh, by_minute: [0, 0, 0], minute_ts: Math.floor(Date.now() / 1000) }
    return s
  }

  private em1Status(): Record<string, unknown> {
    return {
      id: 0,
      current: this.load.current,
      voltage: this.load.voltage,
      act_power: this.load.power,
      aprt_power: this.load.power,
      pf: 1,
      freq: 50,
      calibration: 'factory',
    }
  }

  private em1Data(): Record<string, unknown> {
    this.load.tick()
    return { id: 0, total_act_energy: Number(this.load.energyWh.toFixed(2)), total_act_ret_energy: this.retWh ?? 0 }
  }

  private fullStatus(): Record<string, unknown> {
    const out: Record<string, unknown> = { sys: { mac: this.deviceId.slice(-12).toUpperCase(), uptime: 100 } }
    if (this.profile !== 'pm1') out['switch:0'] = this.switchStatus()
    if (this.profile === 'pm1') out['pm1:0'] = this.pm1Status()
    if (this.profile === 'em1') {
      out['em1:0'] = this.em1Status()
      out['em1data:0'] = this.em1Data()
    }
    return out
  }

  /** Runs one RPC; [result] or [undefined, {code, message}] as Shelly's error frame has them. */
  private rpc(method: string, params: Record<string, unknown>): [unknown, { code: number; message: string }?] {
    this.calls.push(method)
    const offered = new Set([...METHODS[this.profile], ...COMMON])
    if (!offered.has(method)) return [undefined, { code: 404, message: `No handler for ${method}` }]
    const id = params.id ?? 0
    if (method.endsWith('.GetStatus') && method !== 'Shelly.GetStatus' && method !== 'Sys.GetStatus' && id !== 0)
      return [undefined, { code: -105, message: `Argument 'id', value ${String(id)} not found!` }]
    switch (method) {
      case 'Shelly.ListMethods':
        return [{ methods: [...offered].sort() }]
      case 'Shelly.GetDeviceInfo':
        return [this.deviceInfo()]
      case 'Shelly.GetStatus':
        return [this.fullStatus()]
      case 'Sys.GetStatus':
        return [{ uptime: 100 }]
      case 'Switch.GetStatus':
        return [this.switchStatus()]
      case 'PM1.GetStatus':
        return [this.pm1Status()]
      case 'EM1.GetStatus':
        return [this.em1Status()]
      case 'EM1Data.GetStatus':
        return [this.em1Data()]
      case 'Switch.Set': {
        if (typeof params.on !== 'boolean') return [undefined, { code: -103, message: "Missing required argument 'on'!" }]
        const was = this.load.closed
        clearTimeout(this.toggleTimer)
        this.setSwitch(params.on, 'http')
        const after = params.toggle_after
        if (typeof after === 'number' && after > 0) {
          const flip = !params.on
          this.toggleTimer = setTimeout(() => this.setSwitch(flip, 'timer'), after * 1000)
        }
        return [{ was_on: was }]
      }
      default:
        return [{}]
    }
  }

  private deviceInfo(): Record<string, unknown> {
    return {
      name: null,
      id: this.deviceId,
      mac: this.deviceId.slice(-12).toUpperCase(),
      model: this.profile === 'switch' ? 'SNSW-001P16EU' : this.profile === 'pm1' ? 'S3PM-001PCEU16' : 'SPEM-002CEBEU50',
      gen: 2,
      fw_id: '20231107-164738/1.0.8-g',
      ver: '1.0.8',
      app: this.profile === 'switch' ? 'Plus1PM' : this.profile === 'pm1' ? 'MiniPMG3' : 'ProEM',
      auth_en: this.password !== undefined,
      auth_domain: this.password !== undefined ? this.deviceId : null,
    }
  }

  // ------------------------------------------------------------ HTTP

  private challenge(): string {
    const nonce = randomBytes(8).toString('hex')
    this.nonces.add(nonce)
    return `Digest qop="auth", realm="${this.deviceId}", nonce="${nonce}", algorithm=SHA-256`
  }

  /** RFC 7616 digest check of an Authorization header for `method uri`. */
  private authorized(header: string | undefined, method: string): boolean {
    if (this.password === undefined) return true
    if (!header?.startsWith('Digest ')) return false
    const f: Record<string, string> = {}
    for (const m of header.slice(7).matchAll(/(\w+)=(?:"([^"]*)"|([^,\s]+))/g)) f[m[1]!] = m[2] ?? m[3]!
    if (f.username !== 'admin' || f.realm !== this.deviceId || !this.nonces.has(f.nonce!) || f.algorithm !== 'SHA-256' || f.qop !== 'auth')
      return false
    const ha1 = h(`admin:${this.deviceId}:${this.password}`)
    const ha2 = h(`${method}:${f.uri}`)
    return f.response === h(`${ha1}:${f.nonce}:${f.nc}:${f.cnonce}:auth:${ha2}`)
  }

  private onHttp(req: IncomingMessage, body: string, res: ServerResponse): void {
    if (req.method === 'GET' && req.url === '/shelly') {
      // Never protected.
      json(res, 200, this.deviceInfo())
      return
    }
    if (req.url !== '/rpc' || req.method !== 'POST') {
      json(res, 404, { code: 404, message: 'Not found' })
      return
    }
    let frame: { id?: unknown; method?: unknown; params?: Record<string, unknown> }
    try {
      frame = JSON.parse(body) as typeof frame
    } catch {
      json(res, 400, { id: null, src: this.deviceId, error: { code: -32700, message: 'Parse error' } })
      return
    }
    const method = String(frame.method)
    if (method !== 'Shelly.GetDeviceInfo' && !this.authorized(req.headers.authorization, 'POST')) {
      if (req.headers.authorization) this.authFailures++
      res.writeHead(401, { 'www-authenticate': this.challenge(), 'content-type': 'application/json' })
      res.end(JSON.stringify({ code: 401, message: 'Unauthorized' }))
      return
    }
    const [result, error] = this.rpc(method, frame.params ?? {})
    if (error) json(res, error.code === 404 ? 404 : 400, { id: frame.id, src: this.deviceId, error })
    else json(res, 200, { id: frame.id, src: this.deviceId, result })
  }

  // ------------------------------------------------------------ WebSocket

  private onWs(ws: WebSocket): void {
    this.clients.set(ws, undefined)
    ws.on('close', () => this.clients.delete(ws))
    ws.on('message', (data) => {
      if (this.http.mode === 'silent') return
      let f: { id?: unknown; src?: string; method?: string; params?: Record<string, unknown>; auth?: Record<string, unknown> }
      try {
        f = JSON.parse(String(data)) as typeof f
      } catch {
        return
      }
      if (typeof f.src !== 'string') return // a frame without src gets no answer
      if (this.password !== undefined && f.method !== 'Shelly.GetDeviceInfo' && !this.wsAuthorized(f.auth)) {
        if (f.auth) this.authFailures++
        const nonce = ++this.wsNonce + Math.floor(Date.now() / 1000)
        this.nonces.add(String(nonce))
        const challenge = { auth_type: 'digest', nonce, nc: 1, realm: this.deviceId, algorithm: 'SHA-256' }
        ws.send(JSON.stringify({ id: f.id, src: this.deviceId, dst: f.src, error: { code: 401, message: JSON.stringify(challenge) } }))
        return
      }
      this.clients.set(ws, f.src)
      const [result, error] = this.rpc(String(f.method), f.params ?? {})
      ws.send(JSON.stringify({ id: f.id, src: this.deviceId, dst: f.src, ...(error ? { error } : { result }) }))
    })
  }

  /** The WebSocket auth object: ha2 over "dummy_method:dummy_uri", as the gen2 Authentication page has it. */
  private wsAuthorized(a: Record<string, unknown> | undefined): boolean {
    if (a?.username !== 'admin' || a.realm !== this.deviceId || !this.nonces.has(String(a.nonce))) return false
    const ha1 = h(`admin:${this.deviceId}:${this.password}`)
    const ha2 = h('dummy_method:dummy_uri')
    return a.response === h(`${ha1}:${String(a.nonce)}:1:${String(a.cnonce)}:auth:${ha2}`)
  }

  /** NotifyStatus to every client that has sent a request with a src: the changed component's keys. */
  private notify(): void {
    if (this.http.mode === 'silent') return
    const params: Record<string, unknown> = { ts: Date.now() / 1000 }
    if (this.profile === 'switch') {
      params['switch:0'] = { id: 0, output: this.load.closed, apower: this.load.power, current: this.load.current, source: this.source }
    } else if (this.profile === 'pm1') {
      params['pm1:0'] = { id: 0, apower: this.load.power, current: this.load.current }
    } else {
      params['switch:0'] = { id: 0, output: this.load.closed, source: this.source }
      params['em1:0'] = { id: 0, act_power: this.load.power, current: this.load.current }
    }
    for (const [ws, dst] of this.clients) {
      if (dst !== undefined) ws.send(JSON.stringify({ src: this.deviceId, dst, method: 'NotifyStatus', params }))
    }
  }

  /** Clients registered for notifications. */
  get listeners(): number {
    return [...this.clients.values()].filter((d) => d !== undefined).length
  }

  async close(): Promise<void> {
    clearTimeout(this.toggleTimer)
    this.load.stop()
    for (const ws of this.clients.keys()) ws.terminate()
    this.wss.close()
    await this.http.close()
  }
}

// ---------------------------------------------------------------- Tasmota

export interface FakeTasmotaOptions {
  /** WebPassword on, with this password (user admin). */
  password?: string
  energyWh?: number
  port?: number
}

export class FakeTasmota extends FakeDevice {
  readonly load: Load
  protected readonly http: FakeServer
  private readonly password: string | undefined
  /** The total as last saved to flash (Tasmota: once a day); a power cut falls back to it. */
  savedWh: number
  pulseTime = 0
  private pulseTimer: NodeJS.Timeout | undefined
  readonly commands: string[] = []

  constructor(o: FakeTasmotaOptions = {}) {
    super()
    this.password = o.password
    this.load = new Load(o.energyWh ?? 5432.1, () => undefined)
    this.savedWh = this.load.energyWh
    this.http = new FakeServer((req, _body, res) => this.onHttp(req, res))
  }

  /** Tasmota's daily save of the total to flash. */
  save(): void {
    this.load.tick()
    this.savedWh = this.load.energyWh
  }

  /** A power cut: the total falls back to the last save; the relay comes back as it was (PowerOnState 3) or open (0). */
  powerCut(o: { restore?: boolean } = {}): void {
    clearTimeout(this.pulseTimer)
    this.http.dropConnections()
    // Restored on, the relay's pulse timer starts again as at any power on.
    this.setPower(o.restore === true && this.load.closed)
    this.load.energyWh = this.savedWh
  }

  private setPower(on: boolean): void {
    if (this.load.closed !== on) this.switches.push({ on, source: 'cmd', at: performance.now() })
    this.load.set({ closed: on })
    // Tasmota's pulse timer restarts whenever the relay is commanded on.
    clearTimeout(this.pulseTimer)
    if (on && this.pulseTime > 0) {
      const ms = this.pulseTime <= 111 ? this.pulseTime * 100 : (this.pulseTime - 100) * 1000
      this.pulseTimer = setTimeout(() => {
        this.switches.push({ on: false, source: 'pulsetime', at: performance.now() })
        this.load.set({ closed: false })
      }, ms)
    }
  }

  private onHttp(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x')
    if (url.pathname !== '/cm') {
      res.writeHead(404, { 'content-type': 'text/html' })
      res.end('<html><body>404</body></html>')
      return
    }
    if (this.password !== undefined && (url.searchParams.get('user') !== 'admin' || url.searchParams.get('password') !== this.password)) {
      if (url.searchParams.has('password')) this.authFailures++
      json(res, 401, { WARNING: 'Need user=<username>&password=<password>' })
      return
    }
    const cmnd = (url.searchParams.get('cmnd') ?? '').trim()
    this.commands.push(cmnd)
    json(res, 200, this.command(cmnd))
  }

  private command(cmnd: string): Record<string, unknown> {
    const [word = '', arg] = cmnd.split(/\s+/, 2)
    const w = word.toLowerCase()
    if (w === 'status' && arg === '10') {
      this.load.tick()
      return {
        StatusSNS: {
          Time: new Date().toISOString().slice(0, 19),
          ENERGY: {
            TotalStartTime: '2024-01-01T00:00:00',
            Total: Number((this.load.energyWh / 1000).toFixed(3)),
            Yesterday: 0.5,
            Today: 0.1,
            Power: Math.round(this.load.power),
            ApparentPower: Math.round(this.load.power),
            ReactivePower: 0,
            Factor: this.load.current > 0 ? 1 : 0,
            Voltage: this.load.voltage,
            Current: Number(this.load.current.toFixed(3)),
          },
        },
      }
    }
    if (w === 'status' && arg === undefined)
      return { Status: { Module: 0, DeviceName: 'Tasmota', FriendlyName: ['Tasmota'], Power: this.load.closed ? 1 : 0 } }
    // One relay: Power and Power1 are the same; the reply says POWER (Tasmota names the index only with several relays).
    if (w === 'power' || w === 'power1') {
      const a = arg?.toLowerCase()
      if (a === 'on' || a === '1') this.setPower(true)
      else if (a === 'off' || a === '0') this.setPower(false)
      else if (a === 'toggle' || a === '2') this.setPower(!this.load.closed)
      else if (a !== undefined) return { Command: 'Error' }
      return { POWER: this.load.closed ? 'ON' : 'OFF' }
    }
    if (w === 'pulsetime' || w === 'pulsetime1') {
      if (arg !== undefined) {
        const n = Number(arg)
        if (!Number.isInteger(n) || n < 0 || n > 64900) return { Command: 'Error' }
        this.pulseTime = n
      }
      return { PulseTime1: { Set: this.pulseTime, Remaining: 0 } }
    }
    return { Command: 'Unknown' }
  }

  async close(): Promise<void> {
    clearTimeout(this.pulseTimer)
    this.load.stop()
    await this.http.close()
  }
}

/** Something that closes what a test started when the test ends (a tap Test, the bench's teardown list). */
interface Teardownable {
  teardown(fn: () => unknown): void
}

/** A Shelly fake listening on a loopback port, closed when `t` ends. */
export async function startShelly(t: Teardownable, o: FakeShellyOptions = {}): Promise<FakeShelly> {
  const dev = new FakeShelly(o)
  await dev.listen()
  t.teardown(() => dev.close())
  return dev
}

/** A Tasmota fake listening on a loopback port, closed when `t` ends. */
export async function startTasmota(t: Teardownable, o: ConstructorParameters<typeof FakeTasmota>[0] = {}): Promise<FakeTasmota> {
  const dev = new FakeTasmota(o)
  await dev.listen()
  t.teardown(() => dev.close())
  return dev
}
