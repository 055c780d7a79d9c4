/**
 * The journal's public layer: what a commit step must look like before the journal does
 * anything with it (abstract-level's split: the public layer validates, the private one does).
 *
 * Owns: the shape of a commit step (CommitStep, ReadingEntry) and its checks (record types and times, state, command results,
 * readings), each refusal a JOURNAL_INVALID_STEP naming what and where.
 * Must never: touch the database, or judge what a record means (the engine decides that).
 */
import { type CommandResult, type PersistedEngineState, RECORD_TYPES, type Reading, type RecordBody } from '../../core/types.js'
import { OutpostError } from '../errors.js'

/** A reading a session is billed from, journaled beside the state step that used it. */
export interface ReadingEntry {
  outlet: string
  sessionId: string
  reading: Reading
  /** The `now` the engine stepped this reading at (so that a replay steps it identically); reading.ts when absent. */
  now?: number
}

export interface CommitStep {
  records: RecordBody[]
  state?: PersistedEngineState
  commandResults?: { id: string; result: CommandResult }[]
  readings?: ReadingEntry[]
  /**
   * Write this step's state now (with the state-only changes waiting before it), not at the next
   * checkpoint. For a state-only step that cannot be rebuilt from journaled readings (an uplink
   * change, a failed read): a process death must not lose it. Steps with records or command
   * results always write their state (fsynced).
   */
  checkpoint?: boolean
}

const RECORD_TYPE_SET = new Set<string>(RECORD_TYPES)
const ISO_MS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$/

/** Throws JOURNAL_INVALID_STEP, naming the first problem, when `step` is not a commit the journal can write. */
export function checkStep(step: CommitStep): void {
  const bad = (msg: string): never => {
    throw new OutpostError('JOURNAL_INVALID_STEP', `commit: ${msg}; nothing was written`)
  }
  if (step === null || typeof step !== 'object') bad('the step must be an object')
  if (!Array.isArray(step.records)) bad('step.records must be an array')
  step.records.forEach((r, i) => {
    if (r === null || typeof r !== 'object') bad(`records[${i}] is not an object`)
    if (!RECORD_TYPE_SET.has(r.type)) bad(`records[${i}].type ${JSON.stringify(r.type)} is not a record type`)
    if (typeof r.ts !== 'string' || !ISO_MS.test(r.ts)) bad(`records[${i}].ts ${JSON.stringify(r.ts)} is not an ISO 8601 time`)
  })
  if (step.state !== undefined) {
    const s = step.state as unknown
    if (s === null || typeof s !== 'object' || Array.isArray(s)) bad('step.state must be an object')
    const o = (s as PersistedEngineState).outlets as unknown
    if (o === null || typeof o !== 'object' || Array.isArray(o)) bad('step.state.outlets must be an object')
  }
  if (step.commandResults !== undefined) {
    if (!Array.isArray(step.commandResults)) bad('step.commandResults must be an array')
    step.commandResults.forEach((c, i) => {
      if (typeof c?.id !== 'string' || c.id === '') bad(`commandResults[${i}].id must be a non-empty string`)
      if (c.result === null || typeof c.result !== 'object') bad(`commandResults[${i}].result must be an object`)
    })
  }
  if (step.readings !== undefined) {
    if (!Array.isArray(step.readings)) bad('step.readings must be an array')
    step.readings.forEach((g, i) => {
      if (typeof g?.sessionId !== 'string' || g.sessionId === '') bad(`readings[${i}].sessionId must be a non-empty string`)
      if (typeof g.outlet !== 'string') bad(`readings[${i}].outlet must be a string`)
      const r = g.reading
      if (r === null || typeof r !== 'object' || ![r.ts, r.currentA, r.powerW, r.energyWh, r.voltageV].every(Number.isFinite))
        bad(`readings[${i}].reading must have finite ts, currentA, powerW, energyWh, voltageV`)
      if (g.now !== undefined && !Number.isFinite(g.now)) bad(`readings[${i}].now must be a finite epoch ms when given, got ${String(g.now)}`)
    })
  }
  if (step.checkpoint !== undefined && typeof step.checkpoint !== 'boolean') bad('step.checkpoint must be a boolean when given')
}
