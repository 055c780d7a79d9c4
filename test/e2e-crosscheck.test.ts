/**
 * The wiring cross-check, end to end: the built daemon as a child against the pymodbus site
 * peer wired wrong on purpose — the contactors of E1 and E2 swapped, E3's coil wired to
 * nothing, E4's socket on L2 while the config says L1, E6's current sensor turned round —
 * with a feeder meter that sees each phase, mosquitto and the reconciling consumer as the cloud.
 *
 * Through the local API: who may run it, the confirmation, no check with a session open, no
 * start while it runs, the report (matrix, findings, meter serials, who and when) kept in
 * storage.dir, the fixes applied with one request each (the swap rebinds the relays at once,
 * without a restart), the site passing once the electrician has mended the rest, and a
 * session on a mended outlet that bills what its own meter counts.
 */
import t from 'tap'
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { JournalRecord } from '../core/types.js'
import { freePort, startMosquitto } from './helpers/mosquitto.js'
import { keepScreenshot, launchChromium } from './helpers/browser.js'
import { isEnded, startCloud, startDaemon, startPeer, startSession, tempDir, waitFor, writeSiteConfig } from './helpers/e2e-kit.js'

const ADMIN = 'admin-token-0123456789'
const TOKENS = [
  { name: 'ian', role: 'installer', token: 'installer-token-0123456789' },
  { name: 'vic', role: 'viewer', token: 'viewer-token-0123456789' },
]
const FEEDER = 50
/** The page's document, inside page functions. */
declare const document: any
const tokenOf = (role: string): string => (role === 'admin' ? ADMIN : TOKENS.find((x) => x.role === role)!.token)

t.test('a site wired wrong: the cross-check finds each fault, its fixes apply without a restart, the mended site passes', async (t) => {
  const work = tempDir(t, 'outpost-e2e-crosscheck-')
  const broker = await startMosquitto(t)
  const peer = await startPeer(t, { outlets: 6, feeder: FEEDER, phases: [1, 1, 1, 2, 1, 1], wiring: { 1: 2, 2: 1, 3: 0 }, reversed: [6] })
  const port = await freePort()
  const file = writeSiteConfig({
    dir: work,
    port: peer.port,
    outlets: 6,
    brokerUrl: broker.url,
    outlet: Object.fromEntries([1, 2, 3, 4, 5, 6].map((n) => [n, { circuit: 'main', phase: 'L1', ratingA: 16 }])),
    extra: { api: { listen: `127.0.0.1:${port}`, token: ADMIN, tokens: TOKENS }, logging: { level: 'info' } },
  })
  const config = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
  config.circuits = [{ id: 'main', maxA: 63, slotS: 5, failsafeA: 16, meter: { bus: 'site', model: 'eastron-sdm630', unit: FEEDER } }]
  writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`)
  const cloud = await startCloud(t, broker.url, work)
  const daemon = startDaemon(t, file)
  const base = `http://127.0.0.1:${port}`
  const api = async (path: string, o: { role?: string; method?: string; body?: unknown; ifMatch?: string } = {}) => {
    const headers: Record<string, string> = { authorization: `Bearer ${tokenOf(o.role ?? 'admin')}` }
    if (o.body !== undefined) headers['content-type'] = 'application/json'
    if (o.ifMatch !== undefined) headers['if-match'] = `"${o.ifMatch}"`
    const res = await fetch(base + path, {
      method: o.method ?? 'GET',
      headers,
      ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}),
    })
    return { status: res.status, body: (await res.json()) as any, etag: res.headers.get('etag') }
  }
  await waitFor(async () => (await api('/api/status').catch(() => ({ status: 0 }))).status === 200, 'the API', 60_000)
  await waitFor(async () => (await api('/api/outlets')).body.every((s: { state: string }) => s.state === 'off'), 'every outlet read and idle')
  let status = await api('/api/status')
  t.same(status.body.crossCheck, { running: null, passed: null, last: null }, 'status: the site has never passed a cross-check')

  // No check with a session open: it would switch the relays under a paying car.
  const s5 = await startSession(t, peer, cloud, { outlet: 5, userId: 'ann', amps: 10, wallet: 5000 })
  let r = await api('/api/crosscheck', { method: 'POST', role: 'installer', body: { confirm: true } })
  t.equal(r.status, 409, 'refused while E5 charges')
  t.equal(r.body.error.code, 'cross-check-refused')
  t.match(r.body.error.message, /sessions are open on E5/)
  t.notOk(
    (await peer.state()).some((o) => o.coil && o.outlet !== 5),
    'nothing was switched',
  )
  r = await api('/api/outlets/E5/stop', { method: 'POST', body: { by: 'user' } })
  t.equal(r.status, 200, `E5 stopped ${JSON.stringify(r.body)}`)
  const e5 = (await cloud.waitRecord(isEnded(s5.sessionId), 'E5 ended')) as Extract<JournalRecord, { type: 'session.ended' }>
  t.equal(e5.reason, 'user-stopped')

  // A load in every socket: the check needs current to see which meter a relay moves.
  for (const n of [1, 2, 3, 4, 5, 6]) await peer.plug(n, 10)

  r = await api('/api/crosscheck', { method: 'POST', role: 'viewer', body: { confirm: true } })
  t.equal(r.status, 403, 'the viewer may not run it')
  r = await api('/api/crosscheck', { method: 'POST', role: 'installer', body: {} })
  t.equal(r.status, 400, 'not without the confirmation that loads may be switched')
  t.equal(r.body.error.code, 'confirm-required')
  t.equal(r.body.error.pointer, '/confirm', 'the error at its field')
  r = await api('/api/crosscheck', { method: 'POST', role: 'installer', body: { confirm: true, now: 1 } })
  t.equal(r.status, 400, 'an unknown field is refused')
  t.match(r.body.error.message, /body\/now/)
  t.notOk(
    (await peer.state()).some((o) => o.coil),
    'refusals switched nothing',
  )

  r = await api('/api/crosscheck', { method: 'POST', role: 'installer', body: { confirm: true } })
  t.equal(r.status, 202, 'the installer begins the check')
  t.equal(r.body.running.who, 'installer:ian')
  // While it runs: no start, every outlet unavailable, one check at a time, one relay closed at a time.
  r = await api('/api/outlets/E5/start', { method: 'POST', body: { userId: 'ann' } })
  t.equal(r.status, 409, 'a start is refused while the relays are switched')
  t.equal(r.body.error.code, 'cross-check-running')
  t.ok(
    (await api('/api/outlets')).body.every((s: { state: string }) => s.state === 'unavailable'),
    'every outlet shows unavailable',
  )
  r = await api('/api/crosscheck', { method: 'POST', role: 'installer', body: { confirm: true } })
  t.equal(r.status, 409, 'a second check is refused')
  let most = 0
  const report = await waitFor(
    async () => {
      most = Math.max(most, (await peer.state()).filter((o) => o.coil).length)
      const v = await api('/api/crosscheck')
      return v.body.running === null && v.body.last ? v.body.last : undefined
    },
    'the check ends',
    120_000,
  )
  t.equal(most, 1, 'never more than one relay closed at once')
  t.notOk(
    (await peer.state()).some((o) => o.coil),
    'every relay open after the check',
  )

  t.equal(report.passed, false, 'the site as wired does not pass')
  t.equal(report.who, 'installer:ian')
  t.same(report.relays, ['E1', 'E2', 'E3', 'E4', 'E5', 'E6'])
  const cell = (relay: string, meter: string) => report.cells[report.relays.indexOf(relay)][report.meters.indexOf(meter)]
  t.ok(cell('E1', 'E2').moved && !cell('E1', 'E1').moved, 'matrix: E1’s relay moves E2’s meter, not its own')
  t.ok(cell('E5', 'E5').moved && cell('E5', 'E5').currentA > 9, 'matrix: E5 on the diagonal, with the current it drew')
  t.ok(
    report.cells[report.relays.indexOf('E3')].every((c: { moved: boolean }) => !c.moved),
    'matrix: E3’s relay moves nothing',
  )
  const byKind = (k: string) => report.findings.map((f: any, i: number) => ({ ...f, i })).filter((f: any) => f.kind === k)
  const swap = byKind('swapped')
  t.equal(swap.length, 1, 'one swapped pair')
  t.same(swap[0].outlets, ['E1', 'E2'])
  t.same(
    swap[0].fix.patch.map((p: any) => [p.op, p.path, p.value.coil]),
    [
      ['test', '/outlets/0/relay', 0],
      ['test', '/outlets/1/relay', 1],
      ['replace', '/outlets/0/relay', 1],
      ['replace', '/outlets/1/relay', 0],
    ],
  )
  t.same(
    byKind('dead').map((f: any) => f.outlets),
    [['E3']],
    'E3: a dead relay or no load',
  )
  const phase = byKind('wrong-phase')
  t.same(
    phase.map((f: any) => f.outlets),
    [['E4']],
    'E4 on another phase',
  )
  t.same(phase[0].fix.patch.at(-1), { op: 'replace', path: '/outlets/3/phase', value: 'L2' }, 'the fix: E4 on L2')
  t.same(
    byKind('reversed').map((f: any) => f.outlets),
    [['E6']],
    'E6 reversed power',
  )
  t.same(
    byKind('ok').map((f: any) => f.outlets),
    [['E5']],
    'E5 as configured',
  )
  t.same(Object.keys(report.meterSerials).sort(), ['E1', 'E2', 'E3', 'E4', 'E5', 'E6'], 'each meter identified in the report')
  t.ok(report.startedAt <= report.finishedAt && report.steps.length === 6)
  const kept = readdirSync(join(work, 'journal', 'crosscheck'))
  t.same(kept, [`${report.id}.json`], 'the report is kept in storage.dir/crosscheck')
  t.same(JSON.parse(readFileSync(join(work, 'journal', 'crosscheck', kept[0]!), 'utf8')).findings, report.findings)
  t.equal((await api(`/api/crosscheck/reports/${report.id}`, { role: 'viewer' })).body.id, report.id, 'the viewer reads the report')
  t.notOk(
    cloud.records().some((x: JournalRecord) => x.type === 'session.started' && Date.parse(x.ts) >= report.startedAt),
    'no session started during the check',
  )

  // The page, signed in as the installer: the state, the matrix, the findings in words; the phase fixed with one click.
  const browser = await launchChromium(t)
  const page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage()
  const errors: string[] = []
  page.on('pageerror', (e) => errors.push(e.message))
  await page.goto(base)
  await page.fill('#token', tokenOf('installer'))
  await Promise.all([page.waitForURL(`${base}/`), page.click('button[type=submit]')])
  await page.waitForSelector('#cc-report .cc-findings li')
  t.match(await page.textContent('#cc-state'), /Not passed/)
  const listed = await page.$$eval('#cc-report .cc-findings li', (lis) => lis.map((li) => li.getAttribute('data-kind')))
  t.same(
    listed,
    report.findings.map((f: { kind: string }) => f.kind),
    'every finding listed, in the report’s order',
  )
  t.equal(await page.$$eval('.cc-matrix td.moved', (tds) => tds.length), 5, 'five cells moved: E1→E2, E2→E1, E4, E5, E6')
  const shot = join(work, 'crosscheck-report.png')
  await page.screenshot({ path: shot, fullPage: true })
  keepScreenshot(shot)
  await page.click(`#cc-report button[data-finding="${phase[0].i}"]`)
  await page.waitForFunction(() => /^Fixed/.test(document.querySelector('#cc-report button[disabled]')?.textContent ?? ''))
  t.equal(JSON.parse(readFileSync(file, 'utf8')).outlets[3].phase, 'L2', 'the page’s fix is in the file')
  t.same(errors, [], 'no script error on the page')

  // The swap through the API: refused to the viewer, without If-Match, for a finding without a fix; then applied at once.
  const cfg = await api('/api/config')
  const fixBody = { report: report.id, findings: [swap[0].i] }
  r = await api('/api/crosscheck/fix', { method: 'POST', role: 'viewer', body: fixBody, ifMatch: cfg.body.version })
  t.equal(r.status, 403)
  r = await api('/api/crosscheck/fix', { method: 'POST', role: 'installer', body: fixBody })
  t.equal(r.status, 428, `a fix is a config save: it needs If-Match (${JSON.stringify(r.body)})`)
  r = await api('/api/crosscheck/fix', {
    method: 'POST',
    role: 'installer',
    body: { report: report.id, findings: [byKind('dead')[0].i] },
    ifMatch: cfg.body.version,
  })
  t.equal(r.status, 400)
  t.equal(r.body.error.code, 'no-fix', 'a dead relay has no config fix')
  r = await api('/api/crosscheck/fix', { method: 'POST', role: 'installer', body: fixBody, ifMatch: cfg.body.version })
  t.equal(r.status, 200, `the swap applied, without a restart (${JSON.stringify(r.body)})`)
  t.same(r.body.changed, ['/outlets/0/relay/coil', '/outlets/1/relay/coil'])
  const applied = await cloud.waitRecord((x) => x.type === 'config.applied' && x.configHash === r.body.version, 'config.applied reaches the cloud')
  t.match(applied, { who: 'installer:ian' })
  const onDisk = JSON.parse(readFileSync(file, 'utf8'))
  t.same([onDisk.outlets[0].relay.coil, onDisk.outlets[1].relay.coil, onDisk.outlets[3].phase], [1, 0, 'L2'], 'the file says so')
  r = await api('/api/crosscheck/fix', { method: 'POST', role: 'installer', body: fixBody, ifMatch: r.body.version })
  t.equal(r.status, 409, 'a fix applies once')
  t.equal(r.body.error.code, 'stale-report')
  status = await api('/api/status')
  t.match(status.body.crossCheck, { passed: null, last: { id: report.id, passed: false, stale: true } }, 'status: the last check is stale')

  // The electrician mends what no config can: E3's wire and E6's sensor. The check passes.
  await peer.cmd({ cmd: 'wire', coil: 3, socket: 3 })
  await peer.cmd({ cmd: 'reverse', outlet: 6, reversed: false })
  t.equal((await api('/api/crosscheck', { method: 'POST', role: 'installer', body: { confirm: true } })).status, 202)
  const second = await waitFor(
    async () => {
      const v = await api('/api/crosscheck')
      return v.body.running === null && v.body.last?.id !== report.id ? v.body.last : undefined
    },
    'the second check ends',
    120_000,
  )
  t.equal(
    second.passed,
    true,
    `the mended site passes (${second.findings
      .filter((f: any) => f.kind !== 'ok')
      .map((f: any) => f.message)
      .join('; ')})`,
  )
  status = await api('/api/status')
  t.match(status.body.crossCheck, { running: null, passed: { id: second.id, who: 'installer:ian' }, last: { passed: true, stale: false } })

  // A session on E1, now bound to the relay of its own socket: it bills what E1's meter counts.
  for (const n of [2, 3, 4, 5, 6]) await peer.unplug(n)
  const s1 = await startSession(t, peer, cloud, { outlet: 1, userId: 'ann', amps: 10, chargeWh: 2 })
  const peerE1 = await peer.outlet(1)
  t.ok(peerE1.coil === false && peerE1.drawA > 0, 'E1’s socket draws through the coil its relay now names')
  t.equal((await api(`/api/outlets/E1/stop`, { method: 'POST', body: { by: 'user' } })).status, 200)
  const e1 = (await cloud.waitRecord(isEnded(s1.sessionId), 'E1 ended')) as Extract<JournalRecord, { type: 'session.ended' }>
  const counted = (await peer.outlet(1)).energyWh - s1.e0
  t.ok(e1.energyWh > 1 && e1.energyWh <= counted + 0.01, `E1 billed ${e1.energyWh} Wh of the ${counted.toFixed(3)} Wh its own meter counted`)
  t.ok(
    cloud.records().some((x) => x.type === 'session.started' && x.sessionId === s1.sessionId),
    'its start reached the cloud',
  )
  await daemon.stop()
})
