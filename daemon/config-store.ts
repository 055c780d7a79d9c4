/**
 * The site config file as the running daemon keeps it: the bytes in force and their version
 * (the SHA-256 of the file, the API's ETag), atomic saves, the last versions kept beside the
 * file, and noticing when the file was edited by hand since.
 *
 * Where: the versions are kept in `<file>.versions/` beside the file (the same directory, so
 * they share its permissions and its disk), one file per version named
 * `<epoch ms>-<sha256>.json`, the newest KEEP_VERSIONS (the one in force is never pruned).
 *
 * Owns: writing the config file (a temporary file in the same directory, fsync, rename, fsync
 * of the directory: a crash or a full disk leaves the old file or the new one whole, never a
 * mix), the versions directory, the version in force, reading the file back to compare.
 * Must never: validate a config (daemon/config.ts does), apply one (the daemon does), write
 * the file anywhere but through writeAtomic (journal/fsync.ts), or leave a temporary file behind on failure.
 */
import { createHash } from 'node:crypto'
import { mkdir, readdir, readFile, realpath, stat, unlink } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { OutpostError } from './errors.js'
import { writeAtomic } from './journal/fsync.js'
import { describeError } from './errors.js'

/** How many versions `<file>.versions/` keeps (the newest; the one in force always). */
export const KEEP_VERSIONS = 10

export function configVersion(text: string | Buffer): string {
  return createHash('sha256').update(text).digest('hex')
}

export interface KeptVersion {
  version: string
  savedAt: string
  bytes: number
}

export class ConfigStore {
  readonly dir: string
  private text: string
  private version: string

  /** `text`: the file's bytes the daemon started with (and validated); `now`: the injected clock (a kept version's time). */
  constructor(
    readonly file: string,
    text: string,
    private readonly now: () => number,
    private readonly keep = KEEP_VERSIONS,
  ) {
    this.dir = `${file}.versions`
    this.text = text
    this.version = configVersion(text)
  }

  /**
   * A store for a config file that does not exist yet (the first run): nothing in force, so a
   * first save keeps only what it writes. `file` is taken as given (absolute), not resolved.
   */
  static absent(file: string, now: () => number): ConfigStore {
    return new ConfigStore(resolve(file), '', now)
  }

  /** Reads `file` as the daemon starts with it. */
  static async load(file: string, now: () => number): Promise<ConfigStore> {
    // A symlinked config is saved where it really is: a rename over the link would replace the link.
    const real = await realpath(file)
    return new ConfigStore(real, await readFile(real, 'utf8'), now)
  }

  /** The bytes in force and their version. */
  current(): { text: string; version: string } {
    return { text: this.text, version: this.version }
  }

  /** The file as it is on disk now: its version, or why it cannot be read. */
  async onDisk(): Promise<{ version: string; text: string } | { version: null; error: string }> {
    try {
      const text = await readFile(this.file, 'utf8')
      return { version: configVersion(text), text }
    } catch (err) {
      return { version: null, error: (err as Error).message }
    }
  }

  /**
   * Saves `text` as the new config: first as a kept version (the one in force is kept too, the
   * first time, and `edited`, the file as edited by hand, when it is replaced), then over the
   * file, atomically. Throws CONFIG_WRITE_FAILED and leaves the file
   * as it was when either write fails.
   */
  async save(text: string, edited?: { version: string; text: string }): Promise<string> {
    const version = configVersion(text)
    const at = this.now()
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 })
      const kept = await this.list()
      // Nothing in force yet (the first run, or an empty file): nothing worth keeping.
      if (this.text !== '' && !kept.some((k) => k.version === this.version)) await this.keepVersion(this.text, this.version, at - 2)
      // A file edited by hand and replaced knowingly is kept too: a rollback can bring it back.
      if (edited && !kept.some((k) => k.version === edited.version)) await this.keepVersion(edited.text, edited.version, at - 1)
      if (!kept.some((k) => k.version === version)) await this.keepVersion(text, version, at)
    } catch (err) {
      throw writeFailed(this.dir, err)
    }
    try {
      await writeAtomic(this.file, text)
    } catch (err) {
      throw writeFailed(this.file, err)
    }
    this.text = text
    this.version = version
    await this.prune().catch(() => undefined)
    return version
  }

  /** The kept versions, newest first. */
  async list(): Promise<KeptVersion[]> {
    let names: string[]
    try {
      names = await readdir(this.dir)
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') return []
      throw err
    }
    const out: (KeptVersion & { name: string })[] = []
    for (const name of names) {
      const m = /^(\d{13})-([0-9a-f]{64})\.json$/.exec(name)
      if (!m) continue
      const s = await stat(join(this.dir, name)).catch(() => undefined)
      if (!s) continue
      out.push({ name, version: m[2]!, savedAt: new Date(Number(m[1])).toISOString(), bytes: s.size })
    }
    out.sort((a, b) => (a.name < b.name ? 1 : -1))
    const seen = new Set<string>()
    return out.filter((v) => !seen.has(v.version) && seen.add(v.version)).map(({ name: _n, ...v }) => v)
  }

  /** A kept version's bytes, or undefined when it is not kept (or no longer matches its name). */
  async read(version: string): Promise<string | undefined> {
    if (!/^[0-9a-f]{64}$/.test(version)) return undefined
    let names: string[]
    try {
      names = await readdir(this.dir)
    } catch {
      return undefined
    }
    for (const name of names.filter((n) => n.endsWith(`-${version}.json`))) {
      const text = await readFile(join(this.dir, name), 'utf8').catch(() => undefined)
      if (text !== undefined && configVersion(text) === version) return text
    }
    return undefined
  }

  private async keepVersion(text: string, version: string, at: number): Promise<void> {
    await writeAtomic(join(this.dir, `${String(at).padStart(13, '0')}-${version}.json`), text, 0o600)
  }

  private async prune(): Promise<void> {
    const names = (await readdir(this.dir)).filter((n) => /^\d{13}-[0-9a-f]{64}\.json$/.test(n)).sort()
    const excess = names.length - this.keep
    for (const name of names.slice(0, Math.max(0, excess))) if (!name.endsWith(`-${this.version}.json`)) await unlink(join(this.dir, name))
  }
}

function writeFailed(where: string, err: unknown): OutpostError {
  return new OutpostError('CONFIG_WRITE_FAILED', `cannot write ${where}: ${describeError(err)}; the config in force is unchanged`)
}
