/**
 * A fleet of simulated gateways for the ingest tests and benchmark: each site an
 * in-memory RecordLog whose records are sealed by the journal's own sealing code
 * (daemon/journal/chain.ts sealRecord: the same seq, prev, bootId and hash a real
 * journal writes), with the real Uplink forwarding them over MQTT. Sites have
 * sessions (session.started, session.ended), meter reconciliations, restarts (a
 * new bootId and a gateway.started) and outages (the uplink stopped while records
 * are appended).
 *
 * Owns: the simulated sites' logs and uplinks, and a seeded generator of their activity.
 * Must never: make a record any other way than the journal's sealing (sealRecordText), or drop an unacked record.
 */
import type { CommandResult, JournalRecord, RecordBody, RecordLog, UplinkConfig } from '../../core/types.js'
import { GENESIS_PREV, sealRecordText } from '../../daemon/journal/chain.js'
import { Uplink } from '../../daemon/uplink/uplink.js'
import { mulberry32 } from '../../core/prng.js'

/** The project's seeded generator (core/prng.ts), so a failing run can be replayed. */
export const rng = mulberry32

export class FleetLog implements RecordLog {
  readonly records: JournalRecord[] = []
  private ackedSeq = 0
  private readonly listeners = new Set<(head: number) => void>()
  /** Every ack the site received, in order (from the cloud, through the Uplink). */
  readonly acks: number[] = []
  bootId = 'boot-0'

  head(): number {
    return this.records.length
  }
  acked(): number {
    return this.ackedSeq
  }
  oldest(): number {
    return 1
  }
  async read(from: number, limit: number): Promise<JournalRecord[]> {
    await new Promise((r) => setImmediate(r))
    return this.records.slice(from - 1, from - 1 + limit)
  }
  async ack(upTo: number): Promise<void> {
    const v = Math.min(upTo, this.head())
    this.acks.push(upTo)
    if (v > this.ackedSeq) this.ackedSeq = v
  }
  onAppend(listener: (head: number) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }
  append(bodies: RecordBody[]): JournalRecord[] {
    const out: JournalRecord[] = []
    for (const b of bodies) {
      const prev = this.records.length === 0 ? GENESIS_PREV : this.records[this.records.length - 1]!.hash
      // As the journal hands records to the uplink: parsed back from the stored text (canonical key order, hash last).
      const r = JSON.parse(sealRecordText(b, this.records.length + 1, prev, this.bootId, true).text) as JournalRecord
      this.records.push(r)
      out.push(r)
    }
    for (const l of this.listeners) l(this.head())
    return out
  }
}

export interface FleetSiteOptions {
  url: string
  prefix?: string
  uplink?: Partial<UplinkConfig>
  ackTimeoutMs?: number
  /** The site's clock: records' ts (outages can be "an hour" long without waiting one). */
  clock?: () => number
}

/** One simulated gateway: its log, its uplink (restartable), and its activity. */
export class FleetSite {
  readonly log = new FleetLog()
  private uplink?: Uplink
  private boots = 0
  private sessions = 0
  private open: { sessionId: string; outlet: string; userId: string; startedAt: string; meterWh: number } | undefined
  private meterWh = 100_000
  private t: number

  constructor(
    readonly id: string,
    private readonly opts: FleetSiteOptions,
    private readonly random: () => number,
  ) {
    this.t = opts.clock?.() ?? Date.UTC(2026, 11, 1)
  }

  /** The last seq the uplink has published since it connected. */
  sentUpTo(): number {
    return this.uplink?.state().sentUpTo ?? 0
  }

  online(): boolean {
    return this.uplink?.state().status === 'online'
  }

  /** A boot: a gateway.started record and a fresh uplink (a restart if one ran). */
  boot(clean = true): void {
    if (this.uplink) throw new Error(`${this.id}: stop the uplink before booting again`)
    this.boots++
    this.log.bootId = `${this.id}-boot-${this.boots}`
    if (this.open) this.endSession('power-loss')
    this.log.append([{ type: 'gateway.started', ts: this.ts(), version: '0.1.0-fleet', cleanShutdown: clean }])
    this.startUplink()
  }

  startUplink(): void {
    const u = new Uplink({
      config: {
        url: this.opts.url,
        topicPrefix: this.opts.prefix ?? 'outpost',
        keepaliveS: 30,
        windowRecords: 500,
        batchRecords: 25,
        reconnectMaxMs: 1000,
        ...this.opts.uplink,
      },
      siteId: this.id,
      log: this.log,
      version: '0.1.0-fleet',
      bootId: this.log.bootId,
      onCommand: async (): Promise<CommandResult> => ({ id: '', ok: false, error: { code: 'invalid-command', message: 'fleet site' } }),
      now: () => Date.now(),
      reconnectBaseMs: 100,
      ackTimeoutMs: this.opts.ackTimeoutMs ?? 5000,
      statusIntervalMs: 1000,
    })
    this.uplink = u
    u.start()
  }

  async stopUplink(): Promise<void> {
    const u = this.uplink
    this.uplink = undefined
    await u?.stop()
  }

  /** A restart: the uplink goes, the gateway boots again (new bootId), unclean when `clean` is false. */
  async restart(clean: boolean): Promise<void> {
    await this.stopUplink()
    this.boot(clean)
  }

  private ts(): string {
    this.t += 1000 + Math.floor(this.random() * 60_000)
    return new Date(this.t).toISOString()
  }

  /** One step of activity: a session starts or ends (now and then a meter reconciliation). */
  step(): void {
    if (!this.open) {
      this.sessions++
      const outlet = `A${1 + Math.floor(this.random() * 4)}`
      const s = {
        sessionId: `${this.id}-s${this.sessions}`,
        outlet,
        userId: `u-${Math.floor(this.random() * 50)}`,
        startedAt: this.ts(),
        meterWh: this.meterWh,
      }
      this.open = s
      this.log.append([
        {
          type: 'session.started',
          ts: s.startedAt,
          sessionId: s.sessionId,
          outlet,
          userId: s.userId,
          planId: 'standard',
          trigger: 'activation',
          meterWh: s.meterWh,
        },
      ])
    } else {
      this.endSession('unplugged')
      if (this.random() < 0.2) {
        const from = this.ts()
        this.log.append([
          {
            type: 'meter.reconciliation',
            ts: this.ts(),
            outlet: 'A1',
            from,
            to: new Date(this.t).toISOString(),
            meterStartWh: this.meterWh - 10,
            meterEndWh: this.meterWh,
            billedWh: 9.5,
            unbilledWh: 0.5,
          },
        ])
      }
    }
  }

  private endSession(reason: 'unplugged' | 'power-loss'): void {
    const s = this.open!
    this.open = undefined
    const energyWh = Math.round(this.random() * 20_000) / 10
    this.meterWh += energyWh
    const endedAt = this.ts()
    const durationS = Math.round((Date.parse(endedAt) - Date.parse(s.startedAt)) / 1000)
    const micros = Math.round(energyWh * 150) + durationS * 139
    this.log.append([
      {
        type: 'session.ended',
        ts: endedAt,
        sessionId: s.sessionId,
        outlet: s.outlet,
        userId: s.userId,
        planId: 'standard',
        trigger: 'activation',
        startedAt: s.startedAt,
        endedAt,
        reason,
        durationS,
        energyWh,
        meterStartWh: s.meterWh,
        meterEndWh: this.meterWh,
        currency: 'CAD',
        lines: [{ from: s.startedAt, to: endedAt, energyWh, seconds: durationS, perKwh: 0.15, perHour: 0.5, amountMicros: micros }],
        activationFee: 50,
        total: 50 + Math.floor((micros + 5000) / 10_000),
        offline: !this.online(),
        pausedS: 0,
      },
    ])
  }
}
