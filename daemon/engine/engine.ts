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
import type { Command, CommandResult, EndReason, OutletState, OutletStatus, PlanConfig, SiteConfig, JournalSalvageInfo } from '../../core/types.js'
import { OutpostError, type CommandErrorCode } from './errors.js'
import { periodAt, priceTimeline, type TimelineEntry } from './pricing.js'
import { planProblems } from './plan-rules.js'
import type { CircuitEntry, EngineEvent, EngineState, StepResult } from './state.js'
import {
  knownCurrency,
  hasOwn,
  isId,
  planById,
  canPay,
  offlineLimited,
  costNow,
  statusOf,
  hasCircuits,
  circuitLimit,
  idleState,
} from './00-queries.js'
import { Ctx } from './10-context.js'
import { settingsFrom, outletCircuit, newOutlet } from './20-setup.js'
import { checkFeederTimer, onFeederReading, storeSummary, schedule } from './30-scheduler.js'
import { openSession, endSession } from './40-sessions.js'
import { checkMeterTimer, onReading, onTick } from './50-readings.js'

const CLOSED_STATES: ReadonlySet<OutletState> = new Set(['armed', 'pending', 'charging'])
/** Command ids remembered for at-most-once application. */
const COMMAND_MEMORY = 256

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
