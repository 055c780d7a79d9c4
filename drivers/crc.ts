/**
 * CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF). Used by Modbus RTU frames
 * and by Outpost's serial line protocol (as four hex digits).
 *
 * Owns: the checksum arithmetic only. Never touches a port.
 */
const TABLE = (() => {
  const t = new Uint16Array(256)
  for (let i = 0; i < 256; i++) {
    let c = i
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xa001 : c >>> 1
    t[i] = c
  }
  return t
})()

export function crc16(buf: Uint8Array, start = 0, end = buf.length): number {
  let crc = 0xffff
  for (let i = start; i < end; i++) crc = (crc >>> 8) ^ TABLE[(crc ^ buf[i]!) & 0xff]!
  return crc
}

/** Four uppercase hex digits of the CRC of an ASCII string (the line protocol's checksum). */
export function crc16Hex(text: string): string {
  return crc16(Buffer.from(text, 'latin1')).toString(16).toUpperCase().padStart(4, '0')
}
