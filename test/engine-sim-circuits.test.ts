/**
 * The engine simulation with shared circuits (see engine-simulation.ts, circuit mode): a
 * feeder with a limit a car or a few wide, maybe a sub-circuit and a feeder meter with an
 * unmanaged load that comes and goes and a meter that falls silent, priorities, phases,
 * demand response, seeds 20001-25000 (25001-30000 in engine-sim-circuits-2.test.ts: 10,000 in all, one core each). After every poll: the switched-on current
 * within the limit (one poll after a change of load), no session waiting past the rotation
 * bound while others charge, minimum on and off times, and every billing invariant.
 */
import t from 'tap'
import { simulationTest } from './engine-simulation.js'

simulationTest(t, 20_001, 5000, { circuits: true })
