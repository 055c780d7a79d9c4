import t from 'tap'
import { mkdtempSync, writeFileSync, rmSync, readdirSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  BUILTIN_MODELS_DIR,
  ModelRegistry,
  planBlocks,
  meterBlocks,
  decodeRegister,
  decodeMeter,
  float32Decimal,
  validateModel,
  decodeIdentity,
  identityVariant,
} from '../drivers/models.js'
import { openSite } from '../drivers/site.js'
import { startPymodbus, siteConfig } from './fixtures/drivers-helpers.js'
import { interFrameMs, bitsPerChar, scanRtu, encodeRtu } from '../drivers/modbus.js'

t.test('the model folder is the list of models', async (t) => {
  const r = new ModelRegistry()
  const files = readdirSync(BUILTIN_MODELS_DIR).filter((f) => f.endsWith('.json') && f !== 'model.schema.json')
  const byKind = (kind: string) =>
    files
      .filter((f) => JSON.parse(readFileSync(join(BUILTIN_MODELS_DIR, f), 'utf8')).kinds.includes(kind))
      .map((f) => f.replace(/\.json$/, ''))
      .sort()
  t.same(r.names('meter'), byKind('meter'))
  t.same(r.names('relay'), byKind('relay'))
  t.ok(r.names('meter').includes('eastron-sdm120') && r.names('relay').includes('modbus-coil'))
  t.throws(() => r.get('nope'), { code: 'MODEL_UNKNOWN' })
  t.throws(() => r.get('modbus-coil', 'meter'), { code: 'MODEL_UNKNOWN' })
})

t.test('block planning: adjacent registers in one read, never over the device limit', async (t) => {
  const sdm120 = new ModelRegistry().get('eastron-sdm120')
  t.same(meterBlocks(sdm120), [
    { fc: 4, address: 0, count: 14 },
    { fc: 4, address: 70, count: 4 },
  ])
  const sdm630 = new ModelRegistry().get('eastron-sdm630')
  for (const b of meterBlocks(sdm630)) t.ok(b.count <= 60, `block ${b.address}+${b.count} within 60`)
  // 0..11 phases; 52 (total power) joins 70..73 across a 16-register hole.
  t.same(meterBlocks(sdm630), [
    { fc: 4, address: 0, count: 12 },
    { fc: 4, address: 52, count: 22 },
  ])
  // 0..59 fits, 0..61 does not.
  t.same(
    planBlocks(
      [
        { function: 4, address: 0, words: 2 },
        { function: 4, address: 58, words: 2 },
      ],
      60,
      100,
    ),
    [{ fc: 4, address: 0, count: 60 }],
  )
  t.same(
    planBlocks(
      [
        { function: 4, address: 0, words: 2 },
        { function: 4, address: 60, words: 2 },
      ],
      60,
      100,
    ),
    [
      { fc: 4, address: 0, count: 2 },
      { fc: 4, address: 60, count: 2 },
    ],
  )
  // Gap rule, and function codes never mix.
  t.same(
    planBlocks(
      [
        { function: 4, address: 0, words: 1 },
        { function: 4, address: 3, words: 1 },
      ],
      60,
      1,
    ),
    [
      { fc: 4, address: 0, count: 1 },
      { fc: 4, address: 3, count: 1 },
    ],
  )
  t.same(
    planBlocks(
      [
        { function: 3, address: 0, words: 1 },
        { function: 4, address: 1, words: 1 },
      ],
      60,
      10,
    ).length,
    2,
  )
  // Overlapping registers (SDM630 voltage and voltageL2V) are read once.
  t.same(
    planBlocks(
      [
        { function: 4, address: 2, words: 2 },
        { function: 4, address: 2, words: 2 },
      ],
      60,
      0,
    ),
    [{ fc: 4, address: 2, count: 2 }],
  )
})

t.test('decoding: every type, word and byte order, scale', async (t) => {
  const f = Buffer.alloc(4)
  f.writeFloatBE(229.8)
  const hi = f.readUInt16BE(0)
  const lo = f.readUInt16BE(2)
  t.equal(decodeRegister({ quantity: 'v', function: 4, address: 0, type: 'float32' }, [hi, lo]), 229.8)
  t.equal(decodeRegister({ quantity: 'v', function: 4, address: 0, type: 'float32', wordOrder: 'little' }, [lo, hi]), 229.8)
  const swap = (w: number): number => ((w & 0xff) << 8) | (w >> 8)
  t.equal(decodeRegister({ quantity: 'v', function: 4, address: 0, type: 'float32', byteOrder: 'little' }, [swap(hi), swap(lo)]), 229.8)
  t.equal(decodeRegister({ quantity: 'e', function: 4, address: 0, type: 'uint32', scale: 10 }, [0x0001, 0x0002]), 655380)
  t.equal(decodeRegister({ quantity: 'e', function: 4, address: 0, type: 'int32' }, [0xffff, 0xfffe]), -2)
  t.equal(decodeRegister({ quantity: 'e', function: 4, address: 0, type: 'int16', scale: 0.1 }, [0xfff6]), -1)
  t.equal(decodeRegister({ quantity: 'e', function: 4, address: 0, type: 'uint16', scale: 0.01 }, [23050]), 230.5)
  t.equal(decodeRegister({ quantity: 'e', function: 3, address: 0, type: 'uint64' }, [0, 0, 1, 0]), 65536)
  t.equal(decodeRegister({ quantity: 'e', function: 3, address: 0, type: 'float64' }, [0x3ff8, 0, 0, 0]), 1.5)
  t.equal(
    decodeRegister(
      { quantity: 'e', function: 4, address: 0, type: 'float32', scale: 1000 },
      (() => {
        const b = Buffer.alloc(4)
        b.writeFloatBE(1.234)
        return [b.readUInt16BE(0), b.readUInt16BE(2)]
      })(),
    ),
    1234,
  )
  t.equal(float32Decimal(Math.fround(0.1)), 0.1)
  t.ok(Number.isNaN(float32Decimal(NaN)))
  const sdm630 = new ModelRegistry().get('eastron-sdm630')
  const blocks = meterBlocks(sdm630)
  const words = blocks.map((b) => new Array<number>(b.count).fill(0))
  const put = (addr: number, v: number): void => {
    const b = blocks.find((x) => addr >= x.address && addr < x.address + x.count)!
    const buf = Buffer.alloc(4)
    buf.writeFloatBE(v)
    words[blocks.indexOf(b)]![addr - b.address] = buf.readUInt16BE(0)
    words[blocks.indexOf(b)]![addr - b.address + 1] = buf.readUInt16BE(2)
  }
  put(0, 230)
  put(2, 232)
  put(4, 228)
  put(6, 1)
  put(8, 9.5)
  put(10, 3)
  put(52, 1000)
  put(72, 5)
  t.match(decodeMeter(sdm630, blocks, words), { voltageV: 230, currentA: 9.5, powerW: 1000, energyWh: 5000, voltageL2V: 232 })
})

t.test('sentinels, 64-bit counts and identity registers', async (t) => {
  const abbImport = {
    quantity: 'energyWh',
    function: 3 as const,
    address: 0x5000,
    type: 'uint64' as const,
    scale: 10,
    notAvailable: ['0xFFFFFFFFFFFFFFFF'],
  }
  t.equal(decodeRegister(abbImport, [0, 0, 0x075b, 0xcd15]), 1_234_567_890)
  t.ok(Number.isNaN(decodeRegister(abbImport, [0xffff, 0xffff, 0xffff, 0xffff])), 'all-FF is not a number')
  // The sentinel is the value after word order: low word first, 0x7FFFFFFF arrives as FFFF 7FFF.
  const le = {
    quantity: 'powerW',
    function: 4 as const,
    address: 0,
    type: 'int32' as const,
    wordOrder: 'little' as const,
    notAvailable: ['0x7FFFFFFF'],
  }
  t.ok(Number.isNaN(decodeRegister(le, [0xffff, 0x7fff])))
  t.equal(decodeRegister(le, [0x7fff, 0xffff]), -32769)
  // A 64-bit count past 2^53 cannot be held exactly: not a number to bill from.
  t.ok(Number.isNaN(decodeRegister({ quantity: 'e', function: 3, address: 0, type: 'uint64' }, [0x0020, 0, 0, 1])))
  t.equal(decodeRegister({ quantity: 'e', function: 3, address: 0, type: 'uint64' }, [0x001f, 0xffff, 0xffff, 0xffff]), Number.MAX_SAFE_INTEGER)
  // Text: two characters per register, or one in each low byte (Carlo Gavazzi); NULs and spaces trimmed.
  t.equal(decodeIdentity({ function: 3, address: 0, type: 'ascii', words: 3 }, [0x4232, 0x3320, 0]), 'B23')
  t.equal(decodeIdentity({ function: 3, address: 0, type: 'ascii', words: 3 }, [0x41, 0x42, 0x31]), 'AB1')
  t.equal(decodeIdentity({ function: 3, address: 0, type: 'uint32' }, [0x00bc, 0x614e]), '12345678')
  t.equal(decodeIdentity({ function: 3, address: 0, type: 'uint32', wordOrder: 'little' }, [0x614e, 0x00bc]), '12345678')
  t.equal(decodeIdentity({ function: 3, address: 0, type: 'uint16' }, [120]), '120')
  const reg = new ModelRegistry()
  t.equal(identityVariant(reg.get('abb-b23'), 'B24'), 'B24')
  t.equal(identityVariant(reg.get('abb-b23'), 'B21'), undefined)
  t.equal(identityVariant(reg.get('abb-b23'), 'constructor'), undefined, 'only listed values, not inherited keys')
})

t.test('every built-in meter register names its source', async (t) => {
  for (const m of new ModelRegistry().all().filter((x) => x.kinds.includes('meter') && x.transport === 'modbus')) {
    for (const r of m.registers ?? []) t.ok(r.source && m.sources?.[r.source], `${m.name} ${r.quantity} @${r.address} cites ${r.source}`)
    for (const k of ['model', 'serial'] as const) if (m.identity?.[k]) t.ok(m.sources?.[m.identity[k]!.source ?? ''], `${m.name} identity ${k} cited`)
  }
})

t.test('every built-in meter says its phases, from what the meter is', async (t) => {
  const three = ['abb-b23', 'carlo-gavazzi-em340', 'eastron-sdm630', 'eastron-sdm72d-m-v2', 'finder-7m38', 'orno-we516']
  for (const m of new ModelRegistry().all().filter((x) => x.kinds.includes('meter')))
    t.equal(m.phases, three.includes(m.name) ? 3 : 1, `${m.name}: ${m.phases} phase(s)`)
  // An installer's model from before "phases" existed still loads (an upgrade never stops a site);
  // its outlets are bounded as three-phase (test/config.test.ts).
  t.ok(
    validateModel({ name: 'x', kinds: ['meter'], transport: 'serial', relay: { point: 'line', closedValue: 1, openValue: 0 } }, '/m/x.json'),
    'a meter model without phases still loads',
  )
  t.throws(() => validateModel({ name: 'x', kinds: ['meter'], phases: 2, transport: 'serial' }, '/m/x.json'), { message: /phases/ })
  t.ok(
    validateModel({ name: 'x', kinds: ['relay'], transport: 'modbus', relay: { point: 'coil', closedValue: 1, openValue: 0 } }, '/m/x.json'),
    'a relay needs none',
  )
})

t.test('model files are validated with clear errors; an installer model works end to end', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-models-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  t.throws(() => validateModel({ name: 'x', kinds: ['meter'], transport: 'modbus', registers: [] }, '/m/x.json'), {
    code: 'MODEL_INVALID',
    message: /needs a register for voltageV/,
  })
  t.throws(() => validateModel({ name: 'y', kinds: ['meter'], transport: 'modbus', registers: [] }, '/m/x.json'), {
    message: /must equal the file name/,
  })
  t.throws(() => validateModel({ name: 'x', kinds: ['relay'], transport: 'modbus' }, '/m/x.json'), { message: /needs a "relay" section/ })
  t.throws(
    () =>
      validateModel(
        { name: 'x', kinds: ['meter'], transport: 'modbus', registers: [{ quantity: 'voltageV', function: 5, address: 0, type: 'float32' }] },
        '/m/x.json',
      ),
    { message: /registers\/0\/function/ },
  )
  t.throws(() => validateModel({ name: 'x', kinds: ['meter'], transport: 'modbus', registers: [], extra: 1 }, '/m/x.json'), {
    message: /additional properties/,
  })
  const oneReg = (extra: Record<string, unknown>): Record<string, unknown> => ({
    quantity: 'voltageV',
    function: 4,
    address: 0,
    type: 'uint32',
    ...extra,
  })
  t.throws(
    () => validateModel({ name: 'x', kinds: ['meter'], transport: 'modbus', registers: [oneReg({ notAvailable: ['0xFFFF'] })] }, '/m/x.json'),
    {
      message: /registers\/0\/notAvailable: 0xFFFF is not 2 register\(s\) of uint32/,
    },
  )
  t.throws(() => validateModel({ name: 'x', kinds: ['meter'], transport: 'modbus', registers: [oneReg({ source: 'manual' })] }, '/m/x.json'), {
    message: /registers\/0\/source: "manual" is not a key of "sources"/,
  })
  t.throws(
    () =>
      validateModel(
        { name: 'x', kinds: ['meter'], transport: 'modbus', registers: [], identity: { serial: { function: 3, address: 0, type: 'ascii' } } },
        '/m/x.json',
      ),
    { message: /identity\/serial\/words: ascii needs "words"/ },
  )
  t.throws(
    () =>
      validateModel(
        {
          name: 'x',
          kinds: ['meter'],
          transport: 'modbus',
          registers: [],
          identity: { model: { function: 3, address: 0, type: 'uint16', value: {} } },
        },
        '/m/x.json',
      ),
    { message: /identity\/model/ },
  )
  // An installer's meter: same registers as an SDM120 but energy from the total register, power as int32 watts.
  writeFileSync(
    join(dir, 'acme-m1.json'),
    JSON.stringify({
      name: 'acme-m1',
      kinds: ['meter'],
      phases: 1,
      transport: 'modbus',
      maxRegistersPerRead: 20,
      registers: [
        { quantity: 'voltageV', function: 4, address: 0, type: 'float32' },
        { quantity: 'currentA', function: 4, address: 6, type: 'float32' },
        { quantity: 'powerW', function: 4, address: 12, type: 'float32' },
        { quantity: 'energyWh', function: 4, address: 342, type: 'float32', scale: 1000 },
      ],
    }),
  )
  const reg = new ModelRegistry(dir)
  t.same(meterBlocks(reg.get('acme-m1')), [
    { fc: 4, address: 0, count: 14 },
    { fc: 4, address: 342, count: 2 },
  ])
  const py = await startPymodbus({ tcp: true })
  t.teardown(() => py.kill())
  const cfg = siteConfig(
    [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: py.port }],
    [{ id: 'A', bus: 'lan', meter: { model: 'acme-m1', unit: 2 }, plan: 'p' }],
    { models: { dir } },
  )
  const site = await openSite(cfg, { now: () => 5 })
  t.teardown(() => site.close())
  await site.bus('lan').scheduler.waitOpen(20_000)
  t.same(await site.outlet('A').read(), { ts: 5, voltageV: 230, currentA: 1, powerW: 230, energyWh: 24690 })
  // A broken installer file stops openSite with the file named (a config problem, not a bus problem).
  writeFileSync(join(dir, 'broken.json'), '{ "name": "broken", ')
  await t.rejects(openSite(cfg, { now: () => 5 }), { code: 'MODEL_INVALID', message: /broken\.json/ })
})

t.test('RTU timing and framing details', async (t) => {
  t.equal(interFrameMs(9600, 10), (3.5 * 10 * 1000) / 9600)
  t.equal(interFrameMs(2400, bitsPerChar(8, 'none', 1)), (3.5 * 10 * 1000) / 2400)
  t.equal(interFrameMs(38400), 1.75)
  t.equal(bitsPerChar(8, 'even', 1), 11)
  const req = { unit: 5, fc: 3 as const, address: 0, count: 1 }
  const reply = Buffer.from([5, 3, 2, 0x12, 0x34, 0, 0])
  reply.writeUInt16LE(require_crc(reply.subarray(0, 5)), 5)
  t.match(scanRtu(Buffer.concat([Buffer.from([0xff, 0x00]), reply]), req), { kind: 'frame', skipped: 2 })
  t.match(scanRtu(reply.subarray(0, 4), req), { kind: 'incomplete' })
  const bad = Buffer.from(reply)
  bad[6]! ^= 0xff
  t.match(scanRtu(bad, req), { kind: 'crc' })
  // A valid reply from this unit to a different read (a late one) is skipped, not decoded.
  const late = Buffer.from([5, 3, 4, 0, 1, 0, 2, 0, 0])
  late.writeUInt16LE(require_crc(late.subarray(0, 7)), 7)
  t.match(scanRtu(Buffer.concat([late, reply]), req), { kind: 'frame', skipped: 9 })
  t.match(scanRtu(late, req), { kind: 'incomplete' })
  // A reply for another unit is not ours, whatever its CRC.
  const other = Buffer.from([6, 3, 2, 0x12, 0x34, 0, 0])
  other.writeUInt16LE(require_crc(other.subarray(0, 5)), 5)
  t.match(scanRtu(other, req), { kind: 'incomplete' })
  // CRC bytes as pymodbus computes them (and the classic 01 04 00 00 00 02 71 CB).
  t.equal(encodeRtu(req).toString('hex'), '050300000001858e')
  t.equal(encodeRtu({ unit: 1, fc: 4, address: 0, count: 2 }).toString('hex'), '01040000000271cb')
})

import { crc16 } from '../drivers/crc.js'
function require_crc(b: Buffer): number {
  return crc16(b)
}
