/**
 * Bus scan: which unit ids answer on a bus, and what they are (meter models by
 * their registers, relay boards by their coils).
 *
 * Owns: probing through a normal Bus (one scheduler, so a scan never fights the
 * port), identifying devices against the model registry, and listing serial
 * ports without crashing where udevadm is missing. Never writes to a device:
 * a scan only reads (switching a relay to "see if it is one" could power a car).
 */
import { accessSync, constants, readdirSync, realpathSync, existsSync } from 'node:fs'
import { delimiter, join } from 'node:path'
import type { BusConfig } from '../core/types.js'
import { isOutpostError, OutpostError } from './errors.js'
import { Bus } from './site.js'
import {
  decodeIdentity,
  decodeMeter,
  identityVariant,
  identityWords,
  meterBlocks,
  ModelRegistry,
  type DeviceModel,
  type IdentityRegister,
} from './models.js'
import { describeError } from './errors.js'

/** Every scan read is a probe: what it finds or misses stays out of the units' health on a bus the site uses. */
const PROBE = { probe: true } as const

export interface ScanHit {
  unit: number
  kind: 'meter' | 'relay' | 'unknown'
  model?: string
  /** What the device's own model register says it is (ABB "B24", Carlo Gavazzi "ET112 ..."). */
  variant?: string
  /** The device's serial number, where its model has a serial register. */
  serial?: string
  /** Other models whose registers read the same here (SDM120 and SDM230): the scan cannot tell them apart. */
  alternatives?: string[]
  detail: string
  values?: Record<string, number>
  coils?: boolean[]
}

/** "1-10,100" → [1..10, 100]. */
export function parseUnits(spec: string): number[] {
  const out = new Set<number>()
  for (const part of spec.split(',')) {
    const m = part.trim().match(/^(\d{1,3})(?:-(\d{1,3}))?$/)
    if (!m) throw new OutpostError('USAGE', `--units: "${part}" is not a unit or range like 1-10`)
    const a = Number(m[1])
    const b = m[2] !== undefined ? Number(m[2]) : a
    if (a < 1 || b > 247 || a > b) throw new OutpostError('USAGE', `--units: ${part} must be within 1-247, low to high`)
    for (let u = a; u <= b; u++) out.add(u)
  }
  return [...out].sort((x, y) => x - y)
}

function matches(model: DeviceModel, q: Record<string, number>): boolean {
  return (model.identify ?? []).every((c) => {
    const v = q[c.quantity]
    return typeof v === 'number' && Number.isFinite(v) && (c.min === undefined || v >= c.min) && (c.max === undefined || v <= c.max)
  })
}

/**
 * Timeout, garbage and CRC mean "nothing at this unit" rather than "something that said no".
 * An echo setting that does not match the adapter, or a bus that closed, is rethrown: every
 * unit would seem to answer, and the scan stops with the diagnosis instead.
 */
function absent(err: unknown): boolean {
  // A bus that closed under the scan answers nothing for anyone: stop with that, never call every unit left a device.
  if (isOutpostError(err, 'BUS_ECHO_UNEXPECTED', 'BUS_ECHO_MISSING', 'BUS_CLOSED')) throw err
  if (isOutpostError(err, 'MODBUS_TIMEOUT', 'MODBUS_GARBAGE', 'MODBUS_CRC')) return true
  // A TCP gateway answers 10/11 for a unit behind it that does not answer.
  const cause = (err as { cause?: { exceptionCode?: number } }).cause
  return isOutpostError(err, 'MODBUS_EXCEPTION') && (cause?.exceptionCode === 10 || cause?.exceptionCode === 11)
}

export async function scanBus(
  config: BusConfig,
  units: number[],
  opts: {
    now: () => number
    modelsDir?: string
    onUnit?: (unit: number, hit: ScanHit | undefined) => void
    /** The site's own bus for this config, already open: probed through its scheduler, between its polls, and left open. */
    bus?: Bus
    /** Stops before the next unit; the hits so far are returned. */
    signal?: AbortSignal
  },
): Promise<ScanHit[]> {
  if (config.type === 'serial') throw new OutpostError('USAGE', 'scan probes Modbus buses only')
  const registry = new ModelRegistry(opts.modelsDir)
  // A model with neither a model register nor range checks is never guessed.
  const meters = registry
    .all()
    .filter((m) => m.kinds.includes('meter') && m.transport === 'modbus' && ((m.identify?.length ?? 0) > 0 || m.identity?.model))
    .sort((a, b) => a.name.localeCompare(b.name))
  const hits: ScanHit[] = []
  await onProbeBus(config, opts, async (bus) => {
    for (const unit of units) {
      if (opts.signal?.aborted) break
      const hit = await probe(bus, unit, meters)
      if (hit) hits.push(hit)
      opts.onUnit?.(unit, hit)
    }
  })
  return hits
}

/**
 * Runs `fn` on the site's own bus (`opts.bus`, already open: between its polls, left open) or,
 * for a port the site does not use, on a bus of its own that never backs a unit off (every
 * unit id asked is a probe), open first and closed after.
 */
async function onProbeBus(config: BusConfig, opts: { now: () => number; bus?: Bus }, fn: (bus: Bus) => Promise<void>): Promise<void> {
  const own = opts.bus === undefined
  const bus = opts.bus ?? new Bus(config, { now: opts.now, scheduler: { backoffAfter: 1_000_000, reopenMinMs: 200, reopenMaxMs: 1000 } })
  if (own) bus.start()
  try {
    await bus.scheduler.waitOpen(Math.max(5000, config.timeoutMs * 10))
    await fn(bus)
  } finally {
    if (own) await bus.close()
  }
}

/** An identity register's text, or undefined when the device does not answer it. */
async function readIdentity(bus: Bus, unit: number, reg: IdentityRegister): Promise<string | undefined> {
  try {
    return decodeIdentity(reg, await bus.readRegisters(unit, reg.function, reg.address, identityWords(reg), PROBE))
  } catch {
    return undefined
  }
}

/**
 * The meter at this unit. First every model that names itself (its model register holds a value it
 * lists: certain); else every model whose ranges match, most specific first, the first naming it
 * and the rest listed as alternatives where they are as specific.
 */
async function identifyMeter(bus: Bus, unit: number, meters: DeviceModel[]): Promise<ScanHit | undefined> {
  const decode = async (m: DeviceModel): Promise<Record<string, number> | undefined> => {
    const blocks = meterBlocks(m)
    try {
      return decodeMeter(m, blocks, await bus.readBlocks(unit, blocks, PROBE))
    } catch {
      return undefined // this model's registers are not all there: not this model
    }
  }
  const byRanges: DeviceModel[] = []
  for (const m of meters) {
    const id = m.identity?.model
    if (!id) {
      byRanges.push(m)
      continue
    }
    const value = await readIdentity(bus, unit, id)
    const variant = value !== undefined ? identityVariant(m, value) : undefined
    if (variant !== undefined) {
      // A device that names itself is that model even where a range check would fail (a three-phase meter on one phase).
      const q = await decode(m)
      if (q) return hit(bus, unit, m, q, variant, [])
    } else if (id.otherValues === 'ranges' && (m.identify?.length ?? 0) > 0) byRanges.push(m)
  }
  byRanges.sort((a, b) => (b.identify?.length ?? 0) - (a.identify?.length ?? 0) || a.name.localeCompare(b.name))
  const found: { m: DeviceModel; q: Record<string, number> }[] = []
  for (const m of byRanges) {
    if (found.length && (m.identify?.length ?? 0) < (found[0]!.m.identify?.length ?? 0)) break
    const q = await decode(m)
    if (q && matches(m, q)) found.push({ m, q })
  }
  const best = found[0]
  return best
    ? hit(
        bus,
        unit,
        best.m,
        best.q,
        undefined,
        found.slice(1).map((f) => f.m.name),
      )
    : undefined
}

async function hit(
  bus: Bus,
  unit: number,
  m: DeviceModel,
  q: Record<string, number>,
  variant: string | undefined,
  alternatives: string[],
): Promise<ScanHit> {
  const serial = m.identity?.serial ? await readIdentity(bus, unit, m.identity.serial) : undefined
  const detail = [
    variant,
    serial !== undefined ? `serial ${serial}` : undefined,
    `${q.voltageV} V  ${q.currentA} A  ${q.powerW} W  ${q.energyWh} Wh`,
    alternatives.length ? `(same registers: ${alternatives.join(', ')})` : undefined,
  ]
    .filter((x) => x !== undefined)
    .join('  ')
  return {
    unit,
    kind: 'meter',
    model: m.name,
    ...(variant !== undefined ? { variant } : {}),
    ...(serial !== undefined ? { serial } : {}),
    ...(alternatives.length ? { alternatives } : {}),
    values: q,
    detail,
  }
}

async function probe(bus: Bus, unit: number, meters: DeviceModel[]): Promise<ScanHit | undefined> {
  let answered = false
  // Input registers (Eastron, Carlo Gavazzi, Finder), then holding registers (ABB, Orno): any
  // answer, an exception included, means a device is there.
  for (const fc of [4, 3] as const) {
    try {
      await bus.readRegisters(unit, fc, 0, 1, PROBE)
      answered = true
    } catch (err) {
      if (!absent(err)) answered = true
    }
    if (answered) break
  }
  if (answered) {
    const hit = await identifyMeter(bus, unit, meters)
    if (hit) return hit
  }
  // Relay board: how many coils it has (the largest read from coil 0 it accepts, up to 64).
  let have = 0
  for (const n of [64, 32, 16, 8, 4, 2, 1]) {
    try {
      await bus.readBits(unit, 1, 0, n, PROBE)
      have = n
      break
    } catch (err) {
      if (absent(err)) break
      answered = true
    }
  }
  // Silent to both a register and a coil read: nobody is there (saves a timeout per empty unit).
  if (!answered && have === 0) return undefined
  if (have > 0) {
    let lo = have
    let hi = Math.min(have * 2, 65)
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1
      try {
        await bus.readBits(unit, 1, 0, mid, PROBE)
        lo = mid
      } catch {
        hi = mid
      }
    }
    const coils = await bus.readBits(unit, 1, 0, lo, PROBE).catch(() => undefined)
    if (coils) return { unit, kind: 'relay', model: 'modbus-coil', coils, detail: `${lo} coils: ${coils.map((c) => (c ? 1 : 0)).join('')}` }
  }
  try {
    const v = await bus.readRegisters(unit, 3, 0, 1, PROBE)
    return {
      unit,
      kind: 'unknown',
      model: 'modbus-holding?',
      detail: `answers holding register 0 = ${v[0]}; if it is a relay, use modbus-holding with its register`,
    }
  } catch (err) {
    if (!absent(err)) answered = true
  }
  return answered ? { unit, kind: 'unknown', detail: 'answers, but with exceptions to every probe' } : undefined
}

export function formatTable(hits: ScanHit[]): string {
  const rows = [['UNIT', 'KIND', 'MODEL', 'DETAIL'], ...hits.map((h) => [String(h.unit), h.kind, h.model ?? '-', h.detail])]
  const w = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i]!.length)))
  return rows.map((r) => r.map((c, i) => (i < 3 ? c.padEnd(w[i]!) : c)).join('  ')).join('\n')
}

/** A starting point for the site config: each meter paired with the next coil of the first relay board. */
/** The snippet as JSON with one device per line (easier to paste and edit than fully expanded JSON). */
export function formatSnippet(s: { buses: BusConfig[]; outlets: unknown[] }): string {
  const list = (xs: unknown[]): string => xs.map((x) => '    ' + JSON.stringify(x)).join(',\n')
  return `{\n  "buses": [\n${list(s.buses)}\n  ],\n  "outlets": [\n${list(s.outlets)}\n  ]\n}`
}

export function configSnippet(bus: BusConfig, hits: ScanHit[]): { buses: BusConfig[]; outlets: unknown[] } {
  const board = hits.find((h) => h.kind === 'relay')
  const outlets = hits
    .filter((h) => h.kind === 'meter')
    .map((h, i) => ({
      id: `O${h.unit}`,
      bus: bus.id,
      meter: { model: h.model, unit: h.unit },
      ...(board && i < (board.coils?.length ?? 0) ? { relay: { model: 'modbus-coil', unit: board.unit, coil: i } } : {}),
      plan: 'CHANGE-ME',
    }))
  return { buses: [bus], outlets }
}

function onPath(cmd: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    try {
      accessSync(join(dir, cmd), constants.X_OK)
      return true
    } catch {
      // keep looking
    }
  }
  return false
}

/**
 * Serial ports on this machine. serialport's list() spawns `udevadm`; where it
 * is missing the spawn fails (a rejection in serialport 13, an unhandled 'error'
 * event that kills the process in other versions), so it is only called when
 * udevadm exists, and /dev is read directly otherwise (and on any failure).
 */
export async function listSerialPorts(): Promise<{ path: string; byId?: string; note?: string }[]> {
  const byId = new Map<string, string>()
  const dir = '/dev/serial/by-id'
  if (existsSync(dir)) {
    for (const f of readdirSync(dir)) {
      try {
        byId.set(realpathSync(join(dir, f)), join(dir, f))
      } catch {
        // dangling link: adapter just unplugged
      }
    }
  }
  if (onPath('udevadm')) {
    try {
      const { SerialPort } = await import('serialport')
      const ports = await SerialPort.list()
      return ports.map((p) => ({
        path: p.path,
        byId: byId.get(p.path),
        note: [p.manufacturer, p.serialNumber].filter(Boolean).join(' ') || undefined,
      }))
    } catch {
      // fall through to /dev
    }
  }
  let devs: string[] = []
  try {
    devs = readdirSync('/dev')
      .filter((f) => /^tty(USB|ACM|AMA|S|XRUSB|WCH)\d+$/.test(f) || f === 'serial0' || f === 'serial1')
      .map((f) => join('/dev', f))
  } catch {
    devs = []
  }
  return devs.map((p) => ({ path: p, byId: byId.get(p) }))
}

/** What a device test read: the meter's quantities and serial, the relay's position; each part's error instead where it failed. */
export interface DeviceTest {
  /** The quantities the model decodes (voltageV, currentA, powerW, energyWh…). */
  meter?: Record<string, number>
  /** The meter's serial register, where its model has one and it answered. */
  serial?: string
  meterError?: string
  relay?: { closed: boolean }
  relayError?: string
}

/**
 * Reads a meter (and its relay's position) once, as its model says, before it is saved: the
 * form's "Test". Never switches the relay. Through `opts.bus` (the site's own, between its
 * polls) when the bus is configured, else a bus of its own, closed after.
 */
export async function testDevice(
  config: BusConfig,
  device: { meter: { model: string; unit: number }; relay?: { model: string; unit: number; coil?: number; register?: number } },
  opts: { now: () => number; modelsDir?: string; bus?: Bus },
): Promise<DeviceTest> {
  if (config.type !== 'modbus-rtu' && config.type !== 'modbus-tcp') throw new OutpostError('USAGE', 'a device test reads Modbus devices only')
  const registry = new ModelRegistry(opts.modelsDir)
  const meter = registry.get(device.meter.model, 'meter')
  const relay = device.relay ? registry.get(device.relay.model, 'relay') : undefined
  const out: DeviceTest = {}
  await onProbeBus(config, opts, async (bus) => {
    try {
      const blocks = meterBlocks(meter)
      const q = decodeMeter(meter, blocks, await bus.readBlocks(device.meter.unit, blocks, PROBE))
      const serialReg = meter.identity?.serial
      const serial = serialReg ? await readIdentity(bus, device.meter.unit, serialReg) : undefined
      out.meter = q
      if (serial) out.serial = serial
    } catch (err) {
      out.meterError = describeError(err)
    }
    if (relay && device.relay) {
      try {
        const r = relay.relay!
        const address = r.point === 'coil' ? (device.relay.coil ?? r.address) : (device.relay.register ?? r.address)
        if (address === undefined) throw new OutpostError('NO_RELAY', `relay model ${relay.name} needs relay.${r.point}`)
        if (r.point === 'coil') out.relay = { closed: (await bus.readBits(device.relay.unit, 1, address, 1, PROBE))[0]! }
        else {
          const v = (await bus.readRegisters(device.relay.unit, 3, address, 1, PROBE))[0]!
          if (v !== r.closedValue && v !== r.openValue)
            throw new OutpostError('RELAY_MISMATCH', `register ${address} holds ${v}, neither closed (${r.closedValue}) nor open (${r.openValue})`)
          out.relay = { closed: v === r.closedValue }
        }
      } catch (err) {
        out.relayError = describeError(err)
      }
    }
  })
  return out
}
