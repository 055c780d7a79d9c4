/**
 * RS-485 line settings over an adapter that echoes: socat pty pairs with
 * test/fixtures/echo_relay.py between the gateway and pymodbus, writing every
 * request back to the gateway before forwarding it. `echo: true` consumes and
 * compares the echo; without it the first exchange names the fix; the frame silence
 * and the gap between requests are checked on the wire from the peer's side (lower
 * bounds only); a dropped reply is retried.
 */
import t, { type Test } from 'tap'
import { Writable } from 'node:stream'
import pino from 'pino'
import { openSite, type SiteIO } from '../drivers/site.js'
import { interFrameMs } from '../drivers/modbus.js'
import { parseUnits, scanBus } from '../drivers/scan.js'
import type { ModbusRequest, ModbusResponse } from '../drivers/modbus.js'
import type { BusScheduler } from '../drivers/scheduler.js'
import { echoLine, eventually, ptyPair, siteConfig, startPymodbus, type EchoLine, type WireEvent } from './fixtures/drivers-helpers.js'

const clock = 1_700_000_000_000
const now = (): number => clock

function sdm120(n: number): { voltageV: number; currentA: number; powerW: number; energyWh: number } {
  return {
    voltageV: Number(Math.fround(229.8 + n / 10).toPrecision(7)),
    currentA: 0.5 * n,
    powerW: Number(Math.fround(Math.round((229.8 + n / 10) * 0.5 * n * 10) / 10).toPrecision(7)),
    energyWh: Number((Number(Math.fround(12.345 * n).toPrecision(7)) * 1000).toPrecision(12)),
  }
}

const outlets = [
  { id: 'M1', bus: 'rs485', meter: { model: 'eastron-sdm120', unit: 1 }, relay: { model: 'modbus-coil', unit: 100, coil: 0 }, plan: 'p' },
  { id: 'M2', bus: 'rs485', meter: { model: 'eastron-sdm120', unit: 2 }, relay: { model: 'modbus-holding', unit: 101, register: 2 }, plan: 'p' },
  { id: 'T', bus: 'rs485', meter: { model: 'eastron-sdm630', unit: 10 }, plan: 'p' },
]

interface Captured {
  lines: Record<string, unknown>[]
}

async function echoSite(
  t: Test,
  bus: Record<string, unknown>,
  o: { extraBuses?: unknown[]; extraOutlets?: unknown[]; turnaroundMs?: number } = {},
): Promise<{ line: EchoLine; site: SiteIO; log: Captured }> {
  const line = await echoLine('modbus', { delayMs: o.turnaroundMs })
  t.teardown(() => line.close())
  const log: Captured = { lines: [] }
  const logger = pino(
    { level: 'info' },
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const l of chunk.toString().split('\n')) if (l) log.lines.push(JSON.parse(l) as Record<string, unknown>)
        cb()
      },
    }),
  )
  const cfg = siteConfig(
    [{ id: 'rs485', type: 'modbus-rtu', path: line.path, baudRate: 9600, timeoutMs: 1000, retries: 1, ...bus }, ...(o.extraBuses ?? [])],
    [...outlets, ...(o.extraOutlets ?? [])],
  )
  const site = await openSite(cfg, { now, logger, scheduler: { backoffAfter: 3, backoffMinMs: 60_000, reopenMinMs: 100, reopenMaxMs: 500 } })
  t.teardown(() => site.close())
  await site.bus('rs485').scheduler.waitOpen(20_000)
  return { line, site, log }
}

function modbus(site: SiteIO): BusScheduler<ModbusRequest, ModbusResponse> {
  return site.bus('rs485').scheduler as BusScheduler<ModbusRequest, ModbusResponse>
}

/** The gateway's silence before each request that followed a reply, as the peer saw it (a lower bound of the real one). */
function gapsAfterReplies(events: WireEvent[]): number[] {
  const gaps: number[] = []
  let lastRep: number | undefined
  let prev: WireEvent['0'] | undefined
  for (const [kind, ms] of events) {
    if (kind === 'rep') lastRep = ms
    else if (prev === 'rep' && lastRep !== undefined) gaps.push(ms - lastRep)
    prev = kind
  }
  return gaps
}

t.test('echo: true — reads, FC05 and FC06 writes with their read-back: the echo is consumed, never taken as the reply', async (t) => {
  const { site, line } = await echoSite(t, { echo: true })
  for (let round = 0; round < 3; round++) {
    t.same(await site.outlet('M1').read(), { ts: clock, ...sdm120(1) }, `SDM120 unit 1, round ${round}`)
    t.same(await site.outlet('M2').read(), { ts: clock, ...sdm120(2) }, `SDM120 unit 2, round ${round}`)
    t.same(await site.outlet('T').read(), { ts: clock, voltageV: 230.2, currentA: 6.25, powerW: 3456.7, energyWh: 987654 }, 'SDM630')
  }
  // FC05: the echo and the reply are the same 8 bytes; the first is the echo, the second the reply.
  await site.outlet('M1').setRelay(true)
  t.equal(await site.outlet('M1').readRelay(), true, 'coil closed')
  await site.outlet('M1').setRelay(false)
  t.equal(await site.outlet('M1').readRelay(), false, 'coil open')
  // FC06 likewise.
  await site.outlet('M2').setRelay(true)
  t.equal(await site.outlet('M2').readRelay(), true, 'holding register closed')
  await site.outlet('M2').setRelay(false)
  t.equal(await site.outlet('M2').readRelay(), false, 'holding register open')
  // The writes really reached the device: the echo alone would leave the coil where it was.
  const events = (await line.command({ cmd: 'log' })).events!
  const fc05 = events.filter(([k, , hex]) => k === 'rep' && hex.startsWith('6405'))
  t.ok(fc05.length >= 2, 'the device answered both FC05 writes')
  // Writes can be confirmed only by the device, never by the echo: a write to a unit that is not there fails.
  await t.rejects(
    modbus(site).submit(99, 'relay', (tx) => tx({ unit: 99, fc: 5, address: 0, value: true })),
    { code: 'MODBUS_TIMEOUT' },
    'an echo without a reply is a timeout',
  )
  const h = site.health()[0]!
  t.equal(h.echoErrors, 0)
  t.equal(h.garbageBytes, 0, 'no echo counted as garbage')
  t.equal(h.crcErrors, 0)
  t.ok(h.timeouts >= 1 && h.timeouts <= 2, 'only the silent relay board timed out (retried once)')
})

t.test('echo: true — a mismatched echo is a bus error, never a reply; retried like a bad frame', async (t) => {
  const { site, line } = await echoSite(t, { echo: true, retries: 0 })
  await line.command({ cmd: 'corrupt', n: 1 })
  await t.rejects(site.outlet('M1').read(), { code: 'BUS_ECHO_MISMATCH', message: /echo .* differs from the request/ })
  t.equal(site.health()[0]!.echoErrors, 1)
  // The device's reply to the corrupted exchange was flushed, not taken by the next one.
  t.same(await site.outlet('M2').read(), { ts: clock, ...sdm120(2) })
  t.same(await site.outlet('M1').read(), { ts: clock, ...sdm120(1) })
  const d1 = site.health()[0]!.devices.find((d) => d.unit === 1)!
  t.equal(d1.consecutiveFailures, 0, 'a line error does not count against the meter')
})

t.test('echo: true — a mismatched echo is retried', async (t) => {
  const { site, line } = await echoSite(t, { echo: true, retries: 1 })
  await line.command({ cmd: 'corrupt', n: 1 })
  t.same(await site.outlet('M1').read(), { ts: clock, ...sdm120(1) }, 'the retry succeeds')
  const h = site.health()[0]!
  t.equal(h.echoErrors, 1)
  t.equal(h.retries, 1)
  // A corrupted echo of a write: the write is retried and confirmed by the device.
  await line.command({ cmd: 'corrupt', n: 1 })
  await site.outlet('M1').setRelay(true)
  t.equal(await site.outlet('M1').readRelay(), true)
  t.equal(site.health()[0]!.echoErrors, 2)
})

/** Reads M1 once and returns the device's reply to its first block, as it went on the wire (hex). */
async function m1Reply(t: Test, site: SiteIO, line: EchoLine): Promise<string> {
  await line.command({ cmd: 'log' })
  t.same(await site.outlet('M1').read(), { ts: clock, ...sdm120(1) })
  const events = (await line.command({ cmd: 'log' })).events!
  const at = events.findIndex(([k]) => k === 'rep')
  let reply = ''
  for (let i = at; i < events.length && events[i]![0] === 'rep'; i++) reply += events[i]![2]
  return reply
}

t.test("echo: true — another unit's late reply, whole, and the echo only a moment later: skipped, never a collision", async (t) => {
  const { site, line } = await echoSite(t, { echo: true, retries: 0 })
  const reply = await m1Reply(t, site, line)
  // Unit 1's reply reaches the gateway on its own, 50 ms before the echo of unit 2's request.
  await line.command({ cmd: 'stale', hex: reply, gapMs: 50 })
  const before = site.health()[0]!.garbageBytes
  t.same(await site.outlet('M2').read(), { ts: clock, ...sdm120(2) })
  const h = site.health()[0]!
  t.equal(h.garbageBytes - before, reply.length / 2, 'the late reply was skipped and counted')
  t.equal(h.echoErrors, 0, 'no collision')
})

t.test('echo: true — a late reply ahead of the echo is skipped, never a config error', async (t) => {
  const { site, line } = await echoSite(t, { echo: true, retries: 0 })
  // The reply to M1's first block, as the device sent it: replay it ahead of the next echo.
  const reply = await m1Reply(t, site, line)
  await line.command({ cmd: 'stale', hex: reply })
  const before = site.health()[0]!.garbageBytes
  t.same(await site.outlet('M1').read(), { ts: clock, ...sdm120(1) })
  const h = site.health()[0]!
  t.equal(h.garbageBytes - before, reply.length / 2, 'the late reply was skipped and counted')
  t.equal(h.lastError, undefined, 'no echo diagnosis')
  t.equal(h.echoErrors, 0)
})

t.test('echo off on an echoing adapter: the first exchange names the fix, logged once; another bus is unaffected', async (t) => {
  const plain = await ptyPair()
  t.teardown(() => plain.close())
  const py = await startPymodbus({ rtu: plain.b })
  t.teardown(() => py.kill())
  const { site, log } = await echoSite(
    t,
    {},
    {
      extraBuses: [{ id: 'other', type: 'modbus-rtu', path: plain.a, baudRate: 9600, timeoutMs: 1000, retries: 1 }],
      extraOutlets: [{ id: 'O1', bus: 'other', meter: { model: 'eastron-sdm120', unit: 3 }, plan: 'p' }],
    },
  )
  await site.bus('other').scheduler.waitOpen(20_000)
  for (let i = 0; i < 4; i++) {
    await t.rejects(
      site.outlet('M1').read(),
      { code: 'BUS_ECHO_UNEXPECTED', message: /the adapter echoes requests back: set echo: true on bus "rs485"/ },
      `poll ${i + 1} fails with the diagnosis`,
    )
    t.same(await site.outlet('O1').read(), { ts: clock, ...sdm120(3) }, `the other bus is served (poll ${i + 1})`)
  }
  // The relay command is sent (opening a relay is always attempted) but cannot be confirmed.
  await t.rejects(site.outlet('M1').setRelay(false), { code: 'BUS_ECHO_UNEXPECTED' })
  const said = log.lines.filter((l) => l.code === 'BUS_ECHO_UNEXPECTED')
  t.equal(said.length, 1, 'logged once')
  t.match(said[0], { level: 50, bus: 'rs485', err: /set echo: true on bus "rs485"/ })
  const h = site.health().find((b) => b.id === 'rs485')!
  t.equal(h.lastError?.code, 'BUS_ECHO_UNEXPECTED', 'the bus reports it')
  t.equal(h.state, 'open')
  t.same(h.backedOff, [], 'a config error backs no device off')
  t.equal(h.retries, 0, 'and is not retried')
  t.equal(site.health().find((b) => b.id === 'other')!.lastError, undefined)
})

t.test('echo off on an echoing adapter: an FC05 "reply" that was the echo is found out by its second copy', async (t) => {
  // The device answers 50 ms after the request, so the echo comes back alone first.
  const { site } = await echoSite(t, {}, { turnaroundMs: 50 })
  const s = modbus(site)
  // A lone FC05 job: its first copy is indistinguishable from a reply and is taken.
  const first = await s.submit(100, 'relay', (tx) => tx({ unit: 100, fc: 5, address: 3, value: true }))
  t.same(first.data, Buffer.from([0, 3, 0xff, 0]))
  // The device's reply, the second copy, arrives after it: the adapter echoes. The next
  // exchange, even another lone write, is refused with the diagnosis.
  await eventually(
    () => s.submit(100, 'relay', (tx) => tx({ unit: 100, fc: 6, address: 4, value: 1 }).then(() => 'taken')).catch((e: { code: string }) => e.code),
    (code) => code === 'BUS_ECHO_UNEXPECTED',
    10_000,
  )
  await t.rejects(
    s.submit(101, 'relay', (tx) => tx({ unit: 101, fc: 6, address: 2, value: 1 })),
    { code: 'BUS_ECHO_UNEXPECTED' },
    'known to echo: every exchange fails until the config says echo: true',
  )
})

t.test('echo: true on an adapter that does not echo: the reply without its echo names the fix', async (t) => {
  const { site, line } = await echoSite(t, { echo: true })
  await line.command({ cmd: 'echo', on: false })
  await t.rejects(site.outlet('M1').read(), {
    code: 'BUS_ECHO_MISSING',
    message: /without the echo of its request: the adapter does not echo, remove echo: true from bus "rs485"/,
  })
  // An FC05 reply is consumed as the echo, then nothing: a timeout that says why it may be.
  await t.rejects(
    modbus(site).submit(100, 'relay', (tx) => tx({ unit: 100, fc: 5, address: 1, value: true })),
    {
      code: 'MODBUS_TIMEOUT',
      message: /one copy of the request came back.*remove echo: true from bus "rs485"/,
    },
  )
})

t.test('the frame silence (3.5 characters) and the gap between requests hold on the wire', async (t) => {
  await t.test('1200 baud: 3.5 characters of 10 bits = 29.2 ms before every request', async (t) => {
    const { site, line } = await echoSite(t, { echo: true, baudRate: 1200 })
    await line.command({ cmd: 'log' })
    for (let i = 0; i < 3; i++) {
      await site.outlet('M1').read()
      await site.outlet('T').read()
      await site.outlet('M1').setRelay(i % 2 === 0)
    }
    const gaps = gapsAfterReplies((await line.command({ cmd: 'log' })).events!)
    const want = interFrameMs(1200, 10)
    t.ok(gaps.length >= 12, `${gaps.length} requests followed a reply`)
    t.ok(Math.abs(want - 29.1667) < 0.001)
    t.ok(Math.min(...gaps) >= want, `every gap ≥ ${want.toFixed(2)} ms (smallest ${Math.min(...gaps).toFixed(2)} ms)`)
  })
  await t.test('requestGapMs: 60 at 38400 baud (frame silence 1.75 ms)', async (t) => {
    const { site, line } = await echoSite(t, { echo: true, baudRate: 38400, requestGapMs: 60 })
    await line.command({ cmd: 'log' })
    for (let i = 0; i < 3; i++) {
      await site.outlet('M2').read()
      await site.outlet('M2').setRelay(i % 2 === 0)
    }
    const gaps = gapsAfterReplies((await line.command({ cmd: 'log' })).events!)
    t.ok(gaps.length >= 9, `${gaps.length} requests followed a reply`)
    t.ok(Math.min(...gaps) >= 60, `every gap ≥ 60 ms (smallest ${Math.min(...gaps).toFixed(2)} ms)`)
  })
})

t.test('a dropped reply is retried on an echo bus; without retries it is a timeout', async (t) => {
  const { site, line } = await echoSite(t, { echo: true, retries: 1, timeoutMs: 300 })
  await line.command({ cmd: 'drop', n: 1 })
  t.same(await site.outlet('M1').read(), { ts: clock, ...sdm120(1) }, 'served by the retry')
  let h = site.health()[0]!
  t.equal(h.timeouts, 1)
  t.equal(h.retries, 1)
  // A dropped FC05 reply: the echo alone never confirms the write; the retry does.
  await line.command({ cmd: 'drop', n: 1 })
  await site.outlet('M1').setRelay(true)
  t.equal(await site.outlet('M1').readRelay(), true)
  h = site.health()[0]!
  t.equal(h.timeouts, 2)
  t.equal(h.retries, 2)
  // Two dropped in a row exhaust retries: 1.
  await line.command({ cmd: 'drop', n: 2 })
  await t.rejects(site.outlet('M2').read(), { code: 'MODBUS_TIMEOUT' })
  t.same(await site.outlet('M2').read(), { ts: clock, ...sdm120(2) }, 'and the next poll is served')
})

t.test('a plain serial bus (line protocol) behind an echoing adapter', async (t) => {
  const line = await echoLine('serial')
  t.teardown(() => line.close())
  const serialOutlets = [1, 2].map((n) => ({
    id: `S${n}`,
    bus: 'ser',
    meter: { model: 'outpost-serial', unit: n },
    relay: { model: 'outpost-serial', unit: n },
    plan: 'p',
  }))
  const open = async (bus: Record<string, unknown>): Promise<SiteIO> => {
    const site = await openSite(siteConfig([{ id: 'ser', type: 'serial', path: line.path, timeoutMs: 1000, retries: 0, ...bus }], serialOutlets), {
      now,
    })
    t.teardown(() => site.close())
    await site.bus('ser').scheduler.waitOpen(20_000)
    return site
  }
  const s1 = { ts: clock, voltageV: 230.5, currentA: 0, powerW: 0, energyWh: 1000.5 }

  await t.test('echo: true consumes and compares the echoed line', async (t) => {
    const site = await open({ echo: true })
    t.same(await site.outlet('S1').read(), s1)
    await site.outlet('S2').setRelay(true)
    t.equal(await site.outlet('S2').readRelay(), true)
    await site.outlet('S2').setRelay(false)
    await line.command({ cmd: 'corrupt', n: 1 })
    await t.rejects(site.outlet('S1').read(), { code: 'BUS_ECHO_MISMATCH' })
    t.same(await site.outlet('S1').read(), s1, 'served again after the bad echo')
    t.equal(site.health()[0]!.echoErrors, 1)
    await site.close()
  })
  await t.test('without echo an echoed request line is skipped (it never parses as a reply)', async (t) => {
    const site = await open({})
    t.same(await site.outlet('S1').read(), s1)
    t.equal(site.health()[0]!.garbageBytes, 0)
    await site.close()
  })
  await t.test('echo: true on an adapter that does not echo names the fix', async (t) => {
    const site = await open({ echo: true })
    await line.command({ cmd: 'echo', on: false })
    await t.rejects(site.outlet('S1').read(), { code: 'BUS_ECHO_MISSING', message: /remove echo: true from bus "ser"/ })
    await line.command({ cmd: 'echo', on: true })
    await site.close()
  })
})

t.test('outpost scan behind an echoing adapter: --echo finds the devices; without it the scan stops with the diagnosis', async (t) => {
  const line = await echoLine()
  t.teardown(() => line.close())
  const bus = (extra: Record<string, unknown>) =>
    siteConfig(
      [{ id: 'scan', type: 'modbus-rtu', path: line.path, timeoutMs: 200, retries: 0, ...extra }],
      [{ id: 'x', bus: 'scan', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'p' }],
    ).buses[0]!
  const hits = await scanBus(bus({ echo: true }), parseUnits('1,7,100'), { now })
  t.same(
    hits.map((h) => [h.unit, h.kind, h.model]),
    [
      [1, 'meter', 'eastron-sdm120'],
      [100, 'relay', 'modbus-coil'],
    ],
  )
  await t.rejects(scanBus(bus({}), parseUnits('1-10'), { now }), { code: 'BUS_ECHO_UNEXPECTED' }, 'no unit is reported as answering')
})
