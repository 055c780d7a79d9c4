/**
 * The bus scheduler: exactly one per physical bus, and the only thing that
 * touches that bus's port.
 *
 * Owns: the order of exchanges (one on the wire at a time; relay commands ahead
 * of polls; FIFO within a priority), the silence between frames and the gap
 * between requests, per-device delay, per-request timeout and bounded retry, dropping input between
 * exchanges, per-device back-off, opening and reopening the port with back-off
 * (a bus that is absent is a bus in error, never an exception out of here), and
 * the counters behind health(), and saying once per open that the bus's echo
 * setting does not match its adapter. Never decodes a device's values (models.ts does)
 * and never decides anything about sessions.
 *
 * Timing: back-off deadlines come from the injected clock (`now`); the
 * sub-millisecond inter-frame silence is hardware timing and uses the monotonic
 * performance.now(), which the injected wall clock cannot provide.
 */
import { performance } from 'node:perf_hooks'
import type { Logger } from 'pino'
import { OutpostError } from './errors.js'
import type { Link } from './links.js'

export type Priority = 'relay' | 'poll'

export interface DeviceHealth {
  unit: number
  transactions: number
  failures: number
  consecutiveFailures: number
  lastOkTs?: number
  lastError?: { code: string; message: string; ts: number }
  /** Epoch ms until which polls to this device are refused (DEVICE_BACKOFF). */
  backedOffUntil?: number
}

export interface BusHealth {
  id: string
  type: 'modbus-rtu' | 'modbus-tcp' | 'serial' | 'shelly' | 'tasmota'
  /** Port, e.g. "/dev/ttyUSB0@9600,8N1" or "tcp://10.0.0.5:502". */
  port: string
  state: 'opening' | 'open' | 'error' | 'closed'
  lastError?: { code: string; message: string; ts: number }
  opens: number
  transactions: number
  timeouts: number
  crcErrors: number
  exceptions: number
  garbage: number
  /** Exchanges whose echo differed from the request (`echo: true` buses). */
  echoErrors: number
  retries: number
  strayBytes: number
  garbageBytes: number
  /** Jobs refused without touching the wire (bus not open, device backed off). */
  refused: number
  queued: number
  devices: DeviceHealth[]
  backedOff: number[]
}

export interface SchedulerOptions {
  id: string
  type: BusHealth['type']
  now: () => number
  logger?: Logger
  timeoutMs: number
  retries: number
  /** Silence between the end of one exchange and the next request (3.5 characters on a serial line). */
  interFrameMs: number
  /** The least time from the end of one exchange to the next request, when a device or adapter needs more than interFrameMs. */
  requestGapMs?: number
  /** Extra time a request/reply spends on the wire (slow baud rates), added to the timeout. */
  wireMs?: (req: unknown) => number
  /** Consecutive failed jobs before a device is backed off. */
  backoffAfter?: number
  backoffMinMs?: number
  backoffMaxMs?: number
  reopenMinMs?: number
  reopenMaxMs?: number
}

/** The bus's echo setting does not match its adapter: retrying cannot help, the config must change. */
const ECHO_CONFIG = new Set(['BUS_ECHO_UNEXPECTED', 'BUS_ECHO_MISSING'])

/** Errors that mean "the device did not answer sensibly": retried, and counted toward back-off. */
const DEVICE_SILENT = new Set([
  'MODBUS_TIMEOUT',
  'MODBUS_CRC',
  'MODBUS_GARBAGE',
  'MODBUS_BAD_RESPONSE',
  'SERIAL_TIMEOUT',
  'SERIAL_CHECKSUM',
  'SERIAL_GARBAGE',
])

interface Job {
  device: number
  priority: Priority
  delayMs: number
  /** A scan's probe: the bus counts it, the device's health does not (a scan of unit ids nobody uses backs none off). */
  probe: boolean
  run: (tx: (req: unknown) => Promise<unknown>) => Promise<unknown>
  resolve: (v: unknown) => void
  reject: (e: unknown) => void
}

export type Tx<Req, Res> = (req: Req) => Promise<Res>

export class BusScheduler<Req, Res> {
  private readonly relayQueue: Job[] = []
  private readonly pollQueue: Job[] = []
  private running = false
  private state: BusHealth['state'] = 'closed'
  private lastError: BusHealth['lastError']
  private lastEnd = 0
  private reopenDelay: number
  private reopenTimer: NodeJS.Timeout | undefined
  private closed = false
  private readonly devices = new Map<number, DeviceHealth & { backoffs: number }>()
  private readonly stats = { opens: 0, transactions: 0, timeouts: 0, crcErrors: 0, exceptions: 0, garbage: 0, echoErrors: 0, retries: 0, refused: 0 }
  private readonly o: Required<Omit<SchedulerOptions, 'logger' | 'wireMs'>> & Pick<SchedulerOptions, 'logger' | 'wireMs'>
  /** The echo diagnosis was logged since the port last opened. */
  private echoLogged = false

  constructor(
    readonly link: Link<Req, Res>,
    opts: SchedulerOptions,
  ) {
    this.o = { requestGapMs: 0, backoffAfter: 3, backoffMinMs: 2000, backoffMaxMs: 60_000, reopenMinMs: 250, reopenMaxMs: 10_000, ...opts }
    this.reopenDelay = this.o.reopenMinMs
    link.stream.onLost = (err) => this.lost(err)
  }

  get id(): string {
    return this.o.id
  }

  get isOpen(): boolean {
    return this.state === 'open'
  }

  /** Begin opening the port; failures become state 'error' and a retry, never a throw. */
  start(): void {
    this.closed = false
    void this.open()
  }

  /** Resolves once the bus is open (or rejects after `ms`); for tests and scan. */
  async waitOpen(ms: number): Promise<void> {
    const t0 = performance.now()
    while (this.state !== 'open') {
      if (this.closed) throw new OutpostError('BUS_CLOSED', `bus ${this.o.id} is closed`)
      if (performance.now() - t0 > ms)
        throw new OutpostError('BUS_CLOSED', `bus ${this.o.id} did not open within ${ms} ms: ${this.lastError?.message ?? 'still opening'}`)
      await sleep(20)
    }
  }

  /**
   * Run `run` with exclusive use of the bus. Each tx() inside it is one exchange
   * with gap, delay, timeout and retry applied. Polls to a backed-off device are
   * refused at once (DEVICE_BACKOFF); relay commands are always attempted because
   * opening a relay is the safe direction and must never wait for a back-off.
   */
  submit<T>(device: number, priority: Priority, run: (tx: Tx<Req, Res>) => Promise<T>, opts: { delayMs?: number; probe?: boolean } = {}): Promise<T> {
    const refusal = this.refusal(device, priority, opts.probe === true)
    if (refusal) {
      this.stats.refused++
      return Promise.reject(refusal)
    }
    return new Promise<T>((resolve, reject) => {
      const job: Job = {
        device,
        priority,
        delayMs: opts.delayMs ?? 0,
        probe: opts.probe === true,
        run: run as Job['run'],
        resolve: resolve as Job['resolve'],
        reject,
      }
      ;(priority === 'relay' ? this.relayQueue : this.pollQueue).push(job)
      this.pump()
    })
  }

  health(): BusHealth {
    const t = this.o.now()
    const devices = [...this.devices.values()]
      .sort((a, b) => a.unit - b.unit)
      .map(({ backoffs: _b, ...d }) => ({
        ...d,
        backedOffUntil: d.backedOffUntil !== undefined && d.backedOffUntil > t ? d.backedOffUntil : undefined,
      }))
    return {
      id: this.o.id,
      type: this.o.type,
      port: this.link.stream.describe,
      state: this.state,
      lastError: this.lastError,
      ...this.stats,
      strayBytes: this.link.counters.strayBytes,
      garbageBytes: this.link.counters.garbageBytes,
      queued: this.relayQueue.length + this.pollQueue.length,
      devices,
      backedOff: devices.filter((d) => d.backedOffUntil !== undefined).map((d) => d.unit),
    }
  }

  async close(): Promise<void> {
    this.closed = true
    if (this.reopenTimer) clearTimeout(this.reopenTimer)
    const err = new OutpostError('BUS_CLOSED', `bus ${this.o.id} is closing`)
    this.drain(err)
    this.link.abort(err)
    // Let a job in flight see its rejection before the port goes.
    for (let i = 0; i < 100 && this.running; i++) await sleep(10)
    await this.link.stream.close()
    this.state = 'closed'
  }

  // ------------------------------------------------------------------ internals

  /** Why a job cannot run now. A probe is not held back by its unit's back-off: it asks whether something is there, and its answer never touches the unit's health. */
  private refusal(device: number, priority: Priority, probe = false): OutpostError | undefined {
    if (this.closed) return new OutpostError('BUS_CLOSED', `bus ${this.o.id} is closed`)
    if (this.state !== 'open')
      return new OutpostError(
        'BUS_CLOSED',
        `bus ${this.o.id} (${this.link.stream.describe}) is not open${this.lastError ? ': ' + this.lastError.message : ''}`,
      )
    if (priority === 'poll' && !probe) {
      const d = this.devices.get(device)
      if (d?.backedOffUntil !== undefined && d.backedOffUntil > this.o.now()) {
        return new OutpostError(
          'DEVICE_BACKOFF',
          `unit ${device} on bus ${this.o.id} is backed off after ${d.consecutiveFailures} failures ` +
            `(last: ${d.lastError?.code ?? '?'}); next try in ${d.backedOffUntil - this.o.now()} ms`,
        )
      }
    }
    return undefined
  }

  private device(unit: number): DeviceHealth & { backoffs: number } {
    let d = this.devices.get(unit)
    if (!d) {
      d = { unit, transactions: 0, failures: 0, consecutiveFailures: 0, backoffs: 0 }
      this.devices.set(unit, d)
    }
    return d
  }

  private async open(): Promise<void> {
    if (this.closed) return
    this.state = 'opening'
    try {
      await this.link.stream.open()
      if (this.closed) {
        await this.link.stream.close()
        return
      }
      this.state = 'open'
      this.stats.opens++
      this.link.reopened()
      this.echoLogged = false
      this.reopenDelay = this.o.reopenMinMs
      this.lastEnd = performance.now()
      this.o.logger?.info({ bus: this.o.id, port: this.link.stream.describe }, 'bus open')
      this.pump()
    } catch (err) {
      // open() rejects with BUS_OPEN_FAILED; anything else keeps its own code, or BUS_ERROR.
      this.fail(err as Error & { code?: string })
    }
  }

  private lost(err: OutpostError): void {
    if (this.closed) return
    this.o.logger?.warn({ bus: this.o.id, err: err.message }, 'bus lost; reopening')
    this.link.abort(err)
    this.fail(err)
  }

  private fail(err: Error & { code?: string }): void {
    this.state = 'error'
    this.lastError = { code: err.code ?? 'BUS_ERROR', message: err.message, ts: this.o.now() }
    this.drain(new OutpostError('BUS_CLOSED', `bus ${this.o.id}: ${err.message}`))
    if (this.closed || this.reopenTimer) return
    const delay = this.reopenDelay
    this.reopenDelay = Math.min(this.reopenDelay * 2, this.o.reopenMaxMs)
    this.reopenTimer = setTimeout(() => {
      this.reopenTimer = undefined
      void this.link.stream.close().then(() => this.open())
    }, delay)
  }

  /** Once per open, at error level: every exchange on this bus fails until its echo setting is fixed. */
  private echoMisconfigured(err: OutpostError): void {
    this.lastError = { code: err.code, message: err.message, ts: this.o.now() }
    if (this.echoLogged) return
    this.echoLogged = true
    this.o.logger?.error({ bus: this.o.id, code: err.code, err: err.message }, 'bus echo setting does not match the adapter')
  }

  private drain(err: OutpostError): void {
    for (const q of [this.relayQueue, this.pollQueue]) {
      for (const job of q.splice(0)) job.reject(err)
    }
  }

  private pump(): void {
    if (this.running || this.state !== 'open') return
    const job = this.relayQueue.shift() ?? this.pollQueue.shift()
    if (!job) return
    this.running = true
    void this.runJob(job).finally(() => {
      this.running = false
      this.pump()
    })
  }

  private async runJob(job: Job): Promise<void> {
    const refusal = this.refusal(job.device, job.priority, job.probe)
    if (refusal) {
      this.stats.refused++
      job.reject(refusal)
      return
    }
    let lastFailure: OutpostError | undefined
    const tx = async (req: unknown): Promise<unknown> => {
      const r = await this.exchange(req as Req, job.delayMs, job.probe)
      if (r.ok) return r.value
      lastFailure = r.error
      throw r.error
    }
    if (job.probe) {
      await job.run(tx).then(job.resolve, job.reject)
      return
    }
    const d = this.device(job.device)
    try {
      const value = await job.run(tx)
      d.consecutiveFailures = 0
      d.backoffs = 0
      d.backedOffUntil = undefined
      d.lastOkTs = this.o.now()
      job.resolve(value)
    } catch (err) {
      const e = err as { code?: string; message: string }
      const code = e.code ?? 'ERROR'
      d.failures++
      d.lastError = { code, message: e.message, ts: this.o.now() }
      if (lastFailure && DEVICE_SILENT.has(lastFailure.code)) {
        d.consecutiveFailures++
        if (d.consecutiveFailures >= this.o.backoffAfter) {
          const ms = Math.min(this.o.backoffMinMs * 2 ** d.backoffs, this.o.backoffMaxMs)
          d.backoffs++
          d.backedOffUntil = this.o.now() + ms
          this.o.logger?.warn({ bus: this.o.id, unit: job.device, ms, code }, 'device backed off')
        }
      } else if (code === 'MODBUS_EXCEPTION' || code === 'SERIAL_DEVICE_ERROR') {
        // The device answered: it is alive, whatever it thinks of the request.
        d.consecutiveFailures = 0
      }
      job.reject(err)
    }
  }

  /** One request with gap, delay, timeout and bounded retry. */
  private async exchange(req: Req, delayMs: number, probe = false): Promise<{ ok: true; value: Res } | { ok: false; error: OutpostError }> {
    const d = probe ? { transactions: 0 } : this.device(this.link.deviceOf(req))
    let error: OutpostError | undefined
    for (let attempt = 0; attempt <= this.o.retries; attempt++) {
      if (attempt > 0) this.stats.retries++
      const gap = Math.max(this.o.interFrameMs, this.o.requestGapMs)
      const wait = Math.max(gap - (performance.now() - this.lastEnd), 0) + delayMs
      if (wait > 0) await waitPrecisely(performance.now() + wait)
      // A bus lost during a retry reports the device's own failure if there was one.
      if (this.state !== 'open') return { ok: false, error: error ?? new OutpostError('BUS_CLOSED', `bus ${this.o.id} is not open`) }
      try {
        const value = await this.link.transact(req, this.o.timeoutMs + (this.o.wireMs?.(req) ?? 0))
        this.lastEnd = performance.now()
        this.stats.transactions++
        d.transactions++
        return { ok: true, value }
      } catch (err) {
        this.lastEnd = performance.now()
        error = err instanceof OutpostError ? err : new OutpostError('BUS_ERROR', String((err as Error)?.message ?? err), { cause: err })
        this.stats.transactions++
        d.transactions++
        switch (error.code) {
          case 'MODBUS_TIMEOUT':
          case 'SERIAL_TIMEOUT':
            this.stats.timeouts++
            break
          case 'MODBUS_CRC':
          case 'SERIAL_CHECKSUM':
            this.stats.crcErrors++
            break
          case 'MODBUS_GARBAGE':
          case 'SERIAL_GARBAGE':
          case 'MODBUS_BAD_RESPONSE':
            this.stats.garbage++
            break
          case 'MODBUS_EXCEPTION':
            this.stats.exceptions++
            break
          case 'BUS_ECHO_MISMATCH':
            this.stats.echoErrors++
            break
        }
        if (ECHO_CONFIG.has(error.code)) {
          this.echoMisconfigured(error)
          break
        }
        if (error.code === 'BUS_WRITE_FAILED') {
          // The port errored without closing (EIO on a vanished adapter): treat it as lost so it is reopened.
          this.lost(error)
          break
        }
        if (!DEVICE_SILENT.has(error.code) && error.code !== 'BUS_ECHO_MISMATCH') break
        // Wait out a late or long reply and drop it before anything else is sent.
        if (this.state === 'open') await this.link.settle(Math.max(this.o.interFrameMs * 4, 10))
      }
    }
    return { ok: false, error: error! }
  }
}

/**
 * Wait until a monotonic deadline without the ~1 ms overshoot of setTimeout: a
 * timer for all but the last 1.5 ms, then yielding turns of the event loop. The
 * inter-frame silence is 1.75 ms above 19200 baud, so the overshoot would be
 * half again of it on every exchange.
 */
async function waitPrecisely(deadline: number): Promise<void> {
  const left = deadline - performance.now()
  if (left > 2) await sleep(left - 1.5)
  while (performance.now() < deadline) await new Promise((r) => setImmediate(r))
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}
