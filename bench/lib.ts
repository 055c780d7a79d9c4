/**
 * Shared benchmark plumbing. Every figure is a ratio against a baseline measured
 * in the same run (these machines are shared and noisy), with warm-up and the
 * median of several runs.
 */
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
  return { figure, baseline, value, unit, ratio, goal: `${goal.op} ${goal.ratio}x`, met, note: worst > 0.25 ? `noisy: runs spread ${(worst * 100).toFixed(0)}%` : undefined }
}
