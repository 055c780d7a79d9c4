/**
 * A site limit changed by the central system → relays switched: the built daemon as a real
 * subprocess (`node dist/daemon/cli.js run`) against the simulator over loopback Modbus TCP and
 * ocpp-rpc's strict central system (test/helpers/csms.ts) on loopback. Eight 16 A outlets on a
 * site without circuits (so the OCPP site circuit, 128 A), every car charging; the central system
 * cuts the site limit one car at a time (a ChargePointMaxProfile of 112 A, 96 A … 0 A), and the time
 * from sending each SetChargingProfile to the relay-open coil write that sheds a car arriving at the
 * simulator is one sample. Then the profile is cleared, the cars come back after their minimum off
 * time, and the cuts run again. The simulator and the central system run in this process, so both
 * stamps come from one clock.
 *
 * Bound: one poll (pollMs 250, the interval at which the site sees a load change on its own meters):
 * a limit from the central system reaches the relays within it. Ratio = the 95th percentile / the
 * bound, goal <= 1; the median, the max and one poll burst (the eight meter reads back to back,
 * measured at the simulator in the same run) are in the note.
 *
 * Runs alone: node dist/bench/ocpp-smart.js
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startSim } from '../drivers/index.js'
import { ocppSection, startCsms } from '../test/helpers/csms.js'
import { startDaemon, waitFor, writeSiteConfig } from '../test/helpers/e2e-kit.js'
import { bounded, median, percentile, runAlone, Teardowns, type BenchRow } from './lib.js'

const OUTLETS = 8
const RATING_A = 16
const POLL_MS = 250
const ROUNDS = Number(process.env.OUTPOST_BENCH_OCPP_SMART_ROUNDS ?? 3)

export async function run(): Promise<BenchRow[]> {
  const td = new Teardowns()
  const root = mkdtempSync(join(tmpdir(), 'outpost-bench-ocpp-smart-'))
  td.teardown(() => rmSync(root, { recursive: true, force: true }))
  try {
    let opened: ((t: number) => void) | undefined
    /** Meter requests back to back within a poll: a burst's length is its last request minus its first. */
    const bursts: number[] = []
    let burstStart = 0
    let lastReq = 0
    const sim = await startSim({
      outlets: OUTLETS,
      port: 0,
      speed: 1,
      script: false,
      onRequest: (unit) => {
        if (unit < 1 || unit > OUTLETS) return
        const t = performance.now()
        if (t - lastReq > POLL_MS / 4) {
          if (lastReq && burstStart) bursts.push(lastReq - burstStart)
          burstStart = t
        }
        lastReq = t
      },
      onCoilWrite: (_outlet, closed) => {
        if (!closed) opened?.(performance.now())
      },
    })
    td.teardown(() => sim.close())
    const csms = await startCsms(td)
    const config = writeSiteConfig({
      dir: root,
      port: sim.port,
      outlets: OUTLETS,
      outlet: Object.fromEntries(Array.from({ length: OUTLETS }, (_, i) => [i + 1, { ratingA: RATING_A }])),
      sessions: { pollMs: POLL_MS },
      extra: { logging: { level: 'warn' }, ocpp: ocppSection(csms, { meterValueSampleS: 0, clockAlignedDataS: 0 }) },
    })
    const daemon = startDaemon(td, config)
    await csms.waitCall('BootNotification', undefined, 'the boot', 60_000)
    await waitFor(() => csms.of('StatusNotification').length >= OUTLETS + 1, 'every connector announced')
    const drawing = () => sim.outlets().filter((o) => o.currentA > 0).length
    for (let n = 1; n <= OUTLETS; n++) {
      sim.plug(n, { needWh: 10_000_000, maxA: RATING_A })
      const r = await csms.call('RemoteStartTransaction', { connectorId: n, idTag: `driver-${n}` })
      if (r.status !== 'Accepted') throw new Error(`RemoteStartTransaction ${n}: ${JSON.stringify(r)}`)
    }
    await waitFor(() => drawing() === OUTLETS, 'every car charging', 30_000)
    const samples: number[] = []
    let id = 0
    for (let round = 0; round < ROUNDS; round++) {
      for (let on = OUTLETS - 1; on >= 0; on--) {
        // A cut at a random phase of the poll cycle.
        await new Promise((r) => setTimeout(r, 2 * POLL_MS + Math.random() * POLL_MS))
        if (!daemon.running()) throw new Error(`the daemon exited: ${daemon.stderr().slice(-5).join(' | ')}`)
        const relay = new Promise<number>((resolve) => (opened = resolve))
        const t0 = performance.now()
        const r = await csms.call('SetChargingProfile', {
          connectorId: 0,
          csChargingProfiles: {
            chargingProfileId: ++id,
            stackLevel: 0,
            chargingProfilePurpose: 'ChargePointMaxProfile',
            chargingProfileKind: 'Absolute',
            chargingSchedule: {
              startSchedule: new Date(Date.now() - 1000).toISOString(),
              chargingRateUnit: 'A',
              chargingSchedulePeriod: [{ startPeriod: 0, limit: on * RATING_A }],
            },
          },
        })
        if (r.status !== 'Accepted') throw new Error(`SetChargingProfile ${on * RATING_A} A: ${JSON.stringify(r)}`)
        let timer: NodeJS.Timeout | undefined
        const t1 = await Promise.race([
          relay,
          new Promise<number>(
            (_, rej) => (timer = setTimeout(() => rej(new Error(`no relay opened within 10 s of a ${on * RATING_A} A site limit`)), 10_000)),
          ),
        ]).finally(() => clearTimeout(timer))
        opened = undefined
        samples.push(t1 - t0)
        await waitFor(() => drawing() === on, `${on} cars left`, 10_000)
      }
      // The limit cleared: every car back after its minimum off time.
      const r = await csms.call('ClearChargingProfile', { chargingProfilePurpose: 'ChargePointMaxProfile' })
      if (r.status !== 'Accepted') throw new Error(`ClearChargingProfile: ${JSON.stringify(r)}`)
      await waitFor(() => drawing() === OUTLETS, 'every car charging again', 60_000)
    }
    const stop = await daemon.stop('SIGTERM')
    if (stop.code !== 0) throw new Error(`the daemon exited ${String(stop.code ?? stop.signal)} at SIGTERM`)
    if (csms.violations.length > 0) throw new Error(`strict-mode violations: ${JSON.stringify(csms.violations.slice(0, 2))}`)
    const burst = median(bursts)
    return [
      bounded(
        'a site limit changed by the central system (SetChargingProfile) to the relay that sheds a car, 95th percentile (vs one poll)',
        'ms',
        percentile(samples, 95),
        POLL_MS,
        '<=',
        `median ${median(samples).toFixed(1)} ms, max ${Math.max(...samples).toFixed(1)} ms over ${samples.length} cuts on ${OUTLETS} outlets; one poll interval ${POLL_MS} ms, one poll burst (${OUTLETS} meter reads) ${burst.toFixed(1)} ms measured in the same run`,
      ),
    ]
  } finally {
    await td.run()
  }
}

runAlone('ocpp-smart', run)
