/**
 * Commands from the cloud, the local API and the central system: validation of each
 * command's fields, at-most-once application by command id, and the result.
 *
 * Owns: the command actions (start, stop, set-wallet, set-auto-start, set-availability,
 * set-plan, assign-plan, set-circuit-limit, set-outlet-limit), the checks before a start, the memory of the
 * last command ids and their results, the error code and message of a refused command.
 * Must never: apply a command id twice, change anything for a refused command, or throw on
 * a malformed command (it gets an `invalid-command` result).
 */
import type { Command, CommandResult, PlanConfig } from '../../core/types.js'
import { canPay, costNow, hasOwn, isId, knownCurrency, offlineLimited, planById } from './00-queries.js'
import type { Ctx } from './10-context.js'
import { endSession, openSession } from './40-sessions.js'
import { COMMAND_ERRORS, type CommandErrorCode } from './errors.js'
import { planProblems } from './plan-rules.js'
import { periodAt } from './pricing.js'
import type { EngineEvent } from './state.js'

/** Command ids remembered for at-most-once application. */
const COMMAND_MEMORY = 256

type Outcome = { ok: true; result?: unknown } | { ok: false; code: CommandErrorCode; message: string }
const fail = (code: CommandErrorCode, message: string): Outcome => ({ ok: false, code, message })

export function onCommand(ctx: Ctx, ev: EngineEvent & { type: 'command' }): void {
  if (typeof ev.id !== 'string' || ev.id.length === 0 || ev.id === '__proto__') {
    ctx.result = { id: String(ev.id ?? ''), ok: false, error: { code: 'invalid-command', message: 'id: must be a non-empty string' } }
    return
  }
  const memo = ctx.state.commands
  if (hasOwn(memo.results, ev.id)) {
    ctx.result = memo.results[ev.id]!
    return
  }
  const r = ev.refused as { code?: unknown; message?: unknown } | undefined
  const o: Outcome =
    r === undefined
      ? applyCommand(ctx, ev.command)
      : typeof r === 'object' && r !== null && typeof r.code === 'string' && hasOwn(COMMAND_ERRORS, r.code) && typeof r.message === 'string'
        ? { ok: false, code: r.code as CommandErrorCode, message: r.message }
        : fail('invalid-command', 'refused: must be {code, message}, code one of the command error codes')
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
    case 'set-outlet-limit': {
      const bad =
        needOutlet() ??
        (c.maxA === null || (typeof c.maxA === 'number' && Number.isFinite(c.maxA) && c.maxA >= 0)
          ? null
          : fail('invalid-command', 'maxA: must be a number >= 0 (amperes per phase) or null'))
      if (bad) return bad
      const id = c.outlet as string
      if ((ctx.state.outlets[id]!.limitA ?? null) !== c.maxA) {
        const e = ctx.out(id)
        if (c.maxA === null) delete e.limitA
        else e.limitA = c.maxA as number
      }
      return { ok: true, result: { outlet: id, maxA: c.maxA } }
    }
    default:
      return fail('invalid-command', `action: unknown action ${JSON.stringify(c.action)}`)
  }
}

function start(ctx: Ctx, id: string, userId: string): Outcome {
  const st = ctx.state
  const e = st.outlets[id]!
  if (!st.gateway.running) return fail('not-running', 'the gateway is not running')
  if (st.gateway.crossCheck === true)
    return fail('cross-check-running', 'the wiring cross-check is switching the relays; start again once it has ended')
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
