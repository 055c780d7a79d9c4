/**
 * The bus scan from the status page, end to end: the built daemon as a child, the pymodbus site
 * peer with three meters and a relay board while the config has two outlets, headless Chromium.
 *
 * The scan runs through the site's own bus (between its polls, so the outlets keep being read),
 * lists each device with what the config already does with it, and "Add" appends the third
 * meter as an outlet paired with the board's next free coil: saved, applied without a restart,
 * polled. Refusals at their fields, a port the site already uses, one scan at a time, cancel.
 */
import t from 'tap'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { freePort } from './helpers/mosquitto.js'
import { keepScreenshot, signedInPage } from './helpers/browser.js'
import { startShelly, startTasmota } from './helpers/fake-netdev.js'

/** The page's document, inside page functions. */
declare const document: any
import { startDaemon, startPeer, tempDir, waitFor, writeSiteConfig } from './helpers/e2e-kit.js'

const ADMIN = 'admin-token-0123456789'
const TOKENS = [
  { name: 'ian', role: 'installer', token: 'installer-token-0123456789' },
  { name: 'vic', role: 'viewer', token: 'viewer-token-0123456789' },
]
const tokenOf = (role: string): string => (role === 'admin' ? ADMIN : TOKENS.find((x) => x.role === role)!.token)

/** The built daemon with `outlets` of the peer's meters configured, its API up; `api` calls it as a role (the installer by default). */
async function startScanSite(t: Parameters<typeof startDaemon>[0], work: string, peerPort: number, outlets: number) {
  const port = await freePort()
  const file = writeSiteConfig({
    dir: work,
    port: peerPort,
    outlets,
    extra: { api: { listen: `127.0.0.1:${port}`, token: ADMIN, tokens: TOKENS }, logging: { level: 'info' } },
  })
  const daemon = startDaemon(t, file)
  const base = `http://127.0.0.1:${port}`
  const api = async (path: string, o: { role?: string; method?: string; body?: unknown } = {}) => {
    const headers: Record<string, string> = { authorization: `Bearer ${tokenOf(o.role ?? 'installer')}` }
    if (o.body !== undefined) headers['content-type'] = 'application/json'
    const res = await fetch(base + path, { method: o.method ?? 'GET', headers, ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}) })
    return { status: res.status, body: (await res.json()) as any }
  }
  await waitFor(async () => (await api('/api/status').catch(() => ({ status: 0 }))).status === 200, 'the API', 60_000)
  return { file, daemon, base, api }
}

t.test('scan the site’s bus from the page and add the meter it finds', async (t) => {
  const work = tempDir(t, 'outpost-e2e-scan-')
  const peer = await startPeer(t, { outlets: 3 })
  const { file, daemon, base, api } = await startScanSite(t, work, peer.port, 2)

  // Refusals, each at its field, and nothing scanned.
  const refused = async (body: unknown, status: number, code: string, pointer: string | undefined, what: string, role = 'installer') => {
    const r = await api('/api/scan', { method: 'POST', body, role })
    t.equal(r.status, status, what)
    t.equal(r.body.error.code, code, `${what}: ${r.body.error.message}`)
    if (pointer) t.equal(r.body.error.pointer, pointer, `${what}: at ${pointer}`)
  }
  await refused({ busId: 'site' }, 403, 'forbidden', undefined, 'the viewer may not scan', 'viewer')
  await refused({}, 400, 'invalid-request', '/bus', 'no bus')
  await refused({ busId: 'nope' }, 400, 'invalid-request', '/busId', 'an unknown bus')
  await refused({ busId: 'site', units: '1-300' }, 400, 'invalid-request', '/units', 'unit ids beyond 247')
  await refused(
    { bus: { type: 'modbus-rtu', path: '/dev/ttyUSB9', baudRate: 1234 } },
    400,
    'invalid-request',
    '/bus/baudRate',
    'a baud rate no line runs at',
  )
  await refused({ bus: { type: 'modbus-tcp', host: '127.0.0.1', port: peer.port } }, 409, 'port-in-use', '/bus', 'a second config on the site’s port')
  await refused({ busId: 'site', speed: 2 }, 400, 'invalid-request', '/speed', 'an unknown field')
  t.equal((await api('/api/scan')).body.scan, null, 'nothing scanned')
  const ports = await api('/api/scan/ports')
  t.ok(Array.isArray(ports.body.ports) && ports.body.baudRates.includes(2400), 'the serial ports found, and the rates to try')

  // Cancel: a scan of every unit id stops at once, with what it found so far.
  let r = await api('/api/scan', { method: 'POST', body: { busId: 'site' } })
  t.equal(r.status, 202)
  t.equal((await api('/api/scan', { method: 'POST', body: { busId: 'site', units: '1' } })).body.error.code, 'scan-running', 'one scan at a time')
  t.equal((await api('/api/scan', { method: 'DELETE' })).status, 200)
  const cancelled = await waitFor(async () => {
    const s = (await api('/api/scan')).body.scan
    return s.running ? undefined : s
  }, 'the scan stops')
  t.ok(cancelled.cancelled && cancelled.done < cancelled.total, `cancelled after ${cancelled.done} of ${cancelled.total} ids`)

  // The page: the configured bus, a few ids, the hits, and "Add" on the meter not in the config.
  const { page, errors } = await signedInPage(t, base, tokenOf('installer'))
  await page.waitForSelector('#scan-source option[value="bus:site"]', { state: 'attached' })
  await page.selectOption('#scan-source', 'bus:site')
  await page.fill('#scan-units', '1-4,100')
  const polls0 = (await peer.outlet(1)).polls
  await page.click('#scan-start')
  await page.waitForSelector('#scan-hits tr[data-unit="100"]')
  await page.waitForSelector('#scan-result p.sub:has-text("done")')
  const rows = await page.$$eval('#scan-hits tbody tr', (trs) => trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)))
  t.same(
    rows.map((x) => [x[0], x[1], x[2], x[5]]),
    [
      ['1', 'meter', 'eastron-sdm120', 'in the config: E1'],
      ['2', 'meter', 'eastron-sdm120', 'in the config: E2'],
      ['3', 'meter', 'eastron-sdm120', 'Add as an outlet'],
      ['100', 'relay', 'modbus-coil', 'in the config: E1, E2'],
    ],
    'each device found, with what the config does with it',
  )
  t.ok((await peer.outlet(1)).polls > polls0, 'the site kept polling its outlets during the scan')
  const health = (await api('/api/status')).body.buses[0]
  t.same(
    health.devices.map((d: { unit: number; failures: number }) => [d.unit, d.failures]),
    [
      [1, 0],
      [2, 0],
      [100, 0],
    ],
    'the probes stay out of the units’ health: no failure on the configured ones, nothing backed off, no line for ids nobody uses',
  )
  const shot = join(work, 'scan.png')
  await page.screenshot({ path: shot, fullPage: true })
  keepScreenshot(shot)
  // "Test" reads the meter now, before it is added.
  await peer.plug(3, 8)
  await peer.cmd({ cmd: 'coil', outlet: 3, closed: true })
  await page.click('#scan-hits button[data-test-unit="3"]')
  await page.waitForFunction(() => / V · /.test(document.querySelector('[data-test="3"]')?.textContent ?? ''))
  t.match(await page.textContent('[data-test="3"]'), /^230 V · 8\.00 A · 1840 W · 103\.\d{3} kWh$/, 'the page shows what meter 3 reads now')
  await peer.cmd({ cmd: 'coil', outlet: 3, closed: false })
  // The same through the API, with its relay's position; bad input at its field.
  r = await api('/api/scan/test', {
    method: 'POST',
    body: { busId: 'site', meter: { model: 'eastron-sdm120', unit: 3 }, relay: { model: 'modbus-coil', unit: 100, coil: 2 } },
  })
  t.equal(r.status, 200)
  t.match(r.body, { meter: { voltageV: 230, currentA: 0, powerW: 0 }, relay: { closed: false } }, 'meter 3 and coil 2 as they are')
  t.ok(Math.abs(r.body.meter.energyWh - (await peer.outlet(3)).energyWh) < 5, 'its register, as the meter holds it')
  r = await api('/api/scan/test', { method: 'POST', body: { busId: 'site', meter: { model: 'eastron-sdm999', unit: 3 } } })
  t.equal(r.status, 400)
  t.equal(r.body.error.pointer, '/meter/model', `an unknown model at its field: ${r.body.error.message}`)
  r = await api('/api/scan/test', { method: 'POST', body: { busId: 'site', meter: { model: 'eastron-sdm120', unit: 0 } } })
  t.equal(r.body.error.pointer, '/meter/unit', 'a unit id outside 1-247')
  r = await api('/api/scan/test', { method: 'POST', body: { busId: 'site', meter: { model: 'eastron-sdm120', unit: 9 } } })
  t.equal(r.status, 200)
  t.match(r.body.meterError, /MODBUS_TIMEOUT/, 'a unit that does not answer: said, not a zero')
  t.equal(
    (await api('/api/scan/test', { method: 'POST', role: 'viewer', body: { busId: 'site', meter: { model: 'eastron-sdm120', unit: 3 } } })).status,
    403,
  )
  await page.click('#scan-hits button[data-unit="3"]')
  await page.waitForSelector('#scan-hits tr[data-unit="3"] td:has-text("added")')
  const saved = JSON.parse(readFileSync(file, 'utf8'))
  t.same(
    saved.outlets[2],
    { id: 'O3', bus: 'site', meter: { model: 'eastron-sdm120', unit: 3 }, relay: { model: 'modbus-coil', unit: 100, coil: 2 }, plan: 'standard' },
    'the meter added as an outlet on the board’s next free coil',
  )
  await waitFor(
    async () => (await api('/api/outlets')).body.some((o: { outlet: string; state: string }) => o.outlet === 'O3' && o.state === 'off'),
    'O3 read and idle, without a restart',
  )
  t.ok(daemon.running(), 'the same process')

  // Its settings, in the form the page builds from the site schema: saved, and refused at the field.
  await page.reload()
  await page.click('#outlet-settings summary')
  const form = '#outlet-forms form[data-outlet="O3"]'
  await page.waitForSelector(form)
  t.same(
    await page.$$eval(`${form} [data-pointer]`, (els) => els.map((e) => e.getAttribute('data-pointer'))),
    [
      '/name',
      '/bus',
      '/meter/model',
      '/meter/unit',
      '/meter/channel',
      '/meter/delayMs',
      '/meter/serial',
      '/relay/model',
      '/relay/unit',
      '/relay/channel',
      '/relay/coil',
      '/relay/register',
      '/relay/delayMs',
      '/plan',
      '/ratingA',
      '/phases',
      '/circuit',
      '/phase',
      '/priority',
    ],
    'one field per property of an outlet in the schema',
  )
  await page.fill(`${form} [data-pointer="/name"]`, 'Bay <b id="injected">3</b>')
  await page.fill(`${form} [data-pointer="/ratingA"]`, '16')
  await page.selectOption(`${form} [data-pointer="/phase"]`, 'L2')
  await page.click(`${form} button[type=submit]`)
  await page.waitForSelector(`${form} .of-msg.good`)
  t.same(
    (await page.textContent(`${form} .of-msg`))!
      .replace(/^saved: /, '')
      .split(', ')
      .sort(),
    ['/outlets/2/name', '/outlets/2/phase', '/outlets/2/ratingA'],
    'the page says what changed',
  )
  t.match(
    JSON.parse(readFileSync(file, 'utf8')).outlets[2],
    { id: 'O3', name: 'Bay <b id="injected">3</b>', ratingA: 16, phase: 'L2' },
    'saved as typed',
  )
  await page.fill(`${form} [data-pointer="/meter/model"]`, 'no-such-meter')
  await page.click(`${form} button[type=submit]`)
  await page.waitForSelector(`${form} .of-msg.bad`)
  t.match(await page.textContent(`${form} [data-error-for="/meter/model"]`), /no-such-meter/, 'the server’s problem at its field')
  t.equal(JSON.parse(readFileSync(file, 'utf8')).outlets[2].meter.model, 'eastron-sdm120', 'nothing changed')
  const formShot = join(work, 'outlet-settings.png')
  await (await page.$(form))!.screenshot({ path: formShot })
  keepScreenshot(formShot)
  await page.reload()
  await page.waitForSelector('#outlets article')
  t.equal(await page.$('#injected'), null, 'a name with HTML in it is shown as text')
  t.same(errors, [], 'no script error on the page')
  await daemon.stop()
})

t.test('a Shelly and a Tasmota added by address: found, read, added without a restart, the password kept beside the config', async (t) => {
  const work = tempDir(t, 'outpost-e2e-netadd-')
  const peer = await startPeer(t, { outlets: 1 })
  const shelly = await startShelly(t, { password: 'garage-secret', energyWh: 4321 })
  const tasmota = await startTasmota(t, { energyWh: 777 })
  shelly.plug(6)
  const { file, daemon, base, api } = await startScanSite(t, work, peer.port, 1)
  const find = (body: unknown, role = 'installer') => api('/api/scan/device', { method: 'POST', body, role })

  // Refusals at their fields; nothing written.
  const refusals: [unknown, number, string, string | undefined, string, string?][] = [
    [{ type: 'shelly', host: '127.0.0.1' }, 403, 'forbidden', undefined, 'the viewer may not', 'viewer'],
    [{ type: 'hue', host: '127.0.0.1' }, 400, 'invalid-request', undefined, 'a kind of device Outpost does not drive'],
    [{ type: 'shelly', host: 'not a host' }, 400, 'invalid-request', '/host', 'a host with spaces'],
    [{ type: 'shelly', host: '127.0.0.1', port: 70000 }, 400, 'invalid-request', '/port', 'a port beyond 65535'],
    [{ type: 'shelly', host: '127.0.0.1', port: shelly.port, colour: 'red' }, 400, 'invalid-request', undefined, 'an unknown field'],
    [{ type: 'shelly', host: '127.0.0.1', port: shelly.port }, 502, 'device-unreachable', '/password', 'no password for a device that wants one'],
    [{ type: 'shelly', host: '127.0.0.1', port: shelly.port, password: 'wrong' }, 502, 'device-unreachable', '/password', 'a wrong password'],
  ]
  for (const [body, status, code, pointer, what, role] of refusals) {
    const r = await find(body, role)
    t.equal(r.status, status, what)
    t.equal(r.body.error?.code, code, `${what}: ${r.body.error?.message}`)
    if (pointer) t.equal(r.body.error.pointer, pointer, `${what}: at ${pointer}`)
  }
  t.notOk(
    readdirSync(work).some((f) => f.endsWith('.password')),
    'no password file written for a refusal',
  )

  const tas = await find({ type: 'tasmota', host: '127.0.0.1', port: tasmota.port })
  t.equal(tas.status, 200, JSON.stringify(tas.body))
  t.match(tas.body.device.channels, [{ channel: 1, meter: 'tasmota', relay: 'tasmota', relayClosed: false, reading: { energyWh: 777 } }])
  t.same(tas.body.bus, { id: `tasmota-127-0-0-1`, type: 'tasmota', host: '127.0.0.1', port: tasmota.port }, 'no password: no file')

  // The page: the Shelly by address and password, its channel read, "Add".
  const { page, errors } = await signedInPage(t, base, tokenOf('installer'))
  await page.waitForSelector('#net-form')
  await page.selectOption('#net-type', 'shelly')
  await page.fill('#net-host', '127.0.0.1')
  await page.fill('#net-port', String(shelly.port))
  await page.fill('#net-password', 'garage-secret')
  await page.click('#net-find')
  await page.waitForSelector('#net-channels tr[data-channel="0"]')
  const row = await page.$$eval('#net-channels tbody tr', (trs) => trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)))
  t.same(row[0]!.slice(0, 3), ['0', 'shelly-switch', 'shelly-switch'], 'a metering switch: one outlet, meter and relay')
  t.match(row[0]![3], /^230 V · 0\.00 A · 0 W · 4\.321 kWh$/, 'read once through its model (the relay open: no current)')
  t.equal(row[0]![4], 'open')
  const pwFile = join(work, 'shelly-127-0-0-1.password')
  t.equal(readFileSync(pwFile, 'utf8'), 'garage-secret\n', 'the password kept beside the config')
  t.equal(statSync(pwFile).mode & 0o777, 0o600, 'readable by the daemon’s user only')
  await page.click('#net-channels button[data-channel="0"]')
  await page.waitForSelector('#net-channels tr[data-channel="0"] td:has-text("added")')
  const cfg = JSON.parse(readFileSync(file, 'utf8'))
  t.same(
    cfg.buses.at(-1),
    { id: 'shelly-127-0-0-1', type: 'shelly', host: '127.0.0.1', port: shelly.port, passwordFile: pwFile },
    'the device as a bus',
  )
  t.match(cfg.outlets.at(-1), { id: 'shelly-127-0-0-1-0', bus: 'shelly-127-0-0-1', meter: { model: 'shelly-switch', channel: 0 } })
  t.notOk(readFileSync(file, 'utf8').includes('garage-secret'), 'the password is not in the config')
  await page.waitForSelector('#outlets article[data-outlet="shelly-127-0-0-1-0"][data-state="off"]', { timeout: 30_000 })
  t.ok(daemon.running(), 'added without a restart')
  // The same device again is refused: it is the site's now.
  const again = await find({ type: 'shelly', host: '127.0.0.1', port: shelly.port, password: 'garage-secret' })
  t.equal(again.status, 409)
  t.equal(again.body.error.code, 'device-in-use')
  // It charges: a start closes the Shelly's relay and the car draws.
  await api('/api/wallets/ann', { method: 'PUT', role: 'admin', body: { currency: 'CAD', balance: 5000 } })
  const started = await api('/api/outlets/shelly-127-0-0-1-0/start', { method: 'POST', body: { userId: 'ann' } })
  t.equal(started.status, 200, JSON.stringify(started.body))
  await waitFor(() => shelly.load.current > 5, 'the Shelly’s relay closed and the car draws')
  t.same(errors, [], 'no script errors')
})
