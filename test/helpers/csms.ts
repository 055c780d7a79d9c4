/**
 * An independent OCPP 1.6J central system for the tests: ocpp-rpc's server in
 * strict mode (every call and reply checked against the official OCPP 1.6 JSON
 * schemas bundled with it) on loopback, recording every call the charge point
 * makes.
 *
 * Owns: the record of calls (kept across restarts of the server on the same
 * port, so an outage test sees one history), transaction ids, the boot answer,
 * and the count of strict-mode violations and bad messages, which every test
 * file asserts to be zero.
 *
 * Must never: answer outside the schemas (a violation here would hide one on the
 * charge point's side), or leave a server listening after its test.
 */
import { execFileSync } from 'node:child_process'
import { createServer as createHttpsServer } from 'node:https'
import { createRequire } from 'node:module'
import type { AddressInfo } from 'node:net'
import type { JournalRecord } from '../../core/types.js'
import { CLI, type Peer, startPeer, tempDir, waitFor, writeSiteConfig } from './e2e-kit.js'

const require = createRequire(import.meta.url)
const { RPCServer, createRPCError } = require('ocpp-rpc') as { RPCServer: any; createRPCError: (type: string, message?: string) => Error }

interface Teardownable {
  teardown(fn: () => unknown): void
}

export interface CsmsCall {
  identity: string
  action: string
  params: Record<string, unknown>
  messageId: string
  /** Wall time it arrived (Date.now). */
  at: number
  /** What the central system answered. */
  reply?: Record<string, unknown>
  /** The CALLERROR code it answered instead (CsmsOptions.refuse). */
  refused?: string
}

export interface CsmsOptions {
  /** Basic auth: only this password is let in. */
  password?: string
  /** BootNotification answer: a fixed status, or one per boot in turn (the last repeats). */
  boot?: { status: 'Accepted' | 'Pending' | 'Rejected'; interval: number }[]
  /** Called right after each accepted BootNotification has been answered (a command sent the moment the charge point is online). */
  onAccepted?: () => void
  /**
   * Called inside the StartTransaction handler, before its answer is sent, with the transactionId
   * it is about to give: a call made here reaches the charge point ahead of that answer.
   */
  onStartTransaction?: (transactionId: number, params: Record<string, unknown>) => void
  /**
   * A CALLERROR code to answer a call with instead of its result (the nth call of that action, from 1), or
   * undefined to answer it. The refused call is recorded with `refused` set.
   */
  refuse?: (action: string, nth: number, params: Record<string, unknown>) => string | undefined
  /** idTags Authorize and StartTransaction refuse (Invalid). */
  invalidTags?: string[]
  port?: number
  /**
   * Serve wss:// with this key and certificate (PEM). With `clientCa`, a client certificate signed by it is asked for
   * (`requireClientCert`: and a connection without one refused in the TLS handshake: security profile 3).
   */
  tls?: { key: Buffer; cert: Buffer; clientCa?: Buffer; requireClientCert?: boolean }
  /** What SignCertificate is answered (default Accepted). */
  signCertificate?: 'Accepted' | 'Rejected'
}

/** How a charge point connected: its Basic auth password, and the client certificate it presented (verified by the TLS layer). */
export interface CsmsPeer {
  password?: string
  /** The verified client certificate's subject CN, or undefined when none was presented or it did not verify. */
  certCn?: string
  certSerial?: string
}

export interface Csms {
  url: string
  port: number
  calls: CsmsCall[]
  /** ocpp-rpc strict-mode violations and bad messages seen so far, across restarts. */
  violations: unknown[]
  badMessages: unknown[]
  /** Raw frames the charge point sent, as text. */
  frames: string[]
  connections: number
  /** Every connection, in order: how the charge point authenticated. */
  peers: CsmsPeer[]
  /** The connected charge point (its ocpp-rpc server client), if any. */
  client(): any
  waitCall(action: string, pred?: (c: CsmsCall) => boolean, what?: string, timeoutMs?: number): Promise<CsmsCall>
  of(action: string): CsmsCall[]
  /** A call to the charge point, validated in strict mode. */
  call(action: string, params: Record<string, unknown>): Promise<Record<string, unknown>>
  /** Sends a raw text frame and waits for the charge point's answer to `messageId`. */
  raw(text: string, messageId: string): Promise<unknown[]>
  /** Stops the server, dropping the charge point (an outage). */
  down(): Promise<void>
  /** Starts it again on the same port. */
  up(): Promise<void>
  setBoot(b: CsmsOptions['boot']): void
}

export async function startCsms(t: Teardownable, opts: CsmsOptions = {}): Promise<Csms> {
  const calls: CsmsCall[] = []
  const violations: unknown[] = []
  const badMessages: unknown[] = []
  const frames: string[] = []
  let nextTx = 100
  let boots = 0
  let boot = opts.boot ?? [{ status: 'Accepted', interval: 300 }]
  let server: any
  let current: any
  let port = opts.port ?? 0
  let connections = 0
  const peers: CsmsPeer[] = []
  const invalid = new Set(opts.invalidTags ?? [])

  const listen = async () => {
    server = new RPCServer({ protocols: ['ocpp1.6'], strictMode: true, callTimeoutMs: 10_000 })
    server.auth((accept: (s?: unknown) => void, reject: (code: number) => void, handshake: { password?: Buffer; request: any }) => {
      const socket = handshake.request.socket
      const cert = socket.authorized && typeof socket.getPeerCertificate === 'function' ? socket.getPeerCertificate() : undefined
      peers.push({
        ...(handshake.password ? { password: handshake.password.toString('utf8') } : {}),
        ...(cert?.subject ? { certCn: cert.subject.CN as string, certSerial: cert.serialNumber as string } : {}),
      })
      // A verified client certificate stands for the password (security profile 3 sends none).
      if (opts.password !== undefined && !cert?.subject && handshake.password?.toString('utf8') !== opts.password) reject(401)
      else accept({})
    })
    server.on('client', (client: any) => {
      connections++
      current = client
      client.on('strictValidationFailure', (e: unknown) => violations.push(e))
      client.on('badMessage', (e: unknown) => badMessages.push(e))
      client.on('message', ({ message, outbound }: { message: string; outbound: boolean }) => {
        if (!outbound) frames.push(String(message))
      })
      client.on('close', () => {
        if (current === client) current = undefined
      })
      const record = (action: string, p: { params: Record<string, unknown>; messageId: string }) => {
        const c: CsmsCall = { identity: client.identity, action, params: p.params, messageId: p.messageId, at: Date.now() }
        calls.push(c)
        const code = opts.refuse?.(action, calls.filter((x) => x.action === action).length, p.params)
        if (code !== undefined) {
          c.refused = code
          throw createRPCError(code, `the test central system refuses this ${action}`)
        }
        return <R extends Record<string, unknown>>(reply: R): R => {
          c.reply = reply
          return reply
        }
      }
      const now = () => new Date().toISOString()
      client.handle('BootNotification', (p: { params: Record<string, unknown>; messageId: string }) => {
        const done = record('BootNotification', p)
        const b = boot[Math.min(boots++, boot.length - 1)]!
        if (b.status === 'Accepted' && opts.onAccepted) setImmediate(opts.onAccepted)
        return done({ status: b.status, interval: b.interval, currentTime: now() })
      })
      client.handle('Heartbeat', (p: { params: Record<string, unknown>; messageId: string }) => {
        return record('Heartbeat', p)({ currentTime: now() })
      })
      client.handle('StatusNotification', (p: { params: Record<string, unknown>; messageId: string }) => {
        return record('StatusNotification', p)({})
      })
      client.handle('Authorize', (p: { params: Record<string, unknown>; messageId: string }) => {
        return record('Authorize', p)({ idTagInfo: { status: invalid.has(p.params.idTag as string) ? 'Invalid' : 'Accepted' } })
      })
      client.handle('StartTransaction', (p: { params: Record<string, unknown>; messageId: string }) => {
        const transactionId = nextTx++
        opts.onStartTransaction?.(transactionId, p.params)
        return record('StartTransaction', p)({ transactionId, idTagInfo: { status: invalid.has(p.params.idTag as string) ? 'Invalid' : 'Accepted' } })
      })
      client.handle('StopTransaction', (p: { params: Record<string, unknown>; messageId: string }) => {
        return record('StopTransaction', p)({ idTagInfo: { status: 'Accepted' } })
      })
      client.handle('MeterValues', (p: { params: Record<string, unknown>; messageId: string }) => {
        return record('MeterValues', p)({})
      })
      client.handle('SecurityEventNotification', (p: { params: Record<string, unknown>; messageId: string }) => {
        return record('SecurityEventNotification', p)({})
      })
      client.handle('SignCertificate', (p: { params: Record<string, unknown>; messageId: string }) => {
        return record('SignCertificate', p)({ status: opts.signCertificate ?? 'Accepted' })
      })
    })
    if (opts.tls) {
      const https = createHttpsServer({
        key: opts.tls.key,
        cert: opts.tls.cert,
        ...(opts.tls.clientCa ? { ca: opts.tls.clientCa, requestCert: true, rejectUnauthorized: opts.tls.requireClientCert === true } : {}),
      })
      https.on('upgrade', server.handleUpgrade)
      await new Promise<void>((resolve) => https.listen(port, '127.0.0.1', resolve))
      port = (https.address() as AddressInfo).port
      server.once('close', () => https.close())
      server.on('closing', () => https.closeAllConnections())
    } else {
      const http = await server.listen(port, '127.0.0.1')
      port = (http.address() as AddressInfo).port
    }
  }
  await listen()
  const csms: Csms = {
    get url() {
      return `${opts.tls ? 'wss' : 'ws'}://127.0.0.1:${port}/ocpp`
    },
    get port() {
      return port
    },
    calls,
    violations,
    badMessages,
    frames,
    peers,
    get connections() {
      return connections
    },
    client: () => current,
    of: (action) => calls.filter((c) => c.action === action),
    waitCall: (action, pred = () => true, what, timeoutMs = 60_000) =>
      waitFor(() => calls.find((c) => c.action === action && pred(c)), what ?? `CSMS received ${action}`, timeoutMs),
    async call(action, params) {
      const c = await waitFor(() => current, 'a connected charge point')
      return c.call(action, params)
    },
    async raw(text, messageId) {
      const c = await waitFor(() => current, 'a connected charge point')
      c.sendRaw(text)
      const reply = await waitFor(
        () =>
          frames
            .map((f) => {
              try {
                return JSON.parse(f) as unknown[]
              } catch {
                return undefined
              }
            })
            .find((f) => Array.isArray(f) && f[1] === messageId && (f[0] === 3 || f[0] === 4)),
        `the charge point's answer to ${messageId}`,
        20_000,
      )
      return reply
    },
    async down() {
      await server.close({ force: true, code: 1001 })
      current = undefined
    },
    async up() {
      await listen()
    },
    setBoot(b) {
      boot = b ?? [{ status: 'Accepted', interval: 300 }]
      boots = 0
    },
  }
  t.teardown(() => server.close({ force: true }).catch(() => undefined))
  return csms
}

/** Every status the charge point reported for a connector, in order. */
export const statusesOf = (csms: Csms, connectorId: number): string[] =>
  csms
    .of('StatusNotification')
    .filter((c) => c.params.connectorId === connectorId)
    .map((c) => c.params.status as string)

/** The site config's `ocpp` section for a test CSMS: short timings so a scenario takes seconds. */
export function ocppSection(csms: Csms, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { url: csms.url, identity: 'outpost-e2e', reconnectMaxMs: 1000, callTimeoutS: 10, meterValueSampleS: 0, clockAlignedDataS: 0, ...extra }
}

/** The journal's records, read with `outpost records` (the daemon stopped, or between its writes). */
export function journalRecords(configFile: string): JournalRecord[] {
  const out = execFileSync(process.execPath, [CLI, 'records', '--config', configFile], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })
  return out
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as JournalRecord)
}

/**
 * Two 16 A cars plugged in on the pymodbus peer, both outlets on the circuit `bay` (`circuit`: its
 * config; with a `meter`, the peer's feeder meter at `feeder`), a charge point of a strict central system.
 */
export async function bayOfTwo(
  t: Teardownable,
  circuit: Record<string, unknown>,
  feeder?: number,
): Promise<{ peer: Peer; csms: Csms; file: string }> {
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 2, ...(feeder !== undefined ? { feeder } : {}) })
  const csms = await startCsms(t)
  await peer.plug(1, 16)
  await peer.plug(2, 16)
  const file = writeSiteConfig({
    dir,
    port: peer.port,
    outlets: 2,
    outlet: { 1: { circuit: 'bay', ratingA: 16 }, 2: { circuit: 'bay', ratingA: 16 } },
    extra: { ocpp: ocppSection(csms, { meterValueSampleS: 0 }), circuits: [{ id: 'bay', ...circuit }] },
  })
  return { peer, csms, file }
}
