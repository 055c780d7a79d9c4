/**
 * What the daemon shows of Node-RED (`nodeRed` in GET /api/status, the status page, /metrics).
 *
 * Must never: import the daemon (daemon.ts holds one of these; the supervisor fills it).
 */
export type NodeRedState = 'starting' | 'running' | 'restarting' | 'waiting' | 'stopped'

export interface NodeRedStatus {
  state: NodeRedState
  /** `daemon`: a child process of the daemon; `unit`: its own systemd unit, connected to the daemon's socket. */
  supervisor: 'daemon' | 'unit'
  pid: number | null
  /** The user Node-RED runs as (under its own unit: that unit's, not known here). */
  user: string | null
  /** Starts (or, under its unit, connections) after the first. */
  restarts: number
  /** Since when the state is what it is (ISO 8601). */
  since: string
  lastExit: { code: number | null; signal: string | null; at: string; why: string } | null
  startMs: number | null
  commands: number
  refused: number
  droppedEvents: number
}
