/**
 * The ingest's storage against a real PostgreSQL (Debian's, started in a temp dir):
 * migrations, idempotent storage in any order, forks kept aside, forged records
 * refused or stopping the prefix, sessions derived only from verified records, and
 * two connections storing one site at once.
 */
import t from 'tap'
import pg from 'pg'
import { startPostgres } from './helpers/postgres.js'
import { FleetLog } from './helpers/fleet.js'
import { bodies } from './helpers/memory-log.js'
import { MIGRATIONS, migrate } from '../cloud/schema.js'
import { storeRecords } from '../cloud/store.js'
import { storeBatch } from '../cloud/batch.js'
import { recordHash, verifyChain } from '../daemon/uplink/chain.js'
import type { JournalRecord } from '../core/types.js'

const db = await startPostgres(t)
const client = new pg.Client({ connectionString: db.url })
await client.connect()
t.teardown(() => client.end())

function shuffled<T>(xs: T[], seed: number): T[] {
  const a = [...xs]
  let s = seed
  for (let i = a.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) & 0x7fffffff
    const j = s % (i + 1)
    ;[a[i], a[j]] = [a[j]!, a[i]!]
  }
  return a
}

async function siteRow(site: string) {
  return (await client.query('SELECT acked, head, chain_break, forks FROM sites WHERE site_id = $1', [site])).rows[0] as {
    acked: string
    head: string
    chain_break: { seq: number; reason: string } | null
    forks: number
  }
}

t.test('migrations apply once, and twice is a no-op', async (t) => {
  t.equal(await migrate(client), MIGRATIONS.length)
  t.equal(await migrate(client), MIGRATIONS.length)
  const { rows } = await client.query('SELECT count(*)::int AS n FROM outpost_migrations')
  t.equal(rows[0].n, MIGRATIONS.length)
  const tables = (await client.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")).rows.map((r) => r.table_name)
  for (const name of ['records', 'sessions', 'sites', 'meter_reconciliations', 'forks', 'rejects', 'pull_leases']) t.ok(tables.includes(name), name)
  // The contract's columns.
  const cols = async (table: string) =>
    (await client.query('SELECT column_name FROM information_schema.columns WHERE table_name = $1', [table])).rows.map((r) => r.column_name)
  for (const c of ['site_id', 'seq', 'type', 'hash', 'prev', 'body']) t.ok((await cols('records')).includes(c), `records.${c}`)
  for (const c of ['site_id', 'session_id', 'body']) t.ok((await cols('sessions')).includes(c), `sessions.${c}`)
  for (const c of ['site_id', 'head', 'acked', 'last_seen', 'online']) t.ok((await cols('sites')).includes(c), `sites.${c}`)
  // A schema newer than this build is refused, and nothing changes.
  await client.query('INSERT INTO outpost_migrations (version) VALUES ($1)', [MIGRATIONS.length + 1])
  await t.rejects(migrate(client), /newer than this build/)
  await client.query('DELETE FROM outpost_migrations WHERE version = $1', [MIGRATIONS.length + 1])
})

t.test('records in any order, in repeats, end up stored once with the prefix verified', async (t) => {
  const log = new FleetLog()
  log.append(bodies(60))
  // Deliveries of 1-7 records, shuffled, every record twice.
  const deliveries: JournalRecord[][] = []
  for (let i = 0; i < 60; ) {
    const n = 1 + (i % 7)
    deliveries.push(log.records.slice(i, i + n))
    i += n
  }
  let maxAck = 0
  for (const d of shuffled([...deliveries, ...deliveries], 7)) {
    const r = await storeRecords(client, 'order', d)
    t.ok(r.acked >= maxAck, 'the prefix never goes back')
    maxAck = r.acked
    // The prefix is always a verified, gapless run of what the site sent.
    t.ok(
      r.acked === 0 ||
        log.records[r.acked - 1]!.hash === (await client.query('SELECT acked_hash FROM sites WHERE site_id = $1', ['order'])).rows[0].acked_hash,
    )
  }
  t.equal(maxAck, 60)
  const rows = (await client.query('SELECT seq, hash, body FROM records WHERE site_id = $1 ORDER BY seq', ['order'])).rows
  t.same(
    rows.map((r) => Number(r.seq)),
    Array.from({ length: 60 }, (_, i) => i + 1),
  )
  t.ok(verifyChain(rows.map((r) => r.body)).ok, 'the stored bodies re-verify by themselves')
  const sessions = (await client.query('SELECT session_id, seq, total FROM sessions WHERE site_id = $1 ORDER BY seq', ['order'])).rows
  t.same(
    sessions.map((s) => s.session_id),
    log.records.filter((r) => r.type === 'session.ended').map((r) => (r as { sessionId: string }).sessionId),
  )
  t.same((await siteRow('order')).chain_break, null)
})

t.test('a different record at a stored seq is a fork: kept aside, never overwriting, and no ack past it', async (t) => {
  const log = new FleetLog()
  log.append(bodies(10))
  await storeRecords(client, 'fork', log.records.slice(0, 5))
  // A forged seq 6 that is self-consistent (rehashed) and links to seq 5: stored, and the genuine 6 becomes the fork.
  const forged = { ...log.records[5]!, total: 1 } as JournalRecord
  forged.hash = recordHash(forged as unknown as Record<string, unknown>)
  let r = await storeRecords(client, 'fork', [forged])
  t.equal(r.acked, 6, 'alone, a self-consistent forgery linking to its predecessor cannot be told apart')
  r = await storeRecords(client, 'fork', log.records.slice(5))
  t.same(r.forks, [6], 'the genuine seq 6 is a fork of the stored one')
  t.equal(r.acked, 6, 'seq 7 does not link to the stored 6: nothing past it is verified')
  t.match(r.chainBreak, { seq: 7, reason: 'prev' })
  const kept = (await client.query("SELECT hash FROM records WHERE site_id = 'fork' AND seq = 6")).rows[0].hash
  t.equal(kept, forged.hash, 'the stored record was not overwritten')
  const f = (await client.query("SELECT seq, hash, stored_hash FROM forks WHERE site_id = 'fork'")).rows
  t.same(f, [{ seq: '6', hash: log.records[5]!.hash, stored_hash: forged.hash }])
  // A repeat of the fork is no new fork.
  r = await storeRecords(client, 'fork', [log.records[5]!])
  t.same(r.forks, [])
  t.equal((await siteRow('fork')).forks, 1)

  // A fork ahead of the prefix stops it before the fork's seq.
  const log2 = new FleetLog()
  log2.append(bodies(6))
  await storeRecords(client, 'fork2', log2.records.slice(0, 2))
  await storeRecords(client, 'fork2', [log2.records[4]!])
  const other = { ...log2.records[4]!, energyWh: 1 } as JournalRecord
  other.hash = recordHash(other as unknown as Record<string, unknown>)
  r = await storeRecords(client, 'fork2', [other])
  t.same(r.forks, [5])
  r = await storeRecords(client, 'fork2', log2.records)
  t.equal(r.acked, 4, 'verified up to the seq before the fork, never past it')
  t.match(r.chainBreak, { seq: 5, reason: 'fork' })
})

t.test('a forged record whose hash does not match is refused and changes nothing', async (t) => {
  const log = new FleetLog()
  log.append(bodies(4))
  await storeRecords(client, 'forged', log.records.slice(0, 2))
  const forged = { ...log.records[2]!, total: 999_999 }
  const r = await storeRecords(client, 'forged', [forged, { seq: 'x' }, 'junk'])
  t.equal(r.stored, 0)
  t.equal(r.rejects.length, 3)
  t.match(r.rejects[0]!.reason, /seq 3: hash mismatch/)
  t.match(r.rejects[1]!.reason, /not a record/)
  t.equal(Number((await client.query("SELECT count(*) FROM records WHERE site_id = 'forged'")).rows[0].count), 2)
  t.equal(Number((await client.query("SELECT count(*) FROM rejects WHERE site_id = 'forged'")).rows[0].count), 3)
  // The genuine record still goes in afterwards.
  const ok = await storeRecords(client, 'forged', log.records)
  t.equal(ok.acked, 4)
  t.same(ok.chainBreak, null)
  // A record that links wrongly (rehashed, wrong prev) ahead of the prefix is caught when its neighbour is present.
  const log2 = new FleetLog()
  log2.append(bodies(5))
  await storeRecords(client, 'badlink', [log2.records[0]!, log2.records[3]!])
  const bad = { ...log2.records[2]!, prev: 'f'.repeat(64) } as JournalRecord
  bad.hash = recordHash(bad as unknown as Record<string, unknown>)
  const b = await storeRecords(client, 'badlink', [bad])
  t.match(b.chainBreak, { seq: 4, reason: 'prev' }, 'seq 4 does not link to the stored (forged) seq 3, found before the prefix gets there')
  t.equal(b.acked, 1)
  const after = await storeRecords(client, 'badlink', log2.records)
  t.ok(after.acked <= 2, 'never verified past the break')
  t.same(after.forks, [3])
})

t.test('a second session.ended for one session id is reported, and the sessions table keeps the first', async (t) => {
  const log = new FleetLog()
  const [a] = bodies(1)
  log.append([a!, { ...a!, total: 999 } as typeof a & {}])
  const r = await storeRecords(client, 'twice', log.records)
  t.equal(r.acked, 2, "both records are the site's and verified")
  t.same(r.repeatedSessions, [{ sessionId: 's-0', seq: 2 }])
  const rows = (await client.query("SELECT seq, total FROM sessions WHERE site_id = 'twice'")).rows
  t.same(rows, [{ seq: '1', total: '208' }])
})

t.test('two connections storing the same site at once: one prefix, every record once', async (t) => {
  const log = new FleetLog()
  log.append(bodies(200))
  const c2 = new pg.Client({ connectionString: db.url })
  await c2.connect()
  t.teardown(() => c2.end())
  const chunks: JournalRecord[][] = []
  for (let i = 0; i < 200; i += 10) chunks.push(log.records.slice(i, i + 10))
  const a = shuffled(chunks, 3)
  const b = shuffled(chunks, 11)
  await Promise.all([
    (async () => {
      for (const c of a) await storeRecords(client, 'race', c)
    })(),
    (async () => {
      for (const c of b) await storeRecords(c2, 'race', c)
    })(),
  ])
  const row = await siteRow('race')
  t.equal(Number(row.acked), 200)
  t.equal(Number((await client.query("SELECT count(*) FROM records WHERE site_id = 'race'")).rows[0].count), 200)
  t.equal(Number((await client.query("SELECT count(*) FROM sessions WHERE site_id = 'race'")).rows[0].count), 200)
  t.equal(row.forks, 0)
})

t.test('a config.applied record (a price change) is stored like any record and verified in the prefix', async (t) => {
  const log = new FleetLog()
  log.append(bodies(3))
  log.append([
    {
      type: 'config.applied',
      ts: '2026-06-10T19:00:00.000Z',
      who: 'owner:olga',
      configHash: 'b'.repeat(64),
      previousHash: 'a'.repeat(64),
      changed: ['/plans/0/periods/0/perKwh'],
      pendingOutlets: ['E1'],
    },
  ])
  log.append(bodies(2, 3))
  const r = await storeRecords(client, 'config', log.records)
  t.equal(r.acked, 6, 'acked past it')
  t.same(r.rejects, [])
  const row = (await client.query("SELECT seq, body FROM records WHERE site_id = 'config' AND type = 'config.applied'")).rows[0]
  t.equal(Number(row.seq), 4)
  t.match(row.body, { who: 'owner:olga', configHash: 'b'.repeat(64), changed: ['/plans/0/periods/0/perKwh'] })
})

t.test('a batch across sites stores exactly what the deliveries one at a time store', async (t) => {
  const SITES = 12
  const logs = Array.from({ length: SITES }, (_, i) => {
    const log = new FleetLog()
    log.append(bodies(40, i * 40))
    return log.records
  })
  // Each site's deliveries: 1-7 records, shuffled, every record twice; some sites get a forged record first
  // (re-hashed: a fork at its seq), a tampered one (a reject), or lose a record for good (a gap).
  const perSite = logs.map((records, i) => {
    const ds: unknown[][] = []
    for (let k = 0; k < records.length; ) {
      const n = 1 + ((k + i) % 7)
      ds.push(records.slice(k, k + n))
      k += n
    }
    let all = shuffled([...ds, ...ds], 100 + i)
    if (i % 4 === 1) {
      const forged = { ...records[20]!, ts: '2031-01-01T00:00:00.000Z' } as JournalRecord
      forged.hash = recordHash(forged)
      all = [[forged], ...all]
    }
    if (i % 4 === 2) all.push([{ ...records[5]!, ts: '2031-01-01T00:00:00.000Z' }])
    if (i % 4 === 3) all = all.map((d) => d.filter((r) => (r as JournalRecord).seq !== 30))
    return all
  })
  // One at a time, as before.
  for (let i = 0; i < SITES; i++) for (const d of perSite[i]!) await storeRecords(client, `one-${i}`, d)
  // In batches: the deliveries interleaved across sites (each site's in its order), 1-9 sites' deliveries a batch, several of one site together too.
  const queue: { siteId: string; incoming: unknown[] }[] = []
  const cursors = perSite.map(() => 0)
  for (let round = 0; queue.length < perSite.reduce((n, d) => n + d.length, 0); round++)
    for (let i = 0; i < SITES; i++) {
      const take = 1 + ((round + i) % 2)
      for (let k = 0; k < take && cursors[i]! < perSite[i]!.length; k++) queue.push({ siteId: `bat-${i}`, incoming: perSite[i]![cursors[i]!++]! })
    }
  const acked = new Map<string, number>()
  for (let k = 0, n = 1; k < queue.length; k += n, n = 1 + (n % 9)) {
    const results = await storeBatch(client, queue.slice(k, k + n))
    for (const [site, r] of results) {
      t.ok(r.acked >= (acked.get(site) ?? 0), 'the prefix never goes back')
      acked.set(site, r.acked)
    }
  }
  const dump = async (site: string) => {
    const q = async (sql: string) => (await client.query(sql, [site])).rows
    return {
      records: await q('SELECT seq, hash FROM records WHERE site_id = $1 ORDER BY seq'),
      forks: await q('SELECT seq, hash, stored_hash FROM forks WHERE site_id = $1 ORDER BY seq, hash'),
      rejects: await q('SELECT seq, reason FROM rejects WHERE site_id = $1 ORDER BY seq, reason'),
      site: await q('SELECT head, acked, acked_hash, chain_break, forks, public_key FROM sites WHERE site_id = $1'),
      sessions: await q('SELECT session_id, seq, total FROM sessions WHERE site_id = $1 ORDER BY seq'),
    }
  }
  for (let i = 0; i < SITES; i++) t.same(await dump(`bat-${i}`), await dump(`one-${i}`), `site ${i}: the same rows`)
  const brk = await siteRow('bat-1')
  // The forged seq 21 came first and links to 20: it is taken (the documented limit), the true one is the fork, and 22's prev breaks.
  t.match(brk, { acked: '21', chain_break: { seq: 22, reason: 'prev' }, forks: 1 }, 'the forgery stops the prefix in a batch too')
  t.equal((await siteRow('bat-0')).acked, '40')
  t.equal((await siteRow('bat-3')).acked, '29', 'a gap stops it')
})
