/**
 * Network devices through openSite(): the Shelly and Tasmota drivers against the
 * fakes in test/helpers/fake-netdev.ts (written from the published APIs) on
 * loopback: readings from each model's JSON paths, digest auth, the relay and
 * its read-back, NotifyStatus, the dead-gateway auto-off, silence, bad replies,
 * model files for network devices.
 */
import t, { type Test } from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { openSite, type SiteIO } from '../drivers/site.js'
import { validateModel } from '../drivers/models.js'
import { validateConfig } from '../daemon/config.js'
import type { SiteConfig } from '../core/types.js'
import { startShelly, startTasmota, type ShellyProfile } from './helpers/fake-netdev.js'
import { tempDir, waitFor } from './helpers/e2e-kit.js'

const PLAN = {
  id: 'p',
  currency: 'CAD',
  periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 1 }],
}

function config(t: Test, buses: Record<string, unknown>[], outlets: Record<string, unknown>[]): SiteConfig {
  const r = validateConfig({ site: { id: 's', timezone: 'UTC' }, storage: { dir: join(tempDir(t), 'j') }, buses, outlets, plans: [PLAN] })
  if (!r.ok) throw new Error(JSON.stringify(r.problems))
  return r.config
}

async function open(t: Test, cfg: SiteConfig): Promise<SiteIO> {
  const site = await openSite(cfg, { now: () => Date.now() })
  t.teardown(() => site.close())
  return site
}

function passwordFile(t: Test, pw: string): string {
  const f = join(tempDir(t), 'pw')
  writeFileSync(f, `${pw}\n`)
  return f
}

const shellyBus = (dev: { port: number }, extra: Record<string, unknown> = {}) => ({
  id: 'sh',
  type: 'shelly',
  host: '127.0.0.1',
  port: dev.port,
  ...extra,
})
const outlet = (model: string, relay: string | null = model, extra: Record<string, unknown> = {}) => ({
  id: 'A',
  bus: 'sh',
  meter: { model },
  ...(relay ? { relay: { model: relay } } : {}),
  plan: 'p',
  ...extra,
})

t.test('Shelly switch with a password: reading, import = aenergy - ret_aenergy, switch and read-back', async (t) => {
  const dev = await startShelly(t, { password: 'sesame', energyWh: 5000, retWh: 120.5 })
  const site = await open(t, config(t, [shellyBus(dev, { passwordFile: passwordFile(t, 'sesame'), autoOffS: 30 })], [outlet('shelly-switch')]))
  t.ok(await site.ready(5000), 'the device answers (digest auth passed)')
  const a = site.outlet('A')
  const r0 = await a.read()
  t.same({ v: r0.voltageV, i: r0.currentA, p: r0.powerW, e: r0.energyWh }, { v: 230, i: 0, p: 0, e: 4879.5 }, 'energy is aenergy minus ret_aenergy')
  t.equal(await a.readRelay(), false)
  await a.setRelay(true)
  t.equal(dev.output, true, 'the device switched on')
  t.equal(await a.readRelay(), true)
  dev.plug(16)
  await new Promise((r) => setTimeout(r, 300))
  const r1 = await a.read()
  t.equal(r1.currentA, 16)
  t.equal(r1.powerW, 3680)
  t.ok(r1.energyWh > r0.energyWh, 'energy counts up while charging')
  await a.setRelay(false)
  t.equal(dev.output, false)
  t.equal(dev.authFailures, 0, 'every authorized request was accepted')
  const h = site.health()[0]!
  t.equal(h.type, 'shelly')
  t.equal(h.state, 'open')
})

t.test('Shelly without ret_aenergy: energy is aenergy.total', async (t) => {
  const dev = await startShelly(t, { energyWh: 777.25 })
  const site = await open(t, config(t, [shellyBus(dev)], [outlet('shelly-switch')]))
  t.equal((await site.outlet('A').read()).energyWh, 777.25)
})

t.test('auth: a wrong password or none is NET_AUTH, and nothing is switched', async (t) => {
  const dev = await startShelly(t, { password: 'right' })
  const wrong = await open(t, config(t, [shellyBus(dev, { passwordFile: passwordFile(t, 'wrong'), notify: false })], [outlet('shelly-switch')]))
  await t.rejects(wrong.outlet('A').read(), { code: 'NET_AUTH', message: /password was refused/ })
  await t.rejects(wrong.outlet('A').setRelay(true), { code: 'NET_AUTH' })
  t.equal(dev.output, false, 'the relay did not move')
  const none = await open(t, config(t, [shellyBus(dev, { notify: false })], [outlet('shelly-switch')]))
  await t.rejects(none.outlet('A').read(), { code: 'NET_AUTH', message: /set passwordFile/ })
  const missing = await open(t, config(t, [shellyBus(dev, { passwordFile: '/nonexistent/pw', notify: false })], [outlet('shelly-switch')]))
  await t.rejects(missing.outlet('A').read(), { code: 'NET_AUTH', message: /cannot read passwordFile/ })
})

t.test('bad replies: garbage JSON, an HTML error page, an RPC error are clear errors and change nothing', async (t) => {
  const dev = await startShelly(t)
  const site = await open(t, config(t, [shellyBus(dev, { notify: false, retries: 0 })], [outlet('shelly-switch')]))
  const a = site.outlet('A')
  await a.read()
  dev.mode = 'garbage'
  await t.rejects(a.read(), { code: 'NET_BAD_REPLY', message: /not JSON: "\{\\"id\\":1/ })
  await t.rejects(a.setRelay(true), { code: 'NET_BAD_REPLY' })
  dev.mode = 'html'
  await t.rejects(a.read(), { code: 'NET_BAD_REPLY', message: /HTTP 500, an HTML page/ })
  dev.mode = 'none'
  t.equal(dev.output, false, 'no bad reply closed the relay')
  t.ok((await a.read()).energyWh > 0, 'the outlet reads again')
  t.ok(site.health()[0]!.garbage >= 3, 'counted as garbage')
  // A model pointed at the wrong channel: the device's own error frame.
  const other = await open(
    t,
    config(t, [shellyBus(dev, { notify: false })], [outlet('shelly-switch', null, { meter: { model: 'shelly-switch', channel: 3 } })]),
  )
  await t.rejects(other.outlet('A').read(), { code: 'NET_RPC_ERROR', message: /-105/ })
})

t.test('silence (Wi-Fi lost): NET_TIMEOUT within timeoutMs x tries, the device in error, then answering again', async (t) => {
  const dev = await startShelly(t)
  const site = await open(t, config(t, [shellyBus(dev, { timeoutMs: 300, retries: 1 })], [outlet('shelly-switch')]))
  const a = site.outlet('A')
  await a.read()
  dev.mode = 'silent'
  const t0 = performance.now()
  await t.rejects(a.read(), { code: 'NET_TIMEOUT' })
  const took = performance.now() - t0
  t.ok(took >= 550 && took < 3000, `failed after two timeouts (${took.toFixed(0)} ms)`)
  const h = site.health()[0]!
  t.equal(h.state, 'error')
  t.equal(h.lastError?.code, 'NET_TIMEOUT')
  t.ok(h.timeouts >= 2 && h.retries >= 1)
  dev.mode = 'none'
  await waitFor(
    () =>
      a.read().then(
        () => true,
        () => false,
      ),
    'reads again',
    10_000,
  )
  t.equal(site.health()[0]!.state, 'open')
})

t.test('NotifyStatus: an unplug calls the outlet listener at once (WebSocket, digest auth)', async (t) => {
  const dev = await startShelly(t, { password: 'pw' })
  const site = await open(t, config(t, [shellyBus(dev, { passwordFile: passwordFile(t, 'pw') })], [outlet('shelly-switch')]))
  const a = site.outlet('A')
  let calls = 0
  a.onChange?.(() => calls++)
  await waitFor(() => dev.listeners === 1, 'the gateway registered for notifications')
  await a.setRelay(true)
  dev.plug(10)
  await waitFor(() => calls >= 2, 'notified of the switch and the load')
  const before = calls
  const t0 = performance.now()
  dev.unplug()
  await waitFor(() => calls > before, 'notified of the unplug', 5000)
  t.ok(performance.now() - t0 < 1000, 'within a second on loopback')
  t.equal((await a.read()).currentA, 0, 'the read it triggers sees no current')
  // A reboot drops the socket: the gateway comes back and registers again.
  dev.reboot(50)
  await waitFor(() => dev.listeners === 1, 'registered again after the reboot', 15_000)
})

t.test('dead gateway: the relay the gateway closed opens by itself after autoOffS; reads re-arm it', async (t) => {
  const dev = await startShelly(t)
  const site = await open(t, config(t, [shellyBus(dev, { autoOffS: 3, notify: false })], [outlet('shelly-switch')]))
  const a = site.outlet('A')
  await a.setRelay(true)
  // Reading every 250 ms for 4.5 s (past autoOffS): the gateway lives, the relay stays closed.
  const until = performance.now() + 4500
  while (performance.now() < until) {
    await a.read()
    await new Promise((r) => setTimeout(r, 250))
  }
  t.equal(dev.output, true, 're-armed while read')
  t.ok(dev.calls.filter((c) => c === 'Switch.Set').length >= 3, 'Switch.Set with toggle_after sent again')
  // The gateway stops: within autoOffS (+ slack) the device opens the relay by itself.
  const t0 = performance.now()
  await waitFor(() => !dev.output, 'the relay opens by itself', 6000)
  t.ok(performance.now() - t0 <= 3500, 'within autoOffS of the last re-arm')
  t.equal(dev.switches.at(-1)?.source, 'timer')
  // A relay the device opened is never closed again by a read.
  const sets = dev.calls.filter((c) => c === 'Switch.Set').length
  await a.read()
  await new Promise((r) => setTimeout(r, 1200))
  await a.read()
  t.equal(dev.output, false)
  t.equal(dev.calls.filter((c) => c === 'Switch.Set').length, sets, 'no Switch.Set to an open relay')
})

for (const [profile, meter, relay] of [
  ['pm1', 'shelly-pm1', null],
  ['em1', 'shelly-em1', 'shelly-switch'],
] as [ShellyProfile, string, string | null][]) {
  t.test(`Shelly ${profile}: model ${meter}${relay ? ` with relay ${relay}` : ''}`, async (t) => {
    const dev = await startShelly(t, { profile, energyWh: 2500, retWh: 40 })
    const site = await open(t, config(t, [shellyBus(dev)], [outlet(meter, relay)]))
    const a = site.outlet('A')
    t.equal(a.hasRelay, relay !== null)
    const r0 = await a.read()
    t.equal(r0.energyWh, profile === 'pm1' ? 2460 : 2500, profile === 'pm1' ? 'aenergy - ret_aenergy' : 'EM1Data total_act_energy (import)')
    if (relay) {
      await a.setRelay(true)
      dev.plug(8)
      await new Promise((r) => setTimeout(r, 200))
      const r1 = await a.read()
      t.equal(r1.currentA, 8)
      t.equal(r1.powerW, 1840)
      await a.setRelay(false)
      t.equal(dev.output, false)
    } else {
      await t.rejects(a.setRelay(true), { code: 'NO_RELAY' })
    }
  })
}

t.test('a model the device does not speak: NET_MODEL_MISMATCH in health, naming what it offers', async (t) => {
  const dev = await startShelly(t, { profile: 'pm1' })
  const site = await open(t, config(t, [shellyBus(dev, { notify: false })], [outlet('shelly-switch')]))
  await waitFor(() => site.health()[0]!.lastError?.code === 'NET_MODEL_MISMATCH', 'mismatch reported', 10_000)
  t.match(site.health()[0]!.lastError!.message, /no Switch\.GetStatus \(model shelly-switch\).*PM1\.GetStatus/)
  await t.rejects(site.outlet('A').read(), { code: 'NET_RPC_ERROR' })
})

t.test('Tasmota: Status 10 in kWh, Power On/Off read back, user and password, PulseTime as the auto-off', async (t) => {
  const dev = await startTasmota(t, { password: 'tpw', energyWh: 1234.6 })
  const site = await open(
    t,
    config(
      t,
      [{ id: 'ta', type: 'tasmota', host: '127.0.0.1', port: dev.port, passwordFile: passwordFile(t, 'tpw'), autoOffS: 3 }],
      [{ ...outlet('tasmota'), bus: 'ta' }],
    ),
  )
  t.ok(await site.ready(5000))
  const a = site.outlet('A')
  const r0 = await a.read()
  t.same({ v: r0.voltageV, i: r0.currentA, p: r0.powerW, e: r0.energyWh }, { v: 230, i: 0, p: 0, e: 1235 }, 'Total 1.235 kWh is 1235 Wh')
  await a.setRelay(true)
  t.equal(dev.output, true)
  t.equal(dev.pulseTime, 30, 'PulseTime 30 is 3 s (tenths of a second up to 111)')
  dev.plug(10)
  const until = performance.now() + 4000
  while (performance.now() < until) {
    await a.read()
    await new Promise((r) => setTimeout(r, 250))
  }
  t.equal(dev.output, true, 'Power On re-sent while read: the pulse timer restarted')
  await waitFor(() => !dev.output, 'the relay opens by itself once reads stop', 6000)
  t.equal(dev.switches.at(-1)?.source, 'pulsetime')
  await a.setRelay(false)
  t.equal(await a.readRelay(), false)
  t.equal(dev.authFailures, 0)
})

t.test(
  'Tasmota: a wrong password, Command Unknown, an HTML page are clear errors; a power cut hands the engine the raw fallen-back total',
  async (t) => {
    const dev = await startTasmota(t, { password: 'right', energyWh: 8000 })
    const bus = (pw: string) => ({ id: 'ta', type: 'tasmota', host: '127.0.0.1', port: dev.port, passwordFile: passwordFile(t, pw), retries: 0 })
    const wrong = await open(t, config(t, [bus('nope')], [{ ...outlet('tasmota'), bus: 'ta' }]))
    await t.rejects(wrong.outlet('A').setRelay(true), { code: 'NET_AUTH', message: /user or password refused/ })
    t.equal(dev.output, false)
    // A single-relay plug has no relay 2: Tasmota answers {"Command":"Unknown"}.
    const site = await open(t, config(t, [bus('right')], [{ ...outlet('tasmota'), bus: 'ta', relay: { model: 'tasmota', channel: 2 } }]))
    await t.rejects(site.outlet('A').setRelay(true), { code: 'NET_RPC_ERROR', message: /PulseTime2 160: the device answered Command Unknown/ })
    t.equal(dev.output, false)
    // One retry, as by default: a keep-alive socket the device dropped at its power cut fails once.
    const ok = await open(t, config(t, [{ ...bus('right'), retries: 1 }], [{ ...outlet('tasmota'), bus: 'ta' }]))
    const a = ok.outlet('A')
    dev.mode = 'html'
    await t.rejects(a.read(), { code: 'NET_BAD_REPLY', message: /HTML page/ })
    dev.mode = 'none'
    await a.setRelay(true)
    dev.plug(16)
    const before = await waitFor(async () => {
      const e = (await a.read()).energyWh
      return e > 8000 && e
    }, 'the total counts up (1 Wh steps)')
    t.ok(before > 8000, 'counting')
    dev.powerCut()
    const after = await a.read()
    t.equal(after.energyWh, 8000, 'the total fell back to the last save, handed on as read')
    t.equal(after.currentA, 0, 'the relay came back open')
  },
)

t.test('network model files: validated, errors name the pointer', async (t) => {
  const good = validateModel(
    {
      name: 'acme-plug',
      kinds: ['meter', 'relay'],
      phases: 1,
      transport: 'shelly-rpc',
      relay: { point: 'device' },
      device: {
        read: [
          {
            method: 'Switch.GetStatus',
            component: 'switch',
            values: { voltageV: { path: 'voltage' }, currentA: { path: 'current' }, powerW: { path: 'apower' }, energyWh: { path: 'aenergy.total' } },
          },
        ],
        switch: { set: 'Switch.Set', get: 'Switch.GetStatus', path: ['output'] },
      },
    },
    '/x/acme-plug.json',
  )
  t.equal(good.device!.switch!.closedValue, true, 'closedValue defaults to true')
  t.throws(
    () =>
      validateModel(
        {
          name: 'bad',
          kinds: ['meter', 'relay'],
          transport: 'tasmota-http',
          relay: { point: 'device' },
          device: { read: [{ command: 'Status 10', values: { powerW: { path: 'StatusSNS.ENERGY.Power' } } }] },
        },
        '/x/bad.json',
      ),
    { code: 'MODEL_INVALID', message: /\/device\/read: a meter needs a value for energyWh.*\/device\/switch: a relay model needs a switch/ },
  )
  t.throws(
    () =>
      validateModel(
        {
          name: 'bad2',
          kinds: ['meter'],
          transport: 'shelly-rpc',
          device: { read: [{ command: 'Status 10', values: { energyWh: { path: 'a' } } }] },
        },
        '/x/bad2.json',
      ),
    { code: 'MODEL_INVALID', message: /\/device\/read\/0\/method: is required for shelly-rpc/ },
  )
  t.throws(() => validateModel({ name: 'bad3', kinds: ['meter'], transport: 'shelly-rpc' }, '/x/bad3.json'), {
    code: 'MODEL_INVALID',
    message: /\/device: a network model needs a "device" section/,
  })
  t.throws(() => validateModel({ name: 'bad4', kinds: ['relay'], transport: 'modbus', relay: { point: 'device' } }, '/x/bad4.json'), {
    code: 'MODEL_INVALID',
    message: /\/relay\/point: "device" needs a network transport/,
  })
})
