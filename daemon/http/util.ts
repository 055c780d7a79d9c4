/**
 * Small HTTP helpers for the local API: JSON answers, the error shape
 * `{"error": {"code", "message"}}`, bounded body reading.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { parseJson } from '../config.js'

/** A refusal with its HTTP status and a stable code; the message names what was wrong and where. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
    /** More fields of the error object (a refused config's `problems`). */
    readonly details: Record<string, unknown> = {},
  ) {
    super(message)
  }
}

/** A path segment, percent-decoded; bad percent-encoding is the client's mistake (400), never a 500. */
export function decodePathPart(raw: string, what: string): string {
  try {
    return decodeURIComponent(raw)
  } catch {
    throw new HttpError(400, 'invalid-request', `${what} in the path is not valid percent-encoding: ${JSON.stringify(raw)}`)
  }
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text),
    ...headers,
  })
  res.end(text)
}

export function sendError(res: ServerResponse, err: HttpError): void {
  sendJson(res, err.status, { error: { code: err.code, message: err.message, ...err.details } }, err.headers)
}

/** Reads the request body, refusing (413) past `limit` bytes without buffering the rest. */
export function readBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'])
    if (Number.isFinite(declared) && declared > limit) {
      req.resume()
      reject(new HttpError(413, 'body-too-large', `the request body is ${declared} bytes; at most ${limit} are accepted`))
      return
    }
    const chunks: Buffer[] = []
    let size = 0
    let failed = false
    req.on('data', (c: Buffer) => {
      if (failed) return
      size += c.length
      if (size > limit) {
        failed = true
        reject(new HttpError(413, 'body-too-large', `the request body is over ${limit} bytes; at most ${limit} are accepted`))
        return
      }
      chunks.push(c)
    })
    req.on('end', () => {
      if (!failed) resolve(Buffer.concat(chunks).toString('utf8'))
    })
    req.on('error', (err) => {
      if (!failed) reject(new HttpError(400, 'invalid-request', `the request body could not be read: ${err.message}`))
    })
  })
}

/** The media type of a request without parameters, lower-case ('' when absent). */
export function mediaType(req: IncomingMessage): string {
  return (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase()
}

/** Refuses (405, with Allow) a method the route does not take. */
export function allow(method: string, methods: string[]): void {
  if (!methods.includes(method))
    throw new HttpError(405, 'method-not-allowed', `${method} is not allowed here; use ${methods.join(' or ')}`, { allow: methods.join(', ') })
}

/** A JSON object body (content-type application/json, at most `max` bytes), or 415/400 saying what is wrong. */
export async function jsonBody(req: IncomingMessage, max = 4096): Promise<Record<string, unknown>> {
  const type = mediaType(req)
  if (type !== 'application/json')
    throw new HttpError(415, 'unsupported-media-type', `the body must be JSON (content-type: application/json), got ${type || 'no content type'}`)
  const text = await readBody(req, max)
  const parsed = parseJson(text)
  if (!parsed.ok) {
    const p = parsed.problems[0]!
    throw new HttpError(400, 'invalid-request', `body: ${p.message}${p.line !== undefined ? ` at line ${p.line}, column ${p.column}` : ''}`)
  }
  const v = parsed.value
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new HttpError(400, 'invalid-request', 'body: must be a JSON object')
  return v as Record<string, unknown>
}
