/**
 * Read-only views of an engine state for the API, the status page and the metrics.
 *
 * Owns: the circuit status (limit in force, current per phase, who is on, the queue in the
 * order it will be served), every outlet's status, an outlet's plan and price timeline.
 * Must never: change a state, or be called from a step (the views read; `step` decides).
 */
import type { OutletStatus, PlanConfig } from '../../core/types.js'
import { circuitLimit, hasOwn, planById, reservedMinor, statusOf } from './00-queries.js'
import { currencyMinorDigits } from '../../core/money.js'
import { OutpostError } from './errors.js'
import { priceTimeline, type TimelineEntry } from './pricing.js'
import type { EngineState, OutletParams } from './state.js'

/** A circuit as the status page, the API and the metrics show it. */
export interface CircuitStatus {
  circuit: string
  parent: string | null
  /** Configured, per phase. */
  maxA: number
  /** In force now (a set-circuit-limit, the failsafe). */
  limitA: number
  failsafe: boolean
  /** Per phase [L1, L2, L3]: the feeder meter's reading, else what the switched-on outlets on it measure. */
  currentA: [number, number, number]
  metered: boolean
  feederFault: string | null
  /** Switched-on sessions. */
  on: { outlet: string; sessionId: string; since: string }[]
  /** Waiting sessions, in the order they will be served. */
  queue: { outlet: string; sessionId: string; userId: string; since: string; waitedS: number; priority: number }[]
}

export function circuitStatuses(state: EngineState, now: number): CircuitStatus[] {
  const cs = state.settings.circuits ?? {}
  const out: CircuitStatus[] = []
  for (const id of Object.keys(cs)) {
    const c = cs[id]!
    const entry = state.circuits?.[id]
    const lim = circuitLimit(state, id)
    const measured: [number, number, number] = [0, 0, 0]
    const on: CircuitStatus['on'] = []
    const queue: (CircuitStatus['queue'][number] & { at: number })[] = []
    for (const e of Object.values(state.outlets)) {
      if (e.circuit == null || !hasOwn(cs, e.circuit) || !cs[e.circuit]!.chain.includes(id)) continue
      if ((e.relayClosed || !e.hasRelay) && e.last) measured[e.phase] += e.last.currentA
      const s = e.session
      if (!s) continue
      if (s.queuedAt != null)
        queue.push({
          outlet: e.id,
          sessionId: s.id,
          userId: s.userId,
          since: new Date(s.queuedAt).toISOString(),
          waitedS: Math.max(0, Math.round((now - s.queuedAt) / 1000)),
          priority: e.priority,
          at: s.queuedAt,
        })
      else if (e.relayClosed) on.push({ outlet: e.id, sessionId: s.id, since: new Date(s.onAt ?? s.startedAt).toISOString() })
    }
    queue.sort((a, b) => b.priority - a.priority || a.at - b.at)
    const feeder = c.metered && entry?.fault === null ? entry.currentsA : null
    out.push({
      circuit: id,
      parent: c.chain[1] ?? null,
      maxA: c.maxA,
      limitA: lim.limitA,
      failsafe: lim.failsafe,
      currentA: feeder ? [...feeder] : measured,
      metered: c.metered,
      feederFault: entry?.fault ?? null,
      on,
      queue: queue.map(({ at: _at, ...q }) => q),
    })
  }
  return out
}

/** Every outlet's status as published (state, live values, open session's energy and cost). */
export function outletStatuses(state: EngineState, now: number): OutletStatus[] {
  const iso = new Date(now).toISOString()
  return Object.values(state.outlets).map((e) => statusOf(e, iso))
}

/** The plan an outlet's next session would be priced by, or null if it does not exist. */
export function outletPlan(state: EngineState, outletId: string): PlanConfig | null {
  if (!hasOwn(state.outlets, outletId)) throw new OutpostError('ENGINE_UNKNOWN_OUTLET', `no outlet ${JSON.stringify(outletId)}`)
  return planById(state, state.outlets[outletId]!.planId)
}

/** GET /api/outlets/{id}/prices: availability and rates of the outlet's plan for the next `hours`. */
export function outletPrices(
  state: EngineState,
  outletId: string,
  fromMs: number,
  hours: number,
): { planId: string; currency: string; activationFee: number; timeline: TimelineEntry[] } {
  const plan = outletPlan(state, outletId)
  if (!plan) throw new OutpostError('ENGINE_UNKNOWN_PLAN', `outlet ${outletId} uses plan "${state.outlets[outletId]!.planId}", which does not exist`)
  return {
    planId: plan.id,
    currency: plan.currency,
    activationFee: plan.activationFee ?? 0,
    timeline: priceTimeline(plan, state.settings.timezone, fromMs, hours),
  }
}

/** Outlets whose config change waits for their session to end (GET /api/config): the outlet, its session, what it will take. */
export function pendingConfig(state: EngineState): { outlet: string; sessionId: string | null; params: OutletParams }[] {
  const out: { outlet: string; sessionId: string | null; params: OutletParams }[] = []
  for (const e of Object.values(state.outlets)) if (e.pending) out.push({ outlet: e.id, sessionId: e.session?.id ?? null, params: e.pending })
  return out
}

export interface WalletView {
  userId: string
  currency: string
  /** Minor units. */
  balance: number
  /** What the user's open sessions have reserved of it (the engine's own reckoning: canPay's). */
  reserved: number
  /** The currency's minor digits. */
  digits: number
}

/** Every user's wallet, by user id. */
export function walletViews(st: EngineState): WalletView[] {
  return Object.keys(st.wallets)
    .sort()
    .map((userId) => {
      const w = st.wallets[userId]!
      return { userId, currency: w.currency, balance: w.balance, reserved: reservedMinor(st, userId), digits: currencyMinorDigits(w.currency) ?? 2 }
    })
}
