/**
 * What `outpost records`, `outpost verify` and `outpost repair` share: option
 * parsing, loading the site config (exit 78 on an invalid one, printed like
 * check-config), opening the journal offline, and writing large outputs with
 * back-pressure. Owns no policy of its own.
 */
import { loadConfigFile, formatProblem } from '../config.js'
import type { SiteConfig } from '../types.js'
import type { OfflineMode } from './offline.js'

export const EXIT_OK = 0
export const EXIT_BROKEN = 1
export const EXIT_USAGE = 64
export const EXIT_NOINPUT = 66
export const EXIT_TEMPFAIL = 75
export const EXIT_CONFIG = 78

export class UsageError extends Error {}

/** `--name VALUE` or `--name=VALUE`; flags listed in `known`; positional arguments returned apart. */
export function parseArgs(argv: string[], known: string[]): { options: Map<string, string>; positional: string[] } {
  const options = new Map<string, string>()
  const positional: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (!a.startsWith('--')) {
      positional.push(a)
      continue
    }
    const eq = a.indexOf('=')
    const name = eq === -1 ? a.slice(2) : a.slice(2, eq)
    if (!known.includes(name)) throw new UsageError(`unknown option --${name}`)
    const value = eq === -1 ? argv[++i] : a.slice(eq + 1)
    if (value === undefined || value === '') throw new UsageError(`--${name} needs a value`)
    if (options.has(name)) throw new UsageError(`--${name} given twice`)
    options.set(name, value)
  }
  return { options, positional }
}

/** The config named by --config, else $OUTPOST_CONFIG, else /etc/outpost/site.json (as `outpost run` finds it). */
export function configFile(options: Map<string, string>): string {
  return options.get('config') ?? process.env.OUTPOST_CONFIG ?? '/etc/outpost/site.json'
}

export function loadConfig(file: string): { ok: true; config: SiteConfig } | { ok: false; exit: number } {
  const result = loadConfigFile(file)
  if (result.ok) return result
  for (const p of result.problems) process.stderr.write(formatProblem(file, p) + '\n')
  return { ok: false, exit: EXIT_CONFIG }
}

export function describeMode(mode: OfflineMode, location: string): string | undefined {
  if (mode === 'snapshot') return `outpost: a daemon holds ${location}; reading a snapshot copy taken just now`
  if (mode === 'repaired-copy') return `outpost: ${location} cannot be opened as it is (corrupt or damaged files); reading what a repaired COPY holds (the original is untouched; see \`outpost repair\`)`
  return undefined
}

/**
 * Buffered stdout writing that waits for the pipe to drain (a million records
 * must not sit in memory) and stops quietly when the reader goes away
 * (`outpost records | head`).
 */
export class Output {
  private chunk = ''
  closed = false
  constructor() {
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
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
    if (!process.stdout.write(data)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          process.stdout.off('drain', done)
          process.stdout.off('error', done)
          resolve()
        }
        process.stdout.once('drain', done)
        process.stdout.once('error', done)
      })
    }
  }
}
