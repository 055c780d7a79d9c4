/**
 * A salvage's holes in the log (seqs it could not read: never given out again, never sent),
 * and the one rule the journal's ack and the uplink's send window share about them.
 *
 * Owns: pastHole. Must never: read or write anything.
 */

/**
 * `seq`, or the end of the hole it reaches: a watermark at the record just before a hole (or
 * inside one) covers the hole, whose seqs are lost and never sent. `holes` ascending.
 */
export function pastHole(holes: readonly { from: number; to: number }[], seq: number): number {
  let at = seq
  for (const h of holes) if (at >= h.from - 1 && at < h.to) at = h.to
  return at
}
