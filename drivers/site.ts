/**
 * The site's I/O as the daemon sees it: openSite() turns the validated config
 * into one scheduler per bus and one OutletIO per outlet; addOutlets() opens outlets
 * appended while the daemon runs, beside the others.
 *
 * Owns: wiring buses, links and models together; turning a model's registers
 * into a Reading; switching a relay and confirming it by reading it back.
 * Never throws because a bus is absent (that bus reports 'error' and keeps
 * reopening), never decides when to poll or switch (the engine does).
 */
import type { Logger } from 'pino'
import { isOutpostError, OutpostError } from './errors.js'
import type { OutletIO } from './outlet.js'
import type { BusConfig, CircuitConfig, CircuitReading, NetDeviceConfig, OutletConfig, Reading, SiteConfig, WireBusConfig } from '../core/types.js'
import { bitsPerChar, decodeBits, decodeWords, interFrameMs, type ModbusRequest, type ModbusResponse } from './modbus.js'
import { LineLink, RtuLink, TcpLink } from './links.js'
import type { LineReply, LineRequest } from './line-protocol.js'
import { BusScheduler, type BusHealth, type Priority } from './scheduler.js'
import { SerialStream, TcpStream } from './transport.js'
import {
  BUS_TRANSPORT,
  decodeIdentity,
  decodeMeter,
  identityWords,
  meterBlocks,
  ModelRegistry,
  toReading,
  type Block,
  unavailableWhy as why,
  type DeviceModel,
} from './models.js'
import type { NetDevice } from './netdev.js'
import { ShellyDevice, ShellyOutlet } from './shelly.js'
import { TasmotaDevice, TasmotaOutlet } from './tasmota.js'

export type { OutletIO } from './outlet.js'

/** A circuit's feeder meter: its phase currents. */
export interface FeederIO {
  readonly circuit: string
  /** One sample; a single-phase meter's current counts on every phase (the safe reading). */
  read(): Promise<CircuitReading>
}

export interface SiteIO {
  outlet(id: string): OutletIO
  outletIds(): string[]
  /** The feeder meter of a circuit that has one. */
  feeder(circuit: string): FeederIO
  feederIds(): string[]
  bus(id: string): Bus
  health(): BusHealth[]
  /**
   * Opens outlets added to the config while the site runs, and the buses and network devices
   * new in `next` (those already open are left alone: their outlets keep polling). Throws
   * CONFIG_INVALID, opening nothing, for a model on the wrong kind of bus or a new channel of a
   * network device already started (its outlets' needs are checked at its start).
   */
  addOutlets(next: SiteConfig, ids: readonly string[]): Promise<void>
  /**
   * Binds outlets already open to the relay `next` gives them (a swapped pair mended after a
   * cross-check), on the Modbus or serial bus they were on. Throws CONFIG_INVALID, changing
   * nothing, for an outlet not open, one that moved bus, or one on a network device.
   */
  rewireOutlets(next: SiteConfig, ids: readonly string[]): Promise<void>
  /** Resolves true once every bus is open, false if that has not happened within `ms` (never throws). */
  ready(ms: number): Promise<boolean>
  close(): Promise<void>
}

export interface OpenOptions {
  now: () => number
  logger?: Logger
  /** Tuning for tests; defaults suit a real RS-485 bus. */
  scheduler?: { backoffAfter?: number; backoffMinMs?: number; backoffMaxMs?: number; reopenMinMs?: number; reopenMaxMs?: number }
}

/** A bus and the Modbus/line operations on it, all through its one scheduler. */
/** How a read is queued: its priority, a delay before it, and whether it is a scan's probe (not the device's health). */
export interface ReadOptions {
  priority?: Priority
  delayMs?: number
  /** A scan asking whether anything answers: its failures and successes stay out of the unit's health and back-off. */
  probe?: boolean
}

export class Bus {
  readonly scheduler: BusScheduler<ModbusRequest, ModbusResponse> | BusScheduler<LineRequest, LineReply>
  readonly config: WireBusConfig
  constructor(config: BusConfig, opts: OpenOptions) {
    if (config.type === 'shelly' || config.type === 'tasmota')
      throw new OutpostError('BUS_WRONG_TYPE', `"${config.id}" is a network device (${config.type}), not a Modbus or serial bus`)
    this.config = config as WireBusConfig
    const wire = this.config
    const common = {
      id: wire.id,
      type: wire.type,
      now: opts.now,
      logger: opts.logger,
      timeoutMs: wire.timeoutMs,
      retries: wire.retries,
      ...opts.scheduler,
    }
    if (wire.type === 'modbus-tcp') {
      this.scheduler = new BusScheduler(new TcpLink(new TcpStream(wire.host, wire.port, Math.max(wire.timeoutMs * 5, 2000))), {
        ...common,
        interFrameMs: 0,
      })
    } else {
      const bits = bitsPerChar(wire.dataBits, wire.parity, wire.stopBits)
      const charMs = (bits * 1000) / wire.baudRate
      const stream = new SerialStream({
        path: wire.path,
        baudRate: wire.baudRate,
        parity: wire.parity,
        dataBits: wire.dataBits,
        stopBits: wire.stopBits,
      })
      const line = {
        ...common,
        interFrameMs: wire.interFrameMs ?? interFrameMs(wire.baudRate, bits),
        requestGapMs: wire.requestGapMs,
      }
      const linkOpts = { bus: wire.id, echo: wire.echo }
      if (wire.type === 'modbus-rtu') {
        this.scheduler = new BusScheduler(new RtuLink(stream, linkOpts), { ...line, wireMs: (req) => charMs * rtuBytes(req as ModbusRequest) })
      } else {
        // A D line is at most ~60 characters; a request ~16.
        this.scheduler = new BusScheduler(new LineLink(stream, linkOpts), { ...line, wireMs: () => charMs * 80 })
      }
    }
  }

  get id(): string {
    return this.config.id
  }

  start(): void {
    this.scheduler.start()
  }

  private modbus(): BusScheduler<ModbusRequest, ModbusResponse> {
    if (this.config.type === 'serial') throw new OutpostError('BUS_WRONG_TYPE', `bus ${this.config.id} is a plain serial bus, not Modbus`)
    return this.scheduler as BusScheduler<ModbusRequest, ModbusResponse>
  }

  line(): BusScheduler<LineRequest, LineReply> {
    if (this.config.type !== 'serial') throw new OutpostError('BUS_WRONG_TYPE', `bus ${this.config.id} is Modbus, not a plain serial bus`)
    return this.scheduler as BusScheduler<LineRequest, LineReply>
  }

  /** Read registers (FC03/FC04) as 16-bit words. */
  readRegisters(unit: number, fc: 3 | 4, address: number, count: number, opts: ReadOptions = {}): Promise<number[]> {
    return this.modbus().submit(unit, opts.priority ?? 'poll', async (tx) => decodeWords((await tx({ unit, fc, address, count })).data), opts)
  }

  readBits(unit: number, fc: 1 | 2, address: number, count: number, opts: ReadOptions = {}): Promise<boolean[]> {
    return this.modbus().submit(unit, opts.priority ?? 'poll', async (tx) => decodeBits((await tx({ unit, fc, address, count })).data, count), opts)
  }

  /** Several block reads as one job (nothing else on the bus in between). */
  readBlocks(unit: number, blocks: Block[], opts: ReadOptions = {}): Promise<number[][]> {
    return this.modbus().submit(
      unit,
      opts.priority ?? 'poll',
      async (tx) => {
        const out: number[][] = []
        for (const b of blocks) out.push(decodeWords((await tx({ unit, fc: b.fc, address: b.address, count: b.count })).data))
        return out
      },
      opts,
    )
  }

  /** Write then read back in one job; resolves to the value read back. */
  writeCoilConfirmed(unit: number, address: number, value: boolean, opts: { delayMs?: number } = {}): Promise<boolean> {
    return this.modbus().submit(
      unit,
      'relay',
      async (tx) => {
        await tx({ unit, fc: 5, address, value })
        return decodeBits((await tx({ unit, fc: 1, address, count: 1 })).data, 1)[0]!
      },
      opts,
    )
  }

  writeRegisterConfirmed(unit: number, address: number, value: number, opts: { delayMs?: number } = {}): Promise<number> {
    return this.modbus().submit(
      unit,
      'relay',
      async (tx) => {
        await tx({ unit, fc: 6, address, value })
        return decodeWords((await tx({ unit, fc: 3, address, count: 1 })).data)[0]!
      },
      opts,
    )
  }

  lineExchange(req: LineRequest, priority: Priority, opts: { delayMs?: number } = {}): Promise<LineReply> {
    return this.line().submit(req.addr, priority, (tx) => tx(req), opts)
  }

  health(): BusHealth {
    return this.scheduler.health()
  }

  close(): Promise<void> {
    return this.scheduler.close()
  }
}

/** Bytes on the wire for a request and its largest reply. */
function rtuBytes(req: ModbusRequest): number {
  const reply = req.fc === 3 || req.fc === 4 ? 5 + 2 * req.count : req.fc === 1 || req.fc === 2 ? 5 + Math.ceil(req.count / 8) : 8
  const request = req.fc === 15 ? 9 + Math.ceil(req.values.length / 8) : req.fc === 16 ? 9 + 2 * req.values.length : 8
  return request + reply
}

export function openBus(config: BusConfig, opts: OpenOptions): Bus {
  const bus = new Bus(config, opts)
  bus.start()
  return bus
}

class ModbusOutlet implements OutletIO {
  readonly hasRelay: boolean
  private readonly blocks: Block[]
  /**
   * The meter's serial number (models with identity.serial): read with the first good reading
   * and again after any failed read (a meter swapped while silent shows with the next session).
   * A serial register that does not answer is not asked again until the meter has failed a read.
   */
  private serial: { state: 'unread' | 'known' | 'failed'; value?: string } = { state: 'unread' }
  constructor(
    readonly id: string,
    private readonly bus: Bus,
    private readonly cfg: OutletConfig,
    private readonly meter: DeviceModel,
    private readonly relay: DeviceModel | undefined,
    private readonly now: () => number,
  ) {
    this.hasRelay = relay !== undefined
    this.blocks = meterBlocks(meter)
  }

  async read(): Promise<Reading> {
    let data: number[][]
    try {
      data = await this.bus.readBlocks(this.cfg.meter.unit!, this.blocks, { delayMs: this.cfg.meter.delayMs })
    } catch (err) {
      this.serial = { state: 'unread' }
      throw withLineHint(err, this.bus.config, this.meter)
    }
    const unavailable: string[] = []
    const q = decodeMeter(this.meter, this.blocks, data, unavailable)
    const reading = toReading(this.id, q, this.now(), unavailable)
    const reg = this.meter.identity?.serial
    if (reg && this.serial.state === 'unread') {
      try {
        const words = await this.bus.readRegisters(this.cfg.meter.unit!, reg.function, reg.address, identityWords(reg), {
          delayMs: this.cfg.meter.delayMs,
        })
        this.serial = { state: 'known', value: decodeIdentity(reg, words) }
      } catch {
        this.serial = { state: 'failed' }
      }
    }
    return this.serial.value !== undefined && this.serial.value !== '' ? { ...reading, meterSerial: this.serial.value } : reading
  }

  private relayPoint(): { unit: number; address: number; model: DeviceModel } {
    if (!this.relay || !this.cfg.relay) throw new OutpostError('NO_RELAY', `outlet ${this.id} has no relay`)
    const r = this.relay.relay!
    const address = r.point === 'coil' ? (this.cfg.relay.coil ?? r.address) : (this.cfg.relay.register ?? r.address)
    if (address === undefined) throw new OutpostError('NO_RELAY', `outlet ${this.id}: relay model ${this.relay.name} needs relay.${r.point}`)
    return { unit: this.cfg.relay.unit!, address, model: this.relay }
  }

  async setRelay(closed: boolean): Promise<void> {
    const { unit, address, model } = this.relayPoint()
    const r = model.relay!
    const opts = { delayMs: this.cfg.relay?.delayMs }
    if (r.point === 'coil') {
      const back = await this.bus.writeCoilConfirmed(unit, address, closed, opts)
      if (back !== closed)
        throw new OutpostError(
          'RELAY_MISMATCH',
          `outlet ${this.id}: coil ${address} of unit ${unit} reads ${back ? 'closed' : 'open'} after writing ${closed ? 'closed' : 'open'}`,
        )
    } else {
      const want = closed ? r.closedValue : r.openValue
      const back = await this.bus.writeRegisterConfirmed(unit, address, want, opts)
      if (back !== want)
        throw new OutpostError('RELAY_MISMATCH', `outlet ${this.id}: register ${address} of unit ${unit} reads ${back} after writing ${want}`)
    }
  }

  async readRelay(): Promise<boolean> {
    const { unit, address, model } = this.relayPoint()
    const r = model.relay!
    if (r.point === 'coil') return (await this.bus.readBits(unit, 1, address, 1, { delayMs: this.cfg.relay?.delayMs }))[0]!
    const v = (await this.bus.readRegisters(unit, 3, address, 1, { delayMs: this.cfg.relay?.delayMs }))[0]!
    if (v === r.closedValue) return true
    if (v === r.openValue) return false
    throw new OutpostError(
      'RELAY_MISMATCH',
      `outlet ${this.id}: register ${address} of unit ${unit} holds ${v}, neither closed (${r.closedValue}) nor open (${r.openValue})`,
    )
  }
}

class SerialOutlet implements OutletIO {
  constructor(
    readonly id: string,
    private readonly bus: Bus,
    private readonly cfg: OutletConfig,
    readonly hasRelay: boolean,
    private readonly now: () => number,
  ) {}

  async read(): Promise<Reading> {
    const r = await this.bus.lineExchange({ type: 'Q', addr: this.cfg.meter.unit! }, 'poll', { delayMs: this.cfg.meter.delayMs })
    if (r.type !== 'D') throw new OutpostError('SERIAL_DEVICE_ERROR', `controller ${this.cfg.meter.unit}: unexpected reply`)
    return toReading(this.id, { voltageV: r.voltageV, currentA: r.currentA, powerW: r.powerW, energyWh: r.energyWh }, this.now())
  }

  async setRelay(closed: boolean): Promise<void> {
    if (!this.hasRelay || !this.cfg.relay) throw new OutpostError('NO_RELAY', `outlet ${this.id} has no relay`)
    const r = await this.bus.lineExchange({ type: 'S', addr: this.cfg.relay.unit!, closed }, 'relay', { delayMs: this.cfg.relay.delayMs })
    if (r.type !== 'D' || r.relayClosed !== closed) {
      throw new OutpostError(
        'RELAY_MISMATCH',
        `outlet ${this.id}: controller ${this.cfg.relay.unit} reports its relay ${r.type === 'D' && r.relayClosed ? 'closed' : 'open'} ` +
          `after being told ${closed ? 'close' : 'open'}`,
      )
    }
  }

  async readRelay(): Promise<boolean> {
    if (!this.hasRelay || !this.cfg.relay) throw new OutpostError('NO_RELAY', `outlet ${this.id} has no relay`)
    const r = await this.bus.lineExchange({ type: 'Q', addr: this.cfg.relay.unit! }, 'poll', { delayMs: this.cfg.relay.delayMs })
    if (r.type !== 'D') throw new OutpostError('SERIAL_DEVICE_ERROR', `controller ${this.cfg.relay.unit}: unexpected reply`)
    return r.relayClosed
  }
}

class ModbusFeeder implements FeederIO {
  private readonly blocks: Block[]
  constructor(
    readonly circuit: string,
    private readonly bus: Bus,
    private readonly cfg: NonNullable<CircuitConfig['meter']>,
    private readonly meter: DeviceModel,
    private readonly now: () => number,
  ) {
    this.blocks = meterBlocks(meter)
  }

  async read(): Promise<CircuitReading> {
    const data = await this.bus.readBlocks(this.cfg.unit, this.blocks, { delayMs: this.cfg.delayMs })
    const unavailable: string[] = []
    const q = decodeMeter(this.meter, this.blocks, data, unavailable)
    const phase = (k: string): number => {
      const v = q[k] ?? q.currentA
      if (typeof v !== 'number' || !Number.isFinite(v))
        throw new OutpostError('READING_INVALID', `feeder meter of circuit ${this.circuit}: ${k} is ${String(v)}${why(unavailable)}`)
      return v
    }
    return { ts: this.now(), currentsA: [phase('currentL1A'), phase('currentL2A'), phase('currentL3A')] }
  }
}

function netDevice(config: NetDeviceConfig, opts: OpenOptions): NetDevice {
  const o = { now: opts.now, logger: opts.logger }
  return config.type === 'shelly' ? new ShellyDevice(config, o) : new TasmotaDevice(config, o)
}

/**
 * A meter that never answers on a bus whose line settings differ from the model's factory ones
 * (an Orno at 8E1 on an 8N1 bus) is most likely set up wrong, not broken: the timeout says so.
 */
function withLineHint(err: unknown, bus: BusConfig, meter: DeviceModel): unknown {
  const d = meter.serialDefaults
  if (!d || bus.type !== 'modbus-rtu' || !isOutpostError(err, 'MODBUS_TIMEOUT')) return err
  const line = (baud: number | undefined, bits: number | undefined, parity: string | undefined, stop: number | undefined): string =>
    `${baud ?? '?'} ${bits ?? 8}${parity === 'even' ? 'E' : parity === 'odd' ? 'O' : 'N'}${stop ?? 1}`
  const differs =
    (d.baudRate !== undefined && d.baudRate !== bus.baudRate) ||
    (d.parity !== undefined && d.parity !== bus.parity) ||
    (d.stopBits !== undefined && d.stopBits !== bus.stopBits)
  if (!differs) return err
  const factory = line(d.baudRate, d.dataBits, d.parity, d.stopBits)
  const here = line(bus.baudRate, bus.dataBits, bus.parity, bus.stopBits)
  const e = err as OutpostError
  return new OutpostError(e.code, `${e.message} (model ${meter.name} ships set to ${factory}; bus ${bus.id} runs ${here})`, { cause: err })
}

/**
 * Open every configured bus (each begins connecting in the background) and bind
 * the outlets to their models. Throws only for problems in the configuration
 * itself (an invalid model file, a model on the wrong kind of bus), never for
 * hardware that is absent.
 */
export async function openSite(config: SiteConfig, opts: OpenOptions): Promise<SiteIO> {
  const registry = new ModelRegistry(config.models?.dir)
  const buses = new Map<string, Bus>()
  const devices = new Map<string, NetDevice>()
  const outlets = new Map<string, OutletIO>()
  let current = config
  // Bind models first so a bad config opens nothing.
  const plans = config.outlets.map((o) => planOutlet(o, config.buses, registry, buses, devices, opts))
  const feederPlans: (() => FeederIO)[] = []
  for (const c of config.circuits ?? []) {
    const m = c.meter
    if (!m) continue
    const bc = config.buses.find((b) => b.id === m.bus)
    if (!bc) throw new OutpostError('CONFIG_INVALID', `circuit ${c.id}: unknown bus "${m.bus}"`)
    if (bc.type !== 'modbus-rtu' && bc.type !== 'modbus-tcp')
      throw new OutpostError('CONFIG_INVALID', `circuit ${c.id}: a feeder meter needs a Modbus bus, ${bc.id} is ${bc.type}`)
    const model = registry.get(m.model, 'meter')
    feederPlans.push(() => new ModbusFeeder(c.id, buses.get(bc.id)!, m, model, opts.now))
  }
  const started = openBuses(config.buses, buses, devices, opts)
  for (const p of plans) {
    const io = p()
    outlets.set(io.id, io)
  }
  // Outlets first: a Shelly checks at start that it has the methods its outlets' models call.
  for (const d of started) d.start()
  const feeders = new Map<string, FeederIO>()
  for (const p of feederPlans) {
    const f = p()
    feeders.set(f.circuit, f)
  }
  return {
    outlet(id) {
      const io = outlets.get(id)
      if (!io) throw new OutpostError('OUTLET_UNKNOWN', `unknown outlet "${id}" (outlets: ${[...outlets.keys()].join(', ')})`)
      return io
    },
    outletIds: () => [...outlets.keys()],
    feeder(circuit) {
      const f = feeders.get(circuit)
      if (!f)
        throw new OutpostError('FEEDER_UNKNOWN', `no feeder meter for circuit "${circuit}" (feeders: ${[...feeders.keys()].join(', ') || 'none'})`)
      return f
    },
    feederIds: () => [...feeders.keys()],
    bus(id) {
      const b = buses.get(id)
      if (!b) {
        if (devices.has(id)) throw new OutpostError('BUS_WRONG_TYPE', `"${id}" is a network device, not a Modbus or serial bus`)
        throw new OutpostError('BUS_UNKNOWN', `unknown bus "${id}"`)
      }
      return b
    },
    health: () => current.buses.map((bc) => (buses.get(bc.id) ?? devices.get(bc.id)!).health()),
    async addOutlets(next, ids) {
      const fresh = ids.map((id) => {
        if (outlets.has(id)) throw new OutpostError('CONFIG_INVALID', `outlet ${id} is already open`)
        const o = next.outlets.find((x) => x.id === id)
        if (!o) throw new OutpostError('CONFIG_INVALID', `outlet ${id} is not in the config`)
        const bc = next.buses.find((b) => b.id === o.bus)
        if (bc && devices.has(bc.id))
          throw new OutpostError('CONFIG_INVALID', `outlet ${id}: network device ${bc.id} is already started; a new channel on it needs a restart`)
        return planOutlet(o, next.buses, registry, buses, devices, opts)
      })
      const opened = openBuses(
        next.buses.filter((b) => !buses.has(b.id) && !devices.has(b.id)),
        buses,
        devices,
        opts,
      )
      for (const p of fresh) {
        const io = p()
        outlets.set(io.id, io)
      }
      for (const d of opened) d.start()
      current = next
    },
    async rewireOutlets(next, ids) {
      const fresh = ids.map((id) => {
        const o = next.outlets.find((x) => x.id === id)
        const was = current.outlets.find((x) => x.id === id)
        if (!o || !was || !outlets.has(id)) throw new OutpostError('CONFIG_INVALID', `outlet ${id} is not open`)
        if (o.bus !== was.bus) throw new OutpostError('CONFIG_INVALID', `outlet ${id}: moving to another bus needs a restart`)
        if (devices.has(o.bus)) throw new OutpostError('CONFIG_INVALID', `outlet ${id}: a network device's channels change at a restart`)
        return planOutlet(o, current.buses, registry, buses, devices, opts)
      })
      for (const p of fresh) {
        const io = p()
        outlets.set(io.id, io)
      }
      current = { ...current, outlets: current.outlets.map((x) => next.outlets.find((y) => y.id === x.id && ids.includes(x.id)) ?? x) }
    },
    async ready(ms) {
      const results = await Promise.allSettled([
        ...[...buses.values()].map((b) => b.scheduler.waitOpen(ms)),
        ...[...devices.values()].map((d) => d.waitOpen(ms)),
      ])
      return results.every((r) => r.status === 'fulfilled')
    },
    async close() {
      await Promise.all([...[...buses.values()].map((b) => b.close()), ...[...devices.values()].map((d) => d.close())])
    },
  }
}

/** Opens each of `configs` (a bus begins connecting in the background); returns the network devices, to start once their outlets are bound. */
function openBuses(configs: readonly BusConfig[], buses: Map<string, Bus>, devices: Map<string, NetDevice>, opts: OpenOptions): NetDevice[] {
  const started: NetDevice[] = []
  for (const bc of configs) {
    if (bc.type === 'shelly' || bc.type === 'tasmota') {
      const d = netDevice(bc, opts)
      devices.set(bc.id, d)
      started.push(d)
    } else buses.set(bc.id, openBus(bc, opts))
  }
  return started
}

/** An outlet's models bound to its bus kind (throws CONFIG_INVALID now), and how to build its OutletIO once its bus is open. */
function planOutlet(
  o: OutletConfig,
  busConfigs: readonly BusConfig[],
  registry: ModelRegistry,
  buses: Map<string, Bus>,
  devices: Map<string, NetDevice>,
  opts: OpenOptions,
): () => OutletIO {
  const bc = busConfigs.find((b) => b.id === o.bus)
  if (!bc) throw new OutpostError('CONFIG_INVALID', `outlet ${o.id}: unknown bus "${o.bus}"`)
  const meter = registry.get(o.meter.model, 'meter')
  const relay = o.relay ? registry.get(o.relay.model, 'relay') : undefined
  const wantTransport = BUS_TRANSPORT[bc.type]
  for (const m of [meter, relay]) {
    if (m && m.transport !== wantTransport)
      throw new OutpostError('CONFIG_INVALID', `outlet ${o.id}: model ${m.name} speaks ${m.transport} but bus ${bc.id} is ${bc.type}`)
  }
  if (bc.type === 'shelly' || bc.type === 'tasmota') {
    return () => {
      const dev = devices.get(bc.id)!
      return dev instanceof ShellyDevice
        ? new ShellyOutlet(o.id, dev, o, meter, relay, opts.now)
        : new TasmotaOutlet(o.id, dev as TasmotaDevice, o, meter, relay, opts.now)
    }
  }
  return () => {
    const bus = buses.get(bc.id)!
    return bc.type === 'serial'
      ? new SerialOutlet(o.id, bus, o, relay !== undefined, opts.now)
      : new ModbusOutlet(o.id, bus, o, meter, relay, opts.now)
  }
}
