/**
 * Uplink benchmark: drain a 100,000-record backlog to a local mosquitto, with
 * the reconciling consumer (`outpost reconcile`, a separate process) writing,
 * fsyncing and acking, against a raw mqtt.js QoS 1 publish loop of the same
 * payloads (the same JSON batches, the same bound on messages awaiting PUBACK,
 * no end-to-end flow control) to the same consumer in the same run. Both end
 * when the consumer acks the last record, so the ratio is the cost of the
 * uplink's window/ack protocol and of reading the journal page by page. Also
 * the uplink process's heap during the drain, against the raw loop's.
 *
 * The backlog is a real journal on disk (filled once, copied per drain), so
 * reading it page by page is part of the uplink's figure.
 *
 * Runs alone: `node dist/bench/uplink.js` (after `npm run build`).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { cpSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import mqtt from 'mqtt'
import { row, repeat, type BenchRow } from './lib.js'
import { Uplink } from '../daemon/uplink/uplink.js'
import { packagePath } from '../core/paths.js'
import { bodies } from '../test/helpers/memory-log.js'
import { Journal } from '../daemon/journal/index.js'
import { startMosquitto, type Broker } from '../test/helpers/mosquitto.js'
import type { JournalRecord, RecordLog } from '../core/types.js'

const RECORDS = Number(process.env.OUTPOST_BENCH_UPLINK_RECORDS ?? 100_000)
const BATCH = 100
/** A wider window, to show how much of the gap to the raw loop is round-trip stalls on a loaded machine. */
const WIDE_WINDOW = 2_000 // the former default, for comparison
const WINDOW = Number(process.env.OUTPOST_BENCH_UPLINK_WINDOW ?? 10000) // the schema default
const RUNS = Number(process.env.OUTPOST_BENCH_UPLINK_RUNS ?? 3)

interface Measured {
  recordsPerS: number
  /** Peak heap above the level just before the drain, MB. */
  heapMB: number
}

function sampler(): { stop(): number } {
  const base = process.memoryUsage().heapUsed
  let peak = base
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().heapUsed)
  }, 20)
  return {
    stop() {
      clearInterval(timer)
      peak = Math.max(peak, process.memoryUsage().heapUsed)
      return (peak - base) / 1e6
    },
  }
}

/** A gc() even without --expose-gc, so the memory figure is live data, not garbage waiting for collection. */
function gcFunction(): () => void {
  setFlagsFromString('--expose-gc')
  return runInNewContext('gc') as () => void
}

/** Peak live heap (after a full GC, sampled every 500 ms) above the level just before, MB. */
function liveSampler(): { stop(): number } {
  const gc = gcFunction()
  gc()
  const base = process.memoryUsage().heapUsed
  let peak = base
  const timer = setInterval(() => {
    gc()
    peak = Math.max(peak, process.memoryUsage().heapUsed)
  }, 500)
  return {
    stop() {
      clearInterval(timer)
      return (peak - base) / 1e6
    },
  }
}

function waitUntil(cond: () => boolean, what: string | (() => string), timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (cond()) return resolve()
      if (Date.now() > deadline) return reject(new Error(`bench: timed out waiting for ${typeof what === 'string' ? what : what()}`))
      setTimeout(tick, 5)
    }
    tick()
  })
}

function exited(c: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => (c.exitCode !== null ? resolve(c.exitCode) : c.once('exit', (code) => resolve(code))))
}

/** `outpost reconcile` in its own process, connected: verifies, writes, fsyncs and acks what it receives. */
let lastConsumerLog = ''
async function startConsumer(broker: Broker, siteId: string, dir: string): Promise<ChildProcess> {
  const consumer = spawn(
    process.execPath,
    [packagePath('dist', 'daemon', 'cli.js'), 'reconcile', '--url', broker.url, '--site', siteId, '--out', join(dir, `${siteId}.jsonl`)],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  )
  let stderr = ''
  consumer.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString()
    lastConsumerLog = stderr.slice(-2000)
  })
  try {
    // Subscribed, not merely connected: the raw loop has no way to recover records published before that.
    await waitUntil(() => stderr.includes('"msg":"subscribed"'), 'the consumer to subscribe', 30_000)
  } catch (err) {
    consumer.kill('SIGKILL')
    throw err
  }
  return consumer
}

async function stopConsumer(c: ChildProcess): Promise<void> {
  c.kill('SIGTERM')
  await exited(c)
}

/** The uplink draining `log` to the consumer: done when the journal's ack watermark reaches the head. */
async function drainWithUplink(broker: Broker, log: RecordLog, dir: string, run: number, live = false, windowRecords = WINDOW): Promise<Measured> {
  const siteId = `up${run}`
  const consumer = await startConsumer(broker, siteId, dir)
  try {
    const uplink = new Uplink({
      config: { url: broker.url, topicPrefix: 'outpost', keepaliveS: 30, windowRecords, batchRecords: BATCH, reconnectMaxMs: 30_000 },
      siteId,
      log,
      version: 'bench',
      bootId: 'bench',
      onCommand: async () => ({ id: '', ok: true }),
      now: () => Date.now(),
    })
    const mem = live ? liveSampler() : sampler()
    const t0 = process.hrtime.bigint()
    uplink.start()
    await waitUntil(
      () => log.acked() === log.head(),
      () => `the backlog to be acked (site ${siteId}; acked ${log.acked()} of ${log.head()}, uplink ${JSON.stringify(uplink.state())})`,
    )
    const s = Number(process.hrtime.bigint() - t0) / 1e9
    const heapMB = mem.stop()
    await uplink.stop()
    return { recordsPerS: log.head() / s, heapMB }
  } finally {
    await stopConsumer(consumer)
  }
}

/**
 * The baseline: the same batches published by a bare mqtt.js QoS 1 loop (at most
 * the same number of messages awaiting PUBACK, no end-to-end flow control) to the
 * same consumer; done when the consumer acks the last seq.
 */
async function drainRaw(broker: Broker, payloads: string[], dir: string, run: number): Promise<Measured> {
  const siteId = `raw${run}`
  const consumer = await startConsumer(broker, siteId, dir)
  const client = await mqtt.connectAsync(broker.url, { clientId: `raw-pub-${run}`, reconnectPeriod: 0 })
  try {
    let acked = 0
    client.on('message', (_t, p) => (acked = Math.max(acked, (JSON.parse(p.toString()) as { upTo: number }).upTo)))
    await client.subscribeAsync(`outpost/${siteId}/ack`, { qos: 1 })
    const inFlightMax = Math.ceil(WINDOW / BATCH)
    const topic = `outpost/${siteId}/records`
    const mem = sampler()
    const t0 = process.hrtime.bigint()
    await new Promise<void>((resolve, reject) => {
      let next = 0
      let inFlight = 0
      const pump = () => {
        while (inFlight < inFlightMax && next < payloads.length) {
          inFlight++
          client.publish(topic, payloads[next++]!, { qos: 1 }, (err) => {
            if (err) return reject(err)
            inFlight--
            if (next === payloads.length && inFlight === 0) resolve()
            else pump()
          })
        }
      }
      pump()
    })
    await waitUntil(
      () => acked === RECORDS,
      () => `the consumer to ack the last record (acked ${acked} of ${RECORDS}); consumer log: ${lastConsumerLog}`,
    )
    const s = Number(process.hrtime.bigint() - t0) / 1e9
    const heapMB = mem.stop()
    return { recordsPerS: RECORDS / s, heapMB }
  } finally {
    await client.endAsync()
    await stopConsumer(consumer)
  }
}

export async function run(): Promise<BenchRow[]> {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-bench-uplink-'))
  // Unlimited per-client queue: the raw loop has no end-to-end flow control, and with mosquitto's default
  // (1000 queued messages) a consumer that falls behind loses messages and the baseline never completes.
  const broker = await startMosquitto(undefined, { extraConfig: ['max_queued_messages 0'] })
  try {
    // The backlog is a real journal (LevelDB on disk), filled once and copied for every drain.
    const seed = join(dir, 'seed')
    const openJournal = (at: string) => Journal.open(at, { bootId: 'bench', clockSynced: () => true, now: () => Date.now(), compactEveryMs: 0 })
    const seedJournal = await openJournal(seed)
    for (let i = 0; i < RECORDS; i += 1000) await seedJournal.commit({ records: bodies(Math.min(1000, RECORDS - i), i) })
    let backlogBytes = 0
    for (let s = 1; s <= RECORDS; s += 1000) backlogBytes += Buffer.byteLength(JSON.stringify(await seedJournal.read(s, 1000)))
    await seedJournal.close({ clean: true })
    const backlogMB = backlogBytes / 1e6
    // The raw loop's payloads: the very batches the uplink publishes, built before each raw run and
    // dropped after it, so the uplink's runs do not share the process with 75 MB of strings (major GCs).
    const makePayloads = async (): Promise<string[]> => {
      const j = await openJournal(seed)
      const out: string[] = []
      try {
        for (let s = 1; s <= RECORDS; s += 1000) {
          const page: JournalRecord[] = await j.read(s, 1000)
          for (let i = 0; i < page.length; i += BATCH) out.push(JSON.stringify(page.slice(i, i + BATCH)))
        }
      } finally {
        await j.close({ clean: true })
      }
      return out
    }
    let copies = 0
    const withBacklog = async <T>(fn: (log: Journal) => Promise<T>): Promise<T> => {
      const at = join(dir, `copy${copies++}`)
      cpSync(seed, at, { recursive: true })
      const journal = await openJournal(at)
      try {
        return await fn(journal)
      } finally {
        await journal.close({ clean: true })
        rmSync(at, { recursive: true, force: true })
      }
    }
    // Bounded memory: the uplink's live heap while draining, against the size of the backlog it drains.
    const liveMB = [(await withBacklog((log) => drainWithUplink(broker, log, dir, 100, true))).heapMB]
    let runNo = 0
    const uplinkRuns: Measured[] = []
    const wideRuns: Measured[] = []
    const rawRuns: Measured[] = []
    // Alternate the two so drift on a shared machine hits both alike; one warm-up each.
    await repeat(RUNS, 1, async () => {
      const n = runNo++
      rawRuns.push(await drainRaw(broker, await makePayloads(), dir, n))
      uplinkRuns.push(await withBacklog((log) => drainWithUplink(broker, log, dir, n)))
      wideRuns.push(await withBacklog((log) => drainWithUplink(broker, log, dir, 1000 + n, false, WIDE_WINDOW)))
      return 0
    })
    const w = wideRuns.slice(1)
    const u = uplinkRuns.slice(1) // drop the warm-up
    const r = rawRuns.slice(1)
    const rows = [
      row(
        `uplink drain of a ${RECORDS}-record backlog to a fsyncing, acking consumer (vs raw QoS 1 loop, same consumer)`,
        'records/s',
        r.map((x) => x.recordsPerS),
        u.map((x) => x.recordsPerS),
        { op: '>=', ratio: 0.7 },
      ),
      row(
        `the same with windowRecords ${WIDE_WINDOW} (default ${WINDOW})`,
        'records/s',
        r.map((x) => x.recordsPerS),
        w.map((x) => x.recordsPerS),
        { op: '>=', ratio: 0.7 },
      ),
      row(`uplink live heap growth while draining ${RECORDS} records (vs the backlog's size as JSON)`, 'MB', [backlogMB], liveMB, {
        op: '<=',
        ratio: 0.2,
      }),
    ]
    return rows
  } finally {
    await broker.stop()
    rmSync(dir, { recursive: true, force: true })
  }
}

if (process.argv[1]?.endsWith('/bench/uplink.js')) {
  const rows = await run()
  for (const r of rows) process.stdout.write(JSON.stringify(r) + '\n')
}
