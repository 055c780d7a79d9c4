/**
 * Outpost's serial line protocol for plain-serial outlet controllers (ASCII,
 * one message per line, CRC-16/MODBUS as four hex digits). Documented with
 * examples in docs/drivers.md; the simulator fixture in test/fixtures speaks it
 * independently.
 *
 *   request  Q,<addr>                  query a reading
 *            S,<addr>,<0|1>            open (0) / close (1) the relay; the reply is a D line
 *   reply    D,<addr>,<relay>,<V>,<A>,<W>,<Wh>
 *            E,<addr>,<CODE>           the controller refuses (CODE: [A-Z0-9_]{1,16})
 *   framing  <body>*<CRC>\r\n          CRC of the body bytes, uppercase hex, 4 digits
 *
 * Owns: encoding and parsing single lines. Never does I/O.
 */
import { crc16Hex } from './crc.js'

export type LineRequest = { type: 'Q'; addr: number } | { type: 'S'; addr: number; closed: boolean }
export type LineReply =
  | { type: 'D'; addr: number; relayClosed: boolean; voltageV: number; currentA: number; powerW: number; energyWh: number }
  | { type: 'E'; addr: number; code: string }
export type LineMessage = LineRequest | LineReply

export type ParsedLine = { kind: 'ok'; message: LineMessage } | { kind: 'checksum' } | { kind: 'garbage' } | { kind: 'empty' }

const NUM = '-?\\d{1,9}(?:\\.\\d{1,6})?'
const ADDR = '(\\d{1,3})'
const FORMS: [RegExp, (m: RegExpMatchArray) => LineMessage][] = [
  [new RegExp(`^Q,${ADDR}$`), (m) => ({ type: 'Q', addr: Number(m[1]) })],
  [new RegExp(`^S,${ADDR},([01])$`), (m) => ({ type: 'S', addr: Number(m[1]), closed: m[2] === '1' })],
  [
    new RegExp(`^D,${ADDR},([01]),(${NUM}),(${NUM}),(${NUM}),(${NUM})$`),
    (m) => ({
      type: 'D',
      addr: Number(m[1]),
      relayClosed: m[2] === '1',
      voltageV: Number(m[3]),
      currentA: Number(m[4]),
      powerW: Number(m[5]),
      energyWh: Number(m[6]),
    }),
  ],
  [new RegExp(`^E,${ADDR},([A-Z0-9_]{1,16})$`), (m) => ({ type: 'E', addr: Number(m[1]), code: m[2]! })],
]

function fmt(n: number): string {
  // At most 6 decimals, no exponent, no trailing zeros.
  return Number(n.toFixed(6)).toString().includes('e') ? n.toFixed(6) : String(Number(n.toFixed(6)))
}

export function bodyOf(msg: LineMessage): string {
  switch (msg.type) {
    case 'Q':
      return `Q,${msg.addr}`
    case 'S':
      return `S,${msg.addr},${msg.closed ? 1 : 0}`
    case 'D':
      return `D,${msg.addr},${msg.relayClosed ? 1 : 0},${fmt(msg.voltageV)},${fmt(msg.currentA)},${fmt(msg.powerW)},${fmt(msg.energyWh)}`
    case 'E':
      return `E,${msg.addr},${msg.code}`
  }
}

/** A whole line, checksum and CRLF included. */
export function encodeLine(msg: LineMessage): string {
  const body = bodyOf(msg)
  return `${body}*${crc16Hex(body)}\r\n`
}

/** Parse one line (without its '\n'; a trailing '\r' is allowed). */
export function parseLine(raw: string): ParsedLine {
  const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw
  if (line.trim() === '') return { kind: 'empty' }
  const star = line.lastIndexOf('*')
  if (star < 0) return { kind: 'garbage' }
  const body = line.slice(0, star)
  const sum = line.slice(star + 1)
  if (!/^[0-9A-Fa-f]{4}$/.test(sum)) return { kind: 'garbage' }
  if (crc16Hex(body) !== sum.toUpperCase()) return { kind: 'checksum' }
  for (const [re, build] of FORMS) {
    const m = body.match(re)
    if (m) {
      const msg = build(m)
      if (msg.addr < 1 || msg.addr > 247) return { kind: 'garbage' }
      return { kind: 'ok', message: msg }
    }
  }
  return { kind: 'garbage' }
}
