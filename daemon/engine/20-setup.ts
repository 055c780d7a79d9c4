/**
 * The engine's view of a site configuration: the settings section, each circuit's chain,
 * children and members, a fresh outlet entry, and the initial state of a site.
 *
 * Owns: what of a SiteConfig the engine keeps (and how: a plan copied, minutes as ms, a
 * circuit's chain to the root computed once per config), a new outlet's starting values.
 * Must never: validate a config (daemon/config.ts does, before the engine sees it), read an
 * existing state, or produce an effect.
 */
import type { PlanConfig, SiteConfig } from '../../core/types.js'
import { hasOwn } from './00-queries.js'
import { assertTimeZone } from './pricing.js'
import type { CircuitSettings, EngineState, OutletEntry, OutletParams, SettingsSection } from './state.js'

export function settingsFrom(config: SiteConfig): SettingsSection {
  assertTimeZone(config.site.timezone)
  const configPlans: Record<string, PlanConfig> = {}
  for (const p of config.plans) configPlans[p.id] = structuredClone(p)
  return {
    siteId: config.site.id,
    timezone: config.site.timezone,
    sessions: { ...config.sessions },
    offlineLimitMs: config.offline.limitMinutes === null ? null : config.offline.limitMinutes * 60_000,
    uplink: config.uplink !== undefined,
    centralAuth: config.ocpp !== undefined,
    configPlans,
    circuits: circuitSettings(config),
  }
}

/**
 * The circuit of a site with an OCPP central system and no circuits in its config: every outlet
 * on it, its limit the sum of their ratings (it never holds anyone back by itself), so that the
 * central system's site limit (ChargePointMaxProfile) has a circuit to cut (docs/ocpp.md).
 */
export const OCPP_SITE_CIRCUIT = 'site'

/** The site's circuits: the config's, or the OCPP site circuit. */
export function siteCircuits(config: SiteConfig): NonNullable<SiteConfig['circuits']> {
  if ((config.circuits ?? []).length > 0 || config.ocpp === undefined) return config.circuits ?? []
  const maxA = config.outlets.reduce((a, o) => a + o.ratingA, 0)
  return [{ id: OCPP_SITE_CIRCUIT, maxA, failsafeA: maxA, slotS: 1800 }]
}

/** The circuit an outlet is on: its config's, or the OCPP site circuit. */
function circuitOf(config: SiteConfig, o: SiteConfig['outlets'][number]): string | undefined {
  return (config.circuits ?? []).length === 0 && config.ocpp !== undefined ? OCPP_SITE_CIRCUIT : o.circuit
}

/**
 * What the OCPP site limit may cut, from the config in force: the one root circuit (undefined
 * with none or several) and, for each outlet the circuit rules switch (on a circuit, with a
 * relay), the smallest wiring maxA along its chain.
 */
export function circuitWiring(config: SiteConfig): { root: { id: string; maxA: number } | undefined; chainMaxA: Map<string, number> } {
  const settings = circuitSettings(config)
  const roots = siteCircuits(config).filter((c) => c.parent === undefined)
  const chainMaxA = new Map<string, number>()
  for (const o of config.outlets) {
    const c = circuitOf(config, o)
    if (c === undefined || !hasOwn(settings, c) || o.relay === undefined) continue
    chainMaxA.set(o.id, Math.min(...settings[c]!.chain.map((id) => settings[id]!.maxA)))
  }
  return { root: roots.length === 1 ? { id: roots[0]!.id, maxA: roots[0]!.maxA } : undefined, chainMaxA }
}

/** Each circuit with its chain to the root and its children, computed once per config. */
function circuitSettings(config: SiteConfig): Record<string, CircuitSettings> {
  const out: Record<string, CircuitSettings> = {}
  const circuits = siteCircuits(config)
  const byId = new Map(circuits.map((c) => [c.id, c]))
  for (const c of circuits) {
    const chain: string[] = []
    // The config refuses cycles and unknown parents; the walk stops at either all the same.
    for (let cur: string | undefined = c.id; cur !== undefined && byId.has(cur) && !chain.includes(cur); cur = byId.get(cur)!.parent) chain.push(cur)
    out[c.id] = {
      maxA: c.maxA,
      chain,
      children: [],
      members: config.outlets.filter((o) => circuitOf(config, o) === c.id).map((o) => o.id),
      metered: c.meter !== undefined,
      failsafeA: c.failsafeA ?? 0,
      slotMs: (c.slotS ?? 1800) * 1000,
    }
  }
  for (const c of circuits) if (c.parent !== undefined && hasOwn(out, c.parent) && out[c.parent]!.chain.length > 0) out[c.parent]!.children.push(c.id)
  return out
}

const PHASE_INDEX = { L1: 0, L2: 1, L3: 2 } as const

export function outletCircuit(config: SiteConfig, o: SiteConfig['outlets'][number]): { circuit: string | null; phase: 0 | 1 | 2; priority: number } {
  return { circuit: circuitOf(config, o) ?? null, phase: PHASE_INDEX[o.phase ?? 'L1'] ?? 0, priority: o.priority ?? 0 }
}

/** What of an outlet's config its engine entry follows. */
export function outletParams(config: SiteConfig, o: SiteConfig['outlets'][number]): OutletParams {
  const { circuit, phase, priority } = outletCircuit(config, o)
  return {
    hasRelay: o.relay !== undefined,
    ratingA: o.ratingA,
    phases: o.phases ?? null,
    plan: o.plan,
    autoStart: o.autoStart?.userId ?? null,
    circuit,
    phase,
    priority,
  }
}

/** Whether an entry already follows `p` (its config plan and auto-start user, not a cloud's assignment). */
export function followsParams(e: OutletEntry, p: OutletParams): boolean {
  return (
    e.hasRelay === p.hasRelay &&
    e.ratingA === p.ratingA &&
    (e.phases ?? null) === p.phases &&
    e.configPlan === p.plan &&
    e.configAutoStart === p.autoStart &&
    e.circuit === p.circuit &&
    e.phase === p.phase &&
    e.priority === p.priority
  )
}

export function newOutlet(config: SiteConfig, o: SiteConfig['outlets'][number], now: number): OutletEntry {
  const auto = o.autoStart?.userId ?? null
  return {
    id: o.id,
    hasRelay: o.relay !== undefined,
    ratingA: o.ratingA,
    ...(o.phases !== undefined ? { phases: o.phases } : {}),
    configPlan: o.plan,
    planId: o.plan,
    configAutoStart: auto,
    autoStartUser: auto,
    autoStartSuspended: false,
    available: true,
    state: 'off',
    relayClosed: false,
    last: null,
    anchor: null,
    suspect: null,
    fresh: false,
    goodAt: now,
    badDetail: null,
    meterFault: null,
    relayFault: null,
    session: null,
    recon: null,
    removed: false,
    ...outletCircuit(config, o),
  }
}

/** A fresh state for a site: every outlet off, no sessions, no wallets. Send `boot` next. */
export function initialState(config: SiteConfig): EngineState {
  const outlets: Record<string, OutletEntry> = {}
  for (const o of config.outlets) outlets[o.id] = newOutlet(config, o, 0)
  return {
    outlets,
    gateway: { running: false, bootAt: null, online: false, offlineSince: null, nextSession: 1, idPrefix: null },
    settings: settingsFrom(config),
    wallets: {},
    plans: {},
    commands: { ids: [], results: {} },
    circuits: {},
  }
}
