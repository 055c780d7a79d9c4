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
/** Minor-unit digits of an ISO 4217 currency (CAD 2, JPY 0, BHD 3), undefined if unknown. */
export function currencyMinorDigits(code: string): number | undefined {
  currencies ??= new Set(Intl.supportedValuesOf('currency'))
  if (!currencies.has(code)) return undefined
  return new Intl.NumberFormat('en', { style: 'currency', currency: code }).resolvedOptions().maximumFractionDigits
}
