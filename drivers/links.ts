/**
 * Links: one request/response exchange at a time over a byte stream, for Modbus
 * RTU, Modbus TCP and Outpost's serial line protocol.
 *
 * Owns: the receive buffer of the current exchange, its timer, recognising the
 * reply (or its failure: timeout, CRC, garbage, exception) and counting stray
 * bytes. Never queues (the bus scheduler calls transact() strictly one at a
 * time), never retries, never reopens.
 */
import { OutpostError } from './errors.js'
import type { ByteStream } from './transport.js'
import { checkResponsePdu, encodeRtu, encodeTcp, scanRtu, scanTcp, validateRequest, type ModbusRequest, type ModbusResponse } from './modbus.js'
import { encodeLine, parseLine, type LineReply, type LineRequest } from './line-protocol.js'

export interface LinkCounters {
  /** Bytes that arrived while no exchange was waiting (late replies, noise). */
  strayBytes: number
  /** Bytes skipped in front of a valid reply, or received without forming one. */
  garbageBytes: number
}

export interface Link<Req, Res> {
  readonly stream: ByteStream
  readonly counters: LinkCounters
  /** One exchange. `timeoutMs` counts from the moment the request has been handed to the port. */
  transact(req: Req, timeoutMs: number): Promise<Res>
  /** Fail the exchange in flight (the port was lost). */
  abort(err: OutpostError): void
  /** After a failed exchange: wait out the line, then drop whatever is buffered so a late reply can't be taken for the next one. */
  settle(quietMs: number): Promise<void>
  /** The device (unit id) a request addresses: the scheduler's per-device counters and errors are keyed by it. */
  deviceOf(req: Req): number
}

interface Pending<Req, Res> {
  req: Req
  resolve: (r: Res) => void
  reject: (e: unknown) => void
  timer?: NodeJS.Timeout
  done: boolean
}

abstract class BaseLink<Req, Res> implements Link<Req, Res> {
  readonly counters: LinkCounters = { strayBytes: 0, garbageBytes: 0 }
  protected pending: Pending<Req, Res> | undefined
  protected buf: Buffer = Buffer.alloc(0)

  constructor(readonly stream: ByteStream) {
    stream.onData = (chunk) => this.receive(chunk)
  }

  abstract deviceOf(req: Req): number
  protected abstract encode(req: Req): Buffer
  protected abstract examine(): void
  protected abstract timeoutError(req: Req, timeoutMs: number): OutpostError

  transact(req: Req, timeoutMs: number): Promise<Res> {
    if (this.pending && !this.pending.done) return Promise.reject(new OutpostError('BUS_BUSY', 'an exchange is already in flight (scheduler bug)'))
    const frame = this.encode(req)
    this.buf = Buffer.alloc(0)
    return new Promise<Res>((resolve, reject) => {
      const p: Pending<Req, Res> = { req, resolve, reject, done: false }
      this.pending = p
      this.stream.write(frame).then(
        () => {
          if (p.done) return
          p.timer = setTimeout(() => this.finish(p, this.timeoutError(req, timeoutMs)), timeoutMs)
        },
        (err: unknown) => this.finish(p, err),
      )
    })
  }

  abort(err: OutpostError): void {
    if (this.pending && !this.pending.done) this.finish(this.pending, err)
  }

  async settle(quietMs: number): Promise<void> {
    await new Promise((r) => setTimeout(r, quietMs))
    await this.stream.flushInput()
    this.buf = Buffer.alloc(0)
  }

  protected finish(p: Pending<Req, Res>, outcome: unknown, value?: Res): void {
    if (p.done) return
    p.done = true
    if (p.timer) clearTimeout(p.timer)
    if (this.pending === p) this.pending = undefined
    if (outcome === null) p.resolve(value as Res)
    else p.reject(outcome)
  }

  private receive(chunk: Buffer): void {
    if (!this.pending || this.pending.done) {
      this.counters.strayBytes += chunk.length
      return
    }
    this.buf = this.buf.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.buf, chunk])
    try {
      this.examine()
    } catch (err) {
      if (this.pending) this.finish(this.pending, err)
    }
  }
}

/** Modbus RTU: unit + PDU + CRC; the reply is recognised by unit, function and CRC. */
export class RtuLink extends BaseLink<ModbusRequest, ModbusResponse> {
  deviceOf(req: ModbusRequest): number {
    return req.unit
  }

  protected encode(req: ModbusRequest): Buffer {
    validateRequest(req)
    return encodeRtu(req)
  }

  protected examine(): void {
    const p = this.pending!
    const s = scanRtu(this.buf, p.req)
    if (s.kind === 'incomplete') {
      // A reply is at most 256 bytes; more without a frame is noise.
      if (this.buf.length > 512) throw new OutpostError('MODBUS_GARBAGE', `unit ${p.req.unit}: ${this.buf.length} bytes without a valid frame`)
      return
    }
    if (s.kind === 'crc') {
      this.counters.garbageBytes += this.buf.length
      throw new OutpostError('MODBUS_CRC', `unit ${p.req.unit}: reply failed its CRC check`)
    }
    this.counters.garbageBytes += s.skipped
    this.finish(p, null, checkResponsePdu(p.req, p.req.unit, s.pdu))
  }

  protected timeoutError(req: ModbusRequest, timeoutMs: number): OutpostError {
    if (this.buf.length === 0)
      return new OutpostError('MODBUS_TIMEOUT', `unit ${req.unit} did not answer FC${req.fc} @${req.address} within ${Math.round(timeoutMs)} ms`)
    this.counters.garbageBytes += this.buf.length
    // A lone complete frame with a bad CRC is reported as such, anything else as garbage.
    return new OutpostError(
      'MODBUS_GARBAGE',
      `unit ${req.unit}: ${this.buf.length} bytes within ${Math.round(timeoutMs)} ms ` +
        `but no valid reply (${this.buf.subarray(0, 16).toString('hex')}${this.buf.length > 16 ? '…' : ''})`,
    )
  }
}

/** Modbus TCP: MBAP header with a transaction id, so a late reply is recognised and dropped. */
export class TcpLink extends BaseLink<ModbusRequest, ModbusResponse> {
  private tid = 0

  deviceOf(req: ModbusRequest): number {
    return req.unit
  }

  protected encode(req: ModbusRequest): Buffer {
    validateRequest(req)
    this.tid = (this.tid + 1) & 0xffff
    return encodeTcp(req, this.tid)
  }

  protected examine(): void {
    const p = this.pending!
    for (;;) {
      const s = scanTcp(this.buf)
      if (s.kind === 'incomplete') return
      if (s.kind === 'garbage') {
        this.counters.garbageBytes += this.buf.length
        this.buf = Buffer.alloc(0)
        const err = new OutpostError('MODBUS_GARBAGE', `unit ${p.req.unit}: not a Modbus TCP frame`)
        this.finish(p, err)
        // A TCP stream has no frame boundaries to resynchronise on: reconnect.
        this.stream.reset?.()
        return
      }
      this.buf = Buffer.from(s.rest)
      if (s.tid !== this.tid) {
        this.counters.strayBytes += 7 + s.pdu.length
        continue
      }
      if (s.unit !== p.req.unit) throw new OutpostError('MODBUS_BAD_RESPONSE', `reply from unit ${s.unit}, expected ${p.req.unit}`)
      this.finish(p, null, checkResponsePdu(p.req, s.unit, s.pdu))
      return
    }
  }

  protected timeoutError(req: ModbusRequest, timeoutMs: number): OutpostError {
    return new OutpostError('MODBUS_TIMEOUT', `unit ${req.unit} did not answer FC${req.fc} @${req.address} within ${Math.round(timeoutMs)} ms`)
  }
}

/** Outpost's ASCII line protocol (see line-protocol.ts and docs/drivers.md). */
export class LineLink extends BaseLink<LineRequest, LineReply> {
  private sawGarbage = false
  /** Lines rejected for a wrong checksum / for not being a protocol line at all. */
  readonly lineCounters = { checksumErrors: 0, garbageLines: 0 }

  deviceOf(req: LineRequest): number {
    return req.addr
  }

  protected encode(req: LineRequest): Buffer {
    this.sawGarbage = false
    return Buffer.from(encodeLine(req), 'latin1')
  }

  protected examine(): void {
    const p = this.pending!
    for (;;) {
      const nl = this.buf.indexOf(0x0a)
      if (nl < 0) {
        if (this.buf.length > 256) {
          this.counters.garbageBytes += this.buf.length
          this.lineCounters.garbageLines++
          this.sawGarbage = true
          this.buf = Buffer.alloc(0)
        }
        return
      }
      const line = this.buf.subarray(0, nl).toString('latin1')
      this.buf = this.buf.subarray(nl + 1)
      const r = parseLine(line)
      if (r.kind === 'empty') continue
      if (r.kind === 'garbage') {
        this.lineCounters.garbageLines++
        this.counters.garbageBytes += nl + 1
        this.sawGarbage = true
        continue
      }
      if (r.kind === 'checksum') {
        this.lineCounters.checksumErrors++
        throw new OutpostError('SERIAL_CHECKSUM', `controller ${p.req.addr}: reply "${line.slice(0, 60)}" has a wrong checksum`)
      }
      const msg = r.message
      if (msg.type === 'Q' || msg.type === 'S') {
        // Our own request echoed (a half-duplex adapter with echo on): ignore.
        continue
      }
      if (msg.addr !== p.req.addr) {
        this.counters.strayBytes += nl + 1
        continue
      }
      if (msg.type === 'E') throw new OutpostError('SERIAL_DEVICE_ERROR', `controller ${msg.addr} reported ${msg.code}`)
      this.finish(p, null, msg)
      return
    }
  }

  protected timeoutError(req: LineRequest, timeoutMs: number): OutpostError {
    if (this.sawGarbage || this.buf.length > 0)
      return new OutpostError('SERIAL_GARBAGE', `controller ${req.addr}: no valid reply within ${Math.round(timeoutMs)} ms, only unreadable bytes`)
    return new OutpostError('SERIAL_TIMEOUT', `controller ${req.addr} did not answer within ${Math.round(timeoutMs)} ms`)
  }
}
