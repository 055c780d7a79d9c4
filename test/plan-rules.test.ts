/**
 * One set of plan rules (daemon/engine/plan-rules.ts) serves the config check, the
 * command gateway and the engine; the schema's `$defs/plan` states the same shape for
 * the README and editors. These properties hold the three to one verdict: over
 * generated plans, good and bad, a config is refused for its plan exactly when the
 * plan rules find a problem, a pushed set-plan is refused exactly then too, and
 * whatever the schema refuses the rules refuse as well.
 */
import t from 'tap'
import fc from 'fast-check'
import { readFileSync } from 'node:fs'
import { Ajv2020 } from 'ajv/dist/2020.js'
import { validateConfig, siteSchema } from '../daemon/config.js'
import { validateCommand } from '../daemon/command-gateway.js'
import { planIssues, planProblems } from '../daemon/engine/plan-rules.js'
import { packagePath } from '../core/paths.js'

const example = (): any => JSON.parse(readFileSync(packagePath('config', 'example.json'), 'utf8'))

const maybe = <T>(arb: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> => fc.option(arb, { nil: undefined })
/** Mostly good values, sometimes a bad one: a few generated plans in a hundred are valid, the rest wrong in one or more places. */
const pick = (good: unknown[], bad: unknown[]): fc.Arbitrary<unknown> =>
  fc.oneof({ weight: 12, arbitrary: fc.constantFrom(...good) }, { weight: 1, arbitrary: fc.constantFrom(...bad) })
const rate = pick([0, 0.15, 2.5, 0.123456], [0.1234567, -1, 2_000_000, 'x', Number.NaN])
const period = pick([true], [null, 'p', [1]]).chain((isObject) =>
  isObject !== true
    ? fc.constant(isObject)
    : fc.record(
        {
          days: pick([['mon'], ['mon', 'sun']], [[], ['funday'], ['mon', 'mon'], 'mon']),
          from: pick(['00:00', '07:00', '23:59'], ['24:00', '25:00', '7:00', 5]),
          to: pick(['24:00', '07:00', '23:00'], ['25:00', '7:00', 5]),
          perKwh: maybe(rate),
          perHour: maybe(rate),
          unavailable: maybe(pick([true, false], ['yes'])),
          colour: maybe(pick([undefined], ['red'])),
        },
        { requiredKeys: ['days', 'from', 'to'] },
      ),
)
const plan: fc.Arbitrary<unknown> = fc.record(
  {
    id: pick(['gen', 'gen.2'], ['x y', '', 'a'.repeat(65), 3]),
    name: maybe(pick(['Night'], [7, 'n'.repeat(201)])),
    currency: pick(['CAD', 'JPY', 'BHD'], ['XYZ', 'cad', 5]),
    activationFee: maybe(pick([0, 1, 0.25], [1.5, 0.001, 0.1234567, -1, 'x'])),
    periods: pick([true], ['all day', []]).chain((isList) =>
      isList === true ? fc.array(period, { minLength: 1, maxLength: 3 }) : fc.constant(isList),
    ),
    extra: maybe(pick([undefined], [1])),
  },
  { requiredKeys: ['id', 'currency', 'periods'] },
)
/** JSON has no undefined: a generated key set to undefined is a key left out. */
const json = (v: unknown): any => JSON.parse(JSON.stringify(v, (_k, x) => (typeof x === 'number' && Number.isNaN(x) ? 'NaN' : x)))

const ajv = new Ajv2020({ allErrors: true, strict: true, strictRequired: false, discriminator: true })
ajv.addSchema(siteSchema)
const schemaPlan = ajv.getSchema(`${siteSchema.$id as string}#/$defs/plan`)!

t.test('the generator reaches both verdicts, so the properties below can fail', async (t) => {
  const samples = fc.sample(plan, { numRuns: 2000, seed: 7 }).map(json)
  const valid = samples.filter((p) => planIssues(p, '').length === 0).length
  t.ok(valid > 20, `${valid} valid plans of 2000`)
  t.ok(valid < 1980, `${2000 - valid} invalid plans of 2000`)
})

t.test('whatever the schema refuses, the plan rules refuse too', async (t) => {
  fc.assert(
    fc.property(plan, (generated) => {
      const p = json(generated)
      return schemaPlan(p) === true || planIssues(p, '').length > 0
    }),
    { numRuns: 3000, seed: 11 },
  )
  t.pass('3000 plans')
})

t.test('a config is refused for its plan exactly when the plan rules find a problem, each said once', async (t) => {
  fc.assert(
    fc.property(plan, (generated) => {
      const p = json(generated)
      const cfg = example()
      const at = `/plans/${cfg.plans.length}`
      cfg.plans.push(p)
      const r = validateConfig(cfg)
      const said = r.ok ? [] : r.problems.filter((q) => q.pointer === at || q.pointer.startsWith(at + '/'))
      const keys = said.map((q) => `${q.pointer} ${q.message}`)
      return new Set(keys).size === keys.length && said.length > 0 === planIssues(p, at).length > 0
    }),
    { numRuns: 1500, seed: 13 },
  )
  t.pass('1500 configs')
})

t.test('a pushed set-plan is refused exactly when the plan rules find a problem', async (t) => {
  fc.assert(
    fc.property(plan, (generated) => {
      const p = json(generated)
      const r = validateCommand({ id: 'c1', action: 'set-plan', plan: p })
      return r.ok === (planProblems(p).length === 0)
    }),
    { numRuns: 1500, seed: 17 },
  )
  t.pass('1500 commands')
})

t.test('the rules name the place and say what is wrong', async (t) => {
  t.same(
    planIssues({ id: 'p', currency: 'CAD', activationFee: 0.005, periods: [{ days: ['mon'], from: '07:00', to: '07:00', perKwh: 1 }] }, '/plans/0'),
    [
      { pointer: '/plans/0/activationFee', message: '0.005 cannot be charged in CAD (at most 2 decimals)' },
      { pointer: '/plans/0/periods/0/to', message: 'from and to are both 07:00: an empty window (use 00:00-24:00 for all day)' },
    ],
  )
  t.same(planProblems({ id: 'p', currency: 'QQQ', periods: [{ days: ['mon', 'mon'], from: '24:00', to: '24:00' }] }), [
    'plan/currency: "QQQ" is not a known ISO 4217 currency',
    'plan/periods/0/days: names a day twice',
    'plan/periods/0/from: 24:00 is only valid as an end; use 00:00',
    'plan/periods/0: a period needs perKwh, perHour or "unavailable": true',
  ])
})
