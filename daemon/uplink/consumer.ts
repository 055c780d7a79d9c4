/**
 * The reconciling consumer: a cloud-side reference client of the uplink. It is
 * what `outpost reconcile` runs for an operator checking a site, and what the
 * tests use as "the cloud".
 *
 * Owns: subscribing to P/records, P/status and its own pull answers;
 * de-duplicating by seq; holding records that arrive ahead of a gap and pulling
 * the gap; verifying seq and the hash chain of every record before it is kept;
 * appending kept records to a JSON-lines file, fsyncing, and only then acking
 * (P/ack {"upTo"}); resuming from that file after a restart.
 *
 * Must never: ack a record it has not durably written; write a record out of
 * order or one that breaks the chain (it stops advancing and reports the break
 * instead); hold more than `maxPending` records ahead of a gap in memory.
 */
import { randomBytes } from 'node:crypto'
import { createReadStream, existsSync } from 'node:fs'
import { open, stat, type FileHandle } from 'node:fs/promises'
import { createInterface } from 'node:readline'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import pino, { type Logger } from 'pino'
import type { JournalRecord, PullAnswer } from '../../core/types.js'
import { OutpostError } from '../errors.js'
import { authOptions, safeUrl, type BrokerAuth } from './connection.js'
import { topics, type Topics } from './topics.js'
import { CHAIN_START, isRecordShape, verifyChain, type ChainBreak, type ChainPoint } from './chain.js'

/** Messages handled per write+fsync+ack round at most. */
const ACK_EVERY_MESSAGES = 1

export interface ConsumerOptions extends BrokerAuth {
  url: string
  siteId: string
  prefix?: string
  /** JSON-lines file of the reconciled log; created if missing, resumed if present. */
  file: string
  clientId?: string
  logger?: Logger
  /** Records per pull request. Default 1000 (the uplink's maximum). */
  pullLimit?: number
  /** Pull when the site's head is ahead and nothing has progressed for this long. Default 2000 ms. */
  gapWaitMs?: number
  /** A pull with no answer for this long is asked again. Default 10000 ms. */
  pullTimeoutMs?: number
  /** Records kept in memory ahead of a gap at most; more are dropped (the gateway sends them again). Default 50000. */
  maxPending?: number
  /** Whether to ack at all (false: a passive observer). Default true. */
  ack?: boolean
  /**
   * Called with the records just made durable in `file` (in order, after its fsync, before the
   * ack). A throw is logged and does not stop the consumer: what it derives must be rebuildable
   * from `file` (reconcile --cdr rebuilds its CDR file at start).
   */
  onHeld?: (records: JournalRecord[]) => void | Promise<void>
}

export interface ConsumerStats {
  /** Messages on P/records. */
  batches: number
  /** Records received (live and pulled), duplicates included. */
  received: number
  /** Received records at or below what was already held. */
  duplicates: number
  /** Pull requests sent. */
  pulls: number
  /** Acks published. */
  acks: number
  /** fsyncs of the output file. */
  syncs: number
}

export class ReconcilingConsumer {
  private readonly t: Topics
  private readonly logger: Logger
  private readonly pullLimit: number
  private readonly gapWaitMs: number
  private readonly pullTimeoutMs: number
  private readonly maxPending: number
  private client?: MqttClient
  private fh?: FileHandle
  /** Bytes of the output file that hold verified, fsynced records. */
  private fileBytes = 0
  private end: ChainPoint = CHAIN_START
  private readonly pending = new Map<number, JournalRecord>()
  private incoming: { kind: 'records' | 'pull'; payload: Buffer }[] = []
  private working = false
  private siteHead = 0
  private lastProgressAt = Date.now()
  private pull?: { requestId: string; at: number }
  private pullSeq = 0
  /** The last pull answer said there is more: ask for the next page without waiting. */
  private pullNow = false
  /** Pull once right after connecting: the answer's head is the gateway's own, fresher than a retained status. */
  private probe = false
  private headFromGateway = false
  private readonly pullPrefix = `rc${randomBytes(4).toString('hex')}`
  private tick?: NodeJS.Timeout
  private breakInfo?: ChainBreak
  private compactedBefore?: number
  private readonly progressListeners = new Set<(held: number) => void>()
  private idle: Promise<void> = Promise.resolve()
  private resolveIdle?: () => void
  readonly stats: ConsumerStats = { batches: 0, received: 0, duplicates: 0, pulls: 0, acks: 0, syncs: 0 }

  constructor(private readonly opts: ConsumerOptions) {
    this.t = topics(opts.prefix ?? 'outpost', opts.siteId)
    this.logger = (opts.logger ?? pino({ level: 'silent' })).child({ module: 'reconcile' })
    this.pullLimit = opts.pullLimit ?? 1000
    this.gapWaitMs = opts.gapWaitMs ?? 2000
    this.pullTimeoutMs = opts.pullTimeoutMs ?? 10_000
    this.maxPending = opts.maxPending ?? 50_000
  }

  /** Last seq held durably (gapless from 1, chain verified). */
  held(): number {
    return this.end.seq
  }
  /** Hash of the last held record. */
  heldHash(): string {
    return this.end.hash
  }
  /** The site's head as last seen (P/status or the highest seq received). */
  head(): number {
    return this.siteHead
  }
  /** Whether head() comes from a pull answer on the current run (the gateway's live head), not just the file or a retained status. */
  headConfirmed(): boolean {
    return this.headFromGateway
  }
  /** The first chain break seen, if any: nothing after it is kept or acked. */
  chainBreak(): ChainBreak | undefined {
    return this.breakInfo
  }
  /** When the gateway answered a pull with "compacted": the oldest seq it still holds. Records before it cannot be reconciled. */
  compacted(): number | undefined {
    return this.compactedBefore
  }
  onProgress(listener: (held: number) => void): () => void {
    this.progressListeners.add(listener)
    return () => this.progressListeners.delete(listener)
  }

  /** Resumes from the file (verifying it), then connects. Throws OutpostError('RECONCILE_FILE') if the file's own chain is broken. */
  async start(): Promise<void> {
    await this.resume()
    this.fh = await open(this.opts.file, 'a')
    const options: IClientOptions = {
      clientId: this.opts.clientId ?? `outpost-reconcile-${this.opts.siteId}-${randomBytes(3).toString('hex')}`,
      protocolVersion: 4,
      clean: true,
      reconnectPeriod: 1000,
      connectTimeout: 15_000,
      ...authOptions(this.opts),
    }
    const client = mqtt.connect(this.opts.url, options)
    this.client = client
    client.on('connect', () => {
      this.logger.info({ url: safeUrl(this.opts.url), held: this.end.seq }, 'connected')
      client.subscribe([this.t.records, this.t.status, `${this.t.pull}/+`], { qos: 1 }, (err) => {
        if (err) this.logger.warn({ err: { message: err.message } }, 'subscribe failed')
        else this.logger.info({ site: this.opts.siteId }, 'subscribed')
        this.probe = true
        this.maybePull()
      })
      // Tell the gateway what we hold: it may have records we lost (an empty file) or we may hold more than it knows.
      if (this.end.seq > 0) this.sendAck()
    })
    client.on('error', (err) => this.logger.warn({ err: { message: err.message } }, 'broker connection error'))
    client.on('message', (topic, payload) => this.onMessage(topic, payload))
    this.tick = setInterval(() => this.maybePull(), Math.max(100, Math.floor(this.gapWaitMs / 4)))
  }

  async stop(): Promise<void> {
    clearInterval(this.tick)
    const client = this.client
    this.client = undefined
    if (client) await client.endAsync(true).catch(() => undefined)
    await this.idle
    await this.fh?.close()
    this.fh = undefined
  }

  private async resume(): Promise<void> {
    if (!existsSync(this.opts.file)) return
    let end = CHAIN_START
    let goodBytes = 0
    let bytes = 0
    let lineNo = 0
    let torn = false
    const rl = createInterface({ input: createReadStream(this.opts.file), crlfDelay: Infinity })
    for await (const line of rl) {
      lineNo++
      const lineBytes = Buffer.byteLength(line) + 1
      if (torn) throw new OutpostError('RECONCILE_FILE', `${this.opts.file}:${lineNo - 1}: not a JSON record (and not the last line)`)
      if (line.trim() === '') {
        bytes += lineBytes
        goodBytes = bytes
        continue
      }
      let rec: unknown
      try {
        rec = JSON.parse(line)
      } catch {
        // Only a torn last line (a crash mid-append) is forgiven; it is cut off below.
        torn = true
        bytes += lineBytes
        continue
      }
      const r = verifyChain([rec], end)
      if (!r.ok) throw new OutpostError('RECONCILE_FILE', `${this.opts.file}:${lineNo}: ${r.break.message}`)
      end = r.end
      bytes += lineBytes
      goodBytes = bytes
    }
    if (torn) {
      const fh = await open(this.opts.file, 'r+')
      await fh.truncate(goodBytes)
      await fh.sync()
      await fh.close()
      this.logger.warn({ file: this.opts.file, keptBytes: goodBytes }, 'cut a torn last line')
    }
    // A record cut just before its newline parses fine but must not have the next one glued to it.
    const size = (await stat(this.opts.file)).size
    if (size === goodBytes - 1) {
      const fh = await open(this.opts.file, 'a')
      await fh.write('\n')
      await fh.sync()
      await fh.close()
    }
    this.end = end
    this.fileBytes = goodBytes
    this.siteHead = Math.max(this.siteHead, end.seq)
  }

  private onMessage(topic: string, payload: Buffer): void {
    if (topic === this.t.records) {
      this.stats.batches++
      this.enqueue('records', payload)
    } else if (topic === this.t.status) {
      try {
        const s = JSON.parse(payload.toString()) as { head?: unknown; online?: unknown }
        if (typeof s.head === 'number' && Number.isSafeInteger(s.head) && s.head > this.siteHead) this.siteHead = s.head
        if (s.online === true) {
          // The gateway (re)connected: it answers pulls now. A pull sent while it was away is lost, so
          // ask again at once instead of waiting for that pull to time out.
          this.pull = undefined
          this.probe = true
          this.maybePull()
        }
      } catch {
        this.logger.warn('malformed status')
      }
    } else if (topic.startsWith(`${this.t.pull}/${this.pullPrefix}-`)) {
      this.enqueue('pull', payload)
    }
  }

  private enqueue(kind: 'records' | 'pull', payload: Buffer): void {
    this.incoming.push({ kind, payload })
    if (!this.working) {
      this.working = true
      this.idle = new Promise((r) => (this.resolveIdle = r))
      void this.work()
    }
  }

  /** Takes everything queued, keeps what continues the chain, writes it with one fsync, then acks once. */
  private async work(): Promise<void> {
    try {
      while (this.incoming.length > 0) {
        // Up to ACK_EVERY_MESSAGES per write+fsync+ack: acking often keeps the gateway's window sliding
        // instead of draining it to empty and refilling (stop-and-wait at window size).
        const batch = this.incoming.splice(0, ACK_EVERY_MESSAGES)
        let sawRecords = false
        for (const m of batch) {
          const records = m.kind === 'records' ? this.parseRecords(m.payload) : this.parsePullAnswer(m.payload)
          if (m.kind === 'records') sawRecords = true
          for (const r of records) this.accept(r)
        }
        const { lines, records, end } = this.drain()
        if (lines.length > 0) {
          if (!this.fh) return
          const text = lines.join('')
          try {
            await this.fh.write(text)
            await this.fh.sync()
          } catch (err) {
            // Nothing of this round is held: cut any partial write so the file stays a clean prefix,
            // and leave `end` where it was; the records come again (resend or pull) since they were never acked.
            await this.fh.truncate(this.fileBytes).catch(() => undefined)
            throw err
          }
          this.fileBytes += Buffer.byteLength(text)
          this.end = end
          this.stats.syncs++
        }
        if (lines.length > 0 && this.opts.onHeld) {
          try {
            await this.opts.onHeld(records)
          } catch (err) {
            this.logger.error({ err }, 'the onHeld hook failed; the records are held and acked all the same')
          }
        }
        if (lines.length > 0) {
          this.lastProgressAt = Date.now()
          for (const l of this.progressListeners) l(this.end.seq)
        }
        // Ack after every delivery, duplicates included: a lost ack is then repaired by the next resend.
        if ((sawRecords || lines.length > 0) && this.end.seq > 0) this.sendAck()
        this.maybePull()
      }
    } catch (err) {
      this.incoming = []
      this.logger.error({ err }, 'writing the reconciled log failed; not acking (the gateway will send again)')
    } finally {
      this.working = false
      this.resolveIdle?.()
    }
  }

  private parseRecords(payload: Buffer): unknown[] {
    try {
      const v = JSON.parse(payload.toString()) as unknown
      if (Array.isArray(v)) return v
    } catch {
      // fall through
    }
    this.logger.warn({ bytes: payload.length }, 'P/records payload is not a JSON array; ignored')
    return []
  }

  private parsePullAnswer(payload: Buffer): unknown[] {
    let a: PullAnswer
    try {
      a = JSON.parse(payload.toString()) as PullAnswer
    } catch {
      return []
    }
    if (this.pull && a.requestId === this.pull.requestId) this.pull = undefined
    if (typeof a.head === 'number') {
      if (a.head > this.siteHead) this.siteHead = a.head
      this.headFromGateway = true
    }
    if (a.next !== null && a.next !== undefined) this.pullNow = true
    if (a.error) {
      if (a.error.code === 'compacted' && typeof a.error.oldest === 'number') {
        this.compactedBefore = a.error.oldest
        this.logger.error(
          { oldest: a.error.oldest, held: this.end.seq },
          'the gateway compacted records this log does not hold; cannot reconcile past the gap',
        )
      } else {
        this.logger.warn({ error: a.error }, 'pull refused')
      }
      return []
    }
    return Array.isArray(a.records) ? a.records : []
  }

  private accept(r: unknown): void {
    this.stats.received++
    if (!isRecordShape(r)) return
    if (r.seq > this.siteHead) this.siteHead = r.seq
    if (r.seq <= this.end.seq) {
      this.stats.duplicates++
      return
    }
    if (this.pending.has(r.seq)) {
      this.stats.duplicates++
      return
    }
    if (this.pending.size >= this.maxPending) return
    this.pending.set(r.seq, r)
  }

  /** Takes the contiguous run after `end` out of pending, verifying each; returns the lines to write and where the chain would then end. */
  private drain(): { lines: string[]; records: JournalRecord[]; end: ChainPoint } {
    const lines: string[] = []
    const records: JournalRecord[] = []
    let end = this.end
    if (this.breakInfo) return { lines, records, end }
    for (;;) {
      const next = this.pending.get(end.seq + 1)
      if (!next) break
      this.pending.delete(next.seq)
      const r = verifyChain([next], end)
      if (!r.ok) {
        this.breakInfo = r.break
        this.logger.error({ break: r.break }, 'chain break: not keeping or acking anything past it')
        break
      }
      end = r.end
      lines.push(JSON.stringify(next) + '\n')
      records.push(next)
    }
    return { lines, records, end }
  }

  private sendAck(): void {
    if (this.opts.ack === false || !this.client?.connected) return
    this.stats.acks++
    this.client.publish(this.t.ack, JSON.stringify({ upTo: this.end.seq }), { qos: 1 })
  }

  /** Pulls [held+1, ...] when the site is ahead and nothing progressed for gapWaitMs, or records wait behind a gap. */
  private maybePull(): void {
    const client = this.client
    if (!client?.connected || this.breakInfo) return
    const now = Date.now()
    if (this.pull && now - this.pull.at < this.pullTimeoutMs) return
    const from = this.end.seq + 1
    if (this.compactedBefore !== undefined && from < this.compactedBefore) return
    let ahead = 0
    for (const s of this.pending.keys()) if (s > from && (ahead === 0 || s < ahead)) ahead = s
    const behind = this.siteHead >= from
    if (!behind && ahead === 0 && !this.probe) return
    if (!this.pullNow && !this.probe && now - this.lastProgressAt < this.gapWaitMs) return
    this.pullNow = false
    const probing = this.probe && !behind && ahead === 0
    this.probe = false
    const to = probing ? undefined : ahead > 0 ? ahead - 1 : this.siteHead
    const requestId = `${this.pullPrefix}-${++this.pullSeq}`
    this.pull = { requestId, at: now }
    this.stats.pulls++
    this.lastProgressAt = now // one pull per wait, not one per tick
    client.publish(this.t.pull, JSON.stringify({ requestId, from, ...(to !== undefined ? { to } : {}), limit: this.pullLimit }), { qos: 1 })
  }
}
