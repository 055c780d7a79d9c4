/**
 * Storing one site's records in PostgreSQL, one transaction per delivery: the
 * idempotent insert, the fork table, the incremental chain check and the derived
 * tables (sessions, meter reconciliations), all under the site's row lock so that
 * any number of workers may store the same site's records in any order.
 *
 * Owns: what a delivery does to the database — which records are kept, which are
 * set aside as forks or rejected, how far the site's contiguous verified prefix
 * (`sites.acked`) reaches, and the rows derived from verified records.
 * Must never: overwrite a stored record; move `sites.acked` past a gap, a fork or a
 * chain break; derive a session row from a record that is not verified; hash or
 * check a chain by any rule but the project's own (daemon/uplink/chain.ts).
 */
import type pg from 'pg'
import type { JournalRecord } from '../core/types.js'
import { ChainVerifier, GENESIS_PREV } from '../daemon/journal/chain.js'
import { CHAIN_START, isRecordShape, verifyChain, type ChainPoint } from '../daemon/uplink/chain.js'
import { acceptedSalvages, lateMisfits, lostRanges, shrinkLost, takeSalvages } from './salvage.js'
import { recordTime } from './schema.js'

/** Rows read per step of the prefix walk. */
const WALK_PAGE = 1000

export interface ChainBreakRow {
  seq: number
  reason: string
  message: string
}

export interface StoreResult {
  /** The site's contiguous verified prefix after the commit: what may be acked. */
  acked: number
  /** Records newly inserted. */
  stored: number
  /** Records already held with the same hash. */
  duplicates: number
  /** Records differing from the one held at their seq (new ones only). */
  forks: number[]
  /** Records refused before storage (not a record, or its own hash does not match it). */
  rejects: { seq: number | null; reason: string }[]
  /** Records that became verified in this transaction, in seq order. */
  verified: JournalRecord[]
  /** The site's chain break, when one is known (set now or before). */
  chainBreak: ChainBreakRow | null
  /** The highest seq held for the site. */
  head: number
  /** Verified session.ended records whose session id already had a row (a second bill for one session: never stored twice, reported). */
  repeatedSessions: { sessionId: string; seq: number }[]
}

export interface SiteRow {
  acked: string
  acked_hash: string
  head: string
  chain_break: ChainBreakRow | null
}

/**
 * The largest record stored, as JSON text: a gateway's records are a few kB (a session.ended with
 * its OCMF signature is the largest); a larger one is refused into rejects with its first bytes.
 */
export const MAX_RECORD_BYTES = 64 * 1024

/** What rejects keeps of a refused record: the record itself, or, when it cannot be stored whole, its size and first bytes. */
export function rejectBody(r: unknown): string {
  const text = JSON.stringify(r) ?? 'null'
  if (jsonbProblem(text)) return JSON.stringify({ unstorable: true })
  if (Buffer.byteLength(text) > MAX_RECORD_BYTES) return JSON.stringify({ bytes: Buffer.byteLength(text), excerpt: text.slice(0, 1024) })
  return text
}

/** JSON that PostgreSQL's jsonb cannot hold (it refuses the NUL character). */
function jsonbProblem(text: string): string | undefined {
  return text.includes('\\u0000') ? 'holds a NUL character, which jsonb cannot store' : undefined
}

/**
 * Checks a record on its own: the shape and its hash over its content (the link to
 * its predecessor is checked against the stored chain). Uses the chain's ChainVerifier from the
 * point the record itself names, so the rules are the chain's own.
 */
export function selfCheck(r: unknown): { ok: true; record: JournalRecord; text: string } | { ok: false; seq: number | null; reason: string } {
  const seqOf = (v: unknown): number | null => {
    const s = (v as { seq?: unknown } | null)?.seq
    return typeof s === 'number' && Number.isSafeInteger(s) ? s : null
  }
  if (!isRecordShape(r)) return { ok: false, seq: seqOf(r), reason: 'not a record (seq, type, prev and hash are required)' }
  // The chain's own verifier, one record from the point it names: its text comes from the hashing (no second serialization).
  const v = new ChainVerifier({ seq: r.seq, prev: r.prev })
  const b = v.push(r)
  if (b) return { ok: false, seq: r.seq, reason: `seq ${b.seq}: ${b.problem}` }
  const text = v.lastText!
  // At most 3 bytes of UTF-8 per UTF-16 unit: a text short enough is not counted.
  const bytes = text.length * 3 <= MAX_RECORD_BYTES ? text.length : Buffer.byteLength(text)
  if (bytes > MAX_RECORD_BYTES) return { ok: false, seq: r.seq, reason: `seq ${r.seq}: too large (${bytes} bytes, at most ${MAX_RECORD_BYTES})` }
  const bad = jsonbProblem(text)
  if (bad) return { ok: false, seq: r.seq, reason: `seq ${r.seq}: ${bad}` }
  return { ok: true, record: r, text }
}

/** A (site, seq) pair as one string key. */
export const siteSeq = (site: string, seq: number | string) => `${site}\n${seq}`

/**
 * Inserts records of any sites (each site's row locked by the caller) and returns the `siteSeq` keys of
 * those inserted. The (site_id, seq) is claimed in `record_keys` first: only a record whose key was free
 * goes into `records` (whichever month's partition its `ts` names); one held already is left to the
 * caller (a repeat or a fork). One JSON document of every row, the record texts spliced in as they came:
 * parsed once by the server, nothing escaped here.
 */
export async function insertRecords(
  client: pg.ClientBase,
  rows: readonly { site: string; c: { record: JournalRecord; text: string } }[],
): Promise<string[]> {
  if (rows.length === 0) return []
  const doc = `[${rows
    .map(
      ({ site, c: { record: r, text } }) =>
        // hash and prev are 64 hex digits (checked), the time the contract's form or -infinity: no escaping needed.
        `[${JSON.stringify(site)},${r.seq},${JSON.stringify(r.type)},"${r.hash}","${r.prev}","${recordTime(r.ts)}",${text}]`,
    )
    .join(',')}]`
  const res = await client.query<{ site_id: string; seq: string }>(
    `WITH e AS (SELECT e->>0 AS st, (e->>1)::bigint AS s, e->>2 AS t, e->>3 AS h, e->>4 AS p, (e->>5)::timestamptz AS ts, e->6 AS b
                FROM jsonb_array_elements($1::jsonb) AS e),
          k AS (INSERT INTO record_keys (site_id, seq, hash, ts) SELECT st, s, h, ts FROM e ON CONFLICT (site_id, seq) DO NOTHING RETURNING site_id, seq)
     INSERT INTO records (site_id, seq, type, hash, prev, body, ts)
     SELECT e.st, e.s, e.t, e.h, e.p, e.b, e.ts FROM e JOIN k ON k.site_id = e.st AND k.seq = e.s RETURNING site_id, seq`,
    [doc],
  )
  return res.rows.map((r) => siteSeq(r.site_id, r.seq))
}

/**
 * Stores a delivery of `siteId`'s records (live, re-sent or pulled) in one transaction
 * on `client` and returns what it changed. Throws when the database does (nothing of
 * the delivery is then kept; the records come again because they were not acked).
 */
export async function storeRecords(client: pg.ClientBase, siteId: string, incoming: readonly unknown[]): Promise<StoreResult> {
  await client.query('BEGIN')
  try {
    const r = await storeSiteInTx(client, siteId, incoming)
    await client.query('COMMIT')
    return r
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined)
    throw err
  }
}

/** storeRecords' work inside a transaction the caller opened (and commits): the site's row is locked here until then. */
export async function storeSiteInTx(client: pg.ClientBase, siteId: string, incoming: readonly unknown[]): Promise<StoreResult> {
  const rejects: StoreResult['rejects'] = []
  const rejectBodies: string[] = []
  const fresh = new Map<number, { record: JournalRecord; text: string }>()
  const inBatchForks: { record: JournalRecord; text: string }[] = []
  for (const r of incoming) {
    const c = selfCheck(r)
    if (!c.ok) {
      rejects.push({ seq: c.seq, reason: c.reason })
      rejectBodies.push(rejectBody(r))
      continue
    }
    const seen = fresh.get(c.record.seq)
    if (!seen) fresh.set(c.record.seq, c)
    else if (seen.record.hash !== c.record.hash) inBatchForks.push(c)
  }
  {
    await client.query('INSERT INTO sites (site_id) VALUES ($1) ON CONFLICT DO NOTHING', [siteId])
    const site = (
      await client.query<SiteRow & { public_key: string | null }>(
        'SELECT acked, acked_hash, head, chain_break, public_key FROM sites WHERE site_id = $1 FOR UPDATE',
        [siteId],
      )
    ).rows[0]!
    let list = [...fresh.values()].sort((a, b) => a.record.seq - b.record.seq)
    // Salvage proofs first (a forgery or a replay is kept aside, never stored), then late records of a lost range that do not chain.
    const salvage = await takeSalvages(client, siteId, Number(site.acked), site.public_key, list)
    const lost = await lostRanges(client, siteId)
    const refused = [...salvage.refused, ...(lost.length > 0 ? await lateMisfits(client, siteId, lost, list) : [])]
    if (refused.length > 0) {
      const out = new Set(refused.map((x) => x.c))
      list = list.filter((x) => !out.has(x))
      for (const x of refused) {
        rejects.push({ seq: x.c.record.seq, reason: x.reason })
        rejectBodies.push(rejectBody(x.c.record))
      }
    }
    const insertedSeqs = new Set(
      (
        await insertRecords(
          client,
          list.map((x) => ({ site: siteId, c: x })),
        )
      ).map((k) => Number(k.slice(k.indexOf('\n') + 1))),
    )
    const stored = insertedSeqs.size
    // Records not inserted were held already: the same hash is a repeat, another is a fork.
    const held = list.filter((x) => !insertedSeqs.has(x.record.seq))
    const candidates = [...held, ...inBatchForks]
    let duplicates = 0
    const forks: number[] = []
    if (candidates.length > 0) {
      const have = await client.query<{ seq: string; hash: string }>(
        'SELECT seq, hash FROM record_keys WHERE site_id = $1 AND seq = ANY($2::bigint[])',
        [siteId, [...new Set(candidates.map((x) => x.record.seq))]],
      )
      const storedHash = new Map(have.rows.map((r) => [Number(r.seq), r.hash]))
      for (const x of candidates) {
        const h = storedHash.get(x.record.seq)!
        if (h === x.record.hash) {
          duplicates++
          continue
        }
        // A side an operator already moved to history (a resolution) is not a new fork when it comes again.
        const f = await client.query(
          `INSERT INTO forks (site_id, seq, hash, prev, stored_hash, body)
           SELECT $1, $2, $3, $4, $5, $6::jsonb
           WHERE NOT EXISTS (SELECT 1 FROM record_history h WHERE h.site_id = $1 AND h.seq = $2 AND h.hash = $3)
           ON CONFLICT DO NOTHING RETURNING seq`,
          [siteId, x.record.seq, x.record.hash, x.record.prev, h, x.text],
        )
        if (f.rowCount) forks.push(x.record.seq)
      }
    }
    if (rejects.length > 0)
      await client.query(
        `INSERT INTO rejects (site_id, seq, reason, body) SELECT $1, s, r, b::jsonb FROM unnest($2::bigint[], $3::text[], $4::text[]) AS u(s, r, b)`,
        [siteId, rejects.map((x) => x.seq), rejects.map((x) => x.reason), rejectBodies],
      )

    let chainBreak = site.chain_break ?? salvage.brk
    // Records of a lost range that arrived, chained: the lost mark shrinks (those below the prefix are verified now).
    const gained = lost.length > 0 ? await shrinkLost(client, siteId, Number(site.acked)) : []
    const late = await deriveRows(client, siteId, gained)
    // A fork past the verified prefix stops it there: which of the two is the site's record is the operator's call.
    const forkAhead = forks.filter((s) => s > Number(site.acked)).sort((a, b) => a - b)[0]
    if (!chainBreak && forkAhead !== undefined)
      chainBreak = { seq: forkAhead, reason: 'fork', message: `seq ${forkAhead}: two different records were received for this seq` }
    // The links between newly stored records and their stored neighbours, whichever arrived first.
    if (!chainBreak && insertedSeqs.size > 0) chainBreak = await checkLinks(client, siteId, [...insertedSeqs], Number(site.acked))

    const adv = await advancePrefix(client, siteId, site, chainBreak)
    chainBreak = adv.chainBreak
    const { end, verified, publicKey } = adv
    const repeatedSessions = [...late.repeatedSessions, ...adv.repeatedSessions]

    const maxSeq = list.length > 0 ? list[list.length - 1]!.record.seq : 0
    const up = await client.query<{ head: string }>(
      `UPDATE sites SET acked = $2, acked_hash = $3, head = greatest(head, $4), last_seen = now(),
         progress_at = CASE WHEN $2 > acked THEN now() ELSE progress_at END,
         chain_break = $5::jsonb, forks = forks + $6, public_key = coalesce($7, public_key)
       WHERE site_id = $1 RETURNING head`,
      [siteId, end.seq, end.hash, maxSeq, chainBreak ? JSON.stringify(chainBreak) : null, forks.length, publicKey ?? null],
    )
    return { acked: end.seq, stored, duplicates, forks, rejects, verified, chainBreak, head: Number(up.rows[0]!.head), repeatedSessions }
  }
}

/** What advancing a site's verified prefix did: the new end, the records it verified, and the rows derived from them. */
export interface Advance {
  end: ChainPoint
  verified: JournalRecord[]
  chainBreak: ChainBreakRow | null
  repeatedSessions: StoreResult['repeatedSessions']
  publicKey: string | undefined
}

/**
 * Advances the verified prefix of `siteId` (locked by the caller, inside its transaction) over the
 * stored records that follow it without a gap, re-verifying each from its stored body, up to
 * `chainBreak`; writes the sessions and meter reconciliations of the records it verified.
 */
export async function advancePrefix(client: pg.ClientBase, siteId: string, site: SiteRow, brk: ChainBreakRow | null): Promise<Advance> {
  let chainBreak = brk
  // Advance the verified prefix over what is now contiguous, re-verifying from the stored bodies.
  let end: ChainPoint = Number(site.acked) === 0 ? CHAIN_START : { seq: Number(site.acked), hash: site.acked_hash }
  const verified: JournalRecord[] = []
  const limit = chainBreak ? chainBreak.seq - 1 : Number.MAX_SAFE_INTEGER
  // A salvage the database accepted: its lost ranges are passed over, its new chain's first record restarts the link.
  const lost = await lostRanges(client, siteId)
  const salvages = await acceptedSalvages(client, siteId)
  walk: while (end.seq < limit) {
    const gap = lost.find((r) => r.from === end.seq + 1)
    if (gap) {
      if (gap.to + 1 > limit) break
      const next = (await client.query<{ body: JournalRecord }>('SELECT body FROM records WHERE site_id = $1 AND seq = $2', [siteId, gap.to + 1]))
        .rows[0]
      if (!next) break
      end = { seq: gap.to, hash: next.body.prev }
    }
    const page = await client.query<{ seq: string; body: JournalRecord }>(
      'SELECT seq, body FROM records WHERE site_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4',
      [siteId, end.seq, limit, WALK_PAGE],
    )
    if (page.rows.length === 0) break
    for (const row of page.rows) {
      if (Number(row.seq) !== end.seq + 1) {
        if (lost.some((r) => r.from === end.seq + 1)) continue walk
        break walk
      }
      const restart = salvages.get(row.body.seq)
      const from = restart && restart.hash === row.body.hash && row.body.prev === GENESIS_PREV ? { seq: end.seq, hash: GENESIS_PREV } : end
      const v = verifyChain([row.body], from)
      if (!v.ok) {
        chainBreak = { seq: v.break.seq, reason: v.break.reason, message: v.break.message }
        break walk
      }
      // The last record a salvage read must be the one held at its seq: else the salvage continues another chain.
      const read = [...salvages.values()].find((x) => x.lastSeq === row.body.seq && x.lastHash !== row.body.hash)
      if (read) {
        chainBreak = {
          seq: read.seq,
          reason: 'salvage',
          message: `seq ${read.seq}: the salvage read seq ${read.lastSeq} as ${read.lastHash}, the database holds ${row.body.hash}`,
        }
        end = v.end
        verified.push(row.body)
        break walk
      }
      end = v.end
      verified.push(row.body)
    }
    if (page.rows.length < WALK_PAGE) break
  }

  const { repeatedSessions, publicKey } = await deriveRows(client, siteId, verified)
  return { end, verified, chainBreak, repeatedSessions, publicKey }
}

/** The rows derived from newly verified records of one site: sessions, meter reconciliations, and the key a gateway.started announces. */
async function deriveRows(
  client: pg.ClientBase,
  siteId: string,
  verified: JournalRecord[],
): Promise<{ repeatedSessions: StoreResult['repeatedSessions']; publicKey: string | undefined }> {
  return (await deriveRowsMany(client, [{ siteId, records: verified }])).get(siteId)!
}

/** deriveRows for many sites in one statement per table (a batch of deliveries). */
export async function deriveRowsMany(
  client: pg.ClientBase,
  items: { siteId: string; records: JournalRecord[] }[],
): Promise<Map<string, { repeatedSessions: StoreResult['repeatedSessions']; publicKey: string | undefined }>> {
  const out = new Map(
    items.map((x) => [x.siteId, { repeatedSessions: [] as StoreResult['repeatedSessions'], publicKey: undefined as string | undefined }]),
  )
  const sessions = items.flatMap((x) =>
    (x.records.filter((r) => r.type === 'session.ended') as Extract<JournalRecord, { type: 'session.ended' }>[]).map((r) => ({
      site: x.siteId,
      s: r,
    })),
  )
  if (sessions.length > 0) {
    // From the stored records themselves (every verified record is in `records`): the bodies are not sent or parsed twice.
    const ins = (
      await client.query<{ site_id: string; seq: string }>(
        `INSERT INTO sessions (site_id, session_id, seq, outlet, user_id, started_at, ended_at, energy_wh, currency, total, body)
         SELECT r.site_id, r.body->>'sessionId', r.seq, r.body->>'outlet', r.body->>'userId', (r.body->>'startedAt')::timestamptz,
                (r.body->>'endedAt')::timestamptz, (r.body->>'energyWh')::float8, r.body->>'currency', (r.body->>'total')::bigint, r.body
         FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) WITH ORDINALITY AS u(st, s, ts, n)
           JOIN records r ON r.site_id = u.st AND r.seq = u.s AND r.ts = u.ts
         ORDER BY u.n
         ON CONFLICT (site_id, session_id) DO NOTHING RETURNING site_id, seq`,
        // The record's time names its month: each lookup goes to one partition.
        [sessions.map((x) => x.site), sessions.map((x) => x.s.seq), sessions.map((x) => recordTime(x.s.ts))],
      )
    ).rows
    const inserted = new Set(ins.map((r) => `${r.site_id}\n${r.seq}`))
    for (const x of sessions)
      if (!inserted.has(`${x.site}\n${x.s.seq}`)) out.get(x.site)!.repeatedSessions.push({ sessionId: x.s.sessionId, seq: x.s.seq })
  }
  const recs = items.flatMap((x) =>
    (x.records.filter((r) => r.type === 'meter.reconciliation') as Extract<JournalRecord, { type: 'meter.reconciliation' }>[]).map((r) => ({
      site: x.siteId,
      r,
    })),
  )
  if (recs.length > 0)
    await client.query(
      `INSERT INTO meter_reconciliations (site_id, seq, outlet, from_ts, to_ts, meter_start_wh, meter_end_wh, billed_wh, unbilled_wh, body)
       SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::float8[], $7::float8[],
                            $8::float8[], $9::float8[], $10::jsonb[])
       ON CONFLICT DO NOTHING`,
      [
        recs.map((x) => x.site),
        recs.map((x) => x.r.seq),
        recs.map((x) => x.r.outlet),
        recs.map((x) => x.r.from),
        recs.map((x) => x.r.to),
        recs.map((x) => x.r.meterStartWh),
        recs.map((x) => x.r.meterEndWh),
        recs.map((x) => x.r.billedWh),
        recs.map((x) => x.r.unbilledWh),
        recs.map((x) => JSON.stringify(x.r)),
      ],
    )
  for (const x of items)
    for (const r of x.records) if (r.type === 'gateway.started' && typeof r.publicKey === 'string') out.get(x.siteId)!.publicKey = r.publicKey
  return out
}

/**
 * The site's break past its verified prefix worked out afresh from what is stored (after an operator
 * resolved a fork): the lowest fork left past the prefix, else the first link that does not hold.
 */
export async function findBreak(client: pg.ClientBase, siteId: string, acked: number): Promise<ChainBreakRow | null> {
  const f = await client.query<{ seq: string }>('SELECT min(seq) AS seq FROM forks WHERE site_id = $1 AND seq > $2', [siteId, acked])
  const seq = f.rows[0]?.seq
  if (seq !== null && seq !== undefined)
    return { seq: Number(seq), reason: 'fork', message: `seq ${seq}: two different records were received for this seq` }
  return checkLinks(client, siteId, 'all', acked)
}

/**
 * For each newly stored record past the verified prefix, its `prev` against the stored
 * hash of seq − 1 and its hash against the stored `prev` of seq + 1, when those are held.
 * Returns the first mismatch (the seq whose prev does not link), or null.
 */
export async function checkLinks(client: pg.ClientBase, siteId: string, seqs: number[] | 'all', acked: number): Promise<ChainBreakRow | null> {
  const ahead = seqs === 'all' ? null : seqs.filter((s) => s > acked + 1)
  if (ahead?.length === 0) return null
  const res = await client.query<{ seq: string }>(
    `SELECT b.seq FROM records a JOIN records b ON b.site_id = a.site_id AND b.seq = a.seq + 1
     WHERE a.site_id = $1 AND b.prev <> a.hash
       AND NOT (b.prev = '${GENESIS_PREV}' AND EXISTS (SELECT 1 FROM salvages s WHERE s.site_id = b.site_id AND s.seq = b.seq AND s.hash = b.hash))
       AND ($2::bigint[] IS NULL OR a.seq = ANY($2::bigint[]) OR b.seq = ANY($2::bigint[])) AND a.seq > $3
     ORDER BY b.seq LIMIT 1`,
    [siteId, ahead ? ahead.flatMap((s) => [s, s - 1]) : null, acked],
  )
  if (res.rows.length === 0) return null
  const seq = Number(res.rows[0]!.seq)
  return { seq, reason: 'prev', message: `seq ${seq}: prev does not match the hash of seq ${seq - 1}` }
}
