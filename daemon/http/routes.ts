/**
 * The JSON routes of the local API (docs/contract.md "Local HTTP API"), the
 * status page's snapshot and live stream, and /metrics. The server (server.ts)
 * has already checked the token when these run (all but `health`).
 *
 * Start and stop go through the command gateway as `local` commands, so they get
 * the same validation, at-most-once per id and journaled result as the cloud's.
 * The body may carry `id` (a command id the client chose): the same id again
 * returns the first result and changes nothing; without one, each request is a
 * new command. Engine refusals map to HTTP statuses in COMMAND_STATUS.
 */
import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Daemon } from '../daemon.js'
import type { Logger } from '../log.js'
import type { CommandResult, JournalRecord, OutletStatus } from '../../core/types.js'
import { isOutpostError, type CommandResultCode } from '../errors.js'
import { outletPlan, outletPrices, walletViews, type WalletView } from '../engine/index.js'
import { currencyMinorDigits } from '../../core/money.js'
import { HttpError, allow, decodePathPart, jsonBody, sendJson } from './util.js'
import { RecentSessions } from './sessions.js'
import { csvHeader, csvRow } from '../export.js'
import { Metrics } from './metrics.js'
import { PowerHistory, oldestUnackedTs } from './views.js'
import { ConfigRoutes } from './config-routes.js'
import { CrossCheckRoutes } from './crosscheck-routes.js'
import { ScanRoutes } from './scan-routes.js'
import type { ConfigStore } from '../config-store.js'
import type { Principal } from './auth.js'

/** A start/stop body is a few fields; anything bigger is a mistake. */
export const MAX_BODY_BYTES = 4096
/** Live streams at once (each is a few kB a second); more are refused 503. */
export const MAX_STREAMS = 32

/**
 * How an engine refusal answers over HTTP. 400: the request is malformed; 404: it names
 * something that does not exist here; 402: the user cannot pay; 409: the outlet's state
 * does not allow it now (try again later or elsewhere); 403: OCPP's offline authorization refused the
 * idTag; 503: the gateway is not running.
 */
export const COMMAND_STATUS = {
  'invalid-command': 400,
  'invalid-plan': 400,
  'unknown-outlet': 404,
  'unknown-user': 404,
  'unknown-plan': 409,
  'no-balance': 402,
  'currency-mismatch': 409,
  'outlet-busy': 409,
  'outlet-unavailable': 409,
  'outlet-fault': 409,
  'outlet-not-ready': 409,
  'plan-unavailable': 409,
  'offline-limit': 409,
  'no-session': 409,
  'no-relay': 409,
  'not-running': 503,
  'unknown-circuit': 404,
  'limit-above-circuit': 409,
  'cross-check-running': 409,
  unavailable: 503,
  'rate-limited': 429,
  'not-authorized': 403,
  internal: 500,
} as const satisfies Record<CommandResultCode, number>

interface RoutesOptions {
  daemon: Daemon
  configStore?: ConfigStore
  now: () => number
  snapshotMs: number
  chartSampleMs: number
  logger: Logger
}

export class ApiRoutes {
  private readonly daemon: Daemon
  private readonly sessions: RecentSessions
  private readonly metrics: Metrics
  private readonly history: PowerHistory
  /** Open live streams and how to send them an event. One daemon subscription serves them all. */
  private readonly streams = new Map<ServerResponse, (event: string, data: unknown) => void>()
  private readonly configRoutes: ConfigRoutes | undefined
  private readonly crossCheckRoutes: CrossCheckRoutes
  private readonly scanRoutes: ScanRoutes
  private readonly onStatus = (s: OutletStatus): void => this.broadcast('outlet', s)
  private readonly onRecord = (r: JournalRecord): void => this.broadcast('record', r)

  constructor(private readonly opts: RoutesOptions) {
    this.daemon = opts.daemon
    this.sessions = new RecentSessions(opts.daemon)
    this.metrics = new Metrics(opts.daemon, opts.now)
    this.history = new PowerHistory(opts.daemon, opts.now, opts.chartSampleMs, Math.ceil(300_000 / opts.chartSampleMs))
    this.configRoutes = opts.configStore ? new ConfigRoutes(opts.daemon, opts.configStore) : undefined
    this.crossCheckRoutes = new CrossCheckRoutes(opts.daemon, opts.configStore, this.configRoutes)
    this.scanRoutes = new ScanRoutes(opts.daemon, opts.now, opts.configStore?.file)
    this.daemon.on('status', this.onStatus)
    this.daemon.on('record', this.onRecord)
  }

  close(): void {
    this.daemon.off('status', this.onStatus)
    this.daemon.off('record', this.onRecord)
    for (const s of this.streams.keys()) s.end()
    this.streams.clear()
    this.sessions.close()
    this.metrics.close()
    this.history.close()
  }

  private broadcast(event: string, data: unknown): void {
    for (const send of this.streams.values()) send(event, data)
  }

  /** GET /api/health: open to anyone (no token), says little. */
  health(method: string, res: ServerResponse): void {
    allow(method, ['GET', 'HEAD'])
    const journal = this.daemon.records
    if (!journal) {
      sendJson(res, 503, { ok: false, uplink: this.daemon.config.uplink ? 'offline' : 'disabled', journal: null })
      return
    }
    const status = this.daemon.uplinkState().status
    const ok = !this.daemon.haltedBy && !journal.fault
    // `ocpp` only on a site that has one: the health of a site without stays as it was.
    const o = this.daemon.ocppState()
    const ocpp = o ? { ocpp: o.connected && o.accepted ? 'online' : 'offline' } : {}
    sendJson(res, ok ? 200 : 503, { ok, uplink: status, ...ocpp, journal: { head: journal.head(), acked: journal.acked() } })
  }

  async handle(req: IncomingMessage, res: ServerResponse, method: string, path: string, q: URLSearchParams, who: Principal): Promise<void> {
    if (path === '/metrics') {
      allow(method, ['GET', 'HEAD'])
      const text = await this.metrics.text()
      res.writeHead(200, { 'content-type': this.metrics.contentType, 'cache-control': 'no-store' })
      return void res.end(text)
    }
    if (!this.daemon.records) throw new HttpError(503, 'not-ready', 'the daemon is still starting')
    const parts = path.split('/').slice(2) // ['outlets', id, 'prices']
    const route = parts[0]
    if (route === 'outlets' && parts.length === 1) {
      allow(method, ['GET', 'HEAD'])
      return sendJson(res, 200, this.outlets())
    }
    if (route === 'outlets' && parts.length === 3) {
      const id = this.outletId(parts[1]!)
      switch (parts[2]) {
        case 'prices':
          allow(method, ['GET', 'HEAD'])
          return sendJson(res, 200, this.prices(id, q))
        case 'start':
          allow(method, ['POST'])
          return this.command(res, id, 'start', await jsonBody(req))
        case 'stop':
          allow(method, ['POST'])
          return this.command(res, id, 'stop', await jsonBody(req))
      }
    }
    if (route === 'wallets' && parts.length === 1) {
      allow(method, ['GET', 'HEAD'])
      return sendJson(res, 200, this.wallets())
    }
    if (route === 'wallets' && parts.length === 2) {
      allow(method, ['PUT'])
      if (who.role !== 'admin' && who.role !== 'owner')
        throw new HttpError(403, 'forbidden', `${who.who} may not set a wallet: users and wallets are the owner's`)
      return this.setWallet(res, decodePathPart(parts[1]!, 'the user id'), await jsonBody(req), who)
    }
    if (route === 'sessions' && parts.length === 1) {
      allow(method, ['GET', 'HEAD'])
      const limit = intParam(q, 'limit', 20, 1, this.sessions.capacity)
      return sendJson(res, 200, { sessions: await this.sessions.recent(limit) })
    }
    if (route === 'sessions.csv' && parts.length === 1) {
      allow(method, ['GET', 'HEAD'])
      // The last sessions, oldest first (a spreadsheet reads down in time), as `outpost export --format csv` writes them.
      const limit = intParam(q, 'limit', this.sessions.capacity, 1, this.sessions.capacity)
      const rows = (await this.sessions.recent(limit)).reverse().map(csvRow)
      res.writeHead(200, {
        'content-type': 'text/csv; charset=utf-8',
        'content-disposition': `attachment; filename="${this.daemon.config.site.id.replace(/[^A-Za-z0-9_.-]/g, '_')}-sessions.csv"`,
        'cache-control': 'no-store',
      })
      return void res.end(method === 'HEAD' ? undefined : csvHeader() + rows.join(''))
    }
    if (route === 'records' && parts.length === 1) {
      allow(method, ['GET', 'HEAD'])
      return sendJson(res, 200, await this.records(q))
    }
    if (route === 'status' && parts.length === 1) {
      allow(method, ['GET', 'HEAD'])
      return sendJson(res, 200, await this.snapshot())
    }
    if (route === 'config' && this.configRoutes) return this.configRoutes.handle(req, res, method, parts.slice(1), who)
    if (route === 'crosscheck') return this.crossCheckRoutes.handle(req, res, method, parts.slice(1), who)
    if (route === 'scan') return this.scanRoutes.handle(req, res, method, parts.slice(1), who)
    if (route === 'events' && parts.length === 1) {
      allow(method, ['GET'])
      return this.stream(req, res)
    }
    throw new HttpError(404, 'not-found', `no route ${path} (see docs/contract.md "Local HTTP API")`)
  }

  // ---------------------------------------------------------------- views

  private outlets(): OutletStatus[] {
    return this.daemon.outletStatuses()
  }

  private outletId(raw: string): string {
    const id = decodePathPart(raw, 'the outlet id')
    // The config in force: outlets may be added while the daemon runs.
    const ids = this.daemon.config.outlets.map((o) => o.id)
    if (!ids.includes(id)) throw new HttpError(404, 'unknown-outlet', `no outlet ${JSON.stringify(id)} on this site (outlets: ${ids.join(', ')})`)
    return id
  }

  private prices(id: string, q: URLSearchParams): unknown {
    const raw = q.get('hours')
    let hours = 24
    if (raw !== null) {
      hours = Number(raw)
      if (raw.trim() === '' || !Number.isFinite(hours) || hours <= 0 || hours > 744)
        throw new HttpError(
          400,
          'invalid-request',
          `query parameter hours: must be a number of hours > 0 and <= 744 (31 days), got ${JSON.stringify(raw)}`,
        )
    }
    try {
      return { outlet: id, hours, ...outletPrices(this.daemon.engineState, id, this.opts.now(), hours) }
    } catch (err) {
      if (isOutpostError(err, 'ENGINE_UNKNOWN_PLAN')) throw new HttpError(409, 'unknown-plan', err.message)
      throw err
    }
  }

  private async records(q: URLSearchParams): Promise<unknown> {
    const journal = this.daemon.records!
    const limit = intParam(q, 'limit', 100, 1, 1000)
    const from = intParam(q, 'from', journal.oldest(), 1, Number.MAX_SAFE_INTEGER)
    let records: JournalRecord[]
    try {
      records = await journal.read(from, limit)
    } catch (err) {
      if (isOutpostError(err, 'JOURNAL_COMPACTED')) throw new HttpError(410, 'journal-compacted', err.message)
      throw err
    }
    const head = journal.head()
    const last = records[records.length - 1]
    return { records, next: last && last.seq < head ? last.seq + 1 : null, head, oldest: journal.oldest() }
  }

  /** Everything the status page shows, in one object. */
  async snapshot(): Promise<unknown> {
    const d = this.daemon
    const journal = d.records!
    const state = d.engineState
    const statuses = new Map(this.outlets().map((s) => [s.outlet, s]))
    const outlets = d.config.outlets.map((o) => {
      const planId = state.outlets[o.id]?.planId ?? o.plan
      const currency = outletPlan(state, o.id)?.currency ?? null
      return {
        id: o.id,
        name: o.name ?? null,
        bus: o.bus,
        meterUnit: o.meter.unit,
        hasRelay: o.relay !== undefined,
        planId,
        // A config change that waits for this outlet's session to end (GET /api/config says what).
        configPending: Boolean(state.outlets[o.id]?.pending),
        currency,
        digits: currency ? (currencyMinorDigits(currency) ?? 2) : 2,
        status: statuses.get(o.id) ?? null,
      }
    })
    return {
      site: { id: d.config.site.id, name: d.config.site.name ?? null, timezone: d.config.site.timezone },
      version: d.version,
      bootId: d.bootId,
      now: new Date(this.opts.now()).toISOString(),
      halted: d.haltedBy ? d.haltedBy.message : null,
      outlets,
      buses: d.buses?.health() ?? [],
      circuits: d.circuitStatuses(),
      uplink: { ...d.uplinkState(), oldestUnackedTs: await oldestUnackedTs(d) },
      ocpp: d.ocppState() ?? null,
      nodeRed: d.nodeRed?.status() ?? null,
      journal: journal.status(),
      sessions: await this.sessions.recent(10),
      crossCheck: await this.crossCheckSummary(),
    }
  }

  /** Whether the wiring in force has passed a cross-check (and which), and the check running now: the cross-check's view, its last report in brief. */
  private async crossCheckSummary(): Promise<Record<string, unknown>> {
    const { running, passed, last, wiring } = await this.crossCheckRoutes.view()
    return {
      running,
      passed,
      last: last ? { id: last.id, passed: last.passed, finishedAt: last.finishedAt, stale: last.wiring !== wiring } : null,
    }
  }

  // ---------------------------------------------------------------- commands

  private async command(res: ServerResponse, outlet: string, action: 'start' | 'stop', body: Record<string, unknown>): Promise<void> {
    const fields = action === 'start' ? ['userId', 'id'] : ['by', 'id']
    for (const k of Object.keys(body)) {
      if (!fields.includes(k)) throw new HttpError(400, 'invalid-request', `body/${k}: unknown field (allowed: ${fields.join(', ')})`)
    }
    if (body.id !== undefined && (typeof body.id !== 'string' || body.id === ''))
      throw new HttpError(
        400,
        'invalid-request',
        'body/id: must be a non-empty string (a command id of your choosing; the same id again returns the first result)',
      )
    if (action === 'start' && (typeof body.userId !== 'string' || body.userId === '')) {
      throw new HttpError(
        400,
        'invalid-request',
        body.userId === undefined ? 'body/userId: is required (the user to bill)' : 'body/userId: must be a non-empty string',
      )
    }
    if (action === 'stop' && body.by !== 'user' && body.by !== 'manager') {
      throw new HttpError(
        400,
        'invalid-request',
        body.by === undefined ? 'body/by: is required ("user" or "manager")' : `body/by: must be "user" or "manager", got ${JSON.stringify(body.by)}`,
      )
    }
    const id = (body.id as string | undefined) ?? `local-${randomUUID()}`
    const command = action === 'start' ? { id, action, outlet, userId: body.userId } : { id, action, outlet, by: body.by }
    const result: CommandResult = await this.daemon.gateway.handle(JSON.stringify(command), 'local')
    if (result.ok) return sendJson(res, 200, result)
    const code = result.error.code
    const status = Object.hasOwn(COMMAND_STATUS, code) ? COMMAND_STATUS[code as CommandResultCode] : 400
    const message = requestMessage(result.error)
    sendJson(res, status, { id: result.id || id, ok: false, error: { code: result.error.code, message } })
  }

  // ---------------------------------------------------------------- wallets

  /** GET /api/wallets: every user's wallet, with what their open sessions have reserved of it (minor units). */
  private wallets(): { wallets: WalletView[] } {
    return { wallets: walletViews(this.daemon.engineState) }
  }

  /**
   * PUT /api/wallets/{userId} `{"currency", "balance"}`: the owner sets a user's balance, as
   * the cloud's `set-wallet` does (the same engine command, journaled the same way; where a
   * cloud keeps the wallets, its next set-wallet replaces this one).
   */
  private async setWallet(res: ServerResponse, userId: string, body: Record<string, unknown>, who: Principal): Promise<void> {
    for (const k of Object.keys(body))
      if (k !== 'currency' && k !== 'balance') throw new HttpError(400, 'invalid-request', `body/${k}: unknown field (allowed: currency, balance)`)
    const command = { id: `local-${randomUUID()}`, action: 'set-wallet', userId, currency: body.currency, balance: body.balance }
    const result: CommandResult = await this.daemon.gateway.handle(JSON.stringify(command), 'local')
    if (!result.ok) {
      return sendJson(res, 400, { ok: false, error: { code: result.error.code, message: requestMessage(result.error, ['userId']) } })
    }
    this.opts.logger.info({ userId, currency: body.currency, balance: body.balance, by: who.who }, 'wallet set from the local API')
    sendJson(res, 200, { ok: true, wallet: this.wallets().wallets.find((w) => w.userId === userId) ?? null })
  }

  // ---------------------------------------------------------------- live stream

  /**
   * GET /api/events: server-sent events for the status page. `history` (the last few
   * minutes of current and power, for the chart) once; `snapshot` (what /api/status
   * returns) at once and every snapshotMs; `outlet` (an OutletStatus) and
   * `record` (a journal record) as they happen. The snapshots double as the heartbeat.
   */
  private async stream(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.streams.size >= MAX_STREAMS) throw new HttpError(503, 'too-many-streams', `at most ${MAX_STREAMS} live streams at once`)
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    })
    res.write('retry: 2000\n\n')
    const send = (event: string, data: unknown): void => {
      if (!res.writableEnded) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`)
    }
    this.streams.set(res, send)
    send('history', { sampleMs: this.history.sampleMs, points: this.history.recent() })
    const snap = (): void =>
      void this.snapshot().then(
        (s) => send('snapshot', s),
        (err: unknown) => this.opts.logger.warn({ err: (err as Error).message }, 'status snapshot failed'),
      )
    const timer = setInterval(snap, this.opts.snapshotMs)
    snap()
    const done = (): void => {
      clearInterval(timer)
      this.streams.delete(res)
    }
    req.on('close', done)
    res.on('close', done)
  }
}

function intParam(q: URLSearchParams, name: string, dflt: number, min: number, max: number): number {
  const raw = q.get(name)
  if (raw === null) return dflt
  const n = Number(raw)
  if (!/^[0-9]+$/.test(raw) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new HttpError(400, 'invalid-request', `query parameter ${name}: must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`)
  }
  return n
}

/**
 * A refused command's message as said of the request: the gateway's schema messages point into
 * the command ("/userId: ..."), and each field is where the request carried it (the body, or
 * the path for those named in `inPath`).
 */
function requestMessage(error: { code: string; message: string }, inPath: readonly string[] = []): string {
  if (error.code !== 'invalid-command') return error.message
  return error.message.replace(/(^|; )\/(\w*)/g, (_m, lead: string, field: string) => `${lead}${inPath.includes(field) ? 'path' : 'body'}/${field}`)
}
