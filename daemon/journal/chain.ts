/**
 * The record chain: canonical hashing (RFC 8785 JSON canonicalization, SHA-256)
 * and verification of sequence numbers and hash links.
 *
 * Owns: what a record's hash is and what makes a run of records intact. Pure:
 * never touches storage, never repairs anything; a break is reported, not fixed,
 * because a changed billing record must stay visible to the cloud.
 */
import { createHash, verify } from 'node:crypto'
import type { JournalRecord, JournalSalvageInfo, RecordBody, SalvageProof } from '../../core/types.js'
import { OutpostError } from '../errors.js'

/** `prev` of seq 1. */
export const GENESIS_PREV = '0'.repeat(64)

const SURROGATE = /[\uD800-\uDFFF]/

function hasLoneSurrogate(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1)
      if (!(d >= 0xdc00 && d <= 0xdfff)) return true
      i++
    } else if (c >= 0xdc00 && c <= 0xdfff) return true
  }
  return false
}

function fail(message: string): never {
  throw new OutpostError('JOURNAL_INVALID_RECORD', `not canonical JSON: ${message}`)
}

/**
 * RFC 8785 (JCS): ECMAScript serialization of strings and numbers (which is
 * JSON.stringify's), object members sorted by UTF-16 code units (which is
 * Array.prototype.sort's default order), no whitespace. Written here rather than
 * taken from the `canonicalize` package because it runs for every record and is
 * about twice as fast; test/journal-chain.test.ts checks it against the RFC's
 * published examples and Appendix B vectors, and against the package on random
 * JSON values.
 */
function canon(v: unknown): string {
  switch (typeof v) {
    case 'string':
      if (SURROGATE.test(v) && hasLoneSurrogate(v)) fail('a string holds a lone surrogate')
      return JSON.stringify(v)
    case 'number':
      if (!Number.isFinite(v)) fail(`${v} is not allowed`)
      return JSON.stringify(v)
    case 'boolean':
      return v ? 'true' : 'false'
    case 'object': {
      if (v === null) return 'null'
      if (Array.isArray(v)) {
        let out = '['
        for (let i = 0; i < v.length; i++) {
          const x: unknown = v[i]
          if (i > 0) out += ','
          out += x === undefined || typeof x === 'function' || typeof x === 'symbol' ? 'null' : canon(x)
        }
        return out + ']'
      }
      const o = v as Record<string, unknown> & { toJSON?: () => unknown }
      if (typeof o.toJSON === 'function') return canon(o.toJSON())
      const keys = Object.keys(o).sort()
      let out = '{'
      let first = true
      for (const k of keys) {
        const x = o[k]
        if (x === undefined || typeof x === 'function' || typeof x === 'symbol') continue
        if (!first) out += ','
        first = false
        if (SURROGATE.test(k) && hasLoneSurrogate(k)) fail('a property name holds a lone surrogate')
        out += JSON.stringify(k) + ':' + canon(x)
      }
      return out + '}'
    }
    default:
      return fail(`a ${typeof v} has no JSON form`)
  }
}

/**
 * Whether JSON.stringify(v) writes v's canonical JSON already (but for lone surrogates, which the caller looks
 * for in the text): every object's own keys in sorted order, only finite numbers, strings, booleans, null,
 * arrays and plain objects, nothing with toJSON, undefined, a function or a symbol in it. A record read back
 * from the journal is such a value (parsed from its stored canonical text), so checking it costs a walk and
 * one JSON.stringify instead of building the text piece by piece.
 */
function stringifiesCanonically(v: unknown): boolean {
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return true
    case 'number':
      return Number.isFinite(v)
    case 'object': {
      if (v === null) return true
      // Only plain arrays and objects: a boxed primitive, a class instance or anything with toJSON takes canon's path.
      const proto = Object.getPrototypeOf(v)
      if (Array.isArray(v)) {
        if (proto !== Array.prototype || Object.hasOwn(v, 'toJSON')) return false
        for (let i = 0; i < v.length; i++) if (!stringifiesCanonically(v[i])) return false
        return true
      }
      if (proto !== Object.prototype && proto !== null) return false
      if (typeof (v as { toJSON?: unknown }).toJSON === 'function') return false
      let prev: string | undefined
      for (const k of Object.keys(v)) {
        if (prev !== undefined && !(prev < k)) return false
        if (!stringifiesCanonically((v as Record<string, unknown>)[k])) return false
        prev = k
      }
      return true
    }
    default:
      return false
  }
}

/** RFC 8785 canonical JSON; throws OutpostError('JOURNAL_INVALID_RECORD') for what JSON cannot carry (NaN, Infinity, lone surrogates, cycles). */
export function canonicalJson(value: unknown): string {
  try {
    if (stringifiesCanonically(value)) {
      const text = JSON.stringify(value)
      // JSON.stringify escapes a lone surrogate (backslash, u, dXXX), which canon refuses: such a text (or a literal "\ud") takes canon's path.
      if (!text.includes('\\ud')) return text
    }
    return canon(value)
  } catch (err) {
    if (err instanceof OutpostError) throw err
    // A cycle ends in a stack overflow.
    throw new OutpostError('JOURNAL_INVALID_RECORD', `not canonical JSON: ${(err as Error).message}`, { cause: err })
  }
}

/** Lowercase hex SHA-256 of the canonical JSON of the record without its `hash`. */
export function recordHash(record: Omit<JournalRecord, 'hash'> | JournalRecord): string {
  return recordCanonical(record).hash
}

/** recordHash's work with the canonical JSON kept: a checker that also stores the record needs no second serialization (recordText). */
function recordCanonical(record: Omit<JournalRecord, 'hash'> | JournalRecord): { canonical: string; hash: string } {
  const { hash: _drop, ...rest } = record as JournalRecord
  const canonical = canonicalJson(rest)
  return { canonical, hash: createHash('sha256').update(canonical, 'utf8').digest('hex') }
}

/** A record's stored JSON text: its canonical form (without `hash`) with `"hash"` appended last, as sealRecordText writes it. */
function recordText(canonical: string, hash: string): string {
  return `${canonical.slice(0, -1)},"hash":"${hash}"}`
}

/** Seal a body into a record: the journal's only way of making one. */
export function sealRecord(body: RecordBody, seq: number, prev: string, bootId: string, clockSynced: boolean): JournalRecord {
  return sealRecordText(body, seq, prev, bootId, clockSynced).record
}

/**
 * Seal, and also return the record's stored JSON text: its canonical form with
 * `"hash"` appended last. Canonicalizing once serves both the hash and storage
 * (a second JSON.stringify would cost as much as the hash).
 */
export function sealRecordText(
  body: RecordBody,
  seq: number,
  prev: string,
  bootId: string,
  clockSynced: boolean,
): { record: JournalRecord; text: string } {
  const record = { ...body, seq, bootId, clockSynced, prev } as JournalRecord
  const canonical = canonicalJson(record)
  const hash = createHash('sha256').update(canonical, 'utf8').digest('hex')
  // Our own fresh object: adding the hash after canonicalizing costs no second copy.
  record.hash = hash
  return { record, text: recordText(canonical, hash) }
}

export interface ChainBreak {
  /** The seq where the break was found (or the position, for a line without one). */
  seq: number
  /** 1-based position in the checked run (the line number for a JSON-lines file). */
  position: number
  /** What kind of break: not a record at all, a seq out of order, a prev that does not link, an altered record. */
  reason: 'not-a-record' | 'seq' | 'prev' | 'hash'
  problem: string
}

const HEX64 = /^[0-9a-f]{64}$/

/**
 * Incremental verifier: feed records in order, get the first break. The first
 * record fed may start anywhere (a compacted journal or a pulled range): its
 * `prev` is taken on trust unless it is seq 1, which must link to 64 zeros.
 */
export class ChainVerifier {
  private last: { seq: number; hash: string } | undefined
  private position = 0
  count = 0
  firstSeq: number | undefined
  lastSeq: number | undefined
  /** The JSON text of the last record that continued the chain, as sealRecordText writes it (the same content as the record). */
  lastText: string | undefined

  constructor(private readonly expectFrom?: { seq: number; prev: string }) {}

  /** Returns the break, or undefined when the record continues the chain. */
  push(value: unknown): ChainBreak | undefined {
    this.position++
    const r = value as Partial<JournalRecord> | null
    const at = (reason: ChainBreak['reason'], problem: string, seq?: number): ChainBreak => ({
      seq: seq ?? (this.last ? this.last.seq + 1 : (this.expectFrom?.seq ?? 1)),
      position: this.position,
      reason,
      problem,
    })
    if (r === null || typeof r !== 'object' || Array.isArray(r)) return at('not-a-record', 'not a record object')
    if (!Number.isSafeInteger(r.seq) || (r.seq as number) < 1) return at('not-a-record', `seq is ${JSON.stringify(r.seq)}, not a positive integer`)
    const seq = r.seq as number
    if (typeof r.hash !== 'string' || !HEX64.test(r.hash)) return at('not-a-record', 'hash is not 64 lowercase hex digits', seq)
    if (typeof r.prev !== 'string' || !HEX64.test(r.prev)) return at('not-a-record', 'prev is not 64 lowercase hex digits', seq)
    if (typeof r.type !== 'string') return at('not-a-record', 'type is missing', seq)
    if (this.last) {
      if (seq !== this.last.seq + 1)
        return at(
          'seq',
          seq <= this.last.seq ? `seq ${seq} repeats or goes back after ${this.last.seq}` : `gap: seq ${this.last.seq + 1}..${seq - 1} missing`,
          seq,
        )
      if (r.prev !== this.last.hash) return at('prev', `prev does not match the hash of seq ${this.last.seq}`, seq)
    } else if (this.expectFrom) {
      if (seq !== this.expectFrom.seq) return at('seq', `expected seq ${this.expectFrom.seq}, found ${seq}`, seq)
      if (r.prev !== this.expectFrom.prev) return at('prev', `prev does not match the hash of seq ${seq - 1}`, seq)
    } else if (seq === 1 && r.prev !== GENESIS_PREV) {
      return at('prev', 'seq 1 must have prev = 64 zeros', seq)
    }
    let computed: { canonical: string; hash: string }
    try {
      computed = recordCanonical(r as JournalRecord)
    } catch (err) {
      return at('hash', `cannot hash: ${(err as Error).message}`, seq)
    }
    if (computed.hash !== r.hash)
      return at('hash', `hash mismatch: the record was changed (stored ${r.hash.slice(0, 12)}…, computed ${computed.hash.slice(0, 12)}…)`, seq)
    this.lastText = recordText(computed.canonical, r.hash)
    this.last = { seq, hash: r.hash }
    this.firstSeq ??= seq
    this.lastSeq = seq
    this.count++
    return undefined
  }
}

/** Verify a whole run in memory; undefined when intact. */
export function verifyRecords(records: Iterable<unknown>, expectFrom?: { seq: number; prev: string }): ChainBreak | undefined {
  const v = new ChainVerifier(expectFrom)
  for (const r of records) {
    const b = v.push(r)
    if (b) return b
  }
  return undefined
}

/** A break a salvage announced: seqs it lost (never sent), or the start of a new chain. */
export interface AnnouncedBreak {
  /** The seq of the gateway.started whose journalSalvage announces it. */
  announcedAt: number
  /** The seqs missing (from > to: none, a new chain right after the last record). */
  from: number
  to: number
  /** The record after them starts a new chain (prev 64 zeros). */
  newChain: boolean
}

interface Pending {
  brk: ChainBreak
  from: number
  to: number
  newChain: boolean
}

/**
 * The chain of a journal that may have been through salvages: a ChainVerifier that accepts a
 * break exactly when a `gateway.started.journalSalvage` announces it, and reports every other.
 * A gap between two records is accepted when a salvage record after it names its seqs in `lost`
 * or `lostAfter`; a record with `prev` of 64 zeros after the first (a new chain) only when it is
 * itself a `gateway.started` whose journalSalvage says `newChain` and the records before it end
 * at or below the carried ones. Every record still hashes right; between breaks the links hold.
 * finish() reports a gap no salvage record after it announced.
 */
export class SalvageAwareVerifier {
  private v = new ChainVerifier()
  private done = 0
  private position = 0
  private pending: Pending[] = []
  readonly announced: AnnouncedBreak[] = []
  firstSeq: number | undefined
  lastSeq: number | undefined

  get count(): number {
    return this.done + this.v.count
  }

  push(value: unknown): ChainBreak | undefined {
    this.position++
    let b = this.v.push(value)
    const r = value as Partial<JournalRecord> & { journalSalvage?: JournalSalvageAnnouncement }
    if (b) {
      const last = this.v.lastSeq
      const seq = r?.seq
      const gap = b.reason === 'seq' && last !== undefined && typeof seq === 'number' && seq > last + 1
      // A new chain right after the last record loses nothing: only its prev breaks the link.
      const newChain = b.reason === 'prev' && last !== undefined && seq === last + 1 && r.prev === GENESIS_PREV
      if (!gap && !newChain) return { ...b, position: this.position }
      const restart = new ChainVerifier({ seq: seq as number, prev: r.prev as string })
      const own = restart.push(value)
      if (own) return { ...own, position: this.position }
      const p: Pending = {
        brk: { ...b, position: this.position },
        from: (last as number) + 1,
        to: (seq as number) - 1,
        newChain: r.prev === GENESIS_PREV,
      }
      if (p.newChain) {
        // A new chain announces itself: its first record is the salvage's gateway.started.
        const s = r.type === 'gateway.started' ? r.journalSalvage : undefined
        if (!s?.newChain || p.from <= (s.carried?.to ?? 0))
          return { ...p.brk, problem: `${b.problem}, and no salvage announces a new chain here (prev is 64 zeros)` }
        this.announced.push({ announcedAt: seq as number, from: p.from, to: p.to, newChain: true })
      } else this.pending.push(p)
      this.done += this.v.count
      this.v = restart
      b = undefined
    }
    this.firstSeq ??= r.seq
    this.lastSeq = r.seq
    const s = r.type === 'gateway.started' ? r.journalSalvage : undefined
    if (s && this.pending.length > 0) {
      const ranges = [...(s.lost ?? []), ...(s.lostAfter ? [s.lostAfter] : [])]
      this.pending = this.pending.filter((p) => {
        if (!ranges.some((x) => p.from >= x.from && p.to <= x.to)) return true
        this.announced.push({ announcedAt: r.seq as number, from: p.from, to: p.to, newChain: false })
        return false
      })
    }
    return undefined
  }

  /** The first gap no salvage record after it announced, once every record was pushed. */
  finish(): ChainBreak | undefined {
    const p = this.pending[0]
    return p ? { ...p.brk, problem: `${p.brk.problem}, and no salvage record after it names those seqs lost` } : undefined
  }
}

/** What SalvageAwareVerifier reads of a gateway.started's journalSalvage (core/types.ts JournalSalvageInfo). */
type JournalSalvageAnnouncement = Partial<Pick<JournalSalvageInfo, 'carried' | 'lost' | 'lostAfter' | 'newChain'>>

/** One line per announced break, for `outpost verify`. */
export function describeAnnounced(a: AnnouncedBreak): string {
  const lost = a.from <= a.to ? `seqs ${a.from}..${a.to} lost` : 'nothing lost'
  return `salvage announced at seq ${a.announcedAt}: ${lost}${a.newChain ? `, a new chain starts at seq ${a.to + 1}` : ''}`
}

/** The bytes a salvage proof's signature covers: the canonical JSON of every field but the signature. */
export function salvageStatement(p: Omit<SalvageProof, 'signature'>): string {
  return canonicalJson({ site: p.site, seq: p.seq, prev: p.prev, last: p.last, lost: p.lost })
}

/** Whether a salvage proof's signature verifies against `publicKeyPem` (the key the site announced before, never the record's own). */
export function salvageProofVerifies(p: SalvageProof, publicKeyPem: string): boolean {
  try {
    return verify('sha256', Buffer.from(salvageStatement(p), 'utf8'), publicKeyPem, Buffer.from(p.signature, 'base64'))
  } catch {
    return false
  }
}

/**
 * The seqs below `start` (the salvage's gateway.started) that a salvage says will never be sent, merged
 * ascending: its `lost` and `lostAfter`, and before a new chain every seq between the last one it
 * carried (or lost) and `start`, given out and lost or never given out alike.
 */
export function salvageLostRanges(s: JournalSalvageInfo, start: number): { from: number; to: number }[] {
  const ranges = [...(s.lost ?? []), ...(s.lostAfter ? [s.lostAfter] : [])]
  if (s.newChain) {
    const top = Math.max(s.carried?.to ?? 0, ...ranges.map((r) => r.to))
    if (top + 1 <= start - 1) ranges.push({ from: top + 1, to: start - 1 })
  }
  ranges.sort((a, b) => a.from - b.from)
  const out: { from: number; to: number }[] = []
  for (const r of ranges) {
    const prev = out.at(-1)
    if (prev && r.from <= prev.to + 1) prev.to = Math.max(prev.to, r.to)
    else out.push({ ...r })
  }
  return out.filter((r) => r.from <= r.to && r.to < start)
}
