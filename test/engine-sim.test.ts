/**
 * Seeded simulation of the engine (see engine-simulation.ts): 10,000 seeds in the
 * normal suite. A failure names its seed; replay one with ENGINE_SEED=n, or run
 * more with ENGINE_SEEDS=n (count) and ENGINE_SEED_BASE=n (first seed).
 */
import t from 'tap'
import { runSeed, type SimStats } from './engine-simulation.js'

const one = process.env.ENGINE_SEED
const count = Number(process.env.ENGINE_SEEDS ?? 10_000)
const base = Number(process.env.ENGINE_SEED_BASE ?? 1)

t.test(one !== undefined ? `seed ${one}` : `${count} seeds from ${base}`, async (t) => {
  const stats: SimStats = { steps: 0, sessions: 0, reasons: {} }
  const seeds = one !== undefined ? [Number(one)] : Array.from({ length: count }, (_, i) => base + i)
  const failures: string[] = []
  for (const seed of seeds) {
    try {
      runSeed(seed, stats)
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err)
      failures.push(msg.includes('ENGINE_SEED=') ? msg : `ENGINE_SEED=${seed}: ${err instanceof Error ? err.stack : msg}`)
      if (failures.length >= 5) break
    }
  }
  t.same(failures, [], 'every seed keeps every invariant (replay a failure with ENGINE_SEED=n)')
  t.comment(`${seeds.length} seeds, ${stats.steps} steps, ${stats.sessions} sessions; reasons ${JSON.stringify(stats.reasons)}`)
  // The generator must actually reach every way a session ends, or the invariants prove little.
  if (one === undefined && count >= 10_000) {
    for (const r of ['user-stopped', 'manager-stopped', 'wallet-depleted', 'unplugged', 'charge-complete', 'grace-expired', 'plan-unavailable', 'power-loss', 'reboot', 'meter-fault', 'offline-limit']) {
      t.ok((stats.reasons[r] ?? 0) > 0, `the simulation ended sessions with ${r}`)
    }
  }
})
