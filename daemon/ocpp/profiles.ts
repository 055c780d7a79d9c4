/**
 * Smart charging (OCPP 1.6 SetChargingProfile, ClearChargingProfile, GetCompositeSchedule):
 * the charging profiles the central system installed, kept in the journal's side data (owner
 * `ocpp-profiles`: `p!<chargingProfileId>` one installed profile with its connector and, for a
 * TxProfile, its session; `site` the site limit last given to the engine; a salvage carries them),
 * and the limit each stack gives at an instant.
 *
 * Owns: the rules of a profile (what is `Rejected`, what is a CALLERROR), which installed profile
 * a new one replaces (the same chargingProfileId, or the same connector, purpose and stackLevel),
 * the limits (ChargeProfileMaxStackLevel, ChargingScheduleMaxPeriods, MaxChargingProfilesInstalled),
 * a schedule's limit at an instant (Absolute, Recurring, Relative to a transaction's start; validFrom /
 * validTo; the highest stack level with a period in force wins), and W → A at the nominal voltage.
 *
 * Must never: change the installed profiles other than in one fsynced batch (a crash leaves the old
 * set or the new one), install a profile it refused, or switch anything (chargepoint.ts turns the
 * limits into engine commands, on the daemon's clock).
 */
import type { Journal } from '../journal/index.js'
import { CallError } from './rpc.js'

const OWNER = 'ocpp-profiles'
/** The highest stackLevel accepted (ChargeProfileMaxStackLevel). */
export const STACK_LEVEL_MAX = 8
/** At most this many periods in one schedule (ChargingScheduleMaxPeriods). */
export const PERIODS_MAX = 48
/** At most this many profiles installed at once (MaxChargingProfilesInstalled). */
export const PROFILES_MAX = 32
/** W ↔ A per phase: W / (NOMINAL_V × phases), phases the period's numberPhases, else 3 (OCPP's default). */
export const NOMINAL_V = 230

export type Purpose = 'ChargePointMaxProfile' | 'TxDefaultProfile' | 'TxProfile'

export interface Period {
  startPeriod: number
  limit: number
  numberPhases?: number
}

export interface Profile {
  chargingProfileId: number
  transactionId?: number
  stackLevel: number
  chargingProfilePurpose: Purpose
  chargingProfileKind: 'Absolute' | 'Recurring' | 'Relative'
  recurrencyKind?: 'Daily' | 'Weekly'
  validFrom?: string
  validTo?: string
  chargingSchedule: {
    duration?: number
    startSchedule?: string
    chargingRateUnit: 'A' | 'W'
    chargingSchedulePeriod: Period[]
    minChargingRate?: number
  }
}

/** One installed profile: its connector (0: the charge point) and, for a TxProfile, the session it belongs to. */
export interface Installed {
  connectorId: number
  profile: Profile
  sessionId?: string
}

/** What a new profile is checked against. */
export interface ProfileContext {
  /** Whether the connector exists (0 always does). */
  connector(id: number): boolean
  /** Whether the connector's outlet is switched by the circuit rules (a TxProfile / TxDefaultProfile can pause it). */
  switchable(id: number): boolean
  /** The open transaction on a connector (transactionId once the central system gave one). */
  transaction(id: number): { sessionId: string; transactionId?: number } | undefined
  /** The site has one root circuit for a ChargePointMaxProfile to cut. */
  siteLimit: boolean
  now: number
}

const RECURRENCE_S = { Daily: 86_400, Weekly: 604_800 } as const

/** A profile's period lengths and times as its rules want them, or why not (answered `Rejected`, nothing changes). */
export function refuseProfile(connectorId: number, p: Profile, ctx: ProfileContext): string | undefined {
  const s = p.chargingSchedule
  const periods = s.chargingSchedulePeriod
  if (periods.length > PERIODS_MAX)
    throw new CallError(
      'OccurenceConstraintViolation',
      `SetChargingProfile: /csChargingProfiles/chargingSchedule/chargingSchedulePeriod: ${periods.length} periods, at most ${PERIODS_MAX} (ChargingScheduleMaxPeriods)`,
    )
  if (!ctx.connector(connectorId)) return `no connector ${connectorId}`
  if (p.stackLevel < 0 || p.stackLevel > STACK_LEVEL_MAX)
    return `stackLevel ${p.stackLevel} is not within 0..${STACK_LEVEL_MAX} (ChargeProfileMaxStackLevel)`
  if (p.chargingProfileId < 0) return 'chargingProfileId below 0'
  switch (p.chargingProfilePurpose) {
    case 'ChargePointMaxProfile':
      if (connectorId !== 0) return 'a ChargePointMaxProfile is set on connector 0'
      if (!ctx.siteLimit) return 'the site has no single root circuit for a site limit'
      if (p.chargingProfileKind === 'Relative') return 'a ChargePointMaxProfile cannot be Relative (there is no transaction to start from)'
      if (p.transactionId !== undefined) return 'a ChargePointMaxProfile names no transaction'
      break
    case 'TxDefaultProfile':
      if (p.transactionId !== undefined) return 'a TxDefaultProfile names no transaction'
      if (connectorId !== 0 && !ctx.switchable(connectorId)) return `connector ${connectorId} is on no circuit: its outlet cannot be paused`
      break
    case 'TxProfile': {
      if (connectorId === 0) return 'a TxProfile is set on a connector, not on 0'
      if (!ctx.switchable(connectorId)) return `connector ${connectorId} is on no circuit: its outlet cannot be paused`
      const tx = ctx.transaction(connectorId)
      if (!tx) return `no transaction on connector ${connectorId}`
      if (p.transactionId !== undefined && p.transactionId !== tx.transactionId)
        return `transaction ${p.transactionId} is not the one on connector ${connectorId}`
      break
    }
  }
  if (periods.length === 0) return 'no chargingSchedulePeriod'
  if (periods[0]!.startPeriod !== 0) return 'the first period does not start at 0'
  for (let i = 1; i < periods.length; i++)
    if (periods[i]!.startPeriod <= periods[i - 1]!.startPeriod)
      return `chargingSchedulePeriod ${i} starts at ${periods[i]!.startPeriod} s, not after the one before (${periods[i - 1]!.startPeriod} s)`
  for (const [i, x] of periods.entries()) {
    if (x.limit < 0) return `chargingSchedulePeriod ${i}: a limit below 0`
    if (x.numberPhases !== undefined && (x.numberPhases < 1 || x.numberPhases > 3)) return `chargingSchedulePeriod ${i}: numberPhases not within 1..3`
  }
  if (s.duration !== undefined) {
    if (s.duration <= 0) return 'a duration of 0 s or less'
    if (periods[periods.length - 1]!.startPeriod >= s.duration) return 'a period starts after the schedule ends (duration)'
  }
  if (s.minChargingRate !== undefined && s.minChargingRate < 0) return 'a minChargingRate below 0'
  const start = s.startSchedule === undefined ? undefined : Date.parse(s.startSchedule)
  switch (p.chargingProfileKind) {
    case 'Absolute':
      if (start === undefined) return 'an Absolute schedule without startSchedule'
      if (p.recurrencyKind !== undefined) return 'recurrencyKind on a profile that is not Recurring'
      break
    case 'Relative':
      if (start !== undefined) return 'a Relative schedule with a startSchedule (it starts with the transaction)'
      if (p.recurrencyKind !== undefined) return 'recurrencyKind on a profile that is not Recurring'
      break
    case 'Recurring': {
      if (p.recurrencyKind === undefined) return 'a Recurring profile without recurrencyKind'
      if (start === undefined) return 'a Recurring schedule without startSchedule'
      const len = RECURRENCE_S[p.recurrencyKind]
      if (s.duration !== undefined && s.duration > len) return `a duration longer than one recurrence (${len} s)`
      if (periods[periods.length - 1]!.startPeriod >= len) return `a period starts after one recurrence (${len} s)`
      break
    }
  }
  const from = p.validFrom === undefined ? undefined : Date.parse(p.validFrom)
  const to = p.validTo === undefined ? undefined : Date.parse(p.validTo)
  if (from !== undefined && to !== undefined && to <= from) return 'validTo is not after validFrom'
  if (to !== undefined && to <= ctx.now) return 'validTo has passed'
  if (start !== undefined && s.duration !== undefined && p.chargingProfileKind === 'Absolute' && start + s.duration * 1000 <= ctx.now)
    return 'the schedule ended before now (startSchedule + duration)'
  return undefined
}

/** A period's limit in A per phase: W at NOMINAL_V on its numberPhases (3 when not given). */
function amps(unit: 'A' | 'W', x: Period): number {
  return unit === 'A' ? x.limit : x.limit / (NOMINAL_V * (x.numberPhases ?? 3))
}

/**
 * The profile's limit at `t` (A per phase), or undefined when none of its periods is in force (not yet
 * valid or no longer, before its start, after its duration). `txStart`: when its connector's transaction
 * started (a Relative schedule's start; without one, `relativeFrom`).
 */
function limitAt(p: Profile, t: number, txStart: number | undefined, relativeFrom: number): number | undefined {
  const x = periodAt(p, t, txStart, relativeFrom)
  return x === undefined ? undefined : amps(p.chargingSchedule.chargingRateUnit, x)
}

function periodAt(p: Profile, t: number, txStart: number | undefined, relativeFrom: number): Period | undefined {
  if (p.validFrom !== undefined && t < Date.parse(p.validFrom)) return undefined
  if (p.validTo !== undefined && t >= Date.parse(p.validTo)) return undefined
  const s = p.chargingSchedule
  let anchor: number
  if (p.chargingProfileKind === 'Relative') anchor = txStart ?? relativeFrom
  else {
    anchor = Date.parse(s.startSchedule!)
    if (p.chargingProfileKind === 'Recurring' && t >= anchor) {
      const len = RECURRENCE_S[p.recurrencyKind!] * 1000
      anchor += Math.floor((t - anchor) / len) * len
    }
  }
  const offsetS = (t - anchor) / 1000
  if (offsetS < 0 || (s.duration !== undefined && offsetS >= s.duration)) return undefined
  let found: Period | undefined
  for (const x of s.chargingSchedulePeriod) if (x.startPeriod <= offsetS) found = x
  return found
}

/**
 * The instants in [from, to) at which the profile's limit may change: each period's start, the end of its
 * duration, validFrom and validTo, in every recurrence the window meets (the composite schedule is built
 * from these).
 */
export function changesIn(p: Profile, from: number, to: number, txStart: number | undefined, relativeFrom: number): number[] {
  const s = p.chargingSchedule
  const out: number[] = []
  const add = (t: number) => {
    if (t > from && t < to) out.push(t)
  }
  if (p.validFrom !== undefined) add(Date.parse(p.validFrom))
  if (p.validTo !== undefined) add(Date.parse(p.validTo))
  const anchors: number[] = []
  if (p.chargingProfileKind === 'Relative') anchors.push(txStart ?? relativeFrom)
  else if (p.chargingProfileKind === 'Absolute') anchors.push(Date.parse(s.startSchedule!))
  else {
    const start = Date.parse(s.startSchedule!)
    const len = RECURRENCE_S[p.recurrencyKind!] * 1000
    const k0 = Math.max(0, Math.floor((from - start) / len))
    for (let k = k0; start + k * len < to && anchors.length < 64; k++) anchors.push(start + k * len)
  }
  for (const a of anchors) {
    for (const x of s.chargingSchedulePeriod) add(a + x.startPeriod * 1000)
    if (s.duration !== undefined) add(a + s.duration * 1000)
  }
  return out
}

/** The limit a stack of profiles gives at `t`: the highest stackLevel with a period in force (ties: `first` wins). */
export function stackLimit(
  stack: readonly Installed[],
  t: number,
  txStart: number | undefined,
  relativeFrom: number,
  first?: (a: Installed, b: Installed) => number,
): number | undefined {
  const sorted = [...stack].sort((a, b) => b.profile.stackLevel - a.profile.stackLevel || (first?.(a, b) ?? 0))
  for (const i of sorted) {
    const l = limitAt(i.profile, t, txStart, relativeFrom)
    if (l !== undefined) return l
  }
  return undefined
}

/** The installed profiles, kept in the journal's side data. */
export class Profiles {
  private readonly byId = new Map<number, Installed>()
  /** The site limit last given to the engine (A, or null: none); undefined when none ever was. */
  private site: number | null | undefined

  private constructor(private readonly journal: Journal) {}

  static async open(journal: Journal): Promise<Profiles> {
    const p = new Profiles(journal)
    for (const [key, value] of await journal.asideRead(OWNER))
      if (key.startsWith('p!')) {
        const v = JSON.parse(value) as Installed
        p.byId.set(v.profile.chargingProfileId, v)
      } else if (key === 'site') p.site = JSON.parse(value) as number | null
    return p
  }

  /**
   * The site limit last given to the engine, kept across restarts: a schedule that ended, or a clear that landed,
   * while the daemon was down is lifted at the next start (and a limit never given by the charge point is left
   * to whoever set it).
   */
  get siteApplied(): number | null | undefined {
    return this.site
  }

  async saveSite(maxA: number | null): Promise<void> {
    if (maxA === this.site) return
    await this.journal.asideWrite(OWNER, [{ key: 'site', value: JSON.stringify(maxA) }])
    this.site = maxA
  }

  get size(): number {
    return this.byId.size
  }

  all(): Installed[] {
    return [...this.byId.values()]
  }

  /**
   * Installs a profile checked by refuseProfile: it replaces the one with its chargingProfileId and the one on
   * its connector with its purpose and stackLevel, in one fsynced batch. 'Rejected' (nothing changes) when
   * that would leave more than PROFILES_MAX installed.
   */
  async install(next: Installed): Promise<'Accepted' | 'Rejected'> {
    const p = next.profile
    const replaced = this.all().filter(
      (i) =>
        i.profile.chargingProfileId === p.chargingProfileId ||
        (i.connectorId === next.connectorId &&
          i.profile.chargingProfilePurpose === p.chargingProfilePurpose &&
          i.profile.stackLevel === p.stackLevel),
    )
    if (this.byId.size - replaced.length + 1 > PROFILES_MAX) return 'Rejected'
    const ops: { key: string; value: string | null }[] = replaced.map((i) => ({ key: keyOf(i.profile.chargingProfileId), value: null }))
    ops.push({ key: keyOf(p.chargingProfileId), value: JSON.stringify(next) })
    await this.journal.asideWrite(OWNER, ops)
    for (const i of replaced) this.byId.delete(i.profile.chargingProfileId)
    this.byId.set(p.chargingProfileId, next)
    return 'Accepted'
  }

  /** Removes the profiles `which` picks, in one fsynced batch; how many went. */
  async remove(which: (i: Installed) => boolean): Promise<number> {
    const gone = this.all().filter(which)
    if (gone.length === 0) return 0
    await this.journal.asideWrite(
      OWNER,
      gone.map((i) => ({ key: keyOf(i.profile.chargingProfileId), value: null })),
    )
    for (const i of gone) this.byId.delete(i.profile.chargingProfileId)
    return gone.length
  }
}

/** Ids may be negative in the schema (refused before this): 12 digits keep the keys in order. */
const keyOf = (id: number): string => `p!${String(id).padStart(12, '0')}`
