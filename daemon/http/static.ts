/**
 * The status page's files, served from the package's `web/` folder (shipped
 * beside dist/, config/ and package.json; nothing comes from a CDN). Only flat
 * file names of known types are served; everything is read once and cached.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { ServerResponse } from 'node:http'
import { packagePath } from '../../core/paths.js'
import { HttpError, allow, decodePathPart } from './util.js'

const TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
  svg: 'image/svg+xml',
  png: 'image/png',
  ico: 'image/x-icon',
}

export const WEB_DIR = packagePath('web')

/** The page loads only its own files, and nobody may frame it (a panel page that can start sessions). */
const PAGE_CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
/** The sign-in form is one self-contained file (its style inline, no script). */
const SIGN_IN_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

export class StaticFiles {
  private readonly cache = new Map<string, Buffer>()

  constructor(private readonly dir = WEB_DIR) {}

  serve(res: ServerResponse, name: string, status = 200): void {
    const m = /^[A-Za-z0-9][A-Za-z0-9_-]*\.([a-z]+)$/.exec(name)
    const type = m ? TYPES[m[1]!] : undefined
    if (!type) throw new HttpError(404, 'not-found', `no file ${JSON.stringify(name)} in the status page`)
    const body = this.read(name)
    const csp = type === TYPES.html ? { 'content-security-policy': PAGE_CSP } : {}
    res.writeHead(status, {
      'content-type': type,
      'content-length': body.length,
      'cache-control': 'no-cache',
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'no-referrer',
      ...csp,
    })
    res.end(body)
  }

  /** Serves `/` (the page `page`) and `/static/<file>` and says so; any other path: false. */
  route(res: ServerResponse, method: string, path: string, page: string): boolean {
    if (path !== '/' && !path.startsWith('/static/')) return false
    allow(method, ['GET', 'HEAD'])
    this.serve(res, path === '/' ? page : decodePathPart(path.slice('/static/'.length), 'the file name'))
    return true
  }

  /** The sign-in form, with an optional message (HTML-escaped). */
  signIn(res: ServerResponse, status: number, message: string): void {
    const html = this.read('signin.html').toString('utf8').replace('{{message}}', escapeHtml(message))
    const body = Buffer.from(html)
    res.writeHead(status, {
      'content-type': TYPES.html!,
      'content-length': body.length,
      'cache-control': 'no-store',
      'referrer-policy': 'no-referrer',
      'content-security-policy': SIGN_IN_CSP,
    })
    res.end(body)
  }

  private read(name: string): Buffer {
    let b = this.cache.get(name)
    if (!b) {
      try {
        b = readFileSync(join(this.dir, name))
      } catch {
        throw new HttpError(404, 'not-found', `no file ${JSON.stringify(name)} in the status page (${this.dir})`)
      }
      this.cache.set(name, b)
    }
    return b
  }
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!)
}
