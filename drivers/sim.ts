/**
 * The site simulator: N SDM120-style meters (unit n) and a relay board (unit
 * 100, coil n-1) served over Modbus TCP (and optionally Modbus RTU on a serial
 * device), physically coupled: current flows only while the coil is closed and
 * a vehicle is attached and not full. Scripted vehicles (deterministic from a
 * seed) plug in, charge at a few to tens of amps, taper near full and unplug.
 *
 * Owns: the simulated physics, the script, its own Modbus server framing and the
 * control interface (control() here; JSON lines on stdin in `outpost sim`).
 * Never reads the wall clock for physics: simulated time advances by ticks of a
 * monotonic timer scaled by `speed`, or only by advance() when speed is 0.
 * Energy registers only grow.
 */
import { mulberry32 } from '../core/prng.js'
import net from 'node:net'
import { performance } from 'node:perf_hooks'
import type { SerialPort } from 'serialport'
import { crc16 } from './crc.js'
import { scanTcp } from './modbus.js'

export const RELAY_UNIT = 100
const METER_REGS = 0x200
const MAX_READ = 60

export interface SimOptions {
  outlets?: number
  /** TCP port; 0 picks a free one. Default 5020. */
  port?: number
  host?: string
  seed?: number
  /** Simulated seconds per real second; 0 freezes time (advance() only). Default 1. */
  speed?: number
  /** Run the vehicle script. Default true. */
  script?: boolean
  /** Also serve Modbus RTU on this serial device (e.g. one end of a socat pty pair). */
  rtuPath?: string
  rtuBaud?: number
  /** Artificial turnaround before every reply (benchmarks). */
  turnaroundMs?: number
  tickMs?: number
  /** Called as each coil write (fc 5 or 15) arrives, per coil written: outlet n (coil n-1) and the value (benchmarks time relay commands). */
  onCoilWrite?: (outlet: number, closed: boolean) => void
  /** Called as each request arrives, before it is answered (benchmarks time polls). */
  onRequest?: (unit: number, fc: number) => void
}

export interface VehicleSpec {
  /** Energy the vehicle still wants. */
  needWh: number
  maxA: number
  /** Fraction of needWh after which current tapers (default 0.8). */
  taperFrom?: number
}

export interface SimOutletState {
  outlet: number
  coilClosed: boolean
  vehicle: (VehicleSpec & { chargedWh: number; full: boolean }) | null
  voltageV: number
  currentA: number
  powerW: number
  energyWh: number
  fault: 'none' | 'silent'
}

export type SimCommand =
  | { cmd: 'plug'; outlet: number; needWh?: number; maxA?: number; taperFrom?: number }
  | { cmd: 'unplug'; outlet: number }
  | { cmd: 'fault'; unit: number; fault: 'none' | 'silent' }
  | { cmd: 'coil'; outlet: number; closed: boolean }
  | { cmd: 'advance'; ms: number }
  | { cmd: 'script'; on: boolean }
  | { cmd: 'state' }

export type SimReply = { ok: true; state?: SimOutletState[]; simMs?: number } | { ok: false; error: string }

export interface Sim {
  port: number
  readonly simMs: number
  outlets(): SimOutletState[]
  /** The vehicle at each outlet (index n-1), null where none is plugged in. */
  vehicles(): SimOutletState['vehicle'][]
  /** Plug a vehicle into outlet n (throws if there is one, or n is not an outlet). */
  plug(n: number, v?: Partial<VehicleSpec>): void
  unplug(n: number): void
  control(c: SimCommand): SimReply
  /** Advance simulated time by ms (integrated in steps of at most 1 s). */
  advance(ms: number): void
  /** Requests served, per unit. */
  readonly served: Map<number, number>
  close(): Promise<void>
}

/** Deterministic PRNG (mulberry32). */
export const prng = mulberry32

interface Outlet {
  n: number
  coil: boolean
  vehicle: (VehicleSpec & { chargedWh: number; full: boolean; leaveAtMs: number | null; fullSinceMs: number | null }) | null
  energyWh: number
  exportWh: number
  currentA: number
  voltageV: number
  fault: 'none' | 'silent'
  nextEventMs: number
  rand: () => number
}

const AMPS = [6, 8, 10, 13, 16, 20, 32]

export async function startSim(opts: SimOptions = {}): Promise<Sim> {
  const n = opts.outlets ?? 2
  if (!Number.isInteger(n) || n < 1 || n > 99) throw new Error(`outlets must be 1..99 (meters are units 1..n, the relay board is unit ${RELAY_UNIT})`)
  const speed = opts.speed ?? 1
  const seed = opts.seed ?? 1
  let script = opts.script ?? true
  let simMs = 0
  const relayFaults = { fault: 'none' as 'none' | 'silent' }
  const served = new Map<number, number>()
  const outlets: Outlet[] = []
  for (let i = 1; i <= n; i++) {
    const rand = prng(seed * 1000 + i)
    outlets.push({
      n: i,
      coil: false,
      vehicle: null,
      energyWh: Math.round(100_000 + rand() * 4_900_000) / 1,
      exportWh: 0,
      currentA: 0,
      voltageV: 230,
      fault: 'none',
      nextEventMs: Math.round(5_000 + rand() * 60_000),
      rand,
    })
  }

  const plug = (o: Outlet, v: VehicleSpec, leaveAtMs: number | null): void => {
    o.vehicle = { needWh: v.needWh, maxA: v.maxA, taperFrom: v.taperFrom ?? 0.8, chargedWh: 0, full: false, leaveAtMs, fullSinceMs: null }
  }

  const runScript = (o: Outlet): void => {
    if (!script || simMs < o.nextEventMs) return
    if (!o.vehicle) {
      const needWh = Math.round(2_000 + o.rand() * 18_000)
      const maxA = AMPS[Math.floor(o.rand() * AMPS.length)]!
      // One in four leaves before it is full (an unplug mid-charge).
      const leaveAtMs = o.rand() < 0.25 ? simMs + Math.round(300_000 + o.rand() * 3_000_000) : null
      plug(o, { needWh, maxA }, leaveAtMs)
      o.nextEventMs = Number.POSITIVE_INFINITY
    }
  }

  /**
   * `meterScale`: how much of the energy a step delivers the meters count. Faster than real time
   * the cars' batteries fill at simulated speed, but a meter read by a daemon on the real clock
   * counts only what the real time elapsed could carry (1/speed of it): a register that ran 120x
   * faster than physics is, rightly, a reading the daemon refuses to bill.
   */
  const step = (dtMs: number, meterScale = 1): void => {
    simMs += dtMs
    for (const o of outlets) {
      runScript(o)
      const v = o.vehicle
      if (v) {
        const leave =
          (v.leaveAtMs !== null && simMs >= v.leaveAtMs) || (v.fullSinceMs !== null && simMs - v.fullSinceMs >= 60_000 + ((o.n * 7919) % 120_000))
        if (script && leave) {
          o.vehicle = null
          o.nextEventMs = simMs + Math.round(20_000 + o.rand() * 100_000)
        }
      }
      const veh = o.vehicle
      let amps = 0
      if (o.coil && veh && !veh.full) {
        const frac = veh.chargedWh / veh.needWh
        const taperFrom = veh.taperFrom ?? 0.8
        amps = frac < taperFrom ? veh.maxA : (veh.maxA * (1 - frac)) / (1 - taperFrom)
        if (amps < 0.4) {
          // Below this the charger gives up: the battery is full.
          amps = 0
          veh.full = true
          veh.fullSinceMs = simMs
        }
      }
      // Mains: a slow deterministic wander around 230 V, sagging under load.
      o.voltageV = 230 + 2.5 * Math.sin(simMs / 97_000 + o.n) - 0.04 * amps
      o.currentA = amps
      const wh = (o.voltageV * amps * dtMs) / 3_600_000
      o.energyWh += wh * meterScale
      if (veh) veh.chargedWh += wh
    }
  }

  const advance = (ms: number, meterScale = 1): void => {
    let left = ms
    while (left > 0) {
      const dt = Math.min(left, 1000)
      step(dt, meterScale)
      left -= dt
    }
  }

  let last = performance.now()
  const tick =
    speed > 0
      ? setInterval(() => {
          const t = performance.now()
          advance((t - last) * speed, 1 / speed)
          last = t
        }, opts.tickMs ?? 100)
      : undefined
  tick?.unref()

  const state = (): SimOutletState[] =>
    outlets.map((o) => ({
      outlet: o.n,
      coilClosed: o.coil,
      vehicle: o.vehicle
        ? { needWh: o.vehicle.needWh, maxA: o.vehicle.maxA, taperFrom: o.vehicle.taperFrom, chargedWh: o.vehicle.chargedWh, full: o.vehicle.full }
        : null,
      voltageV: o.voltageV,
      currentA: o.currentA,
      powerW: o.voltageV * o.currentA,
      energyWh: o.energyWh,
      fault: o.fault,
    }))

  // ------------------------------------------------------------- Modbus side

  const f32words = (words: number[], addr: number, v: number): void => {
    const b = Buffer.alloc(4)
    b.writeFloatBE(v, 0)
    words[addr] = b.readUInt16BE(0)
    words[addr + 1] = b.readUInt16BE(2)
  }

  const meterWords = (o: Outlet): number[] => {
    const w = new Array<number>(METER_REGS).fill(0)
    const p = o.voltageV * o.currentA
    const kwh = o.energyWh / 1000
    f32words(w, 0x00, o.voltageV)
    f32words(w, 0x06, o.currentA)
    f32words(w, 0x0c, p)
    f32words(w, 0x12, p)
    f32words(w, 0x18, 0)
    f32words(w, 0x1e, 1)
    f32words(w, 0x46, 50)
    f32words(w, 0x48, kwh)
    f32words(w, 0x4a, o.exportWh / 1000)
    f32words(w, 0x156, kwh + o.exportWh / 1000)
    return w
  }

  const exception = (fc: number, code: number): Buffer => Buffer.from([fc | 0x80, code])

  /** One request PDU to one unit; null = no answer at all. */
  const handle = (unit: number, pdu: Buffer, tcp: boolean): Buffer | null => {
    const fc = pdu[0]!
    served.set(unit, (served.get(unit) ?? 0) + 1)
    opts.onRequest?.(unit, fc)
    if (unit >= 1 && unit <= n) {
      const o = outlets[unit - 1]!
      if (o.fault === 'silent') return null
      if (fc !== 3 && fc !== 4) return exception(fc, 1)
      if (pdu.length !== 5) return exception(fc, 3)
      const addr = pdu.readUInt16BE(1)
      const count = pdu.readUInt16BE(3)
      if (count < 1 || count > MAX_READ) return exception(fc, 3)
      if (addr + count > METER_REGS) return exception(fc, 2)
      const words = fc === 4 ? meterWords(o) : new Array<number>(METER_REGS).fill(0)
      const out = Buffer.alloc(2 + 2 * count)
      out[0] = fc
      out[1] = 2 * count
      for (let i = 0; i < count; i++) out.writeUInt16BE(words[addr + i]!, 2 + 2 * i)
      return out
    }
    if (unit === RELAY_UNIT) {
      if (relayFaults.fault === 'silent') return null
      if (fc === 1 || fc === 2) {
        if (pdu.length !== 5) return exception(fc, 3)
        const addr = pdu.readUInt16BE(1)
        const count = pdu.readUInt16BE(3)
        if (count < 1 || count > 2000) return exception(fc, 3)
        if (addr + count > n) return exception(fc, 2)
        const out = Buffer.alloc(2 + Math.ceil(count / 8))
        out[0] = fc
        out[1] = Math.ceil(count / 8)
        for (let i = 0; i < count; i++) if (outlets[addr + i]!.coil) out[2 + (i >> 3)]! |= 1 << (i & 7)
        return out
      }
      if (fc === 5) {
        if (pdu.length !== 5) return exception(fc, 3)
        const addr = pdu.readUInt16BE(1)
        const v = pdu.readUInt16BE(3)
        if (v !== 0xff00 && v !== 0) return exception(fc, 3)
        if (addr >= n) return exception(fc, 2)
        outlets[addr]!.coil = v === 0xff00
        opts.onCoilWrite?.(addr + 1, v === 0xff00)
        return Buffer.from(pdu)
      }
      if (fc === 15) {
        const addr = pdu.readUInt16BE(1)
        const count = pdu.readUInt16BE(3)
        if (pdu.length < 6 || pdu[5] !== Math.ceil(count / 8) || pdu.length !== 6 + pdu[5]!) return exception(fc, 3)
        if (addr + count > n) return exception(fc, 2)
        for (let i = 0; i < count; i++) {
          outlets[addr + i]!.coil = ((pdu[6 + (i >> 3)]! >> (i & 7)) & 1) === 1
          opts.onCoilWrite?.(addr + i + 1, outlets[addr + i]!.coil)
        }
        return pdu.subarray(0, 5)
      }
      return exception(fc, 1)
    }
    // Nobody there: a TCP gateway says so (exception 11), an RTU line stays silent.
    return tcp ? exception(fc, 11) : null
  }

  const reply = (send: () => void): void => {
    if (opts.turnaroundMs) setTimeout(send, opts.turnaroundMs)
    else send()
  }

  const sockets = new Set<net.Socket>()
  const server = net.createServer((sock) => {
    sockets.add(sock)
    sock.setNoDelay(true)
    let buf = Buffer.alloc(0)
    sock.on('error', () => {})
    sock.on('close', () => sockets.delete(sock))
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk])
      for (;;) {
        const s = scanTcp(buf)
        if (s.kind === 'incomplete') return
        if (s.kind === 'garbage') {
          sock.destroy()
          return
        }
        buf = Buffer.from(s.rest)
        const tid = s.tid
        const res = handle(s.unit, s.pdu, true)
        if (!res) continue
        const frame = Buffer.alloc(7 + res.length)
        frame.writeUInt16BE(tid, 0)
        frame.writeUInt16BE(0, 2)
        frame.writeUInt16BE(res.length + 1, 4)
        frame[6] = s.unit
        res.copy(frame, 7)
        reply(() => {
          if (!sock.destroyed) sock.write(frame)
        })
      }
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts.port ?? 5020, opts.host ?? '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })
  const port = (server.address() as net.AddressInfo).port

  let rtu: SerialPort | undefined
  if (opts.rtuPath) {
    const { SerialPort } = await import('serialport')
    const p = new SerialPort({ path: opts.rtuPath, baudRate: opts.rtuBaud ?? 9600, autoOpen: false })
    await new Promise<void>((resolve, reject) => p.open((err) => (err ? reject(err) : resolve())))
    rtu = p
    let buf = Buffer.alloc(0)
    p.on('error', () => {})
    p.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk])
      while (buf.length >= 8) {
        const fc = buf[1]!
        const len = fc === 15 || fc === 16 ? 9 + buf[6]! : 8
        if (buf.length < len) return
        if (crc16(buf, 0, len - 2) !== buf.readUInt16LE(len - 2)) {
          // Not a frame boundary: slide by one byte (what a real device does after noise).
          buf = buf.subarray(1)
          continue
        }
        const unit = buf[0]!
        const res = handle(unit, Buffer.from(buf.subarray(1, len - 2)), false)
        buf = buf.subarray(len)
        if (!res) continue
        const frame = Buffer.alloc(res.length + 3)
        frame[0] = unit
        res.copy(frame, 1)
        frame.writeUInt16LE(crc16(frame, 0, frame.length - 2), frame.length - 2)
        reply(() => p.write(frame))
      }
    })
  }

  const control = (c: SimCommand): SimReply => {
    const outlet = (k: unknown): Outlet | undefined => (typeof k === 'number' ? outlets[k - 1] : undefined)
    switch (c?.cmd) {
      case 'plug': {
        const o = outlet(c.outlet)
        if (!o) return { ok: false, error: `no outlet ${String(c.outlet)} (1..${n})` }
        if (o.vehicle) return { ok: false, error: `outlet ${o.n} already has a vehicle` }
        const needWh = c.needWh ?? 10_000
        const maxA = c.maxA ?? 16
        if (!(needWh > 0) || !(maxA > 0 && maxA <= 80)) return { ok: false, error: 'needWh must be > 0 and maxA in (0, 80]' }
        plug(o, { needWh, maxA, taperFrom: c.taperFrom }, null)
        o.nextEventMs = Number.POSITIVE_INFINITY
        return { ok: true, state: state() }
      }
      case 'unplug': {
        const o = outlet(c.outlet)
        if (!o) return { ok: false, error: `no outlet ${String(c.outlet)} (1..${n})` }
        o.vehicle = null
        o.currentA = 0
        o.nextEventMs = simMs + Math.round(20_000 + o.rand() * 100_000)
        return { ok: true, state: state() }
      }
      case 'coil': {
        const o = outlet(c.outlet)
        if (!o) return { ok: false, error: `no outlet ${String(c.outlet)} (1..${n})` }
        o.coil = c.closed === true
        return { ok: true, state: state() }
      }
      case 'fault': {
        if (c.fault !== 'none' && c.fault !== 'silent') return { ok: false, error: 'fault must be "none" or "silent"' }
        if (c.unit === RELAY_UNIT) relayFaults.fault = c.fault
        else {
          const o = outlet(c.unit)
          if (!o) return { ok: false, error: `no unit ${String(c.unit)}` }
          o.fault = c.fault
        }
        return { ok: true }
      }
      case 'advance':
        if (!(typeof c.ms === 'number' && c.ms >= 0 && c.ms <= 7 * 86_400_000)) return { ok: false, error: 'ms must be 0..604800000' }
        advance(c.ms)
        return { ok: true, simMs, state: state() }
      case 'script':
        script = c.on === true
        return { ok: true }
      case 'state':
        return { ok: true, simMs, state: state() }
      default:
        return {
          ok: false,
          error: `unknown command ${JSON.stringify((c as { cmd?: unknown })?.cmd)} (plug, unplug, coil, fault, advance, script, state)`,
        }
    }
  }

  return {
    port,
    get simMs() {
      return simMs
    },
    outlets: state,
    vehicles: () => state().map((o) => o.vehicle),
    plug(k, v = {}) {
      const r = control({ cmd: 'plug', outlet: k, ...v })
      if (!r.ok) throw new Error(r.error)
    },
    unplug(k) {
      const r = control({ cmd: 'unplug', outlet: k })
      if (!r.ok) throw new Error(r.error)
    },
    control,
    advance,
    served,
    async close() {
      if (tick) clearInterval(tick)
      for (const s of sockets) s.destroy()
      await new Promise<void>((r) => server.close(() => r()))
      if (rtu?.isOpen) await new Promise<void>((r) => rtu!.close(() => r()))
    },
  }
}
