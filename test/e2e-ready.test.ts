/**
 * End to end, as a cloud sees a gateway boot: the built daemon (`outpost run`)
 * against the pymodbus site peer and a real mosquitto, with a plain mqtt.js
 * client as the cloud.
 *
 * - `online` means ready: a start published the moment P/status says online is applied.
 * - A meter silent at boot: its start is held (the others are not held behind it) and
 *   applied when the meter answers; one that never answers gets `outlet-fault` once
 *   meterFaultMs has passed; a clean stop answers a held start `not-running`.
 * - A 2 MB command is answered on P/cmd/{id}/result when its id is in its first KiB;
 *   one without is counted in outpost_commands_rejected_total and changes nothing.
 */
import t, { type Test } from 'tap'
import mqtt, { type MqttClient } from 'mqtt'
import { readFileSync, writeFileSync } from 'node:fs'
import { startMosquitto, freePort } from './helpers/mosquitto.js'
import { PREFIX, SITE, startDaemon, startPeer, tempDir, waitFor, writeSiteConfig, type Peer } from './helpers/e2e-kit.js'
import { parseMetrics } from './helpers/api-kit.js'
import type { CommandResult } from '../core/types.js'

const BASE = `${PREFIX}/${SITE}`
const TOKEN = 'e2e-ready-token-7'

interface CloudClient {
  client: MqttClient
  results: Map<string, CommandResult>
  /** Every P/status payload in arrival order. */
  statuses: Record<string, unknown>[]
  publish(cmd: Record<string, unknown> | string): void
  result(id: string, what?: string, timeoutMs?: number): Promise<CommandResult>
}

/** A bare cloud: subscribes to P/status and P/cmd/+/result; `onOnline` runs on the first `{"online": true}`. */
async function cloudClient(t: Test, url: string, onOnline: (c: CloudClient) => void): Promise<CloudClient> {
  const client = await mqtt.connectAsync(url, { clientId: `ready-cloud-${process.pid}-${Math.random().toString(36).slice(2, 8)}` })
  t.teardown(() => client.endAsync(true).catch(() => undefined))
  let fired = false
  const c: CloudClient = {
    client,
    results: new Map(),
    statuses: [],
    publish: (cmd) => void client.publish(`${BASE}/cmd`, typeof cmd === 'string' ? cmd : JSON.stringify(cmd), { qos: 1 }),
    result: (id, what = id, timeoutMs = 30_000) => waitFor(() => c.results.get(id), `result of ${what}`, timeoutMs),
  }
  client.on('message', (topic, payload) => {
    if (topic === `${BASE}/status`) {
      const s = JSON.parse(payload.toString()) as Record<string, unknown>
      c.statuses.push(s)
      if (s.online === true && !fired) {
        fired = true
        onOnline(c)
      }
    } else if (topic.endsWith('/result')) {
      const r = JSON.parse(payload.toString()) as CommandResult
      c.results.set(topic.split('/')[3]!, r)
    }
  })
  await client.subscribeAsync([`${BASE}/status`, `${BASE}/cmd/+/result`], { qos: 1 })
  return c
}

const wallet = (id: string, userId = 'u1') => ({ id, action: 'set-wallet', userId, currency: 'CAD', balance: 100_000 })
const start = (id: string, outlet: string, userId = 'u1') => ({ id, action: 'start', outlet, userId })

t.test('a start published the moment P/status says online is applied', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 2 })
  // A slow poll: only a read before the uplink starts can make the outlets ready in time.
  const config = writeSiteConfig({ dir, port: peer.port, outlets: 2, brokerUrl: broker.url, sessions: { pollMs: 5000 } })
  const cloud = await cloudClient(t, broker.url, (c) => {
    c.publish(wallet('w1'))
    c.publish(start('s1', 'E1'))
  })
  const daemon = startDaemon(t, config)
  t.match(await cloud.result('w1', 'set-wallet'), { ok: true })
  const r = await cloud.result('s1', 'start on the first online')
  t.match(r, { id: 's1', ok: true, result: { sessionId: String } }, `start applied: ${JSON.stringify(r)}`)
  t.equal(cloud.statuses[0]!.online, true, 'the first status the cloud saw was online')
  await waitFor(async () => (await peer.outlet(1)).coil, 'the relay of E1 closes')
  t.equal((await daemon.stop()).code, 0, 'clean exit')
})

t.test('a meter silent at boot: held, then applied when it answers; never answering: outlet-fault; others not held', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const peer: Peer = await startPeer(t, { outlets: 3 })
  await peer.silence(1)
  await peer.silence(2)
  const meterFaultMs = 8000
  const config = writeSiteConfig({ dir, port: peer.port, outlets: 3, brokerUrl: broker.url, sessions: { meterFaultMs } })
  const cloud = await cloudClient(t, broker.url, (c) => {
    // A session reserves the whole available balance: one user per outlet.
    for (const n of [1, 2, 3]) c.publish(wallet(`w${n}`, `u${n}`))
    c.publish(start('s-e1', 'E1', 'u1'))
    c.publish(start('s-e2', 'E2', 'u2'))
    c.publish(start('s-e3', 'E3', 'u3'))
  })
  const daemon = startDaemon(t, config)
  const onlineAt = await waitFor(() => cloud.statuses.length > 0 && Date.now(), 'online')
  t.match(await cloud.result('s-e3', 'start on the answering E3'), { ok: true }, 'E3 is applied, not held behind the silent ones')
  t.notOk(cloud.results.has('s-e1'), 'E1 is held, not refused')
  t.notOk(cloud.results.has('s-e2'), 'E2 is held, not refused')
  // The cloud repeats the held command (its usual retry): the repeat joins the held one.
  cloud.publish(start('s-e1', 'E1', 'u1'))
  await peer.answer(1)
  const r1 = await cloud.result('s-e1', 'held start on E1 once its meter answers')
  t.match(r1, { id: 's-e1', ok: true, result: { sessionId: String } }, `E1 applied once read: ${JSON.stringify(r1)}`)
  const r2 = await cloud.result('s-e2', 'held start on the silent E2', 60_000)
  t.match(r2, { id: 's-e2', ok: false, error: { code: 'outlet-fault', message: /E2/ } }, `E2 answered outlet-fault: ${JSON.stringify(r2)}`)
  t.ok(Date.now() - onlineAt >= meterFaultMs - 3000, 'the fault came only once meterFaultMs had passed since boot')
  await waitFor(() => daemon.logs().some((l) => l.msg === 'session started' && l.outlet === 'E1'), 'one session on E1')
  t.equal(daemon.logs().filter((l) => l.msg === 'session started' && l.outlet === 'E1').length, 1, 'the repeated id started one session')
  t.equal((await daemon.stop()).code, 0, 'clean exit')
})

t.test('a clean stop answers a held start not-running', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 1 })
  await peer.silence(1)
  const config = writeSiteConfig({ dir, port: peer.port, outlets: 1, brokerUrl: broker.url, sessions: { meterFaultMs: 60_000 } })
  const cloud = await cloudClient(t, broker.url, (c) => {
    c.publish(wallet('w1'))
    c.publish(start('s-held', 'E1'))
  })
  const daemon = startDaemon(t, config)
  t.match(await cloud.result('w1', 'set-wallet'), { ok: true })
  await daemon.waitLog((l) => l.msg === 'command held until its outlet is read' && l.id === 's-held', 'the start is held')
  t.notOk(cloud.results.has('s-held'), 'held, not answered yet')
  t.equal((await daemon.stop()).code, 0, 'clean exit')
  const r = await cloud.result('s-held', 'held start at stop', 10_000)
  t.match(r, { id: 's-held', ok: false, error: { code: 'not-running' } }, `answered at stop: ${JSON.stringify(r)}`)
})

t.test('2 MB commands: answered on P/cmd/{id}/result when the id is in the first KiB, else counted', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 1 })
  const file = writeSiteConfig({ dir, port: peer.port, outlets: 1, brokerUrl: broker.url })
  const port = await freePort()
  const config = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
  config.api = { listen: `127.0.0.1:${port}`, token: TOKEN }
  writeFileSync(file, JSON.stringify(config, null, 2))
  const cloud = await cloudClient(t, broker.url, () => undefined)
  startDaemon(t, file)
  await waitFor(() => cloud.statuses.some((s) => s.online === true), 'online')
  const metrics = async () =>
    parseMetrics(await (await fetch(`http://127.0.0.1:${port}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text())
  await waitFor(() => metrics().catch(() => undefined), 'the local API')
  const pad = 'x'.repeat(2 * 1024 * 1024)

  const withId = `{"id":"big-1","action":"set-wallet","userId":"u-big","currency":"CAD","balance":5000,"pad":"${pad}"}`
  cloud.publish(withId)
  const r = await cloud.result('big-1', '2 MB set-wallet')
  t.same(
    r,
    {
      id: 'big-1',
      ok: false,
      error: { code: 'invalid-command', message: `command is ${Buffer.byteLength(withId)} bytes; at most 65536 are accepted` },
    },
    'refused, naming the size and the limit',
  )

  const before = await metrics()
  t.equal(before.get('outpost_commands_rejected_total{reason="too-large"}'), 0, 'nothing counted yet: big-1 had an id')
  const head = before.get('outpost_journal_head_seq')
  cloud.publish(`{"pad":"${pad}","id":"lost"}`)
  const after = await waitFor(async () => {
    const m = await metrics()
    return m.get('outpost_commands_rejected_total{reason="too-large"}') === 1 && m
  }, 'the id-less 2 MB command counted')
  t.equal(after.get('outpost_commands_rejected_total{reason="not-json"}'), 0)
  t.equal(after.get('outpost_commands_rejected_total{reason="no-id"}'), 0)
  t.equal(after.get('outpost_journal_head_seq'), head, 'nothing journaled')
  t.notOk(cloud.results.has('lost'), 'no answer under an id read past the first KiB')
  // The wallet big-1 named was never set: a start for that user is refused unknown-user.
  cloud.publish(start('s-big', 'E1', 'u-big'))
  t.match(await cloud.result('s-big'), { ok: false, error: { code: 'unknown-user' } }, 'the refused set-wallet changed nothing')
})
