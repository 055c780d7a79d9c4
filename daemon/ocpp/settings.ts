/**
 * The OCPP 1.6 configuration keys the charge point has (GetConfiguration,
 * ChangeConfiguration): one row per key, in the order GetConfiguration lists them.
 *
 * Owns: which keys exist, which the central system may change, each key's initial
 * value from the site config's `ocpp` section, and what a value must be (a value
 * refused here is answered `Rejected` and changes nothing). The supported measurands.
 *
 * Must never: do I/O, or accept a value the charge point cannot honour (a measurand it
 * cannot measure, an interval it cannot keep).
 */
import type { OcppConfig } from '../../core/types.js'
import { LIST_MAX as AUTH_LIST_MAX, SEND_LIST_MAX } from './auth.js'
import { PERIODS_MAX, PROFILES_MAX, STACK_LEVEL_MAX } from './profiles.js'
import { CHAIN_MAX, STORE_MAX } from './security.js'

/** The measurands an outlet's meter gives (sampled and clock-aligned data, transactionData). */
export const MEASURANDS = ['Energy.Active.Import.Register', 'Power.Active.Import', 'Current.Import', 'Voltage'] as const
export type Measurand = (typeof MEASURANDS)[number]

/** At most this many measurands in a list key (the four there are, each once). */
const MEASURANDS_MAX = MEASURANDS.length

export interface KeyDef {
  key: string
  /** ChangeConfiguration may change it (and the change is kept across restarts). */
  writable: boolean
  /** Its value at start, from the site config (before any change the central system made). */
  initial(o: OcppConfig, connectors: number): string
  /** Why a value is refused (`Rejected`), or undefined when it is fine. */
  refuse?(value: string): string | undefined
}

const integer =
  (min: number, max: number) =>
  (v: string): string | undefined =>
    !/^\d{1,9}$/.test(v) ? 'not a whole number' : Number(v) < min || Number(v) > max ? `not within ${min}..${max}` : undefined

/** A comma-separated list of supported measurands, each at most once; empty is none. */
export function refuseMeasurands(v: string): string | undefined {
  if (v.trim() === '') return undefined
  const items = v.split(',').map((x) => x.trim())
  const unknown = items.filter((x) => !(MEASURANDS as readonly string[]).includes(x))
  if (unknown.length > 0) return `not a measurand this charge point gives: ${unknown.join(', ').slice(0, 100)}`
  if (new Set(items).size !== items.length) return 'a measurand listed twice'
  if (items.length > MEASURANDS_MAX) return `more than ${MEASURANDS_MAX} measurands`
  return undefined
}

/** The measurands of a list key's value, in its order. */
export const measurandsOf = (v: string): Measurand[] => (v.trim() === '' ? [] : (v.split(',').map((x) => x.trim()) as Measurand[]))

const fixed = (value: string) => () => value

/** OCPP's booleans are the strings true and false. */
const refuseBoolean = (v: string): string | undefined => (v === 'true' || v === 'false' ? undefined : 'not true or false')
const bool = (b: boolean): string => (b ? 'true' : 'false')

export const KEYS: readonly KeyDef[] = [
  { key: 'HeartbeatInterval', writable: true, initial: (o) => String(o.heartbeatS), refuse: integer(10, 86400) },
  { key: 'MeterValueSampleInterval', writable: true, initial: (o) => String(o.meterValueSampleS), refuse: integer(0, 86400) },
  { key: 'ClockAlignedDataInterval', writable: true, initial: (o) => String(o.clockAlignedDataS), refuse: integer(0, 86400) },
  { key: 'MeterValuesSampledData', writable: true, initial: (o) => o.meterValuesSampledData, refuse: refuseMeasurands },
  { key: 'MeterValuesAlignedData', writable: true, initial: (o) => o.meterValuesAlignedData, refuse: refuseMeasurands },
  { key: 'StopTxnSampledData', writable: true, initial: (o) => o.stopTxnSampledData, refuse: refuseMeasurands },
  { key: 'StopTxnAlignedData', writable: true, initial: (o) => o.stopTxnAlignedData, refuse: refuseMeasurands },
  { key: 'MeterValuesSampledDataMaxLength', writable: false, initial: fixed(String(MEASURANDS_MAX)) },
  { key: 'MeterValuesAlignedDataMaxLength', writable: false, initial: fixed(String(MEASURANDS_MAX)) },
  { key: 'StopTxnSampledDataMaxLength', writable: false, initial: fixed(String(MEASURANDS_MAX)) },
  { key: 'StopTxnAlignedDataMaxLength', writable: false, initial: fixed(String(MEASURANDS_MAX)) },
  { key: 'TransactionMessageAttempts', writable: true, initial: (o) => String(o.transactionMessageAttempts), refuse: integer(1, 100) },
  {
    key: 'TransactionMessageRetryInterval',
    writable: true,
    initial: (o) => String(o.transactionMessageRetryIntervalS),
    refuse: integer(1, 3600),
  },
  // The security whitepaper's keys: SecurityProfile is never lowered and raised only with what it needs (chargepoint.ts).
  { key: 'SecurityProfile', writable: true, initial: (o) => String(securityProfileOf(o)), refuse: integer(0, 3) },
  {
    key: 'CpoName',
    writable: true,
    initial: (o) => o.cpoName,
    refuse: (v) => (v.length > 64 ? 'longer than 64 characters (an X.509 organizationName)' : undefined),
  },
  { key: 'CertificateSignedMaxChainSize', writable: false, initial: fixed(String(CHAIN_MAX)) },
  { key: 'CertificateStoreMaxLength', writable: false, initial: fixed(String(STORE_MAX)) },
  { key: 'AdditionalRootCertificateCheck', writable: false, initial: fixed('false') },
  { key: 'NumberOfConnectors', writable: false, initial: (_o, n) => String(n) },
  { key: 'AuthorizeRemoteTxRequests', writable: false, initial: fixed('false') },
  { key: 'LocalAuthorizeOffline', writable: true, initial: (o) => bool(o.localAuthorizeOffline), refuse: refuseBoolean },
  { key: 'LocalPreAuthorize', writable: true, initial: (o) => bool(o.localPreAuthorize), refuse: refuseBoolean },
  { key: 'AllowOfflineTxForUnknownId', writable: true, initial: (o) => bool(o.allowOfflineTxForUnknownId), refuse: refuseBoolean },
  { key: 'AuthorizationCacheEnabled', writable: true, initial: (o) => bool(o.authorizationCacheEnabled), refuse: refuseBoolean },
  { key: 'LocalAuthListEnabled', writable: true, initial: (o) => bool(o.localAuthListEnabled), refuse: refuseBoolean },
  { key: 'LocalAuthListMaxLength', writable: false, initial: fixed(String(AUTH_LIST_MAX)) },
  { key: 'SendLocalListMaxLength', writable: false, initial: fixed(String(SEND_LIST_MAX)) },
  { key: 'StopTransactionOnEVSideDisconnect', writable: false, initial: fixed('true') },
  { key: 'StopTransactionOnInvalidId', writable: true, initial: (o) => bool(o.stopTransactionOnInvalidId), refuse: refuseBoolean },
  { key: 'MaxEnergyOnInvalidId', writable: true, initial: (o) => String(o.maxEnergyOnInvalidIdWh), refuse: integer(0, 1_000_000) },
  { key: 'ConnectorPhaseRotation', writable: false, initial: fixed('NotApplicable') },
  { key: 'ChargeProfileMaxStackLevel', writable: false, initial: fixed(String(STACK_LEVEL_MAX)) },
  { key: 'ChargingScheduleAllowedChargingRateUnit', writable: false, initial: fixed('Current,Power') },
  { key: 'ChargingScheduleMaxPeriods', writable: false, initial: fixed(String(PERIODS_MAX)) },
  { key: 'MaxChargingProfilesInstalled', writable: false, initial: fixed(String(PROFILES_MAX)) },
  { key: 'SupportedFeatureProfiles', writable: false, initial: fixed('Core,RemoteTrigger,LocalAuthListManagement,SmartCharging') },
]

/**
 * The security profile the config file gives: `securityProfile` when set, else what the url and credentials are:
 * wss:// with a client certificate and no password 3, wss:// 2, ws:// with a password 1, ws:// 0.
 */
export function securityProfileOf(o: OcppConfig): number {
  if (o.securityProfile !== undefined) return o.securityProfile
  if (o.url.startsWith('wss://')) return o.clientCertFile !== undefined && o.password === undefined ? 3 : 2
  return o.password !== undefined ? 1 : 0
}

/**
 * What security profile `p` needs that `have` lacks, one message each: wss:// from profile 2,
 * a Basic auth password for 1 and 2, a central-system root from 2 and the charge point's
 * certificate for 3 (the last two only where known: the config check cannot know them).
 */
export function securityProfileNeeds(
  p: number,
  have: { url: string | undefined; password: boolean; root?: boolean; clientCert?: boolean },
): string[] {
  const out: string[] = []
  if (p >= 2 && have.url !== undefined && !have.url.startsWith('wss://')) out.push(`security profile ${p} needs a wss:// url (TLS)`)
  if (p >= 2 && have.root === false) out.push(`security profile ${p} needs a CentralSystemRootCertificate (none installed, no ocpp.caFile)`)
  if ((p === 1 || p === 2) && !have.password) out.push(`security profile ${p} is Basic auth: it needs ocpp.password`)
  if (p === 3 && have.clientCert === false) out.push('security profile 3 needs a ChargePointCertificate (none installed)')
  return out
}

export const keyDef = (key: string): KeyDef | undefined => KEYS.find((k) => k.key === key)
