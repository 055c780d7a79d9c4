/**
 * One ingest worker: an MQTT 5 shared-subscription member that stores every site's
 * records in PostgreSQL, acks each site's verified prefix after the commit that
 * stored it, and pulls gaps that stay open. Any number of workers with the same
 * group split the traffic; any worker may receive any site's records, in any order.
 *
 * Owns: the subscriptions, the per-site ordering of deliveries inside this worker, the
 * batches that store many sites' deliveries in one transaction (cloud/batch.ts),
 * publishing P/ack after commit, the gap pulls under a lease row (one puller per
 * site across workers), keeping `sites` current from P/status, and a clean stop
 * that finishes in-flight transactions.
 * Must never: ack before the commit that stored what it acks, or past the verified
 * prefix; let one site's failure (a bad payload, a database error) stop another's;
 * import the gateway daemon (test/layers.test.ts: only core/ and the shared modules it names).
 */
import { randomBytes } from 'node:crypto'
import type { Server } from 'node:http'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import pg from 'pg'
import pino, { type Logger } from 'pino'
import type { PullAnswer } from '../core/types.js'
import { OutpostError } from '../daemon/errors.js'
import { authOptions, safeUrl, type BrokerAuth } from '../daemon/uplink/connection.js'
import { serveMetrics, WorkerMetrics } from './metrics.js'
import { ensurePartitions, migrate } from './schema.js'
import { type Delivery, storeBatch } from './batch.js'
import { storeRecords, type StoreResult } from './store.js'

export interface IngestOptions extends BrokerAuth {
  url: string
  db: string
  /** The shared-subscription group: workers of one group split the traffic. Default "outpost-ingest". */
  group?: string
  prefix?: string
  /** Site ids to take, `*` and `?` as wildcards. Every worker of a group must use the same pattern. Default "*". */
  sites?: string
  /** This worker's name (in logs, pull request ids and leases). Default a random one. */
  workerId?: string
  logger?: Logger
  /** A gap (head ahead of the verified prefix) with no progress for this long is pulled. Default 3000 ms. */
  gapWaitMs?: number
  /** How long a pull lease holds a site for this worker. Default 10000 ms. */
  leaseMs?: number
  /** Records per pull request. Default 1000 (the gateway's maximum). */
  pullLimit?: number
  /** Database connections of this worker. Default 4. */
  connections?: number
  /** Deliveries received and not yet stored at most; past it the broker connection is not read (the broker holds the rest). Default 2000. */
  maxPending?: number
  /** Where to serve /metrics and /health (port 0: any free one, see metricsPort). Not served when absent. */
  listen?: { host: string; port: number }
  /** Milliseconds since the epoch: which months of `records` to make (at start and every PARTITION_CHECK_MS). Default Date.now. */
  clock?: () => number
}

/** How often a worker makes the coming months' partitions of `records` (schema.ts ensurePartitions): daily. */
const PARTITION_CHECK_MS = 24 * 3600 * 1000

/** Records in one batch's transaction at most (a delivery larger than this goes alone). */
const BATCH_RECORDS = 5000

interface Waiting extends Delivery {
  resolve(r: StoreResult): void
  reject(err: unknown): void
}

/**
 * Whether a database error means the database could not be reached (a restart, a failover, a network
 * cut: worth retrying) rather than refusing what was asked: connection errors, SQLSTATE classes 08
 * (connection exception) and 57P (operator intervention: shutdown, cannot connect now).
 */
export function unreachable(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown }
  const code = typeof e?.code === 'string' ? e.code : ''
  if (/^(08|57P)/.test(code) || ['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH'].includes(code)) return true
  return (
    typeof e?.message === 'string' &&
    /Connection terminated|connection timeout|Client has encountered a connection error|not queryable/i.test(e.message)
  )
}

/** A site id as the gateway's config allows it (config/site.schema.json `$defs.id`); any other is refused. */
export const SITE_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/u

/** The largest message kept whole in rejects' body; a larger one keeps its first bytes (an excerpt) and its size. */
const EXCERPT = 1024

export interface IngestStats {
  messages: number
  stored: number
  duplicates: number
  forks: number
  rejects: number
  malformed: number
  acks: number
  pulls: number
  commits: number
  dbErrors: number
}

/** Whether `id` matches a `--sites` pattern (`*` any run, `?` one character). */
export function siteMatcher(pattern: string): (id: string) => boolean {
  const re = new RegExp(
    `^${pattern
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.')}$`,
    'u',
  )
  return (id) => re.test(id)
}

/** A database URL without its password, for logs and errors. */
export function safeDbUrl(url: string): string {
  try {
    const u = new URL(url)
    u.password = ''
    return u.toString()
  } catch {
    return '(not a URL)'
  }
}

export class IngestWorker {
  readonly stats: IngestStats = {
    messages: 0,
    stored: 0,
    duplicates: 0,
    forks: 0,
    rejects: 0,
    malformed: 0,
    acks: 0,
    pulls: 0,
    commits: 0,
    dbErrors: 0,
  }
  readonly workerId: string
  readonly metrics = new WorkerMetrics()
  /** The port /metrics and /health are served on, once started with `listen`. */
  metricsPort?: number
  private metricsServer?: Server
  private isSubscribed = false
  private readonly logger: Logger
  private readonly group: string
  private readonly prefix: string
  private readonly matches: (id: string) => boolean
  private readonly gapWaitMs: number
  private readonly leaseMs: number
  private readonly pullLimit: number
  private pool?: pg.Pool
  private client?: MqttClient
  /** Per-site chain of deliveries inside this worker (arrival order per site, sites in parallel). */
  private readonly queues = new Map<string, Promise<void>>()
  private tick?: NodeJS.Timeout
  private partitionTick?: NodeJS.Timeout
  private readonly clock: () => number
  private pullSeq = 0
  /** The gap check under way, if any (one at a time; a stop waits for it). */
  private gapCheck?: Promise<void>
  private stopping = false
  private readonly afterCommit = new Set<(site: string, r: StoreResult) => void>()
  /** Deliveries handed to the site queues and not yet finished. */
  private pending = 0
  /** mqtt.js callbacks held back while `pending` is at the limit: each lets it read the next packet. */
  private readonly held: (() => void)[] = []
  /** Deliveries waiting for a batch (at most one per site: the site's queue holds its next until this one commits). */
  private readonly batchQueue: Waiting[] = []
  private batchesRunning = 0
  /** The database did not answer the last attempt (logged once per outage). */
  private dbDown = false
  /** Batches at once: a connection is left for the gap checks and statuses. */
  private readonly maxBatches: number
  private markSubscribed!: () => void
  /** Resolves once the first subscription is in place (the broker delivers to this worker from then on). */
  readonly subscribed: Promise<void> = new Promise((r) => (this.markSubscribed = r))

  constructor(private readonly opts: IngestOptions) {
    this.workerId = opts.workerId ?? `w${randomBytes(4).toString('hex')}`
    this.logger = (opts.logger ?? pino({ level: 'silent' })).child({ module: 'ingest', worker: this.workerId })
    this.group = opts.group ?? 'outpost-ingest'
    this.prefix = opts.prefix ?? 'outpost'
    this.matches = siteMatcher(opts.sites ?? '*')
    this.gapWaitMs = opts.gapWaitMs ?? 3000
    this.leaseMs = opts.leaseMs ?? 10_000
    this.pullLimit = opts.pullLimit ?? 1000
    this.maxBatches = Math.max(1, (opts.connections ?? 4) - 1)
    this.clock = opts.clock ?? Date.now
  }

  /** Called after each committed delivery (tests, metrics). */
  onCommit(fn: (site: string, r: StoreResult) => void): () => void {
    this.afterCommit.add(fn)
    return () => this.afterCommit.delete(fn)
  }

  /** Applies the migrations, then subscribes. Throws when the database cannot be reached or migrated. */
  async start(): Promise<void> {
    const pool = new pg.Pool({ connectionString: this.opts.db, max: this.opts.connections ?? 4 })
    pool.on('error', (err) => this.logger.warn({ err: { message: err.message } }, 'idle database connection failed'))
    this.pool = pool
    try {
      const c = await pool.connect()
      try {
        const version = await migrate(c)
        const made = await ensurePartitions(c, new Date(this.clock()))
        this.logger.info({ schema: version, partitionsMade: made }, 'database ready')
      } finally {
        c.release()
      }
    } catch (err) {
      await pool.end().catch(() => undefined)
      this.pool = undefined
      throw new OutpostError('INGEST_DB', `database ${safeDbUrl(this.opts.db)}: ${(err as Error).message}`, { cause: err })
    }
    const options: IClientOptions = {
      clientId: `outpost-ingest-${this.workerId}`,
      protocolVersion: 5,
      clean: true,
      reconnectPeriod: 1000,
      connectTimeout: 15_000,
      ...authOptions(this.opts),
    }
    const client = mqtt.connect(this.opts.url, options)
    this.client = client
    const share = `$share/${this.group}/${this.prefix}/+`
    client.on('connect', () => {
      this.logger.info({ url: safeUrl(this.opts.url), group: this.group }, 'connected')
      client.subscribe([`${share}/records`, `${share}/status`, `${share}/pull/+`], { qos: 1 }, (err) => {
        if (err) this.logger.warn({ err: { message: err.message } }, 'subscribe failed')
        else {
          this.isSubscribed = true
          this.logger.info('subscribed')
          this.markSubscribed()
        }
      })
    })
    client.on('close', () => (this.isSubscribed = false))
    client.on('error', (err) => this.logger.warn({ err: { message: err.message } }, 'broker connection error'))
    client.on('message', (topic, payload) => this.onMessage(topic, payload))
    // Backpressure: mqtt.js reads the next packet (and PUBACKs this one) only when this calls back, so a worker
    // that falls behind leaves the messages with the broker instead of in its own memory.
    const limit = this.opts.maxPending ?? 2000
    client.handleMessage = (_packet, callback) => {
      if (this.pending < limit) callback()
      else this.held.push(() => callback())
    }
    if (this.opts.listen) {
      const served = await serveMetrics(
        {
          workerId: this.workerId,
          metrics: this.metrics,
          pool: () => this.pool,
          brokerConnected: () => this.client?.connected === true,
          subscribed: () => this.isSubscribed,
        },
        this.opts.listen,
      )
      this.metricsServer = served.server
      this.metricsPort = served.port
      this.logger.info({ host: this.opts.listen.host, port: served.port }, 'metrics listening')
    }
    this.partitionTick = setInterval(() => void this.makePartitions(), PARTITION_CHECK_MS)
    this.tick = setInterval(
      () => {
        if (!this.gapCheck) this.gapCheck = this.pullGaps().finally(() => (this.gapCheck = undefined))
      },
      Math.max(100, Math.floor(this.gapWaitMs / 2)),
    )
  }

  /** Stops taking messages, lets every in-flight transaction commit and its ack go out, then disconnects. */
  async stop(): Promise<void> {
    if (this.stopping) return
    this.stopping = true
    clearInterval(this.tick)
    clearInterval(this.partitionTick)
    await this.gapCheck
    const client = this.client
    if (client?.connected) {
      const share = `$share/${this.group}/${this.prefix}/+`
      await client.unsubscribeAsync([`${share}/records`, `${share}/status`, `${share}/pull/+`]).catch(() => undefined)
    }
    while (this.queues.size > 0 || this.held.length > 0) {
      for (const release of this.held.splice(0)) release()
      await Promise.all([...this.queues.values()])
    }
    if (client) await client.endAsync(false).catch(() => undefined)
    await new Promise((r) => (this.metricsServer ? this.metricsServer.close(r) : r(undefined)))
    await this.pool?.end().catch(() => undefined)
  }

  /** The coming months' partitions of `records`; a failure is logged and tried again the next day (or at the next start). */
  private async makePartitions(): Promise<void> {
    if (this.stopping || !this.pool) return
    try {
      const c = await this.pool.connect()
      try {
        const made = await ensurePartitions(c, new Date(this.clock()))
        if (made.length > 0) this.logger.info({ made }, 'made partitions of records')
      } finally {
        c.release()
      }
    } catch (err) {
      this.logger.warn({ err: { message: (err as Error).message } }, 'could not make the coming months of records; tried again tomorrow')
    }
  }

  private onMessage(topic: string, payload: Buffer): void {
    if (this.stopping) return
    const rest = topic.startsWith(`${this.prefix}/`) ? topic.slice(this.prefix.length + 1).split('/') : []
    const [site, kind] = rest
    if (!site || !kind) return
    if (!SITE_ID.test(site)) {
      // Not a site id any gateway can have: kept aside (not stored under it), once per message.
      if (kind === 'records' || kind === 'pull')
        void this.keepAside(site, topic, payload, 'site_refused', 'the site id is not allowed (1-64 letters, digits, ".", "_" or "-")')
      return
    }
    if (!this.matches(site)) return
    this.stats.messages++
    this.metrics.messages++
    if (kind === 'records' && rest.length === 2) this.enqueue(site, () => this.onRecords(site, topic, payload, 'records'))
    else if (kind === 'pull' && rest.length === 3) this.enqueue(site, () => this.onRecords(site, topic, payload, 'pull'))
    else if (kind === 'status' && rest.length === 2) this.enqueue(site, () => this.onStatus(site, topic, payload))
  }

  private enqueue(site: string, job: () => Promise<void>): void {
    this.pending++
    const before = this.queues.get(site) ?? Promise.resolve()
    const next = before.then(job).catch((err) => {
      this.stats.dbErrors++
      this.metrics.dbErrors++
      this.logger.error({ site, err: { message: (err as Error).message } }, 'storing failed; not acked (the records come again)')
    })
    this.queues.set(site, next)
    void next.then(() => {
      this.pending--
      this.held.shift()?.()
      if (this.queues.get(site) === next) this.queues.delete(site)
    })
  }

  private malformed(site: string, topic: string, what: string): void {
    this.stats.malformed++
    this.logger.warn({ site, topic }, `malformed payload on ${topic}: ${what}; ignored`)
  }

  /**
   * A whole delivery refused before storage (not JSON, not records, a site id not allowed): a row in `rejects`
   * with the reason, the topic and the payload (an excerpt past EXCERPT bytes), and nothing else changes.
   */
  private async keepAside(site: string, topic: string, payload: Buffer, kind: string, reason: string): Promise<void> {
    this.stats.malformed++
    this.metrics.refuse(kind)
    this.logger.warn({ site: site.slice(0, 200), topic: topic.slice(0, 300), reason }, `kept aside a delivery on ${topic.slice(0, 300)}: ${reason}`)
    const text = payload.toString('utf8')
    const body = { bytes: payload.length, ...(payload.length <= EXCERPT ? { text } : { excerpt: text.slice(0, EXCERPT) }) }
    try {
      await this.pool?.query('INSERT INTO rejects (site_id, seq, reason, body, topic) VALUES ($1, NULL, $2, $3::jsonb, $4)', [
        site.slice(0, 200),
        reason,
        JSON.stringify(body).replace(/\\u0000/g, '\\ufffd'),
        topic.slice(0, 300),
      ])
    } catch (err) {
      this.logger.warn({ err: { message: (err as Error).message } }, 'could not keep the refused delivery aside')
    }
  }

  private async onRecords(site: string, topic: string, payload: Buffer, kind: 'records' | 'pull'): Promise<void> {
    let v: unknown
    try {
      v = JSON.parse(payload.toString('utf8'))
    } catch (err) {
      return this.keepAside(site, topic, payload, 'not_json', `not JSON (${(err as Error).message})`)
    }
    let records: unknown[]
    let next: number | null = null
    if (kind === 'records') {
      if (!Array.isArray(v)) return this.keepAside(site, topic, payload, 'not_records', 'not a JSON array of records')
      records = v
    } else {
      const a = v as PullAnswer
      if (typeof a !== 'object' || a === null || Array.isArray(a))
        return this.keepAside(site, topic, payload, 'not_records', 'not a pull answer object')
      if (a.error) {
        if (a.error.code === 'compacted' && typeof a.error.oldest === 'number') {
          await this.pool!.query('UPDATE sites SET compacted_before = $2 WHERE site_id = $1', [site, a.error.oldest])
          this.logger.error({ site, oldest: a.error.oldest }, 'the gateway compacted records the database does not hold')
        } else this.logger.warn({ site, error: a.error }, 'pull refused')
        return
      }
      if (!Array.isArray(a.records)) return this.keepAside(site, topic, payload, 'not_records', '/records: not an array')
      records = a.records
      next = typeof a.next === 'number' ? a.next : null
      if (typeof a.head === 'number' && Number.isSafeInteger(a.head))
        await this.pool!.query('UPDATE sites SET head = greatest(head, $2) WHERE site_id = $1', [site, a.head])
    }
    const r = await this.store(site, records)
    this.metrics.records.new += r.stored
    this.metrics.records.repeat += r.duplicates
    this.metrics.records.fork += r.forks.length
    this.metrics.records.reject += r.rejects.length
    this.stats.commits++
    this.stats.stored += r.stored
    this.stats.duplicates += r.duplicates
    this.stats.forks += r.forks.length
    this.stats.rejects += r.rejects.length
    for (const x of r.rejects) this.logger.error({ site, seq: x.seq, reason: x.reason }, `refused a record of ${site}: ${x.reason}`)
    if (r.forks.length > 0) this.logger.error({ site, seqs: r.forks }, `FORK: ${site} sent a different record at a stored seq; kept aside in forks`)
    for (const x of r.repeatedSessions)
      this.logger.error({ site, ...x }, `${site} ended session ${x.sessionId} a second time (seq ${x.seq}); the sessions table keeps the first`)
    if (r.chainBreak) this.logger.error({ site, break: r.chainBreak }, `chain break at ${site}: nothing past it is acked`)
    // Committed: now, and only now, the gateway may forget what the prefix covers. Acked after every delivery, duplicates too.
    if (r.acked > 0) this.sendAck(site, r.acked)
    for (const fn of this.afterCommit) fn(site, r)
    if (kind === 'pull' && next !== null && r.acked >= next - 1) await this.pullSite(site, true)
  }

  /** Hands a delivery to the batcher; resolves once the transaction that stored it committed. */
  private store(site: string, records: unknown[]): Promise<StoreResult> {
    return new Promise((resolve, reject) => {
      this.batchQueue.push({ siteId: site, incoming: records, resolve, reject })
      this.runBatches()
    })
  }

  /**
   * Starts batches while connections are free: each takes the deliveries waiting (up to BATCH_RECORDS records),
   * one per site at most since a site's next delivery waits in its queue for this one's commit. Deliveries that
   * arrive while batches run wait together for the next: the busier the worker, the larger its transactions.
   */
  private runBatches(): void {
    while (this.batchesRunning < this.maxBatches && this.batchQueue.length > 0) {
      let n = 0
      let records = 0
      while (n < this.batchQueue.length && (n === 0 || records + this.batchQueue[n]!.incoming.length <= BATCH_RECORDS)) {
        records += this.batchQueue[n]!.incoming.length
        n++
      }
      const batch = this.batchQueue.splice(0, n)
      this.batchesRunning++
      void this.runBatch(batch).finally(() => {
        this.batchesRunning--
        this.runBatches()
      })
    }
  }

  /**
   * Stores a batch, retrying while the database is unreachable (a restart, a failover): back-off from 250 ms
   * doubling to 5 s, for as long as it takes, so that nothing is dropped or acked meanwhile; the batch's sites
   * wait in their queues and, past maxPending, the broker holds the rest. A stop ends the retries (the
   * deliveries were not acked: the gateways send them again).
   */
  private async runBatch(batch: Waiting[]): Promise<void> {
    for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
      try {
        await this.storeOnce(batch)
        if (this.dbDown) {
          this.dbDown = false
          this.logger.info('database reachable again')
        }
        return
      } catch (err) {
        if (!unreachable(err) || this.stopping) {
          for (const w of batch) w.reject(err)
          return
        }
        if (!this.dbDown)
          this.logger.error({ err: { message: (err as Error).message } }, 'database unreachable; retrying with back-off, nothing acked meanwhile')
        this.dbDown = true
        this.metrics.dbErrors++
        await new Promise((r) => setTimeout(r, delay))
      }
    }
  }

  /** One attempt: the batch in one transaction; when it fails for one site's sake, each delivery alone. Throws when the database is unreachable. */
  private async storeOnce(batch: Waiting[]): Promise<void> {
    const c = await this.pool!.connect()
    let broken = false
    try {
      const t0 = performance.now()
      const results = await storeBatch(c, batch)
      this.metrics.commitTook((performance.now() - t0) / 1000)
      this.metrics.commits++
      for (const w of batch) w.resolve(results.get(w.siteId)!)
    } catch (err) {
      broken = unreachable(err)
      if (broken || batch.length === 1) throw err
      // One site's failure must not take the others down: each delivery again, in its own transaction.
      for (const w of batch) {
        try {
          const t0 = performance.now()
          const r = await storeRecords(c, w.siteId, w.incoming)
          this.metrics.commitTook((performance.now() - t0) / 1000)
          this.metrics.commits++
          w.resolve(r)
        } catch (e) {
          w.reject(e)
        }
      }
    } finally {
      // A connection that failed is closed, not given back for reuse.
      c.release(broken)
    }
  }

  private async onStatus(site: string, topic: string, payload: Buffer): Promise<void> {
    let s: { online?: unknown; head?: unknown }
    try {
      s = JSON.parse(payload.toString('utf8')) as typeof s
    } catch (err) {
      return this.malformed(site, topic, `not JSON (${(err as Error).message})`)
    }
    if (typeof s !== 'object' || s === null || typeof s.online !== 'boolean') return this.malformed(site, topic, '/online: not a boolean')
    const head = typeof s.head === 'number' && Number.isSafeInteger(s.head) && s.head >= 0 ? s.head : 0
    const res = await this.pool!.query<{ acked: string }>(
      `INSERT INTO sites (site_id, head, online, last_seen) VALUES ($1, $2, $3, now())
       ON CONFLICT (site_id) DO UPDATE SET head = greatest(sites.head, $2), online = $3, last_seen = now() RETURNING acked`,
      [site, head, s.online],
    )
    const acked = Number(res.rows[0]!.acked)
    // A gateway that just connected learns at once what the database holds.
    if (s.online && acked > 0) this.sendAck(site, acked)
  }

  private sendAck(site: string, upTo: number): void {
    if (!this.client?.connected) return
    this.stats.acks++
    this.metrics.acks++
    this.client.publish(`${this.prefix}/${site}/ack`, JSON.stringify({ upTo }), { qos: 1 })
  }

  /** Sites whose head is ahead of their verified prefix with no progress for gapWaitMs: pull each one this worker can lease. */
  private async pullGaps(): Promise<void> {
    if (this.stopping || !this.client?.connected || !this.pool) return
    try {
      const { rows } = await this.pool.query<{ site_id: string }>(
        `SELECT site_id FROM sites WHERE head > acked AND chain_break IS NULL
           AND (compacted_before IS NULL OR acked + 1 >= compacted_before)
           AND progress_at < now() - make_interval(secs => $1::float8 / 1000) ORDER BY progress_at LIMIT 100`,
        [this.gapWaitMs],
      )
      for (const { site_id } of rows) {
        if (this.stopping) return
        if (this.matches(site_id)) await this.pullSite(site_id, false)
      }
    } catch (err) {
      this.logger.warn({ err: { message: (err as Error).message } }, 'gap check failed')
    }
  }

  /**
   * Pulls the first gap of `site` if this worker holds (or can take) its lease: the lease row
   * names one worker per site until it expires, so a gap is pulled once, not once per worker.
   */
  private async pullSite(site: string, following: boolean): Promise<void> {
    const pool = this.pool!
    const lease = await pool.query(
      `INSERT INTO pull_leases (site_id, worker, until) VALUES ($1, $2, now() + make_interval(secs => $3::float8 / 1000))
       ON CONFLICT (site_id) DO UPDATE SET worker = excluded.worker, until = excluded.until
         WHERE pull_leases.until < now() OR pull_leases.worker = excluded.worker
       RETURNING worker`,
      [site, this.workerId, this.leaseMs],
    )
    if (!lease.rowCount) return
    const { rows } = await pool.query<{ acked: string; head: string; ahead: string | null }>(
      `UPDATE sites SET progress_at = now() WHERE site_id = $1
       RETURNING acked, head, (SELECT min(seq) FROM records r WHERE r.site_id = $1 AND r.seq > sites.acked + 1) AS ahead`,
      [site],
    )
    const row = rows[0]
    if (!row) return
    const from = Number(row.acked) + 1
    const to = row.ahead !== null ? Number(row.ahead) - 1 : Number(row.head)
    if (to < from && !following) return
    const requestId = `ing-${this.workerId}-${++this.pullSeq}`
    this.stats.pulls++
    this.metrics.pulls++
    this.logger.info({ site, from, to, requestId }, 'pulling a gap')
    this.client?.publish(`${this.prefix}/${site}/pull`, JSON.stringify({ requestId, from, ...(to >= from ? { to } : {}), limit: this.pullLimit }), {
      qos: 1,
    })
  }
}
