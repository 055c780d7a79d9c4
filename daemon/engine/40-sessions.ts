/**
 * A session's lifecycle: opening one, accounting energy and time into its billing lines,
 * and ending it with its `session.ended` record.
 *
 * Owns: session ids, the `session.started` and `session.ended` records, billing lines split
 * at the plan's period boundaries (paused time on a full circuit apart), the wallet cap at
 * the end (the excess waived, newest line first) and the debit of the local wallet copy.
 * Must never: decide why a session ends (the readings, the tick, the commands and the
 * gateway events do), bill above the balance reserved at start, or use floats for money.
 */
import type { BillingLine, EndReason, PlanConfig } from '../../core/types.js'
import { billable, feeMicrosOf, hasOwn, onCircuit } from './00-queries.js'
import type { Ctx } from './10-context.js'
import { sessionEnergyMWh, sessionMeterEvents } from './meter-readings.js'
import { divRoundHalfUp, forEachPeriodRun, lineAmountMicros, microsPerMinor } from './pricing.js'
import type { LineAcc, Session } from './state.js'

export function openSession(
  ctx: Ctx,
  outletId: string,
  userId: string,
  planId: string,
  plan: PlanConfig,
  trigger: Session['trigger'],
  startTs: number,
  startMWh: number,
  cap: number,
  drewCurrent: boolean,
): Session {
  const g = ctx.sec('gateway')
  const n = g.nextSession
  g.nextSession = n + 1
  const id = `${g.idPrefix ?? '0'}-${n}`
  const e = ctx.out(outletId)
  const serial = e.last?.meterSerial !== undefined ? { meterSerial: e.last.meterSerial } : {}
  const s: Session = {
    id,
    userId,
    planId,
    plan,
    currency: plan.currency,
    trigger,
    startedAt: startTs,
    meterStartMWh: startMWh,
    ...serial,
    lastTs: startTs,
    lastMWh: startMWh,
    lines: [],
    drewCurrent,
    peakA: 0,
    window: [],
    lowSince: null,
    taperedAtLow: false,
    capMinor: cap,
    feeMicros: feeMicrosOf(plan),
    offline: !ctx.gw.online,
    // On a circuit, an activated session waits until the circuit rules switch it on (in this
    // same step when there is room); an auto-start is already drawing through a closed relay.
    queuedAt: onCircuit(ctx.state, e) && trigger === 'activation' ? ctx.now : null,
    onAt: ctx.now,
    offAt: null,
    graceFrom: startTs,
    awaitDraw: false,
    drawing: trigger === 'auto-start',
    switches: [],
  }
  e.session = s
  ctx.record({ type: 'session.started', ts: ctx.iso, sessionId: id, outlet: outletId, userId, planId, trigger, meterWh: startMWh / 1000, ...serial })
  ctx.touch(outletId)
  return s
}

/**
 * Add the interval [a, b] with `energy` mWh to the session's lines, split at the
 * plan's period boundaries by linear interpolation in time (cumulative rounding
 * so the parts sum exactly to `energy`). b <= a: the energy goes to the period at a.
 */
export function account(ctx: Ctx, id: string, b: number, energy: number, mWh: number, paused: boolean): void {
  const s = ctx.sess(id)
  const a = s.lastTs
  const lines = s.lines.slice()
  const span = b - a
  let given = 0
  forEachPeriodRun(s.plan, ctx.s.timezone, a, Math.max(a, b), (from, to, p) => {
    const cum = span <= 0 || to >= b ? energy : Math.round((energy * (to - a)) / span)
    const share = cum - given
    given = cum
    const last = lines[lines.length - 1]
    const ms = paused ? 0 : to - from
    const pausedMs = paused ? to - from : 0
    if (last && last.period === p.index && last.to === from) {
      lines[lines.length - 1] = { ...last, to, mWh: last.mWh + share, ms: last.ms + ms, pausedMs: (last.pausedMs ?? 0) + pausedMs }
    } else {
      const line: LineAcc = {
        from,
        to,
        period: p.index,
        mWh: share,
        ms,
        pausedMs,
        perKwh: p.perKwh,
        perHour: p.perHour,
        perKwhMicros: p.perKwhMicros,
        perHourMicros: p.perHourMicros,
      }
      lines.push(line)
    }
  })
  s.lines = lines
  s.lastTs = Math.max(a, b)
  s.lastMWh = mWh
}

export function endSession(ctx: Ctx, id: string, reason: EndReason): void {
  const e = ctx.out(id)
  const s = e.session!
  const unit = microsPerMinor(s.currency)
  const iso = (t: number): string => new Date(t).toISOString()
  const lines: BillingLine[] = billable(s)
    ? s.lines.map((l) => {
        const line: BillingLine = {
          from: iso(l.from),
          to: iso(l.to),
          energyWh: l.mWh / 1000,
          seconds: l.ms / 1000,
          perKwh: l.perKwh,
          perHour: l.perHour,
          amountMicros: lineAmountMicros(l.mWh, l.ms, l.perKwhMicros, l.perHourMicros),
        }
        if ((l.pausedMs ?? 0) > 0) line.pausedS = l.pausedMs / 1000
        return line
      })
    : []
  let pausedMs = 0
  for (const l of s.lines) pausedMs += l.pausedMs ?? 0
  let feeMicros = billable(s) ? s.feeMicros : 0
  let sum = feeMicros
  for (const l of lines) sum += l.amountMicros
  let total = divRoundHalfUp(sum, unit)
  if (total > s.capMinor) {
    // Never bill above the balance reserved at start: waive the excess, newest line first.
    let excess = sum - s.capMinor * unit
    for (let i = lines.length - 1; i >= 0 && excess > 0; i--) {
      const l = lines[i]!
      const cut = Math.min(excess, l.amountMicros)
      if (cut > 0) lines[i] = { ...l, amountMicros: l.amountMicros - cut, waivedMicros: cut }
      excess -= cut
    }
    feeMicros -= excess // only when the lines alone could not absorb it
    total = s.capMinor
  }
  ctx.record({
    type: 'session.ended',
    ts: ctx.iso,
    sessionId: s.id,
    outlet: id,
    userId: s.userId,
    planId: s.planId,
    trigger: s.trigger,
    startedAt: iso(s.startedAt),
    endedAt: iso(s.lastTs),
    reason,
    durationS: (s.lastTs - s.startedAt) / 1000,
    energyWh: sessionEnergyMWh(s) / 1000,
    meterStartWh: s.meterStartMWh / 1000,
    meterEndWh: s.lastMWh / 1000,
    ...(s.meterSerial !== undefined ? { meterSerial: s.meterSerial } : {}),
    currency: s.currency,
    lines,
    activationFee: feeMicros / unit,
    total,
    offline: s.offline || !ctx.gw.online,
    pausedS: pausedMs / 1000,
    ...sessionMeterEvents(s),
  })
  if (total > 0 && hasOwn(ctx.state.wallets, s.userId) && ctx.state.wallets[s.userId]!.currency === s.currency) {
    // Debit the local copy (online or not): no second session can spend the same money
    // before the cloud's next set-wallet, which replaces this figure.
    const w = ctx.sec('wallets')
    w[s.userId] = { ...w[s.userId]!, balance: w[s.userId]!.balance - total }
  }
  e.session = null
  ctx.touch(id)
}
