/**
 * OCPP-J framing over one websocket: the charge point's side of the link to a
 * central system (OCPP 1.6 JSON, subprotocol `ocpp1.6`).
 *
 * Owns: connecting to `url/identity` (Basic auth when a password is given, the
 * system's CA for wss://, the credentials the charge point gives each attempt:
 * installed roots, a client certificate in security profile 3), telling a refused
 * certificate or authentication from other failures, reconnecting with capped, jittered back-off, the
 * CALL / CALLRESULT / CALLERROR frames, one outgoing call at a time (OCPP 1.6
 * asks a charge point not to send a CALL before the previous one is answered),
 * a timeout per call (a call left unanswered drops the connection, which is the
 * only sure way to know the link is alive), and answering every incoming frame:
 * a frame that is not a well-formed CALL gets `FormationViolation` (when it has
 * a message id to answer to), a CALL is handed to `onCall`.
 *
 * Must never: send a password anywhere but the Authorization header, let a
 * handler's throw close the connection, keep a call waiting past a close, or
 * throw out of an event (an OCPP failure never stops charging or the MQTT uplink).
 */
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { isIP, type connect as netConnect } from 'node:net'
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls'
import WebSocket from 'ws'
import { OutpostError } from '../errors.js'
import type { Logger } from '../log.js'

export const SUBPROTOCOL = 'ocpp1.6'

const CALL = 2
const CALLRESULT = 3
const CALLERROR = 4

/** A CALLERROR to send back: the OCPP 1.6 error code, a description, details. */
export class CallError extends Error {
  constructor(
    readonly code: OcppErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message)
  }
}

export type OcppErrorCode =
  | 'NotImplemented'
  | 'NotSupported'
  | 'InternalError'
  | 'ProtocolError'
  | 'SecurityError'
  | 'FormationViolation'
  | 'PropertyConstraintViolation'
  | 'OccurenceConstraintViolation'
  | 'TypeConstraintViolation'
  | 'GenericError'

export interface RpcOptions {
  url: string
  identity: string
  password?: string
  caFile?: string
  callTimeoutMs: number
  reconnectMaxMs: number
  reconnectBaseMs?: number
  logger: Logger
  /** Answers one CALL from the central system: its payload, or throws a CallError. */
  onCall: (msgId: string, action: string, payload: unknown) => Promise<Record<string, unknown>>
  onOpen: () => void
  onClose: () => void
  /**
   * The TLS credentials of each connection attempt, asked at each one (a certificate installed meanwhile is used by
   * the next): CA certificates trusted beside caFile's, the client certificate and key (security profile 3), and
   * whether the password goes as Basic auth (not in profile 3).
   */
  credentials?: () => { ca?: string[]; cert?: string; key?: string; basicAuth: boolean }
  /** A connection attempt failed for security: the central system refused us (HTTP 401/403, a TLS alert about our certificate), or we refused its certificate. */
  onRefused?: (kind: 'auth' | 'server-certificate', detail: string) => void
  random?: () => number
}

/** TLS errors of a central system's certificate this side refused (node's and OpenSSL's verify codes). */
const SERVER_CERT_ERRORS = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
])
/** TLS alerts with which a central system refuses this side's certificate (or its absence). */
const CLIENT_CERT_ALERT =
  /^ERR_SSL_.*ALERT_(CERTIFICATE_REQUIRED|BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_UNKNOWN|CERTIFICATE_EXPIRED|CERTIFICATE_REVOKED|UNSUPPORTED_CERTIFICATE|ACCESS_DENIED|HANDSHAKE_FAILURE|DECRYPT_ERROR)$/

interface Waiting {
  id: string
  action: string
  resolve(v: Record<string, unknown>): void
  reject(e: Error): void
  timer: NodeJS.Timeout
}

export class OcppRpc {
  private ws: WebSocket | undefined
  private open = false
  private stopped = false
  private attempt = 0
  private reconnectTimer: NodeJS.Timeout | undefined
  private waiting: Waiting | undefined
  /** Outgoing calls in the order they were asked for: one on the wire at a time. */
  private chain: Promise<unknown> = Promise.resolve()
  private readonly ca: Buffer | undefined
  private readonly random: () => number

  constructor(private readonly opts: RpcOptions) {
    this.random = opts.random ?? Math.random
    if (opts.caFile !== undefined) {
      try {
        this.ca = readFileSync(opts.caFile)
      } catch (err) {
        throw new OutpostError('OCPP_CONFIG', `ocpp.caFile ${opts.caFile}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`, {
          cause: err,
        })
      }
    }
  }

  get connected(): boolean {
    return this.open
  }

  /** Where it connects, safe to log (no credentials). */
  get endpoint(): string {
    return `${this.opts.url}/${encodeURIComponent(this.opts.identity)}`
  }

  start(): void {
    this.connect()
  }

  async stop(): Promise<void> {
    this.stopped = true
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer)
    const ws = this.ws
    this.ws = undefined
    this.dropped()
    if (ws && ws.readyState !== WebSocket.CLOSED) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          ws.terminate()
          resolve()
        }, 1000)
        ws.once('close', () => {
          clearTimeout(t)
          resolve()
        })
        ws.close(1000, 'charge point stopping')
      })
    }
  }

  /**
   * Closes the connection cleanly (what was sent, an answer included, leaves first) so that it opens again with new
   * credentials (a security profile, a certificate): it reopens after the back-off.
   */
  reconnect(why: string): void {
    const ws = this.ws
    if (!ws || ws.readyState !== WebSocket.OPEN) return
    this.opts.logger.info({ why }, 'ocpp: reconnecting with new credentials')
    setImmediate(() => ws.close(1012, 'reconnecting with new credentials'))
  }

  /** Drops the connection (a call went unanswered): it reopens after the back-off. */
  reset(): void {
    this.ws?.terminate()
  }

  /**
   * Sends one CALL once the calls before it are answered, and resolves with the CALLRESULT
   * payload. Rejects with OCPP_CALL_ERROR (a CALLERROR), OCPP_TIMEOUT or OCPP_CLOSED. `id` is
   * the message id to use (a queued transaction message keeps its id across resends).
   */
  call(action: string, payload: Record<string, unknown>, id: string = randomUUID()): Promise<Record<string, unknown>> {
    const run = this.chain.then(() => this.callNow(action, payload, id))
    this.chain = run.catch(() => undefined)
    return run
  }

  private callNow(action: string, payload: Record<string, unknown>, id: string): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const ws = this.ws
      if (!ws || !this.open) {
        reject(new OutpostError('OCPP_CLOSED', `${action} not sent: not connected to the central system`))
        return
      }
      const timer = setTimeout(() => {
        if (this.waiting?.id !== id) return
        this.waiting = undefined
        reject(new OutpostError('OCPP_TIMEOUT', `${action} (${id}) not answered within ${this.opts.callTimeoutMs} ms`))
        // An unanswered call means the link cannot be trusted: reconnect (the queue resends).
        this.reset()
      }, this.opts.callTimeoutMs)
      this.waiting = { id, action, resolve, reject, timer }
      ws.send(JSON.stringify([CALL, id, action, payload]), (err) => {
        if (err && this.waiting?.id === id) {
          clearTimeout(timer)
          this.waiting = undefined
          reject(new OutpostError('OCPP_CLOSED', `${action} not sent: ${err.message}`))
        }
      })
    })
  }

  private connect(): void {
    if (this.stopped) return
    const creds = this.opts.credentials?.()
    const headers: Record<string, string> = {}
    if (this.opts.password !== undefined && (creds?.basicAuth ?? true))
      headers.Authorization = `Basic ${Buffer.from(`${this.opts.identity}:${this.opts.password}`).toString('base64')}`
    const ca = [...(this.ca ? [this.ca] : []), ...(creds?.ca ?? []).map((c) => Buffer.from(c))]
    // Whether the TLS handshake completed: under TLS 1.3 a central system that refuses the client certificate may
    // only reset the connection after it, before any answer to the upgrade.
    let handshook = false
    const secure = this.opts.url.startsWith('wss://')
    const ws = new WebSocket(this.endpoint, [SUBPROTOCOL], {
      ...(secure
        ? {
            // ws calls it with the request's options only (as its own tlsConnect, servername included).
            createConnection: ((options: ConnectionOptions & { host?: string }) => {
              const servername = options.servername || (options.host && isIP(options.host) === 0 ? options.host : undefined)
              // `path` is the request's URL path here, not a socket's: it must not reach tls.connect (as in ws's own).
              const socket = tlsConnect({ ...options, path: undefined, ...(servername ? { servername } : {}) } as ConnectionOptions)
              socket.once('secureConnect', () => {
                handshook = true
              })
              return socket
            }) as unknown as typeof netConnect,
          }
        : {}),
      headers,
      handshakeTimeout: 10_000,
      ...(ca.length > 0 ? { ca } : {}),
      ...(creds?.cert !== undefined && creds.key !== undefined ? { cert: creds.cert, key: creds.key } : {}),
      minVersion: 'TLSv1.2',
      // Never accept an unverifiable central system: transactions and remote commands go over this link.
      rejectUnauthorized: true,
    })
    this.ws = ws
    ws.on('open', () => {
      if (ws.protocol !== SUBPROTOCOL) {
        this.opts.logger.error({ url: this.endpoint, protocol: ws.protocol }, 'ocpp: the central system did not accept subprotocol ocpp1.6; retrying')
        ws.close(1002, 'ocpp1.6 required')
        return
      }
      this.attempt = 0
      this.open = true
      this.guard(() => this.opts.onOpen())
    })
    ws.on('message', (data, isBinary) => {
      if (isBinary) return
      this.onFrame(ws, data.toString())
    })
    ws.on('unexpected-response', (_req, res) => {
      this.opts.logger.warn({ url: this.endpoint, status: res.statusCode }, 'ocpp: the central system refused the connection')
      if (res.statusCode === 401 || res.statusCode === 403) this.refused('auth', `HTTP ${res.statusCode} at the websocket upgrade`)
      ws.terminate()
    })
    ws.on('error', (err) => {
      const code = (err as NodeJS.ErrnoException).code ?? ''
      if (!this.open && SERVER_CERT_ERRORS.has(code)) {
        this.opts.logger.warn({ url: this.endpoint, code, err: err.message }, "ocpp: the central system's TLS certificate was refused")
        this.refused('server-certificate', `${code}: ${err.message}`)
      } else if (!this.open && (CLIENT_CERT_ALERT.test(code) || (handshook && creds?.basicAuth === false && code === 'ECONNRESET'))) {
        this.opts.logger.warn({ url: this.endpoint, code }, "ocpp: the central system refused this charge point's TLS certificate")
        this.refused(
          'auth',
          CLIENT_CERT_ALERT.test(code) ? code : `${code}: the connection was reset after the TLS handshake, before the upgrade was answered`,
        )
      } else this.opts.logger.debug({ err: err.message, code }, 'ocpp: websocket error')
    })
    ws.on('close', () => {
      if (this.ws !== ws) return
      const wasOpen = this.open
      this.dropped()
      if (wasOpen) this.guard(() => this.opts.onClose())
      this.scheduleReconnect()
    })
  }

  private refused(kind: 'auth' | 'server-certificate', detail: string): void {
    const cb = this.opts.onRefused
    if (cb) this.guard(() => cb(kind, detail))
  }

  private dropped(): void {
    this.open = false
    const w = this.waiting
    this.waiting = undefined
    if (w) {
      clearTimeout(w.timer)
      w.reject(new OutpostError('OCPP_CLOSED', `${w.action} (${w.id}): the connection closed before its answer`))
    }
  }

  private scheduleReconnect(): void {
    if (this.stopped) return
    const base = this.opts.reconnectBaseMs ?? 1000
    const ceiling = Math.min(this.opts.reconnectMaxMs, base * 2 ** this.attempt)
    this.attempt = Math.min(this.attempt + 1, 30)
    const delay = ceiling / 2 + (this.random() * ceiling) / 2
    this.reconnectTimer = setTimeout(() => this.connect(), delay)
  }

  private guard(fn: () => void): void {
    try {
      fn()
    } catch (err) {
      this.opts.logger.error({ err: (err as Error).message }, 'ocpp: a handler threw; the connection carries on')
    }
  }

  private onFrame(ws: WebSocket, text: string): void {
    let frame: unknown
    try {
      frame = JSON.parse(text)
    } catch {
      // No message id can be read from text that is not JSON: nothing to answer to.
      this.opts.logger.warn({ bytes: text.length }, 'ocpp: a frame that is not JSON was ignored')
      return
    }
    if (!Array.isArray(frame) || typeof frame[1] !== 'string') {
      this.opts.logger.warn('ocpp: a frame without a message id was ignored')
      return
    }
    const [type, id] = frame as [unknown, string]
    if (type === CALLRESULT || type === CALLERROR) {
      const w = this.waiting
      if (!w || w.id !== id) {
        this.opts.logger.debug({ id }, 'ocpp: an answer to no call in flight was ignored')
        return
      }
      clearTimeout(w.timer)
      this.waiting = undefined
      if (type === CALLRESULT) {
        const payload = frame[2]
        if (frame.length !== 3 || typeof payload !== 'object' || payload === null || Array.isArray(payload))
          w.reject(new OutpostError('OCPP_CALL_ERROR', `${w.action} (${id}): a CALLRESULT whose payload is not an object`))
        else w.resolve(payload as Record<string, unknown>)
      } else {
        w.reject(new OutpostError('OCPP_CALL_ERROR', `${w.action} (${id}) refused: ${String(frame[2])}: ${String(frame[3] ?? '')}`))
      }
      return
    }
    const reply = (body: unknown[]): void => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(body))
    }
    const refuse = (e: CallError): void => reply([CALLERROR, id, e.code, e.message, e.details])
    if (type !== CALL) {
      refuse(new CallError('FormationViolation', `message type ${JSON.stringify(type)} is not CALL (2), CALLRESULT (3) or CALLERROR (4)`))
      return
    }
    if (frame.length !== 4 || typeof frame[2] !== 'string') {
      refuse(new CallError('FormationViolation', 'a CALL is [2, "<messageId>", "<action>", {payload}]'))
      return
    }
    const action = frame[2] as string
    void Promise.resolve()
      .then(() => this.opts.onCall(id, action, frame[3]))
      .then(
        (payload) => reply([CALLRESULT, id, payload]),
        (err: unknown) => {
          if (err instanceof CallError) refuse(err)
          else {
            this.opts.logger.error({ action, err: (err as Error).message }, 'ocpp: answering a call failed')
            refuse(new CallError('InternalError', `${action} could not be handled: ${(err as Error).message}`))
          }
        },
      )
  }
}
