import t, { type Test } from 'tap'
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { validateConfig, loadConfigFile, parseJson } from '../daemon/config.js'
import { packagePath } from '../core/paths.js'
import { type RejectCase, testRejections } from './helpers/config-cases.js'

const example = (): any => JSON.parse(readFileSync(packagePath('config', 'example.json'), 'utf8'))

t.test('the contract example validates as written', async (t) => {
  const r = validateConfig(example())
  t.ok(r.ok, r.ok ? 'valid' : JSON.stringify(r.problems))
})

t.test("the contract's example is the one in config/", async (t) => {
  // The project's own contract (docs/contract.md) is the truth; its example must be the shipped one.
  const contract = readFileSync(packagePath('docs', 'contract.md'), 'utf8')
  const m = /```json\n([\s\S]*?)```/.exec(contract)
  t.ok(m, 'contract has a JSON example')
  t.same(JSON.parse(m![1]!), example())
})

t.test('defaults are applied from the schema, in one place', async (t) => {
  const cfg = example()
  delete cfg.sessions
  delete cfg.offline
  delete cfg.buses[1].timeoutMs
  const r = validateConfig(cfg)
  t.ok(r.ok)
  if (!r.ok) return
  t.same(r.config.sessions, {
    pollMs: 1000,
    graceSeconds: 60,
    minChargeA: 0.5,
    autoStartA: 0.5,
    noCurrentA: 0.1,
    noCurrentHoldMs: 2000,
    meterFaultMs: 10000,
    taperRatio: 0.5,
    reconciliationMinutes: 60,
  })
  t.same(r.config.offline, { limitMinutes: null })
  t.equal(r.config.buses[1]!.timeoutMs, 300, 'bus defaults apply inside the bus kind')
  t.equal(r.config.outlets[0]!.ratingA, 32)
  t.equal(r.config.storage.readingSyncMs, 5000)
  t.equal(r.config.uplink!.topicPrefix, 'outpost')
  t.equal(r.config.logging.level, 'info')
  t.notOk('ratingA' in example().outlets[0], 'validation does not mutate its input')
})

t.test('a site with no outlets yet is valid (being commissioned: the bus scan adds them), and checks the rest', async (t) => {
  const cfg = example()
  cfg.outlets = []
  delete cfg.circuits
  const r = validateConfig(cfg)
  t.ok(r.ok, r.ok ? '' : JSON.stringify(r.problems))
  cfg.plans = []
  const bad = validateConfig(cfg)
  t.notOk(bad.ok, 'a plan is still required')
})

t.test('a config without uplink, api and relay is valid (offline, meter-only)', async (t) => {
  const cfg = example()
  delete cfg.uplink
  delete cfg.api
  delete cfg.outlets[0].relay
  const r = validateConfig(cfg)
  t.ok(r.ok, r.ok ? '' : JSON.stringify(r.problems))
})

const cases: RejectCase[] = [
  ['missing site id', (c) => delete c.site.id, '/site/id', /is required/],
  ['missing buses', (c) => delete c.buses, '/buses', /is required/],
  ['site id with a slash (it is an MQTT topic level)', (c) => (c.site.id = 'lot/7'), '/site/id', /must be an id/],
  ['bad time zone', (c) => (c.site.timezone = 'Mars/Olympus_Mons'), '/site/timezone', /not an IANA time zone/],
  ['unknown bus', (c) => (c.outlets[0].bus = 'rs232'), '/outlets/0/bus', /unknown bus "rs232" \(buses: rs485, lan\)/],
  ['unknown plan', (c) => (c.outlets[1].plan = 'weekend'), '/outlets/1/plan', /unknown plan "weekend"/],
  ['duplicate outlet id', (c) => (c.outlets[1].id = 'A1'), '/outlets/1/id', /duplicate outlet id "A1"/],
  ['duplicate bus id', (c) => (c.buses[1].id = 'rs485'), '/buses/1/id', /duplicate bus id "rs485"/],
  ['duplicate plan id', (c) => (c.plans[1].id = 'standard'), '/plans/1/id', /duplicate plan id "standard"/],
  [
    'coil collision on one bus',
    (c) => (c.outlets[1].relay.coil = 0),
    '/outlets/1/relay/coil',
    /coil 0 of unit 100 on bus "lan" is already switched by \/outlets\/0/,
  ],
  [
    'meter unit collision on one bus',
    (c) => (c.outlets[1].meter.unit = 1),
    '/outlets/1/meter/unit',
    /unit 1 on bus "lan" is already claimed by \/outlets\/0\/meter/,
  ],
  ["relay on another outlet's meter unit", (c) => (c.outlets[1].relay.unit = 1), '/outlets/1/relay/unit', /is the meter of \/outlets\/0/],
  ['hour 25', (c) => (c.plans[1].periods[0].from = '25:00'), '/plans/1/periods/0/from', /must be a time HH:MM/],
  ['24:00 as a start', (c) => (c.plans[1].periods[0].from = '24:00'), '/plans/1/periods/0/from', /only valid as an end/],
  ['empty window', (c) => (c.plans[1].periods[0].to = '07:00'), '/plans/1/periods/0/to', /empty window/],
  ['negative rate', (c) => (c.plans[0].periods[0].perKwh = -0.15), '/plans/0/periods/0/perKwh', /must be >= 0/],
  ['7 decimals', (c) => (c.plans[0].periods[0].perKwh = 0.1234567), '/plans/0/periods/0/perKwh', /more than 6 decimals/],
  [
    'fee finer than the currency',
    (c) => (c.plans[0].activationFee = 0.505),
    '/plans/0/activationFee',
    /cannot be charged in CAD \(at most 2 decimals\)/,
  ],
  ['unknown currency', (c) => (c.plans[0].currency = 'XYZ'), '/plans/0/currency', /not a known ISO 4217 currency/],
  ['period without a rate', (c) => delete c.plans[1].periods[1].perKwh, '/plans/1/periods/1', /needs perKwh, perHour or "unavailable": true/],
  ['auto-start without relay', (c) => delete c.outlets[1].relay, '/outlets/1/autoStart', /auto-start needs a relay/],
  ['port as a string', (c) => (c.buses[1].port = '5020'), '/buses/1/port', /must be an integer/],
  ['pollMs wrong type', (c) => (c.sessions.pollMs = true), '/sessions/pollMs', /must be an integer/],
  [
    'unknown key at the top',
    (c) => (c.sesions = {}),
    '/sesions',
    /unknown key \(allowed here: site, storage, models, buses, outlets, plans, sessions/,
  ],
  ['unknown key in an outlet', (c) => (c.outlets[0].autostart = { userId: 'x' }), '/outlets/0/autostart', /unknown key/],
  ['unknown bus type', (c) => (c.buses[0].type = 'canbus'), '/buses/0/type', /must be one of: "modbus-rtu", "modbus-tcp", "serial"/],
  ['key of another bus kind', (c) => (c.buses[1].baudRate = 9600), '/buses/1/baudRate', /unknown key/],
  ['bad baud rate', (c) => (c.buses[0].baudRate = 9601), '/buses/0/baudRate', /must be one of: 1200, 2400/],
  ['unit 0', (c) => (c.outlets[0].meter.unit = 0), '/outlets/0/meter/unit', /must be >= 1/],
  ['unit 248', (c) => (c.outlets[0].meter.unit = 248), '/outlets/0/meter/unit', /must be <= 247/],
  ['unknown meter model', (c) => (c.outlets[0].meter.model = 'acme-x1'), '/outlets/0/meter/model', /unknown meter model "acme-x1"/],
  ['modbus-coil relay without a coil', (c) => delete c.outlets[0].relay.coil, '/outlets/0/relay/coil', /is required for a modbus-coil relay/],
  ['bad day name', (c) => (c.plans[0].periods[0].days = ['monday']), '/plans/0/periods/0/days/0', /must be one of: "mon"/],
  ['offline limit zero', (c) => (c.offline.limitMinutes = 0), '/offline/limitMinutes', /must be >= 1/],
  ['bad broker URL', (c) => (c.uplink.url = 'http://broker'), '/uplink/url', /must be a broker URL/],
  ['bad listen address', (c) => (c.api.listen = '8080'), '/api/listen', /must be host:port/],
  ['short token', (c) => (c.api.token = 'x'), '/api/token', /at least 8 characters/],
  ['no bus', (c) => (c.buses = []), '/buses', /at least 1 item/],
  [
    'one serial port for two buses',
    (c) => c.buses.push({ id: 'again', type: 'modbus-rtu', path: '/dev/ttyUSB0' }),
    '/buses/2/path',
    /already used by \/buses\/0/,
  ],
  [
    'Modbus meter on a serial bus',
    (c) => {
      c.buses[0].type = 'serial'
      c.outlets[0].bus = 'rs485'
    },
    '/outlets/0/meter/model',
    /Modbus model but the outlet's bus is a plain serial bus/,
  ],
  [
    'Node-RED without the API that serves it',
    (c) => {
      delete c.api
      c.nodeRed = { enabled: true }
    },
    '/api',
    /is required when nodeRed is enabled: Node-RED is served by the local API listener/,
  ],
  [
    'Node-RED editor open on the network',
    (c) => {
      c.api.listen = '0.0.0.0:8080'
      c.nodeRed = { enabled: true }
    },
    '/nodeRed/adminAuth',
    /is required when nodeRed is enabled and api.listen \(0\.0\.0\.0:8080\) is not loopback/,
  ],
  [
    'Node-RED editor open on a LAN address',
    (c) => {
      c.api.listen = '192.168.1.20:80'
      c.nodeRed = { enabled: true }
    },
    '/nodeRed/adminAuth',
    /is required when nodeRed is enabled/,
  ],
  [
    'a password where its hash belongs',
    (c) => (c.nodeRed = { enabled: true, adminAuth: { username: 'installer', passwordHash: 'correct horse battery staple' } }),
    '/nodeRed/adminAuth/passwordHash',
    /must be a bcrypt hash .* never the password itself/,
  ],
  ['Node-RED editor at the root', (c) => (c.nodeRed = { enabled: true, httpAdminRoot: '/' }), '/nodeRed/httpAdminRoot', /must not be "\/"/],
  [
    'Node-RED endpoints over the API',
    (c) => (c.nodeRed = { enabled: true, httpNodeRoot: '/api/flows' }),
    '/nodeRed/httpNodeRoot',
    /overlaps the local API's \/api/,
  ],
  [
    'Node-RED endpoints inside the editor',
    (c) => (c.nodeRed = { enabled: true, httpAdminRoot: '/red', httpNodeRoot: '/red/hooks' }),
    '/nodeRed/httpNodeRoot',
    /overlaps httpAdminRoot "\/red"/,
  ],
  ['Node-RED root without a slash', (c) => (c.nodeRed = { enabled: true, httpNodeRoot: 'hooks' }), '/nodeRed/httpNodeRoot', /must start with '\/'/],
  [
    "Node-RED's user directory inside storage.dir",
    (c) => (c.nodeRed = { enabled: true, userDir: `${c.storage.dir}/node-red` }),
    '/nodeRed/userDir',
    /overlaps storage.dir .* must not reach the journal or the key/,
  ],
  [
    "storage.dir inside Node-RED's user directory",
    (c) => (c.nodeRed = { enabled: false, userDir: String(c.storage.dir).replace(/\/[^/]+$/, '') }),
    '/nodeRed/userDir',
    /overlaps storage.dir/,
  ],
  ['Node-RED as root', (c) => (c.nodeRed = { enabled: true, user: 'root' }), '/nodeRed/user', /must not be root/],
  ['Node-RED flooding at any rate', (c) => (c.nodeRed = { enabled: true, commandRate: 100_000 }), '/nodeRed/commandRate', /must be <= 1000/],
]

testRejections(cases, example)

t.test('Node-RED: loopback may go without a password; the defaults; disabled needs nothing', async (t) => {
  for (const listen of ['127.0.0.1:8080', '127.1.2.3:80', 'localhost:8080', '[::1]:8080']) {
    const cfg = example()
    cfg.api.listen = listen
    cfg.nodeRed = { enabled: true }
    const r = validateConfig(cfg)
    t.ok(r.ok, `${listen}: ${r.ok ? 'valid' : JSON.stringify(r.problems)}`)
    if (r.ok)
      t.same(
        r.config.nodeRed,
        { enabled: true, httpAdminRoot: '/red', httpNodeRoot: '/red-api', commandRate: 20, maxMemoryMb: 256 },
        'roots, command rate and heap bound default',
      )
  }
  const lan = example()
  lan.api.listen = '0.0.0.0:8080'
  lan.nodeRed = { enabled: true, adminAuth: { username: 'installer', passwordHash: '$2b$08$vVmNK1VDdiGAqRm4K/74wO2C0h7zOYdCc7h36GeYheqjYFxBnVro.' } }
  const r = validateConfig(lan)
  t.ok(r.ok, r.ok ? 'off loopback with adminAuth' : JSON.stringify(r.problems))
  const off = example()
  delete off.api
  off.nodeRed = { enabled: false }
  t.ok(validateConfig(off).ok, 'a disabled Node-RED needs no API')
})

t.test('every problem is reported at once', async (t) => {
  const cfg = example()
  delete cfg.site.id
  cfg.site.timezone = 'Nowhere/Land'
  cfg.outlets[1].relay.coil = 0
  cfg.plans[0].periods[0].perKwh = -1
  const r = validateConfig(cfg)
  t.notOk(r.ok)
  if (r.ok) return
  t.same(r.problems.map((p) => p.pointer).sort(), ['/outlets/1/relay/coil', '/plans/0/periods/0/perKwh', '/site/id', '/site/timezone'])
})

t.test('a wrapping window and 24:00 end are valid', async (t) => {
  const cfg = example()
  cfg.plans[1].periods = [
    { days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '19:00', to: '07:00', perKwh: 0.08 },
    { days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '07:00', to: '24:00', perKwh: 0.123456, perHour: 0.5 },
  ]
  const r = validateConfig(cfg)
  t.ok(r.ok, r.ok ? '' : JSON.stringify(r.problems))
})

t.test('malformed JSON is reported with line and column', async (t) => {
  const r = parseJson('{\n  "site": {\n    "id": "x",\n  }\n}')
  t.notOk(r.ok)
  if (r.ok) return
  t.equal(r.problems.length, 1)
  t.match(r.problems[0], { line: 4, column: 3, message: /malformed JSON: expected a quoted property name/ })
  const trailing = parseJson('{"a": 1} 2')
  t.match(!trailing.ok && trailing.problems[0], { line: 1, column: 10, message: /after the end of the document/ })
  const empty = parseJson('   ')
  t.match(!empty.ok && empty.problems[0], { message: /empty/ })
})

t.test('a duplicate key is an error, not silently the last one', async (t) => {
  const r = parseJson('{"site": {"id": "a", "id": "b"}}')
  t.notOk(r.ok)
  if (r.ok) return
  t.match(r.problems[0], { pointer: '/site/id', line: 1, message: /duplicate key "id"/ })
})

t.test('files: unreadable, a directory, valid', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-cfg-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  t.match(loadConfigFile(join(dir, 'none.json')), { ok: false, problems: [{ message: 'cannot read config: no such file' }] })
  t.match(loadConfigFile(dir), { ok: false, problems: [{ message: /is a directory/ }] })
  const f = join(dir, 'site.json')
  writeFileSync(f, JSON.stringify(example()))
  t.ok(loadConfigFile(f).ok)
})

// Installer models, written as an installer would from docs/drivers.md.
const serialMeterModel = {
  name: 'acme-serial',
  kinds: ['meter', 'relay'],
  phases: 1,
  transport: 'serial',
  relay: { point: 'line', closedValue: 1, openValue: 0 },
}
const modbusMeterModel = {
  name: 'acme-b23',
  kinds: ['meter'],
  phases: 3,
  transport: 'modbus',
  maxRegistersPerRead: 60,
  registers: [
    { quantity: 'voltageV', function: 4, address: 0, type: 'float32' },
    { quantity: 'currentA', function: 4, address: 6, type: 'float32' },
    { quantity: 'powerW', function: 4, address: 12, type: 'float32' },
    { quantity: 'energyWh', function: 4, address: 72, type: 'float32', scale: 1000 },
  ],
}

function modelsDir(t: Test, ...models: { name: string }[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-models-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  for (const m of models) writeFileSync(join(dir, `${m.name}.json`), JSON.stringify(m))
  return dir
}

t.test("each outlet's phases: its meter model's, or 1 set for a three-phase meter on a single-phase outlet", async (t) => {
  const cfg = example()
  cfg.outlets[0].meter.model = 'eastron-sdm630'
  const r = validateConfig(cfg)
  if (!r.ok) return t.fail(JSON.stringify(r.problems))
  t.equal(r.config.outlets[0]!.phases, 3, 'an SDM630: three')
  t.equal(r.config.outlets[1]!.phases, 1, 'an SDM120: one')
  t.ok(validateConfig(r.config).ok, 'a validated config validates again')
  cfg.outlets[0].phases = 1
  const one = validateConfig(cfg)
  t.equal(one.ok && one.config.outlets[0]!.phases, 1, 'set 1: the bound of one phase')
  const bad = example()
  bad.outlets[1].phases = 3
  const no = validateConfig(bad)
  t.same(no.ok ? [] : no.problems, [
    {
      pointer: '/outlets/1/phases',
      message: 'is 3 but "eastron-sdm120" is a single-phase meter: it measures one phase (set 1, or leave phases out)',
    },
  ])
  bad.outlets[1].phases = 2
  const two = validateConfig(bad)
  t.match(two.ok ? [] : two.problems, [{ pointer: '/outlets/1/phases' }])
})

t.test('an installer meter model from before "phases" still loads: its outlets are bounded as three-phase', async (t) => {
  const cfg = example()
  const { phases: _, ...older } = { ...modbusMeterModel, name: 'acme-older' }
  cfg.models = { dir: modelsDir(t, older) }
  cfg.outlets[0].meter.model = 'acme-older'
  const r = validateConfig(cfg)
  if (!r.ok) return t.fail(JSON.stringify(r.problems))
  t.equal(r.config.outlets[0]!.phases, 3, 'the loose bound it had: an upgrade never stops a site')
  t.equal(r.config.outlets[1]!.phases, 1, 'a built-in single-phase model keeps its own')
})

t.test('installer models from models.dir are accepted', async (t) => {
  const cfg = example()
  cfg.models = { dir: modelsDir(t, modbusMeterModel) }
  cfg.outlets[0].meter.model = 'acme-b23'
  const r = validateConfig(cfg)
  t.ok(r.ok, r.ok ? '' : JSON.stringify(r.problems))
})

t.test('an installer serial model on a serial bus passes; on a Modbus bus it is refused', async (t) => {
  const cfg = example()
  cfg.models = { dir: modelsDir(t, serialMeterModel) }
  cfg.buses[0].type = 'serial'
  for (const k of Object.keys(cfg.buses[0])) if (!['id', 'type', 'path', 'baudRate'].includes(k)) delete cfg.buses[0][k]
  cfg.outlets[0].bus = cfg.buses[0].id
  cfg.outlets[0].meter = { model: 'acme-serial', unit: 1 }
  cfg.outlets[0].relay = { model: 'acme-serial', unit: 1 }
  const ok = validateConfig(cfg)
  t.ok(ok.ok, ok.ok ? '' : JSON.stringify(ok.problems))

  const onModbus = example()
  onModbus.models = cfg.models
  onModbus.outlets[0].meter.model = 'acme-serial'
  const r = validateConfig(onModbus)
  t.notOk(r.ok)
  if (!r.ok)
    t.match(r.problems, [
      { pointer: '/outlets/0/meter/model', message: /"acme-serial" speaks the serial line protocol but the outlet's bus is Modbus/ },
    ])
})

t.test('an installer model file that is not a valid model is named, at /models/dir', async (t) => {
  const dir = modelsDir(t)
  writeFileSync(join(dir, 'acme-b23.json'), '{}')
  const cfg = example()
  cfg.models = { dir }
  cfg.outlets[0].meter.model = 'acme-b23'
  const r = validateConfig(cfg)
  t.notOk(r.ok)
  if (!r.ok) t.match(r.problems, [{ pointer: '/models/dir', message: /model file .*acme-b23\.json: .*must have required property 'name'/ }])
})
