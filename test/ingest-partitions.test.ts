/**
 * `records` partitioned by month of the record's time, against a real PostgreSQL: the coming months
 * made (once, by any number of workers), records in their month's partition, a fork across months as
 * strict as within one (record_keys), a month's records taken out of the default partition when its
 * partition is made, a detached (archived) month still guarding its seqs, every table keyed
 * site-first, and a database of the previous schema migrated with every row kept.
 */
import t from 'tap'
import pg from 'pg'
import { startPostgres } from './helpers/postgres.js'
import { FleetLog } from './helpers/fleet.js'
import { tinySessionEnded } from './helpers/memory-log.js'
import { ensurePartitions, MIGRATIONS, migrate, monthPartition, recordTime } from '../cloud/schema.js'
import { storeRecords } from '../cloud/store.js'
import { storeBatch } from '../cloud/batch.js'
import type { JournalRecord } from '../core/types.js'

const db = await startPostgres(t)
const client = new pg.Client({ connectionString: db.url })
await client.connect()
await client.query("SET TIME ZONE 'UTC'")
t.teardown(() => client.end())

/** A site's log whose records fall at the given times (ISO). */
function logAt(times: string[], sessionPrefix = 's'): JournalRecord[] {
  const log = new FleetLog()
  log.append(times.map((ts, i) => ({ ...tinySessionEnded(`${sessionPrefix}-${i}`, Date.parse(ts) || 0), ts })))
  return log.records
}

/** Which partition holds (site, seq). */
async function partitionOf(site: string, seq: number): Promise<string[]> {
  const { rows } = await client.query<{ p: string }>('SELECT tableoid::regclass::text AS p FROM records WHERE site_id = $1 AND seq = $2', [site, seq])
  return rows.map((r) => r.p)
}

t.test('recordTime: the contract ts, or -infinity for what is not a calendar time', async (t) => {
  t.equal(recordTime('2026-12-07T23:00:00.123Z'), '2026-12-07T23:00:00.123Z')
  t.equal(recordTime('2026-12-07T23:00:00Z'), '2026-12-07T23:00:00Z')
  t.equal(recordTime('2024-02-29T00:00:00Z'), '2024-02-29T00:00:00Z')
  for (const bad of [
    '2026-02-30T00:00:00Z',
    '2025-02-29T00:00:00Z',
    '2026-13-01T00:00:00Z',
    '2026-12-07T24:00:00Z',
    '0000-01-01T00:00:00Z',
    '2026-12-07',
    'yesterday',
    '2026-12-07T23:00:00.1234567Z',
    '2026-12-07T23:00:00+01:00',
  ])
    t.equal(recordTime(bad), '-infinity', bad)
  t.equal(recordTime(undefined), '-infinity')
  t.equal(recordTime(1765148400000), '-infinity')
  t.same(monthPartition(new Date('2026-12-31T23:59:59.999Z')), { name: 'records_2026_12', from: '2026-12-01T00:00:00Z', to: '2027-01-01T00:00:00Z' })
})

t.test('fresh schema: records partitioned by ts; the coming months made once, however many workers ask', async (t) => {
  t.equal(await migrate(client), MIGRATIONS.length)
  const part = await client.query(
    "SELECT partstrat, pg_get_partkeydef('records'::regclass) AS k FROM pg_partitioned_table WHERE partrelid = 'records'::regclass",
  )
  t.equal(part.rows[0]?.k, 'RANGE (ts)')
  const others = await Promise.all(
    [0, 1, 2].map(async () => {
      const c = new pg.Client({ connectionString: db.url })
      await c.connect()
      try {
        return await ensurePartitions(c, new Date('2026-12-15T12:00:00Z'))
      } finally {
        await c.end()
      }
    }),
  )
  t.same(others.flat().sort(), ['records_2026_12', 'records_2027_01', 'records_2027_02'], 'each month made by exactly one of three')
  t.same(await ensurePartitions(client, new Date('2026-12-31T23:00:00Z')), [], 'a second call makes nothing')
  const bounds = await client.query<{ name: string; b: string }>(
    "SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS b FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'records'::regclass ORDER BY 1",
  )
  t.same(
    bounds.rows.map((r) => r.name),
    ['records_2026_12', 'records_2027_01', 'records_2027_02', 'records_default'],
  )
  t.match(bounds.rows[0]!.b, /FROM \('2026-12-01 00:00:00\+00'\) TO \('2027-01-01 00:00:00\+00'\)/)
})

t.test('records go to their month; a fork across months is a fork; a repeat is a repeat', async (t) => {
  const recs = logAt(['2026-12-30T10:00:00Z', '2026-12-31T23:59:59.999999Z', '2027-01-01T00:00:00Z', '2027-01-02T00:00:00Z', 'not a time'])
  const r = await storeRecords(client, 'p-1', recs)
  t.equal(r.stored, 5)
  t.equal(r.acked, 5)
  t.same(await partitionOf('p-1', 1), ['records_2026_12'])
  t.same(await partitionOf('p-1', 2), ['records_2026_12'], 'the last microsecond of December')
  t.same(await partitionOf('p-1', 3), ['records_2027_01'])
  t.same(await partitionOf('p-1', 5), ['records_default'], 'a ts that is no time: the default partition')
  t.equal((await client.query("SELECT ts FROM records WHERE site_id = 'p-1' AND seq = 5")).rows[0].ts, -Infinity)

  // The other side of seq 2, a month later: another partition, but the same (site, seq): a fork, never a second row.
  const other = logAt(['2026-12-30T10:00:00Z', '2027-01-15T00:00:00Z'], 'x')
  other[0] = recs[0]!
  const f = await storeRecords(client, 'p-1', [other[1]!])
  t.same(f.forks, [2], 'a fork')
  t.equal(f.stored, 0)
  t.same(await partitionOf('p-1', 2), ['records_2026_12'], 'the stored side stays, alone')
  t.equal((await client.query("SELECT count(*)::int AS n FROM forks WHERE site_id = 'p-1' AND seq = 2")).rows[0].n, 1)
  const again = await storeBatch(client, [{ siteId: 'p-1', incoming: recs }])
  t.equal(again.get('p-1')!.duplicates, 5, 'the same records again: repeats')
  t.equal(again.get('p-1')!.stored, 0)
  t.equal((await client.query("SELECT count(*)::int AS n FROM records WHERE site_id = 'p-1'")).rows[0].n, 5)
  t.equal((await client.query("SELECT count(*)::int AS n FROM record_keys WHERE site_id = 'p-1'")).rows[0].n, 5)
})

t.test('a month with no partition yet waits in the default one, and moves when its partition is made', async (t) => {
  const recs = logAt(['2027-05-03T00:00:00Z', '2027-05-04T00:00:00Z', '2027-06-01T00:00:00Z'])
  await storeRecords(client, 'p-2', recs.slice(0, 2))
  t.same(await partitionOf('p-2', 1), ['records_default'])
  t.same(await ensurePartitions(client, new Date('2027-04-20T00:00:00Z'), 1), ['records_2027_04', 'records_2027_05'])
  t.same(await partitionOf('p-2', 1), ['records_2027_05'], 'moved with its partition')
  t.same(await partitionOf('p-2', 2), ['records_2027_05'])
  t.equal((await client.query("SELECT count(*)::int AS n FROM records_default WHERE ts >= '2027-05-01T00:00:00Z'")).rows[0].n, 0)
  const r = await storeRecords(client, 'p-2', recs.slice(2))
  t.equal(r.acked, 3, 'the chain goes on across partitions')
  t.same(await partitionOf('p-2', 3), ['records_default'])
})

t.test('an archived (detached) month still guards its seqs: a record again is a repeat, another one a fork', async (t) => {
  const recs = logAt(['2027-01-10T00:00:00Z', '2027-01-11T00:00:00Z', '2027-02-01T00:00:00Z'])
  await storeRecords(client, 'p-3', recs)
  await client.query('ALTER TABLE records DETACH PARTITION records_2027_01')
  t.teardown(() =>
    client.query("ALTER TABLE records ATTACH PARTITION records_2027_01 FOR VALUES FROM ('2027-01-01T00:00:00Z') TO ('2027-02-01T00:00:00Z')"),
  )
  t.same(await partitionOf('p-3', 1), [], 'archived: not in records any more')
  const again = await storeRecords(client, 'p-3', recs.slice(0, 2))
  t.equal(again.duplicates, 2)
  t.equal(again.stored, 0, 'not stored a second time')
  const other = logAt(['2027-01-10T00:00:00Z', '2027-01-20T00:00:00Z'], 'y')
  const f = await storeRecords(client, 'p-3', [{ ...other[1]!, prev: recs[0]!.hash } as JournalRecord])
  t.equal(f.rejects.length, 1, 'an altered record is refused by its own hash')
  const fork = await storeRecords(client, 'p-3', [other[0]!])
  t.same(fork.forks, [1], 'a different record at an archived seq: a fork')
  t.equal(fork.acked, 3, 'below the prefix: the prefix stays')
})

t.test('every table is keyed site-first, with no constraint across sites', async (t) => {
  const { rows } = await client.query<{ table: string; kind: string; cols: string[] }>(
    `SELECT c.conrelid::regclass::text AS table, c.contype AS kind,
            array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i)::text[] AS cols
     FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
     WHERE r.relnamespace = 'public'::regnamespace AND c.contype IN ('p', 'u', 'f', 'x') AND NOT r.relispartition AND r.relname <> 'outpost_migrations'`,
  )
  t.ok(rows.length >= 12, `${rows.length} keys`)
  for (const r of rows) {
    t.not(r.kind, 'f', `${r.table}: no foreign key`)
    t.equal(r.cols[0], 'site_id', `${r.table} ${r.kind}: (${r.cols.join(', ')}) starts with site_id`)
  }
  const idx = await client.query<{ name: string; def: string }>(
    "SELECT indexname AS name, indexdef AS def FROM pg_indexes WHERE schemaname = 'public' AND indexdef LIKE 'CREATE UNIQUE%' AND tablename <> 'outpost_migrations'",
  )
  for (const i of idx.rows) t.match(i.def, /\(site_id[,)]/, `${i.name}: unique on site_id first`)
})

t.test('a database of the previous schema: migrated with every row kept, partitioned by the month of each record', async (t) => {
  const old = await startPostgres(t)
  const c = new pg.Client({ connectionString: old.url })
  await c.connect()
  t.teardown(() => c.end())
  t.equal(await migrate(c, 2), 2)
  // Rows as the previous schema's ingest wrote them.
  const a = logAt(['2026-10-31T23:59:59Z', '2026-11-01T00:00:00Z', '2026-11-15T00:00:00Z', '2026-02-30T00:00:00Z', '2026-12-01T08:00:00.123456Z'])
  const b = logAt(['2026-11-02T00:00:00Z', 'garbage'])
  const put = async (site: string, recs: JournalRecord[]) => {
    for (const r of recs)
      await c.query('INSERT INTO records (site_id, seq, type, hash, prev, body) VALUES ($1, $2, $3, $4, $5, $6)', [
        site,
        r.seq,
        r.type,
        r.hash,
        r.prev,
        JSON.stringify(r),
      ])
    await c.query('INSERT INTO sites (site_id, head, acked, acked_hash) VALUES ($1, $2, $2, $3)', [site, recs.length, recs.at(-1)!.hash])
  }
  await put('m-a', a)
  await put('m-b', b)
  const before = (await c.query('SELECT site_id, seq, type, hash, prev, body, received_at FROM records ORDER BY site_id, seq')).rows

  t.equal(await migrate(c), MIGRATIONS.length)
  const after = (await c.query('SELECT site_id, seq, type, hash, prev, body, received_at FROM records ORDER BY site_id, seq')).rows
  t.same(after, before, 'every row kept as it was')
  const ts = (
    await c.query<{ site_id: string; seq: string; ts: Date | number; p: string }>(
      'SELECT site_id, seq, ts, tableoid::regclass::text AS p FROM records ORDER BY site_id, seq',
    )
  ).rows
  for (const [i, r] of ts.entries()) {
    const rec = (r.site_id === 'm-a' ? a : b)[Number(r.seq) - 1]!
    const want = recordTime(rec.ts)
    t.equal(
      r.ts instanceof Date ? r.ts.toISOString() : r.ts,
      want === '-infinity' ? -Infinity : new Date(want).toISOString(),
      `row ${i}: ts as the worker computes it`,
    )
  }
  t.same(
    ts.map((r) => r.p),
    ['records_2026_10', 'records_2026_11', 'records_2026_11', 'records_default', 'records_2026_12', 'records_2026_11', 'records_default'],
  )
  t.same(
    (await c.query('SELECT site_id, seq, hash FROM record_keys ORDER BY site_id, seq')).rows,
    before.map((r) => ({ site_id: r.site_id, seq: r.seq, hash: r.hash })),
    'record_keys holds every stored record',
  )
  t.equal((await c.query("SELECT to_regclass('records_v1') AS r")).rows[0].r, null, 'the old table is gone once its rows moved')

  // The ingest goes on: the next record is acked, a different record at a migrated seq is a fork.
  const more = new FleetLog()
  more.records.push(...a)
  more.append([{ ...tinySessionEnded('s-next', Date.parse('2026-12-02T00:00:00Z')) }])
  t.equal((await storeRecords(c, 'm-a', [more.records[5]!])).acked, 6)
  const other = logAt(['2026-10-31T23:59:59Z', '2026-11-20T00:00:00Z'], 'z')
  const fork = await storeRecords(c, 'm-a', [other[0]!])
  t.same(fork.forks, [1], 'a different seq 1 of a migrated site: a fork')
})
