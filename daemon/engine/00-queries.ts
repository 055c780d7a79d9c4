/**
 * Read-only facts of an engine state, shared by every layer above: plans, what a user can
 * pay, the offline limit, a session's running cost, an outlet's published status, an idle
 * outlet's state, and the circuit facts a session or a view needs.
 *
 * Owns: plan lookup (the cloud's over the file's), the wallet check at start (available
 * balance, currency, activation fee), what makes a session billable and its running cost,
 * the status an outlet publishes, when an idle outlet is armed, a circuit's limit in force
 * (every circuit's, kept beside the settings section while the circuits section is the same).
 * Must never: change a state, produce an effect, do I/O, read a clock, or use floats for money.
 */
import type { OutletState, OutletStatus, PlanConfig } from '../../core/types.js'
import type { CircuitLimit } from './circuits.js'
import type { CommandErrorCode } from './errors.js'
import { sessionEnergyMWh } from './meter-readings.js'
import { divRoundHalfUp, lineAmountMicros, microsPerMinor, periodAt, toMicros } from './pricing.js'
import type { EngineState, OutletEntry, Session, SettingsSection } from './state.js'

export function knownCurrency(code: string): boolean {
  try {
    microsPerMinor(code) // cached Intl lookup
    return true
  } catch {
    return false
  }
}

export const hasOwn = (o: object, k: string): boolean => Object.hasOwn(o, k)
export const isId = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= 128 && v !== '__proto__'

export function planById(st: EngineState, id: string): PlanConfig | null {
  if (hasOwn(st.plans, id)) return st.plans[id]!
  if (hasOwn(st.settings.configPlans, id)) return st.settings.configPlans[id]!
  return null
}

export function feeMicrosOf(plan: PlanConfig): number {
  return toMicros(plan.activationFee ?? 0)
}

/** What the user's open sessions have reserved of their wallet (the sum of their caps, minor units). */
export function reservedMinor(st: EngineState, userId: string): number {
  let reserved = 0
  for (const e of Object.values(st.outlets)) if (e.session && e.session.userId === userId) reserved += e.session.capMinor
  return reserved
}

/** Wallet balance minus what the user's open sessions have reserved; null without a wallet. */
function availableMinor(st: EngineState, userId: string): number | null {
  if (!hasOwn(st.wallets, userId)) return null
  return st.wallets[userId]!.balance - reservedMinor(st, userId)
}

/** The cap of a session with no local wallet (the central system bills it): never reached, and plain JSON (Infinity is not). */
const NO_WALLET_CAP = Number.MAX_SAFE_INTEGER

type PayCheck = { ok: true; cap: number } | { ok: false; code: CommandErrorCode; message: string }
export function canPay(st: EngineState, userId: string, plan: PlanConfig): PayCheck {
  const avail = availableMinor(st, userId)
  // The central system authorized this user and bills the session: no local cap without a local wallet.
  if (avail === null && st.settings.centralAuth) return { ok: true, cap: NO_WALLET_CAP }
  if (avail === null) return { ok: false, code: 'unknown-user', message: `no wallet known for user "${userId}"` }
  const w = st.wallets[userId]!
  if (w.currency !== plan.currency)
    return { ok: false, code: 'currency-mismatch', message: `wallet of "${userId}" is in ${w.currency}, plan "${plan.id}" charges ${plan.currency}` }
  const feeMinor = feeMicrosOf(plan) / microsPerMinor(plan.currency)
  if (avail <= 0) return { ok: false, code: 'no-balance', message: `available balance of "${userId}" is ${avail} (minor units), not positive` }
  if (avail <= feeMinor)
    return { ok: false, code: 'no-balance', message: `available balance of "${userId}" (${avail}) does not exceed the activation fee (${feeMinor})` }
  return { ok: true, cap: avail }
}

export function offlineLimited(st: EngineState, now: number): boolean {
  const g = st.gateway
  const lim = st.settings.offlineLimitMs
  return st.settings.uplink && lim !== null && !g.online && g.offlineSince !== null && now - g.offlineSince >= lim
}

/** Only a session that drew current and accounted at least one reading costs anything. */
export function billable(s: Session): boolean {
  return s.drewCurrent && s.lines.length > 0
}

/** Running cost of a session: micro-units and the rounded total (minor units, before the wallet cap). */
export function costNow(s: Session): { micros: number; total: number } {
  if (!billable(s)) return { micros: 0, total: 0 }
  let micros = s.feeMicros
  for (const l of s.lines) micros += lineAmountMicros(l.mWh, l.ms, l.perKwhMicros, l.perHourMicros)
  const total = divRoundHalfUp(micros, microsPerMinor(s.currency))
  return { micros, total }
}

export function statusOf(e: OutletEntry, iso: string): OutletStatus {
  const s = e.session
  const st: OutletStatus = {
    outlet: e.id,
    state: e.state,
    currentA: e.last?.currentA ?? 0,
    powerW: e.last?.powerW ?? 0,
    energyWh: s ? sessionEnergyMWh(s) / 1000 : 0,
    cost: s ? Math.min(costNow(s).total, s.capMinor) : 0,
    ts: iso,
  }
  if (s) {
    st.sessionId = s.id
    st.userId = s.userId
    st.currency = s.currency
    if (s.queuedAt != null) st.queuedSince = new Date(s.queuedAt).toISOString()
  }
  if (e.circuit != null) st.circuit = e.circuit
  return st
}

export function hasCircuits(set: SettingsSection): boolean {
  for (const _ in set.circuits ?? {}) return true
  return false
}

/** The outlet is switched by the circuit rules: it is wired to a known circuit and has a relay. */
export function onCircuit(st: EngineState, e: OutletEntry): boolean {
  return e.circuit != null && e.hasRelay && hasOwn(st.settings.circuits ?? {}, e.circuit)
}

/** The outlet's own limit (set-outlet-limit) is below the minimum charging current: its session waits. */
export function limitPaused(st: EngineState, e: OutletEntry): boolean {
  return e.limitA !== undefined && e.limitA < st.settings.sessions.minChargeA
}

/** A circuit's limit now: the configured maxA, a set-circuit-limit in force, the failsafe while its feeder meter is silent. */
export function circuitLimit(st: EngineState, id: string): { limitA: number; failsafe: boolean } {
  const c = st.settings.circuits[id]!
  const entry = st.circuits?.[id]
  const failsafe = c.metered && entry !== undefined && entry.fault !== null
  const limitA = entry?.limitA ?? c.maxA
  return { limitA: failsafe ? Math.min(limitA, c.failsafeA) : limitA, failsafe }
}

const ZERO: readonly [number, number, number] = Object.freeze([0, 0, 0]) as readonly [number, number, number]

/**
 * Every circuit's limit in force, worked out once for a settings section and circuits section
 * (both replaced, never changed in place, when a limit, a feeder reading or the config
 * changes), kept beside them like the memo. `unmetered`: no circuit has a feeder meter, so no
 * circuit carries an unmanaged load and these are the rules' limits as they stand.
 */
export interface Limits {
  circuits: object
  limits: Record<string, CircuitLimit>
  unmetered: boolean
}
const limitsOf = new WeakMap<object, Limits>()

/** `check` (circuitMemoCheck): work every kept limit out again, and throw if one differs. */
export function limitsNow(st: EngineState, check: boolean): Limits {
  const had = limitsOf.get(st.settings)
  if (had && had.circuits === st.circuits) {
    if (check)
      for (const id of Object.keys(st.settings.circuits)) {
        const l = circuitLimit(st, id)
        if (l.limitA !== had.limits[id]!.limitA || l.failsafe !== had.limits[id]!.failsafe)
          throw new Error(`circuit limit memo disagrees on ${id}: ${JSON.stringify({ l, had: had.limits[id] })}`)
      }
    return had
  }
  const limits: Record<string, CircuitLimit> = {}
  let unmetered = true
  for (const id of Object.keys(st.settings.circuits)) {
    const l = circuitLimit(st, id)
    limits[id] = { limitA: l.limitA, failsafe: l.failsafe, extraA: ZERO as [number, number, number] }
    if (st.settings.circuits[id]!.metered) unmetered = false
  }
  const out = { circuits: st.circuits, limits, unmetered }
  limitsOf.set(st.settings, out)
  return out
}

/**
 * An armed outlet's relay is closed with nobody deciding: it stays armed only while every
 * circuit on its way to the root could carry its rating (not in failsafe, not cut below it).
 */
export function circuitClosedToArming(st: EngineState, e: OutletEntry): boolean {
  if (!onCircuit(st, e)) return false
  for (const id of st.settings.circuits[e.circuit!]!.chain) {
    const l = circuitLimit(st, id)
    if (l.failsafe || l.limitA < e.ratingA) return true
  }
  return false
}

export function idleState(st: EngineState, e: OutletEntry, now: number): OutletState {
  if (e.meterFault !== null || e.relayFault !== null) return 'fault'
  if (!st.gateway.running) return 'off'
  // The cross-check switches the relays itself: nothing is armed or offered while it runs.
  if (!e.available || st.gateway.crossCheck === true) return 'unavailable'
  const plan = planById(st, e.planId)
  if (!plan || !periodAt(plan, st.settings.timezone, now).available) return 'unavailable'
  if (
    e.autoStartUser !== null &&
    !e.autoStartSuspended &&
    e.hasRelay &&
    e.fresh &&
    !offlineLimited(st, now) &&
    !circuitClosedToArming(st, e) &&
    !limitPaused(st, e) &&
    canPay(st, e.autoStartUser, plan).ok
  )
    return 'armed'
  return 'off'
}
