/**
 * What the journal says when LevelDB cannot be opened, or opens on something the journal
 * cannot trust: the coded, installer-readable errors, and LevelDB's own report of the log
 * data it dropped while opening.
 *
 * Owns: mapping LevelDB's open failures to JOURNAL_LOCKED / JOURNAL_CORRUPT /
 * JOURNAL_OPEN_FAILED, the wording that points at `outpost verify` and `outpost repair`, and
 * reading LevelDB's info log for dropped data.
 * Must never: open, write or repair a database (journal.ts, salvage.ts and level-repair.ts do).
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { OutpostError } from '../errors.js'

/** Map a classic-level open failure to a coded, installer-readable error. */
export function openError(err: unknown, location: string): OutpostError {
  const codes: string[] = []
  const messages: string[] = []
  for (let e = err as { code?: string; message?: string; cause?: unknown } | undefined, i = 0; e && i < 5; e = e.cause as typeof e, i++) {
    if (e.code) codes.push(e.code)
    if (e.message) messages.push(e.message)
  }
  const detail = messages[messages.length - 1] ?? String(err)
  if (codes.includes('LEVEL_LOCKED')) return new OutpostError('JOURNAL_LOCKED', `another outpost is already running on ${location}`, { cause: err })
  // A damaged table's bogus block offset comes back from LevelDB as an I/O error (EINVAL) on that file: it is damage, not a permission or disk problem.
  const damagedTable = messages.some((m) => /\.(ldb|sst)\b[\s\S]*Invalid argument/.test(m))
  if (codes.includes('LEVEL_CORRUPTION') || damagedTable)
    return new OutpostError(
      'JOURNAL_CORRUPT',
      `the journal at ${location} is corrupt (${detail}); nothing was changed. ` +
        'Run `outpost repair --config FILE` (see docs/journal.md) after taking a copy of the directory',
      { cause: err },
    )
  return new OutpostError(
    'JOURNAL_OPEN_FAILED',
    `cannot open the journal at ${location}: ${detail}. If its files are damaged, see \`outpost repair --config FILE\` (docs/journal.md)`,
    { cause: err },
  )
}

export function corrupt(location: string, what: string, cause?: unknown): OutpostError {
  return new OutpostError(
    'JOURNAL_CORRUPT',
    `the journal at ${location} is inconsistent: ${what}; nothing was changed. ` +
      'Run `outpost verify --config FILE`, then `outpost repair --config FILE` (see docs/journal.md)',
    { cause },
  )
}

/**
 * What LevelDB reported dropping while it recovered its log at this open: lines of its info log
 * (`<dir>/LOG`, rewritten at every open) such as `... dropping 1234 bytes; Corruption: checksum
 * mismatch`. LevelDB skips damaged log data without an error; this is its only report of it.
 * After LevelDB's repair, the same log names what the repair left out (`ignoring`,
 * a table scanned with an error).
 */
export async function droppedByLevelDb(location: string): Promise<string[]> {
  let text: string
  try {
    text = await readFile(join(location, 'LOG'), 'utf8')
  } catch {
    return []
  }
  return text
    .split('\n')
    .filter((l) => /dropping \d+ bytes|: ignoring |entries (?!OK)\S/.test(l))
    .map((l) => l.replace(/^\S+ \S+ /, '').trim())
}

export function parseJson<T>(location: string, key: string, text: string): T {
  try {
    return JSON.parse(text) as T
  } catch (err) {
    throw corrupt(location, `entry ${key} is not JSON`, err)
  }
}
