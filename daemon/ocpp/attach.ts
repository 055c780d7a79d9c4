/**
 * OCPP's place in the composed daemon: the charge point built from the site config, fed
 * the engine's view of every outlet, wired to the command gateway (source `ocpp`) and to
 * the daemon's status events, and started, reset and stopped at the points the
 * composition root calls it.
 *
 * Owns: building the charge point and attaching it to the journal (before the boot step,
 * so every session the boot closes becomes a StopTransaction), each outlet's view for
 * OCPP (OutletView, derived from the engine's state and statuses), starting it after the
 * boot read, a central system's reset (a Hard one skips the drain at stop), the drain at
 * stop, the state the local API and metrics show, and OCPP's say on a start at the gateway
 * (offline authorization).
 *
 * Must never: hold anything billable (the journal does), throw into the daemon (a charge
 * point that cannot attach or start is logged and left out: charging and the MQTT uplink
 * go on without it), or step the engine other than through the command gateway.
 */
import type { CommandResult, OutletStatus, SiteConfig } from '../../core/types.js'
import type { EngineState } from '../engine/index.js'
import type { Journal } from '../journal/index.js'
import type { Logger } from '../log.js'
import { ChargePoint, type OutletView } from './chargepoint.js'

/** What the charge point needs of the daemon it is composed into. */
export interface OcppHost {
  config: SiteConfig
  version: string
  journal: Journal
  logger: Logger
  now(): number
  /** The engine's state as last committed. */
  engineState(): EngineState
  /** Every outlet's status as of now, config order. */
  outletStatuses(): OutletStatus[]
  /** A command through the command gateway (source `ocpp`). */
  command(cmd: Record<string, unknown>): Promise<CommandResult>
  /** The central system asked for a reset: the daemon stops cleanly (systemd starts it again). */
  reset(kind: 'Soft' | 'Hard'): void
  /** Subscribes to the daemon's outlet status events. */
  onStatus(listener: () => void): void
}

/** The state of the link to the central system, as the local API and the metrics show it. */
export type OcppState = ReturnType<ChargePoint['state']>

/** How long a clean stop lets the shutdown step's StopTransactions drain to the central system. */
const DRAIN_MS = 3000

export class OcppLink {
  /** A Hard reset from the central system: the clean stop does not wait for the outbox to drain. */
  private hardReset = false

  private constructor(
    private readonly cp: ChargePoint,
    private readonly log: Logger,
  ) {}

  /**
   * The charge point of `host.config.ocpp`, attached to the journal: call before the boot step.
   * Undefined (logged) when it cannot attach; the site then charges without OCPP.
   */
  static async attach(host: OcppHost): Promise<OcppLink | undefined> {
    try {
      let link: OcppLink | undefined
      const cp = new ChargePoint({
        // Read at each use: a config applied while the daemon runs (the session timings) reaches the charge point.
        get config() {
          return host.config
        },
        version: host.version,
        journal: host.journal,
        logger: host.logger,
        now: host.now,
        outlets: () => outletViews(host.config, host.engineState(), host.outletStatuses()),
        command: host.command,
        reset: (kind) => {
          if (link) link.hardReset = kind === 'Hard'
          host.reset(kind)
        },
      })
      await cp.attach()
      link = new OcppLink(cp, host.logger)
      host.onStatus(() => cp.onStatus())
      return link
    } catch (err) {
      logCannotStart(host.logger, err)
      return undefined
    }
  }

  /** Connects to the central system (after the boot read, so that an accepted boot means ready). False (logged) when it cannot. */
  start(): boolean {
    try {
      this.cp.start()
      return true
    } catch (err) {
      logCannotStart(this.log, err)
      return false
    }
  }

  state(): OcppState {
    return this.cp.state()
  }

  /** Whether a start at the gateway for `userId` may go ahead as far as OCPP is concerned (offline authorization). */
  admitStart(userId: string): { ok: true } | { ok: false; message: string } {
    return this.cp.admitStart(userId)
  }

  /** After the daemon's last step: the shutdown's StopTransactions get a few seconds, unless reset Hard or halted (then they go after the restart). */
  stop(opts: { halted: boolean }): Promise<void> {
    return this.cp.stop(this.hardReset || opts.halted ? 0 : DRAIN_MS).catch(() => undefined)
  }
}

/** What the charge point sees of each outlet, config order: the engine's session and faults, the status's state and current. */
export function outletViews(config: SiteConfig, state: EngineState, statuses: OutletStatus[]): OutletView[] {
  const byId = new Map(statuses.map((s) => [s.outlet, s]))
  return config.outlets.map((o) => {
    const e = state.outlets[o.id]
    const s = byId.get(o.id)
    const last = e?.last
    return {
      id: o.id,
      state: s?.state ?? 'off',
      ...(e?.session
        ? {
            sessionId: e.session.id,
            sessionStartedAt: e.session.startedAt,
            sessionTrigger: e.session.trigger,
            userId: e.session.userId,
            sessionEnergyWh: s?.energyWh ?? 0,
          }
        : {}),
      ...(e?.limitA !== undefined ? { limitA: e.limitA } : {}),
      currentA: s?.currentA ?? 0,
      meterFault: e?.meterFault ?? null,
      relayFault: e?.relayFault ?? null,
      last: last ? { ts: last.ts, currentA: last.currentA, powerW: last.powerW, energyWh: last.mWh / 1000, voltageV: last.voltageV } : null,
    }
  })
}

function logCannotStart(log: Logger, err: unknown): void {
  log.error({ code: (err as { code?: string }).code, err: (err as Error).message }, 'ocpp cannot start; charging and the uplink continue without it')
}
