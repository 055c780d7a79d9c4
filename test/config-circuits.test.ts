/**
 * Shared circuits in the site config: what check-config accepts, the defaults, and every
 * refusal (an unknown parent or circuit, a cycle, an outlet rated above its circuit's limit,
 * a feeder meter that collides with another device on its bus), each naming where. One case
 * goes through the built CLI: exit 78, one line per problem.
 */
import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { validateConfig, type ConfigProblem } from '../daemon/config.js'
import { runCli } from './helpers/cli.js'
import { type RejectCase, testRejections } from './helpers/config-cases.js'

const dir = mkdtempSync(join(tmpdir(), 'outpost-circuits-cfg-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

function garage(): any {
  return {
    site: { id: 'garage', timezone: 'America/Vancouver' },
    storage: { dir: '/var/lib/outpost' },
    buses: [{ id: 'rs485', type: 'modbus-rtu', path: '/dev/ttyUSB0' }],
    circuits: [
      { id: 'feeder', maxA: 100, meter: { bus: 'rs485', model: 'eastron-sdm630', unit: 30 } },
      { id: 'row-a', maxA: 40, parent: 'feeder', slotS: 900 },
    ],
    outlets: [
      {
        id: 'A1',
        bus: 'rs485',
        meter: { model: 'eastron-sdm120', unit: 1 },
        relay: { model: 'modbus-coil', unit: 100, coil: 0 },
        plan: 'p',
        circuit: 'row-a',
        ratingA: 16,
      },
      {
        id: 'A2',
        bus: 'rs485',
        meter: { model: 'eastron-sdm120', unit: 2 },
        relay: { model: 'modbus-coil', unit: 100, coil: 1 },
        plan: 'p',
        circuit: 'row-a',
        phase: 'L2',
        ratingA: 16,
        priority: 10,
      },
    ],
    plans: [
      { id: 'p', currency: 'CAD', periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 0.2 }] },
    ],
  }
}

function problems(cfg: unknown): ConfigProblem[] {
  const r = validateConfig(cfg)
  return r.ok ? [] : r.problems
}

t.test('a garage with a metered feeder and a row on it is accepted, with the defaults applied', async (t) => {
  const r = validateConfig(garage())
  t.ok(r.ok, r.ok ? 'valid' : JSON.stringify(r.problems))
  if (!r.ok) return
  t.same(r.config.circuits[0], { id: 'feeder', maxA: 100, meter: { bus: 'rs485', model: 'eastron-sdm630', unit: 30 }, failsafeA: 0, slotS: 1800 })
  t.equal(r.config.circuits[1]!.slotS, 900)
  t.equal(r.config.outlets[0]!.phase, 'L1', 'phase defaults to L1')
  t.equal(r.config.outlets[0]!.priority, 0, 'priority defaults to 0')
  t.equal(r.config.outlets[1]!.priority, 10)
  const none = validateConfig({ ...garage(), circuits: undefined, outlets: garage().outlets.map(({ circuit: _c, ...o }: any) => o) })
  t.ok(none.ok && none.config.circuits.length === 0, 'a site without circuits has an empty list')
})

const cases: RejectCase[] = [
  ['unknown parent', (c) => (c.circuits[1].parent = 'mains'), '/circuits/1/parent', /unknown circuit "mains" \(circuits: feeder, row-a\)/],
  ['unknown circuit on an outlet', (c) => (c.outlets[1].circuit = 'row-b'), '/outlets/1/circuit', /unknown circuit "row-b"/],
  [
    'a cycle',
    (c) => {
      c.circuits[0].parent = 'row-a'
    },
    '/circuits/0/parent',
    /circuits form a cycle: feeder -> row-a -> feeder/,
  ],
  ['a circuit that feeds itself', (c) => (c.circuits[1].parent = 'row-a'), '/circuits/1/parent', /cycle: row-a -> row-a/],
  [
    'an outlet rated above its circuit',
    (c) => (c.outlets[0].ratingA = 48),
    '/outlets/0/ratingA',
    /rating 48 A exceeds the 40 A limit of circuit "row-a"/,
  ],
  [
    'an outlet rated above a parent of its circuit',
    (c) => {
      c.circuits[0].maxA = 20
      c.outlets[0].ratingA = 32
      c.circuits[1].maxA = 63
    },
    '/outlets/0/ratingA',
    /exceeds the 20 A limit of circuit "feeder" \(which feeds "row-a"\)/,
  ],
  [
    'the default 32 A rating above a 16 A circuit',
    (c) => ((c.circuits[1].maxA = 16), delete c.outlets[0].ratingA),
    '/outlets/0/ratingA',
    /rating 32 A/,
  ],
  [
    'a feeder meter on an outlet meter’s unit',
    (c) => (c.circuits[0].meter.unit = 2),
    '/circuits/0/meter/unit',
    /unit 2 on bus "rs485" is already claimed by \/outlets\/1\/meter/,
  ],
  [
    'a feeder meter on the relay board’s unit',
    (c) => (c.circuits[0].meter.unit = 100),
    '/circuits/0/meter/unit',
    /unit 100 on bus "rs485" is already claimed by \/outlets\/\d\/relay/,
  ],
  [
    'two feeder meters on one unit',
    (c) => (c.circuits[1].meter = { bus: 'rs485', model: 'eastron-sdm630', unit: 30 }),
    '/circuits/1/meter/unit',
    /already claimed by \/circuits\/0\/meter/,
  ],
  ['a feeder meter on an unknown bus', (c) => (c.circuits[0].meter.bus = 'lan'), '/circuits/0/meter/bus', /unknown bus "lan"/],
  ['a feeder meter of an unknown model', (c) => (c.circuits[0].meter.model = 'sdm9000'), '/circuits/0/meter/model', /unknown meter model "sdm9000"/],
  ['a relay model as feeder meter', (c) => (c.circuits[0].meter.model = 'modbus-coil'), '/circuits/0/meter/model', /unknown meter model/],
  ['duplicate circuit id', (c) => (c.circuits[1].id = 'feeder'), '/circuits/1/id', /duplicate circuit id "feeder"/],
  ['slotS below 5', (c) => (c.circuits[1].slotS = 4), '/circuits/1/slotS', /must be >= 5/],
  ['a zero limit', (c) => (c.circuits[1].maxA = 0), '/circuits/1/maxA', /must be > 0/],
  ['an unknown phase', (c) => (c.outlets[0].phase = 'L4'), '/outlets/0/phase', /must be one of: "L1", "L2", "L3"/],
  ['a negative priority', (c) => (c.outlets[0].priority = -1), '/outlets/0/priority', /must be >= 0/],
  [
    'an unknown key in a circuit',
    (c) => (c.circuits[0].limit = 5),
    '/circuits/0/limit',
    /unknown key \(allowed here: id, maxA, parent, meter, failsafeA, slotS\)/,
  ],
]

testRejections(cases, garage, 'refused')

t.test('a cycle of three is reported once', async (t) => {
  const cfg = garage()
  cfg.circuits.push({ id: 'row-b', maxA: 40, parent: 'row-a' })
  cfg.circuits[0].parent = 'row-b'
  const cycles = problems(cfg).filter((p) => /cycle/.test(p.message))
  t.equal(cycles.length, 1, JSON.stringify(cycles))
})

t.test('built CLI: check-config names every circuit problem, exit 78', async (t) => {
  const cfg = garage()
  cfg.circuits[1].parent = 'mains'
  cfg.outlets[0].ratingA = 48
  cfg.circuits[0].meter.unit = 1
  const f = join(dir, 'site.json')
  writeFileSync(f, JSON.stringify(cfg, null, 2))
  const r = runCli(['check-config', f])
  t.equal(r.status, 78)
  const lines = r.stderr.trim().split('\n')
  t.ok(
    lines.some((l) => l === `${f}: /circuits/1/parent: unknown circuit "mains" (circuits: feeder, row-a)`),
    r.stderr,
  )
  t.ok(
    lines.some((l) => l.startsWith(`${f}: /circuits/0/meter/unit: unit 1 on bus "rs485" is already claimed by /outlets/0/meter`)),
    r.stderr,
  )
  t.ok(
    lines.some((l) => l.startsWith(`${f}: /outlets/0/ratingA: rating 48 A exceeds`)),
    r.stderr,
  )
})
