/**
 * Read-only views of the daemon for the API, the page and /metrics.
 */
import type { Daemon } from '../daemon.js'
import type { OutletStatus } from '../types.js'
import { outletStatuses } from '../engine/index.js'

/**
 * Every outlet's status as of now, in config order, from the engine's state. Unlike the
 * daemon's `status` events (sent when a session reading or a state change touches an
 * outlet), this has the last reading of idle outlets too, so an outlet whose session just
 * ended does not keep showing its last charging current.
 */
export function liveStatuses(daemon: Daemon, now: number): OutletStatus[] {
  if (!daemon.records) return []
  const byId = new Map(outletStatuses(daemon.engineState, now).map((s) => [s.outlet, s]))
  return daemon.config.outlets.map((o) => byId.get(o.id)).filter((s): s is OutletStatus => s !== undefined)
}

/** The time of the oldest record the cloud has not acknowledged, or null when there is none. */
export async function oldestUnackedTs(daemon: Daemon): Promise<string | null> {
  const journal = daemon.records
  if (!journal) return null
  const from = Math.max(journal.acked() + 1, journal.oldest())
  if (from > journal.head()) return null
  const [r] = await journal.read(from, 1)
  return r?.ts ?? null
}
