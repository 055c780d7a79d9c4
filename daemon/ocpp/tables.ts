/**
 * How Outpost's outlets and sessions read in OCPP 1.6 terms: the one table from
 * outlet state to StatusNotification, the one table from end reason to
 * StopTransaction reason, and the messages built from journal records.
 *
 * Owns: those mappings, each in one place. The tables are typed over every
 * OutletState and every EndReason, so a state or reason added to the engine
 * without its row here does not compile.
 *
 * Must never: do I/O, or invent a figure the journal does not hold (meterStart
 * and meterStop are the journaled registers, rounded to whole Wh as OCPP asks).
 */
import type { BillingLine, EndReason, JournalRecord, OutletState, Reading } from '../../core/types.js'
import type { Measurand } from './settings.js'

export type ChargePointStatus =
  | 'Available'
  | 'Preparing'
  | 'Charging'
  | 'SuspendedEVSE'
  | 'SuspendedEV'
  | 'Finishing'
  | 'Reserved'
  | 'Unavailable'
  | 'Faulted'

export type ChargePointErrorCode = 'NoError' | 'PowerMeterFailure' | 'OtherError'

export interface ConnectorStatus {
  status: ChargePointStatus
  errorCode: ChargePointErrorCode
  /** Free text for a fault (at most 50 characters in OCPP 1.6). */
  info?: string
}

/** What a row of the status table looks at. */
export interface StatusFacts {
  currentA: number
  /** Below this a session is not drawing (sessions.minChargeA). */
  minChargeA: number
  meterFault: string | null
  relayFault: string | null
}

const plain =
  (status: ChargePointStatus): (() => ConnectorStatus) =>
  () => ({ status, errorCode: 'NoError' })

/**
 * Outlet state → StatusNotification. `Finishing` is not a state: the charge point sends it
 * once between the end of a session and the status that follows (see chargepoint.ts).
 */
export const CONNECTOR_STATUS: { readonly [S in OutletState]: (f: StatusFacts) => ConnectorStatus } = {
  off: plain('Available'),
  // Relay closed, waiting for the auto-start user's car: free for use.
  armed: plain('Available'),
  // Activated, grace period running, nothing drawn yet.
  pending: plain('Preparing'),
  // A session that draws nothing (plugged in, the car paused) is the car's choice: SuspendedEV.
  charging: (f) => (f.currentA < f.minChargeA ? { status: 'SuspendedEV', errorCode: 'NoError' } : { status: 'Charging', errorCode: 'NoError' }),
  // Waiting its turn on a full circuit, relay open: the charge point, not the car, holds it.
  queued: plain('SuspendedEVSE'),
  unavailable: plain('Unavailable'),
  fault: (f) => ({
    status: 'Faulted',
    errorCode: f.meterFault !== null ? 'PowerMeterFailure' : 'OtherError',
    info: (f.meterFault ?? f.relayFault ?? 'fault').slice(0, 50),
  }),
}

export type StopReason =
  | 'EmergencyStop'
  | 'EVDisconnected'
  | 'HardReset'
  | 'Local'
  | 'Other'
  | 'PowerLoss'
  | 'Reboot'
  | 'Remote'
  | 'SoftReset'
  | 'UnlockCommand'
  | 'DeAuthorized'

/**
 * Every end reason → StopTransaction reason. A stop the central system itself asked for
 * (RemoteStopTransaction, ChangeAvailability) is `Remote`, and a session it refused
 * (idTagInfo not Accepted) is `DeAuthorized`, whatever the record's reason: chargepoint.ts
 * knows those and overrides this table for them.
 */
export const STOP_REASON: { readonly [R in EndReason]: StopReason } = {
  unplugged: 'EVDisconnected',
  // The car tapered and stopped drawing: it ended the charge, not the cable; OCPP 1.6 has no "full".
  'charge-complete': 'Other',
  // A user's stop comes from the site (local API, a driver's app through the cloud): not the central system.
  'user-stopped': 'Local',
  // The manager's stop through MQTT or the local API; the central system's own stops are Remote.
  'manager-stopped': 'Local',
  'wallet-depleted': 'DeAuthorized',
  'grace-expired': 'Other',
  'plan-unavailable': 'Other',
  'power-loss': 'PowerLoss',
  reboot: 'Reboot',
  'meter-fault': 'Other',
  'offline-limit': 'DeAuthorized',
}

/** OCPP 1.6 idTag: at most 20 characters (the schema's maxLength). */
export const ID_TAG_MAX = 20

export type Started = Extract<JournalRecord, { type: 'session.started' }>
export type Ended = Extract<JournalRecord, { type: 'session.ended' }>

/** OCPP wants whole Wh (integers) for meterStart / meterStop; the journal's register is in Wh with decimals. */
export const wholeWh = (wh: number): number => Math.round(wh)

export function startPayload(r: Started, connectorId: number): Record<string, unknown> {
  return { connectorId, idTag: r.userId.slice(0, ID_TAG_MAX), meterStart: wholeWh(r.meterWh), timestamp: r.ts }
}

/** What a transactionData entry or a MeterValues meterValue is: a time and its sampled values. */
export interface MeterValue {
  timestamp: string
  sampledValue: Record<string, unknown>[]
}

/**
 * The sampled values of one reading: each measurand asked for, in its order, in its unit. Registers are whole
 * Wh (some central systems refuse fractions with FormationViolation); power in W and voltage in V to 0.1,
 * current in A to 0.001.
 */
export function sampledValues(
  r: Pick<Reading, 'energyWh' | 'powerW' | 'currentA' | 'voltageV'>,
  measurands: readonly Measurand[],
  context: string,
): Record<string, unknown>[] {
  return measurands.map((measurand) => {
    const [value, unit] = SAMPLED[measurand](r)
    return { value, context, measurand, unit }
  })
}

/** Each measurand's value (as OCPP's string) and unit, from a reading. */
const SAMPLED: { readonly [M in Measurand]: (r: Pick<Reading, 'energyWh' | 'powerW' | 'currentA' | 'voltageV'>) => [string, string] } = {
  'Energy.Active.Import.Register': (r) => [String(wholeWh(r.energyWh)), 'Wh'],
  'Power.Active.Import': (r) => [r.powerW.toFixed(1), 'W'],
  'Current.Import': (r) => [r.currentA.toFixed(3), 'A'],
  Voltage: (r) => [r.voltageV.toFixed(1), 'V'],
}

/** The register at an instant, as transactionData's Transaction.Begin / Transaction.End. */
export function registerValue(ts: string, wh: number, context: 'Transaction.Begin' | 'Transaction.End'): MeterValue {
  return {
    timestamp: ts,
    sampledValue: sampledValues({ energyWh: wh, powerW: 0, currentA: 0, voltageV: 0 }, ['Energy.Active.Import.Register'], context),
  }
}

/**
 * StopTransaction without its transactionId (known only once StartTransaction is answered).
 * transactionData, in time order: the register at the start (`Transaction.Begin`), the samples asked
 * for by StopTxnSampledData / StopTxnAlignedData (`samples`, from the session's journaled readings),
 * one Energy.Active.Import.Interval value per billing line (the energy of each priced period, stamped
 * at its end, context `Other`; whole Wh rounded on the running sum, so they add up to
 * meterStop − meterStart), and the register at the end (`Transaction.End`).
 */
export function stopPayload(r: Ended, reason: StopReason, samples: MeterValue[] = []): Record<string, unknown> {
  return {
    idTag: r.userId.slice(0, ID_TAG_MAX),
    meterStop: wholeWh(r.meterEndWh),
    timestamp: r.endedAt,
    reason,
    transactionData: [
      registerValue(r.startedAt, r.meterStartWh, 'Transaction.Begin'),
      ...samples,
      ...lineValues(r.lines, r.meterStartWh),
      registerValue(r.endedAt, r.meterEndWh, 'Transaction.End'),
    ],
  }
}

function lineValues(lines: BillingLine[], startWh: number): MeterValue[] {
  let sum = startWh
  return lines.map((l) => {
    const from = wholeWh(sum)
    sum += l.energyWh
    return {
      timestamp: l.to,
      sampledValue: [{ value: String(wholeWh(sum) - from), context: 'Other', measurand: 'Energy.Active.Import.Interval', unit: 'Wh' }],
    }
  })
}

/** StopTransaction of a transaction whose session record is gone: PowerLoss at the last meter value known. */
export function powerLossPayload(at: string, meterWh: number): Record<string, unknown> {
  return {
    meterStop: wholeWh(meterWh),
    timestamp: at,
    reason: 'PowerLoss' satisfies StopReason,
    transactionData: [registerValue(at, meterWh, 'Transaction.End')],
  }
}

/** One MeterValues of a connector: a reading's values at `at` (empty measurands: nothing to send). */
export function meterSample(
  connectorId: number,
  at: string,
  r: Pick<Reading, 'energyWh' | 'powerW' | 'currentA' | 'voltageV'>,
  measurands: readonly Measurand[],
  context: 'Sample.Periodic' | 'Sample.Clock' | 'Trigger',
): Record<string, unknown> {
  return { connectorId, meterValue: [{ timestamp: at, sampledValue: sampledValues(r, measurands, context) }] }
}
