/**
 * The gateway as one OCPP 1.6J charge point: one websocket to the central
 * system, one connector per outlet.
 *
 * Owns: BootNotification (Accepted, Pending and Rejected with their retry
 * interval; nothing transactional and no StatusNotification before Accepted),
 * Heartbeat at the interval the central system gives, StatusNotification for
 * connector 0 and every connector after each accepted boot (every connection
 * boots) and on every change, Authorize for starts the gateway began itself,
 * the transaction messages (derived from journal records into the durable
 * outbox, sent in order, one at a time, a Stop or MeterValues only once its
 * StartTransaction was answered; one refused at every attempt held, never
 * dropped, until the next accepted boot), the sampled and clock-aligned
 * MeterValues on the host's clock, the configuration keys in force (the config
 * file's values and the central system's kept changes), offline authorization
 * of starts at the gateway (local list, cache, keys), the security whitepaper's
 * side (the security profile in force and its rules, the certificate calls and
 * SecurityEventNotification; security.ts keeps the keys, certificates and events),
 * and the central system's calls, which become commands through the command
 * gateway (source `ocpp`).
 *
 * Must never: hold anything billable (the journal does; this only derives),
 * send a transaction message with a transactionId the central system did not
 * give, drop a transaction message, throw into the daemon (an OCPP failure never
 * stops charging or the MQTT uplink), apply a call the schema refused, or answer
 * Accepted to a change it has not yet kept on disk.
 */
import type { CommandResult, OcppConfig, OutletState, Reading, SiteConfig } from '../../core/types.js'
import { isOutpostError } from '../errors.js'
import type { Journal } from '../journal/index.js'
import type { Logger } from '../log.js'
import { type IdTagInfo, LocalAuth } from './auth.js'
import { checkCall } from './calls.js'
import { Outbox, type Queued } from './outbox.js'
import { circuitWiring } from '../engine/index.js'
import { changesIn, NOMINAL_V, type Profile, type ProfileContext, Profiles, type Purpose, refuseProfile, stackLimit } from './profiles.js'
import { CallError, OcppRpc } from './rpc.js'
import { type RootType, Security } from './security.js'
import { KEYS, keyDef, type Measurand, measurandsOf, securityProfileNeeds } from './settings.js'
import {
  CONNECTOR_STATUS,
  type ConnectorStatus,
  type Ended,
  type MeterValue,
  meterSample,
  powerLossPayload,
  STOP_REASON,
  type Started,
  type StopReason,
  sampledValues,
  startPayload,
  stopPayload,
  ID_TAG_MAX,
  wholeWh,
} from './tables.js'

/** What the charge point sees of one outlet (from the engine's state). */
export interface OutletView {
  id: string
  state: OutletState
  sessionId?: string
  currentA: number
  meterFault: string | null
  relayFault: string | null
  last: Reading | null
  /** When the open session started (ms): its Sample.Periodic values run from here. */
  sessionStartedAt?: number
  /** The open session's energy so far, as the engine bills it (a meter reset or a rejected step does not count). */
  sessionEnergyWh?: number
  /** The outlet's own limit in force in the engine (A per phase), if any. */
  limitA?: number
  /** What opened the open session, and for whom. */
  sessionTrigger?: 'activation' | 'auto-start'
  userId?: string
}

export interface ChargePointHost {
  config: SiteConfig
  version: string
  journal: Journal
  logger: Logger
  now(): number
  /** Every outlet, config order. */
  outlets(): OutletView[]
  /** A command through the command gateway (source `ocpp`). */
  command(cmd: Record<string, unknown>): Promise<CommandResult>
  /** Reset from the central system: a clean stop (systemd starts the daemon again). Hard does not wait for the outbox to drain. */
  reset(kind: 'Soft' | 'Hard'): void
  /** The clock is moved by its owner, who calls tick() after each move (tests): no timer of its own for what the clock decides. */
  manualClock?: boolean
}

/** How long a stop waits for the answer to the transaction message already on the wire. */
const IN_FLIGHT_MS = 2000
/** How often the daemon's clock is looked at for meter values that are due (each is stamped with its due instant). */
const TICK_MS = 250
/** At most this many sampled entries in one StopTransaction's transactionData (a long session at a short interval). */
const STOP_SAMPLES_MAX = 1000

/** A transaction message the central system refused every attempt: held (not dropped) until the next accepted boot. */
export interface HeldMessage {
  action: string
  sessionId: string
  connectorId: number
  messageId: string
  attempts: number
  error: string
  /** When it was held (ISO time). */
  since: string
}

export class ChargePoint {
  readonly rpc: OcppRpc
  private outbox!: Outbox
  private auth!: LocalAuth
  private security!: Security
  private sendingEvents = false
  private securityWork: Promise<unknown> = Promise.resolve()
  /** When the charge point last asked for a new certificate of its own accord (ms, host clock). */
  private renewAskedAt: number | undefined
  private profiles!: Profiles
  /** The site limit last given to the engine (null: none; kept on disk); undefined when none ever was. */
  private lastSite: number | null | undefined
  /** Per outlet: its own limit last given to the engine (null: none), first read from the engine's state. */
  private readonly lastOutlet = new Map<string, number | null>()
  /** A site limit the engine refused, not offered again until the wanted limit changes. */
  private refusedSite: number | null | undefined

  /**
   * The one root circuit the site limit (ChargePointMaxProfile) cuts, with its wiring's maxA
   * (undefined: none), and per switched outlet its chain's smallest maxA: from the config in
   * force, so that a maxA changed without a restart is the one clamped to.
   */
  private get wiring(): ReturnType<typeof circuitWiring> {
    const config = this.host.config
    if (this.wiringOf?.config !== config) this.wiringOf = { config, value: circuitWiring(config) }
    return this.wiringOf.value
  }
  private wiringOf: { config: SiteConfig; value: ReturnType<typeof circuitWiring> } | undefined
  private get root(): { id: string; maxA: number } | undefined {
    return this.wiring.root
  }
  private get chainMaxA(): Map<string, number> {
    return this.wiring.chainMaxA
  }
  /** The limits' runs, one at a time (the tick, a profile set or cleared). */
  private limits: Promise<void> = Promise.resolve()
  private limitsQueued = false
  private limitSeq = 0
  /** Open sessions already looked at by the offline authorization of auto-starts (seeded at start: decided before). */
  private readonly seenSessions = new Set<string>()
  private readonly ocpp: OcppConfig
  private readonly log: Logger
  private readonly byOutlet = new Map<string, number>()
  private readonly byConnector = new Map<number, string>()
  private accepted = false
  private stopped = false
  private heartbeatMs: number
  /** Every configuration key's value in force (KEYS' order): the config file's, or the central system's change. */
  private readonly values = new Map<string, string>()
  private heartbeatTimer: NodeJS.Timeout | undefined
  private bootTimer: NodeJS.Timeout | undefined
  private tickTimer: NodeJS.Timeout | undefined
  /** Per open session: the last Sample.Periodic index sent (k-th interval from its start). */
  private readonly periodicDone = new Map<string, number>()
  /** The last clock-aligned slot sent (floor(now / interval)); undefined until the interval is known. */
  private alignedDone: number | undefined
  private readonly lastSent = new Map<number, ConnectorStatus & { session: boolean }>()
  /** Outlet → idTag of a RemoteStartTransaction being applied: its session needs no Authorize. */
  private readonly remoteStarts = new Map<string, string>()
  /** Refusals so far of each queued message (by n) since the last accepted boot. */
  private readonly attempts = new Map<number, number>()
  /** Sessions the central system refused after their start that run on up to MaxEnergyOnInvalidId: the register (Wh) that stops them. */
  private readonly invalidCaps = new Map<string, { q: Queued; status: string | undefined; maxWh: number }>()
  /** Messages refused every attempt, by n: skipped (with the later messages of their session) until the next accepted boot. */
  private readonly held = new Map<number, HeldMessage>()
  /** One chain for everything that writes the outbox (ingest and samples), so their order is the journal's. */
  private work: Promise<unknown> = Promise.resolve()
  private ingestWanted = false
  private pumping = false
  /** The pump's current run: a stop waits for the message on the wire. */
  private pumpRun: Promise<void> = Promise.resolve()
  /** The StartTransaction on the wire, until its answer (its transactionId) is known to the outbox. */
  private startCall: Promise<void> | undefined
  private unsubscribe: (() => void) | undefined
  private drained: (() => void)[] = []

  constructor(private readonly host: ChargePointHost) {
    const ocpp = host.config.ocpp
    if (!ocpp) throw new Error('ChargePoint needs config.ocpp')
    this.ocpp = ocpp
    this.log = host.logger
    this.heartbeatMs = ocpp.heartbeatS * 1000
    host.config.outlets.forEach((o, i) => {
      const c = o.connectorId ?? i + 1
      this.byOutlet.set(o.id, c)
      this.byConnector.set(c, o.id)
    })
    for (const k of KEYS) this.values.set(k.key, k.initial(ocpp, this.byOutlet.size))
    this.rpc = new OcppRpc({
      url: ocpp.url,
      identity: ocpp.identity,
      password: ocpp.password,
      caFile: ocpp.caFile,
      callTimeoutMs: ocpp.callTimeoutS * 1000,
      reconnectMaxMs: ocpp.reconnectMaxMs,
      logger: this.log,
      onCall: (id, action, payload) => this.onCall(id, action, payload),
      onOpen: () => this.onOpen(),
      onClose: () => this.onClose(),
      credentials: () => ({ ...this.security?.connection(this.profile()), basicAuth: this.profile() < 3 }),
      onRefused: (kind, detail) => void this.security?.connectFailed(kind, detail).catch((err: Error) => this.eventNotWritten(err)),
    })
  }

  /** Opens the outbox and follows the journal: call before the boot step, so every session the boot closes is seen. */
  async attach(): Promise<void> {
    this.outbox = await Outbox.open(this.host.journal)
    this.auth = await LocalAuth.open(this.host.journal)
    this.security = await Security.open({
      journal: this.host.journal,
      storageDir: this.host.config.storage.dir,
      logger: this.log,
      now: this.host.now,
      caFile: this.ocpp.caFile,
      clientCertFile: this.ocpp.clientCertFile,
      clientKeyFile: this.ocpp.clientKeyFile,
    })
    this.profiles = await Profiles.open(this.host.journal)
    await this.applySaved()
    await this.securityEvent('StartupOfTheDevice', `Outpost ${this.host.version} started`)
    if (this.profile() === 3 && !this.security.hasClientCertificate)
      this.log.error('ocpp: security profile 3 without a client certificate: the central system will refuse the connection')
    this.unsubscribe = this.host.journal.onAppend(() => this.ingest())
    this.ingest()
  }

  /** Connects (after the boot read, so that an accepted BootNotification means ready). */
  start(): void {
    this.log.info({ url: this.rpc.endpoint, queued: this.outbox.size }, 'ocpp: connecting to the central system')
    // After the boot step: every session it closed is in the outbox by now, what is still open is a trace without a session.
    this.serial(() => this.closeOrphans())
    // The limits in force now, before the central system is there (they apply while it is away).
    void this.applyLimits()
    for (const o of this.host.outlets()) if (o.sessionId) this.seenSessions.add(o.sessionId)
    this.rpc.start()
    if (!this.host.manualClock) {
      this.tickTimer = setInterval(() => this.tick(), TICK_MS)
      this.tickTimer.unref()
    }
  }

  /** After the daemon's last step: a Soft stop waits (at most `drainMs`) for the outbox to drain while connected. */
  async stop(drainMs: number): Promise<void> {
    await this.work.catch(() => undefined)
    if (drainMs > 0 && this.accepted && this.rpc.connected && this.outbox.size > 0) {
      this.pump()
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, drainMs)
        this.drained.push(() => {
          clearTimeout(t)
          resolve()
        })
      })
    }
    // No new message from here; the one on the wire gets its answer (a Hard reset too): closing the
    // socket under it would leave it answered at the central system and unretired here, so sent twice.
    this.stopped = true
    await Promise.race([this.pumpRun, new Promise((r) => setTimeout(r, IN_FLIGHT_MS).unref())])
    await this.outbox?.settled()
    this.unsubscribe?.()
    this.clearTimers()
    if (this.tickTimer) clearInterval(this.tickTimer)
    await this.rpc.stop()
  }

  /**
   * Whether a start at the gateway (local API, MQTT, Node-RED) for `idTag` may go ahead, from the configuration keys:
   * with the central system there, yes (its Authorize follows the start). While it is away: an idTag the local
   * list (LocalAuthListEnabled), else the cache (AuthorizationCacheEnabled), holds as Accepted goes ahead when
   * LocalAuthorizeOffline, one they hold otherwise is refused; an idTag they do not know (or any, without
   * LocalAuthorizeOffline) goes ahead only with AllowOfflineTxForUnknownId. The table is in docs/ocpp.md.
   */
  admitStart(userId: string): { ok: true } | { ok: false; message: string } {
    if (this.accepted && this.rpc.connected) return { ok: true }
    const idTag = userId.slice(0, ID_TAG_MAX)
    const known = this.values.get('LocalAuthorizeOffline') === 'true' ? this.known(idTag) : undefined
    if (known?.status === 'Accepted') return { ok: true }
    if (known)
      return {
        ok: false,
        message: `the central system is unreachable and its ${known.source === 'list' ? 'local list' : 'authorization cache'} holds idTag ${idTag} as ${known.status}`,
      }
    if (this.values.get('AllowOfflineTxForUnknownId') === 'true') return { ok: true }
    return {
      ok: false,
      message: `the central system is unreachable and idTag ${idTag} is not on its local list nor in the authorization cache (AllowOfflineTxForUnknownId is false)`,
    }
  }

  private known(idTag: string) {
    return this.auth.lookup(idTag, this.host.now(), {
      list: this.values.get('LocalAuthListEnabled') === 'true',
      cache: this.values.get('AuthorizationCacheEnabled') === 'true',
    })
  }

  /** Keeps the central system's answer for an idTag in the cache (AuthorizationCacheEnabled). */
  private async remember(idTag: string, info: unknown): Promise<void> {
    if (this.values.get('AuthorizationCacheEnabled') !== 'true' || !info || typeof (info as IdTagInfo).status !== 'string') return
    await this.auth
      .remember(idTag, info as IdTagInfo)
      .catch((err: Error) => this.log.error({ err: err.message }, 'ocpp: the authorization cache could not be written'))
  }

  /** Acts on the clock as it reads now (the meter values that are due); with `manualClock`, its owner calls this after moving the clock. */
  tick(): void {
    this.sampleDue()
    this.enforceInvalidCaps()
    this.renewDue()
    // Nothing installed and nothing given to the engine: no limit can be due (this runs four times a second).
    const idle = this.profiles?.size === 0 && (this.lastSite ?? null) === null && [...this.lastOutlet.values()].every((v) => v === null)
    if (!this.limitsQueued && !idle) void this.applyLimits()
  }

  /** Resolves once everything queued so far is written and the outbox's current run is over. */
  async idle(): Promise<void> {
    await this.work
    await this.pumpRun
    await this.outbox.settled()
    await this.limits
  }

  /**
   * The link as the local API and the metrics show it: `held` the transaction messages refused every attempt (kept,
   * sent again after the next accepted boot), `configuration` every key's value in force and where it comes from.
   */
  state(): {
    connected: boolean
    accepted: boolean
    queued: number
    held: HeldMessage[]
    localList: { version: number; size: number }
    cachedIdTags: number
    security: ReturnType<Security['state']> | null
    chargingProfiles: number
    siteLimitA: number | null
    configuration: { key: string; value: string; readonly: boolean; source: 'config' | 'central-system' }[]
  } {
    return {
      connected: this.rpc.connected,
      accepted: this.accepted,
      queued: this.outbox?.size ?? 0,
      held: [...this.held.values()],
      localList: { version: this.auth?.listVersion ?? 0, size: this.auth?.listSize ?? 0 },
      cachedIdTags: this.auth?.cacheSize ?? 0,
      security: this.security?.state() ?? null,
      chargingProfiles: this.profiles?.size ?? 0,
      siteLimitA: this.lastSite ?? null,
      configuration: this.configuration().map((k) => ({ ...k, source: this.outbox?.settings.has(k.key) ? 'central-system' : 'config' })),
    }
  }

  /** An outlet's status changed (daemon `status` event). */
  onStatus(): void {
    this.sendStatuses(false)
    this.checkAutoStarts()
  }

  /**
   * An auto-start opens its session in the engine on its own (the car drew on an armed outlet): while the central
   * system is away, its user goes through offline authorization like a start at the gateway (admitStart), and a
   * refused one is stopped at once (StopTransaction DeAuthorized, kept on disk before the stop; the stop suspends
   * the outlet's auto-start, so the plugged car does not start it again), billed for what it drew.
   */
  private checkAutoStarts(): void {
    if (this.stopped || !this.outbox) return
    const open = new Set<string>()
    for (const o of this.host.outlets()) {
      if (!o.sessionId) continue
      open.add(o.sessionId)
      if (this.seenSessions.has(o.sessionId)) continue
      this.seenSessions.add(o.sessionId)
      if (o.sessionTrigger !== 'auto-start' || o.userId === undefined) continue
      const a = this.admitStart(o.userId)
      if (a.ok) continue
      const { id: outlet, sessionId } = o
      this.log.warn({ outlet, sessionId, why: a.message }, 'ocpp: offline authorization refused an auto-start; stopping it')
      this.serial(async () => {
        await this.stopWithReason(sessionId, outlet, 'DeAuthorized', `ocpp-offline-${sessionId}`.slice(0, 128))
      })
    }
    for (const s of this.seenSessions) if (!open.has(s)) this.seenSessions.delete(s)
  }

  // ---------------------------------------------------------------- connection

  private onOpen(): void {
    this.log.info({ url: this.rpc.endpoint, securityProfile: this.profile() }, 'ocpp: connected')
    this.security.connected()
    this.accepted = false
    this.lastSent.clear()
    void this.boot()
  }

  private onClose(): void {
    this.log.warn({ url: this.rpc.endpoint, queued: this.outbox.size }, 'ocpp: disconnected; transaction messages queue in the journal')
    this.accepted = false
    this.clearTimers()
  }

  private clearTimers(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer)
    if (this.bootTimer) clearTimeout(this.bootTimer)
    this.heartbeatTimer = undefined
    this.bootTimer = undefined
  }

  private async boot(): Promise<void> {
    if (this.stopped) return
    // A boot asked for again (TriggerMessage, a retry) replaces the timers of the one before.
    this.clearTimers()
    let res: Record<string, unknown>
    try {
      res = await this.rpc.call('BootNotification', {
        chargePointVendor: 'Outpost',
        chargePointModel: 'Outpost site gateway',
        chargePointSerialNumber: this.host.config.site.id.slice(0, 25),
        firmwareVersion: this.host.version.slice(0, 50),
      })
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'ocpp: BootNotification failed')
      if (isOutpostError(err, 'OCPP_CALL_ERROR')) this.bootTimer = setTimeout(() => void this.boot(), this.heartbeatMs)
      return
    }
    const interval = typeof res.interval === 'number' && res.interval > 0 ? res.interval * 1000 : undefined
    if (res.status === 'Accepted') {
      if (interval) this.heartbeatMs = interval
      this.accepted = true
      // Every accepted boot (a reconnect) gives the held messages their attempts again.
      if (this.held.size > 0) this.log.warn({ held: this.held.size }, 'ocpp: sending the held transaction messages again')
      this.held.clear()
      this.attempts.clear()
      this.log.info({ heartbeatS: this.heartbeatMs / 1000, queued: this.outbox.size }, 'ocpp: boot accepted')
      this.heartbeatTimer = setInterval(() => this.heartbeat(), this.heartbeatMs)
      this.sendStatuses(true)
      this.pump()
      this.sendEvents()
      return
    }
    // Pending or Rejected: ask again after the interval it gave (the configured heartbeat when it gave none).
    const retry = interval ?? this.ocpp.heartbeatS * 1000
    this.log.warn({ status: res.status, retryS: retry / 1000 }, 'ocpp: boot not accepted yet; asking again after the interval')
    this.bootTimer = setTimeout(() => void this.boot(), retry)
  }

  private heartbeat(): void {
    void this.rpc.call('Heartbeat', {}).catch((err: Error) => this.log.debug({ err: err.message }, 'ocpp: heartbeat failed'))
  }

  // ---------------------------------------------------------------- status

  private statusOf(o: OutletView): ConnectorStatus {
    return CONNECTOR_STATUS[o.state]({
      currentA: o.currentA,
      minChargeA: this.host.config.sessions.minChargeA,
      meterFault: o.meterFault,
      relayFault: o.relayFault,
    })
  }

  /** Sends what changed since the last StatusNotification on this connection (`all`: every connector, and connector 0). */
  private sendStatuses(all: boolean, only?: number): void {
    if (!this.accepted || this.stopped) return
    const ts = new Date(this.host.now()).toISOString()
    if (all && (only === undefined || only === 0)) this.sendStatus({ connectorId: 0, status: 'Available', errorCode: 'NoError', timestamp: ts })
    for (const o of this.host.outlets()) {
      const connectorId = this.byOutlet.get(o.id)
      if (connectorId === undefined || (only !== undefined && only !== connectorId)) continue
      const now = this.statusOf(o)
      const prev = this.lastSent.get(connectorId)
      const session = o.sessionId !== undefined
      if (!all && prev && prev.status === now.status && prev.errorCode === now.errorCode && prev.info === now.info) continue
      // A session just ended: Finishing, once, before what follows.
      if (prev?.session && !session && !all) this.sendStatus({ connectorId, status: 'Finishing', errorCode: 'NoError', timestamp: ts })
      this.lastSent.set(connectorId, { ...now, session })
      this.sendStatus({ connectorId, ...now, timestamp: ts })
    }
  }

  private sendStatus(payload: Record<string, unknown>): void {
    void this.rpc.call('StatusNotification', payload).catch((err: Error) => this.log.debug({ err: err.message }, 'ocpp: StatusNotification failed'))
  }

  // ---------------------------------------------------------------- transaction messages

  /** Schedules catchUp() and a pump (coalesced). */
  private ingest(): void {
    if (this.ingestWanted) return
    this.ingestWanted = true
    this.serial(async () => {
      this.ingestWanted = false
      await this.catchUp()
      this.pump()
    })
  }

  /** Turns journal records past the cursor into queued transaction messages (in the serial chain). */
  private async catchUp(): Promise<void> {
    const journal = this.host.journal
    while (this.outbox.cursor < journal.head()) {
      let from = this.outbox.cursor + 1
      if (from < journal.oldest()) from = journal.oldest()
      const records = await journal.read(from, 500)
      if (records.length === 0) break
      const msgs: Omit<Queued, 'n' | 'msgId'>[] = []
      const starting = new Set<string>()
      const settled: string[] = []
      for (const r of records) {
        if (r.type === 'session.started') {
          const connectorId = this.byOutlet.get(r.outlet)
          if (connectorId === undefined) continue
          const remote = this.remoteStarts.get(r.outlet) === r.userId
          if (remote) this.remoteStarts.delete(r.outlet)
          starting.add(r.sessionId)
          msgs.push({
            action: 'StartTransaction',
            sessionId: r.sessionId,
            connectorId,
            payload: startPayload(r as Started, connectorId),
            // A start decided while the central system was away (offline authorization) goes as a StartTransaction
            // alone: its answer is the central system's word on the idTag (StopTransactionOnInvalidId).
            authorize: !remote && this.accepted && this.rpc.connected,
          })
        } else if (r.type === 'session.ended') {
          this.periodicDone.delete(r.sessionId)
          settled.push(r.sessionId)
          if (!starting.has(r.sessionId) && !this.outbox.hasStart(r.sessionId)) continue
          // The central system's own stop (kept on disk before it acted) wins over the table's reason.
          const reason = (this.outbox.overrides.get(r.sessionId) as StopReason | undefined) ?? STOP_REASON[r.reason]
          msgs.push({
            action: 'StopTransaction',
            sessionId: r.sessionId,
            connectorId: this.byOutlet.get(r.outlet) ?? 0,
            payload: stopPayload(r as Ended, reason, await this.stopSamples(r as Ended)),
          })
        }
      }
      await this.outbox.enqueue(msgs, records[records.length - 1]!.seq, settled)
    }
  }

  /**
   * A transaction the outbox started and never stopped, whose session no outlet holds once the
   * boot step has closed what the engine state showed open (a salvage lost the session's state
   * and its records, the outbox survived): closed as a power loss, StopTransaction reason
   * PowerLoss at the last meter value known (the session's last journaled reading, else its
   * meterStart), never left open at the central system. Logged at error level.
   */
  private async closeOrphans(): Promise<void> {
    await this.catchUp()
    const open = new Set(this.host.outlets().flatMap((o) => (o.sessionId ? [o.sessionId] : [])))
    const msgs: Omit<Queued, 'n' | 'msgId'>[] = []
    for (const t of this.outbox.openTransactions()) {
      if (open.has(t.sessionId)) continue
      const last = (await this.host.journal.readings(t.sessionId).catch(() => [])).at(-1)
      const meterWh = last ? last.reading.energyWh : t.meterStart
      if (meterWh === undefined) {
        this.log.error({ sessionId: t.sessionId }, 'ocpp: a transaction without a session and without a known meter value stays open')
        continue
      }
      // An outbox entry written before the connector was kept with the transactionId has none: the outlet of the
      // session's last reading is the connector it ran on; without a reading it is unknown, and 0 (the charge
      // point) stands for it in the outbox (StopTransaction itself carries no connectorId).
      const connectorId = t.connectorId ?? (last ? this.byOutlet.get(last.outlet) : undefined)
      if (t.connectorId === undefined)
        this.log.warn(
          { sessionId: t.sessionId, connectorId: connectorId ?? null },
          connectorId === undefined
            ? 'ocpp: an orphaned transaction from an older outbox names no connector and has no reading; closed on connector 0'
            : "ocpp: an orphaned transaction from an older outbox names no connector; its last reading's outlet is taken",
        )
      const at = new Date(last ? last.reading.ts : this.host.now()).toISOString()
      this.log.error(
        { sessionId: t.sessionId, connectorId: connectorId ?? 0, meterStop: wholeWh(meterWh), at },
        'ocpp: a transaction whose session no surviving state holds is closed PowerLoss at its last known meter value',
      )
      msgs.push({ action: 'StopTransaction', sessionId: t.sessionId, connectorId: connectorId ?? 0, payload: powerLossPayload(at, meterWh) })
    }
    if (msgs.length > 0) await this.outbox.enqueue(msgs)
    // A stop reason kept for a session that ended before its records were turned into a StopTransaction is used by
    // now (catchUp above); one whose session is in no state any more has nothing left to apply to.
    for (const s of [...this.outbox.overrides.keys()]) if (!open.has(s)) await this.outbox.saveOverride(s, null)
    this.pump()
  }

  private serial(task: () => Promise<void>): void {
    const run = this.work.then(task)
    this.work = run.catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'ocpp: the transaction outbox could not be written'))
  }

  /** Sends the outbox, oldest first, while the boot is accepted and the link up. */
  private pump(): void {
    if (this.pumping || this.stopped) return
    this.pumping = true
    this.pumpRun = this.pumpNow()
      .catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'ocpp: sending the outbox failed'))
      .finally(() => {
        this.pumping = false
        if (this.outbox.size === 0) for (const d of this.drained.splice(0)) d()
      })
  }

  /** The first queued message not held, nor behind a held message of its own session (its transaction's order holds). */
  private nextToSend(): Queued | undefined {
    if (this.held.size === 0) return this.outbox.first()
    const blocked = new Set([...this.held.values()].map((h) => h.sessionId))
    return this.outbox.messages().find((m) => !blocked.has(m.sessionId))
  }

  private async pumpNow(): Promise<void> {
    for (;;) {
      if (!this.accepted || !this.rpc.connected || this.stopped) return
      const q = this.nextToSend()
      if (!q) return
      const payload = { ...q.payload }
      if (q.action !== 'StartTransaction') {
        const tid = this.outbox.transactionId(q.sessionId)
        if (tid === undefined) {
          // No StartTransaction answer was ever kept for it (a salvage lost it): there is no transaction to speak of.
          this.log.error({ action: q.action, sessionId: q.sessionId }, 'ocpp: a transaction message without a transaction was dropped')
          await this.outbox.answered(q)
          continue
        }
        payload.transactionId = tid
      }
      // A RemoteStopTransaction for this transaction may reach us before (or in the same read as) the
      // answer that gives its id: it waits for that answer instead of calling the id unknown.
      let answer: (() => void) | undefined
      const startCall = q.action === 'StartTransaction' ? new Promise<void>((r) => (answer = r)) : undefined
      if (startCall) this.startCall = startCall
      const settled = (): void => {
        answer?.()
        if (this.startCall === startCall) this.startCall = undefined
      }
      try {
        if (q.action === 'StartTransaction' && q.authorize && this.isOpen(q.sessionId)) await this.authorize(q)
        const res = await this.rpc.call(q.action, payload, q.msgId)
        if (q.action === 'StartTransaction') {
          const tid = res.transactionId as number
          const written = this.outbox.answered(q, tid)
          settled()
          await written
          const status = (res.idTagInfo as { status?: string } | undefined)?.status
          await this.remember(q.payload.idTag as string, res.idTagInfo)
          this.log.info({ sessionId: q.sessionId, transactionId: tid, idTagStatus: status }, 'ocpp: transaction started')
          if (status !== 'Accepted') await this.invalidAfterStart(q, status)
        } else if (q.action === 'StopTransaction') {
          await this.outbox.answered(q)
          this.log.info({ sessionId: q.sessionId, transactionId: payload.transactionId }, 'ocpp: transaction stopped')
        } else {
          // A MeterValues answer goes to disk with the next ones (group commit) while the queue moves on:
          // a crash before that write sends it again, with the same message id. Starts and Stops wait for theirs.
          this.outbox.answered(q).catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'ocpp: an answer could not be written'))
        }
        this.attempts.delete(q.n)
      } catch (err) {
        settled()
        if (!isOutpostError(err, 'OCPP_CALL_ERROR')) return // closed or timed out: the next accepted boot resends, same message id
        const n = (this.attempts.get(q.n) ?? 0) + 1
        this.attempts.set(q.n, n)
        this.log.error(
          { action: q.action, sessionId: q.sessionId, attempt: n, err: (err as Error).message },
          'ocpp: the central system refused a transaction message',
        )
        if (n >= this.int('TransactionMessageAttempts')) {
          // Never dropped: held (with its session's later messages) until the next accepted boot, shown in the status and metrics.
          this.attempts.delete(q.n)
          this.held.set(q.n, {
            action: q.action,
            sessionId: q.sessionId,
            connectorId: q.connectorId,
            messageId: q.msgId,
            attempts: n,
            error: (err as Error).message.slice(0, 200),
            since: new Date(this.host.now()).toISOString(),
          })
          this.log.error(
            { action: q.action, sessionId: q.sessionId, attempts: n },
            'ocpp: a transaction message was refused at every attempt; held until the next reconnect',
          )
        } else await new Promise((r) => setTimeout(r, this.int('TransactionMessageRetryInterval') * 1000 * n))
      }
    }
  }

  private isOpen(sessionId: string): boolean {
    return this.host.outlets().some((o) => o.sessionId === sessionId)
  }

  private async authorize(q: Queued): Promise<void> {
    const idTag = q.payload.idTag as string
    // LocalPreAuthorize: an idTag the local list or the cache holds as Accepted needs no round trip.
    if (this.values.get('LocalPreAuthorize') === 'true' && this.known(idTag)?.status === 'Accepted') return
    const res = await this.rpc.call('Authorize', { idTag })
    await this.remember(idTag, res.idTagInfo)
    const status = (res.idTagInfo as { status?: string } | undefined)?.status
    if (status !== 'Accepted') await this.deauthorize(q, status)
  }

  /**
   * StartTransaction.conf refused the idTag of a session that started (typically while the central system was away):
   * stopped at once with StopTransactionOnInvalidId, else left running up to MaxEnergyOnInvalidId Wh from its start
   * (watched at every tick against the outlet's meter; 0: no cap).
   */
  private async invalidAfterStart(q: Queued, status: string | undefined): Promise<void> {
    if (this.values.get('StopTransactionOnInvalidId') === 'true') return this.deauthorize(q, status)
    if (!this.isOpen(q.sessionId)) return
    const maxWh = this.int('MaxEnergyOnInvalidId')
    this.log.warn(
      { sessionId: q.sessionId, status, maxEnergyWh: maxWh },
      'ocpp: the central system refused the idTag of a running session; it runs on (StopTransactionOnInvalidId false)',
    )
    if (maxWh > 0) this.invalidCaps.set(q.sessionId, { q, status, maxWh })
  }

  /** Stops each session refused after its start once its meter reached MaxEnergyOnInvalidId since the start. */
  private enforceInvalidCaps(): void {
    if (this.invalidCaps.size === 0) return
    for (const [sessionId, cap] of this.invalidCaps) {
      const o = this.host.outlets().find((x) => x.sessionId === sessionId)
      if (!o) {
        this.invalidCaps.delete(sessionId)
        continue
      }
      // The session's energy as billed, not the register: a meter reset or a rejected step neither hides nor fakes the cap.
      if ((o.sessionEnergyWh ?? 0) < cap.maxWh) continue
      this.invalidCaps.delete(sessionId)
      this.serial(() => this.deauthorize(cap.q, cap.status))
    }
  }

  /** The central system refused the idTag of an open session: it ends (DeAuthorized, kept on disk before the stop). */
  private async deauthorize(q: Queued, status: string | undefined): Promise<void> {
    const outlet = this.byConnector.get(q.connectorId)
    if (!outlet || !this.isOpen(q.sessionId) || this.outbox.overrides.has(q.sessionId)) return
    this.log.warn({ sessionId: q.sessionId, outlet, status }, 'ocpp: the central system refused the idTag; stopping the session')
    await this.outbox.saveOverride(q.sessionId, 'DeAuthorized')
    // The stop is not awaited (this runs inside the outbox's own work, which the stop's StopTransaction then joins);
    // a refused stop takes the reason back, as stopWithReason does.
    void this.host
      .command({ id: `ocpp-deauth-${q.sessionId}`, action: 'stop', outlet, by: 'manager' })
      .then((r) => (r.ok ? undefined : this.outbox.saveOverride(q.sessionId, null)))
      .catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'ocpp: a DeAuthorized stop failed'))
  }

  /**
   * Ends an open session with the stop reason the central system will read: the reason on disk
   * before the stop (a crash between them still says it), taken back when the engine refused the stop.
   */
  private async stopWithReason(sessionId: string, outlet: string, reason: 'DeAuthorized' | 'Remote', id: string): Promise<CommandResult> {
    await this.outbox.saveOverride(sessionId, reason)
    const r = await this.host.command({ id, action: 'stop', outlet, by: 'manager' })
    if (!r.ok) await this.outbox.saveOverride(sessionId, null)
    return r
  }

  // ---------------------------------------------------------------- meter values

  private int(key: string): number {
    return Number(this.values.get(key))
  }

  private measurands(key: string): Measurand[] {
    return [...new Set(measurandsOf(this.values.get(key) ?? ''))]
  }

  /**
   * The meter values due at the clock's time now: each open transaction's Sample.Periodic value at every
   * MeterValueSampleInterval from its start, and every connector's (0 included) Sample.Clock value at every
   * multiple of ClockAlignedDataInterval since midnight UTC. Each is stamped with its due instant and carries the
   * outlet's last stepped reading; a clock that jumped over several instants sends the latest one.
   */
  private sampleDue(): void {
    if (this.stopped || !this.outbox) return
    const periodS = this.int('MeterValueSampleInterval')
    const alignedS = this.int('ClockAlignedDataInterval')
    // Nothing to sample: the outlets' views are not even built (this runs four times a second).
    if (periodS <= 0 && alignedS <= 0) {
      this.alignedDone = undefined
      this.periodicDone.clear()
      return
    }
    const now = this.host.now()
    const msgs: Omit<Queued, 'n' | 'msgId'>[] = []
    const periodic = this.measurands('MeterValuesSampledData')
    const open = new Set<string>()
    for (const o of this.host.outlets()) {
      const connectorId = this.byOutlet.get(o.id)
      if (connectorId === undefined || !o.sessionId || o.sessionStartedAt === undefined) continue
      open.add(o.sessionId)
      if (periodS <= 0 || periodic.length === 0 || !o.last || !this.outbox.hasStart(o.sessionId)) continue
      const k = Math.floor((now - o.sessionStartedAt) / (periodS * 1000))
      if (k < 1 || k <= (this.periodicDone.get(o.sessionId) ?? 0)) continue
      this.periodicDone.set(o.sessionId, k)
      const at = new Date(o.sessionStartedAt + k * periodS * 1000).toISOString()
      msgs.push({
        action: 'MeterValues',
        sessionId: o.sessionId,
        connectorId,
        payload: meterSample(connectorId, at, o.last, periodic, 'Sample.Periodic'),
      })
    }
    for (const s of this.periodicDone.keys()) if (!open.has(s)) this.periodicDone.delete(s)
    if (alignedS > 0) {
      const slot = Math.floor(now / (alignedS * 1000))
      // The first instant after the interval is set (or the charge point starts) is the next one on the clock.
      if (this.alignedDone === undefined) this.alignedDone = slot
      else if (slot > this.alignedDone) {
        this.alignedDone = slot
        msgs.push(...this.aligned(new Date(slot * alignedS * 1000).toISOString()))
      }
    } else this.alignedDone = undefined
    if (msgs.length > 0)
      this.serial(async () => {
        await this.outbox.enqueue(msgs)
        this.pump()
      })
  }

  /**
   * The clock-aligned values of every connector at `at`: an open transaction's go through the outbox (they belong
   * to it); connector 0 (the sum of the outlets: energy, power and current added up, voltage their mean) and the
   * connectors without a transaction are sent at once when the central system is there, not queued.
   */
  private aligned(at: string): Omit<Queued, 'n' | 'msgId'>[] {
    const measurands = this.measurands('MeterValuesAlignedData')
    if (measurands.length === 0) return []
    const queued: Omit<Queued, 'n' | 'msgId'>[] = []
    const read = this.host.outlets().filter((o) => o.last && this.byOutlet.has(o.id))
    for (const o of read) {
      const connectorId = this.byOutlet.get(o.id)!
      const payload = meterSample(connectorId, at, o.last!, measurands, 'Sample.Clock')
      if (o.sessionId && this.outbox.hasStart(o.sessionId)) queued.push({ action: 'MeterValues', sessionId: o.sessionId, connectorId, payload })
      else this.sendNow('MeterValues', payload)
    }
    if (read.length > 0) {
      const sum = (f: (r: Reading) => number) => read.reduce((a, o) => a + f(o.last!), 0)
      const site = {
        energyWh: sum((r) => r.energyWh),
        powerW: sum((r) => r.powerW),
        currentA: sum((r) => r.currentA),
        voltageV: sum((r) => r.voltageV) / read.length,
      }
      this.sendNow('MeterValues', meterSample(0, at, site, measurands, 'Sample.Clock'))
    }
    return queued
  }

  /** A message that is not a transaction's: sent now if the boot is accepted, else not at all. */
  private sendNow(action: string, payload: Record<string, unknown>): void {
    if (!this.accepted || this.stopped) return
    void this.rpc.call(action, payload).catch((err: Error) => this.log.debug({ action, err: err.message }, 'ocpp: a message failed'))
  }

  /**
   * transactionData's samples of an ended session, from its journaled readings: StopTxnSampledData at every
   * MeterValueSampleInterval from its start (Sample.Periodic) and StopTxnAlignedData at every ClockAlignedDataInterval
   * on the clock (Sample.Clock), each the last reading at or before its instant, in time order, at most STOP_SAMPLES_MAX.
   */
  private async stopSamples(r: Ended): Promise<MeterValue[]> {
    const sampled = this.measurands('StopTxnSampledData')
    const aligned = this.measurands('StopTxnAlignedData')
    const periodS = this.int('MeterValueSampleInterval')
    const alignedS = this.int('ClockAlignedDataInterval')
    if ((sampled.length === 0 || periodS <= 0) && (aligned.length === 0 || alignedS <= 0)) return []
    const readings = (await this.host.journal.readings(r.sessionId).catch(() => [])).map((e) => e.reading).sort((a, b) => a.ts - b.ts)
    if (readings.length === 0) return []
    const from = Date.parse(r.startedAt)
    const to = Date.parse(r.endedAt)
    const instants: { at: number; measurands: Measurand[]; context: string }[] = []
    if (sampled.length > 0 && periodS > 0)
      for (let at = from + periodS * 1000; at < to && instants.length < STOP_SAMPLES_MAX; at += periodS * 1000)
        instants.push({ at, measurands: sampled, context: 'Sample.Periodic' })
    if (aligned.length > 0 && alignedS > 0)
      for (
        let at = (Math.floor(from / (alignedS * 1000)) + 1) * alignedS * 1000;
        at < to && instants.length < 2 * STOP_SAMPLES_MAX;
        at += alignedS * 1000
      )
        instants.push({ at, measurands: aligned, context: 'Sample.Clock' })
    instants.sort((a, b) => a.at - b.at)
    const out: MeterValue[] = []
    let i = 0
    for (const x of instants.slice(0, STOP_SAMPLES_MAX)) {
      while (i + 1 < readings.length && readings[i + 1]!.ts <= x.at) i++
      if (readings[i]!.ts > x.at) continue
      out.push({ timestamp: new Date(x.at).toISOString(), sampledValue: sampledValues(readings[i]!, x.measurands, x.context) })
    }
    return out
  }

  /** TriggerMessage MeterValues: every open transaction's values now (context Trigger), queued like the others. */
  private sampleNow(): void {
    const measurands = this.measurands('MeterValuesSampledData')
    const at = new Date(this.host.now()).toISOString()
    this.serial(async () => {
      const msgs: Omit<Queued, 'n' | 'msgId'>[] = []
      for (const o of this.host.outlets()) {
        const connectorId = this.byOutlet.get(o.id)
        if (connectorId === undefined || !o.sessionId || !o.last || !this.outbox.hasStart(o.sessionId)) continue
        msgs.push({
          action: 'MeterValues',
          sessionId: o.sessionId,
          connectorId,
          payload: meterSample(connectorId, at, o.last, measurands, 'Trigger'),
        })
      }
      if (msgs.length > 0) await this.outbox.enqueue(msgs)
      this.pump()
    })
  }

  // ---------------------------------------------------------------- calls from the central system

  private async onCall(msgId: string, action: string, raw: unknown): Promise<Record<string, unknown>> {
    const p = checkCall(action, raw)
    if (SECURITY_CALLS.has(action)) {
      // One at a time: two certificate calls never check the same store state and both write.
      const run = this.securityWork.then(() => this.securityCall(action, p))
      this.securityWork = run.catch(() => undefined)
      return run
    }
    const id = `ocpp-${msgId.replace(/[^A-Za-z0-9_.:-]/g, '_')}`.slice(0, 128)
    switch (action) {
      case 'RemoteStartTransaction': {
        const outlet = p.connectorId !== undefined ? this.byConnector.get(p.connectorId as number) : this.freeOutlet()
        if (!outlet) return { status: 'Rejected' }
        const profile = p.chargingProfile as Profile | undefined
        const connectorId = this.byOutlet.get(outlet)!
        if (profile) {
          // The transaction it is for starts with it: checked as a TxProfile on a connector with a transaction coming.
          const why =
            profile.chargingProfilePurpose !== 'TxProfile'
              ? 'the chargingProfile of a RemoteStartTransaction is a TxProfile'
              : profile.transactionId !== undefined
                ? 'the chargingProfile of a RemoteStartTransaction names no transaction'
                : refuseProfile(connectorId, profile, { ...this.profileContext(), transaction: () => ({ sessionId: '' }) })
          if (why !== undefined) {
            this.log.info({ connectorId, chargingProfileId: profile.chargingProfileId, why }, 'ocpp: remote start refused: its chargingProfile')
            return { status: 'Rejected' }
          }
          // In force before the start, so a session it pauses opens waiting instead of switching on and off.
          const now = this.host.now()
          const first = stackLimit([{ connectorId, profile }], now, now, now)
          await this.limitOutlet(outlet, first ?? null, `${id}-limit`)
        }
        this.remoteStarts.set(outlet, p.idTag as string)
        const r = await this.host.command({ id, action: 'start', outlet, userId: p.idTag })
        if (!r.ok) {
          this.remoteStarts.delete(outlet)
          this.log.info({ outlet, idTag: p.idTag, code: r.error.code }, 'ocpp: remote start refused')
        }
        const sessionId = this.host.outlets().find((o) => o.id === outlet)?.sessionId
        if (r.ok && profile && sessionId) await this.profiles.install({ connectorId, profile, sessionId })
        if (profile) await this.applyLimits()
        return { status: r.ok ? 'Accepted' : 'Rejected' }
      }
      case 'RemoteStopTransaction': {
        let sessionId = this.outbox.sessionOf(p.transactionId as number)
        if (!sessionId && this.startCall) {
          await this.startCall
          sessionId = this.outbox.sessionOf(p.transactionId as number)
        }
        const o = sessionId ? this.host.outlets().find((x) => x.sessionId === sessionId) : undefined
        if (!o || !sessionId) return { status: 'Rejected' }
        const r = await this.stopWithReason(sessionId, o.id, 'Remote', id)
        return { status: r.ok ? 'Accepted' : 'Rejected' }
      }
      case 'ChangeAvailability': {
        const c = p.connectorId as number
        const outlets = c === 0 ? [...this.byOutlet.keys()] : this.byConnector.has(c) ? [this.byConnector.get(c)!] : []
        if (outlets.length === 0) return { status: 'Rejected' }
        const available = p.type === 'Operative'
        let ok = true
        for (const outlet of outlets) {
          const open = this.host.outlets().find((o) => o.id === outlet)?.sessionId
          if (open && !available) await this.outbox.saveOverride(open, 'Remote')
          const r = await this.host.command({
            id: outlets.length > 1 ? `${id}-${outlet}`.slice(0, 128) : id,
            action: 'set-availability',
            outlet,
            available,
          })
          if (!r.ok) {
            ok = false
            if (open && !available) await this.outbox.saveOverride(open, null)
          }
        }
        return { status: ok ? 'Accepted' : 'Rejected' }
      }
      case 'Reset': {
        const kind = p.type as 'Soft' | 'Hard'
        this.log.warn({ type: kind }, 'ocpp: reset requested by the central system')
        await this.securityEvent('ResetOrReboot', `Reset.req ${kind} from the central system`)
        setImmediate(() => this.host.reset(kind))
        return { status: 'Accepted' }
      }
      case 'TriggerMessage':
        return this.trigger(p.requestedMessage as string, p.connectorId as number | undefined)
      case 'GetConfiguration': {
        const all = this.configuration()
        const keys = p.key as string[] | undefined
        if (!keys || keys.length === 0) return { configurationKey: all }
        return {
          configurationKey: all.filter((k) => keys.includes(k.key)),
          unknownKey: keys.filter((k) => !all.some((c) => c.key === k)),
        }
      }
      case 'ChangeConfiguration':
        return { status: await this.changeConfiguration(p.key as string, p.value as string) }
      case 'SendLocalList':
        return { status: await this.auth.update(p as Parameters<LocalAuth['update']>[0]) }
      case 'GetLocalListVersion':
        return { listVersion: this.auth.listVersion }
      case 'ClearCache':
        await this.auth.clearCache()
        return { status: 'Accepted' }
      case 'SetChargingProfile':
        return { status: await this.setProfile(p.connectorId as number, p.csChargingProfiles as Profile) }
      case 'ClearChargingProfile':
        return { status: await this.clearProfiles(p as { id?: number; connectorId?: number; chargingProfilePurpose?: Purpose; stackLevel?: number }) }
      case 'GetCompositeSchedule':
        return this.compositeSchedule(p.connectorId as number, p.duration as number, (p.chargingRateUnit as 'A' | 'W' | undefined) ?? 'A')
      case 'UnlockConnector':
        // A shelf outlet has no lockable connector.
        return { status: 'NotSupported' }
      default:
        throw new CallError('NotImplemented', `unknown action ${action}`)
    }
  }

  // ---------------------------------------------------------------- smart charging

  private profileContext(): ProfileContext {
    return {
      connector: (c) => c === 0 || this.byConnector.has(c),
      switchable: (c) => this.chainMaxA.has(this.byConnector.get(c) ?? ''),
      transaction: (c) => {
        const o = this.host.outlets().find((x) => x.id === this.byConnector.get(c))
        if (!o?.sessionId) return undefined
        const transactionId = this.outbox.transactionId(o.sessionId)
        return { sessionId: o.sessionId, ...(transactionId !== undefined ? { transactionId } : {}) }
      },
      siteLimit: this.root !== undefined,
      now: this.host.now(),
    }
  }

  /** SetChargingProfile: a profile its rules accept is kept on disk and in force before it is answered Accepted. */
  private async setProfile(connectorId: number, profile: Profile): Promise<'Accepted' | 'Rejected'> {
    // Its transactionId may be the one the central system just gave, in an answer not yet on disk.
    if (profile.chargingProfilePurpose === 'TxProfile' && profile.transactionId !== undefined && this.startCall) await this.startCall
    const ctx = this.profileContext()
    const why = refuseProfile(connectorId, profile, ctx)
    if (why !== undefined) {
      this.log.info({ connectorId, chargingProfileId: profile.chargingProfileId, why }, 'ocpp: SetChargingProfile rejected')
      return 'Rejected'
    }
    const sessionId = profile.chargingProfilePurpose === 'TxProfile' ? ctx.transaction(connectorId)!.sessionId : undefined
    const status = await this.profiles.install({ connectorId, profile, ...(sessionId !== undefined ? { sessionId } : {}) })
    if (status === 'Rejected') {
      this.log.info(
        { connectorId, chargingProfileId: profile.chargingProfileId, why: 'MaxChargingProfilesInstalled reached' },
        'ocpp: SetChargingProfile rejected',
      )
      return status
    }
    this.log.info(
      { connectorId, chargingProfileId: profile.chargingProfileId, purpose: profile.chargingProfilePurpose, stackLevel: profile.stackLevel },
      'ocpp: charging profile installed',
    )
    await this.applyLimits()
    return 'Accepted'
  }

  /** ClearChargingProfile: by id (then nothing else counts), else every profile matching each criterion given. */
  private async clearProfiles(p: {
    id?: number
    connectorId?: number
    chargingProfilePurpose?: Purpose
    stackLevel?: number
  }): Promise<'Accepted' | 'Unknown'> {
    const n = await this.profiles.remove((i) =>
      p.id !== undefined
        ? i.profile.chargingProfileId === p.id
        : (p.connectorId === undefined || i.connectorId === p.connectorId) &&
          (p.chargingProfilePurpose === undefined || i.profile.chargingProfilePurpose === p.chargingProfilePurpose) &&
          (p.stackLevel === undefined || i.profile.stackLevel === p.stackLevel),
    )
    if (n === 0) return 'Unknown'
    this.log.info({ ...p, cleared: n }, 'ocpp: charging profiles cleared')
    await this.applyLimits()
    return 'Accepted'
  }

  /** The site limit at `t` from the ChargePointMaxProfiles (A per phase, at most the root's wiring), or null: none. */
  private siteLimitAt(t: number): number | null {
    if (!this.root) return null
    const l = stackLimit(
      this.profiles.all().filter((i) => i.profile.chargingProfilePurpose === 'ChargePointMaxProfile'),
      t,
      undefined,
      t,
    )
    return l === undefined ? null : Math.min(l, this.root.maxA)
  }

  /**
   * An outlet's own limit at `t` (A per phase), or null: its transaction's TxProfiles, else the TxDefaultProfiles
   * of its connector and of connector 0 (at the same stack level the connector's own wins). A Relative schedule
   * runs from its transaction's start; without a transaction it stands at its first period.
   */
  private outletLimitAt(o: OutletView, t: number): number | null {
    const c = this.byOutlet.get(o.id)
    const all = this.profiles.all()
    const tx = o.sessionId
      ? stackLimit(
          all.filter((i) => i.profile.chargingProfilePurpose === 'TxProfile' && i.connectorId === c && i.sessionId === o.sessionId),
          t,
          o.sessionStartedAt,
          t,
        )
      : undefined
    if (tx !== undefined) return tx
    const dflt = stackLimit(
      all.filter((i) => i.profile.chargingProfilePurpose === 'TxDefaultProfile' && (i.connectorId === c || i.connectorId === 0)),
      t,
      o.sessionStartedAt,
      t,
      (a, b) => (b.connectorId !== 0 ? 1 : 0) - (a.connectorId !== 0 ? 1 : 0),
    )
    return dflt ?? null
  }

  /**
   * The limits in force on the daemon's clock, given to the engine where they changed: the site limit as the root
   * circuit's `set-circuit-limit`, each outlet's own as `set-outlet-limit` (below the minimum its session waits). A
   * TxProfile whose transaction is over is removed first. Runs one at a time; a run asked for during one follows it.
   */
  private applyLimits(): Promise<void> {
    if (this.limitsQueued) return this.limits
    this.limitsQueued = true
    this.limits = this.limits.then(async () => {
      this.limitsQueued = false
      if (this.stopped || !this.profiles) return
      try {
        await this.applyLimitsNow()
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'ocpp: a charging limit could not be applied')
      }
    })
    return this.limits
  }

  private async applyLimitsNow(): Promise<void> {
    const views = this.host.outlets()
    const open = new Map(views.filter((o) => o.sessionId).map((o) => [this.byOutlet.get(o.id), o.sessionId]))
    await this.profiles.remove((i) => i.profile.chargingProfilePurpose === 'TxProfile' && open.get(i.connectorId) !== i.sessionId)
    const now = this.host.now()
    if (this.root) {
      this.lastSite ??= this.profiles.siteApplied
      const want = this.siteLimitAt(now)
      // No site limit ever given by this process and none now: the root's limit is left to whoever set it.
      // A refused limit is not sent again every tick (each try would take a command id of the engine's memory): only once the wanted limit changes.
      const changed = want !== (this.lastSite ?? null) || (this.lastSite === undefined && want !== null)
      if (changed && want !== this.refusedSite) {
        const r = await this.host.command({ id: this.limitId(), action: 'set-circuit-limit', circuit: this.root.id, maxA: want })
        if (r.ok) {
          this.lastSite = want
          this.refusedSite = undefined
          await this.profiles.saveSite(want)
          this.log.info({ circuit: this.root.id, maxA: want }, 'ocpp: site limit in force')
        } else {
          this.refusedSite = want
          this.log.error({ circuit: this.root.id, maxA: want, code: r.error.code }, 'ocpp: the site limit was refused')
        }
      }
    }
    for (const o of views) {
      if (!this.chainMaxA.has(o.id)) continue
      if (!this.lastOutlet.has(o.id)) this.lastOutlet.set(o.id, o.limitA ?? null)
      const want = this.outletLimitAt(o, now)
      if (want !== this.lastOutlet.get(o.id)) await this.limitOutlet(o.id, want, this.limitId())
    }
  }

  private async limitOutlet(outlet: string, maxA: number | null, id: string): Promise<void> {
    const r = await this.host.command({ id, action: 'set-outlet-limit', outlet, maxA })
    if (r.ok) {
      this.lastOutlet.set(outlet, maxA)
      this.log.info({ outlet, maxA }, 'ocpp: outlet limit in force')
    } else this.log.error({ outlet, maxA, code: r.error.code }, 'ocpp: an outlet limit was refused')
  }

  /** A command id never used before, across restarts too (the engine applies an id at most once). */
  private limitId(): string {
    return `ocpp-limit-${this.host.now().toString(36)}-${(this.limitSeq++).toString(36)}`
  }

  /**
   * GetCompositeSchedule from what the engine will do. Connector 0: the site limit in force (the root circuit's
   * wiring without a ChargePointMaxProfile). Connector n: an outlet switches, it does not dim: its rating while
   * it may run, 0 while its own limit is below the minimum or the site limit (or its circuits' wiring) is below
   * its rating (it could never fit). W is A × NOMINAL_V × phases.
   */
  private compositeSchedule(connectorId: number, duration: number, unit: 'A' | 'W'): Record<string, unknown> {
    if (connectorId !== 0 && !this.byConnector.has(connectorId)) return { status: 'Rejected' }
    if (duration <= 0 || duration > 7 * 86_400) return { status: 'Rejected' }
    const now = this.host.now()
    const to = now + duration * 1000
    const o = connectorId === 0 ? undefined : this.host.outlets().find((x) => x.id === this.byConnector.get(connectorId))
    const cfg = o ? this.host.config.outlets.find((x) => x.id === o.id) : undefined
    const phases = cfg ? (cfg.phases ?? 3) : 3
    const minA = this.host.config.sessions.minChargeA
    const instants = new Set<number>([now])
    for (const i of this.profiles.all()) for (const t of changesIn(i.profile, now, to, o?.sessionStartedAt, now)) instants.add(t)
    const value = (t: number): number => {
      const site = this.siteLimitAt(t) ?? this.root?.maxA ?? Number.POSITIVE_INFINITY
      if (!o || !cfg) return Number.isFinite(site) ? site : this.host.config.outlets.reduce((a, x) => a + x.ratingA, 0)
      if (!this.chainMaxA.has(o.id)) return cfg.ratingA
      const own = this.outletLimitAt(o, t)
      const room = Math.min(site, this.chainMaxA.get(o.id)!)
      return (own !== null && own < minA) || room < cfg.ratingA ? 0 : cfg.ratingA
    }
    const periods: { startPeriod: number; limit: number; numberPhases: number }[] = []
    for (const t of [...instants].sort((a, b) => a - b)) {
      const a = value(t)
      const limit = Math.round((unit === 'A' ? a : a * NOMINAL_V * phases) * 10) / 10
      if (periods.length > 0 && periods[periods.length - 1]!.limit === limit) continue
      periods.push({ startPeriod: Math.round((t - now) / 1000), limit, numberPhases: phases })
    }
    const start = new Date(now).toISOString()
    return {
      status: 'Accepted',
      connectorId,
      scheduleStart: start,
      chargingSchedule: { duration, startSchedule: start, chargingRateUnit: unit, chargingSchedulePeriod: periods },
    }
  }

  /** The first outlet free for a new session (a RemoteStartTransaction without connectorId). */
  private freeOutlet(): string | undefined {
    return this.host.outlets().find((o) => (o.state === 'off' || o.state === 'armed') && !o.sessionId)?.id
  }

  private trigger(what: string, connectorId: number | undefined): Record<string, unknown> {
    if (connectorId !== undefined && connectorId !== 0 && !this.byConnector.has(connectorId)) return { status: 'Rejected' }
    switch (what) {
      case 'BootNotification':
        setImmediate(() => void this.boot())
        return { status: 'Accepted' }
      case 'Heartbeat':
        setImmediate(() => this.heartbeat())
        return { status: 'Accepted' }
      case 'StatusNotification':
        setImmediate(() => this.sendStatuses(true, connectorId))
        return { status: 'Accepted' }
      case 'MeterValues':
        setImmediate(() => this.sampleNow())
        return { status: 'Accepted' }
      default:
        return { status: 'NotImplemented' }
    }
  }

  private configuration(): { key: string; readonly: boolean; value: string }[] {
    return KEYS.map((k) => ({
      key: k.key,
      readonly: !k.writable,
      value: k.key === 'HeartbeatInterval' ? String(this.heartbeatMs / 1000) : (this.values.get(k.key) ?? ''),
    }))
  }

  /**
   * The central system's changes kept in the journal's side data, applied over the config file's values: a change
   * stands until the file's value for that key is edited (the installer's newer word), then the file's value is used
   * and the change forgotten.
   */
  private async applySaved(): Promise<void> {
    for (const [key, saved] of [...this.outbox.settings]) {
      const def = keyDef(key)
      const file = def?.initial(this.ocpp, this.byOutlet.size)
      if (!def?.writable || def.refuse?.(saved.value) !== undefined || file !== saved.file) {
        this.log.info(
          { key, value: saved.value, file },
          "ocpp: a configuration change of the central system no longer applies (the config file's value was edited)",
        )
        await this.outbox.saveSetting(key, null)
        continue
      }
      this.values.set(key, saved.value)
      if (key === 'HeartbeatInterval') this.heartbeatMs = Number(saved.value) * 1000
    }
  }

  /** ChangeConfiguration: a writable key with a value it can honour is applied and kept on disk before it is answered Accepted. */
  private async changeConfiguration(key: string, value: string): Promise<'Accepted' | 'Rejected' | 'NotSupported'> {
    const def = keyDef(key)
    if (!def) return 'NotSupported'
    if (!def.writable) return 'Rejected'
    const why = def.refuse?.(value) ?? (key === 'SecurityProfile' ? this.refuseSecurityProfile(Number(value)) : undefined)
    if (why !== undefined) {
      this.log.info({ key, value: value.slice(0, 100), why }, 'ocpp: ChangeConfiguration rejected')
      return 'Rejected'
    }
    const file = def.initial(this.ocpp, this.byOutlet.size)
    const was = this.values.get(key)
    await this.outbox.saveSetting(key, value === file ? null : { value, file })
    this.values.set(key, value)
    if (key === 'HeartbeatInterval') {
      this.heartbeatMs = Number(value) * 1000
      if (this.heartbeatTimer) {
        clearInterval(this.heartbeatTimer)
        this.heartbeatTimer = setInterval(() => this.heartbeat(), this.heartbeatMs)
      }
    }
    // A new interval starts from the clock's next instant, not from one that passed.
    if (key === 'ClockAlignedDataInterval') this.alignedDone = undefined
    if (key === 'SecurityProfile' && value !== was) {
      await this.securityEvent('ReconfigurationOfSecurityParameters', `SecurityProfile ${was} → ${value}`)
      this.rpc.reconnect(`security profile ${value}`)
    }
    this.log.info({ key, value }, 'ocpp: configuration changed by the central system')
    return 'Accepted'
  }

  // ---------------------------------------------------------------- security (the OCPP 1.6 security whitepaper)

  private profile(): number {
    return Number(this.values.get('SecurityProfile') ?? 0)
  }

  /**
   * Why ChangeConfiguration may not set SecurityProfile to `next`: never lower than the profile in force, and a
   * higher one only with what it needs (wss://, a CentralSystemRootCertificate, the password of profile 1 and 2, the
   * ChargePointCertificate of profile 3).
   */
  private refuseSecurityProfile(next: number): string | undefined {
    const now = this.profile()
    if (next < now) return `the security profile is never lowered over OCPP (${now} in force)`
    if (next === now) return undefined
    return securityProfileNeeds(next, {
      url: this.ocpp.url,
      password: this.ocpp.password !== undefined,
      root: this.security.hasCentralSystemRoot,
      clientCert: this.security.hasClientCertificate,
    })[0]
  }

  /** Keeps a security event (on disk) and sends the waiting ones if the central system is there; a failure to write is logged. */
  private async securityEvent(type: string, techInfo?: string): Promise<void> {
    try {
      await this.security.record(type, techInfo)
    } catch (err) {
      this.eventNotWritten(err as Error)
      return
    }
    this.sendEvents()
  }

  private eventNotWritten(err: Error): void {
    this.log.error({ err: err.message }, 'ocpp: a security event could not be written')
  }

  /** Sends the waiting security events, oldest first, while the boot is accepted; one the central system refuses (CALLERROR) is dropped. */
  private sendEvents(): void {
    if (this.sendingEvents || !this.accepted || this.stopped) return
    this.sendingEvents = true
    const run = async (): Promise<void> => {
      for (let e = this.security.firstEvent(); e && this.accepted && this.rpc.connected && !this.stopped; e = this.security.firstEvent()) {
        try {
          await this.rpc.call('SecurityEventNotification', { type: e.type, timestamp: e.timestamp, ...(e.techInfo ? { techInfo: e.techInfo } : {}) })
        } catch (err) {
          // Closed or timed out: sent after the next accepted boot.
          if (!isOutpostError(err, 'OCPP_CALL_ERROR')) return
          this.log.info({ type: e.type, err: (err as Error).message }, 'ocpp: the central system refused a security event; dropped')
        }
        await this.security.sent(e)
      }
    }
    void run()
      .catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'ocpp: sending security events failed'))
      .finally(() => {
        this.sendingEvents = false
      })
  }

  /** The central system's calls of the security whitepaper (certificates, ExtendedTriggerMessage). */
  private async securityCall(action: string, p: Record<string, unknown>): Promise<Record<string, unknown>> {
    switch (action) {
      case 'ExtendedTriggerMessage': {
        const what = p.requestedMessage as string
        if (what === 'SignChargePointCertificate') {
          if ((this.values.get('CpoName') ?? '') === '') {
            this.log.warn('ocpp: a certificate signing request needs CpoName (the O of its subject); set it first')
            return { status: 'Rejected' }
          }
          setImmediate(() => void this.signCertificate())
          return { status: 'Accepted' }
        }
        if (what === 'LogStatusNotification' || what === 'FirmwareStatusNotification') return { status: 'NotImplemented' }
        return this.trigger(what, p.connectorId as number | undefined)
      }
      case 'CertificateSigned': {
        const r = await this.security.certificateSigned(p.certificateChain as string)
        if (!r.ok) {
          this.log.warn({ why: r.why }, 'ocpp: CertificateSigned rejected; the certificate in use stays')
          await this.securityEvent('InvalidChargePointCertificate', r.why)
          return { status: 'Rejected' }
        }
        this.log.info(
          { subject: r.leaf.subject, serialNumber: r.leaf.serialNumber, validTo: r.leaf.validTo },
          'ocpp: charge point certificate installed',
        )
        await this.securityEvent(
          'ReconfigurationOfSecurityParameters',
          `ChargePointCertificate installed: serial ${r.leaf.serialNumber}, valid to ${r.leaf.validTo}`,
        )
        // Profile 3 connects with it: the connection is made again with the new certificate.
        if (this.profile() === 3) this.rpc.reconnect('a new charge point certificate')
        return { status: 'Accepted' }
      }
      case 'InstallCertificate': {
        const type = p.certificateType as RootType
        const r = await this.security.install(type, p.certificate as string)
        if (r.status !== 'Accepted') {
          this.log.warn({ type, status: r.status, why: r.why }, 'ocpp: InstallCertificate refused; nothing changed')
          return { status: r.status }
        }
        this.log.info({ type, subject: r.cert?.subject }, 'ocpp: root certificate installed')
        await this.securityEvent('ReconfigurationOfSecurityParameters', `${type} installed: ${r.cert?.subject.replace(/\n/g, ', ') ?? ''}`)
        return { status: 'Accepted' }
      }
      case 'GetInstalledCertificateIds': {
        const ids = this.security.installedIds(p.certificateType as RootType)
        return ids.length > 0 ? { status: 'Accepted', certificateHashData: ids } : { status: 'NotFound' }
      }
      case 'DeleteCertificate': {
        const r = await this.security.delete(p.certificateHashData as Parameters<Security['delete']>[0], this.profile())
        if (r.status === 'Accepted') {
          this.log.info({ subject: r.cert?.subject }, 'ocpp: root certificate deleted')
          await this.securityEvent('ReconfigurationOfSecurityParameters', `root certificate deleted: ${r.cert?.subject.replace(/\n/g, ', ') ?? ''}`)
        } else this.log.warn({ status: r.status, why: r.why }, 'ocpp: DeleteCertificate refused; nothing changed')
        return { status: r.status }
      }
      default:
        throw new CallError('NotImplemented', `unknown action ${action}`)
    }
  }

  /**
   * The client certificate near its end (security.ts renewalDue): the charge point sends a CSR of its own accord (the
   * whitepaper's A03) while the central system is there and CpoName is set, at most once every RENEW_RETRY_MS.
   */
  private renewDue(): void {
    if (!this.security || !this.accepted || this.stopped || (this.values.get('CpoName') ?? '') === '') return
    const now = this.host.now()
    if (!this.security.renewalDue(now) || (this.renewAskedAt !== undefined && now - this.renewAskedAt < RENEW_RETRY_MS)) return
    this.renewAskedAt = now
    this.log.info('ocpp: the charge point certificate nears its end; asking for a new one')
    void this.signCertificate()
  }

  /** ExtendedTriggerMessage SignChargePointCertificate: a new key pair made here, its CSR sent with SignCertificate. */
  private async signCertificate(): Promise<void> {
    try {
      const csr = await this.security.newCsr(this.values.get('CpoName') ?? '', this.ocpp.identity)
      const res = await this.rpc.call('SignCertificate', { csr })
      this.log.info({ status: res.status }, 'ocpp: certificate signing request sent')
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'ocpp: the certificate signing request could not be made or sent')
    }
  }
}

/** How long the charge point waits for a certificate it asked for before it asks again (a new CSR, a new key). */
const RENEW_RETRY_MS = 86_400_000

/** The calls of the security whitepaper, answered by securityCall. */
const SECURITY_CALLS = new Set([
  'ExtendedTriggerMessage',
  'CertificateSigned',
  'InstallCertificate',
  'GetInstalledCertificateIds',
  'DeleteCertificate',
])
