/**
 * The wiring cross-check's duration: 16 outlets on one Modbus TCP bus (the simulator, a
 * vehicle plugged into every outlet, coils coupled to meters), the default poll of 1 s,
 * `runCrossCheck` as the daemon runs it. Baseline: its floor, 16 relays × 3 polls closed × 2
 * (closed, then opened) × pollMs: the time the check must watch, with no bus time at all.
 * Ratio = measured / floor; goal ≤ 1.1 (the reads themselves, 17 meters per poll, fit in the
 * tenth left).
 *
 * Runs alone: node dist/bench/crosscheck.js
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openSite, startSim } from '../drivers/index.js'
import { CROSS_CHECK_POLLS, runCrossCheck } from '../daemon/crosscheck.js'
import { benchSite, runAlone, Teardowns, type BenchRow } from './lib.js'

const OUTLETS = 16
const POLL_MS = 1000

export async function run(): Promise<BenchRow[]> {
  const td = new Teardowns()
  const dir = mkdtempSync(join(tmpdir(), 'outpost-bench-crosscheck-'))
  td.teardown(() => rmSync(dir, { recursive: true, force: true }))
  try {
    const sim = await startSim({ outlets: OUTLETS, port: 0, speed: 1, script: false, seed: 7 })
    td.teardown(() => sim.close())
    for (let n = 1; n <= OUTLETS; n++) sim.plug(n, { needWh: 1e6, maxA: 10 })
    const config = benchSite({ outlets: OUTLETS, port: sim.port, storageDir: join(dir, 'journal'), extra: { sessions: { pollMs: POLL_MS } } })
    const site = await openSite(config, { now: () => Date.now() })
    td.teardown(() => site.close())
    if (!(await site.ready(10_000))) throw new Error('the simulator bus did not open')
    const t0 = performance.now()
    const report = await runCrossCheck({ site, config: config, now: () => Date.now(), who: 'bench', configVersion: null })
    const ms = performance.now() - t0
    if (!report.passed)
      throw new Error(
        `the simulator's wiring did not pass: ${report.findings
          .filter((f) => f.severity !== 'ok')
          .map((f) => f.message)
          .join('; ')}`,
      )
    const floor = OUTLETS * CROSS_CHECK_POLLS * 2 * POLL_MS
    const ratio = ms / floor
    return [
      {
        figure: `cross-check, ${OUTLETS} outlets at the default ${POLL_MS} ms poll (vs its floor ${OUTLETS}×${CROSS_CHECK_POLLS}×2 polls)`,
        baseline: floor / 1000,
        value: ms / 1000,
        unit: 's',
        ratio,
        goal: '<= 1.1x',
        met: ratio <= 1.1,
      },
    ]
  } finally {
    await td.run()
  }
}

runAlone('crosscheck', run)
