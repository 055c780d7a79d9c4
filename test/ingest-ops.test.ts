/**
 * `outpost ingest` in operation (real PostgreSQL and mosquitto, the built CLI): the
 * worker's Prometheus /metrics (checked by promtool) and /health, and bad input kept
 * aside with a reason while nothing else changes: a body that is not JSON, a record too
 * large, a site id that is not allowed.
 */
import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import pg from 'pg'
import mqtt from 'mqtt'
import { startPostgres } from './helpers/postgres.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { FleetLog } from './helpers/fleet.js'
import { bodies } from './helpers/memory-log.js'
import { CLI, startWorker, waitFor } from './helpers/ingest-kit.js'
import { recordHash } from '../daemon/uplink/chain.js'
import { MAX_RECORD_BYTES } from '../cloud/store.js'
import type { JournalRecord } from '../core/types.js'

const db = await startPostgres(t)
const broker = await startMosquitto(t, { extraConfig: ['max_queued_messages 0'] })
const client = new pg.Client({ connectionString: db.url })
await client.connect()
t.teardown(() => client.end().catch(() => undefined))
const pub = await mqtt.connectAsync(broker.url, { clientId: `ops-pub-${process.pid}` })
t.teardown(() => pub.endAsync(true))

const worker = await startWorker(t, 'm1', broker.url, db.url, ['--listen', '127.0.0.1:0'])
const port = await (async () => {
  let p = 0
  await waitFor(() => {
    const line = worker.err.find((l) => l.includes('"msg":"metrics listening"'))
    if (line) p = (JSON.parse(line) as { port: number }).port
    return p > 0
  }, 'the metrics port in the log')
  return p
})()

async function scrape(): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`)
  t.equal(res.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8')
  return res.text()
}

/** A sample's value by its name and labels as written, or undefined when absent. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

function promtool(text: string): { status: number | null; out: string } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' })
  return { status: r.status, out: `${r.stdout}${r.stderr}` }
}

const acks = new Map<string, number>()
const watcher = await mqtt.connectAsync(broker.url, { clientId: `ops-acks-${process.pid}` })
t.teardown(() => watcher.endAsync(true))
await watcher.subscribeAsync('outpost/+/ack', { qos: 1 })
watcher.on('message', (topic, payload) => acks.set(topic.split('/')[1]!, (JSON.parse(payload.toString()) as { upTo: number }).upTo))

const siteCount = async () => (await client.query<{ n: number }>('SELECT count(*)::int AS n FROM sites')).rows[0]!.n
const rejectRows = async () =>
  (
    await client.query<{ site_id: string; seq: string | null; reason: string; topic: string | null; body: unknown }>(
      'SELECT * FROM rejects ORDER BY id',
    )
  ).rows

t.test('/metrics counts records by outcome, the fleet lag and gaps, and passes promtool', async (t) => {
  const log = new FleetLog()
  log.append(bodies(10))
  const r = log.records
  await pub.publishAsync('outpost/met-1/records', JSON.stringify(r.slice(0, 6)), { qos: 1 })
  await waitFor(() => acks.get('met-1') === 6, 'met-1 acked to 6')
  // A repeat, a fork (seq 3 altered and re-hashed), a reject (seq 4 altered, not re-hashed), and a gap (8 without 7).
  const fork = { ...r[2]!, ts: '2031-01-01T00:00:00.000Z' } as JournalRecord
  fork.hash = recordHash(fork)
  const bad = { ...r[3]!, ts: '2031-01-01T00:00:00.000Z' }
  await pub.publishAsync('outpost/met-1/records', JSON.stringify([r[0], fork, bad, r[7]]), { qos: 1 })
  await waitFor(async () => (await client.query('SELECT 1 FROM forks WHERE site_id = $1', ['met-1'])).rowCount === 1, 'the fork kept aside')

  const text = await scrape()
  const w = 'worker="m1"'
  t.equal(sample(text, `outpost_ingest_records_total{${w},outcome="new"}`), 7, 'new: 6 + seq 8')
  t.equal(sample(text, `outpost_ingest_records_total{${w},outcome="repeat"}`), 1)
  t.equal(sample(text, `outpost_ingest_records_total{${w},outcome="fork"}`), 1)
  t.equal(sample(text, `outpost_ingest_records_total{${w},outcome="reject"}`), 1)
  t.equal(sample(text, `outpost_ingest_commit_seconds_count{${w}}`), 2, 'two deliveries committed')
  t.equal(sample(text, `outpost_ingest_commit_seconds_bucket{${w},le="+Inf"}`), 2)
  t.equal(sample(text, 'outpost_ingest_db_up{worker="m1"}'), 1)
  t.equal(sample(text, 'outpost_ingest_broker_connected{worker="m1"}'), 1)
  // The fork at seq 3 is inside the prefix (acked 6): no break; seq 8 past the gap at 7 leaves met-1 two behind.
  t.equal(sample(text, 'outpost_ingest_sites_behind'), 1)
  t.equal(sample(text, 'outpost_ingest_site_lag_records{site_id="met-1"}'), 2, 'head 8, acked 6')
  t.ok((sample(text, 'outpost_ingest_oldest_unacked_seconds{site_id="met-1"}') ?? -1) >= 0, 'met-1 is the oldest unacked site')
  t.equal(sample(text, 'outpost_ingest_gap_pulls_pending'), 1)
  t.equal(sample(text, 'outpost_ingest_lost_ranges'), 0)
  const check = promtool(text)
  t.equal(check.status, 0, `promtool check metrics: ${check.out}`)

  // The gap is pulled (nobody answers here): the lease holder shows.
  await waitFor(async () => sample(await scrape(), 'outpost_ingest_pull_leases{holder="m1"}') === 1, 'm1 holds met-1 lease', 20_000)

  // Closing the gap brings the lag back to nothing.
  await pub.publishAsync('outpost/met-1/records', JSON.stringify(r.slice(6)), { qos: 1 })
  await waitFor(() => acks.get('met-1') === 10, 'met-1 acked to 10')
  const after = await scrape()
  t.equal(sample(after, 'outpost_ingest_sites_behind'), 0)
  t.equal(sample(after, 'outpost_ingest_site_lag_records{site_id="met-1"}'), undefined, 'no site named once none is behind')
  t.equal(promtool(after).status, 0)
})

t.test('/health says what is up; an unknown path is a 404', async (t) => {
  const res = await fetch(`http://127.0.0.1:${port}/health`)
  t.equal(res.status, 200)
  t.same(await res.json(), { ok: true, worker: 'm1', broker: true, subscribed: true, database: true })
  t.equal((await fetch(`http://127.0.0.1:${port}/nope`)).status, 404)
  t.equal((await fetch(`http://127.0.0.1:${port}/metrics`, { method: 'POST' })).status, 405)
})

t.test('bad deliveries are kept aside with a reason and change nothing else', async (t) => {
  const sitesBefore = await siteCount()
  const recordsBefore = (await client.query<{ n: number }>('SELECT count(*)::int AS n FROM records')).rows[0]!.n
  const before = (await rejectRows()).length

  // Not JSON.
  await pub.publishAsync('outpost/bad-1/records', '{"seq": 1, oops', { qos: 1 })
  // JSON, not an array of records.
  await pub.publishAsync('outpost/bad-1/records', '{"seq": 1}', { qos: 1 })
  // A site id no gateway can have (a space; 65 characters).
  const log = new FleetLog()
  log.append(bodies(2))
  await pub.publishAsync('outpost/bad site/records', JSON.stringify(log.records), { qos: 1 })
  await pub.publishAsync(`outpost/${'x'.repeat(65)}/records`, JSON.stringify(log.records), { qos: 1 })
  // A record too large: a sealed record whose body is padded past the limit (its hash matches: only its size is wrong).
  const big = new FleetLog()
  big.append([{ ...bodies(1)[0]!, userId: 'u'.repeat(MAX_RECORD_BYTES) } as never])
  await pub.publishAsync('outpost/bad-2/records', JSON.stringify(big.records), { qos: 1 })

  await waitFor(async () => (await rejectRows()).length === before + 5, 'five rejects')
  // Sorted by site id and reason: a refused site id is kept aside as it arrives, the others in their site's order.
  const rows = (await rejectRows()).slice(before).sort((a, b) => (a.site_id + a.reason < b.site_id + b.reason ? -1 : 1))
  t.match(rows[0], { site_id: 'bad site', topic: 'outpost/bad site/records', reason: /site id is not allowed/ })
  t.match(rows[1], { site_id: 'bad-1', seq: null, topic: 'outpost/bad-1/records', reason: /^not JSON/, body: { bytes: 15, text: '{"seq": 1, oops' } })
  t.match(rows[2], { site_id: 'bad-1', seq: null, reason: 'not a JSON array of records' })
  t.match(rows[3], { site_id: 'bad-2', seq: '1', reason: /^seq 1: too large \(\d+ bytes, at most 65536\)/ })
  t.match(rows[4], { site_id: 'x'.repeat(65), reason: /site id is not allowed/ })
  t.ok((rows[3]!.body as { bytes: number }).bytes > MAX_RECORD_BYTES, 'its size is kept')
  t.equal(((rows[3]!.body as { excerpt: string }).excerpt ?? '').length, 1024, 'and its first bytes, not the whole record')

  // Nothing else changed: no record, and no site row for the refused site ids. A too-large record's site is known (it did send a delivery) but holds nothing.
  t.equal((await client.query<{ n: number }>('SELECT count(*)::int AS n FROM records')).rows[0]!.n, recordsBefore)
  t.same(
    (await client.query('SELECT site_id FROM sites WHERE site_id = ANY($1)', [['bad site', 'x'.repeat(65), 'bad-1']])).rows,
    [],
    'no sites row for a refused delivery',
  )
  t.ok((await siteCount()) <= sitesBefore + 1)
  const text = await scrape()
  t.equal(sample(text, 'outpost_ingest_refused_total{worker="m1",reason="not_json"}'), 1)
  t.equal(sample(text, 'outpost_ingest_refused_total{worker="m1",reason="not_records"}'), 1)
  t.equal(sample(text, 'outpost_ingest_refused_total{worker="m1",reason="site_refused"}'), 2)
  t.equal(promtool(text).status, 0)
})

/** `outpost ingest resolve …` of the built CLI. */
async function resolve(...args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const child = spawn(process.execPath, [CLI, 'ingest', 'resolve', '--db', db.url, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (err += d))
  const code = await new Promise<number | null>((r) => child.on('close', r))
  return { code, out, err }
}

/** Every table an operator's resolve may touch, as rows: equal before and after a refusal. */
async function snapshot(): Promise<string> {
  const tables = ['records', 'forks', 'sites', 'sessions', 'record_history', 'resolutions', 'rejects']
  const parts: unknown[] = []
  for (const tb of tables) parts.push((await client.query(`SELECT * FROM ${tb} ORDER BY 1, 2`)).rows)
  return JSON.stringify(parts)
}

t.test('resolve lists a fork with both sides; keeping one writes the audit row, moves the other to history, and acks continue', async (t) => {
  const log = new FleetLog()
  log.append(bodies(10, 500))
  const r = log.records
  await pub.publishAsync('outpost/fork-1/records', JSON.stringify(r.slice(0, 6)), { qos: 1 })
  await waitFor(() => acks.get('fork-1') === 6, 'fork-1 acked to 6')
  // A forged seq 8 (re-hashed, linking to the true 7) arrives before the true 7 and 8: the true 8 is the fork.
  const forged = { ...r[7]!, total: 1 } as JournalRecord
  forged.hash = recordHash(forged)
  await pub.publishAsync('outpost/fork-1/records', JSON.stringify([forged]), { qos: 1 })
  await pub.publishAsync('outpost/fork-1/records', JSON.stringify(r.slice(6)), { qos: 1 })
  await waitFor(async () => (await client.query('SELECT 1 FROM forks WHERE site_id = $1', ['fork-1'])).rowCount === 1, 'the true seq 8 is a fork')
  await waitFor(() => acks.get('fork-1') === 7, 'acked up to the fork')

  const listed = await resolve('--site', 'fork-1')
  t.equal(listed.code, 0, listed.err)
  const report = JSON.parse(listed.out)
  t.match(report, { site: 'fork-1', acked: 7, head: 10, chainBreak: { seq: 8, reason: 'fork' } })
  t.equal(report.forks.length, 1)
  t.match(report.forks[0], {
    seq: 8,
    inPrefix: false,
    stored: { hash: forged.hash, body: { total: 1 } },
    other: { hash: r[7]!.hash, prev: r[6]!.hash },
  })

  // Refusals change nothing and say why.
  const before = await snapshot()
  const usage = await resolve('--site', 'fork-1', '--seq', '8')
  t.equal(usage.code, 64)
  t.match(usage.err, /--seq, --keep, --by and --why go together/)
  const noFork = await resolve('--site', 'met-9', '--seq', '1', '--keep', r[0]!.hash, '--by', 'ops', '--why', 'x')
  t.equal(noFork.code, 65)
  t.match(noFork.err, /refused, nothing changed: site met-9: the database holds nothing of it/)
  const ackedSite = await resolve('--site', 'met-1', '--seq', '5', '--keep', r[0]!.hash, '--by', 'ops', '--why', 'x')
  t.equal(ackedSite.code, 65)
  t.match(ackedSite.err, /site met-1 has no fork at seq 5 \(its forks: seq 3\)/)
  const clean = new FleetLog()
  clean.append(bodies(2, 900))
  await pub.publishAsync('outpost/clean-1/records', JSON.stringify(clean.records), { qos: 1 })
  await waitFor(() => acks.get('clean-1') === 2, 'clean-1 acked')
  const before2 = await snapshot()
  const none = await resolve('--site', 'clean-1', '--seq', '1', '--keep', clean.records[0]!.hash, '--by', 'ops', '--why', 'x')
  t.equal(none.code, 65)
  t.match(none.err, /site clean-1 has no fork to resolve/)
  const neither = await resolve('--site', 'fork-1', '--seq', '8', '--keep', 'a'.repeat(64), '--by', 'ops', '--why', 'x')
  t.equal(neither.code, 65)
  t.match(neither.err, /is neither side/)
  t.equal(await snapshot(), before2, 'nothing changed by the refusals')
  t.not(before, before2)

  // The operator keeps the true record (the fork side).
  const kept = await resolve(
    '--site',
    'fork-1',
    '--seq',
    '8',
    '--keep',
    r[7]!.hash,
    '--by',
    'alice@ops',
    '--why',
    'seq 9 links to it; the stored one was forged',
  )
  t.equal(kept.code, 0, kept.err)
  t.match(JSON.parse(kept.out), { site: 'fork-1', seq: 8, kept: r[7]!.hash, moved: [forged.hash], acked: 10, chainBreak: null })
  const row = (await client.query('SELECT hash, body FROM records WHERE site_id = $1 AND seq = 8', ['fork-1'])).rows[0]
  t.equal(row.hash, r[7]!.hash, 'records holds the kept side')
  t.same(
    (await client.query('SELECT seq, hash FROM record_history WHERE site_id = $1', ['fork-1'])).rows,
    [{ seq: '8', hash: forged.hash }],
    'the other side moved to history, not deleted',
  )
  t.same((await client.query('SELECT 1 FROM forks WHERE site_id = $1', ['fork-1'])).rows, [])
  t.match((await client.query('SELECT * FROM resolutions WHERE site_id = $1', ['fork-1'])).rows, [
    { seq: '8', kept_hash: r[7]!.hash, moved_hash: forged.hash, by_whom: 'alice@ops', why: /forged/, at: Date },
  ])
  t.match((await client.query('SELECT acked, chain_break FROM sites WHERE site_id = $1', ['fork-1'])).rows[0], { acked: '10', chain_break: null })
  t.equal(
    (await client.query("SELECT body->>'total' AS total FROM sessions WHERE site_id = $1 AND seq = 8", ['fork-1'])).rows[0]?.total,
    String(r[7]!.type === 'session.ended' ? r[7]!.total : ''),
    "the session row is the kept record's",
  )
  // Acks continue: the next delivery (the forged record again, and a repeat) is acked to 10, and the forged one is no new fork.
  await pub.publishAsync('outpost/fork-1/records', JSON.stringify([forged, r[9]]), { qos: 1 })
  await waitFor(() => acks.get('fork-1') === 10, 'fork-1 acked to 10')
  t.same((await client.query('SELECT 1 FROM forks WHERE site_id = $1', ['fork-1'])).rows, [], 'a side already resolved is not a fork again')

  // A fork inside the verified prefix: only the stored side can be kept.
  const met = JSON.parse((await resolve('--site', 'met-1')).out)
  t.match(met.forks, [{ seq: 3, inPrefix: true }])
  const inPrefix = await resolve('--site', 'met-1', '--seq', '3', '--keep', met.forks[0].other.hash, '--by', 'ops', '--why', 'x')
  t.equal(inPrefix.code, 65)
  t.match(inPrefix.err, /inside the verified prefix/)
  const keepStored = await resolve(
    '--site',
    'met-1',
    '--seq',
    '3',
    '--keep',
    met.forks[0].stored.hash,
    '--by',
    'ops',
    '--why',
    'the chain links to it',
  )
  t.equal(keepStored.code, 0, keepStored.err)
  t.match(JSON.parse(keepStored.out), { moved: [met.forks[0].other.hash], acked: 10 })
})

t.test('/health turns 503 when the database is gone, and /metrics says db_up 0', async (t) => {
  await client.end().catch(() => undefined)
  await db.stop()
  const res = await fetch(`http://127.0.0.1:${port}/health`)
  t.equal(res.status, 503)
  t.match(await res.json(), { ok: false, database: false, broker: true })
  const text = await scrape()
  t.equal(sample(text, 'outpost_ingest_db_up{worker="m1"}'), 0)
  t.equal(sample(text, 'outpost_ingest_sites'), undefined)
  t.equal(promtool(text).status, 0)
})
