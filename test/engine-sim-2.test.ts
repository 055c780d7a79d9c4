/** Seeds 5001-10000 of the engine simulation (see engine-sim.test.ts). */
import t from 'tap'
import { simulationTest } from './engine-simulation.js'

simulationTest(t, 5001, 5000)
