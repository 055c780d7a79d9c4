/**
 * Record hashing and chain verification, as the contract defines them: `hash` is
 * the lowercase hex SHA-256 of the RFC 8785 canonical JSON of the record without
 * `hash`; `prev` is the previous record's hash (64 zeros for seq 1); seq is
 * gapless from 1.
 *
 * Owns: the cloud-side check of a run of records, one record at a time against a
 * known point (the reconciling consumer uses it on every record it stores, and on
 * its own file when it restarts), reporting where and why a run breaks. Never does
 * I/O. The hash itself is the journal's (daemon/journal/chain.ts: one definition of
 * canonical JSON and SHA-256 for the writer and every checker).
 */
import { ChainVerifier, GENESIS_PREV, recordHash as journalRecordHash } from '../journal/chain.js'
import type { JournalRecord } from '../../core/types.js'

export { GENESIS_PREV }

/** The hash a record must carry: over every field but `hash` itself. Throws for content that has no canonical JSON. */
export function recordHash(record: Record<string, unknown>): string {
  return journalRecordHash(record as unknown as JournalRecord)
}

/** Where a run of records must continue: after seq `seq` whose hash is `hash`. */
export interface ChainPoint {
  seq: number
  hash: string
}

export const CHAIN_START: ChainPoint = { seq: 0, hash: GENESIS_PREV }

export type ChainBreak = { seq: number; index: number; reason: 'not-a-record' | 'seq' | 'prev' | 'hash'; message: string }

export type ChainResult = { ok: true; end: ChainPoint; count: number } | { ok: false; end: ChainPoint; count: number; break: ChainBreak }

/**
 * Checks that `records` continue the chain at `after` (default: the start of the
 * log) with no gap, no reordering and no altered record. Stops at the first break
 * and reports it; `end` is the last good point either way. The rules are the
 * journal's own ChainVerifier (one checker for the writer, `outpost verify` and the
 * cloud); this only adds the cloud's view: where the run ends, and the break's
 * `seq` as the one that was expected.
 */
export function verifyChain(records: readonly unknown[], after: ChainPoint = CHAIN_START): ChainResult {
  const verifier = new ChainVerifier({ seq: after.seq + 1, prev: after.hash })
  let end = after
  let count = 0
  for (let i = 0; i < records.length; i++) {
    const b = verifier.push(records[i])
    if (b) return { ok: false, end, count, break: { seq: end.seq + 1, index: i, reason: b.reason, message: `seq ${b.seq}: ${b.problem}` } }
    const r = records[i] as JournalRecord
    end = { seq: r.seq, hash: r.hash }
    count++
  }
  return { ok: true, end, count }
}

export function isRecordShape(r: unknown): r is JournalRecord {
  if (typeof r !== 'object' || r === null || Array.isArray(r)) return false
  const o = r as Record<string, unknown>
  return (
    Number.isSafeInteger(o.seq) && (o.seq as number) >= 1 && typeof o.prev === 'string' && typeof o.hash === 'string' && typeof o.type === 'string'
  )
}
