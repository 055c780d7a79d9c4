/**
 * A worker's Prometheus endpoint and health check: `GET /metrics` (text exposition format
 * 0.0.4, checked by `promtool check metrics`) and `GET /health` (JSON; 200 when the broker
 * is connected and the database answers, 503 otherwise), on the address `--listen` names.
 *
 * Owns: the metric names, their help text and labels (docs/ingest.md lists them), the
 * worker's own counters and commit-latency histogram, and the fleet figures read from the
 * database at scrape time (lag, oldest unacked site, gaps, leases, lost ranges).
 * Must never: write to the database, hold a scrape longer than the database takes to
 * answer one query (a failed read is reported as `outpost_ingest_db_up 0`, not an error
 * page), or put more than TOP_LAG sites in a label set (100,000 sites must not make
 * 100,000 series).
 */
import { createServer, type Server } from 'node:http'
import type pg from 'pg'

/** Sites named one by one in outpost_ingest_site_lag_records: the most behind. */
export const TOP_LAG = 20

/** Commit-latency buckets, in seconds. */
const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

export const OUTCOMES = ['new', 'repeat', 'fork', 'reject'] as const
export type Outcome = (typeof OUTCOMES)[number]

/** The worker's own figures since it started (the database's are read at each scrape). */
export class WorkerMetrics {
  readonly records: Record<Outcome, number> = { new: 0, repeat: 0, fork: 0, reject: 0 }
  /** Whole deliveries kept aside before storage (not JSON, too large, a site id refused), by reason. */
  readonly refused = new Map<string, number>()
  private readonly buckets = BUCKETS.map(() => 0)
  private sum = 0
  private count = 0
  commits = 0
  acks = 0
  pulls = 0
  dbErrors = 0
  messages = 0

  commitTook(seconds: number): void {
    this.count++
    this.sum += seconds
    for (let i = 0; i < BUCKETS.length; i++) if (seconds <= BUCKETS[i]!) this.buckets[i]!++
  }

  refuse(reason: string): void {
    this.refused.set(reason, (this.refused.get(reason) ?? 0) + 1)
  }

  histogram(): { le: string; n: number }[] {
    return [...BUCKETS.map((b, i) => ({ le: String(b), n: this.buckets[i]! })), { le: '+Inf', n: this.count }]
  }

  get commitSum(): number {
    return this.sum
  }

  get commitCount(): number {
    return this.count
  }
}

/** A label value as the exposition format wants it: backslash, double quote and newline escaped. */
export function labelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
}

interface FleetFigures {
  sites: number
  behind: number
  lagTotal: number
  top: { site: string; lag: number }[]
  oldest: { site: string; seconds: number } | null
  gaps: number
  breaks: number
  leases: { worker: string; n: number }[]
  lostRanges: number
  lostRecords: number
}

/** The fleet as the database sees it: every figure in one round trip. */
async function fleetFigures(pool: pg.Pool): Promise<FleetFigures> {
  const { rows } = await pool.query<{ f: FleetFigures }>(
    `SELECT json_build_object(
       'sites', (SELECT count(*) FROM sites),
       'behind', (SELECT count(*) FROM sites WHERE head > acked),
       'lagTotal', (SELECT coalesce(sum(head - acked), 0) FROM sites WHERE head > acked),
       'top', (SELECT coalesce(json_agg(json_build_object('site', site_id, 'lag', head - acked)), '[]'::json)
                 FROM (SELECT site_id, head, acked FROM sites WHERE head > acked ORDER BY head - acked DESC, site_id LIMIT ${TOP_LAG}) t),
       'oldest', (SELECT json_build_object('site', site_id, 'seconds', extract(epoch FROM now() - progress_at))
                    FROM sites WHERE head > acked ORDER BY progress_at LIMIT 1),
       'gaps', (SELECT count(*) FROM sites WHERE head > acked AND chain_break IS NULL
                  AND (compacted_before IS NULL OR acked + 1 >= compacted_before)),
       'breaks', (SELECT count(*) FROM sites WHERE chain_break IS NOT NULL),
       'leases', (SELECT coalesce(json_agg(json_build_object('worker', worker, 'n', n)), '[]'::json)
                    FROM (SELECT worker, count(*) AS n FROM pull_leases WHERE until > now() GROUP BY worker ORDER BY worker) l),
       'lostRanges', (SELECT count(*) FROM lost_ranges WHERE from_seq <= to_seq),
       'lostRecords', (SELECT coalesce(sum(to_seq - from_seq + 1), 0) FROM lost_ranges WHERE from_seq <= to_seq)
     ) AS f`,
  )
  return rows[0]!.f
}

export interface MetricsSource {
  workerId: string
  metrics: WorkerMetrics
  pool(): pg.Pool | undefined
  brokerConnected(): boolean
  subscribed(): boolean
}

/** The exposition text: the worker's counters, then the database's figures (or db_up 0). */
export async function renderMetrics(src: MetricsSource): Promise<string> {
  const m = src.metrics
  const w = `worker="${labelValue(src.workerId)}"`
  const out: string[] = []
  const family = (name: string, type: string, help: string, samples: [string, number][]) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
    for (const [labels, v] of samples) out.push(`${name}${labels ? `{${labels}}` : ''} ${Number.isFinite(v) ? v : 0}`)
  }
  family(
    'outpost_ingest_records_total',
    'counter',
    'Records this worker handled, by outcome: new (stored), repeat (held already, same hash), fork (kept aside in forks), reject (kept aside in rejects).',
    OUTCOMES.map((o) => [`${w},outcome="${o}"`, m.records[o]]),
  )
  family(
    'outpost_ingest_refused_total',
    'counter',
    'Deliveries kept aside whole before storage, by reason (not_json, not_records, too_large, site_refused).',
    [...m.refused].sort().map(([reason, n]) => [`${w},reason="${labelValue(reason)}"`, n]),
  )
  family('outpost_ingest_messages_total', 'counter', 'MQTT messages this worker received for the sites it takes.', [[w, m.messages]])
  family('outpost_ingest_commits_total', 'counter', 'Delivery transactions this worker committed.', [[w, m.commits]])
  family('outpost_ingest_acks_total', 'counter', 'P/ack messages this worker published (each after its commit).', [[w, m.acks]])
  family('outpost_ingest_pulls_total', 'counter', 'Gap pulls this worker requested.', [[w, m.pulls]])
  family('outpost_ingest_db_errors_total', 'counter', 'Deliveries rolled back on a database error (not acked; they come again).', [[w, m.dbErrors]])
  out.push(
    '# HELP outpost_ingest_commit_seconds Time from a delivery transaction starting to its commit.',
    '# TYPE outpost_ingest_commit_seconds histogram',
  )
  for (const b of m.histogram()) out.push(`outpost_ingest_commit_seconds_bucket{${w},le="${b.le}"} ${b.n}`)
  out.push(`outpost_ingest_commit_seconds_sum{${w}} ${m.commitSum}`, `outpost_ingest_commit_seconds_count{${w}} ${m.commitCount}`)
  family('outpost_ingest_broker_connected', 'gauge', 'Whether this worker is connected to the broker and subscribed (1) or not (0).', [
    [w, src.brokerConnected() && src.subscribed() ? 1 : 0],
  ])

  const pool = src.pool()
  let f: FleetFigures | undefined
  try {
    if (pool) f = await fleetFigures(pool)
  } catch {
    f = undefined
  }
  family('outpost_ingest_db_up', 'gauge', 'Whether the database answered this scrape (1) or not (0); the figures below are absent when it did not.', [
    [w, f ? 1 : 0],
  ])
  if (!f) return out.join('\n') + '\n'
  family('outpost_ingest_sites', 'gauge', 'Sites the database knows.', [['', f.sites]])
  family('outpost_ingest_sites_behind', 'gauge', 'Sites whose head (highest seq published or announced) is ahead of what was acked.', [
    ['', f.behind],
  ])
  family('outpost_ingest_lag_records', 'gauge', 'Records published and not yet acked, summed over every site.', [['', f.lagTotal]])
  family(
    'outpost_ingest_site_lag_records',
    'gauge',
    `Head minus acked of the ${TOP_LAG} sites most behind (the others are in outpost_ingest_lag_records).`,
    f.top.map((x) => [`site_id="${labelValue(x.site)}"`, x.lag]),
  )
  family(
    'outpost_ingest_oldest_unacked_seconds',
    'gauge',
    'Seconds since the site behind for longest last made progress (its site_id as label; absent when every site is acked).',
    f.oldest ? [[`site_id="${labelValue(f.oldest.site)}"`, f.oldest.seconds]] : [],
  )
  family('outpost_ingest_gap_pulls_pending', 'gauge', 'Sites with a gap a worker may pull (behind, no break, not compacted away).', [['', f.gaps]])
  family('outpost_ingest_chain_breaks', 'gauge', 'Sites whose chain breaks (a fork, a prev or hash mismatch): no ack passes it until resolved.', [
    ['', f.breaks],
  ])
  family(
    'outpost_ingest_pull_leases',
    'gauge',
    'Live pull leases, by the worker that holds them.',
    f.leases.map((l) => [`holder="${labelValue(l.worker)}"`, l.n]),
  )
  family('outpost_ingest_lost_ranges', 'gauge', 'Ranges of seqs a salvaged gateway announced lost, still lost.', [['', f.lostRanges]])
  family('outpost_ingest_lost_records', 'gauge', 'Seqs in those ranges.', [['', f.lostRecords]])
  return out.join('\n') + '\n'
}

/** `{ok, worker, broker, subscribed, database}`: ok when the broker is connected, subscribed, and the database answers within 2 s. */
export async function health(src: MetricsSource): Promise<{ ok: boolean; worker: string; broker: boolean; subscribed: boolean; database: boolean }> {
  const pool = src.pool()
  let database = false
  if (pool) {
    let timer: NodeJS.Timeout | undefined
    database = await Promise.race([
      pool.query('SELECT 1').then(
        () => true,
        () => false,
      ),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), 2000))),
    ])
    clearTimeout(timer)
  }
  const broker = src.brokerConnected()
  const subscribed = src.subscribed()
  return { ok: broker && subscribed && database, worker: src.workerId, broker, subscribed, database }
}

/** Serves /metrics and /health on host:port; resolves with the bound address once listening. */
export async function serveMetrics(src: MetricsSource, listen: { host: string; port: number }): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end()
      return
    }
    if (path === '/metrics') {
      void renderMetrics(src).then((text) => res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(text))
    } else if (path === '/health') {
      void health(src).then((h) => res.writeHead(h.ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(h) + '\n'))
    } else res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: /metrics and /health are served here\n')
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  const addr = server.address()
  return { server, port: typeof addr === 'object' && addr ? addr.port : listen.port }
}

/** `HOST:PORT` or `[V6]:PORT` of --listen; undefined when it is not one. */
export function parseListen(v: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/u.exec(v)
  if (!m) return undefined
  const port = Number(m[3])
  if (port > 65535) return undefined
  return { host: m[1] ?? m[2]!, port }
}
