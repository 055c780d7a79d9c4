/**
 * LazyFS for the tests: a FUSE file system that keeps every write not yet
 * fsynced in its own cache and drops it on command, i.e. a power cut on the
 * file-system layer under real LevelDB files (log, MANIFEST, CURRENT, tables).
 *
 * Owns: finding (or building) the binary, mounting it in the foreground (the test
 * owns the process), the faults fifo (`lazyfs::clear-cache`) and the completion
 * fifo (opened for reading before the first command, read as a stream), and the
 * unmount. Must never: skip when LazyFS is missing (it throws one line saying how
 * to get it), or leave a mount behind (unmount() is idempotent; register it as a
 * teardown).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { packageRoot } from '../../core/paths.js'

const BUILD_SCRIPT = resolve(packageRoot, '..', 'shared', 'tools', 'lazyfs', 'BUILD-HERE.sh')
const HOW = `set OUTPOST_LAZYFS to a LazyFS binary, or build one with \`bash ${BUILD_SCRIPT} \${TMPDIR:-/tmp}/lazyfs-build\` (needs root and /dev/fuse; .ci/run does it)`

/** The binary: $OUTPOST_LAZYFS, else the default build dirs, else built on demand with BUILD-HERE.sh. */
export function lazyfsBinary(): string {
  const env = process.env.OUTPOST_LAZYFS
  if (env) {
    if (existsSync(env)) return env
    throw new Error(`LazyFS not found at OUTPOST_LAZYFS=${env}: ${HOW}`)
  }
  const out = join(process.env.TMPDIR ?? tmpdir(), 'lazyfs-build')
  for (const dir of [out, '/opt/lazyfs-build']) {
    const bin = join(dir, 'lazyfs', 'build', 'lazyfs')
    if (existsSync(bin)) return bin
  }
  if (!existsSync(BUILD_SCRIPT)) throw new Error(`LazyFS is missing and ${BUILD_SCRIPT} is not there to build it: ${HOW}`)
  const r = spawnSync('bash', [BUILD_SCRIPT, out], { encoding: 'utf8', timeout: 600_000 })
  const bin = r.stdout.trim().split('\n').at(-1) ?? ''
  if (r.status !== 0 || !existsSync(bin))
    throw new Error(`LazyFS is missing and building it failed (${r.stderr.trim().split('\n').at(-1) ?? r.status}): ${HOW}`)
  return bin
}

export interface LazyFs {
  /** The mount point: write under here, and clearCache() drops what was not fsynced. */
  mnt: string
  /** The backing directory (what survives, once clearCache() ran). */
  root: string
  /** Drop every write not fsynced (the writer must be dead first: a power cut). Resolves once LazyFS says it is done. */
  clearCache(): Promise<void>
  /**
   * `p` (file work under the mount), or a LazyFsHang if LazyFS has not answered within `ms`:
   * then LazyFS is killed, which fails every request still waiting on it instead of leaving
   * its callers blocked for good. Do file work under the mount asynchronously and through
   * this, never with *Sync calls (a blocked sync call stops the test's own timers).
   */
  guard<T>(what: string, p: Promise<T>, ms?: number): Promise<T>
  unmount(): void
}

/** LazyFS stopped answering (its own lock-up, not the code under test): the mount is gone. */
export class LazyFsHang extends Error {}

function mounted(mnt: string): boolean {
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[1] === mnt)
}

/**
 * A fresh LazyFS mount. LazyFS itself sometimes dies while starting (once in a fresh-clone run it
 * aborted parsing its arguments, as if --config-path were missing): a failed start is tried again,
 * twice, before the test fails with LazyFS's own words.
 */
export async function mountLazyfs(): Promise<LazyFs> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await mountOnce()
    } catch (err) {
      if (attempt >= 3 || !(err instanceof LazyFsStartFailed)) throw err
    }
  }
}

class LazyFsStartFailed extends Error {}

async function mountOnce(): Promise<LazyFs> {
  const bin = lazyfsBinary()
  const base = mkdtempSync(join(tmpdir(), 'outpost-lazyfs-'))
  const mnt = join(base, 'mnt')
  const root = join(base, 'root')
  mkdirSync(mnt)
  mkdirSync(root)
  const faults = join(base, 'faults.fifo')
  const done = join(base, 'done.fifo')
  const cfg = join(base, 'lazyfs.toml')
  writeFileSync(
    cfg,
    [
      '[faults]',
      `fifo_path="${faults}"`,
      `fifo_path_completed="${done}"`,
      '[cache]',
      'apply_eviction=false',
      '[cache.simple]',
      'custom_size="256mb"',
      'blocks_per_page=1',
      '[filesystem]',
      'log_all_operations=false',
      `logfile="${join(base, 'lazyfs.log')}"`,
      '',
    ].join('\n'),
  )
  let stderr = ''
  const proc: ChildProcess = spawn(bin, [mnt, '--config-path', cfg, '-o', 'allow_other', '-o', 'modules=subdir', '-o', `subdir=${root}`, '-f'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()))
  let exited = false
  let exitedWith = ''
  proc.on('exit', (code, signal) => {
    exited = true
    exitedWith = signal ? `killed by ${signal}` : `exited ${code}`
  })
  const deadline = Date.now() + 20_000
  while (!(mounted(mnt) && existsSync(done) && existsSync(faults))) {
    if (exited || Date.now() > deadline) {
      proc.kill('SIGKILL')
      spawnSync('fusermount3', ['-uz', mnt])
      rmSync(base, { recursive: true, force: true })
      throw new LazyFsStartFailed(`LazyFS (${bin}) did not mount ${mnt}: ${stderr.trim().split('\n').slice(-2).join(' ') || 'no output'}; ${HOW}`)
    }
    await new Promise((r) => setTimeout(r, 20))
  }
  // The completion fifo: opened for reading before the first command and read as a stream (LazyFS never closes it).
  const answers = createReadStream(done, { encoding: 'utf8' })
  let buffered = ''
  const waiting: (() => void)[] = []
  answers.on('data', (chunk: string | Buffer) => {
    buffered += chunk.toString()
    let i
    while ((i = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, i).trim()
      buffered = buffered.slice(i + 1)
      if (line === 'finished::clear-cache') waiting.shift()?.()
    }
  })
  answers.on('error', () => {})
  const faultsFd = await open(faults, 'w')
  let gone = false
  return {
    mnt,
    root,
    async clearCache() {
      const finished = new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`LazyFS did not answer clear-cache within 20 s (${stderr.trim().split('\n').at(-1) ?? ''})`)),
          20_000,
        )
        waiting.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
      await faultsFd.write('lazyfs::clear-cache\n')
      await finished
    },
    guard<T>(what: string, p: Promise<T>, ms = 30_000): Promise<T> {
      // LazyFS itself gone (the FUSE daemon died: ENOTCONN, or files that vanish): nothing read through the mount can be trusted.
      const died = () =>
        new LazyFsHang(`LazyFS ${exitedWith} during ${what}${stderr.trim() ? ` (${stderr.trim().split('\n').slice(-2).join(' ')})` : ''}`)
      return new Promise<T>((resolve, reject) => {
        const timer = setTimeout(() => {
          proc.kill('SIGKILL')
          reject(new LazyFsHang(`LazyFS stopped answering during ${what} (no answer within ${ms} ms); it was killed`))
        }, ms)
        p.then(
          (v) => (clearTimeout(timer), exited && !gone ? reject(died()) : resolve(v)),
          (e: unknown) => (clearTimeout(timer), reject(exited && !gone ? died() : e)),
        )
      })
    },
    unmount() {
      if (gone) return
      gone = true
      answers.destroy()
      void faultsFd.close().catch(() => {})
      spawnSync('fusermount3', ['-uz', mnt])
      proc.kill('SIGKILL')
      rmSync(base, { recursive: true, force: true })
    },
  }
}

/**
 * Bit rot after a cut: `count` bytes of `file` (on the mount) from a random offset XORed with
 * 0xff, written in place and fsynced (the damage is on the card, not in a cache). Returns the
 * offset, or undefined for an empty file.
 */
export async function flipBytes(fs: LazyFs, file: string, random: () => number, count = 16): Promise<number | undefined> {
  return fs.guard(
    `flipping bytes in ${file}`,
    (async () => {
      const fd = await open(file, 'r+')
      try {
        const { size } = await fd.stat()
        if (size === 0) return undefined
        const at = Math.floor(random() * size)
        const n = Math.min(count, size - at)
        const buf = Buffer.alloc(n)
        await fd.read(buf, 0, n, at)
        for (let i = 0; i < n; i++) buf[i] = buf[i]! ^ 0xff
        await fd.write(buf, 0, n, at)
        await fd.sync()
        return at
      } finally {
        await fd.close()
      }
    })(),
  )
}
