/**
 * The charge point in this process, on a real journal (LevelDB in a temporary folder) and
 * an injected clock, against the strict central system of test/helpers/csms.ts: for what
 * is about time (meter value intervals) and about what the outbox keeps, without a site
 * peer or a daemon. Sessions are journal records committed by the test, as the engine
 * commits them; the outlets' view (state, session, last reading) is set by the test.
 *
 * Owns: the clock (`advance` moves it and lets the charge point look at it), the outlet
 * views, the log lines, and the commands the charge point sent.
 *
 * Must never: step the charge point's timers in real time for what the clock decides
 * (its clock work runs on `tick()`), or leave the journal open after its test.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import type { CommandResult, OutletState, Reading, SiteConfig } from '../../core/types.js'
import { validateConfig } from '../../daemon/config.js'
import { Journal } from '../../daemon/journal/index.js'
import { createLogger } from '../../daemon/log.js'
import { ChargePoint, type OutletView } from '../../daemon/ocpp/chargepoint.js'
import { siteConfig } from '../engine-fixtures.js'
import { ended } from '../fixtures/journal-workload.js'
import type { Csms } from './csms.js'
import { waitFor } from './e2e-kit.js'

interface Teardownable {
  teardown(fn: () => unknown): void
}

export interface RigOptions {
  /** The journal's folder (a second rig on the same folder is a restart). */
  dir?: string
  /** Extra fields of the `ocpp` section. */
  ocpp?: Record<string, unknown>
  /** Start of the clock (ms since the epoch). */
  at?: number
  /** Called after each command the charge point sent has been applied (a crash test kills the process here). */
  onCommand?: (cmd: Record<string, unknown>) => void
}

export interface LogLine {
  level: string
  msg: string
  [k: string]: unknown
}

export class OcppRig {
  now: number
  readonly views: OutletView[]
  readonly commands: Record<string, unknown>[] = []
  readonly lines: LogLine[] = []
  cp!: ChargePoint
  journal!: Journal
  private seq = 0

  private constructor(
    readonly dir: string,
    readonly config: SiteConfig,
    at: number,
  ) {
    this.now = at
    this.views = config.outlets.map((o) => ({ id: o.id, state: 'off', currentA: 0, meterFault: null, relayFault: null, last: null }))
  }

  static async open(t: Teardownable, csms: Csms, opts: RigOptions = {}): Promise<OcppRig> {
    const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'outpost-ocpp-rig-'))
    if (!opts.dir) t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    const base = JSON.parse(JSON.stringify(siteConfig())) as Record<string, unknown>
    const v = validateConfig({
      ...base,
      // The charge point keeps its certificates under storage.dir (ocpp-security/).
      storage: { ...(base.storage as object), dir: join(dir, 'storage') },
      ocpp: {
        url: csms.url,
        identity: 'outpost-rig',
        reconnectMaxMs: 1000,
        callTimeoutS: 10,
        meterValueSampleS: 0,
        clockAlignedDataS: 0,
        ...opts.ocpp,
      },
    })
    if (!v.ok) throw new Error(JSON.stringify(v.problems))
    const rig = new OcppRig(dir, v.config, opts.at ?? Date.parse('2026-06-10T12:00:00.000Z'))
    rig.onCommand = opts.onCommand
    rig.journal = await Journal.open(join(dir, 'journal'), {
      bootId: `rig-${Date.now()}`,
      clockSynced: () => true,
      now: () => rig.now,
      compactEveryMs: 0,
      readingSyncMs: 0,
    })
    const sink = new Writable({
      write(chunk, _enc, cb) {
        for (const l of String(chunk).split('\n')) if (l.trim()) rig.lines.push(JSON.parse(l) as LogLine)
        cb()
      },
    })
    rig.cp = new ChargePoint({
      config: rig.config,
      version: 'rig',
      journal: rig.journal,
      logger: createLogger('debug', sink),
      now: () => rig.now,
      outlets: () => rig.views,
      command: (cmd) => rig.command(cmd),
      reset: () => undefined,
      manualClock: true,
    })
    await rig.cp.attach()
    rig.cp.start()
    let closed = false
    rig.close = async () => {
      if (closed) return
      closed = true
      await rig.cp.stop(0)
      await rig.journal.close({ clean: true })
    }
    t.teardown(() => rig.close())
    return rig
  }

  close: () => Promise<void> = async () => undefined
  private onCommand: ((cmd: Record<string, unknown>) => void) | undefined

  /** What the rig answers the charge point's commands: a stop ends the outlet's session at the current reading. */
  private async command(cmd: Record<string, unknown>): Promise<CommandResult> {
    this.commands.push(cmd)
    if (cmd.action === 'stop') {
      const o = this.views.find((v) => v.id === cmd.outlet)
      if (!o?.sessionId) return { ok: false, error: { code: 'no-session', message: 'no session' } } as unknown as CommandResult
      await this.end(o.id, 'manager-stopped')
    }
    this.onCommand?.(cmd)
    return { ok: true } as unknown as CommandResult
  }

  /** Moves the clock and lets the charge point act on it. */
  async advance(ms: number): Promise<void> {
    this.now += ms
    this.cp.tick()
    await this.cp.idle()
  }

  reading(outlet: string, energyWh: number, extra: Partial<Reading> = {}): Reading {
    const o = this.view(outlet)
    const r: Reading = { ts: this.now, currentA: 16, powerW: 3680, energyWh, voltageV: 230, ...extra }
    o.last = r
    return r
  }

  view(outlet: string): OutletView {
    const o = this.views.find((v) => v.id === outlet)
    if (!o) throw new Error(`no outlet ${outlet}`)
    return o
  }

  private readonly meterStart = new Map<string, number>()

  /** A session.started record, as the engine commits it, and the outlet charging. */
  async start(outlet: string, userId: string, meterWh: number): Promise<string> {
    const sessionId = `s-${++this.seq}-${outlet}`
    const ts = new Date(this.now).toISOString()
    const o = this.view(outlet)
    o.state = 'charging' satisfies OutletState
    o.sessionId = sessionId
    o.sessionStartedAt = this.now
    o.sessionEnergyWh = 0
    this.meterStart.set(sessionId, meterWh)
    this.reading(outlet, meterWh)
    await this.journal.commit({
      records: [{ type: 'session.started', ts, sessionId, outlet, userId, planId: 'standard', trigger: 'activation', meterWh }],
      readings: [{ outlet, sessionId, reading: o.last! }],
    })
    return sessionId
  }

  /** A journaled reading of the outlet's session (the engine's step). */
  async step(outlet: string, energyWh: number, extra: Partial<Reading> = {}): Promise<void> {
    const o = this.view(outlet)
    const r = this.reading(outlet, energyWh, extra)
    // The session's energy as the engine bills it (the rig's meter never lies).
    if (o.sessionId) o.sessionEnergyWh = energyWh - (this.meterStart.get(o.sessionId) ?? energyWh)
    await this.journal.commit({ records: [], readings: o.sessionId ? [{ outlet, sessionId: o.sessionId, reading: r }] : [] })
  }

  /** A session.ended record at the outlet's last reading, and the outlet off. */
  async end(outlet: string, reason: 'unplugged' | 'manager-stopped' | 'power-loss' = 'unplugged'): Promise<void> {
    const o = this.view(outlet)
    const sessionId = o.sessionId!
    const recs = await this.journal.read(1, 100_000)
    const started = recs.find((r) => r.type === 'session.started' && r.sessionId === sessionId) as { ts: string; meterWh: number; userId: string }
    const session = { id: sessionId, userId: started.userId, startedAt: Date.parse(started.ts), meterStartWh: started.meterWh, lastTs: 0, lastWh: 0 }
    await this.journal.commit({ records: [ended(outlet, session, reason, this.now, o.last!.energyWh, this.now)] })
    o.state = 'off'
    delete o.sessionId
    delete o.sessionStartedAt
    delete o.sessionEnergyWh
  }

  /** Waits until the charge point's boot is accepted. */
  async online(): Promise<void> {
    await waitFor(() => this.cp.state().accepted, 'the rig charge point accepted')
  }
}
