/**
 * The error codes the drivers throw (buses, Modbus and line-protocol framing, device
 * models, outlets, the scanner), each with its meaning. daemon/errors.ts takes them
 * into the catalog; docs/errors.md is generated from it.
 *
 * Owns: the drivers' codes and their meanings.
 * Must never: import the daemon; reuse a code for another meaning (codes are stable).
 */
import {
  OutpostError as CoreOutpostError,
  isOutpostError as coreIsOutpostError,
  type OutpostErrorClass,
  type OutpostErrorGuard,
} from '../core/errors.js'
export { describeError } from '../core/errors.js'

export const DRIVER_ERRORS = {
  MODBUS_TIMEOUT: 'no byte came back within the timeout (retried; counts toward back-off)',
  MODBUS_CRC: 'a frame for this unit and function arrived with a bad CRC (retried; counts toward back-off)',
  MODBUS_GARBAGE: 'bytes arrived but no valid frame: noise, wrong baud rate (retried; counts toward back-off)',
  MODBUS_BAD_RESPONSE: 'a valid frame that does not answer the request: wrong unit, byte count or echo (retried; counts toward back-off)',
  MODBUS_EXCEPTION:
    'the device answered with a Modbus exception; the message names it, cause.exceptionCode holds it (not retried: the device is alive)',
  MODBUS_BAD_REQUEST: 'a request the driver refuses to frame (unit, address, count or value out of range)',
  SERIAL_TIMEOUT: 'line protocol: the controller did not answer within the timeout (retried; counts toward back-off)',
  SERIAL_CHECKSUM: 'line protocol: a reply with a wrong checksum (retried; counts toward back-off)',
  SERIAL_GARBAGE: 'line protocol: only unreadable bytes within the timeout (retried; counts toward back-off)',
  SERIAL_DEVICE_ERROR: 'line protocol: the controller answered E,<addr>,<CODE> or an unexpected reply (not retried)',
  DEVICE_BACKOFF: 'refused at once: the device is backed off after consecutive failures',
  BUS_ECHO_MISMATCH:
    'echo: true and the bytes the adapter echoed differ from the request sent (a collision or a second master on the line); retried, never taken as a reply',
  BUS_ECHO_UNEXPECTED: 'the adapter echoes every request back but the bus does not have echo: true; the message names the bus to fix (not retried)',
  BUS_ECHO_MISSING: 'the bus has echo: true but a reply came back without the echo of its request; the message names the bus to fix (not retried)',
  BUS_CLOSED: 'the bus is not open (absent, unplugged, reconnecting, closing) or was lost',
  BUS_OPEN_FAILED: 'the port or socket could not be opened (in health().lastError while the bus retries)',
  BUS_WRITE_FAILED: 'a write to an open port failed (EIO on a vanished adapter); the bus is treated as lost and reopened',
  BUS_BUSY: 'an exchange was started while another was in flight (a scheduler bug)',
  BUS_ERROR: 'a bus exchange failed with an error that carried no code of its own',
  BUS_UNKNOWN: 'no bus with that id on this site',
  BUS_WRONG_TYPE: 'a Modbus operation asked of a plain serial bus',
  CONFIG_INVALID: 'the site wiring names something that does not exist (an outlet on an unknown bus)',
  MODEL_UNKNOWN: 'no device model with that name (the message lists the known ones)',
  MODEL_INVALID: 'a device model file is not valid (the message lists every problem)',
  MODEL_DECODE: 'a reply holds fewer registers than the model needs for a quantity',
  OUTLET_UNKNOWN: 'no outlet with that id on this site',
  FEEDER_UNKNOWN: 'no circuit with a feeder meter of that id on this site',
  NO_RELAY: 'a relay operation on a meter-only outlet',
  RELAY_MISMATCH: 'the relay read back differs from what was written',
  READING_INVALID: 'a meter register decoded to NaN or infinity',
  NET_TIMEOUT: 'network device: no answer within timeoutMs (retried; the device is in error until it answers)',
  NET_UNREACHABLE: 'network device: the connection was refused, reset or has no route (retried)',
  NET_AUTH: 'network device: it asks for a password and none is set, the password was refused, or passwordFile cannot be read (not retried)',
  NET_HTTP: 'network device: an HTTP status other than 200 (not retried)',
  NET_BAD_REPLY:
    'network device: a reply that is not the JSON expected (an HTML page, garbage, a value missing or not a number); the message quotes it',
  NET_RPC_ERROR: 'network device: the device answered with an error (a Shelly RPC error frame, Tasmota "Command Unknown")',
  NET_MODEL_MISMATCH: "network device: the device lacks a method its outlets' models call (the message lists what it offers)",
  USAGE: 'outpost scan: a --units range that is not within 1-247, low to high',
} as const satisfies Record<string, string>

export type DriverErrorCode = keyof typeof DRIVER_ERRORS

/** OutpostError as the drivers throw it: only their own codes compile. */
export const OutpostError: OutpostErrorClass<DriverErrorCode> = CoreOutpostError
export type OutpostError = CoreOutpostError<DriverErrorCode>
export const isOutpostError: OutpostErrorGuard<DriverErrorCode> = coreIsOutpostError
