/**
 * Shared domain types: the seams between the session engine, the drivers, the
 * journal, the uplink and the local API. Each side codes against these; no
 * module here does any work. Names follow ../docs/contract.md.
 */

// ---------------------------------------------------------------- site config

/** The days of a plan's week, Monday first (the order the engine numbers them in). */
export const WEEKDAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const
export type Weekday = (typeof WEEKDAYS)[number]

export interface SiteConfig {
  site: { id: string; name?: string; timezone: string }
  storage: { dir: string; retentionDays: number; readingSyncMs: number }
  models?: { dir?: string }
  buses: BusConfig[]
  /** Shared circuits (feeders): load management and time-sharing. Empty when the site has none. */
  circuits: CircuitConfig[]
  outlets: OutletConfig[]
  plans: PlanConfig[]
  sessions: SessionSettings
  offline: { limitMinutes: number | null }
  uplink?: UplinkConfig
  ocpp?: OcppConfig
  api?: ApiConfig
  ocpi?: OcpiConfig
  nodeRed?: NodeRedConfig
  logging: { level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' }
}

/** A serial port and its line settings, shared by Modbus RTU and plain serial buses. */
export interface SerialLineConfig {
  id: string
  path: string
  baudRate: number
  parity: 'none' | 'even' | 'odd'
  dataBits: 7 | 8
  stopBits: 1 | 2
  timeoutMs: number
  retries: number
  /** The adapter echoes every request back before the reply (most cheap two-wire adapters): consume and compare the echo. */
  echo: boolean
  /** Silence between frames; default 3.5 characters at baudRate, 1.75 ms above 19200 baud. */
  interFrameMs?: number
  /** The least time from the end of one exchange to the next request (slow meters, slow adapters); 0 = the frame silence alone. */
  requestGapMs: number
}

export interface ModbusRtuBusConfig extends SerialLineConfig {
  type: 'modbus-rtu'
}

export interface ModbusTcpBusConfig {
  id: string
  type: 'modbus-tcp'
  host: string
  port: number
  timeoutMs: number
  retries: number
}

/** Plain serial: outlet controllers speaking Outpost's ASCII line protocol. */
export interface SerialBusConfig extends SerialLineConfig {
  type: 'serial'
}

/** A network device that is its own bus: one Shelly or one Tasmota plug, meter and relay in one. */
export interface NetDeviceConfig {
  id: string
  type: 'shelly' | 'tasmota'
  host: string
  port: number
  /** Tasmota's web user; Shelly's is always admin. */
  user?: string
  /** First line: the device's password. */
  passwordFile?: string
  timeoutMs: number
  retries: number
  /** A relay the gateway closed opens by itself this long after its last re-arm. */
  autoOffS: number
  /** Shelly: hold a WebSocket for NotifyStatus. */
  notify?: boolean
}

/** A bus of bytes: one scheduler owns its port. */
export type WireBusConfig = ModbusRtuBusConfig | ModbusTcpBusConfig | SerialBusConfig
export type BusConfig = WireBusConfig | NetDeviceConfig

export interface OutletConfig {
  id: string
  name?: string
  bus: string
  /** `unit` on a Modbus or serial bus (required there, config.ts checks), `channel` on a network device. */
  meter: { model: string; unit?: number; channel?: number; delayMs?: number; serial?: string }
  relay?: { model: string; unit?: number; channel?: number; coil?: number; register?: number; delayMs?: number }
  plan: string
  /** Continuous rating; readings far above it are impossible (meter fault). */
  ratingA: number
  /**
   * The phases it draws on: the config's, else its meter model's (validateConfig fills it in,
   * so the engine never reads a model file). The engine's bound on an energy step scales with
   * it; absent (a config built without validateConfig): 3, the loosest bound.
   */
  phases?: 1 | 3
  autoStart?: { userId: string }
  /** The circuit it is wired to (circuits[].id); omitted: on no managed circuit. */
  circuit?: string
  /** The phase it draws from on its circuit. */
  phase: Phase
  /** Higher is served first on a shared circuit (and shed last). */
  priority: number
  /** OCPP connectorId; default the outlet's 1-based position in `outlets`. */
  connectorId?: number
}

export type Phase = 'L1' | 'L2' | 'L3'
export const PHASES: readonly Phase[] = ['L1', 'L2', 'L3']

/** A feeder: a per-phase current limit shared by the outlets wired to it and to its children. */
export interface CircuitConfig {
  id: string
  /** Per phase, amperes. */
  maxA: number
  /** The circuit this one is fed from: its limit applies to this one's load too. */
  parent?: string
  /** A meter measuring the circuit's own phase currents (outlets and anything else on it). */
  meter?: { bus: string; model: string; unit: number; delayMs?: number }
  /** What the outlets may draw while the feeder meter is silent (per phase). */
  failsafeA: number
  /** Rotation slice while demand exceeds the limit, seconds. */
  slotS: number
}

/** One sample of a feeder meter: the current on each phase. */
export interface CircuitReading {
  ts: number
  /** [L1, L2, L3] amperes. */
  currentsA: [number, number, number]
}

export interface PeriodConfig {
  days: Weekday[]
  /** "HH:MM" local time. */
  from: string
  /** "HH:MM" local time, "24:00" allowed; to < from wraps past midnight. */
  to: string
  perKwh?: number
  perHour?: number
  unavailable?: boolean
}

export interface PlanConfig {
  id: string
  name?: string
  currency: string
  /** In currency units (decimal), charged once per session that drew current. */
  activationFee?: number
  periods: PeriodConfig[]
}

export interface SessionSettings {
  pollMs: number
  graceSeconds: number
  minChargeA: number
  autoStartA: number
  noCurrentA: number
  noCurrentHoldMs: number
  meterFaultMs: number
  /** charge-complete vs unplugged: tapered when the last minute's mean current < taperRatio × session peak. */
  taperRatio: number
  /** Period of meter.reconciliation records per outlet. */
  reconciliationMinutes: number
}

export interface UplinkConfig {
  url: string
  topicPrefix: string
  clientId?: string
  username?: string
  password?: string
  passwordFile?: string
  caFile?: string
  certFile?: string
  keyFile?: string
  keepaliveS: number
  /** Records in flight (published, not yet acknowledged) at most. */
  windowRecords: number
  /** Records per P/records message at most. */
  batchRecords: number
  reconnectMaxMs: number
}

/** OCPP 1.6J: the gateway as one charge point, one connector per outlet. */
export interface OcppConfig {
  /** The central system's endpoint; the gateway connects to `${url}/${identity}`. */
  url: string
  identity: string
  /** Basic auth (identity as user) when set. */
  password?: string
  caFile?: string
  /** The security profile (0-3) the file gives; derived from url and credentials when absent (ocpp/settings.ts). */
  securityProfile?: number
  /** A client certificate (PEM chain) and its key for security profile 3, used until the central system installs one. */
  clientCertFile?: string
  clientKeyFile?: string
  /** CpoName: the organizationName of the charge point's certificate signing requests. */
  cpoName: string
  heartbeatS: number
  meterValueSampleS: number
  clockAlignedDataS: number
  meterValuesSampledData: string
  meterValuesAlignedData: string
  stopTxnSampledData: string
  stopTxnAlignedData: string
  transactionMessageAttempts: number
  transactionMessageRetryIntervalS: number
  localAuthorizeOffline: boolean
  localPreAuthorize: boolean
  allowOfflineTxForUnknownId: boolean
  authorizationCacheEnabled: boolean
  localAuthListEnabled: boolean
  stopTransactionOnInvalidId: boolean
  maxEnergyOnInvalidIdWh: number
  reconnectMaxMs: number
  callTimeoutS: number
}

export interface ApiConfig {
  listen: string
  /** The admin role's token: may do everything. */
  token: string
  /** Further tokens, each with a role (docs/contract.md "Config changes"). */
  tokens?: { name: string; role: 'installer' | 'owner' | 'viewer'; token: string }[]
}

/** The site as OCPI 2.2.1 names it (for the ocpi-cdr and ocpi-tariff exports). */
export interface OcpiConfig {
  countryCode: string
  partyId: string
  address: string
  city: string
  postalCode?: string
  state?: string
  country: string
  latitude: number
  longitude: number
  connector?: { standard?: string; format?: 'SOCKET' | 'CABLE'; powerType?: 'AC_1_PHASE' | 'AC_2_PHASE' | 'AC_2_PHASE_SPLIT' | 'AC_3_PHASE' | 'DC' }
}

export interface NodeRedConfig {
  enabled: boolean
  /** Where the editor is served: a path under the API's listener. */
  httpAdminRoot: string
  /** Where flows' own HTTP endpoints (http-in nodes) are served, under the API's listener. */
  httpNodeRoot: string
  adminAuth?: { username: string; passwordHash: string }
  flowFile?: string
  /** Node-RED's user directory (default `<storage.dir>-node-red`): never inside storage.dir. */
  userDir?: string
  /** The user Node-RED runs as when the daemon runs as root (default outpost-node-red). */
  user?: string
  /** Commands a second (and in one burst) Node-RED may send before they are refused `rate-limited`. */
  commandRate?: number
  /** Node-RED's heap bound (V8 --max-old-space-size), MB. */
  maxMemoryMb?: number
}

// ---------------------------------------------------------------- readings

/** One sample of one outlet's meter. Energy is the meter's own lifetime register. */
export interface Reading {
  /** Wall-clock epoch milliseconds of the sample (from the injected clock). */
  ts: number
  currentA: number
  powerW: number
  energyWh: number
  voltageV: number
  /** The meter's serial number as its serial register reads (models with identity.serial), once known. */
  meterSerial?: string
}

// ---------------------------------------------------------------- records

export type EndReason =
  | 'user-stopped'
  | 'manager-stopped'
  | 'wallet-depleted'
  | 'unplugged'
  | 'charge-complete'
  | 'grace-expired'
  | 'plan-unavailable'
  | 'power-loss'
  | 'reboot'
  | 'meter-fault'
  | 'offline-limit'

export type SessionTrigger = 'activation' | 'auto-start'

/** rejected: a reading whose energy step was never billed; rebase: the meter's counter was reset, nothing billed across it. */
export type MeterEventKind = 'rejected' | 'rebase'

/** A reading the engine would not bill as it stood, in session.ended's meterEvents. */
export interface MeterEvent {
  /** rejected: the reading's time; rebase: the time of the first reading of the reset counter. */
  at: string
  kind: MeterEventKind
  /** The last good register (Wh) the step was judged against. */
  fromWh: number
  /** rejected: the register the reading gave; rebase: the reset counter's register, the new base. */
  toWh: number
}

export interface BillingLine {
  /** ISO 8601 UTC with milliseconds. */
  from: string
  to: string
  energyWh: number
  seconds: number
  perKwh: number | null
  perHour: number | null
  /** Integer millionths of the currency unit. */
  amountMicros: number
  /**
   * Only when the session hit its wallet cap: micro-units of this line not charged,
   * so that amountMicros + waivedMicros is the line at its rates (added by the engine).
   */
  waivedMicros?: number
  /** Only when the session waited on a full circuit within this line: those seconds, not in `seconds` (seconds + pausedS = to - from). */
  pausedS?: number
}

export type QueueReason = 'start' | 'rotation' | 'shed' | 'failsafe' | 'limit'

/**
 * Present on gateway.started only when boot found the journal damaged (JOURNAL_CORRUPT)
 * and moved it aside: `repaired` (LevelDB's repair gave back the whole verified chain)
 * or `fresh` (a new journal holding the readable records, state, readings and results).
 */
export interface JournalSalvageInfo {
  mode: 'repaired' | 'fresh'
  /** Where the damaged journal was moved; null when its directory was missing. */
  movedTo: string | null
  reason: string
  /** The first and last seq now held (the seqs in `lost` between them are not). */
  carried: { from: number; to: number } | null
  /**
   * Unacknowledged seqs that could not be read (never sent again), ascending ranges: below the carried ones,
   * and every hole between carried records (all of them, when none is carried); null when none.
   */
  lost: { from: number; to: number }[] | null
  /** Seqs above the carried ones known to have been given out, and lost (never sent again). */
  lostAfter: { from: number; to: number } | null
  /** Seqs above this one may have been given out and lost: how many is unknown. */
  unknownAbove: number | null
  /** The records after this gateway.started are a new chain: its seq is past every seq the old chain may have used, its prev 64 zeros. */
  newChain: boolean
  /** Records were lost: a session.started in them whose session no surviving state shows is gone with them. */
  sessionsMayBeLost: boolean
}

/**
 * A salvage announced in a form the cloud can check: signed (ECDSA P-256, SHA-256, DER in base64)
 * with the gateway key over the canonical JSON of every other field (daemon/journal/chain.ts
 * salvageStatement). `seq` and `prev` are its gateway.started's own.
 */
export interface SalvageProof {
  site: string
  seq: number
  prev: string
  /** The last record before this one the salvage could still read (its seq and hash); null when it read none. */
  last: { seq: number; hash: string } | null
  /** Seqs below `seq` that will never be sent, ascending and merged: lost, or (before a new chain) never given out. */
  lost: { from: number; to: number }[]
  signature: string
}

/** What the engine emits; the journal adds seq, bootId, clockSynced, prev, hash. */
/** Every record type, in one list: the journal refuses any other, Node-RED's events node offers these. */
export const RECORD_TYPES = [
  'gateway.started',
  'session.started',
  'session.ended',
  'outlet.fault',
  'outlet.recovered',
  'meter.reconciliation',
  'session.queued',
  'session.resumed',
  'config.applied',
] as const
export type RecordType = (typeof RECORD_TYPES)[number]

export type RecordBody =
  | {
      type: 'gateway.started'
      ts: string
      version: string
      cleanShutdown: boolean
      /** The gateway's public key, SPKI in PEM: every later session.ended's OCMF signature verifies against it. */
      publicKey?: string
      journalSalvage?: JournalSalvageInfo
      /** With journalSalvage: the salvage's statement signed with the gateway key (the cloud continues the site's chain on it). */
      salvageProof?: SalvageProof
    }
  | {
      type: 'session.started'
      ts: string
      sessionId: string
      outlet: string
      userId: string
      planId: string
      trigger: SessionTrigger
      meterWh: number
      /** The serial number the outlet's meter reported when the session started (models with a serial register). */
      meterSerial?: string
    }
  | {
      type: 'session.ended'
      ts: string
      sessionId: string
      outlet: string
      userId: string
      planId: string
      trigger: SessionTrigger
      startedAt: string
      endedAt: string
      reason: EndReason
      durationS: number
      energyWh: number
      meterStartWh: number
      meterEndWh: number
      currency: string
      lines: BillingLine[]
      activationFee: number
      total: number
      offline: boolean
      /** Seconds the session waited with its relay open on a full circuit (never billed per hour). */
      pausedS: number
      /**
       * Only when the meter misbehaved during the session: each rejected reading and each rebase,
       * oldest first (the first 32).
       */
      meterEvents?: MeterEvent[]
      /** Only when more events happened than meterEvents holds: how many were left out. */
      meterEventsOmitted?: number
      /**
       * Only when the register was rebased during the session: the sum of the rebases' jumps (Wh,
       * negative for a reset), never billed. energyWh = meterEndWh − meterStartWh − rebasedWh.
       */
      rebasedWh?: number
      /** The session.started's meterSerial: the meter that measured the session (signed into the OCMF as MS). */
      meterSerial?: string
      /** `OCMF|{payload}|{signature}`: the session's readings, user, outlet and total, signed with the gateway key (added where it is journaled). */
      ocmf?: string
    }
  | {
      type: 'session.queued'
      ts: string
      sessionId: string
      outlet: string
      circuit: string
      /**
       * start: no room when it began; rotation: its slot was over and another's turn came;
       * shed: the circuit was over its limit; failsafe: the feeder meter is silent;
       * limit: the outlet's own limit (set-outlet-limit, an OCPP charging profile) is below sessions.minChargeA.
       */
      why: QueueReason
    }
  | { type: 'session.resumed'; ts: string; sessionId: string; outlet: string; circuit: string; waitedS: number }
  | { type: 'outlet.fault'; ts: string; outlet: string; detail: string }
  | {
      type: 'config.applied'
      ts: string
      /** Who applied it: the API token's name (role:name), or `file` when boot found the file changed since the last one applied. */
      who: string
      /** Lowercase hex SHA-256 of the config file's bytes now in force. */
      configHash: string
      /** The hash of the config it replaced; null when the journal knew none. */
      previousHash: string | null
      /** JSON pointers of what changed (leaves; `""` for the whole document), at most CONFIG_CHANGES_MAX. */
      changed: string[]
      /** Only when more pointers changed than `changed` holds: how many were left out. */
      changedOmitted?: number
      /** Only when some outlets have a session open: their changes wait until it ends (their wiring and plan stay as they were). */
      pendingOutlets?: string[]
    }
  | { type: 'outlet.recovered'; ts: string; outlet: string; detail: string }
  | {
      type: 'meter.reconciliation'
      ts: string
      outlet: string
      from: string
      to: string
      meterStartWh: number
      meterEndWh: number
      billedWh: number
      unbilledWh: number
      /**
       * Only when the register was rebased in the period: the sum of its jumps (Wh, negative for a
       * reset), never counted as energy. meterEndWh − meterStartWh = billedWh + unbilledWh + rebasedWh.
       */
      rebasedWh?: number
      /** Only when readings were rejected in the period (a step the outlet could not draw, a step back): how many. */
      rejectedReadings?: number
    }

export type SessionEndedBody = Extract<RecordBody, { type: 'session.ended' }>

/** A journaled record as the cloud sees it. */
export type JournalRecord = RecordBody & {
  seq: number
  bootId: string
  clockSynced: boolean
  /** Hash of the previous record, 64 zeros for seq 1. */
  prev: string
  /** Lowercase hex SHA-256 of the RFC 8785 canonical JSON of the record without `hash`. */
  hash: string
}

// ---------------------------------------------------------------- outlet status

export type OutletState = 'off' | 'armed' | 'pending' | 'charging' | 'queued' | 'unavailable' | 'fault'
/** Every outlet state, in one list (metrics, the status page). */
export const OUTLET_STATES: readonly OutletState[] = ['off', 'armed', 'pending', 'charging', 'queued', 'unavailable', 'fault']

/** Published on P/outlets/{id} and served by GET /api/outlets. */
export interface OutletStatus {
  outlet: string
  state: OutletState
  sessionId?: string
  userId?: string
  currentA: number
  powerW: number
  /** Energy of the open session so far, else 0. */
  energyWh: number
  /** Cost of the open session so far, in minor units, else 0. */
  cost: number
  currency?: string
  /** The circuit the outlet is on, if any. */
  circuit?: string
  /** While `queued`: since when the session has waited (ISO 8601). */
  queuedSince?: string
  ts: string
}

// ---------------------------------------------------------------- commands

export type Command =
  | { action: 'start'; outlet: string; userId: string }
  | { action: 'stop'; outlet: string; by: 'user' | 'manager' }
  | { action: 'set-wallet'; userId: string; currency: string; balance: number }
  | { action: 'set-auto-start'; outlet: string; userId: string | null }
  | { action: 'set-availability'; outlet: string; available: boolean }
  | { action: 'set-plan'; plan: PlanConfig }
  | { action: 'assign-plan'; outlet: string; planId: string }
  /** Demand response: the circuit's limit (per phase, A) until the next one; null goes back to the configured maxA. */
  | { action: 'set-circuit-limit'; circuit: string; maxA: number | null }
  /** An outlet's own limit (per phase, A) until the next one: below sessions.minChargeA its session waits; null: none. */
  | { action: 'set-outlet-limit'; outlet: string; maxA: number | null }

/** Where a command came from: the cloud (MQTT), the local API, a Node-RED flow, or the OCPP central system. */
export type CommandSource = 'cloud' | 'local' | 'node-red' | 'ocpp'

export type CommandResult = { id: string; ok: true; result?: unknown } | { id: string; ok: false; error: { code: string; message: string } }

// ---------------------------------------------------------------- journal seams

/**
 * The engine's state as the journal persists it: plain JSON (no Map, class or
 * undefined-vs-missing tricks), structurally shared between steps so the journal
 * can write only the top-level sections and `outlets[id]` entries whose object
 * identity changed.
 */
export interface PersistedEngineState {
  outlets: Record<string, unknown>
  [section: string]: unknown
}

/** The journal's record log as the uplink and the API read it. */
export interface RecordLog {
  /** Last seq written, 0 when empty. */
  head(): number
  /** The cloud's ack watermark: it durably holds every record up to here. */
  acked(): number
  /** Oldest seq still held (earlier ones were compacted), head()+1 when empty. */
  oldest(): number
  /** Records with seq >= from, in order, at most `limit`. Throws OutpostError('JOURNAL_COMPACTED') when from < oldest(). */
  read(from: number, limit: number): Promise<JournalRecord[]>
  /** Durably advance the ack watermark; values <= acked() are ignored, values > head() are clamped. */
  ack(upTo: number): Promise<void>
  /** Called after every durable append with the new head. Returns an unsubscribe function. */
  onAppend(listener: (head: number) => void): () => void
  /**
   * Seqs a salvage lost between records it carried, and between them and a new chain (never held,
   * never sent), ascending: a read stops before the next hole, and a read from inside one starts after it.
   */
  holes?(): readonly { from: number; to: number }[]
}

// ---------------------------------------------------------------- the pull (P/pull/answer), both sides of the contract

/** Why a pull was refused (PullAnswer.error). */
export interface PullError {
  /** 'invalid-pull' (malformed request), 'compacted' (range no longer held), 'internal'. */
  code: 'invalid-pull' | 'compacted' | 'internal'
  message: string
  /** With 'compacted': the oldest seq the journal still holds. */
  oldest?: number
}

/** A gateway's answer to a pull: what the uplink publishes on P/pull/answer and the cloud reads. */
export interface PullAnswer {
  requestId: string | null
  records: JournalRecord[]
  /** The seq to pull next for the rest of the range, or null when the range is complete. */
  next: number | null
  head: number
  error?: PullError
}

// The list and the record shapes name the same types: a record added to one and not the other does not compile.
type SameTypes<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false
const recordTypesMatch: SameTypes<RecordType, RecordBody['type']> = true
void recordTypesMatch
