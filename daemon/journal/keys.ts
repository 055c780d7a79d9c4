/**
 * The journal's LevelDB key layout, in one place so the journal, the offline
 * tools (records, verify, repair) and the tests agree on it.
 *
 * Keys are UTF-8 strings `<prefix>!<rest>`; values are JSON text. Numbers in keys
 * are zero-padded decimal so that LevelDB's byte order is numeric order.
 *
 *   m!format                 "1" — layout version
 *   m!running                {bootId, since, version} while a daemon has the journal open; absent after a clean close
 *   m!acked                  the cloud's ack watermark (integer)
 *   m!state                  "1" once an engine state has been persisted
 *   m!sync                   a counter written only to force an fsync of group-committed readings
 *   m!pagination             the last OCMF pagination counter (T<n>) given to a session.ended, in that record's batch
 *   m!key                    the fingerprint of the gateway key this journal's records are signed with
 *   r!<seq:12>               a record, exactly as sealed (with hash)
 *   s!<section>              one top-level section of the engine state (all but `outlets`)
 *   o!<outletId>             one `outlets[id]` entry of the engine state
 *   c!<commandId>            {at, result}: the first result of a command id
 *   g!<sessionId>!<ts:15>    one reading a session is billed from: [currentA, powerW, energyWh, voltageV, outlet]
 *   x!<owner>!<rest>         side data another part of the daemon keeps beside the records it derives from
 *                            (x!ocpp!…: the OCPP transaction outbox, daemon/ocpp/outbox.ts); the journal never reads it
 *
 * Never holds anything else: an unknown prefix is somebody else's bug.
 */

export const FORMAT = '1'

export const META_FORMAT = 'm!format'
export const META_RUNNING = 'm!running'
export const META_ACKED = 'm!acked'
export const META_STATE = 'm!state'
export const META_SYNC = 'm!sync'
/** The last OCMF pagination counter given to a session.ended: written in the batch of that record, so it never runs ahead or behind the log. */
export const META_PAGINATION = 'm!pagination'
/** The fingerprint of the gateway key the journal's records are signed with: a journal with one needs its key file. */
export const META_KEY = 'm!key'
/**
 * Where the record log starts when it holds no record yet: `{"seq", "hash"}` of the last
 * record before it. Written only by a salvage that could carry no record over, so that
 * the gateway's seq goes on past what the cloud may already hold instead of restarting at 1.
 */
export const META_BASE = 'm!base'
/**
 * Seqs a salvage could not read between records it carried: `[{"from", "to"}, ...]`, ascending.
 * The record after each hole starts a run of its own (its prev names a record that is gone).
 */
export const META_HOLES = 'm!holes'

const SEQ_DIGITS = 12
const TS_DIGITS = 15

/** `!` is the separator and `%` the escape: ids may contain anything else unchanged. */
export function escapeId(id: string): string {
  return id.replace(/[%!]/g, (c) => (c === '%' ? '%25' : '%21'))
}
export function unescapeId(s: string): string {
  return s.replace(/%21|%25/g, (c) => (c === '%21' ? '!' : '%'))
}

export const recordKey = (seq: number): string => 'r!' + String(seq).padStart(SEQ_DIGITS, '0')
export const seqOfRecordKey = (key: string): number => Number(key.slice(2))
export const RECORDS = { gte: 'r!', lt: 'r"' } as const

export const sectionKey = (name: string): string => 's!' + escapeId(name)
export const SECTIONS = { gte: 's!', lt: 's"' } as const
export const outletKey = (id: string): string => 'o!' + escapeId(id)
export const OUTLETS = { gte: 'o!', lt: 'o"' } as const

export const commandKey = (id: string): string => 'c!' + escapeId(id)
export const COMMANDS = { gte: 'c!', lt: 'c"' } as const

const pad = (n: number): string => String(Math.max(0, Math.floor(n))).padStart(TS_DIGITS, '0')
export const readingPrefix = (sessionId: string): string => 'g!' + escapeId(sessionId) + '!'
export const readingKey = (sessionId: string, ts: number): string => readingPrefix(sessionId) + pad(ts)
export const READINGS = { gte: 'g!', lt: 'g"' } as const

export const asideKey = (owner: string, rest: string): string => 'x!' + escapeId(owner) + '!' + rest
export const ASIDE = { gte: 'x!', lt: 'x"' } as const

/** The upper bound of a prefix range: the same prefix with its last byte + 1. */
export function prefixRange(prefix: string): { gte: string; lt: string } {
  return { gte: prefix, lt: prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1) }
}
