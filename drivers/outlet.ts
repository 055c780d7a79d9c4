/**
 * What the daemon holds for one outlet, whatever is behind it (a Modbus meter and relay
 * board, a serial controller, a Shelly, a Tasmota plug).
 *
 * Owns: the outlet I/O interface. Must never: hold an implementation.
 */
import type { Reading } from '../core/types.js'

export interface OutletIO {
  readonly id: string
  readonly hasRelay: boolean
  /** One sample of the meter; ts from the injected clock when the reply arrived. */
  read(): Promise<Reading>
  /** Switch the relay (closed = current may flow), then read it back; RELAY_MISMATCH if it disagrees. */
  setRelay(closed: boolean): Promise<void>
  /** The relay's state as the device reports it. */
  readRelay(): Promise<boolean>
  /** Network devices that push changes (Shelly NotifyStatus): `listener` runs when the outlet should be read now. */
  onChange?(listener: () => void): void
}
