/**
 * The drivers' public surface: what the daemon, the demo, the API and the
 * Node-RED nodes import. Everything else under drivers/ is internal.
 */
export { openSite, openBus, Bus, type SiteIO, type OutletIO, type OpenOptions } from './site.js'
export type { BusHealth, DeviceHealth, Priority } from './scheduler.js'
export { startSim, RELAY_UNIT, type Sim, type SimOptions, type SimCommand, type SimReply, type SimOutletState, type VehicleSpec } from './sim.js'
export { scanBus, testDevice, parseUnits, formatTable, formatSnippet, configSnippet, listSerialPorts, type ScanHit, type DeviceTest } from './scan.js'
export { ModelRegistry, validateModel, loadModelFile, type DeviceModel, type RegisterDef } from './models.js'
export { encodeLine, parseLine, type LineRequest, type LineReply } from './line-protocol.js'
export { interFrameMs, bitsPerChar } from './modbus.js'
