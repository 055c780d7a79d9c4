/**
 * What a config change is: the JSON pointers that differ between two config documents, which
 * of them the running daemon can apply without a restart, and which API role may change each.
 *
 * Owns: the list of what applies at once (the engine's parameters: plans and prices, an
 * outlet's plan, auto-start, rating, phases, phase and priority, a circuit's limits, the
 * session timings but the poll, the offline limit, the site's name; the API tokens; outlets
 * and buses appended), which role owns which part of the config (docs/contract.md "Config changes"),
 * and which parts are secrets.
 * Must never: validate a config (daemon/config.ts), read or write a file, or apply anything.
 */
import { escapeSegment as seg, pointerSegments } from '../core/json-pointer.js'

/** The local API's roles: `admin` is `api.token` (may do everything), the others come from `api.tokens`. */
export const ROLES = ['admin', 'installer', 'owner', 'viewer'] as const
export type Role = (typeof ROLES)[number]

/** Applied at once, owned by the owner: plans and prices, which plan an outlet sells, auto-start users, the offline limit. */
const OWNER_HOT = [/^\/plans(\/|$)/, /^\/outlets\/\d+\/plan$/, /^\/outlets\/\d+\/autoStart(\/|$)/, /^\/offline(\/|$)/]
/** Applied at once, owned by the installer: what the engine keeps of the wiring and the timings. */
const INSTALLER_HOT = [
  /^\/outlets\/\d+\/(name|ratingA|phases|phase|priority)$/,
  /^\/circuits\/\d+\/(maxA|failsafeA|slotS)$/,
  /^\/sessions\/(graceSeconds|minChargeA|autoStartA|noCurrentA|noCurrentHoldMs|meterFaultMs|taperRatio|reconciliationMinutes)$/,
  /^\/site\/name$/,
]
/** Who holds which API token: applied at once (the next request is checked against them), only `api.token`'s holder may change them. */
const ADMIN_HOT = [/^\/api\/token$/, /^\/api\/tokens(\/|$)/]
/** Where the API listens (and anything else under `api`): only `api.token`'s holder, at a restart. */
const ADMIN_ONLY = [/^\/api(\/|$)/]

export interface PointerRule {
  pointer: string
  /** Applies without a restart of the process. */
  hot: boolean
  /** The role that owns it (admin may change everything). */
  owner: Role
}

/** The pointers of every leaf that differs (a whole subtree when one side is not an object of the same kind), in document order. */
export function diffPointers(a: unknown, b: unknown, at = ''): string[] {
  if (Object.is(a, b)) return []
  const obj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)
  if (Array.isArray(a) && Array.isArray(b)) {
    const out: string[] = []
    for (let i = 0; i < Math.max(a.length, b.length); i++) {
      if (i >= a.length || i >= b.length) out.push(`${at}/${i}`)
      else out.push(...diffPointers(a[i], b[i], `${at}/${i}`))
    }
    return out
  }
  if (obj(a) && obj(b)) {
    const out: string[] = []
    const keys = [...Object.keys(a), ...Object.keys(b).filter((k) => !Object.hasOwn(a, k))]
    for (const k of keys) {
      if (!Object.hasOwn(b, k) || !Object.hasOwn(a, k)) out.push(`${at}/${seg(k)}`)
      else out.push(...diffPointers(a[k], b[k], `${at}/${seg(k)}`))
    }
    return out
  }
  return [at]
}

const ids = (doc: unknown, key: string): string => {
  const list = (doc as Record<string, unknown> | null)?.[key]
  return JSON.stringify(Array.isArray(list) ? list.map((x) => (x as { id?: unknown } | null)?.id ?? null) : null)
}

/**
 * The changes between two documents, each with whether it applies at once and who owns it.
 * Outlets or circuits removed or reordered count as one change of the whole list (`/outlets`,
 * `/circuits`): their buses and devices stay open until a restart. Outlets and buses appended
 * to their lists are one change each (`/outlets/N`, `/buses/N`) and apply at once (the daemon
 * opens them beside the others), unless the site speaks OCPP (its central system knows the
 * connectors from the boot) or the outlet is a new channel of a network device already open.
 */
export function describeChanges(before: unknown, after: unknown): PointerRule[] {
  let pointers = diffPointers(before, after)
  for (const list of ['outlets', 'circuits']) {
    if (ids(before, list) === ids(after, list) || (list === 'outlets' && appended(before, after, 'outlets'))) continue
    pointers = pointers.filter((p) => p !== `/${list}` && !p.startsWith(`/${list}/`))
    pointers.push(`/${list}`)
  }
  return pointers.map((p) => (addable(p, before, after) || rewirable(p, before, after) ? { pointer: p, hot: true, owner: 'installer' } : rule(p)))
}

/**
 * An outlet's relay changed on the Modbus or serial bus it stays on (a swapped pair mended
 * after a cross-check): the daemon binds the new relay at once, for an outlet without a session.
 */
function rewirable(pointer: string, before: unknown, after: unknown): boolean {
  const m = /^\/outlets\/(\d+)\/relay(?:\/|$)/.exec(pointer)
  if (!m) return false
  const a = listOf(before, 'outlets')[Number(m[1])]
  const b = listOf(after, 'outlets')[Number(m[1])]
  if (!a || !b || a.id !== b.id || a.bus !== b.bus || a.relay === undefined || b.relay === undefined) return false
  const bus = listOf(after, 'buses').find((x) => x?.id === b.bus)
  return bus !== undefined && (bus.type === 'modbus-rtu' || bus.type === 'modbus-tcp' || bus.type === 'serial')
}

type Doc = Record<string, unknown> | null
const listOf = (doc: unknown, key: string): Record<string, unknown>[] => {
  const v = (doc as Doc)?.[key]
  return Array.isArray(v) ? (v as Record<string, unknown>[]) : []
}

/** Whether `after`'s list only appends entries (with new ids) to `before`'s. */
function appended(before: unknown, after: unknown, key: string): boolean {
  const a = listOf(before, key).map((x) => x?.id)
  const b = listOf(after, key).map((x) => x?.id)
  return b.length > a.length && a.every((id, i) => b[i] === id) && b.slice(a.length).every((id) => typeof id === 'string' && !a.includes(id))
}

/** A whole outlet or bus appended, which the daemon can open while it runs. */
function addable(pointer: string, before: unknown, after: unknown): boolean {
  const m = /^\/(outlets|buses)\/(\d+)$/.exec(pointer)
  if (!m || (before as Doc)?.ocpp !== undefined || (after as Doc)?.ocpp !== undefined) return false
  const key = m[1]!
  if (Number(m[2]) < listOf(before, key).length || !appended(before, after, key)) return false
  if (key === 'buses') return true
  const bus = listOf(after, 'outlets')[Number(m[2])]?.bus
  const had = listOf(before, 'buses').find((b) => b?.id === bus)
  // A network device checks its outlets' needs when it starts: a new channel of one already open waits for a restart.
  return had === undefined || (had.type !== 'shelly' && had.type !== 'tasmota')
}

export function rule(pointer: string): PointerRule {
  if (OWNER_HOT.some((r) => r.test(pointer))) return { pointer, hot: true, owner: 'owner' }
  if (INSTALLER_HOT.some((r) => r.test(pointer))) return { pointer, hot: true, owner: 'installer' }
  if (ADMIN_HOT.some((r) => r.test(pointer))) return { pointer, hot: true, owner: 'admin' }
  if (ADMIN_ONLY.some((r) => r.test(pointer))) return { pointer, hot: false, owner: 'admin' }
  return { pointer, hot: false, owner: 'installer' }
}

/** Whether `role` may change what `r` names. */
export function mayChange(role: Role, r: PointerRule): boolean {
  return role === 'admin' || role === r.owner
}

/** Where a config holds a secret: only the admin reads them back (every other role reads REDACTED there). */
const SECRETS = [
  /^\/uplink\/password$/,
  /^\/ocpp\/password$/,
  /^\/api\/token$/,
  /^\/api\/tokens\/\d+\/token$/,
  /^\/nodeRed\/adminAuth\/passwordHash$/,
]
/** What a secret reads as for a role other than admin; given back unchanged in a save, it keeps the secret in force. */
export const REDACTED = '<redacted>'

function eachSecret(doc: unknown, visit: (holder: Record<string, unknown>, key: string, pointer: string) => void, at = ''): void {
  if (typeof doc !== 'object' || doc === null) return
  for (const [k, v] of Object.entries(doc)) {
    const p = `${at}/${seg(k)}`
    if (typeof v === 'string' && SECRETS.some((r) => r.test(p))) visit(doc as Record<string, unknown>, k, p)
    else eachSecret(v, visit, p)
  }
}

/** A copy of `doc` with every secret replaced by REDACTED. */
export function redact(doc: unknown): unknown {
  const copy = structuredClone(doc)
  eachSecret(copy, (holder, key) => {
    holder[key] = REDACTED
  })
  return copy
}

/** A copy of `doc` in which every secret still REDACTED takes the value at the same pointer of `inForce` (so a save by a role that never saw it keeps it). */
export function unredact(doc: unknown, inForce: unknown): unknown {
  const copy = structuredClone(doc)
  const at = (p: string): unknown =>
    pointerSegments(p).reduce<unknown>((n, k) => (typeof n === 'object' && n !== null ? (n as Record<string, unknown>)[k] : undefined), inForce)
  eachSecret(copy, (holder, key, pointer) => {
    const was = at(pointer)
    if (holder[key] === REDACTED && typeof was === 'string') holder[key] = was
  })
  return copy
}
