/**
 * LevelDB's own repair (RepairDB), and the lock probe before it, run in a child process.
 *
 * Owns: isolating RepairDB (and an open of a journal that may be damaged) from the caller. The LevelDB bundled with classic-level
 * keeps its debug assertions, and RepairDB aborts the whole process on some damaged
 * tables (a table whose every entry is unreadable trips an assertion in
 * InternalKey::Encode). In-process, that abort would take the daemon down at every
 * boot, before it could charge; in a child it is just a repair that failed.
 * Must never: run anywhere but on a copy the caller owns (repair rewrites the
 * directory it is given).
 */
import { spawn } from 'node:child_process'
import { OutpostError } from '../errors.js'

const LEVEL_URL = import.meta.resolve('level')

/** LevelDB's repair of `location`; rejects (never aborts the caller) when it fails or crashes. */
export function repairLevelDb(location: string, timeoutMs = 120_000): Promise<void> {
  return inChild('const { Level } = await import(process.argv[1]); await Level.repair(process.argv[2])', location, timeoutMs, "LevelDB's repair")
}

/**
 * Whether another process holds LevelDB's lock on `location`. The child opens with errorIfExists:
 * LevelDB takes its lock, then stops at the existing database before recovering anything, so
 * the journal is not written (only LevelDB's info log turns over, as at any open attempt).
 */
export async function levelLocked(location: string): Promise<boolean> {
  const script =
    'const { Level } = await import(process.argv[1]); const db = new Level(process.argv[2], { createIfMissing: false, errorIfExists: true }); ' +
    "try { await db.open(); await db.close() } catch (e) { if (e.code === 'LEVEL_LOCKED' || e.cause?.code === 'LEVEL_LOCKED') process.exit(3) }"
  try {
    await inChild(script, location, 60_000, "LevelDB's lock probe")
    return false
  } catch (err) {
    return (err as { exitCode?: number }).exitCode === 3
  }
}

function inChild(script: string, location: string, timeoutMs: number, what: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script, LEVEL_URL, location], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      reject(new OutpostError('JOURNAL_REPAIR_FAILED', `${what} of ${location} could not run: ${err.message}`, { cause: err }))
    })
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      if (code === 0) return resolve()
      const why = signal ? `${what} crashed (${signal})` : `${what} exited ${code}`
      const detail = stderr.trim().split('\n').filter(Boolean).at(-1)
      reject(Object.assign(new OutpostError('JOURNAL_REPAIR_FAILED', `${why} on ${location}${detail ? `: ${detail}` : ''}`), { exitCode: code }))
    })
  })
}
