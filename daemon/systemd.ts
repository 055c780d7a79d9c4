/**
 * systemd integration without a native module: when NOTIFY_SOCKET is set,
 * `systemd-notify` reports readiness, stopping and watchdog keep-alives
 * (the unit sets NotifyAccess=all so the helper's messages are accepted).
 * Does nothing when not run by systemd.
 */
import { execFile } from 'node:child_process'

export class SystemdNotifier {
  private watchdog: NodeJS.Timeout | undefined
  readonly enabled = Boolean(process.env.NOTIFY_SOCKET)

  private send(...args: string[]): void {
    if (!this.enabled) return
    execFile('systemd-notify', args, () => {
      /* best effort: a missing notify must not take the daemon down */
    })
  }

  ready(status: string): void {
    this.send('--ready', `--status=${status}`)
    const usec = Number(process.env.WATCHDOG_USEC)
    // Ready again (the first-run setup, then the site): one keep-alive timer.
    if (this.enabled && !this.watchdog && Number.isFinite(usec) && usec > 0) {
      // Feed at half the watchdog period, as sd_watchdog_enabled(3) recommends.
      this.watchdog = setInterval(() => this.send('WATCHDOG=1'), Math.max(1000, usec / 2000))
      this.watchdog.unref()
    }
  }

  status(text: string): void {
    this.send(`--status=${text}`)
  }

  stopping(): void {
    if (this.watchdog) clearInterval(this.watchdog)
    this.send('STOPPING=1')
  }
}
