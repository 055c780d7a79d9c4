/**
 * Shared benchmark plumbing. Every figure is a ratio against a baseline measured
 * in the same run (these machines are shared and noisy), with warm-up and the
 * median of several runs.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { packagePath } from '../core/paths.js'
import type { EngineEvent } from '../daemon/engine/index.js'
import type { SiteConfig } from '../core/types.js'
import { validateConfig } from '../daemon/config.js'

export interface BenchRow {
  /** What is measured, e.g. "journal durable appends/s". */
  figure: string
  /** The baseline's value, same unit, same run. */
  baseline: number
  value: number
  unit: string
  /** value / baseline. */
  ratio: number
  /** The goal as text, e.g. ">= 0.8x" or "<= 1.1x". */
  goal: string
  /** Whether the ratio meets the goal. */
  met: boolean
  /** Spread or caveats, e.g. "noisy: runs spread 35%". */
  note?: string
  /** The runs spread more than 25 %: the verdict is stated, not claimed. */
  noisy?: boolean
  /** Not measured at all (a prerequisite missing); value and ratio are NaN and the note says why. */
  notMeasured?: boolean
}

/** The table's "met" cell: yes / NO, "noisy" when the runs spread too much to claim, or "not measured". */
export function verdict(r: BenchRow): string {
  if (r.notMeasured) return 'not measured'
  if (!r.met) return r.noisy ? 'NO (noisy)' : 'NO'
  return r.noisy ? 'noisy' : 'yes'
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

/** Relative spread (max-min)/median, to flag a noisy run instead of claiming. */
export function spread(xs: number[]): number {
  return (Math.max(...xs) - Math.min(...xs)) / median(xs)
}

/** Runs fn `warmup` times unmeasured, then `runs` times; returns each run's measured value. */
export async function repeat(runs: number, warmup: number, fn: () => Promise<number>): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await fn()
  const out: number[] = []
  for (let i = 0; i < runs; i++) out.push(await fn())
  return out
}

export function row(figure: string, unit: string, baselineRuns: number[], valueRuns: number[], goal: { op: '>=' | '<='; ratio: number }): BenchRow {
  const baseline = median(baselineRuns)
  const value = median(valueRuns)
  const ratio = value / baseline
  const worst = Math.max(spread(baselineRuns), spread(valueRuns))
  const met = goal.op === '>=' ? ratio >= goal.ratio : ratio <= goal.ratio
  const noisy = worst > 0.25
  return {
    figure,
    baseline,
    value,
    unit,
    ratio,
    goal: `${goal.op} ${goal.ratio}x`,
    met,
    noisy,
    note: noisy ? `noisy: runs spread ${(worst * 100).toFixed(0)}%` : undefined,
  }
}

/**
 * A figure whose goal is an absolute bound (MB, % of a core, ms): the baseline
 * column holds the bound itself and ratio = value / bound, so the goal reads
 * "<= 1x" like every other row.
 */
export function bounded(figure: string, unit: string, value: number, bound: number, op: '<=' | '>=' = '<=', note?: string): BenchRow {
  const ratio = value / bound
  const met = op === '<=' ? value <= bound : value >= bound
  return { figure, baseline: bound, value, unit, ratio, goal: `${op} 1x (bound)`, met, note }
}

/** A row that could not be measured, saying why instead of printing a number. */
export function notMeasured(figure: string, unit: string, goal: string, why: string): BenchRow {
  return { figure, baseline: NaN, value: NaN, unit, ratio: NaN, goal, met: false, notMeasured: true, note: why }
}

/** The p-th percentile (0..100) by nearest rank. */
export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!
}

/** What e2e-kit's helpers register their clean-up with (tap's t.teardown), for benches outside tap. */
export class Teardowns {
  private readonly fns: (() => unknown)[] = []
  teardown(fn: () => unknown): void {
    this.fns.push(fn)
  }
  /** Runs every clean-up, last registered first; one failing does not stop the others. */
  async run(): Promise<void> {
    for (const fn of this.fns.splice(0).reverse()) {
      try {
        await fn()
      } catch {
        // best effort: the process may already be gone
      }
    }
  }
}

/** `outpost sim` (the built CLI) in a child process on a free port; resolves once it prints its port. */
export async function startSimProcess(args: string[]): Promise<{ port: number; proc: ChildProcess; stop(): Promise<void> }> {
  const proc = spawn(process.execPath, [packagePath('dist', 'daemon', 'cli.js'), 'sim', '--port', '0', ...args], {
    stdio: ['pipe', 'pipe', 'ignore'],
  })
  const port = await new Promise<number>((resolve, reject) => {
    const rl = createInterface({ input: proc.stdout! })
    rl.on('line', (l) => {
      const m = l.match(/"port":(\d+)/)
      if (m) resolve(Number(m[1]))
    })
    proc.once('exit', () => reject(new Error('simulator exited')))
  })
  let exited = false
  proc.once('exit', () => (exited = true))
  return {
    port,
    proc,
    stop: () =>
      new Promise<void>((r) => {
        if (exited) return r()
        proc.once('exit', () => r())
        proc.kill('SIGTERM')
      }),
  }
}

function fmt(n: number): string {
  if (!Number.isFinite(n)) return '-'
  const a = Math.abs(n)
  return a >= 1000 ? n.toFixed(0) : a >= 10 ? n.toFixed(1) : a >= 0.1 ? n.toFixed(3) : n.toPrecision(3)
}

/** The one table: bench, figure, baseline, value, unit, ratio, goal, met (yes / NO / noisy / not measured), note. */
export function table(rows: (BenchRow & { bench: string })[]): string {
  const head = ['bench', 'figure', 'baseline', 'value', 'unit', 'ratio', 'goal', 'met', 'note']
  const body = rows.map((r) => [
    r.bench,
    r.figure,
    fmt(r.baseline),
    fmt(r.value),
    r.unit,
    Number.isFinite(r.ratio) ? `${r.ratio.toFixed(2)}x` : '-',
    r.goal,
    verdict(r),
    r.note ?? '',
  ])
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)))
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd()
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...body.map(line)].join('\n')
}

/** The node flags the `outpost` bin starts with: those on dist/bin/outpost.js's interpreter line. */
export function binNodeFlags(cli = packagePath('dist', 'bin', 'outpost.js')): string[] {
  const first = readFileSync(cli, 'utf8').split('\n', 1)[0]!
  const m = first.match(/^#!.*?\bnode\b(.*)$/)
  if (!m) throw new Error(`${cli}: no node interpreter line`)
  return m[1]!.trim().split(/\s+/).filter(Boolean)
}

/** A meter reading event for the engine benches: `a` amperes at 230 V, the register at `energyWh`. */
export function readingAt(outlet: string, ts: number, a: number, energyWh: number): EngineEvent {
  return { type: 'reading', outlet, reading: { ts, currentA: a, powerW: a * 230, energyWh, voltageV: 230 } }
}

/** `node dist/bench/NAME.js` alone: runs it and prints each bounded row against its bound. */
export function runAlone(name: string, run: () => Promise<BenchRow[]>): void {
  if (!process.argv[1]?.endsWith(`/bench/${name}.js`)) return
  run().then(
    (rows) => {
      for (const r of rows)
        process.stdout.write(
          `${r.met ? 'met ' : 'MISS'}  ${r.figure}: ${r.value.toFixed(1)} ${r.unit} vs bound ${r.baseline.toFixed(1)} = ${r.ratio.toFixed(2)}x${r.note ? ' — ' + r.note : ''}\n`,
        )
    },
    (err: unknown) => {
      process.stderr.write(`bench/${name}: ${(err as Error).stack ?? String(err)}\n`)
      process.exitCode = 1
    },
  )
}

/**
 * A bench site, checked as `check-config` would: `outlets` SDM120 meters at units 1..N with the
 * coils of a relay board at unit 100, on one Modbus TCP bus at `port` (the simulator's), one flat
 * plan; `extra` adds or replaces top-level sections.
 */
export function benchSite(o: { outlets: number; port: number; storageDir: string; extra?: Record<string, unknown> }): SiteConfig {
  const r = validateConfig({
    site: { id: 'bench', timezone: 'UTC' },
    storage: { dir: o.storageDir },
    buses: [{ id: 'b', type: 'modbus-tcp', host: '127.0.0.1', port: o.port, timeoutMs: 500 }],
    outlets: Array.from({ length: o.outlets }, (_, i) => ({
      id: `O${i}`,
      bus: 'b',
      meter: { model: 'eastron-sdm120', unit: i + 1 },
      relay: { model: 'modbus-coil', unit: 100, coil: i },
      plan: 'p',
    })),
    plans: [
      { id: 'p', currency: 'CAD', periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 0.1 }] },
    ],
    logging: { level: 'error' },
    ...(o.extra ?? {}),
  })
  if (!r.ok) throw new Error(`bench config invalid: ${JSON.stringify(r.problems.slice(0, 3))}`)
  return r.config
}
