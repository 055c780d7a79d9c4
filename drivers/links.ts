/**
 * Links: one request/response exchange at a time over a byte stream, for Modbus
 * RTU, Modbus TCP and Outpost's serial line protocol.
 *
 * Owns: the receive buffer of the current exchange, its timer, recognising the
 * reply (or its failure: timeout, CRC, garbage, exception), the echo of the
 * request on an RS-485 adapter that echoes (consumed and compared with
 * `echo: true`, diagnosed without it) and counting stray bytes. Never queues
 * (the bus scheduler calls transact() strictly one at a time), never retries,
 * never reopens.
 */
import { OutpostError } from './errors.js'
import type { ByteStream } from './transport.js'
import { crc16 } from './crc.js'
import { checkResponsePdu, encodeRtu, encodeTcp, scanRtu, scanTcp, validateRequest, type ModbusRequest, type ModbusResponse } from './modbus.js'
import { encodeLine, parseLine, type LineReply, type LineRequest } from './line-protocol.js'

export interface LinkCounters {
  /** Bytes that arrived while no exchange was waiting (late replies, noise). */
  strayBytes: number
  /** Bytes skipped in front of a valid reply, or received without forming one. */
  garbageBytes: number
}

export interface LinkOptions {
  /** The bus id, named in the echo diagnoses ("set echo: true on bus X"). */
  bus?: string
  /** The adapter echoes every request back before the reply: consume the echo and compare it with what was sent. */
  echo?: boolean
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
  /** The port was (re)opened: forget what was learnt about the adapter behind it (it may be another one). */
  reopened(): void
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
  /** The frame of the exchange in flight, as written (its echo must equal it). */
  protected sent: Buffer = Buffer.alloc(0)
  /** echo: true and the echo of the request in flight is not yet complete. */
  protected awaitingEcho = false
  /** echo: true and this exchange's echo came back whole. */
  protected echoConsumed = false
  protected readonly bus: string
  protected readonly echo: boolean

  constructor(
    readonly stream: ByteStream,
    opts: LinkOptions = {},
  ) {
    this.bus = opts.bus ?? stream.describe
    this.echo = opts.echo === true
    stream.onData = (chunk) => this.receive(chunk)
  }

  abstract deviceOf(req: Req): number
  protected abstract encode(req: Req): Buffer
  protected abstract examine(): void
  protected abstract timeoutError(req: Req, timeoutMs: number): OutpostError
  /**
   * The length of a complete reply to `req` at the head of the buffer, 'incomplete' while
   * the head could still become one, undefined when it is not one. Used where the echo
   * should be (echo: true).
   */
  protected abstract replyAtHead(req: Req): number | 'incomplete' | undefined
  /** Whether these bytes are one whole frame of this protocol (a late reply), not a corrupted echo. */
  protected abstract wholeFrame(bytes: Buffer): boolean
  /** Whether these bytes may be the start of a frame still arriving (an earlier exchange's late reply). */
  protected abstract partialFrame(bytes: Buffer): boolean

  transact(req: Req, timeoutMs: number): Promise<Res> {
    if (this.pending && !this.pending.done) return Promise.reject(new OutpostError('BUS_BUSY', 'an exchange is already in flight (scheduler bug)'))
    const frame = this.encode(req)
    this.buf = Buffer.alloc(0)
    this.sent = frame
    this.awaitingEcho = this.echo
    this.echoConsumed = false
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

  reopened(): void {}

  protected finish(p: Pending<Req, Res>, outcome: unknown, value?: Res): void {
    if (p.done) return
    p.done = true
    if (p.timer) clearTimeout(p.timer)
    if (this.pending === p) this.pending = undefined
    if (outcome === null) p.resolve(value as Res)
    else p.reject(outcome)
  }

  /** Bytes that arrived while no exchange was waiting. */
  protected idle(chunk: Buffer): void {
    this.counters.strayBytes += chunk.length
  }

  /** The fix for an adapter that echoes on a bus without echo: true. */
  protected echoUnexpected(): OutpostError {
    return new OutpostError(
      'BUS_ECHO_UNEXPECTED',
      `bus ${this.bus} (${this.stream.describe}): the adapter echoes requests back: set echo: true on bus "${this.bus}"`,
    )
  }

  protected echoMissing(): OutpostError {
    return new OutpostError(
      'BUS_ECHO_MISSING',
      `bus ${this.bus} (${this.stream.describe}): a reply came back without the echo of its request: ` +
        `the adapter does not echo, remove echo: true from bus "${this.bus}"`,
    )
  }

  protected echoMismatch(): OutpostError {
    const n = Math.min(this.buf.length, this.sent.length)
    return new OutpostError(
      'BUS_ECHO_MISMATCH',
      `bus ${this.bus}: the echo ${this.buf.subarray(0, n).toString('hex')} differs from the request ${this.sent.toString('hex')} ` +
        '(a collision or another master on the line)',
    )
  }

  private receive(chunk: Buffer): void {
    if (!this.pending || this.pending.done) {
      this.idle(chunk)
      return
    }
    this.buf = this.buf.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.buf, chunk])
    try {
      if (this.awaitingEcho && !this.takeEcho(this.pending.req)) return
      if (this.buf.length > 0) this.examine()
    } catch (err) {
      if (this.pending) this.finish(this.pending, err)
    }
  }

  /** echo: true: compare what came back with the request; true once the whole echo is consumed. */
  private takeEcho(req: Req): boolean {
    for (;;) {
      const n = Math.min(this.buf.length, this.sent.length)
      if (this.buf.subarray(0, n).equals(this.sent.subarray(0, n))) break
      // A reply where the echo should be: an earlier attempt's late reply (the echo follows
      // it: skip it) or an adapter that does not echo (nothing follows: the timeout says so).
      const r = this.replyAtHead(req)
      if (r === 'incomplete') return false
      if (r === undefined) {
        // A whole frame an earlier exchange left on the line, if this request's echo follows it.
        const from = echoStart(this.buf, this.sent, (head) => this.wholeFrame(head))
        if (from === undefined) {
          // A slow device's late reply may still be arriving where the echo should be: wait for the
          // rest (the echo then follows it, or the timeout ends the wait) rather than call it a collision.
          if (this.partialFrame(this.buf)) return false
          throw this.echoMismatch()
        }
        this.counters.garbageBytes += from
        this.buf = this.buf.subarray(from)
        continue
      }
      const rest = this.buf.subarray(r)
      if (rest.length === 0) return false
      const m = Math.min(rest.length, this.sent.length)
      if (!rest.subarray(0, m).equals(this.sent.subarray(0, m))) throw this.echoMismatch()
      this.counters.garbageBytes += r
      this.buf = rest
    }
    if (this.buf.length < this.sent.length) return false
    this.buf = this.buf.subarray(this.sent.length)
    this.awaitingEcho = false
    this.echoConsumed = true
    return true
  }

  /** echo: true and the timeout came before the whole echo: a lone reply means the adapter does not echo. */
  protected echoTimeoutError(req: Req): OutpostError {
    this.counters.garbageBytes += this.buf.length
    return this.replyAtHead(req) === this.buf.length ? this.echoMissing() : this.echoMismatch()
  }
}

/**
 * The first offset past a whole frame from which the buffer holds the echo of `sent`, or its
 * beginning so far, or nothing yet: an earlier exchange's late reply can arrive whole, on its
 * own, a moment before the echo of the request after it.
 */
function echoStart(buf: Buffer, sent: Buffer, wholeFrame: (head: Buffer) => boolean): number | undefined {
  for (let i = 1; i <= buf.length; i++) {
    const m = Math.min(buf.length - i, sent.length)
    if (buf.subarray(i, i + m).equals(sent.subarray(0, m)) && wholeFrame(buf.subarray(0, i))) return i
  }
  return undefined
}

/**
 * Modbus RTU: unit + PDU + CRC; the reply is recognised by unit, function and CRC.
 *
 * Echo. With `echo: true` the request's echo is consumed and compared first (BaseLink).
 * Without it, a copy of the request at the head of the reply is an adapter that echoes:
 * for a read or a multiple write that is certain (a request never parses as its own
 * reply), and the exchange fails with BUS_ECHO_UNEXPECTED. An FC05/06 reply is byte for
 * byte its request, so there the first copy is taken as the reply and a second copy
 * following it (idle, or at the head of the next exchange) proves the echo; the next
 * exchange then fails the same way. Either way the job that wrote also reads back
 * (every relay write does), and that read sees its own echo.
 */
export class RtuLink extends BaseLink<ModbusRequest, ModbusResponse> {
  /** Echo off: the adapter was seen echoing since the port opened. */
  private adapterEchoes = false
  /** Echo on: a read came back with its echo since the port opened (so an FC05/06 timeout is not a missing echo). */
  private echoConfirmed = false
  /** Echo off: an FC05/06 frame whose "reply" may have been its echo: a second copy of it settles it. */
  private doubt: Buffer | undefined
  /** The part of the doubt frame received while no exchange was waiting. */
  private doubtSeen = 0
  /** The last exchange failed: a copy of a retried write may be the first attempt's late reply, not an echo. */
  private afterFailure = false

  deviceOf(req: ModbusRequest): number {
    return req.unit
  }

  override reopened(): void {
    this.adapterEchoes = false
    this.echoConfirmed = false
    this.doubt = undefined
    this.doubtSeen = 0
  }

  override async settle(quietMs: number): Promise<void> {
    this.afterFailure = true
    this.doubt = undefined
    await super.settle(quietMs)
  }

  protected override idle(chunk: Buffer): void {
    super.idle(chunk)
    if (!this.doubt) return
    const rest = this.doubt.subarray(this.doubtSeen)
    const n = Math.min(chunk.length, rest.length)
    if (!chunk.subarray(0, n).equals(rest.subarray(0, n))) {
      this.doubt = undefined
      return
    }
    this.doubtSeen += n
    if (this.doubtSeen === this.doubt.length) {
      this.adapterEchoes = true
      this.doubt = undefined
    }
  }

  protected encode(req: ModbusRequest): Buffer {
    validateRequest(req)
    const frame = encodeRtu(req)
    if (this.doubt) {
      // The rest of the doubted copy may still arrive at the head of this exchange, unless
      // this request repeats it (then a copy proves nothing).
      this.doubt = this.doubt.equals(frame) ? undefined : this.doubt.subarray(this.doubtSeen)
      if (this.doubt?.length === 0) this.doubt = undefined
    }
    this.doubtSeen = 0
    return frame
  }

  protected examine(): void {
    const p = this.pending!
    if (!this.echo && this.echoCopy(p)) return
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
    this.accept(p, s.pdu)
  }

  private accept(p: Pending<ModbusRequest, ModbusResponse>, pdu: Buffer): void {
    const res = checkResponsePdu(p.req, p.req.unit, pdu)
    if (this.echoConsumed) this.echoConfirmed = true
    this.afterFailure = false
    this.finish(p, null, res)
  }

  /**
   * Echo off: deal with a copy of a request at the head of the buffer. True when the
   * exchange is settled or must wait for more bytes; false to scan for the reply.
   */
  private echoCopy(p: Pending<ModbusRequest, ModbusResponse>): boolean {
    if (this.adapterEchoes) {
      // Known since the port opened: every exchange fails until the config says echo: true.
      this.counters.garbageBytes += this.buf.length
      throw this.echoUnexpected()
    }
    if (this.doubt) {
      const n = Math.min(this.buf.length, this.doubt.length)
      if (this.buf.subarray(0, n).equals(this.doubt.subarray(0, n))) {
        if (n < this.doubt.length) return true
        this.adapterEchoes = true
        this.doubt = undefined
        throw this.echoUnexpected()
      }
      this.doubt = undefined
    }
    const sent = this.sent
    // The copy may follow the tail of an earlier exchange's late reply.
    const at = this.buf.indexOf(sent)
    if (at < 0) {
      const n = Math.min(this.buf.length, sent.length)
      if (n === sent.length || !this.buf.subarray(0, n).equals(sent.subarray(0, n))) return false
      // Either the echo on its way or a short reply that happens to begin like the request.
      const s = scanRtu(this.buf, p.req)
      return !(s.kind === 'frame' && s.skipped === 0)
    }
    const writeSingle = p.req.fc === 5 || p.req.fc === 6
    const again = this.buf.subarray(at + sent.length)
    const m = Math.min(again.length, sent.length)
    if (!writeSingle || (m > 0 && again.subarray(0, m).equals(sent.subarray(0, m)))) {
      this.adapterEchoes = true
      this.counters.garbageBytes += this.buf.length
      throw this.echoUnexpected()
    }
    this.counters.garbageBytes += at
    if (!this.afterFailure) this.doubt = sent
    this.accept(p, Buffer.from(sent.subarray(1, sent.length - 2)))
    return true
  }

  protected wholeFrame(bytes: Buffer): boolean {
    return bytes.length >= 4 && crc16(bytes, 0, bytes.length - 2) === bytes.readUInt16LE(bytes.length - 2)
  }

  protected partialFrame(bytes: Buffer): boolean {
    if (bytes.length < 3) return true
    if ((bytes[1]! & 0x80) !== 0) return bytes.length < 5
    const fc = bytes[1]!
    // FC01-04 replies carry their byte count; FC05/06/15/16 replies are 8 bytes.
    if (fc >= 1 && fc <= 4) return bytes.length < 5 + bytes[2]!
    if (fc === 5 || fc === 6 || fc === 15 || fc === 16) return bytes.length < 8
    return false
  }

  protected replyAtHead(req: ModbusRequest): number | 'incomplete' | undefined {
    const s = scanRtu(this.buf, req)
    if (s.kind === 'frame' && s.skipped === 0) return s.pdu.length + 3
    if (s.kind === 'incomplete' && this.buf[0] === req.unit && (this.buf[1] === req.fc || this.buf[1] === (req.fc | 0x80))) return 'incomplete'
    return undefined
  }

  protected timeoutError(req: ModbusRequest, timeoutMs: number): OutpostError {
    const what = `unit ${req.unit} did not answer FC${req.fc} @${req.address} within ${Math.round(timeoutMs)} ms`
    if (this.awaitingEcho) {
      if (this.buf.length > 0) return this.echoTimeoutError(req)
      return new OutpostError('MODBUS_TIMEOUT', `${what}, and the adapter did not echo the request (bus ${this.bus} has echo: true)`)
    }
    if (this.buf.length === 0) {
      if (this.echoConsumed && (req.fc === 5 || req.fc === 6) && !this.echoConfirmed)
        return new OutpostError(
          'MODBUS_TIMEOUT',
          `${what}: one copy of the request came back, and an FC05/06 reply is a copy of its request; ` +
            `if the adapter does not echo, remove echo: true from bus "${this.bus}"`,
        )
      return new OutpostError('MODBUS_TIMEOUT', what)
    }
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

  /** A TCP link never has echo: true. */
  protected replyAtHead(): undefined {
    return undefined
  }

  protected partialFrame(): boolean {
    return false
  }

  protected wholeFrame(): boolean {
    return false
  }
}

/**
 * Outpost's ASCII line protocol (see line-protocol.ts and docs/drivers.md). A request
 * line never parses as a reply, so without `echo: true` an echoed Q or S line is simply
 * skipped; with it, the echo is consumed and compared like on Modbus RTU.
 */
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

  /** One protocol line, whole and well-formed: a garbled echo run into a reply is not one. */
  protected wholeFrame(bytes: Buffer): boolean {
    return bytes.indexOf(0x0a) === bytes.length - 1 && parseLine(bytes.subarray(0, -1).toString('latin1')).kind === 'ok'
  }

  protected partialFrame(bytes: Buffer): boolean {
    return bytes.indexOf(0x0a) < 0 && bytes.length <= 256
  }

  protected replyAtHead(req: LineRequest): number | 'incomplete' | undefined {
    const nl = this.buf.indexOf(0x0a)
    if (nl < 0) return this.buf.length > 256 ? undefined : 'incomplete'
    const r = parseLine(this.buf.subarray(0, nl).toString('latin1'))
    if (r.kind === 'ok' && (r.message.type === 'D' || r.message.type === 'E') && r.message.addr === req.addr) return nl + 1
    return undefined
  }

  protected timeoutError(req: LineRequest, timeoutMs: number): OutpostError {
    if (this.awaitingEcho && this.buf.length > 0) return this.echoTimeoutError(req)
    if (this.sawGarbage || this.buf.length > 0)
      return new OutpostError('SERIAL_GARBAGE', `controller ${req.addr}: no valid reply within ${Math.round(timeoutMs)} ms, only unreadable bytes`)
    return new OutpostError('SERIAL_TIMEOUT', `controller ${req.addr} did not answer within ${Math.round(timeoutMs)} ms`)
  }
}
