/**
 * Making renames and whole LevelDB directories durable: fsync of a directory, and of every
 * file of a tree. Shared by the swap (repair, salvage) and the seq marker.
 *
 * Owns: the fsync calls and which directory-fsync errors a file system may answer harmlessly.
 * Must never: write anything.
 */
import { open, readdir } from 'node:fs/promises'
import { join } from 'node:path'

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
