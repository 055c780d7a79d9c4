/**
 * Reading the journal from outside the daemon: `outpost records`, `outpost
 * verify`, `outpost repair`, and the crash tests' checkers.
 *
 * Owns: opening the LevelDB directory without the daemon's side effects (no
 * running marker, no writes), falling back to a private copy when the daemon
 * holds LevelDB's lock (a consistent snapshot: LevelDB recovers a copied
 * directory like one after a crash, dropping only a torn last batch) or when the
 * database is corrupt (the copy is repaired, the original left untouched).
 * Must never write to the original directory, except in repair(), which is the
 * installer's explicit request.
 */
import { mkdtemp, rm, readdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import type { JournalRecord } from '../../core/types.js'
import { OutpostError } from '../errors.js'
import { SalvageAwareVerifier, type AnnouncedBreak, type ChainBreak } from './chain.js'
import { journalLocation, openError, type JournalDb } from './journal.js'
import { corrupt } from './open-errors.js'
import * as K from './keys.js'
import { asideName, copyJournalDir, exists, settleJournalDir, stagingLocation, swapIn, syncTree } from './swap.js'
import { levelLocked, repairLevelDb } from './level-repair.js'
import { checkedTables, damagedTables, describeDamage, leaveOutDamagedTables, type TableDamage } from './table-check.js'

export type OfflineMode = 'direct' | 'snapshot' | 'repaired-copy'

export interface OfflineJournal {
  db: JournalDb
  /** The journal's own directory (not the copy). */
  location: string
  /** direct: the directory itself; snapshot: a copy taken because a daemon holds the lock; repaired-copy: a repaired copy of a corrupt database. */
  mode: OfflineMode
  close(): Promise<void>
}

function newLevel(location: string): JournalDb {
  return new Level<string, string>(location, { keyEncoding: 'utf8', valueEncoding: 'utf8', createIfMissing: false }) as unknown as JournalDb
}

/** Copy the LevelDB directory (without its LOCK) to a private temp dir; retried because a running daemon's compaction may delete a table file mid-copy. */
async function copyJournal(location: string): Promise<string> {
  let lastErr: unknown
  for (let attempt = 0; attempt < 5; attempt++) {
    const dest = await mkdtemp(join(tmpdir(), 'outpost-journal-copy-'))
    try {
      await copyJournalDir(location, dest)
      return dest
    } catch (err) {
      lastErr = err
      await rm(dest, { recursive: true, force: true })
    }
  }
  throw new OutpostError('JOURNAL_OPEN_FAILED', `cannot copy ${location}: ${(lastErr as Error).message}`, { cause: lastErr })
}

/**
 * Open the journal of `storageDir` for reading. While a daemon runs, reads a
 * snapshot copy (allowSnapshot); a corrupt database is read through a repaired
 * copy (allowRepairedCopy) so that `records` and `verify` still show what they can.
 */
export async function openOffline(storageDir: string, opts: { allowSnapshot?: boolean; allowRepairedCopy?: boolean } = {}): Promise<OfflineJournal> {
  const location = journalLocation(storageDir)
  if (!(await exists(join(location, 'CURRENT'))))
    throw new OutpostError('JOURNAL_MISSING', `no journal at ${location} (storage.dir ${storageDir}): the daemon has not run here yet`)
  try {
    // LevelDB reads tables unchecked here (and aborts on a garbled key): a damaged one is read through a repaired copy.
    // Checked before the Level is made: it starts opening as soon as it exists.
    const damage = await checkedTables(location)
    if (damage === 'locked') throw new OutpostError('JOURNAL_LOCKED', `another outpost is already running on ${location}`)
    if (damage.length > 0) throw corrupt(location, `damaged tables: ${describeDamage(damage)}`)
    const direct = newLevel(location)
    await direct.open()
    return { db: direct, location, mode: 'direct', close: () => direct.close() }
  } catch (err) {
    const e = err instanceof OutpostError ? err : openError(err, location)
    const mode: OfflineMode | undefined =
      e.code === 'JOURNAL_LOCKED' && opts.allowSnapshot
        ? 'snapshot'
        : (e.code === 'JOURNAL_CORRUPT' || e.code === 'JOURNAL_OPEN_FAILED') && opts.allowRepairedCopy
          ? 'repaired-copy'
          : undefined
    if (!mode) throw e
    for (let attempt = 0; ; attempt++) {
      const copy = await copyJournal(location)
      try {
        if (mode === 'repaired-copy') {
          await leaveOutDamagedTables(copy)
          await repairLevelDb(copy)
        } else if ((await damagedTables(copy)).length > 0) {
          // A snapshot torn by the running daemon's compaction (or damage): copied again, never opened unchecked.
          throw new Error('the snapshot does not check')
        }
        const db = newLevel(copy)
        await db.open()
        return {
          db,
          location,
          mode,
          close: async () => {
            await db.close()
            await rm(copy, { recursive: true, force: true })
          },
        }
      } catch (_err2) {
        await rm(copy, { recursive: true, force: true })
        // The original's error is the one that explains the situation.
        if (attempt >= 4 || mode === 'repaired-copy') throw e
      }
    }
  }
}

/** Every stored record from `from` on, in key order; a value that is not JSON comes back as `{ key, error }`. */
export async function* storedRecords(db: JournalDb, from = 1): AsyncGenerator<{ key: string; record?: JournalRecord; text: string; error?: string }> {
  for await (const [key, text] of db.iterator({ gte: K.recordKey(Math.max(1, from)), lt: K.RECORDS.lt })) {
    try {
      yield { key, record: JSON.parse(text) as JournalRecord, text }
    } catch (err) {
      yield { key, text, error: `not JSON: ${(err as Error).message}` }
    }
  }
}

export interface VerifyReport {
  count: number
  first?: number
  last?: number
  acked: number
  break?: ChainBreak
  /** Breaks a salvage's gateway.started announced (seqs lost, a new chain): accepted, for the report to name. */
  announced: AnnouncedBreak[]
}

/**
 * Check sequence and hash chain of every stored record (and that the ack watermark is not past the log).
 * A break a salvage announced (its gateway.started's journalSalvage) is accepted and listed, any other reported.
 */
export async function verifyDb(db: JournalDb): Promise<VerifyReport> {
  const v = new SalvageAwareVerifier()
  const ackText = await db.get(K.META_ACKED)
  const acked = ackText === undefined ? 0 : Number(ackText)
  let brk: ChainBreak | undefined
  for await (const { key, record, error } of storedRecords(db)) {
    const seqInKey = K.seqOfRecordKey(key)
    if (error) {
      brk = { seq: seqInKey, position: v.count + 1, reason: 'not-a-record', problem: `entry ${key}: ${error}` }
      break
    }
    if (record && record.seq !== seqInKey) {
      brk = { seq: seqInKey, position: v.count + 1, reason: 'seq', problem: `entry ${key} holds seq ${String(record.seq)}` }
      break
    }
    brk = v.push(record)
    if (brk) break
  }
  brk ??= v.finish()
  const report: VerifyReport = { count: v.count, first: v.firstSeq, last: v.lastSeq, acked, announced: v.announced }
  if (!brk && acked > (v.lastSeq ?? 0))
    brk = {
      seq: acked,
      position: v.count,
      reason: 'seq',
      problem: `the cloud acknowledged seq ${acked} but the log ends at ${v.lastSeq ?? 0}: records were lost`,
    }
  // Retention deletes only what the cloud acknowledged: a log that starts above the watermark lost its unacknowledged start.
  if (!brk && v.firstSeq !== undefined && v.firstSeq > acked + 1)
    brk = {
      seq: acked + 1,
      position: 1,
      reason: 'seq',
      problem: `the log starts at seq ${v.firstSeq} but the cloud acknowledged only up to ${acked}: records ${acked + 1}..${v.firstSeq - 1} were lost`,
    }
  if (brk) report.break = brk
  return report
}

/**
 * Run LevelDB's repair on the journal of `storageDir` (the daemon must be stopped), then verify.
 * Repair works on a copy in `journal.next` that is fsynced whole (LevelDB's RepairDB does not
 * sync the manifest it writes: cut mid-repair in place, a journal would not open), then swapped
 * in; the journal as it was stays beside it as `journal.pre-repair-<UTC time>`.
 */
export async function repairJournal(
  storageDir: string,
  now: number = Date.now(),
): Promise<VerifyReport & { location: string; keptAs: string; tablesLeftOut: TableDamage[] }> {
  const location = journalLocation(storageDir)
  await settleJournalDir(storageDir)
  if (!(await exists(location)) || (await readdir(location)).length === 0) throw new OutpostError('JOURNAL_MISSING', `no journal at ${location}`)
  // Repair takes no lock of its own; opening first (in a child: a damaged table can abort LevelDB) proves no daemon holds the journal.
  if (await levelLocked(location))
    throw new OutpostError('JOURNAL_LOCKED', `another outpost is already running on ${location}: stop it before repairing`)
  const next = stagingLocation(storageDir)
  await rm(next, { recursive: true, force: true })
  await copyJournalDir(location, next)
  // LevelDB's repair copies a table's entries without checking its blocks: a damaged table is left out, and named.
  const tablesLeftOut = await leaveOutDamagedTables(next)
  try {
    await repairLevelDb(next)
  } catch (err) {
    await rm(next, { recursive: true, force: true })
    throw new OutpostError('JOURNAL_REPAIR_FAILED', `LevelDB repair of ${location} failed: ${(err as Error).message}`, { cause: err })
  }
  await syncTree(next)
  const keptAs = await asideName(storageDir, 'pre-repair', now)
  await swapIn(storageDir, keptAs)
  const db = newLevel(location)
  try {
    await db.open()
  } catch (err) {
    throw openError(err, location)
  }
  try {
    return { ...(await verifyDb(db)), location, keptAs, tablesLeftOut }
  } finally {
    await db.close()
  }
}
