/**
 * OCPP benchmark: a 10,000-message offline backlog (100 transactions: each a
 * StartTransaction, 98 MeterValues and a StopTransaction, queued in the journal's
 * outbox on disk) drained by the charge point to an ocpp-rpc central system on
 * loopback, against a raw ocpp-rpc client sending the same 10,000 calls to the
 * same server in the same run (one call at a time, as OCPP 1.6 asks of a charge
 * point, and as ocpp-rpc's default callConcurrency does). Both end when the server
 * has answered the last message, so the ratio is the cost of the outbox: reading
 * it, a durable write per answer, and filling in each transaction's id.
 *
 * Runs alone: `node dist/bench/ocpp.js` (after `npm run build`).
 */
import { cpSync, mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { validateConfig } from '../daemon/config.js'
import type { SiteConfig } from '../core/types.js'
import { Journal } from '../daemon/journal/index.js'
import { createLogger } from '../daemon/log.js'
import { ChargePoint } from '../daemon/ocpp/chargepoint.js'
import { Outbox, type Queued } from '../daemon/ocpp/outbox.js'
import { MEASURANDS } from '../daemon/ocpp/settings.js'
import { meterSample } from '../daemon/ocpp/tables.js'
import { type BenchRow, row } from './lib.js'

const require = createRequire(import.meta.url)
const { RPCServer, RPCClient } = require('ocpp-rpc') as { RPCServer: any; RPCClient: any }

const SESSIONS = Number(process.env.OUTPOST_BENCH_OCPP_SESSIONS ?? 100)
const PER_SESSION = 100
const MESSAGES = SESSIONS * PER_SESSION
const RUNS = Number(process.env.OUTPOST_BENCH_OCPP_RUNS ?? 3)

function backlog(): Omit<Queued, 'n' | 'msgId'>[] {
  const out: Omit<Queued, 'n' | 'msgId'>[] = []
  const t0 = Date.parse('2026-11-01T00:00:00Z')
  for (let s = 0; s < SESSIONS; s++) {
    const sessionId = `bench-${s}`
    const connectorId = (s % 8) + 1
    let wh = 1_000_000 + s * 10_000
    out.push({
      action: 'StartTransaction',
      sessionId,
      connectorId,
      payload: { connectorId, idTag: `user-${s % 50}`, meterStart: wh, timestamp: new Date(t0 + s * 3_600_000).toISOString() },
    })
    for (let i = 0; i < PER_SESSION - 2; i++) {
      wh += 61.3
      out.push({
        action: 'MeterValues',
        sessionId,
        connectorId,
        payload: meterSample(
          connectorId,
          new Date(t0 + s * 3_600_000 + (i + 1) * 60_000).toISOString(),
          {
            currentA: 16,
            powerW: 3680,
            energyWh: wh,
            voltageV: 230,
          },
          MEASURANDS,
          'Sample.Periodic',
        ),
      })
    }
    out.push({
      action: 'StopTransaction',
      sessionId,
      connectorId,
      payload: {
        idTag: `user-${s % 50}`,
        meterStop: Math.round(wh),
        timestamp: new Date(t0 + s * 3_600_000 + 5_940_000).toISOString(),
        reason: 'EVDisconnected',
      },
    })
  }
  return out
}

/** A central system that counts the transaction messages it answered and says when the last came. */
async function centralSystem(): Promise<{ port: number; until(n: number): Promise<void>; count(): number; close(): Promise<void> }> {
  const server = new RPCServer({ protocols: ['ocpp1.6'], strictMode: true })
  let count = 0
  let waiter: { n: number; resolve(): void } | undefined
  let tx = 1
  const bump = () => {
    count++
    if (waiter && count >= waiter.n) waiter.resolve()
  }
  server.on('client', (c: any) => {
    c.handle('BootNotification', () => ({ status: 'Accepted', interval: 3600, currentTime: new Date().toISOString() }))
    c.handle('StatusNotification', () => ({}))
    c.handle('Heartbeat', () => ({ currentTime: new Date().toISOString() }))
    c.handle('StartTransaction', () => {
      bump()
      return { transactionId: tx++, idTagInfo: { status: 'Accepted' } }
    })
    c.handle('MeterValues', () => {
      bump()
      return {}
    })
    c.handle('StopTransaction', () => {
      bump()
      return { idTagInfo: { status: 'Accepted' } }
    })
  })
  const http = await server.listen(0, '127.0.0.1')
  return {
    port: (http.address() as AddressInfo).port,
    count: () => count,
    until: (n) =>
      new Promise<void>((resolve) => {
        if (count >= n) resolve()
        else waiter = { n, resolve }
      }),
    close: () => server.close({ force: true }),
  }
}

/** Eight meter-only outlets and the central system on loopback; the schema fills in the rest. */
function siteConfig(dir: string, port: number): SiteConfig {
  const r = validateConfig({
    site: { id: 'bench', timezone: 'UTC' },
    storage: { dir, readingSyncMs: 5000 },
    buses: [{ id: 'b', type: 'modbus-tcp', host: '127.0.0.1', port: 5020 }],
    outlets: Array.from({ length: 8 }, (_, i) => ({ id: `O${i + 1}`, bus: 'b', meter: { model: 'eastron-sdm120', unit: i + 1 }, plan: 'p' })),
    plans: [
      { id: 'p', currency: 'CAD', periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 0.1 }] },
    ],
    ocpp: { url: `ws://127.0.0.1:${port}/ocpp`, identity: 'bench', heartbeatS: 3600, meterValueSampleS: 0, reconnectMaxMs: 1000, callTimeoutS: 30 },
    logging: { level: 'error' },
  })
  if (!r.ok) throw new Error(JSON.stringify(r.problems))
  return r.config
}

const opts = (_dir: string) => ({ bootId: 'bench', clockSynced: () => true, now: () => Date.now(), compactEveryMs: 0 })

/** The charge point draining the outbox of a copy of the filled journal; messages/s. */
async function drainChargePoint(filled: string): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-bench-ocpp-'))
  try {
    cpSync(filled, join(dir, 'journal'), { recursive: true })
    const journal = await Journal.open(join(dir, 'journal'), opts(dir))
    const csms = await centralSystem()
    const cp = new ChargePoint({
      config: siteConfig(dir, csms.port),
      version: 'bench',
      journal,
      logger: createLogger('error'),
      now: () => Date.now(),
      outlets: () => [],
      command: async (cmd) => ({ id: String(cmd.id), ok: false, error: { code: 'internal', message: 'bench' } }),
      reset: () => undefined,
    })
    await cp.attach()
    const t0 = performance.now()
    cp.start()
    await csms.until(MESSAGES)
    // The last answers' durable writes are part of the drain (stop waits for them).
    await cp.stop(0)
    const total = (performance.now() - t0) / 1000
    await csms.close()
    await journal.close({ clean: true })
    return MESSAGES / total
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** A raw ocpp-rpc client sending the same calls one at a time; messages/s. */
async function drainRaw(msgs: Omit<Queued, 'n' | 'msgId'>[]): Promise<number> {
  const csms = await centralSystem()
  const client = new RPCClient({ endpoint: `ws://127.0.0.1:${csms.port}/ocpp`, identity: 'raw', protocols: ['ocpp1.6'], reconnect: false })
  const t0 = performance.now()
  await client.connect()
  await client.call('BootNotification', { chargePointVendor: 'raw', chargePointModel: 'raw' })
  const tx = new Map<string, number>()
  for (const m of msgs) {
    const params = m.action === 'StartTransaction' ? m.payload : { ...m.payload, transactionId: tx.get(m.sessionId) }
    const res = await client.call(m.action, params)
    if (m.action === 'StartTransaction') tx.set(m.sessionId, res.transactionId)
  }
  await csms.until(MESSAGES)
  const s = (performance.now() - t0) / 1000
  await client.close({ force: true })
  await csms.close()
  return MESSAGES / s
}

export async function run(): Promise<BenchRow[]> {
  const base = mkdtempSync(join(tmpdir(), 'outpost-bench-ocpp-fill-'))
  try {
    const filled = join(base, 'journal')
    const journal = await Journal.open(filled, opts(base))
    const outbox = await Outbox.open(journal)
    const msgs = backlog()
    for (let i = 0; i < msgs.length; i += 1000) await outbox.enqueue(msgs.slice(i, i + 1000))
    await journal.close({ clean: true })
    const raw: number[] = []
    const ours: number[] = []
    // Interleaved, after one warm-up of each, so a busy spell of the machine hits both.
    await drainRaw(msgs)
    await drainChargePoint(filled)
    for (let i = 0; i < RUNS; i++) {
      raw.push(await drainRaw(msgs))
      ours.push(await drainChargePoint(filled))
    }
    const r = row(
      `charge point draining a ${MESSAGES}-message offline backlog (durable outbox) vs a raw ocpp-rpc client sending the same calls`,
      'msgs/s',
      raw,
      ours,
      {
        op: '>=',
        ratio: 0.7,
      },
    )
    return [r]
  } finally {
    rmSync(base, { recursive: true, force: true })
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  run().then(
    (rows) => process.stdout.write(JSON.stringify(rows, null, 2) + '\n'),
    (e: unknown) => {
      process.stderr.write(String((e as Error).stack ?? e) + '\n')
      process.exitCode = 1
    },
  )
}
