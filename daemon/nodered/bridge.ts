/**
 * The bridge between the daemon and Outpost's Node-RED nodes (flows/*.js).
 *
 * The nodes are plain CommonJS loaded by Node-RED; they reach the daemon only
 * through this object, which Node-RED hands them as `RED.settings.outpost`.
 * It owns one listener per daemon event and fans out to the nodes' subscribers,
 * so a flow with many nodes never piles listeners on the daemon, and a node's
 * throwing handler is caught here (logged) instead of reaching the daemon.
 *
 * Must never: apply a command any other way than `daemon.gateway.handle(raw,
 * 'node-red')` (the same validation, at-most-once per id and journal as the
 * cloud's commands); keep anything billable; let a subscriber's error escape.
 */
import { randomUUID } from 'node:crypto'
import type { Daemon } from '../daemon.js'
import type { Logger } from '../log.js'
import type { CommandResultCode } from '../errors.js'
import { type CommandResult, type JournalRecord, type OutletStatus, RECORD_TYPES } from '../../core/types.js'

export type BridgeEvent = 'record' | 'status' | 'result'
type Payload<E extends BridgeEvent> = E extends 'record' ? JournalRecord : E extends 'status' ? OutletStatus : CommandResult

/** What Outpost's nodes see (keep in step with the JSDoc in flows/lib/bridge.js). */
export interface OutpostBridge {
  readonly version: 1
  /** Every record type (core/types.ts RECORD_TYPES): what the events node may filter on. */
  readonly recordTypes: readonly string[]
  readonly siteId: string
  readonly timezone: string
  /** Outlet ids in config order. */
  outletIds(): string[]
  /** The latest status of every outlet that has one (none before the first reading). */
  outlets(): OutletStatus[]
  /** Subscribe to a daemon event; returns the unsubscribe function. */
  on<E extends BridgeEvent>(event: E, fn: (payload: Payload<E>) => void): () => void
  /**
   * Sends a command through the command gateway with source 'node-red'. An object
   * without an `id` gets one (`node-red-<uuid>`); anything else is passed as it is
   * and validated by the gateway. Never rejects: every outcome is a CommandResult.
   */
  command(raw: unknown): Promise<CommandResult>
  /**
   * This boot's gateway.started record (journaled before Node-RED starts), given once
   * per node id so an events node reports the boot once, not on every redeploy.
   */
  bootRecord(nodeId: string): JournalRecord | undefined
}

/** How far back from the head the bridge looks for this boot's gateway.started. */
const BOOT_LOOKBACK = 1000

export class DaemonBridge implements OutpostBridge {
  readonly version = 1 as const
  readonly recordTypes: readonly string[] = RECORD_TYPES
  readonly siteId: string
  readonly timezone: string
  private readonly subs: { [E in BridgeEvent]: Set<(p: Payload<E>) => void> } = { record: new Set(), status: new Set(), result: new Set() }
  private readonly relays: { [E in BridgeEvent]: (p: Payload<E>) => void }
  private closed = false
  private boot: JournalRecord | undefined
  private readonly bootGiven = new Set<string>()

  constructor(
    private readonly daemon: Daemon,
    private readonly log: Logger,
  ) {
    this.siteId = daemon.config.site.id
    this.timezone = daemon.config.site.timezone
    this.relays = {
      record: (p) => this.fanOut('record', p),
      status: (p) => this.fanOut('status', p),
      result: (p) => this.fanOut('result', p),
    }
    daemon.on('record', this.relays.record)
    daemon.on('status', this.relays.status)
    daemon.on('result', this.relays.result)
  }

  /** Finds this boot's gateway.started in the journal (call once before the flows start). */
  async load(): Promise<void> {
    const journal = this.daemon.records
    if (!journal) return
    const head = journal.head()
    const from = Math.max(journal.oldest(), head - BOOT_LOOKBACK + 1, 1)
    if (head < from) return
    const recent = await journal.read(from, head - from + 1)
    this.boot = recent.reverse().find((r) => r.type === 'gateway.started' && r.bootId === this.daemon.bootId)
  }

  bootRecord(nodeId: string): JournalRecord | undefined {
    if (!this.boot || this.bootGiven.has(nodeId)) return undefined
    this.bootGiven.add(nodeId)
    return structuredClone(this.boot)
  }

  outletIds(): string[] {
    return this.daemon.config.outlets.map((o) => o.id)
  }

  outlets(): OutletStatus[] {
    return this.daemon.outletStatuses().map((s) => ({ ...s }))
  }

  on<E extends BridgeEvent>(event: E, fn: (payload: Payload<E>) => void): () => void {
    const set = this.subs[event] as Set<(p: Payload<E>) => void> | undefined
    if (!set) throw new TypeError(`unknown Outpost event "${String(event)}" (one of: record, status, result)`)
    set.add(fn)
    return () => void set.delete(fn)
  }

  async command(raw: unknown): Promise<CommandResult> {
    if (this.closed) {
      const code: CommandResultCode = 'unavailable'
      return { id: '', ok: false, error: { code, message: 'Node-RED is stopping: the command was not sent' } }
    }
    const body = isPlainObject(raw) && raw.id === undefined ? { ...raw, id: `node-red-${randomUUID()}` } : raw
    return this.daemon.gateway.handle(body, 'node-red')
  }

  /** Detaches from the daemon; later commands are refused, subscribers get nothing more. */
  close(): void {
    this.closed = true
    this.daemon.off('record', this.relays.record)
    this.daemon.off('status', this.relays.status)
    this.daemon.off('result', this.relays.result)
    for (const set of Object.values(this.subs)) set.clear()
  }

  private fanOut<E extends BridgeEvent>(event: E, payload: Payload<E>): void {
    for (const fn of [...(this.subs[event] as Set<(p: Payload<E>) => void>)]) {
      try {
        // Each subscriber gets its own copy: a flow that edits msg.payload must not edit the daemon's record.
        fn(structuredClone(payload))
      } catch (err) {
        this.log.error({ component: 'node-red', event, err: (err as Error).message }, 'an Outpost node failed on a daemon event')
      }
    }
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !Buffer.isBuffer(v) && !(v instanceof Uint8Array)
}
