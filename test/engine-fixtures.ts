/**
 * Shared fixtures for the engine tests: a validated site config (schema defaults
 * applied, as the daemon gets it) and a rig that drives the pure engine with a
 * virtual clock and a simulated meter per outlet.
 */
import { validateConfig } from '../daemon/config.js'
import type { PlanConfig, RecordBody, SiteConfig, Command, OutletState } from '../core/types.js'
import { initialState, step, type Effect, type EngineEvent, type EngineState } from '../daemon/engine/index.js'

export const VOLTS = 230

export function siteConfig(
  over: {
    timezone?: string
    plans?: PlanConfig[]
    outlets?: unknown[]
    sessions?: Record<string, number>
    offline?: { limitMinutes: number | null }
    uplink?: boolean
  } = {},
): SiteConfig {
  const raw = {
    site: { id: 'lot-7', timezone: over.timezone ?? 'America/Vancouver' },
    storage: { dir: '/tmp/unused' },
    buses: [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: 5020 }],
    outlets: over.outlets ?? [
      { id: 'A1', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, relay: { model: 'modbus-coil', unit: 100, coil: 0 }, plan: 'standard' },
      {
        id: 'A2',
        bus: 'lan',
        meter: { model: 'eastron-sdm120', unit: 2 },
        relay: { model: 'modbus-coil', unit: 100, coil: 1 },
        plan: 'standard',
        autoStart: { userId: 'u-42' },
      },
    ],
    plans: over.plans ?? [
      {
        id: 'standard',
        currency: 'CAD',
        activationFee: 0.5,
        periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 0.15, perHour: 0.5 }],
      },
    ],
    sessions: over.sessions ?? {},
    offline: over.offline ?? { limitMinutes: null },
    ...(over.uplink === false ? {} : { uplink: { url: 'mqtt://127.0.0.1:1883', topicPrefix: 'outpost' } }),
  }
  const r = validateConfig(raw)
  if (!r.ok) throw new Error('fixture config invalid: ' + JSON.stringify(r.problems))
  return r.config
}

/** A site of one outlet, A1, metered by `model` (unit 1) and switched by a coil. */
export function oneMeterSite(model: string): SiteConfig {
  return siteConfig({
    outlets: [{ id: 'A1', bus: 'lan', meter: { model, unit: 1 }, relay: { model: 'modbus-coil', unit: 100, coil: 0 }, plan: 'standard' }],
  })
}

/** Drives the engine like the daemon would, keeping every effect. */
export class Rig {
  state: EngineState
  now: number
  /** Meter registers in mWh (integers, so expected energies are exact). */
  meter: Record<string, number> = {}
  effects: Effect[] = []
  last: Effect[] = []
  private cmdNo = 0

  constructor(
    readonly config: SiteConfig,
    start: number,
  ) {
    this.state = initialState(config)
    this.now = start
    for (const o of config.outlets) this.meter[o.id] = 1_000_000_000 // a meter with 1 MWh on it already
  }
  apply(ev: EngineEvent): Effect[] {
    const r = step(this.state, ev, this.now)
    this.state = r.state
    this.last = r.effects
    this.effects.push(...r.effects)
    return r.effects
  }
  boot(clean = false): Effect[] {
    return this.apply({ type: 'boot', cleanShutdown: clean, version: 'test' })
  }
  advance(ms: number): void {
    this.now += ms
  }
  /** Advance ms, let `amps` flow meanwhile, then feed a reading stamped now. */
  read(outlet: string, amps: number, ms = 1000): Effect[] {
    this.advance(ms)
    this.meter[outlet]! += Math.round((amps * VOLTS * ms) / 3600)
    return this.apply({
      type: 'reading',
      outlet,
      reading: { ts: this.now, currentA: amps, powerW: amps * VOLTS, energyWh: this.meter[outlet]! / 1000, voltageV: VOLTS },
    })
  }
  /** Feeds readings of every outlet (those not named draw 0 A) for `seconds` seconds. */
  run(seconds: number, amps: Record<string, number>): void {
    for (let i = 0; i < seconds; i++) {
      this.advance(1000)
      for (const o of Object.keys(this.meter)) {
        const a = amps[o] ?? 0
        this.meter[o]! += Math.round((a * VOLTS * 1000) / 3600)
        this.apply({
          type: 'reading',
          outlet: o,
          reading: { ts: this.now, currentA: a, powerW: a * VOLTS, energyWh: this.meter[o]! / 1000, voltageV: VOLTS },
        })
      }
      this.apply({ type: 'tick' })
    }
  }
  tick(ms = 0): Effect[] {
    this.advance(ms)
    return this.apply({ type: 'tick' })
  }
  cmd(command: Command, id?: string): Effect[] {
    return this.apply({ type: 'command', id: id ?? `c${++this.cmdNo}`, source: 'cloud', command })
  }
  /** The single result of the last step (throws unless exactly one). */
  result(): { ok: boolean; code?: string; result?: unknown } {
    const rs = this.last.filter((e) => e.type === 'result')
    if (rs.length !== 1) throw new Error(`expected one result, got ${rs.length}`)
    const r = (rs[0] as Extract<Effect, { type: 'result' }>).result
    return r.ok ? { ok: true, result: r.result } : { ok: false, code: r.error.code }
  }
  wallet(userId: string, balance: number, currency = 'CAD'): void {
    this.cmd({ action: 'set-wallet', userId, currency, balance })
  }
  records<T extends RecordBody['type']>(type: T, from: Effect[] = this.effects): Extract<RecordBody, { type: T }>[] {
    return from
      .filter((e): e is Extract<Effect, { type: 'record' }> => e.type === 'record' && e.record.type === type)
      .map((e) => e.record as Extract<RecordBody, { type: T }>)
  }
  ended(): Extract<RecordBody, { type: 'session.ended' }>[] {
    return this.records('session.ended')
  }
  stateOf(outlet: string): OutletState {
    return this.state.outlets[outlet]!.state
  }
  relays(from: Effect[] = this.last): { outlet: string; closed: boolean }[] {
    return from.filter((e): e is Extract<Effect, { type: 'relay' }> => e.type === 'relay').map((e) => ({ outlet: e.outlet, closed: e.closed }))
  }
}

/** A Wednesday, 2026-06-10 12:00 in Vancouver (PDT, UTC-7). */
export const WED_NOON = Date.UTC(2026, 5, 10, 19, 0, 0)
