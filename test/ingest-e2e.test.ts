/**
 * End to end with the built daemon: two sites (`outpost run` against simulated
 * Modbus sites), a real mosquitto and PostgreSQL, and two `outpost ingest` workers of
 * one group. Cars charge at both sites; the database then holds each journal exactly
 * (the records `outpost records` prints), the sessions, the sites' heads and acks, and
 * a site's records taken from the database alone pass `outpost verify` (chain and
 * OCMF signatures).
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import pg from 'pg'
import mqtt from 'mqtt'
import { startPostgres } from './helpers/postgres.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { startDaemon, startPeer, tempDir, writeSiteConfig } from './helpers/e2e-kit.js'
import { CLI, ackWatch, invariants, startWorker, waitFor } from './helpers/ingest-kit.js'
import type { JournalRecord } from '../core/types.js'

t.test('two gateways, two workers: the database holds both journals, verified', async (t) => {
  const db = await startPostgres(t)
  const broker = await startMosquitto(t)
  const client = new pg.Client({ connectionString: db.url })
  await client.connect()
  t.teardown(() => client.end())
  await Promise.all(['e1', 'e2'].map((n) => startWorker(t, n, broker.url, db.url)))
  const watch = await ackWatch(t, broker.url, db.url)

  const cmd = await mqtt.connectAsync(broker.url, { clientId: `e2e-cmd-${process.pid}` })
  t.teardown(() => cmd.endAsync(true))
  const results = new Map<string, { ok: boolean }>()
  await cmd.subscribeAsync('outpost/+/cmd/+/result', { qos: 1 })
  cmd.on('message', (_topic, payload) => {
    const r = JSON.parse(payload.toString()) as { id: string; ok: boolean }
    results.set(r.id, r)
  })

  const sites = await Promise.all(
    ['lot-a', 'lot-b'].map(async (id) => {
      const dir = tempDir(t)
      const peer = await startPeer(t, { outlets: 2 })
      const config = writeSiteConfig({
        dir,
        port: peer.port,
        outlets: 2,
        brokerUrl: broker.url,
        outlet: { 1: { autoStart: { userId: `resident-${id}` } } },
        extra: { site: { id, name: id, timezone: 'America/Vancouver' } },
      })
      const daemon = startDaemon(t, config)
      await daemon.waitLog((l) => l.msg === 'uplink online', `${id} online`)
      return { id, dir, peer, config, daemon }
    }),
  )
  for (const s of sites) {
    const id = `wallet-${s.id}`
    await waitFor(() => {
      if (results.has(id)) return true
      cmd.publish(
        `outpost/${s.id}/cmd`,
        JSON.stringify({ id, action: 'set-wallet', userId: `resident-${s.id}`, currency: 'CAD', balance: 100_000 }),
        { qos: 1 },
      )
      return false
    }, `${s.id} wallet set`)
    t.ok(results.get(id)!.ok, `${s.id}: set-wallet accepted`)
  }
  // A car charges at each site and leaves: one session.ended per site.
  await Promise.all(sites.map((s) => s.peer.plug(1, 16)))
  await waitFor(async () => {
    const r = await client.query("SELECT count(DISTINCT site_id)::int AS n FROM records WHERE type = 'session.started'")
    return r.rows[0].n === 2
  }, 'both sessions started, in the database')
  await Promise.all(sites.map((s) => s.peer.unplug(1)))
  await waitFor(
    async () => (await client.query('SELECT count(*)::int AS n FROM sessions')).rows[0].n === 2,
    'both sessions ended, in the sessions table',
  )

  // A clean stop of each gateway: its last records go out and are acked before it goes.
  for (const s of sites) t.equal((await s.daemon.stop('SIGTERM')).code, 0, `${s.id} stopped cleanly`)
  const journals = sites.map((s) => {
    const r = spawnSync(process.execPath, [CLI, 'records', '--config', s.config], { encoding: 'utf8' })
    t.equal(r.status, 0, r.stderr)
    return {
      id: s.id,
      records: r.stdout
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as JournalRecord),
    }
  })
  await waitFor(async () => {
    const { rows } = await client.query('SELECT site_id, acked FROM sites ORDER BY site_id')
    return rows.length === 2 && rows.every((r, i) => Number(r.acked) === journals[i]!.records.length)
  }, 'each site acked to its journal head')
  await watch.drained()
  t.same(await invariants(client, journals), [], 'every record once, chains verified, sessions = session.ended')
  t.same(watch.violations, [], 'no ack ahead of the database')
  const site = (await client.query("SELECT online, public_key FROM sites WHERE site_id = 'lot-a'")).rows[0]
  t.equal(site.online, false, 'the clean stop said offline')
  t.match(site.public_key, /BEGIN PUBLIC KEY/, "the gateway's key, from its gateway.started")

  // Re-verified from the database alone: the bodies, in seq order, are what `outpost verify` checks.
  const bodies = (await client.query("SELECT body FROM records WHERE site_id = 'lot-a' ORDER BY seq")).rows.map((r) => JSON.stringify(r.body))
  const file = join(tempDir(t), 'lot-a.jsonl')
  writeFileSync(file, bodies.join('\n') + '\n')
  const v = spawnSync(process.execPath, [CLI, 'verify', file], { encoding: 'utf8' })
  t.equal(v.status, 0, v.stdout + v.stderr)
  t.match(v.stdout, new RegExp(`intact: ${journals[0]!.records.length} records`))
})
