import t from 'tap'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { promisify } from 'node:util'
import { scanBus, parseUnits, configSnippet, listSerialPorts } from '../drivers/scan.js'
import { startSim } from '../drivers/sim.js'
import { validateConfig } from '../daemon/config.js'
import { packagePath } from '../core/paths.js'
import { startPymodbus, siteConfig, ptyPair } from './fixtures/drivers-helpers.js'

const run = promisify(execFile)
const now = (): number => 1_700_000_000_000

t.test('unit ranges', async (t) => {
  t.same(parseUnits('1-3,100,2'), [1, 2, 3, 100])
  t.throws(() => parseUnits('0-3'), { code: 'USAGE' })
  t.throws(() => parseUnits('5-2'), { code: 'USAGE' })
  t.throws(() => parseUnits('x'), { code: 'USAGE' })
})

t.test('scan over RTU against pymodbus identifies SDM120s, the SDM630 and coil boards', async (t) => {
  const pair = await ptyPair()
  t.teardown(() => pair.close())
  const py = await startPymodbus({ rtu: pair.b })
  t.teardown(() => py.kill())
  const bus = siteConfig(
    [{ id: 'rs485', type: 'modbus-rtu', path: pair.a, timeoutMs: 1000, retries: 0 }],
    [{ id: 'x', bus: 'rs485', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'p' }],
  ).buses[0]!
  const hits = await scanBus(bus, parseUnits('1-2,7,10,100'), { now })
  t.same(
    hits.map((h) => [h.unit, h.kind, h.model]),
    [
      [1, 'meter', 'eastron-sdm120'],
      [2, 'meter', 'eastron-sdm120'],
      [10, 'meter', 'eastron-sdm630'],
      [100, 'relay', 'modbus-coil'],
    ],
  )
  t.equal(hits[3]!.coils?.length, 16)
  t.equal(hits[0]!.values?.energyWh, 12345)
})

t.test('scan over TCP against the simulator; the snippet is a valid config once plans are set', async (t) => {
  const sim = await startSim({ outlets: 4, port: 0, speed: 0, script: false })
  t.teardown(() => sim.close())
  const bus = siteConfig(
    [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: sim.port }],
    [{ id: 'x', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'p' }],
  ).buses[0]!
  const hits = await scanBus(bus, parseUnits('1-247'), { now })
  t.same(
    hits.map((h) => [h.unit, h.kind, h.model]),
    [
      [1, 'meter', 'eastron-sdm120'],
      [2, 'meter', 'eastron-sdm120'],
      [3, 'meter', 'eastron-sdm120'],
      [4, 'meter', 'eastron-sdm120'],
      [100, 'relay', 'modbus-coil'],
    ],
  )
  t.equal(hits[4]!.coils?.length, 4)
  const snip = configSnippet(bus, hits)
  t.same(
    (snip.outlets as { relay?: { coil: number } }[]).map((o) => o.relay?.coil),
    [0, 1, 2, 3],
  )
  const r = validateConfig({
    site: { id: 's', timezone: 'UTC' },
    storage: { dir: '/tmp/x' },
    ...snip,
    outlets: (snip.outlets as Record<string, unknown>[]).map((o) => ({ ...o, plan: 'p' })),
    plans: [{ id: 'p', currency: 'CAD', periods: [{ days: ['mon'], from: '00:00', to: '24:00', perKwh: 0.1 }] }],
  })
  t.ok(r.ok, JSON.stringify(r.ok ? '' : r.problems))
  // A scan only reads: nothing was switched.
  t.same(
    sim.outlets().map((o) => o.coilClosed),
    [false, false, false, false],
  )
})

t.test('outpost scan (the CLI): table and snippet; port listing never crashes without udevadm', async (t) => {
  const cli = packagePath('dist', 'daemon', 'cli.js')
  if (!existsSync(packagePath('dist', 'drivers', 'scan.js'))) await run('npx', ['tsc', '-p', packagePath()], { timeout: 180_000 })
  const sim = await startSim({ outlets: 2, port: 0, speed: 0, script: false })
  t.teardown(() => sim.close())
  const { stdout } = await run(process.execPath, [cli, 'scan', '--bus', `tcp://127.0.0.1:${sim.port}`, '--units', '1-3,100'], { timeout: 60_000 })
  t.match(stdout, /^UNIT\s+KIND\s+MODEL\s+DETAIL$/m)
  t.match(stdout, /^1\s+meter\s+eastron-sdm120\s/m)
  t.match(stdout, /^100\s+relay\s+modbus-coil\s+2 coils: 00$/m)
  t.match(stdout, /"relay":\{"model":"modbus-coil","unit":100,"coil":1\}/)
  // An empty PATH: no udevadm whatever the machine has.
  const listed = await run(process.execPath, [cli, 'scan', '--list'], { timeout: 60_000, env: { ...process.env, PATH: '/nonexistent' } })
  t.ok(listed.stdout.length > 0)
  t.ok(Array.isArray(await listSerialPorts()))
  const bad = await run(process.execPath, [cli, 'scan', '--bus', 'serial:/dev/x'], { timeout: 60_000 }).then(
    () => 0,
    (e: { code: number; stderr: string }) => {
      t.match(e.stderr, /expected tcp:\/\/HOST:PORT/)
      return e.code
    },
  )
  t.equal(bad, 64)
  const badBaud = await run(process.execPath, [cli, 'scan', '--bus', 'rtu:/dev/ttyUSB9@12345'], { timeout: 60_000 }).then(
    () => 0,
    (e: { code: number; stderr: string }) => {
      t.match(e.stderr, /baudRate/)
      return e.code
    },
  )
  t.equal(badBaud, 64)
})
