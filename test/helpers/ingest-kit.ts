import { join } from 'node:path'
import mqtt, { type MqttClient } from 'mqtt'
import pg from 'pg'
import { packageRoot } from '../../core/paths.js'
import { type Proc, startProc } from './e2e-kit.js'
import type { JournalRecord } from '../../core/types.js'
import { verifyChain } from '../../daemon/uplink/chain.js'

/** The built `outpost` bin (package.json `bin`): it routes `ingest` to the cloud side and every other word to the gateway's CLI. */
export const CLI = join(packageRoot, 'dist', 'bin', 'outpost.js')

interface Teardownable {
  teardown(fn: () => unknown): void
}

export interface WorkerProc extends Proc {
  name: string
}

export async function waitFor(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await cond()) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** Starts `outpost ingest` (with `nodeArgs` before the bin: the bench gives the bin's own) and waits until it has subscribed. */
export async function startWorker(
  t: Teardownable,
  name: string,
  brokerUrl: string,
  dbUrl: string,
  extra: string[] = [],
  nodeArgs: string[] = [],
): Promise<WorkerProc> {
  const w: WorkerProc = {
    name,
    ...startProc(t, process.execPath, [
      ...nodeArgs,
      CLI,
      'ingest',
      '--url',
      brokerUrl,
      '--db',
      dbUrl,
      '--worker',
      name,
      '--gap-wait',
      '1000',
      ...extra,
    ]),
  }
  // A test process that dies without its teardown takes its workers with it.
  const onExit = () => void (w.running() && w.proc.kill('SIGKILL'))
  process.once('exit', onExit)
  void w.exited.then(() => process.off('exit', onExit))
  await waitFor(() => {
    if (!w.running()) throw new Error(`worker ${name} exited at start:\n${w.err.join('\n')}`)
    return w.err.some((l) => l.includes('"msg":"subscribed"'))
  }, `worker ${name} subscribed`)
  return w
}

/**
 * Watches every P/ack on the broker and checks, after each, that the database's
 * verified prefix of that site is at least the ack: an ack may only follow the commit.
 */
export async function ackWatch(t: Teardownable, brokerUrl: string, dbUrl: string, prefix = 'outpost') {
  const client: MqttClient = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 250, clientId: `ack-watch-${process.pid}` })
  // A pool: the checks go on across a database restart (the fleet test restarts it).
  const db = new pg.Pool({ connectionString: dbUrl, max: 1 })
  db.on('error', () => undefined)
  const pending: { site: string; upTo: number }[] = []
  const violations: string[] = []
  let seen = 0
  const sub = () => client.subscribeAsync(`${prefix}/+/ack`, { qos: 1 })
  client.on('connect', () => void sub().catch(() => undefined))
  await sub()
  client.on('message', (topic, payload) => {
    const site = topic.split('/')[1]!
    const upTo = (JSON.parse(payload.toString()) as { upTo: number }).upTo
    pending.push({ site, upTo })
  })
  let busy = false
  const timer = setInterval(async () => {
    if (busy || pending.length === 0) return
    busy = true
    const batch = pending.splice(0)
    try {
      const { rows } = await db.query<{ site_id: string; acked: string }>('SELECT site_id, acked FROM sites WHERE site_id = ANY($1)', [
        [...new Set(batch.map((b) => b.site))],
      ])
      const acked = new Map(rows.map((r) => [r.site_id, Number(r.acked)]))
      for (const b of batch) {
        seen++
        if ((acked.get(b.site) ?? 0) < b.upTo) violations.push(`${b.site}: ack ${b.upTo} ahead of the database's ${acked.get(b.site) ?? 0}`)
      }
    } catch {
      // The database is away (a restart): these acks are checked once it is back (the prefix never goes back).
      pending.unshift(...batch)
    } finally {
      busy = false
    }
  }, 100)
  const stop = async () => {
    clearInterval(timer)
    await client.endAsync(true).catch(() => undefined)
    await db.end().catch(() => undefined)
  }
  t.teardown(stop)
  return {
    violations,
    seen: () => seen,
    /** Waits until every ack received so far has been checked. */
    drained: () => waitFor(() => pending.length === 0 && !busy, 'ack checks drained'),
    client,
  }
}

export interface SiteTruth {
  id: string
  records: readonly JournalRecord[]
}

/**
 * What must hold once the fleet has settled: every record stored exactly once (the
 * sites' own seqs and hashes, nothing else), every chain re-verified from the stored
 * bodies alone, each prefix at the head, no fork or break, and the sessions table
 * equal to the session.ended records.
 */
export async function invariants(db: pg.ClientBase, sites: readonly SiteTruth[]): Promise<string[]> {
  const problems: string[] = []
  const ids = sites.map((s) => s.id)
  const rows = (
    await db.query<{ site_id: string; seq: string; hash: string; body: JournalRecord }>(
      'SELECT site_id, seq, hash, body FROM records WHERE site_id = ANY($1) ORDER BY site_id, seq',
      [ids],
    )
  ).rows
  const bySite = new Map<string, typeof rows>()
  for (const r of rows) bySite.set(r.site_id, [...(bySite.get(r.site_id) ?? []), r])
  const siteRows = new Map(
    (await db.query('SELECT site_id, acked, head, chain_break, forks FROM sites WHERE site_id = ANY($1)', [ids])).rows.map((r) => [r.site_id, r]),
  )
  const sessions = new Set(
    (
      await db.query<{ site_id: string; session_id: string; seq: string }>('SELECT site_id, session_id, seq FROM sessions WHERE site_id = ANY($1)', [
        ids,
      ])
    ).rows.map((r) => `${r.site_id}/${r.session_id}/${r.seq}`),
  )
  const expectedSessions = new Set<string>()
  for (const s of sites) {
    const got = bySite.get(s.id) ?? []
    if (got.length !== s.records.length) problems.push(`${s.id}: ${got.length} records stored, the site has ${s.records.length}`)
    for (let i = 0; i < Math.min(got.length, s.records.length); i++) {
      if (Number(got[i]!.seq) !== i + 1 || got[i]!.hash !== s.records[i]!.hash) {
        problems.push(`${s.id}: stored seq ${got[i]!.seq} is not the site's record ${i + 1}`)
        break
      }
    }
    const v = verifyChain(got.map((r) => r.body))
    if (!v.ok) problems.push(`${s.id}: the stored chain does not verify: ${v.break.message}`)
    const row = siteRows.get(s.id)
    if (!row) problems.push(`${s.id}: no sites row`)
    else {
      if (Number(row.acked) !== s.records.length) problems.push(`${s.id}: acked ${row.acked}, head ${s.records.length}`)
      if (row.chain_break) problems.push(`${s.id}: chain break ${JSON.stringify(row.chain_break)}`)
      if (row.forks !== 0) problems.push(`${s.id}: ${row.forks} forks`)
    }
    for (const r of s.records) if (r.type === 'session.ended') expectedSessions.add(`${s.id}/${r.sessionId}/${r.seq}`)
  }
  for (const k of expectedSessions) if (!sessions.has(k)) problems.push(`session missing from the sessions table: ${k}`)
  for (const k of sessions) if (!expectedSessions.has(k)) problems.push(`sessions table holds what no session.ended says: ${k}`)
  return problems
}
