/**
 * The circuit scheduler: applies the circuit rules (circuits.ts) to the site in a step,
 * and keeps a circuit's feeder meter readings.
 *
 * Owns: feeder readings and the feeder's silence timer (failsafe), the memo of expected load
 * per circuit and phase (beside the state, never persisted), an outlet's expected draw, the
 * quick look that skips the rules when they would change nothing (`couldSwitchOn`), and
 * carrying out a plan: switching sessions off to wait (`session.queued`) and on again
 * (`session.resumed`), with the switch times the next reading is split at.
 * Must never: open or end a session, bill anything, decide who goes first (circuits.ts
 * does), or persist the memo.
 */
import { idleState, circuitLimit, hasOwn, limitPaused, limitsNow } from './00-queries.js'
import type { Ctx } from './10-context.js'
import type { CircuitReading } from '../../core/types.js'
import { minOffMs, minOnMs, planCircuits, type CircuitLimit, type Contender } from './circuits.js'
import type { CircuitSettings, EngineState, OutletEntry, Session } from './state.js'

export function checkFeederTimer(ctx: Ctx, id: string, detail?: string): void {
  const c = ctx.s.circuits[id]
  const entry = ctx.state.circuits?.[id]
  if (!c?.metered || !entry || entry.fault !== null) return
  const silentMs = ctx.now - entry.goodAt
  if (silentMs < ctx.s.sessions.meterFaultMs) return
  ctx.sec('circuits')[id] = { ...entry, currentsA: null, fault: detail ?? `no good reading for ${Math.round(silentMs / 1000)} s` }
}

export function onFeederReading(ctx: Ctx, id: string, r: CircuitReading): void {
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
 * journal, after a config change) gets it by walking every outlet once. The sets are shared
 * with the previous state's memo until a step changes who is in them.
 */
interface CircuitSummary {
  expected: Record<string, [number, number, number]>
  /** How far `expected` may be from the exact sum of amperes, pA (see drawContribution). */
  slack: Record<string, [number, number, number]>
  waiting: Set<string>
  volatile: Set<string>
  /** Nobody waiting could be switched on, and until when that holds (see Quiet); null: not known. */
  quiet: Quiet | null
}

/**
 * The verdict of a walk that found nobody waiting who could be switched on, kept with the memo
 * so the steps after it need not walk again. It holds while the switched-on sessions and the
 * waiting ones keep what the walk looked at (`turnKey`), time stays in [at, until) (until: the
 * first minimum off time, slot or minimum on time that runs out), and every waiter that was off
 * long enough still finds no room on the circuit and phase where it found none: `tight` keeps,
 * per circuit and phase, the smallest rating refused there, checked against the load and limit
 * of each step (readings, feeder meters and limits change them without a walk).
 */
interface Quiet {
  at: number
  until: number
  tight: Array<{ circuit: string; phase: 0 | 1 | 2; ratingA: number }>
  /**
   * Found by running the rules, which switched nobody (a waiter whose turn has come, but the
   * sessions whose time is up cannot free its rating): it also needs every outlet's expected
   * draw and the feeder readings exactly as they were, and no armed outlet drawing.
   */
  exact: boolean
  /** For an exact verdict, the feeder readings it was found with (the state's circuits section). */
  circuits?: object
}
const summaries = new WeakMap<object, CircuitSummary>()
/** The verdict when nobody waits at all. */
const NOBODY: Quiet = { at: Number.NEGATIVE_INFINITY, until: Number.POSITIVE_INFINITY, tight: [], exact: false }
/** Tests set this: every step then also walks every outlet and throws if the memo disagrees. */
export const circuitMemoCheck = { enabled: false }

type Contribution = { amps: number; mA: number; slack: number; waits: boolean; volatile: boolean }
const NOTHING: Contribution = { amps: 0, mA: 0, slack: 0, waits: false, volatile: false }

/**
 * A draw in integer mA, and how far it may be from the amperes it stands for in pA (1e-12 A,
 * integers, so adding and taking away stays exact): a whole number of mA (up to float noise)
 * 2 pA, any other 0.5 mA. The quick look bounds the exact load with it from above (anything
 * over a limit?) and from below (no room?), so it never skips a step the rules would change.
 */
function drawContribution(amps: number): Contribution {
  const mA = Math.round(1000 * amps)
  return { amps, mA, slack: Math.abs(1000 * amps - mA) <= 1e-9 ? 2 : 500_000_000, waits: false, volatile: false }
}

/** An outlet entry's share of its circuit, from the entry alone (drawOf, without the armed case). */
function contributionOf(cs: Record<string, CircuitSettings>, e: OutletEntry | undefined): Contribution {
  if (!e || e.circuit == null || !hasOwn(cs, e.circuit) || !cs[e.circuit]!.members?.includes(e.id)) return NOTHING
  const s = e.session
  if (s && e.hasRelay && e.meterFault === null && e.relayFault === null) {
    if (s.queuedAt != null) return { amps: 0, mA: 0, slack: 0, waits: true, volatile: false }
    return drawContribution(s.drawing === true && e.last ? e.last.currentA : e.ratingA)
  }
  const cur = (e.relayClosed || !e.hasRelay) && e.last ? e.last.currentA : 0
  if (!e.hasRelay) return drawContribution(cur)
  if (!s && cur > 0) return { amps: cur, mA: 0, slack: 0, waits: false, volatile: true }
  return NOTHING
}

function addContribution(
  sum: CircuitSummary,
  cs: Record<string, CircuitSettings>,
  e: OutletEntry | undefined,
  sign: 1 | -1,
  own?: Set<object>,
  c: Contribution = contributionOf(cs, e),
): Contribution {
  if (c === NOTHING) return c
  const id = e!.id
  if (c.slack !== 0)
    for (const cid of cs[e!.circuit!]!.chain) {
      if (own && !own.has(sum.expected)) {
        sum.expected = { ...sum.expected }
        sum.slack = { ...sum.slack }
        own.add(sum.expected)
      }
      if (own && !own.has(sum.expected[cid]!)) {
        sum.expected[cid] = [...sum.expected[cid]!]
        sum.slack[cid] = [...sum.slack[cid]!]
        own.add(sum.expected[cid]!)
      }
      sum.expected[cid]![e!.phase] += sign * c.mA
      sum.slack[cid]![e!.phase] += sign * c.slack
    }
  if (c.waits) {
    if (own && !own.has(sum.waiting)) {
      sum.waiting = new Set(sum.waiting)
      own.add(sum.waiting)
    }
    sign > 0 ? sum.waiting.add(id) : sum.waiting.delete(id)
  }
  if (c.volatile) {
    if (own && !own.has(sum.volatile)) {
      sum.volatile = new Set(sum.volatile)
      own.add(sum.volatile)
    }
    sign > 0 ? sum.volatile.add(id) : sum.volatile.delete(id)
  }
  return c
}

/**
 * What of an outlet entry the look for a waiter who could be switched on reads (couldSwitchOn):
 * its circuit, phase, rating, priority and own limit, whether its session is switched on or waits, and
 * its switch times. Two entries with the same key leave a quiet verdict standing.
 */
function sameForTurns(a: OutletEntry | undefined, b: OutletEntry | undefined): boolean {
  if (a === b) return true
  if (!a || !b) return false
  const sa = a.session
  const sb = b.session
  return (
    a.circuit === b.circuit &&
    a.phase === b.phase &&
    a.ratingA === b.ratingA &&
    a.priority === b.priority &&
    a.hasRelay === b.hasRelay &&
    a.limitA === b.limitA &&
    (a.meterFault === null) === (b.meterFault === null) &&
    (a.relayFault === null) === (b.relayFault === null) &&
    (sa == null) === (sb == null) &&
    (sa == null ||
      ((sa.queuedAt == null) === (sb!.queuedAt == null) && sa.offAt === sb!.offAt && (sa.onAt ?? sa.startedAt) === (sb!.onAt ?? sb!.startedAt)))
  )
}

function fullSummary(st: EngineState): CircuitSummary {
  const cs = st.settings.circuits
  const sum: CircuitSummary = { expected: {}, slack: {}, waiting: new Set(), volatile: new Set(), quiet: null }
  for (const id of Object.keys(cs)) {
    sum.expected[id] = [0, 0, 0]
    sum.slack[id] = [0, 0, 0]
  }
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
  const sum: CircuitSummary = {
    expected: prev.expected,
    slack: prev.slack,
    waiting: prev.waiting,
    volatile: prev.volatile,
    quiet: prev.quiet?.exact && st.circuits !== ctx.prev.circuits ? null : prev.quiet,
  }
  const own = new Set<object>()
  const seen = new Set<string>()
  for (const oid of ctx.changed) {
    if (seen.has(oid)) continue
    seen.add(oid)
    const was = ctx.prev.outlets[oid]
    const is = st.outlets[oid]
    const before = contributionOf(cs, was)
    const after = contributionOf(cs, is)
    // The same share of the same circuit and phase (a steady draw read again): nothing to copy.
    const same = was && is && was.circuit === is.circuit && was.phase === is.phase && before.mA === after.mA && before.slack === after.slack
    if (!(same && before.waits === after.waits && before.volatile === after.volatile)) {
      addContribution(sum, cs, was, -1, own, before)
      addContribution(sum, cs, is, 1, own, after)
    }
    if (sum.quiet && (!sameForTurns(was, is) || (sum.quiet.exact && before.amps !== after.amps))) sum.quiet = null
  }
  if (circuitMemoCheck.enabled) {
    const full = fullSummary(st)
    const same =
      JSON.stringify(full.expected) === JSON.stringify(sum.expected) &&
      JSON.stringify(full.slack) === JSON.stringify(sum.slack) &&
      JSON.stringify([...full.waiting].sort()) === JSON.stringify([...sum.waiting].sort()) &&
      JSON.stringify([...full.volatile].sort()) === JSON.stringify([...sum.volatile].sort())
    if (!same)
      throw new Error(`circuit memo disagrees: ${JSON.stringify({ full, sum: { ...sum, waiting: [...sum.waiting], volatile: [...sum.volatile] } })}`)
  }
  return sum
}

/** A quiet verdict found or confirmed in this step's scheduling, for the memo stored at its end. */
const quietOf = new WeakMap<Ctx, Quiet>()
/** The memo the scheduler worked out in this step, and `ctx.outs` then: still true while that has not moved. */
const memoOf = new WeakMap<Ctx, { sum: CircuitSummary; outs: number }>()

export function storeSummary(ctx: Ctx): void {
  if (summaries.has(ctx.state.outlets)) return
  const early = memoOf.get(ctx)
  const sum = early && early.outs === ctx.outs ? early.sum : currentSummary(ctx)
  // What settles after the scheduler (derived states, relays) is not what a verdict looks at.
  const q = quietOf.get(ctx)
  if (q) sum.quiet = q
  summaries.set(ctx.state.outlets, sum)
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
 * priority, whose minimum on time) is over. When none could, the rules would change nothing:
 * the answer is then a Quiet verdict (until when, and where each waiter found no room);
 * null when one could.
 */
function couldSwitchOn(
  st: EngineState,
  waiting: Iterable<string>,
  members: string[],
  expected: Record<string, [number, number, number]>,
  limits: Record<string, CircuitLimit>,
  now: number,
): Quiet | null {
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
  let until = Number.POSITIVE_INFINITY
  const tight = new Map<string, { circuit: string; phase: 0 | 1 | 2; ratingA: number }>()
  for (const oid of waiting) {
    const e = st.outlets[oid]!
    const s = e.session!
    const c = cs[e.circuit!]!
    // Paused by its own limit: nothing here could switch it on (a new limit changes its entry).
    if (limitPaused(st, e)) continue
    if (s.offAt != null && now - s.offAt < minOffMs(c.slotMs)) {
      until = Math.min(until, s.offAt + minOffMs(c.slotMs))
      continue
    }
    let refused: string | null = null
    for (const cid of c.chain) {
      if (refused === null && expected[cid]![e.phase] + limits[cid]!.extraA[e.phase] + e.ratingA > limits[cid]!.limitA + 1e-9) refused = cid
      if (slotEnd[cid]! <= now || (lowestOn[cid]! < e.priority && minOnEnd[cid]! <= now)) return null
      until = Math.min(until, slotEnd[cid]!, lowestOn[cid]! < e.priority ? minOnEnd[cid]! : Number.POSITIVE_INFINITY)
    }
    if (refused === null) return null
    const key = `${refused}#${e.phase}`
    const t = tight.get(key)
    if (!t) tight.set(key, { circuit: refused, phase: e.phase, ratingA: e.ratingA })
    else if (e.ratingA < t.ratingA) t.ratingA = e.ratingA
  }
  return { at: now, until, tight: [...tight.values()], exact: false }
}

/** Whether a verdict still stands at `now` with this step's load and limits (see Quiet). */
function stillQuiet(
  q: Quiet,
  circuits: object,
  loadAt: (circuit: string, phase: 0 | 1 | 2) => number,
  limits: Record<string, CircuitLimit>,
  now: number,
): boolean {
  if (now < q.at || now >= q.until) return false
  if (q.exact) return q.circuits === circuits
  for (const t of q.tight) {
    const l = limits[t.circuit]!
    if (!(loadAt(t.circuit, t.phase) + l.extraA[t.phase] + t.ratingA > l.limitA + 1e-9)) return false
  }
  return true
}

/** The circuit rules (circuits.ts) over the whole site: who is switched on, who waits. */
export function schedule(ctx: Ctx): void {
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

  const contendersOf = (members: string[]): { contenders: Contender[]; fresh: Set<string> } => {
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
          paused: limitPaused(st, e),
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
    return { contenders, fresh }
  }

  // The rules' input: the expected load exactly, from every outlet on a circuit.
  const exactLimits = (members: string[]): Record<string, CircuitLimit> => {
    const expected: Record<string, [number, number, number]> = {}
    for (const id of ids) expected[id] = [0, 0, 0]
    for (const oid of members) {
      const e = st.outlets[oid]!
      const a = drawOf(st, e, now)
      if (a > 0) for (const cid of cs[e.circuit!]!.chain) expected[cid]![e.phase] += a
    }
    return loadsFrom(expected).limits
  }

  // The quick look, from the memo (the armed outlets drawing worked out afresh): nothing over
  // its limit, no session opened in this step, and nobody waiting who could be switched on now
  // (off long enough, and either there is room or a switched-on session's time is up): the
  // rules would change nothing (the common step). A walk that finds nobody is kept as a Quiet
  // verdict, so the steps after it look only at what changed.
  // A session switched on whose outlet's own limit pauses it (a limit set in this step, a session
  // opened or a fault cleared on a paused outlet): only an entry this step changed can be one.
  const fresh0 =
    ctx.records.some((r) => r.type === 'session.started') ||
    ctx.changed.some((id) => {
      const e = st.outlets[id]
      return e !== undefined && e.session != null && e.session.queuedAt == null && limitPaused(st, e)
    })
  if (!fresh0) {
    const memo = currentSummary(ctx)
    memoOf.set(ctx, { sum: memo, outs: ctx.outs })
    // The armed outlets drawing, worked out afresh (rare: usually nobody).
    let vol: Record<string, [number, number, number]> | null = null
    for (const oid of memo.volatile) {
      const e = st.outlets[oid]!
      const a = drawOf(st, e, now)
      if (a > 0)
        for (const cid of cs[e.circuit!]!.chain) {
          vol ??= {}
          vol[cid] ??= [0, 0, 0]
          vol[cid]![e.phase] += a
        }
    }
    const bound = (id: string, ph: 0 | 1 | 2, sign: 1 | -1): number =>
      memo.expected[id]![ph] / 1000 + sign * memo.slack[id]![ph] * 1e-12 + (vol?.[id]?.[ph] ?? 0)
    const boundsOf = (sign: 1 | -1): Record<string, [number, number, number]> => {
      const out: Record<string, [number, number, number]> = {}
      for (const id of ids) out[id] = [bound(id, 0, sign), bound(id, 1, sign), bound(id, 2, sign)]
      return out
    }
    // Without feeder meters no circuit carries an unmanaged load: the limits in force are
    // those of this settings and circuits section, worked out once, and the upper bound is
    // checked without building it.
    const known = limitsNow(st, circuitMemoCheck.enabled)
    let over: boolean
    if (known.unmetered) {
      over = false
      for (let i = 0; i < ids.length && !over; i++) {
        const id = ids[i]!
        const top = known.limits[id]!.limitA + 1e-9
        over = bound(id, 0, 1) > top || bound(id, 1, 1) > top || bound(id, 2, 1) > top
      }
      if (circuitMemoCheck.enabled && over !== loadsFrom(boundsOf(1)).over) throw new Error(`circuit upper bound disagrees at ${now}`)
    } else over = loadsFrom(boundsOf(1)).over
    let quiet: Quiet | null = null
    if (!over) {
      if (memo.waiting.size === 0) quiet = NOBODY
      else {
        const lo = known.unmetered ? null : boundsOf(-1)
        const low = known.unmetered ? known.limits : loadsFrom(lo!).limits
        const loadAt = lo ? (id: string, ph: 0 | 1 | 2): number => lo[id]![ph] : (id: string, ph: 0 | 1 | 2): number => bound(id, ph, -1)
        if (memo.quiet && (!memo.quiet.exact || memo.volatile.size === 0) && stillQuiet(memo.quiet, st.circuits, loadAt, low, now)) {
          quiet = memo.quiet
          // (A verdict of the rules themselves is checked below, by running them.)
          if (circuitMemoCheck.enabled && !quiet.exact && couldSwitchOn(st, memo.waiting, membersOf(), lo ?? boundsOf(-1), low, now) === null)
            throw new Error(`circuit quiet verdict disagrees: a walk finds a waiting session to switch on at ${now}: ${JSON.stringify(quiet)}`)
        } else quiet = couldSwitchOn(st, memo.waiting, membersOf(), lo ?? boundsOf(-1), low, now)
      }
    }
    if (quiet) {
      if (quiet !== NOBODY) quietOf.set(ctx, quiet)
      if (circuitMemoCheck.enabled) {
        const members = membersOf()
        const { contenders } = contendersOf(members)
        const plan = planCircuits(exactLimits(members), contenders, now)
        if (plan.on.size > 0 || plan.off.size > 0)
          throw new Error(
            `circuit quick look disagrees: it skips the rules at ${now}, which would switch ${JSON.stringify({ on: [...plan.on], off: [...plan.off.keys()] })}`,
          )
      }
      return
    }
  }
  const members = membersOf()
  const limits = exactLimits(members)
  const { contenders, fresh } = contendersOf(members)
  const plan = planCircuits(limits, contenders, ctx.now)
  if (plan.on.size === 0 && plan.off.size === 0 && fresh.size === 0) {
    // Nobody switched: the same holds until the next switch time, while nothing it used changes.
    let until = Number.POSITIVE_INFINITY
    let armed = false
    for (const c of contenders) {
      // An armed outlet drawing: its draw depends on more than its entry.
      if (!c.movable && st.outlets[c.outlet]!.hasRelay) armed = true
      if (!c.movable) continue
      for (const t of c.on ? [c.onAt + c.slotMs, c.onAt + minOnMs(c.slotMs)] : [c.offAt + minOffMs(c.slotMs)]) if (t > now && t < until) until = t
    }
    if (!armed) quietOf.set(ctx, { at: now, until, tight: [], exact: true, circuits: st.circuits })
  }
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
    ctx.record({
      type: 'session.queued',
      ts: ctx.iso,
      sessionId: s.id,
      outlet: id,
      circuit: e.circuit!,
      why: fresh.has(id) && why !== 'limit' ? 'start' : why,
    })
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
    ctx.record({
      type: 'session.queued',
      ts: ctx.iso,
      sessionId: s.id,
      outlet: c.outlet,
      circuit: st.outlets[c.outlet]!.circuit!,
      why: c.paused ? 'limit' : 'start',
    })
  }
}
