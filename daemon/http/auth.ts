/**
 * Who may use the local API: the holder of `api.token` (the admin role) or of an
 * `api.tokens` entry (installer, owner or viewer: docs/contract.md "Config changes").
 *
 * Two ways to present it:
 *  - `Authorization: Bearer <token>` (scripts, Node-RED flows, the cloud's site tools);
 *  - a browser signs in once at `/` with a form (POST /login, field `token`) and gets
 *    an `outpost_session` cookie (HttpOnly, SameSite=Strict, Path=/): a browser cannot
 *    send a Bearer header on a navigation or from EventSource. The cookie's value is an
 *    HMAC-SHA256 of a fixed label keyed with the token, so it stays valid across
 *    restarts, is useless as the token itself, and every cookie dies when the token
 *    is changed.
 *
 * Comparisons are constant-time over SHA-256 digests (equal lengths whatever was sent).
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import type { Role } from '../config-changes.js'

export const SESSION_COOKIE = 'outpost_session'
const COOKIE_LABEL = 'outpost local api session v1'
/** A browser sign-in lasts this long (then the form again). */
export const SESSION_MAX_AGE_S = 30 * 24 * 3600

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest()
}

/** Constant-time string equality (over digests, so lengths leak nothing either). */
export function sameSecret(given: string, expected: string): boolean {
  return timingSafeEqual(digest(given), digest(expected))
}

/** Who a request is: its role, and the name journaled as `who` of what it changes (`admin`, or role:name of an api.tokens entry). */
export interface Principal {
  role: Role
  who: string
}

interface Holder extends Principal {
  token: string
  cookie: string
}

export class TokenAuth {
  private readonly holders: Holder[]

  /** `token`: api.token (the admin role); `tokens`: api.tokens, each with its role. */
  constructor(token: string, tokens: readonly { name: string; role: Role; token: string }[] = []) {
    const holder = (t: string, role: Role, who: string): Holder => ({
      token: t,
      role,
      who,
      cookie: createHmac('sha256', t).update(COOKIE_LABEL).digest('base64url'),
    })
    this.holders = [holder(token, 'admin', 'admin'), ...tokens.map((x) => holder(x.token, x.role, `${x.role}:${x.name}`))]
  }

  /** How the request authenticated and as whom, or undefined. Every token is compared (constant time each), whichever matches. */
  check(req: IncomingMessage): (Principal & { how: 'bearer' | 'cookie' }) | undefined {
    const h = req.headers.authorization
    if (typeof h === 'string') {
      const m = /^Bearer[ ]+(.+)$/i.exec(h.trim())
      const found = m ? this.find((x) => sameSecret(m[1]!, x.token)) : undefined
      return found && { role: found.role, who: found.who, how: 'bearer' }
    }
    const cookie = readCookie(req, SESSION_COOKIE)
    const found = cookie === undefined ? undefined : this.find((x) => sameSecret(cookie, x.cookie))
    return found && { role: found.role, who: found.who, how: 'cookie' }
  }

  private find(match: (x: Holder) => boolean): Holder | undefined {
    let found: Holder | undefined
    for (const x of this.holders) if (match(x) && !found) found = x
    return found
  }

  /** Whether a sign-in form's token is one of them. */
  accepts(token: string): boolean {
    return this.find((x) => sameSecret(token, x.token)) !== undefined
  }

  /** The Set-Cookie header for a successful sign-in with `token` (`secure` when served over TLS by a proxy). */
  signInCookie(token: string, secure: boolean): string {
    const x = this.find((h) => sameSecret(token, h.token))
    if (!x) throw new Error('signInCookie: not a token of this API')
    return `${SESSION_COOKIE}=${x.cookie}; HttpOnly; SameSite=Strict; Path=/; Max-Age=${SESSION_MAX_AGE_S}${secure ? '; Secure' : ''}`
  }
}

/**
 * The CSRF defence of a request that changes something with the browser's cookie: it must come
 * from the page itself. A browser sends `Origin` with every cross-origin request and every
 * non-GET one; where it is absent, `Sec-Fetch-Site` says where the request came from.
 * Returns why a request is refused, or undefined.
 */
export function crossSite(req: IncomingMessage): string | undefined {
  const origin = req.headers.origin
  const host = req.headers.host
  if (typeof origin === 'string') {
    let originHost: string | undefined
    try {
      originHost = new URL(origin).host
    } catch {
      originHost = undefined
    }
    return originHost !== undefined && originHost === host ? undefined : `the request comes from ${origin}, not from this page (${host ?? 'no host'})`
  }
  const site = req.headers['sec-fetch-site']
  if (typeof site === 'string' && site !== 'same-origin' && site !== 'none') return `the request comes from another site (Sec-Fetch-Site: ${site})`
  if (site === undefined) return 'a browser request that changes something must carry Origin (or Sec-Fetch-Site) naming this page'
  return undefined
}

export function signOutCookie(): string {
  return `${SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0`
}

export function readCookie(req: IncomingMessage, name: string): string | undefined {
  const raw = req.headers.cookie
  if (!raw) return undefined
  for (const part of raw.split(';')) {
    const eq = part.indexOf('=')
    if (eq < 0) continue
    if (part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim()
  }
  return undefined
}

/**
 * Slows down guessing: after `limit` wrong tokens (a wrong Bearer, a forged cookie, a
 * wrong sign-in) from one address within `windowMs`, that address gets 429 until the
 * window has passed — even with the right token, so guessing gains nothing. Requests
 * without credentials do not count; other addresses are not affected.
 */
export class AuthThrottle {
  private readonly failures = new Map<string, number[]>()

  constructor(
    private readonly now: () => number,
    readonly limit = 10,
    readonly windowMs = 60_000,
  ) {}

  /** Seconds until `addr` may try again, or 0. */
  blockedFor(addr: string): number {
    const recent = this.recent(addr)
    if (recent.length < this.limit) return 0
    return Math.max(1, Math.ceil((recent[0]! + this.windowMs - this.now()) / 1000))
  }

  fail(addr: string): void {
    const recent = this.recent(addr)
    recent.push(this.now())
    this.failures.set(addr, recent.slice(-this.limit))
    // Forget quiet addresses, so the map stays small.
    if (this.failures.size > 1000) for (const [a] of this.failures) if (this.recent(a).length === 0) this.failures.delete(a)
  }

  private recent(addr: string): number[] {
    const t = this.now() - this.windowMs
    return (this.failures.get(addr) ?? []).filter((x) => x > t)
  }
}

/** Whether the request carries credentials at all (a missing token is not a guess). */
export function presentsCredentials(req: IncomingMessage): boolean {
  return req.headers.authorization !== undefined || readCookie(req, SESSION_COOKIE) !== undefined
}
