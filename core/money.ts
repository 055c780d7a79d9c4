/**
 * Money helpers shared by the config checks, the command gateway, the API and the
 * session engine: how many minor-unit digits a currency has, and whether a decimal
 * amount is exact to a given number of digits.
 *
 * Owns: nothing but these pure functions (Intl only).
 * Must never: read files, load the config or its schema, or import anything that does.
 */

/** Exactly representable with at most `n` decimals (as written in the JSON). */
export function hasAtMostDecimals(v: number, n: number): boolean {
  if (!Number.isFinite(v)) return false
  return Number(v.toFixed(n)) === v
}

let currencies: Set<string> | undefined
/** Answers by code: building an Intl.NumberFormat costs tens of µs, and the answer never changes within a process. */
const digitsCache = new Map<string, number | undefined>()
/** Minor-unit digits of an ISO 4217 currency (CAD 2, JPY 0, BHD 3), undefined if unknown. */
export function currencyMinorDigits(code: string): number | undefined {
  if (digitsCache.has(code)) return digitsCache.get(code)
  currencies ??= new Set(Intl.supportedValuesOf('currency'))
  const digits = currencies.has(code)
    ? new Intl.NumberFormat('en', { style: 'currency', currency: code }).resolvedOptions().maximumFractionDigits
    : undefined
  if (typeof code === 'string' && code.length <= 8) digitsCache.set(code, digits)
  return digits
}

/** An integer amount of minor units as a decimal string of major units with `digits` decimals (235, 2 → "2.35"; -5, 2 → "-0.05"). */
export function formatMinor(minor: number, digits: number): string {
  if (!Number.isSafeInteger(minor)) throw new RangeError(`formatMinor: ${minor} is not an integer amount of minor units`)
  const sign = minor < 0 ? '-' : ''
  const text = String(Math.abs(minor)).padStart(digits + 1, '0')
  return digits === 0 ? sign + text : `${sign}${text.slice(0, -digits)}.${text.slice(-digits)}`
}

/** Integer micro-units (millionths of the currency unit) as a decimal string of major units, trailing zeros trimmed to `minDigits`. */
export function formatMicros(micros: number, minDigits: number): string {
  const full = formatMinor(micros, 6)
  const [int, frac = ''] = full.split('.')
  let f = frac
  while (f.length > minDigits && f.endsWith('0')) f = f.slice(0, -1)
  return f === '' ? int! : `${int}.${f}`
}
