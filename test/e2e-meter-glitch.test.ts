/**
 * End to end, the defect of issue 24: the built daemon on the pymodbus site, whose meter reads
 * its import register 5,000 kWh too high for one poll during a session and right again at the
 * next. The session is billed the energy the peer's own register counted, the glitch is
 * recorded in session.ended (meterEvents) and in meter.reconciliation, the OCMF signature still
 * matches the record and `outpost verify` passes.
 */
import t from 'tap'
import { startMosquitto } from './helpers/mosquitto.js'
import { runCli } from './helpers/cli.js'
import { isEnded, startCloud, startDaemon, startPeer, startSession, tempDir, waitFor, writeSiteConfig } from './helpers/e2e-kit.js'
import { opensslVerifies } from './helpers/ocmf-check.js'
import type { JournalRecord } from '../core/types.js'

/** Float32 kWh registers and JSON round trips: equal to well under a hundredth of a Wh. */
const WH_EPS = 0.02

t.test('a meter that glitches one poll by 5,000 kWh bills the true energy', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 1 })
  const config = writeSiteConfig({ dir, port: peer.port, outlets: 1, brokerUrl: broker.url, sessions: { reconciliationMinutes: 1 } })
  const cloud = await startCloud(t, broker.url, dir)
  const daemon = startDaemon(t, config)
  await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')
  const pem = runCli(['key', '--config', config]).stdout

  const s = await startSession(t, peer, cloud, { outlet: 1, userId: 'u-glitch', amps: 16, wallet: 100_000, chargeWh: 1 })
  await peer.cmd({ cmd: 'glitch', outlet: 1, addKwh: 5000 })
  await waitFor(async () => (await peer.outlet(1)).glitched === 1, 'the meter sent its glitched reply')
  const after = (await peer.outlet(1)).polls
  await waitFor(async () => (await peer.outlet(1)).polls >= after + 4, 'four more polls, right again')
  await peer.unplug(1)
  const e = await cloud.waitRecord(isEnded(s.sessionId), 'the session ends')
  const register = (await peer.outlet(1)).energyWh

  t.equal(e.reason, 'unplugged', 'the session went on across the glitch and ended by unplug')
  t.ok(Math.abs(e.meterStartWh - s.e0) < WH_EPS, `started at the register before the relay closed (${s.e0})`)
  t.ok(e.meterEndWh <= register + WH_EPS, `ended at a register the meter counted (${e.meterEndWh} <= ${register})`)
  t.ok(Math.abs(e.energyWh - (e.meterEndWh - e.meterStartWh)) < WH_EPS, 'energy = meterEnd - meterStart: nothing rebased')
  t.ok(e.energyWh > 1 && e.energyWh < 20, `billed the few Wh drawn (${e.energyWh} Wh), not 5,000 kWh`)
  t.ok(e.total < 200, `a total of ${e.total} cents, not CAD 12,500`)
  t.equal(e.meterEvents?.length, 1, 'one event in session.ended')
  const ev = e.meterEvents![0]!
  t.equal(ev.kind, 'rejected')
  t.ok(Math.abs(ev.toWh - ev.fromWh - 5_000_000) < 50, `the rejected reading: ${ev.fromWh} -> ${ev.toWh} Wh`)
  t.ok(Date.parse(ev.at) >= Date.parse(e.startedAt) && Date.parse(ev.at) <= Date.parse(e.endedAt), 'at a time inside the session')
  t.equal(e.rebasedWh, undefined, 'no rebase')
  t.ok(opensslVerifies(e.ocmf!, pem), 'the OCMF signature verifies and carries the record’s readings')

  const rc = await cloud.waitRecord(
    (r: JournalRecord): r is Extract<JournalRecord, { type: 'meter.reconciliation' }> =>
      r.type === 'meter.reconciliation' && Date.parse(r.to) > Date.parse(e.endedAt),
    'the next meter.reconciliation',
    120_000,
  )
  t.equal(rc.rejectedReadings, 1, 'reconciliation counts the rejected reading')
  t.equal(rc.rebasedWh, undefined)
  t.ok(rc.meterEndWh - rc.meterStartWh < 100, 'and its register span is the true one')

  t.equal((await daemon.stop('SIGTERM')).code, 0, 'clean stop')
  const v = runCli(['verify', '--config', config])
  t.equal(v.status, 0, `outpost verify --config: ${v.stdout.trim()}`)
})
