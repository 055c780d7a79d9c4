/**
 * The daemon's end of the Node-RED channel: the only way Outpost's nodes (in the
 * Node-RED process) reach the daemon. It gives records, statuses and command results
 * as they are committed, takes commands, and nothing else: no files, no config, no
 * secret (docs/nodered.md, "The channel").
 *
 * Owns: one listener per daemon event while the channel is open; the command rate
 * limit (a token bucket of `commandRate` per second, burst `commandRate`; over it, or
 * with `MAX_IN_FLIGHT` commands unanswered, a command is answered `rate-limited`
 * without reaching the gateway); the bound on what waits to be written to a Node-RED
 * that does not read (events past it are dropped and counted); Node-RED's log lines
 * into pino, at most `LOG_LINES_PER_S` a second.
 *
 * Must never: apply a command any other way than `daemon.gateway.handle(raw,
 * 'node-red')` (the same validation, at-most-once per id and ledger as the cloud's);
 * wait on Node-RED; let anything Node-RED sends throw in the daemon.
 */
import { randomUUID, timingSafeEqual } from 'node:crypto'
import type { Duplex } from 'node:stream'
import type { Daemon } from '../daemon.js'
import type { Logger } from '../log.js'
import type { CommandResultCode } from '../errors.js'
import { type CommandResult, type JournalRecord, type OutletStatus, RECORD_TYPES } from '../../core/types.js'
import { type ChildSettings, type UpMessage, readLines, writeLine } from './wire.js'

/** Commands answered by nobody yet: more than this and a new one is `rate-limited`. */
export const MAX_IN_FLIGHT = 64
/** Bytes waiting for a Node-RED that does not read, past which events are dropped (counted). */
export const MAX_UNREAD = 4 * 1024 * 1024
export const LOG_LINES_PER_S = 200
/** How far back from the head the channel looks for this boot's gateway.started. */
const BOOT_LOOKBACK = 1000

export interface ChannelCounters {
  commands: number
  refused: number
  droppedEvents: number
  droppedLogs: number
  malformed: number
}

export interface ChannelOptions {
  daemon: Daemon
  stream: Duplex
  log: Logger
  settings: ChildSettings
  commandRate: number
  /** Monotonic milliseconds (the rate limit's clock). */
  now: () => number
  counters: ChannelCounters
  /** Under Node-RED's own unit: the credential its first line must give (`auth`); nothing is sent or taken before. */
  token?: string
  onAuthed?(): void
  onReady(m: Extract<UpMessage, { t: 'ready' }>): void
  onPong(n: number): void
  /** The other end broke the protocol beyond repair (an oversized line): the supervisor restarts it. */
  onBroken(why: string): void
}

export class DaemonChannel {
  private readonly relays: { record: (r: JournalRecord) => void; status: (s: OutletStatus) => void; result: (r: CommandResult) => void }
  private closed = false
  private tokens: number
  private refilledAt: number
  private inFlight = 0
  private logWindow = { at: 0, n: 0 }
  private pingN = 0
  private authed: boolean
  private corked = false

  constructor(private readonly o: ChannelOptions) {
    this.tokens = o.commandRate
    this.refilledAt = o.now()
    this.authed = o.token === undefined
    this.relays = {
      record: (p) => this.send({ t: 'record', p }),
      status: (p) => this.send({ t: 'status', p }),
      result: (p) => this.send({ t: 'result', p }),
    }
    readLines(
      o.stream,
      (m) => this.onMessage(m),
      () => o.onBroken(`a line longer than the channel's bound`),
    )
    o.stream.on('error', () => undefined)
  }

  /** Sends hello (with this boot's gateway.started), then every daemon event. */
  async open(): Promise<void> {
    const { daemon } = this.o
    const boot = await bootRecord(daemon)
    if (this.closed) return
    writeLine(this.o.stream, {
      t: 'hello',
      settings: this.o.settings,
      recordTypes: RECORD_TYPES,
      outletIds: daemon.config.outlets.map((x) => x.id),
      statuses: daemon.outletStatuses(),
      ...(boot ? { boot } : {}),
      commandRate: this.o.commandRate,
    })
    daemon.on('record', this.relays.record)
    daemon.on('status', this.relays.status)
    daemon.on('result', this.relays.result)
  }

  ping(): number {
    this.send({ t: 'ping', n: ++this.pingN })
    return this.pingN
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    const { daemon } = this.o
    daemon.off('record', this.relays.record)
    daemon.off('status', this.relays.status)
    daemon.off('result', this.relays.result)
    this.o.stream.destroy()
  }

  private send(m: Parameters<typeof writeLine>[1]): void {
    if (this.closed || this.o.stream.destroyed) return
    // A Node-RED that reads nothing (a busy loop) must not grow the daemon's memory: drop, count.
    if (this.o.stream.writableLength > MAX_UNREAD && m.t !== 'reply') {
      this.o.counters.droppedEvents++
      return
    }
    // A poll's burst of statuses (one per outlet) goes out in one write, not one system call each.
    if (!this.corked) {
      this.corked = true
      this.o.stream.cork()
      process.nextTick(() => {
        this.corked = false
        this.o.stream.uncork()
      })
    }
    writeLine(this.o.stream, m)
  }

  private onMessage(m: unknown): void {
    if (this.closed) return
    const msg = m as UpMessage | undefined
    if (!this.authed) {
      const given = msg?.t === 'auth' && typeof msg.token === 'string' ? Buffer.from(msg.token) : undefined
      const want = Buffer.from(this.o.token ?? '')
      if (!given || given.length !== want.length || !timingSafeEqual(given, want))
        return void this.o.onBroken('its first line was not the channel credential')
      this.authed = true
      return void this.o.onAuthed?.()
    }
    if (!msg || typeof msg !== 'object' || typeof msg.t !== 'string') return void this.o.counters.malformed++
    switch (msg.t) {
      case 'command':
        if (typeof msg.n !== 'number') return void this.o.counters.malformed++
        return void this.command(msg.n, msg.p)
      case 'pong':
        return void this.o.onPong(Number(msg.n))
      case 'ready':
        return void this.o.onReady(msg)
      case 'log':
        return void this.logLine(msg)
      default:
        this.o.counters.malformed++
    }
  }

  private async command(n: number, raw: unknown): Promise<void> {
    const c = this.o.counters
    c.commands++
    const body = isPlainObject(raw) && raw.id === undefined ? { ...raw, id: `node-red-${randomUUID()}` } : raw
    if (!this.take()) {
      c.refused++
      const code: CommandResultCode = 'rate-limited'
      const id = isPlainObject(body) && typeof body.id === 'string' ? body.id : ''
      const message = `more than ${this.o.commandRate} commands a second (nodeRed.commandRate) or ${MAX_IN_FLIGHT} unanswered: refused, nothing was applied`
      return this.send({ t: 'reply', n, p: { id, ok: false, error: { code, message } } })
    }
    this.inFlight++
    try {
      const result = await this.o.daemon.gateway.handle(body, 'node-red')
      this.send({ t: 'reply', n, p: result })
    } finally {
      this.inFlight--
    }
  }

  /** One token of the bucket, if there is one and fewer than MAX_IN_FLIGHT commands wait. */
  private take(): boolean {
    const now = this.o.now()
    const rate = this.o.commandRate
    this.tokens = Math.min(rate, this.tokens + ((now - this.refilledAt) / 1000) * rate)
    this.refilledAt = now
    if (this.tokens < 1 || this.inFlight >= MAX_IN_FLIGHT) return false
    this.tokens -= 1
    return true
  }

  private logLine(m: Extract<UpMessage, { t: 'log' }>): void {
    const now = this.o.now()
    if (now - this.logWindow.at >= 1000) {
      if (this.logWindow.n > LOG_LINES_PER_S)
        this.o.log.warn({ dropped: this.logWindow.n - LOG_LINES_PER_S }, 'node-red logged more than 200 lines a second: the rest were dropped')
      this.logWindow = { at: now, n: 0 }
    }
    if (++this.logWindow.n > LOG_LINES_PER_S) return void this.o.counters.droppedLogs++
    const level = ['error', 'warn', 'info', 'debug', 'trace'].includes(m.level) ? m.level : 'info'
    const text = String(m.msg).slice(0, 8192)
    const node = isPlainObject(m.node) ? { node: m.node } : {}
    this.o.log[level](node, text)
  }
}

/** This boot's gateway.started record (journaled before Node-RED starts), if the journal still has it near the head. */
async function bootRecord(daemon: Daemon): Promise<JournalRecord | undefined> {
  const journal = daemon.records
  if (!journal) return undefined
  const head = journal.head()
  const from = Math.max(journal.oldest(), head - BOOT_LOOKBACK + 1, 1)
  if (head < from) return undefined
  const recent = await journal.read(from, head - from + 1)
  return recent.reverse().find((r) => r.type === 'gateway.started' && r.bootId === daemon.bootId)
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}
