/**
 * What the Node-RED tests share: Node-RED's own user for tests that run as root (as this
 * machine's do: a daemon started as root runs Node-RED as `outpost-node-red`, which must
 * exist), a temp directory it can pass, an HTTP client, and a fake systemd notify socket.
 */
import { execFileSync, spawn } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, renameSync } from 'node:fs'
import { join } from 'node:path'
import { DEFAULT_NODE_RED_USER } from '../../daemon/nodered/index.js'
import { waitFor } from './e2e-kit.js'

interface Teardownable {
  teardown(fn: () => unknown): void
}

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

/**
 * A site config written by writeSiteConfig (`written`, in `dir`) moved where the installer puts it:
 * `dir/etc` (0750, like /etc/outpost) holding `site.json` (0640), root's. Its storage.dir is `dir/journal`.
 */
export function installedLayout(dir: string, written: string): { configFile: string; storageDir: string } {
  const etc = join(dir, 'etc')
  mkdirSync(etc, { mode: 0o750 })
  const configFile = join(etc, 'site.json')
  renameSync(written, configFile)
  chmodSync(configFile, 0o640)
  return { configFile, storageDir: join(dir, 'journal') }
}

export interface Answer {
  status: number
  text: string
  /** The body parsed as JSON, or undefined when it is not JSON. */
  json: any
}

/** A client for one base URL: `body` is sent as JSON, `text` as text/plain; every answer is read whole. */
export function httpClient(
  base: () => string,
): (method: string, path: string, o?: { body?: unknown; text?: string; headers?: Record<string, string> }) => Promise<Answer> {
  return async (method, path, o = {}) => {
    const headers: Record<string, string> = { accept: 'application/json', ...o.headers }
    if (o.body !== undefined) headers['content-type'] = 'application/json'
    if (o.text !== undefined) headers['content-type'] = 'text/plain'
    const res = await fetch(base() + path, { method, headers, body: o.text ?? (o.body === undefined ? undefined : JSON.stringify(o.body)) })
    const text = await res.text()
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch {
      json = undefined
    }
    return { status: res.status, text, json }
  }
}

/**
 * systemd's side of NOTIFY_SOCKET for a daemon under test: a unix datagram socket (Node has none;
 * socat prints what arrives), `onData` called with each chunk. Resolves once the socket exists.
 */
export async function fakeNotifySocket(t: Teardownable, dir: string, onData: (text: string) => void): Promise<string> {
  const path = join(dir, 'notify')
  const recv = spawn('socat', ['-u', `UNIX-RECV:${path}`, 'STDOUT'], { stdio: ['ignore', 'pipe', 'pipe'] })
  const recvExit = new Promise((r) => recv.once('exit', r))
  t.teardown(async () => {
    if (recv.exitCode === null && recv.signalCode === null) recv.kill('SIGKILL')
    await recvExit
  })
  recv.stdout.on('data', (d: Buffer) => onData(d.toString()))
  await waitFor(() => existsSync(path), 'the notify socket exists')
  return path
}
