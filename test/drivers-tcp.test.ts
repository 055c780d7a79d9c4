import t from 'tap'
import { openSite } from '../drivers/site.js'
import { startPymodbus, siteConfig } from './fixtures/drivers-helpers.js'

const now = (): number => 1_700_000_000_000

t.test('Modbus TCP against pymodbus: block reads decode SDM120 and SDM630 exactly', async (t) => {
  const py = await startPymodbus({ tcp: true })
  t.teardown(() => py.kill())
  const cfg = siteConfig(
    [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: py.port, timeoutMs: 1000 }],
    [
      { id: 'A1', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, relay: { model: 'modbus-coil', unit: 100, coil: 0 }, plan: 'p' },
      { id: 'A3', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 3 }, plan: 'p' },
      { id: 'T', bus: 'lan', meter: { model: 'eastron-sdm630', unit: 10 }, relay: { model: 'modbus-holding', unit: 101, register: 4 }, plan: 'p' },
    ],
  )
  const site = await openSite(cfg, { now })
  t.teardown(() => site.close())
  await site.bus('lan').scheduler.waitOpen(20_000)
  t.same(await site.outlet('A1').read(), { ts: now(), voltageV: 229.9, currentA: 0.5, powerW: 115, energyWh: 12345 })
  t.same(await site.outlet('A3').read(), { ts: now(), voltageV: 230.1, currentA: 1.5, powerW: 345.2, energyWh: 37035 })
  t.same(await site.outlet('T').read(), { ts: now(), voltageV: 230.2, currentA: 6.25, powerW: 3456.7, energyWh: 987654 })
  t.equal(site.outlet('A3').hasRelay, false)
  // SDM120: two blocks (0..13 and 70..73), so 2 transactions per read.
  const h = site.health()[0]!
  t.equal(h.state, 'open')
  t.equal(h.devices.find((d) => d.unit === 1)?.transactions, 2)
})

t.test('Modbus TCP: a refused or dropped connection is a bus in error that reconnects on its own', async (t) => {
  const { startSim } = await import('../drivers/sim.js')
  const { eventually } = await import('./fixtures/drivers-helpers.js')
  let sim = await startSim({ outlets: 1, port: 0, speed: 0, script: false })
  const port = sim.port
  t.teardown(() => sim.close())
  const cfg = siteConfig(
    [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port, timeoutMs: 500 }],
    [{ id: 'A1', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'p' }],
  )
  const site = await openSite(cfg, { now, scheduler: { reopenMinMs: 50, reopenMaxMs: 200 } })
  t.teardown(() => site.close())
  await site.bus('lan').scheduler.waitOpen(20_000)
  t.equal((await site.outlet('A1').read()).currentA, 0)
  await sim.close()
  await eventually(
    () => site.health()[0]!.state,
    (s) => s === 'error',
  )
  await t.rejects(site.outlet('A1').read(), { code: 'BUS_CLOSED' })
  sim = await startSim({ outlets: 1, port, speed: 0, script: false })
  const r = await eventually(
    () => site.outlet('A1').read(),
    () => true,
  )
  t.equal(r.currentA, 0)
  t.ok(site.health()[0]!.opens >= 2)
})

t.test('Modbus TCP: garbage instead of a frame fails that device and the connection is rebuilt', async (t) => {
  const { eventually } = await import('./fixtures/drivers-helpers.js')
  const py = await startPymodbus({ tcp: true })
  t.teardown(() => py.kill())
  const cfg = siteConfig(
    [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: py.port, timeoutMs: 1000 }],
    [1, 5].map((n) => ({ id: `A${n}`, bus: 'lan', meter: { model: 'eastron-sdm120', unit: n }, plan: 'p' })),
  )
  const site = await openSite(cfg, { now, scheduler: { reopenMinMs: 50, reopenMaxMs: 200 } })
  t.teardown(() => site.close())
  t.ok(await site.ready(20_000))
  await py.fault(5, 'garbage')
  await t.rejects(site.outlet('A5').read(), { code: 'MODBUS_GARBAGE' })
  t.equal(site.health()[0]!.devices.find((d) => d.unit === 5)?.lastError?.code, 'MODBUS_GARBAGE')
  const r = await eventually(
    () => site.outlet('A1').read(),
    () => true,
  )
  t.equal(r.energyWh, 12345)
  t.ok(site.health()[0]!.opens >= 2, 'reconnected')
  t.ok(site.health()[0]!.garbageBytes > 0)
})
