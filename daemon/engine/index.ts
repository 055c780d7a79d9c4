/**
 * The session and pricing engine, pure: the daemon feeds it events and carries
 * out its effects. See docs/engine.md.
 */
export { circuitWiring, initialState, OCPP_SITE_CIRCUIT, siteCircuits } from './20-setup.js'
export { circuitMemoCheck } from './30-scheduler.js'
export { step } from './80-step.js'
export {
  outletStatuses,
  outletPlan,
  outletPrices,
  circuitStatuses,
  pendingConfig,
  walletViews,
  type CircuitStatus,
  type WalletView,
} from './90-views.js'
export { COMMAND_ERRORS, ENGINE_ERRORS, type CommandErrorCode, type EngineErrorCode } from './errors.js'
export {
  periodAt,
  priceTimeline,
  lineAmountMicros,
  toMicros,
  microsPerMinor,
  divRoundHalfUp,
  forEachPeriodRun,
  localWallMs,
  type PeriodAt,
  type TimelineEntry,
} from './pricing.js'
export { planIssues, planProblems, type PlanProblem } from './plan-rules.js'
export { DEFAULT_PHASES } from './meter-readings.js'
export type {
  EngineEvent,
  Effect,
  EngineState,
  StepResult,
  OutletEntry,
  Session,
  LineAcc,
  Recon,
  GatewaySection,
  SettingsSection,
  Wallet,
  CommandMemo,
  ReadingMark,
  CircuitEntry,
  CircuitSettings,
  ConfigChange,
  OutletParams,
} from './state.js'
export { planCircuits, minOnMs, minOffMs, MIN_ON_MS, MIN_OFF_MS, type CircuitLimit, type Contender, type CircuitPlan } from './circuits.js'
export { replayReadings, type ReplayReading, type ReplayResult } from './replay.js'
