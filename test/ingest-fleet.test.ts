/**
 * `outpost ingest` at fleet scale with real parts: PostgreSQL, mosquitto 2 (MQTT 5
 * shared subscriptions), three worker processes of the built CLI, and 200 simulated
 * gateways whose records are sealed by the journal's own code and forwarded by the
 * real Uplink. In turn: a kill -9 of a worker mid-stream (and a clean stop of
 * another), a broker restart with gateways restarting, ten gateways offline for
 * hours of records catching up, a database restart (30 s down) during gap pulls and a burst,
 * and forged records. After each, the invariants:
 * every record stored exactly once, every chain verified from the database alone,
 * no ack ahead of the database, the sessions table equal to the session.ended
 * records, and the forgery detected.
 */
import t from 'tap'
import pg from 'pg'
import mqtt from 'mqtt'
import { startPostgres } from './helpers/postgres.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { FleetSite, rng } from './helpers/fleet.js'
import { ackWatch, invariants, startWorker, waitFor, type WorkerProc } from './helpers/ingest-kit.js'
import { recordHash } from '../daemon/uplink/chain.js'
import type { JournalRecord } from '../core/types.js'

const SITES = 200
const top = t
const random = rng(20261201)

const db = await startPostgres(t)
const broker = await startMosquitto(t, { extraConfig: ['max_queued_messages 0'] })
// A pool, not one connection: the database restarts in one of the steps, and the checks go on after it.
const client = new pg.Pool({ connectionString: db.url, max: 2 })
client.on('error', () => undefined)
t.teardown(() => client.end())

// Three workers starting at once: one applies the migrations, the others wait for its lock.
const workers: WorkerProc[] = await Promise.all(['w1', 'w2', 'w3'].map((n) => startWorker(t, n, broker.url, db.url)))
const watch = await ackWatch(t, broker.url, db.url)

const fleet = Array.from({ length: SITES }, (_, i) => new FleetSite(`site-${String(i + 1).padStart(3, '0')}`, { url: broker.url }, random))
t.teardown(() => Promise.all(fleet.map((s) => s.stopUplink())))
for (const s of fleet) s.boot()

const truth = (sites = fleet) => sites.map((s) => ({ id: s.id, records: s.log.records }))
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function round(sites = fleet): Promise<void> {
  for (const s of sites) s.step()
  await pause(150)
}

async function settled(sites = fleet, what = 'every site acked to its head'): Promise<void> {
  await waitFor(async () => {
    if (!sites.every((s) => s.log.acked() === s.log.head())) return false
    const { rows } = await client.query<{ n: number }>('SELECT count(*)::int AS n FROM sites WHERE site_id = ANY($1) AND acked = head', [
      sites.map((s) => s.id),
    ])
    return rows[0]!.n === sites.length
  }, what)
  await watch.drained()
}

async function checkAll(t: { same(a: unknown, b: unknown, m: string): unknown }, sites = fleet): Promise<void> {
  t.same(await invariants(client as unknown as pg.ClientBase, truth(sites)), [], 'every record once, every chain verified, sessions = session.ended')
  t.same(watch.violations, [], 'no ack ahead of the database')
}

t.test('the fleet streams; a worker is killed mid-stream and another stops cleanly', async (t) => {
  for (let i = 0; i < 3; i++) await round()
  const killed = await workers[0]!.kill('SIGKILL')
  t.equal(killed.signal, 'SIGKILL')
  for (let i = 0; i < 2; i++) await round()
  // A clean stop: in-flight transactions finish, the summary is printed, exit 0.
  const stopping = workers[1]!.kill('SIGTERM')
  for (let i = 0; i < 2; i++) await round()
  const st = await stopping
  t.equal(st.code, 0, workers[1]!.err.slice(-5).join('\n'))
  const summary = JSON.parse(workers[1]!.out.at(-1)!) as { commits: number; stored: number }
  t.ok(summary.commits > 0, 'the stopped worker had committed deliveries')
  // Started for the rest of the file (the subtest's teardown would kill them at its end: the later steps need three workers).
  workers[0] = await startWorker(top, 'w1b', broker.url, db.url)
  workers[1] = await startWorker(top, 'w2b', broker.url, db.url)
  for (let i = 0; i < 2; i++) await round()
  await settled()
  await checkAll(t)
  t.ok(watch.seen() > SITES, `acks were watched (${watch.seen()})`)
  const spread = await client.query<{ n: number }>('SELECT count(DISTINCT site_id)::int AS n FROM sessions')
  t.equal(spread.rows[0]!.n, SITES, 'every site has ended sessions')
})

t.test('a broker restart while gateways restart', async (t) => {
  await round()
  await broker.restart()
  for (let i = 0; i < 10; i++) await fleet[i * 7]!.restart(i % 2 === 0)
  for (let i = 0; i < 3; i++) await round()
  await settled()
  await checkAll(t)
  const starts = await client.query<{ n: number }>("SELECT count(*)::int AS n FROM records WHERE type = 'gateway.started'")
  t.equal(starts.rows[0]!.n, SITES + 10, 'each boot stored once')
})

t.test('ten gateways offline for hours of records catch up', async (t) => {
  const away = fleet.slice(100, 110)
  await Promise.all(away.map((s) => s.stopUplink()))
  // About two hours of the site's clock each: hundreds of records queued in the journal.
  for (let i = 0; i < 150; i++) for (const s of away) s.step()
  const behind = away.map((s) => s.log.head() - s.log.acked())
  t.ok(
    behind.every((n) => n >= 150),
    `each has a backlog (${Math.min(...behind)}..${Math.max(...behind)} records)`,
  )
  for (let i = 0; i < 2; i++) await round(fleet.filter((s) => !away.includes(s)))
  for (const s of away) s.startUplink()
  await round()
  await settled()
  await checkAll(t)
  const offline = await client.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM sessions WHERE (body->>'offline')::boolean AND site_id = ANY($1)",
    [away.map((s) => s.id)],
  )
  t.ok(offline.rows[0]!.n >= 70, `the sessions ended offline are in the sessions table (${offline.rows[0]!.n})`)
})

t.test('the database restarts (30 s down) during gap pulls and a burst', async (t) => {
  // Five gateways with a gap: offline while they write, one late record of each published on its own, so the
  // database holds it past a gap that a worker pulls (under its lease) once the gateways are back.
  const gapped = fleet.slice(120, 125)
  await Promise.all(gapped.map((s) => s.stopUplink()))
  for (let i = 0; i < 20; i++) for (const s of gapped) s.step()
  const raw = await mqtt.connectAsync(broker.url, { clientId: `late-${process.pid}` })
  t.teardown(() => raw.endAsync(true))
  const pulls: string[] = []
  await raw.subscribeAsync('outpost/+/pull', { qos: 1 })
  raw.on('message', (topic) => pulls.push(topic.split('/')[1]!))
  for (const s of gapped) await raw.publishAsync(`outpost/${s.id}/records`, JSON.stringify([s.log.records.at(-1)]), { qos: 1 })
  // A worker pulls each gap (the gateways, offline, do not answer yet).
  await waitFor(() => gapped.every((s) => pulls.includes(s.id)), 'a gap pull under way for each', 30_000)
  // The database goes down for 30 s while the gateways come back (their backlog, their pull answers) and the whole fleet sends a burst.
  const restarting = db.restart(30_000)
  for (const s of gapped) s.startUplink()
  for (let i = 0; i < 3; i++) await round()
  await restarting
  for (let i = 0; i < 2; i++) await round()
  await settled(fleet, 'every site acked to its head after the restart')
  await checkAll(t)
  for (const w of workers) t.ok(w.running(), `worker ${w.name} rode the restart out${w.running() ? '' : `: ${w.err.slice(-6).join('\n')}`}`)
  t.ok(
    workers.some((w) => w.err.some((l) => l.includes('database unreachable; retrying with back-off'))),
    'a worker said it was retrying',
  )
})

t.test('forged records are detected, change nothing they must not, and stop no other site', async (t) => {
  const victim = fleet[5]!
  const raw = await mqtt.connectAsync(broker.url, { clientId: `forger-${process.pid}` })
  t.teardown(() => raw.endAsync(true))
  const topic = `outpost/${victim.id}/records`
  const head = victim.log.head()
  const last = victim.log.records[head - 1]! as JournalRecord & { total?: number }
  // 1. A stored record altered without re-hashing: refused.
  await raw.publishAsync(topic, JSON.stringify([{ ...last, total: 1 }]), { qos: 1 })
  // 2. A payload that is not JSON: kept aside in rejects (seq null, its topic), logged.
  await raw.publishAsync(topic, '{"not": "an array"', { qos: 1 })
  // 3. A stored record altered and re-hashed: a fork, kept aside, the stored one untouched.
  const rehashed = { ...last, total: 2 } as JournalRecord
  rehashed.hash = recordHash(rehashed as unknown as Record<string, unknown>)
  await raw.publishAsync(topic, JSON.stringify([rehashed]), { qos: 1 })
  await waitFor(async () => {
    const r = await client.query<{ n: number }>(
      'SELECT (SELECT count(*) FROM rejects WHERE site_id = $1)::int + (SELECT count(*) FROM forks WHERE site_id = $1)::int AS n',
      [victim.id],
    )
    return r.rows[0]!.n === 3
  }, 'the forgeries recorded')
  const rej = await client.query('SELECT seq, reason, topic FROM rejects WHERE site_id = $1 ORDER BY seq NULLS LAST', [victim.id])
  t.match(rej.rows, [
    { seq: String(head), reason: new RegExp(`seq ${head}: hash mismatch`), topic: null },
    { seq: null, reason: /^not JSON/, topic },
  ])
  const fk = await client.query('SELECT seq, hash, stored_hash FROM forks WHERE site_id = $1', [victim.id])
  t.same(fk.rows, [{ seq: String(head), hash: rehashed.hash, stored_hash: last.hash }])
  const stored = await client.query('SELECT hash FROM records WHERE site_id = $1 AND seq = $2', [victim.id, head])
  t.equal(stored.rows[0].hash, last.hash, 'the stored record was not overwritten')
  t.ok(
    workers.some((w) => w.err.some((l) => l.includes('FORK') && l.includes(victim.id))),
    'the fork is alerted in a worker log',
  )
  t.ok(
    workers.some((w) => w.err.some((l) => l.includes('kept aside a delivery') && l.includes(topic))),
    'the payload that is not JSON is logged, naming the topic',
  )

  // 4. A forged next record (self-consistent, linking to the head) before the gateway's own:
  // the genuine one is then a fork, and the chain breaks at the record after it: no ack past it.
  const next = { ...last, seq: head + 1, prev: last.hash, total: 3 } as JournalRecord
  next.hash = recordHash(next as unknown as Record<string, unknown>)
  await raw.publishAsync(topic, JSON.stringify([next]), { qos: 1 })
  await waitFor(async () => {
    const r = await client.query('SELECT head FROM sites WHERE site_id = $1', [victim.id])
    return Number(r.rows[0].head) === head + 1
  }, 'the forged next record stored')
  victim.step()
  victim.step()
  const others = fleet.filter((s) => s !== victim)
  await round(others)
  // The genuine head+1 (a fork) and head+2 (the break) may go to two workers: each is counted when its own batch commits.
  await waitFor(async () => {
    const r = await client.query('SELECT chain_break, forks FROM sites WHERE site_id = $1', [victim.id])
    return r.rows[0].chain_break !== null && r.rows[0].forks >= 2
  }, 'the break found and the genuine record counted as a fork')
  const site = (await client.query('SELECT acked, chain_break, forks FROM sites WHERE site_id = $1', [victim.id])).rows[0]
  t.match(site.chain_break, { seq: head + 2, reason: 'prev' })
  t.equal(site.forks, 2, 'both forks counted')
  t.ok(Number(site.acked) <= head + 1, 'the prefix stops before the break')
  t.ok(victim.log.acked() <= head + 1, 'the gateway was never acked past the break')
  // Everyone else carried on.
  await settled(others, 'every other site acked to its head')
  await checkAll(t, others)
  t.same(watch.violations, [])
})
