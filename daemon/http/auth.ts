/**
 * Who may use the local API: the holder of `api.token`.
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

export class TokenAuth {
  private readonly cookieValue: string

  constructor(private readonly token: string) {
    this.cookieValue = createHmac('sha256', token).update(COOKIE_LABEL).digest('base64url')
  }

  /** How the request authenticated, or undefined. */
  check(req: IncomingMessage): 'bearer' | 'cookie' | undefined {
    const h = req.headers.authorization
    if (typeof h === 'string') {
      const m = /^Bearer[ ]+(.+)$/i.exec(h.trim())
      return m && sameSecret(m[1]!, this.token) ? 'bearer' : undefined
    }
    const cookie = readCookie(req, SESSION_COOKIE)
    if (cookie !== undefined && sameSecret(cookie, this.cookieValue)) return 'cookie'
    return undefined
  }

  /** Whether a sign-in form's token is the right one. */
  accepts(token: string): boolean {
    return sameSecret(token, this.token)
  }

  /** The Set-Cookie header for a successful sign-in (`secure` when served over TLS by a proxy). */
  signInCookie(secure: boolean): string {
    return `${SESSION_COOKIE}=${this.cookieValue}; HttpOnly; SameSite=Strict; Path=/; Max-Age=${SESSION_MAX_AGE_S}${secure ? '; Secure' : ''}`
  }
}

export function signOutCookie(): string {
  return `${SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0`
}

function readCookie(req: IncomingMessage, name: string): string | undefined {
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
