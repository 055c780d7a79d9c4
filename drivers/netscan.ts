/**
 * Finding what a Shelly or a Tasmota device at an address offers, before it is added: the
 * page's "Shelly or Tasmota by address". A Shelly says its model and components
 * (Shelly.GetDeviceInfo, Shelly.GetStatus): each metering `switch:N` is an outlet of
 * `shelly-switch`, each `pm1:N` a meter of `shelly-pm1`, each `em1:N` a meter of `shelly-em1`
 * (with `switch:0` as its contactor's relay). A Tasmota says its name and relays (Status) and
 * whether it meters (Status 10): its first relay with the energy sensor is an outlet of
 * `tasmota`. Each channel is then read once through the same outlet driver that will poll it,
 * so the figures shown are the ones the site will bill from.
 *
 * Owns: the mapping from a device's own description to the built-in models and channels.
 * Must never: switch a relay, keep the device open after the answer, or log the password.
 */
import type { NetDeviceConfig, OutletConfig } from '../core/types.js'
import { ModelRegistry } from './models.js'
import { ShellyDevice, ShellyOutlet } from './shelly.js'
import { TasmotaDevice, TasmotaOutlet } from './tasmota.js'
import type { NetDevice, NetOutlet } from './netdev.js'
import { describeError } from './errors.js'

export interface NetChannelFind {
  channel: number
  meter: string
  relay?: string
  /** The relay's channel (a Shelly EM's contactor is its switch:0, whatever the meter's channel). */
  relayChannel?: number
  /** What the meter reads now, through its model: voltageV, currentA, powerW, energyWh. */
  reading?: { voltageV: number; currentA: number; powerW: number; energyWh: number }
  readError?: string
  relayClosed?: boolean
}

export interface NetDeviceFind {
  type: 'shelly' | 'tasmota'
  host: string
  port: number
  /** The device's own model and name, as it reports them. */
  model: string | null
  name: string | null
  channels: NetChannelFind[]
}

/** What the device at `config` offers, each channel read once; rejects when the device does not answer (or refuses the password). */
export async function findNetDevice(
  config: NetDeviceConfig,
  opts: { now: () => number; password?: () => string; modelsDir?: string },
): Promise<NetDeviceFind> {
  const o = { now: opts.now, ...(opts.password ? { password: opts.password } : {}) }
  const dev: NetDevice = config.type === 'shelly' ? new ShellyDevice(config, o) : new TasmotaDevice(config, o)
  const registry = new ModelRegistry(opts.modelsDir)
  try {
    const found = dev instanceof ShellyDevice ? await shellyChannels(dev) : await tasmotaChannels(dev as TasmotaDevice)
    const out: NetDeviceFind = { type: config.type, host: config.host, port: config.port, model: found.model, name: found.name, channels: [] }
    for (const ch of found.channels) {
      const cfg: OutletConfig = {
        id: `${config.id}-${ch.channel}`,
        bus: config.id,
        meter: { model: ch.meter, channel: ch.channel },
        ...(ch.relay ? { relay: { model: ch.relay, channel: ch.relayChannel } } : {}),
        plan: 'probe',
      } as OutletConfig
      const meter = registry.get(ch.meter, 'meter')
      const relay = ch.relay ? registry.get(ch.relay, 'relay') : undefined
      const outlet: NetOutlet =
        dev instanceof ShellyDevice
          ? new ShellyOutlet(cfg.id, dev, cfg, meter, relay, opts.now)
          : new TasmotaOutlet(cfg.id, dev as TasmotaDevice, cfg, meter, relay, opts.now)
      const result: NetChannelFind = { ...ch }
      try {
        const r = await outlet.read()
        result.reading = { voltageV: r.voltageV, currentA: r.currentA, powerW: r.powerW, energyWh: r.energyWh }
      } catch (err) {
        result.readError = describeError(err)
      }
      if (relay) result.relayClosed = await outlet.readRelay().catch(() => undefined)
      out.channels.push(result)
    }
    return out
  } finally {
    await dev.close()
  }
}

async function shellyChannels(dev: ShellyDevice): Promise<{ model: string | null; name: string | null; channels: NetChannelFind[] }> {
  const info = (await dev.call('poll', 'Shelly.GetDeviceInfo', {})) as Record<string, unknown>
  const status = (await dev.call('poll', 'Shelly.GetStatus', {})) as Record<string, Record<string, unknown> | undefined>
  const keys = Object.keys(status)
  const ids = (kind: string): number[] =>
    keys
      .filter((k) => k.startsWith(`${kind}:`))
      .map((k) => Number(k.slice(kind.length + 1)))
      .filter((n) => Number.isInteger(n))
      .sort((a, b) => a - b)
  const channels: NetChannelFind[] = []
  for (const n of ids('switch'))
    if (typeof status[`switch:${n}`]?.apower === 'number')
      channels.push({ channel: n, meter: 'shelly-switch', relay: 'shelly-switch', relayChannel: n })
  for (const n of ids('pm1')) channels.push({ channel: n, meter: 'shelly-pm1' })
  const contactor = ids('switch').includes(0)
  for (const n of ids('em1')) channels.push({ channel: n, meter: 'shelly-em1', ...(contactor ? { relay: 'shelly-switch', relayChannel: 0 } : {}) })
  const text = (v: unknown): string | null => (typeof v === 'string' && v !== '' ? v : null)
  return { model: [text(info.app), text(info.model)].filter((x) => x).join(' ') || null, name: text(info.name) ?? text(info.id), channels }
}

async function tasmotaChannels(dev: TasmotaDevice): Promise<{ model: string | null; name: string | null; channels: NetChannelFind[] }> {
  const st = ((await dev.command('poll', 'Status')).Status ?? {}) as Record<string, unknown>
  const sns = ((await dev.command('poll', 'Status 10')).StatusSNS ?? {}) as Record<string, unknown>
  const names = Array.isArray(st.FriendlyName) ? (st.FriendlyName as unknown[]) : []
  const meters = typeof sns.ENERGY === 'object' && sns.ENERGY !== null
  // Tasmota's energy sensor measures the device as a whole: with it, relay 1 is the outlet.
  const channels: NetChannelFind[] = meters ? [{ channel: 1, meter: 'tasmota', relay: 'tasmota', relayChannel: 1 }] : []
  return { model: typeof st.DeviceName === 'string' ? st.DeviceName : null, name: typeof names[0] === 'string' ? names[0] : null, channels }
}
