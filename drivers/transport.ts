/**
 * Byte streams under the bus links: a serial port (the real serialport package)
 * or a TCP socket. Same interface for both, so a link (Modbus RTU, Modbus TCP,
 * the serial line protocol) runs unchanged over either.
 *
 * Owns: opening, writing, receiving, noticing loss (USB adapter unplugged,
 * socket reset) and closing one port. Never retries or reopens on its own (the
 * bus scheduler decides that), never interprets bytes.
 */
import net from 'node:net'
// serialport (a native addon) is loaded by the first serial bus that opens: a TCP-only site never pays for it.
import type { SerialPort } from 'serialport'
import { OutpostError } from './errors.js'

export interface ByteStream {
  /** Human description for logs and errors, e.g. "/dev/ttyUSB0@9600,8N1" or "tcp://10.0.0.5:502". */
  readonly describe: string
  open(): Promise<void>
  write(data: Buffer): Promise<void>
  /** Discard what the kernel holds in its input buffer (no-op where meaningless). */
  flushInput(): Promise<void>
  close(): Promise<void>
  /** Drop the connection as if lost (onLost follows), so the scheduler reconnects: for a desynchronised TCP stream. */
  reset?(): void
  readonly isOpen: boolean
  onData: (chunk: Buffer) => void
  /** Called once when an open stream is lost without close() being asked for. */
  onLost: (err: OutpostError) => void
}

export interface SerialOptions {
  path: string
  baudRate: number
  parity: 'none' | 'even' | 'odd'
  dataBits: 7 | 8
  stopBits: 1 | 2
}

export class SerialStream implements ByteStream {
  readonly describe: string
  private port: SerialPort | undefined
  private closing = false
  onData: (chunk: Buffer) => void = () => {}
  onLost: (err: OutpostError) => void = () => {}

  constructor(private readonly opts: SerialOptions) {
    const p = opts.parity === 'none' ? 'N' : opts.parity === 'even' ? 'E' : 'O'
    this.describe = `${opts.path}@${opts.baudRate},${opts.dataBits}${p}${opts.stopBits}`
  }

  get isOpen(): boolean {
    return this.port?.isOpen === true
  }

  async open(): Promise<void> {
    this.closing = false
    const { SerialPort } = await import('serialport')
    const port = new SerialPort({
      path: this.opts.path,
      baudRate: this.opts.baudRate,
      parity: this.opts.parity,
      dataBits: this.opts.dataBits,
      stopBits: this.opts.stopBits,
      autoOpen: false,
    })
    return new Promise((resolve, reject) => {
      port.open((err) => {
        if (err) {
          port.removeAllListeners()
          reject(new OutpostError('BUS_OPEN_FAILED', `cannot open ${this.describe}: ${err.message}`, { cause: err }))
          return
        }
        this.port = port
        port.on('data', (chunk: Buffer) => this.onData(chunk))
        // 'error' without a close is reported by the failing write/flush itself; the
        // listener only keeps an emitted error from becoming an uncaught exception.
        port.on('error', () => {})
        port.on('close', (e?: Error & { disconnected?: boolean }) => {
          if (this.port === port) this.port = undefined
          if (!this.closing)
            this.onLost(
              new OutpostError(
                'BUS_CLOSED',
                `${this.describe} was lost${e?.disconnected ? ' (adapter disconnected)' : ''}${e ? ': ' + e.message : ''}`,
                { cause: e },
              ),
            )
        })
        resolve()
      })
    })
  }

  write(data: Buffer): Promise<void> {
    const port = this.port
    if (!port?.isOpen) return Promise.reject(new OutpostError('BUS_CLOSED', `${this.describe} is not open`))
    return new Promise((resolve, reject) => {
      port.write(data, (err) => {
        if (err) reject(new OutpostError('BUS_WRITE_FAILED', `write to ${this.describe} failed: ${err.message}`, { cause: err }))
        else resolve()
      })
    })
  }

  flushInput(): Promise<void> {
    const port = this.port
    if (!port?.isOpen) return Promise.resolve()
    return new Promise((resolve) => port.flush(() => resolve()))
  }

  close(): Promise<void> {
    this.closing = true
    const port = this.port
    this.port = undefined
    if (!port?.isOpen) return Promise.resolve()
    return new Promise((resolve) =>
      port.close(() => {
        port.removeAllListeners()
        port.on('error', () => {})
        resolve()
      }),
    )
  }
}

export class TcpStream implements ByteStream {
  readonly describe: string
  private socket: net.Socket | undefined
  private closing = false
  onData: (chunk: Buffer) => void = () => {}
  onLost: (err: OutpostError) => void = () => {}

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly connectTimeoutMs = 3000,
  ) {
    this.describe = `tcp://${host}:${port}`
  }

  get isOpen(): boolean {
    return this.socket !== undefined && !this.socket.destroyed && this.socket.readyState === 'open'
  }

  open(): Promise<void> {
    this.closing = false
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: this.host, port: this.port })
      s.setNoDelay(true)
      const timer = setTimeout(() => {
        s.destroy()
        reject(new OutpostError('BUS_OPEN_FAILED', `cannot connect to ${this.describe}: timed out`))
      }, this.connectTimeoutMs)
      const onErr = (err: Error): void => {
        clearTimeout(timer)
        s.destroy()
        reject(new OutpostError('BUS_OPEN_FAILED', `cannot connect to ${this.describe}: ${err.message}`, { cause: err }))
      }
      s.once('error', onErr)
      s.once('connect', () => {
        clearTimeout(timer)
        s.off('error', onErr)
        this.socket = s
        s.setKeepAlive(true, 10_000)
        s.on('data', (chunk) => this.onData(chunk))
        s.on('error', () => {}) // followed by 'close', handled there
        s.on('close', () => {
          if (this.socket === s) this.socket = undefined
          if (!this.closing) this.onLost(new OutpostError('BUS_CLOSED', `${this.describe}: connection closed by peer`))
        })
        resolve()
      })
    })
  }

  write(data: Buffer): Promise<void> {
    const s = this.socket
    if (!s || s.destroyed) return Promise.reject(new OutpostError('BUS_CLOSED', `${this.describe} is not connected`))
    return new Promise((resolve, reject) => {
      s.write(data, (err) =>
        err ? reject(new OutpostError('BUS_WRITE_FAILED', `write to ${this.describe} failed: ${err.message}`, { cause: err })) : resolve(),
      )
    })
  }

  flushInput(): Promise<void> {
    return Promise.resolve()
  }

  reset(): void {
    this.socket?.destroy()
  }

  close(): Promise<void> {
    this.closing = true
    const s = this.socket
    this.socket = undefined
    if (!s || s.destroyed) return Promise.resolve()
    return new Promise((resolve) => {
      s.once('close', () => resolve())
      s.end()
      setTimeout(() => s.destroy(), 500).unref()
    })
  }
}
