import t from 'tap'
import fc from 'fast-check'
import { reconnectDelay, disabledUplinkState } from '../daemon/uplink/uplink.js'
import { verifyChain, recordHash, GENESIS_PREV } from '../daemon/uplink/chain.js'
import { topics, isTopicLevel } from '../daemon/uplink/topics.js'
import { MemoryLog, bodies } from './helpers/memory-log.js'

t.test('reconnect back-off: exponential, capped, jittered between half and all of the ceiling', async (t) => {
  t.same(
    [0, 1, 2, 3, 4, 5, 6].map((a) => reconnectDelay(a, 1000, 30_000, () => 1)),
    [1000, 2000, 4000, 8000, 16000, 30000, 30000],
  )
  t.same(
    [0, 1, 2, 5, 40].map((a) => reconnectDelay(a, 1000, 30_000, () => 0)),
    [500, 1000, 2000, 15000, 15000],
  )
  fc.assert(
    fc.property(
      fc.nat(100),
      fc.integer({ min: 1, max: 10_000 }),
      fc.integer({ min: 1000, max: 600_000 }),
      fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
      (attempt, base, cap, r) => {
        const d = reconnectDelay(attempt, base, cap, () => r)
        const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30))
        return d >= Math.floor(ceiling / 2) && d <= cap && d <= ceiling
      },
    ),
  )
})

t.test('verifyChain finds every kind of break', async (t) => {
  const log = new MemoryLog()
  const recs = log.append(bodies(5))
  t.match(verifyChain(recs), { ok: true, count: 5, end: { seq: 5, hash: recs[4]!.hash } })
  t.equal(recs[0]!.prev, GENESIS_PREV)
  t.equal(recordHash(recs[2]!), recs[2]!.hash, 'recordHash agrees with the log')
  t.match(verifyChain([recs[0], recs[2]]), { ok: false, break: { seq: 2, reason: 'seq' } }, 'a gap')
  t.match(verifyChain([recs[1]]), { ok: false, break: { seq: 1, reason: 'seq' } }, 'not from the start')
  t.match(verifyChain(recs.slice(2), { seq: 2, hash: recs[1]!.hash }), { ok: true, count: 3 }, 'continues a known point')
  t.match(verifyChain(recs.slice(2), { seq: 2, hash: recs[0]!.hash }), { ok: false, break: { reason: 'prev' } }, 'wrong anchor')
  const altered = { ...recs[3]!, total: 1 }
  t.match(
    verifyChain([...recs.slice(0, 3), altered, recs[4]]),
    { ok: false, break: { seq: 4, reason: 'hash' }, end: { seq: 3 } },
    'an altered record',
  )
  t.match(verifyChain([recs[0], { seq: 2 }]), { ok: false, break: { reason: 'not-a-record' } })
  const reordered = [recs[0], recs[2], recs[1]]
  t.notOk(verifyChain(reordered).ok, 'reordered')
})

t.test('topics and ids', async (t) => {
  const tp = topics('outpost', 'lot-7')
  t.equal(tp.records, 'outpost/lot-7/records')
  t.equal(tp.cmdResult('c-1'), 'outpost/lot-7/cmd/c-1/result')
  t.equal(tp.cmdResult('a/b'), 'outpost/lot-7/cmd/_invalid/result')
  t.equal(tp.pullAnswer(''), 'outpost/lot-7/pull/_invalid')
  t.equal(tp.outlet('A1'), 'outpost/lot-7/outlets/A1')
  for (const bad of ['', '_x', 'a+b', 'a#', 'x'.repeat(129), 'a\u0000b', 7, null])
    t.notOk(isTopicLevel(bad), `${JSON.stringify(bad)} is not a topic level`)
  for (const good of ['c1', '0f8e4b1c-3a5e-4a43-9a0f-2f1d1b0c9e11', 'A.b_c-d:e']) t.ok(isTopicLevel(good))
})

t.test('disabled state for a site without uplink', async (t) => {
  const log = new MemoryLog()
  log.append(bodies(4))
  await log.ack(1)
  t.same(disabledUplinkState(log), { status: 'disabled', acked: 1, head: 4, oldestUnacked: 2, backlog: 3, sentUpTo: 0, onlineSince: null })
})
