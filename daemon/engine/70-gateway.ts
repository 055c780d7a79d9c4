/**
 * The gateway's own events: boot, shutdown, the uplink going up or down, and a new site
 * configuration.
 *
 * Owns: closing open sessions at boot (at their last journaled reading) and at shutdown,
 * the session id prefix, opening every relay at boot and shutdown, the offline clock,
 * outlets and circuits added, changed or removed by a config, an outlet's change that waits
 * for its session to end, and the `config.applied` record.
 * Must never: change the wiring or plan of an outlet while its session runs, close a session at boot time instead of its last reading, keep a commanded
 * circuit limit above a lowered maxA, or let a config file's unchanged plan override the cloud's.
 */
import type { EndReason, JournalSalvageInfo, SiteConfig } from '../../core/types.js'
import { hasCircuits, hasOwn } from './00-queries.js'
import type { Ctx } from './10-context.js'
import { followsParams, newOutlet, outletParams, settingsFrom } from './20-setup.js'
import { endSession } from './40-sessions.js'
import type { CircuitEntry, ConfigChange, OutletParams } from './state.js'

export function onBoot(ctx: Ctx, cleanShutdown: boolean, version: string, publicKey: string | undefined, journalSalvage?: JournalSalvageInfo): void {
  const g = ctx.sec('gateway')
  g.running = true
  g.bootAt = ctx.now
  // A check never outlives its process: its relays were opened at the restart.
  if (g.crossCheck !== undefined) delete g.crossCheck
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

export function onShutdown(ctx: Ctx): void {
  for (const id of Object.keys(ctx.state.outlets)) if (ctx.state.outlets[id]!.session) endSession(ctx, id, 'reboot')
  ctx.sec('gateway').running = false
  for (const id of Object.keys(ctx.state.outlets)) {
    const e = ctx.state.outlets[id]!
    if (e.relayClosed) ctx.out(id).relayClosed = false
    if (e.hasRelay) ctx.relay(id, false) // every relay, open or not
    ctx.touch(id)
  }
}

/**
 * The wiring cross-check begins or ends. While it runs every idle outlet is `unavailable`
 * (an armed relay opens, nothing auto-starts) and a start is refused `cross-check-running`;
 * the daemon only begins one with no session open, and a session open meanwhile is left alone.
 */
export function onCrossCheck(ctx: Ctx, running: boolean): void {
  if (running && !ctx.gw.running) return
  if ((ctx.gw.crossCheck === true) === running) return
  ctx.sec('gateway').crossCheck = running
}

export function onUplink(ctx: Ctx, online: boolean): void {
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

export function onConfig(ctx: Ctx, config: SiteConfig, hash?: string, change?: ConfigChange): void {
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
  const waiting: string[] = []
  for (const o of config.outlets) {
    inConfig.add(o.id)
    if (!hasOwn(ctx.state.outlets, o.id)) {
      ctx.sec('outlets')[o.id] = newOutlet(config, o, ctx.now)
      ctx.touch(o.id)
      continue
    }
    const e0 = ctx.state.outlets[o.id]!
    const p = outletParams(config, o)
    if (e0.removed) ctx.out(o.id).removed = false
    if (followsParams(e0, p)) {
      if (e0.pending) ctx.out(o.id).pending = null // changed and changed back while the session ran
      continue
    }
    if (e0.session) {
      // A session keeps the wiring and plan it started with: the change waits until it ends (settle applies it).
      if (JSON.stringify(e0.pending ?? null) !== JSON.stringify(p)) ctx.out(o.id).pending = p
      waiting.push(o.id)
      continue
    }
    applyOutletParams(ctx, o.id, p)
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
  if (hash !== undefined && ctx.gw.configHash !== hash) {
    const previousHash = ctx.gw.configHash ?? null
    ctx.sec('gateway').configHash = hash
    if (change) {
      const changed = change.changed.slice(0, CONFIG_CHANGES_MAX)
      ctx.record({
        type: 'config.applied',
        ts: ctx.iso,
        who: change.who,
        configHash: hash,
        previousHash,
        changed,
        ...(change.changed.length > changed.length ? { changedOmitted: change.changed.length - changed.length } : {}),
        ...(waiting.length > 0 ? { pendingOutlets: waiting } : {}),
      })
    }
  }
}

/** The JSON pointers a `config.applied` record lists at most (the rest are counted). */
export const CONFIG_CHANGES_MAX = 64

/**
 * An outlet's config, applied to its entry. The installer changed the plan or auto-start user
 * in the file: that is newer than a cloud assign-plan / set-auto-start; an unchanged file keeps
 * the cloud's choice.
 */
function applyOutletParams(ctx: Ctx, id: string, p: OutletParams): void {
  const e = ctx.out(id)
  // A relay the outlet no longer has is opened before the engine forgets it (an armed outlet's is closed).
  if (e.hasRelay && !p.hasRelay) ctx.relay(id, false)
  e.hasRelay = p.hasRelay
  e.ratingA = p.ratingA
  if (p.phases !== null) e.phases = p.phases
  else delete e.phases
  e.circuit = p.circuit
  e.phase = p.phase
  e.priority = p.priority
  if (e.configPlan !== p.plan) {
    e.configPlan = p.plan
    e.planId = p.plan
  }
  if (e.configAutoStart !== p.autoStart) {
    e.configAutoStart = p.autoStart
    e.autoStartUser = p.autoStart
    e.autoStartSuspended = false
  }
  if (!p.hasRelay) e.autoStartUser = null
  if (e.pending) e.pending = null
  ctx.touch(id)
}

/**
 * Outlets whose session has ended take the config change that waited for it (in settle, after
 * every step). A session ends only in an entry the step copied, so only those are looked at.
 */
export function applyPending(ctx: Ctx): void {
  for (const id of ctx.changed.slice()) {
    const e = ctx.state.outlets[id]
    if (e?.pending && !e.session) applyOutletParams(ctx, id, e.pending)
  }
}
