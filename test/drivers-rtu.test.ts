import t, { type Test } from 'tap'
import { openSite, type SiteIO } from '../drivers/site.js'
import type { OutpostError } from '../daemon/errors.js'
import { startPymodbus, siteConfig, ptyPair, eventually, type PtyPair, type PyServer } from './fixtures/drivers-helpers.js'

let clock = 1_700_000_000_000
const now = (): number => clock

async function rtuSite(t: Test, outlets: unknown[], busExtra: Record<string, unknown> = {}): Promise<{ pair: PtyPair; py: PyServer; site: SiteIO }> {
  const pair = await ptyPair()
  t.teardown(() => pair.close())
  const py = await startPymodbus({ rtu: pair.b })
  t.teardown(() => py.kill())
  const cfg = siteConfig([{ id: 'rs485', type: 'modbus-rtu', path: pair.a, baudRate: 9600, timeoutMs: 1000, retries: 1, ...busExtra }], outlets)
  const site = await openSite(cfg, { now, scheduler: { backoffAfter: 2, backoffMinMs: 60_000, reopenMinMs: 100, reopenMaxMs: 500 } })
  t.teardown(() => site.close())
  await site.bus('rs485').scheduler.waitOpen(20_000)
  return { pair, py, site }
}

const meters = [1, 2, 3, 4, 5, 6].map((n) => ({
  id: `M${n}`,
  bus: 'rs485',
  meter: { model: 'eastron-sdm120', unit: n },
  relay: { model: 'modbus-coil', unit: 100, coil: n - 1 },
  plan: 'p',
}))

function expected(n: number): { voltageV: number; currentA: number; powerW: number; energyWh: number } {
  const v = Number(Math.fround(229.8 + n / 10).toPrecision(7))
  return {
    voltageV: v,
    currentA: 0.5 * n,
    powerW: Number(Math.fround(Math.round((229.8 + n / 10) * 0.5 * n * 10) / 10).toPrecision(7)),
    energyWh: Number((Number(Math.fround(12.345 * n).toPrecision(7)) * 1000).toPrecision(12)),
  }
}

t.test('RTU over a pty pair: many concurrent callers on one bus never interleave frames', async (t) => {
  const { site } = await rtuSite(t, [...meters, { id: 'T', bus: 'rs485', meter: { model: 'eastron-sdm630', unit: 10 }, plan: 'p' }])
  // 6 meters × 5 rounds + relay commands, all issued at once.
  const jobs: Promise<unknown>[] = []
  for (let round = 0; round < 5; round++) {
    for (let n = 1; n <= 6; n++)
      jobs.push(
        site
          .outlet(`M${n}`)
          .read()
          .then((r) => ({ n, r })),
      )
    jobs.push(
      site
        .outlet('T')
        .read()
        .then((r) => ({ n: 10, r })),
    )
  }
  jobs.push(
    site
      .outlet('M2')
      .setRelay(true)
      .then(() => 'relay'),
  )
  const results = await Promise.all(jobs)
  for (const res of results) {
    if (res === 'relay') continue
    const { n, r } = res as { n: number; r: Record<string, number> }
    if (n === 10) t.same(r, { ts: clock, voltageV: 230.2, currentA: 6.25, powerW: 3456.7, energyWh: 987654 }, 'SDM630')
    else t.same(r, { ts: clock, ...expected(n) }, `meter ${n}`)
  }
  t.equal(await site.outlet('M2').readRelay(), true)
  const h = site.health()[0]!
  t.equal(h.crcErrors + h.garbage + h.timeouts, 0, 'no bad frames: nothing interleaved')
  t.equal(h.strayBytes, 0)
})

t.test('relay commands go ahead of queued polls', async (t) => {
  const { site } = await rtuSite(t, meters)
  const order: string[] = []
  const jobs: Promise<void>[] = []
  for (let i = 0; i < 6; i++)
    jobs.push(
      site
        .outlet(`M${i + 1}`)
        .read()
        .then(() => {
          order.push(`poll${i + 1}`)
        }),
    )
  jobs.push(
    site
      .outlet('M3')
      .setRelay(true)
      .then(() => {
        order.push('relay')
      }),
  )
  await Promise.all(jobs)
  // The first poll was already on the wire; the relay command overtakes the rest.
  t.ok(order.indexOf('relay') <= 1, `relay ran early: ${order.join(',')}`)
})

t.test('relay write is confirmed by reading it back; a stuck coil is RELAY_MISMATCH', async (t) => {
  const { site } = await rtuSite(t, [
    ...meters.slice(0, 1),
    { id: 'STUCK', bus: 'rs485', meter: { model: 'eastron-sdm120', unit: 2 }, relay: { model: 'modbus-coil', unit: 100, coil: 15 }, plan: 'p' },
    { id: 'H', bus: 'rs485', meter: { model: 'eastron-sdm120', unit: 3 }, relay: { model: 'modbus-holding', unit: 101, register: 2 }, plan: 'p' },
  ])
  await site.outlet('M1').setRelay(true)
  t.equal(await site.outlet('M1').readRelay(), true)
  await site.outlet('M1').setRelay(false)
  t.equal(await site.outlet('M1').readRelay(), false)
  await t.rejects(site.outlet('STUCK').setRelay(true), { code: 'RELAY_MISMATCH' })
  await site.outlet('H').setRelay(true)
  t.equal(await site.outlet('H').readRelay(), true)
  await site.outlet('H').setRelay(false)
  t.equal(await site.outlet('H').readRelay(), false)
})

t.test('timeouts, exceptions, CRC errors and garbage are reported per device; the others keep being served', async (t) => {
  const { site, py } = await rtuSite(t, [
    ...meters,
    { id: 'ABSENT', bus: 'rs485', meter: { model: 'eastron-sdm120', unit: 7 }, plan: 'p' },
    { id: 'SMALL', bus: 'rs485', meter: { model: 'eastron-sdm120', unit: 11 }, plan: 'p' },
  ])
  await py.fault(4, 'crc')
  await py.fault(5, 'garbage')
  await py.fault(6, 'noise')
  const settled = await Promise.allSettled(['M1', 'M2', 'M3', 'M4', 'M5', 'M6', 'ABSENT', 'SMALL', 'M1'].map((id) => site.outlet(id).read()))
  const code = (i: number): string | undefined =>
    settled[i]!.status === 'rejected' ? ((settled[i] as PromiseRejectedResult).reason as OutpostError).code : undefined
  t.same(
    settled.slice(0, 3).map((s) => s.status),
    ['fulfilled', 'fulfilled', 'fulfilled'],
  )
  t.equal(code(3), 'MODBUS_CRC')
  t.equal(code(4), 'MODBUS_GARBAGE')
  t.equal(settled[5]!.status, 'fulfilled', 'noise before a valid frame is skipped')
  t.same((settled[5] as PromiseFulfilledResult<unknown>).value, { ts: clock, ...expected(6) })
  t.equal(code(6), 'MODBUS_TIMEOUT')
  t.equal(code(7), 'MODBUS_EXCEPTION')
  t.equal(settled[8]!.status, 'fulfilled', 'served after the failures')
  const h = site.health()[0]!
  const dev = (u: number) => h.devices.find((d) => d.unit === u)!
  t.equal(dev(4).lastError?.code, 'MODBUS_CRC')
  t.equal(dev(5).lastError?.code, 'MODBUS_GARBAGE')
  t.equal(dev(7).lastError?.code, 'MODBUS_TIMEOUT')
  t.equal(dev(11).lastError?.code, 'MODBUS_EXCEPTION')
  t.equal(dev(1).lastError, undefined)
  t.ok(h.timeouts >= 2, 'timeout retried once')
  t.ok(h.crcErrors >= 2 && h.garbage >= 2 && h.exceptions === 1)
  t.ok(h.garbageBytes > 0)

  // A second failure backs the silent device off (backoffAfter 2 here): refused without touching the wire.
  await t.rejects(site.outlet('ABSENT').read(), { code: 'MODBUS_TIMEOUT' })
  const before = site.health()[0]!.transactions
  await t.rejects(site.outlet('ABSENT').read(), { code: 'DEVICE_BACKOFF' })
  t.equal(site.health()[0]!.transactions, before)
  t.same(site.health()[0]!.backedOff, [7])
  // An exception is an answer: the device is alive and never backed off.
  await t.rejects(site.outlet('SMALL').read(), { code: 'MODBUS_EXCEPTION' })
  await t.rejects(site.outlet('SMALL').read(), { code: 'MODBUS_EXCEPTION' })
  // The back-off ends on the injected clock, and the device is tried again.
  clock += 61_000
  await t.rejects(site.outlet('ABSENT').read(), { code: 'MODBUS_TIMEOUT' })
  // A device that recovers is served again.
  await py.fault(4, 'none')
  t.same(await site.outlet('M4').read(), { ts: clock, ...expected(4) })
})

t.test('a late reply is never taken for the next exchange', async (t) => {
  const { site, py } = await rtuSite(t, meters.slice(0, 3), { retries: 0 })
  await py.fault(3, 'slow')
  await t.rejects(site.outlet('M3').read(), { code: 'MODBUS_TIMEOUT' })
  // Unit 3's reply arrives while unit 1's exchange is waiting: it is skipped, unit 1's is taken.
  t.same(await site.outlet('M1').read(), { ts: clock, ...expected(1) })
  t.ok(site.health()[0]!.garbageBytes >= 33, 'the late 33-byte reply was skipped')
  await py.fault(3, 'none')
  // Unit 3 again: a late block-1 reply must not be decoded as block 2.
  const r = await eventually(
    () => site.outlet('M3').read(),
    () => true,
  )
  t.same(r, { ts: clock, ...expected(3) })
  t.same(await site.outlet('M2').read(), { ts: clock, ...expected(2) })
})

t.test('the pty disappears and reappears (adapter unplugged): the bus reports the loss and recovers on its own', async (t) => {
  const { site, pair, py } = await rtuSite(t, meters.slice(0, 2))
  t.same(await site.outlet('M1').read(), { ts: clock, ...expected(1) })
  await py.kill()
  await pair.unplug()
  await eventually(
    () => site.health()[0]!.state,
    (s) => s === 'error',
  )
  await t.rejects(site.outlet('M1').read(), { code: 'BUS_CLOSED' })
  t.match(site.health()[0]!.lastError, { code: /BUS_/ })
  await pair.replug()
  const py2 = await startPymodbus({ rtu: pair.b })
  t.teardown(() => py2.kill())
  const r = await eventually(
    () => site.outlet('M2').read(),
    () => true,
    60_000,
  )
  t.same(r, { ts: clock, ...expected(2) })
  t.equal(site.health()[0]!.state, 'open')
  t.ok(site.health()[0]!.opens >= 2)
})

t.test('an absent port is a bus in error that keeps retrying, never a throw', async (t) => {
  const cfg = siteConfig(
    [
      { id: 'gone', type: 'modbus-rtu', path: '/dev/serial/by-id/usb-nothing-here', timeoutMs: 100 },
      { id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: 1, timeoutMs: 100 },
    ],
    [
      { id: 'X', bus: 'gone', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'p' },
      { id: 'Y', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'p' },
    ],
  )
  const site = await openSite(cfg, { now, scheduler: { reopenMinMs: 50, reopenMaxMs: 100 } })
  t.teardown(() => site.close())
  await eventually(
    () => site.health(),
    (h) => h.every((b) => b.state === 'error' && b.lastError?.code === 'BUS_OPEN_FAILED'),
  )
  await t.rejects(site.outlet('X').read(), { code: 'BUS_CLOSED' })
  await t.rejects(site.outlet('Y').read(), { code: 'BUS_CLOSED' })
  t.throws(() => site.outlet('nope'), { code: 'OUTLET_UNKNOWN' })
})
