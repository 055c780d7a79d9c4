/**
 * The wire of the Node-RED channel: newline-delimited JSON over one stream socket,
 * spoken by the daemon (channel.ts) and the Node-RED process (child.ts).
 *
 * Owns: the message shapes both ends agree on, and the line reader with its bound.
 *
 * Must never: let one oversized line grow a buffer without end (the reader calls
 * `onOversize` and drops what it held), or throw from a malformed line (the reader
 * hands `undefined` to the caller, which counts it).
 */
import type { Duplex } from 'node:stream'
import type { CommandResult, JournalRecord, OutletStatus } from '../../core/types.js'

/** What the Node-RED process needs to run (given once, in `hello`): no secret of the site's but the editor's password hash. */
export interface ChildSettings {
  userDir: string
  flowFile: string
  adminRoot: string
  nodeRoot: string
  adminAuth?: { username: string; passwordHash: string }
  siteId: string
  siteName: string
  timezone: string
  billingCsvDir: string
  /** pino's level name: Node-RED's log is filtered to it before it crosses the channel. */
  logLevel: string
  /** Every proxied HTTP request and websocket carries it (header `x-outpost-proxy`); anything without is refused. */
  proxySecret: string
}

export interface Hello {
  t: 'hello'
  settings: ChildSettings
  recordTypes: readonly string[]
  outletIds: string[]
  statuses: OutletStatus[]
  boot?: JournalRecord
  /** Commands the daemon accepts per second (and in one burst) before it answers `rate-limited`. */
  commandRate: number
}

/** Daemon → Node-RED. */
export type DownMessage =
  | Hello
  | { t: 'record'; p: JournalRecord }
  | { t: 'status'; p: OutletStatus }
  | { t: 'result'; p: CommandResult }
  | { t: 'reply'; n: number; p: CommandResult }
  | { t: 'ping'; n: number }

/** Node-RED → daemon. */
export type UpMessage =
  | { t: 'auth'; token: string }
  | { t: 'ready'; port: number; startMs: number; version: string; pid: number }
  | { t: 'command'; n: number; p: unknown }
  | { t: 'pong'; n: number }
  | { t: 'log'; level: 'error' | 'warn' | 'info' | 'debug' | 'trace'; msg: string; node?: Record<string, string> }

/** The longest line either end accepts (a command is a few hundred bytes; a log line is cut at 8 KiB). */
export const MAX_LINE = 256 * 1024

/** The channel's socket is fd 3 of the Node-RED process the daemon spawns. */
export const CHANNEL_FD = 3
/**
 * Under the installed units Node-RED has a unit of its own and connects to the daemon's socket;
 * its first line is `auth` with this systemd credential (LoadCredential= in both units).
 */
export const CHANNEL_CREDENTIAL = 'node-red-channel'
/** The socket's name in the daemon's RuntimeDirectory (/run/outpost). */
export const CHANNEL_SOCKET = 'node-red.sock'
export const PROXY_HEADER = 'x-outpost-proxy'

/** Calls `onMessage` for each line read from `stream` (parsed; undefined when it is not JSON). */
export function readLines(stream: Duplex, onMessage: (m: unknown) => void, onOversize: () => void): void {
  let held = ''
  stream.setEncoding('utf8')
  stream.on('data', (chunk: string) => {
    let text = held + chunk
    let nl = text.indexOf('\n')
    while (nl !== -1) {
      const line = text.slice(0, nl)
      text = text.slice(nl + 1)
      if (line) {
        let m: unknown
        try {
          m = JSON.parse(line)
        } catch {
          m = undefined
        }
        onMessage(m)
      }
      nl = text.indexOf('\n')
    }
    if (text.length > MAX_LINE) {
      held = ''
      onOversize()
      return
    }
    held = text
  })
}

export function writeLine(stream: Duplex, m: DownMessage | UpMessage): boolean {
  return stream.write(JSON.stringify(m) + '\n')
}
