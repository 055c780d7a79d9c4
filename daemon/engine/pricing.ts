/**
 * Pricing: which rate period of a plan applies at an instant (weekly schedule in
 * the site's IANA time zone, daylight-saving changes included), the price
 * timeline for the next hours, and the integer money arithmetic of a session.
 *
 * Owns: period lookup, segment boundaries, micro-unit money.
 * Must never: do I/O, read the clock, or use a float for money after the one
 * conversion of a decimal rate into integer micro-units.
 *
 * Zone arithmetic: luxon answers "what is the UTC offset of this zone at this
 * instant". Offsets only change at transitions, so each zone is modelled once
 * as a list of transitions (found by sampling every day and bisecting to the
 * millisecond) and every later question is plain integer arithmetic. That keeps
 * the session engine fast enough to simulate tens of thousands of sessions.
 */
import { IANAZone } from 'luxon'
import { type PeriodConfig, type PlanConfig, WEEKDAYS } from '../../core/types.js'
import { OutpostError } from './errors.js'
import { currencyMinorDigits } from '../../core/money.js'

export const DAY_MS = 86_400_000
export const WEEK_MS = 7 * DAY_MS
/** 1970-01-05 was a Monday: the origin of week positions. */
const MONDAY0 = 4 * DAY_MS

// ---------------------------------------------------------------- money

/** A decimal rate (≤ 6 fractional digits) as integer millionths. The only float→integer step. */
export function toMicros(rate: number): number {
  return Math.round(rate * 1_000_000)
}

/** Micro-units in one minor unit of the currency (CAD: 10 000, JPY: 1 000 000). */
export function microsPerMinor(currency: string): number {
  let unit = unitCache.get(currency)
  if (unit === undefined) {
    const digits = currencyMinorDigits(currency)
    if (digits === undefined) throw new OutpostError('ENGINE_UNKNOWN_CURRENCY', `"${currency}" is not a known ISO 4217 currency`)
    unit = 10 ** (6 - digits)
    unitCache.set(currency, unit)
  }
  return unit
}
/** Intl lookups are slow and the answer never changes within a process. */
const unitCache = new Map<string, number>()

/** round(n / d), halves up, for non-negative safe integers; exact (no float division). */
export function divRoundHalfUp(n: number, d: number): number {
  const rem = n % d
  const q = (n - rem) / d
  return rem * 2 >= d ? q + 1 : q
}

const MICROS_DEN = 3_600_000_000n
const MICROS_HALF = 1_800_000_000n

/**
 * Amount of one line in integer micro-units, rounded half-up once per line:
 * energy in milliwatt-hours × per-kWh micros / 10⁶ + duration in ms × per-hour micros / 3.6·10⁶.
 * BigInt because mWh × micros overflows 2⁵³ for long sessions at high rates.
 */
export function lineAmountMicros(energyMWh: number, durationMs: number, perKwhMicros: number, perHourMicros: number): number {
  const num = BigInt(energyMWh) * BigInt(perKwhMicros) * 3600n + BigInt(durationMs) * BigInt(perHourMicros) * 1000n
  return Number((num + MICROS_HALF) / MICROS_DEN)
}

// ---------------------------------------------------------------- time zones

const BUCKET_MS = 2 ** 32 // ≈ 49.7 days
interface Bucket {
  /** Offset in ms at the bucket's start, then each change inside it. */
  startOffset: number
  changes: { at: number; offset: number }[]
}

/** One zone's UTC offsets as transitions, built lazily per ~50-day bucket. */
class ZoneModel {
  private readonly zone: IANAZone
  private readonly buckets = new Map<number, Bucket>()
  constructor(readonly name: string) {
    this.zone = IANAZone.create(name)
    if (!this.zone.isValid) throw new OutpostError('ENGINE_BAD_TIMEZONE', `"${name}" is not an IANA time zone`)
  }
  private raw(ms: number): number {
    return this.zone.offset(ms) * 60_000
  }
  private bucket(b: number): Bucket {
    let bk = this.buckets.get(b)
    if (bk) return bk
    const start = b * BUCKET_MS
    const end = start + BUCKET_MS
    const startOffset = this.raw(start)
    const changes: { at: number; offset: number }[] = []
    // Sampling every 6 h finds every transition real zones have (never two within 6 h).
    let prevT = start
    let prevO = startOffset
    for (let t = start + DAY_MS / 4; ; t = Math.min(t + DAY_MS / 4, end)) {
      const o = this.raw(t)
      if (o !== prevO) {
        let lo = prevT
        let hi = t
        while (hi - lo > 1) {
          const mid = Math.floor((lo + hi) / 2)
          if (this.raw(mid) === prevO) lo = mid
          else hi = mid
        }
        changes.push({ at: hi, offset: this.raw(hi) })
      }
      prevT = t
      prevO = o
      if (t >= end) break
    }
    // The change exactly at `end` belongs to the next bucket.
    bk = { startOffset, changes: changes.filter((c) => c.at < end) }
    this.buckets.set(b, bk)
    return bk
  }
  /** UTC offset in ms at instant t (local = t + offset). */
  offset(t: number): number {
    const bk = this.bucket(Math.floor(t / BUCKET_MS))
    let o = bk.startOffset
    for (const c of bk.changes) {
      if (c.at <= t) o = c.offset
      else break
    }
    return o
  }
  /** The first offset change strictly after t, or Infinity when none within ~400 days. */
  nextChange(t: number): number {
    const b0 = Math.floor(t / BUCKET_MS)
    for (let b = b0; b < b0 + 9; b++) {
      for (const c of this.bucket(b).changes) if (c.at > t) return c.at
    }
    return Infinity
  }
}

const zones = new Map<string, ZoneModel>()
function zoneModel(tz: string): ZoneModel {
  let z = zones.get(tz)
  if (!z) {
    z = new ZoneModel(tz)
    zones.set(tz, z)
  }
  return z
}

/** Local wall-clock epoch ms of instant t in the zone (for tests and the API). */
export function localWallMs(timezone: string, t: number): number {
  return t + zoneModel(timezone).offset(t)
}

// ---------------------------------------------------------------- compiled plans

interface CompiledPeriod {
  from: number
  to: number
  days: number // bit per weekday, mon = bit 0
  wraps: boolean
  unavailable: boolean
  perKwh: number | null
  perHour: number | null
  perKwhMicros: number
  perHourMicros: number
}

interface CompiledPlan {
  periods: CompiledPeriod[]
  /** Week positions (ms from Monday 00:00 local) where the matching period may change. */
  boundaries: number[]
  /** Last segment answered, per zone: most lookups fall in it. */
  cache: { tz: string; from: number; to: number; index: number } | null
}

const compiledPlans = new WeakMap<PlanConfig, CompiledPlan>()

function hhmm(s: string): number {
  return (Number(s.slice(0, 2)) * 60 + Number(s.slice(3, 5))) * 60_000
}

function compile(plan: PlanConfig): CompiledPlan {
  let cp = compiledPlans.get(plan)
  if (cp) return cp
  const periods: CompiledPeriod[] = plan.periods.map((p: PeriodConfig) => {
    const from = hhmm(p.from)
    const to = hhmm(p.to)
    let days = 0
    for (const d of p.days) days |= 1 << WEEKDAYS.indexOf(d)
    const unavailable = p.unavailable === true
    return {
      from,
      to,
      days,
      wraps: to < from,
      unavailable,
      perKwh: unavailable ? null : (p.perKwh ?? null),
      perHour: unavailable ? null : (p.perHour ?? null),
      perKwhMicros: unavailable ? 0 : toMicros(p.perKwh ?? 0),
      perHourMicros: unavailable ? 0 : toMicros(p.perHour ?? 0),
    }
  })
  const b = new Set<number>()
  for (let d = 0; d < 7; d++) {
    b.add(d * DAY_MS)
    for (const p of periods) {
      if (!(p.days & (1 << d))) continue
      b.add(d * DAY_MS + p.from)
      b.add(((p.wraps ? d + 1 : d) * DAY_MS + p.to) % WEEK_MS)
    }
  }
  cp = { periods, boundaries: [...b].sort((x, y) => x - y), cache: null }
  compiledPlans.set(plan, cp)
  return cp
}

function matchAt(cp: CompiledPlan, wall: number): number {
  const dayNo = Math.floor(wall / DAY_MS)
  const wd = (((dayNo - 4) % 7) + 7) % 7
  const prevWd = (wd + 6) % 7
  const t = wall - dayNo * DAY_MS
  for (let i = 0; i < cp.periods.length; i++) {
    const p = cp.periods[i]!
    if (!p.wraps) {
      if (p.days & (1 << wd) && t >= p.from && t < p.to) return i
    } else if ((p.days & (1 << wd) && t >= p.from) || (p.days & (1 << prevWd) && t < p.to)) {
      return i
    }
  }
  return -1
}

/**
 * The period index at instant t (-1: no period matches, which is unavailable)
 * and an instant `to` > t before which it cannot change. `to` may be a
 * boundary where nothing changes (midnight, a DST shift); callers merge.
 */
function segmentAt(cp: CompiledPlan, tz: string, t: number): { index: number; to: number } {
  const c = cp.cache
  if (c && c.tz === tz && t >= c.from && t < c.to) return { index: c.index, to: c.to }
  const zone = zoneModel(tz)
  const wall = t + zone.offset(t)
  const pos = (((wall - MONDAY0) % WEEK_MS) + WEEK_MS) % WEEK_MS
  const bs = cp.boundaries
  let lo = 0
  let hi = bs.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (bs[mid]! <= pos) lo = mid + 1
    else hi = mid
  }
  const next = lo < bs.length ? bs[lo]! : bs[0]! + WEEK_MS
  const to = Math.min(t + (next - pos), zone.nextChange(t))
  const index = matchAt(cp, wall)
  cp.cache = { tz, from: t, to, index }
  return { index, to }
}

export interface PeriodAt {
  /** Index into plan.periods; -1 when no period matches. */
  index: number
  available: boolean
  perKwh: number | null
  perHour: number | null
  perKwhMicros: number
  perHourMicros: number
  /** The rates hold at least until this instant (epoch ms, exclusive). */
  until: number
}

/** Which period of the plan applies at instant t (epoch ms) in the site's time zone. */
export function periodAt(plan: PlanConfig, timezone: string, t: number): PeriodAt {
  const cp = compile(plan)
  const seg = segmentAt(cp, timezone, t)
  return describe(cp, seg.index, seg.to)
}

function describe(cp: CompiledPlan, index: number, until: number): PeriodAt {
  const p = index >= 0 ? cp.periods[index]! : undefined
  if (!p || p.unavailable) return { index, available: false, perKwh: null, perHour: null, perKwhMicros: 0, perHourMicros: 0, until }
  return { index, available: true, perKwh: p.perKwh, perHour: p.perHour, perKwhMicros: p.perKwhMicros, perHourMicros: p.perHourMicros, until }
}

/**
 * Split [a, b) at the plan's period boundaries: calls fn(from, to, period) for
 * each maximal run of one period index, in order. a === b yields one empty run.
 */
export function forEachPeriodRun(
  plan: PlanConfig,
  timezone: string,
  a: number,
  b: number,
  fn: (from: number, to: number, p: PeriodAt) => void,
): void {
  const cp = compile(plan)
  if (b <= a) {
    const s = segmentAt(cp, timezone, a)
    fn(a, a, describe(cp, s.index, s.to))
    return
  }
  let t = a
  let runFrom = a
  let runIndex = Number.NaN
  while (t < b) {
    const s = segmentAt(cp, timezone, t)
    if (s.index !== runIndex) {
      if (t > runFrom) fn(runFrom, t, describe(cp, runIndex, t))
      runFrom = t
      runIndex = s.index
    }
    t = Math.min(s.to, b)
  }
  fn(runFrom, b, describe(cp, runIndex, b))
}

export interface TimelineEntry {
  /** ISO 8601 UTC. */
  from: string
  to: string
  available: boolean
  perKwh: number | null
  perHour: number | null
}

/**
 * Availability and rates of a plan for the `hours` after fromMs: what the user
 * sees before activation (GET /api/outlets/{id}/prices). Adjacent spans with the
 * same period are merged; the first starts at fromMs, the last ends at fromMs + hours.
 */
export function priceTimeline(plan: PlanConfig, timezone: string, fromMs: number, hours: number): TimelineEntry[] {
  if (!Number.isFinite(fromMs)) throw new OutpostError('ENGINE_BAD_ARGUMENT', 'priceTimeline: fromMs must be a finite epoch ms')
  if (!Number.isFinite(hours) || hours <= 0 || hours > 24 * 31)
    throw new OutpostError('ENGINE_BAD_ARGUMENT', `priceTimeline: hours must be > 0 and <= 744, got ${hours}`)
  const out: TimelineEntry[] = []
  forEachPeriodRun(plan, timezone, fromMs, fromMs + Math.round(hours * 3_600_000), (from, to, p) => {
    out.push({ from: new Date(from).toISOString(), to: new Date(to).toISOString(), available: p.available, perKwh: p.perKwh, perHour: p.perHour })
  })
  return out
}

/** Check a time zone name once (throws OutpostError ENGINE_BAD_TIMEZONE). */
export function assertTimeZone(tz: string): void {
  zoneModel(tz)
}
