/**
 * Reconciliation pulls: P/pull {"requestId","from","to"?,"limit"?} answered on
 * P/pull/{requestId} with {"requestId","records","next","head"}.
 *
 * Owns: validating a pull request and reading its answer from the journal in one
 * bounded page. Never writes to the journal; never throws for bad input (the
 * answer carries an error instead).
 */
import type { JournalRecord, PullAnswer, PullError, RecordLog } from '../../core/types.js'
import { OutpostError } from '../errors.js'
import { isTopicLevel } from './topics.js'

/** Records per answer when the request gives no limit. */
export const PULL_DEFAULT_LIMIT = 100
/** Records per answer at most; a larger limit is clamped (follow `next` for the rest). */
export const PULL_MAX_LIMIT = 1000
/** A pull request larger than this is refused without parsing. */
export const PULL_MAX_BYTES = 4096

export interface PullRequest {
  requestId: string
  from: number
  to?: number
  limit: number
}

const isSeq = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 1

export function parsePull(payload: Buffer | string): { ok: true; request: PullRequest } | { ok: false; requestId: string | null; message: string } {
  const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length
  if (size > PULL_MAX_BYTES) return { ok: false, requestId: null, message: `pull request is ${size} bytes; at most ${PULL_MAX_BYTES}` }
  let v: unknown
  try {
    v = JSON.parse(payload.toString())
  } catch (err) {
    return { ok: false, requestId: null, message: `malformed JSON: ${(err as Error).message}` }
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { ok: false, requestId: null, message: 'a pull request must be a JSON object' }
  const o = v as Record<string, unknown>
  const requestId = typeof o.requestId === 'string' ? o.requestId.slice(0, 128) : null
  const problems: string[] = []
  if (!isTopicLevel(o.requestId))
    problems.push('/requestId: must be a string of 1-128 characters starting with a letter or digit, without "/", "+", "#"')
  for (const k of Object.keys(o))
    if (!['requestId', 'from', 'to', 'limit'].includes(k)) problems.push(`/${k}: unknown field (allowed: requestId, from, to, limit)`)
  if (!isSeq(o.from)) problems.push('/from: is required, an integer >= 1')
  if (o.to !== undefined && !isSeq(o.to)) problems.push('/to: must be an integer >= 1')
  if (isSeq(o.from) && isSeq(o.to) && o.to < o.from) problems.push(`/to: ${o.to} is before from (${o.from})`)
  if (o.limit !== undefined && !(typeof o.limit === 'number' && Number.isSafeInteger(o.limit) && o.limit >= 1))
    problems.push('/limit: must be an integer >= 1')
  if (problems.length > 0) return { ok: false, requestId, message: problems.join('; ') }
  return {
    ok: true,
    request: {
      requestId: o.requestId as string,
      from: o.from as number,
      ...(o.to !== undefined ? { to: o.to as number } : {}),
      limit: Math.min((o.limit as number | undefined) ?? PULL_DEFAULT_LIMIT, PULL_MAX_LIMIT),
    },
  }
}

/** Reads one page of the requested range. */
export async function answerPull(log: RecordLog, req: PullRequest): Promise<PullAnswer> {
  const head = log.head()
  const last = Math.min(req.to ?? head, head)
  const base = { requestId: req.requestId, head }
  if (req.from < log.oldest() && req.from <= last) return { ...base, records: [], next: null, error: compacted(log) }
  if (req.from > last) return { ...base, records: [], next: null }
  let records: JournalRecord[]
  try {
    records = await log.read(req.from, Math.min(req.limit, last - req.from + 1))
  } catch (err) {
    // Compaction may run between the check above and the read.
    if (err instanceof OutpostError && err.code === 'JOURNAL_COMPACTED') return { ...base, records: [], next: null, error: compacted(log) }
    return { ...base, records: [], next: null, error: { code: 'internal', message: `journal read failed: ${(err as Error).message}` } }
  }
  const end = records.length > 0 ? records[records.length - 1]!.seq : req.from - 1
  return { ...base, records, next: end < last ? end + 1 : null }
}

function compacted(log: RecordLog): PullError {
  const oldest = log.oldest()
  return { code: 'compacted', message: `records before seq ${oldest} were compacted; the oldest seq held is ${oldest}`, oldest }
}
