/**
 * The uplink over a journal a salvage left with holes (seqs it could not read between records it
 * carried, and between them and a new chain): every carried record reaches the cloud, once and in
 * order, no seq of a hole is ever sent, and the cloud's acks carry the watermark across each hole.
 * Real parts: a LevelDB journal on disk damaged in two places, salvaged as boot does; mosquitto.
 */
import t from 'tap'
import { openJournalForRun } from '../daemon/journal/salvage.js'
import type { JournalRecord } from '../core/types.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { charge, editOnDisk, opts, quietLog, T0 } from './helpers/journal-charge.js'
import { makeUplink, rawClient, tempDir, uplinkConfig, waitFor } from './helpers/uplink-kit.js'

t.test('two holes in the middle: every carried record is forwarded, no lost seq is, acks cross the holes', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t, 'outpost-uplink-holes-')
  const records = await charge(dir, 120, 0)
  const last = records.at(-1)!.seq
  // Two records edited on disk (their hashes no longer hold), far apart: two holes.
  const victims = [records[3]!, records[records.length - 4]!]
  t.ok(victims[1]!.seq > victims[0]!.seq + 2, `two holes apart (seqs ${victims[0]!.seq}, ${victims[1]!.seq})`)
  await editOnDisk(dir, victims)
  const { journal, salvage } = await openJournalForRun(
    dir,
    opts(() => T0 + 1e7),
    quietLog(),
  )
  t.teardown(() => journal.close({ clean: true }))
  t.same(
    salvage?.lost,
    victims.map((v) => ({ from: v.seq, to: v.seq })),
    'each edited record is a hole named lost',
  )
  t.same(salvage?.carried, { from: 1, to: last })

  const cloud = await rawClient(t, broker.url)
  const got: number[] = []
  cloud.on('message', (_topic, payload) => {
    const batch = JSON.parse(payload.toString()) as JournalRecord[]
    for (const r of batch) got.push(r.seq)
    void cloud.publishAsync('outpost/lot-7/ack', JSON.stringify({ upTo: batch.at(-1)!.seq }), { qos: 1 })
  })
  await cloud.subscribeAsync('outpost/lot-7/records', { qos: 1 })
  const uplink = makeUplink(t, journal, uplinkConfig(broker.url, { batchRecords: 4, windowRecords: 12 }))
  uplink.start()
  const want = records.map((r) => r.seq).filter((s) => !victims.some((v) => v.seq === s))
  await waitFor(() => got.length >= want.length, `every carried record forwarded (${want.length})`)
  await waitFor(() => journal.acked() === last, 'the watermark reaches the head across both holes')
  t.same(got, want, 'every carried record once, in order; no seq of a hole')
  const [next] = await journal.commit({ records: [{ type: 'gateway.started', ts: new Date(T0).toISOString(), version: 't', cleanShutdown: true }] })
  await waitFor(() => got.includes(next!.seq), 'a record appended after the salvage follows')
  t.equal(next!.seq, last + 1)
})
