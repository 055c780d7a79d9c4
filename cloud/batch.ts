/**
 * Many sites' deliveries stored in one transaction: a fleet catching up after an outage sends
 * millions of records at once, and one transaction per delivery (a dozen round trips each) held
 * the ingest to a tenth of what the database can take. Here the records of every site in the
 * batch go in with one insert (one JSON document of every row, the record texts spliced in as
 * they came: parsed once by the server, nothing escaped here), repeats and forks are told apart with one query, the
 * verified prefix advances in memory over the records just stored (each already checked against
 * its own hash; only the links are left), the derived rows go in with one insert per table and
 * the sites' rows are updated with one statement. A site that needs more (a salvage, a lost
 * range, a break, two different records for one seq in the delivery) is stored by the
 * one-site path (store.ts storeSiteInTx) inside the same transaction.
 *
 * Owns: the batch's transaction and the fast path's equivalence with storeRecords: the same
 * rows, the same prefix, the same results, delivery by delivery.
 * Must never: ack (the worker acks after the commit), lock sites in any order but by site id (two
 * workers' batches would deadlock), or move a prefix past what is stored and linked.
 */
import type pg from 'pg'
import type { JournalRecord } from '../core/types.js'
import { CHAIN_START, verifyChain, type ChainPoint } from '../daemon/uplink/chain.js'
import {
  type Advance,
  advancePrefix,
  type ChainBreakRow,
  checkLinks,
  deriveRowsMany,
  rejectBody,
  selfCheck,
  type SiteRow,
  type StoreResult,
  insertRecords,
  siteSeq,
  storeSiteInTx,
} from './store.js'

export interface Delivery {
  siteId: string
  incoming: readonly unknown[]
}

type Candidate = { record: JournalRecord; text: string }

interface Prep {
  siteId: string
  incoming: unknown[]
  list: Candidate[]
  rejects: StoreResult['rejects']
  rejectBodies: string[]
  /** Needs the one-site path: a salvage record, or two different records for one seq in the delivery. */
  special: boolean
}

function prepare(siteId: string, incoming: unknown[]): Prep {
  const p: Prep = { siteId, incoming, list: [], rejects: [], rejectBodies: [], special: false }
  const fresh = new Map<number, Candidate>()
  for (const r of incoming) {
    const c = selfCheck(r)
    if (!c.ok) {
      p.rejects.push({ seq: c.seq, reason: c.reason })
      p.rejectBodies.push(rejectBody(r))
      continue
    }
    const seen = fresh.get(c.record.seq)
    if (!seen) fresh.set(c.record.seq, c)
    else if (seen.record.hash !== c.record.hash) p.special = true
    if (c.record.type === 'gateway.started' && c.record.journalSalvage) p.special = true
  }
  p.list = [...fresh.values()].sort((a, b) => a.record.seq - b.record.seq)
  return p
}

const key = siteSeq

/**
 * Stores every delivery (several of one site are taken together, in order) in one transaction and
 * returns each site's result. Throws when the database does: nothing of the batch is kept.
 */
export async function storeBatch(client: pg.ClientBase, deliveries: readonly Delivery[]): Promise<Map<string, StoreResult>> {
  const bySite = new Map<string, unknown[]>()
  for (const d of deliveries) {
    const l = bySite.get(d.siteId)
    if (l) for (const r of d.incoming) l.push(r)
    else bySite.set(d.siteId, [...d.incoming])
  }
  const ids = [...bySite.keys()].sort()
  const preps = new Map(ids.map((id) => [id, prepare(id, bySite.get(id)!)]))
  const results = new Map<string, StoreResult>()
  await client.query('BEGIN')
  try {
    await client.query('INSERT INTO sites (site_id) SELECT * FROM unnest($1::text[]) ON CONFLICT DO NOTHING', [ids])
    const rows = (
      await client.query<SiteRow & { site_id: string; lost: boolean; salvaged: boolean }>(
        // A salvage whose last-read record is not yet behind the prefix: the walk must check that record against it (storeSiteInTx's advancePrefix does).
        `SELECT site_id, acked, acked_hash, head, chain_break,
           EXISTS (SELECT 1 FROM lost_ranges l WHERE l.site_id = s.site_id AND l.from_seq <= l.to_seq) AS lost,
           EXISTS (SELECT 1 FROM salvages v WHERE v.site_id = s.site_id AND v.last_seq > s.acked) AS salvaged
         FROM sites s WHERE site_id = ANY($1::text[]) ORDER BY site_id FOR UPDATE`,
        [ids],
      )
    ).rows
    const fast: { p: Prep; site: SiteRow }[] = []
    for (const row of rows) {
      const p = preps.get(row.site_id)!
      if (p.special || row.chain_break || row.lost || row.salvaged) results.set(p.siteId, await storeSiteInTx(client, p.siteId, p.incoming))
      else fast.push({ p, site: row })
    }

    const flat = fast.flatMap(({ p }) => p.list.map((x) => ({ site: p.siteId, x })))
    const inserted = new Set(
      await insertRecords(
        client,
        flat.map((f) => ({ site: f.site, c: f.x })),
      ),
    )
    // Records not inserted were held already: the same hash is a repeat, another is a fork.
    const held = flat.filter((f) => !inserted.has(key(f.site, f.x.record.seq)))
    const storedHash = new Map<string, string>()
    if (held.length > 0) {
      const have = await client.query<{ site_id: string; seq: string; hash: string }>(
        'SELECT r.site_id, r.seq, r.hash FROM record_keys r JOIN unnest($1::text[], $2::bigint[]) AS u(st, s) ON r.site_id = u.st AND r.seq = u.s',
        [held.map((f) => f.site), held.map((f) => f.x.record.seq)],
      )
      for (const r of have.rows) storedHash.set(key(r.site_id, r.seq), r.hash)
    }
    const forkRows = held.filter((f) => storedHash.get(key(f.site, f.x.record.seq)) !== f.x.record.hash)
    const newForks = new Set<string>()
    if (forkRows.length > 0) {
      // A side an operator already moved to history (a resolution) is not a new fork when it comes again.
      const f = await client.query<{ site_id: string; seq: string }>(
        `INSERT INTO forks (site_id, seq, hash, prev, stored_hash, body)
         SELECT st, s, h, p, sh, b::jsonb FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[]) AS u(st, s, h, p, sh, b)
         WHERE NOT EXISTS (SELECT 1 FROM record_history x WHERE x.site_id = u.st AND x.seq = u.s AND x.hash = u.h)
         ON CONFLICT DO NOTHING RETURNING site_id, seq`,
        [
          forkRows.map((r) => r.site),
          forkRows.map((r) => r.x.record.seq),
          forkRows.map((r) => r.x.record.hash),
          forkRows.map((r) => r.x.record.prev),
          forkRows.map((r) => storedHash.get(key(r.site, r.x.record.seq))!),
          forkRows.map((r) => r.x.text),
        ],
      )
      for (const r of f.rows) newForks.add(key(r.site_id, r.seq))
    }
    const rejectRows = fast.flatMap(({ p }) => p.rejects.map((r, i) => ({ site: p.siteId, r, body: p.rejectBodies[i]! })))
    if (rejectRows.length > 0)
      await client.query(
        `INSERT INTO rejects (site_id, seq, reason, body) SELECT st, s, r, b::jsonb FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) AS u(st, s, r, b)`,
        [rejectRows.map((x) => x.site), rejectRows.map((x) => x.r.seq), rejectRows.map((x) => x.r.reason), rejectRows.map((x) => x.body)],
      )

    // Each site's prefix, in memory over the records of the delivery: every record's own hash is checked, only links are left.
    const updates: { site: string; end: ChainPoint; maxSeq: number; brk: ChainBreakRow | null; forks: number; key: string | undefined }[] = []
    const derive: { siteId: string; records: JournalRecord[] }[] = []
    const partial = new Map<string, Omit<StoreResult, 'acked' | 'head' | 'repeatedSessions'> & { late: StoreResult['repeatedSessions'] }>()
    for (const { p, site } of fast) {
      const acked = Number(site.acked)
      const forks = p.list.filter((x) => newForks.has(key(p.siteId, x.record.seq))).map((x) => x.record.seq)
      const forkSeqs = new Set(
        p.list
          .filter((x) => storedHash.has(key(p.siteId, x.record.seq)) && storedHash.get(key(p.siteId, x.record.seq)) !== x.record.hash)
          .map((x) => x.record.seq),
      )
      let brk: ChainBreakRow | null = null
      const forkAhead = forks.filter((s) => s > acked).sort((a, b) => a - b)[0]
      if (forkAhead !== undefined)
        brk = { seq: forkAhead, reason: 'fork', message: `seq ${forkAhead}: two different records were received for this seq` }
      let end: ChainPoint = acked === 0 ? CHAIN_START : { seq: acked, hash: site.acked_hash }
      const verified: JournalRecord[] = []
      const limit = brk ? brk.seq - 1 : Number.MAX_SAFE_INTEGER
      for (const x of p.list) {
        const r = x.record
        if (r.seq <= end.seq) continue
        if (r.seq !== end.seq + 1 || r.seq > limit || forkSeqs.has(r.seq)) break
        if (r.prev !== end.hash) {
          const v = verifyChain([r], end)
          if (!v.ok) brk = { seq: v.break.seq, reason: v.break.reason, message: v.break.message }
          break
        }
        end = { seq: r.seq, hash: r.hash }
        verified.push(r)
      }
      const insertedSeqs = p.list.filter((x) => inserted.has(key(p.siteId, x.record.seq))).map((x) => x.record.seq)
      // Records past a gap: their links with stored neighbours, as the one-site path checks them.
      if (!brk && insertedSeqs.some((s) => s > end.seq + 1)) brk = await checkLinks(client, p.siteId, insertedSeqs, end.seq)
      const maxSeq = p.list.at(-1)?.record.seq ?? 0
      let fromDb: Advance | undefined
      // Stored records past the delivery (a gap it filled): the walk goes on from the database, after this delivery's rows.
      if (Math.max(Number(site.head), maxSeq) > end.seq && (!brk || brk.seq > end.seq + 1)) {
        const mine = (await deriveRowsMany(client, [{ siteId: p.siteId, records: verified }])).get(p.siteId)!
        fromDb = await advancePrefix(client, p.siteId, { ...site, acked: String(end.seq), acked_hash: end.hash }, brk)
        brk = fromDb.chainBreak
        end = fromDb.end
        fromDb = {
          ...fromDb,
          repeatedSessions: [...mine.repeatedSessions, ...fromDb.repeatedSessions],
          publicKey: fromDb.publicKey ?? mine.publicKey,
        }
      } else derive.push({ siteId: p.siteId, records: verified })
      updates.push({ site: p.siteId, end, maxSeq, brk, forks: forks.length, key: fromDb?.publicKey })
      partial.set(p.siteId, {
        stored: insertedSeqs.length,
        duplicates: p.list.length - insertedSeqs.length - forkSeqs.size,
        forks,
        rejects: p.rejects,
        verified: [...verified, ...(fromDb?.verified ?? [])],
        chainBreak: brk,
        late: fromDb?.repeatedSessions ?? [],
      })
    }
    const derived = await deriveRowsMany(client, derive)
    if (updates.length > 0) {
      const up = await client.query<{ site_id: string; head: string }>(
        `UPDATE sites s SET acked = u.acked, acked_hash = u.h, head = greatest(s.head, u.m), last_seen = now(),
           progress_at = CASE WHEN u.acked > s.acked THEN now() ELSE s.progress_at END,
           chain_break = u.brk::jsonb, forks = s.forks + u.nf, public_key = coalesce(u.pk, s.public_key)
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::int[], $7::text[]) AS u(st, acked, h, m, brk, nf, pk)
         WHERE s.site_id = u.st RETURNING s.site_id, s.head`,
        [
          updates.map((u) => u.site),
          updates.map((u) => u.end.seq),
          updates.map((u) => u.end.hash),
          updates.map((u) => u.maxSeq),
          updates.map((u) => (u.brk ? JSON.stringify(u.brk) : null)),
          updates.map((u) => u.forks),
          updates.map((u) => u.key ?? derived.get(u.site)?.publicKey ?? null),
        ],
      )
      const heads = new Map(up.rows.map((r) => [r.site_id, Number(r.head)]))
      for (const u of updates) {
        const x = partial.get(u.site)!
        const { late, ...rest } = x
        results.set(u.site, {
          ...rest,
          acked: u.end.seq,
          head: heads.get(u.site)!,
          repeatedSessions: [...(derived.get(u.site)?.repeatedSessions ?? []), ...late],
        })
      }
    }
    await client.query('COMMIT')
    return results
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined)
    throw err
  }
}
