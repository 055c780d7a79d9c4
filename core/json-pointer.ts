/**
 * JSON Pointer (RFC 6901) segments, one way everywhere: the config checks, the config diff,
 * the command gateway's errors and the cross-check's patches all name places the same way.
 *
 * Owns: escaping a segment (`~` as `~0`, `/` as `~1`) and splitting a pointer back into its
 * unescaped segments.
 * Must never: resolve a pointer against a document (each caller knows what a missing place means).
 */

/** One segment, escaped. */
export function escapeSegment(k: string | number): string {
  return String(k).replace(/~/g, '~0').replace(/\//g, '~1')
}

/** The unescaped segments of a pointer ("" is the whole document: no segments). */
export function pointerSegments(pointer: string): string[] {
  return pointer
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
}
