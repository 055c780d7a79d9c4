/**
 * Unplug to relay open: the built daemon as a real subprocess
 * (`node dist/daemon/cli.js run`) against the simulator over loopback Modbus
 * TCP, with a real mosquitto and the reconciling consumer (wallets and start commands).
 A vehicle plugs in, a session is started by a `start` command (an
 * activation, not an auto-start bay: an armed bay keeps its relay closed after
 * an unplug); after a few charging polls the vehicle is unplugged at a random
 * phase of the poll cycle, and the time from the unplug (stamped in the
 * simulator) to the relay-open coil write arriving at the simulator is one
 * sample. Then the next vehicle plugs in. The simulator runs in
 * this process so that both stamps come from one clock; the daemon does not
 * share this event loop.
 *
 * Settings: pollMs 250, noCurrentHoldMs 500 (a multiple of pollMs: the hold
 * counts whole polls), 8 outlets on one bus, every outlet cycling at once so
 * unplugs meet a busy bus.
 * Bound: noCurrentHoldMs + pollMs (the unplug can fall just after a poll) + one
 * transaction, taken as the median time of one Modbus transaction on this bus
 * measured in the same run (the gap between consecutive meter requests within a
 * poll burst, at the simulator). Ratio = measured / bound, goal <= 1, for the
 * median and for the 95th percentile; the max is in the note, with where the
 * time went: unplug to the first meter read that sees no current (<= one poll),
 * that read to the read that ends the session (the hold), that read to the
 * relay write (engine step + relay command through the bus queue).
 *
 * Runs alone: node dist/bench/unplug.js
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startSim, RELAY_UNIT } from '../drivers/index.js'
import { startMosquitto } from '../test/helpers/mosquitto.js'
import { startCloud, startDaemon, waitFor, writeSiteConfig } from '../test/helpers/e2e-kit.js'
import { bounded, median, percentile, runAlone, Teardowns, type BenchRow } from './lib.js'

const OUTLETS = 8
const CYCLES = Number(process.env.OUTPOST_BENCH_UNPLUG_CYCLES ?? 8)
const POLL_MS = 250
const HOLD_MS = 500

interface Sample {
  totalMs: number
  /** Unplug to the first meter request after it (that read sees no current). */
  toFirstLowMs: number
  /** That request to the last meter request before the relay write (the read that ended the session). */
  holdMs: number
  /** The ending read's request to the relay write. */
  reactMs: number
}

export async function run(): Promise<BenchRow[]> {
  const td = new Teardowns()
  const root = mkdtempSync(join(tmpdir(), 'outpost-bench-unplug-'))
  td.teardown(() => rmSync(root, { recursive: true, force: true }))
  try {
    /** Meter requests per unit, in arrival order (ms, this process's clock). */
    const requests = new Map<number, number[]>()
    /** Consecutive meter-request gaps on the bus, for the per-transaction time. */
    const gaps: number[] = []
    let lastMeterReq = 0
    const waiting = new Map<number, (t: number) => void>()
    const sim = await startSim({
      outlets: OUTLETS,
      port: 0,
      speed: 1,
      script: false,
      onRequest: (unit) => {
        const t = performance.now()
        if (unit >= 1 && unit <= OUTLETS) {
          let list = requests.get(unit)
          if (!list) requests.set(unit, (list = []))
          list.push(t)
          if (list.length > 200) list.splice(0, 100)
          // Within one poll burst the meters are read back to back: each gap is one transaction.
          if (lastMeterReq && t - lastMeterReq < POLL_MS / 4) gaps.push(t - lastMeterReq)
          lastMeterReq = t
        }
      },
      onCoilWrite: (outlet, closed) => {
        if (!closed) waiting.get(outlet)?.(performance.now())
      },
    })
    td.teardown(() => sim.close())
    const broker = await startMosquitto(td)
    const users = Array.from({ length: OUTLETS }, (_, i) => `u${i + 1}`)
    const config = writeSiteConfig({
      dir: root,
      port: sim.port,
      outlets: OUTLETS,
      brokerUrl: broker.url,
      sessions: { pollMs: POLL_MS, noCurrentHoldMs: HOLD_MS },
      extra: { logging: { level: 'warn' } },
    })
    const cloud = await startCloud(td, broker.url, root)
    const daemon = startDaemon(td, config)
    await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')
    for (const userId of users) {
      const r = await cloud.command({ action: 'set-wallet', userId, currency: 'CAD', balance: 100_000_000 })
      if (!r.ok) throw new Error(`set-wallet ${userId}: ${JSON.stringify(r)}`)
    }
    const samples: Sample[] = []
    const started = (outlet: string): number => cloud.records().filter((r) => r.type === 'session.started' && r.outlet === outlet).length
    const ended = (outlet: string) => cloud.records().filter((r) => r.type === 'session.ended' && r.outlet === outlet)
    const cycle = async (n: number): Promise<void> => {
      const id = `E${n}`
      for (let k = 1; k <= CYCLES; k++) {
        sim.plug(n, { needWh: 1_000_000, maxA: 16 })
        const r = await cloud.start(id, users[n - 1]!)
        if (!r.ok) throw new Error(`start ${id}: ${JSON.stringify(r)}`)
        await waitFor(() => started(id) >= k && sim.outlets()[n - 1]!.currentA > 0, `${id} session ${k} charging`, 30_000)
        // A few charging polls, then unplug at a random phase of the poll cycle.
        await new Promise((r) => setTimeout(r, 3 * POLL_MS + Math.random() * POLL_MS))
        if (!daemon.running()) throw new Error(`the daemon exited: ${daemon.stderr().slice(-5).join(' | ')}`)
        const relayOpen = new Promise<number>((resolve) => waiting.set(n, resolve))
        const t0 = performance.now()
        sim.unplug(n)
        let timer: NodeJS.Timeout | undefined
        const t3 = await Promise.race([
          relayOpen,
          new Promise<number>(
            (_, rej) =>
              (timer = setTimeout(
                () =>
                  rej(
                    new Error(
                      `${id}: no relay-open write within 10 s of the unplug; daemon log tail: ${daemon
                        .logs()
                        .slice(-8)
                        .map((l) => JSON.stringify(l))
                        .join(
                          '\n',
                        )}; cloud sees ${JSON.stringify(cloud.outlet(id))}; sim: ${JSON.stringify(sim.outlets()[n - 1])}, ${requests.get(n)?.length} requests`,
                    ),
                  ),
                10_000,
              )),
          ),
        ]).finally(() => clearTimeout(timer))
        waiting.delete(n)
        const reqs = requests.get(n) ?? []
        const first = reqs.find((t) => t > t0)
        const last = [...reqs].reverse().find((t) => t < t3)
        if (first === undefined || last === undefined) throw new Error(`${id}: no meter read between the unplug and the relay write`)
        samples.push({ totalMs: t3 - t0, toFirstLowMs: first - t0, holdMs: last - first, reactMs: t3 - last })
        const e = await waitFor(() => ended(id)[k - 1], `${id} session ${k} ended`, 30_000)
        if (e.type !== 'session.ended' || e.reason !== 'unplugged')
          throw new Error(`${id}: session ended ${e.type === 'session.ended' ? e.reason : e.type}, not unplugged`)
      }
    }
    await Promise.all(Array.from({ length: OUTLETS }, (_, i) => cycle(i + 1)))
    const stop = await daemon.stop('SIGTERM')
    if (stop.code !== 0) throw new Error(`the daemon exited ${String(stop.code ?? stop.signal)} at SIGTERM`)
    const tx = median(gaps)
    // The hold counts whole polls; reply-time stamps jitter, so two intervals can measure just under it.
    const extra = samples.filter((x) => x.holdMs > HOLD_MS + POLL_MS / 2).length
    const bound = HOLD_MS + POLL_MS + tx
    const totals = samples.map((s) => s.totalMs)
    const m = (f: (s: Sample) => number): string => median(samples.map(f)).toFixed(1)
    const setting = `pollMs ${POLL_MS}, noCurrentHoldMs ${HOLD_MS}, one transaction ${tx.toFixed(2)} ms (median of ${gaps.length} on this bus, same run), ${samples.length} unplugs on ${OUTLETS} outlets (relay unit ${RELAY_UNIT})`
    return [
      bounded(
        'unplug to relay open, median (vs noCurrentHoldMs + pollMs + one transaction)',
        'ms',
        median(totals),
        bound,
        '<=',
        `${setting}; median parts: unplug to first low read ${m((s) => s.toFirstLowMs)}, hold ${m((s) => s.holdMs)}, ending read to relay write ${m((s) => s.reactMs)}`,
      ),
      bounded(
        'unplug to relay open, 95th percentile (same bound)',
        'ms',
        percentile(totals, 95),
        bound,
        '<=',
        `max ${Math.max(...totals).toFixed(1)} ms; max ending read to relay write ${Math.max(...samples.map((s) => s.reactMs)).toFixed(1)} ms; ${extra} of ${samples.length} holds took one poll more than noCurrentHoldMs (two poll intervals, stamped at each reply, came out under ${HOLD_MS} ms)`,
      ),
    ]
  } finally {
    await td.run()
  }
}

runAlone('unplug', run)
