/**
 * End to end, the built daemon on the pymodbus site with a real mosquitto: the gateway key
 * made at the first start (0600), announced in gateway.started and P/status and printed by
 * `outpost key`; every session.ended carries OCMF that openssl and @road-labs/ocmf verify; a
 * kill -9 mid-session ends it `power-loss` with `TX` `P` and the pagination goes on with no
 * gap; `outpost verify --config` checks every signature; a missing key beside the journal
 * stops `outpost run` with KEY_MISSING and changes nothing.
 */
import t from 'tap'
import { readFileSync, renameSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { startMosquitto } from './helpers/mosquitto.js'
import { runCli } from './helpers/cli.js'
import { isEnded, startCloud, startDaemon, startPeer, startSession, tempDir, waitFor, writeSiteConfig, type Ended } from './helpers/e2e-kit.js'
import { opensslVerifies, roadLabsVerifies } from './helpers/ocmf-check.js'
import type { JournalRecord } from '../core/types.js'
import { Journal } from '../daemon/journal/index.js'

type Started = Extract<JournalRecord, { type: 'gateway.started' }>
const starts = (recs: JournalRecord[]) => recs.filter((r): r is Started => r.type === 'gateway.started')

t.test('OCMF from the running daemon', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 1 })
  const config = writeSiteConfig({ dir, port: peer.port, outlets: 1, brokerUrl: broker.url })
  const storage = join(dir, 'journal')
  const cloud = await startCloud(t, broker.url, dir)

  const d1 = startDaemon(t, config)
  const boot1 = (await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')) as Started
  const keyFile = join(storage, 'gateway-key.pem')
  t.equal(statSync(keyFile).mode & 0o777, 0o600, 'the key was made with the journal, mode 0600')
  const printed = runCli(['key', '--config', config])
  t.equal(printed.status, 0, 'outpost key: exit 0')
  const pem = printed.stdout
  t.match(pem, /^-----BEGIN PUBLIC KEY-----\n/, 'a PEM public key')
  t.equal(boot1.publicKey, pem, 'gateway.started announces it')
  await waitFor(() => cloud.status()?.publicKey === pem, 'P/status carries the public key')

  // A session that ends normally: TX E, T1.
  const s1 = await startSession(t, peer, cloud, { outlet: 1, userId: 'u-ocmf', amps: 16, wallet: 100_000, chargeWh: 2 })
  await peer.unplug(1)
  const e1 = await cloud.waitRecord(isEnded(s1.sessionId), 'the first session ends')
  t.ok(opensslVerifies(e1.ocmf!, pem), 'openssl verifies the first session.ended')
  const v1 = await roadLabsVerifies(e1.ocmf!, pem)
  t.ok(v1.verified, '@road-labs/ocmf verifies it')
  const p1 = v1.payload as { PG: string; ID: string; CI: string; MV: string; MM: string; MS: string; RD: { TX: string; RV: number; TM: string }[] }
  t.equal(p1.PG, 'T1')
  t.same(
    [p1.ID, p1.CI, p1.MV, p1.MM, p1.MS],
    ['u-ocmf', 'E1', 'Eastron', 'eastron-sdm120', 'site:1'],
    'user, outlet, meter from the model and config',
  )
  t.same(
    p1.RD.map((r) => [r.TX, r.RV]),
    [
      ['B', e1.meterStartWh / 1000],
      ['E', e1.meterEndWh / 1000],
    ],
    'begin and end readings in kWh',
  )
  t.match(p1.RD[1]!.TM, / S$/, 'the clock was synchronised (OUTPOST_CLOCK_SYNCED)')

  // kill -9 mid-session: the restart closes it power-loss, TX P, and the counter goes on.
  const s2 = await startSession(t, peer, cloud, { outlet: 1, userId: 'u-ocmf', amps: 16, chargeWh: 2 })
  await d1.stop('SIGKILL')
  const d2 = startDaemon(t, config)
  await waitFor(() => starts(cloud.records()).length >= 2, 'the second gateway.started')
  t.equal(starts(cloud.records())[1]!.publicKey, pem, 'the same key after the restart')
  const e2: Ended = await cloud.waitRecord(isEnded(s2.sessionId), 'the killed session ends at boot')
  t.equal(e2.reason, 'power-loss')
  t.ok(opensslVerifies(e2.ocmf!, pem), 'openssl verifies the power-loss record')
  const v2 = await roadLabsVerifies(e2.ocmf!, pem)
  t.ok(v2.verified, '@road-labs/ocmf verifies it')
  const p2 = v2.payload as { PG: string; RD: { TX: string; RV: number }[] }
  t.equal(p2.PG, 'T2', 'pagination T2: no gap across the kill')
  t.equal(p2.RD[1]!.TX, 'P', 'a power-loss session ends TX P')
  t.equal(p2.RD[1]!.RV, e2.meterEndWh / 1000, 'at the last journaled reading')
  await peer.unplug(1)
  const exit = await d2.stop('SIGTERM')
  t.equal(exit.code, 0, 'clean stop')

  const v = runCli(['verify', '--config', config])
  t.equal(v.status, 0, `outpost verify --config: ${v.stdout.trim()}`)
  t.match(v.stdout, /2 OCMF signatures verified \(T1\.\.T2\)/)

  // The key moved away: the next start refuses, and the journal is not touched.
  const head = runCli(['records', '--config', config]).stdout
  renameSync(keyFile, `${keyFile}.away`)
  const d3 = startDaemon(t, config)
  const refused = await d3.exited
  t.equal(refused.code, 1, 'outpost run exits 1')
  t.match(
    d3.stderr().join('\n'),
    /KEY_MISSING: the gateway key .*gateway-key\.pem is missing, but a journal exists/,
    'with KEY_MISSING naming the file',
  )
  t.equal(runCli(['records', '--config', config]).stdout, head, 'the journal is unchanged')
  t.throws(() => readFileSync(keyFile), 'and no new key was made')
})

t.test('an upgrade: a journal written before records were signed gets its first key at start', async (t) => {
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 1 })
  const config = writeSiteConfig({ dir, port: peer.port, outlets: 1 })
  const storage = join(dir, 'journal')
  const old = await Journal.open(storage, { bootId: 'old-version', clockSynced: () => true, now: () => Date.now(), compactEveryMs: 0 })
  await old.commit({ records: [{ type: 'gateway.started', ts: new Date().toISOString(), version: '0.0.9', cleanShutdown: true }] })
  await old.close({ clean: true })
  const d = startDaemon(t, config)
  await d.waitLog((l) => l.msg === 'outpost running', 'the daemon runs')
  t.ok(
    d.logs().some((l) => l.msg === 'made the first gateway key for a journal whose records were never signed'),
    'says it made the first key',
  )
  t.equal((await d.stop('SIGTERM')).code, 0)
  const records = runCli(['records', '--config', config])
    .stdout.split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as JournalRecord)
  const boots = starts(records)
  t.equal(boots.length, 2)
  t.notOk(boots[0]!.publicKey, 'the old record as it was')
  t.equal(boots[1]!.publicKey, runCli(['key', '--config', config]).stdout, 'the new start announces the new key')
  // From now on the journal has a key on record: losing it is KEY_MISSING.
  renameSync(join(storage, 'gateway-key.pem'), join(dir, 'away.pem'))
  const again = startDaemon(t, config)
  t.equal((await again.exited).code, 1, 'a signed journal without its key does not start')
  t.match(again.stderr().join('\n'), /KEY_MISSING/)
})
