/**
 * Loaded into every test process (`.taprc` node-arg), after tap's own processinfo hook: the
 * processes a test starts (the daemon, CLI commands, npm, tsc, fixture children) run without
 * that hook. It records which files each process loads, for coverage this suite does not
 * gather (`.taprc`: disable-coverage), and it cost each of the suite's node processes about
 * 0.17 s of CPU (an ESM loader thread), over a thousand of them in one run.
 *
 * Owns: removing the hook from what test processes pass on. Must never: change anything
 * else about how a child runs.
 */
const state = (globalThis as Record<symbol, { listeners: unknown[] } | undefined>)[Symbol.for('process-on-spawn@*:singletonId')]
// process-on-spawn's listeners add the hook back to each spawn's NODE_OPTIONS; processinfo's is the only one.
if (state) state.listeners.length = 0
if (process.env.NODE_OPTIONS)
  process.env.NODE_OPTIONS = process.env.NODE_OPTIONS.split(/\s+/)
    .filter((o) => !o.includes('@tapjs/processinfo'))
    .join(' ')
