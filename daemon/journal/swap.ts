/**
 * Replacing the journal directory without a window in which a power cut leaves
 * no journal (or a half-built one) in its place: `outpost repair` and the boot
 * salvage build the replacement in `<storage.dir>/journal.next`, fsync it whole,
 * then move the old journal aside and the new one in.
 *
 * Owns: the staging name, the two renames and their directory fsyncs, and
 * finishing (or discarding) what a cut left of a swap. Must never: rename a
 * staging directory into place that was not fsynced whole first, or delete a
 * journal (the old one is only ever renamed aside).
 */
import { access, cp, rename, rm } from 'node:fs/promises'
import { dirname } from 'node:path'
import { journalLocation } from './journal.js'
import { syncDir } from './fsync.js'
import { CHECKED_FILE } from './table-check.js'

export async function exists(path: string): Promise<boolean> {
  try {
    await access(path)
    return true
  } catch {
    return false
  }
}

/**
 * A copy of a journal directory to read or repair: without LevelDB's LOCK (held by whoever has
 * the journal open) and without the record of checked tables (a repair may give a new table the
 * number of one it left out, and a copy's tables were never checked as the copy's).
 */
export async function copyJournalDir(from: string, to: string): Promise<void> {
  await cp(from, to, { recursive: true, filter: (src) => !src.endsWith('/LOCK') && !src.endsWith(`/${CHECKED_FILE}`) })
}

/** A UTC time for a directory name: 20260101T120000Z. */
export function stamp(now: number): string {
  return new Date(now)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z')
}

/** A name beside the journal that is not taken yet: `journal.<what>-<stamp>`, with -2, -3... if needed. */
export async function asideName(storageDir: string, what: string, now: number): Promise<string> {
  const base = `${journalLocation(storageDir)}.${what}-${stamp(now)}`
  let name = base
  for (let i = 2; await exists(name); i++) name = `${base}-${i}`
  return name
}

/**
 * Where a replacement journal is built before it takes the journal's place
 * (`<storage.dir>/journal.next`). It is renamed into place only once complete and
 * fsynced, so: `journal` present → `journal.next` is an unfinished leftover;
 * `journal` missing and `journal.next` present → a cut fell between the two
 * renames of swapIn, and `journal.next` is the finished replacement.
 */
export function stagingLocation(storageDir: string): string {
  return `${journalLocation(storageDir)}.next`
}

/** Finish or discard what a cut left of a swap. Returns true when it finished one. */
export async function settleJournalDir(storageDir: string): Promise<boolean> {
  const location = journalLocation(storageDir)
  const next = stagingLocation(storageDir)
  if (!(await exists(next))) return false
  if (await exists(location)) {
    await rm(next, { recursive: true, force: true, maxRetries: 5 })
    return false
  }
  await rename(next, location)
  await syncDir(dirname(location))
  return true
}

/** Move the journal to `aside`, then the finished `journal.next` into its place; each rename made durable. */
export async function swapIn(storageDir: string, aside: string): Promise<void> {
  const location = journalLocation(storageDir)
  await rename(location, aside)
  await syncDir(dirname(location))
  await rename(stagingLocation(storageDir), location)
  await syncDir(dirname(location))
}

export { syncDir, syncTree } from './fsync.js'
