import t, { type Test } from 'tap'
import { join } from 'node:path'
import { openTestLog, type TestLog } from './helpers/test-log.js'
import { freePort, startMosquitto } from './helpers/mosquitto.js'
import { bodies } from './helpers/memory-log.js'
import { makeUplink, readJsonLines, tempDir, uplinkConfig, waitFor } from './helpers/uplink-kit.js'
import { ReconcilingConsumer } from '../daemon/uplink/consumer.js'
import { verifyChain } from '../daemon/uplink/chain.js'

/** Appends records on a timer, as sessions ending during an outage would; journaling never waits on the uplink. */
function appender(log: TestLog, every = 15, perTick = 3) {
  let n = log.head()
  let chain: Promise<unknown> = Promise.resolve()
  const timer = setInterval(() => {
    const from = n
    n += perTick
    chain = chain.then(() => log.append(bodies(perTick, from)))
  }, every)
  return async () => {
    clearInterval(timer)
    await chain
  }
}

function checkReconciled(t: Test, file: string, head: number) {
  const lines = readJsonLines(file)
  t.equal(lines.length, head, `the consumer holds ${head} records, each exactly once`)
  t.same(
    lines.map((r) => r.seq),
    Array.from({ length: head }, (_, i) => i + 1),
    'gapless and in order',
  )
  const v = verifyChain(lines)
  t.ok(v.ok, 'hash chain intact' + (v.ok ? '' : `: ${v.break.message}`))
}

t.test('broker killed mid-stream and restarted while records keep coming', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const log = await openTestLog(t)
  await log.append(bodies(2000))
  const uplink = makeUplink(t, log, uplinkConfig(broker.url, { batchRecords: 50, windowRecords: 500, reconnectMaxMs: 1000 }))
  const transitions: boolean[] = []
  uplink.onOnlineChange((o) => transitions.push(o))
  const file = join(dir, 'cloud.jsonl')
  const consumer = new ReconcilingConsumer({ url: broker.url, siteId: 'lot-7', file, gapWaitMs: 500 })
  t.teardown(() => consumer.stop())
  await consumer.start()
  const stopAppending = appender(log)
  t.teardown(stopAppending)
  uplink.start()
  await waitFor(() => consumer.held() > 300, 'stream under way')
  await broker.kill()
  await waitFor(() => uplink.state().status === 'offline', 'uplink notices the broker is gone')
  const headWhileDown = log.head()
  await waitFor(() => log.head() > headWhileDown + 100, 'journaling continues while offline')
  t.ok(uplink.state().backlog > 0, 'backlog visible while offline')
  await broker.restart()
  await waitFor(() => uplink.state().status === 'online', 'back online')
  await stopAppending()
  const head = log.head()
  await waitFor(() => consumer.held() === head && log.acked() === head, `consumer catches up to ${head}`)
  checkReconciled(t, file, head)
  t.same(transitions.slice(0, 3), [true, false, true], 'online, offline, online')
})

t.test('a flapping broker: every record exactly once, gapless, chain intact', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const log = await openTestLog(t)
  await log.append(bodies(500))
  const uplink = makeUplink(t, log, uplinkConfig(broker.url, { batchRecords: 20, windowRecords: 200, reconnectMaxMs: 1000 }))
  let offline = 0
  uplink.onOnlineChange((o) => {
    if (!o) offline++
  })
  const file = join(dir, 'cloud.jsonl')
  const consumer = new ReconcilingConsumer({ url: broker.url, siteId: 'lot-7', file, gapWaitMs: 500 })
  t.teardown(() => consumer.stop())
  await consumer.start()
  const stopAppending = appender(log, 10, 2)
  t.teardown(stopAppending)
  uplink.start()
  for (let flap = 0; flap < 6; flap++) {
    const mark = consumer.held()
    // Kill at a moment when records are in flight (progress since the last restart), then come back.
    await waitFor(() => consumer.held() > mark + 50, `progress before flap ${flap + 1}`)
    await broker.kill()
    await waitFor(() => uplink.state().status === 'offline', `offline at flap ${flap + 1}`)
    await broker.restart()
  }
  await stopAppending()
  const head = log.head()
  await waitFor(() => consumer.held() === head && log.acked() === head, `consumer catches up to ${head}`)
  checkReconciled(t, file, head)
  t.ok(offline >= 6, `the uplink saw each outage (${offline})`)
})

t.test('the consumer restarts and resumes from its file; its file is the durable truth', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const log = await openTestLog(t)
  await log.append(bodies(400))
  const uplink = makeUplink(t, log, uplinkConfig(broker.url, { batchRecords: 25, windowRecords: 100 }), { ackTimeoutMs: 1000 })
  const file = join(dir, 'cloud.jsonl')
  let consumer = new ReconcilingConsumer({ url: broker.url, siteId: 'lot-7', file, gapWaitMs: 500 })
  await consumer.start()
  uplink.start()
  await waitFor(() => consumer.held() >= 150, 'part of the backlog held')
  await consumer.stop()
  const heldBefore = readJsonLines(file).length
  t.ok(heldBefore >= 150)
  // A crash mid-append leaves a torn last line: the consumer cuts it and resumes.
  const { appendFileSync } = await import('node:fs')
  appendFileSync(file, '{"seq": 99999, "tor')
  await log.append(bodies(100, 400))
  consumer = new ReconcilingConsumer({ url: broker.url, siteId: 'lot-7', file, gapWaitMs: 500 })
  t.teardown(() => consumer.stop())
  await consumer.start()
  t.equal(consumer.held(), heldBefore, 'resumed at what the file holds')
  await waitFor(() => consumer.held() === 500 && log.acked() === 500, 'caught up after restart')
  checkReconciled(t, file, 500)

  // A crash just before the newline of the last record: the record is kept and the next is not glued to it.
  await consumer.stop()
  const { readFileSync, writeFileSync } = await import('node:fs')
  writeFileSync(file, readFileSync(file, 'utf8').replace(/\n$/, ''))
  await log.append(bodies(5, 500))
  consumer = new ReconcilingConsumer({ url: broker.url, siteId: 'lot-7', file, gapWaitMs: 500 })
  await consumer.start()
  t.equal(consumer.held(), 500, 'the last record without its newline still counts')
  await waitFor(() => consumer.held() === 505, 'caught up after the second restart')
  checkReconciled(t, file, 505)
})

t.test('no broker at boot: the uplink starts offline, journaling goes on, and it connects when the broker appears', async (t) => {
  const dir = tempDir(t)
  const port = await freePort()
  const log = await openTestLog(t)
  await log.append(bodies(100))
  const uplink = makeUplink(t, log, uplinkConfig(`mqtt://127.0.0.1:${port}`, { reconnectMaxMs: 1000 }))
  const transitions: boolean[] = []
  uplink.onOnlineChange((o) => transitions.push(o))
  uplink.start()
  await log.append(bodies(50, 100))
  t.match(
    uplink.state(),
    { status: 'offline', head: 150, acked: 0, backlog: 150, oldestUnacked: 1 },
    'the backlog is visible while there is no broker',
  )
  const broker = await startMosquitto(t, { port })
  const file = join(dir, 'cloud.jsonl')
  const consumer = new ReconcilingConsumer({ url: broker.url, siteId: 'lot-7', file, gapWaitMs: 500 })
  t.teardown(() => consumer.stop())
  await consumer.start()
  await waitFor(() => consumer.held() === 150 && log.acked() === 150, 'everything delivered once the broker is up')
  checkReconciled(t, file, 150)
  t.same(transitions, [true])
  await uplink.stop()
  await uplink.stop()
  t.equal(uplink.state().status, 'offline', 'stopped twice without harm')
})
