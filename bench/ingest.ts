/**
 * Ingest benchmark: records per second that `outpost ingest` stores, verifies and
 * acks with 1, 2 and 4 worker processes (one shared-subscription group, a local
 * mosquitto and PostgreSQL), against a raw PostgreSQL `COPY` of the very same rows
 * into a table with the same key, in the same run; and the lag from publish to the
 * ack that follows the commit, at a steady 200 sites × 1 record/s, against a bare
 * MQTT round trip (an echo client instead of the ingest) at the same rate; and a fleet catching up
 * after an outage (2,000 sites reconnecting at once, each with 500 records): the time until every
 * site is acked, against COPY of the same rows.
 *
 * Owns: these figures. Must never: assert anything (tests do), or leave a process behind.
 * Runs alone: `node dist/bench/ingest.js` (after `npm run build`); in `npm run bench`.
 */
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import mqtt, { type MqttClient } from 'mqtt'
import pg from 'pg'
import { binNodeFlags, notMeasured, percentile, row, Teardowns, type BenchRow } from './lib.js'
import { FleetLog } from '../test/helpers/fleet.js'
import { bodies } from '../test/helpers/memory-log.js'
import { startMosquitto } from '../test/helpers/mosquitto.js'
import { PG_BIN, startPostgres } from '../test/helpers/postgres.js'
import { startWorker as startIngest, type WorkerProc } from '../test/helpers/ingest-kit.js'

/** `outpost ingest` as the installed bin runs it: under its interpreter line's node flags (bin/outpost.ts then runs the cloud side with its own). */
const startWorker = (td: Teardowns, name: string, brokerUrl: string, dbUrl: string) => startIngest(td, name, brokerUrl, dbUrl, [], binNodeFlags())
import type { JournalRecord } from '../core/types.js'

const SITES = Number(process.env.OUTPOST_BENCH_INGEST_SITES ?? 100)
const PER_SITE = Number(process.env.OUTPOST_BENCH_INGEST_RECORDS ?? 100)
const BATCH = 25
const RUNS = Number(process.env.OUTPOST_BENCH_INGEST_RUNS ?? 3)
const LAG_SITES = 200
const LAG_SECONDS = Number(process.env.OUTPOST_BENCH_INGEST_LAG_S ?? 20)
/** The fleet coming back after an outage: sites reconnecting at once, each with its backlog (the uplink's 100 records a message). */
const CATCHUP_SITES = Number(process.env.OUTPOST_BENCH_INGEST_CATCHUP_SITES ?? 2000)
const CATCHUP_RECORDS = Number(process.env.OUTPOST_BENCH_INGEST_CATCHUP_RECORDS ?? 500)
const CATCHUP_RUNS = Number(process.env.OUTPOST_BENCH_INGEST_CATCHUP_RUNS ?? 2)
/** Worker counts of the throughput part (comma-separated; default 1,2,4). */
const WORKERS = (process.env.OUTPOST_BENCH_INGEST_WORKERS ?? '1,2,4').split(',').map(Number)
/** Which parts to run: throughput, lag, catchup (comma-separated; default all). */
const PARTS = new Set((process.env.OUTPOST_BENCH_INGEST_PARTS ?? 'throughput,lag,catchup').split(','))

/** A value for COPY's text format. */
const esc = (s: string) => s.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n')

/** One COPY line of `records` (site_id, seq, type, hash, prev, body) for a record. */
const copyLine = (site: string, r: JournalRecord) => [site, r.seq, r.type, r.hash, r.prev, esc(JSON.stringify(r))].join('\t') + '\n'

/** `\copy copy_baseline … FROM STDIN` through psql with `chunks` as its input; resolves when it finished. */
function copyIn(dbUrl: string, chunks: readonly string[]): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const p = spawn(join(PG_BIN, 'psql'), [dbUrl, '-q', '-c', '\\copy copy_baseline (site_id, seq, type, hash, prev, body) FROM STDIN'], {
      stdio: ['pipe', 'ignore', 'pipe'],
    })
    let err = ''
    p.stderr!.on('data', (d: Buffer) => (err += d.toString()))
    p.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`psql COPY failed: ${err}`))))
    // Written with the pipe's back-pressure: a gigabyte handed over at once fails (ENOBUFS).
    void (async () => {
      for (const c of chunks) if (!p.stdin!.write(c)) await new Promise((r) => p.stdin!.once('drain', r))
      p.stdin!.end()
    })()
  })
}

async function publishAll(client: MqttClient, messages: { topic: string; payload: string }[]): Promise<void> {
  let i = 0
  const lanes = Array.from({ length: 32 }, async () => {
    while (i < messages.length) {
      const m = messages[i++]!
      await client.publishAsync(m.topic, m.payload, { qos: 1 })
    }
  })
  await Promise.all(lanes)
}

export async function run(): Promise<BenchRow[]> {
  const td = new Teardowns()
  try {
    const db = await startPostgres(td)
    const broker = await startMosquitto(td, { extraConfig: ['max_queued_messages 0'] })
    const client = new pg.Client({ connectionString: db.url })
    await client.connect()
    td.teardown(() => client.end())
    const pub = await mqtt.connectAsync(broker.url, { clientId: `bench-pub-${process.pid}` })
    td.teardown(() => pub.endAsync(true))

    // The rows: SITES gateways' logs sealed as the journal seals them.
    const logs = Array.from({ length: SITES }, (_, i) => {
      const log = new FleetLog()
      log.append(bodies(PER_SITE, i * PER_SITE))
      return { id: `b-${i}`, records: log.records as JournalRecord[] }
    })
    const total = SITES * PER_SITE
    const messages: { topic: string; payload: string }[] = []
    for (let k = 0; k < PER_SITE; k += BATCH)
      for (const l of logs) messages.push({ topic: `outpost/${l.id}/records`, payload: JSON.stringify(l.records.slice(k, k + BATCH)) })

    // One worker applies the schema once.
    const first = await startWorker(td, 'bench-init', broker.url, db.url)
    await first.kill('SIGTERM')
    const reset = () => client.query('TRUNCATE records, record_keys, sessions, sites, forks, rejects, pull_leases, meter_reconciliations')

    const ingestRun = (workers: number) => async (): Promise<number> => {
      await reset()
      const procs: WorkerProc[] = await Promise.all(
        Array.from({ length: workers }, (_, i) => startWorker(td, `bench-${workers}-${i}`, broker.url, db.url)),
      )
      const t0 = performance.now()
      await publishAll(pub, messages)
      for (;;) {
        const { rows } = await client.query<{ n: number }>('SELECT count(*)::int AS n FROM sites WHERE acked = $1', [PER_SITE])
        if (rows[0]!.n === SITES) break
        await new Promise((r) => setTimeout(r, 20))
      }
      const s = (performance.now() - t0) / 1000
      await Promise.all(procs.map((p) => p.kill('SIGTERM')))
      return total / s
    }

    // COPY of the same rows (text format, the same columns, unique by (site_id, seq) as records are), through psql:
    // one plain table, the database's bulk rate with no partition routing and no second key table.
    await client.query(`CREATE TABLE IF NOT EXISTS copy_baseline (
      site_id text NOT NULL, seq bigint NOT NULL CHECK (seq >= 1), type text NOT NULL, hash text NOT NULL, prev text NOT NULL,
      body jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (site_id, seq))`)
    const copyText = logs.flatMap((l) => l.records.map((r) => copyLine(l.id, r))).join('')
    const copyRun = async (): Promise<number> => {
      await client.query('TRUNCATE copy_baseline')
      const t0 = performance.now()
      await copyIn(db.url, [copyText])
      return total / ((performance.now() - t0) / 1000)
    }

    const rows: BenchRow[] = []
    // Interleaved: each ingest configuration's runs alternate with COPY runs, so both see the same weather.
    for (const workers of PARTS.has('throughput') ? WORKERS : []) {
      const copies: number[] = []
      const ingests: number[] = []
      await ingestRun(workers)() // warm-up
      for (let i = 0; i < RUNS; i++) {
        copies.push(await copyRun())
        ingests.push(await ingestRun(workers)())
      }
      // Every run, for the spread (stderr: the rows are the output).
      process.stderr.write(
        `ingest throughput, ${workers} worker(s): COPY records/s ${copies.map(Math.round).join(', ')}; ingest ${ingests.map(Math.round).join(', ')}\n`,
      )
      rows.push(
        row(
          `ingest records/s, ${workers} worker${workers > 1 ? 's' : ''} (${SITES} sites × ${PER_SITE}), vs raw COPY of the same rows`,
          'records/s',
          copies,
          ingests,
          { op: '>=', ratio: workers === 1 ? 0.3 : 0.1 },
        ),
      )
    }

    if (PARTS.has('catchup')) rows.push(await catchUp(td, db, client, pub, broker.url, reset))
    if (!PARTS.has('lag')) return rows

    // Lag at a steady 200 sites × 1 record/s: publish -> commit -> ack received, against a bare echo round trip.
    const lagLogs = Array.from({ length: LAG_SITES }, (_, i) => {
      const log = new FleetLog()
      log.append(bodies(LAG_SECONDS + 1, i * 1000))
      return { id: `lag-${i}`, records: log.records as JournalRecord[] }
    })
    const steady = async (topicOf: (site: string) => string): Promise<number[]> => {
      const sentAt = new Map<string, number>()
      const lags: number[] = []
      const acks = await mqtt.connectAsync(broker.url, { clientId: `bench-acks-${process.pid}-${Math.random()}` })
      await acks.subscribeAsync('outpost/+/ack', { qos: 1 })
      acks.on('message', (topic, payload) => {
        const site = topic.split('/')[1]!
        const upTo = (JSON.parse(payload.toString()) as { upTo: number }).upTo
        const at = sentAt.get(`${site}/${upTo}`)
        if (at !== undefined) {
          lags.push(performance.now() - at)
          sentAt.delete(`${site}/${upTo}`)
        }
      })
      for (let s = 0; s < LAG_SECONDS; s++) {
        const start = performance.now()
        for (let i = 0; i < LAG_SITES; i++) {
          const l = lagLogs[i]!
          const r = l.records[s]!
          // Spread over the second, as 200 independent gateways would be.
          const due = start + (i * 1000) / LAG_SITES
          const wait = due - performance.now()
          if (wait > 1) await new Promise((res) => setTimeout(res, wait))
          sentAt.set(`${l.id}/${r.seq}`, performance.now())
          pub.publish(topicOf(l.id), JSON.stringify([r]), { qos: 1 })
        }
      }
      await new Promise((r) => setTimeout(r, 2000))
      await acks.endAsync(true)
      return lags
    }
    // Baseline: an echo client answers every record message with its ack at once.
    const echo = await mqtt.connectAsync(broker.url, { clientId: `bench-echo-${process.pid}` })
    await echo.subscribeAsync('echo/+/records', { qos: 1 })
    echo.on('message', (topic, payload) => {
      const recs = JSON.parse(payload.toString()) as JournalRecord[]
      echo.publish(`outpost/${topic.split('/')[1]}/ack`, JSON.stringify({ upTo: recs[recs.length - 1]!.seq }), { qos: 1 })
    })
    const base = await steady((site) => `echo/${site}/records`)
    await echo.endAsync(true)
    await reset()
    const procs = await Promise.all([0, 1].map((i) => startWorker(td, `bench-lag-${i}`, broker.url, db.url)))
    const lags = await steady((site) => `outpost/${site}/records`)
    await Promise.all(procs.map((p) => p.kill('SIGTERM')))
    const expected = LAG_SITES * LAG_SECONDS
    if (lags.length < expected * 0.99) rows.push(notMeasured('ingest lag', 'ms', '', `only ${lags.length} of ${expected} acks seen`))
    else {
      for (const p of [50, 99]) {
        const r = row(
          `ingest lag publish -> commit -> ack, p${p}, ${LAG_SITES} sites × 1 record/s, 2 workers, vs a bare MQTT echo`,
          'ms',
          [percentile(base, p)],
          [percentile(lags, p)],
          { op: '<=', ratio: p === 50 ? 20 : 1.5 },
        )
        rows.push(r)
      }
    }
    return rows
  } finally {
    await td.run()
  }
}

/**
 * CATCHUP_SITES gateways reconnect at once, each publishing its CATCHUP_RECORDS-record backlog as the
 * uplink does (100 records a message, all within its window): seconds until every site's prefix is at
 * its head, with one worker, against a COPY of the same rows. The payloads and COPY text are built
 * site by site as strings (a million record objects would not fit the bench's heap).
 */
async function catchUp(
  td: Teardowns,
  db: { url: string },
  client: pg.Client,
  pub: MqttClient,
  brokerUrl: string,
  reset: () => Promise<unknown>,
): Promise<BenchRow> {
  const messages: { topic: string; payload: string }[] = []
  const copyParts: string[] = []
  const perSite: { topic: string; payload: string }[][] = []
  for (let i = 0; i < CATCHUP_SITES; i++) {
    const id = `c-${i}`
    const log = new FleetLog()
    log.append(bodies(CATCHUP_RECORDS, i * CATCHUP_RECORDS))
    const recs = log.records as JournalRecord[]
    const mine: { topic: string; payload: string }[] = []
    for (let k = 0; k < recs.length; k += 100) mine.push({ topic: `outpost/${id}/records`, payload: JSON.stringify(recs.slice(k, k + 100)) })
    perSite.push(mine)
    copyParts.push(recs.map((r) => copyLine(id, r)).join(''))
  }
  // Every site's first message, then every site's second, ...: as thousands of gateways reconnecting at once arrive.
  for (let k = 0; k < Math.ceil(CATCHUP_RECORDS / 100); k++) for (const m of perSite) if (m[k]) messages.push(m[k]!)
  const total = CATCHUP_SITES * CATCHUP_RECORDS
  const copyTimes: number[] = []
  const ingestTimes: number[] = []
  for (let run = 0; run < CATCHUP_RUNS; run++) {
    await client.query('TRUNCATE copy_baseline')
    let t0 = performance.now()
    await copyIn(db.url, copyParts)
    copyTimes.push((performance.now() - t0) / 1000)
    await client.query('TRUNCATE copy_baseline')

    await reset()
    await client.query('CHECKPOINT')
    const w = await startWorker(td, `bench-catchup-${run}`, brokerUrl, db.url)
    t0 = performance.now()
    await publishAll(pub, messages)
    for (;;) {
      const { rows } = await client.query<{ n: number }>('SELECT count(*)::int AS n FROM sites WHERE acked = $1', [CATCHUP_RECORDS])
      if (rows[0]!.n === CATCHUP_SITES) break
      await new Promise((r) => setTimeout(r, 100))
    }
    ingestTimes.push((performance.now() - t0) / 1000)
    await w.kill('SIGTERM')
    await reset()
  }
  process.stderr.write(
    `catch-up runs, seconds: COPY ${copyTimes.map((x) => x.toFixed(1)).join(', ')}; ingest ${ingestTimes.map((x) => x.toFixed(1)).join(', ')}\n`,
  )
  return row(
    `catch-up: ${CATCHUP_SITES} sites × ${CATCHUP_RECORDS} records (${total} records) reconnect at once, 1 worker: seconds until every site is acked, vs COPY of the same rows`,
    's',
    copyTimes,
    ingestTimes,
    { op: '<=', ratio: 1 / 0.3 },
  )
}

if (process.argv[1]?.endsWith('/bench/ingest.js')) {
  const rows = await run()
  for (const r of rows) process.stdout.write(JSON.stringify(r) + '\n')
}
