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
  CircuitReading,
  MeterEventKind,
} from '../../core/types.js'
import type { CommandErrorCode } from './errors.js'

export type EngineEvent =
  | { type: 'reading'; outlet: string; reading: Reading }
  | { type: 'read-failed'; outlet: string; error: string }
  /** Relay unreachable, or its read-back disagrees with what was commanded. */
  | { type: 'relay-failed'; outlet: string; error: string }
  /** The relay answered and its read-back agrees again: clears a relay fault. */
  | { type: 'relay-ok'; outlet: string }
  /**
   * A command. `refused`: the gateway refused it before the engine (OCPP offline authorization,
   * `not-authorized`): nothing is applied, and the refusal is remembered for its id (a repeated
   * id gets the first answer, whichever it was) and journaled like the engine's own refusals.
   */
  | { type: 'command'; id: string; source: CommandSource; command: Command; refused?: { code: CommandErrorCode; message: string } }
  | { type: 'tick' }
  | { type: 'boot'; cleanShutdown: boolean; version: string; publicKey?: string; journalSalvage?: JournalSalvageInfo }
  | { type: 'shutdown' }
  | { type: 'uplink'; online: boolean }
  /** The wiring cross-check begins (`running`) or ends: while it runs no session starts and every idle outlet is unavailable. */
  | { type: 'cross-check'; running: boolean }
  | { type: 'config'; config: SiteConfig; hash?: string; change?: ConfigChange }
  /** One sample of a circuit's feeder meter. */
  | { type: 'circuit-reading'; circuit: string; reading: CircuitReading }
  /** The feeder meter did not answer. */
  | { type: 'circuit-read-failed'; circuit: string; error: string }

export type Effect =
  | { type: 'relay'; outlet: string; closed: boolean }
  | { type: 'record'; record: RecordBody }
  | { type: 'status'; status: OutletStatus }
  | { type: 'result'; result: CommandResult }

/** A register value (mWh) at a reading's time (epoch ms). */
export interface EnergyMark {
  ts: number
  mWh: number
}

/** A good reading as the engine keeps it. */
export interface ReadingMark {
  ts: number
  /** Energy register in mWh. */
  mWh: number
  currentA: number
  powerW: number
  voltageV: number
  /** The serial number the meter reported with this reading (models with a serial register). */
  meterSerial?: string
}

/** Energy and time of one contiguous run of one plan period. */
export interface LineAcc {
  from: number
  to: number
  /** Index into the session's plan.periods, -1 when no period matched (unavailable). */
  period: number
  mWh: number
  /** Billed time (the session was switched on, or not on a circuit). */
  ms: number
  /** Time waiting with the relay open on a full circuit: never billed per hour. */
  pausedMs: number
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
  /** The serial number the outlet's meter reported at the start (its last good reading's), when it reports one. */
  meterSerial?: string
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
  /** On a full circuit: waiting (relay open) since then; null when switched on (or on no circuit). */
  queuedAt: number | null
  /** When its relay was last switched on by the circuit rules (its slot runs from here). */
  onAt: number
  /** When the circuit rules last switched it off; null when never. */
  offAt: number | null
  /** Start of the grace period: activation, or when a session that waited was switched on. */
  graceFrom: number
  /** Switched on again after a pause in which it had drawn: the car must draw again within the grace period, else unplugged. */
  awaitDraw: boolean
  /** Drew at least minChargeA since it was last switched on: its measured current is its expected draw (else the outlet's rating). */
  drawing: boolean
  /** Switches by the circuit rules since the last accounted reading, [at, queued after]: the next reading's interval is split there. */
  switches: [number, boolean][]
  /** Sum of the register jumps of the rebases in this session (mWh, negative for a reset): energy = lastMWh − meterStartMWh − rebasedMWh. */
  rebasedMWh?: number
  /** Rejected readings and rebases (meter-readings.ts), the first MAX_METER_EVENTS. */
  meterEvents?: MeterEventAcc[]
  /** Events beyond those kept. */
  meterEventsOmitted?: number
}

/** A rejected reading or a rebase, as the session keeps it (mWh, epoch ms). */
export interface MeterEventAcc {
  ts: number
  kind: MeterEventKind
  fromMWh: number
  toMWh: number
}

/** Meter energy against energy inside sessions, since `from`, for meter.reconciliation. */
export interface Recon {
  from: number
  startMWh: number
  /** Sum of non-negative register deltas between consecutive good readings. */
  meterMWh: number
  /** The part of meterMWh that fell inside sessions. */
  sessionMWh: number
  /** Register jumps of rebases (negative for a reset), never counted as energy. */
  rebasedMWh?: number
  /** Readings rejected (meter-readings.ts). */
  rejected?: number
}

export interface OutletEntry {
  id: string
  hasRelay: boolean
  ratingA: number
  /** The phases its meter measures (from the meter model via the config); absent: DEFAULT_PHASES. */
  phases?: 1 | 3
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
  /** Last good reading; its mWh is the baseline (the highest register since the run began or the last rebase: a tiny step back keeps it). */
  last: ReadingMark | null
  /** Start of the continuous run of good readings (first one, or the last rebase): the whole run's energy is bounded too. */
  anchor?: EnergyMark | null
  /** The last rejected register since the last good reading, held until the next reading shows whether the counter was reset, else null. */
  suspect?: EnergyMark | null
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
  /** The circuit it is wired to, null when none. */
  circuit: string | null
  /** 0, 1, 2 for L1, L2, L3. */
  phase: 0 | 1 | 2
  /** Higher is served first on a shared circuit. */
  priority: number
  /**
   * A per-outlet limit in force (per phase, A; `set-outlet-limit`, an OCPP TxProfile or
   * TxDefaultProfile): below `sessions.minChargeA` the outlet's session waits (queued `limit`),
   * any other value lets it run (an outlet switches, it does not dim). Absent: none.
   */
  limitA?: number
  /**
   * A config change that reached this outlet while it had a session open: applied when the
   * session ends (a session keeps the wiring and plan it started with). Absent or null: none.
   */
  pending?: OutletParams | null
}

/** What of an outlet's config its engine entry follows (a config event compares and applies these). */
export interface OutletParams {
  hasRelay: boolean
  ratingA: number
  /** null: the config does not say. */
  phases: 1 | 3 | null
  plan: string
  autoStart: string | null
  circuit: string | null
  phase: 0 | 1 | 2
  priority: number
}

/**
 * A config applied on purpose (the local API, or boot finding the file changed since the last
 * one applied): the `config` event then journals `config.applied`.
 */
export interface ConfigChange {
  who: string
  /** JSON pointers of what changed (the daemon computes them from the two documents). */
  changed: string[]
}

/** A circuit as the engine keeps it (its configuration is in settings.circuits). */
export interface CircuitEntry {
  /** A set-circuit-limit in force (per phase, A), else null: the configured maxA. */
  limitA: number | null
  /** The feeder meter's last good phase currents since boot, else null. */
  currentsA: [number, number, number] | null
  /** `now` of the feeder's last good reading (or boot): base of its silence timer. */
  goodAt: number
  /** Why the feeder meter counts as silent (failsafe), else null. */
  fault: string | null
}

/** A circuit's configuration, as the engine needs it. */
export interface CircuitSettings {
  maxA: number
  /** The circuit itself, then its parents up to the root. */
  chain: string[]
  /** Circuits fed directly by this one. */
  children: string[]
  /** Outlets wired directly to it (config order). */
  members: string[]
  metered: boolean
  failsafeA: number
  slotMs: number
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
  /** SHA-256 of the config file in force (the `config` event's hash); absent or null: not known (a state from before it was kept). */
  configHash?: string | null
  /** The wiring cross-check is switching the relays (absent: no). A boot clears it: a check never outlives its process. */
  crossCheck?: boolean
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
  /** Shared circuits, by id (empty when the site has none). */
  circuits: Record<string, CircuitSettings>
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
  /** Per circuit: a commanded limit and the feeder meter's state. */
  circuits: Record<string, CircuitEntry>
}

export type StepResult = { state: EngineState; effects: Effect[] }
