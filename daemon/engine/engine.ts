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
  SiteConfig,
  SessionSettings,
  JournalSalvageInfo,
} from '../../core/types.js'
import { OutpostError, type CommandErrorCode } from './errors.js'
import { periodAt, priceTimeline, type TimelineEntry } from './pricing.js'
import { planProblems } from './plan-rules.js'
import type { CircuitEntry, EngineEvent, EngineState, OutletEntry, Session, StepResult } from './state.js'
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
import { openSession, account, endSession } from './40-sessions.js'

const CLOSED_STATES: ReadonlySet<OutletState> = new Set(['armed', 'pending', 'charging'])
/** Taper heuristic window: the minute before current fell. */
const TAPER_WINDOW_MS = 60_000
/** Samples closer than this are merged in the taper window (see sessionReading). */
const TAPER_SLOT_MS = 5_000
/** Command ids remembered for at-most-once application. */
const COMMAND_MEMORY = 256
/** A reading above this multiple of the outlet's rating is impossible. */
const RATING_FACTOR = 1.5

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
    // After a declared fault the next plausible register is the new baseline (meter swapped).
    if (e.meterFault === null && Math.round(rd.energyWh * 1000) < e.last.mWh)
      return `energy register went backwards from ${e.last.mWh / 1000} to ${rd.energyWh} Wh`
  }
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
  const mWh = Math.round(rd.energyWh * 1000)
  const gapMs = e0.last ? rd.ts - e0.last.ts : 0
  if (e0.session && gapMs > ctx.s.sessions.meterFaultMs) {
    // No reading for longer than the fault timeout (a stalled bus, or the clock stepped
    // forward): that was a meter fault. The session ends at the reading before the gap,
    // so neither the gap's time nor its energy is billed; this reading then recovers the outlet.
    declareMeterFault(ctx, id, `no reading for ${Math.round(gapMs / 1000)} s (gap between readings)`)
  }
  const e = ctx.out(id)
  let delta = 0
  if (e.last) delta = Math.max(0, mWh - e.last.mWh)
  if (e.meterFault !== null) {
    const rebased = e.last !== null && mWh < e.last.mWh
    ctx.record({
      type: 'outlet.recovered',
      ts: ctx.iso,
      outlet: id,
      detail: rebased
        ? `meter answers again; register rebased from ${e.last!.mWh / 1000} to ${mWh / 1000} Wh (meter swapped?)`
        : 'meter answers again',
    })
    e.meterFault = null
    ctx.touch(id)
  }
  e.badDetail = null
  e.goodAt = ctx.now
  e.fresh = true
  e.last = { ts: rd.ts, mWh, currentA: rd.currentA, powerW: rd.powerW, voltageV: rd.voltageV }
  e.recon =
    e.recon === null
      ? { from: ctx.now, startMWh: mWh, meterMWh: 0, sessionMWh: 0 }
      : { ...e.recon, meterMWh: e.recon.meterMWh + delta, sessionMWh: e.recon.sessionMWh + (e.session ? delta : 0) }

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
