/**
 * Embedded Node-RED: the interface the local HTTP server (daemon/http) mounts.
 * The implementation lands with issue #8's Node-RED work; until then starting it
 * fails with a clear error instead of pretending.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { SiteConfig } from '../types.js'
import { OutpostError } from '../types.js'
import type { Daemon } from '../daemon.js'
import type { Logger } from '../log.js'

/** An express-style handler: Node-RED's httpAdmin and httpNode apps are these. */
export type HttpHandler = (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void

export interface NodeRedHandle {
  /** Path prefix of the editor and its admin API (config nodeRed.httpAdminRoot). */
  adminRoot: string
  admin: HttpHandler
  /** Path prefix of flows' own HTTP endpoints (http-in nodes), or undefined if none. */
  nodeRoot?: string
  node?: HttpHandler
  stop(): Promise<void>
}

export interface NodeRedOptions {
  daemon: Daemon
  config: SiteConfig
  /** The local API's HTTP server (Node-RED's websocket for the editor attaches to it). */
  server: Server
  logger: Logger
}

export async function startNodeRed(_opts: NodeRedOptions): Promise<NodeRedHandle> {
  throw new OutpostError('NODE_RED_UNAVAILABLE', 'embedded Node-RED is not built yet (issue #8)')
}
