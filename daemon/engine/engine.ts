/**
 * The session engine: every rule of a charging session as a pure function
 * `step(state, event, now) → { state, effects }`.
 *
 * Owns: outlet states, session lifecycle (start, grace, unplug/taper, wallet cap,
 * plan windows, meter and relay faults, boot/shutdown closing, offline limit),
 * billing lines, local wallet copies, reconciliation counters, command results.
 * Must never: do I/O, read a clock (time is `now` and reading timestamps), use
 * randomness, mutate the state it was given, or use floats for money.
 *
 * Structural sharing: a step copies only what it changes (top-level sections and
 * `outlets[id]` entries), so the journal can persist exactly the changed parts,
 * and a step that changes nothing returns the very same state object.
 *
 * Effects come in the order they must happen: records, then relays (opens before
 * closes), then statuses, then the command result. The daemon may carry out a relay
 * OPEN before the journal commit; a relay CLOSE only after the step's records are durable.
 */
import type {
  Command,
  CommandResult,
  EndReason,
  OutletState,
  OutletStatus,
  PlanConfig,
  RecordBody,
  SiteConfig,
  BillingLine,
  SessionSettings,
  JournalSalvageInfo,
  CircuitReading,
} from '../../core/types.js'
import { minOffMs, minOnMs, planCircuits, type CircuitLimit, type Contender } from './circuits.js'
import { OutpostError, type CommandErrorCode } from './errors.js'
import {
  assertTimeZone,
  divRoundHalfUp,
  forEachPeriodRun,
  lineAmountMicros,
  microsPerMinor,
  periodAt,
  priceTimeline,
  toMicros,
  type TimelineEntry,
} from './pricing.js'
import { planProblems } from './plan-rules.js'
import { anchorAfter, judgeOutletReading, noteMeterEvent, RATING_FACTOR, reconAfter, sessionEnergyMWh, sessionMeterEvents } from './meter-readings.js'
import type {
  CircuitEntry,
  CircuitSettings,
  EngineEvent,
  EngineState,
  Effect,
  GatewaySection,
  LineAcc,
  OutletEntry,
  Session,
  SettingsSection,
  StepResult,
} from './state.js'

const CLOSED_STATES: ReadonlySet<OutletState> = new Set(['armed', 'pending', 'charging'])
/** Taper heuristic window: the minute before current fell. */
const TAPER_WINDOW_MS = 60_000
/** Samples closer than this are merged in the taper window (see sessionReading). */
const TAPER_SLOT_MS = 5_000
/** Command ids remembered for at-most-once application. */
const COMMAND_MEMORY = 256

// ---------------------------------------------------------------- construction

function settingsFrom(config: SiteConfig): SettingsSection {
  assertTimeZone(config.site.timezone)
  const configPlans: Record<string, PlanConfig> = {}
  for (const p of config.plans) configPlans[p.id] = structuredClone(p)
  return {
    siteId: config.site.id,
    timezone: config.site.timezone,
    sessions: { ...config.sessions },
    offlineLimitMs: config.offline.limitMinutes === null ? null : config.offline.limitMinutes * 60_000,
    uplink: config.uplink !== undefined,
    centralAuth: config.ocpp !== undefined,
    configPlans,
    circuits: circuitSettings(config),
  }
}

/** Each circuit with its chain to the root and its children, computed once per config. */
function circuitSettings(config: SiteConfig): Record<string, CircuitSettings> {
  const out: Record<string, CircuitSettings> = {}
  const byId = new Map((config.circuits ?? []).map((c) => [c.id, c]))
  for (const c of config.circuits ?? []) {
    const chain: string[] = []
    // The config refuses cycles and unknown parents; the walk stops at either all the same.
    for (let cur: string | undefined = c.id; cur !== undefined && byId.has(cur) && !chain.includes(cur); cur = byId.get(cur)!.parent) chain.push(cur)
    out[c.id] = {
      maxA: c.maxA,
      chain,
      children: [],
      members: config.outlets.filter((o) => o.circuit === c.id).map((o) => o.id),
      metered: c.meter !== undefined,
      failsafeA: c.failsafeA ?? 0,
      slotMs: (c.slotS ?? 1800) * 1000,
    }
  }
  for (const c of config.circuits ?? [])
    if (c.parent !== undefined && hasOwn(out, c.parent) && out[c.parent]!.chain.length > 0) out[c.parent]!.children.push(c.id)
  return out
}

const PHASE_INDEX = { L1: 0, L2: 1, L3: 2 } as const

function outletCircuit(o: SiteConfig['outlets'][number]): { circuit: string | null; phase: 0 | 1 | 2; priority: number } {
  return { circuit: o.circuit ?? null, phase: PHASE_INDEX[o.phase ?? 'L1'] ?? 0, priority: o.priority ?? 0 }
}

function newOutlet(o: SiteConfig['outlets'][number], now: number): OutletEntry {
  const auto = o.autoStart?.userId ?? null
  return {
    id: o.id,
    hasRelay: o.relay !== undefined,
    ratingA: o.ratingA,
    configPlan: o.plan,
    planId: o.plan,
    configAutoStart: auto,
    autoStartUser: auto,
    autoStartSuspended: false,
    available: true,
    state: 'off',
    relayClosed: false,
    last: null,
    anchor: null,
    suspect: null,
    fresh: false,
    goodAt: now,
    badDetail: null,
    meterFault: null,
    relayFault: null,
    session: null,
    recon: null,
    removed: false,
    ...outletCircuit(o),
  }
}

/** A fresh state for a site: every outlet off, no sessions, no wallets. Send `boot` next. */
export function initialState(config: SiteConfig): EngineState {
  const outlets: Record<string, OutletEntry> = {}
  for (const o of config.outlets) outlets[o.id] = newOutlet(o, 0)
  return {
    outlets,
    gateway: { running: false, bootAt: null, online: false, offlineSince: null, nextSession: 1, idPrefix: null },
    settings: settingsFrom(config),
    wallets: {},
    plans: {},
    commands: { ids: [], results: {} },
    circuits: {},
  }
}

// ---------------------------------------------------------------- copy-on-write step context

type SectionName = 'outlets' | 'gateway' | 'settings' | 'wallets' | 'plans' | 'commands' | 'circuits'

class Ctx {
  state: EngineState
  private readonly own = new WeakSet<object>()
  readonly records: RecordBody[] = []
  private readonly relays: Effect[] = []
  private readonly touched = new Set<string>()
  result: CommandResult | null = null
  private isoNow: string | null = null

  constructor(
    readonly prev: EngineState,
    readonly now: number,
  ) {
    this.state = prev
  }
  /** `now` as ISO 8601 (formatted once, only when a record or status needs it). */
  get iso(): string {
    this.isoNow ??= new Date(this.now).toISOString()
    return this.isoNow
  }
  get s(): SettingsSection {
    return this.state.settings
  }
  get gw(): GatewaySection {
    return this.state.gateway
  }
  private top(): EngineState {
    if (!this.own.has(this.state)) {
      this.state = { ...this.state }
      this.own.add(this.state)
    }
    return this.state
  }
  /** A section this step may mutate (copied once). */
  sec<K extends SectionName>(k: K): EngineState[K] {
    const top = this.top()
    const cur = top[k]
    if (this.own.has(cur)) return cur
    const c = { ...cur } as EngineState[K]
    this.own.add(c)
    top[k] = c
    return c
  }
  /** Replace a whole section. */
  put<K extends SectionName>(k: K, v: EngineState[K]): void {
    this.top()[k] = v
    this.own.add(v)
  }
  /** An outlet entry this step may mutate (copied once). */
  out(id: string): OutletEntry {
    const outs = this.sec('outlets')
    const cur = outs[id]!
    if (this.own.has(cur)) return cur
    const c = { ...cur }
    this.own.add(c)
    outs[id] = c
    this.changed.push(id)
    return c
  }
  /** Outlet entries this step copied (changed), in order. */
  readonly changed: string[] = []
  /** The open session of an outlet, mutable (copied once). Arrays inside must be replaced, not mutated. */
  sess(id: string): Session {
    const e = this.out(id)
    const cur = e.session!
    if (this.own.has(cur)) return cur
    const c = { ...cur }
    this.own.add(c)
    e.session = c
    return c
  }
  record(r: RecordBody): void {
    this.records.push(r)
  }
  relay(outlet: string, closed: boolean): void {
    this.relays.push({ type: 'relay', outlet, closed })
  }
  touch(id: string): void {
    this.touched.add(id)
  }
  effects(): Effect[] {
    const out: Effect[] = this.records.map((record) => ({ type: 'record', record }))
    // Opens first: the safe direction, and a close must wait for the commit anyway.
    for (const r of this.relays) if (r.type === 'relay' && !r.closed) out.push(r)
    for (const r of this.relays) if (r.type === 'relay' && r.closed) out.push(r)
    for (const id of this.touched) {
      const e = this.state.outlets[id]
      if (e) out.push({ type: 'status', status: statusOf(e, this.iso) })
    }
    if (this.result) out.push({ type: 'result', result: this.result })
    return out
  }
}

// ---------------------------------------------------------------- helpers

function knownCurrency(code: string): boolean {
  try {
    microsPerMinor(code) // cached Intl lookup
    return true
  } catch {
    return false
  }
}

const hasOwn = (o: object, k: string): boolean => Object.hasOwn(o, k)
const isId = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= 128 && v !== '__proto__'

function planById(st: EngineState, id: string): PlanConfig | null {
  if (hasOwn(st.plans, id)) return st.plans[id]!
  if (hasOwn(st.settings.configPlans, id)) return st.settings.configPlans[id]!
  return null
}

function feeMicrosOf(plan: PlanConfig): number {
  return toMicros(plan.activationFee ?? 0)
}

/** Wallet balance minus what the user's open sessions have reserved; null without a wallet. */
function availableMinor(st: EngineState, userId: string): number | null {
  if (!hasOwn(st.wallets, userId)) return null
  let reserved = 0
  for (const e of Object.values(st.outlets)) if (e.session && e.session.userId === userId) reserved += e.session.capMinor
  return st.wallets[userId]!.balance - reserved
}

/** The cap of a session with no local wallet (the central system bills it): never reached, and plain JSON (Infinity is not). */
const NO_WALLET_CAP = Number.MAX_SAFE_INTEGER

type PayCheck = { ok: true; cap: number } | { ok: false; code: CommandErrorCode; message: string }
function canPay(st: EngineState, userId: string, plan: PlanConfig): PayCheck {
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

function offlineLimited(st: EngineState, now: number): boolean {
  const g = st.gateway
  const lim = st.settings.offlineLimitMs
  return st.settings.uplink && lim !== null && !g.online && g.offlineSince !== null && now - g.offlineSince >= lim
}

/** Only a session that drew current and accounted at least one reading costs anything. */
function billable(s: Session): boolean {
  return s.drewCurrent && s.lines.length > 0
}

/** Running cost of a session: micro-units and the rounded total (minor units, before the wallet cap). */
function costNow(s: Session): { micros: number; total: number } {
  if (!billable(s)) return { micros: 0, total: 0 }
  let micros = s.feeMicros
  for (const l of s.lines) micros += lineAmountMicros(l.mWh, l.ms, l.perKwhMicros, l.perHourMicros)
  const total = divRoundHalfUp(micros, microsPerMinor(s.currency))
  return { micros, total }
}

function statusOf(e: OutletEntry, iso: string): OutletStatus {
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

// ---------------------------------------------------------------- sessions

function openSession(
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
  const s: Session = {
    id,
    userId,
    planId,
    plan,
    currency: plan.currency,
    trigger,
    startedAt: startTs,
    meterStartMWh: startMWh,
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
  ctx.record({ type: 'session.started', ts: ctx.iso, sessionId: id, outlet: outletId, userId, planId, trigger, meterWh: startMWh / 1000 })
  ctx.touch(outletId)
  return s
}

/**
 * Add the interval [a, b] with `energy` mWh to the session's lines, split at the
 * plan's period boundaries by linear interpolation in time (cumulative rounding
 * so the parts sum exactly to `energy`). b <= a: the energy goes to the period at a.
 */
function account(ctx: Ctx, id: string, b: number, energy: number, mWh: number, paused: boolean): void {
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

/** Time-weighted mean current over the minute before `end`, from the window's samples. */
function recentMean(window: [number, number][], end: number): number | null {
  const start = end - TAPER_WINDOW_MS
  let weighted = 0
  let span = 0
  for (let i = 0; i < window.length; i++) {
    const [t, a] = window[i]!
    const next = i + 1 < window.length ? window[i + 1]![0] : end
    const from = Math.max(t, start)
    const to = Math.min(next, end)
    if (to > from) {
      weighted += a * (to - from)
      span += to - from
    }
  }
  if (span > 0) return weighted / span
  const lastSample = window[window.length - 1]
  return lastSample ? lastSample[1] : null
}

function endSession(ctx: Ctx, id: string, reason: EndReason): void {
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

// ---------------------------------------------------------------- faults

function declareMeterFault(ctx: Ctx, id: string, detail: string): void {
  const e = ctx.out(id)
  e.meterFault = detail
  ctx.record({ type: 'outlet.fault', ts: ctx.iso, outlet: id, detail: `meter: ${detail}` })
  if (e.session) endSession(ctx, id, 'meter-fault')
  ctx.touch(id)
}

function checkMeterTimer(ctx: Ctx, id: string): void {
  const e = ctx.state.outlets[id]!
  if (e.meterFault !== null) return
  const ms = ctx.s.sessions.meterFaultMs
  if (ctx.now - e.goodAt >= ms) declareMeterFault(ctx, id, e.badDetail ?? `no good reading for ${Math.round((ctx.now - e.goodAt) / 1000)} s`)
}

/** Why a reading is impossible, or null when it is good. */
function impossible(e: OutletEntry, r: unknown): string | null {
  if (typeof r !== 'object' || r === null) return 'reading is not an object'
  const x = r as Record<string, unknown>
  for (const k of ['ts', 'currentA', 'powerW', 'energyWh', 'voltageV']) {
    if (typeof x[k] !== 'number' || !Number.isFinite(x[k])) return `${k} is not a finite number (${String(x[k])})`
  }
  const rd = r as { ts: number; currentA: number; energyWh: number }
  if (rd.currentA < 0) return `negative current ${rd.currentA} A`
  if (rd.currentA > RATING_FACTOR * e.ratingA) return `current ${rd.currentA} A above ${RATING_FACTOR} x the rating of ${e.ratingA} A`
  if (rd.energyWh < 0) return `negative energy register ${rd.energyWh} Wh`
  if (e.last) {
    // Not checked for the first reading after boot or a fault: a Pi without a real-time
    // clock may restart with a clock earlier than the last journaled reading.
    if (e.fresh && e.meterFault === null && rd.ts <= e.last.ts) return `reading time ${new Date(rd.ts).toISOString()} is not after the previous one`
  }
  // The register's steps (too large, back, a reset) are judged by meter-readings.ts.
  return null
}

// ---------------------------------------------------------------- event handlers

function onReading(ctx: Ctx, id: string, r: EngineEvent & { type: 'reading' }): void {
  const e0 = ctx.state.outlets[id]!
  const bad = impossible(e0, r.reading)
  if (bad !== null) {
    if (e0.badDetail !== bad) ctx.out(id).badDetail = bad
    checkMeterTimer(ctx, id)
    return
  }
  const rd = r.reading
  const gapMs = e0.last ? rd.ts - e0.last.ts : 0
  if (e0.session && gapMs > ctx.s.sessions.meterFaultMs) {
    // No reading for longer than the fault timeout (a stalled bus, or the clock stepped
    // forward): that was a meter fault. The session ends at the reading before the gap,
    // so neither the gap's time nor its energy is billed; this reading then recovers the outlet.
    declareMeterFault(ctx, id, `no reading for ${Math.round(gapMs / 1000)} s (gap between readings)`)
  }
  const v = judgeOutletReading(ctx.state.outlets[id]!, rd)
  if (v.kind === 'rejected') {
    // Never billed, and not a good reading: the meter-fault timer runs on.
    const e = ctx.out(id)
    e.badDetail = v.detail
    e.suspect = { ts: rd.ts, mWh: Math.round(rd.energyWh * 1000) }
    e.recon = reconAfter(e.recon, v, false)
    if (e.session) noteMeterEvent(ctx.sess(id), 'rejected', rd.ts, e.last!.mWh, Math.round(rd.energyWh * 1000))
    checkMeterTimer(ctx, id)
    return
  }
  const e = ctx.out(id)
  const mWh = v.markMWh
  const delta = v.kind === 'baseline' ? 0 : v.deltaMWh
  e.anchor = anchorAfter(e, v, { ts: rd.ts, mWh })
  if (e.meterFault !== null) {
    const rebased = v.kind === 'rebase' && v.toMWh < v.fromMWh
    ctx.record({
      type: 'outlet.recovered',
      ts: ctx.iso,
      outlet: id,
      detail: rebased
        ? `meter answers again; register rebased from ${v.fromMWh / 1000} to ${v.toMWh / 1000} Wh (meter swapped?)`
        : 'meter answers again',
    })
    e.meterFault = null
    ctx.touch(id)
  }
  // Across a reset nothing is billed: the session's energy counts from the new register on.
  if (e.session && v.kind === 'rebase') noteMeterEvent(ctx.sess(id), 'rebase', e.suspect!.ts, v.fromMWh, v.toMWh)
  e.suspect = null
  e.badDetail = null
  e.goodAt = ctx.now
  e.fresh = true
  e.last = { ts: rd.ts, mWh, currentA: rd.currentA, powerW: rd.powerW, voltageV: rd.voltageV }
  e.recon = e.recon === null ? { from: ctx.now, startMWh: mWh, meterMWh: 0, sessionMWh: 0 } : reconAfter(e.recon, v, e.session !== null)

  if (e.session) {
    sessionReading(ctx, id, rd.ts, rd.currentA, mWh, delta)
    return
  }
  const set = ctx.s.sessions
  if (e.state === 'armed' && e.autoStartUser !== null && rd.currentA > set.autoStartA) {
    const plan = planById(ctx.state, e.planId)
    if (!plan) return
    const pay = canPay(ctx.state, e.autoStartUser, plan)
    if (!pay.ok) return
    // Starts at this reading: energy before it (below autoStartA) is not billed, it shows in reconciliation.
    openSession(ctx, id, e.autoStartUser, e.planId, plan, 'auto-start', rd.ts, mWh, pay.cap, true)
    const m = ctx.sess(id)
    m.peakA = rd.currentA
    m.window = [[rd.ts, rd.currentA]]
  }
}

function sessionReading(ctx: Ctx, id: string, ts: number, currentA: number, mWh: number, delta: number): void {
  const s0 = ctx.state.outlets[id]!.session!
  const queuedNow = s0.queuedAt != null
  // Time waiting on a full circuit is not billed per hour: the interval since the last
  // reading is split where the circuit rules switched the session off or on (its energy
  // in proportion to time, cumulatively rounded so the parts add up).
  const switches = s0.switches ?? []
  let paused = switches.length > 0 ? !switches[0]![1] : queuedNow
  const later: [number, boolean][] = []
  let given = 0
  let at = s0.lastTs
  const span = ts - s0.lastTs
  for (const [t, queuedAfter] of switches) {
    if (t >= ts) {
      later.push([t, queuedAfter])
      continue
    }
    if (t > at && span > 0) {
      const cum = Math.round((delta * (t - s0.lastTs)) / span)
      account(ctx, id, t, cum - given, s0.lastMWh + cum, paused)
      given = cum
      at = t
    }
    paused = queuedAfter
  }
  account(ctx, id, ts, delta - given, mWh, paused)
  const s = ctx.sess(id)
  if (switches.length > 0) s.switches = later
  const set = ctx.s.sessions
  ctx.touch(id)
  // Taper window: samples of the last minute plus the one sample that reaches into it.
  // Each [t, a] holds from t to the next entry. To keep the journaled entry small, two
  // entries less than TAPER_SLOT_MS apart are merged into their exact time-weighted mean
  // once the entry after them is known, so about a dozen entries cover the minute.
  const win = [...s.window, [ts, currentA] as [number, number]]
  const n = win.length
  if (n >= 3) {
    const [ta, aa] = win[n - 3]!
    const [tb, ab] = win[n - 2]!
    if (tb - ta < TAPER_SLOT_MS && ts > ta) win.splice(n - 3, 2, [ta, (aa * (tb - ta) + ab * (ts - tb)) / (ts - ta)])
  }
  let cut = 0
  while (cut + 1 < win.length && win[cut + 1]![0] <= ts - TAPER_WINDOW_MS) cut++
  const previous = s.window
  s.window = cut > 0 ? win.slice(cut) : win
  if (currentA > s.peakA) s.peakA = currentA

  let reason: EndReason | null = null
  const graceEnd = graceFromOf(s) + set.graceSeconds * 1000
  // Waiting with the relay open: no grace and no unplug timer run (nothing can flow).
  if (!queuedNow) {
    if (!s.drewCurrent && currentA >= set.minChargeA && ts <= graceEnd) s.drewCurrent = true
    if (currentA >= set.minChargeA && s.drawing !== true) s.drawing = true
    if (s.awaitDraw === true) {
      // Switched on again after waiting: the car must draw again within the grace period; if it
      // does not, it left while it waited.
      if (currentA >= set.minChargeA) s.awaitDraw = false
      else if (ctx.now >= graceEnd) reason = 'unplugged'
    }
  }
  if (reason === null && !queuedNow && s.drewCurrent && s.awaitDraw !== true) {
    if (currentA < set.noCurrentA) {
      if (s.lowSince === null) {
        s.lowSince = ts
        const mean = recentMean(previous, ts)
        s.taperedAtLow = mean !== null && mean < set.taperRatio * s.peakA
      }
      if (ts - s.lowSince >= set.noCurrentHoldMs - holdSlackMs(set)) reason = s.taperedAtLow ? 'charge-complete' : 'unplugged'
    } else if (s.lowSince !== null) {
      s.lowSince = null
      s.taperedAtLow = false
    }
  }
  if (reason === null && s.drewCurrent && costNow(s).total >= s.capMinor) reason = 'wallet-depleted'
  if (reason === null && !periodAt(s.plan, ctx.s.timezone, ctx.now).available) reason = 'plan-unavailable'
  if (reason === null && !queuedNow && !s.drewCurrent && ctx.now >= graceEnd) reason = 'grace-expired'
  if (reason !== null) endSession(ctx, id, reason)
}

/** Start of a session's grace period (sessions journaled before circuits existed have only startedAt). */
function graceFromOf(s: Session): number {
  return s.graceFrom ?? s.startedAt
}

/**
 * Readings are stamped when the meter's answer arrives, so samples one poll apart land a
 * few ms either side of pollMs: with the hold an exact multiple of pollMs (the defaults,
 * 2000 and 1000), the sample that completes the hold could measure 1998 ms and the session
 * would end one poll late. The hold is therefore met within half a poll (at most a quarter
 * of the hold, so a hold shorter than a poll still needs a second low sample). Ending
 * early costs nobody anything: no current is flowing.
 */
export function holdSlackMs(set: SessionSettings): number {
  return Math.min(set.pollMs / 2, set.noCurrentHoldMs / 4)
}

function onTick(ctx: Ctx): void {
  const set = ctx.s.sessions
  const limited = offlineLimited(ctx.state, ctx.now)
  for (const id of Object.keys(ctx.s.circuits)) checkFeederTimer(ctx, id)
  for (const id of Object.keys(ctx.state.outlets)) {
    checkMeterTimer(ctx, id)
    let e = ctx.state.outlets[id]!
    const s = e.session
    if (s) {
      const waiting = s.queuedAt != null
      const graceOver = ctx.now >= graceFromOf(s) + set.graceSeconds * 1000
      if (!waiting && !s.drewCurrent && graceOver) endSession(ctx, id, 'grace-expired')
      else if (!waiting && s.awaitDraw === true && graceOver) endSession(ctx, id, 'unplugged')
      else if (!periodAt(s.plan, ctx.s.timezone, ctx.now).available) endSession(ctx, id, 'plan-unavailable')
      else if (limited) endSession(ctx, id, 'offline-limit')
    }
    e = ctx.state.outlets[id]!
    if (e.recon && e.last && ctx.now - e.recon.from >= set.reconciliationMinutes * 60_000) {
      const rc = e.recon
      ctx.record({
        type: 'meter.reconciliation',
        ts: ctx.iso,
        outlet: id,
        from: new Date(rc.from).toISOString(),
        to: ctx.iso,
        meterStartWh: rc.startMWh / 1000,
        meterEndWh: e.last.mWh / 1000,
        billedWh: rc.sessionMWh / 1000,
        unbilledWh: (rc.meterMWh - rc.sessionMWh) / 1000,
        ...((rc.rebasedMWh ?? 0) !== 0 ? { rebasedWh: rc.rebasedMWh! / 1000 } : {}),
        ...((rc.rejected ?? 0) > 0 ? { rejectedReadings: rc.rejected } : {}),
      })
      ctx.out(id).recon = { from: ctx.now, startMWh: e.last.mWh, meterMWh: 0, sessionMWh: 0 }
    }
  }
}

function onBoot(ctx: Ctx, cleanShutdown: boolean, version: string, publicKey: string | undefined, journalSalvage?: JournalSalvageInfo): void {
  const g = ctx.sec('gateway')
  g.running = true
  g.bootAt = ctx.now
  g.online = false
  g.offlineSince = ctx.now
  if (g.idPrefix === null) g.idPrefix = ctx.now.toString(36)
  ctx.record({
    type: 'gateway.started',
    ts: ctx.iso,
    version,
    cleanShutdown,
    ...(publicKey === undefined ? {} : { publicKey }),
    ...(journalSalvage ? { journalSalvage } : {}),
  })
  // The feeder meters must answer again after a restart: their silence timers start now.
  if (hasCircuits(ctx.s)) {
    const circuits = ctx.sec('circuits')
    for (const id of Object.keys(ctx.s.circuits))
      circuits[id] = { limitA: circuits[id]?.limitA ?? null, currentsA: null, goodAt: ctx.now, fault: null }
  }
  const reason: EndReason = cleanShutdown ? 'reboot' : 'power-loss'
  for (const id of Object.keys(ctx.state.outlets)) {
    // Closed at the session's last journaled reading (its lastTs / lastMWh), never at boot time.
    if (ctx.state.outlets[id]!.session) endSession(ctx, id, reason)
  }
  const outs = ctx.sec('outlets')
  for (const id of Object.keys(outs)) {
    if (outs[id]!.removed) {
      delete outs[id]
      continue
    }
    const e = ctx.out(id)
    e.fresh = false
    e.goodAt = ctx.now
    e.badDetail = null
    e.relayClosed = false
    if (e.hasRelay) ctx.relay(id, false)
    ctx.touch(id)
  }
}

function onShutdown(ctx: Ctx): void {
  for (const id of Object.keys(ctx.state.outlets)) if (ctx.state.outlets[id]!.session) endSession(ctx, id, 'reboot')
  ctx.sec('gateway').running = false
  for (const id of Object.keys(ctx.state.outlets)) {
    const e = ctx.state.outlets[id]!
    if (e.relayClosed) ctx.out(id).relayClosed = false
    if (e.hasRelay) ctx.relay(id, false) // every relay, open or not
    ctx.touch(id)
  }
}

function onUplink(ctx: Ctx, online: boolean): void {
  const g = ctx.gw
  if (online) {
    if (g.online && g.offlineSince === null) return
    const m = ctx.sec('gateway')
    m.online = true
    m.offlineSince = null
    return
  }
  if (!g.online && g.offlineSince !== null) return
  const m = ctx.sec('gateway')
  m.online = false
  m.offlineSince = ctx.now
  for (const id of Object.keys(ctx.state.outlets)) {
    const s = ctx.state.outlets[id]!.session
    if (s && !s.offline) ctx.sess(id).offline = true
  }
}

function onConfig(ctx: Ctx, config: SiteConfig): void {
  const next = settingsFrom(config)
  if (JSON.stringify(next) !== JSON.stringify(ctx.s)) ctx.put('settings', next)
  // Circuits: new ones added, removed ones dropped; a commanded limit above a lowered maxA is void.
  const had = (ctx.state.circuits ?? {}) as Record<string, CircuitEntry>
  const want: Record<string, CircuitEntry> = {}
  let same = Object.keys(had).length === Object.keys(next.circuits).length && ctx.state.circuits !== undefined
  for (const id of Object.keys(next.circuits)) {
    const h = hasOwn(had, id) ? had[id]! : null
    const limitA = h && h.limitA !== null && h.limitA <= next.circuits[id]!.maxA ? h.limitA : null
    want[id] = h && h.limitA === limitA ? h : { limitA, currentsA: h?.currentsA ?? null, goodAt: h?.goodAt ?? ctx.now, fault: h?.fault ?? null }
    if (want[id] !== h) same = false
  }
  if (!same) ctx.put('circuits', want)
  const inConfig = new Set<string>()
  for (const o of config.outlets) {
    inConfig.add(o.id)
    if (!hasOwn(ctx.state.outlets, o.id)) {
      ctx.sec('outlets')[o.id] = newOutlet(o, ctx.now)
      ctx.touch(o.id)
      continue
    }
    const e0 = ctx.state.outlets[o.id]!
    const auto = o.autoStart?.userId ?? null
    const hasRelay = o.relay !== undefined
    const wired = outletCircuit(o)
    if (
      e0.hasRelay === hasRelay &&
      e0.ratingA === o.ratingA &&
      e0.configPlan === o.plan &&
      e0.configAutoStart === auto &&
      !e0.removed &&
      e0.circuit === wired.circuit &&
      e0.phase === wired.phase &&
      e0.priority === wired.priority
    )
      continue
    const e = ctx.out(o.id)
    Object.assign(e, wired)
    e.hasRelay = hasRelay
    e.ratingA = o.ratingA
    e.removed = false
    // The installer changed the plan or auto-start user in the file: that is newer than
    // a cloud assign-plan / set-auto-start; an unchanged file keeps the cloud's choice.
    if (e.configPlan !== o.plan) {
      e.configPlan = o.plan
      e.planId = o.plan
    }
    if (e.configAutoStart !== auto) {
      e.configAutoStart = auto
      e.autoStartUser = auto
      e.autoStartSuspended = false
    }
    if (!hasRelay) e.autoStartUser = null
  }
  for (const id of Object.keys(ctx.state.outlets)) {
    if (inConfig.has(id)) continue
    const e = ctx.state.outlets[id]!
    if (e.session && !ctx.gw.running) {
      // Restored state, not yet booted: boot closes the session at its last reading, then drops the outlet.
      if (!e.removed) ctx.out(id).removed = true
      continue
    }
    if (e.session) endSession(ctx, id, 'manager-stopped')
    delete ctx.sec('outlets')[id]
  }
}

// ---------------------------------------------------------------- commands

type Outcome = { ok: true; result?: unknown } | { ok: false; code: CommandErrorCode; message: string }
const fail = (code: CommandErrorCode, message: string): Outcome => ({ ok: false, code, message })

function onCommand(ctx: Ctx, ev: EngineEvent & { type: 'command' }): void {
  if (typeof ev.id !== 'string' || ev.id.length === 0 || ev.id === '__proto__') {
    ctx.result = { id: String(ev.id ?? ''), ok: false, error: { code: 'invalid-command', message: 'id: must be a non-empty string' } }
    return
  }
  const memo = ctx.state.commands
  if (hasOwn(memo.results, ev.id)) {
    ctx.result = memo.results[ev.id]!
    return
  }
  const o = applyCommand(ctx, ev.command)
  const result: CommandResult = o.ok
    ? o.result === undefined
      ? { id: ev.id, ok: true }
      : { id: ev.id, ok: true, result: o.result }
    : { id: ev.id, ok: false, error: { code: o.code, message: o.message } }
  const c = ctx.sec('commands')
  const ids = [...c.ids, ev.id]
  const results = { ...c.results, [ev.id]: result }
  while (ids.length > COMMAND_MEMORY) delete results[ids.shift()!]
  c.ids = ids
  c.results = results
  ctx.result = result
}

function applyCommand(ctx: Ctx, cmd: Command): Outcome {
  if (typeof cmd !== 'object' || cmd === null) return fail('invalid-command', 'command: must be an object')
  const c = cmd as Record<string, unknown>
  const needOutlet = (): Outcome | null => {
    if (!isId(c.outlet)) return fail('invalid-command', 'outlet: must be a non-empty string')
    if (!hasOwn(ctx.state.outlets, c.outlet) || ctx.state.outlets[c.outlet]!.removed)
      return fail('unknown-outlet', `no outlet "${c.outlet}" on this site`)
    return null
  }
  switch (c.action) {
    case 'start': {
      const bad = needOutlet() ?? (isId(c.userId) ? null : fail('invalid-command', 'userId: must be a non-empty string'))
      if (bad) return bad
      return start(ctx, c.outlet as string, c.userId as string)
    }
    case 'stop': {
      const bad = needOutlet() ?? (c.by === 'user' || c.by === 'manager' ? null : fail('invalid-command', 'by: must be "user" or "manager"'))
      if (bad) return bad
      const id = c.outlet as string
      const e = ctx.state.outlets[id]!
      if (!e.session) return fail('no-session', `outlet "${id}" has no open session`)
      const sessionId = e.session.id
      endSession(ctx, id, c.by === 'user' ? 'user-stopped' : 'manager-stopped')
      // A stop must stick: with auto-start the still-plugged vehicle would start a new session at once.
      if (e.autoStartUser !== null && !e.autoStartSuspended) ctx.out(id).autoStartSuspended = true
      const ended = ctx.records[ctx.records.length - 1]
      return { ok: true, result: { sessionId, total: ended && ended.type === 'session.ended' ? ended.total : 0 } }
    }
    case 'set-wallet': {
      if (!isId(c.userId)) return fail('invalid-command', 'userId: must be a non-empty string')
      if (typeof c.currency !== 'string' || !/^[A-Z]{3}$/.test(c.currency) || !knownCurrency(c.currency))
        return fail('invalid-command', 'currency: must be a known ISO 4217 code')
      if (typeof c.balance !== 'number' || !Number.isSafeInteger(c.balance))
        return fail('invalid-command', 'balance: must be an integer (minor units)')
      const userId = c.userId
      const balance = c.balance
      const cur = hasOwn(ctx.state.wallets, userId) ? ctx.state.wallets[userId]! : null
      if (!cur || cur.currency !== c.currency || cur.balance !== balance) ctx.sec('wallets')[userId] = { currency: c.currency, balance }
      // Authoritative: a lower balance shrinks the caps of the user's open sessions (never below what they already cost).
      let remaining = balance
      for (const id of Object.keys(ctx.state.outlets)) {
        const s = ctx.state.outlets[id]!.session
        if (!s || s.userId !== userId || s.currency !== c.currency) continue
        const cost = Math.min(costNow(s).total, s.capMinor)
        const cap = Math.min(s.capMinor, Math.max(remaining, cost))
        if (cap !== s.capMinor) ctx.sess(id).capMinor = cap
        remaining -= cap
      }
      return { ok: true }
    }
    case 'set-auto-start': {
      const bad = needOutlet() ?? (c.userId === null || isId(c.userId) ? null : fail('invalid-command', 'userId: must be a non-empty string or null'))
      if (bad) return bad
      const id = c.outlet as string
      if (!ctx.state.outlets[id]!.hasRelay && c.userId !== null) return fail('no-relay', `outlet "${id}" has no relay: it cannot be armed`)
      const e0 = ctx.state.outlets[id]!
      if (e0.autoStartUser !== c.userId || e0.autoStartSuspended) {
        const e = ctx.out(id)
        e.autoStartUser = c.userId as string | null
        e.autoStartSuspended = false
      }
      return { ok: true }
    }
    case 'set-availability': {
      const bad = needOutlet() ?? (typeof c.available === 'boolean' ? null : fail('invalid-command', 'available: must be true or false'))
      if (bad) return bad
      const id = c.outlet as string
      if (ctx.state.outlets[id]!.available !== c.available) ctx.out(id).available = c.available as boolean
      if (c.available === false && ctx.state.outlets[id]!.session) endSession(ctx, id, 'manager-stopped')
      return { ok: true }
    }
    case 'set-plan': {
      const problems = planProblems(c.plan)
      if (problems.length > 0) return fail('invalid-plan', problems.join('; '))
      const plan = structuredClone(c.plan) as PlanConfig
      ctx.sec('plans')[plan.id] = plan
      return { ok: true }
    }
    case 'assign-plan': {
      const bad = needOutlet() ?? (isId(c.planId) ? null : fail('invalid-command', 'planId: must be a non-empty string'))
      if (bad) return bad
      if (!planById(ctx.state, c.planId as string)) return fail('unknown-plan', `no plan "${String(c.planId)}"`)
      const id = c.outlet as string
      if (ctx.state.outlets[id]!.planId !== c.planId) ctx.out(id).planId = c.planId as string
      return { ok: true }
    }
    case 'set-circuit-limit': {
      if (!isId(c.circuit)) return fail('invalid-command', 'circuit: must be a non-empty string')
      const cfg = hasOwn(ctx.s.circuits, c.circuit) ? ctx.s.circuits[c.circuit]! : null
      if (!cfg) return fail('unknown-circuit', `no circuit "${c.circuit}" on this site`)
      if (c.maxA !== null && (typeof c.maxA !== 'number' || !Number.isFinite(c.maxA) || c.maxA < 0))
        return fail('invalid-command', 'maxA: must be a number >= 0 (amperes per phase) or null')
      if (c.maxA !== null && c.maxA > cfg.maxA)
        return fail('limit-above-circuit', `maxA ${c.maxA} A is above the ${cfg.maxA} A circuit "${c.circuit}" is wired for`)
      const limitA = c.maxA === null || c.maxA === cfg.maxA ? null : c.maxA
      const cur = ctx.state.circuits[c.circuit]
      if (!cur || cur.limitA !== limitA) {
        const cs = ctx.sec('circuits')
        cs[c.circuit] = { ...(cur ?? { currentsA: null, goodAt: ctx.now, fault: null }), limitA }
      }
      return { ok: true, result: { circuit: c.circuit, maxA: limitA ?? cfg.maxA } }
    }
    default:
      return fail('invalid-command', `action: unknown action ${JSON.stringify(c.action)}`)
  }
}

function start(ctx: Ctx, id: string, userId: string): Outcome {
  const st = ctx.state
  const e = st.outlets[id]!
  if (!st.gateway.running) return fail('not-running', 'the gateway is not running')
  if (e.session) return fail('outlet-busy', `outlet "${id}" already has session ${e.session.id}`)
  if (e.meterFault !== null || e.relayFault !== null) return fail('outlet-fault', `outlet "${id}" is in fault: ${e.meterFault ?? e.relayFault}`)
  if (!e.available) return fail('outlet-unavailable', `outlet "${id}" was made unavailable by the manager`)
  const plan = planById(st, e.planId)
  if (!plan) return fail('unknown-plan', `outlet "${id}" uses plan "${e.planId}", which does not exist`)
  if (!periodAt(plan, st.settings.timezone, ctx.now).available)
    return fail('plan-unavailable', `plan "${plan.id}" makes outlet "${id}" unavailable now`)
  if (offlineLimited(st, ctx.now)) return fail('offline-limit', 'the uplink has been down longer than the offline limit')
  if (!e.fresh || e.last === null) return fail('outlet-not-ready', `the meter of outlet "${id}" has not been read since the gateway started`)
  const pay = canPay(st, userId, plan)
  if (!pay.ok) return fail(pay.code, pay.message)
  if (e.autoStartUser === userId && e.autoStartSuspended) ctx.out(id).autoStartSuspended = false
  const s = openSession(ctx, id, userId, e.planId, plan, 'activation', ctx.now, e.last.mWh, pay.cap, false)
  return { ok: true, result: { sessionId: s.id, capMinor: pay.cap } }
}

// ---------------------------------------------------------------- shared circuits

function hasCircuits(set: SettingsSection): boolean {
  for (const _ in set.circuits ?? {}) return true
  return false
}

/** The outlet is switched by the circuit rules: it is wired to a known circuit and has a relay. */
function onCircuit(st: EngineState, e: OutletEntry): boolean {
  return e.circuit != null && e.hasRelay && hasOwn(st.settings.circuits ?? {}, e.circuit)
}

/** A circuit's limit now: the configured maxA, a set-circuit-limit in force, the failsafe while its feeder meter is silent. */
function circuitLimit(st: EngineState, id: string): { limitA: number; failsafe: boolean } {
  const c = st.settings.circuits[id]!
  const entry = st.circuits?.[id]
  const failsafe = c.metered && entry !== undefined && entry.fault !== null
  const limitA = entry?.limitA ?? c.maxA
  return { limitA: failsafe ? Math.min(limitA, c.failsafeA) : limitA, failsafe }
}

/**
 * An armed outlet's relay is closed with nobody deciding: it stays armed only while every
 * circuit on its way to the root could carry its rating (not in failsafe, not cut below it).
 */
function circuitClosedToArming(st: EngineState, e: OutletEntry): boolean {
  if (!onCircuit(st, e)) return false
  for (const id of st.settings.circuits[e.circuit!]!.chain) {
    const l = circuitLimit(st, id)
    if (l.failsafe || l.limitA < e.ratingA) return true
  }
  return false
}

function checkFeederTimer(ctx: Ctx, id: string, detail?: string): void {
  const c = ctx.s.circuits[id]
  const entry = ctx.state.circuits?.[id]
  if (!c?.metered || !entry || entry.fault !== null) return
  const silentMs = ctx.now - entry.goodAt
  if (silentMs < ctx.s.sessions.meterFaultMs) return
  ctx.sec('circuits')[id] = { ...entry, currentsA: null, fault: detail ?? `no good reading for ${Math.round(silentMs / 1000)} s` }
}

function onFeederReading(ctx: Ctx, id: string, r: CircuitReading): void {
  const a = (r as { currentsA?: unknown } | null)?.currentsA
  const bad = !Array.isArray(a) || a.length !== 3 || a.some((x) => typeof x !== 'number' || !Number.isFinite(x) || x < 0)
  if (bad) {
    // An impossible sample counts as silence: the timer keeps running from the last good one.
    checkFeederTimer(ctx, id, `impossible reading ${JSON.stringify(a)}`)
    return
  }
  const entry = ctx.state.circuits?.[id]
  ctx.sec('circuits')[id] = { limitA: entry?.limitA ?? null, currentsA: [a[0], a[1], a[2]] as [number, number, number], goodAt: ctx.now, fault: null }
}

/** A switch by the circuit rules: the next reading's interval is split there (billed, or waited). */
function markSwitch(s: Session, at: number, queuedAfter: boolean): void {
  s.switches = [...(s.switches ?? []), [at, queuedAfter]]
}

/**
 * What each circuit carries, kept beside the state (a memo, never persisted): per circuit and
 * phase the expected draw of its outlets in integer mA, the outlets waiting, and the outlets
 * whose draw depends on more than their own entry (an armed outlet drawing: it is worked out
 * afresh in every step). A step updates it from the previous state's for the outlet entries it
 * changed only, so the common step does not walk every outlet; a state without one (from the
 * journal, after a config change) gets it by walking every outlet once.
 */
interface CircuitSummary {
  expected: Record<string, [number, number, number]>
  waiting: Set<string>
  volatile: Set<string>
}
const summaries = new WeakMap<object, CircuitSummary>()

/** Tests set this: every step then also walks every outlet and throws if the memo disagrees. */
export const circuitMemoCheck = { enabled: false }

type Contribution = { mA: number; waits: boolean; volatile: boolean }
const NOTHING: Contribution = { mA: 0, waits: false, volatile: false }

/** An outlet entry's share of its circuit, from the entry alone (drawOf, without the armed case). */
function contributionOf(cs: Record<string, CircuitSettings>, e: OutletEntry | undefined): Contribution {
  if (!e || e.circuit == null || !hasOwn(cs, e.circuit) || !cs[e.circuit]!.members?.includes(e.id)) return NOTHING
  const s = e.session
  if (s && e.hasRelay && e.meterFault === null && e.relayFault === null) {
    if (s.queuedAt != null) return { mA: 0, waits: true, volatile: false }
    return { mA: Math.round(1000 * (s.drawing === true && e.last ? e.last.currentA : e.ratingA)), waits: false, volatile: false }
  }
  const cur = (e.relayClosed || !e.hasRelay) && e.last ? e.last.currentA : 0
  if (!e.hasRelay) return { mA: Math.round(1000 * cur), waits: false, volatile: false }
  if (!s && cur > 0) return { mA: 0, waits: false, volatile: true }
  return NOTHING
}

function addContribution(sum: CircuitSummary, cs: Record<string, CircuitSettings>, e: OutletEntry | undefined, sign: 1 | -1): void {
  const c = contributionOf(cs, e)
  if (c === NOTHING) return
  const id = e!.id
  if (c.mA !== 0) for (const cid of cs[e!.circuit!]!.chain) sum.expected[cid]![e!.phase] += sign * c.mA
  if (c.waits) sign > 0 ? sum.waiting.add(id) : sum.waiting.delete(id)
  if (c.volatile) sign > 0 ? sum.volatile.add(id) : sum.volatile.delete(id)
}

function fullSummary(st: EngineState): CircuitSummary {
  const cs = st.settings.circuits
  const sum: CircuitSummary = { expected: {}, waiting: new Set(), volatile: new Set() }
  for (const id of Object.keys(cs)) sum.expected[id] = [0, 0, 0]
  for (const id of Object.keys(cs)) for (const oid of cs[id]!.members ?? []) addContribution(sum, cs, st.outlets[oid], 1)
  return sum
}

/** The memo for the state as it is now in this step: the previous state's, with this step's changed entries. */
function currentSummary(ctx: Ctx): CircuitSummary {
  const st = ctx.state
  const prev = ctx.prev.settings === st.settings ? summaries.get(ctx.prev.outlets) : undefined
  if (!prev) return fullSummary(st)
  if (st.outlets === ctx.prev.outlets) return prev
  const cs = st.settings.circuits
  const sum: CircuitSummary = { expected: {}, waiting: new Set(prev.waiting), volatile: new Set(prev.volatile) }
  for (const id of Object.keys(prev.expected)) sum.expected[id] = [...prev.expected[id]!]
  const seen = new Set<string>()
  for (const oid of ctx.changed) {
    if (seen.has(oid)) continue
    seen.add(oid)
    addContribution(sum, cs, ctx.prev.outlets[oid], -1)
    addContribution(sum, cs, st.outlets[oid], 1)
  }
  if (circuitMemoCheck.enabled) {
    const full = fullSummary(st)
    const same =
      JSON.stringify(full.expected) === JSON.stringify(sum.expected) &&
      JSON.stringify([...full.waiting].sort()) === JSON.stringify([...sum.waiting].sort()) &&
      JSON.stringify([...full.volatile].sort()) === JSON.stringify([...sum.volatile].sort())
    if (!same)
      throw new Error(`circuit memo disagrees: ${JSON.stringify({ full, sum: { ...sum, waiting: [...sum.waiting], volatile: [...sum.volatile] } })}`)
  }
  return sum
}

function storeSummary(ctx: Ctx): void {
  if (summaries.has(ctx.state.outlets)) return
  summaries.set(ctx.state.outlets, currentSummary(ctx))
}

/** drawOf: the outlet's session waits for room (it draws nothing now, and wants its rating). */
const WAITS = -1

/**
 * What an outlet on a circuit is expected to draw now: a switched-on session its measured
 * current once it has drawn since it was switched on, else its rating; a load the rules cannot
 * switch (a meter-only outlet, an armed one starting to draw) what it measures; WAITS for a
 * waiting session; 0 for an outlet whose relay opens in this step (a session that just ended, a fault).
 */
function drawOf(st: EngineState, e: OutletEntry, now: number): number {
  const s = e.session
  if (s && e.hasRelay && e.meterFault === null && e.relayFault === null) {
    if (s.queuedAt != null) return WAITS
    return s.drawing === true && e.last ? e.last.currentA : e.ratingA
  }
  const cur = (e.relayClosed || !e.hasRelay) && e.last ? e.last.currentA : 0
  if (cur > 0 && (!e.hasRelay || (!s && idleState(st, e, now) === 'armed'))) return cur
  return 0
}

/**
 * Whether any waiting session could be switched on now: off long enough, and either room for
 * its rating or, on one of its circuits, a switched-on session whose slot (or, for a lower
 * priority, whose minimum on time) is over. When none could, the rules would change nothing.
 */
function couldSwitchOn(
  st: EngineState,
  waiting: OutletEntry[],
  members: string[],
  expected: Record<string, [number, number, number]>,
  limits: Record<string, CircuitLimit>,
  now: number,
): boolean {
  const cs = st.settings.circuits
  const slotEnd: Record<string, number> = {}
  const minOnEnd: Record<string, number> = {}
  const lowestOn: Record<string, number> = {}
  for (const id of Object.keys(cs)) {
    slotEnd[id] = Number.POSITIVE_INFINITY
    minOnEnd[id] = Number.POSITIVE_INFINITY
    lowestOn[id] = Number.POSITIVE_INFINITY
  }
  for (const oid of members) {
    const e = st.outlets[oid]!
    const s = e.session
    if (!s || !e.hasRelay || s.queuedAt != null || e.meterFault !== null || e.relayFault !== null) continue
    const c0 = cs[e.circuit!]!
    const onAt = s.onAt ?? s.startedAt
    for (const cid of c0.chain) {
      if (onAt + c0.slotMs < slotEnd[cid]!) slotEnd[cid] = onAt + c0.slotMs
      if (onAt + minOnMs(c0.slotMs) < minOnEnd[cid]!) minOnEnd[cid] = onAt + minOnMs(c0.slotMs)
      if (e.priority < lowestOn[cid]!) lowestOn[cid] = e.priority
    }
  }
  for (const e of waiting) {
    const s = e.session!
    const c = cs[e.circuit!]!
    if (s.offAt != null && now - s.offAt < minOffMs(c.slotMs)) continue
    let room = true
    let turn = false
    for (const cid of c.chain) {
      if (expected[cid]![e.phase] + limits[cid]!.extraA[e.phase] + e.ratingA > limits[cid]!.limitA + 1e-9) room = false
      if (slotEnd[cid]! <= now || (lowestOn[cid]! < e.priority && minOnEnd[cid]! <= now)) turn = true
    }
    if (room || turn) return true
  }
  return false
}

/** The circuit rules (circuits.ts) over the whole site: who is switched on, who waits. */
function schedule(ctx: Ctx): void {
  const st = ctx.state
  const cs = st.settings.circuits
  const ids = Object.keys(cs)
  const prev = ctx.prev.outlets
  const now = ctx.now
  // What a feeder meter measures beyond what the switched-on outlets are expected to draw is an
  // unmanaged load (so the load counted is the larger of the two: a car whose meter has not
  // been read yet is not counted twice); a circuit without a meter carries its children's.
  const loadsFrom = (expected: Record<string, [number, number, number]>): { limits: Record<string, CircuitLimit>; over: boolean } => {
    const extraOf = (id: string, depth: number): [number, number, number] => {
      const c = cs[id]!
      const entry = st.circuits?.[id]
      if (c.metered) {
        const a = entry && entry.fault === null ? entry.currentsA : null
        if (!a) return [0, 0, 0]
        const m = expected[id]!
        return [Math.max(0, a[0] - m[0]), Math.max(0, a[1] - m[1]), Math.max(0, a[2] - m[2])]
      }
      const sum: [number, number, number] = [0, 0, 0]
      if (depth < 64)
        for (const child of c.children) {
          const x = extraOf(child, depth + 1)
          sum[0] += x[0]
          sum[1] += x[1]
          sum[2] += x[2]
        }
      return sum
    }
    const limits: Record<string, CircuitLimit> = {}
    let over = false
    for (const id of ids) {
      const l = circuitLimit(st, id)
      const extraA = extraOf(id, 0)
      const x = expected[id]!
      if (x[0] + extraA[0] > l.limitA + 1e-9 || x[1] + extraA[1] > l.limitA + 1e-9 || x[2] + extraA[2] > l.limitA + 1e-9) over = true
      limits[id] = { limitA: l.limitA, failsafe: l.failsafe, extraA }
    }
    return { limits, over }
  }
  const membersOf = (): string[] => {
    const out: string[] = []
    for (const cid0 of ids) for (const oid of cs[cid0]!.members ?? []) if (st.outlets[oid]?.circuit === cid0) out.push(oid)
    return out
  }

  // The quick look, from the memo (integer mA, 1 mA toward running the rules; the armed outlets
  // drawing worked out afresh): nothing over its limit, no session opened in this step, and
  // nobody waiting who could be switched on now (off long enough, and either there is room or a
  // switched-on session's time is up): the rules would change nothing (the common step).
  const fresh0 = ctx.records.some((r) => r.type === 'session.started')
  if (!fresh0) {
    const memo = currentSummary(ctx)
    const approx: Record<string, [number, number, number]> = {}
    for (const id of ids) {
      const x = memo.expected[id]!
      approx[id] = [(x[0] + 1) / 1000, (x[1] + 1) / 1000, (x[2] + 1) / 1000]
    }
    for (const oid of memo.volatile) {
      const e = st.outlets[oid]!
      const a = drawOf(st, e, now)
      if (a > 0) for (const cid of cs[e.circuit!]!.chain) approx[cid]![e.phase] += a
    }
    const quick = loadsFrom(approx)
    if (!quick.over && memo.waiting.size === 0) return
    if (
      !quick.over &&
      !couldSwitchOn(
        st,
        [...memo.waiting].map((oid) => st.outlets[oid]!),
        membersOf(),
        approx,
        quick.limits,
        now,
      )
    )
      return
  }
  const members = membersOf()

  // The rules run: the expected load exactly, from every outlet on a circuit.
  const expected: Record<string, [number, number, number]> = {}
  for (const id of ids) expected[id] = [0, 0, 0]
  for (const oid of members) {
    const e = st.outlets[oid]!
    const a = drawOf(st, e, now)
    if (a > 0) for (const cid of cs[e.circuit!]!.chain) expected[cid]![e.phase] += a
  }
  const { limits } = loadsFrom(expected)

  const contenders: Contender[] = []
  const fresh = new Set<string>()
  for (const id of members) {
    const e = st.outlets[id]!
    const c = cs[e.circuit!]!
    const s = e.session
    const a = drawOf(st, e, ctx.now)
    if (s && e.hasRelay && e.meterFault === null && e.relayFault === null) {
      const on = s.queuedAt == null
      const isNew = prev[id]?.session?.id !== s.id
      if (isNew) fresh.add(id)
      contenders.push({
        outlet: id,
        chain: c.chain,
        phase: e.phase,
        priority: e.priority,
        drawA: on ? a : e.ratingA,
        on,
        movable: true,
        tentative: on && isNew,
        onAt: s.onAt ?? s.startedAt,
        queuedAt: s.queuedAt ?? s.startedAt,
        offAt: s.offAt ?? Number.NEGATIVE_INFINITY,
        slotMs: c.slotMs,
      })
    } else if (a > 0) {
      contenders.push({
        outlet: id,
        chain: c.chain,
        phase: e.phase,
        priority: e.priority,
        drawA: a,
        on: true,
        movable: false,
        tentative: false,
        onAt: 0,
        queuedAt: 0,
        offAt: Number.NEGATIVE_INFINITY,
        slotMs: c.slotMs,
      })
    }
  }

  const plan = planCircuits(limits, contenders, ctx.now)
  for (const [id, why] of plan.off) {
    const e = st.outlets[id]!
    const s = ctx.sess(id)
    markSwitch(s, ctx.now, true)
    s.queuedAt = ctx.now
    s.offAt = ctx.now
    s.lowSince = null
    s.taperedAtLow = false
    s.drawing = false
    s.awaitDraw = false
    ctx.record({ type: 'session.queued', ts: ctx.iso, sessionId: s.id, outlet: id, circuit: e.circuit!, why: fresh.has(id) ? 'start' : why })
    ctx.touch(id)
  }
  for (const id of plan.on) {
    const e = st.outlets[id]!
    const waitedMs = ctx.now - (e.session!.queuedAt ?? ctx.now)
    const s = ctx.sess(id)
    markSwitch(s, ctx.now, false)
    s.queuedAt = null
    s.onAt = ctx.now
    s.graceFrom = ctx.now
    s.drawing = false
    // The taper heuristic looks at the minute before the current fell: the wait's 0 A with the
    // relay open is not the car tapering off, so the window starts again with the turn.
    s.window = []
    // It had drawn before it waited: the car must draw again within the grace period.
    if (s.drewCurrent) s.awaitDraw = true
    if (!fresh.has(id))
      ctx.record({ type: 'session.resumed', ts: ctx.iso, sessionId: s.id, outlet: id, circuit: e.circuit!, waitedS: waitedMs / 1000 })
    ctx.touch(id)
  }
  // An activation that found no room: it opened waiting, and says so once.
  for (const c of contenders) {
    if (!c.movable || c.on || plan.on.has(c.outlet) || !fresh.has(c.outlet)) continue
    const s = st.outlets[c.outlet]!.session!
    ctx.record({ type: 'session.queued', ts: ctx.iso, sessionId: s.id, outlet: c.outlet, circuit: st.outlets[c.outlet]!.circuit!, why: 'start' })
  }
}

// ---------------------------------------------------------------- settle: derived states and relays

function idleState(st: EngineState, e: OutletEntry, now: number): OutletState {
  if (e.meterFault !== null || e.relayFault !== null) return 'fault'
  if (!st.gateway.running) return 'off'
  if (!e.available) return 'unavailable'
  const plan = planById(st, e.planId)
  if (!plan || !periodAt(plan, st.settings.timezone, now).available) return 'unavailable'
  if (
    e.autoStartUser !== null &&
    !e.autoStartSuspended &&
    e.hasRelay &&
    e.fresh &&
    !offlineLimited(st, now) &&
    !circuitClosedToArming(st, e) &&
    canPay(st, e.autoStartUser, plan).ok
  )
    return 'armed'
  return 'off'
}

function settle(ctx: Ctx): void {
  const circuits = hasCircuits(ctx.s)
  if (ctx.gw.running && circuits) schedule(ctx)
  deriveStates(ctx)
  if (circuits) storeSummary(ctx)
}

function deriveStates(ctx: Ctx): void {
  for (const id of Object.keys(ctx.state.outlets)) {
    const e = ctx.state.outlets[id]!
    let target: OutletState
    if (e.meterFault !== null || e.relayFault !== null) target = 'fault'
    else if (e.session)
      target = e.session.queuedAt != null ? 'queued' : e.session.drewCurrent && e.session.awaitDraw !== true ? 'charging' : 'pending'
    else target = idleState(ctx.state, e, ctx.now)
    const closed = CLOSED_STATES.has(target)
    if (target === e.state && closed === e.relayClosed) continue
    const m = ctx.out(id)
    m.state = target
    ctx.touch(id)
    if (closed !== m.relayClosed) {
      m.relayClosed = closed
      if (m.hasRelay) ctx.relay(id, closed)
    }
  }
}

// ---------------------------------------------------------------- step

function requireFeeder(st: EngineState, id: unknown, what: string): string {
  if (typeof id !== 'string' || !hasOwn(st.settings.circuits ?? {}, id) || !st.settings.circuits[id]!.metered)
    throw new OutpostError('ENGINE_UNKNOWN_CIRCUIT', `${what} event: no circuit ${JSON.stringify(id)} with a feeder meter in the engine state`)
  return id
}

function requireOutlet(st: EngineState, id: unknown, what: string): string {
  if (typeof id !== 'string' || !hasOwn(st.outlets, id))
    throw new OutpostError('ENGINE_UNKNOWN_OUTLET', `${what} event: no outlet ${JSON.stringify(id)} in the engine state`)
  return id
}

/**
 * Apply one event at time `now` (epoch ms from the injected clock). Pure: the
 * given state is never mutated; unchanged sections and outlet entries keep their
 * identity. Throws OutpostError (and changes nothing) on an event that is not
 * well-formed: an unknown outlet, a non-finite `now`, an unknown event type.
 */
export function step(state: EngineState, event: EngineEvent, now: number): StepResult {
  if (typeof now !== 'number' || !Number.isFinite(now)) throw new OutpostError('ENGINE_BAD_EVENT', `now must be finite epoch ms, got ${String(now)}`)
  if (typeof event !== 'object' || event === null) throw new OutpostError('ENGINE_BAD_EVENT', 'event must be an object')
  const ctx = new Ctx(state, now)
  switch (event.type) {
    case 'reading':
      requireOutlet(state, event.outlet, 'reading')
      // Before boot the state is what the journal persisted; boot must close sessions at their
      // last journaled reading, so nothing read since the restart may be billed into them.
      if (!state.gateway.running) return { state, effects: [] }
      onReading(ctx, event.outlet, event)
      break
    case 'read-failed': {
      const id = requireOutlet(state, event.outlet, 'read-failed')
      if (!state.gateway.running) return { state, effects: [] }
      const detail = `read failed: ${String(event.error)}`
      if (state.outlets[id]!.badDetail !== detail) ctx.out(id).badDetail = detail
      checkMeterTimer(ctx, id)
      break
    }
    case 'relay-failed': {
      const id = requireOutlet(state, event.outlet, 'relay-failed')
      if (state.outlets[id]!.relayFault === null) {
        const e = ctx.out(id)
        e.relayFault = String(event.error)
        ctx.record({ type: 'outlet.fault', ts: ctx.iso, outlet: id, detail: `relay: ${String(event.error)}` })
        // The relay cannot be trusted to switch: the session ends as a fault of the outlet.
        if (e.session) endSession(ctx, id, 'meter-fault')
        ctx.touch(id)
      }
      break
    }
    case 'relay-ok': {
      const id = requireOutlet(state, event.outlet, 'relay-ok')
      if (state.outlets[id]!.relayFault !== null) {
        ctx.out(id).relayFault = null
        ctx.record({ type: 'outlet.recovered', ts: ctx.iso, outlet: id, detail: 'relay answers and agrees again' })
        ctx.touch(id)
      }
      break
    }
    case 'command':
      onCommand(ctx, event)
      if (ctx.state === state) return { state, effects: ctx.effects() } // a repeated id: nothing changes
      break
    case 'tick':
      if (!state.gateway.running) return { state, effects: [] }
      onTick(ctx)
      break
    case 'boot':
      onBoot(
        ctx,
        event.cleanShutdown === true,
        String(event.version),
        typeof event.publicKey === 'string' ? event.publicKey : undefined,
        event.journalSalvage,
      )
      break
    case 'shutdown':
      onShutdown(ctx)
      break
    case 'uplink':
      onUplink(ctx, event.online === true)
      break
    case 'config':
      onConfig(ctx, event.config)
      break
    case 'circuit-reading': {
      const id = requireFeeder(state, event.circuit, 'circuit-reading')
      if (!state.gateway.running) return { state, effects: [] }
      onFeederReading(ctx, id, event.reading)
      break
    }
    case 'circuit-read-failed': {
      const id = requireFeeder(state, event.circuit, 'circuit-read-failed')
      if (!state.gateway.running) return { state, effects: [] }
      checkFeederTimer(ctx, id, `read failed: ${String(event.error)}`)
      break
    }
    default:
      throw new OutpostError('ENGINE_BAD_EVENT', `unknown event type ${JSON.stringify((event as { type?: unknown }).type)}`)
  }
  settle(ctx)
  return { state: ctx.state, effects: ctx.effects() }
}

// ---------------------------------------------------------------- read-only views for the API

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
