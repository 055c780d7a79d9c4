/**
 * End to end: the built daemon on a shared circuit of the pymodbus site peer, whose SDM630
 * feeder meter physically sums what its outlets draw (plus an unmanaged load) and keeps the
 * highest current and the most outlets drawing it saw at any tick. Six 16 A cars on a 40 A
 * circuit take turns, at most two drawing, every one served; an unmanaged 30 A load sheds
 * within a poll; a silent feeder meter brings the failsafe; and an internet outage throughout
 * the turns changes nothing (starts through the local API, records to the cloud afterwards).
 */
import t, { type Test } from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { startMosquitto } from './helpers/mosquitto.js'
import {
  isEnded,
  roundHalfUp,
  startCloud,
  startDaemon,
  startPeer,
  tempDir,
  waitFor,
  writeSiteConfig,
  type Ended,
  type Peer,
} from './helpers/e2e-kit.js'
import type { JournalRecord } from '../core/types.js'
import { parseMetrics } from './helpers/api-kit.js'
import { launchChromium } from './helpers/browser.js'

// Page functions run in the browser; the test's tsconfig has no DOM library.
declare const document: any

const FEEDER = 50
const TOKEN = 'e2e-circuits-token'
const CARS = [1, 2, 3, 4, 5, 6]

function siteFile(dir: string, port: number, brokerUrl: string): string {
  const file = writeSiteConfig({
    dir,
    port,
    outlets: 6,
    brokerUrl,
    outlet: Object.fromEntries(CARS.map((n) => [n, { circuit: 'garage', ratingA: 16 }])),
    // Turns of 5 s (so minimum on and off times of 5 s) keep the test short.
    sessions: { graceSeconds: 5 },
  })
  const config = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
  config.circuits = [{ id: 'garage', maxA: 40, slotS: 5, failsafeA: 16, meter: { bus: 'site', model: 'eastron-sdm630', unit: FEEDER } }]
  config.api = { listen: '127.0.0.1:0', token: TOKEN }
  writeFileSync(file, JSON.stringify(config, null, 2))
  return file
}

const drawing = async (peer: Peer): Promise<number> => (await peer.state()).filter((o) => o.drawA > 0).length

/** Every car got a turn: each meter counted more than `wh` past where it stood at its start. */
async function everyOneServed(peer: Peer, e0: Record<number, number>, wh: number): Promise<void> {
  await waitFor(async () => (await peer.state()).every((o) => o.energyWh > e0[o.outlet]! + wh), `every car drew ${wh} Wh`, 90_000)
}

/** The bill of a session that waited: the lines still add up, the pause is not in their billed seconds. */
function checkPausedBill(t: Test, e: Ended): void {
  let micros = 0
  let seconds = 0
  let paused = 0
  for (const l of e.lines) {
    const expected = (l.energyWh / 1000) * 2.5 * 1e6 + (l.seconds / 3600) * 36 * 1e6
    t.ok(
      Math.abs(l.amountMicros - expected) <= 1.5,
      `line ${l.amountMicros} µ is its energy and billed seconds at the rates (${expected.toFixed(1)})`,
    )
    micros += l.amountMicros
    seconds += l.seconds
    paused += l.pausedS ?? 0
  }
  t.ok(Math.abs(seconds + paused - e.durationS) < 0.0015, `billed ${seconds.toFixed(3)} s + paused ${paused.toFixed(3)} s = ${e.durationS} s`)
  t.ok(Math.abs(paused - e.pausedS) < 0.0015, 'the lines carry the pausedS of the record')
  t.equal(e.total, roundHalfUp(e.activationFee * 10_000 + micros, 10_000), 'total = fee + lines, rounded once')
}

t.test('a 40 A garage circuit with six 16 A cars, online', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 6, feeder: FEEDER })
  const cloud = await startCloud(t, broker.url, dir)
  startDaemon(t, siteFile(dir, peer.port, broker.url))
  await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')
  for (const n of CARS) t.ok((await cloud.command({ action: 'set-wallet', userId: `u${n}`, currency: 'CAD', balance: 100_000 })).ok)

  await t.test('six starts accepted, four queued; turns of 5 s, at most two drawing, every one served', async (t) => {
    const e0: Record<number, number> = {}
    const sessions: string[] = []
    for (const n of CARS) {
      await peer.plug(n, 16)
      e0[n] = (await peer.outlet(n)).energyWh
      const r = await cloud.start(`E${n}`, `u${n}`)
      t.ok(r.ok, `start on E${n} accepted: ${JSON.stringify(r)}`)
      if (r.ok) sessions.push((r.result as { sessionId: string }).sessionId)
    }
    await peer.cmd({ cmd: 'reset-max' })
    const queued = await waitFor(() => {
      const q = cloud.records().filter((r) => r.type === 'session.queued' && r.why === 'start')
      return q.length >= 4 && q
    }, 'four starts queued')
    t.equal(queued.length, 4, 'two fit on 40 A, four wait')
    const status = cloud.outlet('E6')
    t.equal(status?.state, 'queued', 'the outlet topic says queued')
    await everyOneServed(peer, e0, 1.5)
    const f = await peer.feeder()
    t.ok(f.maxDrawing <= 2, `at most two cars drew at once (the feeder saw ${f.maxDrawing})`)
    t.ok(f.maxA[0] <= 40, `the feeder never carried more than 40 A (max ${f.maxA[0]} A)`)
    t.ok(cloud.records().filter((r) => r.type === 'session.resumed').length >= 4, 'every queued session was resumed')
    for (const n of CARS) t.ok((await cloud.command({ action: 'stop', outlet: `E${n}`, by: 'user' })).ok, `stop E${n}`)
    const ended = await waitFor(() => {
      const e = sessions.map((id) => cloud.records().find(isEnded(id)))
      return e.every(Boolean) && (e as Ended[])
    }, 'six session.ended')
    t.ok(ended.filter((e) => e.pausedS > 0).length >= 4, 'the sessions that waited carry pausedS')
    for (const e of ended) checkPausedBill(t, e)
    await waitFor(async () => (await drawing(peer)) === 0, 'every relay open')
    for (const n of CARS) await peer.unplug(n)
  })

  await t.test('an unmanaged 30 A load on the feeder sheds the cars within a poll', async (t) => {
    const e0: Record<number, number> = {}
    for (const n of [1, 2]) {
      await peer.plug(n, 16)
      e0[n] = (await peer.outlet(n)).energyWh
      t.ok((await cloud.start(`E${n}`, `u${n}`)).ok)
    }
    await waitFor(async () => (await drawing(peer)) === 2, 'both cars drawing')
    await peer.cmd({ cmd: 'load', amps: 30, phase: 1 })
    await waitFor(async () => (await drawing(peer)) === 0, 'both cars shed (30 + 16 > 40)')
    // Counted by the site itself (the peer's feeder poll count when the load came on and when
    // no car drew any more), not by when this test got round to looking.
    const f = await peer.feeder()
    const polls = f.clearAtPolls! - f.loadAtPolls!
    t.ok(polls <= 2, `shed after ${polls} feeder poll(s): the one that saw the load, and at most the one already on the wire`)
    const shed = await waitFor(() => {
      const s = cloud.records().filter((r) => r.type === 'session.queued' && r.why === 'shed')
      return s.length >= 2 && s
    }, 'two session.queued shed')
    t.equal(shed.length, 2, 'each car shed once, journaled')
    await peer.cmd({ cmd: 'load', amps: 0, phase: 1 })
    await waitFor(async () => (await drawing(peer)) === 2, 'the heater off: both back after their minimum off time')
  })

  await t.test('the feeder meter silent: failsafe down to 16 A, back when it answers', async (t) => {
    await peer.silence(FEEDER)
    await waitFor(async () => (await drawing(peer)) === 1, 'one car left on (failsafeA 16)')
    await peer.cmd({ cmd: 'reset-max' })
    await new Promise((r) => setTimeout(r, 2000))
    t.equal((await peer.feeder()).maxDrawing, 1, 'it stays at one while the meter is silent')
    t.ok(
      cloud.records().some((r) => r.type === 'session.queued' && r.why === 'failsafe'),
      'session.queued failsafe',
    )
    await peer.answer(FEEDER)
    await waitFor(async () => (await drawing(peer)) === 2, 'both cars again once the feeder answers')
  })

  await t.test('set-circuit-limit from the cloud: applied, journaled, answered once per id, kept through an outage', async (t) => {
    const cmd = { action: 'set-circuit-limit', circuit: 'garage', maxA: 20 }
    const r = await cloud.command(cmd)
    t.same(r, { id: r.id, ok: true, result: { circuit: 'garage', maxA: 20 } })
    await waitFor(async () => (await drawing(peer)) === 1, 'one car left on 20 A')
    const bad = await cloud.command({ action: 'set-circuit-limit', circuit: 'garage', maxA: 'lots' })
    t.equal(!bad.ok && bad.error.code, 'invalid-command')
    t.match(!bad.ok && bad.error.message, /maxA/, 'the refusal names the field')
    const above = await cloud.command({ action: 'set-circuit-limit', circuit: 'garage', maxA: 63 })
    t.equal(!above.ok && above.error.code, 'limit-above-circuit')
    await broker.kill()
    await peer.cmd({ cmd: 'reset-max' })
    await new Promise((r) => setTimeout(r, 6000))
    t.equal((await peer.feeder()).maxDrawing, 1, 'offline, the lower limit holds: the two cars take turns one at a time')
    await broker.restart()
    const back = await cloud.command({ action: 'set-circuit-limit', circuit: 'garage', maxA: null })
    t.ok(back.ok, 'null: back to the configured 40 A')
    await waitFor(async () => (await drawing(peer)) === 2, 'both cars again')
    for (const n of [1, 2]) t.ok((await cloud.command({ action: 'stop', outlet: `E${n}`, by: 'user' })).ok)
  })
})

t.test('an internet outage throughout the turns changes nothing', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 6, feeder: FEEDER })
  const cloud = await startCloud(t, broker.url, dir)
  const daemon = startDaemon(t, siteFile(dir, peer.port, broker.url))
  const base = String((await daemon.waitLog((l) => l.msg === 'local API listening', 'local API listening')).url)
  for (const n of CARS) t.ok((await cloud.command({ action: 'set-wallet', userId: `u${n}`, currency: 'CAD', balance: 100_000 })).ok)
  await broker.kill()
  await daemon.waitLog((l) => l.msg === 'uplink offline', 'uplink offline')
  const e0: Record<number, number> = {}
  for (const n of CARS) {
    await peer.plug(n, 16)
    e0[n] = (await peer.outlet(n)).energyWh
    const res = await fetch(`${base}api/outlets/E${n}/start`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ userId: `u${n}` }),
    })
    t.equal(res.status, 200, `local start on E${n} accepted offline`)
  }
  await peer.cmd({ cmd: 'reset-max' })
  const outlets = (await (await fetch(`${base}api/outlets`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { state: string }[]
  t.equal(outlets.filter((o) => o.state === 'queued').length, 4, 'the API shows four queued')
  const auth = { authorization: `Bearer ${TOKEN}` }
  const status = (await (await fetch(`${base}api/status`, { headers: auth })).json()) as {
    circuits: { circuit: string; limitA: number; queue: { outlet: string; waitedS: number }[]; on: unknown[] }[]
  }
  t.equal(status.circuits.length, 1)
  t.equal(status.circuits[0]!.limitA, 40)
  t.equal(status.circuits[0]!.queue.length, 4, '/api/status: four waiting, in the order they will be served')
  const waits = status.circuits[0]!.queue.map((q) => q.waitedS)
  t.same(
    waits,
    [...waits].sort((a, b) => b - a),
    'the longest waiting first',
  )
  const m = parseMetrics(await (await fetch(`${base}metrics`, { headers: auth })).text())
  t.equal(m.get('outpost_circuit_limit_amperes{circuit="garage"}'), 40)
  t.equal(m.get('outpost_circuit_queue_length{circuit="garage"}'), 4)
  t.ok((m.get('outpost_circuit_current_amperes{circuit="garage",phase="L1"}') ?? -1) >= 0, 'the circuit current per phase')
  t.equal(m.get('outpost_outlet_state{outlet="E6",state="queued"}'), 1, 'queued in the outlet state metric')
  // The status page: the circuit's load against its limit, and who waits.
  const browser = await launchChromium(t)
  const page = await (await browser.newContext()).newPage()
  await page.goto(base)
  await page.fill('#token', TOKEN)
  await Promise.all([page.waitForURL(base), page.click('button[type=submit]')])
  await page.waitForFunction(() => document.querySelectorAll('#circuits [data-circuit="garage"]').length === 1)
  const card = (await page.textContent('#circuits [data-circuit="garage"]')) ?? ''
  t.match(card, /L1: \d+\.\d A of 40 A/, 'the load against the limit')
  t.match(card, /waiting/, 'who waits')
  t.ok((await page.$$eval('#circuits .queue li', (els: any[]) => els.length)) >= 3, 'the waiting sessions listed, each with its wait')
  t.ok((await page.$$eval('#outlets [data-state="queued"]', (els: any[]) => els.length)) >= 3, 'queued outlet cards')
  await everyOneServed(peer, e0, 1.5)
  const f = await peer.feeder()
  t.ok(f.maxDrawing <= 2, `at most two cars drew at once offline (${f.maxDrawing})`)
  t.ok(f.maxA[0] <= 40, `never more than 40 A (${f.maxA[0]})`)
  for (const n of CARS) {
    const res = await fetch(`${base}api/outlets/E${n}/stop`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ by: 'user' }),
    })
    t.equal(res.status, 200, `local stop on E${n}`)
  }
  await broker.restart()
  const ended = await waitFor(
    () => {
      const e = cloud.records().filter((r): r is Ended => r.type === 'session.ended')
      return e.length >= 6 && e
    },
    'the six bills reach the cloud after the outage',
    90_000,
  )
  t.ok(
    ended.every((e) => e.offline),
    'billed offline',
  )
  t.ok(ended.filter((e) => e.pausedS > 0).length >= 4, 'the waits are in the bills')
  const kinds = new Set(cloud.records().map((r: JournalRecord) => r.type))
  t.ok(kinds.has('session.queued') && kinds.has('session.resumed'), 'the turns are journaled and forwarded')
})
