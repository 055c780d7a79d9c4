/**
 * Read-only views of the daemon for the API, the page and /metrics.
 */
import type { Daemon } from '../daemon.js'

/** The time of the oldest record the cloud has not acknowledged, or null when there is none. */
export async function oldestUnackedTs(daemon: Daemon): Promise<string | null> {
  const journal = daemon.records
  if (!journal) return null
  const from = Math.max(journal.acked() + 1, journal.oldest())
  if (from > journal.head()) return null
  const [r] = await journal.read(from, 1)
  return r?.ts ?? null
}

/** One sample of every outlet: current and power, by outlet id. */
export interface HistoryPoint {
  t: number
  outlets: Record<string, [currentA: number, powerW: number]>
}

/**
 * The last few minutes of every outlet's current and power, sampled every `sampleMs`,
 * so that a status page opened now shows a chart at once instead of an empty one.
 * A few numbers per outlet per sample: 60 samples of 5 s by default.
 */
export class PowerHistory {
  private readonly points: HistoryPoint[] = []
  private readonly timer: NodeJS.Timeout

  constructor(
    private readonly daemon: Daemon,
    private readonly now: () => number,
    readonly sampleMs = 5000,
    private readonly keep = 60,
  ) {
    this.timer = setInterval(() => this.sample(), sampleMs)
    this.timer.unref()
    this.sample()
  }

  private sample(): void {
    const outlets: HistoryPoint['outlets'] = {}
    for (const s of this.daemon.outletStatuses()) outlets[s.outlet] = [s.currentA, s.powerW]
    this.points.push({ t: this.now(), outlets })
    if (this.points.length > this.keep) this.points.shift()
  }

  /** Oldest first, each with its age in ms (so a browser with another clock can place it). */
  recent(): { ageMs: number; outlets: HistoryPoint['outlets'] }[] {
    const t = this.now()
    return this.points.map((p) => ({ ageMs: t - p.t, outlets: p.outlets }))
  }

  close(): void {
    clearInterval(this.timer)
  }
}
