/**
 * The one error class of Outpost: an Error with a stable code. Messages may change
 * between versions, codes don't. Each layer types it with its own codes
 * (drivers/errors.ts, daemon/engine/errors.ts) and daemon/errors.ts, the catalog,
 * with all of them; at run time it is one class, so `instanceof` holds across layers.
 *
 * Owns: the class and the typed views of it.
 * Must never: list codes (each layer owns its own), or be constructed outside an errors.ts.
 */

export class OutpostError<C extends string = string> extends Error {
  readonly code: C
  constructor(code: C, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
    this.name = 'OutpostError'
  }
}

/** OutpostError as a layer sees it: constructed and narrowed with that layer's codes only. */
export interface OutpostErrorClass<C extends string> {
  new (code: C, message: string, options?: { cause?: unknown }): OutpostError<C>
  readonly prototype: OutpostError<C>
}

/** A guard typed to a layer's codes: an OutpostError, and (when codes are given) one of those codes. */
export type OutpostErrorGuard<C extends string> = <K extends C = C>(e: unknown, ...codes: K[]) => e is OutpostError<K>

export function isOutpostError<C extends string>(e: unknown, ...codes: C[]): e is OutpostError<C> {
  return e instanceof OutpostError && (codes.length === 0 || (codes as string[]).includes(e.code))
}

/** An error as one line: its code (when it has one, an OutpostError's or a system error's) and its message. */
export function describeError(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown } | null
  const message = typeof e?.message === 'string' ? e.message : String(err)
  return typeof e?.code === 'string' && e.code !== '' ? `${e.code}: ${message}` : message
}
