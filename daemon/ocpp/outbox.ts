/**
 * The OCPP transaction outbox, kept in the journal's LevelDB beside the records
 * it is derived from (keys `x!ocpp!…`, docs/journal.md).
 *
 *   cursor          the last journal seq turned into transaction messages
 *   q!<n:12>        a queued StartTransaction / StopTransaction / MeterValues, with its message id
 *   c!<key>         {value, file}: a configuration key the central system changed (ChangeConfiguration), with the
 *                   config file's value it replaced (a later edit of that value in the file wins over it)
 *   o!<sessionId>   {sessionId, reason}: the StopTransaction reason the central system's own action gave a session
 *                   (Remote, DeAuthorized), written before that action stops it and deleted with the queued Stop
 *   t!<sessionId>   {sessionId, transactionId, connectorId, meterStart}: what the central system answered the
 *                   session's StartTransaction, with the connector and register it started on (an entry written
 *                   before connectorId was kept has none: the charge point then takes the outlet of the session's
 *                   last journaled reading, and says so in its log)
 *
 * Owns: the order of transaction messages (n, gapless, never reused), each message's id from
 * the moment it is queued (a resend after a crash or a reconnect carries the same id, so the
 * central system can tell a repeat), and the answer that retires it: the message is deleted
 * and the transactionId stored in one fsynced batch. The cursor moves in the batch that
 * queues what the records up to it produced, so a crash never skips or repeats a record.
 *
 * Must never: reorder messages, forget a message before its answer is on disk, or hold a
 * transactionId the central system did not give (no `-1`).
 */
import { randomUUID } from 'node:crypto'
import type { Journal } from '../journal/index.js'
import { escapeId } from '../journal/keys.js'

export type TransactionAction = 'StartTransaction' | 'StopTransaction' | 'MeterValues'

export interface Queued {
  n: number
  /** The OCPP message id, fixed when queued. */
  msgId: string
  action: TransactionAction
  sessionId: string
  connectorId: number
  /** The payload, without transactionId for Stop / MeterValues (added when sent). */
  payload: Record<string, unknown>
  /** A start the gateway began itself (not the central system's remote start): Authorize it first while it is open. */
  authorize?: boolean
}

const OWNER = 'ocpp'
const pad = (n: number): string => String(n).padStart(12, '0')

export class Outbox {
  private readonly queue: Queued[] = []
  private readonly tx = new Map<string, number>()
  /** Sessions whose StartTransaction was queued (answered or not): only they get Stop and MeterValues. */
  private readonly started = new Set<string>()
  /** Sessions whose StopTransaction was queued (answered or not): their transaction is closed. */
  private readonly stopped = new Set<string>()
  /** What the outbox knows of each started session: its connector and meterStart (Wh), from its StartTransaction. */
  private readonly known = new Map<string, { connectorId?: number; meterStart?: number }>()
  /** Configuration keys the central system changed: key → the value, and the config file's value it replaced. */
  readonly settings = new Map<string, { value: string; file: string }>()
  /** Stop reasons the central system's own action gave, by session, until its StopTransaction is queued. */
  readonly overrides = new Map<string, string>()
  private next = 1
  private cursorSeq = 0
  /** Answers waiting for their write, and the write in progress. */
  private readonly retired: { key: string; value: string | null }[] = []
  private flushing: Promise<void> = Promise.resolve()

  private constructor(private readonly journal: Journal) {}

  /** Loads the outbox; a journal that never had one starts at its current head (older sessions were never the central system's). */
  static async open(journal: Journal): Promise<Outbox> {
    const o = new Outbox(journal)
    let cursor: number | undefined
    for (const [key, value] of await journal.asideRead(OWNER)) {
      if (key === 'cursor') cursor = Number(value)
      else if (key.startsWith('q!')) {
        const q = JSON.parse(value) as Queued
        o.queue.push(q)
        o.note(q)
        o.next = Math.max(o.next, q.n + 1)
      } else if (key.startsWith('t!')) {
        const v = JSON.parse(value) as { sessionId: string; transactionId: number; connectorId?: number; meterStart?: number }
        o.tx.set(v.sessionId, v.transactionId)
        o.started.add(v.sessionId)
        o.known.set(v.sessionId, {
          ...o.known.get(v.sessionId),
          ...(typeof v.connectorId === 'number' ? { connectorId: v.connectorId } : {}),
          ...(typeof v.meterStart === 'number' ? { meterStart: v.meterStart } : {}),
        })
      } else if (key.startsWith('c!')) {
        const v = JSON.parse(value) as { value: string; file: string }
        o.settings.set(key.slice(2), v)
      } else if (key.startsWith('o!')) {
        const v = JSON.parse(value) as { sessionId: string; reason: string }
        o.overrides.set(v.sessionId, v.reason)
      } else if (key === 'next') o.next = Math.max(o.next, Number(value))
    }
    o.queue.sort((a, b) => a.n - b.n)
    if (cursor === undefined) {
      cursor = journal.head()
      await journal.asideWrite(OWNER, [{ key: 'cursor', value: String(cursor) }])
    }
    o.cursorSeq = cursor
    return o
  }

  get cursor(): number {
    return this.cursorSeq
  }

  get size(): number {
    return this.queue.length
  }

  first(): Queued | undefined {
    return this.queue[0]
  }

  transactionId(sessionId: string): number | undefined {
    return this.tx.get(sessionId)
  }

  sessionOf(transactionId: number): string | undefined {
    for (const [s, t] of this.tx) if (t === transactionId) return s
    return undefined
  }

  hasStart(sessionId: string): boolean {
    return this.started.has(sessionId)
  }

  /**
   * Transactions the outbox started and never stopped (StartTransaction queued or answered, no
   * StopTransaction queued): each with its connector and meterStart when the outbox knows them.
   */
  openTransactions(): { sessionId: string; connectorId?: number; meterStart?: number }[] {
    return [...this.started].filter((s) => !this.stopped.has(s)).map((sessionId) => ({ sessionId, ...this.known.get(sessionId) }))
  }

  private note(q: Queued): void {
    if (q.action === 'StartTransaction') {
      this.started.add(q.sessionId)
      const meterStart = q.payload.meterStart
      this.known.set(q.sessionId, { connectorId: q.connectorId, ...(typeof meterStart === 'number' ? { meterStart } : {}) })
    } else {
      this.started.add(q.sessionId)
      if (q.action === 'StopTransaction') this.stopped.add(q.sessionId)
    }
  }

  /** Keeps a configuration key the central system changed (fsynced before it is answered Accepted); null: back to the file's. */
  async saveSetting(key: string, setting: { value: string; file: string } | null): Promise<void> {
    await this.journal.asideWrite(OWNER, [{ key: `c!${key}`, value: setting ? JSON.stringify(setting) : null }])
    if (setting) this.settings.set(key, setting)
    else this.settings.delete(key)
  }

  /** Keeps the stop reason the central system's action gives a session (fsynced before the action stops it); null: forgotten. */
  async saveOverride(sessionId: string, reason: string | null): Promise<void> {
    await this.journal.asideWrite(OWNER, [{ key: `o!${escapeId(sessionId)}`, value: reason ? JSON.stringify({ sessionId, reason }) : null }])
    if (reason) this.overrides.set(sessionId, reason)
    else this.overrides.delete(sessionId)
  }

  /** Every message still queued, oldest first. */
  messages(): readonly Queued[] {
    return this.queue
  }

  /**
   * Queues messages (in this order) and moves the cursor to `cursor`, in one fsynced batch; the stop reasons of
   * `settled` sessions (their StopTransaction is among the messages, or they ended without one) go in the same batch.
   */
  async enqueue(msgs: Omit<Queued, 'n' | 'msgId'>[], cursor?: number, settled: string[] = []): Promise<void> {
    const entries: { key: string; value: string | null }[] = settled
      .filter((s) => this.overrides.has(s))
      .map((s) => ({ key: `o!${escapeId(s)}`, value: null }))
    const added: Queued[] = []
    let n = this.next
    for (const m of msgs) {
      const q: Queued = { ...m, n, msgId: randomUUID() }
      n++
      added.push(q)
      entries.push({ key: `q!${pad(q.n)}`, value: JSON.stringify(q) })
    }
    // The counter is kept even when the queue empties, so n is never reused.
    if (added.length > 0) entries.push({ key: 'next', value: String(n) })
    if (cursor !== undefined && cursor !== this.cursorSeq) entries.push({ key: 'cursor', value: String(cursor) })
    await this.journal.asideWrite(OWNER, entries)
    this.next = n
    if (cursor !== undefined) this.cursorSeq = Math.max(this.cursorSeq, cursor)
    for (const s of settled) this.overrides.delete(s)
    for (const q of added) {
      this.queue.push(q)
      if (q.action === 'StartTransaction' || q.action === 'StopTransaction') this.note(q)
    }
  }

  /**
   * The first message was answered: it leaves the queue; a StartTransaction's transactionId is
   * kept, a StopTransaction's dropped. The answers are written in order, as many per fsync as
   * have come in meanwhile (group commit); the promise resolves once this one is on disk.
   */
  answered(q: Queued, transactionId?: number): Promise<void> {
    this.retired.push({ key: `q!${pad(q.n)}`, value: null })
    if (q.action === 'StartTransaction' && transactionId !== undefined)
      this.retired.push({
        key: `t!${escapeId(q.sessionId)}`,
        value: JSON.stringify({ sessionId: q.sessionId, transactionId, connectorId: q.connectorId, meterStart: q.payload.meterStart }),
      })
    if (q.action === 'StopTransaction') this.retired.push({ key: `t!${escapeId(q.sessionId)}`, value: null })
    const i = this.queue.findIndex((m) => m.n === q.n)
    if (i >= 0) this.queue.splice(i, 1)
    if (q.action === 'StartTransaction' && transactionId !== undefined) this.tx.set(q.sessionId, transactionId)
    if (q.action === 'StopTransaction') this.tx.delete(q.sessionId)
    const done = this.flushing.then(async () => {
      const entries = this.retired.splice(0)
      if (entries.length > 0) await this.journal.asideWrite(OWNER, entries)
    })
    this.flushing = done.catch(() => undefined)
    return done
  }

  /** Resolves once every answer so far is on disk. */
  settled(): Promise<void> {
    return this.flushing
  }
}
