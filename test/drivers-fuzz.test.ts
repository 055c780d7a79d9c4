import t from 'tap'
import fc from 'fast-check'
import { scanRtu, scanTcp, checkResponsePdu, type ModbusRequest } from '../drivers/modbus.js'
import { crc16 } from '../drivers/crc.js'
import { parseLine, encodeLine, type LineMessage } from '../drivers/line-protocol.js'

function rtuReply(unit: number, words: number[]): Buffer {
  const b = Buffer.alloc(5 + 2 * words.length)
  b[0] = unit
  b[1] = 4
  b[2] = 2 * words.length
  words.forEach((w, i) => {
    b.writeUInt16BE(w, 3 + 2 * i)
  })
  b.writeUInt16LE(crc16(b, 0, b.length - 2), b.length - 2)
  return b
}

t.test('RTU: noise before a reply never yields wrong data', async (t) => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 247 }),
      fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 1, maxLength: 20 }),
      fc.uint8Array({ maxLength: 40 }),
      (unit, words, noise) => {
        const req: ModbusRequest = { unit, fc: 4, address: 0, count: words.length }
        const reply = rtuReply(unit, words)
        const s = scanRtu(Buffer.concat([Buffer.from(noise), reply]), req)
        if (s.kind === 'frame') {
          // Whatever was found passed the unit, function, byte-count and CRC checks; it must be ours
          // unless the noise itself happened to contain a complete valid frame (then it decodes as one).
          const r = checkResponsePdu(req, unit, s.pdu)
          return r.data.length === 2 * words.length
        }
        // Noise that looks like the start of a longer frame may hold the scan until the timeout: allowed, never wrong data.
        return s.kind === 'incomplete' || s.kind === 'crc'
      },
    ),
    { numRuns: 3000 },
  )
  t.pass('3000 random cases')
})

t.test('RTU: a reply split into any chunks is found exactly once it is complete', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 1, maxLength: 30 }), fc.integer({ min: 1, max: 100 }), (words, cut) => {
      const req: ModbusRequest = { unit: 9, fc: 4, address: 0, count: words.length }
      const reply = rtuReply(9, words)
      const at = cut % reply.length
      const partial = scanRtu(reply.subarray(0, at), req)
      const full = scanRtu(reply, req)
      return partial.kind !== 'frame' && full.kind === 'frame' && full.skipped === 0
    }),
  )
  t.pass()
})

t.test('TCP frame splitter and line parser never throw on arbitrary bytes', async (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (b) => {
      scanTcp(Buffer.from(b))
      return true
    }),
  )
  fc.assert(
    fc.property(fc.string({ maxLength: 200 }), (s) => {
      const r = parseLine(s)
      return ['ok', 'checksum', 'garbage', 'empty'].includes(r.kind)
    }),
  )
  t.pass()
})

t.test('line protocol: every message round-trips; any single changed character is rejected', async (t) => {
  const num = fc.double({ min: -1e6, max: 1e6, noNaN: true }).map((x) => Math.round(x * 1e3) / 1e3)
  const msg: fc.Arbitrary<LineMessage> = fc.oneof(
    fc.record({ type: fc.constant('Q' as const), addr: fc.integer({ min: 1, max: 247 }) }),
    fc.record({ type: fc.constant('S' as const), addr: fc.integer({ min: 1, max: 247 }), closed: fc.boolean() }),
    fc.record({
      type: fc.constant('D' as const),
      addr: fc.integer({ min: 1, max: 247 }),
      relayClosed: fc.boolean(),
      voltageV: num,
      currentA: num,
      powerW: num,
      energyWh: num.map(Math.abs),
    }),
    fc.record({ type: fc.constant('E' as const), addr: fc.integer({ min: 1, max: 247 }), code: fc.stringMatching(/^[A-Z0-9_]{1,16}$/) }),
  )
  fc.assert(
    fc.property(msg, fc.nat(), fc.integer({ min: 1, max: 94 }), (m, pos, delta) => {
      const line = encodeLine(m).replace('\r\n', '')
      const back = parseLine(line)
      if (back.kind !== 'ok') return false
      const norm = (x: LineMessage): string => JSON.stringify(x, (_k, v: unknown) => (Object.is(v, -0) ? 0 : v))
      if (norm(back.message) !== norm(m)) return false
      const i = pos % line.length
      const c = String.fromCharCode(32 + ((line.charCodeAt(i) - 32 + delta) % 95))
      const bad = line.slice(0, i) + c + line.slice(i + 1)
      if (bad.slice(bad.lastIndexOf('*') + 1).toUpperCase() === line.slice(line.lastIndexOf('*') + 1) && bad.toUpperCase() === line.toUpperCase())
        return true // only hex case changed
      return parseLine(bad).kind !== 'ok'
    }),
    { numRuns: 2000 },
  )
  t.pass()
})
