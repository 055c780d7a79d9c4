/**
 * `npm run bench`: every benchmark in bench/ (each module exporting run()),
 * one after the other (they would disturb each other in parallel on 2 cores),
 * then one table: figure, baseline measured in the same run, value, ratio, goal.
 * `npm run bench -- journal bus` runs only those.
 *
 * Owns: finding the benchmark modules, running them in turn, the table and the exit status.
 * Must never: exit 0 when a benchmark threw or a row was not measured (an invalid run): such
 * a table would read as a measurement. A missed goal is a result, not a failure.
 * `--from DIR` runs the modules of another directory (test/bench-plumbing.test.ts).
 */
import { readdirSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { table, type BenchRow } from './lib.js'

const here = dirname(fileURLToPath(import.meta.url))
const LIBRARY = new Set(['run.js', 'lib.js'])

function parseArgs(argv: string[]): { dir: string; only: string[] } {
  let dir = here
  const only: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (a === '--from') {
      const d = argv[++i]
      if (!d) throw new Error('--from needs a directory')
      dir = resolve(d)
    } else only.push(a)
  }
  return { dir, only }
}

async function main(): Promise<number> {
  const { dir, only } = parseArgs(process.argv.slice(2))
  const available = readdirSync(dir)
    .filter((f) => f.endsWith('.js') && !LIBRARY.has(f))
    .map((f) => f.replace(/\.js$/, ''))
    .sort()
  const unknown = only.filter((n) => !available.includes(n))
  if (unknown.length > 0) {
    process.stderr.write(`bench: no benchmark named ${unknown.join(', ')} in ${dir} (there are: ${available.join(', ')})\n`)
    return 2
  }
  const names = available.filter((n) => only.length === 0 || only.includes(n))
  const rows: (BenchRow & { bench: string })[] = []
  for (const name of names) {
    const mod = (await import(pathToFileURL(join(dir, `${name}.js`)).href)) as { run?: () => Promise<BenchRow[]> }
    if (typeof mod.run !== 'function') continue
    process.stderr.write(`bench: ${name}...\n`)
    const started = performance.now()
    try {
      for (const r of await mod.run()) rows.push({ ...r, bench: name })
    } catch (err) {
      process.stderr.write(`bench: ${name} failed: ${(err as Error).stack ?? String(err)}\n`)
      rows.push({
        bench: name,
        figure: 'FAILED',
        baseline: NaN,
        value: NaN,
        unit: '',
        ratio: NaN,
        goal: '',
        met: false,
        notMeasured: true,
        note: (err as Error).message,
      })
    }
    process.stderr.write(`bench: ${name} took ${((performance.now() - started) / 1000).toFixed(0)} s\n`)
  }
  process.stdout.write(table(rows) + '\n')
  const missed = rows.filter((r) => !r.met && !r.notMeasured).length
  const noisy = rows.filter((r) => r.noisy).length
  const unmeasured = rows.filter((r) => r.notMeasured)
  process.stdout.write(
    `\n${rows.length} figures: ${missed} missed their goal, ${noisy} noisy (runs spread > 25 %: measured on a busy machine, not a claim), ${unmeasured.length} not measured.\n`,
  )
  if (unmeasured.length > 0) {
    const which = [...new Set(unmeasured.map((r) => r.bench))].join(', ')
    process.stderr.write(
      `\nbench: FAILED: ${unmeasured.length} figure${unmeasured.length === 1 ? '' : 's'} not measured (${which}): a benchmark threw or its run was invalid; see the notes above.\n`,
    )
    return 1
  }
  return 0
}

// On a failure, exit at once: a benchmark that threw may have left its servers or timers
// running, which would hold the process (and CI) open without a word.
main().then(
  (c) => (c === 0 ? (process.exitCode = 0) : process.exit(c)),
  (e: unknown) => {
    process.stderr.write(`bench: ${String((e as Error).stack ?? e)}\n`)
    process.exit(1)
  },
)
