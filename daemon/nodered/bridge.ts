/**
 * What Outpost's Node-RED nodes (flows/*.js) see of the daemon: `RED.settings.outpost`
 * in the Node-RED process, implemented over the channel by ChannelBridge (child.ts).
 *
 * Must never: grow past records, statuses and commands (keep in step with the JSDoc in
 * flows/lib/bridge.js, and with what the channel carries: channel.ts).
 */
import type { CommandResult, JournalRecord, OutletStatus } from '../../core/types.js'

export type BridgeEvent = 'record' | 'status' | 'result'
type Payload<E extends BridgeEvent> = E extends 'record' ? JournalRecord : E extends 'status' ? OutletStatus : CommandResult

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
   * and validated by the gateway. Never rejects: every outcome is a CommandResult
   * (`rate-limited` over nodeRed.commandRate, `unavailable` when the channel is down).
   */
  command(raw: unknown): Promise<CommandResult>
  /**
   * This boot's gateway.started record (journaled before Node-RED starts), given once
   * per node id so an events node reports the boot once, not on every redeploy.
   */
  bootRecord(nodeId: string): JournalRecord | undefined
}
