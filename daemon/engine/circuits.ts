/**
 * The rules of a shared circuit, as one pure function: given every circuit's effective
 * limit and unmetered load, and every outlet that draws or wants to draw on a circuit,
 * decide which sessions are switched on and which wait (`queued`).
 *
 * Owns: the per-phase limit on a circuit and each of its parents, an outlet's own limit below
 * the minimum (its session waits, `limit`, and holds nobody up), shedding (lowest
 * priority first, then the one on longest), admission (highest priority first, then the
 * longest waiting), turn taking by slot with minimum on and off times, the expected draw of
 * a session (its measured current, or the outlet's rating before it has drawn).
 * Must never: do I/O, read a clock (`now` is given), keep state between calls (the engine's
 * state is the memory), or switch an outlet it was not asked about.
 *
 * The engine calls `planCircuits` in every step that changes anything (30-scheduler.ts, from settle in 80-step.ts).
 */
import type { QueueReason } from '../../core/types.js'

/** Minimum time a switched-on session stays on before it yields its turn (capped by the slot). */
export const MIN_ON_MS = 60_000
/** Minimum time a switched-off session stays off before it is switched on again (capped by the slot). */
export const MIN_OFF_MS = 15_000

export const minOnMs = (slotMs: number): number => Math.min(MIN_ON_MS, slotMs)
export const minOffMs = (slotMs: number): number => Math.min(MIN_OFF_MS, slotMs)

export interface CircuitLimit {
  /** Effective per-phase limit now: the configured maxA, a set-circuit-limit, the failsafe. */
  limitA: number
  /** In failsafe (feeder meter silent): sessions it sheds are queued `failsafe`. */
  failsafe: boolean
  /** Current on each phase that no managed session accounts for (measured by a feeder meter). */
  extraA: [number, number, number]
}

/** An outlet drawing, or wanting to draw, on a circuit. */
export interface Contender {
  outlet: string
  /** Its circuit and that circuit's ancestors, nearest first. */
  chain: readonly string[]
  phase: 0 | 1 | 2
  priority: number
  /** Expected draw, amperes. */
  drawA: number
  /** Switched on now (relay closed, or a load the engine cannot switch). */
  on: boolean
  /** A session the engine may queue or resume (has a relay, not in fault); else a fixed load. */
  movable: boolean
  /** Switched on in this very step without a decision (an auto-start at its first current): shed first. */
  tentative: boolean
  /** When it was last switched on (for minimum on time and its slot). */
  onAt: number
  /** Waiting since (fairness: the longest waiting first). */
  queuedAt: number
  /** When it was last switched off (for the minimum off time); -Infinity when never. */
  offAt: number
  /** The slot of its own circuit, ms. */
  slotMs: number
  /** Its outlet's own limit is below the minimum charging current: it waits, and holds nobody up. */
  paused?: boolean
}

export interface CircuitPlan {
  /** Sessions to switch off now, and why. */
  off: Map<string, QueueReason>
  /** Sessions to switch on now. */
  on: Set<string>
}

/**
 * Decide who is on. Deterministic for a given input (ties broken by outlet id), so a state
 * that went through JSON plans the same.
 */
export function planCircuits(limits: Readonly<Record<string, CircuitLimit>>, contenders: readonly Contender[], now: number): CircuitPlan {
  const off = new Map<string, QueueReason>()
  const on = new Set<string>()
  const load: Record<string, [number, number, number]> = {}
  for (const id of Object.keys(limits)) load[id] = [...limits[id]!.extraA]
  /** What switched-on sessions draw per circuit and phase: what turn taking could ever free. */
  const movableOn: Record<string, [number, number, number]> = {}
  for (const id of Object.keys(limits)) movableOn[id] = [0, 0, 0]
  for (const c of contenders)
    if (c.on)
      for (const id of c.chain) {
        load[id]![c.phase] += c.drawA
        if (c.movable) movableOn[id]![c.phase] += c.drawA
      }
  const shift = (c: Contender, sign: 1 | -1): void => {
    for (const id of c.chain) {
      load[id]![c.phase] += sign * c.drawA
      movableOn[id]![c.phase] += sign * c.drawA
    }
  }
  const over = (id: string, ph: number): boolean => load[id]![ph]! > limits[id]!.limitA + 1e-9

  // 0. A session whose outlet's own limit is below the minimum waits, whatever the room.
  for (const c of contenders)
    if (c.paused && c.on && c.movable) {
      off.set(c.outlet, 'limit')
      shift(c, -1)
    }

  // 1. Shed: every circuit and phase over its limit loses sessions until it is not.
  let shedOrder: Contender[] | null = null
  for (const id of Object.keys(limits)) {
    for (let ph = 0; ph < 3; ph++) {
      if (!over(id, ph)) continue
      shedOrder ??= contenders.filter((c) => c.on && c.movable).sort(shedRank)
      for (const v of shedOrder) {
        if (!over(id, ph)) break
        if (off.has(v.outlet) || v.phase !== ph || !v.chain.includes(id)) continue
        off.set(v.outlet, v.tentative ? 'start' : limits[id]!.failsafe ? 'failsafe' : 'shed')
        shift(v, -1)
      }
    }
  }

  // 2. Admit, in turn: highest priority, then longest waiting. A circuit whose head of the
  // line cannot be served admits nobody behind it (so small loads cannot starve a large one).
  const waiting = contenders.filter((c) => c.movable && (!c.on || off.has(c.outlet))).sort(admitRank)
  const blocked = new Set<string>()
  let victims: Contender[] | null = null
  for (const w of waiting) {
    if (off.has(w.outlet) || w.paused) continue // shed in this step: not back in the same one; paused: not a contender
    if (w.chain.some((id) => blocked.has(`${id}#${w.phase}`))) continue
    if (now - w.offAt < minOffMs(w.slotMs)) continue
    if (fits(w, load, limits)) {
      on.add(w.outlet)
      shift(w, 1)
      continue
    }
    // Its turn: sessions on its circuits whose time is up make room (lower priority once
    // their minimum on time is over, equal priority once their slot is).
    victims ??= contenders.filter((c) => c.on && c.movable).sort(shedRank)
    const chosen: Contender[] = []
    for (const v of victims) {
      if (off.has(v.outlet) || on.has(v.outlet) || v.phase !== w.phase || !v.chain.some((id) => w.chain.includes(id))) continue
      const onFor = now - v.onAt
      if (v.priority > w.priority) continue
      if (v.priority === w.priority ? onFor < v.slotMs : onFor < minOnMs(v.slotMs)) continue
      chosen.push(v)
      shift(v, -1)
      if (fits(w, load, limits)) break
    }
    if (fits(w, load, limits)) {
      for (const v of chosen) off.set(v.outlet, 'rotation')
      on.add(w.outlet)
      shift(w, 1)
      continue
    }
    for (const v of chosen) shift(v, 1)
    // It waits for its turn, and nobody behind it on its circuits jumps the line; unless it
    // could never fit (a limit cut below its draw, a load nobody switches): then it holds nobody up.
    const couldFit = w.chain.every((id) => load[id]![w.phase] - movableOn[id]![w.phase] + w.drawA <= limits[id]!.limitA + 1e-9)
    if (couldFit) for (const id of w.chain) blocked.add(`${id}#${w.phase}`)
  }
  return { off, on }
}

function fits(w: Contender, load: Record<string, [number, number, number]>, limits: Readonly<Record<string, CircuitLimit>>): boolean {
  for (const id of w.chain) if (load[id]![w.phase] + w.drawA > limits[id]!.limitA + 1e-9) return false
  return true
}

/** Who goes first when load must go: a tentative start, then the lowest priority, then the one on longest. */
function shedRank(a: Contender, b: Contender): number {
  if (a.tentative !== b.tentative) return a.tentative ? -1 : 1
  return a.priority - b.priority || a.onAt - b.onAt || (a.outlet < b.outlet ? -1 : a.outlet > b.outlet ? 1 : 0)
}

/** Who is switched on first: the highest priority, then the longest waiting. */
function admitRank(a: Contender, b: Contender): number {
  return b.priority - a.priority || a.queuedAt - b.queuedAt || (a.outlet < b.outlet ? -1 : a.outlet > b.outlet ? 1 : 0)
}
