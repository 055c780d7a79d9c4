/**
 * Tasmota plugs over HTTP: GET /cm?cmnd=<command>, with user and password as
 * query parameters when the device has a web password.
 *
 * Owns: the command URL, Tasmota's refusals (401 "Need user=...", {"Command":
 * "Unknown"}), and the Tasmota outlet: a model's read commands, Power{n} On/Off
 * with the state read back, and PulseTime as the dead-gateway auto-off.
 * Must never: correct the energy total (Tasmota saves it to flash once a day, so
 * it falls back after a power cut: the engine sees the raw value and judges it).
 */
import { OutpostError } from './errors.js'
import type { NetDeviceConfig, OutletConfig, Reading } from '../core/types.js'
import type { OutletIO } from './site.js'
import type { Priority } from './scheduler.js'
import type { DeviceModel } from './models.js'
import {
  AutoOff,
  httpExchange,
  NetDevice,
  netChannel,
  netValue,
  parseJsonReply,
  passwordReader,
  pathGet,
  toNetReading,
  type NetOpenOptions,
} from './netdev.js'

export class TasmotaDevice extends NetDevice {
  private readonly password: (() => string) | undefined
  private probeTimer: NodeJS.Timeout | undefined
  private probeDelay = 1000

  constructor(config: NetDeviceConfig, opts: NetOpenOptions) {
    super(config, opts)
    this.password = passwordReader(config)
  }

  start(): void {
    this.closed = false
    this.probe()
  }

  /** Status 0 until it answers: health shows the device as open before the first poll. */
  private probe(): void {
    if (this.closed) return
    this.command('poll', 'Status').then(
      () => undefined,
      () => {
        this.probeTimer = setTimeout(() => this.probe(), this.probeDelay)
        this.probeDelay = Math.min(this.probeDelay * 2, 30_000)
      },
    )
  }

  /** One command; its JSON reply, or NET_AUTH / NET_RPC_ERROR / NET_BAD_REPLY saying what the device said instead. */
  command(priority: Priority, cmnd: string): Promise<Record<string, unknown>> {
    return this.run(priority, cmnd, async () => {
      const where = `device ${this.id} ${cmnd}`
      const q = new URLSearchParams()
      if (this.password) {
        q.set('user', this.config.user ?? 'admin')
        q.set('password', this.password())
      }
      q.set('cmnd', cmnd)
      const r = await httpExchange(this.agent, {
        host: this.config.host,
        port: this.config.port,
        method: 'GET',
        path: `/cm?${q.toString().replace(/\+/g, '%20')}`,
        timeoutMs: this.config.timeoutMs,
      })
      if (r.status === 401)
        throw new OutpostError(
          'NET_AUTH',
          `${where}: ${this.password ? 'user or password refused' : 'the device asks for a password; set passwordFile'}`,
        )
      const reply = parseJsonReply(where, r)
      if (r.status !== 200) throw new OutpostError('NET_HTTP', `${where}: HTTP ${r.status}`)
      if (typeof reply.WARNING === 'string') throw new OutpostError('NET_AUTH', `${where}: ${reply.WARNING}`)
      if (reply.Command === 'Unknown' || reply.Command === 'Error')
        throw new OutpostError('NET_RPC_ERROR', `${where}: the device answered Command ${reply.Command}`)
      return reply
    })
  }

  override async close(): Promise<void> {
    this.closed = true
    clearTimeout(this.probeTimer)
    await super.close()
  }
}

/** PulseTime's value for `s` seconds: 1-111 count tenths of a second, 112-64900 seconds plus 100. */
export function pulseTime(s: number): number {
  return s <= 11 ? s * 10 : s + 100
}

export class TasmotaOutlet implements OutletIO {
  readonly hasRelay: boolean
  private readonly n: number
  private readonly meterN: number
  private readonly autoOff: AutoOff

  constructor(
    readonly id: string,
    private readonly dev: TasmotaDevice,
    cfg: OutletConfig,
    private readonly meter: DeviceModel,
    private readonly relay: DeviceModel | undefined,
    private readonly now: () => number,
  ) {
    this.hasRelay = relay !== undefined
    this.meterN = netChannel(cfg, 'meter', 'tasmota')
    this.n = netChannel(cfg, 'relay', 'tasmota')
    this.autoOff = new AutoOff(dev.config.autoOffS)
  }

  private cmd(template: string): string {
    return template.replace(/\{n\}/g, String(this.n)).replace(/\{s\}/g, String(pulseTime(this.dev.config.autoOffS)))
  }

  async read(): Promise<Reading> {
    const q: Record<string, number> = {}
    for (const r of this.meter.device!.read) {
      const cmnd = r.command!.replace(/\{n\}/g, String(this.meterN))
      const reply = await this.dev.command('poll', cmnd)
      for (const [name, v] of Object.entries(r.values)) q[name] = netValue(`outlet ${this.id} ${cmnd}`, reply, name, v)
    }
    const reading = toNetReading(`outlet ${this.id}`, q, this.now())
    await this.rearm()
    return reading
  }

  /** A Power On while on restarts the pulse timer: re-armed only when the device still reports the relay closed. */
  private async rearm(): Promise<void> {
    const sw = this.relay?.device?.switch
    if (!sw?.autoOff || !this.autoOff.wanted) return
    try {
      if (!this.autoOff.due(this.closedIn(await this.dev.command('poll', this.cmd(sw.get))))) return
      await this.dev.command('relay', this.cmd(sw.on!))
      this.autoOff.armed()
    } catch {
      // The pulse timer runs on; if the gateway is gone for good the relay opens by itself.
    }
  }

  private closedIn(reply: unknown): boolean {
    const sw = this.relay!.device!.switch!
    for (const p of sw.path) {
      const v = pathGet(reply, this.cmd(p))
      if (v !== undefined) return v === sw.closedValue
    }
    throw new OutpostError(
      'NET_BAD_REPLY',
      `outlet ${this.id}: ${sw.path.map((p) => this.cmd(p)).join(' or ')} missing from the reply to ${this.cmd(sw.get)}`,
    )
  }

  async setRelay(closed: boolean): Promise<void> {
    const sw = this.relay?.device?.switch
    if (!sw) throw new OutpostError('NO_RELAY', `outlet ${this.id} has no relay`)
    this.autoOff.wanted = closed
    if (closed && sw.autoOff) await this.dev.command('relay', this.cmd(sw.autoOff))
    await this.dev.command('relay', this.cmd(closed ? sw.on! : sw.off!))
    if (closed) this.autoOff.armed()
    const back = this.closedIn(await this.dev.command('relay', this.cmd(sw.get)))
    if (back !== closed)
      throw new OutpostError(
        'RELAY_MISMATCH',
        `outlet ${this.id}: relay ${this.n} of ${this.dev.id} reads ${back ? 'ON' : 'OFF'} after ${closed ? 'On' : 'Off'}`,
      )
  }

  async readRelay(): Promise<boolean> {
    const sw = this.relay?.device?.switch
    if (!sw) throw new OutpostError('NO_RELAY', `outlet ${this.id} has no relay`)
    return this.closedIn(await this.dev.command('poll', this.cmd(sw.get)))
  }
}
