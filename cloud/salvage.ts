/**
 * A salvaged gateway continuing in the database: its salvage proof (gateway.started.salvageProof,
 * signed with the gateway key) checked against the key the site announced before, the seqs it
 * says will never come marked in `lost_ranges`, records of a lost range that arrive later kept
 * only when they chain, and the lost mark shrunk as they do. Runs inside a delivery's
 * transaction (cloud/store.ts), under the site's row lock.
 *
 * Owns: what makes a salvage proof valid (the signature over salvageStatement, the site, its
 * record's seq and prev, a key the site announced, never seen before), and how far a lost
 * range reaches.
 * Must never: accept a proof on the key the record itself carries, mark a seq the database
 * holds verified as lost, or store a late record of a lost range that does not chain.
 */
import type pg from 'pg'
import type { JournalRecord, SalvageProof } from '../core/types.js'
import { GENESIS_PREV, salvageProofVerifies } from '../daemon/journal/chain.js'

export interface LostRange {
  from: number
  to: number
  announcedFrom: number
}

/** A salvage the database accepted: the walk restarts the chain at its seq and checks the last record it read. */
export interface AcceptedSalvage {
  seq: number
  hash: string
  lastSeq: number | null
  lastHash: string | null
}

type Candidate = { record: JournalRecord; text: string }

function proofOf(r: JournalRecord): SalvageProof | undefined {
  if (r.type !== 'gateway.started' || !r.journalSalvage) return undefined
  const p = r.salvageProof
  return typeof p === 'object' && p !== null ? p : undefined
}

/** Why a salvage proof is refused (a forgery, a replay), or undefined when it holds. */
function proofProblem(siteId: string, r: JournalRecord, p: SalvageProof, key: string | null): string | undefined {
  if (typeof p.signature !== 'string' || !Array.isArray(p.lost) || (p.last !== null && typeof p.last !== 'object'))
    return `seq ${r.seq}: forgery: the salvage proof is not one (signature, last and lost are required)`
  if (p.site !== siteId || p.seq !== r.seq || p.prev !== r.prev)
    return `seq ${r.seq}: forgery: the salvage proof names site ${p.site} seq ${p.seq}, not this record's`
  if (!key) return `seq ${r.seq}: forgery: a salvage from a key the site never announced (the database holds no key of ${siteId})`
  if (r.type === 'gateway.started' && typeof r.publicKey === 'string' && r.publicKey.trim() !== key.trim())
    return `seq ${r.seq}: forgery: the salvage names a key the site never announced`
  return salvageProofVerifies(p, key)
    ? undefined
    : `seq ${r.seq}: forgery: the salvage's signature does not verify against the key the site announced`
}

/**
 * Checks every salvage proof among `list` (the delivery's new records) and accepts the valid ones:
 * a `salvages` row, its lost ranges (cut to what lies past the verified prefix `acked`). Returns the
 * records refused (forgeries and replays: they go to rejects, not records) and a break when the
 * last record a salvage read is not the one the prefix holds.
 */
export async function takeSalvages(
  client: pg.ClientBase,
  siteId: string,
  acked: number,
  publicKey: string | null,
  list: Candidate[],
): Promise<{ refused: { c: Candidate; reason: string }[]; brk: { seq: number; reason: string; message: string } | null }> {
  const refused: { c: Candidate; reason: string }[] = []
  let brk: { seq: number; reason: string; message: string } | null = null
  for (const c of list) {
    const p = proofOf(c.record)
    if (!p) continue
    const seen = (
      await client.query<{ seq: string; hash: string }>('SELECT seq, hash FROM salvages WHERE site_id = $1 AND signature = $2', [siteId, p.signature])
    ).rows[0]
    if (seen) {
      // The same record again is a repeat (the insert says so); its proof in another record is a replay.
      if (Number(seen.seq) !== c.record.seq || seen.hash !== c.record.hash)
        refused.push({ c, reason: `seq ${c.record.seq}: salvage replayed: its proof was accepted at seq ${seen.seq} already` })
      continue
    }
    const problem = proofProblem(siteId, c.record, p, publicKey)
    if (problem) {
      refused.push({ c, reason: problem })
      continue
    }
    const held = (await client.query('SELECT 1 FROM records WHERE site_id = $1 AND seq = $2', [siteId, c.record.seq])).rowCount
    if (held) continue // a different record holds the seq: the insert makes it a fork, the operator decides
    await client.query(
      `INSERT INTO salvages (site_id, seq, hash, last_seq, last_hash, lost, signature, public_key) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)`,
      [siteId, c.record.seq, c.record.hash, p.last?.seq ?? null, p.last?.hash ?? null, JSON.stringify(p.lost), p.signature, publicKey],
    )
    for (const r of p.lost) {
      const from = Math.max(r.from, acked + 1)
      if (!Number.isSafeInteger(r.from) || !Number.isSafeInteger(r.to) || from > r.to || r.to >= c.record.seq) continue
      await client.query(
        `INSERT INTO lost_ranges (site_id, announced_from, announced_to, salvage_seq, from_seq, to_seq) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT DO NOTHING`,
        [siteId, r.from, r.to, c.record.seq, from, r.to],
      )
    }
    // The last record it read, when the prefix holds that seq already, must be the one the prefix holds.
    if (p.last && p.last.seq <= acked) {
      const h = (await client.query<{ hash: string }>('SELECT hash FROM records WHERE site_id = $1 AND seq = $2', [siteId, p.last.seq])).rows[0]?.hash
      if (h !== undefined && h !== p.last.hash && !brk)
        brk = {
          seq: c.record.seq,
          reason: 'salvage',
          message: `seq ${c.record.seq}: the salvage read seq ${p.last.seq} as ${p.last.hash}, the database holds ${h}`,
        }
    }
  }
  return { refused, brk }
}

/** The site's lost ranges still open, ascending. */
export async function lostRanges(client: pg.ClientBase, siteId: string): Promise<LostRange[]> {
  const { rows } = await client.query<{ from_seq: string; to_seq: string; announced_from: string }>(
    'SELECT from_seq, to_seq, announced_from FROM lost_ranges WHERE site_id = $1 AND from_seq <= to_seq ORDER BY from_seq',
    [siteId],
  )
  return rows.map((r) => ({ from: Number(r.from_seq), to: Number(r.to_seq), announcedFrom: Number(r.announced_from) }))
}

/** The salvages the database accepted for the site, by seq. */
export async function acceptedSalvages(client: pg.ClientBase, siteId: string): Promise<Map<number, AcceptedSalvage>> {
  const { rows } = await client.query<{ seq: string; hash: string; last_seq: string | null; last_hash: string | null }>(
    'SELECT seq, hash, last_seq, last_hash FROM salvages WHERE site_id = $1',
    [siteId],
  )
  return new Map(
    rows.map((r) => [
      Number(r.seq),
      { seq: Number(r.seq), hash: r.hash, lastSeq: r.last_seq === null ? null : Number(r.last_seq), lastHash: r.last_hash },
    ]),
  )
}

/**
 * Records of the delivery that fall in a lost range and do not chain with the records held (or
 * delivered) beside them: each with its reason. The record right below a new chain's start is
 * not compared with it (the new chain links to nothing).
 */
export async function lateMisfits(
  client: pg.ClientBase,
  siteId: string,
  lost: LostRange[],
  list: Candidate[],
): Promise<{ c: Candidate; reason: string }[]> {
  const late = list.filter((x) => lost.some((r) => x.record.seq >= r.from && x.record.seq <= r.to))
  if (late.length === 0) return []
  const around = new Set(late.flatMap((x) => [x.record.seq - 1, x.record.seq + 1]))
  const { rows } = await client.query<{ seq: string; hash: string; prev: string }>(
    'SELECT seq, hash, prev FROM records WHERE site_id = $1 AND seq = ANY($2::bigint[])',
    [siteId, [...around]],
  )
  const near = new Map(rows.map((r) => [Number(r.seq), { hash: r.hash, prev: r.prev }]))
  for (const x of list) if (!near.has(x.record.seq)) near.set(x.record.seq, { hash: x.record.hash, prev: x.record.prev })
  const out: { c: Candidate; reason: string }[] = []
  for (const x of late) {
    const below = near.get(x.record.seq - 1)
    const above = near.get(x.record.seq + 1)
    if (below && below.hash !== x.record.prev)
      out.push({
        c: x,
        reason: `seq ${x.record.seq}: a record of a lost range that does not chain: its prev is not the hash of seq ${x.record.seq - 1}`,
      })
    else if (above && above.prev !== GENESIS_PREV && above.prev !== x.record.hash)
      out.push({ c: x, reason: `seq ${x.record.seq}: a record of a lost range that does not chain: seq ${x.record.seq + 1} links to another` })
  }
  return out
}

/**
 * Shrinks each lost range over the records now held at its ends that chain: from the front while the
 * record at `from` links to the one below it, from the back while the one above links to the record at
 * `to`. Returns the records the front gained below the verified prefix `acked` (a walk jumped the range
 * before they came; chained to it, they are verified now), in seq order, for the derived rows.
 */
export async function shrinkLost(client: pg.ClientBase, siteId: string, acked: number): Promise<JournalRecord[]> {
  const gained: JournalRecord[] = []
  for (const r of await lostRanges(client, siteId)) {
    const { rows } = await client.query<{ seq: string; hash: string; prev: string; body: JournalRecord }>(
      `SELECT seq, hash, prev, body FROM records WHERE site_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq`,
      [siteId, r.from - 1, r.to + 1],
    )
    const at = new Map(rows.map((x) => [Number(x.seq), x]))
    let from = r.from
    while (from <= r.to && at.has(from) && at.has(from - 1) && at.get(from)!.prev === at.get(from - 1)!.hash) {
      if (from <= acked) gained.push(at.get(from)!.body)
      from++
    }
    let to = r.to
    while (to >= from && at.has(to) && at.has(to + 1) && at.get(to + 1)!.prev === at.get(to)!.hash) to--
    if (from !== r.from || to !== r.to)
      await client.query('UPDATE lost_ranges SET from_seq = $3, to_seq = $4 WHERE site_id = $1 AND announced_from = $2', [
        siteId,
        r.announcedFrom,
        from,
        to,
      ])
  }
  return gained
}
