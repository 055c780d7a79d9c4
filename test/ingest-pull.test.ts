/**
 * Gap pulls of `outpost ingest` (real PostgreSQL and mosquitto, three workers in this
 * process): records the cloud never got are pulled by exactly one worker per site (the
 * lease row), a lease passes to another worker when its holder stops, and the command
 * line refuses bad flags and an unreachable database, naming what was wrong.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import pg from 'pg'
import mqtt from 'mqtt'
import { startPostgres } from './helpers/postgres.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { FleetSite, rng } from './helpers/fleet.js'
import { CLI, invariants, waitFor } from './helpers/ingest-kit.js'
import { IngestWorker } from '../cloud/worker.js'

const db = await startPostgres(t)
const broker = await startMosquitto(t, { extraConfig: ['max_queued_messages 0'] })
const client = new pg.Client({ connectionString: db.url })
await client.connect()
t.teardown(() => client.end())

t.test('a gap is pulled by one worker per site; the lease moves when its holder stops', async (t) => {
  const random = rng(7)
  // The gateways resend only after a minute without acks: here only pulls can recover what was lost.
  const sites = Array.from({ length: 6 }, (_, i) => new FleetSite(`gap-${i + 1}`, { url: broker.url, ackTimeoutMs: 60_000 }, random))
  t.teardown(() => Promise.all(sites.map((s) => s.stopUplink())))
  for (const s of sites) s.boot()
  for (let i = 0; i < 20; i++) for (const s of sites) s.step()
  // Everything so far went to nobody (no worker subscribed yet): the gateways hold 21+ records each, unacked.
  await waitFor(() => sites.every((s) => s.online() && s.sentUpTo() === s.log.head()), 'the gateways sent everything')

  const pulls: { site: string; requestId: string }[] = []
  const watcher = await mqtt.connectAsync(broker.url, { clientId: `pull-watch-${process.pid}` })
  t.teardown(() => watcher.endAsync(true))
  await watcher.subscribeAsync('outpost/+/pull', { qos: 1 })
  watcher.on('message', (topic, payload) => pulls.push({ site: topic.split('/')[1]!, requestId: JSON.parse(payload.toString()).requestId }))

  const workers = ['p1', 'p2', 'p3'].map((id) => new IngestWorker({ url: broker.url, db: db.url, workerId: id, gapWaitMs: 500, leaseMs: 4000 }))
  t.teardown(() => Promise.all(workers.map((w) => w.stop())))
  await Promise.all(workers.map((w) => w.start()))
  await Promise.all(workers.map((w) => w.subscribed))
  // One more record each: the workers see seq N+1 with nothing before it, a gap.
  for (const s of sites) s.step()
  await waitFor(() => sites.every((s) => s.log.acked() === s.log.head()), 'every gap pulled and acked')
  t.same(
    await invariants(
      client,
      sites.map((s) => ({ id: s.id, records: s.log.records })),
    ),
    [],
  )
  for (const s of sites) {
    const by = new Set(pulls.filter((p) => p.site === s.id).map((p) => p.requestId.split('-')[1]))
    t.equal(by.size, 1, `${s.id} was pulled by one worker (${[...by].join(', ')})`)
  }
  t.equal(
    workers.reduce((n, w) => n + w.stats.pulls, 0),
    pulls.length,
    'the pulls the workers counted are the ones on the wire',
  )

  // The holder of gap-1's lease stops; after the lease runs out another worker pulls gap-1's next gap.
  const lease = (await client.query("SELECT worker FROM pull_leases WHERE site_id = 'gap-1'")).rows[0].worker as string
  const holder = workers.find((w) => w.workerId === lease)!
  await holder.stop()
  const site = sites[0]!
  await site.stopUplink()
  for (let i = 0; i < 5; i++) site.step()
  site.startUplink()
  await waitFor(() => site.online(), 'gap-1 online')
  // Its backlog went out when it reconnected; drop what the workers stored of it to make a gap behind the newest record.
  await waitFor(() => site.log.acked() === site.log.head(), 'gap-1 acked')
  const before = pulls.length
  await client.query("DELETE FROM records WHERE site_id = 'gap-1' AND seq > $1", [site.log.head() - 3])
  await client.query('UPDATE sites SET acked = $2, acked_hash = $3, progress_at = now() WHERE site_id = $1', [
    'gap-1',
    site.log.head() - 3,
    site.log.records[site.log.head() - 4]!.hash,
  ])
  site.step()
  await waitFor(async () => {
    const r = await client.query("SELECT acked FROM sites WHERE site_id = 'gap-1'")
    return Number(r.rows[0].acked) === site.log.head()
  }, 'gap-1 pulled again')
  const after = pulls.slice(before).filter((p) => p.site === 'gap-1')
  t.ok(after.length > 0, 'pulled')
  t.ok(
    after.every((p) => p.requestId.split('-')[1] !== lease),
    'by another worker than the stopped holder',
  )
  t.equal(new Set(after.map((p) => p.requestId.split('-')[1])).size, 1, 'by one worker')
})

t.test('a worker that falls behind leaves messages with the broker and still stores everything', async (t) => {
  const random = rng(11)
  const sites = Array.from({ length: 4 }, (_, i) => new FleetSite(`bp-${i + 1}`, { url: broker.url }, random))
  t.teardown(() => Promise.all(sites.map((s) => s.stopUplink())))
  // At most two deliveries in hand: the rest of the burst waits in the broker.
  const worker = new IngestWorker({ url: broker.url, db: db.url, group: 'bp', workerId: 'bp', maxPending: 2, sites: 'bp-*' })
  t.teardown(() => worker.stop())
  await worker.start()
  await worker.subscribed
  let most = 0
  worker.onCommit(() => {
    most = Math.max(most, (worker as unknown as { pending: number }).pending)
  })
  for (const s of sites) s.boot()
  for (let i = 0; i < 150; i++) for (const s of sites) s.step()
  await waitFor(() => sites.every((s) => s.log.acked() === s.log.head()), 'the burst stored and acked')
  t.same(
    await invariants(
      client,
      sites.map((s) => ({ id: s.id, records: s.log.records })),
    ),
    [],
  )
  t.ok(most <= 2, `never more than two deliveries in hand (${most})`)
  t.ok(worker.stats.messages >= 4 * 6, `the burst came in many messages (${worker.stats.messages})`)
})

t.test('outpost ingest refuses bad flags and an unreachable database, and says which', async (t) => {
  const run = (...args: string[]) => spawnSync(process.execPath, [CLI, 'ingest', ...args], { encoding: 'utf8', timeout: 60_000 })
  let r = run('--url', broker.url)
  t.equal(r.status, 64)
  t.match(r.stderr, /--url and --db are required/)
  r = run('--url', 'http://x', '--db', db.url)
  t.equal(r.status, 64)
  t.match(r.stderr, /--url http:\/\/x: not an mqtt:\/\/ or mqtts:\/\/ URL/)
  r = run('--url', broker.url, '--db', db.url, '--group', 'a/b')
  t.equal(r.status, 64)
  t.match(r.stderr, /--group a\/b:/)
  r = run('--url', broker.url, '--db', db.url, '--sites', 'lot-#')
  t.equal(r.status, 64)
  t.match(r.stderr, /--sites lot-#:/)
  r = run('--url', broker.url, '--db', db.url, '--gap-wait', '5')
  t.equal(r.status, 64)
  t.match(r.stderr, /--gap-wait 5:/)
  r = run('--url', broker.url, '--db', db.url, '--bogus')
  t.equal(r.status, 64)
  t.match(r.stderr, /bogus/)
  r = run('--url', broker.url, '--db', 'postgres://nobody:secret@127.0.0.1:1/none')
  t.equal(r.status, 70)
  t.match(r.stderr, /INGEST_DB: database postgres:\/\/nobody@127\.0\.0\.1:1\/none: /)
  t.notMatch(r.stderr, /secret/, 'the password is not printed')
})
