/**
 * Bus benchmarks.
 *  1. Poll cycle: N devices behind a peer with an artificial turnaround t, all
 *     polled at once as the engine does; cycle time as a ratio to N·t (the bus
 *     is never idle when it is close to 1; goal <= 1.1). Over Modbus TCP and over
 *     RTU on a socat pty pair (a pty has no baud-rate wire time, so this measures
 *     the scheduler, not the line).
 *  2. Scheduler overhead: sequential single-register reads through our Bus vs a
 *     bare modbus-serial loop against the same zero-turnaround peer, same run.
 * The peer is `outpost sim` in a child process, so the peer's work does not
 * share our event loop.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import ModbusSerial from 'modbus-serial'
import type { ModbusRTU as ModbusRTUClass } from 'modbus-serial/ModbusRTU.js'
import { interFrameMs, encodeRtu } from '../drivers/modbus.js'
import { SerialPort } from 'serialport'
import { validateConfig } from '../daemon/config.js'
import type { BusConfig } from '../core/types.js'
import { Bus } from '../drivers/site.js'
import { repeat, row, startSimProcess, type BenchRow } from './lib.js'

const N = 8
const TURNAROUND = 20

/** The peer: `outpost sim` in a child process, time frozen, no scripted vehicles. */
const startPeer = (args: string[]) => startSimProcess(['--speed', '0', '--no-script', ...args])

async function socatPair(): Promise<{ a: string; b: string; stop(): Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-bench-'))
  const a = join(dir, 'a')
  const b = join(dir, 'b')
  const proc = spawn('socat', [`pty,raw,echo=0,link=${a}`, `pty,raw,echo=0,link=${b}`], { stdio: 'ignore' })
  for (let i = 0; i < 500 && !(existsSync(a) && existsSync(b)); i++) await new Promise((r) => setTimeout(r, 20))
  return {
    a,
    b,
    stop: async () => {
      await new Promise<void>((r) => {
        proc.once('exit', () => r())
        proc.kill('SIGKILL')
      })
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

function busConfig(raw: Record<string, unknown>): BusConfig {
  const r = validateConfig({
    site: { id: 'b', timezone: 'UTC' },
    storage: { dir: '/tmp' },
    buses: [{ id: 'b', ...raw }],
    outlets: [{ id: 'x', bus: 'b', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'p' }],
    plans: [{ id: 'p', currency: 'EUR', periods: [{ days: ['mon'], from: '00:00', to: '24:00', perKwh: 0.1 }] }],
  })
  if (!r.ok) throw new Error(JSON.stringify(r.problems))
  return r.config.buses[0]!
}

async function openBus(cfg: BusConfig): Promise<Bus> {
  const bus = new Bus(cfg, { now: () => Date.now() })
  bus.start()
  await bus.scheduler.waitOpen(20_000)
  return bus
}

/** One cycle: every meter's SDM120 first block, all submitted at once. */
async function cycle(bus: Bus): Promise<number> {
  const t0 = performance.now()
  await Promise.all(Array.from({ length: N }, (_, i) => bus.readRegisters(i + 1, 4, 0, 14)))
  return performance.now() - t0
}

async function pollCycleRows(): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  const ideal = N * TURNAROUND
  const peer = await startPeer(['--outlets', String(N), '--turnaround-ms', String(TURNAROUND)])
  try {
    const bus = await openBus(busConfig({ type: 'modbus-tcp', host: '127.0.0.1', port: peer.port, timeoutMs: 1000 }))
    const runs = await repeat(7, 2, () => cycle(bus))
    rows.push(
      row(
        `poll cycle, ${N} devices, turnaround ${TURNAROUND} ms, Modbus TCP (vs N·t)`,
        'ms',
        runs.map(() => ideal),
        runs,
        { op: '<=', ratio: 1.1 },
      ),
    )
    await bus.close()
  } finally {
    await peer.stop()
  }
  const pty = await socatPair()
  const rtuPeer = await startPeer(['--outlets', String(N), '--turnaround-ms', String(TURNAROUND), '--rtu', pty.b])
  try {
    // RTU requires 3.5 characters of silence between frames (1.75 ms here): part of the ideal, not idle time.
    const rtuIdeal = N * (TURNAROUND + interFrameMs(115200))
    // Same-run baseline: the same exchanges by a bare loop on the same pty (no queue, no
    // scheduler), so socat's and the peer's scheduling latency on a loaded machine are in both.
    const bare = async (): Promise<number> => {
      const port = new SerialPort({ path: pty.a, baudRate: 115200, autoOpen: false })
      await new Promise<void>((res, rej) => port.open((e) => (e ? rej(e) : res())))
      let got = 0
      let wake: (() => void) | undefined
      port.on('data', (c: Buffer) => {
        got += c.length
        wake?.()
      })
      const one = async (): Promise<number> => {
        const t0 = performance.now()
        for (let u = 1; u <= N; u++) {
          got = 0
          await new Promise<void>((res) => {
            wake = () => {
              if (got >= 33) res()
            }
            port.write(encodeRtu({ unit: u, fc: 4, address: 0, count: 14 }))
          })
          const until = performance.now() + interFrameMs(115200)
          while (performance.now() < until) await new Promise((r) => setImmediate(r))
        }
        return performance.now() - t0
      }
      const runs: number[] = []
      for (let i = 0; i < 2; i++) await one()
      for (let i = 0; i < 7; i++) runs.push(await one())
      await new Promise<void>((r) => port.close(() => r()))
      return runs.sort((a, b) => a - b)[3]!
    }
    const bareRuns: number[] = []
    const ourRuns: number[] = []
    for (let i = 0; i < 3; i++) {
      bareRuns.push(await bare())
      const bus = await openBus(busConfig({ type: 'modbus-rtu', path: pty.a, baudRate: 115200, timeoutMs: 1000 }))
      const runs = await repeat(7, 2, () => cycle(bus))
      await bus.close()
      ourRuns.push(...runs)
    }
    rows.push(
      row(
        `poll cycle, ${N} devices, turnaround ${TURNAROUND} ms, Modbus RTU 115200 on a pty (vs N·(t + 3.5-char gap))`,
        'ms',
        ourRuns.map(() => rtuIdeal),
        ourRuns,
        { op: '<=', ratio: 1.1 },
      ),
    )
    rows.push(
      row(`poll cycle, same RTU set-up, through the scheduler vs a bare sequential loop on the same pty`, 'ms', bareRuns, ourRuns, {
        op: '<=',
        ratio: 1.1,
      }),
    )
  } finally {
    await rtuPeer.stop()
    await pty.stop()
  }
  return rows
}

async function overheadRows(): Promise<BenchRow[]> {
  const K = 1000
  const peer = await startPeer(['--outlets', '1'])
  try {
    // modbus-serial is CommonJS: its module.exports is the client class.
    const client = new (ModbusSerial as unknown as typeof ModbusRTUClass)()
    await client.connectTCP('127.0.0.1', { port: peer.port })
    client.setID(1)
    client.setTimeout(1000)
    const bare = async (): Promise<number> => {
      const t0 = performance.now()
      for (let i = 0; i < K; i++) await client.readInputRegisters(0, 2)
      return ((performance.now() - t0) / K) * 1000
    }
    const bus = await openBus(busConfig({ type: 'modbus-tcp', host: '127.0.0.1', port: peer.port, timeoutMs: 1000 }))
    const ours = async (): Promise<number> => {
      const t0 = performance.now()
      for (let i = 0; i < K; i++) await bus.readRegisters(1, 4, 0, 2)
      return ((performance.now() - t0) / K) * 1000
    }
    // Interleave the two so drift on a shared machine hits both alike.
    const b: number[] = []
    const o: number[] = []
    await bare()
    await ours()
    await bare()
    await ours()
    for (let i = 0; i < 7; i++) {
      b.push(await bare())
      o.push(await ours())
    }
    await bus.close()
    client.close(() => {})
    const r = row('per-transaction time through the bus scheduler vs a bare modbus-serial loop (TCP, zero turnaround)', 'µs', b, o, {
      op: '<=',
      ratio: 1.5,
    })
    r.note = [r.note, `overhead ≈ ${Math.round(r.value - r.baseline)} µs per transaction`].filter(Boolean).join('; ')
    return [r]
  } finally {
    await peer.stop()
  }
}

export async function run(): Promise<BenchRow[]> {
  return [...(await pollCycleRows()), ...(await overheadRows())]
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  run().then(
    (rows) => {
      for (const r of rows)
        process.stdout.write(
          `${r.met ? 'ok  ' : 'MISS'} ${r.figure}: ${r.value.toFixed(1)} ${r.unit} vs ${r.baseline.toFixed(1)} ${r.unit} = ${r.ratio.toFixed(3)}x (goal ${r.goal})${r.note ? ' — ' + r.note : ''}\n`,
        )
    },
    (err: unknown) => {
      process.stderr.write(`bench/bus: ${String((err as Error)?.stack ?? err)}\n`)
      process.exitCode = 1
    },
  )
}
