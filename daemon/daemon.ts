/**
 * The composition root: config → buses and devices → session engine → journal →
 * uplink, and the OCPP charge point beside the uplink (daemon/ocpp/attach.ts owns its
 * wiring). Starts them in that order and stops them in reverse.
 *
 * Owns the one place where the pure engine meets the world: every event goes
 * through `dispatch`, one at a time, and its effects are carried out in the only
 * safe order — relay OPENS first (an open relay never costs anyone money), then
 * the journal commit (records + state + command results, one batch), then relay
 * CLOSES, then publishing. Nothing billable is kept only in memory: the engine
 * state the journal holds is the truth, the copy here is its cache.
 *
 * Also owns the ready gate: a command the engine would refuse only because its
 * outlet has not been read since boot (`outlet-not-ready`) is held until that
 * outlet's first reading is stepped, then applied; every outlet is read once
 * before the uplink announces `online`.
 *
 * Break-before-make: a relay close waits until every relay open already sent has been
 * carried out (or has failed), so on a shared circuit the session whose turn is over is off
 * before the next one is switched on.
 *
 * Must never: close a relay before the commit that makes it billable; let one
 * outlet's or bus's failure stop the others; block sessions on the network; let a
 * listener's throw undo or skip an effect of a committed step.
 */
import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type { SiteConfig, Reading, CommandResult, Command, CommandSource, OutletStatus, JournalRecord, RecordBody } from '../core/types.js'
import { OutpostError, isOutpostError } from './errors.js'
import { withTimeout } from '../core/timeout.js'
import type { Clock } from './clock.js'
import type { NodeRedStatus } from './nodered/status.js'
import type { Logger } from './log.js'
import { QuietLog } from './log.js'
import { diffPointers } from './config-changes.js'
import {
  circuitStatuses,
  initialState,
  outletStatuses,
  step,
  type CircuitStatus,
  type CommandErrorCode,
  type ConfigChange,
  type EngineState,
  type EngineEvent,
  type Effect,
} from './engine/index.js'
import { restoreState } from './restore.js'
import type { Journal } from './journal/index.js'
import { openJournalForRun } from './journal/salvage.js'
import { openSite, type SiteIO } from '../drivers/index.js'
import { Uplink, disabledUplinkState, type UplinkState } from './uplink/uplink.js'
import { CommandGateway } from './command-gateway.js'
import { OcppLink, type OcppState } from './ocpp/attach.js'
import { keyPath, loadOrCreateKey, type GatewayKey } from './gateway-key.js'
import { existsSync } from 'node:fs'
import { salvageSigner, sessionSigner } from './session-signer.js'
import { CrossCheckReports, runCrossCheck, wiringHash, type CrossCheckProgress, type CrossCheckReport } from './crosscheck.js'

export interface DaemonOptions {
  config: SiteConfig
  clock: Clock
  logger: Logger
  version: string
  /** Bound on a clean stop (final readings, relays, flush). */
  stopTimeoutMs?: number
  /**
   * The SHA-256 of the config file's bytes (daemon/config-store.ts): kept in the engine state,
   * so a boot that finds the file changed since the last config applied journals `config.applied`.
   */
  configHash?: string
  /** The JSON pointers that changed since the config of `previousHash` (boot, when the file changed); `[""]` when unknown. */
  changedSince?: (previousHash: string) => Promise<string[]>
  /**
   * Who saved the config this boot starts with (`setup`: the first-run setup page): journaled as
   * `config.applied` even on a fresh journal, which knows no config before it.
   */
  configBy?: string
  /**
   * false: after the boot's first reads, no poll or tick timers run and the caller dispatches
   * the readings and ticks (a benchmark measuring the daemon with one source of readings).
   */
  timers?: boolean
}

/**
 * At start, how long the daemon waits for every outlet's first reading before the uplink
 * starts (and announces online): a meter that does not answer by then is left to the poll
 * timers and holds no other outlet or the uplink up any longer.
 */
export const BOOT_READ_MS = 3000

/** Why a held command was let go: its outlet was stepped, the daemon is stopping or halted, or the wait ran out. */
type Release = 'ready' | 'stopping' | 'halted' | 'timeout'
interface HeldCommand {
  outlet: string
  release(why: Release): void
}

/** What the local API, the status page and Node-RED see of the daemon. */
export interface DaemonEvents {
  halted: [Error]
  status: [OutletStatus]
  record: [JournalRecord]
  result: [CommandResult]
  /** The OCPP central system asked for a reset: the process should stop cleanly (systemd starts it again). */
  reset: ['Soft' | 'Hard']
}

export class Daemon extends EventEmitter<DaemonEvents> {
  private cfg: SiteConfig
  /** The config in force (replaced, without a restart, by applyConfig). */
  get config(): SiteConfig {
    return this.cfg
  }
  private readonly opts: DaemonOptions
  readonly bootId = randomUUID()
  private readonly clock: Clock
  private readonly log: Logger
  private readonly quiet: QuietLog
  readonly version: string
  private readonly stopTimeoutMs: number
  /** Node-RED's supervisor while one runs (daemon/nodered): the status page and /metrics read it. */
  nodeRed: { status(): NodeRedStatus } | undefined

  private state!: EngineState
  /** The gateway's signing key (loaded, or created with a new journal, at start); never handed out. */
  private key: GatewayKey | undefined
  private journal: Journal | undefined
  private site: SiteIO | undefined
  private uplink: Uplink | undefined
  private ocpp: OcppLink | undefined
  gateway!: CommandGateway
  private queue: Promise<unknown> = Promise.resolve()
  private timers: NodeJS.Timeout[] = []
  /** The read in flight per outlet: one at a time, and a clean stop waits for it. */
  private readonly reading = new Map<string, Promise<void>>()
  private halted: Error | undefined
  private stopping = false
  /** Set once the clean stop's final step is done: later events are refused, never committed. */
  private closed = false
  /** Commands held for their outlet's first reading since boot. */
  private readonly held = new Set<HeldCommand>()
  /** Held commands a clean stop let go: applied right after the shutdown step (the engine then refuses them `not-running`). */
  private atShutdown: { run(): Promise<void>; fail(err: Error): void }[] = []

  /** Whether the daemon polls and ticks on its own timers (DaemonOptions.timers). */
  private readonly ownTimers: boolean

  constructor(opts: DaemonOptions) {
    super()
    this.opts = opts
    this.cfg = opts.config
    this.clock = opts.clock
    this.log = opts.logger
    this.version = opts.version
    this.stopTimeoutMs = opts.stopTimeoutMs ?? 15_000
    this.ownTimers = opts.timers !== false
    this.quiet = new QuietLog(this.log, 60_000, () => this.clock.monotonic())
  }

  // ---------------------------------------------------------------- lifecycle

  async start(): Promise<void> {
    const { config } = this
    // The key before the journal: a new journal is created with its key, and one that recorded a key never gets a new one
    // silently. A missing key beside an existing journal is decided once the journal says whether it was ever signed.
    let key: GatewayKey | undefined
    // The key is created with the journal: a key already there means a journal existed, and an empty one was lost.
    const keyExisted = existsSync(keyPath(config.storage.dir))
    try {
      key = loadOrCreateKey(config.storage.dir)
    } catch (err) {
      if (!isOutpostError(err, 'KEY_MISSING')) throw err
    }
    const signer = (): GatewayKey => {
      if (!this.key) throw new OutpostError('KEY_MISSING', 'the gateway key is not loaded')
      return this.key
    }
    // A damaged journal (JOURNAL_CORRUPT) is moved aside and replaced, never reset: the site keeps charging (journal/salvage.ts).
    const opened = await openJournalForRun(
      config.storage.dir,
      {
        bootId: this.bootId,
        clockSynced: () => this.clock.synced(),
        now: () => this.clock.now(),
        version: this.version,
        retentionDays: config.storage.retentionDays,
        readingSyncMs: config.storage.readingSyncMs,
        expectExisting: keyExisted,
        sign: sessionSigner({ config: () => this.config, version: this.version, key: signer }),
        signSalvage: salvageSigner({ siteId: () => config.site.id, key: signer }),
      },
      { warn: (fields, msg) => this.log.error(fields, msg) },
    )
    if (!key) {
      if (opened.journal.keyOnRecord() !== undefined) {
        // The journal's records are signed with a key that is gone: leave the journal as it was found.
        await opened.journal.close({ clean: opened.journal.previousCleanShutdown }).catch(() => undefined)
        loadOrCreateKey(config.storage.dir) // throws KEY_MISSING with the installer's message
      }
      // A journal written before records were signed (an upgrade): its first key.
      key = loadOrCreateKey(config.storage.dir, { journalSigned: false })
      this.log.warn({ file: key.file, fingerprint: key.fingerprint }, 'made the first gateway key for a journal whose records were never signed')
    }
    this.key = key
    const publicKey = key.publicKeyPem
    await opened.journal.recordKey(key.fingerprint)
    this.journal = opened.journal
    this.journal.onFault((err) => this.halt(err))
    const persisted = await this.restore(this.journal)
    this.state = persisted ?? initialState(config)
    this.log.info({ dir: config.storage.dir, head: this.journal.head(), acked: this.journal.acked(), restored: Boolean(persisted) }, 'journal open')

    // The OCPP outbox follows the journal from before the boot step, so the sessions boot closes become StopTransactions.
    if (config.ocpp) {
      const daemon = this
      this.ocpp = await OcppLink.attach({
        get config() {
          return daemon.config
        },
        version: this.version,
        journal: this.journal,
        logger: this.log,
        now: () => this.clock.now(),
        engineState: () => this.state,
        outletStatuses: () => this.outletStatuses(),
        command: (cmd) => this.gateway.handle(cmd, 'ocpp'),
        reset: (kind) => this.emit('reset', kind),
        onStatus: (listener) => this.on('status', listener),
      })
    }

    // Buses before boot: boot opens every relay, and that must reach the hardware.
    this.site = await openSite(config, { now: () => this.clock.now(), logger: this.log })
    // Give the buses a moment to open so boot's relay opens reach the hardware; a bus
    // that stays down is not fatal (its outlets fault and are retried), so don't wait long.
    if (!(await this.site.ready(5000)))
      this.log.warn(
        {
          buses: this.site
            .health()
            .filter((b) => b.state !== 'open')
            .map((b) => b.id),
        },
        'not every bus is open yet; continuing',
      )
    const hash = this.opts.configHash
    if (persisted || hash !== undefined) {
      // A file changed since the last config applied (a hand edit, or a save whose journal record the process did not live to write): journaled.
      const previous = persisted?.gateway.configHash ?? null
      const by = this.opts.configBy
      const change =
        hash !== undefined && previous !== hash && (previous !== null || by !== undefined)
          ? { who: by ?? 'file', changed: previous === null ? [''] : ((await this.opts.changedSince?.(previous)) ?? ['']) }
          : undefined
      await this.dispatch({ type: 'config', config, ...(hash !== undefined ? { hash } : {}), ...(change ? { change } : {}) })
    }
    await this.dispatch({
      type: 'boot',
      cleanShutdown: this.journal.previousCleanShutdown,
      version: this.version,
      publicKey,
      ...(opened.salvage ? { journalSalvage: opened.salvage } : {}),
    })

    this.gateway = new CommandGateway({
      ledger: this.journal,
      apply: (id, command, source, held) => this.applyCommand(id, command, source, held),
      logger: this.log,
      monotonic: () => this.clock.monotonic(),
    })

    // So that `online` means ready: a start sent the moment the cloud sees it finds its outlet read.
    await this.readAll(BOOT_READ_MS)

    if (config.uplink) {
      this.uplink = new Uplink({
        config: config.uplink,
        siteId: config.site.id,
        log: this.journal,
        version: this.version,
        bootId: this.bootId,
        publicKey,
        onCommand: (raw, held) => this.gateway.handle(raw, 'cloud', held),
        now: () => this.clock.now(),
        logger: this.log,
      })
      this.uplink.onOnlineChange((online) => {
        this.log.info({ online }, online ? 'uplink online' : 'uplink offline')
        void this.dispatch({ type: 'uplink', online }).catch(() => undefined)
      })
      this.uplink.start()
    } else {
      this.log.info('no uplink configured: running offline, records queue in the journal')
    }

    if (this.ocpp && !this.ocpp.start()) this.ocpp = undefined

    const { pollMs } = config.sessions
    if (this.ownTimers) {
      for (const outlet of config.outlets) this.pollOutlet(outlet.id)
      for (const circuit of this.site.feederIds()) this.timers.push(setInterval(() => void this.pollFeeder(circuit), pollMs))
      this.timers.push(setInterval(() => void this.dispatch({ type: 'tick' }).catch(() => undefined), Math.min(1000, pollMs)))
    }
    this.log.info({ site: config.site.id, outlets: config.outlets.length, buses: config.buses.length, bootId: this.bootId }, 'outpost running')
  }

  /** Polls an outlet every pollMs, and at once when its device pushes a change. */
  private pollOutlet(id: string): void {
    this.timers.push(setInterval(() => this.poll(id), this.config.sessions.pollMs))
    // A device that pushes changes (Shelly NotifyStatus) is read at once: an unplug is seen without waiting for the next poll.
    this.site!.outlet(id).onChange?.(() => this.pollFresh(id))
  }

  /** The journal's state as the last run left it (its checkpoint, with the readings journaled after it replayed). */
  private async restore(journal: Journal): Promise<EngineState | undefined> {
    const { state, replay: r } = await restoreState(journal)
    if (r?.stopped)
      this.log.error(
        { ...r.stopped, replayed: r.replayed },
        "replaying journaled readings stopped: the journal's state and its readings disagree; sessions close at the last reading replayed",
      )
    else if (r) this.log.info({ replayed: r.replayed, skipped: r.skipped }, 'replayed the readings journaled after the last checkpoint')
    return state
  }

  /** Clean stop: final reading of every outlet, close sessions `reboot`, open every relay, flush. */
  async stop(): Promise<void> {
    if (this.stopping) return
    this.stopping = true
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    this.releaseHeld('stopping')
    const work = async (): Promise<void> => {
      if (this.site && !this.halted) {
        // A read already on the wire finishes first (its reading is billable), then the final one.
        await Promise.all([...this.reading.values()])
        await Promise.all(this.config.outlets.map((o) => this.poll(o.id, true)))
        await this.dispatch({ type: 'shutdown' })
        await Promise.all(this.atShutdown.splice(0).map((h) => h.run()))
        await this.relaysSettled()
      }
    }
    await withTimeout(work(), this.stopTimeoutMs, stopTimeout(this.stopTimeoutMs)).catch((err: unknown) =>
      this.log.error({ err }, 'clean stop did not finish in time'),
    )
    for (const h of this.atShutdown.splice(0)) h.fail(new OutpostError('DAEMON_STOPPED', 'the daemon stopped before the command could be applied'))
    // From here nothing more is billed: a read or relay answer arriving late (the bus is
    // about to close) must not reach the journal, and a refused commit is not a journal fault.
    this.closed = true
    await this.queue
    // After a journal fault, halt() queued an open for every relay: those must reach the
    // hardware before the buses close (closing the site rejects queued jobs).
    await withTimeout(this.relaysSettled(), this.stopTimeoutMs, stopTimeout(this.stopTimeoutMs)).catch(() =>
      this.log.error('relays may not all be open: the bus did not answer in time'),
    )
    // The StopTransactions of the shutdown step get a few seconds to reach the central system (not after a Hard reset); the rest go after the restart.
    await this.ocpp?.stop({ halted: Boolean(this.halted) })
    await this.uplink?.stop().catch(() => undefined)
    await this.journal?.close({ clean: !this.halted }).catch((err: unknown) => this.log.error({ err }, 'journal close failed'))
    await this.site?.close().catch(() => undefined)
    this.log.info('outpost stopped')
  }

  /**
   * Applies a validated config without a restart: the outlets it adds open (with the buses
   * and devices new to them), then one `config` step (journaled as `config.applied` in the same
   * commit as the state it changes), then the daemon's own copy. Only what
   * daemon/config-changes.ts lists as applying at once may differ from the config in force
   * (the buses, devices and timers already open stay as they are). Returns the record's body.
   */
  async applyConfig(next: SiteConfig, hash: string, change: ConfigChange): Promise<RecordBody | undefined> {
    const had = new Set(this.config.outlets.map((o) => o.id))
    const added = next.outlets.filter((o) => !had.has(o.id)).map((o) => o.id)
    const rewired = this.rewiredBy(next)
    const busy = rewired.filter((id) => this.state.outlets[id]?.session)
    if (busy.length > 0) throw new OutpostError('CONFIG_INVALID', `the relay of ${busy.join(', ')} cannot change during a session`)
    // Outlets added (and the buses new to them) open before the step that adds them to the engine; the others are left alone.
    if (added.length > 0) await this.site?.addOutlets(next, added)
    if (rewired.length > 0) await this.site?.rewireOutlets(next, rewired)
    const effects = await this.dispatch({ type: 'config', config: next, hash, change })
    this.cfg = next
    for (const id of added) {
      // As at boot: a relay found in an unknown position is opened, and the outlet is read before it can be armed or started.
      this.switchRelay(id, false)
      if (this.ownTimers && !this.stopping && !this.halted) this.pollOutlet(id)
      void this.poll(id)
    }
    if (added.length > 0) this.log.info({ outlets: added }, 'outlets added while running')
    if (rewired.length > 0) {
      // The relay now bound may be in any position: it is put where the engine wants it.
      for (const id of rewired) this.switchRelay(id, this.state.outlets[id]?.relayClosed === true)
      this.log.info({ outlets: rewired }, 'relays rebound while running')
    }
    return effects.find((e): e is Extract<Effect, { type: 'record' }> => e.type === 'record' && e.record.type === 'config.applied')?.record
  }

  // ---------------------------------------------------------------- the wiring cross-check

  private checking: { controller: AbortController; progress: CrossCheckProgress; who: string; startedAt: number } | undefined
  private crossCheckReports: CrossCheckReports | undefined

  /** Where the cross-check's reports are kept (storage.dir/crosscheck). */
  get crossChecks(): CrossCheckReports {
    this.crossCheckReports ??= new CrossCheckReports(this.config.storage.dir)
    return this.crossCheckReports
  }

  /** The check running now, if one is. */
  crossCheckRunning(): { progress: CrossCheckProgress; who: string; startedAt: number } | undefined {
    if (!this.checking) return undefined
    const { progress, who, startedAt } = this.checking
    return { progress: { ...progress }, who, startedAt }
  }

  /** Why a cross-check cannot begin now, or undefined when it can. */
  crossCheckBlocker(): string | undefined {
    if (!this.site || !this.state?.gateway.running || this.stopping || this.closed) return 'the site is not running'
    if (this.halted) return `the daemon is halted (${this.halted.message})`
    if (this.checking) return `a cross-check is already running (started by ${this.checking.who})`
    const open = Object.keys(this.state.outlets).filter((id) => this.state.outlets[id]!.session !== null)
    if (open.length > 0) return `sessions are open on ${open.join(', ')}: the cross-check switches every relay, so it runs only with none open`
    if (!this.config.outlets.some((o) => o.relay !== undefined)) return 'no outlet has a relay to switch'
    return undefined
  }

  /** The wiring in force (core/crosscheck.ts wiringOf), hashed: what a passed report must match. */
  wiringHash(): string {
    return wiringHash(this.config)
  }

  /**
   * Begins the wiring cross-check: the engine makes every idle outlet unavailable and refuses
   * starts while it runs (one step, journaled like any other), then one relay at a time is
   * closed and opened again. Resolves once it has begun; `done` resolves with the saved report
   * (also when cancelled). Throws CROSS_CHECK_REFUSED, changing nothing, when it cannot begin.
   */
  async beginCrossCheck(
    who: string,
    configVersion: string | null,
    opts: { polls?: number; pollMs?: number } = {},
  ): Promise<{ done: Promise<CrossCheckReport> }> {
    const blocker = this.crossCheckBlocker()
    if (blocker) throw new OutpostError('CROSS_CHECK_REFUSED', blocker)
    const controller = new AbortController()
    this.checking = { controller, progress: { done: 0, total: 0 }, who, startedAt: this.clock.now() }
    try {
      await this.dispatch({ type: 'cross-check', running: true })
      // A start that won the race with the check's step has a session now: leave it alone.
      const raced = Object.keys(this.state.outlets).filter((id) => this.state.outlets[id]!.session !== null)
      if (raced.length > 0) throw new OutpostError('CROSS_CHECK_REFUSED', `a session opened on ${raced.join(', ')} as the check began`)
      await this.relaysSettled()
    } catch (err) {
      this.checking = undefined
      await this.dispatch({ type: 'cross-check', running: false }).catch(() => undefined)
      throw err
    }
    this.log.info({ who }, 'wiring cross-check begins: the relays are switched one at a time, no session starts until it ends')
    const config = this.config
    const done = runCrossCheck({
      site: this.site!,
      config,
      now: () => this.clock.now(),
      who,
      configVersion,
      polls: opts.polls,
      pollMs: opts.pollMs,
      signal: controller.signal,
      onProgress: (p) => {
        if (this.checking) this.checking.progress = p
      },
    })
      .then(async (report) => {
        await this.crossChecks.save(report)
        this.log.info(
          {
            id: report.id,
            passed: report.passed,
            cancelled: report.cancelled,
            findings: report.findings.filter((f) => f.severity !== 'ok').map((f) => f.kind),
          },
          'wiring cross-check ended',
        )
        return report
      })
      .finally(async () => {
        this.checking = undefined
        if (!this.closed && !this.halted) await this.dispatch({ type: 'cross-check', running: false }).catch(() => undefined)
      })
    done.catch((err: Error) => this.log.error({ err: err.message }, 'wiring cross-check failed'))
    return { done }
  }

  /** Cancels the check running now (its relay is opened, the report says cancelled); false when none runs. */
  cancelCrossCheck(): boolean {
    if (!this.checking) return false
    this.checking.controller.abort()
    return true
  }

  /** The outlets whose relay `next` changes (they must have no session for it to apply now). */
  private rewiredBy(next: SiteConfig): string[] {
    return next.outlets
      .filter((o) => {
        const was = this.config.outlets.find((x) => x.id === o.id)
        // The same comparison the config diff makes (key order aside): a hand edit that only reorders keys rewires nothing.
        return was !== undefined && diffPointers(was.relay ?? null, o.relay ?? null).length > 0
      })
      .map((o) => o.id)
  }

  /** The outlets whose relay `next` changes while they have a session: such a config cannot apply now. */
  rewiredDuringSession(next: SiteConfig): string[] {
    return this.rewiredBy(next).filter((id) => this.state.outlets[id]?.session)
  }

  // ---------------------------------------------------------------- views

  /**
   * Every outlet's status as of now, in config order, derived from the engine's state (so an
   * idle outlet shows its last reading, not the last session's current); [] before start.
   */
  outletStatuses(): OutletStatus[] {
    if (!this.state) return []
    const byId = new Map(outletStatuses(this.state, this.clock.now()).map((s) => [s.outlet, s]))
    return this.config.outlets.map((o) => byId.get(o.id)).filter((s): s is OutletStatus => s !== undefined)
  }

  /** Every circuit's load against its limit and who waits, in config order; [] before start. */
  circuitStatuses(): CircuitStatus[] {
    if (!this.state) return []
    return circuitStatuses(this.state, this.clock.now())
  }

  get engineState(): EngineState {
    return this.state
  }

  /** The gateway's public key (SPKI PEM) once started: what gateway.started and P/status announce. */
  get publicKey(): string | undefined {
    return this.key?.publicKeyPem
  }

  get records(): Journal | undefined {
    return this.journal
  }

  get buses(): SiteIO | undefined {
    return this.site
  }

  /** The link to the central system, when OCPP is configured and its charge point started. */
  ocppState(): OcppState | undefined {
    return this.ocpp?.state()
  }

  uplinkState(): UplinkState {
    if (this.uplink) return this.uplink.state()
    if (!this.journal) throw new OutpostError('DAEMON_NOT_STARTED', 'the daemon is not started')
    return disabledUplinkState(this.journal)
  }

  // ---------------------------------------------------------------- events in

  private poll(outletId: string, final = false): Promise<void> {
    if (!this.site || this.halted || this.closed || (this.stopping && !final)) return Promise.resolve()
    const inflight = this.reading.get(outletId)
    if (inflight) return inflight
    const p = this.readOnce(outletId).finally(() => this.reading.delete(outletId))
    this.reading.set(outletId, p)
    return p
  }

  /**
   * A change the device pushed (Shelly NotifyStatus): read now, or once more right after the
   * read in flight, whose reply may predate the change (joining it would miss an unplug until
   * the next poll).
   */
  private pollFresh(outletId: string): void {
    const inflight = this.reading.get(outletId)
    if (!inflight) {
      void this.poll(outletId)
      return
    }
    if (this.rereads.has(outletId)) return
    this.rereads.add(outletId)
    void inflight.finally(() => {
      this.rereads.delete(outletId)
      void this.poll(outletId)
    })
  }

  /** Outlets with a pushed change waiting for the read in flight to end. */
  private readonly rereads = new Set<string>()

  private async readOnce(outletId: string): Promise<void> {
    if (!this.site) return
    try {
      let event: EngineEvent
      try {
        const reading: Reading = await this.site.outlet(outletId).read()
        this.quiet.clear(`read:${outletId}`, { outlet: outletId }, 'meter answering again')
        event = { type: 'reading', outlet: outletId, reading }
      } catch (err) {
        const e = err as { code?: string; message: string }
        this.quiet.warn(`read:${outletId}`, { outlet: outletId, code: e.code, err: e.message }, 'meter read failed')
        event = { type: 'read-failed', outlet: outletId, error: `${e.code ?? 'ERROR'}: ${e.message}` }
      }
      await this.dispatch(event)
      this.retryRelay(outletId)
    } catch {
      // dispatch already logged and halted if the journal failed
    }
  }

  /** The feeder meter read in flight per circuit: one at a time. */
  private readonly feederReading = new Map<string, Promise<void>>()

  /** One sample of a circuit's feeder meter, stepped like an outlet's reading (a failure counts toward its failsafe). */
  private pollFeeder(circuit: string): Promise<void> {
    if (!this.site || this.halted || this.closed || this.stopping) return Promise.resolve()
    const inflight = this.feederReading.get(circuit)
    if (inflight) return inflight
    const site = this.site
    const p = (async () => {
      let event: EngineEvent
      try {
        const reading = await site.feeder(circuit).read()
        this.quiet.clear(`feeder:${circuit}`, { circuit }, 'feeder meter answering again')
        event = { type: 'circuit-reading', circuit, reading }
      } catch (err) {
        const e = err as { code?: string; message: string }
        this.quiet.warn(`feeder:${circuit}`, { circuit, code: e.code, err: e.message }, 'feeder meter read failed')
        event = { type: 'circuit-read-failed', circuit, error: `${e.code ?? 'ERROR'}: ${e.message}` }
      }
      await this.dispatch(event).catch(() => undefined)
    })().finally(() => this.feederReading.delete(circuit))
    this.feederReading.set(circuit, p)
    return p
  }

  /** Reads every outlet (and feeder meter) once, waiting at most `ms` (a read still on the wire then carries on in the background). */
  private async readAll(ms: number): Promise<void> {
    const feeders = this.site ? this.site.feederIds().map((c) => this.pollFeeder(c)) : []
    const all = Promise.all([...this.config.outlets.map((o) => this.poll(o.id)), ...feeders])
    const answered = await withTimeout(all, ms, stopTimeout(ms)).then(
      () => true,
      () => false,
    )
    const waiting = this.config.outlets
      .filter((o) => !this.state.outlets[o.id]?.fresh && this.state.outlets[o.id]?.meterFault === null)
      .map((o) => o.id)
    if (!answered || waiting.length > 0)
      this.log.warn(
        { outlets: waiting, waitedMs: ms },
        'not every meter answered at start; continuing (a start for those outlets waits for their first reading)',
      )
  }

  private async applyCommand(id: string, command: Command, source: CommandSource, held: () => void = () => undefined): Promise<CommandResult> {
    // A start at the gateway while the central system is away: OCPP's offline authorization decides first (docs/ocpp.md).
    if (command.action === 'start' && source !== 'ocpp' && this.ocpp) {
      const a = this.ocpp.admitStart(command.userId)
      // Through the engine all the same: the refusal is journaled and kept for its id like any other.
      if (!a.ok) return this.applyNow(id, command, source, { code: 'not-authorized', message: a.message })
    }
    if (this.refusedOnlyForReading(id, command, source)) {
      held()
      const outlet = (command as { outlet: string }).outlet
      this.log.info({ id, outlet, action: command.action, source }, 'command held until its outlet is read')
      const why = await this.holdForReading(outlet)
      this.log.info({ id, outlet, why }, 'held command let go')
      if (why === 'stopping') {
        return new Promise<CommandResult>((resolve, reject) => {
          this.atShutdown.push({ run: () => this.applyNow(id, command, source).then(resolve, reject), fail: reject })
        })
      }
      // The engine declares a meter that stayed silent meterFaultMs in fault on a tick: make sure it has had one.
      if (why === 'timeout') await this.dispatch({ type: 'tick' }).catch(() => undefined)
    }
    return this.applyNow(id, command, source)
  }

  /**
   * Whether the engine, as things stand, would refuse this command `outlet-not-ready`: its
   * outlet has not had a good reading since boot. Asks the (pure) engine itself, so a command
   * refused for any other reason is answered at once, and no rule is repeated here.
   */
  private refusedOnlyForReading(id: string, command: Command, source: CommandSource): boolean {
    // Only a start needs a reading (it bills from the register as it is now).
    if (command.action !== 'start' || !this.state || this.halted || this.stopping || this.closed) return false
    try {
      const { effects } = step(this.state, { type: 'command', id, source, command }, this.clock.now())
      const r = effects.find((e): e is Extract<Effect, { type: 'result' }> => e.type === 'result')?.result
      return r !== undefined && !r.ok && r.error.code === 'outlet-not-ready'
    } catch {
      return false
    }
  }

  /**
   * Resolves once `outlet` has been stepped into a state where a command no longer waits for
   * it (read, in fault, or the gateway not running), or the daemon stops or halts, or
   * meterFaultMs has passed (by then the engine has declared the silent meter in fault).
   */
  private holdForReading(outlet: string): Promise<Release> {
    return new Promise<Release>((resolve) => {
      const h: HeldCommand = {
        outlet,
        release: (why) => {
          if (!this.held.delete(h)) return
          clearTimeout(timer)
          resolve(why)
        },
      }
      const timer = setTimeout(() => h.release('timeout'), this.config.sessions.meterFaultMs)
      this.held.add(h)
    })
  }

  private releaseHeld(why: Release, state?: EngineState): void {
    for (const h of [...this.held]) {
      if (state) {
        const e = state.outlets[h.outlet]
        if (e && !e.fresh && e.meterFault === null && state.gateway.running) continue
      }
      h.release(why)
    }
  }

  private async applyNow(
    id: string,
    command: Command,
    source: CommandSource,
    refused?: { code: CommandErrorCode; message: string },
  ): Promise<CommandResult> {
    const effects = await this.dispatch({ type: 'command', id, source, command, ...(refused ? { refused } : {}) })
    const result = effects.find((e): e is Extract<Effect, { type: 'result' }> => e.type === 'result')
    if (!result) throw new OutpostError('ENGINE_NO_RESULT', `the engine gave no result for command ${id}`)
    return result.result
  }

  // ---------------------------------------------------------------- the one step

  /** Runs one engine step and carries out its effects, strictly one event at a time. */
  dispatch(event: EngineEvent): Promise<Effect[]> {
    const run = this.queue.then(() => this.stepNow(event))
    this.queue = run.catch(() => undefined)
    return run
  }

  /** Relay commands on their way to the hardware: a stop waits for them. */
  private readonly relayOps = new Set<Promise<void>>()

  private relaysSettled(): Promise<unknown> {
    return Promise.all([...this.relayOps])
  }

  private async stepNow(event: EngineEvent): Promise<Effect[]> {
    if (this.halted) throw this.halted
    if (this.closed) throw new OutpostError('DAEMON_STOPPED', `the daemon has stopped; ${event.type} ignored`)
    const journal = this.journal
    if (!journal) throw new OutpostError('DAEMON_NOT_STARTED', 'the daemon is not started')
    let result: { state: EngineState; effects: Effect[] }
    const now = this.clock.now()
    try {
      result = step(this.state, event, now)
    } catch (err) {
      // A malformed event changes nothing; say so once and carry on with the others.
      this.quiet.warn(
        `engine:${event.type}`,
        { event: event.type, code: (err as { code?: string }).code, err: (err as Error).message },
        'engine refused an event',
      )
      throw err
    }
    const { state, effects } = result

    // 1. Opening relays is always safe: do it before anything else.
    for (const e of effects) if (e.type === 'relay' && !e.closed) this.switchRelay(e.outlet, false)

    // 2. Make the step durable: records, state and command results in one batch.
    const records: RecordBody[] = []
    const commandResults: { id: string; result: CommandResult }[] = []
    for (const e of effects) {
      if (e.type === 'record') records.push(e.record)
      else if (e.type === 'result') commandResults.push({ id: e.result.id, result: e.result })
    }
    // The reading a session is billed from is journaled beside the state that uses it, with the
    // `now` it was stepped at: boot replays it from there if the process dies before the checkpoint.
    const session = event.type === 'reading' ? state.outlets[event.outlet]?.session : undefined
    const readings = event.type === 'reading' && session ? [{ outlet: event.outlet, sessionId: session.id, reading: event.reading, now }] : undefined
    // A reading's state change is rebuilt from the journaled readings (or, for an idle outlet, is
    // read again at the next poll): it waits for the journal's checkpoint. Any other change is written now.
    // A feeder reading is the same: boot starts every feeder's silence timer afresh.
    const checkpoint = event.type !== 'reading' && event.type !== 'circuit-reading' && state !== this.state
    let committed: JournalRecord[]
    try {
      committed = await journal.commit({ records, state, commandResults, readings, checkpoint })
    } catch (err) {
      this.halt(err as Error)
      throw err
    }
    this.state = state
    if (readings)
      this.log.debug(
        { outlet: readings[0]!.outlet, sessionId: readings[0]!.sessionId, ts: readings[0]!.reading.ts, energyWh: readings[0]!.reading.energyWh },
        'reading journaled',
      )

    // 3. Only now may a relay close: the session it bills is on disk (and, break-before-make,
    // once the opens already sent are carried out).
    for (const e of effects) if (e.type === 'relay' && e.closed) this.closeRelay(e.outlet)

    // 4. Tell the world. The step is committed: nothing here may fail it (emit is guarded).
    for (const r of committed) {
      this.logRecord(r)
      this.emit('record', r)
    }
    for (const e of effects) {
      if (e.type === 'status') {
        try {
          this.uplink?.publishOutlet(e.status)
        } catch (err) {
          this.quiet.warn('publish:status', { outlet: e.status.outlet, err: (err as Error).message }, 'publishing an outlet status failed')
        }
        this.emit('status', e.status)
      } else if (e.type === 'result') {
        this.emit('result', e.result)
      }
    }
    if (this.held.size > 0) this.releaseHeld('ready', state)
    return effects
  }

  /** Listener ids for the guarded emit's log keys (one key per listener and event). */
  private readonly listenerIds = new WeakMap<object, number>()
  private nextListenerId = 1

  /**
   * Calls every listener even when one throws: the daemon's events report steps already
   * committed, so a listener's failure is logged (at most once a minute per listener and
   * event) and never reaches the step, the other listeners, the publishes or relay retries.
   */
  override emit<K extends keyof DaemonEvents>(event: K, ...args: DaemonEvents[K]): boolean {
    const listeners = this.rawListeners(event) as ((...a: unknown[]) => unknown)[]
    for (const l of listeners) {
      try {
        l.apply(this, args)
      } catch (err) {
        let n = this.listenerIds.get(l)
        if (n === undefined) {
          n = this.nextListenerId++
          this.listenerIds.set(l, n)
        }
        this.quiet.warn(
          `listener:${String(event)}:${n}`,
          { event, listener: n, err: (err as Error)?.message ?? String(err) },
          'a daemon event listener threw; the others still run',
        )
      }
    }
    return listeners.length > 0
  }

  private readonly relayRetryAt = new Map<string, number>()

  /**
   * A relay in fault is commanded again (to what the engine last commanded: open, for a
   * faulted outlet) every few seconds; the first success clears the fault (relay-ok).
   */
  private retryRelay(outletId: string): void {
    const entry = this.state.outlets[outletId]
    if (!entry?.relayFault || !entry.hasRelay) return
    const t = this.clock.monotonic()
    if ((this.relayRetryAt.get(outletId) ?? 0) > t) return
    this.relayRetryAt.set(outletId, t + 5000)
    this.switchRelay(outletId, entry.relayClosed)
  }

  /** Relay opens sent and not yet carried out: a close waits for them (break-before-make). */
  private readonly opening = new Set<Promise<void>>()

  private closeRelay(outletId: string): void {
    if (this.opening.size === 0) {
      this.switchRelay(outletId, true)
      return
    }
    const work = Promise.allSettled([...this.opening]).then(() => {
      // Still wanted closed? A later step (a stop, a fault, the next turn) may have opened it meanwhile.
      if (this.halted || this.closed || this.state.outlets[outletId]?.relayClosed !== true) return
      this.switchRelay(outletId, true)
    })
    this.relayOps.add(work)
    void work.finally(() => this.relayOps.delete(work))
  }

  private switchRelay(outletId: string, closed: boolean): void {
    const site = this.site
    if (!site) return
    const io = site.outlet(outletId)
    if (!io.hasRelay) return
    const work = io.setRelay(closed).then(
      () => {
        this.quiet.clear(`relay:${outletId}`, { outlet: outletId }, 'relay answering again')
        if (this.state.outlets[outletId]?.relayFault && !this.halted && !this.stopping) {
          void this.dispatch({ type: 'relay-ok', outlet: outletId }).catch(() => undefined)
        }
      },
      (err: OutpostError) => {
        this.quiet.warn(`relay:${outletId}`, { outlet: outletId, closed, code: err.code, err: err.message }, 'relay command failed')
        if (!this.halted && !this.stopping)
          void this.dispatch({ type: 'relay-failed', outlet: outletId, error: `${err.code ?? 'ERROR'}: ${err.message}` }).catch(() => undefined)
      },
    )
    this.relayOps.add(work)
    void work.finally(() => this.relayOps.delete(work))
    if (!closed) {
      this.opening.add(work)
      void work.finally(() => this.opening.delete(work))
    }
  }

  /** The journal cannot write: nothing may be billed, so every relay opens and the daemon stops charging. */
  private halt(err: Error): void {
    if (this.halted || this.closed) return
    this.halted = err
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    this.log.fatal(
      { err: err.message, code: (err as { code?: string }).code },
      'journal write failed: opening every relay, no charging until restart',
    )
    for (const o of this.config.outlets) if (o.relay) this.switchRelay(o.id, false)
    this.releaseHeld('halted')
    this.emit('halted', err)
  }

  get haltedBy(): Error | undefined {
    return this.halted
  }

  private logRecord(r: JournalRecord): void {
    switch (r.type) {
      case 'session.started':
        this.log.info({ seq: r.seq, outlet: r.outlet, sessionId: r.sessionId, userId: r.userId, trigger: r.trigger }, 'session started')
        break
      case 'session.ended':
        this.log.info(
          {
            seq: r.seq,
            outlet: r.outlet,
            sessionId: r.sessionId,
            reason: r.reason,
            energyWh: r.energyWh,
            durationS: r.durationS,
            total: r.total,
            currency: r.currency,
          },
          'session ended',
        )
        break
      case 'outlet.fault':
        this.log.warn({ seq: r.seq, outlet: r.outlet, detail: r.detail }, 'outlet in fault')
        break
      case 'outlet.recovered':
        this.log.info({ seq: r.seq, outlet: r.outlet, detail: r.detail }, 'outlet recovered')
        break
      case 'gateway.started':
        this.log.info({ seq: r.seq, cleanShutdown: r.cleanShutdown }, 'gateway started')
        break
      case 'session.queued':
        this.log.info({ seq: r.seq, outlet: r.outlet, sessionId: r.sessionId, circuit: r.circuit, why: r.why }, 'session queued')
        break
      case 'session.resumed':
        this.log.info({ seq: r.seq, outlet: r.outlet, sessionId: r.sessionId, circuit: r.circuit, waitedS: r.waitedS }, 'session resumed')
        break
      case 'config.applied':
        this.log.info({ seq: r.seq, who: r.who, configHash: r.configHash, changed: r.changed, pendingOutlets: r.pendingOutlets }, 'config applied')
        break
      default:
        this.log.debug({ seq: r.seq, type: r.type }, 'record')
    }
  }
}

/** What a part that does not stop in time rejects with. */
const stopTimeout = (ms: number) => (): Error => new OutpostError('STOP_TIMEOUT', `did not finish within ${ms} ms`)
