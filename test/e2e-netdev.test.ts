/**
 * End to end with network devices: the built daemon against a Shelly fake and a
 * Tasmota fake (test/helpers/fake-netdev.ts, from their published APIs, digest
 * auth and passwords on), a real mosquitto and the reconciling consumer.
 * Sessions start from the cloud; an unplug is read through NotifyStatus; a
 * device that reboots or loses power mid-session (its counter reset or fallen
 * back) is never billed for more than flowed; Wi-Fi loss faults the outlet and
 * it recovers; kill -9 of the daemon leaves no relay closed past autoOffS.
 */
import t, { type Test } from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { startMosquitto } from './helpers/mosquitto.js'
import { PLANS, PREFIX, SITE, isEnded, isStarted, startCloud, startDaemon, tempDir, waitFor, type Ended } from './helpers/e2e-kit.js'
import { startShelly, startTasmota, type FakeShelly, type FakeTasmota } from './helpers/fake-netdev.js'
import type { JournalRecord } from '../core/types.js'

const POLL_MS = 1000
const HOLD_MS = 2000
const AUTO_OFF_S = 3

t.test('Shelly and Tasmota outlets, end to end', async (t) => {
  const dir = tempDir(t)
  const shelly = await startShelly(t, { password: 'shelly-secret', energyWh: 40_000 })
  const tasmota = await startTasmota(t, { password: 'tasmota-secret', energyWh: 9_000 })
  writeFileSync(join(dir, 'shelly.pw'), 'shelly-secret\n')
  writeFileSync(join(dir, 'tasmota.pw'), 'tasmota-secret\n')
  const broker = await startMosquitto(t)
  const config = join(dir, 'site.json')
  writeFileSync(
    config,
    JSON.stringify({
      site: { id: SITE, timezone: 'America/Vancouver' },
      storage: { dir: join(dir, 'journal'), readingSyncMs: 500 },
      buses: [
        {
          id: 'garage',
          type: 'shelly',
          host: '127.0.0.1',
          port: shelly.port,
          passwordFile: join(dir, 'shelly.pw'),
          timeoutMs: 500,
          autoOffS: AUTO_OFF_S,
        },
        {
          id: 'plug',
          type: 'tasmota',
          host: '127.0.0.1',
          port: tasmota.port,
          passwordFile: join(dir, 'tasmota.pw'),
          timeoutMs: 500,
          autoOffS: AUTO_OFF_S,
        },
      ],
      outlets: [
        { id: 'S1', bus: 'garage', meter: { model: 'shelly-switch' }, relay: { model: 'shelly-switch' }, plan: 'standard', ratingA: 16 },
        { id: 'T1', bus: 'plug', meter: { model: 'tasmota' }, relay: { model: 'tasmota' }, plan: 'standard', ratingA: 16 },
      ],
      plans: PLANS,
      sessions: { pollMs: POLL_MS, graceSeconds: 5, minChargeA: 0.5, noCurrentA: 0.1, noCurrentHoldMs: HOLD_MS, meterFaultMs: 2500 },
      uplink: { url: broker.url, topicPrefix: PREFIX, keepaliveS: 5, reconnectMaxMs: 1000 },
      logging: { level: 'info' },
    }),
  )
  const cloud = await startCloud(t, broker.url, dir)
  const daemon = startDaemon(t, config)
  await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')
  for (const userId of ['u1', 'u2'])
    t.ok((await cloud.command({ action: 'set-wallet', userId, currency: 'CAD', balance: 1_000_000 })).ok, `wallet of ${userId}`)

  /** GetStatus calls the Shelly fake answered, stamped (this process's clock). */
  const reads: number[] = []
  const countReads = setInterval(() => {
    while (reads.length < shelly.calls.filter((c) => c === 'Switch.GetStatus').length) reads.push(performance.now())
  }, 5)
  t.teardown(() => clearInterval(countReads))

  const sessions = (outlet: string) => cloud.records().filter(isStarted(outlet)).length

  /** A cloud start with the car plugged; resolves once current flows, with the energy that had flowed before. */
  async function start(
    t: Test,
    outlet: 'S1' | 'T1',
    dev: FakeShelly | FakeTasmota,
    amps: number,
    userId = 'u1',
  ): Promise<{ sessionId: string; deliveredWh: number }> {
    // A reset the engine judged a fault (outlet.fault) must have been followed by its recovery.
    await waitFor(() => {
      const last = cloud
        .records()
        .filter((r) => (r.type === 'outlet.fault' || r.type === 'outlet.recovered') && r.outlet === outlet)
        .at(-1)
      return last?.type !== 'outlet.fault'
    }, `${outlet} not in fault`)
    const k = sessions(outlet)
    dev.plug(amps)
    const deliveredWh = dev.load.deliveredWh
    const r = await cloud.start(outlet, userId)
    t.ok(r.ok, `start ${outlet}: ${JSON.stringify(r)}`)
    await waitFor(() => sessions(outlet) > k, `session.started on ${outlet}`)
    await waitFor(() => dev.output && dev.load.current > 0, `${outlet} relay closed, current flowing`)
    return { sessionId: (r as { result: { sessionId: string } }).result.sessionId, deliveredWh }
  }

  /** Never billed for more than flowed (Tasmota resolves 1 Wh). */
  function billedWithin(t: Test, e: Ended, deliveredWh: number, resolutionWh: number, what: string): void {
    t.ok(e.energyWh >= 0, `${what}: billed energy ${e.energyWh} Wh is not negative`)
    t.ok(e.energyWh <= deliveredWh + resolutionWh, `${what}: billed ${e.energyWh} Wh, no more than the ${deliveredWh.toFixed(3)} Wh that flowed`)
  }

  await t.test('Shelly: start, charge, unplug read through NotifyStatus, billed from the device counter', async (t) => {
    t.ok(shelly.listeners >= 1, 'the daemon holds a NotifyStatus channel (digest-authenticated WebSocket)')
    for (let k = 0; k < 2; k++) {
      const s = await start(t, 'S1', shelly, 16)
      await waitFor(() => shelly.load.deliveredWh > s.deliveredWh + 3, 'S1 charges 3 Wh')
      // Unplug just after a poll: the next poll is most of POLL_MS away, the notification is not.
      const n = reads.length
      await waitFor(() => reads.length > n, 'a poll')
      const t0 = performance.now()
      shelly.unplug()
      await waitFor(() => reads.at(-1)! > t0, 'a read after the unplug', 5000)
      const first = reads.find((x) => x > t0)! - t0
      t.ok(first < POLL_MS / 2, `the first read came ${first.toFixed(0)} ms after the unplug, from the notification (polls are ${POLL_MS} ms apart)`)
      const e = await cloud.waitRecord(isEnded(s.sessionId), `S1 session ${k + 1} ended`)
      t.equal(e.reason, 'unplugged')
      await waitFor(() => !shelly.output, 'the Shelly relay opened')
      billedWithin(t, e, shelly.load.deliveredWh - s.deliveredWh, 0.01, `S1 session ${k + 1}`)
      t.ok(e.energyWh > 3, 'what charged is billed')
    }
  })

  await t.test('Shelly reboots mid-session with its counter reset: the session goes on, billed what flowed, the rebase recorded', async (t) => {
    const seen = cloud.records().length
    const s = await start(t, 'S1', shelly, 10)
    await waitFor(() => shelly.load.deliveredWh > s.deliveredWh + 2, 'S1 charges 2 Wh')
    shelly.load.tick()
    const beforeWh = shelly.load.energyWh
    const atReboot = shelly.load.deliveredWh
    shelly.reboot(0, { restore: true })
    await waitFor(() => shelly.listeners >= 1, 'the daemon registered again for notifications', 20_000)
    await waitFor(() => shelly.load.deliveredWh > atReboot + 5, 'S1 charges 5 Wh on the new counter')
    await new Promise((r) => setTimeout(r, 2 * POLL_MS))
    shelly.unplug()
    const e = await cloud.waitRecord(isEnded(s.sessionId), 'the session across the reboot ended')
    await waitFor(() => !shelly.output, 'relay open')
    t.equal(e.reason, 'unplugged', 'the session went on across the reset and ended as the car left')
    const since = cloud.records().slice(seen)
    t.notOk(
      since.find((r) => r.type === 'outlet.fault' && r.outlet === 'S1'),
      'no outlet.fault: the device answered again within meterFaultMs',
    )
    t.equal(since.filter(isStarted('S1')).length, 1, 'one session, not one before and one after the reset')
    billedWithin(t, e, shelly.load.deliveredWh - s.deliveredWh, 0.01, 'across the reset')
    t.ok(
      e.energyWh > 4,
      `the energy before and after the reset is billed (${e.energyWh} Wh of ${(shelly.load.deliveredWh - s.deliveredWh).toFixed(3)} Wh)`,
    )
    const rebases = (e.meterEvents ?? []).filter((x) => x.kind === 'rebase')
    t.equal(rebases.length, 1, `one rebase in meterEvents: ${JSON.stringify(e.meterEvents)}`)
    t.ok(rebases[0]!.fromWh > 40_000 && rebases[0]!.fromWh <= beforeWh, `from the old counter (${rebases[0]!.fromWh} Wh)`)
    t.ok(rebases[0]!.toWh >= 0 && rebases[0]!.toWh < 5, `to the new one (${rebases[0]!.toWh} Wh)`)
    t.ok(e.rebasedWh! < -40_000, `rebasedWh ${e.rebasedWh}: the reset's jump, never billed`)
    t.ok(Math.abs(e.meterEndWh - e.meterStartWh - e.rebasedWh! - e.energyWh) < 0.002, 'energyWh = meterEndWh − meterStartWh − rebasedWh')
    // The outlet is usable after the reset: a new session bills from the new counter.
    const s2 = await start(t, 'S1', shelly, 16)
    await waitFor(() => shelly.load.deliveredWh > s2.deliveredWh + 2, 'S1 charges again')
    shelly.unplug()
    const e2 = await cloud.waitRecord(isEnded(s2.sessionId), 'the next session ended')
    t.equal(e2.reason, 'unplugged')
    t.ok(e2.meterStartWh < 1000, `billed from the counter as it reads after the reset (${e2.meterStartWh} Wh)`)
    t.equal(e2.meterEvents, undefined, 'nothing to record on a steady counter')
    billedWithin(t, e2, shelly.load.deliveredWh - s2.deliveredWh, 0.01, 'after the reset')
    t.ok(e2.energyWh > 2)
  })

  await t.test('Wi-Fi loss: the Shelly outlet faults after meterFaultMs, and recovers when the device answers', async (t) => {
    const seen = cloud.records().length
    const after = (pred: (r: JournalRecord) => boolean) => cloud.records().slice(seen).find(pred)
    shelly.mode = 'silent'
    await waitFor(() => after((r) => r.type === 'outlet.fault' && r.outlet === 'S1'), 'outlet.fault for S1', 30_000)
    t.notOk(
      after((r) => r.type === 'outlet.fault' && r.outlet === 'T1'),
      'the Tasmota outlet is untouched',
    )
    shelly.mode = 'none'
    await waitFor(() => after((r) => r.type === 'outlet.recovered' && r.outlet === 'S1'), 'outlet.recovered for S1', 30_000)
    const s = await start(t, 'S1', shelly, 16)
    shelly.unplug()
    const e = await cloud.waitRecord(isEnded(s.sessionId), 'a session after the recovery ended')
    t.ok(['unplugged', 'charge-complete'].includes(e.reason), `ended ${e.reason}`)
  })

  await t.test('Tasmota: a power cut that drops the total back a day (5 kWh) is a rebase; the session goes on, billed what flowed', async (t) => {
    const seen = cloud.records().length
    const s = await start(t, 'T1', tasmota, 16)
    await waitFor(() => tasmota.load.deliveredWh > s.deliveredWh + 4, 'T1 charges 4 Wh')
    // Tasmota saved its total to flash a day ago, 5 kWh back: the power cut falls back to it,
    // and the relay comes back on (PowerOnState 3).
    tasmota.save()
    tasmota.savedWh -= 5000
    const savedWh = tasmota.savedWh
    const atCut = tasmota.load.deliveredWh
    tasmota.powerCut({ restore: true })
    await waitFor(() => tasmota.load.deliveredWh > atCut + 4, 'T1 charges 4 Wh after the power cut')
    await new Promise((r) => setTimeout(r, 2 * POLL_MS))
    tasmota.unplug()
    const e = await cloud.waitRecord(isEnded(s.sessionId), 'T1 session ended')
    await waitFor(() => !tasmota.output, 'the Tasmota relay opened')
    t.equal(e.reason, 'unplugged', 'the session went on across the power cut and ended as the car left')
    t.notOk(
      cloud
        .records()
        .slice(seen)
        .find((r) => r.type === 'outlet.fault' && r.outlet === 'T1'),
      'no outlet.fault',
    )
    billedWithin(t, e, tasmota.load.deliveredWh - s.deliveredWh, 1, 'T1 across the power cut')
    t.ok(e.energyWh > 4, `the energy before and after the cut is billed (${e.energyWh} Wh)`)
    const rebases = (e.meterEvents ?? []).filter((x) => x.kind === 'rebase')
    t.equal(rebases.length, 1, `one rebase in meterEvents: ${JSON.stringify(e.meterEvents)}`)
    t.ok(
      rebases[0]!.toWh >= savedWh - 1 && rebases[0]!.toWh < savedWh + 10,
      `to the saved total (${rebases[0]!.toWh} Wh, saved ${savedWh.toFixed(3)} Wh)`,
    )
    t.ok(e.rebasedWh! < -4990 && e.rebasedWh! > -5010, `rebasedWh ${e.rebasedWh}: the day that fell back, never billed`)
    const s2 = await start(t, 'T1', tasmota, 16)
    await waitFor(() => tasmota.load.deliveredWh > s2.deliveredWh + 3, 'T1 charges again')
    tasmota.unplug()
    const e2 = await cloud.waitRecord(isEnded(s2.sessionId), 'the next T1 session ended')
    t.equal(e2.reason, 'unplugged')
    t.equal(e2.meterEvents, undefined)
    billedWithin(t, e2, tasmota.load.deliveredWh - s2.deliveredWh, 1, 'T1 after the power cut')
    t.ok(e2.energyWh >= 2, 'what charged is billed')
  })

  await t.test('Tasmota: a power cut that drops the total back 5 Wh (within the resolution) is a zero step, not an event', async (t) => {
    const s = await start(t, 'T1', tasmota, 16)
    await waitFor(() => tasmota.load.deliveredWh > s.deliveredWh + 4, 'T1 charges 4 Wh')
    tasmota.save()
    tasmota.savedWh -= 5
    tasmota.powerCut({ restore: true })
    await new Promise((r) => setTimeout(r, 3 * POLL_MS))
    tasmota.unplug()
    const e = await cloud.waitRecord(isEnded(s.sessionId), 'T1 session ended')
    await waitFor(() => !tasmota.output, 'the Tasmota relay opened')
    t.equal(e.reason, 'unplugged')
    t.equal(e.meterEvents, undefined, 'a step back within the counter resolution is no event')
    t.equal(e.rebasedWh, undefined, 'and no rebase')
    // The baseline stays where it was: the 5 Wh the counter climbs back are not billed again.
    billedWithin(t, e, tasmota.load.deliveredWh - s.deliveredWh - 4, 1, 'T1 across a small fall-back')
    t.ok(e.energyWh >= 2, `what charged before the cut is billed (${e.energyWh} Wh)`)
  })

  await t.test('dead gateway: kill -9 with both relays closed; each opens by itself after autoOffS', async (t) => {
    await start(t, 'S1', shelly, 16)
    await start(t, 'T1', tasmota, 16, 'u2')
    // The gateway lives past autoOffS: it re-arms, the relays stay closed.
    await new Promise((r) => setTimeout(r, (AUTO_OFF_S + 1.5) * 1000))
    t.ok(shelly.output && tasmota.output, `both relays still closed ${AUTO_OFF_S + 1.5} s after closing (re-armed)`)
    const killedAt = performance.now()
    await daemon.stop('SIGKILL')
    await waitFor(() => !shelly.output && !tasmota.output, 'both relays opened by themselves', (AUTO_OFF_S + 5) * 1000)
    const opened = [shelly.switches.at(-1)!, tasmota.switches.at(-1)!]
    t.equal(opened[0]!.source, 'timer', 'the Shelly opened on toggle_after')
    t.equal(opened[1]!.source, 'pulsetime', 'the Tasmota opened on PulseTime')
    for (const o of opened) t.ok(o.at - killedAt <= AUTO_OFF_S * 1000 + 500, `opened ${(o.at - killedAt).toFixed(0)} ms after the kill`)
  })
})
