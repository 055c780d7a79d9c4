/**
 * The uplink: the gateway's MQTT link to the cloud.
 *
 * Owns: the broker connection (TLS, credentials, reconnect back-off with
 * jitter), presence (retained P/status and its last will), live outlet state
 * (retained P/outlets/{id}, rate-limited), forwarding journal records on
 * P/records in seq order with a bounded window that advances only on the
 * cloud's P/ack, answering P/pull, and handing P/cmd payloads to the command
 * gateway and publishing their results.
 *
 * Must never: block the session engine or the journal on the network (every
 * entry point returns at once; the network work happens in its own async
 * loops); keep records anywhere but the journal (the journal is the outbox:
 * mqtt.js's in-memory store is discarded on every reconnect and the uplink
 * resends from the oldest unacknowledged seq instead); hold more than one
 * page of records per read, or more than `windowRecords` records in flight;
 * log a password, key or a URL's user info; throw from a message handler.
 */
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import pino, { type Logger } from 'pino'
import type { CommandResult, OutletStatus, PullAnswer, RecordLog, UplinkConfig } from '../../core/types.js'
import { OutpostError } from '../errors.js'
import { authOptions, safeUrl } from './connection.js'
import { answerPull, parsePull } from './pull.js'
import { topics, type Topics } from './topics.js'
import { withTimeout } from '../../core/timeout.js'
import { pastHole } from '../../core/holes.js'

const timeout = (): Error => new Error('timeout')

/** Records per journal read at most (split into batchRecords-sized messages). */
const READ_PAGE_RECORDS = 1000

export type UplinkStatus = 'online' | 'offline' | 'disabled'

export interface UplinkState {
  status: UplinkStatus
  /** The cloud's ack watermark (journal). */
  acked: number
  /** Last seq journaled. */
  head: number
  /** Oldest seq not yet acknowledged, or null when the cloud holds everything. */
  oldestUnacked: number | null
  /** Records journaled but not acknowledged. */
  backlog: number
  /** Highest seq published on the current connection (0 while offline). */
  sentUpTo: number
  /** Wall-clock ms (injected clock) of the last transition to online, or null. */
  onlineSince: number | null
}

export interface UplinkOptions {
  config: UplinkConfig
  siteId: string
  log: RecordLog
  version: string
  bootId: string
  /** The gateway's public key (SPKI PEM), announced in P/status beside the version. */
  publicKey?: string
  /** The command gateway: `(raw) => gateway.handle(raw, 'cloud')`. Must not throw (a throw is answered as 'internal'). */
  /**
   * Applies one P/cmd payload. Commands are handed over one at a time, in arrival order; one
   * held for its outlet's first reading calls `held`, and the next is handed over meanwhile.
   */
  onCommand: (raw: Buffer, held: () => void) => Promise<CommandResult>
  now: () => number
  logger?: Logger
  /** While an outlet's state is unchanged (e.g. charging), publish it at most this often. Default 5000 ms. */
  outletIntervalMs?: number
  /** Republish P/status with the new head at most this often while records are appended. Default 10000 ms. */
  statusIntervalMs?: number
  /** With records in flight and no ack progress for this long, resend from the oldest unacked. Default 30000 ms. */
  ackTimeoutMs?: number
  /** First reconnect delay before doubling (jittered). Default 1000 ms; the cap is config.reconnectMaxMs. */
  reconnectBaseMs?: number
  /** MQTT messages awaiting the broker's PUBACK at most (keeps mqtt.js's message-id space and store small). Default 64. */
  maxUnackedMessages?: number
  /** For tests: the jitter source. */
  random?: () => number
}

/** The state to report when the site has no uplink configured. */
export function disabledUplinkState(log: RecordLog): UplinkState {
  const head = log.head()
  const acked = log.acked()
  return { status: 'disabled', acked, head, oldestUnacked: head > acked ? acked + 1 : null, backlog: head - acked, sentUpTo: 0, onlineSince: null }
}

interface OutletSlot {
  last?: OutletStatus
  lastAt: number
  pending?: OutletStatus
  timer?: NodeJS.Timeout
}

export class Uplink {
  private readonly cfg: UplinkConfig
  private readonly t: Topics
  private readonly log: RecordLog
  private readonly logger: Logger
  private readonly outletIntervalMs: number
  private readonly statusIntervalMs: number
  private readonly ackTimeoutMs: number
  private readonly reconnectBaseMs: number
  private readonly maxUnackedMessages: number
  private readonly random: () => number

  private client?: MqttClient
  private online = false
  private onlineSince: number | null = null
  private stopping = false
  private started = false
  /** Bumped on every connect and close: work begun on an older connection drops its results. */
  private gen = 0
  private sent = 0
  private unackedMessages = 0
  private pumping = false
  private pumpAgain = false
  private attempt = 0
  private reconnectTimer?: NodeJS.Timeout
  private statusTimer?: NodeJS.Timeout
  private ackTimer?: NodeJS.Timeout
  private ackTimerAt = 0
  private retryTimer?: NodeJS.Timeout
  private unsubscribeAppend?: () => void
  private readonly outlets = new Map<string, OutletSlot>()
  private readonly onlineListeners = new Set<(online: boolean) => void>()
  /** Commands are handled one at a time, in arrival order (a held start lets the next one go); acks coalesce through ackWanted instead. */
  private commandChain: Promise<void> = Promise.resolve()
  /** The highest ack received; written to the journal by writeAcks. */
  private ackWanted = 0
  /** The highest ack above the journal head already reported (once per value, not per message). */
  private ackPastHead = 0
  private ackWriting = false
  /** Pulls too, with a bound on how many may wait. */
  private pullChain: Promise<void> = Promise.resolve()
  private pullsWaiting = 0
  private lastError = ''

  constructor(private readonly opts: UplinkOptions) {
    this.cfg = opts.config
    this.t = topics(opts.config.topicPrefix, opts.siteId)
    this.log = opts.log
    this.logger = (opts.logger ?? pino({ level: 'silent' })).child({ module: 'uplink' })
    this.outletIntervalMs = opts.outletIntervalMs ?? 5000
    this.statusIntervalMs = opts.statusIntervalMs ?? 10_000
    this.ackTimeoutMs = opts.ackTimeoutMs ?? 30_000
    this.reconnectBaseMs = opts.reconnectBaseMs ?? 1000
    this.maxUnackedMessages = opts.maxUnackedMessages ?? 64
    this.random = opts.random ?? Math.random
  }

  get topics(): Topics {
    return this.t
  }

  /** Connects (and keeps reconnecting) in the background. Throws OutpostError('UPLINK_CONFIG') when a TLS or password file cannot be read. */
  start(): void {
    if (this.started) throw new OutpostError('UPLINK_STATE', 'uplink already started')
    this.started = true
    const options: IClientOptions = {
      clientId: this.cfg.clientId ?? `outpost-${this.opts.siteId}`,
      protocolVersion: 4,
      // A clean session: the cloud retries commands and pulls that got no answer (ids make that safe),
      // and a command queued at the broker for hours should not run when the gateway comes back.
      clean: true,
      keepalive: this.cfg.keepaliveS,
      // Reconnection is ours (jittered exponential back-off); mqtt.js's is a fixed period.
      reconnectPeriod: 0,
      connectTimeout: 15_000,
      resubscribe: false,
      will: { topic: this.t.status, payload: Buffer.from(JSON.stringify({ online: false })), qos: 1, retain: true },
      // mqtt-packet's default pre-builds 65,536 two-byte Buffers (6 MB of heap, a quarter of the daemon's live heap)
      // to save an allocation per packet id; a gateway sending a few messages a second is better without it.
      writeCache: false,
      ...authOptions(this.cfg),
    }
    this.unsubscribeAppend = this.log.onAppend(() => this.onAppend())
    this.logger.info({ url: safeUrl(this.cfg.url), clientId: options.clientId }, 'uplink connecting')
    const client = mqtt.connect(this.cfg.url, options)
    this.client = client
    client.on('connect', () => this.onConnect())
    client.on('close', () => this.onClose())
    client.on('error', (err) => {
      // Logged once per distinct error, so a broker that stays away does not flood the log.
      const text = `${(err as NodeJS.ErrnoException).code ?? ''} ${err.message}`
      if (text !== this.lastError)
        this.logger.warn({ err: { message: err.message, code: (err as NodeJS.ErrnoException).code } }, 'uplink connection error')
      this.lastError = text
    })
    client.on('message', (topic, payload) => this.onMessage(topic, payload))
  }

  /** Publishes {"online": false}, disconnects and stops reconnecting. Safe to call twice. */
  async stop(): Promise<void> {
    if (!this.started || this.stopping) return
    this.stopping = true
    this.unsubscribeAppend?.()
    clearTimeout(this.reconnectTimer)
    clearTimeout(this.statusTimer)
    clearTimeout(this.ackTimer)
    clearTimeout(this.retryTimer)
    for (const slot of this.outlets.values()) clearTimeout(slot.timer)
    const client = this.client
    if (!client) return
    if (client.connected) {
      // A clean stop does not fire the will: say so ourselves, but never wait long on the network.
      await withTimeout(client.publishAsync(this.t.status, JSON.stringify({ online: false }), { qos: 1, retain: true }), 2000, timeout).catch(
        () => undefined,
      )
    }
    await withTimeout(client.endAsync(), 3000, timeout).catch(() => undefined)
    if (!client.disconnected) client.end(true)
    this.setOnline(false)
  }

  state(): UplinkState {
    const head = this.log.head()
    const acked = this.log.acked()
    return {
      status: this.online ? 'online' : 'offline',
      acked,
      head,
      oldestUnacked: head > acked ? acked + 1 : null,
      backlog: head - acked,
      sentUpTo: this.online ? this.sent : 0,
      onlineSince: this.onlineSince,
    }
  }

  /** Called on every online/offline transition (the engine's {type:'uplink', online}). Returns an unsubscribe function. */
  onOnlineChange(listener: (online: boolean) => void): () => void {
    this.onlineListeners.add(listener)
    return () => this.onlineListeners.delete(listener)
  }

  /**
   * Live outlet state, retained on P/outlets/{id}. Published at once when the
   * state, session or user changes; otherwise at most every outletIntervalMs
   * (the latest value wins and is sent when the interval ends); not at all
   * when nothing but `ts` changed. While offline only the latest is kept and
   * published on reconnect.
   */
  publishOutlet(status: OutletStatus): void {
    const slot = this.outlets.get(status.outlet) ?? { lastAt: -Infinity }
    this.outlets.set(status.outlet, slot)
    if (!this.online) {
      slot.pending = status
      return
    }
    const last = slot.last
    const significant = !last || last.state !== status.state || last.sessionId !== status.sessionId || last.userId !== status.userId
    if (!significant && sameApartFromTs(last, status)) {
      slot.pending = undefined
      return
    }
    const now = this.opts.now()
    if (significant || now - slot.lastAt >= this.outletIntervalMs) {
      clearTimeout(slot.timer)
      slot.timer = undefined
      this.sendOutlet(slot, status)
      return
    }
    slot.pending = status
    if (!slot.timer) {
      slot.timer = setTimeout(
        () => {
          slot.timer = undefined
          if (slot.pending && this.online) this.sendOutlet(slot, slot.pending)
        },
        Math.max(0, slot.lastAt + this.outletIntervalMs - now),
      )
    }
  }

  // ------------------------------------------------------------ connection

  private onConnect(): void {
    // A connection that completes after stop() (a reconnect already under way) is not used: the client is being
    // closed and mqtt.js's stores with it, so publishing on it would throw.
    if (this.stopping) return
    this.gen++
    this.attempt = 0
    this.lastError = ''
    // Resend from the oldest unacknowledged record: whatever was in flight on the last connection may be lost.
    this.sent = this.log.acked()
    this.unackedMessages = 0
    const client = this.client!
    // SUBSCRIBE goes out before any record on this connection, and the broker handles a connection's
    // packets in order, so no ack for these records can arrive before we listen for it.
    client.subscribe([this.t.ack, this.t.pull, this.t.cmd], { qos: 1 }, (err) => {
      if (err) this.logger.warn({ err: { message: err.message } }, 'uplink subscribe failed')
    })
    this.publishStatus()
    this.setOnline(true)
    this.logger.info({ url: safeUrl(this.cfg.url), acked: this.sent, head: this.log.head() }, 'uplink online')
    for (const slot of this.outlets.values()) {
      const latest = slot.pending ?? slot.last
      if (latest) this.sendOutlet(slot, latest)
    }
    void this.pump()
  }

  private onClose(): void {
    this.gen++
    const client = this.client
    if (client) {
      // Drop what mqtt.js still holds for the dead connection: the journal is the outbox and the pump
      // resends from the oldest unacked on the next connection; replaying mqtt.js's copy would only duplicate.
      for (const id of Object.keys(client.outgoing)) client.removeOutgoingMessage(Number(id))
    }
    clearTimeout(this.ackTimer)
    this.ackTimer = undefined
    if (this.online) this.logger.warn({ backlog: this.log.head() - this.log.acked() }, 'uplink offline')
    this.setOnline(false)
    if (!this.stopping) this.scheduleReconnect()
  }

  private scheduleReconnect(): void {
    if (this.reconnectTimer) return
    const delay = reconnectDelay(this.attempt, this.reconnectBaseMs, this.cfg.reconnectMaxMs, this.random)
    this.attempt++
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined
      if (this.stopping || !this.client) return
      // reconnect() also gives mqtt.js fresh, empty stores (see onClose).
      this.client.reconnect()
    }, delay)
  }

  private setOnline(online: boolean): void {
    if (online === this.online) return
    this.online = online
    this.onlineSince = online ? this.opts.now() : null
    for (const l of this.onlineListeners) {
      try {
        l(online)
      } catch (err) {
        this.logger.error({ err }, 'uplink online listener threw')
      }
    }
  }

  private publishStatus(): void {
    clearTimeout(this.statusTimer)
    const head = this.log.head()
    this.statusTimer = setTimeout(() => {
      this.statusTimer = undefined
      if (this.online && this.log.head() !== head) this.publishStatus()
    }, this.statusIntervalMs)
    const payload = JSON.stringify({
      online: true,
      version: this.opts.version,
      bootId: this.opts.bootId,
      head,
      ...(this.opts.publicKey ? { publicKey: this.opts.publicKey } : {}),
    })
    this.client?.publish(this.t.status, payload, { qos: 1, retain: true }, () => undefined)
  }

  private sendOutlet(slot: OutletSlot, status: OutletStatus): void {
    slot.last = status
    slot.lastAt = this.opts.now()
    slot.pending = undefined
    const { outlet: _id, ...payload } = status
    this.client?.publish(this.t.outlet(status.outlet), JSON.stringify(payload), { qos: 1, retain: true }, () => undefined)
  }

  // ------------------------------------------------------------ forwarding

  private onAppend(): void {
    if (!this.online) return
    // P/status carries the head: publish at once after a quiet spell, then at most every statusIntervalMs.
    if (!this.statusTimer) this.publishStatus()
    void this.pump()
  }

  /**
   * Publishes unacknowledged records in seq order, one page (batchRecords) per
   * message, while the window (windowRecords published but not acknowledged)
   * has room. One pump runs at a time; a trigger during a run makes it loop again.
   */
  private async pump(): Promise<void> {
    if (this.pumping) {
      this.pumpAgain = true
      return
    }
    this.pumping = true
    try {
      do {
        this.pumpAgain = false
        await this.pumpOnce()
      } while (this.pumpAgain)
    } catch (err) {
      // A journal read failed: try again shortly rather than waiting for the next append or ack.
      this.logger.error({ err }, 'uplink forwarding failed; retrying in 1 s')
      clearTimeout(this.retryTimer)
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined
        if (!this.stopping) void this.pump()
      }, 1000)
    } finally {
      this.pumping = false
    }
  }

  private async pumpOnce(): Promise<void> {
    const gen = this.gen
    const client = this.client
    while (client && this.online && gen === this.gen && this.unackedMessages < this.maxUnackedMessages) {
      // The window slides on the cloud's ack at once, before the journal has made the watermark durable:
      // flow control needs no durability (a crash in between only means resending more), and waiting for
      // the journal's fsync on every ack would turn the window into stop-and-wait.
      const acked = Math.max(this.log.acked(), this.ackWanted)
      if (this.sent < acked) this.sent = acked
      // Past a salvage's hole (lost seqs, never sent) the next records follow at once, without waiting for the ack.
      this.sent = pastHole(this.log.holes?.() ?? [], this.sent)
      const room = this.cfg.windowRecords - (this.sent - acked)
      // One journal read serves several messages (fewer iterators); it never exceeds the window's room,
      // nor more messages than may still await PUBACK.
      const messages = Math.max(1, Math.min(this.maxUnackedMessages - this.unackedMessages, Math.floor(READ_PAGE_RECORDS / this.cfg.batchRecords)))
      const n = Math.min(this.cfg.batchRecords * messages, room, this.log.head() - this.sent)
      if (n <= 0) return
      let records
      try {
        records = await this.log.read(this.sent + 1, n)
      } catch (err) {
        if (err instanceof OutpostError && err.code === 'JOURNAL_COMPACTED' && this.log.oldest() - 1 <= this.log.acked()) {
          // Only acknowledged records are compacted: skip to what is still held.
          this.sent = Math.max(this.sent, this.log.oldest() - 1)
          continue
        }
        throw err
      }
      if (gen !== this.gen) return
      if (records.length === 0) return
      const first = records[0]!.seq
      const last = records[records.length - 1]!.seq
      if (first !== this.sent + 1 || last - first + 1 !== records.length) {
        throw new OutpostError(
          'UPLINK_GAP',
          `journal read from ${this.sent + 1} returned seq ${first}..${last} (${records.length} records); not forwarding a gap`,
        )
      }
      for (let i = 0; i < records.length; i += this.cfg.batchRecords) {
        const batch = records.slice(i, i + this.cfg.batchRecords)
        this.unackedMessages++
        client.publish(this.t.records, JSON.stringify(batch), { qos: 1 }, () => {
          if (gen !== this.gen) return
          this.unackedMessages--
          if (this.unackedMessages === this.maxUnackedMessages - 1) void this.pump()
        })
      }
      this.sent = last
      this.armAckTimer()
    }
  }

  /** With records in flight and no ack progress for ackTimeoutMs, rewind to the oldest unacked and resend. */
  private armAckTimer(): void {
    if (this.ackTimer) return
    this.ackTimerAt = this.log.acked()
    this.ackTimer = setTimeout(() => {
      this.ackTimer = undefined
      if (!this.online) return
      const acked = this.log.acked()
      if (this.sent > acked && acked === this.ackTimerAt) {
        this.logger.warn({ acked, sentUpTo: this.sent }, 'no ack from the cloud; resending from the oldest unacknowledged record')
        this.sent = acked
      }
      if (this.sent > this.log.acked()) this.armAckTimer()
      void this.pump()
    }, this.ackTimeoutMs)
  }

  // ------------------------------------------------------------ messages from the cloud

  private onMessage(topic: string, payload: Buffer): void {
    try {
      if (topic === this.t.ack) this.onAck(payload)
      else if (topic === this.t.pull) this.enqueuePull(payload)
      else if (topic === this.t.cmd)
        this.commandChain = this.commandChain.then(() => new Promise<void>((next) => void this.handleCommand(payload, next).finally(next)))
    } catch (err) {
      this.logger.error({ err, topic }, 'uplink message handler failed')
    }
  }

  /** Parses an ack and hands it to the one ack writer; acks that arrive while one is being written are coalesced. */
  private onAck(payload: Buffer): void {
    let upTo: unknown
    try {
      upTo = payload.length <= 256 ? (JSON.parse(payload.toString()) as { upTo?: unknown })?.upTo : undefined
    } catch {
      upTo = undefined
    }
    if (typeof upTo !== 'number' || !Number.isSafeInteger(upTo) || upTo < 0) {
      this.logger.warn({ payload: payload.subarray(0, 120).toString() }, 'ignoring malformed ack (expected {"upTo": <seq>})')
      return
    }
    // The cloud holds a seq this journal does not: records it had were lost (docs/journal.md, evidence of loss).
    if (upTo > this.log.head() && upTo > this.ackPastHead) {
      this.ackPastHead = upTo
      this.logger.error(
        { upTo, head: this.log.head() },
        'the cloud acknowledged a seq above the journal head: records the cloud holds were lost here',
      )
    }
    // Clamped at the head now, so a bogus ack past the head cannot shadow the real ones that follow.
    const target = Math.min(upTo, this.log.head())
    if (target <= this.ackWanted || target <= this.log.acked()) return
    this.ackWanted = target
    void this.pump()
    if (!this.ackWriting) void this.writeAcks()
  }

  /** Writes the highest ack received (one durable journal write per round, not one per message), then lets the window slide. */
  private async writeAcks(): Promise<void> {
    this.ackWriting = true
    try {
      while (this.ackWanted > this.log.acked()) {
        const before = this.log.acked()
        const target = this.ackWanted
        try {
          await this.log.ack(target)
        } catch (err) {
          this.logger.error({ err }, 'journal ack failed')
          return
        }
        if (this.log.acked() === before) break // clamped at the head: nothing more to do
        clearTimeout(this.ackTimer)
        this.ackTimer = undefined
        if (this.sent > this.log.acked()) this.armAckTimer()
        void this.pump()
      }
    } finally {
      this.ackWriting = false
    }
  }

  private enqueuePull(payload: Buffer): void {
    if (this.pullsWaiting >= 16) {
      const parsed = parsePull(payload)
      const requestId = parsed.ok ? parsed.request.requestId : parsed.requestId
      this.sendPullAnswer({
        requestId,
        records: [],
        next: null,
        head: this.log.head(),
        error: { code: 'internal', message: 'too many pulls waiting; retry later' },
      })
      return
    }
    this.pullsWaiting++
    this.pullChain = this.pullChain.then(async () => {
      try {
        const parsed = parsePull(payload)
        const answer: PullAnswer = parsed.ok
          ? await answerPull(this.log, parsed.request)
          : { requestId: parsed.requestId, records: [], next: null, head: this.log.head(), error: { code: 'invalid-pull', message: parsed.message } }
        this.sendPullAnswer(answer)
      } catch (err) {
        this.logger.error({ err }, 'pull failed')
      } finally {
        this.pullsWaiting--
      }
    })
  }

  private sendPullAnswer(answer: PullAnswer): void {
    if (!this.online) return // the cloud asks again
    this.client?.publish(this.t.pullAnswer(answer.requestId ?? ''), JSON.stringify(answer), { qos: 1 }, () => undefined)
  }

  private async handleCommand(payload: Buffer, held: () => void): Promise<void> {
    let result: CommandResult
    try {
      result = await this.opts.onCommand(payload, held)
    } catch (err) {
      this.logger.error({ err }, 'command handler threw')
      result = { id: '', ok: false, error: { code: 'internal', message: 'the command could not be handled' } }
    }
    // Offline by now: the result is in the journal's ledger; the cloud's retry with the same id gets it.
    if (!this.online) return
    this.client?.publish(this.t.cmdResult(result.id), JSON.stringify(result), { qos: 1 }, () => undefined)
  }
}

/**
 * The wait before reconnect attempt `attempt` (0-based): exponential from `baseMs`, capped at
 * `capMs`, with "equal jitter" — half fixed, half random — so many gateways that lost the same
 * broker do not come back in lock-step, yet none retries sooner than half the ceiling.
 */
export function reconnectDelay(attempt: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30))
  return Math.round(ceiling / 2 + (random() * ceiling) / 2)
}

function sameApartFromTs(a: OutletStatus, b: OutletStatus): boolean {
  return (
    a.state === b.state &&
    a.sessionId === b.sessionId &&
    a.userId === b.userId &&
    a.currentA === b.currentA &&
    a.powerW === b.powerW &&
    a.energyWh === b.energyWh &&
    a.cost === b.cost &&
    a.currency === b.currency
  )
}
