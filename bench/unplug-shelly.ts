/**
 * Unplug to relay open on Shelly outlets: the built daemon as a real subprocess
 * (`node dist/daemon/cli.js run`) against Shelly fakes (test/helpers/fake-netdev.ts:
 * RPC over HTTP with digest auth, NotifyStatus over WebSocket) on loopback, one
 * device per outlet, with a real mosquitto and the reconciling consumer.
 * As bench/unplug.ts: a car plugs in, a cloud `start`, a few charging polls, the
 * car unplugs at a random phase of the poll cycle; one sample is the time from the
 * unplug (stamped at the fake) to Switch.Set off arriving at the fake. The fakes
 * run in this process, so both stamps come from one clock.
 *
 * Settings: pollMs 250, noCurrentHoldMs 500, 4 Shelly outlets cycling at once.
 * Bound: noCurrentHoldMs + pollMs + one transaction, the transaction being the
 * median Switch.GetStatus round trip (digest-authenticated HTTP) measured from
 * this process in the same run. Ratio = measured / bound, goal <= 1, for the
 * median and the 95th percentile. The note splits the time: unplug to the first
 * read after it (the NotifyStatus read: well under one poll), and that read to
 * the relay write.
 *
 * Runs alone: node dist/bench/unplug-shelly.js
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { Agent, request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startMosquitto } from '../test/helpers/mosquitto.js'
import { PLANS, PREFIX, SITE, startCloud, startDaemon, waitFor } from '../test/helpers/e2e-kit.js'
import { startShelly, type FakeShelly } from '../test/helpers/fake-netdev.js'
import { DigestAuth } from '../drivers/netdev.js'
import { bounded, median, percentile, runAlone, Teardowns, type BenchRow } from './lib.js'

const OUTLETS = 4
const CYCLES = Number(process.env.OUTPOST_BENCH_UNPLUG_CYCLES ?? 8)
const POLL_MS = 250
const HOLD_MS = 500
const PASSWORD = 'bench-secret'

interface Sample {
  totalMs: number
  /** Unplug to the first Switch.GetStatus after it (the read NotifyStatus triggers). */
  toFirstReadMs: number
  /** That read to the relay write. */
  restMs: number
}

/** One digest-authenticated Switch.GetStatus round trip from this process, in ms. */
async function roundTrip(port: number, auth: DigestAuth, agent: Agent): Promise<number> {
  const body = JSON.stringify({ id: 1, src: 'bench', method: 'Switch.GetStatus', params: { id: 0 } })
  const once = (headers: Record<string, string>) =>
    new Promise<{ status: number; challenge?: string }>((resolve, reject) => {
      const req = request(
        { agent, host: '127.0.0.1', port, method: 'POST', path: '/rpc', headers: { 'content-type': 'application/json', ...headers } },
        (res) => {
          res.resume()
          res.on('end', () => resolve({ status: res.statusCode ?? 0, challenge: res.headers['www-authenticate'] as string | undefined }))
        },
      )
      req.on('error', reject)
      req.end(body)
    })
  const t0 = performance.now()
  let r = await once(auth.ready ? { authorization: auth.header('POST', '/rpc') } : {})
  if (r.status === 401 && auth.accept(r.challenge)) r = await once({ authorization: auth.header('POST', '/rpc') })
  if (r.status !== 200) throw new Error(`Switch.GetStatus: HTTP ${r.status}`)
  return performance.now() - t0
}

export async function run(): Promise<BenchRow[]> {
  const td = new Teardowns()
  const root = mkdtempSync(join(tmpdir(), 'outpost-bench-unplug-shelly-'))
  td.teardown(() => rmSync(root, { recursive: true, force: true }))
  try {
    const devices: FakeShelly[] = []
    for (let i = 0; i < OUTLETS; i++) {
      devices.push(await startShelly(td, { password: PASSWORD, energyWh: 10_000 * (i + 1) }))
    }
    writeFileSync(join(root, 'pw'), `${PASSWORD}\n`)
    const broker = await startMosquitto(td)
    const config = join(root, 'site.json')
    writeFileSync(
      config,
      JSON.stringify({
        site: { id: SITE, timezone: 'UTC' },
        storage: { dir: join(root, 'journal'), readingSyncMs: 500 },
        buses: devices.map((d, i) => ({
          id: `sh${i + 1}`,
          type: 'shelly',
          host: '127.0.0.1',
          port: d.port,
          passwordFile: join(root, 'pw'),
          timeoutMs: 1000,
        })),
        outlets: devices.map((_, i) => ({
          id: `S${i + 1}`,
          bus: `sh${i + 1}`,
          meter: { model: 'shelly-switch' },
          relay: { model: 'shelly-switch' },
          plan: 'standard',
          ratingA: 32,
        })),
        plans: PLANS,
        sessions: { pollMs: POLL_MS, noCurrentHoldMs: HOLD_MS, graceSeconds: 5, minChargeA: 0.5, noCurrentA: 0.1, meterFaultMs: 5000 },
        uplink: { url: broker.url, topicPrefix: PREFIX, keepaliveS: 5, reconnectMaxMs: 1000 },
        logging: { level: 'warn' },
      }),
    )
    const cloud = await startCloud(td, broker.url, root)
    const daemon = startDaemon(td, config)
    await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')
    const users = devices.map((_, i) => `u${i + 1}`)
    for (const userId of users) {
      const r = await cloud.command({ action: 'set-wallet', userId, currency: 'CAD', balance: 100_000_000 })
      if (!r.ok) throw new Error(`set-wallet ${userId}: ${JSON.stringify(r)}`)
    }

    // Reads per device, stamped as the fake answered them.
    const reads = devices.map(() => [] as number[])
    const stamp = setInterval(() => {
      devices.forEach((d, i) => {
        const n = d.calls.filter((c) => c === 'Switch.GetStatus').length
        while (reads[i]!.length < n) reads[i]!.push(performance.now())
      })
    }, 1)
    td.teardown(() => clearInterval(stamp))

    const samples: Sample[] = []
    const started = (id: string) => cloud.records().filter((r) => r.type === 'session.started' && r.outlet === id).length
    const ended = (id: string) => cloud.records().filter((r) => r.type === 'session.ended' && r.outlet === id)
    const cycle = async (i: number): Promise<void> => {
      const d = devices[i]!
      const id = `S${i + 1}`
      for (let k = 1; k <= CYCLES; k++) {
        d.plug(16)
        const r = await cloud.start(id, users[i]!)
        if (!r.ok) throw new Error(`start ${id}: ${JSON.stringify(r)}`)
        await waitFor(() => started(id) >= k && d.load.current > 0, `${id} session ${k} charging`, 30_000)
        await new Promise((r) => setTimeout(r, 3 * POLL_MS + Math.random() * POLL_MS))
        if (!daemon.running()) throw new Error(`the daemon exited: ${daemon.stderr().slice(-5).join(' | ')}`)
        const opens = d.switches.length
        const t0 = performance.now()
        d.unplug()
        const open = await waitFor(() => d.switches.slice(opens).find((s) => !s.on), `${id}: relay open after the unplug`, 10_000)
        const first = reads[i]!.find((x) => x > t0) ?? open.at
        samples.push({ totalMs: open.at - t0, toFirstReadMs: first - t0, restMs: open.at - first })
        const e = await waitFor(() => ended(id)[k - 1], `${id} session ${k} ended`, 30_000)
        if (e.type !== 'session.ended' || e.reason !== 'unplugged') throw new Error(`${id}: ended ${e.type === 'session.ended' ? e.reason : e.type}`)
      }
    }
    await Promise.all(devices.map((_, i) => cycle(i)))
    const stop = await daemon.stop('SIGTERM')
    if (stop.code !== 0) throw new Error(`the daemon exited ${String(stop.code ?? stop.signal)} at SIGTERM`)

    // One transaction: a Switch.GetStatus round trip, digest included, from this process (same run, same machine).
    const agent = new Agent({ keepAlive: true })
    td.teardown(() => agent.destroy())
    const auth = new DigestAuth('admin', () => PASSWORD)
    const trips: number[] = []
    for (let k = 0; k < 50; k++) trips.push(await roundTrip(devices[0]!.port, auth, agent))
    const tx = median(trips)
    const bound = HOLD_MS + POLL_MS + tx
    const totals = samples.map((s) => s.totalMs)
    const m = (f: (s: Sample) => number): string => median(samples.map(f)).toFixed(1)
    const setting = `pollMs ${POLL_MS}, noCurrentHoldMs ${HOLD_MS}, one transaction ${tx.toFixed(2)} ms (median digest-authenticated Switch.GetStatus, same run), ${samples.length} unplugs on ${OUTLETS} Shelly outlets`
    return [
      bounded(
        'Shelly unplug to relay open, median (vs noCurrentHoldMs + pollMs + one transaction)',
        'ms',
        median(totals),
        bound,
        '<=',
        `${setting}; median parts: unplug to first read ${m((s) => s.toFirstReadMs)} (NotifyStatus), that read to the relay write ${m((s) => s.restMs)}`,
      ),
      bounded(
        'Shelly unplug to relay open, 95th percentile (same bound)',
        'ms',
        percentile(totals, 95),
        bound,
        '<=',
        `max ${Math.max(...totals).toFixed(1)} ms; unplug to first read: p95 ${percentile(
          samples.map((s) => s.toFirstReadMs),
          95,
        ).toFixed(1)} ms, max ${Math.max(...samples.map((s) => s.toFirstReadMs)).toFixed(1)} ms`,
      ),
    ]
  } finally {
    await td.run()
  }
}

runAlone('unplug-shelly', run)
