/**
 * Resuming after a process death: the journal checkpoints the engine state with
 * every durable step and about once a minute, and journals every reading of an
 * open session as it is stepped. This rebuilds the state the engine had when the
 * process died by stepping, again, the readings journaled after the checkpoint.
 *
 * Owns: which journaled readings are replayed, in which order, and when a replay
 * must stop.
 * Must never: do I/O, read a clock (each reading carries the `now` it was first
 * stepped at), emit an effect (the relays, statuses and records of the original
 * steps already happened or were never billable), or bill a reading twice.
 */
import type { Reading } from '../../core/types.js'
import { step } from './80-step.js'
import type { EngineState } from './state.js'

export interface ReplayReading {
  outlet: string
  sessionId: string
  reading: Reading
  /** The `now` the reading was first stepped at. */
  now: number
}

export interface ReplayResult {
  state: EngineState
  /** Readings stepped. */
  replayed: number
  /** Readings passed over: not of the outlet's open session, or already accounted for (ts <= the session's lastTs). */
  skipped: number
  /**
   * Set when a replayed step would have produced a record (or the engine refused it): the
   * journal's state and its readings disagree. The replay stopped BEFORE that reading; the
   * state returned is the one before it.
   */
  stopped: { outlet: string; sessionId: string; ts: number; why: string } | null
}

/**
 * Step `readings` (any order: they are replayed in `now` order, ties in the order given)
 * through the engine from `state`, discarding effects. Only readings of a session still
 * open in the state and newer than its last accounted point are stepped: replaying is
 * idempotent, so a second crash during boot just replays the same readings again.
 */
export function replayReadings(state: EngineState, readings: readonly ReplayReading[]): ReplayResult {
  const order = readings.map((r, i) => ({ r, i })).sort((a, b) => a.r.now - b.r.now || a.i - b.i)
  let replayed = 0
  let skipped = 0
  for (const { r } of order) {
    const session = state.outlets[r.outlet]?.session
    if (!session || session.id !== r.sessionId || r.reading.ts <= session.lastTs) {
      skipped++
      continue
    }
    let next: ReturnType<typeof step>
    try {
      next = step(state, { type: 'reading', outlet: r.outlet, reading: r.reading }, r.now)
    } catch (err) {
      return {
        state,
        replayed,
        skipped,
        stopped: { outlet: r.outlet, sessionId: r.sessionId, ts: r.reading.ts, why: `the engine refused it: ${(err as Error).message}` },
      }
    }
    const record = next.effects.find((e) => e.type === 'record')
    if (record) {
      // When first stepped, a reading that produced a record was committed durably WITH the state after it,
      // so replaying it from the checkpoint cannot produce one: the state and the readings disagree.
      const what = record.type === 'record' ? record.record.type : 'record'
      return {
        state,
        replayed,
        skipped,
        stopped: { outlet: r.outlet, sessionId: r.sessionId, ts: r.reading.ts, why: `replaying it would produce ${what}` },
      }
    }
    state = next.state
    replayed++
  }
  return { state, replayed, skipped, stopped: null }
}
