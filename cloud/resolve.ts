/**
 * An operator's view of one site's trouble, and the one change an operator makes: of the two
 * records held at a fork's seq, keep one. `outpost ingest resolve` (cloud/cli.ts) is its
 * command line.
 *
 * Owns: what a site's report lists (its break, each fork with both sides, its rejects, lost
 * ranges, salvages and past resolutions), and what keeping a side does: one transaction under
 * the site's row lock that writes a `resolutions` row (who, when, why), moves the other side
 * to `record_history`, works the site's break out afresh and advances its verified prefix.
 * Must never: delete a record (the side not kept is moved to record_history whole), keep a
 * side that would break the verified prefix (the record after it links to the stored one), or
 * change anything when it refuses.
 */
import type pg from 'pg'
import type { JournalRecord } from '../core/types.js'
import { advancePrefix, findBreak, type SiteRow } from './store.js'
import { recordTime } from './schema.js'

/** A resolve refused for what it asked (no such site, no fork at that seq, a hash that is neither side): nothing changed. */
export class ResolveRefused extends Error {}

export interface ForkSides {
  seq: number
  /** The record held in `records`. */
  stored: { hash: string; prev: string; receivedAt: string; body: JournalRecord }
  /** The other record received for the seq, kept in `forks`. */
  other: { hash: string; prev: string; receivedAt: string; body: JournalRecord }
  /** Whether the stored side is inside the verified prefix (then only it can be kept). */
  inPrefix: boolean
}

export interface SiteReport {
  site: string
  acked: number
  head: number
  chainBreak: { seq: number; reason: string; message: string } | null
  forks: ForkSides[]
  rejects: { id: number; seq: number | null; reason: string; topic: string | null; receivedAt: string }[]
  lost: { from: number; to: number; announcedFrom: number; announcedTo: number; salvageSeq: number }[]
  resolutions: { seq: number; keptHash: string; movedHash: string; by: string; why: string; at: string }[]
}

const iso = (d: Date | string): string => (d instanceof Date ? d.toISOString() : d)

/** Everything an operator needs to decide about `site`; ResolveRefused when the database does not know it. */
export async function siteReport(client: pg.ClientBase, site: string): Promise<SiteReport> {
  const s = (await client.query<SiteRow>('SELECT acked, acked_hash, head, chain_break FROM sites WHERE site_id = $1', [site])).rows[0]
  if (!s) throw new ResolveRefused(`site ${site}: the database holds nothing of it`)
  const forks = await client.query(
    `SELECT f.seq, f.hash, f.prev, f.body, f.received_at, r.hash AS s_hash, r.prev AS s_prev, r.body AS s_body, r.received_at AS s_received_at
     FROM forks f JOIN records r ON r.site_id = f.site_id AND r.seq = f.seq WHERE f.site_id = $1 ORDER BY f.seq, f.hash`,
    [site],
  )
  const rejects = await client.query('SELECT id, seq, reason, topic, received_at FROM rejects WHERE site_id = $1 ORDER BY id', [site])
  const lost = await client.query(
    'SELECT from_seq, to_seq, announced_from, announced_to, salvage_seq FROM lost_ranges WHERE site_id = $1 AND from_seq <= to_seq ORDER BY from_seq',
    [site],
  )
  const res = await client.query('SELECT seq, kept_hash, moved_hash, by_whom, why, at FROM resolutions WHERE site_id = $1 ORDER BY at, seq', [site])
  return {
    site,
    acked: Number(s.acked),
    head: Number(s.head),
    chainBreak: s.chain_break,
    forks: forks.rows.map((r) => ({
      seq: Number(r.seq),
      stored: { hash: r.s_hash, prev: r.s_prev, receivedAt: iso(r.s_received_at), body: r.s_body },
      other: { hash: r.hash, prev: r.prev, receivedAt: iso(r.received_at), body: r.body },
      inPrefix: Number(r.seq) <= Number(s.acked),
    })),
    rejects: rejects.rows.map((r) => ({
      id: Number(r.id),
      seq: r.seq === null ? null : Number(r.seq),
      reason: r.reason,
      topic: r.topic,
      receivedAt: iso(r.received_at),
    })),
    lost: lost.rows.map((r) => ({
      from: Number(r.from_seq),
      to: Number(r.to_seq),
      announcedFrom: Number(r.announced_from),
      announcedTo: Number(r.announced_to),
      salvageSeq: Number(r.salvage_seq),
    })),
    resolutions: res.rows.map((r) => ({
      seq: Number(r.seq),
      keptHash: r.kept_hash,
      movedHash: r.moved_hash,
      by: r.by_whom,
      why: r.why,
      at: iso(r.at),
    })),
  }
}

export interface KeepRequest {
  site: string
  seq: number
  /** The hash of the side to keep: the stored record's, or the fork's. */
  keep: string
  by: string
  why: string
}

export interface KeepResult {
  /** The hashes moved to record_history. */
  moved: string[]
  /** The verified prefix after the resolution (what the next ack says). */
  acked: number
  chainBreak: SiteReport['chainBreak']
}

/** Keeps one side of the fork at `seq`; throws ResolveRefused (and changes nothing) when that cannot be. */
export async function keepSide(client: pg.ClientBase, req: KeepRequest): Promise<KeepResult> {
  await client.query('BEGIN')
  try {
    const site = (await client.query<SiteRow>('SELECT acked, acked_hash, head, chain_break FROM sites WHERE site_id = $1 FOR UPDATE', [req.site]))
      .rows[0]
    if (!site) throw new ResolveRefused(`site ${req.site}: the database holds nothing of it`)
    const forks = (
      await client.query<{ hash: string; prev: string; body: JournalRecord; received_at: Date }>(
        'SELECT hash, prev, body, received_at FROM forks WHERE site_id = $1 AND seq = $2 ORDER BY hash',
        [req.site, req.seq],
      )
    ).rows
    if (forks.length === 0) {
      const any = (
        await client.query<{ seqs: string[] | null }>('SELECT array_agg(DISTINCT seq ORDER BY seq) AS seqs FROM forks WHERE site_id = $1', [req.site])
      ).rows[0]?.seqs
      throw new ResolveRefused(
        any?.length ? `site ${req.site} has no fork at seq ${req.seq} (its forks: seq ${any.join(', ')})` : `site ${req.site} has no fork to resolve`,
      )
    }
    const stored = (await client.query<{ hash: string }>('SELECT hash FROM record_keys WHERE site_id = $1 AND seq = $2', [req.site, req.seq]))
      .rows[0]!
    const acked = Number(site.acked)
    const moved: string[] = []
    const toHistory = async (hash: string, from: 'forks' | 'records') => {
      await client.query(
        `INSERT INTO record_history (site_id, seq, hash, prev, body, received_at)
         SELECT site_id, seq, hash, prev, body, received_at FROM ${from} WHERE site_id = $1 AND seq = $2 AND hash = $3`,
        [req.site, req.seq, hash],
      )
      await client.query('INSERT INTO resolutions (site_id, seq, kept_hash, moved_hash, by_whom, why) VALUES ($1, $2, $3, $4, $5, $6)', [
        req.site,
        req.seq,
        req.keep,
        hash,
        req.by,
        req.why,
      ])
      moved.push(hash)
    }
    if (req.keep === stored.hash) {
      for (const f of forks) {
        await toHistory(f.hash, 'forks')
        await client.query('DELETE FROM forks WHERE site_id = $1 AND seq = $2 AND hash = $3', [req.site, req.seq, f.hash])
      }
    } else {
      const kept = forks.find((f) => f.hash === req.keep)
      if (!kept)
        throw new ResolveRefused(
          `site ${req.site} seq ${req.seq}: ${req.keep} is neither side (stored ${stored.hash}; other ${forks.map((f) => f.hash).join(', ')})`,
        )
      if (req.seq <= acked)
        throw new ResolveRefused(
          `site ${req.site} seq ${req.seq}: the stored record is inside the verified prefix (acked ${acked}), the record after it links to it; only it can be kept`,
        )
      await toHistory(stored.hash, 'records')
      // The kept side may name another month: the row moves to that month's partition, and the key follows.
      const ts = recordTime(kept.body.ts)
      await client.query(
        'UPDATE records SET type = $4, hash = $3, prev = $5, body = $6::jsonb, received_at = $7, ts = $8 WHERE site_id = $1 AND seq = $2',
        [req.site, req.seq, kept.hash, kept.body.type, kept.prev, JSON.stringify(kept.body), kept.received_at, ts],
      )
      await client.query('UPDATE record_keys SET hash = $3, ts = $4 WHERE site_id = $1 AND seq = $2', [req.site, req.seq, kept.hash, ts])
      await client.query('DELETE FROM forks WHERE site_id = $1 AND seq = $2 AND hash = $3', [req.site, req.seq, kept.hash])
      for (const f of forks.filter((x) => x.hash !== kept.hash)) {
        await toHistory(f.hash, 'forks')
        await client.query('DELETE FROM forks WHERE site_id = $1 AND seq = $2 AND hash = $3', [req.site, req.seq, f.hash])
      }
    }
    // The break is worked out afresh from what is now stored, and the prefix goes as far as it verifies.
    const adv = await advancePrefix(client, req.site, site, await findBreak(client, req.site, acked))
    await client.query(
      `UPDATE sites SET acked = $2, acked_hash = $3, chain_break = $4::jsonb, public_key = coalesce($5, public_key),
         progress_at = CASE WHEN $2 > acked THEN now() ELSE progress_at END WHERE site_id = $1`,
      [req.site, adv.end.seq, adv.end.hash, adv.chainBreak ? JSON.stringify(adv.chainBreak) : null, adv.publicKey ?? null],
    )
    await client.query('COMMIT')
    return { moved, acked: adv.end.seq, chainBreak: adv.chainBreak }
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined)
    throw err
  }
}
