/**
 * The rules of a valid price plan, in one place: the config check, the command
 * gateway (a pushed set-plan) and the session engine all ask this module.
 *
 * The config's JSON Schema (`$defs/plan`) states the same shape for the README's
 * reference and for editors; a test holds the two to the same verdicts. Only
 * this module knows the rules a schema cannot state: decimals a currency can
 * charge, 24:00 only as an end, empty windows, a period without a rate.
 *
 * Owns: every plan problem and its wording, as `{pointer, message}`.
 * Must never: do I/O, load the schema, or throw on malformed input.
 */
import { type Weekday, WEEKDAYS } from '../../core/types.js'
import { currencyMinorDigits, hasAtMostDecimals } from '../../core/money.js'

export interface PlanProblem {
  /** JSON pointer of the offending value, under the `at` the caller gave. */
  pointer: string
  message: string
}

const HHMM = /^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$/
const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/
const PLAN_KEYS = ['id', 'name', 'currency', 'activationFee', 'periods']
const PERIOD_KEYS = ['days', 'from', 'to', 'perKwh', 'perHour', 'unavailable']
const MAX_RATE = 1_000_000

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)
const isRate = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= MAX_RATE

/** Every problem of a plan, each naming where (under `at`, e.g. `/plans/0`). Empty when valid. */
export function planIssues(plan: unknown, at: string): PlanProblem[] {
  const out: PlanProblem[] = []
  const add = (pointer: string, message: string): void => {
    out.push({ pointer, message })
  }
  if (!isObject(plan)) {
    add(at, 'must be an object')
    return out
  }
  for (const k of Object.keys(plan)) if (!PLAN_KEYS.includes(k)) add(`${at}/${k}`, 'unknown key')
  if (typeof plan.id !== 'string' || !ID.test(plan.id)) add(`${at}/id`, 'must be an id (letters, digits, - _ ., at most 64)')
  if (plan.name !== undefined && (typeof plan.name !== 'string' || plan.name.length > 200))
    add(`${at}/name`, 'must be a string of at most 200 characters')

  const currency = plan.currency
  let minor: number | undefined
  if (typeof currency !== 'string' || !/^[A-Z]{3}$/.test(currency)) add(`${at}/currency`, 'must be a three-letter ISO 4217 code such as CAD')
  else {
    minor = currencyMinorDigits(currency)
    if (minor === undefined) add(`${at}/currency`, `"${currency}" is not a known ISO 4217 currency`)
  }

  const fee = plan.activationFee
  if (fee !== undefined) {
    if (!isRate(fee)) add(`${at}/activationFee`, `must be a number from 0 to ${MAX_RATE}`)
    else if (!hasAtMostDecimals(fee, 6)) add(`${at}/activationFee`, `${fee} has more than 6 decimals`)
    else if (minor !== undefined && !hasAtMostDecimals(fee, minor))
      add(`${at}/activationFee`, `${fee} cannot be charged in ${currency as string} (at most ${minor} decimals)`)
  }

  if (!Array.isArray(plan.periods) || plan.periods.length === 0) {
    add(`${at}/periods`, 'must be a non-empty array')
    return out
  }
  for (const [i, period] of plan.periods.entries()) periodIssues(period, `${at}/periods/${i}`, add)
  return out
}

function periodIssues(period: unknown, at: string, add: (pointer: string, message: string) => void): void {
  if (!isObject(period)) {
    add(at, 'must be an object')
    return
  }
  for (const k of Object.keys(period)) if (!PERIOD_KEYS.includes(k)) add(`${at}/${k}`, 'unknown key')
  const days = period.days
  if (!Array.isArray(days) || days.length === 0 || !days.every((d) => WEEKDAYS.includes(d as Weekday)))
    add(`${at}/days`, 'must be a non-empty list of mon..sun')
  else if (new Set(days).size !== days.length) add(`${at}/days`, 'names a day twice')

  const { from, to } = period
  if (from === '24:00') add(`${at}/from`, '24:00 is only valid as an end; use 00:00')
  else if (typeof from !== 'string' || !HHMM.test(from)) add(`${at}/from`, 'must be HH:MM from 00:00 to 23:59')
  if (typeof to !== 'string' || !HHMM.test(to)) add(`${at}/to`, 'must be HH:MM from 00:00 to 24:00')
  else if (from === to && from !== '24:00') add(`${at}/to`, `from and to are both ${to}: an empty window (use 00:00-24:00 for all day)`)

  for (const k of ['perKwh', 'perHour'] as const) {
    const v = period[k]
    if (v === undefined) continue
    if (!isRate(v)) add(`${at}/${k}`, `must be a number from 0 to ${MAX_RATE}`)
    else if (!hasAtMostDecimals(v, 6)) add(`${at}/${k}`, `${v} has more than 6 decimals (rates are exact to a millionth)`)
  }
  const hasRate = period.perKwh !== undefined || period.perHour !== undefined
  if (period.unavailable !== undefined && typeof period.unavailable !== 'boolean') add(`${at}/unavailable`, 'must be true or false')
  else if (period.unavailable === true && hasRate) add(`${at}/unavailable`, 'an unavailable period cannot also have rates')
  else if (period.unavailable !== true && !hasRate) add(at, 'a period needs perKwh, perHour or "unavailable": true')
}

/** The engine's form of the same problems: `plan/...: message` strings (a pushed plan is named `plan`). */
export function planProblems(plan: unknown): string[] {
  return planIssues(plan, 'plan').map((p) => `${p.pointer}: ${p.message}`)
}
