/**
 * A salvaged gateway continuing in the ingest's database (real PostgreSQL, records sealed by
 * the journal's own code, proofs signed with a P-256 key as the gateway signs them): a valid
 * salvage proof marks the lost range lost and the site's chain goes on from the new start;
 * a forgery (another key, a changed statement, a site that announced no key) and a replayed
 * proof are kept aside and change nothing; late records of the lost range are stored when
 * they chain, and the lost mark shrinks.
 */
import t from 'tap'
import { generateKeyPairSync, sign, type KeyObject } from 'node:crypto'
import pg from 'pg'
import { startPostgres } from './helpers/postgres.js'
import { FleetLog } from './helpers/fleet.js'
import { bodies } from './helpers/memory-log.js'
import { migrate } from '../cloud/schema.js'
import { storeRecords } from '../cloud/store.js'
import { storeBatch } from '../cloud/batch.js'
import { GENESIS_PREV, recordHash, salvageStatement, sealRecord } from '../daemon/journal/chain.js'
import type { JournalRecord, JournalSalvageInfo, RecordBody, SalvageProof } from '../core/types.js'

const db = await startPostgres(t)
const client = new pg.Client({ connectionString: db.url })
await client.connect()
t.teardown(() => client.end())
await migrate(client)

function keyPair(): { privateKey: KeyObject; pem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  return { privateKey, pem: publicKey.export({ type: 'spki', format: 'pem' }).toString() }
}
const gatewayKey = keyPair()
const otherKey = keyPair()

const started = (publicKey: string): RecordBody => ({
  type: 'gateway.started',
  ts: '2026-12-01T00:00:00.000Z',
  version: '1',
  cleanShutdown: true,
  publicKey,
})

/** A site's log up to `n` records: seq 1 announces the gateway key, the rest are sessions. */
function siteLog(n: number, key = gatewayKey.pem): FleetLog {
  const log = new FleetLog()
  log.append([started(key), ...bodies(n - 1)])
  return log
}

/** The salvage's gateway.started at `seq` beginning a new chain, its proof signed with `key`, as the journal seals it. */
function salvageRecord(
  site: string,
  seq: number,
  info: JournalSalvageInfo,
  last: SalvageProof['last'],
  lost: SalvageProof['lost'],
  key = gatewayKey,
  edit: (p: SalvageProof) => SalvageProof = (p) => p,
): JournalRecord {
  const statement = { site, seq, prev: GENESIS_PREV, last, lost }
  const proof = edit({ ...statement, signature: sign('sha256', Buffer.from(salvageStatement(statement)), key.privateKey).toString('base64') })
  return sealRecord(
    { ...started(key.pem), cleanShutdown: false, journalSalvage: info, salvageProof: proof } as RecordBody,
    seq,
    GENESIS_PREV,
    'boot-s',
    true,
  )
}

/** Records after `prev` continuing a chain from `seq`. */
function continueChain(prev: JournalRecord, n: number, offset: number): JournalRecord[] {
  const out: JournalRecord[] = []
  let p = prev
  for (const b of bodies(n, offset)) {
    p = sealRecord(b, p.seq + 1, p.hash, 'boot-s', true)
    out.push(p)
  }
  return out
}

const info = (carriedTo: number, lostFrom: number, lostTo: number): JournalSalvageInfo => ({
  mode: 'fresh',
  movedTo: '/var/lib/outpost/journal.corrupt-20261201T000000Z',
  reason: 'test',
  carried: { from: 11, to: carriedTo },
  lost: null,
  lostAfter: { from: lostFrom, to: lostTo },
  unknownAbove: null,
  newChain: true,
  sessionsMayBeLost: false,
})

const snapshot = async (site: string) =>
  JSON.stringify(
    await Promise.all(
      // sites.last_seen says when the site last sent anything: every delivery moves it.
      ['records', 'record_keys', 'sites', 'salvages', 'lost_ranges', 'sessions', 'forks'].map(
        async (tb) =>
          (
            await client.query(
              `SELECT ${tb === 'sites' ? 'site_id, head, acked, acked_hash, chain_break, forks, public_key' : '*'} FROM ${tb} WHERE site_id = $1 ORDER BY 1, 2`,
              [site],
            )
          ).rows,
      ),
    ),
  )
const rejectsOf = async (site: string) => (await client.query('SELECT seq, reason FROM rejects WHERE site_id = $1 ORDER BY id', [site])).rows
const lostOf = async (site: string) =>
  (await client.query('SELECT from_seq, to_seq, announced_from, announced_to, salvage_seq FROM lost_ranges WHERE site_id = $1', [site])).rows

t.test('a signed salvage: the lost range is marked lost, the chain goes on from the new start, acks again', async (t) => {
  const log = siteLog(20)
  const r = log.records
  t.equal((await storeRecords(client, 'salv-1', r.slice(0, 10))).acked, 10)
  // The gateway lost 13..20 (it read up to 12), and begins a new chain at 21.
  const s = salvageRecord('salv-1', 21, info(12, 13, 20), { seq: 12, hash: r[11]!.hash }, [{ from: 13, to: 20 }])
  const next = continueChain(s, 2, 100)
  const res = await storeRecords(client, 'salv-1', [r[10], r[11], s, ...next])
  t.equal(res.acked, 23, 'acked past the lost range, through the new chain')
  t.equal(res.chainBreak, null)
  t.same(res.rejects, [])
  t.same(await lostOf('salv-1'), [{ from_seq: '13', to_seq: '20', announced_from: '13', announced_to: '20', salvage_seq: '21' }])
  t.match((await client.query('SELECT * FROM salvages WHERE site_id = $1', ['salv-1'])).rows, [
    { seq: '21', hash: s.hash, last_seq: '12', last_hash: r[11]!.hash, public_key: gatewayKey.pem },
  ])

  // The same record again: a repeat, nothing changes.
  const before = await snapshot('salv-1')
  const again = await storeRecords(client, 'salv-1', [s])
  t.equal(again.duplicates, 1)
  t.equal(again.acked, 23)
  t.equal(await snapshot('salv-1'), before, 'a repeat of the salvage changes nothing')

  // Its proof in another record (a replay at seq 24): kept aside, nothing else changes.
  const replay = sealRecord(
    { ...started(gatewayKey.pem), journalSalvage: info(12, 13, 20), salvageProof: (s as { salvageProof: SalvageProof }).salvageProof } as RecordBody,
    24,
    next[1]!.hash,
    'boot-x',
    true,
  )
  const rr = await storeRecords(client, 'salv-1', [replay])
  t.match(rr.rejects, [{ seq: 24, reason: /salvage replayed: its proof was accepted at seq 21 already/ }])
  t.equal(rr.acked, 23)
  t.equal(await snapshot('salv-1'), before, 'the replay changed nothing but rejects')
  // The replay again (a second time), through a batch of several sites: kept aside again with its reason, nothing else changes.
  const rejectsBefore = (await client.query('SELECT count(*)::int AS n FROM rejects WHERE site_id = $1', ['salv-1'])).rows[0].n as number
  const twice = await storeBatch(client, [
    { siteId: 'salv-1', incoming: [replay] },
    { siteId: 'salv-other', incoming: new FleetLog().append(bodies(1)) },
  ])
  t.match(twice.get('salv-1')!.rejects, [{ seq: 24, reason: /salvage replayed: its proof was accepted at seq 21 already/ }])
  t.equal(twice.get('salv-other')!.acked, 1, 'the other site of the batch is stored')
  t.equal(await snapshot('salv-1'), before, 'the second replay changed nothing but rejects')
  t.equal((await client.query('SELECT count(*)::int AS n FROM rejects WHERE site_id = $1', ['salv-1'])).rows[0].n, rejectsBefore + 1)

  // Late records of the lost range (from a backup): stored when they chain, the lost mark shrinks from the front.
  const late = await storeRecords(client, 'salv-1', [r[12], r[13]])
  t.equal(late.stored, 2)
  t.same(late.rejects, [])
  t.match(await lostOf('salv-1'), [{ from_seq: '15', to_seq: '20' }], 'the lost mark shrank to 15..20')
  t.equal(
    (await client.query('SELECT count(*)::int AS n FROM sessions WHERE site_id = $1 AND seq IN (13, 14)', ['salv-1'])).rows[0].n,
    2,
    'their sessions are derived (they chain to the verified prefix)',
  )
  // One that does not chain (altered and re-hashed: its own hash holds, its prev is another's): kept aside.
  const wrong = { ...r[14]!, prev: 'f'.repeat(64) } as JournalRecord
  wrong.hash = recordHash(wrong)
  const w = await storeRecords(client, 'salv-1', [wrong])
  t.match(w.rejects, [{ seq: 15, reason: /a record of a lost range that does not chain/ }])
  t.match(await lostOf('salv-1'), [{ from_seq: '15', to_seq: '20' }])
  // The rest arrives: the mark shrinks to nothing; the chain from the database alone verifies as the gateway's.
  const rest = await storeRecords(client, 'salv-1', r.slice(14))
  t.same(rest.rejects, [])
  t.equal(rest.acked, 23)
  t.match(await lostOf('salv-1'), [{ from_seq: '21', to_seq: '20' }], 'nothing of the range is lost any more (an empty range: the row is kept)')
  t.equal((await client.query('SELECT count(*)::int AS n FROM records WHERE site_id = $1', ['salv-1'])).rows[0].n, 23)
})

t.test('forgeries are kept aside and change nothing', async (t) => {
  const log = siteLog(10)
  await storeRecords(client, 'salv-2', log.records)
  const last = { seq: 10, hash: log.records[9]!.hash }
  const lost = [{ from: 11, to: 14 }]
  const cases: [string, JournalRecord, RegExp][] = [
    ['another key', salvageRecord('salv-2', 15, info(10, 11, 14), last, lost, otherKey), /forgery: the salvage names a key the site never announced/],
    [
      "another key, naming the site's",
      (() => {
        const rec = salvageRecord('salv-2', 15, info(10, 11, 14), last, lost, otherKey)
        const body = { ...rec, publicKey: gatewayKey.pem } as JournalRecord
        body.hash = recordHash(body)
        return body
      })(),
      /forgery: the salvage's signature does not verify against the key the site announced/,
    ],
    [
      'a changed statement',
      salvageRecord('salv-2', 15, info(10, 11, 14), last, lost, gatewayKey, (p) => ({ ...p, lost: [{ from: 11, to: 99 }] })),
      /forgery: the salvage's signature does not verify/,
    ],
    [
      "another site's proof",
      salvageRecord('salv-2', 15, info(10, 11, 14), last, lost, gatewayKey, (p) => ({ ...p, site: 'salv-1' })),
      /forgery: the salvage proof names site salv-1/,
    ],
  ]
  for (const [what, rec, reason] of cases) {
    const before = await snapshot('salv-2')
    const res = await storeRecords(client, 'salv-2', [rec])
    t.match(res.rejects, [{ seq: 15, reason }], what)
    t.equal(res.acked, 10, `${what}: nothing acked past the gap`)
    t.same(await lostOf('salv-2'), [], `${what}: nothing marked lost`)
    t.equal((await client.query('SELECT 1 FROM records WHERE site_id = $1 AND seq = 15', ['salv-2'])).rowCount, 0, `${what}: not stored`)
    t.equal(await snapshot('salv-2'), before, `${what}: nothing else changed`)
  }
  // A site that never announced a key.
  const bare = new FleetLog()
  bare.append(bodies(3))
  await storeRecords(client, 'salv-3', bare.records)
  const res = await storeRecords(client, 'salv-3', [
    salvageRecord('salv-3', 5, info(3, 4, 4), { seq: 3, hash: bare.records[2]!.hash }, [{ from: 4, to: 4 }]),
  ])
  t.match(res.rejects, [{ seq: 5, reason: /forgery: a salvage from a key the site never announced/ }])
  t.same(await lostOf('salv-3'), [])
  t.same(
    (await rejectsOf('salv-2')).map((x) => x.seq),
    ['15', '15', '15', '15'],
  )
})

t.test('a salvage whose last record read is not the one the database holds stops the prefix there', async (t) => {
  const log = siteLog(10)
  await storeRecords(client, 'salv-4', log.records)
  const s = salvageRecord('salv-4', 13, info(10, 11, 12), { seq: 10, hash: 'e'.repeat(64) }, [{ from: 11, to: 12 }])
  const res = await storeRecords(client, 'salv-4', [s])
  t.equal(res.acked, 10)
  t.match(res.chainBreak, { seq: 13, reason: 'salvage', message: /the salvage read seq 10 as e{64}, the database holds/ })
})
