/**
 * Opening the journal for `outpost run`, and what happens when LevelDB or the
 * tail of the chain is damaged (JOURNAL_CORRUPT): the site must still charge.
 *
 * Owns: moving a damaged journal aside (`journal.corrupt-<UTC time>` beside it,
 * kept whole for `outpost repair` and forensics), then either a repaired copy
 * (LevelDB's repair on a copy, used only if the WHOLE chain then verifies, the
 * ack watermark is within it and no damaged table had to be left out) or a fresh journal that carries over everything it
 * could read: every readable record from the ack watermark on, each missing range
 * between them a hole (m!holes) never given out again, the engine state, readings and
 * command results. It reports what it did (the caller logs it loudly and puts it
 * in `gateway.started.journalSalvage`).
 *
 * Must never: delete or change the damaged journal (it is renamed, never
 * written), salvage on anything but JOURNAL_CORRUPT (a lock, permissions, a
 * format from a newer build are refused as before), carry over a record that does
 * not chain, or put the ack watermark past the carried records.
 */
import { mkdir, rename, rm } from 'node:fs/promises'
import { Level } from 'level'
import type { JournalRecord, JournalSalvageInfo } from '../../core/types.js'
import { isOutpostError } from '../errors.js'
import { ChainVerifier, GENESIS_PREV } from './chain.js'
import { paginationOf } from '../ocmf.js'
import { droppedByLevelDb, Journal, journalLocation, type JournalDb, type JournalOptions } from './journal.js'
import { verifyDb } from './offline.js'
import * as K from './keys.js'
import { asideName, copyJournalDir, exists, settleJournalDir, stagingLocation, swapIn, syncDir, syncTree } from './swap.js'
import { type MarkerRead, readMarker, unknownChainBase, writeMarker } from './seq-marker.js'
import { repairLevelDb } from './level-repair.js'
import { describeDamage, type LeftOutTable, leaveOutDamagedTables } from './table-check.js'

/** What boot did with a damaged journal; `gateway.started.journalSalvage` in the contract (core/types.ts). */
export type JournalSalvage = JournalSalvageInfo

export interface SalvageLog {
  warn(fields: Record<string, unknown>, msg: string): void
}

/**
 * Journal.open, and on JOURNAL_CORRUPT: move aside, then a repaired copy or a fresh journal with
 * what could be read. `opts.expectExisting`: a journal existed in storage.dir before this start
 * (the gateway key did), so an empty or missing one is a lost journal.
 */
export async function openJournalForRun(
  storageDir: string,
  opts: JournalOptions,
  log: SalvageLog,
): Promise<{ journal: Journal; salvage?: JournalSalvage }> {
  if (await settleJournalDir(storageDir))
    log.warn({ dir: journalLocation(storageDir) }, 'a journal repair or salvage was cut off after its result was on disk: finished it')
  const location = journalLocation(storageDir)
  const wasThere = await exists(location)
  let reason: string
  try {
    const journal = await Journal.open(storageDir, opts)
    if (journal.markerProblem) log.warn({ marker: journal.markerProblem }, `JOURNAL SEQ MARKER UNREADABLE: ${journal.markerProblem}`)
    return { journal }
  } catch (err) {
    if (!isOutpostError(err, 'JOURNAL_CORRUPT')) throw err
    reason = (err as Error).message
  }
  // Open created the directory it found missing: that empty LevelDB is ours, not a journal to keep.
  if (!wasThere) await rm(location, { recursive: true, force: true, maxRetries: 5 })
  const salvage = await salvageJournal(storageDir, opts.now(), reason, { expectExisting: opts.expectExisting === true })
  log.warn({ ...salvage }, salvageMessage(salvage))
  return { journal: await Journal.open(storageDir, { ...opts, expectExisting: false }), salvage }
}

/** The error-level line a salvage is reported with: where the journal went, and every seq it could not carry. */
function salvageMessage(s: JournalSalvage): string {
  const onto = s.mode === 'repaired' ? 'repaired copy' : 'fresh journal'
  const where = s.movedTo ? `moved to ${s.movedTo}` : 'the journal directory was missing'
  const parts: string[] = []
  if (s.lost) parts.push(`unacknowledged records ${s.lost.map((r) => `${r.from}..${r.to}`).join(', ')} could not be read`)
  if (s.lostAfter) parts.push(`records ${s.lostAfter.from}..${s.lostAfter.to} were lost`)
  if (s.unknownAbove !== null && s.unknownAbove !== undefined)
    parts.push(`records above seq ${s.unknownAbove} may have been lost (how many is unknown)`)
  if (s.newChain) parts.push('a new chain starts')
  if (s.sessionsMayBeLost) parts.push('sessions open in the lost part may have been lost')
  const keep = s.movedTo ? 'Keep the moved directory; see' : 'See'
  return `JOURNAL DAMAGED: ${where}; charging continues on a ${onto}${parts.length ? `; ${parts.join('; ')}` : ''}. ${keep} README troubleshooting`
}

function newLevel(location: string, createIfMissing: boolean): JournalDb {
  return new Level<string, string>(location, { keyEncoding: 'utf8', valueEncoding: 'utf8', createIfMissing }) as unknown as JournalDb
}

/** What the salvage knows, outside the records it can read, about the seqs the damaged journal gave out. */
interface Evidence {
  marker: MarkerRead
  /** LevelDB's report of log data it dropped while opening the damaged journal. */
  dropped: string[]
  /** The highest seq the damaged journal itself shows (record keys, m!base), undefined when it cannot be read. */
  headSeen: number | undefined
  /** LevelDB's repair ran and reported nothing dropped or ignored (its own info log). */
  repairedWhole: boolean
  /** The damaged journal holds nothing (no format marker) or is missing, but one existed (the gateway key, or the marker). */
  emptied: boolean
  /** Tables left out for failing their checksums: whatever else they held (engine state, outlet entries) is gone too. */
  tablesLeftOut: number
}

/**
 * Move the damaged journal of `storageDir` aside and put in its place the best
 * journal that can be built from it. The daemon must hold no lock on it. With no
 * journal directory at all (deleted), the replacement is built from the evidence
 * outside it (the seq marker, the gateway key) alone.
 */
export async function salvageJournal(
  storageDir: string,
  now: number,
  reason: string,
  ctx: { expectExisting?: boolean } = {},
): Promise<JournalSalvage> {
  const location = journalLocation(storageDir)
  const next = stagingLocation(storageDir)
  const work = `${location}.salvage`
  const source = await exists(location)
  await rm(next, { recursive: true, force: true, maxRetries: 5 })
  await rm(work, { recursive: true, force: true, maxRetries: 5 })
  const ev: Evidence = {
    marker: await readMarker(storageDir),
    dropped: [],
    headSeen: source ? undefined : 0,
    emptied: !source,
    repairedWhole: false,
    tablesLeftOut: 0,
  }
  let db: JournalDb | undefined
  if (source) {
    // Repair works on a copy: the damaged directory stays exactly as it was found. A table failing its checksums is
    // left out of every copy (LevelDB would read it unchecked, or abort on it): what it held counts as dropped.
    const leftOut = await copyOf(location, work)
    ev.tablesLeftOut = leftOut.length
    // First as LevelDB opens it untouched: how far its log goes, and what LevelDB drops on the way.
    ev.headSeen = await headOf(work).catch(() => undefined)
    ev.dropped = [...leftOut.map((d) => describeDamage([d])), ...(await droppedByLevelDb(location)), ...(await droppedByLevelDb(work))]
    if (ev.headSeen === -1) {
      ev.emptied = ctx.expectExisting === true || ev.marker.state !== 'missing'
      ev.headSeen = 0
    }
    await rm(work, { recursive: true, force: true, maxRetries: 5 })
    await copyOf(location, work)
    try {
      await repairLevelDb(work)
      // Read before the copy is opened (an open starts a new info log): what the repair had to leave out.
      const left = await droppedByLevelDb(work)
      ev.dropped.push(...left)
      ev.repairedWhole = left.length === 0
      db = newLevel(work, false)
      await db.open()
    } catch {
      await db?.close().catch(() => {})
      db = undefined
      // Repair failed (or crashed: it runs in a child): read what an untouched copy still gives.
      await rm(work, { recursive: true, force: true, maxRetries: 5 })
      await copyOf(location, work)
      try {
        db = newLevel(work, false)
        await db.open()
      } catch {
        await db?.close().catch(() => {})
        db = undefined
      }
    }
    // The records a damaged table still gave go back into the copy where it has none (each is checked, hash and
    // chain, before it is carried): a flipped byte costs the records it garbled, not its whole table.
    if (db) await putBack(db, leftOut)
  }
  let result: Omit<JournalSalvage, 'movedTo'>
  let head = 0
  let acked = 0
  try {
    const report = db ? await verifyDb(db).catch(() => undefined) : undefined
    const top = report?.last ?? 0
    // A repaired copy is the journal only when nothing was left out of it: a table left out may have held engine
    // state, so the boot must read as unclean (the fresh journal's m!running) and rebuild from what is left.
    if (
      db &&
      report &&
      !report.break &&
      ev.tablesLeftOut === 0 &&
      (await db.get(K.META_FORMAT)) === K.FORMAT &&
      (await db.get(K.META_BASE)) === undefined &&
      (await db.get(K.META_HOLES)) === undefined &&
      knownHighest(ev, top) === top
    ) {
      await db.close()
      db = undefined
      await rename(work, next)
      head = top
      acked = report.acked ?? 0
      result = { mode: 'repaired', reason, carried: report.count > 0 ? { from: report.first!, to: report.last! } : null, lost: null, ...NOTHING_LOST }
    } else {
      const fresh = await buildFresh(db, next, now, ev)
      head = fresh.head
      acked = fresh.acked
      result = { mode: 'fresh', reason, ...fresh.info }
    }
  } finally {
    await db?.close().catch(() => {})
    await rm(work, { recursive: true, force: true, maxRetries: 5 })
  }
  // Only now, with the replacement complete and fsynced, does the damaged journal move aside.
  await syncTree(next)
  // The marker follows the replacement before it takes the journal's place: a cut in between salvages again, to the same seqs.
  const reserved = Math.max(head, ev.marker.state === 'ok' ? ev.marker.marker.reserved : 0)
  await writeMarker(storageDir, { reserved, head, acked: Math.min(acked, head), clean: false })
  if (!source) {
    await rename(next, location)
    await syncDir(storageDir)
    return { ...result, movedTo: null }
  }
  const movedTo = await asideName(storageDir, 'corrupt', now)
  await swapIn(storageDir, movedTo)
  return { ...result, movedTo }
}

const NOTHING_LOST = { lostAfter: null, unknownAbove: null, newChain: false, sessionsMayBeLost: false } as const

async function putBack(db: JournalDb, leftOut: LeftOutTable[]): Promise<void> {
  const ops: { type: 'put'; key: string; value: string }[] = []
  for (const table of leftOut)
    for (const [key, value] of table.entries) if ((await db.get(key).catch(() => undefined)) === undefined) ops.push({ type: 'put', key, value })
  if (ops.length > 0) await db.batch(ops)
}

/** A copy of the journal at `work`, less its damaged tables; returns the live ones left out. */
async function copyOf(location: string, work: string): Promise<LeftOutTable[]> {
  await mkdir(work, { recursive: true })
  await copyJournalDir(location, work)
  return leaveOutDamagedTables(work, K.RECORDS.gte)
}

/** The highest seq an untouched copy shows (its record keys, its m!base); -1 when it holds no format marker (empty). */
async function headOf(work: string): Promise<number> {
  const db = newLevel(work, false)
  await db.open()
  try {
    if ((await db.get(K.META_FORMAT)) === undefined) return -1
    let head = 0
    for await (const key of db.keys({ ...K.RECORDS, reverse: true, limit: 1 })) head = K.seqOfRecordKey(key)
    const base = await db.get(K.META_BASE)
    if (base !== undefined) head = Math.max(head, Number((JSON.parse(base) as { seq?: unknown }).seq) || 0)
    return head
  } finally {
    await db.close()
  }
}

/**
 * The highest seq the damaged journal gave out, when the evidence proves it: a clean stop's marker
 * names it exactly; otherwise LevelDB dropped nothing (neither while opening nor in its repair),
 * the highest seq still seen (`seen`: record keys, m!base) is its head as it opened, and the
 * marker (when there is one) is not past it. undefined: records above `seen` may have been lost.
 */
function knownHighest(ev: Evidence, seen: number): number | undefined {
  if (ev.emptied || ev.marker.state === 'garbled') return undefined
  if (ev.marker.state === 'ok' && ev.marker.marker.clean) return seen <= ev.marker.marker.head ? ev.marker.marker.head : undefined
  if (ev.marker.state === 'ok' && seen < ev.marker.marker.head) return undefined
  // The head as LevelDB showed it before the repair; when it could not open, the repair must have left nothing out.
  const whole = ev.headSeen !== undefined ? seen >= ev.headSeen : ev.repairedWhole
  return ev.dropped.length === 0 && whole ? seen : undefined
}

interface Fresh {
  info: Pick<JournalSalvage, 'carried' | 'lost' | 'lostAfter' | 'unknownAbove' | 'newChain' | 'sessionsMayBeLost'>
  head: number
  acked: number
}

/** A fresh journal at `dest` holding what `db` (a repaired copy, or nothing) could give. */
async function buildFresh(db: JournalDb | undefined, dest: string, now: number, ev: Evidence): Promise<Fresh> {
  const out = newLevel(dest, true)
  await out.open()
  let carried: JournalSalvage['carried'] = null
  const lost: { from: number; to: number }[] = []
  let acked = 0
  let head = 0
  const info: Omit<Fresh['info'], 'carried' | 'lost'> = { ...NOTHING_LOST }
  try {
    const ops: { type: 'put'; key: string; value: string }[] = [{ type: 'put', key: K.META_FORMAT, value: K.FORMAT }]
    // This boot must read as unclean: the engine closes open sessions with power-loss.
    ops.push({ type: 'put', key: K.META_RUNNING, value: JSON.stringify({ bootId: 'salvaged', since: now, version: null }) })
    // Every seq the damaged journal and the evidence outside it show as given out.
    let highest = ev.headSeen ?? 0
    // The marker's watermark: the cloud held at least that much when it was written.
    if (ev.marker.state === 'ok') highest = Math.max(highest, ev.marker.marker.head)
    acked = ev.marker.state === 'ok' ? ev.marker.marker.acked : 0
    if (db) {
      const ackText = await db.get(K.META_ACKED).catch(() => undefined)
      acked = Math.max(acked, Number.isSafeInteger(Number(ackText)) && Number(ackText) > 0 ? Number(ackText) : 0)
      // A damaged table can fail any read: each part takes what it can, and an unreadable rest stays behind in the moved directory.
      const readable = await chainedRecords(db).catch(() => [])
      if (readable.length > 0) {
        // From the acknowledged head on (kept so the chain's link stays checkable), or all of them if they start later.
        const keep = readable.filter((r) => r.record.seq >= Math.min(Math.max(acked, 1), readable[readable.length - 1]!.record.seq))
        for (const r of keep) ops.push({ type: 'put', key: K.recordKey(r.record.seq), value: r.text })
        const from = keep[0]!.record.seq
        const to = keep[keep.length - 1]!.record.seq
        carried = { from, to }
        if (from > acked + 1) lost.push({ from: acked + 1, to: from - 1 })
        // Every seq missing between carried records is a hole: never given out again, never sent.
        const holes: { from: number; to: number }[] = []
        for (let i = 1; i < keep.length; i++) {
          const below = keep[i - 1]!.record.seq
          const above = keep[i]!.record.seq
          if (above > below + 1) holes.push({ from: below + 1, to: above - 1 })
        }
        if (holes.length > 0) ops.push({ type: 'put', key: K.META_HOLES, value: JSON.stringify(holes) })
        lost.push(...holes)
        acked = Math.min(Math.max(acked, from - 1), to)
        head = to
      }
      try {
        for await (const key of db.keys(K.RECORDS)) {
          const seq = K.seqOfRecordKey(key)
          if (Number.isSafeInteger(seq) && seq > highest) highest = seq
        }
      } catch {
        // the keys read before the damage still count
      }
      const baseText = await db.get(K.META_BASE).catch(() => undefined)
      if (baseText !== undefined) highest = Math.max(highest, Number((JSON.parse(baseText) as { seq?: unknown }).seq) || 0)
      for (const range of [K.SECTIONS, K.OUTLETS, K.COMMANDS, K.READINGS, K.ASIDE]) {
        try {
          for await (const [key, value] of db.iterator(range)) {
            try {
              JSON.parse(value)
              ops.push({ type: 'put', key, value })
            } catch {
              // An unreadable entry stays in the moved directory only.
            }
          }
        } catch {
          // A damaged table ends this range here; what came before it is kept.
        }
      }
      if ((await db.get(K.META_STATE).catch(() => undefined)) !== undefined) ops.push({ type: 'put', key: K.META_STATE, value: '1' })
      // The OCMF pagination counter goes on where it was (it is written with every session.ended, so it is never
      // behind a record); when it cannot be read, past the highest counter a readable record carries.
      const pgText = await db.get(K.META_PAGINATION).catch(() => undefined)
      let pagination = Number.isSafeInteger(Number(pgText)) && Number(pgText) > 0 ? Number(pgText) : 0
      try {
        for await (const text of db.values(K.RECORDS)) {
          if (!text.includes('"session.ended"')) continue
          try {
            pagination = Math.max(pagination, paginationOf((JSON.parse(text) as { ocmf?: string }).ocmf) ?? 0)
          } catch {
            // not a record: skipped
          }
        }
      } catch {
        // a damaged table: the counters read before it still count
      }
      if (pagination > 0) ops.push({ type: 'put', key: K.META_PAGINATION, value: String(pagination) })
      const keyText = await db.get(K.META_KEY).catch(() => undefined)
      if (keyText !== undefined) ops.push({ type: 'put', key: K.META_KEY, value: keyText })
    }
    highest = Math.max(highest, acked)
    const m = ev.marker.state === 'ok' ? ev.marker.marker : undefined
    const known = knownHighest(ev, highest)
    if (known === undefined || known > head) {
      // Records above `head` are gone (or may be): the log goes on past every seq that may have been given out, in a
      // new chain (its first record's prev is 64 zeros) that no cloud can mistake for the old one. How far the old
      // chain may have gone: known, a clean stop's marker, the marker's reservation, or unknown (a time-based seq).
      const seen = Math.max(highest, m?.head ?? 0)
      const base = known ?? (m ? Math.max(m.clean ? m.head : m.reserved, seen) : Math.max(unknownChainBase(now), seen))
      const from = Math.max(head, acked) + 1
      if (seen >= from) {
        if (carried) info.lostAfter = { from, to: seen }
        else lost.push({ from, to: seen })
      }
      if (known === undefined && !(m?.clean && base === seen)) info.unknownAbove = seen
      ops.push({ type: 'put', key: K.META_BASE, value: JSON.stringify({ seq: base, hash: GENESIS_PREV }) })
      info.newChain = true
      // Nothing carried waits for the cloud: the lost seqs are never sent, the new chain is next.
      if (acked >= head) acked = base
      head = base
      // The lost part may have held a session.started whose session no surviving state shows (a clean stop had closed them all).
      info.sessionsMayBeLost = !m?.clean
    }
    if (lost.length > 0 && !m?.clean) info.sessionsMayBeLost = true
    if (acked > 0) ops.push({ type: 'put', key: K.META_ACKED, value: String(acked) })
    await out.batch(ops, { sync: true } as { keyEncoding?: string })
  } finally {
    await out.close()
  }
  return { info: { carried, lost: lost.length > 0 ? lost : null, ...info }, head, acked }
}

/**
 * Every readable record that hashes right, ascending: runs of consecutive seqs, each linking (prev = hash) to the one
 * before; between runs, seqs that could not be read. Two consecutive seqs that do not link are not the same chain: only
 * the records from there on are kept (the newest are the ones the gateway went on from).
 */
async function chainedRecords(db: JournalDb): Promise<{ record: JournalRecord; text: string }[]> {
  let out: { record: JournalRecord; text: string }[] = []
  for await (const [key, text] of db.iterator(K.RECORDS)) {
    let record: JournalRecord
    try {
      record = JSON.parse(text) as JournalRecord
    } catch {
      continue // not a record: a hole
    }
    if (record.seq !== K.seqOfRecordKey(key)) continue
    if (new ChainVerifier({ seq: record.seq, prev: record.prev }).push(record)) continue
    const before = out[out.length - 1]?.record
    if (before && before.seq === record.seq - 1 && record.prev !== before.hash) out = []
    out.push({ record, text })
  }
  return out
}
