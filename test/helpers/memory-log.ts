/**
 * An in-memory RecordLog for the uplink's tests: same contract as core/types.ts
 * RecordLog (test/record-log.test.ts runs one contract suite against it and the
 * Journal), records hashed exactly as the contract says (SHA-256 of RFC 8785
 * canonical JSON without `hash`).
 * Reads are asynchronous like LevelDB's so ordering bugs show up here too.
 */
import { createHash } from 'node:crypto'
import canonicalize from 'canonicalize'
import type { CommandResult, JournalRecord, RecordBody, RecordLog } from '../../core/types.js'
import { OutpostError } from '../../daemon/errors.js'

export class MemoryLog implements RecordLog {
  private records: JournalRecord[] = [] // records[i].seq === first + i
  private first = 1
  private ackedSeq = 0
  private lastHash = '0'.repeat(64)
  private listeners = new Set<(head: number) => void>()
  private ledger = new Map<string, CommandResult>()
  readonly ackCalls: number[] = []

  constructor(
    readonly bootId = 'boot-test',
    private clockSynced = true,
  ) {}

  head(): number {
    return this.first + this.records.length - 1
  }
  acked(): number {
    return this.ackedSeq
  }
  oldest(): number {
    return this.first
  }
  async read(from: number, limit: number): Promise<JournalRecord[]> {
    await new Promise((r) => setImmediate(r))
    if (from < this.first) throw new OutpostError('JOURNAL_COMPACTED', `records before seq ${this.first} were compacted`)
    const i = from - this.first
    return this.records.slice(i, i + limit)
  }
  async ack(upTo: number): Promise<void> {
    this.ackCalls.push(upTo)
    await new Promise((r) => setImmediate(r))
    const v = Math.min(upTo, this.head())
    if (v > this.ackedSeq) this.ackedSeq = v
  }
  onAppend(listener: (head: number) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  /** Appends bodies as the journal would (seq, bootId, clockSynced, prev, hash) and notifies. */
  append(bodies: RecordBody[]): JournalRecord[] {
    const out: JournalRecord[] = []
    for (const body of bodies) {
      const rec = { ...body, seq: this.head() + 1, bootId: this.bootId, clockSynced: this.clockSynced, prev: this.lastHash } as Omit<
        JournalRecord,
        'hash'
      >
      const hash = createHash('sha256').update(canonicalize(rec)!, 'utf8').digest('hex')
      const full = { ...rec, hash } as JournalRecord
      this.records.push(full)
      this.lastHash = hash
      out.push(full)
    }
    const head = this.head()
    for (const l of this.listeners) l(head)
    return out
  }

  /** Drops records up to `upTo` (only acknowledged ones, as the journal's retention does). */
  compact(upTo: number = this.ackedSeq): void {
    const n = Math.min(upTo, this.ackedSeq) - this.first + 1
    if (n <= 0) return
    this.records.splice(0, n)
    this.first += n
  }

  /** The command ledger side (Journal.commandResult / commit({commandResults})). */
  async commandResult(id: string): Promise<CommandResult | undefined> {
    await new Promise((r) => setImmediate(r))
    return this.ledger.get(id)
  }
  storeCommandResult(result: CommandResult): void {
    if (!this.ledger.has(result.id)) this.ledger.set(result.id, result)
  }
}

/** A realistic billing record body (about 700 bytes as JSON), varied by i. */
export function sessionEndedBody(i: number): RecordBody {
  const start = Date.UTC(2026, 0, 1) + i * 60_000
  const iso = (ms: number) => new Date(ms).toISOString()
  return {
    type: 'session.ended',
    ts: iso(start + 3_600_000),
    sessionId: `s-${i}`,
    outlet: `A${(i % 8) + 1}`,
    userId: `u-${i % 97}`,
    planId: 'standard',
    trigger: i % 3 === 0 ? 'auto-start' : 'activation',
    startedAt: iso(start),
    endedAt: iso(start + 3_600_000),
    reason: 'unplugged',
    durationS: 3600,
    energyWh: 7200 + (i % 1000) / 10,
    meterStartWh: 100000 + i * 7200,
    meterEndWh: 107200 + i * 7200,
    currency: 'CAD',
    lines: [{ from: iso(start), to: iso(start + 3_600_000), energyWh: 7200, seconds: 3600, perKwh: 0.15, perHour: 0.5, amountMicros: 1_580_000 }],
    activationFee: 50,
    total: 208,
    offline: false,
    pausedS: 0,
  }
}

/** The smallest well-formed billing record, for tests where only its session and time matter. */
export function tinySessionEnded(sessionId: string, at: number, startedAt = at): Extract<RecordBody, { type: 'session.ended' }> {
  return {
    type: 'session.ended',
    ts: new Date(at).toISOString(),
    sessionId,
    outlet: 'A1',
    userId: 'u',
    planId: 'p',
    trigger: 'activation',
    startedAt: new Date(startedAt).toISOString(),
    endedAt: new Date(at).toISOString(),
    reason: 'unplugged',
    durationS: 1,
    energyWh: 1,
    meterStartWh: 1,
    meterEndWh: 2,
    currency: 'CAD',
    lines: [],
    activationFee: 0,
    total: 0,
    offline: false,
    pausedS: 0,
  }
}

export function bodies(n: number, offset = 0): RecordBody[] {
  return Array.from({ length: n }, (_, k) => sessionEndedBody(offset + k))
}
