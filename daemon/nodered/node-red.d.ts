/** The part of Node-RED's embedding API (node-red 4.1, CommonJS) that daemon/nodered uses. */
declare module 'node-red' {
  import type { Server, IncomingMessage, ServerResponse } from 'node:http'
  type Handler = (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void
  interface NodeRed {
    init(server: Server, settings: Record<string, unknown>): void
    start(): Promise<void>
    stop(): Promise<void>
    readonly httpAdmin: Handler
    readonly httpNode: Handler
    readonly version: string
    /** The runtime's events: `flows:started` once the flows run (start() resolves before). */
    readonly events: { once(event: string, fn: () => void): void }
  }
  const RED: NodeRed
  export default RED
}
