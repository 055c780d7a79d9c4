/**
 * OCMF (Open Charge Metering Format, S.A.F.E. e.V., version 1.2) for session.ended: the
 * `OCMF|{payload}|{signature}` string that transparency software and CPO back ends verify.
 *
 * Owns: the payload a session.ended is signed as (identity FV/GI/GS/GV/PG, meter
 * MV/MM/MS, user IS/IT/ID/TT, charge point CT/CI, readings RD), signing it with the gateway
 * key, parsing an OCMF string, and checking one against its record and a public key.
 * Must never: hold or read a key file (gateway-key.ts does), touch the journal, or sign
 * anything but the exact payload bytes it returns.
 */
import { createPublicKey, sign, verify, type KeyObject } from 'node:crypto'
import type { SessionEndedBody, SiteConfig } from '../core/types.js'
import { currencyMinorDigits, formatMinor } from '../core/money.js'
import { OutpostError } from './errors.js'
import { meterSerial } from '../core/meter-serial.js'

export const OCMF_VERSION = '1.2'
export const SIGNATURE_ALGORITHM = 'ECDSA-secp256r1-SHA256'
/** OBIS code of the meter's total imported active energy register (what meterStartWh/meterEndWh are read from). */
export const OBIS_IMPORT_TOTAL = '01-00:01.08.00.FF'

export interface OcmfReading {
  TM: string
  TX: 'B' | 'E' | 'P'
  RV: number
  RI: string
  RU: 'kWh'
  RT: 'AC'
  ST: 'G'
}

export interface OcmfPayload {
  FV: string
  GI: string
  GS: string
  GV: string
  PG: string
  MV?: string
  MM: string
  MS: string
  IS: boolean
  IT: 'CENTRAL'
  ID: string
  TT: string
  CT: 'CBIDC'
  CI: string
  RD: OcmfReading[]
}

/** What an outlet's meter is, for MV/MM/MS. */
export interface MeterIdentity {
  manufacturer?: string
  model: string
  serial: string
}

export interface OcmfContext {
  siteId: string
  gatewaySerial: string
  version: string
  /** The pagination counter's value for this record (`T<n>`). */
  pagination: number
  clockSynced: boolean
  meter: MeterIdentity
}

/**
 * OCMF time: `YYYY-MM-DDThh:mm:ss,fff+zzzz T` with the time status T: `S` synchronised, `U`
 * unknown (the gateway's clock was not synchronised when the record was sealed).
 */
const RECORD_ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/
export function ocmfTime(iso: string, synced: boolean): string {
  // The records' own times are already toISOString()'s form: rewritten without a Date.
  if (RECORD_ISO.test(iso)) return `${iso.slice(0, 19)},${iso.slice(20, 23)}+0000 ${synced ? 'S' : 'U'}`
  const d = new Date(iso)
  if (Number.isNaN(d.getTime())) throw new OutpostError('OCMF_INVALID', `not an ISO 8601 time: ${JSON.stringify(iso)}`)
  return `${d.toISOString().replace('.', ',').replace('Z', '+0000')} ${synced ? 'S' : 'U'}`
}

/** The tariff text TT: plan and total, so that the total is signed too (`standard 2.35 CAD`). */
export function tariffText(r: Pick<SessionEndedBody, 'planId' | 'total' | 'currency'>): string {
  const digits = currencyMinorDigits(r.currency) ?? 2
  return `${r.planId} ${formatMinor(r.total, digits)} ${r.currency}`.slice(0, 250)
}

/** kWh as OCMF's RV, from the record's Wh (the same expression on both sides: verify compares exactly). */
export const kwh = (wh: number): number => wh / 1000

export function ocmfPayload(r: SessionEndedBody, c: OcmfContext): OcmfPayload {
  const p: OcmfPayload = {
    FV: OCMF_VERSION,
    GI: c.siteId,
    GS: c.gatewaySerial,
    GV: c.version,
    PG: `T${c.pagination}`,
    ...(c.meter.manufacturer ? { MV: c.meter.manufacturer } : {}),
    MM: c.meter.model,
    // The serial the meter itself reported at the session's start, else the configured one.
    MS: r.meterSerial ?? c.meter.serial,
    IS: true,
    IT: 'CENTRAL',
    ID: r.userId,
    TT: tariffText(r),
    CT: 'CBIDC',
    CI: r.outlet,
    RD: [
      { TM: ocmfTime(r.startedAt, c.clockSynced), TX: 'B', RV: kwh(r.meterStartWh), RI: OBIS_IMPORT_TOTAL, RU: 'kWh', RT: 'AC', ST: 'G' },
      {
        TM: ocmfTime(r.endedAt, c.clockSynced),
        TX: r.reason === 'power-loss' ? 'P' : 'E',
        RV: kwh(r.meterEndWh),
        RI: OBIS_IMPORT_TOTAL,
        RU: 'kWh',
        RT: 'AC',
        ST: 'G',
      },
    ],
  }
  return p
}

/** The payload section's text: JSON with `|` escaped, so that the three sections split on `|` unambiguously. */
export function payloadText(p: OcmfPayload): string {
  return JSON.stringify(p).replace(/\|/g, '\\u007c')
}

/** `OCMF|{payload}|{"SA":"ECDSA-secp256r1-SHA256","SD":"<hex DER>"}`, the signature over the payload section's UTF-8 bytes. */
export function signOcmf(payload: OcmfPayload, privateKey: KeyObject): string {
  const text = payloadText(payload)
  const sd = sign('sha256', Buffer.from(text, 'utf8'), { key: privateKey, dsaEncoding: 'der' }).toString('hex')
  return `OCMF|${text}|${JSON.stringify({ SA: SIGNATURE_ALGORITHM, SD: sd })}`
}

export interface ParsedOcmf {
  payloadText: string
  payload: OcmfPayload
  signature: { SA?: string; SD: string }
}

export function parseOcmf(value: string): ParsedOcmf {
  if (typeof value !== 'string') throw new OutpostError('OCMF_INVALID', 'OCMF value is not a string')
  const parts = value.split('|')
  if (parts.length !== 3 || parts[0] !== 'OCMF') throw new OutpostError('OCMF_INVALID', 'not OCMF|{payload}|{signature}')
  try {
    return { payloadText: parts[1]!, payload: JSON.parse(parts[1]!) as OcmfPayload, signature: JSON.parse(parts[2]!) as ParsedOcmf['signature'] }
  } catch (err) {
    throw new OutpostError('OCMF_INVALID', `a section is not JSON: ${(err as Error).message}`, { cause: err })
  }
}

/** The pagination counter of an OCMF string (`T<n>` → n), undefined when it has none. */
export function paginationOf(value: string | undefined): number | undefined {
  if (typeof value !== 'string') return undefined
  try {
    const m = /^T([1-9]\d*)$/.exec(parseOcmf(value).payload.PG)
    return m ? Number(m[1]) : undefined
  } catch {
    return undefined
  }
}

/**
 * Checks a session.ended's OCMF: the signature against `publicKey` (PEM or KeyObject) and the
 * signed payload against the record's own fields (readings, times, user, outlet, total). Returns
 * the problem, or the pagination counter when everything holds.
 */
export function checkOcmf(r: SessionEndedBody, publicKey: string | KeyObject): { ok: true; pagination: number } | { ok: false; problem: string } {
  if (typeof r.ocmf !== 'string') return { ok: false, problem: 'session.ended carries no ocmf' }
  let parsed: ParsedOcmf
  try {
    parsed = parseOcmf(r.ocmf)
  } catch (err) {
    return { ok: false, problem: `ocmf: ${(err as Error).message}` }
  }
  const { payload: p, signature: s } = parsed
  if (s.SA !== SIGNATURE_ALGORITHM)
    return { ok: false, problem: `ocmf: signature algorithm ${JSON.stringify(s.SA)}, expected ${SIGNATURE_ALGORITHM}` }
  if (typeof s.SD !== 'string' || !/^([0-9a-fA-F]{2})+$/.test(s.SD)) return { ok: false, problem: 'ocmf: SD is not hex' }
  let good: boolean
  try {
    const key = typeof publicKey === 'string' ? createPublicKey(publicKey) : publicKey
    good = verify('sha256', Buffer.from(parsed.payloadText, 'utf8'), { key, dsaEncoding: 'der' }, Buffer.from(s.SD, 'hex'))
  } catch (err) {
    return { ok: false, problem: `ocmf: the signature cannot be checked: ${(err as Error).message}` }
  }
  if (!good) return { ok: false, problem: 'ocmf: the signature does not verify against the announced public key' }
  const m = /^T([1-9]\d*)$/.exec(String(p.PG))
  if (!m) return { ok: false, problem: `ocmf: PG ${JSON.stringify(p.PG)} is not T<n>` }
  const [b, e] = Array.isArray(p.RD) ? p.RD : []
  const expect: [string, unknown, unknown][] = [
    ['ID (user)', p.ID, r.userId],
    ['CI (outlet)', p.CI, r.outlet],
    ...(r.meterSerial !== undefined ? [['MS (meter serial)', p.MS, r.meterSerial] as [string, unknown, unknown]] : []),
    ['TT (plan and total)', p.TT, tariffText(r)],
    ['RD[0].TX', b?.TX, 'B'],
    ['RD[0].RV (begin reading, kWh)', b?.RV, kwh(r.meterStartWh)],
    ['RD[0].TM (begin time)', b?.TM?.slice(0, 28), ocmfTime(r.startedAt, true).slice(0, 28)],
    ['RD[1].TX', e?.TX, r.reason === 'power-loss' ? 'P' : 'E'],
    ['RD[1].RV (end reading, kWh)', e?.RV, kwh(r.meterEndWh)],
    ['RD[1].TM (end time)', e?.TM?.slice(0, 28), ocmfTime(r.endedAt, true).slice(0, 28)],
  ]
  for (const [what, got, want] of expect)
    if (got !== want) return { ok: false, problem: `ocmf: signed ${what} is ${JSON.stringify(got)} but the record says ${JSON.stringify(want)}` }
  return { ok: true, pagination: Number(m[1]) }
}

/** Each outlet's meter identity from the config and its meter model (MV from the model, MS from meter.serial or `<bus>:<unit>`, used when the record has no meterSerial). */
export function meterIdentities(config: SiteConfig, manufacturerOf: (model: string) => string | undefined): Map<string, MeterIdentity> {
  const out = new Map<string, MeterIdentity>()
  for (const o of config.outlets) {
    const manufacturer = manufacturerOf(o.meter.model)
    out.set(o.id, {
      ...(manufacturer ? { manufacturer } : {}),
      model: o.meter.model,
      serial: meterSerial(o),
    })
  }
  return out
}

/**
 * Checks the OCMF of a log's session.ended records in order, each against the public key the
 * log announced last (gateway.started.publicKey), and that the pagination counter goes up by one
 * from each to the next (any step up after a salvaged journal's gateway.started, which follows
 * records that may have been lost). `fallbackKey` (the key file, for `--config`) checks records
 * that come before the first announcement a compacted log still holds.
 */
export class OcmfVerifier {
  private key: KeyObject | undefined
  private announcedAt: number | undefined
  private lastPg: number | undefined
  private jumpAllowed = false
  verified = 0
  /** session.ended records before any key was announced and without a fallback key: not checked. */
  unchecked = 0
  /** session.ended records without ocmf from before the log announced any key (written before signing existed). */
  unsigned = 0
  firstPg: number | undefined

  constructor(private readonly fallbackKey?: string) {}

  get lastPagination(): number | undefined {
    return this.lastPg
  }

  /** The next session.ended may skip pagination counters: seqs before it were lost (a hole the chain check accepted). */
  allowJump(): void {
    this.jumpAllowed = true
  }

  /** Returns the problem with this record's OCMF, or undefined. */
  push(r: { seq?: number; type?: string } & Record<string, unknown>): string | undefined {
    if (r.type === 'gateway.started') {
      if (r.journalSalvage) this.jumpAllowed = true
      if (typeof r.publicKey === 'string') {
        try {
          this.key = createPublicKey(r.publicKey)
        } catch (err) {
          return `gateway.started announces a publicKey that is not a PEM public key: ${(err as Error).message}`
        }
        this.announcedAt = r.seq
      }
      return undefined
    }
    if (r.type !== 'session.ended') return undefined
    const ended = r as unknown as SessionEndedBody
    if (ended.ocmf === undefined && this.announcedAt === undefined) {
      this.unsigned++
      return undefined
    }
    let key = this.key
    if (!key && this.fallbackKey) key = createPublicKey(this.fallbackKey)
    if (!key) {
      this.unchecked++
      return undefined
    }
    const result = checkOcmf(ended, key)
    if (!result.ok)
      return this.announcedAt === undefined ? `${result.problem} (checked with the gateway key file: no key announced before it)` : result.problem
    const pg = result.pagination
    if (this.lastPg !== undefined) {
      if (pg <= this.lastPg) return `ocmf: pagination T${pg} repeats or goes back after T${this.lastPg}`
      if (pg !== this.lastPg + 1 && !this.jumpAllowed) return `ocmf: pagination gap: T${this.lastPg + 1}..T${pg - 1} missing`
    }
    this.jumpAllowed = false
    this.lastPg = pg
    this.firstPg ??= pg
    this.verified++
    return undefined
  }

  /** One line for the verify report: how many signatures held, and what was not checked. */
  summary(): string {
    const parts = [this.verified === 0 ? 'no OCMF signatures' : `${this.verified} OCMF signatures verified (T${this.firstPg}..T${this.lastPg})`]
    if (this.unsigned > 0) parts.push(`${this.unsigned} session.ended without OCMF from before the log announced a key`)
    if (this.unchecked > 0)
      parts.push(`${this.unchecked} not checked: no public key announced before them (verify with --config to use the key file)`)
    return parts.join('; ')
  }
}
