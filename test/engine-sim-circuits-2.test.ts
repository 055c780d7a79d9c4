/** Seeds 25001-30000 of the engine simulation with shared circuits (see engine-sim-circuits.test.ts). */
import t from 'tap'
import { simulationTest } from './engine-simulation.js'

simulationTest(t, 25_001, 5000, { circuits: true })
