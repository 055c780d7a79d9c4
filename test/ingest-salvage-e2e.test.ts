/**
 * End to end through the gateway's real salvage path: the built daemon (`outpost run`, uplink
 * to mosquitto) and an `outpost ingest` worker on PostgreSQL. A car charges; the records are
 * acked; the worker stops and the gateway writes more that the cloud never gets; then every
 * LevelDB file of the journal is garbled after a clean stop (a failing SD card). The daemon
 * salvages at its next start and announces it in a gateway.started signed with its gateway
 * key; the ingest checks that proof against the key the site announced before, marks the
 * seqs the gateway lost as lost, and the site's acks go on through the new chain. The
 * database's records, read back alone, pass `outpost verify` (which accepts exactly the
 * breaks a salvage announced).
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import pg from 'pg'
import mqtt from 'mqtt'
import { startPostgres } from './helpers/postgres.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { garble } from './helpers/journal-charge.js'
import { startDaemon, startPeer, tempDir, writeSiteConfig } from './helpers/e2e-kit.js'
import { CLI, startWorker, waitFor } from './helpers/ingest-kit.js'
import type { JournalRecord, SalvageProof } from '../core/types.js'

const SITE = 'lot-s'

t.test('a salvaged gateway continues: its signed salvage marks the lost seqs lost and acks go on', async (t) => {
  const db = await startPostgres(t)
  const broker = await startMosquitto(t)
  const client = new pg.Client({ connectionString: db.url })
  await client.connect()
  t.teardown(() => client.end())
  const records = (config: string): JournalRecord[] => {
    const r = spawnSync(process.execPath, [CLI, 'records', '--config', config], { encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`outpost records: ${r.stderr}`)
    return r.stdout
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as JournalRecord)
  }
  const acked = async () => Number((await client.query('SELECT acked FROM sites WHERE site_id = $1', [SITE])).rows[0]?.acked ?? 0)

  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 1 })
  const config = writeSiteConfig({
    dir,
    port: peer.port,
    outlets: 1,
    brokerUrl: broker.url,
    outlet: { 1: { autoStart: { userId: 'resident' } } },
    extra: { site: { id: SITE, name: SITE, timezone: 'America/Vancouver' } },
  })
  const worker = await startWorker(t, 's1', broker.url, db.url)

  // 1. A session, acked by the cloud.
  let d = startDaemon(t, config)
  await d.waitLog((l) => l.msg === 'uplink online', 'online')
  // The resident's wallet, so that the car may charge (a command over the uplink, applied once by its id).
  const cmd = await mqtt.connectAsync(broker.url, { clientId: `salvage-cmd-${process.pid}` })
  t.teardown(() => cmd.endAsync(true))
  let walletSet = false
  await cmd.subscribeAsync(`outpost/${SITE}/cmd/+/result`, { qos: 1 })
  cmd.on('message', (_topic, payload) => (walletSet ||= (JSON.parse(payload.toString()) as { ok: boolean }).ok))
  await waitFor(() => {
    if (!walletSet)
      cmd.publish(
        `outpost/${SITE}/cmd`,
        JSON.stringify({ id: 'wallet-1', action: 'set-wallet', userId: 'resident', currency: 'CAD', balance: 100_000 }),
        { qos: 1 },
      )
    return walletSet
  }, 'wallet set')
  await peer.plug(1, 16)
  await waitFor(
    async () => (await client.query("SELECT 1 FROM records WHERE site_id = $1 AND type = 'session.started'", [SITE])).rowCount === 1,
    'session started, stored',
  )
  t.equal((await d.stop('SIGTERM')).code, 0)
  const first = records(config)
  await waitFor(async () => (await acked()) === first.length, 'the first run acked to its head')
  t.match(
    (await client.query('SELECT public_key FROM sites WHERE site_id = $1', [SITE])).rows[0].public_key,
    /BEGIN PUBLIC KEY/,
    'the site announced its key',
  )

  // 2. The cloud is away: the gateway's next records (a restart, the session's end) reach nobody.
  await worker.kill('SIGTERM')
  d = startDaemon(t, config)
  await d.waitLog((l) => l.msg === 'uplink online', 'online, no ingest')
  await peer.unplug(1)
  // The session ends after its grace (3 s) without current: its session.ended is one of the records the cloud misses.
  await new Promise((r) => setTimeout(r, 4000))
  t.equal((await d.stop('SIGTERM')).code, 0)
  const second = records(config)
  t.ok(second.length > first.length, `the gateway wrote ${second.length - first.length} records the cloud never got`)

  // 3. Every log and table file garbled after the clean stop: the daemon salvages at its next start.
  const loc = join(dir, 'journal', 'journal')
  for (const f of readdirSync(loc).filter((f) => f.endsWith('.log') || f.endsWith('.ldb'))) garble(join(loc, f))
  await startWorker(t, 's2', broker.url, db.url)
  d = startDaemon(t, config)
  await d.waitLog((l) => l.msg === 'outpost running', 'running after the damage')
  t.ok(
    d.logs().some((l) => /^JOURNAL DAMAGED/.test(l.msg ?? '')),
    'the damage is reported',
  )
  await d.waitLog((l) => l.msg === 'uplink online', 'online after the salvage')
  t.equal((await d.stop('SIGTERM')).code, 0)
  const after = records(config)
  const salvage = after.find((r) => r.type === 'gateway.started' && r.journalSalvage) as
    | (JournalRecord & { type: 'gateway.started'; salvageProof?: SalvageProof })
    | undefined
  t.ok(salvage?.salvageProof, 'the salvage is announced with a proof')
  const proof = salvage!.salvageProof!
  t.match(proof, { site: SITE, seq: salvage!.seq, prev: '0'.repeat(64), signature: /^[A-Za-z0-9+/]+=*$/ })
  // The gateway names lost what it had not seen acked: what the cloud never got, and perhaps the last records it did get
  // (an ack that came after the gateway's marker was last written). The ingest cuts that to what it does not hold.
  t.equal(proof.lost.length, 1)
  t.ok(
    proof.lost[0]!.to === second.length && proof.lost[0]!.from <= first.length + 1 && proof.lost[0]!.from > 1,
    `the seqs the cloud never got are named lost (${JSON.stringify(proof.lost)}; the cloud holds 1..${first.length})`,
  )
  const head = after.at(-1)!.seq

  // The ingest accepted it: the lost seqs are marked lost, the chain goes on, the site is acked to the gateway's head.
  await waitFor(async () => (await acked()) === head, `acked to the new head ${head}`, 60_000)
  const site = (await client.query('SELECT chain_break FROM sites WHERE site_id = $1', [SITE])).rows[0]
  t.equal(site.chain_break, null)
  t.same((await client.query('SELECT from_seq, to_seq, salvage_seq FROM lost_ranges WHERE site_id = $1', [SITE])).rows, [
    { from_seq: String(first.length + 1), to_seq: String(second.length), salvage_seq: String(salvage!.seq) },
  ])
  t.same((await client.query('SELECT reason FROM rejects WHERE site_id = $1', [SITE])).rows, [], 'nothing refused')

  // From the database alone: the records pass `outpost verify`, which names the break the salvage announced.
  const bodies = (await client.query('SELECT body FROM records WHERE site_id = $1 ORDER BY seq', [SITE])).rows.map((r) => JSON.stringify(r.body))
  const file = join(tempDir(t), `${SITE}.jsonl`)
  writeFileSync(file, bodies.join('\n') + '\n')
  const v = spawnSync(process.execPath, [CLI, 'verify', file], { encoding: 'utf8' })
  t.equal(v.status, 0, v.stdout + v.stderr)
  t.match(v.stdout, new RegExp(`salvage announced at seq ${salvage!.seq}: seqs ${first.length + 1}\\.\\.${second.length} lost`))
})
