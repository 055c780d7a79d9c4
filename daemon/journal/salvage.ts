/**
 * Opening the journal for `outpost run`, and what happens when LevelDB or the
 * tail of the chain is damaged (JOURNAL_CORRUPT): the site must still charge.
 *
 * Owns: moving a damaged journal aside (`journal.corrupt-<UTC time>` beside it,
 * kept whole for `outpost repair` and forensics), then either a repaired copy
 * (LevelDB's repair on a copy, used only if the WHOLE chain then verifies and the
 * ack watermark is within it) or a fresh journal that carries over everything it
 * could read: the chained run of records ending at the newest readable one (all
 * unacknowledged records, when they are readable), the engine state, readings and
 * command results. It reports what it did (the caller logs it loudly and puts it
 * in `gateway.started.journalSalvage`).
 *
 * Must never: delete or change the damaged journal (it is renamed, never
 * written), salvage on anything but JOURNAL_CORRUPT (a lock, permissions, a
 * format from a newer build are refused as before), carry over a record that does
 * not chain, or put the ack watermark past the carried records.
 */
import { cp, rename, rm } from 'node:fs/promises'
import { Level } from 'level'
import type { JournalRecord, JournalSalvageInfo } from '../../core/types.js'
import { isOutpostError } from '../errors.js'
import { ChainVerifier, GENESIS_PREV } from './chain.js'
import { paginationOf } from '../ocmf.js'
import { Journal, journalLocation, type JournalDb, type JournalOptions } from './journal.js'
import { verifyDb } from './offline.js'
import * as K from './keys.js'
import { asideName, settleJournalDir, stagingLocation, swapIn, syncTree } from './swap.js'
import { repairLevelDb } from './level-repair.js'

/** What boot did with a damaged journal; `gateway.started.journalSalvage` in the contract (core/types.ts). */
export type JournalSalvage = JournalSalvageInfo

export interface SalvageLog {
  warn(fields: Record<string, unknown>, msg: string): void
}

/** Journal.open, and on JOURNAL_CORRUPT: move aside, then a repaired copy or a fresh journal with what could be read. */
export async function openJournalForRun(
  storageDir: string,
  opts: JournalOptions,
  log: SalvageLog,
): Promise<{ journal: Journal; salvage?: JournalSalvage }> {
  if (await settleJournalDir(storageDir))
    log.warn({ dir: journalLocation(storageDir) }, 'a journal repair or salvage was cut off after its result was on disk: finished it')
  try {
    return { journal: await Journal.open(storageDir, opts) }
  } catch (err) {
    if (!isOutpostError(err, 'JOURNAL_CORRUPT')) throw err
    const salvage = await salvageJournal(storageDir, opts.now(), (err as Error).message)
    const onto = salvage.mode === 'repaired' ? 'repaired copy' : 'fresh journal'
    const lost = salvage.lost ? `; unacknowledged records ${salvage.lost.from}..${salvage.lost.to} could not be read` : ''
    log.warn(
      { ...salvage },
      `JOURNAL DAMAGED: moved to ${salvage.movedTo}; charging continues on a ${onto}${lost}. Keep the moved directory; see README troubleshooting`,
    )
    return { journal: await Journal.open(storageDir, opts), salvage }
  }
}

function newLevel(location: string, createIfMissing: boolean): JournalDb {
  return new Level<string, string>(location, { keyEncoding: 'utf8', valueEncoding: 'utf8', createIfMissing }) as unknown as JournalDb
}

/**
 * Move the damaged journal of `storageDir` aside and put in its place the best
 * journal that can be built from it. The daemon must hold no lock on it.
 */
export async function salvageJournal(storageDir: string, now: number, reason: string): Promise<JournalSalvage> {
  const location = journalLocation(storageDir)
  const next = stagingLocation(storageDir)
  const work = `${location}.salvage`
  await rm(next, { recursive: true, force: true })
  await rm(work, { recursive: true, force: true })
  // Repair works on a copy: the damaged directory stays exactly as it was found.
  await cp(location, work, { recursive: true, filter: (src) => !src.endsWith('/LOCK') })
  let db: JournalDb | undefined
  try {
    await repairLevelDb(work)
    db = newLevel(work, false)
    await db.open()
  } catch {
    await db?.close().catch(() => {})
    db = undefined
    // Repair failed (or crashed: it runs in a child): read what an untouched copy still gives.
    await rm(work, { recursive: true, force: true })
    await cp(location, work, { recursive: true, filter: (src) => !src.endsWith('/LOCK') })
    try {
      db = newLevel(work, false)
      await db.open()
    } catch {
      await db?.close().catch(() => {})
      db = undefined
    }
  }
  let result: Omit<JournalSalvage, 'movedTo'>
  try {
    const report = db ? await verifyDb(db).catch(() => undefined) : undefined
    if (db && report && !report.break && (await db.get(K.META_FORMAT)) === K.FORMAT) {
      await db.close()
      db = undefined
      await rename(work, next)
      result = { mode: 'repaired', reason, carried: report.count > 0 ? { from: report.first!, to: report.last! } : null, lost: null }
    } else {
      result = { mode: 'fresh', reason, ...(await buildFresh(db, next, now)) }
    }
  } finally {
    await db?.close().catch(() => {})
    await rm(work, { recursive: true, force: true })
  }
  // Only now, with the replacement complete and fsynced, does the damaged journal move aside.
  await syncTree(next)
  const movedTo = await asideName(storageDir, 'corrupt', now)
  await swapIn(storageDir, movedTo)
  return { ...result, movedTo }
}

/** A fresh journal at `dest` holding what `db` (a repaired copy, or nothing) could give. */
async function buildFresh(db: JournalDb | undefined, dest: string, now: number): Promise<Pick<JournalSalvage, 'carried' | 'lost'>> {
  const out = newLevel(dest, true)
  await out.open()
  let carried: JournalSalvage['carried'] = null
  let lost: JournalSalvage['lost'] = null
  try {
    const ops: { type: 'put'; key: string; value: string }[] = [{ type: 'put', key: K.META_FORMAT, value: K.FORMAT }]
    // This boot must read as unclean: the engine closes open sessions with power-loss.
    ops.push({ type: 'put', key: K.META_RUNNING, value: JSON.stringify({ bootId: 'salvaged', since: now, version: null }) })
    let acked = 0
    if (db) {
      const ackText = await db.get(K.META_ACKED).catch(() => undefined)
      acked = Number.isSafeInteger(Number(ackText)) && Number(ackText) > 0 ? Number(ackText) : 0
      // A damaged table can fail any read: each part takes what it can, and an unreadable rest stays behind in the moved directory.
      const run = await tailRun(db).catch(() => [])
      if (run.length > 0) {
        // From the acknowledged head on (kept so the chain's link stays checkable), or the whole run if it starts later.
        const keep = run.filter((r) => r.record.seq >= Math.min(Math.max(acked, 1), run[run.length - 1]!.record.seq))
        for (const r of keep) ops.push({ type: 'put', key: K.recordKey(r.record.seq), value: r.text })
        const from = keep[0]!.record.seq
        const to = keep[keep.length - 1]!.record.seq
        carried = { from, to }
        if (from > acked + 1) lost = { from: acked + 1, to: from - 1 }
        acked = Math.min(Math.max(acked, from - 1), to)
      } else {
        // No record could be carried: the log goes on past every seq the damaged journal shows
        // (its ack watermark, its record keys), so no new record reuses a seq the cloud may hold.
        let highest = acked
        try {
          for await (const key of db.keys(K.RECORDS)) {
            const seq = K.seqOfRecordKey(key)
            if (Number.isSafeInteger(seq) && seq > highest) highest = seq
          }
        } catch {
          // the keys read before the damage still count
        }
        if (highest > 0) {
          ops.push({ type: 'put', key: K.META_BASE, value: JSON.stringify({ seq: highest, hash: GENESIS_PREV }) })
          lost = { from: acked + 1, to: highest }
          if (lost.from > lost.to) lost = null
        }
        acked = highest
      }
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
    if (acked > 0) ops.push({ type: 'put', key: K.META_ACKED, value: String(acked) })
    await out.batch(ops, { sync: true } as { keyEncoding?: string })
  } finally {
    await out.close()
  }
  return { carried, lost }
}

/** The longest run of records that chains (seq + 1, prev = hash) and ends at the newest readable record. */
async function tailRun(db: JournalDb): Promise<{ record: JournalRecord; text: string }[]> {
  const all: { record: JournalRecord; text: string }[] = []
  for await (const [key, text] of db.iterator(K.RECORDS)) {
    try {
      const record = JSON.parse(text) as JournalRecord
      if (record.seq === K.seqOfRecordKey(key)) all.push({ record, text })
    } catch {
      // not a record: the run stops before it
    }
  }
  // Backwards from the newest: each record must hash right, and link to the one after it.
  let start = all.length
  for (let i = all.length - 1; i >= 0; i--) {
    const r = all[i]!.record
    if (new ChainVerifier({ seq: r.seq, prev: r.prev }).push(r)) break
    const next = all[i + 1]?.record
    if (next && (next.seq !== r.seq + 1 || next.prev !== r.hash)) break
    start = i
  }
  return all.slice(start)
}
