import t from 'tap'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { promisify } from 'node:util'
import { startSim } from '../drivers/sim.js'
import { openSite } from '../drivers/site.js'
import { float32Decimal } from '../drivers/models.js'
import { packagePath } from '../core/paths.js'
import { siteConfig, startChild, eventually, ptyPair } from './fixtures/drivers-helpers.js'

const run = promisify(execFile)
const now = (): number => 1_700_000_000_000

/** mbpoll's value lines, e.g. "[72]: \t4631.44" → {72: 4631.44}. */
async function mbpoll(args: string[]): Promise<Record<number, number>> {
  const { stdout } = await run('mbpoll', [...args, '-1', '-o', '5'], { timeout: 30_000 })
  const out: Record<number, number> = {}
  for (const m of stdout.matchAll(/^\[(\d+)\]:\s+(-?[\d.e+-]+)/gm)) out[Number(m[1])] = Number(m[2])
  return out
}

const f32g = (x: number): number => Number(Math.fround(x).toPrecision(6))

t.test('an independent client (mbpoll) reads the simulator correctly', async (t) => {
  const sim = await startSim({ outlets: 3, port: 0, speed: 0, script: false, seed: 3 })
  t.teardown(() => sim.close())
  sim.control({ cmd: 'plug', outlet: 2, needWh: 50_000, maxA: 16 })
  sim.control({ cmd: 'coil', outlet: 2, closed: true })
  sim.advance(60_000)
  const s = sim.outlets()[1]!
  const base = ['-m', 'tcp', '-p', String(sim.port), '-0', '-B']
  const v = await mbpoll([...base, '-a', '2', '-t', '3:float', '-r', '0', '-c', '7', '127.0.0.1'])
  t.equal(v[0], f32g(s.voltageV), 'voltage at 0x0000')
  t.equal(v[6], 16, 'current at 0x0006')
  t.equal(v[12], f32g(s.powerW), 'power at 0x000C')
  const e = await mbpoll([...base, '-a', '2', '-t', '3:float', '-r', '72', '127.0.0.1'])
  t.equal(e[72], f32g(s.energyWh / 1000), 'import kWh at 0x0048')
  const tot = await mbpoll([...base, '-a', '2', '-t', '3:float', '-r', '342', '127.0.0.1'])
  t.equal(tot[342], f32g(s.energyWh / 1000), 'total kWh at 0x0156')
  const coils = await mbpoll(['-m', 'tcp', '-p', String(sim.port), '-0', '-a', '100', '-t', '0', '-r', '0', '-c', '3', '127.0.0.1'])
  t.same(coils, { 0: 0, 1: 1, 2: 0 }, 'relay board coils')
  // mbpoll writes a coil; the simulator's physics sees it.
  await run('mbpoll', ['-m', 'tcp', '-p', String(sim.port), '-0', '-a', '100', '-t', '0', '-r', '1', '-1', '127.0.0.1', '0'], { timeout: 30_000 })
  t.equal(sim.outlets()[1]!.coilClosed, false)
  sim.advance(1000)
  t.equal(sim.outlets()[1]!.currentA, 0, 'open coil: no current')
})

t.test('physically coupled, tapering, energy only grows; read through openSite', async (t) => {
  const sim = await startSim({ outlets: 2, port: 0, speed: 0, script: false })
  t.teardown(() => sim.close())
  const cfg = siteConfig(
    [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: sim.port, timeoutMs: 1000 }],
    [1, 2].map((n) => ({
      id: `A${n}`,
      bus: 'lan',
      meter: { model: 'eastron-sdm120', unit: n },
      relay: { model: 'modbus-coil', unit: 100, coil: n - 1 },
      plan: 'p',
    })),
  )
  const site = await openSite(cfg, { now })
  t.teardown(() => site.close())
  await site.bus('lan').scheduler.waitOpen(20_000)
  const a1 = site.outlet('A1')
  let last = (await a1.read()).energyWh
  const grows = async (): Promise<number> => {
    const r = await a1.read()
    t.ok(r.energyWh >= last, `energy ${r.energyWh} >= ${last}`)
    last = r.energyWh
    return r.currentA
  }
  sim.advance(10_000)
  t.equal(await grows(), 0, 'no vehicle, no current')
  sim.plug(1, { needWh: 2000, maxA: 10 })
  t.throws(() => sim.plug(1), /already has a vehicle/)
  t.match(sim.vehicles(), [{ needWh: 2000, maxA: 10, chargedWh: 0 }, null])
  sim.advance(10_000)
  t.equal(await grows(), 0, 'vehicle attached but relay open: no current')
  await a1.setRelay(true)
  sim.advance(10_000)
  t.equal(await grows(), 10, 'relay closed: the vehicle draws its maximum')
  const before = last
  sim.advance(60_000)
  await grows()
  t.ok(last - before > 30 && last - before < 45, `~38 Wh in a minute at 10 A (got ${last - before})`)
  // Charge until tapering: current falls below the maximum, then to zero when full.
  let sawTaper = false
  for (let i = 0; i < 400; i++) {
    sim.advance(30_000)
    const a = await grows()
    if (a > 0 && a < 10) sawTaper = true
    if (a === 0) break
  }
  t.ok(sawTaper, 'current tapered near full')
  t.equal(sim.outlets()[0]!.vehicle?.full, true)
  t.equal((await a1.read()).currentA, 0)
  t.equal((await site.outlet('A2').read()).currentA, 0, 'the other outlet never drew anything')
})

t.test('the script is deterministic from the seed', async (t) => {
  const run1 = await startSim({ outlets: 4, port: 0, speed: 0, seed: 42 })
  const run2 = await startSim({ outlets: 4, port: 0, speed: 0, seed: 42 })
  const run3 = await startSim({ outlets: 4, port: 0, speed: 0, seed: 43 })
  t.teardown(async () => {
    await run1.close()
    await run2.close()
    await run3.close()
  })
  for (const s of [run1, run2, run3]) for (let n = 1; n <= 4; n++) s.control({ cmd: 'coil', outlet: n, closed: true })
  let plugged = 0
  let charged = false
  for (let i = 0; i < 6 * 60; i++) {
    for (const s of [run1, run2, run3]) s.advance(10_000)
    plugged = Math.max(plugged, run1.outlets().filter((o) => o.vehicle).length)
    if (run1.outlets().some((o) => o.currentA > 0)) charged = true
  }
  t.same(run1.outlets(), run2.outlets(), 'same seed, same site after an hour')
  t.not(JSON.stringify(run1.outlets()), JSON.stringify(run3.outlets()), 'another seed, another script')
  t.ok(plugged > 0 && charged, 'vehicles came and charged')
})

t.test('control interface rejects bad commands without changing anything', async (t) => {
  const sim = await startSim({ outlets: 2, port: 0, speed: 0, script: false })
  t.teardown(() => sim.close())
  const before = JSON.stringify(sim.outlets())
  t.match(sim.control({ cmd: 'plug', outlet: 9 } as never), { ok: false, error: /no outlet 9/ })
  t.match(sim.control({ cmd: 'plug', outlet: 1, maxA: -1 }), { ok: false })
  t.match(sim.control({ cmd: 'nope' } as never), { ok: false, error: /unknown command/ })
  t.match(sim.control({ cmd: 'advance', ms: -5 }), { ok: false })
  t.equal(JSON.stringify(sim.outlets()), before)
  t.match(sim.control({ cmd: 'fault', unit: 1, fault: 'silent' }), { ok: true })
  const cfg = siteConfig(
    [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: sim.port, timeoutMs: 1000, retries: 0 }],
    [
      { id: 'A1', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'p' },
      { id: 'A2', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 2 }, plan: 'p' },
    ],
  )
  const site = await openSite(cfg, { now })
  t.teardown(() => site.close())
  await site.bus('lan').scheduler.waitOpen(20_000)
  await t.rejects(site.outlet('A1').read(), { code: 'MODBUS_TIMEOUT' })
  t.equal((await site.outlet('A2').read()).currentA, 0)
})

t.test('a backed-off relay board still gets relay commands (opening a relay is always attempted)', async (t) => {
  const sim = await startSim({ outlets: 2, port: 0, speed: 0, script: false })
  t.teardown(() => sim.close())
  const clock = 0
  const cfg = siteConfig(
    [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: sim.port, timeoutMs: 300, retries: 0 }],
    [{ id: 'A1', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, relay: { model: 'modbus-coil', unit: 100, coil: 0 }, plan: 'p' }],
  )
  const site = await openSite(cfg, { now: () => clock, scheduler: { backoffAfter: 2, backoffMinMs: 10_000 } })
  t.teardown(() => site.close())
  t.ok(await site.ready(20_000))
  await site.outlet('A1').setRelay(true)
  sim.control({ cmd: 'fault', unit: 100, fault: 'silent' })
  await t.rejects(site.outlet('A1').readRelay(), { code: 'MODBUS_TIMEOUT' })
  await t.rejects(site.outlet('A1').readRelay(), { code: 'MODBUS_TIMEOUT' })
  await t.rejects(site.outlet('A1').readRelay(), { code: 'DEVICE_BACKOFF' }, 'polls are refused')
  t.same(site.health()[0]!.backedOff, [100])
  await t.rejects(site.outlet('A1').setRelay(false), { code: 'MODBUS_TIMEOUT' }, 'the relay command went to the wire')
  sim.control({ cmd: 'fault', unit: 100, fault: 'none' })
  await site.outlet('A1').setRelay(false)
  t.equal(sim.outlets()[0]!.coilClosed, false)
  t.same(site.health()[0]!.backedOff, [], 'a success clears the back-off')
  t.equal(await site.outlet('A1').readRelay(), false)
  t.equal((await site.outlet('A1').read()).currentA, 0, 'the meter was never affected')
})

t.test('the simulator also serves Modbus RTU on a serial device', async (t) => {
  const pair = await ptyPair()
  t.teardown(() => pair.close())
  const sim = await startSim({ outlets: 2, port: 0, speed: 0, script: false, rtuPath: pair.b })
  t.teardown(() => sim.close())
  const cfg = siteConfig(
    [{ id: 'rs485', type: 'modbus-rtu', path: pair.a, baudRate: 9600, timeoutMs: 500 }],
    [{ id: 'A1', bus: 'rs485', meter: { model: 'eastron-sdm120', unit: 1 }, relay: { model: 'modbus-coil', unit: 100, coil: 0 }, plan: 'p' }],
  )
  const site = await openSite(cfg, { now })
  t.teardown(() => site.close())
  await site.bus('rs485').scheduler.waitOpen(20_000)
  await site.outlet('A1').setRelay(true)
  t.equal(sim.outlets()[0]!.coilClosed, true)
  t.equal(await site.outlet('A1').readRelay(), true)
  const r = await site.outlet('A1').read()
  t.equal(r.energyWh, Number((float32Decimal(Math.fround(sim.outlets()[0]!.energyWh / 1000)) * 1000).toPrecision(12)))
  t.equal(r.voltageV, float32Decimal(Math.fround(sim.outlets()[0]!.voltageV)))
})

t.test('outpost sim (the CLI): JSON-line control on stdin, clean stop on SIGTERM', async (t) => {
  const cli = packagePath('dist', 'daemon', 'cli.js')
  if (!existsSync(packagePath('dist', 'drivers', 'sim.js'))) await run('npx', ['tsc', '-p', packagePath()], { timeout: 180_000 })
  const c = startChild(process.execPath, [cli, 'sim', '--outlets', '2', '--port', '0', '--speed', '0', '--no-script'])
  t.teardown(() => c.kill())
  const ready = JSON.parse(await c.waitLine((l) => l.startsWith('{"ready"'))) as { port: number }
  const send = async (cmd: object): Promise<Record<string, unknown>> => {
    const n = c.lines.filter((l) => l.startsWith('{"ok"')).length
    c.proc.stdin!.write(JSON.stringify(cmd) + '\n')
    await eventually(
      () => c.lines.filter((l) => l.startsWith('{"ok"')).length,
      (k) => k > n,
    )
    return JSON.parse(c.lines.filter((l) => l.startsWith('{"ok"'))[n]!) as Record<string, unknown>
  }
  t.match(await send({ cmd: 'plug', outlet: 1, maxA: 13 }), { ok: true })
  t.match(await send({ cmd: 'coil', outlet: 1, closed: true }), { ok: true })
  t.match(await send({ cmd: 'advance', ms: 5000 }), { ok: true, simMs: 5000 })
  const cur = await mbpoll(['-m', 'tcp', '-p', String(ready.port), '-0', '-B', '-a', '1', '-t', '3:float', '-r', '6', '127.0.0.1'])
  t.equal(cur[6], 13)
  t.match(await send({ cmd: 'bogus' }), { ok: false })
  c.proc.stdin!.write('not json\n')
  await eventually(
    () => c.lines.filter((l) => l.includes('not JSON')).length,
    (k) => k === 1,
  )
  const exited = new Promise<number | null>((r) => c.proc.once('exit', (code) => r(code)))
  c.proc.kill('SIGTERM')
  t.equal(await exited, 0)
})

t.test('config/example.json opens without hardware: the absent RS-485 bus is in error, the LAN bus reads the simulator', async (t) => {
  const { readFileSync } = await import('node:fs')
  const { validateConfig } = await import('../daemon/config.js')
  const sim = await startSim({ outlets: 2, port: 0, speed: 0, script: false })
  t.teardown(() => sim.close())
  const raw = JSON.parse(readFileSync(packagePath('config', 'example.json'), 'utf8')) as { buses: { type: string; port?: number; path?: string }[] }
  for (const b of raw.buses) {
    if (b.type === 'modbus-tcp') b.port = sim.port
    else b.path = '/dev/serial/by-id/usb-absent-adapter'
  }
  const v = validateConfig(raw)
  if (!v.ok) throw new Error(JSON.stringify(v.problems))
  const site = await openSite(v.config, { now, scheduler: { reopenMinMs: 50, reopenMaxMs: 100 } })
  t.teardown(() => site.close())
  t.equal(await site.ready(3000), false, 'not every bus opens')
  await eventually(
    () => site.health(),
    (h) => h.find((b) => b.id === 'lan')?.state === 'open' && h.find((b) => b.id === 'rs485')?.state === 'error',
  )
  sim.plug(2, { maxA: 6 })
  await site.outlet('A2').setRelay(true)
  sim.advance(5000)
  t.equal((await site.outlet('A2').read()).currentA, 6)
  t.equal((await site.outlet('A1').read()).currentA, 0)
  await site.outlet('A2').setRelay(false)
  t.same(
    sim.outlets().map((o) => o.coilClosed),
    [false, false],
  )
})
