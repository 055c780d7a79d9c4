/**
 * The energy rules of an outlet's meter: which part of a new register value may be billed.
 * A meter lies sometimes (a corrupt frame that reads 5,000 kWh too high for one poll, a
 * counter that restarts at 0, a total truncated by a few ppm at a reboot); the engine asks
 * this module, for every plausible reading, what the step from the last good one is.
 *
 * Owns: the physical bound of an outlet's draw (its meter's phases × RATING_FACTOR × ratingA × volts ×
 * time, plus the counter's resolution), the counter's resolution, and the verdict on one
 * register value: a billable step, a tiny step back (zero), a rejected reading (never
 * billed), a confirmed reset (a rebase: nothing billed across it) or a new baseline after
 * a break in continuity.
 * Must never: keep state of its own, read a clock, do I/O, use floats for anything billed
 * (verdicts are integer mWh), or let a step through that the outlet could not have drawn.
 */
import type { Reading, SessionEndedBody, MeterEventKind } from '../../core/types.js'
import type { EnergyMark, OutletEntry, Recon, Session } from './state.js'

export type { EnergyMark }

/** A current above this multiple of the outlet's rating is impossible; the same margin bounds its energy. */
export const RATING_FACTOR = 1.5
/**
 * Phases the bound assumes for an outlet whose config does not say (one recorded before meter
 * models carried `phases`): three, the loosest, so such a journal replays as it ran. `ratingA`
 * is per phase; a three-phase meter's register counts all three.
 */
export const DEFAULT_PHASES = 3
/** The voltage the bound uses at least: 230 V + 10 % (EN 50160), so a meter that reads no or a low voltage never makes honest energy look impossible. */
export const BOUND_MIN_V = 253
/** A measured voltage above this is not believed (low-voltage outlets only): the bound never grows past it. */
export const BOUND_MAX_V = 500
/** A counter's resolution, at least: 10 Wh (0.01 kWh registers, the coarsest Outpost reads). */
const RESOLUTION_MWH = 10_000
/** …or this many ppm of the register (a float32 kWh register's rounding at a large total), whichever is larger. */
const RESOLUTION_PPM = 10

/** The counter's resolution near `registerMWh`: a step back within it counts as zero. */
export function resolutionMWh(registerMWh: number): number {
  return Math.max(RESOLUTION_MWH, Math.ceil((Math.abs(registerMWh) * RESOLUTION_PPM) / 1e6))
}

/** The voltage the bound uses: the higher of the two measured, within [BOUND_MIN_V, BOUND_MAX_V] (a non-finite one counts as none). */
export function boundVolts(...measured: number[]): number {
  let v = BOUND_MIN_V
  for (const m of measured) if (Number.isFinite(m) && m > v) v = m
  return Math.min(v, BOUND_MAX_V)
}

/** Most energy (mWh) an outlet of `phases` × `ratingA` could draw in `ms` at `volts`; 0 for no time. */
export function maxDrawMWh(phases: number, ratingA: number, volts: number, ms: number): number {
  if (!(ms > 0)) return 0
  // W × ms / 3600 = mWh
  return (phases * RATING_FACTOR * ratingA * volts * ms) / 3600
}

export type Verdict =
  /** A good reading: bill `deltaMWh` (≥ 0); the baseline becomes `markMWh` (never lower: a tiny step back keeps it). */
  | { kind: 'step'; deltaMWh: number; markMWh: number; zeroStep: boolean }
  /** Not billed and not good; held as the suspect, to see whether the next reading follows it (a reset) or the last good one (a glitch). */
  | { kind: 'rejected'; detail: string }
  /** The next reading followed the suspect, not the last good reading: the counter was reset (or the meter swapped). Nothing across `fromMWh` → `toMWh` is billed; `deltaMWh` is measured by the new counter since. */
  | { kind: 'rebase'; fromMWh: number; toMWh: number; deltaMWh: number; markMWh: number }
  /** The outlet's very first reading: the register is the baseline. */
  | { kind: 'baseline'; markMWh: number }

export interface JudgeInput {
  /** The last good reading's baseline (the highest register seen since the run began, or since the last rebase). */
  last: EnergyMark | null
  /** Start of the continuous run (first good reading, or the last rebase): the whole run is bounded too, so per-step slack never adds up. */
  anchor: EnergyMark | null
  /** The last rejected reading since the last good one, else null. */
  suspect: EnergyMark | null
  /** The phases the outlet's meter measures (1 or 3). */
  phases: number
  ratingA: number
  /** The voltage the bound uses (boundVolts). */
  volts: number
  reading: EnergyMark
}

const wh = (mWh: number): string => `${mWh / 1000} Wh`

/** Whether `r` can follow `from`: no more than the outlet could draw since (plus the resolution), no further back than the resolution. */
function follows(from: EnergyMark, r: EnergyMark, x: JudgeInput): boolean {
  const d = r.mWh - from.mWh
  const res = resolutionMWh(from.mWh)
  return d >= -res && d <= maxDrawMWh(x.phases, x.ratingA, x.volts, r.ts - from.ts) + res
}

/** The verdict on one plausible register value (the engine has already refused non-finite or negative ones). */
export function judgeReading(x: JudgeInput): Verdict {
  const { last, reading: r } = x
  if (last === null) return { kind: 'baseline', markMWh: r.mWh }
  const anchor = x.anchor ?? last
  if (follows(last, r, x) && r.mWh - anchor.mWh <= maxDrawMWh(x.phases, x.ratingA, x.volts, r.ts - anchor.ts) + resolutionMWh(anchor.mWh)) {
    const d = r.mWh - last.mWh
    return { kind: 'step', deltaMWh: Math.max(0, d), markMWh: Math.max(last.mWh, r.mWh), zeroStep: d < 0 }
  }
  const s = x.suspect
  if (s !== null && follows(s, r, x)) {
    const d = r.mWh - s.mWh
    return { kind: 'rebase', fromMWh: last.mWh, toMWh: s.mWh, deltaMWh: Math.max(0, d), markMWh: Math.max(s.mWh, r.mWh) }
  }
  const d = r.mWh - last.mWh
  const dt = r.ts - last.ts
  const detail =
    d > 0
      ? `energy register stepped ${wh(d)} in ${dt / 1000} s, more than the outlet could draw (${wh(Math.floor(maxDrawMWh(x.phases, x.ratingA, x.volts, dt)))} at ${x.phases} × ${x.ratingA} A)`
      : `energy register went back from ${wh(last.mWh)} to ${wh(r.mWh)}`
  return { kind: 'rejected', detail }
}

// ---------------------------------------------------------------- the engine's bookkeeping

/** The verdict on a reading of an outlet, from what the engine keeps of it. */
export function judgeOutletReading(e: OutletEntry, r: Reading): Verdict {
  return judgeReading({
    last: e.last,
    anchor: runAnchor(e),
    suspect: e.suspect ?? null,
    phases: e.phases ?? DEFAULT_PHASES,
    ratingA: e.ratingA,
    volts: boundVolts(r.voltageV, e.last?.voltageV ?? Number.NaN),
    reading: { ts: r.ts, mWh: Math.round(r.energyWh * 1000) },
  })
}

/** The anchor of the outlet's run, while it runs on: a restart or a meter fault ends the run (the clock may have stepped meanwhile). */
function runAnchor(e: OutletEntry): EnergyMark | null {
  return e.fresh && e.meterFault === null ? (e.anchor ?? null) : null
}

/** The anchor after a good verdict: kept while the run goes on, the new counter's first register after a rebase, else the base of this step. */
export function anchorAfter(e: OutletEntry, v: Exclude<Verdict, { kind: 'rejected' }>, r: EnergyMark): EnergyMark {
  if (v.kind === 'rebase') return e.suspect!
  if (v.kind === 'baseline' || e.last === null) return { ts: r.ts, mWh: v.markMWh }
  return runAnchor(e) ?? { ts: e.last.ts, mWh: e.last.mWh }
}

/** Events a session keeps for its session.ended at most; later ones are only counted. */
export const MAX_METER_EVENTS = 32

/** A session's energy: its register span minus the jumps of its rebases (never billed). */
export function sessionEnergyMWh(s: Session): number {
  return s.lastMWh - s.meterStartMWh - (s.rebasedMWh ?? 0)
}

/** Note a rejected reading or a rebase in the open session (a rebase also moves its energy base). */
export function noteMeterEvent(s: Session, kind: MeterEventKind, ts: number, fromMWh: number, toMWh: number): void {
  if (kind === 'rebase') s.rebasedMWh = (s.rebasedMWh ?? 0) + toMWh - fromMWh
  const events = s.meterEvents ?? []
  if (events.length < MAX_METER_EVENTS) s.meterEvents = [...events, { ts, kind, fromMWh, toMWh }]
  else s.meterEventsOmitted = (s.meterEventsOmitted ?? 0) + 1
}

type EndedMeterFields = Pick<SessionEndedBody, 'meterEvents' | 'meterEventsOmitted' | 'rebasedWh'>

/** session.ended's meterEvents, meterEventsOmitted and rebasedWh, only when there were any. */
export function sessionMeterEvents(s: Session): EndedMeterFields {
  const events = s.meterEvents ?? []
  if (events.length === 0) return {}
  const out: EndedMeterFields = {
    meterEvents: events.map((x) => ({ at: new Date(x.ts).toISOString(), kind: x.kind, fromWh: x.fromMWh / 1000, toWh: x.toMWh / 1000 })),
  }
  if ((s.meterEventsOmitted ?? 0) > 0) out.meterEventsOmitted = s.meterEventsOmitted
  if ((s.rebasedMWh ?? 0) !== 0) out.rebasedWh = s.rebasedMWh! / 1000
  return out
}

/** The reconciliation counters after a verdict (`inSession`: the outlet has an open session). */
export function reconAfter(rc: Recon | null, v: Verdict, inSession: boolean): Recon | null {
  if (rc === null) return null
  switch (v.kind) {
    case 'rejected':
      return { ...rc, rejected: (rc.rejected ?? 0) + 1 }
    case 'step':
      if (v.deltaMWh === 0) return rc
      return { ...rc, meterMWh: rc.meterMWh + v.deltaMWh, sessionMWh: rc.sessionMWh + (inSession ? v.deltaMWh : 0) }
    case 'rebase':
      return {
        ...rc,
        meterMWh: rc.meterMWh + v.deltaMWh,
        sessionMWh: rc.sessionMWh + (inSession ? v.deltaMWh : 0),
        rebasedMWh: (rc.rebasedMWh ?? 0) + v.toMWh - v.fromMWh,
      }
    case 'baseline':
      return rc
  }
}
