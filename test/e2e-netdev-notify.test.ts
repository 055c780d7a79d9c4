/**
 * End to end: a change a Shelly pushes (NotifyStatus) while the daemon's read of that
 * outlet is still on the wire is read again as soon as that read ends. The read in flight
 * was answered before the change, so joining it would leave an unplug unseen until the
 * next poll. Polls are a minute apart here, so any read within seconds of the unplug can
 * only come from the notification: no timing is assumed beyond "well within a minute".
 */
import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { startMosquitto } from './helpers/mosquitto.js'
import { PLANS, PREFIX, SITE, isStarted, startCloud, startDaemon, tempDir, waitFor } from './helpers/e2e-kit.js'
import { startShelly } from './helpers/fake-netdev.js'

t.test('a pushed change during a read in flight is read again right after it', async (t) => {
  const dir = tempDir(t)
  const shelly = await startShelly(t, { energyWh: 1_000 })
  const broker = await startMosquitto(t)
  const config = join(dir, 'site.json')
  writeFileSync(
    config,
    JSON.stringify({
      site: { id: SITE, timezone: 'America/Vancouver' },
      storage: { dir: join(dir, 'journal') },
      // autoOffS at its maximum: no re-arm (and its read-back) falls in the window watched.
      buses: [{ id: 'garage', type: 'shelly', host: '127.0.0.1', port: shelly.port, timeoutMs: 5000, autoOffS: 3600 }],
      outlets: [{ id: 'S1', bus: 'garage', meter: { model: 'shelly-switch' }, relay: { model: 'shelly-switch' }, plan: 'standard', ratingA: 16 }],
      plans: PLANS,
      sessions: { pollMs: 60_000, graceSeconds: 120, meterFaultMs: 180_000, noCurrentHoldMs: 2000 },
      uplink: { url: broker.url, topicPrefix: PREFIX, keepaliveS: 5, reconnectMaxMs: 1000 },
    }),
  )
  const cloud = await startCloud(t, broker.url, dir)
  startDaemon(t, config)
  await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')
  t.ok((await cloud.command({ action: 'set-wallet', userId: 'u1', currency: 'CAD', balance: 100_000 })).ok, 'wallet')
  const reads = (): number => shelly.calls.filter((c) => c === 'Switch.GetStatus').length

  shelly.plug(16)
  const r = await cloud.start('S1', 'u1')
  t.ok(r.ok, `start: ${JSON.stringify(r)}`)
  await waitFor(() => cloud.records().some(isStarted('S1')), 'session.started')
  await waitFor(() => shelly.output && shelly.load.current > 0, 'relay closed, current flowing')

  // The car's current changes (pushed), and the read it causes stays on the wire 1.5 s,
  // answered as the device stood when it arrived: still drawing.
  shelly.replyDelayMs = 1500
  const before = reads()
  shelly.plug(12)
  await waitFor(() => reads() > before, 'the read the first notification caused', 10_000)
  // Unplugged while that read is in flight.
  shelly.unplug()
  await waitFor(() => reads() > before + 1, 'a read after the read in flight ended (the next poll is a minute away)', 15_000)
  t.ok(reads() >= before + 2, 'the unplug pushed during the read in flight was read again, not joined to it')
})
