/**
 * OCPI 2.2.1 exports against the specification itself (github.com/ocpi/ocpi, tag 2.2.1,
 * commit 480973547169dee2fe6d12b1a0fe604623efcbb5; the examples are copied unchanged into
 * test/fixtures/ocpi/): the JSON Schema written from its field tables accepts the spec's own
 * CDR and Tariff examples and refuses broken ones; the spec's worked tariff and CDR examples,
 * billed by Outpost's engine and exported, give the spec's structures and totals (where
 * Outpost's per-second billing differs from a `step_size`, the test says so); the CSV's
 * columns, quoting and cost split.
 */
import t from 'tap'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { packagePath } from '../core/paths.js'
import type { PlanConfig, SessionEndedBody } from '../core/types.js'
import { costSplit, csvHeader, csvRow, planToTariff, sessionToCdr, type OcpiSite, type OcpiTariff } from '../daemon/export.js'
import { OCPI, billOne, ocpiValidators } from './helpers/export-kit.js'

const FIXTURES = packagePath('test', 'fixtures', 'ocpi')
const spec = (name: string) => JSON.parse(readFileSync(join(FIXTURES, `${name}.json`), 'utf8'))
const ALL = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const
const NOW = '2026-03-09T12:00:00.000Z'
const { cdr: cdrProblems, tariff: tariffProblems } = ocpiValidators()

function siteWith(plan: PlanConfig, timezone = 'UTC'): OcpiSite {
  return { siteId: 'lot-7', siteName: 'Lot 7', ocpi: OCPI, plans: new Map([[plan.id, plan]]), timezone, meterIds: new Map([['A1', 'lan:1']]) }
}

/** A tariff as (type, price, restrictions) per component, for the dimensions Outpost has (FLAT, ENERGY, TIME): vat and step_size aside. */
function priced(tariff: { elements: { price_components: { type: string; price: number }[]; restrictions?: Record<string, unknown> }[] }) {
  return tariff.elements.flatMap((e) =>
    e.price_components
      .filter((c) => ['FLAT', 'ENERGY', 'TIME'].includes(c.type))
      .map((c) => ({ type: c.type, price: c.price, restrictions: e.restrictions ?? {} })),
  )
}

t.test('the JSON Schema (config/ocpi-2.2.1.schema.json) accepts the spec examples and refuses broken objects', async (t) => {
  const files = readdirSync(FIXTURES).filter((f) => f.endsWith('.json'))
  t.ok(files.length >= 17, `${files.length} spec examples`)
  for (const f of files) {
    const v = JSON.parse(readFileSync(join(FIXTURES, f), 'utf8'))
    const problems = f.startsWith('cdr') ? cdrProblems(v) : tariffProblems(v)
    // The spec's CDR example leaves out cdr_token.country_code and party_id, which its own CdrToken table
    // makes required (cardinality 1): the schema follows the table, and those are the only two problems.
    const expected =
      f === 'cdr_example.json' ? ["/cdr_token: must have required property 'country_code'", "/cdr_token: must have required property 'party_id'"] : []
    t.same(problems, expected, `${f} is valid${expected.length ? ' but for the two CdrToken fields the example omits' : ''}`)
  }
  t.same(
    cdrProblems({ ...spec('cdr_example'), cdr_token: { ...spec('cdr_example').cdr_token, country_code: 'BE', party_id: 'BEC' } }),
    [],
    'with them, valid',
  )
  const cdr = spec('cdr_example')
  const { total_cost: _tc, ...noTotal } = cdr
  t.match(cdrProblems(noTotal).join(), /must have required property 'total_cost'/, 'a CDR without total_cost is refused')
  t.match(cdrProblems({ ...cdr, total_costs: cdr.total_cost }).join(), /must NOT have additional properties/, 'a misspelt field is refused')
  t.match(
    cdrProblems({ ...cdr, start_date_time: '2015-06-29 21:39' }).join(),
    /start_date_time: must match pattern/,
    'a DateTime that is not RFC 3339',
  )
  const tariff = spec('tariff_8_simple_025kwh')
  t.match(tariffProblems({ ...tariff, elements: [] }).join(), /must NOT have fewer than 1 items/, 'a Tariff without elements is refused')
  t.match(
    tariffProblems({
      ...tariff,
      elements: [{ price_components: [{ type: 'ENERGY', price: 1, step_size: 1 }], restrictions: { start_time: '24:00' } }],
    }).join(),
    /start_time: must match pattern/,
    '24:00 is not an OCPI time (end of day is 00:00)',
  )
})

t.test('mod_tariffs.asciidoc, "Simple Tariff example 0.25 euro per kWh" (tariff_8_simple_025kwh.json)', async (t) => {
  const plan: PlanConfig = { id: '16', currency: 'EUR', periods: [{ days: [...ALL], from: '00:00', to: '24:00', perKwh: 0.25 }] }
  const ours = planToTariff(plan, siteWith(plan), NOW)
  t.same(tariffProblems(ours), [], 'valid')
  t.same(priced(ours), priced(spec('tariff_8_simple_025kwh')), 'one ENERGY component at 0.25, no restrictions')
  t.equal(
    ours.elements[0]!.price_components[0]!.step_size,
    spec('tariff_8_simple_025kwh').elements[0].price_components[0].step_size,
    'step_size 1 (Wh)',
  )
})

t.test('mod_tariffs.asciidoc, "Tariff example 0.25 euro per kWh + start fee" (tariff_9_025kwh_start.json): 20 kWh cost 5.50 excl. VAT', async (t) => {
  const plan: PlanConfig = { id: '17', currency: 'EUR', activationFee: 0.5, periods: [{ days: [...ALL], from: '00:00', to: '24:00', perKwh: 0.25 }] }
  const site = siteWith(plan)
  const ours = planToTariff(plan, site, NOW)
  t.same(priced(ours), priced(spec('tariff_9_025kwh_start')), 'FLAT 0.50 and ENERGY 0.25')
  // "This tariff will result in total cost of 5.50 euro (excl. VAT) ... when 20 kWh are charged."
  const ended = billOne(plan, 'UTC', Date.UTC(2026, 2, 9, 8, 0), 20_000, 20_000)
  const cdr = sessionToCdr(ended, site, { lastUpdated: NOW })
  t.same(cdrProblems(cdr), [], 'the CDR is valid')
  t.equal(ended.total, 550, 'the engine bills 550 cents')
  t.same(cdr.total_cost, { excl_vat: 5.5 }, 'total_cost 5.50')
  t.same(cdr.total_fixed_cost, { excl_vat: 0.5 }, 'the start fee as total_fixed_cost')
  t.same(cdr.total_energy_cost, { excl_vat: 5 }, '20 kWh at 0.25')
  t.equal(cdr.total_energy, 20, 'total_energy 20 kWh')
})

t.test('mod_tariffs.asciidoc, "Simple Tariff example 2 euro per hour" (tariff_1_simple_2hour.json)', async (t) => {
  const plan: PlanConfig = { id: '12', currency: 'EUR', periods: [{ days: [...ALL], from: '00:00', to: '24:00', perHour: 2 }] }
  const ours = planToTariff(plan, siteWith(plan), NOW)
  t.same(priced(ours), priced(spec('tariff_1_simple_2hour')), 'TIME at 2.00')
  // The spec bills per minute (step_size 60); Outpost prorates by the second, which OCPI states as step_size 1.
  t.equal(ours.elements[0]!.price_components[0]!.step_size, 1)
})

t.test(
  'mod_tariffs.asciidoc, PriceComponent "Example Tariff" (tariff_14_step_size.json) and "switching to different Tariff Element #1"',
  async (t) => {
    const plan: PlanConfig = {
      id: '22',
      currency: 'EUR',
      periods: [
        { days: [...ALL], from: '00:00', to: '17:00', perHour: 1.2 },
        { days: [...ALL], from: '17:00', to: '20:00', perHour: 2.4 },
        { days: [...ALL], from: '20:00', to: '24:00', perHour: 2.4 },
      ],
    }
    const site = siteWith(plan)
    const ours = planToTariff(plan, site, NOW)
    t.same(tariffProblems(ours), [], 'valid')
    t.same(
      priced(ours),
      priced(spec('tariff_14_step_size')),
      'the TIME components and their windows, 24:00 as 00:00 (PARKING_TIME: Outpost has none)',
    )
    // "An EV driver plugs in at 16:55 and charges for 10 minutes ... 5 billable minutes of charging time before 17:00,
    // generating costs of 0.10 euro. 5 billable minutes of charging time after 17:00, generating costs of 0.20 euro."
    const ended = billOne(plan, 'UTC', Date.UTC(2026, 2, 9, 16, 55), 600, 600)
    const cdr = sessionToCdr(ended, site, { lastUpdated: NOW })
    t.same(cdrProblems(cdr), [], 'the CDR is valid')
    t.equal(ended.total, 30, '0.10 + 0.20 = 0.30 for the charging time')
    t.same(
      cdr.charging_periods.map((p) => [p.start_date_time, p.dimensions.find((d) => d.type === 'TIME')!.volume, p.tariff_id]),
      [
        ['2026-03-09T16:55:00.000Z', 0.083333, '22'],
        ['2026-03-09T17:00:00.000Z', 0.083333, '22'],
      ],
      'a charging period starts when the other Tariff Element becomes active (mod_cdrs.asciidoc, ChargingPeriod)',
    )
    t.same(cdr.total_time_cost, { excl_vat: 0.3 })
  },
)

t.test('mod_cdrs.asciidoc, "Example of a CDR" (cdr_example.json): the same session from Outpost', async (t) => {
  const example = spec('cdr_example')
  const plan: PlanConfig = { id: '12', currency: 'EUR', periods: [{ days: [...ALL], from: '00:00', to: '24:00', perHour: 2 }] }
  const site = siteWith(plan)
  const start = Date.parse(example.start_date_time)
  const seconds = (Date.parse(example.end_date_time) - start) / 1000
  const ended = billOne(plan, 'UTC', start, seconds, example.total_energy * 1000)
  const cdr = sessionToCdr(ended, site, { lastUpdated: NOW })
  t.same(cdrProblems(cdr), [], 'valid')
  t.equal(Date.parse(cdr.start_date_time), Date.parse(example.start_date_time), 'start_date_time')
  t.equal(Date.parse(cdr.end_date_time), Date.parse(example.end_date_time), 'end_date_time')
  t.equal(cdr.currency, example.currency)
  t.equal(cdr.total_energy, example.total_energy, 'total_energy 15.342 kWh')
  t.equal(Number(cdr.total_time.toFixed(3)), example.total_time, 'total_time 1.973 h')
  t.same(
    cdr.charging_periods.map((p) => [Date.parse(p.start_date_time), p.dimensions.map((d) => d.type)]),
    [[Date.parse(example.charging_periods[0].start_date_time), ['ENERGY', 'TIME']]],
    'one charging period from the start, with ENERGY and TIME',
  )
  t.equal(Number(cdr.charging_periods[0]!.dimensions[1]!.volume.toFixed(3)), example.charging_periods[0].dimensions[0].volume, 'TIME volume 1.973')
  // The example bills TIME with step_size 300: 7103 s become 7200 s, 2 h × 2.00 = 4.00. Outpost bills by
  // the second: 7103 s × 2.00 / 3600 s = 3.946, rounded once half-up: 3.95.
  t.equal(example.total_cost.excl_vat, 4)
  t.same(cdr.total_cost, { excl_vat: 3.95 }, 'per second: 3.95 (the spec, at step_size 300: 4.00)')
  t.same(cdr.total_time_cost, cdr.total_cost, 'all of it time cost')
})

t.test('mod_tariffs.asciidoc, TariffRestrictions: "If end_time < start_time then the period wraps around to the next day"', async (t) => {
  const every: PlanConfig = { id: 'night', currency: 'CAD', periods: [{ days: [...ALL], from: '19:00', to: '07:00', perKwh: 0.1 }] }
  t.same(
    planToTariff(every, siteWith(every), NOW).elements[0]!.restrictions,
    { start_time: '19:00', end_time: '07:00' },
    'every day: one wrapping window',
  )
  const weekdays: PlanConfig = {
    id: 'wk',
    currency: 'CAD',
    periods: [
      { days: ['mon', 'tue', 'wed', 'thu', 'fri'], from: '22:00', to: '06:00', perKwh: 0.08 },
      { days: [...ALL], from: '00:00', to: '24:00', perKwh: 0.2 },
    ],
  }
  const wk = planToTariff(weekdays, siteWith(weekdays), NOW)
  t.same(tariffProblems(wk), [], 'valid')
  t.same(
    wk.elements.map((e) => [e.price_components[0]!.price, e.restrictions ?? null]),
    [
      [0.08, { start_time: '22:00', end_time: '00:00', day_of_week: ['MONDAY', 'TUESDAY', 'WEDNESDAY', 'THURSDAY', 'FRIDAY'] }],
      [0.08, { start_time: '00:00', end_time: '06:00', day_of_week: ['TUESDAY', 'WEDNESDAY', 'THURSDAY', 'FRIDAY', 'SATURDAY'] }],
      [0.2, null],
    ],
    "some days: split at midnight, the hours after it on the next day (Outpost counts them to the window's start day)",
  )
})

t.test('an unavailable window is left out of the elements and stated in tariff_alt_text', async (t) => {
  const plan: PlanConfig = {
    id: 'night',
    currency: 'CAD',
    activationFee: 0.25,
    periods: [
      { days: ['mon', 'tue', 'wed', 'thu', 'fri'], from: '07:00', to: '19:00', unavailable: true },
      { days: [...ALL], from: '00:00', to: '24:00', perKwh: 0.1 },
    ],
  }
  const tariff: OcpiTariff = planToTariff(plan, siteWith(plan), NOW)
  t.same(tariffProblems(tariff), [])
  t.same(priced(tariff), [
    { type: 'FLAT', price: 0.25, restrictions: {} },
    { type: 'ENERGY', price: 0.1, restrictions: {} },
  ])
  t.match(tariff.tariff_alt_text![0]!.text, /Not available mon, tue, wed, thu, fri 07:00-19:00 \(local time\)/)
  t.match(tariff.tariff_alt_text![0]!.text, /activation fee is charged only when the vehicle drew current/)
})

t.test('CSV: the header, one row per session, RFC 4180 quoting, the cost split adding up', async (t) => {
  t.equal(
    csvHeader(),
    'session_id,outlet,user,plan,started,ended,reason,duration_s,meter_start_kwh,meter_end_kwh,energy_kwh,activation_fee,energy_cost,time_cost,total,currency,offline\r\n',
  )
  const plan: PlanConfig = {
    id: 'std',
    currency: 'CAD',
    activationFee: 0.5,
    periods: [{ days: [...ALL], from: '00:00', to: '24:00', perKwh: 0.15, perHour: 0.5 }],
  }
  const e = billOne(plan, 'America/Vancouver', Date.UTC(2026, 2, 9, 18, 0), 3600, 7_000)
  const r: SessionEndedBody = { ...e, userId: 'Smith, "J"\nflat 2' }
  const row = csvRow(r)
  const c = costSplit(r)
  t.equal(c.fee + c.energy + c.time, r.total, 'fee + energy + time = total')
  t.same([c.fee, c.energy, c.time, c.total], [50, 105, 50, 205], '0.50 + 7 kWh × 0.15 + 1 h × 0.50')
  t.equal(
    row,
    `${r.sessionId},A1,"Smith, ""J""\nflat 2",std,${r.startedAt},${r.endedAt},user-stopped,3600,1000,1007,7,0.50,1.05,0.50,2.05,CAD,false\r\n`,
    'quoted user, totals in major units with the currency decimals',
  )
  const jpy = costSplit({ ...r, currency: 'JPY', activationFee: 50, total: 205 })
  t.equal(jpy.fee + jpy.energy + jpy.time, 205)
})
