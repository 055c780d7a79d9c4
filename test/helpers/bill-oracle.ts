/**
 * A test oracle for the rounding of a bill: the cost of a session from its lines as
 * the billing record states it, computed from the engine's integer primitives. The
 * engine bills incrementally as readings arrive; this is the same arithmetic in one
 * pass over finished lines, for checks of rounding, currencies and fees.
 */
import { divRoundHalfUp, lineAmountMicros, microsPerMinor, toMicros } from '../../daemon/engine/index.js'

export interface PricedLine {
  energyWh: number
  seconds: number
  perKwh: number | null
  perHour: number | null
}

/**
 * Each line's amount in micros, the activation fee in minor units, and the total =
 * fee + lines, rounded once, half-up, to minor units. Energy and seconds are taken to
 * the millisecond / milliwatt-hour (the resolution the engine keeps).
 */
export function priceSession(
  lines: PricedLine[],
  activationFee: number,
  currency: string,
): { lines: (PricedLine & { amountMicros: number })[]; activationFee: number; total: number } {
  const unit = microsPerMinor(currency)
  const feeMinor = Math.round((activationFee * 1_000_000) / unit)
  let sum = feeMinor * unit
  const out = lines.map((l) => {
    const amountMicros = lineAmountMicros(
      Math.round(l.energyWh * 1000),
      Math.round(l.seconds * 1000),
      toMicros(l.perKwh ?? 0),
      toMicros(l.perHour ?? 0),
    )
    sum += amountMicros
    return { ...l, amountMicros }
  })
  return { lines: out, activationFee: feeMinor, total: divRoundHalfUp(sum, unit) }
}
