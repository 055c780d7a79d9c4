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

/**
 * StopTransaction without its transactionId (known only once StartTransaction is answered).
 * transactionData: one Energy.Active.Import.Interval value per billing line (the energy of
 * each priced period, stamped at its end) and the register at the end.
 */
export function stopPayload(r: Ended, reason: StopReason): Record<string, unknown> {
  return {
    idTag: r.userId.slice(0, ID_TAG_MAX),
    meterStop: wholeWh(r.meterEndWh),
    timestamp: r.endedAt,
    reason,
    transactionData: [...r.lines.map(lineValue), registerValue(r.endedAt, r.meterEndWh, 'Transaction.End')],
  }
}

function lineValue(l: BillingLine): Record<string, unknown> {
  return {
    timestamp: l.to,
    sampledValue: [{ value: l.energyWh.toFixed(3), context: 'Sample.Clock', measurand: 'Energy.Active.Import.Interval', unit: 'Wh' }],
  }
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

function registerValue(ts: string, wh: number, context: string): Record<string, unknown> {
  return { timestamp: ts, sampledValue: [{ value: wh.toFixed(3), context, measurand: 'Energy.Active.Import.Register', unit: 'Wh' }] }
}

/** One clock-aligned sample of an open transaction: the four measurands the README lists. */
export function meterSample(connectorId: number, at: string, r: Reading): Record<string, unknown> {
  const v = (value: number, measurand: string, unit: string, digits: number) => ({
    value: value.toFixed(digits),
    context: 'Sample.Clock',
    measurand,
    unit,
  })
  return {
    connectorId,
    meterValue: [
      {
        timestamp: at,
        sampledValue: [
          v(r.energyWh, 'Energy.Active.Import.Register', 'Wh', 3),
          v(r.powerW, 'Power.Active.Import', 'W', 1),
          v(r.currentA, 'Current.Import', 'A', 3),
          v(r.voltageV, 'Voltage', 'V', 1),
        ],
      },
    ],
  }
}
