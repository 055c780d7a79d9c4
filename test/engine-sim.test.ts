/**
 * Seeded simulation of the engine (see engine-simulation.ts), seeds 1-5000; the
 * other half runs in engine-sim-2.test.ts so the two use both cores. A failure
 * names its seed; replay one with ENGINE_SEED=n (ENGINE_SIM_TRACE=1 prints every
 * event and effect), or run another range with ENGINE_SEEDS=count ENGINE_SEED_BASE=first.
 */
import t from 'tap'
import { simulationTest } from './engine-simulation.js'

simulationTest(t, 1, 5000)
