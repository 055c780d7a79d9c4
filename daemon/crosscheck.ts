/**
 * The wiring cross-check, run on the hardware: every relay in turn is closed while every
 * meter and feeder meter is watched for a few polls, then opened and watched falling back.
 * core/crosscheck.ts turns what was seen into the matrix and the findings; this file keeps
 * the report (`storage.dir/crosscheck/`) and says whether the wiring in force has passed.
 *
 * Owns: the order of switching (one relay closed at a time, every relay opened before the
 * first and after the last, also on cancel or error), the polls, progress and cancel, the
 * report files and the wiring's hash.
 * Must never: run while a session is open (the daemon refuses it), close two relays at once,
 * leave a relay closed behind it, or bill anything (it writes no journal record).
 */
import { createHash } from 'node:crypto'
import { mkdir, readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { SiteConfig } from '../core/types.js'
import { diagnose, wiringOf, type CrossCheckStep, type CrossCheckVerdict, type MeterSample } from '../core/crosscheck.js'
import type { SiteIO } from '../drivers/index.js'
import { writeAtomic } from './journal/fsync.js'

/** Polls watched with a relay closed, and again after it opened: a check takes about relays × 2 × this × pollMs. */
export const CROSS_CHECK_POLLS = 3

export interface CrossCheckProgress {
  /** Relays done, of `total`. */
  done: number
  total: number
  relay?: string
  stage?: 'closed' | 'opened'
}

export interface CrossCheckReport extends CrossCheckVerdict {
  /** Report id: the start time, as a file name. */
  id: string
  startedAt: number
  finishedAt: number
  /** Who ran it (the API principal). */
  who: string
  /** sha256 of the wiring it checked (core/crosscheck.ts wiringOf): a later wiring change makes it stale. */
  wiring: string
  /** The config version it ran with. */
  configVersion: string | null
  polls: number
  pollMs: number
  /** Each outlet's meter as identified: its serial register where the model has one, else its place on the bus. */
  meterSerials: Record<string, string | null>
  steps: CrossCheckStep[]
  cancelled: boolean
}

export function wiringHash(config: Pick<SiteConfig, 'outlets' | 'circuits'>): string {
  return createHash('sha256')
    .update(JSON.stringify(wiringOf(config)))
    .digest('hex')
}

export interface RunOptions {
  site: SiteIO
  config: SiteConfig
  now: () => number
  who: string
  configVersion: string | null
  polls?: number
  pollMs?: number
  signal?: AbortSignal
  onProgress?: (p: CrossCheckProgress) => void
}

const wait = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    if (signal?.aborted) return resolve()
    const t = setTimeout(done, ms)
    function done(): void {
      clearTimeout(t)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    signal?.addEventListener('abort', done, { once: true })
  })

/** How far a sample is from another, in one figure (to keep the poll that moved furthest). */
const distance = (a: MeterSample | null, b: MeterSample | null): number =>
  !a || !b ? -1 : Math.abs(a.currentA - b.currentA) * 230 + Math.abs(a.powerW - b.powerW) + Math.abs(a.voltageV - b.voltageV) * 10

/** Runs one pass over every relay; resolves with the report (also when cancelled: then `cancelled` and the steps done). */
export async function runCrossCheck(o: RunOptions): Promise<CrossCheckReport> {
  const polls = o.polls ?? CROSS_CHECK_POLLS
  const pollMs = o.pollMs ?? o.config.sessions.pollMs
  const outlets = o.config.outlets.map((x) => x.id)
  const relays = o.config.outlets.filter((x) => x.relay !== undefined && o.site.outlet(x.id).hasRelay).map((x) => x.id)
  const feeders = o.site.feederIds()
  const serials: Record<string, string | null> = {}
  const startedAt = o.now()

  const readMeters = async (): Promise<Record<string, MeterSample | null>> => {
    const out: Record<string, MeterSample | null> = {}
    await Promise.all(
      outlets.map(async (id) => {
        try {
          const r = await o.site.outlet(id).read()
          out[id] = { currentA: r.currentA, powerW: r.powerW, voltageV: r.voltageV }
          if (r.meterSerial !== undefined) serials[id] = r.meterSerial
        } catch {
          out[id] = null
        }
      }),
    )
    return out
  }
  const readFeeders = async (): Promise<Record<string, [number, number, number] | null>> => {
    const out: Record<string, [number, number, number] | null> = {}
    await Promise.all(
      feeders.map(async (c) => {
        out[c] = await o.site
          .feeder(c)
          .read()
          .then((r) => r.currentsA)
          .catch(() => null)
      }),
    )
    return out
  }
  const open = async (id: string): Promise<string | undefined> => {
    const io = o.site.outlet(id)
    try {
      await io.setRelay(false)
      if (await io.readRelay()) return 'it still reads closed'
      return undefined
    } catch (err) {
      return (err as Error).message
    }
  }

  // Every relay open first: the check closes one at a time, from a known state.
  const openErrors = new Map<string, string>()
  for (const id of relays) {
    const e = await open(id)
    if (e !== undefined) openErrors.set(id, e)
  }
  const steps: CrossCheckStep[] = []
  let cancelled = false
  try {
    for (const relay of relays) {
      if (o.signal?.aborted) {
        cancelled = true
        break
      }
      o.onProgress?.({ done: steps.length, total: relays.length, relay, stage: 'closed' })
      // Read at once: the previous relay has had its polls to fall back (the first follows the opening of all).
      const before = await readMeters()
      const feedersBefore = await readFeeders()
      const step: CrossCheckStep = { relay, before, closed: {}, after: {}, feedersBefore, feedersClosed: {} }
      if (openErrors.has(relay)) step.openError = openErrors.get(relay)
      try {
        await o.site.outlet(relay).setRelay(true)
      } catch (err) {
        step.closeError = (err as Error).message
      }
      if (step.closeError === undefined) {
        for (let k = 0; k < polls && !o.signal?.aborted; k++) {
          await wait(pollMs, o.signal)
          const seen = await readMeters()
          const fs = await readFeeders()
          for (const m of outlets)
            if (!(m in step.closed) || distance(seen[m]!, before[m]!) > distance(step.closed[m]!, before[m]!)) step.closed[m] = seen[m]!
          for (const c of feeders) {
            const prev = step.feedersClosed[c]
            const now = fs[c] ?? null
            const rise = (x: [number, number, number] | null | undefined): number =>
              x && feedersBefore[c] ? Math.max(...x.map((v, i) => v - feedersBefore[c]![i]!)) : -1
            if (prev === undefined || rise(now) > rise(prev)) step.feedersClosed[c] = now
          }
        }
      }
      const e = await open(relay)
      if (e !== undefined) step.openError = e
      o.onProgress?.({ done: steps.length, total: relays.length, relay, stage: 'opened' })
      for (let k = 0; k < polls && !o.signal?.aborted; k++) {
        await wait(pollMs, o.signal)
        step.after = await readMeters()
      }
      if (o.signal?.aborted) {
        cancelled = true
        break
      }
      steps.push(step)
    }
  } finally {
    // Whatever happened, nothing stays closed behind the check.
    for (const id of relays) await open(id)
  }
  for (const id of outlets) {
    if (serials[id] === undefined) {
      const oc = o.config.outlets.find((x) => x.id === id)!
      serials[id] = oc.meter.serial ?? null
    }
  }
  const verdict = diagnose(o.config, steps)
  o.onProgress?.({ done: steps.length, total: relays.length })
  return {
    id: new Date(startedAt).toISOString().replace(/[:.]/g, '-'),
    startedAt,
    finishedAt: o.now(),
    who: o.who,
    wiring: wiringHash(o.config),
    configVersion: o.configVersion,
    polls,
    pollMs,
    meterSerials: serials,
    steps,
    cancelled,
    ...verdict,
    // A pass that was cancelled, or checked no relay, vouches for nothing.
    passed: verdict.passed && !cancelled && steps.length > 0 && steps.length === relays.length,
  }
}

/** Where the reports are kept: `storage.dir/crosscheck/<id>.json`, newest last by name. */
export class CrossCheckReports {
  readonly dir: string
  constructor(storageDir: string) {
    this.dir = join(storageDir, 'crosscheck')
  }

  async save(r: CrossCheckReport): Promise<void> {
    await mkdir(this.dir, { recursive: true })
    await writeAtomic(join(this.dir, `${r.id}.json`), `${JSON.stringify(r, null, 2)}\n`, 0o640)
  }

  async list(): Promise<string[]> {
    try {
      return (await readdir(this.dir))
        .filter((f) => /^[0-9TZ-]+\.json$/.test(f))
        .map((f) => f.slice(0, -5))
        .sort()
    } catch {
      return []
    }
  }

  async read(id: string): Promise<CrossCheckReport | undefined> {
    if (!/^[0-9TZ-]+$/.test(id)) return undefined
    try {
      return JSON.parse(await readFile(join(this.dir, `${id}.json`), 'utf8')) as CrossCheckReport
    } catch {
      return undefined
    }
  }

  async latest(): Promise<CrossCheckReport | undefined> {
    const ids = await this.list()
    return ids.length > 0 ? this.read(ids[ids.length - 1]!) : undefined
  }

  /** The newest report that passed for exactly this wiring, if any. */
  async passedFor(wiring: string): Promise<CrossCheckReport | undefined> {
    const ids = await this.list()
    for (let i = ids.length - 1; i >= 0; i--) {
      const r = await this.read(ids[i]!)
      if (r?.passed && r.wiring === wiring) return r
    }
    return undefined
  }
}
