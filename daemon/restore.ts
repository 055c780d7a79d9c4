/**
 * Resuming the engine from the journal: the state it checkpointed, then the readings
 * of each open session journaled after that checkpoint, stepped again through the
 * pure engine (engine/replay.ts). What boot then closes `power-loss` is the state
 * the engine had when the process died, not the older checkpoint.
 *
 * Owns: asking the journal for the readings to replay. Used by the daemon and by the
 * crash and power-cut tests' children, so that they resume exactly as it does.
 * Must never: write to the journal, or step anything but the journaled readings.
 */
import { replayReadings, type EngineState, type ReplayReading, type ReplayResult } from './engine/index.js'
import type { Journal } from './journal/index.js'

export interface Restored {
  /** undefined for a journal that never held a state (a new site). */
  state: EngineState | undefined
  /** null when nothing needed replaying. */
  replay: ReplayResult | null
}

export async function restoreState(journal: Pick<Journal, 'loadState' | 'readings'>): Promise<Restored> {
  const persisted = (await journal.loadState()) as EngineState | undefined
  if (!persisted) return { state: undefined, replay: null }
  const readings: ReplayReading[] = []
  for (const [outlet, entry] of Object.entries(persisted.outlets)) {
    const s = entry.session
    if (!s) continue
    for (const g of await journal.readings(s.id, { after: s.lastTs }))
      readings.push({ outlet, sessionId: s.id, reading: g.reading, now: g.now ?? g.reading.ts })
  }
  if (readings.length === 0) return { state: persisted, replay: null }
  const replay = replayReadings(persisted, readings)
  return { state: replay.state, replay }
}
