/**
 * LevelDB's own repair (RepairDB), run in a child process.
 *
 * Owns: isolating RepairDB from the caller. The LevelDB bundled with classic-level
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
  return new Promise<void>((resolve, reject) => {
    const script = 'const { Level } = await import(process.argv[1]); await Level.repair(process.argv[2])'
    const child = spawn(process.execPath, ['--input-type=module', '-e', script, LEVEL_URL, location], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      reject(new OutpostError('JOURNAL_REPAIR_FAILED', `LevelDB repair of ${location} could not run: ${err.message}`, { cause: err }))
    })
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      if (code === 0) return resolve()
      const why = signal ? `LevelDB's repair crashed (${signal})` : `LevelDB's repair exited ${code}`
      const detail = stderr.trim().split('\n').filter(Boolean).at(-1)
      reject(new OutpostError('JOURNAL_REPAIR_FAILED', `${why} on ${location}${detail ? `: ${detail}` : ''}`))
    })
  })
}
