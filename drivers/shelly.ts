/**
 * Shelly Gen2/Gen3/Plus/Pro devices over their local RPC: POST /rpc for every
 * call (digest auth, SHA-256, user admin), and a WebSocket on /rpc held open
 * for NotifyStatus, so a change of current is read at once, not at the next poll.
 *
 * Owns: the RPC frames, the device's auth challenge (HTTP and WebSocket), the
 * NotifyStatus channel and its reconnect, checking at start that the device has
 * the methods its outlets' models call, and the Shelly outlet (a model's
 * `device` calls, Switch.Set with toggle_after, the read-back).
 * Must never: treat a notification as a reading (only a read is billed from),
 * or close a relay the device opened by itself (a re-arm only re-arms a closed one).
 */
import { randomBytes } from 'node:crypto'
import WebSocket from 'ws'
import { OutpostError } from './errors.js'
import type { NetDeviceConfig, OutletConfig } from '../core/types.js'
import type { Priority } from './scheduler.js'
import type { DeviceModel, NetDeviceSpec } from './models.js'
import { DigestAuth, digestResponse, httpExchange, NetDevice, NetOutlet, parseJsonReply, passwordReader, type NetOpenOptions } from './netdev.js'

/** Shelly's user name is fixed. */
const USER = 'admin'

export class ShellyDevice extends NetDevice {
  private readonly auth: DigestAuth | undefined
  private readonly password: (() => string) | undefined
  private seq = 0
  private readonly src = `outpost-${randomBytes(4).toString('hex')}`
  private ws: WebSocket | undefined
  private wsTimer: NodeJS.Timeout | undefined
  private wsDelay = 1000
  private readonly listeners = new Map<string, Set<() => void>>()
  /** Methods every outlet on this device calls, checked against Shelly.ListMethods at start. */
  private readonly needs = new Map<string, string>()

  constructor(config: NetDeviceConfig, opts: NetOpenOptions) {
    super(config, opts)
    this.password = opts.password ?? passwordReader(config)
    this.auth = this.password ? new DigestAuth(USER, this.password) : undefined
  }

  /** A model's methods, for the check at start (`model` names it in the error). */
  need(model: DeviceModel): void {
    for (const r of model.device?.read ?? []) if (r.method) this.needs.set(r.method, model.name)
    const sw = model.device?.switch
    if (sw?.set) this.needs.set(sw.set, model.name)
    if (sw?.get && model.kinds.includes('relay')) this.needs.set(sw.get, model.name)
  }

  override start(): void {
    super.start()
    if (this.config.notify !== false) this.connectWs()
  }

  /** Shelly.ListMethods: the device is there, and it speaks what its outlets' models call. */
  protected async probeOnce(): Promise<void> {
    const r = await this.call('poll', 'Shelly.ListMethods', {})
    const methods = new Set(Array.isArray((r as { methods?: unknown }).methods) ? ((r as { methods: unknown[] }).methods as string[]) : [])
    const missing = [...this.needs].filter(([m]) => !methods.has(m))
    if (missing.length === 0) return
    const err = new OutpostError(
      'NET_MODEL_MISMATCH',
      `device ${this.id} (${this.config.host}) has no ${missing.map(([m, model]) => `${m} (model ${model})`).join(', ')}; ` +
        `it offers ${[...methods].filter((m) => /\.GetStatus$/.test(m)).join(', ') || 'no GetStatus methods'}`,
    )
    this.failed(err, 'Shelly.ListMethods')
    this.opts.logger?.error({ bus: this.id, err: err.message }, 'device model mismatch')
  }

  /** One RPC over HTTP, in the device's lane for `priority`; the result, or the device's error as NET_RPC_ERROR. */
  call(priority: Priority, method: string, params: Record<string, unknown>): Promise<unknown> {
    return this.run(priority, method, () => this.post(method, params))
  }

  private async post(method: string, params: Record<string, unknown>): Promise<unknown> {
    const where = `device ${this.id} ${method}`
    const body = JSON.stringify({ id: ++this.seq, src: this.src, method, params })
    const send = (headers: Record<string, string> = {}) =>
      httpExchange(this.agent, {
        host: this.config.host,
        port: this.config.port,
        method: 'POST',
        path: '/rpc',
        body,
        headers,
        timeoutMs: this.config.timeoutMs,
      })
    let r = await send(this.auth?.ready ? { authorization: this.auth.header('POST', '/rpc') } : {})
    if (r.status === 401) {
      if (!this.auth) throw new OutpostError('NET_AUTH', `${where}: the device asks for a password; set passwordFile`)
      if (!this.auth.accept(String(r.headers['www-authenticate'] ?? '')))
        throw new OutpostError('NET_AUTH', `${where}: not a SHA-256 digest challenge: ${String(r.headers['www-authenticate'])}`)
      r = await send({ authorization: this.auth.header('POST', '/rpc') })
      if (r.status === 401) throw new OutpostError('NET_AUTH', `${where}: the password was refused (user ${USER})`)
    }
    const frame = parseJsonReply(where, r)
    if (frame.error !== undefined) {
      const e = frame.error as { code?: unknown; message?: unknown }
      throw new OutpostError('NET_RPC_ERROR', `${where}: error ${String(e.code)}: ${String(e.message)}`)
    }
    if (r.status !== 200) throw new OutpostError('NET_HTTP', `${where}: HTTP ${r.status}`)
    if (!('result' in frame)) throw new OutpostError('NET_BAD_REPLY', `${where}: a frame with neither result nor error`)
    return frame.result
  }

  /** `listener` runs on every NotifyStatus that changes `component` (e.g. switch:0). */
  onNotify(component: string, listener: () => void): void {
    const set = this.listeners.get(component) ?? new Set<() => void>()
    set.add(listener)
    this.listeners.set(component, set)
  }

  private connectWs(): void {
    if (this.closed) return
    const ws = new WebSocket(`ws://${this.config.host}:${this.config.port}/rpc`, { handshakeTimeout: this.config.timeoutMs })
    this.ws = ws
    let alive = true
    const ping = setInterval(
      () => {
        // Wi-Fi can vanish without a FIN: no pong within a period is a dead socket.
        if (!alive) return ws.terminate()
        alive = false
        ws.ping()
      },
      Math.max(this.config.timeoutMs, 5000),
    )
    ws.on('pong', () => (alive = true))
    const hello = (auth?: Record<string, unknown>) =>
      ws.send(JSON.stringify({ id: ++this.seq, src: this.src, method: 'Shelly.GetStatus', params: {}, ...(auth ? { auth } : {}) }))
    ws.on('open', () => {
      this.wsDelay = 1000
      this.stats.opens++
      hello()
    })
    ws.on('message', (data) => {
      alive = true
      let f: { method?: string; params?: Record<string, unknown>; error?: { code?: number; message?: string } }
      try {
        f = JSON.parse(String(data)) as typeof f
      } catch {
        this.stats.garbage++
        return
      }
      if (f.error?.code === 401) {
        // The WebSocket challenge comes as a JSON string in the error message.
        const answer = this.wsAuth(f.error.message)
        if (answer) hello(answer)
        else {
          this.opts.logger?.warn({ bus: this.id }, 'NotifyStatus channel: the device asks for a password we cannot give; polling only')
          ws.close()
        }
        return
      }
      if ((f.method === 'NotifyStatus' || f.method === 'NotifyFullStatus') && f.params) {
        for (const key of Object.keys(f.params)) for (const l of this.listeners.get(key) ?? []) l()
      }
    })
    const again = () => {
      clearInterval(ping)
      if (this.ws !== ws) return
      this.ws = undefined
      if (this.closed) return
      this.wsTimer = setTimeout(() => this.connectWs(), this.wsDelay)
      this.wsDelay = Math.min(this.wsDelay * 2, 30_000)
    }
    ws.on('close', again)
    ws.on('error', () => undefined) // 'close' follows
  }

  /** The auth object for a WebSocket frame (Shelly: ha2 over "dummy_method:dummy_uri"), or undefined. */
  private wsAuth(message: string | undefined): Record<string, unknown> | undefined {
    if (!this.password) return undefined
    let c: { realm?: string; nonce?: number | string; nc?: number; algorithm?: string }
    try {
      c = JSON.parse(message ?? '') as typeof c
    } catch {
      return undefined
    }
    if (!c.realm || c.nonce === undefined || (c.algorithm ?? 'SHA-256').toUpperCase() !== 'SHA-256') return undefined
    let password: string
    try {
      password = this.password()
    } catch {
      return undefined
    }
    const cnonce = randomBytes(8).readUInt32BE(0)
    return {
      realm: c.realm,
      username: USER,
      nonce: c.nonce,
      cnonce,
      response: digestResponse(USER, c.realm, password, c.nonce, c.nc ?? 1, cnonce, 'dummy_method:dummy_uri'),
      algorithm: 'SHA-256',
    }
  }

  override async close(): Promise<void> {
    this.closed = true
    clearTimeout(this.wsTimer)
    const ws = this.ws
    this.ws = undefined
    ws?.terminate()
    await super.close()
  }
}

/** One outlet on a Shelly: its meter's component and, where it has one, its switch. */
export class ShellyOutlet extends NetOutlet {
  constructor(
    id: string,
    private readonly dev: ShellyDevice,
    cfg: OutletConfig,
    meter: DeviceModel,
    relay: DeviceModel | undefined,
    now: () => number,
  ) {
    super(id, dev, cfg, meter, relay, now)
    dev.need(meter)
    if (relay) dev.need(relay)
  }

  onChange(listener: () => void): void {
    for (const r of this.meter.device!.read) if (r.component) this.dev.onNotify(`${r.component}:${this.meterCh}`, listener)
  }

  protected async ask(r: NetDeviceSpec['read'][number]): Promise<{ reply: unknown; what: string }> {
    return { reply: await this.dev.call('poll', r.method!, { id: this.meterCh }), what: r.method! }
  }

  /** Switch.GetStatus read for the meter already holds `output` when the meter and the switch are one component. */
  protected override stateFrom(replies: Map<NetDeviceSpec['read'][number], unknown>, sw: NonNullable<NetDeviceSpec['switch']>): unknown {
    if (this.meterCh !== this.relayCh) return undefined
    for (const [r, reply] of replies) if (r.method === sw.get) return reply
    return undefined
  }

  protected state(sw: NonNullable<NetDeviceSpec['switch']>, priority: Priority): Promise<unknown> {
    return this.dev.call(priority, sw.get, { id: this.relayCh })
  }

  protected async switchTo(sw: NonNullable<NetDeviceSpec['switch']>, closed: boolean): Promise<void> {
    await this.dev.call('relay', sw.set!, { id: this.relayCh, on: closed, ...(closed ? { toggle_after: this.dev.config.autoOffS } : {}) })
  }

  protected async rearmCall(sw: NonNullable<NetDeviceSpec['switch']>): Promise<void> {
    await this.dev.call('relay', sw.set!, { id: this.relayCh, on: true, toggle_after: this.dev.config.autoOffS })
  }
}
