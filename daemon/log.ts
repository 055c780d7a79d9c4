/**
 * Structured logs: one JSON line per event an installer cares about, on stdout,
 * which journald captures. `QuietLog` keeps a failing bus from flooding the log:
 * the first occurrence of a key is logged, repeats are counted and summarised
 * at most once per interval, and recovery is logged once.
 */
import { pino, type Logger } from 'pino'

export type { Logger }

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: undefined, // journald adds pid and host
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: ['password', '*.password', 'token', '*.token', 'api.token', 'uplink.password'], censor: '[redacted]' },
    },
    destination ?? pino.destination({ fd: 1, sync: false }),
  )
}

/** Rate-limits repeated warnings per key (a bus that is down, a device that times out). */
export class QuietLog {
  private readonly seen = new Map<string, { count: number; lastLogged: number }>()
  constructor(
    private readonly log: Logger,
    private readonly intervalMs: number,
    private readonly now: () => number,
  ) {}

  warn(key: string, obj: Record<string, unknown>, msg: string): void {
    const t = this.now()
    const s = this.seen.get(key)
    if (!s) {
      this.seen.set(key, { count: 0, lastLogged: t })
      this.log.warn(obj, msg)
      return
    }
    s.count++
    if (t - s.lastLogged >= this.intervalMs) {
      this.log.warn({ ...obj, repeats: s.count }, `${msg} (still failing)`)
      s.count = 0
      s.lastLogged = t
    }
  }

  /** The condition behind `key` is over; logs once if it had been reported. Returns whether it had. */
  clear(key: string, obj: Record<string, unknown>, msg: string): boolean {
    if (!this.seen.delete(key)) return false
    this.log.info(obj, msg)
    return true
  }
}
