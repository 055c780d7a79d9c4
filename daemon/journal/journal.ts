/**
 * The journal: Outpost's single source of truth, one LevelDB database in
 * `<storage.dir>/journal`.
 *
 * Owns: the record log (gapless seq, hash chain), the persisted engine state
 * (by sections), the readings sessions are billed from, the ack watermark,
 * command results, the clean-shutdown marker, and retention.
 *
 * Must never: reorder or rewrite a committed record, delete an unacknowledged
 * record, reset or "fix" a database it cannot read (it refuses, and
 * `outpost repair` is the way out), report a commit before LevelDB has it on
 * disk (sync) when it holds a record or a command result, or keep accepting
 * writes after one failed (the daemon must see the fault and open every relay).
 * It never decides anything about sessions: the engine decides, the journal
 * makes it durable.
 */
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { Level } from 'level'
import type { AbstractLevel } from 'abstract-level'
import type {
  CommandResult,
  JournalRecord,
  JournalSalvageInfo,
  PersistedEngineState,
  RecordLog,
  SalvageProof,
  SessionEndedBody,
} from '../../core/types.js'
import { OutpostError } from '../errors.js'
import { ChainVerifier, GENESIS_PREV, salvageLostRanges, sealRecordText } from './chain.js'
import { paginationOf } from '../ocmf.js'
import * as K from './keys.js'
import { readMarker, RESERVE_BLOCK, type SeqMarker, writeMarker } from './seq-marker.js'
import { type CommitStep, checkStep, type ReadingEntry } from './commit-step.js'
import { corrupt, droppedByLevelDb, openError, parseJson } from './open-errors.js'
import { checkedTables, describeDamage, recordCheckedTables } from './table-check.js'
import { pastHole } from '../../core/holes.js'

export { droppedByLevelDb, openError } from './open-errors.js'

// biome-ignore lint/suspicious/noExplicitAny: abstract-level's format type parameter; the journal only ever opens utf8 keys and values
export type JournalDb = AbstractLevel<any, string, string>

export interface JournalOptions {
  /** This run's boot id (stamped on every record). */
  bootId: string
  /** Whether the system clock is synchronised now (stamped on every record). */
  clockSynced: () => boolean
  /** The daemon's version; kept in the running marker for diagnosis (the engine writes gateway.started). */
  version?: string
  /** storage.retentionDays; default 90. */
  retentionDays?: number
  /** storage.readingSyncMs: the longest a journaled reading waits for its fsync; default 5000, 0 writes and fsyncs every step. */
  readingSyncMs?: number
  /**
   * How often the engine state changed only by readings is checkpointed (written, then fsynced
   * with the next fsync); default 60000. Between checkpoints it is rebuilt at boot from the
   * readings journaled since (see replayReadings), so a longer interval costs nothing but a
   * longer replay, and spares the SD card a ~2.5 kB outlet entry per reading.
   */
  checkpointMs?: number
  /** The injected wall clock, epoch ms. */
  now: () => number
  /**
   * A storage layer to use instead of LevelDB on disk (tests: power cuts, I/O
   * errors). Must use utf8 keys and values. The caller opens and closes it.
   */
  db?: JournalDb
  /** How often retention runs by itself; default 1 h, 0 = only when compact() is called. */
  compactEveryMs?: number
  /** Records at the tail whose chain is verified on open; default 32 (well under a millisecond; `outpost verify` checks the whole chain). */
  tailCheck?: number
  /** Tests only: LevelDB's write buffer in bytes (default 4 MB); a small one forces table writes and compactions. */
  writeBufferSize?: number
  /**
   * Signs a session.ended as it is sealed (the daemon's OCMF signer): given the record and the
   * pagination counter this record takes, returns its `ocmf` value. The counter is kept in the
   * journal (m!pagination, in the record's own batch): gapless across restarts and crashes.
   */
  sign?: SessionSigner
  /** Signs a salvage's gateway.started as it is sealed (its seq and prev known only then): its `salvageProof`. */
  signSalvage?: SalvageSigner
  /**
   * A journal existed in this storage.dir before (the gateway key, created with the journal, was
   * there before this start): a LevelDB found empty then is a lost journal, never a new one.
   */
  expectExisting?: boolean
}

export type SessionSigner = (body: SessionEndedBody, ctx: { pagination: number; clockSynced: boolean }) => string
export type SalvageSigner = (statement: Omit<SalvageProof, 'site' | 'signature'>) => SalvageProof

export type { CommitStep, ReadingEntry } from './commit-step.js'

export interface CompactionResult {
  records: number
  readings: number
  commands: number
  /** The oldest seq still held afterwards. */
  oldest: number
}

const DAY_MS = 86_400_000
/** Deletions per batch during retention, so a big first compaction never holds the commit queue long. */
const COMPACT_CHUNK = 2000

/** Where the LevelDB files live inside storage.dir (which Node-RED shares). */
export function journalLocation(storageDir: string): string {
  return join(storageDir, 'journal')
}

type Op = { type: 'put'; key: string; value: string } | { type: 'del'; key: string }

export class Journal implements RecordLog {
  /** Whether the run before this one closed the journal with close({ clean: true }) (true for a new journal). */
  previousCleanShutdown = true

  private headSeq = 0
  private headHash = GENESIS_PREV
  private oldestSeq = 1
  private ackedSeq = 0
  /** The last OCMF pagination counter given to a session.ended (0 before the first). */
  private paginationValue = 0
  private keyOnRecordValue: string | undefined
  /** Seqs a salvage could not read (m!holes between carried records, m!base above the last one), ascending: never given out again, never read. */
  private holeList: { from: number; to: number }[] = []
  /** The seq marker as last written (storage.dir/journal-seq.json); undefined for a journal on an injected db. */
  private marker: SeqMarker | undefined
  /** Why the seq marker had to be rebuilt from the log at open (it was unreadable), for the daemon to report. */
  markerProblem: string | undefined
  /** The newest state handed to commit(): written, or its changed entries waiting in `pending` for the checkpoint. */
  private latest: PersistedEngineState | undefined
  /** State entries of steps whose state waits for the checkpoint, not yet handed to LevelDB, by key: the newest wins. */
  private readonly pending = new Map<string, Op>()
  private failure: OutpostError | undefined
  private closed = false
  private queue: Promise<unknown> = Promise.resolve()
  private unsynced = false
  private syncTimer: NodeJS.Timeout | undefined
  private checkpointTimer: NodeJS.Timeout | undefined
  private compactTimer: NodeJS.Timeout | undefined
  private syncCounter = 0
  private readonly appendListeners = new Set<(head: number) => void>()
  private readonly faultListeners = new Set<(err: OutpostError) => void>()
  private readonly retentionMs: number
  private readonly readingSyncMs: number
  private readonly checkpointMs: number

  private constructor(
    private readonly db: JournalDb,
    private readonly owned: boolean,
    readonly location: string,
    private readonly opts: JournalOptions,
    /** storage.dir, where the seq marker lives (undefined: an injected db keeps no marker). */
    private readonly markerDir?: string,
  ) {
    this.retentionMs = (opts.retentionDays ?? 90) * DAY_MS
    this.readingSyncMs = opts.readingSyncMs ?? 5000
    this.checkpointMs = opts.checkpointMs ?? 60_000
  }

  /**
   * Open (creating if missing), take LevelDB's lock, verify the tail of the
   * chain, load the persisted state and mark this run as running.
   */
  static async open(dir: string, opts: JournalOptions): Promise<Journal> {
    if (typeof dir !== 'string' || dir === '') throw new OutpostError('JOURNAL_BAD_OPTIONS', 'Journal.open: dir must be a non-empty path')
    if (typeof opts?.bootId !== 'string' || opts.bootId === '')
      throw new OutpostError('JOURNAL_BAD_OPTIONS', 'Journal.open: opts.bootId must be a non-empty string')
    if (typeof opts.now !== 'function' || typeof opts.clockSynced !== 'function')
      throw new OutpostError('JOURNAL_BAD_OPTIONS', 'Journal.open: opts.now and opts.clockSynced must be functions')
    if (opts.retentionDays !== undefined && !(Number.isInteger(opts.retentionDays) && opts.retentionDays >= 1))
      throw new OutpostError('JOURNAL_BAD_OPTIONS', `Journal.open: retentionDays must be an integer >= 1, got ${opts.retentionDays}`)
    if (opts.readingSyncMs !== undefined && !(Number.isInteger(opts.readingSyncMs) && opts.readingSyncMs >= 0))
      throw new OutpostError('JOURNAL_BAD_OPTIONS', `Journal.open: readingSyncMs must be an integer >= 0, got ${opts.readingSyncMs}`)
    if (opts.writeBufferSize !== undefined && !(Number.isInteger(opts.writeBufferSize) && opts.writeBufferSize >= 1024))
      throw new OutpostError('JOURNAL_BAD_OPTIONS', `Journal.open: writeBufferSize must be an integer >= 1024, got ${opts.writeBufferSize}`)
    if (opts.checkpointMs !== undefined && !(Number.isInteger(opts.checkpointMs) && opts.checkpointMs >= 1))
      throw new OutpostError('JOURNAL_BAD_OPTIONS', `Journal.open: checkpointMs must be an integer >= 1, got ${opts.checkpointMs}`)
    const location = opts.db ? dir : journalLocation(dir)
    let passed: Map<number, number> | undefined
    let db = opts.db
    const owned = db === undefined
    if (!db) {
      try {
        await mkdir(location, { recursive: true })
      } catch (err) {
        throw new OutpostError('JOURNAL_OPEN_FAILED', `cannot create ${location}: ${(err as Error).message}`, { cause: err })
      }
      // LevelDB here reads tables without checking their blocks, and a garbled key aborts the process in a compaction.
      // Tables checked at an earlier boot need only be present after a clean stop: after a crash (it may have been
      // LevelDB aborting on one of them) every table is read again. Cost: reading the tables written since the last boot.
      const marker = await readMarker(dir)
      passed = new Map<number, number>()
      const damage = await checkedTables(location, { trustChecked: marker.state === 'ok' && marker.marker.clean, passed })
      if (damage === 'locked') throw new OutpostError('JOURNAL_LOCKED', `another outpost is already running on ${location}`)
      if (damage.length > 0) throw corrupt(location, `LevelDB would read damaged tables unchecked: ${describeDamage(damage)}`)
      const tuning = opts.writeBufferSize === undefined ? {} : { writeBufferSize: opts.writeBufferSize }
      db = new Level<string, string>(location, { keyEncoding: 'utf8', valueEncoding: 'utf8', ...tuning }) as unknown as JournalDb
    }
    try {
      if (db.status !== 'open') await db.open()
    } catch (err) {
      throw openError(err, location)
    }
    const journal = new Journal(db, owned, location, opts, owned ? dir : undefined)
    try {
      await journal.recover()
    } catch (err) {
      if (owned) await db.close().catch(() => {})
      // A table LevelDB opens lazily can be found damaged only now, while the tail is read, or by the compaction open's
      // first write starts (a write failing on LEVEL_CORRUPTION): damage to salvage, not a failing disk.
      const damaged = err instanceof OutpostError && err.code === 'JOURNAL_WRITE_FAILED' && openError(err, location).code === 'JOURNAL_CORRUPT'
      throw err instanceof OutpostError && !damaged ? err : openError(err, location)
    }
    if (passed) await recordCheckedTables(location, passed).catch(() => {}) // only a full check next time
    journal.startCompactTimer()
    return journal
  }

  private async recover(): Promise<void> {
    const db = this.db
    const format = await db.get(K.META_FORMAT)
    const fresh = format === undefined
    if (fresh) {
      // A database with entries but no format marker is not ours (or lost its first batch): refuse rather than write into it.
      for await (const _k of db.keys({ limit: 1 })) throw corrupt(this.location, 'entries present but no format marker (m!format)')
    } else if (format !== K.FORMAT) {
      throw new OutpostError('JOURNAL_FORMAT', `the journal at ${this.location} has layout version ${format}; this build reads version ${K.FORMAT}`)
    }

    // Tail of the chain: enough to prove the last records were not torn or edited, without reading a million of them.
    const tail: JournalRecord[] = []
    for await (const [key, value] of db.iterator({ ...K.RECORDS, reverse: true, limit: this.opts.tailCheck ?? 32 })) {
      const r = parseJson<JournalRecord>(this.location, key, value)
      if (r.seq !== K.seqOfRecordKey(key)) throw corrupt(this.location, `entry ${key} holds seq ${r.seq}`)
      tail.push(r)
    }
    tail.reverse()
    // A salvage that lost records above the ones it carried starts a new chain past every seq ever given out (m!base):
    // the records before that hole and the ones after it are two chains, each verified on its own. Holes between carried
    // records (m!holes) end a run the same way: the record after one links to a record that is gone.
    const baseText = await db.get(K.META_BASE)
    let base: { seq: number; hash: string } | undefined
    if (baseText !== undefined) {
      const b = parseJson<{ seq: number; hash: string }>(this.location, K.META_BASE, baseText)
      if (!Number.isSafeInteger(b?.seq) || b.seq < 0 || typeof b.hash !== 'string' || !/^[0-9a-f]{64}$/.test(b.hash))
        throw corrupt(this.location, `the log's base is ${baseText}`)
      base = b
    }
    const holesText = await db.get(K.META_HOLES)
    const holes: { from: number; to: number }[] = []
    if (holesText !== undefined) {
      const list = parseJson<unknown>(this.location, K.META_HOLES, holesText)
      if (!Array.isArray(list)) throw corrupt(this.location, `the log's holes are ${holesText}`)
      for (const h of list as { from?: unknown; to?: unknown }[]) {
        const from = h?.from as number
        const to = h?.to as number
        if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to) || from < 1 || to < from || from <= (holes.at(-1)?.to ?? 0) + 1)
          throw corrupt(this.location, `the log's holes are ${holesText}`)
        holes.push({ from, to })
      }
    }
    let v = new ChainVerifier()
    for (const r of tail) {
      if (base && r.seq === base.seq + 1) v = new ChainVerifier({ seq: r.seq, prev: base.hash })
      else if (holes.some((h) => r.seq === h.to + 1)) v = new ChainVerifier({ seq: r.seq, prev: r.prev })
      const b = v.push(r)
      if (b) throw corrupt(this.location, `chain broken at seq ${b.seq}: ${b.problem}`)
    }
    const last = tail[tail.length - 1]
    if (last) {
      this.headSeq = last.seq
      this.headHash = last.hash
      for await (const key of db.keys({ ...K.RECORDS, limit: 1 })) this.oldestSeq = K.seqOfRecordKey(key)
    }
    this.holeList = holes
    if (base && base.seq > this.headSeq) {
      // The first record appended continues the gateway's seq; records up to the base are not held here.
      if (last) this.holeList.push({ from: last.seq + 1, to: base.seq })
      else this.oldestSeq = base.seq + 1
      this.headSeq = base.seq
      this.headHash = base.hash
    } else if (base && last) {
      // Records after the base exist: the hole lies between the last record at or below the base and base + 1.
      let below = 0
      for await (const key of db.keys({ ...K.RECORDS, lte: K.recordKey(base.seq), reverse: true, limit: 1 })) below = K.seqOfRecordKey(key)
      if (below > 0 && below < base.seq) this.holeList.push({ from: below + 1, to: base.seq })
      else if (below === 0) this.oldestSeq = Math.max(this.oldestSeq, base.seq + 1)
    }
    this.holeList.sort((a, b) => a.from - b.from)
    const acked = await db.get(K.META_ACKED)
    this.ackedSeq = acked === undefined ? 0 : Number(acked)
    if (!Number.isSafeInteger(this.ackedSeq) || this.ackedSeq < 0) throw corrupt(this.location, `ack watermark is ${JSON.stringify(acked)}`)
    // Records are fsynced before the uplink may publish them, so an ack past the head means records were lost.
    if (this.ackedSeq > this.headSeq) throw corrupt(this.location, `the cloud acknowledged seq ${this.ackedSeq} but the log ends at ${this.headSeq}`)

    const keyText = await db.get(K.META_KEY)
    this.keyOnRecordValue = keyText === undefined ? undefined : parseJson<string>(this.location, K.META_KEY, keyText)
    const pg = await db.get(K.META_PAGINATION)
    this.paginationValue = pg === undefined ? 0 : Number(pg)
    if (!Number.isSafeInteger(this.paginationValue) || this.paginationValue < 0)
      throw corrupt(this.location, `the OCMF pagination counter is ${JSON.stringify(pg)}`)
    // Never behind a record the log holds (a journal rebuilt from records alone carries their counters).
    for (const r of tail) if (r.type === 'session.ended') this.paginationValue = Math.max(this.paginationValue, paginationOf(r.ocmf) ?? 0)

    await this.checkEvidence(fresh)

    this.latest = await this.readState()
    this.previousCleanShutdown = fresh ? true : (await db.get(K.META_RUNNING)) === undefined

    const ops: Op[] = [
      {
        type: 'put',
        key: K.META_RUNNING,
        value: JSON.stringify({ bootId: this.opts.bootId, since: this.opts.now(), version: this.opts.version ?? null }),
      },
    ]
    if (fresh) ops.unshift({ type: 'put', key: K.META_FORMAT, value: K.FORMAT })
    await this.write(ops, true)
    // After the format marker: a marker beside an empty LevelDB then always means a lost journal.
    if (this.markerDir !== undefined) {
      const prev = this.marker
      await this.writeSeqMarker({ reserved: Math.max(prev?.reserved ?? 0, this.headSeq), clean: false })
    }
  }

  /**
   * What LevelDB cannot say: whether it silently dropped records. Compares the log with the seq
   * marker (outside LevelDB), LevelDB's own report of bytes it dropped while recovering its log,
   * and whether a journal existed here before. Any loss → JOURNAL_CORRUPT, so that boot salvages
   * (journal/salvage.ts, which reads the same evidence to name what was lost). docs/journal.md.
   */
  private async checkEvidence(fresh: boolean): Promise<void> {
    if (this.markerDir === undefined) return
    const read = await readMarker(this.markerDir)
    const dropped = await droppedByLevelDb(this.location)
    const drops = dropped.length > 0 ? `; LevelDB dropped damaged log data while opening (${dropped[0]})` : ''
    if (fresh) {
      if (read.state === 'ok')
        throw corrupt(this.location, `the journal is empty, but its seq marker says seqs up to ${read.marker.head} were given out${drops}`)
      if (read.state === 'garbled') throw corrupt(this.location, `the journal is empty and its seq marker is unreadable (${read.detail})${drops}`)
      if (this.opts.expectExisting) throw corrupt(this.location, `the journal is empty, but the gateway key shows a journal existed here${drops}`)
      if (dropped.length > 0) throw corrupt(this.location, `the journal is empty${drops}`)
      return
    }
    if (read.state === 'ok') {
      const m = read.marker
      if (this.headSeq < m.head || (m.clean && this.headSeq !== m.head))
        throw corrupt(
          this.location,
          `records lost: the seq marker says the log reached seq ${m.head}${m.clean ? ' at a clean stop' : ''}, LevelDB holds up to ${this.headSeq}${drops}`,
        )
      // After an unclean stop the marker's head may be behind the log: LevelDB's report of dropped log data is then the
      // only sign that records after it went (a torn unsynced tail is not reported: LevelDB ignores it as a crash).
      if (!m.clean && dropped.length > 0)
        throw corrupt(this.location, `the last stop was not clean and records after seq ${m.head} may be lost${drops}`)
      // Reservations only grow: a marker behind the log (put back from an old copy) is raised, never trusted lower.
      this.marker = m
    } else if (read.state === 'garbled') {
      if (dropped.length > 0) throw corrupt(this.location, `its seq marker is unreadable (${read.detail})${drops}`)
      // LevelDB reports no damage: its head is the head. Reported (error level) by the daemon, rebuilt at the end of open.
      this.markerProblem = `${read.detail}; rebuilt from the journal's head ${this.headSeq}`
    }
    if (dropped.length > 0) {
      // Damage in the log's middle keeps the newest records: every seq from the oldest held to the head must still be there.
      let expect = this.oldestSeq
      for await (const key of this.db.keys(K.RECORDS)) {
        const seq = K.seqOfRecordKey(key)
        if (this.holeList.some((h) => h.from === expect && seq === h.to + 1)) expect = seq
        if (seq !== expect) throw corrupt(this.location, `records lost: seq ${expect}..${seq - 1} missing${drops}`)
        expect = seq + 1
      }
      if (this.headSeq > 0 && expect !== this.headSeq + 1 && !this.holeList.some((h) => expect === h.from && h.to === this.headSeq))
        throw corrupt(this.location, `records lost: the log ends at seq ${expect - 1}, its head is ${this.headSeq}${drops}`)
    }
  }

  /** Writes the seq marker (fsynced) with the head and watermark of now; a failure is a write failure. */
  private async writeSeqMarker(m: { reserved: number; clean: boolean }): Promise<void> {
    if (this.markerDir === undefined) return
    const next: SeqMarker = { reserved: Math.max(m.reserved, this.marker?.reserved ?? 0), head: this.headSeq, acked: this.ackedSeq, clean: m.clean }
    try {
      await writeMarker(this.markerDir, next)
    } catch (err) {
      this.fail(err)
    }
    this.marker = next
  }

  private async readState(): Promise<PersistedEngineState | undefined> {
    if ((await this.db.get(K.META_STATE)) === undefined) return undefined
    const state: PersistedEngineState = { outlets: {} }
    for await (const [key, value] of this.db.iterator(K.SECTIONS)) state[K.unescapeId(key.slice(2))] = parseJson(this.location, key, value)
    const outlets: Record<string, unknown> = {}
    for await (const [key, value] of this.db.iterator(K.OUTLETS)) outlets[K.unescapeId(key.slice(2))] = parseJson(this.location, key, value)
    state.outlets = outlets
    return state
  }

  // ---------------------------------------------------------------- RecordLog

  head(): number {
    return this.headSeq
  }

  acked(): number {
    return this.ackedSeq
  }

  oldest(): number {
    return this.headSeq === 0 ? 1 : this.oldestSeq
  }

  /** The last OCMF pagination counter given to a session.ended (0 before the first). */
  pagination(): number {
    return this.paginationValue
  }

  /** The fingerprint of the gateway key this journal's records are signed with, undefined for a journal never signed. */
  keyOnRecord(): string | undefined {
    return this.keyOnRecordValue
  }

  /** Records (fsynced) which gateway key signs this journal's records from now on. */
  recordKey(fingerprint: string): Promise<void> {
    return this.enqueue(async () => {
      if (this.keyOnRecordValue === fingerprint) return
      await this.write([{ type: 'put', key: K.META_KEY, value: JSON.stringify(fingerprint) }], true)
      this.keyOnRecordValue = fingerprint
    })
  }

  /** Seqs a salvage could not read and that are never given out again (the log holds records on both sides), ascending. */
  holes(): readonly { from: number; to: number }[] {
    return this.holeList
  }

  /** The hash of the head record (64 zeros when empty). */
  headHashValue(): string {
    return this.headHash
  }

  async read(from: number, limit: number): Promise<JournalRecord[]> {
    if (!Number.isSafeInteger(from) || from < 1) throw new OutpostError('JOURNAL_BAD_RANGE', `read: from must be an integer >= 1, got ${from}`)
    if (!Number.isSafeInteger(limit) || limit < 1) throw new OutpostError('JOURNAL_BAD_RANGE', `read: limit must be an integer >= 1, got ${limit}`)
    this.assertOpen()
    const head = this.headSeq
    if (from > head) return []
    if (from < this.oldest())
      throw new OutpostError(
        'JOURNAL_COMPACTED',
        `records before seq ${this.oldest()} were compacted after acknowledgement; the oldest seq held is ${this.oldest()}`,
      )
    // A salvage's holes: a read stops before the next one (a reader checking seqs sees no jump), and a read from inside
    // one starts after it.
    let top = head
    for (const h of this.holeList) {
      if (from >= h.from && from <= h.to) from = h.to + 1
      else if (from < h.from) {
        top = h.from - 1
        break
      }
    }
    if (from > head) return []
    const out: JournalRecord[] = []
    for await (const [key, value] of this.db.iterator({ gte: K.recordKey(from), lte: K.recordKey(top), limit }))
      out.push(parseJson<JournalRecord>(this.location, key, value))
    // Retention may have run between the check and the read: never return a silently shortened range.
    if (out.length > 0 && out[0]!.seq !== from)
      throw new OutpostError(
        'JOURNAL_COMPACTED',
        `records before seq ${out[0]!.seq} were compacted after acknowledgement; the oldest seq held is ${this.oldest()}`,
      )
    return out
  }

  /**
   * Records with seq <= `to`, NEWEST first, at most `limit`, stopping at the oldest held
   * (never throws JOURNAL_COMPACTED: what was compacted is simply not returned). For the
   * local API's "recent sessions" without reading a long journal forward from its start.
   */
  async readBackward(to: number, limit: number): Promise<JournalRecord[]> {
    if (!Number.isSafeInteger(to) || !Number.isSafeInteger(limit) || limit < 1)
      throw new OutpostError('JOURNAL_BAD_RANGE', `readBackward: to and limit must be integers (limit >= 1), got ${to}, ${limit}`)
    this.assertOpen()
    const top = Math.min(to, this.headSeq)
    if (top < 1) return []
    const out: JournalRecord[] = []
    for await (const [key, value] of this.db.iterator({ gte: K.recordKey(1), lte: K.recordKey(top), reverse: true, limit }))
      out.push(parseJson<JournalRecord>(this.location, key, value))
    return out
  }

  async ack(upTo: number): Promise<void> {
    if (!Number.isSafeInteger(upTo)) throw new OutpostError('JOURNAL_BAD_RANGE', `ack: upTo must be an integer, got ${upTo}`)
    await this.enqueue(async () => {
      // Acknowledging the last record before a salvage's hole acknowledges the hole: its seqs are lost, never sent.
      const target = pastHole(this.holeList, Math.min(upTo, this.headSeq))
      if (target <= this.ackedSeq) return
      // Unsynced, fsynced within readingSyncMs (or by the next record): losing the newest acks to a power
      // cut only re-sends records the cloud de-duplicates by seq, and at a site's pace the cloud acks
      // about every record, so an fsync per ack would double the fsyncs (each rewrites a 4 kB page).
      // Retention deletes records below the ack only in a synced batch, which makes the ack durable first.
      await this.write([{ type: 'put', key: K.META_ACKED, value: String(target) }], this.readingSyncMs === 0)
      this.ackedSeq = target
      if (this.unsynced) this.scheduleSync()
    })
  }

  onAppend(listener: (head: number) => void): () => void {
    this.appendListeners.add(listener)
    return () => this.appendListeners.delete(listener)
  }

  /** Called once when the journal stops accepting writes (full disk, I/O error). */
  onFault(listener: (err: OutpostError) => void): () => void {
    this.faultListeners.add(listener)
    return () => this.faultListeners.delete(listener)
  }

  /** For /api/health, /metrics and the status page. */
  status(): { head: number; acked: number; oldest: number; unacked: number; waitingWrites: number; fault: string | null } {
    return {
      head: this.headSeq,
      acked: this.ackedSeq,
      oldest: this.oldest(),
      unacked: this.headSeq - this.ackedSeq,
      waitingWrites: this.pending.size,
      fault: this.failure ? this.failure.message : null,
    }
  }

  /** The write failure that stopped the journal, if any. */
  get fault(): OutpostError | undefined {
    return this.failure
  }

  // ---------------------------------------------------------------- commits

  /**
   * Make one engine step durable: its records (sealed here: seq, prev, hash,
   * bootId, clockSynced), the state sections that changed, command results and
   * readings, in ONE batch. Fsynced when it holds records or command results.
   * A state-only step (a reading) hands its readings to LevelDB before it
   * resolves, unsynced (the kernel keeps them across a process death; the fsync
   * follows within readingSyncMs), and its state waits for the next checkpoint
   * unless `checkpoint` is set. Commits apply in call order. Resolves with the
   * sealed records.
   */
  commit(step: CommitStep): Promise<JournalRecord[]> {
    try {
      checkStep(step)
    } catch (err) {
      return Promise.reject(err)
    }
    return this.enqueue(() => this.doCommit(step))
  }

  /** What a salvage's gateway.started at `seq` (linking to `prev`) states: the last record still readable before it, and what is lost. */
  private async salvageStatement(s: JournalSalvageInfo, seq: number, prev: string): Promise<Omit<SalvageProof, 'site' | 'signature'>> {
    let last: SalvageProof['last'] = null
    if (!s.newChain) last = seq > 1 ? { seq: seq - 1, hash: prev } : null
    else if (s.carried) {
      const text = await this.db.get(K.recordKey(s.carried.to))
      if (text !== undefined) last = { seq: s.carried.to, hash: (JSON.parse(text) as JournalRecord).hash }
    }
    return { seq, prev, last, lost: salvageLostRanges(s, seq) }
  }

  private async doCommit(step: CommitStep): Promise<JournalRecord[]> {
    this.assertWritable()
    const ops: Op[] = []
    const sealed: JournalRecord[] = []
    const clockSynced = this.opts.clockSynced() === true
    const now = this.opts.now()
    let seq = this.headSeq
    let prev = this.headHash
    let pagination = this.paginationValue
    for (const given of step.records) {
      let body = given
      if (body.type === 'session.ended' && this.opts.sign) {
        // Signed here, where the record is sealed: the counter it takes goes to disk in the same batch.
        body = { ...body, ocmf: this.opts.sign(body, { pagination: ++pagination, clockSynced }) }
      }
      if (body.type === 'gateway.started' && body.journalSalvage && this.opts.signSalvage)
        body = { ...body, salvageProof: this.opts.signSalvage(await this.salvageStatement(body.journalSalvage, seq + 1, prev)) }
      const { record: r, text } = sealRecordText(body, ++seq, prev, this.opts.bootId, clockSynced)
      prev = r.hash
      sealed.push(r)
      ops.push({ type: 'put', key: K.recordKey(r.seq), value: text })
    }
    if (pagination !== this.paginationValue) ops.push({ type: 'put', key: K.META_PAGINATION, value: String(pagination) })
    const stateOps: Op[] = []
    if (step.commandResults && step.commandResults.length > 0) {
      // First result wins, across steps and within one step.
      const ids = [...new Set(step.commandResults.map((c) => c.id))]
      const existing = await this.db.getMany(ids.map(K.commandKey))
      const done = new Set(ids.filter((_, i) => existing[i] !== undefined))
      for (const { id, result } of step.commandResults) {
        if (done.has(id)) continue
        done.add(id)
        ops.push({ type: 'put', key: K.commandKey(id), value: JSON.stringify({ at: now, result }) })
      }
    }
    const readingOps: Op[] = []
    for (const g of step.readings ?? []) {
      const r = g.reading
      // The stepped-at `now` kept as its offset from ts (a few ms, omitted when 0): 2 bytes a reading, not 14.
      const late = g.now === undefined ? 0 : g.now - r.ts
      const value = [r.currentA, r.powerW, r.energyWh, r.voltageV, g.outlet]
      if (late !== 0) value.push(late)
      readingOps.push({ type: 'put', key: K.readingKey(g.sessionId, r.ts), value: JSON.stringify(value) })
    }
    const durable = sealed.length > 0 || (step.commandResults?.length ?? 0) > 0 || this.readingSyncMs === 0
    if (!durable) {
      // The readings (the billing evidence, ~60 bytes each) go to LevelDB now, unsynced: once write() returns,
      // LevelDB has written them to its log file, so a process death loses none; a power cut loses at most the
      // last readingSyncMs of them (the fsync timer). The engine state they changed (a ~2.5 kB outlet entry per
      // reading) waits in memory, merged by key, for the next checkpoint: boot rebuilds it from these readings.
      if (step.state !== undefined) this.stateOps(step.state, stateOps)
      if (step.checkpoint === true) {
        const batch = [...this.firstState(), ...stateOps, ...readingOps]
        if (batch.length > 0) await this.write(batch, false)
        for (const op of stateOps) this.pending.delete(op.key)
      } else {
        if (readingOps.length > 0) await this.write(readingOps, false)
        for (const op of stateOps) this.pending.set(op.key, op)
      }
      if (step.state !== undefined) this.latest = step.state
      if (this.unsynced) this.scheduleSync()
      if (this.pending.size > 0) this.scheduleCheckpoint()
      return sealed
    }
    if (step.state !== undefined) this.stateOps(step.state, stateOps)
    // Only the entries this step changed: an entry still waiting for the checkpoint was changed by
    // readings alone (an outlet's own entry), which boot rebuilds from the readings journaled since
    // the value it finds; writing every waiting entry with each record would checkpoint every second.
    const batch = [...this.firstState(), ...stateOps, ...readingOps, ...ops]
    // No seq past the marker's reservation before the marker says so: whatever LevelDB later loses, no seq is given twice.
    if (this.marker !== undefined && seq > this.marker.reserved) await this.writeSeqMarker({ reserved: seq + RESERVE_BLOCK, clean: false })
    if (batch.length > 0) await this.write(batch, true)
    for (const op of stateOps) this.pending.delete(op.key)
    if (step.state !== undefined) this.latest = step.state
    this.paginationValue = pagination
    if (sealed.length > 0) {
      this.headSeq = seq
      this.headHash = prev
      if (this.headSeq === sealed.length) this.oldestSeq = 1
      for (const l of this.appendListeners) {
        try {
          l(this.headSeq)
        } catch {
          // A listener's bug must not turn a durable commit into a failed one.
        }
      }
    }
    return sealed
  }

  /**
   * The first state ever persisted goes to disk whole, never entry by entry: loadState() answers
   * nothing until m!state exists, so the entries written before it would be ignored. Taken from
   * `pending` (the caller writes them).
   */
  private firstState(): Op[] {
    if (!this.pending.has(K.META_STATE)) return []
    const all = [...this.pending.values()]
    this.pending.clear()
    return all
  }

  /** Put the sections and outlet entries whose identity changed; delete the ones that disappeared. */
  private stateOps(next: PersistedEngineState, ops: Op[]): void {
    const prev = this.latest
    if (prev === next) return
    const json = (key: string, v: unknown): string => {
      const text = JSON.stringify(v)
      if (text === undefined) throw new OutpostError('JOURNAL_INVALID_STEP', `commit: state ${key} has no JSON form; nothing was written`)
      return text
    }
    for (const [name, value] of Object.entries(next)) {
      if (name === 'outlets') continue
      if (value === undefined) continue
      if (!prev || prev[name] !== value) ops.push({ type: 'put', key: K.sectionKey(name), value: json(name, value) })
    }
    if (prev)
      for (const name of Object.keys(prev))
        if (name !== 'outlets' && prev[name] !== undefined && next[name] === undefined) ops.push({ type: 'del', key: K.sectionKey(name) })
    if (!prev || prev.outlets !== next.outlets) {
      for (const [id, value] of Object.entries(next.outlets)) {
        if (value === undefined) continue
        if (!prev || prev.outlets[id] !== value) ops.push({ type: 'put', key: K.outletKey(id), value: json(`outlets.${id}`, value) })
      }
      if (prev)
        for (const id of Object.keys(prev.outlets))
          if (prev.outlets[id] !== undefined && next.outlets[id] === undefined) ops.push({ type: 'del', key: K.outletKey(id) })
    }
    if (!prev) ops.push({ type: 'put', key: K.META_STATE, value: '1' })
  }

  /** The engine state as last committed (after a restart: what was persisted and survived). */
  async loadState(): Promise<PersistedEngineState | undefined> {
    this.assertOpen()
    return this.latest
  }

  /** The first stored result of a command id. */
  async commandResult(id: string): Promise<CommandResult | undefined> {
    this.assertOpen()
    const text = await this.db.get(K.commandKey(id))
    if (text === undefined) return undefined
    return parseJson<{ result: CommandResult }>(this.location, K.commandKey(id), text).result
  }

  /**
   * The journaled readings of one session, oldest first, each with the `now` it was stepped at
   * (reading.ts for entries written without it). `after`: only readings with ts > after.
   */
  async readings(sessionId: string, opts: { after?: number } = {}): Promise<ReadingEntry[]> {
    this.assertOpen()
    const range: { gte?: string; gt?: string; lt: string } = K.prefixRange(K.readingPrefix(sessionId))
    if (opts.after !== undefined) {
      if (!Number.isFinite(opts.after))
        throw new OutpostError('JOURNAL_BAD_RANGE', `readings: after must be finite epoch ms, got ${String(opts.after)}`)
      if (opts.after >= 0) {
        delete range.gte
        range.gt = K.readingKey(sessionId, opts.after)
      }
    }
    const out: ReadingEntry[] = []
    for await (const [key, value] of this.db.iterator(range)) {
      const [currentA, powerW, energyWh, voltageV, outlet, late] = parseJson<[number, number, number, number, string, number?]>(
        this.location,
        key,
        value,
      )
      const ts = Number(key.slice(key.lastIndexOf('!') + 1))
      out.push({ outlet, sessionId, reading: { ts, currentA, powerW, energyWh, voltageV }, now: ts + (late ?? 0) })
    }
    return out
  }

  /**
   * Side data of `owner` (keys `x!<owner>!<rest>`), in key order: what another part of the
   * daemon derives from the records and must keep across crashes (the OCPP outbox).
   */
  async asideRead(owner: string, prefix = ''): Promise<[string, string][]> {
    this.assertOpen()
    const base = K.asideKey(owner, '')
    const out: [string, string][] = []
    for await (const [key, value] of this.db.iterator(K.prefixRange(base + prefix))) out.push([key.slice(base.length), value])
    return out
  }

  /**
   * Writes `owner`'s side data in one batch, fsynced, behind every commit before it (so what
   * it derives from a record is never on disk before the record). `value: null` deletes.
   */
  asideWrite(owner: string, entries: { key: string; value: string | null }[]): Promise<void> {
    return this.enqueue(async () => {
      this.assertWritable()
      if (entries.length === 0) return
      const ops: Op[] = entries.map((e) =>
        e.value === null ? { type: 'del', key: K.asideKey(owner, e.key) } : { type: 'put', key: K.asideKey(owner, e.key), value: e.value },
      )
      await this.write(ops, true)
    })
  }

  /** Write and fsync everything committed so far (the state waiting for its checkpoint included). */
  flush(): Promise<void> {
    return this.enqueue(() => this.flushNow([]))
  }

  /** Pending state writes plus `extra`, in one synced batch (or an fsync of earlier un-synced writes). */
  private async flushNow(extra: Op[]): Promise<void> {
    this.assertWritable()
    const ops = [...this.pending.values(), ...extra]
    if (ops.length === 0 && this.unsynced) ops.push({ type: 'put', key: K.META_SYNC, value: String(++this.syncCounter) })
    if (ops.length === 0) return
    await this.write(ops, true)
    this.pending.clear()
  }

  /** Fsync what LevelDB already has (one tiny synced write: LevelDB's log is append-only, one fsync covers it all). */
  private async syncNow(): Promise<void> {
    this.assertWritable()
    if (!this.unsynced) return
    await this.write([{ type: 'put', key: K.META_SYNC, value: String(++this.syncCounter) }], true)
  }

  /** Hand the state waiting for its checkpoint to LevelDB (unsynced: the fsync timer follows). */
  private async checkpointNow(): Promise<void> {
    this.assertWritable()
    // The marker's head follows the log at checkpoints (the records up to the head are fsynced): a silent loss of them shows at open.
    if (this.marker !== undefined && this.marker.head !== this.headSeq) await this.writeSeqMarker({ reserved: this.marker.reserved, clean: false })
    if (this.pending.size === 0) return
    await this.write([...this.pending.values()], false)
    this.pending.clear()
    this.scheduleSync()
  }

  private scheduleSync(): void {
    if (this.syncTimer || this.closed) return
    this.syncTimer = setTimeout(() => {
      this.syncTimer = undefined
      this.enqueue(() => this.syncNow()).catch(() => {
        // A write failure has already put the journal in its fault state and told the listeners.
      })
    }, this.readingSyncMs)
    this.syncTimer.unref()
  }

  private scheduleCheckpoint(): void {
    if (this.checkpointTimer || this.closed) return
    this.checkpointTimer = setTimeout(() => {
      this.checkpointTimer = undefined
      this.enqueue(() => this.checkpointNow()).catch(() => {
        // A write failure has already put the journal in its fault state and told the listeners.
      })
    }, this.checkpointMs)
    this.checkpointTimer.unref()
  }

  /**
   * Flush and close. `clean: true` records that this run stopped cleanly (the
   * engine has closed its sessions with `reboot`); otherwise the next open
   * reports previousCleanShutdown = false.
   */
  async close(opts: { clean: boolean }): Promise<void> {
    if (this.closed) return
    try {
      await this.enqueue(async () => {
        await this.flushNow(
          opts.clean ? [{ type: 'del', key: K.META_RUNNING }] : [{ type: 'put', key: K.META_SYNC, value: String(++this.syncCounter) }],
        )
        // Everything is fsynced: the marker may say exactly where the log ends.
        if (this.marker !== undefined) await this.writeSeqMarker({ reserved: this.marker.reserved, clean: opts.clean })
      }).catch(() => {})
    } finally {
      this.closed = true
      this.clearTimers()
      if (this.owned) await this.db.close()
    }
  }

  // ---------------------------------------------------------------- retention

  /**
   * Delete what retention allows: records the cloud acknowledged whose `ts` is
   * older than retentionDays (never an unacknowledged one, never the head,
   * always a prefix so the held range stays contiguous), with them the readings
   * of the sessions their session.ended records bill (a billing record and its
   * evidence go together), and command results older than retentionDays.
   */
  async compact(): Promise<CompactionResult> {
    const result: CompactionResult = { records: 0, readings: 0, commands: 0, oldest: this.oldest() }
    const cutoff = this.opts.now() - this.retentionMs
    // Records, with the readings of the sessions they bill: chunked, each chunk its own queued task so commits interleave.
    for (;;) {
      const n = await this.enqueue(async () => {
        this.assertWritable()
        const limitSeq = Math.min(this.ackedSeq, this.headSeq - 1)
        if (this.oldestSeq > limitSeq) return 0
        const ops: Op[] = []
        const sessions: string[] = []
        let next = this.oldestSeq
        for await (const [key, value] of this.db.iterator({ gte: K.recordKey(this.oldestSeq), lte: K.recordKey(limitSeq), limit: COMPACT_CHUNK })) {
          const r = parseJson<JournalRecord>(this.location, key, value)
          const t = Date.parse(r.ts)
          if (!(t < cutoff)) break
          ops.push({ type: 'del', key })
          if (r.type === 'session.ended') sessions.push(r.sessionId)
          next = r.seq + 1
        }
        if (ops.length === 0) return 0
        // Readings first: a crash in between leaves the records, and the next run deletes them (and nothing else).
        let readings: Op[] = []
        for (const sessionId of sessions) {
          for await (const key of this.db.keys(K.prefixRange(K.readingPrefix(sessionId)))) {
            readings.push({ type: 'del', key })
            if (readings.length >= COMPACT_CHUNK) {
              await this.write(readings, false)
              result.readings += readings.length
              readings = []
            }
          }
        }
        if (readings.length > 0) await this.write(readings, false)
        result.readings += readings.length
        // Fsynced: a record deletion must never survive a power cut while an earlier one is lost (a hole in the log).
        await this.write(ops, true)
        this.oldestSeq = next
        return ops.length
      })
      result.records += n
      if (n < COMPACT_CHUNK) break
    }
    // Command results: a replay of an id older than retention is treated as new (documented).
    result.commands += await this.enqueue(async () => {
      this.assertWritable()
      const ops: Op[] = []
      for await (const [key, value] of this.db.iterator(K.COMMANDS)) {
        const { at } = parseJson<{ at: number }>(this.location, key, value)
        if (at < cutoff) ops.push({ type: 'del', key })
      }
      if (ops.length > 0) await this.write(ops, false)
      return ops.length
    })
    await this.flush()
    result.oldest = this.oldest()
    return result
  }

  private startCompactTimer(): void {
    const every = this.opts.compactEveryMs ?? 3_600_000
    if (every <= 0) return
    this.compactTimer = setInterval(() => {
      if (this.failure || this.closed) return
      this.compact().catch(() => {
        // A write failure has already put the journal in its fault state and told the listeners.
      })
    }, every)
    this.compactTimer.unref()
  }

  // ---------------------------------------------------------------- plumbing

  private enqueue<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task)
    this.queue = run.catch(() => {})
    return run
  }

  private assertOpen(): void {
    if (this.closed) throw new OutpostError('JOURNAL_CLOSED', `the journal at ${this.location} is closed`)
  }

  private assertWritable(): void {
    this.assertOpen()
    if (this.failure) throw this.failure
  }

  /** The only place that writes. A failure stops all further writes until the journal is reopened. */
  private async write(ops: Op[], sync: boolean): Promise<void> {
    this.assertWritable()
    try {
      // `sync` is classic-level's option (not in abstract-level's types); abstract-level passes it through to _batch.
      await this.db.batch(ops, { sync } as { keyEncoding?: string })
    } catch (err) {
      this.fail(err)
    }
    if (sync) {
      // One fsync covers every write before it (LevelDB's log is append-only).
      this.unsynced = false
    } else {
      // Readings, checkpoints and retention deletes: in the kernel's hands (safe from a process death), fsynced later.
      this.unsynced = true
    }
  }

  /** A failed write (LevelDB's or the seq marker's): the journal refuses every further write until reopened. */
  private fail(err: unknown): never {
    const e = err as { code?: string; message?: string; cause?: { code?: string; message?: string } }
    const why = [e.code, e.message, e.cause?.code, e.cause?.message].filter(Boolean).join(': ')
    this.failure = new OutpostError(
      'JOURNAL_WRITE_FAILED',
      `journal write failed (${why}); the journal refuses further writes until the daemon restarts. Nothing already committed was changed`,
      { cause: err },
    )
    this.clearTimers()
    for (const l of this.faultListeners) {
      try {
        l(this.failure)
      } catch {
        // keep telling the others
      }
    }
    throw this.failure
  }

  private clearTimers(): void {
    if (this.syncTimer) clearTimeout(this.syncTimer)
    this.syncTimer = undefined
    if (this.checkpointTimer) clearTimeout(this.checkpointTimer)
    this.checkpointTimer = undefined
    if (this.compactTimer) clearInterval(this.compactTimer)
    this.compactTimer = undefined
  }
}
