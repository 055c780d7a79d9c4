/**
 * Node-RED's own user for tests that run as root (as this machine's do): a daemon
 * started as root runs Node-RED as `outpost-node-red` (daemon/nodered), which must exist.
 */
import { execFileSync } from 'node:child_process'
import { chmodSync } from 'node:fs'
import { DEFAULT_NODE_RED_USER } from '../../daemon/nodered/index.js'

/** Creates the system user if it is missing (only as root); returns its ids, or undefined when not root. */
export function ensureNodeRedUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined
  const ids = (): { uid: number; gid: number } => ({
    uid: Number(execFileSync('id', ['-u', DEFAULT_NODE_RED_USER], { encoding: 'utf8' })),
    gid: Number(execFileSync('id', ['-g', DEFAULT_NODE_RED_USER], { encoding: 'utf8' })),
  })
  try {
    return ids()
  } catch {
    try {
      execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', DEFAULT_NODE_RED_USER], { stdio: 'ignore' })
    } catch {
      // Another test file created it meanwhile.
    }
    return ids()
  }
}

/**
 * A test's temp directory (mkdtemp: 0700) made passable, as /var/lib is: Node-RED's user reaches
 * its user directory inside it by name, and nothing else (storage.dir stays 0700, the daemon's).
 */
export function passable(dir: string): void {
  chmodSync(dir, 0o711)
}
