/**
 * The ready gate and guarded listeners in process, on a real site: the Service
 * (Daemon + local API, journal on disk) against the in-process Modbus TCP
 * simulator (test/helpers/api-kit.ts).
 *
 * - A start sent through the local API the moment it listens is applied (the daemon
 *   read every outlet before it went on), not refused 409 outlet-not-ready.
 * - A daemon event listener that throws does not turn a committed command into
 *   `internal`: the result is the engine's, the other listeners see every event,
 *   the relay closes, and the throw is logged once, not once per event.
 */
import t from 'tap'
import { startApiSite } from './helpers/api-kit.js'
import { waitFor } from './helpers/e2e-kit.js'
import type { CommandResult, JournalRecord, OutletStatus } from '../core/types.js'

// A poll far longer than the test's first request: only the boot read can have read the meters.
const SLOW_POLL = { pollMs: 20_000, graceSeconds: 30, minChargeA: 0.5, autoStartA: 0.5, noCurrentA: 0.1, noCurrentHoldMs: 750, meterFaultMs: 60_000 }

t.test('a start through the local API right after it listens is applied, not 409', async (t) => {
  const site = await startApiSite(t, { config: { sessions: SLOW_POLL } })
  // No site.ready(): this is what an app at the bay does right after a reboot.
  t.match(await site.command({ action: 'set-wallet', userId: 'u1', currency: 'CAD', balance: 10_000 }), { ok: true }, 'wallet topped up')
  const res = await site.post('/api/outlets/A1/start', { userId: 'u1' })
  t.equal(res.status, 200, `started: ${JSON.stringify(res.body)}`)
  t.match(res.body, { ok: true, result: { sessionId: String } })
  t.ok(
    Object.values(site.daemon.engineState.outlets).every((e) => e.fresh),
    'every outlet was read before the API listened',
  )
})

t.test('a throwing record/status/result listener: the result stays ok, the others still hear, the relay closes', async (t) => {
  const site = await startApiSite(t)
  await site.ready()
  const { daemon } = site
  const seen = { record: [] as JournalRecord[], status: [] as OutletStatus[], result: [] as CommandResult[] }
  // The throwing ones first, so a throw that escaped would skip the recorders after them.
  daemon.on('record', () => {
    throw new Error('record listener broke')
  })
  daemon.on('status', () => {
    throw new Error('status listener broke')
  })
  daemon.on('result', () => {
    throw new Error('result listener broke')
  })
  daemon.on('record', (r) => seen.record.push(r))
  daemon.on('status', (s) => seen.status.push(s))
  daemon.on('result', (r) => seen.result.push(r))

  t.match(
    await site.command({ action: 'set-wallet', userId: 'u1', currency: 'CAD', balance: 10_000 }),
    { ok: true },
    'set-wallet ok despite the throwing listeners',
  )
  site.sim.plug(1, { maxA: 10 })
  const started = await site.command({ action: 'start', outlet: 'A1', userId: 'u1' })
  t.match(started, { ok: true, result: { sessionId: String } }, `start is the engine's ok: ${JSON.stringify(started)}`)
  const sessionId = (started as { result: { sessionId: string } }).result.sessionId
  t.ok(
    seen.result.some((r) => r.id === started.id && r.ok),
    'the other result listener saw the result',
  )
  t.ok(
    seen.record.some((r) => r.type === 'session.started' && r.sessionId === sessionId),
    'the other record listener saw session.started',
  )
  t.ok(
    seen.status.some((s) => s.outlet === 'A1' && s.sessionId === sessionId),
    'the other status listener saw the session',
  )
  await waitFor(() => site.sim.outlets()[0]!.coilClosed, 'the relay of A1 closes', 30_000)
  t.equal(daemon.haltedBy, undefined, 'the daemon did not halt')
  // The journal holds the command's result as the engine gave it.
  t.match(await daemon.records!.commandResult(started.id), { id: started.id, ok: true })

  // Readings keep coming (more record/status events, all throwing): one log line per listener, not one per event.
  const before = seen.status.length
  await waitFor(() => seen.status.length >= before + 3, 'more statuses while charging', 30_000)
  const threw = site.logs.filter((l) => l.msg === 'a daemon event listener threw; the others still run')
  const byEvent = (e: string) => threw.filter((l) => l.event === e && l.repeats === undefined).length
  t.equal(byEvent('record'), 1, 'the record listener failure logged once')
  t.equal(byEvent('status'), 1, 'the status listener failure logged once')
  t.equal(byEvent('result'), 1, 'the result listener failure logged once')
  t.match(
    threw.find((l) => l.event === 'status'),
    { err: 'status listener broke' },
    'the log names the error',
  )
  t.equal(site.logs.filter((l) => l.level === 'warn' && String(l.msg).includes('engine refused')).length, 0, 'no engine refusals')
})
