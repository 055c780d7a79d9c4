import t from 'tap'
import { join } from 'node:path'
import { openTestLog } from './helpers/test-log.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { bodies } from './helpers/memory-log.js'
import { makeUplink, rawClient, readJsonLines, tempDir, uplinkConfig, waitFor } from './helpers/uplink-kit.js'
import { ReconcilingConsumer } from '../daemon/uplink/consumer.js'
import { verifyChain } from '../daemon/uplink/chain.js'
import type { JournalRecord } from '../core/types.js'

t.test('records arrive in order, verify, and are acked; live appends follow', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const log = await openTestLog(t)
  await log.append(bodies(1000))
  const uplink = makeUplink(t, log, uplinkConfig(broker.url, { batchRecords: 50, windowRecords: 300 }))
  const transitions: boolean[] = []
  uplink.onOnlineChange((o) => transitions.push(o))
  t.equal(uplink.state().status, 'offline', 'offline before start')
  const file = join(dir, 'cloud.jsonl')
  const consumer = new ReconcilingConsumer({ url: broker.url, siteId: 'lot-7', file })
  t.teardown(() => consumer.stop())
  await consumer.start()
  uplink.start()
  await waitFor(() => consumer.held() === 1000, 'consumer holds the backlog')
  await waitFor(() => log.acked() === 1000, 'journal acked up to 1000')
  for (let i = 0; i < 20; i++) await log.append(bodies(10, 1000 + i * 10))
  await waitFor(() => consumer.held() === 1200 && log.acked() === 1200, 'live records forwarded and acked')

  const lines = readJsonLines(file)
  t.equal(lines.length, 1200, 'every record written once')
  const v = verifyChain(lines)
  t.ok(v.ok, 'chain verifies from seq 1')
  t.same(
    lines.map((r) => r.seq),
    Array.from({ length: 1200 }, (_, i) => i + 1),
    'in seq order',
  )
  const expected = await log.read(1, 1200)
  t.same(lines, expected, 'byte-for-byte the journal records')
  t.same(transitions, [true], 'one transition to online')
  const s = uplink.state()
  t.match(s, { status: 'online', acked: 1200, head: 1200, backlog: 0, oldestUnacked: null })
  t.ok(consumer.stats.acks > 0)
})

t.test('the window bounds what is in flight; ack advances it; a restart resends only the unacked tail', async (t) => {
  const broker = await startMosquitto(t)
  const log = await openTestLog(t)
  await log.append(bodies(600))
  const cfg = uplinkConfig(broker.url, { batchRecords: 40, windowRecords: 200 })
  const cloud = await rawClient(t, broker.url)
  const got: number[] = []
  let maxOver = 0
  let cloudAcked = 0
  let uplink = makeUplink(t, log, cfg)
  cloud.on('message', (_topic, payload) => {
    const batch = JSON.parse(payload.toString()) as JournalRecord[]
    for (const r of batch) got.push(r.seq)
    // Invariant at every delivery: never more than the window past the highest ack the cloud has sent.
    maxOver = Math.max(maxOver, batch[batch.length - 1]!.seq - cloudAcked)
  })
  await cloud.subscribeAsync('outpost/lot-7/records', { qos: 1 })
  uplink.start()
  await waitFor(() => got.length >= 200, 'the first window')
  t.same(
    got.slice(0, 200),
    Array.from({ length: 200 }, (_, i) => i + 1),
    'first window in order',
  )
  t.equal(uplink.state().sentUpTo, 200, 'stopped at the window edge')
  cloudAcked = 150
  await cloud.publishAsync('outpost/lot-7/ack', JSON.stringify({ upTo: 150 }), { qos: 1 })
  await waitFor(() => log.acked() === 150, 'ack 150 reaches the journal')
  await waitFor(() => got.includes(350), 'window advanced to 350')
  t.equal(uplink.state().sentUpTo, 350)
  t.ok(maxOver <= 200, `never more than the window in flight (max ${maxOver})`)

  await uplink.stop()
  got.length = 0
  uplink = makeUplink(t, log, cfg)
  uplink.start()
  await waitFor(() => got.length >= 200, 'resend after restart')
  t.equal(got[0], 151, 'resend starts at the oldest unacknowledged record')
  t.ok(
    got.every((s) => s > 150),
    'nothing acknowledged is sent again',
  )
  t.same(
    got.slice(0, 200),
    Array.from({ length: 200 }, (_, i) => i + 151),
  )
  await cloud.publishAsync('outpost/lot-7/ack', JSON.stringify({ upTo: 600 }), { qos: 1 })
  await waitFor(() => log.acked() === 600, 'ack of everything sent so far is clamped to what exists')
  // Malformed acks are ignored, not fatal.
  for (const bad of ['nope', '{"upTo":"7"}', '{"upTo":-1}', '{}', '[]']) await cloud.publishAsync('outpost/lot-7/ack', bad, { qos: 1 })
  await cloud.publishAsync('outpost/lot-7/ack', JSON.stringify({ upTo: 10 }), { qos: 1 })
  await log.append(bodies(5, 600))
  await waitFor(() => got.includes(605), 'still forwarding after malformed acks')
  t.equal(log.acked(), 600, 'a lower ack never moves the watermark back')
})

t.test('with no ack for ackTimeoutMs the uplink resends from the oldest unacked', async (t) => {
  const broker = await startMosquitto(t)
  const log = await openTestLog(t)
  await log.append(bodies(30))
  const cloud = await rawClient(t, broker.url)
  const firsts: number[] = []
  cloud.on('message', (_t, p) => firsts.push((JSON.parse(p.toString()) as JournalRecord[])[0]!.seq))
  await cloud.subscribeAsync('outpost/lot-7/records', { qos: 1 })
  const uplink = makeUplink(t, log, uplinkConfig(broker.url, { batchRecords: 10 }), { ackTimeoutMs: 300 })
  uplink.start()
  await waitFor(() => firsts.filter((s) => s === 1).length >= 2, 'seq 1 sent again after the ack timeout')
  t.same(firsts.slice(0, 3), [1, 11, 21], 'first pass in order')
  await cloud.publishAsync('outpost/lot-7/ack', JSON.stringify({ upTo: 30 }), { qos: 1 })
  await waitFor(() => log.acked() === 30, 'acked')
})

t.test('presence and live outlet state', async (t) => {
  const broker = await startMosquitto(t)
  const log = await openTestLog(t)
  await log.append(bodies(3))
  const uplink = makeUplink(t, log, uplinkConfig(broker.url), { outletIntervalMs: 400 })
  const transitions: boolean[] = []
  uplink.onOnlineChange((o) => transitions.push(o))
  const ts = () => new Date().toISOString()
  // Before the connection: only the latest is kept and published once online.
  uplink.publishOutlet({ outlet: 'A1', state: 'off', currentA: 0, powerW: 0, energyWh: 0, cost: 0, ts: ts() })
  uplink.publishOutlet({ outlet: 'A1', state: 'pending', sessionId: 's-1', userId: 'u-1', currentA: 0, powerW: 0, energyWh: 0, cost: 0, ts: ts() })
  uplink.start()
  await waitFor(() => uplink.state().status === 'online', 'online')

  const watcher = await rawClient(t, broker.url)
  const seen: Record<string, unknown>[] = []
  let status: Record<string, unknown> | undefined
  watcher.on('message', (topic, p) => {
    if (topic.endsWith('/status')) status = JSON.parse(p.toString())
    else seen.push(JSON.parse(p.toString()))
  })
  await watcher.subscribeAsync(['outpost/lot-7/status', 'outpost/lot-7/outlets/+'], { qos: 1 })
  await waitFor(() => status !== undefined && seen.length >= 1, 'retained status and outlet')
  t.same(status, { online: true, version: '0.1.0-test', bootId: 'boot-test', head: 3 }, 'retained P/status')
  t.match(seen[0], { state: 'pending', sessionId: 's-1' }, 'latest offline state published on connect, retained')

  const charging = (powerW: number) => ({
    outlet: 'A1',
    state: 'charging' as const,
    sessionId: 's-1',
    userId: 'u-1',
    currentA: powerW / 230,
    powerW,
    energyWh: powerW / 100,
    cost: 3,
    ts: ts(),
  })
  uplink.publishOutlet(charging(1000)) // state change: at once
  uplink.publishOutlet(charging(2000)) // within the interval: held back
  uplink.publishOutlet(charging(3000)) // replaces 2000
  uplink.publishOutlet({ ...charging(3000), ts: ts() }) // only ts changed: nothing new
  await waitFor(() => seen.some((s) => s.powerW === 3000), 'the latest value is sent when the interval ends')
  uplink.publishOutlet({ outlet: 'A1', state: 'off', currentA: 0, powerW: 0, energyWh: 0, cost: 0, ts: ts() })
  await waitFor(() => seen.some((s) => s.state === 'off'), 'state change published')
  t.same(
    seen.map((s) => s.powerW),
    [0, 1000, 3000, 0],
    'rate-limited: 2000 superseded before it was due, ts-only change skipped',
  )
  t.notOk('outlet' in seen[0]!, 'payload shaped as the contract (outlet id is in the topic)')

  // A clean stop says offline on P/status (the will covers a crash).
  await uplink.stop()
  await waitFor(() => status?.online === false, 'offline status after stop')
  t.same(status, { online: false })
  t.same(transitions, [true, false])
})

t.test('the last will announces a gateway that vanished', async (t) => {
  const broker = await startMosquitto(t)
  const log = await openTestLog(t)
  const uplink = makeUplink(t, log, uplinkConfig(broker.url, { keepaliveS: 5 }))
  uplink.start()
  await waitFor(() => uplink.state().status === 'online', 'online')
  const watcher = await rawClient(t, broker.url)
  let status: Record<string, unknown> | undefined
  watcher.on('message', (_t, p) => (status = JSON.parse(p.toString())))
  await watcher.subscribeAsync('outpost/lot-7/status', { qos: 1 })
  await waitFor(() => status?.online === true, 'online status')
  // Kill the socket without a DISCONNECT, as a crash or a cut cable would.
  const client = (uplink as unknown as { client: { stream: { destroy(): void } } }).client
  ;(uplink as unknown as { stopping: boolean }).stopping = true // keep it from reconnecting
  client.stream.destroy()
  await waitFor(() => status?.online === false, 'the will is published')
  t.same(status, { online: false })
})

t.test('a failing journal read is retried; forwarding resumes without a new trigger', async (t) => {
  const broker = await startMosquitto(t)
  const log = await openTestLog(t)
  await log.append(bodies(50))
  let failures = 2
  const realRead = log.read.bind(log)
  log.read = async (from, limit) => {
    if (failures > 0) {
      failures--
      throw new Error('simulated I/O error')
    }
    return realRead(from, limit)
  }
  const cloud = await rawClient(t, broker.url)
  const got: number[] = []
  cloud.on('message', (_t, p) => got.push(...(JSON.parse(p.toString()) as JournalRecord[]).map((r) => r.seq)))
  await cloud.subscribeAsync('outpost/lot-7/records', { qos: 1 })
  const uplink = makeUplink(t, log, uplinkConfig(broker.url, { batchRecords: 25 }))
  uplink.start()
  await waitFor(() => got.length >= 50, 'records after the read errors')
  t.same(
    got.slice(0, 50),
    Array.from({ length: 50 }, (_, i) => i + 1),
  )
  t.equal(failures, 0, 'both failures happened')
})

t.test('a large backlog does not starve live traffic: commands and outlet states get through mid-drain', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const log = await openTestLog(t)
  await log.append(bodies(40_000))
  const uplink = makeUplink(t, log, uplinkConfig(broker.url), {
    onCommand: async (raw) => ({ id: (JSON.parse(raw.toString()) as { id: string }).id, ok: true, result: { heldByCloud: consumer.held() } }),
  })
  const consumer = new ReconcilingConsumer({ url: broker.url, siteId: 'lot-7', file: join(dir, 'cloud.jsonl') })
  t.teardown(() => consumer.stop())
  await consumer.start()
  const cloud = await rawClient(t, broker.url)
  let result: { result?: { heldByCloud: number } } | undefined
  let outletSeenAt: number | undefined
  cloud.on('message', (topic, p) => {
    if (topic.endsWith('/result')) result = JSON.parse(p.toString())
    else outletSeenAt = consumer.held()
  })
  await cloud.subscribeAsync(['outpost/lot-7/cmd/+/result', 'outpost/lot-7/outlets/+'], { qos: 1 })
  uplink.start()
  await waitFor(() => consumer.held() > 2000, 'the drain is under way')
  await cloud.publishAsync('outpost/lot-7/cmd', JSON.stringify({ id: 'live-1', action: 'stop', outlet: 'A1', by: 'user' }), { qos: 1 })
  uplink.publishOutlet({
    outlet: 'A1',
    state: 'charging',
    sessionId: 's',
    userId: 'u',
    currentA: 10,
    powerW: 2300,
    energyWh: 1,
    cost: 1,
    ts: new Date().toISOString(),
  })
  await waitFor(() => result !== undefined && outletSeenAt !== undefined, 'the command result and the outlet state')
  const heldAtCommand = result!.result!.heldByCloud
  t.ok(heldAtCommand < 40_000, `the command was applied mid-drain (cloud held ${heldAtCommand} of 40000)`)
  t.ok(outletSeenAt! < 40_000, `the outlet state arrived mid-drain (cloud held ${outletSeenAt} of 40000)`)
  await waitFor(() => consumer.held() === 40_000 && log.acked() === 40_000, 'the drain completes')
})
