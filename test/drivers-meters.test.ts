/**
 * Every meter model against an independent Modbus peer (test/helpers/register-peer.py,
 * pymodbus). Each peer register is encoded here with Python's struct from the maker's
 * published map (the source each block cites), never from the model file, so a wrong
 * address, word order, type or scale in a model file fails here.
 */
import t from 'tap'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { packagePath } from '../core/paths.js'
import { openSite, type SiteIO } from '../drivers/site.js'
import { parseUnits, scanBus } from '../drivers/scan.js'
import { ModelRegistry } from '../drivers/models.js'
import { siteConfig, startRegisterPeer, ptyPair, type PeerEntry, type PeerLayout } from './fixtures/drivers-helpers.js'

const run = promisify(execFile)
const zeros = (address: number, n: number): PeerEntry => [address, 'words', new Array<number>(n).fill(0)]
const ALL_FF = (n: number): number[] => new Array<number>(n).fill(0xffff)

// The published maps, one unit per model. Values differ per phase so a wrong address shows.
const layout: PeerLayout = {
  units: {
    // Eastron SDM230 register list (via mbmd sdm230.go): float32 FC04, high word first, kWh.
    1: {
      ir: [
        zeros(0, 0x50),
        zeros(0x156, 4),
        [0x0000, '>f', 231.5],
        [0x0006, '>f', 7.25],
        [0x000c, '>f', 1678.4],
        [0x0046, '>f', 50],
        [0x0048, '>f', 1234.5], // import
        [0x004a, '>f', 99], // export
        [0x0156, '>f', 1333.5], // total = import + export: never billed
      ],
    },
    // Eastron SDM72D-M v2 manual (via mbmd sdm72v2.go): float32 FC04.
    2: {
      ir: [
        zeros(0, 0x50),
        zeros(0x156, 4),
        [0x0000, '>f', 230.1],
        [0x0002, '>f', 229.9],
        [0x0004, '>f', 231],
        [0x0006, '>f', 6.5],
        [0x0008, '>f', 9],
        [0x000a, '>f', 3.25],
        [0x000c, '>f', 1495],
        [0x000e, '>f', 2069],
        [0x0010, '>f', 751],
        [0x0034, '>f', 4321],
        [0x0046, '>f', 50],
        [0x0048, '>f', 5678.9],
        [0x004a, '>f', 12],
        [0x0156, '>f', 5690.9],
      ],
    },
    // ABB B-series manual (via mbmd abb.go, Victron abb.py): FC03 big-endian; a B21 has no
    // L2/L3 values, which read "not available" (all FF unsigned, 0x7FFF... signed).
    3: {
      hr: [
        zeros(0x5000, 8),
        [0x5000, '>Q', 123456789], // import, 0.01 kWh
        [0x5004, '>Q', 5000], // export
        zeros(0x5b00, 0x3e),
        [0x5b00, '>I', 2304], // V L1, 0.1 V
        [0x5b02, 'words', ALL_FF(2)],
        [0x5b04, 'words', ALL_FF(2)],
        [0x5b0c, '>I', 1625], // A L1, 0.01 A
        [0x5b0e, 'words', ALL_FF(2)],
        [0x5b10, 'words', ALL_FF(2)],
        [0x5b14, '>i', 374400], // W total, 0.01 W
        [0x5b18, '>i', 0x7fffffff],
        [0x5b1a, '>i', 0x7fffffff],
        [0x5b2c, '>H', 5000], // Hz, 0.01
        zeros(0x8900, 2),
        [0x8900, '>I', 12345678], // serial
        zeros(0x8960, 6),
        [0x8960, 'text', 'B21 '],
      ],
    },
    4: {
      hr: [
        zeros(0x5000, 8),
        [0x5000, '>Q', 42],
        zeros(0x5b00, 0x3e),
        [0x5b00, '>I', 2301],
        [0x5b02, '>I', 2299],
        [0x5b04, '>I', 2310],
        [0x5b0c, '>I', 1000],
        [0x5b0e, '>I', 1600],
        [0x5b10, '>I', 500],
        [0x5b14, '>i', 737000],
        [0x5b2c, '>H', 4998],
        zeros(0x8900, 2),
        [0x8900, '>I', 87654321],
        zeros(0x8960, 6),
        [0x8960, 'text', 'B24 '],
      ],
    },
    5: {
      hr: [
        zeros(0x5000, 8),
        [0x5000, '>Q', 7],
        zeros(0x5b00, 0x3e),
        [0x5b00, '>I', 2300],
        [0x5b02, '>I', 2300],
        [0x5b04, '>I', 2300],
        [0x5b2c, '>H', 5000],
        zeros(0x8900, 2),
        [0x8900, '>I', 555],
        zeros(0x8960, 6),
        [0x8960, 'text', 'B23 '],
      ],
    },
    // Carlo Gavazzi ET112 (Victron carlo_gavazzi.py): FC04 INT32 low word first; model code and
    // serial (one character per register, low byte) read with FC03.
    6: {
      ir: [
        zeros(0, 0x30),
        [0x0000, '>i', 2304, 'lowfirst'], // 0.1 V
        [0x0002, '>i', 16250, 'lowfirst'], // mA
        [0x0004, '>i', 37440, 'lowfirst'], // 0.1 W
        [0x000f, '>h', 500], // 0.1 Hz
        [0x0010, '>i', 1234567, 'lowfirst'], // kWh(+), 0.1 kWh: the high word is 0x0012
        [0x0020, '>i', 999, 'lowfirst'], // kWh(-)
      ],
      hr: [zeros(0, 0x10), [0x000b, '>H', 120], [0x5000, 'words', [...'ET11201'].map((c) => c.charCodeAt(0))]],
    },
    // An EM111 whose model code these sources do not list: named by its ranges.
    7: {
      ir: [
        zeros(0, 0x30),
        [0x0000, '>i', 2291, 'lowfirst'],
        [0x0002, '>i', 500, 'lowfirst'],
        [0x0004, '>i', 1146, 'lowfirst'],
        [0x000f, '>h', 499],
        [0x0010, '>i', 70000, 'lowfirst'],
      ],
      hr: [zeros(0, 0x10), [0x000b, '>H', 103], [0x5000, 'words', [...'EM11177'].map((c) => c.charCodeAt(0))]],
    },
    // Carlo Gavazzi EM330/EM340 protocol (via mbmd carlogavazzi-ex3x0.go): FC04 INT32 low word first.
    8: {
      ir: [
        zeros(0, 0x50),
        [0x0000, '>i', 2301, 'lowfirst'],
        [0x0002, '>i', 2299, 'lowfirst'],
        [0x0004, '>i', 2310, 'lowfirst'],
        [0x000c, '>i', 10000, 'lowfirst'],
        [0x000e, '>i', 16000, 'lowfirst'],
        [0x0010, '>i', 5000, 'lowfirst'],
        [0x0028, '>i', 73700, 'lowfirst'],
        [0x0033, '>h', 500],
        [0x0034, '>i', 7654321, 'lowfirst'], // kWh(+) TOT, 0.1 kWh
        [0x004e, '>i', 1111, 'lowfirst'], // kWh(-) TOT
      ],
    },
    // Orno OR-WE-514/515 register description (via mbmd orno1p.go): FC03 unsigned.
    9: {
      hr: [
        zeros(0x130, 0x30),
        [0x130, '>H', 5000], // 0.01 Hz
        [0x131, '>H', 23045], // 0.01 V
        [0x139, '>I', 16250], // mA
        [0x140, '>I', 3744], // W
        zeros(0xa000, 0x20),
        [0xa000, '>I', 7000000], // 0.01 kWh: 70,000 kWh, the high word is 0x006A
        [0xa002, '>I', 4000000], // tariff 1
        [0xa004, '>I', 3000000], // tariff 2
      ],
    },
    // Orno OR-WE-516/517 (via mbmd orno3p.go): FC03 float32, power in kW.
    10: {
      hr: [
        zeros(0, 0x40),
        zeros(0x100, 0x48),
        [0x000e, '>f', 230.1],
        [0x0010, '>f', 229.9],
        [0x0012, '>f', 231],
        [0x0014, '>f', 50],
        [0x0016, '>f', 10],
        [0x0018, '>f', 16],
        [0x001a, '>f', 5],
        [0x001c, '>f', 7.37],
        [0x0100, '>f', 999], // total
        [0x0108, '>f', 876.5], // import
        [0x0110, '>f', 122.5], // export
      ],
    },
    // Finder 7M.24/7M.38 Modbus document (via mbmd finder7m24.go, finder7m38.go): FC04 float32, energy in Wh.
    11: {
      ir: [
        zeros(2500, 100),
        zeros(2752, 8),
        [2500, '>f', 230.4],
        [2516, '>f', 16.25],
        [2536, '>f', 3744],
        [2584, '>f', 50],
        [2752, '>f', 1234567], // import, Wh
        [2756, '>f', 5], // export, Wh
      ],
    },
    12: {
      ir: [
        zeros(2500, 100),
        zeros(2752, 8),
        [2500, '>f', 230.1],
        [2502, '>f', 229.9],
        [2504, '>f', 231],
        [2516, '>f', 10],
        [2518, '>f', 16],
        [2520, '>f', 5],
        [2536, '>f', 7370],
        [2584, '>f', 50],
        [2752, '>f', 8765432],
        [2756, '>f', 17],
      ],
    },
  },
}

const MODELS: [number, string][] = [
  [1, 'eastron-sdm230'],
  [2, 'eastron-sdm72d-m-v2'],
  [3, 'abb-b21'],
  [4, 'abb-b23'],
  [5, 'abb-b23'],
  [6, 'carlo-gavazzi-em111'],
  [7, 'carlo-gavazzi-em111'],
  [8, 'carlo-gavazzi-em340'],
  [9, 'orno-we514'],
  [10, 'orno-we516'],
  [11, 'finder-7m24'],
  [12, 'finder-7m38'],
]

/** The serial registers' values (ABB u32, Carlo Gavazzi text): they ride on each reading. */
const SERIALS: Record<number, string> = { 3: '12345678', 4: '87654321', 5: '555', 6: 'ET11201', 7: 'EM11177' }

const mean3 = (a: number, b: number, c: number): number => Number(((a + b + c) / 3).toPrecision(12))

/** What each meter must read: import energy in Wh, never total or export. */
const EXPECTED: Record<number, { voltageV: number; currentA: number; powerW: number; energyWh: number }> = {
  1: { voltageV: 231.5, currentA: 7.25, powerW: 1678.4, energyWh: 1_234_500 },
  2: { voltageV: mean3(230.1, 229.9, 231), currentA: 9, powerW: 4321, energyWh: 5_678_900 },
  3: { voltageV: 230.4, currentA: 16.25, powerW: 3744, energyWh: 1_234_567_890 },
  4: { voltageV: mean3(230.1, 229.9, 231), currentA: 16, powerW: 7370, energyWh: 420 },
  5: { voltageV: 230, currentA: 0, powerW: 0, energyWh: 70 },
  6: { voltageV: 230.4, currentA: 16.25, powerW: 3744, energyWh: 123_456_700 },
  7: { voltageV: 229.1, currentA: 0.5, powerW: 114.6, energyWh: 7_000_000 },
  8: { voltageV: mean3(230.1, 229.9, 231), currentA: 16, powerW: 7370, energyWh: 765_432_100 },
  9: { voltageV: 230.45, currentA: 16.25, powerW: 3744, energyWh: 70_000_000 },
  10: { voltageV: mean3(230.1, 229.9, 231), currentA: 16, powerW: 7370, energyWh: 876_500 },
  11: { voltageV: 230.4, currentA: 16.25, powerW: 3744, energyWh: 1_234_567 },
  12: { voltageV: mean3(230.1, 229.9, 231), currentA: 16, powerW: 7370, energyWh: 8_765_432 },
}

t.test('every new meter model reads import energy, power, current and voltage from its published map', async (t) => {
  const peer = await startRegisterPeer(layout, { tcp: true })
  t.teardown(() => peer.kill())
  const cfg = siteConfig(
    [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: peer.port, timeoutMs: 500, retries: 0 }],
    MODELS.map(([unit, model]) => ({ id: `M${unit}`, bus: 'lan', meter: { model, unit }, plan: 'p' })),
  )
  const site: SiteIO = await openSite(cfg, { now: () => 7 })
  t.teardown(() => site.close())
  await site.bus('lan').scheduler.waitOpen(20_000)
  for (const [unit, model] of MODELS) {
    const serial = SERIALS[unit] !== undefined ? { meterSerial: SERIALS[unit] } : {}
    t.same(await site.outlet(`M${unit}`).read(), { ts: 7, ...EXPECTED[unit]!, ...serial }, `${model} at unit ${unit}`)
  }

  t.test('the serial number is read again after a failed read: a swapped meter shows', async (t) => {
    await peer.set(4, 'hr', [0x8900, '>I', 11112222])
    t.equal((await site.outlet('M4').read()).meterSerial, '87654321', 'not re-read while the meter keeps answering')
    await peer.silence(4, true)
    await t.rejects(site.outlet('M4').read(), { code: 'MODBUS_TIMEOUT' })
    await peer.silence(4, false)
    t.equal((await site.outlet('M4').read()).meterSerial, '11112222')
  })

  t.test('a "not available" value or a NaN is a bad reading, never a number', async (t) => {
    const bad = async (unit: number, re: RegExp): Promise<void> => {
      await t.rejects(site.outlet(`M${unit}`).read(), { code: 'READING_INVALID', message: re }, `unit ${unit}`)
    }
    // ABB: all-FF import (unsigned), 0x7FFFFFFF power (signed).
    await peer.set(3, 'hr', [0x5000, 'words', ALL_FF(4)])
    await bad(3, /energyWh is NaN.*energyWh \(FC3 @0x5000\) is "not available"/)
    await peer.set(3, 'hr', [0x5000, '>Q', 123456789])
    await peer.set(3, 'hr', [0x5b14, '>i', 0x7fffffff])
    await bad(3, /powerW is NaN.*powerW \(FC3 @0x5B14\) is "not available"/)
    await peer.set(3, 'hr', [0x5b14, '>i', 374400])
    t.same(await site.outlet('M3').read(), { ts: 7, ...EXPECTED[3]!, meterSerial: '12345678' }, 'and a number again once the meter has one')
    // A B23/B24 phase that is "not available" spoils the combined current and voltage too.
    await peer.set(4, 'hr', [0x5b0e, 'words', ALL_FF(2)])
    await bad(4, /currentA is NaN.*currentA \(FC3 @0x5B0E\)/)
    // The float meters: IEEE-754 NaN in the import register.
    for (const [unit, table, address] of [
      [1, 'ir', 0x48],
      [2, 'ir', 0x48],
      [10, 'hr', 0x108],
      [11, 'ir', 2752],
      [12, 'ir', 2752],
    ] as const) {
      await peer.set(unit, table, [address, 'words', [0x7fc0, 0x0000]])
      await bad(unit, /energyWh is NaN/)
    }
  })
})

t.test('outpost scan names each model, its own model text and its serial number', async (t) => {
  const peer = await startRegisterPeer(layout, { tcp: true })
  t.teardown(() => peer.kill())
  const bus = siteConfig(
    [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: peer.port, timeoutMs: 1000, retries: 0 }],
    [{ id: 'x', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'p' }],
  ).buses[0]!
  const hits = await scanBus(bus, parseUnits('1-13'), { now: () => 0 })
  t.same(
    hits.map((h) => [h.unit, h.model, h.variant ?? null, h.serial ?? null, h.alternatives ?? []]),
    [
      // SDM230 and SDM120 share every register read: the scan says so rather than guess.
      [1, 'eastron-sdm120', null, null, ['eastron-sdm230']],
      [2, 'eastron-sdm630', null, null, ['eastron-sdm72d-m-v2']],
      [3, 'abb-b21', 'B21', '12345678', []],
      [4, 'abb-b23', 'B24', '87654321', []],
      [5, 'abb-b23', 'B23', '555', []],
      [6, 'carlo-gavazzi-em111', 'ET112 (ET112DINAV01XS1X)', 'ET11201', []],
      [7, 'carlo-gavazzi-em111', null, 'EM11177', []],
      [8, 'carlo-gavazzi-em340', null, null, []],
      [9, 'orno-we514', null, null, []],
      [10, 'orno-we516', null, null, []],
      [11, 'finder-7m24', null, null, []],
      [12, 'finder-7m38', null, null, []],
    ],
  )
  t.match(hits.find((h) => h.unit === 4)!.detail, /^B24 {2}serial 87654321 {2}230\.333333333 V {2}16 A {2}7370 W {2}420 Wh$/)
  // The CLI prints the same: the model, its own name for itself and its serial; models it cannot tell apart.
  const cli = await run(
    process.execPath,
    [packagePath('dist', 'daemon', 'cli.js'), 'scan', '--bus', `tcp://127.0.0.1:${peer.port}`, '--units', '1,4,6'],
    {
      timeout: 60_000,
    },
  )
  t.match(cli.stdout, /^1\s+meter\s+eastron-sdm120\s+231\.5 V .*\(same registers: eastron-sdm230\)$/m)
  t.match(cli.stdout, /^4\s+meter\s+abb-b23\s+B24 {2}serial 87654321 /m)
  t.match(cli.stdout, /^6\s+meter\s+carlo-gavazzi-em111\s+ET112 \(ET112DINAV01XS1X\) {2}serial ET11201 /m)
})

t.test('Orno WE-514/515: 8E1 from the factory; read over RTU at even parity; a silent one on an 8N1 bus says why', async (t) => {
  t.same(new ModelRegistry().get('orno-we514').serialDefaults, { baudRate: 9600, parity: 'even', dataBits: 8, stopBits: 1 })
  t.equal(new ModelRegistry().get('orno-we516').serialDefaults?.parity, 'even')
  const pair = await ptyPair()
  t.teardown(() => pair.close())
  // The gateway's end is opened 8E1. A pseudo-terminal carries bytes, not parity bits (and
  // pymodbus's serial server cannot open one at parity E), so the peer's end stays 8N1: what
  // this shows is the Orno map over a real RTU link set to 8E1, not a parity error.
  const peer = await startRegisterPeer({ units: { 9: layout.units[9]! } }, { rtu: pair.b })
  t.teardown(() => peer.kill())
  const bus = (parity: 'even' | 'none', id: string): Record<string, unknown> => ({
    id,
    type: 'modbus-rtu',
    path: pair.a,
    baudRate: 9600,
    parity,
    timeoutMs: 300,
    retries: 0,
  })
  const site = await openSite(siteConfig([bus('even', 'rs485')], [{ id: 'O', bus: 'rs485', meter: { model: 'orno-we514', unit: 9 }, plan: 'p' }]), {
    now: () => 9,
  })
  t.teardown(() => site.close())
  await site.bus('rs485').scheduler.waitOpen(20_000)
  t.same(await site.outlet('O').read(), { ts: 9, ...EXPECTED[9]! })
  await site.close()
  // A unit that never answers on a bus set 8N1: the timeout names the Orno's factory 8E1.
  const wrong = await openSite(siteConfig([bus('none', 'wrong')], [{ id: 'Q', bus: 'wrong', meter: { model: 'orno-we514', unit: 19 }, plan: 'p' }]), {
    now: () => 9,
  })
  t.teardown(() => wrong.close())
  await wrong.bus('wrong').scheduler.waitOpen(20_000)
  await t.rejects(wrong.outlet('Q').read(), {
    code: 'MODBUS_TIMEOUT',
    message: /unit 19 did not answer.*\(model orno-we514 ships set to 9600 8E1; bus wrong runs 9600 8N1\)/,
  })
})
