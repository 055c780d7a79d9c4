/**
 * Billing records in the formats the field uses: CSV for site owners, OCPI 2.2.1 CDRs for
 * operators and roaming platforms, OCPI 2.2.1 Tariffs for the plans.
 *
 * Owns: how a session.ended becomes a CSV row and a CDR, and how a plan becomes a Tariff
 * (the mapping is described in the README, "Exports"). Pure: the caller reads the records,
 * passes the export time, and writes the output.
 * Must never: recompute a bill (every total comes from the record, to the minor unit), read
 * files, or invent an identity OCPI needs (the config's `ocpi` section gives it).
 */
import { createHash, createPublicKey } from 'node:crypto'
import type { OcpiConfig, PeriodConfig, PlanConfig, SessionEndedBody, SiteConfig, Weekday } from '../core/types.js'
import { currencyMinorDigits, formatMinor } from '../core/money.js'
import { lineAmountMicros, toMicros } from './engine/index.js'
import { parseOcmf } from './ocmf.js'
import { meterSerial } from '../core/meter-serial.js'

// ---------------------------------------------------------------- money split

/** Minor-unit digits of the record's currency (2 when Intl does not know it). */
export function digitsOf(currency: string): number {
  return currencyMinorDigits(currency) ?? 2
}

/**
 * The record's total split into activation fee, energy cost and time cost, in minor units,
 * adding up to `total` exactly: the lines' energy parts (at their per-kWh rates, after any
 * wallet-cap waiver, shared in proportion) rounded once half-up, the time cost the rest.
 */
export function costSplit(r: SessionEndedBody): { fee: number; energy: number; time: number; total: number } {
  const unit = 10 ** (6 - digitsOf(r.currency))
  let energyMicros = 0n
  for (const l of r.lines) {
    const charged = BigInt(l.amountMicros)
    const atRates = charged + BigInt(l.waivedMicros ?? 0)
    const energyAtRates = BigInt(lineAmountMicros(Math.round(l.energyWh * 1000), 0, toMicros(l.perKwh ?? 0), 0))
    const e = atRates === 0n ? 0n : ((energyAtRates > atRates ? atRates : energyAtRates) * charged) / atRates
    energyMicros += e
  }
  const fee = r.activationFee
  const u = BigInt(unit)
  // Rounded half-up once; never more than what the total leaves after the fee, so the time cost is never negative.
  const energy = Math.min(Number((energyMicros * 2n + u) / (2n * u)), Math.max(0, r.total - fee))
  return { fee, energy, time: r.total - fee - energy, total: r.total }
}

// ---------------------------------------------------------------- CSV

export const CSV_COLUMNS = [
  'session_id',
  'outlet',
  'user',
  'plan',
  'started',
  'ended',
  'reason',
  'duration_s',
  'meter_start_kwh',
  'meter_end_kwh',
  'energy_kwh',
  'activation_fee',
  'energy_cost',
  'time_cost',
  'total',
  'currency',
  'offline',
] as const

/** RFC 4180: a field with a comma, quote, CR or LF is quoted, quotes doubled. */
export function csvField(v: string): string {
  return /[",\r\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v
}

/** kWh from Wh without float noise (Wh carry at most milliwatt-hour precision). */
export function kwhText(wh: number): string {
  return String(Number((wh / 1000).toFixed(6)))
}

export function csvHeader(): string {
  return CSV_COLUMNS.join(',') + '\r\n'
}

export function csvRow(r: SessionEndedBody): string {
  const d = digitsOf(r.currency)
  const c = costSplit(r)
  const cells = [
    r.sessionId,
    r.outlet,
    r.userId,
    r.planId,
    r.startedAt,
    r.endedAt,
    r.reason,
    String(r.durationS),
    kwhText(r.meterStartWh),
    kwhText(r.meterEndWh),
    kwhText(r.energyWh),
    formatMinor(c.fee, d),
    formatMinor(c.energy, d),
    formatMinor(c.time, d),
    formatMinor(r.total, d),
    r.currency,
    String(r.offline),
  ]
  return cells.map(csvField).join(',') + '\r\n'
}

// ---------------------------------------------------------------- OCPI common

/** A minor-unit amount as an OCPI number (major units). */
function major(minor: number, currency: string): number {
  return Number(formatMinor(minor, digitsOf(currency)))
}

/** OCPI CiString(n) ids: kept when they fit, otherwise a stable hash of the same length. */
function fitId(id: string, max: number): string {
  return id.length <= max ? id : createHash('sha256').update(id).digest('hex').slice(0, max)
}

/** OCPI DateTime: RFC 3339 UTC; the records' milliseconds are kept. */
const dateTime = (iso: string): string => new Date(iso).toISOString()

/** An eMI3 EVSE ID: `<country>*<party>*E<outlet>`, the outlet id reduced to what eMI3 allows. */
export function evseId(ocpi: OcpiConfig, outlet: string): string {
  return `${ocpi.countryCode}*${ocpi.partyId}*E${outlet.toUpperCase().replace(/[^A-Z0-9*]/g, '')}`.slice(0, 48)
}

export interface OcpiSite {
  siteId: string
  siteName?: string
  ocpi: OcpiConfig
  /** The plans by id (the tariff a CDR lists). */
  plans: Map<string, PlanConfig>
  timezone: string
  /** Each outlet's meter serial (meter_id). */
  meterIds: Map<string, string>
}

export function ocpiSite(config: SiteConfig): OcpiSite | undefined {
  if (!config.ocpi) return undefined
  return {
    siteId: config.site.id,
    ...(config.site.name ? { siteName: config.site.name } : {}),
    ocpi: config.ocpi,
    plans: new Map(config.plans.map((p) => [p.id, p])),
    timezone: config.site.timezone,
    meterIds: new Map(config.outlets.map((o) => [o.id, meterSerial(o)])),
  }
}

// ---------------------------------------------------------------- OCPI Tariff

const OCPI_DAYS: Record<Weekday, string> = {
  mon: 'MONDAY',
  tue: 'TUESDAY',
  wed: 'WEDNESDAY',
  thu: 'THURSDAY',
  fri: 'FRIDAY',
  sat: 'SATURDAY',
  sun: 'SUNDAY',
}
const WEEK: Weekday[] = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun']
const NEXT_DAY = (d: Weekday): Weekday => WEEK[(WEEK.indexOf(d) + 1) % 7]!

export interface OcpiPriceComponent {
  type: 'FLAT' | 'ENERGY' | 'TIME'
  price: number
  step_size: number
}
export interface OcpiTariffElement {
  price_components: OcpiPriceComponent[]
  restrictions?: { start_time?: string; end_time?: string; day_of_week?: string[] }
}
export interface OcpiTariff {
  country_code: string
  party_id: string
  id: string
  currency: string
  tariff_alt_text?: { language: string; text: string }[]
  elements: OcpiTariffElement[]
  last_updated: string
}

const dayList = (days: Weekday[]): string[] => WEEK.filter((d) => days.includes(d)).map((d) => OCPI_DAYS[d])

/** A period's window as OCPI restrictions: 24:00 is 00:00 (OCPI's end of day), a wrap split per day when the days are restricted. */
function windows(p: PeriodConfig): OcpiTariffElement['restrictions'][] {
  const allDays = WEEK.every((d) => p.days.includes(d))
  const whole = p.from === '00:00' && p.to === '24:00'
  const end = p.to === '24:00' ? '00:00' : p.to
  const wraps = p.to !== '24:00' && p.to < p.from
  const days = allDays ? {} : { day_of_week: dayList(p.days) }
  if (whole) return [allDays ? undefined : days]
  if (!wraps || allDays) return [{ start_time: p.from, end_time: end, ...days }]
  // Outpost counts the hours after midnight to the day the window starts; OCPI's day_of_week is the current day.
  return [
    { start_time: p.from, end_time: '00:00', ...days },
    { start_time: '00:00', end_time: p.to, day_of_week: dayList(p.days.map(NEXT_DAY)) },
  ]
}

function describeWindow(p: PeriodConfig): string {
  const days = WEEK.every((d) => p.days.includes(d)) ? 'every day' : WEEK.filter((d) => p.days.includes(d)).join(', ')
  return `${days} ${p.from}-${p.to}`
}

/**
 * One plan as an OCPI Tariff: the activation fee a FLAT element, each available period an
 * element with the ENERGY and TIME components the plan uses (a rate the period lacks is 0:
 * in OCPI every dimension takes its own first matching element, in Outpost the period's
 * rates go together). An unavailable window has no OCPI form in a Tariff: it is left out
 * and said in tariff_alt_text.
 */
export function planToTariff(plan: PlanConfig, site: Pick<OcpiSite, 'ocpi'>, lastUpdated: string): OcpiTariff {
  const usesEnergy = plan.periods.some((p) => !p.unavailable && p.perKwh !== undefined)
  const usesTime = plan.periods.some((p) => !p.unavailable && p.perHour !== undefined)
  const elements: OcpiTariffElement[] = []
  if ((plan.activationFee ?? 0) > 0) elements.push({ price_components: [{ type: 'FLAT', price: plan.activationFee!, step_size: 1 }] })
  const notes: string[] = []
  for (const p of plan.periods) {
    if (p.unavailable) {
      notes.push(`Not available ${describeWindow(p)} (local time): a session cannot start then, and one running into it ends.`)
      continue
    }
    const components: OcpiPriceComponent[] = []
    if (usesEnergy) components.push({ type: 'ENERGY', price: p.perKwh ?? 0, step_size: 1 })
    if (usesTime) components.push({ type: 'TIME', price: p.perHour ?? 0, step_size: 1 })
    if (components.length === 0) components.push({ type: 'ENERGY', price: 0, step_size: 1 })
    for (const r of windows(p)) elements.push(r ? { price_components: components, restrictions: r } : { price_components: components })
  }
  if (elements.length === 0) elements.push({ price_components: [{ type: 'FLAT', price: 0, step_size: 1 }] })
  if ((plan.activationFee ?? 0) > 0) notes.push('The activation fee is charged only when the vehicle drew current.')
  if (usesTime) notes.push('Time is billed by the second from activation to the end of the session.')
  notes.push('A session never costs more than the balance reserved for it at start.')
  return {
    country_code: site.ocpi.countryCode,
    party_id: site.ocpi.partyId,
    id: fitId(plan.id, 36),
    currency: plan.currency,
    tariff_alt_text: [{ language: 'en', text: notes.join(' ') }],
    elements,
    last_updated: lastUpdated,
  }
}

// ---------------------------------------------------------------- OCPI CDR

export interface OcpiCdr {
  country_code: string
  party_id: string
  id: string
  start_date_time: string
  end_date_time: string
  session_id: string
  cdr_token: { country_code: string; party_id: string; uid: string; type: 'APP_USER'; contract_id: string }
  auth_method: 'COMMAND' | 'WHITELIST'
  cdr_location: Record<string, unknown>
  meter_id?: string
  currency: string
  tariffs?: OcpiTariff[]
  charging_periods: { start_date_time: string; dimensions: { type: 'ENERGY' | 'TIME'; volume: number }[]; tariff_id?: string }[]
  signed_data?: {
    encoding_method: 'OCMF'
    public_key?: string
    signed_values: { nature: string; plain_data: string; signed_data: string }[]
  }
  total_cost: { excl_vat: number }
  total_fixed_cost?: { excl_vat: number }
  total_energy: number
  total_energy_cost?: { excl_vat: number }
  total_time: number
  total_time_cost?: { excl_vat: number }
  remark?: string
  last_updated: string
}

/** Base64 of the SPKI DER (OCPI's SignedData.public_key), from the announced PEM. */
export function publicKeyBase64(pem: string): string {
  return createPublicKey(pem).export({ type: 'spki', format: 'der' }).toString('base64')
}

/** Rounded to `n` decimals as a number (kWh and hours: OCPI numbers, no float noise). */
const round = (v: number, n: number): number => Number(v.toFixed(n))

/**
 * One session.ended as an OCPI 2.2.1 CDR: the totals are the record's (total_cost = total,
 * total_fixed_cost = the activation fee, energy and time costs as costSplit gives them), one
 * charging period per billing line with its ENERGY (kWh) and TIME (hours), and the OCMF as
 * signed_data.
 */
export function sessionToCdr(r: SessionEndedBody, site: OcpiSite, opts: { publicKeyPem?: string; lastUpdated: string }): OcpiCdr {
  const o = site.ocpi
  const c = costSplit(r)
  const plan = site.plans.get(r.planId)
  const tariff = plan && plan.currency === r.currency ? planToTariff(plan, site, opts.lastUpdated) : undefined
  const lines = r.lines.length > 0 ? r.lines : [{ from: r.startedAt, energyWh: r.energyWh, seconds: r.durationS }]
  const cdr: OcpiCdr = {
    country_code: o.countryCode,
    party_id: o.partyId,
    id: fitId(`${site.siteId}-${r.sessionId}`, 36),
    start_date_time: dateTime(r.startedAt),
    end_date_time: dateTime(r.endedAt),
    session_id: fitId(r.sessionId, 36),
    cdr_token: { country_code: o.countryCode, party_id: o.partyId, uid: fitId(r.userId, 36), type: 'APP_USER', contract_id: fitId(r.userId, 36) },
    auth_method: r.trigger === 'auto-start' ? 'WHITELIST' : 'COMMAND',
    cdr_location: {
      id: fitId(site.siteId, 36),
      ...(site.siteName ? { name: site.siteName.slice(0, 255) } : {}),
      address: o.address,
      city: o.city,
      ...(o.postalCode ? { postal_code: o.postalCode } : {}),
      ...(o.state ? { state: o.state } : {}),
      country: o.country,
      coordinates: { latitude: o.latitude.toFixed(6), longitude: o.longitude.toFixed(6) },
      evse_uid: fitId(r.outlet, 36),
      evse_id: evseId(o, r.outlet),
      connector_id: '1',
      connector_standard: o.connector?.standard ?? 'DOMESTIC_B',
      connector_format: o.connector?.format ?? 'SOCKET',
      connector_power_type: o.connector?.powerType ?? 'AC_1_PHASE',
    },
    ...(site.meterIds.has(r.outlet) ? { meter_id: site.meterIds.get(r.outlet)! } : {}),
    currency: r.currency,
    ...(tariff ? { tariffs: [tariff] } : {}),
    charging_periods: lines.map((l) => ({
      start_date_time: dateTime(l.from),
      dimensions: [
        { type: 'ENERGY' as const, volume: round(l.energyWh / 1000, 6) },
        { type: 'TIME' as const, volume: round(l.seconds / 3600, 6) },
      ],
      ...(tariff ? { tariff_id: tariff.id } : {}),
    })),
    total_cost: { excl_vat: major(r.total, r.currency) },
    ...(c.fee > 0 ? { total_fixed_cost: { excl_vat: major(c.fee, r.currency) } } : {}),
    total_energy: round(r.energyWh / 1000, 6),
    total_energy_cost: { excl_vat: major(c.energy, r.currency) },
    total_time: round(r.durationS / 3600, 6),
    total_time_cost: { excl_vat: major(c.time, r.currency) },
    remark: `Outpost session ended: ${r.reason}${r.offline ? ' (ran while the site was offline)' : ''}`,
    last_updated: opts.lastUpdated,
  }
  if (r.ocmf) {
    let plain = ''
    try {
      const p = parseOcmf(r.ocmf).payload
      plain = `${p.PG} ${p.RD.map((d) => `${d.TX} ${d.RV} ${d.RU} at ${d.TM}`).join(', ')}`.slice(0, 512)
    } catch {
      plain = 'unparsable OCMF'
    }
    cdr.signed_data = {
      encoding_method: 'OCMF',
      ...(opts.publicKeyPem ? { public_key: publicKeyBase64(opts.publicKeyPem) } : {}),
      signed_values: [{ nature: 'End', plain_data: plain, signed_data: Buffer.from(r.ocmf, 'utf8').toString('base64') }],
    }
  }
  return cdr
}
