/**
 * The copy-on-write context of one step: the state as the step changes it, and the
 * effects it collects.
 *
 * Owns: structural sharing (a step copies only what it changes: top-level sections and
 * `outlets[id]` entries, so the journal can persist exactly the changed parts, and a step
 * that changes nothing returns the very same state object), the list of outlet entries a
 * step changed, and the order of effects: records, then relays (opens before closes), then
 * statuses, then the command result. The daemon may carry out a relay OPEN before the
 * journal commit; a relay CLOSE only after the step's records are durable.
 * Must never: mutate the state it was given, decide a rule of a session, do I/O, or read a
 * clock (`now` is given).
 */
import type { CommandResult, RecordBody } from '../../core/types.js'
import { statusOf } from './00-queries.js'
import type { Effect, EngineState, GatewaySection, OutletEntry, Session, SettingsSection } from './state.js'

type SectionName = 'outlets' | 'gateway' | 'settings' | 'wallets' | 'plans' | 'commands' | 'circuits'

export class Ctx {
  state: EngineState
  private readonly own = new WeakSet<object>()
  readonly records: RecordBody[] = []
  private readonly relays: Effect[] = []
  private readonly touched = new Set<string>()
  result: CommandResult | null = null
  private isoNow: string | null = null

  constructor(
    readonly prev: EngineState,
    readonly now: number,
  ) {
    this.state = prev
  }
  /** `now` as ISO 8601 (formatted once, only when a record or status needs it). */
  get iso(): string {
    this.isoNow ??= new Date(this.now).toISOString()
    return this.isoNow
  }
  get s(): SettingsSection {
    return this.state.settings
  }
  get gw(): GatewaySection {
    return this.state.gateway
  }
  private top(): EngineState {
    if (!this.own.has(this.state)) {
      this.state = { ...this.state }
      this.own.add(this.state)
    }
    return this.state
  }
  /** A section this step may mutate (copied once). */
  sec<K extends SectionName>(k: K): EngineState[K] {
    const top = this.top()
    const cur = top[k]
    if (this.own.has(cur)) return cur
    const c = { ...cur } as EngineState[K]
    this.own.add(c)
    top[k] = c
    return c
  }
  /** Replace a whole section. */
  put<K extends SectionName>(k: K, v: EngineState[K]): void {
    this.top()[k] = v
    this.own.add(v)
  }
  /** How many times this step asked for an entry to mutate: unchanged, no entry changed since. */
  outs = 0
  /** An outlet entry this step may mutate (copied once). */
  out(id: string): OutletEntry {
    this.outs++
    const outs = this.sec('outlets')
    const cur = outs[id]!
    if (this.own.has(cur)) return cur
    const c = { ...cur }
    this.own.add(c)
    outs[id] = c
    this.changed.push(id)
    return c
  }
  /** Outlet entries this step copied (changed), in order. */
  readonly changed: string[] = []
  /** The open session of an outlet, mutable (copied once). Arrays inside must be replaced, not mutated. */
  sess(id: string): Session {
    const e = this.out(id)
    const cur = e.session!
    if (this.own.has(cur)) return cur
    const c = { ...cur }
    this.own.add(c)
    e.session = c
    return c
  }
  record(r: RecordBody): void {
    this.records.push(r)
  }
  relay(outlet: string, closed: boolean): void {
    this.relays.push({ type: 'relay', outlet, closed })
  }
  touch(id: string): void {
    this.touched.add(id)
  }
  effects(): Effect[] {
    const out: Effect[] = this.records.map((record) => ({ type: 'record', record }))
    // Opens first: the safe direction, and a close must wait for the commit anyway.
    for (const r of this.relays) if (r.type === 'relay' && !r.closed) out.push(r)
    for (const r of this.relays) if (r.type === 'relay' && r.closed) out.push(r)
    for (const id of this.touched) {
      const e = this.state.outlets[id]
      if (e) out.push({ type: 'status', status: statusOf(e, this.iso) })
    }
    if (this.result) out.push({ type: 'result', result: this.result })
    return out
  }
}
