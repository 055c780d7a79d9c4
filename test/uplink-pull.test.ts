import t, { type Test as Tap } from 'tap'
import { join } from 'node:path'
import type { MqttClient } from 'mqtt'
import { openTestLog } from './helpers/test-log.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { bodies } from './helpers/memory-log.js'
import { makeUplink, rawClient, readJsonLines, tempDir, uplinkConfig, waitFor } from './helpers/uplink-kit.js'
import { ReconcilingConsumer } from '../daemon/uplink/consumer.js'
import { verifyChain } from '../daemon/uplink/chain.js'
import { PULL_DEFAULT_LIMIT, PULL_MAX_LIMIT } from '../daemon/uplink/pull.js'

type Answer = {
  requestId: string | null
  records: { seq: number }[]
  next: number | null
  head: number
  error?: { code: string; message: string; oldest?: number }
}

/** A cloud that sends pulls and collects answers by topic. */
async function puller(t: Tap, url: string) {
  const c: MqttClient = await rawClient(t, url)
  const answers = new Map<string, Answer[]>()
  c.on('message', (topic, p) => {
    const id = topic.split('/').pop()!
    answers.set(id, [...(answers.get(id) ?? []), JSON.parse(p.toString()) as Answer])
  })
  await c.subscribeAsync('outpost/lot-7/pull/+', { qos: 1 })
  let n = 0
  return {
    async pull(req: Record<string, unknown> | string, topicId?: string): Promise<Answer> {
      const id =
        topicId ?? (typeof req !== 'string' && typeof req.requestId === 'string' && !req.requestId.includes('/') ? req.requestId : '_invalid')
      const before = answers.get(id)?.length ?? 0
      await c.publishAsync('outpost/lot-7/pull', typeof req === 'string' ? req : JSON.stringify(req), { qos: 1 })
      await waitFor(() => (answers.get(id)?.length ?? 0) > before, `answer on pull/${id}`)
      return answers.get(id)![before]!
    },
    id: () => `r${++n}`,
  }
}

t.test('pulls of arbitrary ranges', async (t) => {
  const broker = await startMosquitto(t)
  const log = await openTestLog(t)
  await log.append(bodies(2500))
  // No acks in this test: the uplink's own window is irrelevant to pulls.
  const uplink = makeUplink(t, log, uplinkConfig(broker.url, { windowRecords: 10 }))
  uplink.start()
  await waitFor(() => uplink.state().status === 'online', 'online')
  const cloud = await puller(t, broker.url)
  const seqs = (a: Answer) => a.records.map((r) => r.seq)
  const range = (a: number, b: number) => Array.from({ length: b - a + 1 }, (_, i) => a + i)

  let a = await cloud.pull({ requestId: 'r1', from: 1, to: 10 })
  t.same(seqs(a), range(1, 10), '1..10')
  t.match(a, { requestId: 'r1', next: null, head: 2500 })
  t.ok(verifyChain(a.records).ok, 'pulled records verify')

  a = await cloud.pull({ requestId: 'r2', from: 5, to: 100, limit: 3 })
  t.same(seqs(a), [5, 6, 7], 'limit respected')
  t.equal(a.next, 8, 'next says where to continue')

  a = await cloud.pull({ requestId: 'r3', from: 2490, to: 9999 })
  t.same(seqs(a), range(2490, 2500), 'to past head is clipped at head')
  t.equal(a.next, null)

  a = await cloud.pull({ requestId: 'r4', from: 3000 })
  t.same(a.records, [], 'from past head: nothing')
  t.equal(a.next, null)

  a = await cloud.pull({ requestId: 'r5', from: 1 })
  t.equal(a.records.length, PULL_DEFAULT_LIMIT, `default limit ${PULL_DEFAULT_LIMIT}`)
  t.equal(a.next, PULL_DEFAULT_LIMIT + 1)

  a = await cloud.pull({ requestId: 'r6', from: 1, limit: 100000 })
  t.equal(a.records.length, PULL_MAX_LIMIT, `limit clamped to ${PULL_MAX_LIMIT}`)
  t.equal(a.next, PULL_MAX_LIMIT + 1)

  // Following next walks the whole log.
  const all: number[] = []
  let from: number | null = 1
  let i = 0
  while (from !== null) {
    a = await cloud.pull({ requestId: `walk${i++}`, from, limit: 700 })
    all.push(...seqs(a))
    from = a.next
  }
  t.same(all, range(1, 2500), 'walking next covers 1..head exactly once')

  // A random sample of ranges.
  for (let k = 0; k < 20; k++) {
    const f = 1 + Math.floor(Math.random() * 2500)
    const to = f + Math.floor(Math.random() * 300)
    const lim = 1 + Math.floor(Math.random() * 200)
    a = await cloud.pull({ requestId: `rand${k}`, from: f, to, limit: lim })
    const last = Math.min(to, 2500, f + lim - 1)
    t.same(seqs(a), range(f, last), `from ${f} to ${to} limit ${lim}`)
    t.equal(a.next, last < Math.min(to, 2500) ? last + 1 : null)
  }
})

t.test('a compacted range is answered with an error naming the oldest seq held', async (t) => {
  const broker = await startMosquitto(t)
  const log = await openTestLog(t)
  await log.append(bodies(300))
  await log.ack(120)
  await log.compact()
  const oldest = log.oldest()
  t.ok(oldest > 1 && oldest <= 121, `compacted up to ${oldest - 1}`)
  const uplink = makeUplink(t, log, uplinkConfig(broker.url))
  uplink.start()
  await waitFor(() => uplink.state().status === 'online', 'online')
  const cloud = await puller(t, broker.url)
  let a = await cloud.pull({ requestId: 'c1', from: 1, to: 150 })
  t.same(a.records, [])
  t.equal(a.error?.code, 'compacted')
  t.equal(a.error?.oldest, oldest)
  t.match(a.error?.message, new RegExp(`oldest seq held is ${oldest}`), 'the message names the oldest seq held')
  a = await cloud.pull({ requestId: 'c2', from: oldest, to: oldest + 2 })
  t.same(
    a.records.map((r) => r.seq),
    [oldest, oldest + 1, oldest + 2],
    'from the oldest held works',
  )
  t.notOk(a.error)
})

t.test('malformed pulls are answered with an error, never a crash', async (t) => {
  const broker = await startMosquitto(t)
  const log = await openTestLog(t)
  await log.append(bodies(20))
  const uplink = makeUplink(t, log, uplinkConfig(broker.url, { windowRecords: 1 }))
  uplink.start()
  await waitFor(() => uplink.state().status === 'online', 'online')
  const cloud = await puller(t, broker.url)
  const cases: [string, Record<string, unknown> | string, string | undefined, RegExp][] = [
    ['not JSON', '{nope', undefined, /malformed JSON/],
    ['not an object', '[1,2]', undefined, /JSON object/],
    ['no requestId', { from: 1 }, undefined, /requestId/],
    ['requestId with a slash', { requestId: 'a/b', from: 1 }, undefined, /requestId/],
    ['missing from', { requestId: 'm1' }, 'm1', /\/from: is required/],
    ['from zero', { requestId: 'm2', from: 0 }, 'm2', /\/from/],
    ['from a string', { requestId: 'm3', from: '1' }, 'm3', /\/from/],
    ['to before from', { requestId: 'm4', from: 10, to: 5 }, 'm4', /\/to: 5 is before from/],
    ['limit zero', { requestId: 'm5', from: 1, limit: 0 }, 'm5', /\/limit/],
    ['limit fractional', { requestId: 'm6', from: 1, limit: 1.5 }, 'm6', /\/limit/],
    ['unknown field', { requestId: 'm7', from: 1, since: 3 }, 'm7', /\/since: unknown field/],
    ['oversized', JSON.stringify({ requestId: 'm8', from: 1, pad: 'x'.repeat(5000) }), '_invalid', /bytes/],
  ]
  for (const [what, req, topicId, message] of cases) {
    const a = await cloud.pull(req, topicId)
    t.equal(a.error?.code, 'invalid-pull', `${what}: invalid-pull`)
    t.match(a.error?.message, message, `${what}: says what is wrong`)
    t.same(a.records, [])
  }
  const ok = await cloud.pull({ requestId: 'after', from: 1, to: 2 })
  t.same(
    ok.records.map((r) => r.seq),
    [1, 2],
    'the uplink still answers after malformed pulls',
  )
})

t.test('the consumer detects a gap and pulls it', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const log = await openTestLog(t)
  await log.append(bodies(1500))
  // Another cloud instance already acked everything: the gateway sends nothing more on P/records.
  await log.ack(1500)
  const uplink = makeUplink(t, log, uplinkConfig(broker.url))
  uplink.start()
  await waitFor(() => uplink.state().status === 'online', 'online')
  const file = join(dir, 'fresh.jsonl')
  const consumer = new ReconcilingConsumer({ url: broker.url, siteId: 'lot-7', file, gapWaitMs: 200, pullLimit: 400 })
  t.teardown(() => consumer.stop())
  await consumer.start()
  await waitFor(() => consumer.held() === 1500, 'the consumer pulled 1..1500 (head from the retained status)')
  t.ok(consumer.stats.pulls >= 4, `paged pulls (${consumer.stats.pulls})`)
  // New records arrive live after the gap was filled.
  await log.append(bodies(10, 1500))
  await waitFor(() => consumer.held() === 1510, 'live records after the pulled ones')
  const lines = readJsonLines(file)
  t.equal(lines.length, 1510)
  t.ok(verifyChain(lines).ok, 'chain intact across pulled and live records')
})
