/**
 * The session engine's one entry point: every rule of a charging session as a pure
 * function `step(state, event, now) → { state, effects }`, dispatching each event to its
 * handler, then settling the outlets' derived states and relays.
 *
 * Owns: event validation (an unknown outlet or circuit, a non-finite `now`, an unknown
 * event type throw and change nothing), which events count before boot, relay faults,
 * the order of a step (handler, config changes that waited for a session, circuit scheduler, derived states, memo), each outlet's
 * derived state and whether its relay is closed.
 * Must never: do I/O, read a clock (time is `now` and reading timestamps), use randomness,
 * mutate the state it was given, or use floats for money.
 */
import type { OutletState } from '../../core/types.js'
import { hasCircuits, hasOwn, idleState } from './00-queries.js'
import { Ctx } from './10-context.js'
import { checkFeederTimer, onFeederReading, schedule, storeSummary } from './30-scheduler.js'
import { endSession } from './40-sessions.js'
import { checkMeterTimer, onReading, onTick } from './50-readings.js'
import { onCommand } from './60-commands.js'
import { applyPending, onBoot, onConfig, onCrossCheck, onShutdown, onUplink } from './70-gateway.js'
import { OutpostError } from './errors.js'
import type { EngineEvent, EngineState, StepResult } from './state.js'

const CLOSED_STATES: ReadonlySet<OutletState> = new Set(['armed', 'pending', 'charging'])

function settle(ctx: Ctx): void {
  applyPending(ctx)
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
    case 'cross-check':
      onCrossCheck(ctx, event.running === true)
      break
    case 'config':
      onConfig(ctx, event.config, typeof event.hash === 'string' ? event.hash : undefined, event.change)
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
