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
import type { NetDeviceConfig, OutletConfig } from '../core/types.js'
import type { Priority } from './scheduler.js'
import type { DeviceModel, NetDeviceSpec } from './models.js'
import { httpExchange, NetDevice, NetOutlet, parseJsonReply, passwordReader, type NetOpenOptions } from './netdev.js'

export class TasmotaDevice extends NetDevice {
  private readonly password: (() => string) | undefined

  constructor(config: NetDeviceConfig, opts: NetOpenOptions) {
    super(config, opts)
    this.password = opts.password ?? passwordReader(config)
  }

  /** Status 0: the device is there. */
  protected async probeOnce(): Promise<void> {
    await this.command('poll', 'Status')
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
}

/** PulseTime's value for `s` seconds: 1-111 count tenths of a second, 112-64900 seconds plus 100. */
export function pulseTime(s: number): number {
  return s <= 11 ? s * 10 : s + 100
}

/** One outlet on a Tasmota plug: Status 10 for the meter, relay n for the switch. */
export class TasmotaOutlet extends NetOutlet {
  constructor(
    id: string,
    private readonly dev: TasmotaDevice,
    cfg: OutletConfig,
    meter: DeviceModel,
    relay: DeviceModel | undefined,
    now: () => number,
  ) {
    super(id, dev, cfg, meter, relay, now)
  }

  private cmd(template: string, n = this.relayCh): string {
    return template.replace(/\{n\}/g, String(n)).replace(/\{s\}/g, String(pulseTime(this.dev.config.autoOffS)))
  }

  protected override statePath(p: string): string {
    return this.cmd(p)
  }

  protected async ask(r: NetDeviceSpec['read'][number]): Promise<{ reply: unknown; what: string }> {
    const cmnd = this.cmd(r.command!, this.meterCh)
    return { reply: await this.dev.command('poll', cmnd), what: cmnd }
  }

  protected state(sw: NonNullable<NetDeviceSpec['switch']>, priority: Priority): Promise<unknown> {
    return this.dev.command(priority, this.cmd(sw.get))
  }

  protected async switchTo(sw: NonNullable<NetDeviceSpec['switch']>, closed: boolean): Promise<void> {
    if (closed && sw.autoOff) await this.dev.command('relay', this.cmd(sw.autoOff))
    await this.dev.command('relay', this.cmd(closed ? sw.on! : sw.off!))
  }

  /** A Power On while on restarts the pulse timer. */
  protected async rearmCall(sw: NonNullable<NetDeviceSpec['switch']>): Promise<void> {
    if (sw.autoOff) await this.dev.command('relay', this.cmd(sw.on!))
  }
}
