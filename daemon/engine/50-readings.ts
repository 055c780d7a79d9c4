/**
 * What meter readings and the passing of time do to an outlet and its session.
 *
 * Owns: the plausibility of a reading (impossible values, time not advancing; the register's
 * steps are judged by meter-readings.ts and applied here: rejected readings, rebases), meter
 * faults and recovery (silence, gaps), reconciliation counters and
 * their record, auto-start on current, accounting a reading into the open session (split
 * where the circuit rules switched it), the taper window and the unplug / charge-complete
 * decision, grace, plan windows and the offline limit in the tick.
 * Must never: bill energy of a reading it found impossible, bill the time or energy of a
 * gap longer than the fault timeout, or read a clock (`now` and reading timestamps only).
 */
import type { EndReason, SessionSettings } from '../../core/types.js'
import { canPay, costNow, offlineLimited, planById } from './00-queries.js'
import type { Ctx } from './10-context.js'
import { checkFeederTimer } from './30-scheduler.js'
import { account, endSession, openSession } from './40-sessions.js'
import { anchorAfter, judgeOutletReading, noteMeterEvent, RATING_FACTOR, reconAfter } from './meter-readings.js'
import { periodAt } from './pricing.js'
import type { EngineEvent, OutletEntry, Session } from './state.js'

/** Taper heuristic window: the minute before current fell. */
const TAPER_WINDOW_MS = 60_000
/** Samples closer than this are merged in the taper window (see sessionReading). */
const TAPER_SLOT_MS = 5_000

export function declareMeterFault(ctx: Ctx, id: string, detail: string): void {
  const e = ctx.out(id)
  e.meterFault = detail
  ctx.record({ type: 'outlet.fault', ts: ctx.iso, outlet: id, detail: `meter: ${detail}` })
  if (e.session) endSession(ctx, id, 'meter-fault')
  ctx.touch(id)
}

export function checkMeterTimer(ctx: Ctx, id: string): void {
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

export function onReading(ctx: Ctx, id: string, r: EngineEvent & { type: 'reading' }): void {
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
    const regMWh = Math.round(rd.energyWh * 1000)
    e.badDetail = v.detail
    e.suspect = { ts: rd.ts, mWh: regMWh }
    e.recon = reconAfter(e.recon, v, false)
    if (e.session) noteMeterEvent(ctx.sess(id), 'rejected', rd.ts, e.last!.mWh, regMWh)
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
  e.last = {
    ts: rd.ts,
    mWh,
    currentA: rd.currentA,
    powerW: rd.powerW,
    voltageV: rd.voltageV,
    ...(typeof rd.meterSerial === 'string' ? { meterSerial: rd.meterSerial } : {}),
  }
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

export function onTick(ctx: Ctx): void {
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
