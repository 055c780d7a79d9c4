/**
 * What `outpost records`, `outpost verify` and `outpost repair` share: loading the
 * site config (exit 78 on an invalid one, printed like check-config), opening the
 * journal offline, and writing large outputs with back-pressure. Owns no policy of
 * its own; everything is written through the command's Io.
 */
import { loadConfigFile, formatProblem } from '../config.js'
import type { SiteConfig } from '../../core/types.js'
import { openOffline, type OfflineJournal, type OfflineMode } from '../journal/offline.js'
import { EXIT_BROKEN, EXIT_CONFIG, EXIT_NOINPUT, type Io } from '../cli-common.js'

export function loadConfig(file: string, io: Io): { ok: true; config: SiteConfig } | { ok: false; exit: number } {
  const result = loadConfigFile(file)
  if (result.ok) return result
  for (const p of result.problems) io.err(formatProblem(file, p) + '\n')
  return { ok: false, exit: EXIT_CONFIG }
}

export function describeMode(mode: OfflineMode, location: string): string | undefined {
  if (mode === 'snapshot') return `outpost: a daemon holds ${location}; reading a snapshot copy taken just now`
  if (mode === 'repaired-copy')
    return (
      `outpost: ${location} cannot be opened as it is (corrupt or damaged files); ` +
      'reading what a repaired COPY holds (the original is untouched; see `outpost repair`)'
    )
  return undefined
}

/**
 * Buffered writing that waits for the pipe to drain (a million records must not sit
 * in memory) and stops quietly when the reader goes away (`outpost records | head`).
 * Without a stream behind the Io (a test's), each chunk goes to io.out.
 */
export class Output {
  private chunk = ''
  closed = false
  constructor(private readonly io: Io) {
    io.stdout?.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') throw err
      this.closed = true
    })
  }
  async line(text: string): Promise<void> {
    this.chunk += text + '\n'
    if (this.chunk.length >= 64 * 1024) await this.flush()
  }
  async flush(): Promise<void> {
    if (this.chunk === '' || this.closed) return
    const data = this.chunk
    this.chunk = ''
    const stream = this.io.stdout
    if (!stream) {
      this.io.out(data)
      return
    }
    if (!stream.write(data)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          stream.off('drain', done)
          stream.off('error', done)
          resolve()
        }
        stream.once('drain', done)
        stream.once('error', done)
      })
    }
  }
}

/**
 * Opens the journal for a read-only command (records, verify): a snapshot while the
 * daemon runs, a repaired copy of a damaged database; says which on stderr. Returns
 * the exit status instead when it cannot be opened.
 */
export async function openForReading(command: string, dir: string, io: Io): Promise<OfflineJournal | number> {
  let journal: OfflineJournal
  try {
    journal = await openOffline(dir, { allowSnapshot: true, allowRepairedCopy: true })
  } catch (err) {
    const e = err as { code?: string; message: string }
    io.err(`outpost ${command}: ${e.code}: ${e.message}\n`)
    return e.code === 'JOURNAL_MISSING' ? EXIT_NOINPUT : EXIT_BROKEN
  }
  const note = describeMode(journal.mode, journal.location)
  if (note) io.err(note + '\n')
  return journal
}
