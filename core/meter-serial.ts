/**
 * The meter identity an outlet's records carry when its config names no serial.
 *
 * Owns: the default meter serial (OCMF MS, exports). Must never: read hardware.
 */
import type { OutletConfig } from './types.js'

/** As configured, else where the meter is: bus and unit (Modbus, serial) or channel (a network device), or the device alone. */
export function meterSerial(o: Pick<OutletConfig, 'bus' | 'meter'>): string {
  if (o.meter.serial !== undefined) return o.meter.serial
  const at = o.meter.unit ?? o.meter.channel
  return at === undefined ? o.bus : `${o.bus}:${at}`
}
