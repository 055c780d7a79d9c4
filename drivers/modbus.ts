/**
 * Modbus PDUs and their two framings (RTU: unit + PDU + CRC; TCP: MBAP header + PDU).
 *
 * Owns: encoding requests, recognising and validating responses in a byte stream
 * (with resynchronisation past leading noise), decoding exception responses.
 * Never does I/O and never keeps state between frames: the link that uses it
 * owns the buffer, the timer and the port.
 */
import { OutpostError } from './errors.js'
import { crc16 } from './crc.js'

export type FunctionCode = 1 | 2 | 3 | 4 | 5 | 6 | 15 | 16

export type ModbusRequest =
  | { unit: number; fc: 1 | 2 | 3 | 4; address: number; count: number }
  | { unit: number; fc: 5; address: number; value: boolean }
  | { unit: number; fc: 6; address: number; value: number }
  | { unit: number; fc: 15; address: number; values: boolean[] }
  | { unit: number; fc: 16; address: number; values: number[] }

/** A validated response PDU (function code and payload, exception already turned into an error). */
export interface ModbusResponse {
  unit: number
  fc: number
  /** For reads: the data bytes after the byte count. For writes: the echoed 4 bytes. */
  data: Buffer
}

export const EXCEPTION_NAMES: Record<number, string> = {
  1: 'illegal function',
  2: 'illegal data address',
  3: 'illegal data value',
  4: 'server device failure',
  5: 'acknowledge',
  6: 'server device busy',
  8: 'memory parity error',
  10: 'gateway path unavailable',
  11: 'gateway target failed to respond',
}

/** Per the Modbus spec: at most 125 registers / 2000 bits per read. */
const MAX_READ = { 1: 2000, 2: 2000, 3: 125, 4: 125 } as const

export function validateRequest(req: ModbusRequest): void {
  const where = `unit ${req.unit} FC${String(req.fc).padStart(2, '0')} @${req.address}`
  if (!Number.isInteger(req.unit) || req.unit < 0 || req.unit > 255) throw new OutpostError('MODBUS_BAD_REQUEST', `${where}: unit must be 0..255`)
  if (!Number.isInteger(req.address) || req.address < 0 || req.address > 0xffff)
    throw new OutpostError('MODBUS_BAD_REQUEST', `${where}: address must be 0..65535`)
  if (req.fc <= 4) {
    const r = req as { count: number; fc: 1 | 2 | 3 | 4 }
    if (!Number.isInteger(r.count) || r.count < 1 || r.count > MAX_READ[r.fc] || req.address + r.count > 0x10000) {
      throw new OutpostError('MODBUS_BAD_REQUEST', `${where}: count must be 1..${MAX_READ[r.fc]} within the address space`)
    }
  } else if (req.fc === 6) {
    if (!Number.isInteger(req.value) || req.value < 0 || req.value > 0xffff)
      throw new OutpostError('MODBUS_BAD_REQUEST', `${where}: value must be 0..65535`)
  } else if (req.fc === 15 || req.fc === 16) {
    const n = req.values.length
    if (n < 1 || n > (req.fc === 15 ? 1968 : 123)) throw new OutpostError('MODBUS_BAD_REQUEST', `${where}: bad value count ${n}`)
  }
}

/** The request PDU (function code + data), without unit or checksum. */
export function encodePdu(req: ModbusRequest): Buffer {
  switch (req.fc) {
    case 1:
    case 2:
    case 3:
    case 4: {
      const b = Buffer.alloc(5)
      b[0] = req.fc
      b.writeUInt16BE(req.address, 1)
      b.writeUInt16BE(req.count, 3)
      return b
    }
    case 5: {
      const b = Buffer.alloc(5)
      b[0] = 5
      b.writeUInt16BE(req.address, 1)
      b.writeUInt16BE(req.value ? 0xff00 : 0x0000, 3)
      return b
    }
    case 6: {
      const b = Buffer.alloc(5)
      b[0] = 6
      b.writeUInt16BE(req.address, 1)
      b.writeUInt16BE(req.value, 3)
      return b
    }
    case 15: {
      const bytes = Math.ceil(req.values.length / 8)
      const b = Buffer.alloc(6 + bytes)
      b[0] = 15
      b.writeUInt16BE(req.address, 1)
      b.writeUInt16BE(req.values.length, 3)
      b[5] = bytes
      req.values.forEach((v, i) => {
        if (v) b[6 + (i >> 3)]! |= 1 << (i & 7)
      })
      return b
    }
    case 16: {
      const b = Buffer.alloc(6 + 2 * req.values.length)
      b[0] = 16
      b.writeUInt16BE(req.address, 1)
      b.writeUInt16BE(req.values.length, 3)
      b[5] = 2 * req.values.length
      req.values.forEach((v, i) => {
        b.writeUInt16BE(v & 0xffff, 6 + 2 * i)
      })
      return b
    }
  }
}

export function encodeRtu(req: ModbusRequest): Buffer {
  const pdu = encodePdu(req)
  const b = Buffer.alloc(pdu.length + 3)
  b[0] = req.unit
  pdu.copy(b, 1)
  b.writeUInt16LE(crc16(b, 0, b.length - 2), b.length - 2)
  return b
}

export function encodeTcp(req: ModbusRequest, tid: number): Buffer {
  const pdu = encodePdu(req)
  const b = Buffer.alloc(7 + pdu.length)
  b.writeUInt16BE(tid & 0xffff, 0)
  b.writeUInt16BE(0, 2)
  b.writeUInt16BE(pdu.length + 1, 4)
  b[6] = req.unit
  pdu.copy(b, 7)
  return b
}

/** Byte count a read response must carry for this request. */
function expectedByteCount(req: ModbusRequest): number | undefined {
  if (req.fc === 1 || req.fc === 2) return Math.ceil(req.count / 8)
  if (req.fc === 3 || req.fc === 4) return 2 * req.count
  return undefined
}

/**
 * Check a response PDU (starting at its function code) against the request. Throws
 * MODBUS_EXCEPTION for an exception response, MODBUS_BAD_RESPONSE when the reply
 * is well-formed but is not an answer to this request.
 */
export function checkResponsePdu(req: ModbusRequest, unit: number, pdu: Buffer): ModbusResponse {
  const fc = pdu[0]!
  if (fc === (req.fc | 0x80)) {
    const code = pdu[1] ?? 0
    throw new OutpostError(
      'MODBUS_EXCEPTION',
      `unit ${unit} answered FC${req.fc} @${req.address} with exception ${code} (${EXCEPTION_NAMES[code] ?? 'unknown'})`,
      { cause: { exceptionCode: code } },
    )
  }
  if (fc !== req.fc) throw new OutpostError('MODBUS_BAD_RESPONSE', `unit ${unit}: reply has function ${fc}, expected ${req.fc}`)
  const want = expectedByteCount(req)
  if (want !== undefined) {
    if (pdu[1] !== want || pdu.length !== 2 + want)
      throw new OutpostError('MODBUS_BAD_RESPONSE', `unit ${unit} FC${req.fc} @${req.address}: reply carries ${pdu[1]} bytes, expected ${want}`)
    return { unit, fc, data: pdu.subarray(2) }
  }
  if (pdu.length !== 5) throw new OutpostError('MODBUS_BAD_RESPONSE', `unit ${unit}: write reply of ${pdu.length} bytes`)
  const echo = pdu.subarray(1)
  if (req.fc === 5 || req.fc === 6) {
    const sent = encodePdu(req).subarray(1)
    if (!echo.equals(sent))
      throw new OutpostError('MODBUS_BAD_RESPONSE', `unit ${unit}: write echo ${echo.toString('hex')} differs from request ${sent.toString('hex')}`)
  } else if (echo.readUInt16BE(0) !== req.address || echo.readUInt16BE(2) !== (req as { values: unknown[] }).values.length) {
    throw new OutpostError('MODBUS_BAD_RESPONSE', `unit ${unit}: write-multiple reply does not match the request`)
  }
  return { unit, fc, data: echo }
}

/** Length of an RTU response frame that starts at buf[i] (unit, fc, ...), or undefined if not yet knowable. */
function rtuFrameLength(buf: Buffer, i: number, reqFc: number): number | undefined {
  const fc = buf[i + 1]!
  if (fc === (reqFc | 0x80)) return 5
  if (fc <= 4) return buf.length > i + 2 ? 5 + buf[i + 2]! : undefined
  return 8
}

export type RtuScan = { kind: 'frame'; pdu: Buffer; skipped: number } | { kind: 'crc'; skipped: number } | { kind: 'incomplete' }

/**
 * Look for the reply to `req` in bytes received since the request went out. A frame
 * must start with the unit and the request's function code (or its exception form)
 * and end in a valid CRC. Leading noise (a line turnaround glitch, a late tail of an
 * earlier reply) is skipped and counted, never parsed as data.
 */
export function scanRtu(buf: Buffer, req: ModbusRequest): RtuScan {
  let crcAt: number | undefined
  for (let i = 0; i + 1 < buf.length; i++) {
    if (buf[i] !== req.unit) continue
    const fc = buf[i + 1]!
    if (fc !== req.fc && fc !== (req.fc | 0x80)) continue
    const len = rtuFrameLength(buf, i, req.fc)
    if (len === undefined || buf.length < i + len) {
      // Could be the start of our reply: wait for more unless a complete bad frame sat at 0.
      if (crcAt === 0) return { kind: 'crc', skipped: 0 }
      return { kind: 'incomplete' }
    }
    if (crc16(buf, i, i + len - 2) === buf.readUInt16LE(i + len - 2)) {
      const want = expectedByteCount(req)
      if (fc === req.fc && want !== undefined && buf[i + 2] !== want) {
        // A valid frame from this unit that answers a different read (a late reply to an
        // earlier block): stale, skip past it and keep looking for ours.
        i += len - 1
        continue
      }
      return { kind: 'frame', pdu: Buffer.from(buf.subarray(i + 1, i + len - 2)), skipped: i }
    }
    crcAt ??= i
  }
  if (crcAt === 0) return { kind: 'crc', skipped: 0 }
  return { kind: 'incomplete' }
}

export type TcpScan = { kind: 'frame'; tid: number; unit: number; pdu: Buffer; rest: Buffer } | { kind: 'garbage' } | { kind: 'incomplete' }

/** Split one MBAP frame off the front of a TCP stream. */
export function scanTcp(buf: Buffer): TcpScan {
  if (buf.length < 7) return { kind: 'incomplete' }
  const proto = buf.readUInt16BE(2)
  const len = buf.readUInt16BE(4)
  if (proto !== 0 || len < 2 || len > 254) return { kind: 'garbage' }
  if (buf.length < 6 + len) return { kind: 'incomplete' }
  return { kind: 'frame', tid: buf.readUInt16BE(0), unit: buf[6]!, pdu: Buffer.from(buf.subarray(7, 6 + len)), rest: buf.subarray(6 + len) }
}

/** Bits of a FC01/FC02 reply, LSB first. */
export function decodeBits(data: Buffer, count: number): boolean[] {
  const out: boolean[] = []
  for (let i = 0; i < count; i++) out.push(((data[i >> 3]! >> (i & 7)) & 1) === 1)
  return out
}

export function decodeWords(data: Buffer): number[] {
  const out: number[] = []
  for (let i = 0; i + 1 < data.length; i += 2) out.push(data.readUInt16BE(i))
  return out
}

/**
 * 3.5 character times of silence between RTU frames (a character is 11 bits with
 * parity or 2 stop bits, 10 otherwise); the spec fixes 1.75 ms above 19200 baud.
 */
export function interFrameMs(baudRate: number, bitsPerChar = 11): number {
  if (baudRate > 19200) return 1.75
  return (3.5 * bitsPerChar * 1000) / baudRate
}

/** Bits on the wire per character for a serial configuration. */
export function bitsPerChar(dataBits: number, parity: string, stopBits: number): number {
  return 1 + dataBits + (parity === 'none' ? 0 : 1) + stopBits
}
