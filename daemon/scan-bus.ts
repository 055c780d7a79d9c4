/**
 * A bus to scan, checked as a site config would check it, and the one scan the daemon runs at
 * a time for the status page (progress, cancel, its hits marked with the outlet that already
 * uses each unit).
 *
 * Owns: the bus check shared by `outpost scan` and `POST /api/scan`, the scan job.
 * Must never: open a second handle on a port the site already uses (a configured bus is
 * scanned through the site's own bus, between its polls), or write to a device (drivers/scan.ts
 * only reads).
 */
import { realpathSync } from 'node:fs'
import type { BusConfig, SiteConfig } from '../core/types.js'
import { scanBus, type ScanHit } from '../drivers/scan.js'
import type { SiteIO } from '../drivers/index.js'
import { validateConfig } from './config.js'
import { describeError } from './errors.js'

/** A bus as a config would have it (defaults filled in), or its problems at pointers under /bus. */
export function checkBus(raw: unknown): { ok: true; bus: BusConfig } | { ok: false; problems: { pointer: string; message: string }[] } {
  const r = validateConfig({
    site: { id: 'scan', timezone: 'UTC' },
    storage: { dir: '/tmp' },
    buses: [raw],
    outlets: [],
    plans: [{ id: 'p', currency: 'EUR', periods: [{ days: ['mon'], from: '00:00', to: '24:00', perKwh: 0.1 }] }],
  })
  if (r.ok) return { ok: true, bus: r.config.buses[0]! }
  const problems = r.problems
    .filter((p) => p.pointer.startsWith('/buses/0'))
    .map((p) => ({ pointer: p.pointer.replace('/buses/0', '/bus'), message: p.message }))
  return { ok: false, problems: problems.length > 0 ? problems : [{ pointer: '/bus', message: 'not a valid bus' }] }
}

export interface ScanState {
  bus: BusConfig
  /** The configured bus it runs through, or null for a port the site does not use. */
  busId: string | null
  total: number
  done: number
  running: boolean
  cancelled: boolean
  error: string | null
  /** Each hit, with `outlets`: the configured outlets whose meter or relay already use that unit on this bus (none: []). */
  hits: (ScanHit & { outlets: string[]; feederOf: string[] })[]
  who: string
  startedAt: number
}

/** Where two bus configs would open one port, or a unit id would answer for two devices. */
export function portOf(b: BusConfig): string | null {
  if (b.type === 'modbus-tcp') return `tcp://${b.host}:${b.port}`
  // The device itself: /dev/serial/by-id/… (what the page lists) and /dev/ttyUSB0 (what a config may name) are one port.
  if (b.type === 'modbus-rtu' || b.type === 'serial') {
    try {
      return realpathSync(b.path)
    } catch {
      return b.path
    }
  }
  return null
}

export class ScanJobs {
  private job: ScanState | undefined
  private controller: AbortController | undefined

  constructor(private readonly now: () => number) {}

  state(): ScanState | undefined {
    return this.job && { ...this.job, hits: [...this.job.hits] }
  }

  /** Begins a scan; the caller has checked the bus and that none runs. Resolves when it ends. */
  begin(o: { bus: BusConfig; busId: string | null; units: number[]; site: SiteIO | undefined; config: SiteConfig; who: string }): Promise<void> {
    this.controller = new AbortController()
    const job: ScanState = {
      bus: o.bus,
      busId: o.busId,
      total: o.units.length,
      done: 0,
      running: true,
      cancelled: false,
      error: null,
      hits: [],
      who: o.who,
      startedAt: this.now(),
    }
    this.job = job
    const usedBy = (unit: number): string[] =>
      o.busId === null ? [] : o.config.outlets.filter((x) => x.bus === o.busId && (x.meter.unit === unit || x.relay?.unit === unit)).map((x) => x.id)
    const feederOf = (unit: number): string[] =>
      o.busId === null ? [] : (o.config.circuits ?? []).filter((c) => c.meter?.bus === o.busId && c.meter.unit === unit).map((c) => c.id)
    const signal = this.controller.signal
    return scanBus(o.bus, o.units, {
      now: this.now,
      modelsDir: o.config.models?.dir,
      bus: o.busId !== null ? o.site?.bus(o.busId) : undefined,
      signal,
      onUnit: (unit, hit) => {
        job.done++
        if (hit) job.hits.push({ ...hit, outlets: usedBy(unit), feederOf: feederOf(unit) })
      },
    }).then(
      () => {
        job.running = false
        job.cancelled = signal.aborted
      },
      (err: unknown) => {
        job.running = false
        job.error = describeError(err)
      },
    )
  }

  running(): boolean {
    return this.job?.running === true
  }

  cancel(): boolean {
    if (!this.job?.running) return false
    this.controller?.abort()
    return true
  }
}
