/**
 * The injected clock. Logic never calls Date.now(); the daemon passes `now`
 * into the engine and the journal, and tests pass a virtual one.
 */
import { existsSync } from 'node:fs'

export interface Clock {
  /** Wall-clock epoch milliseconds. */
  now(): number
  /** Monotonic milliseconds since an arbitrary origin (for intervals the wall clock may jump over). */
  monotonic(): number
  /** Whether the wall clock has been synchronised (a Raspberry Pi has no RTC). */
  synced(): boolean
}

/**
 * systemd-timesyncd creates this file once the clock is synchronised; chrony or
 * ntpd users set OUTPOST_CLOCK_SYNCED=1 (the README says so).
 */
const TIMESYNC_FLAG = '/run/systemd/timesync/synchronized'

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  synced: () => process.env.OUTPOST_CLOCK_SYNCED === '1' || existsSync(TIMESYNC_FLAG),
}
