/**
 * The last few billed sessions, newest first, for GET /api/sessions and the
 * status page, without reading the journal forward from seq 1.
 *
 * A small ring of `session.ended` records: filled once, lazily on the first
 * request (never at start, so a 1,000,000-record journal does not slow the boot),
 * by reading the journal BACKWARD from its head in chunks until the ring is full
 * or `scanLimit` records were looked at; kept current from the daemon's `record`
 * events, which are subscribed before the backward read so nothing committed
 * meanwhile is missed (duplicates are dropped by seq).
 */
import type { JournalRecord } from '../../core/types.js'
import type { Daemon } from '../daemon.js'

export type EndedRecord = Extract<JournalRecord, { type: 'session.ended' }>

export interface RecentSessionsOptions {
  /** Ring size: the most a request can get. */
  capacity?: number
  /** Records looked at by the backward fill at most (a journal of faults and nothing else stops here). */
  scanLimit?: number
  /** Records per backward read. */
  chunk?: number
}

export class RecentSessions {
  readonly capacity: number
  private readonly scanLimit: number
  private readonly chunk: number
  /** Newest first. */
  private ring: EndedRecord[] = []
  /** Records that arrived by event while the backward fill was running. */
  private live: EndedRecord[] = []
  private filled: Promise<void> | undefined
  private ready = false
  private readonly onRecord = (r: JournalRecord): void => {
    if (r.type !== 'session.ended') return
    if (!this.filled) return // the backward fill will find it
    this.live.push(r)
    if (this.ready) this.merge()
  }

  constructor(
    private readonly daemon: Daemon,
    opts: RecentSessionsOptions = {},
  ) {
    this.capacity = opts.capacity ?? 200
    this.scanLimit = opts.scanLimit ?? 50_000
    this.chunk = opts.chunk ?? 500
    daemon.on('record', this.onRecord)
  }

  close(): void {
    this.daemon.off('record', this.onRecord)
  }

  /** The newest `limit` sessions (at most `capacity`), newest first. */
  async recent(limit: number): Promise<EndedRecord[]> {
    this.filled ??= this.fill().catch((err: unknown) => {
      this.filled = undefined // try again on the next request
      this.live = []
      throw err
    })
    await this.filled
    return this.ring.slice(0, Math.min(limit, this.capacity))
  }

  private async fill(): Promise<void> {
    const journal = this.daemon.records
    if (!journal) return
    const found: EndedRecord[] = []
    let to = journal.head()
    let scanned = 0
    while (to >= 1 && found.length < this.capacity && scanned < this.scanLimit) {
      const batch = await journal.readBackward(to, Math.min(this.chunk, this.scanLimit - scanned))
      if (batch.length === 0) break
      for (const r of batch) if (r.type === 'session.ended' && found.length < this.capacity) found.push(r)
      scanned += batch.length
      to = batch[batch.length - 1]!.seq - 1
    }
    this.ring = found
    this.ready = true
    this.merge()
  }

  private merge(): void {
    if (this.live.length === 0) return
    const seen = new Set(this.ring.map((r) => r.seq))
    const fresh = this.live.filter((r) => !seen.has(r.seq))
    this.live = []
    this.ring = [...fresh, ...this.ring].sort((a, b) => b.seq - a.seq).slice(0, this.capacity)
  }
}
