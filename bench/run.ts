/**
 * `npm run bench`: every benchmark in bench/ (each module exporting run()),
 * one after the other (they would disturb each other in parallel on 2 cores),
 * then one table: figure, baseline measured in the same run, value, ratio, goal.
 * `npm run bench -- journal bus` runs only those.
 */
import { readdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { table, type BenchRow } from './lib.js'

const here = dirname(fileURLToPath(import.meta.url))

async function main(): Promise<number> {
  const only = process.argv.slice(2)
  const names = readdirSync(here)
    .filter((f) => f.endsWith('.js') && f !== 'run.js' && f !== 'lib.js')
    .map((f) => f.replace(/\.js$/, ''))
    .filter((n) => only.length === 0 || only.includes(n))
    .sort()
  const rows: (BenchRow & { bench: string })[] = []
  for (const name of names) {
    const mod = (await import(pathToFileURL(join(here, `${name}.js`)).href)) as { run?: () => Promise<BenchRow[]> }
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
        note: (err as Error).message,
      })
    }
    process.stderr.write(`bench: ${name} took ${((performance.now() - started) / 1000).toFixed(0)} s\n`)
  }
  process.stdout.write(table(rows) + '\n')
  const missed = rows.filter((r) => !r.met && !r.notMeasured).length
  const noisy = rows.filter((r) => r.noisy).length
  const unmeasured = rows.filter((r) => r.notMeasured).length
  process.stdout.write(
    `\n${rows.length} figures: ${missed} missed their goal, ${noisy} noisy (runs spread > 25 %: measured on a busy machine, not a claim), ${unmeasured} not measured.\n`,
  )
  return 0
}

main().then(
  (c) => (process.exitCode = c),
  (e: unknown) => {
    process.stderr.write(String((e as Error).stack ?? e) + '\n')
    process.exitCode = 1
  },
)
