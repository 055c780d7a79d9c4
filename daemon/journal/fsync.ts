/**
 * Making writes and renames durable: fsync of a directory, and of every file of a tree, and a
 * small file replaced whole. Shared by the swap (repair, salvage), the seq marker and the
 * config store.
 *
 * Owns: the fsync calls, which directory-fsync errors a file system may answer harmlessly, and
 * the one way a small file is replaced (writeAtomic).
 * Must never: write anything but through writeAtomic's temporary file and rename.
 */
import { open, readdir, rename, stat, unlink } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'

export async function syncDir(dir: string): Promise<void> {
  const fd = await open(dir, 'r')
  try {
    await fd.sync()
  } catch (err) {
    // Some file systems cannot fsync a directory; their renames are durable by other means.
    if (!['EINVAL', 'ENOTSUP', 'ENOSYS', 'EISDIR'].includes((err as { code?: string }).code ?? '')) throw err
  } finally {
    await fd.close()
  }
}

/** fsync every file of a LevelDB directory, then the directory: LevelDB's repair does not sync the manifest it writes. */
export async function syncTree(dir: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) {
      await syncTree(path)
      continue
    }
    if (!entry.isFile()) continue
    const fd = await open(path, 'r')
    try {
      await fd.sync()
    } finally {
      await fd.close()
    }
  }
  await syncDir(dir)
}

let tmpSeq = 0

/**
 * Writes `data` to `file` so that the file is, at any moment and after any crash or power cut,
 * either its old content or `data`, whole: a temporary file beside it, fsync, rename over it,
 * fsync of the directory. The new file keeps the old one's mode (a config may hold secrets).
 * On failure (ENOSPC, EIO, EDQUOT…) the temporary file is removed and the error thrown.
 */
export async function writeAtomic(file: string, data: string, mode?: number): Promise<void> {
  const dir = dirname(file)
  let keepMode = mode
  if (keepMode === undefined) {
    try {
      keepMode = (await stat(file)).mode & 0o777
    } catch {
      keepMode = 0o600
    }
  }
  const tmp = join(dir, `.${basename(file)}.tmp-${process.pid}-${++tmpSeq}`)
  const fd = await open(tmp, 'wx', keepMode)
  try {
    try {
      await fd.writeFile(data, 'utf8')
      await fd.sync()
    } finally {
      await fd.close()
    }
    await rename(tmp, file)
  } catch (err) {
    await unlink(tmp).catch(() => undefined)
    throw err
  }
  await syncDir(dir)
}
