/**
 * The session engine's state, events and effects. Plain JSON only (null, never
 * undefined), because the journal persists it section by section and hands back
 * exactly what it persisted; a state that went through JSON must behave the same.
 *
 * Units inside the state: time in epoch ms, energy in integer milliwatt-hours
 * (mWh: the meter's Wh × 1000, rounded once on the way in) so that energy sums are
 * exact, money in integer minor units (wallets, caps) or micro-units (fees).
 */
import type {
  Command,
  CommandResult,
  OutletState,
  OutletStatus,
  PersistedEngineState,
  PlanConfig,
  Reading,
  RecordBody,
  SessionSettings,
  SessionTrigger,
  SiteConfig,
  JournalSalvageInfo,
  CommandSource,
} from '../../core/types.js'

export type EngineEvent =
  | { type: 'reading'; outlet: string; reading: Reading }
  | { type: 'read-failed'; outlet: string; error: string }
  /** Relay unreachable, or its read-back disagrees with what was commanded. */
  | { type: 'relay-failed'; outlet: string; error: string }
  /** The relay answered and its read-back agrees again: clears a relay fault. */
  | { type: 'relay-ok'; outlet: string }
  | { type: 'command'; id: string; source: CommandSource; command: Command }
  | { type: 'tick' }
  | { type: 'boot'; cleanShutdown: boolean; version: string; publicKey?: string; journalSalvage?: JournalSalvageInfo }
  | { type: 'shutdown' }
  | { type: 'uplink'; online: boolean }
  | { type: 'config'; config: SiteConfig }

export type Effect =
  | { type: 'relay'; outlet: string; closed: boolean }
  | { type: 'record'; record: RecordBody }
  | { type: 'status'; status: OutletStatus }
  | { type: 'result'; result: CommandResult }

/** A good reading as the engine keeps it. */
export interface ReadingMark {
  ts: number
  /** Energy register in mWh. */
  mWh: number
  currentA: number
  powerW: number
  voltageV: number
}

/** Energy and time of one contiguous run of one plan period. */
export interface LineAcc {
  from: number
  to: number
  /** Index into the session's plan.periods, -1 when no period matched (unavailable). */
  period: number
  mWh: number
  ms: number
  perKwh: number | null
  perHour: number | null
  perKwhMicros: number
  perHourMicros: number
}

export interface Session {
  id: string
  userId: string
  planId: string
  /** The plan as it was at start: a set-plan during the session does not reprice it. */
  plan: PlanConfig
  currency: string
  trigger: SessionTrigger
  startedAt: number
  meterStartMWh: number
  /** Last accounted point: the session's last good reading (startedAt/meterStart before any). */
  lastTs: number
  lastMWh: number
  lines: LineAcc[]
  /** Reached minChargeA (or started by auto-start): only such sessions cost anything. */
  drewCurrent: boolean
  peakA: number
  /** Recent [ts, currentA] samples (each holds until the next; close ones merged), covering the last minute, for the taper heuristic. */
  window: [number, number][]
  /** ts of the first of the current run of readings below noCurrentA, else null. */
  lowSince: number | null
  /** Whether the current had tapered when that run began (decides charge-complete vs unplugged). */
  taperedAtLow: boolean
  /** Most this session may cost, minor units: the wallet's available balance at start (reserved). */
  capMinor: number
  /** The plan's activation fee in micro-units (charged only if drewCurrent). */
  feeMicros: number
  /** Any part of it ran without uplink. */
  offline: boolean
}

/** Meter energy against energy inside sessions, since `from`, for meter.reconciliation. */
export interface Recon {
  from: number
  startMWh: number
  /** Sum of non-negative register deltas between consecutive good readings. */
  meterMWh: number
  /** The part of meterMWh that fell inside sessions. */
  sessionMWh: number
}

export interface OutletEntry {
  id: string
  hasRelay: boolean
  ratingA: number
  /** The plan the config names, remembered to notice when the installer changes it. */
  configPlan: string
  /** Effective plan for new sessions (config, or a later assign-plan). */
  planId: string
  configAutoStart: string | null
  autoStartUser: string | null
  /** Suspended by a stop command until that user starts a session manually. */
  autoStartSuspended: boolean
  /** Manager availability (set-availability). */
  available: boolean
  state: OutletState
  /** What the engine last commanded (meter-only outlets: what it would command). */
  relayClosed: boolean
  /** Last good reading. */
  last: ReadingMark | null
  /** A good reading arrived since boot: the engine knows the meter answers now. */
  fresh: boolean
  /** `now` of the last good reading (or boot): base of the meter-fault timer. */
  goodAt: number
  /** What has been wrong since goodAt (failed read or impossible reading), else null. */
  badDetail: string | null
  meterFault: string | null
  relayFault: string | null
  session: Session | null
  recon: Recon | null
  /** Removed from the config while a session was open before boot: dropped at boot. */
  removed: boolean
}

export interface GatewaySection {
  /** Between boot and shutdown. Before boot nothing starts and every relay stays open. */
  running: boolean
  bootAt: number | null
  online: boolean
  offlineSince: number | null
  /** Counter of session ids; persisted so ids never repeat. */
  nextSession: number
  /** Base-36 time of the first boot: keeps ids unique even if the journal is wiped. */
  idPrefix: string | null
}

export interface SettingsSection {
  siteId: string
  timezone: string
  sessions: SessionSettings
  offlineLimitMs: number | null
  uplink: boolean
  /**
   * An OCPP central system authorizes users (config `ocpp`): a user without a local wallet may
   * start, uncapped (the central system bills them); a user with one is still capped by it.
   */
  centralAuth?: boolean
  /** Plans from the config file, by id. Cloud plans (state.plans) win over these. */
  configPlans: Record<string, PlanConfig>
}

export interface Wallet {
  currency: string
  /** Minor units; the cloud's last word, minus what this gateway billed since. */
  balance: number
}

export interface CommandMemo {
  /** Oldest first; bounded. */
  ids: string[]
  results: Record<string, CommandResult>
}

export interface EngineState extends PersistedEngineState {
  outlets: Record<string, OutletEntry>
  gateway: GatewaySection
  settings: SettingsSection
  wallets: Record<string, Wallet>
  /** Plans pushed by set-plan, by id. */
  plans: Record<string, PlanConfig>
  commands: CommandMemo
}

export type StepResult = { state: EngineState; effects: Effect[] }
