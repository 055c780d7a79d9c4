/**
 * An OCPP transaction whose session a salvage lost from every surviving engine state, while
 * the OCPP outbox (its `x!ocpp!` side data) survived: the built daemon closes it PowerLoss at
 * the last journaled meter value instead of leaving it open at the central system (ocpp-rpc,
 * strict mode). The damage: the daemon killed mid-session, then the journal's engine state (its
 * outlet entries and sections) gone and an unreadable entry after its newest record, so that boot salvages and
 * no state shows the session open — as a lost table file leaves it.
 */
import t from 'tap'
import { Level } from 'level'
import { join } from 'node:path'
import { META_STATE, OUTLETS, prefixRange, readingPrefix, recordKey, SECTIONS } from '../daemon/journal/keys.js'
import { journalRecords, ocppSection, startCsms } from './helpers/csms.js'
import { startDaemon, startPeer, tempDir, waitFor, writeSiteConfig } from './helpers/e2e-kit.js'

t.test('a transaction in the outbox whose session no surviving state holds: StopTransaction PowerLoss at the last meter value', async (t) => {
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 1 })
  const csms = await startCsms(t)
  const config = writeSiteConfig({ dir, port: peer.port, outlets: 1, extra: { ocpp: ocppSection(csms) } })
  let daemon = startDaemon(t, config)
  await daemon.waitLog((l) => l.msg === 'ocpp: boot accepted', 'boot accepted')
  // A configuration change of the central system's is side data too: the salvage carries it.
  t.same(await csms.call('ChangeConfiguration', { key: 'MeterValueSampleInterval', value: '45' }), { status: 'Accepted' })
  await peer.plug(1, 16)
  t.same(await csms.call('RemoteStartTransaction', { connectorId: 1, idTag: 'drv-lost' }), { status: 'Accepted' })
  const start = await waitFor(() => csms.of('StartTransaction')[0]?.reply && csms.of('StartTransaction')[0], 'StartTransaction answered')
  const e0 = (await peer.outlet(1)).energyWh
  await waitFor(async () => (await peer.outlet(1)).energyWh > e0 + 3, 'charging')
  // The answer (the transactionId) is on disk before the next message goes: wait for a MeterValues or two seconds.
  await new Promise((r) => setTimeout(r, 2000))
  await daemon.stop('SIGKILL')
  await peer.unplug(1)

  const before = journalRecords(config)
  const started = before.find((r) => r.type === 'session.started')!
  const sessionId = (started as { sessionId: string }).sessionId
  const loc = join(dir, 'journal', 'journal')
  const db = new Level<string, string>(loc, { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  // A reading entry: key g!<session>!<ts>, value [currentA, powerW, energyWh, voltageV, outlet, ...] (docs/journal.md).
  let lastReading: { ts: number; energyWh: number } | undefined
  for await (const [k, v] of db.iterator(prefixRange(readingPrefix(sessionId))))
    lastReading = { ts: Number(k.slice(readingPrefix(sessionId).length)), energyWh: (JSON.parse(v) as number[])[2]! }
  t.ok(lastReading, 'the session has journaled readings')
  let outbox = 0
  for await (const _k of db.keys(prefixRange('x!ocpp!'))) outbox++
  t.ok(outbox > 0, 'the OCPP outbox is in the journal')
  // The engine state gone (as a lost table file leaves it) and an unreadable entry after the newest record: boot must salvage.
  for (const range of [OUTLETS, SECTIONS]) for await (const k of db.keys(range)) await db.del(k)
  await db.del(META_STATE)
  await db.put(recordKey(before.at(-1)!.seq + 1), '{"seq":')
  await db.close()

  const boots = csms.of('BootNotification').length
  daemon = startDaemon(t, config)
  await waitFor(() => csms.of('BootNotification').length > boots, 'the restarted daemon boots')
  const damaged = await daemon.waitLog((l) => /^JOURNAL DAMAGED/.test(l.msg), 'the salvage is reported')
  t.equal(damaged.level, 'error')
  const tx = start.reply!.transactionId as number
  const stop = await csms.waitCall('StopTransaction', (c) => c.params.transactionId === tx, 'the StopTransaction of the orphaned transaction')
  t.equal(stop.params.reason, 'PowerLoss')
  t.equal(stop.params.meterStop, Math.round(lastReading!.energyWh), 'meterStop is the last journaled reading')
  t.equal(stop.params.timestamp, new Date(lastReading!.ts).toISOString(), 'stamped at that reading')
  t.ok(
    daemon.logs().some((l) => l.level === 'error' && /closed PowerLoss at its last known meter value/.test(l.msg)),
    'logged at error level',
  )
  t.same(
    await csms.call('GetConfiguration', { key: ['MeterValueSampleInterval'] }),
    { configurationKey: [{ key: 'MeterValueSampleInterval', readonly: false, value: '45' }], unknownKey: [] },
    "the central system's change survived the salvage",
  )
  t.equal((await daemon.stop('SIGTERM')).code, 0)

  // A further run does not send it again.
  daemon = startDaemon(t, config)
  await daemon.waitLog((l) => l.msg === 'ocpp: boot accepted', 'a third run is accepted')
  await new Promise((r) => setTimeout(r, 1500))
  t.equal(csms.of('StopTransaction').filter((c) => c.params.transactionId === tx).length, 1, 'exactly one StopTransaction')
  t.equal((await daemon.stop('SIGTERM')).code, 0)
  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
  t.equal(csms.badMessages.length, 0, 'no bad message')
})
