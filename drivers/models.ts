/**
 * Device models: register maps as data (drivers/models/*.json, plus an
 * installer's models.dir), validated by drivers/models/model.schema.json.
 *
 * Owns: loading and validating model files, planning block reads (adjacent
 * registers in one request, never over the device's limit) and decoding raw
 * registers into quantities. Never does I/O on a bus.
 */
import { readdirSync, readFileSync, existsSync } from 'node:fs'
import { join, basename } from 'node:path'
import type { ValidateFunction } from 'ajv/dist/2020.js'
import { loadValidators, type ValidatorSpec } from '../core/validators.js'
import { OutpostError } from './errors.js'
import { packagePath } from '../core/paths.js'
import type { BusConfig, NetDeviceConfig, Reading } from '../core/types.js'

export type RegisterType = 'int16' | 'uint16' | 'int32' | 'uint32' | 'float32' | 'int64' | 'uint64' | 'float64'

export interface RegisterDef {
  quantity: string
  function: 3 | 4
  address: number
  type: RegisterType
  wordOrder?: 'big' | 'little'
  byteOrder?: 'big' | 'little'
  scale?: number
  /** The key in the model's `sources` this register is taken from. */
  source?: string
  /** Raw values (hex, after word and byte order) that mean "not available": a bad reading, never a number. */
  notAvailable?: string[]
}

/** A register that says what the device is (model code or text, serial number). */
export interface IdentityRegister {
  function: 3 | 4
  address: number
  type: 'ascii' | 'uint16' | 'uint32' | 'int32'
  /** ascii: registers the text spans. */
  words?: number
  wordOrder?: 'big' | 'little'
  source?: string
}

export interface DeviceIdentity {
  model?: IdentityRegister & { values: Record<string, string>; otherValues: 'reject' | 'ranges' }
  serial?: IdentityRegister
}

export interface DeviceModel {
  name: string
  description?: string
  /** Where the register map comes from: key → citation. */
  sources?: Record<string, string>
  /** The maker's name (a meter's OCMF MV). */
  manufacturer?: string
  kinds: ('meter' | 'relay')[]
  /** Meters: the phases the meter measures (the engine's bound on an energy step scales with it). */
  phases?: 1 | 3
  transport: 'modbus' | 'serial' | NetTransport
  serialDefaults?: { baudRate?: number; parity?: 'none' | 'even' | 'odd'; dataBits?: 7 | 8; stopBits?: 1 | 2 }
  maxRegistersPerRead: number
  maxGap: number
  registers?: RegisterDef[]
  combine?: Record<string, 'sum' | 'max' | 'mean' | 'first'>
  identify?: { quantity: string; min?: number; max?: number }[]
  identity?: DeviceIdentity
  relay?: { point: 'coil' | 'register' | 'line' | 'device'; address?: number; closedValue: number; openValue: number }
  /** Network devices: the calls a reading makes and how the switch is set (drivers/netdev.ts). */
  device?: NetDeviceSpec
  /** Where it was loaded from. */
  file: string
}

export type NetTransport = 'shelly-rpc' | 'tasmota-http'
export const NET_TRANSPORTS: readonly string[] = ['shelly-rpc', 'tasmota-http'] satisfies NetTransport[]

/** The model transport each kind of bus speaks: a meter or relay model must speak its bus's. */
export const BUS_TRANSPORT: Record<BusConfig['type'], DeviceModel['transport']> = {
  'modbus-rtu': 'modbus',
  'modbus-tcp': 'modbus',
  serial: 'serial',
  shelly: 'shelly-rpc',
  tasmota: 'tasmota-http',
}

/** A bus that is one network device (Shelly, Tasmota), its outlets on the device's channels. */
export function isNetBusType(type: string): type is NetDeviceConfig['type'] {
  return type === 'shelly' || type === 'tasmota'
}

/** The channel an outlet uses on a network device when it names none: Shelly's components count from 0, Tasmota's relays from 1. */
export function defaultChannel(type: NetDeviceConfig['type']): number {
  return type === 'tasmota' ? 1 : 0
}

/** Where one quantity is in a network device's JSON reply. */
export interface NetValue {
  path: string
  /** Subtracted when present (Shelly's ret_aenergy). */
  minus?: string
  scale?: number
}

export interface NetDeviceSpec {
  read: { method?: string; component?: string; command?: string; values: Record<string, NetValue> }[]
  switch?: { set?: string; get: string; on?: string; off?: string; autoOff?: string; path: string[]; closedValue: string | boolean }
}

export const REQUIRED_METER_QUANTITIES = ['voltageV', 'currentA', 'powerW', 'energyWh'] as const

/**
 * The reading of outlet `outlet` from its meter's quantities. A required quantity that is not a
 * finite number makes the whole reading a failed read (the engine counts it as silence);
 * `unavailable` names the registers a device refused, for the message.
 */
export function toReading(outlet: string, q: Record<string, number>, ts: number, unavailable: string[] = []): Reading {
  for (const k of REQUIRED_METER_QUANTITIES) {
    const v = q[k]
    if (typeof v !== 'number' || !Number.isFinite(v))
      throw new OutpostError('READING_INVALID', `outlet ${outlet}: ${k} is ${String(v)}${unavailableWhy(unavailable)}`)
  }
  return { ts, currentA: q.currentA!, powerW: q.powerW!, energyWh: q.energyWh!, voltageV: q.voltageV! }
}

/** What a failed read's message adds for the registers a device refused. */
export function unavailableWhy(unavailable: string[]): string {
  return unavailable.length ? ` (${unavailable.join('; ')})` : ''
}

export const BUILTIN_MODELS_DIR = packagePath('drivers', 'models')

/** The model file validator (built by `npm run build`, core/validators.ts). */
const modelSchemaText = readFileSync(join(BUILTIN_MODELS_DIR, 'model.schema.json'), 'utf8')
export const MODEL_VALIDATOR: ValidatorSpec = {
  name: 'model',
  texts: [modelSchemaText],
  draft: '2020-12',
  options: { allErrors: true, useDefaults: true, strict: true },
  add: (ajv) => {
    ajv.addSchema(JSON.parse(modelSchemaText) as Record<string, unknown>, 'model')
    return ['model']
  },
}

let validator: ValidateFunction | undefined
/** Loaded once per process: every model file of every registry goes through it. */
function compiled(): ValidateFunction {
  validator ??= loadValidators(MODEL_VALIDATOR).model!
  return validator
}

const WORDS: Record<RegisterType, number> = { int16: 1, uint16: 1, int32: 2, uint32: 2, float32: 2, int64: 4, uint64: 4, float64: 4 }

/** How each register type reads from its big-endian bytes (word and byte order already applied). */
const READ: Record<RegisterType, (b: Buffer) => number> = {
  int16: (b) => b.readInt16BE(0),
  uint16: (b) => b.readUInt16BE(0),
  int32: (b) => b.readInt32BE(0),
  uint32: (b) => b.readUInt32BE(0),
  float32: (b) => float32Decimal(b.readFloatBE(0)),
  int64: (b) => Number(b.readBigInt64BE(0)),
  uint64: (b) => Number(b.readBigUInt64BE(0)),
  float64: (b) => b.readDoubleBE(0),
}

export function registerWords(t: RegisterType): number {
  return WORDS[t]
}

/** Validate one parsed model; returns it with defaults applied, or throws MODEL_INVALID naming file and pointer. */
export function validateModel(input: unknown, file: string): DeviceModel {
  const copy = structuredClone(input) as Record<string, unknown>
  const v = compiled()
  const problems: string[] = []
  if (!v(copy)) for (const e of v.errors ?? []) problems.push(`${e.instancePath || '/'}: ${e.message ?? 'invalid'}`)
  else {
    const m = copy as unknown as DeviceModel
    const expected = basename(file).replace(/\.json$/, '')
    if (m.name !== expected) problems.push(`/name: "${m.name}" must equal the file name "${expected}"`)
    if (m.kinds.includes('meter') && m.transport === 'modbus') {
      const have = new Set((m.registers ?? []).map((r) => r.quantity))
      for (const q of REQUIRED_METER_QUANTITIES) if (!have.has(q)) problems.push(`/registers: a meter needs a register for ${q}`)
      ;(m.registers ?? []).forEach((r, i) => {
        if (r.address + WORDS[r.type] > 0x10000) problems.push(`/registers/${i}/address: ${r.type} at ${r.address} runs past 65535`)
        if (WORDS[r.type] > m.maxRegistersPerRead) problems.push(`/registers/${i}/type: wider than maxRegistersPerRead`)
        for (const v of r.notAvailable ?? [])
          if (v.length !== 2 + 4 * WORDS[r.type]) problems.push(`/registers/${i}/notAvailable: ${v} is not ${WORDS[r.type]} register(s) of ${r.type}`)
      })
    }
    for (const k of ['model', 'serial'] as const) {
      const reg = m.identity?.[k]
      if (!reg) continue
      const n = identityWords(reg)
      if (reg.type === 'ascii' && reg.words === undefined) problems.push(`/identity/${k}/words: ascii needs "words"`)
      if (reg.type !== 'ascii' && reg.words !== undefined) problems.push(`/identity/${k}/words: only for ascii (${reg.type} is ${n} register(s))`)
      if (reg.address + n > 0x10000) problems.push(`/identity/${k}/address: runs past 65535`)
      if (n > m.maxRegistersPerRead) problems.push(`/identity/${k}/words: wider than maxRegistersPerRead`)
    }
    const cited = (where: string, key: string | undefined): void => {
      if (key !== undefined && !Object.hasOwn(m.sources ?? {}, key)) problems.push(`${where}/source: "${key}" is not a key of "sources"`)
    }
    for (const [i, r] of (m.registers ?? []).entries()) cited(`/registers/${i}`, r.source)
    cited('/identity/model', m.identity?.model?.source)
    cited('/identity/serial', m.identity?.serial?.source)
    if (m.kinds.includes('relay') && !m.relay) problems.push('/relay: a relay model needs a "relay" section')
    problems.push(...netModelProblems(m))
    if (m.relay?.point === 'line' && m.transport !== 'serial') problems.push('/relay/point: "line" needs transport "serial"')
    if (m.relay && (m.relay.point === 'coil' || m.relay.point === 'register') && m.transport !== 'modbus')
      problems.push(`/relay/point: "${m.relay.point}" needs transport "modbus"`)
  }
  if (problems.length) throw new OutpostError('MODEL_INVALID', `model file ${file}: ${problems.join('; ')}`)
  return { ...(copy as unknown as DeviceModel), file }
}

/** A network model: calls of its own transport's kind, every meter quantity somewhere, a switch for a relay. */
function netModelProblems(m: DeviceModel): string[] {
  const net = NET_TRANSPORTS.includes(m.transport)
  const out: string[] = []
  if (!net) {
    if (m.device) out.push(`/device: only for transports ${NET_TRANSPORTS.join(', ')}`)
    if (m.relay?.point === 'device') out.push(`/relay/point: "device" needs a network transport (${NET_TRANSPORTS.join(', ')})`)
    return out
  }
  if (!m.device) return ['/device: a network model needs a "device" section']
  if (m.relay && m.relay.point !== 'device') out.push(`/relay/point: a network device's relay is "device"`)
  const shelly = m.transport === 'shelly-rpc'
  m.device.read.forEach((r, i) => {
    if (shelly && r.method === undefined) out.push(`/device/read/${i}/method: is required for shelly-rpc`)
    if (!shelly && r.command === undefined) out.push(`/device/read/${i}/command: is required for tasmota-http`)
    if (shelly ? r.command !== undefined : r.method !== undefined || r.component !== undefined)
      out.push(`/device/read/${i}: ${shelly ? 'command' : 'method and component'} belong to the other transport`)
  })
  if (m.kinds.includes('meter')) {
    const have = new Set(m.device.read.flatMap((r) => Object.keys(r.values)))
    for (const q of REQUIRED_METER_QUANTITIES) if (!have.has(q)) out.push(`/device/read: a meter needs a value for ${q}`)
  }
  const sw = m.device.switch
  if (m.kinds.includes('relay')) {
    if (!sw) out.push('/device/switch: a relay model needs a switch')
    else if (shelly && sw.set === undefined) out.push('/device/switch/set: is required for shelly-rpc')
    else if (!shelly && (sw.on === undefined || sw.off === undefined)) out.push('/device/switch: on and off are required for tasmota-http')
  }
  return out
}

export function loadModelFile(file: string): DeviceModel {
  let parsed: unknown
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'))
  } catch (err) {
    throw new OutpostError('MODEL_INVALID', `model file ${file}: ${(err as Error).message}`, { cause: err })
  }
  return validateModel(parsed, file)
}

/**
 * The built-in models, read and validated once per process: they ship with the code and do not
 * change under it, while every config check builds a registry (a simulation validates
 * thousands of configs). Frozen, since every registry shares them.
 */
let builtins: DeviceModel[] | undefined
function builtinModels(): DeviceModel[] {
  builtins ??= listJson(BUILTIN_MODELS_DIR).map((f) => deepFreeze(loadModelFile(f)))
  return builtins
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}

export class ModelRegistry {
  private readonly models = new Map<string, DeviceModel>()

  /** Built-in models, then an installer's directory (read at each registry: it may change; its files may not shadow a built-in). */
  constructor(extraDir?: string) {
    for (const m of builtinModels()) this.models.set(m.name, m)
    if (extraDir !== undefined) {
      if (!existsSync(extraDir)) throw new OutpostError('MODEL_INVALID', `models.dir ${extraDir} does not exist`)
      for (const f of listJson(extraDir)) {
        const m = loadModelFile(f)
        const prev = this.models.get(m.name)
        if (prev) throw new OutpostError('MODEL_INVALID', `model file ${f}: "${m.name}" is already defined by ${prev.file}`)
        this.models.set(m.name, m)
      }
    }
  }

  get(name: string, kind?: 'meter' | 'relay'): DeviceModel {
    const m = this.models.get(name)
    if (!m) throw new OutpostError('MODEL_UNKNOWN', `unknown device model "${name}" (known: ${[...this.models.keys()].join(', ')})`)
    if (kind && !m.kinds.includes(kind)) throw new OutpostError('MODEL_UNKNOWN', `model "${name}" cannot be used as a ${kind}`)
    return m
  }

  /** The model, if it exists and can serve as `kind`; for checks that report their own problem. */
  find(name: string, kind?: 'meter' | 'relay'): DeviceModel | undefined {
    const m = this.models.get(name)
    return m && (!kind || m.kinds.includes(kind)) ? m : undefined
  }

  names(kind?: 'meter' | 'relay'): string[] {
    return [...this.models.values()]
      .filter((m) => !kind || m.kinds.includes(kind))
      .map((m) => m.name)
      .sort()
  }

  all(): DeviceModel[] {
    return [...this.models.values()]
  }
}

function listJson(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json') && f !== 'model.schema.json')
    .sort()
    .map((f) => join(dir, f))
}

// ---------------------------------------------------------------- block reads

export interface Block {
  fc: 3 | 4
  address: number
  count: number
}

/**
 * Group the registers into as few reads as possible: ranges of one function code
 * are merged when the hole between them is at most `maxGap` registers and the
 * whole stays within `maxCount`.
 */
export function planBlocks(regs: { function: 3 | 4; address: number; words: number }[], maxCount: number, maxGap: number): Block[] {
  const out: Block[] = []
  for (const fc of [3, 4] as const) {
    const ranges = regs
      .filter((r) => r.function === fc)
      .map((r) => [r.address, r.address + r.words] as const)
      .sort((a, b) => a[0] - b[0] || a[1] - b[1])
    let cur: [number, number] | undefined
    for (const [s, e] of ranges) {
      if (cur && s <= cur[1] + maxGap && Math.max(e, cur[1]) - cur[0] <= maxCount) {
        cur[1] = Math.max(cur[1], e)
      } else {
        if (cur) out.push({ fc, address: cur[0], count: cur[1] - cur[0] })
        cur = [s, e]
      }
    }
    if (cur) out.push({ fc, address: cur[0], count: cur[1] - cur[0] })
  }
  return out
}

export function meterBlocks(model: DeviceModel): Block[] {
  return planBlocks(
    (model.registers ?? []).map((r) => ({ function: r.function, address: r.address, words: WORDS[r.type] })),
    model.maxRegistersPerRead,
    model.maxGap,
  )
}

/** The shortest decimal that is the same float32: 229.8 rather than 229.8000030517578. */
export function float32Decimal(x: number): number {
  if (!Number.isFinite(x)) return x
  for (let p = 1; p <= 9; p++) {
    const v = Number(x.toPrecision(p))
    if (Math.fround(v) === x) return v
  }
  return x
}

export function decodeRegister(def: RegisterDef, words: number[]): number {
  const n = WORDS[def.type]
  let ws = words.slice(0, n)
  if (ws.length < n) throw new OutpostError('MODEL_DECODE', `${def.quantity}: ${ws.length} registers, need ${n}`)
  if ((def.wordOrder ?? 'big') === 'little') ws = ws.reverse()
  const b = Buffer.alloc(2 * n)
  ws.forEach((w, i) => {
    if ((def.byteOrder ?? 'big') === 'little') b.writeUInt16LE(w, 2 * i)
    else b.writeUInt16BE(w, 2 * i)
  })
  // A sentinel is compared as the maker's manual writes it: the value's hex, after word and byte order.
  if (def.notAvailable?.includes(`0x${b.toString('hex').toUpperCase()}`)) return Number.NaN
  const raw = READ[def.type](b)
  // A 64-bit count beyond 2^53 cannot be held exactly: not a number to bill from.
  if (!Number.isSafeInteger(raw) && (def.type === 'int64' || def.type === 'uint64')) return Number.NaN
  const scale = def.scale ?? 1
  // Round away binary noise from the scaling (1.234 kWh × 1000 is 1234 Wh, not 1233.9999999).
  return scale === 1 ? raw : Number((raw * scale).toPrecision(12))
}

/**
 * Decode every register of a meter model from the words of its blocks; quantities combined per the model.
 * A register holding a "not available" value decodes to NaN (so does any quantity it is combined into),
 * and `unavailable`, when given, collects which register said so.
 */
export function decodeMeter(model: DeviceModel, blocks: Block[], data: number[][], unavailable?: string[]): Record<string, number> {
  const values = new Map<string, number[]>()
  for (const def of model.registers ?? []) {
    const bi = blocks.findIndex((b) => b.fc === def.function && def.address >= b.address && def.address + WORDS[def.type] <= b.address + b.count)
    if (bi < 0) throw new OutpostError('MODEL_DECODE', `${model.name}: register ${def.address} is in no block (bug)`)
    const v = decodeRegister(def, data[bi]!.slice(def.address - blocks[bi]!.address))
    if (Number.isNaN(v) && def.notAvailable) unavailable?.push(`${def.quantity} (FC${def.function} @0x${hex4(def.address)}) is "not available"`)
    const list = values.get(def.quantity) ?? []
    list.push(v)
    values.set(def.quantity, list)
  }
  const out: Record<string, number> = {}
  for (const [q, list] of values) {
    const how = model.combine?.[q] ?? 'first'
    out[q] =
      how === 'sum'
        ? list.reduce((a, b) => a + b, 0)
        : how === 'max'
          ? Math.max(...list)
          : how === 'mean'
            ? Number((list.reduce((a, b) => a + b, 0) / list.length).toPrecision(12))
            : list[0]!
  }
  return out
}

function hex4(n: number): string {
  return n.toString(16).toUpperCase().padStart(4, '0')
}

// ---------------------------------------------------------------- identity

export function identityWords(reg: IdentityRegister): number {
  return reg.type === 'ascii' ? (reg.words ?? 1) : reg.type === 'uint16' ? 1 : 2
}

/** An identity register as text: ascii trimmed of NULs and spaces, integers in decimal. */
export function decodeIdentity(reg: IdentityRegister, words: number[]): string {
  const n = identityWords(reg)
  if (words.length < n) throw new OutpostError('MODEL_DECODE', `identity register @${reg.address}: ${words.length} registers, need ${n}`)
  let ws = words.slice(0, n)
  if (reg.type !== 'ascii' && (reg.wordOrder ?? 'big') === 'little') ws = ws.reverse()
  const b = Buffer.alloc(2 * n)
  for (const [i, w] of ws.entries()) b.writeUInt16BE(w, 2 * i)
  // NULs are dropped wherever they are: some makers put one character in the low byte of each register.
  if (reg.type === 'ascii') return b.toString('latin1').replaceAll('\0', '').trim()
  if (reg.type === 'uint16') return String(b.readUInt16BE(0))
  return String(reg.type === 'int32' ? b.readInt32BE(0) : b.readUInt32BE(0))
}

/** The variant a model register names, or undefined when the value is not one this model lists. */
export function identityVariant(model: DeviceModel, value: string): string | undefined {
  const values = model.identity?.model?.values ?? {}
  return Object.hasOwn(values, value) ? values[value] : undefined
}
