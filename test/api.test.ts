/**
 * The local HTTP API against a real site: the in-process simulator on loopback
 * Modbus TCP, the Service (Daemon + LocalApi) with its journal on disk, real HTTP.
 * Every route, the token (Bearer and the sign-in cookie), refusals that change
 * nothing, start/stop through the command gateway, /metrics against the daemon's
 * state, recent sessions newest first, mount(), a taken port, and Node-RED wiring.
 */
import t, { type Test } from 'tap'
import { createServer, type Server } from 'node:net'
import { startApiSite, parseMetrics, TOKEN, type ApiSite } from './helpers/api-kit.js'
import { waitFor } from './helpers/e2e-kit.js'
import { RecentSessions } from '../daemon/http/index.js'
import { AuthThrottle } from '../daemon/http/auth.js'
import type { JournalRecord, RecordBody } from '../core/types.js'
import { openTestLog, type DiskLog } from './helpers/test-log.js'
import type { NodeRedHandle } from '../daemon/nodered/index.js'

type Ended = Extract<JournalRecord, { type: 'session.ended' }>

async function allRecords(site: ApiSite): Promise<JournalRecord[]> {
  return site.daemon.records!.read(1, 100_000)
}

/** A request that must be refused with `status` and `code`, naming `names` in its message, and change nothing. */
async function refused(
  t: Test,
  site: ApiSite,
  what: string,
  p: Promise<{ status: number; body: any }>,
  status: number,
  code: string,
  names?: string | RegExp,
): Promise<void> {
  const head = site.daemon.records!.head()
  const r = await p
  t.equal(r.status, status, `${what}: HTTP ${status}`)
  t.equal(r.body?.error?.code, code, `${what}: code ${code}`)
  if (names) t.match(r.body?.error?.message, names, `${what}: the message names ${names}`)
  t.equal(site.daemon.records!.head(), head, `${what}: journal head unchanged`)
}

t.test('routes, auth and commands against a real site', async (t) => {
  const site = await startApiSite(t, { outlets: 2 })
  await site.ready()

  await t.test('/api/health is open and says little', async (t) => {
    const r = await site.json('/api/health', { auth: false })
    t.equal(r.status, 200)
    t.same(r.body, { ok: true, uplink: 'disabled', journal: { head: site.daemon.records!.head(), acked: 0 } })
  })

  await t.test('the token: missing, wrong, right (constant-time compare), and the browser sign-in', async (t) => {
    const none = await site.json('/api/outlets', { auth: false })
    t.equal(none.status, 401)
    t.equal(none.body.error.code, 'unauthorized')
    t.match(none.res.headers.get('www-authenticate'), /^Bearer/)
    for (const wrong of ['nope', TOKEN + 'x', TOKEN.slice(0, -1), '']) {
      const r = await site.json('/api/outlets', { auth: wrong })
      t.equal(r.status, 401, `wrong token ${JSON.stringify(wrong)} refused`)
    }
    t.equal(
      (await site.json('/api/outlets', { headers: { authorization: `Basic ${Buffer.from('a:' + TOKEN).toString('base64')}` } })).status,
      401,
      'Basic is not Bearer',
    )
    for (const path of ['/metrics', '/api/sessions', '/api/records', '/api/status', '/api/outlets/A1/prices', '/static/app.js']) {
      t.equal((await site.req(path, { auth: false })).status, 401, `${path} needs the token`)
    }
    const post = await site.post('/api/outlets/A1/start', { userId: 'u' }, { auth: false })
    t.equal(post.status, 401, 'start needs the token')

    const ok = await site.json('/api/outlets')
    t.equal(ok.status, 200)
    t.same(
      ok.body.map((s: { outlet: string }) => s.outlet),
      ['A1', 'A2'],
    )
    for (const s of ok.body) {
      t.match(s, { state: 'off', currentA: Number, powerW: Number, energyWh: 0, cost: 0, ts: String }, `${s.outlet} has the MQTT outlet shape`)
    }

    // The page without a sign-in: the form (no data), 401.
    const page = await site.req('/', { auth: false })
    t.equal(page.status, 401)
    const form = await page.text()
    t.match(form, /<form method="post" action="\/login">/)
    t.notMatch(form, /A1/, 'no site data on the sign-in form')

    const bad = await site.req('/login', {
      auth: false,
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: 'token=wrong-token',
    })
    t.equal(bad.status, 401)
    t.equal(bad.headers.get('set-cookie'), null, 'no cookie for a wrong token')
    t.match(await bad.text(), /That token is not right/)
    const good = await site.req('/login', {
      auth: false,
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: TOKEN }).toString(),
    })
    t.equal(good.status, 303)
    t.equal(good.headers.get('location'), '/')
    const cookie = good.headers.get('set-cookie')!
    t.match(cookie, /^outpost_session=[A-Za-z0-9_-]+; HttpOnly; SameSite=Strict; Path=\//)
    t.notMatch(cookie, TOKEN, 'the cookie is not the token')
    const pair = cookie.split(';')[0]!
    const withCookie = await site.req('/', { auth: false, headers: { cookie: pair } })
    t.equal(withCookie.status, 200)
    t.match(await withCookie.text(), /<script src="\/static\/app.js"/)
    t.equal((await site.req('/api/status', { auth: false, headers: { cookie: pair } })).status, 200, 'the cookie opens the API too')
    t.equal((await site.req('/api/status', { auth: false, headers: { cookie: pair.slice(0, -2) + 'xx' } })).status, 401, 'a forged cookie does not')
    const out = await site.req('/logout', { auth: false, method: 'POST', headers: { cookie: pair } })
    t.equal(out.status, 303)
    t.match(out.headers.get('set-cookie'), /Max-Age=0/)
    t.equal(
      (
        await site.req('/login', {
          auth: false,
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ token: TOKEN }),
        })
      ).status,
      415,
      'sign-in takes a form',
    )
  })

  await t.test('404 and 405 are clear', async (t) => {
    const nf = await site.json('/api/nope')
    t.equal(nf.status, 404)
    t.equal(nf.body.error.code, 'not-found')
    t.match(nf.body.error.message, '/api/nope')
    t.equal((await site.json('/elsewhere', { auth: false })).status, 404)
    const m = await site.json('/api/outlets/A1/start')
    t.equal(m.status, 405)
    t.equal(m.res.headers.get('allow'), 'POST')
    t.equal(m.body.error.code, 'method-not-allowed')
    t.equal((await site.json('/api/outlets', { method: 'DELETE' })).status, 405)
    const unknown = await site.json('/api/outlets/Z9/prices')
    t.equal(unknown.status, 404)
    t.equal(unknown.body.error.code, 'unknown-outlet')
    t.match(unknown.body.error.message, 'Z9')
    // A bad %-escape is the client's mistake: 400 naming it, and no error in the daemon's log.
    const errorsBefore = site.logs.filter((l) => l.level === 'error' || l.level === 'fatal').length
    await refused(t, site, 'bad %-escape in a file name', site.json('/static/%E0%A4%A'), 400, 'invalid-request', /the file name .*%E0%A4%A/)
    await refused(t, site, 'bad %-escape in an outlet id', site.json('/api/outlets/%zz/prices'), 400, 'invalid-request', /the outlet id .*%zz/)
    t.equal(site.logs.filter((l) => l.level === 'error' || l.level === 'fatal').length, errorsBefore, 'nothing logged as an error')
  })

  await t.test('prices: the plan as a timeline; hours validated', async (t) => {
    const r = await site.json('/api/outlets/A1/prices?hours=6')
    t.equal(r.status, 200)
    t.match(r.body, { outlet: 'A1', hours: 6, planId: 'standard', currency: 'CAD', activationFee: 0.5 })
    t.ok(r.body.timeline.length >= 1)
    t.match(r.body.timeline[0], { available: true, perKwh: 2.5, perHour: 36 })
    const span = Date.parse(r.body.timeline.at(-1).to) - Date.parse(r.body.timeline[0].from)
    t.equal(span, 6 * 3_600_000, 'covers the hours asked')
    t.equal((await site.json('/api/outlets/A1/prices')).body.hours, 24, 'default 24 h')
    for (const h of ['abc', '0', '-1', '745', '']) {
      await refused(t, site, `hours=${h}`, site.json(`/api/outlets/A1/prices?hours=${h}`), 400, 'invalid-request', 'hours')
    }
  })

  await t.test('malformed start/stop bodies: 4xx naming the field, nothing changes', async (t) => {
    await refused(t, site, 'no body', site.post('/api/outlets/A1/start', ''), 400, 'invalid-request', 'body')
    await refused(t, site, 'not JSON', site.post('/api/outlets/A1/start', '{"userId": '), 400, 'invalid-request', /malformed JSON/)
    await refused(t, site, 'an array', site.post('/api/outlets/A1/start', [1]), 400, 'invalid-request', 'JSON object')
    await refused(t, site, 'missing userId', site.post('/api/outlets/A1/start', {}), 400, 'invalid-request', 'body/userId')
    await refused(t, site, 'userId a number', site.post('/api/outlets/A1/start', { userId: 7 }), 400, 'invalid-request', 'body/userId')
    await refused(t, site, 'unknown field', site.post('/api/outlets/A1/start', { userId: 'u', amount: 5 }), 400, 'invalid-request', 'body/amount')
    await refused(t, site, 'bad command id', site.post('/api/outlets/A1/start', { userId: 'u', id: 5 }), 400, 'invalid-request', 'body/id')
    await refused(
      t,
      site,
      'userId the schema refuses',
      site.post('/api/outlets/A1/start', { userId: 'x'.repeat(300) }),
      400,
      'invalid-command',
      'body/userId',
    )
    await refused(t, site, 'missing by', site.post('/api/outlets/A1/stop', {}), 400, 'invalid-request', 'body/by')
    await refused(t, site, 'bad by', site.post('/api/outlets/A1/stop', { by: 'cloud' }), 400, 'invalid-request', 'body/by')
    await refused(
      t,
      site,
      'text/plain',
      site.post('/api/outlets/A1/start', JSON.stringify({ userId: 'u' }), { headers: { 'content-type': 'text/plain' } }),
      415,
      'unsupported-media-type',
      'application/json',
    )
    await refused(t, site, 'too big', site.post('/api/outlets/A1/start', { userId: 'u', pad: 'x'.repeat(10_000) }), 413, 'body-too-large', '4096')
    await refused(t, site, 'unknown outlet', site.post('/api/outlets/Q/start', { userId: 'u' }), 404, 'unknown-outlet', 'Q')
    t.equal(site.daemon.engineState.outlets.A1!.session, null, 'no session was opened')
  })

  await t.test('start and stop through the command gateway: journaled, at most once per id, refusals mapped', async (t) => {
    const noWallet = await site.post('/api/outlets/A1/start', { userId: 'stranger' })
    t.equal(noWallet.status, 404)
    t.equal(noWallet.body.error.code, 'unknown-user')
    t.equal(noWallet.body.ok, false)
    t.ok((await site.command({ action: 'set-wallet', userId: 'alice', currency: 'CAD', balance: 100_000 })).ok)
    t.ok((await site.command({ action: 'set-wallet', userId: 'broke', currency: 'CAD', balance: 10 })).ok)
    const poor = await site.post('/api/outlets/A2/start', { userId: 'broke' })
    t.equal(poor.status, 402)
    t.equal(poor.body.error.code, 'no-balance')

    site.sim.plug(1, { needWh: 50_000, maxA: 16 })
    const head = site.daemon.records!.head()
    const first = await site.post('/api/outlets/A1/start', { userId: 'alice', id: 'api-start-1' })
    t.equal(first.status, 200, JSON.stringify(first.body))
    t.match(first.body, { id: 'api-start-1', ok: true, result: { sessionId: String } })
    const started = (await allRecords(site)).filter((r) => r.type === 'session.started')
    t.equal(started.length, 1)
    t.match(started[0], { outlet: 'A1', userId: 'alice', sessionId: first.body.result.sessionId, trigger: 'activation' })
    t.ok(started[0]!.seq > head, 'journaled by this request')

    const again = await site.post('/api/outlets/A1/start', { userId: 'alice', id: 'api-start-1' })
    t.equal(again.status, 200)
    t.same(again.body, first.body, 'a repeated id returns the first result')
    t.equal((await allRecords(site)).filter((r) => r.type === 'session.started').length, 1, 'and starts nothing')

    const busy = await site.post('/api/outlets/A1/start', { userId: 'alice' })
    t.equal(busy.status, 409)
    t.equal(busy.body.error.code, 'outlet-busy')
    t.match(busy.body.id, /^local-/, 'a command id was made up for it')

    await waitFor(
      async () =>
        (await site.json('/api/outlets')).body.find(
          (s: { outlet: string; state: string; currentA: number }) => s.outlet === 'A1' && s.state === 'charging' && s.currentA > 1,
        ),
      'A1 charging, seen through the API',
    )
    const snap = await site.json('/api/status')
    t.equal(snap.status, 200)
    const a1 = snap.body.outlets.find((o: { id: string }) => o.id === 'A1')
    t.match(a1, {
      id: 'A1',
      name: 'Bay 1',
      planId: 'standard',
      currency: 'CAD',
      digits: 2,
      hasRelay: true,
      status: { state: 'charging', userId: 'alice' },
    })
    t.match(snap.body.buses[0], { id: 'lan', state: 'open', transactions: Number })
    t.match(snap.body.uplink, { status: 'disabled', head: site.daemon.records!.head() })
    t.equal(snap.body.journal.head, site.daemon.records!.head())

    // /metrics against the daemon's own views while A1 charges.
    // Charging for a few more polls of meter 1, so the bill has energy and time in it.
    const polled = site.sim.served.get(1) ?? 0
    await waitFor(
      () => (site.sim.served.get(1) ?? 0) >= polled + 4 && site.daemon.outletStatuses().find((s) => s.outlet === 'A1')!.energyWh > 0.5,
      'A1 has charged some energy',
    )
    const m = parseMetrics(await (await site.req('/metrics')).text())
    t.equal(m.get('outpost_outlet_state{outlet="A1",state="charging"}'), 1)
    t.equal(m.get('outpost_outlet_state{outlet="A1",state="off"}'), 0)
    t.equal(m.get('outpost_outlet_state{outlet="A2",state="off"}'), 1)
    t.ok(m.get('outpost_outlet_current_amperes{outlet="A1"}')! > 1, 'current at A1')
    t.ok(m.get('outpost_outlet_power_watts{outlet="A1"}')! > 200, 'power at A1')
    t.equal(m.get('outpost_outlet_current_amperes{outlet="A2"}'), 0)
    t.ok(m.get('outpost_outlet_session_cost_minor{outlet="A1"}')! > 0)
    t.equal(m.get('outpost_journal_head_seq'), site.daemon.records!.head())
    t.equal(m.get('outpost_journal_unacked_records'), site.daemon.records!.head())
    t.equal(m.get('outpost_uplink_online'), 0)
    t.equal(m.get('outpost_uplink_enabled'), 0)
    t.equal(m.get('outpost_uplink_backlog_records'), site.daemon.records!.head())
    t.ok(m.get('outpost_uplink_oldest_unacked_age_seconds')! > 0, 'seq 1 is waiting for a cloud')
    const bus = site.daemon.buses!.health()[0]!
    t.ok(m.get('outpost_bus_transactions_total{bus="lan"}')! > 0)
    t.ok(m.get('outpost_bus_transactions_total{bus="lan"}')! <= bus.transactions, 'read from the scheduler')
    t.equal(m.get('outpost_bus_open{bus="lan"}'), 1)
    t.equal(m.get('outpost_bus_timeouts_total{bus="lan"}'), bus.timeouts)
    t.ok(m.get('outpost_device_transactions_total{bus="lan",unit="1"}')! > 0)
    t.equal(m.get('outpost_device_failures_total{bus="lan",unit="1"}'), 0)
    t.ok(m.has('outpost_process_cpu_user_seconds_total'), 'process metrics, prefixed')
    t.equal(m.get('outpost_sessions_ended_total{outlet="A1",reason="user-stopped"}'), undefined, 'nothing ended yet')
    for (const name of m.keys()) t.ok(name.startsWith('outpost_'), `${name} is prefixed`)

    const stop = await site.post('/api/outlets/A1/stop', { by: 'user' })
    t.equal(stop.status, 200, JSON.stringify(stop.body))
    const ended = (await allRecords(site)).filter((r): r is Ended => r.type === 'session.ended')
    t.equal(ended.length, 1)
    t.match(ended[0], { outlet: 'A1', reason: 'user-stopped', sessionId: first.body.result.sessionId })
    t.ok(ended[0]!.total > 50, 'billed: the fee and some energy and time')
    const none = await site.post('/api/outlets/A1/stop', { by: 'manager' })
    t.equal(none.status, 409)
    t.equal(none.body.error.code, 'no-session')

    const m2 = parseMetrics(await (await site.req('/metrics')).text())
    t.equal(m2.get('outpost_sessions_ended_total{outlet="A1",reason="user-stopped"}'), 1)
    t.equal(m2.get('outpost_energy_billed_wh_total{outlet="A1"}'), ended[0]!.energyWh)
    t.equal(m2.get('outpost_billed_minor_total{currency="CAD"}'), ended[0]!.total)

    const s = await site.json('/api/sessions?limit=5')
    t.equal(s.status, 200)
    t.same(s.body.sessions, ended, 'the billed session, as journaled')
    site.sim.unplug(1)
  })

  await t.test('sessions newest first; records paged; parameters validated', async (t) => {
    // Three more sessions at A2 (each started and stopped at once: a session.ended each).
    site.sim.plug(2, { needWh: 50_000, maxA: 10 })
    for (let i = 0; i < 3; i++) {
      t.equal((await site.post('/api/outlets/A2/start', { userId: 'alice' })).status, 200)
      t.equal((await site.post('/api/outlets/A2/stop', { by: i % 2 ? 'manager' : 'user' })).status, 200)
    }
    site.sim.unplug(2)
    const ended = (await allRecords(site)).filter((r): r is Ended => r.type === 'session.ended')
    t.equal(ended.length, 4)
    const newest = [...ended].reverse()
    t.same((await site.json('/api/sessions')).body.sessions, newest, 'all four, newest first')
    t.same((await site.json('/api/sessions?limit=2')).body.sessions, newest.slice(0, 2))
    t.same(
      newest.map((r) => r.reason),
      ['user-stopped', 'manager-stopped', 'user-stopped', 'user-stopped'],
    )
    for (const q of ['limit=0', 'limit=201', 'limit=x', 'limit=1.5'])
      await refused(t, site, q, site.json(`/api/sessions?${q}`), 400, 'invalid-request', 'limit')

    // The backward fill in small chunks finds the same, and later sessions join from events.
    const ring = new RecentSessions(site.daemon, { chunk: 2, capacity: 3 })
    t.teardown(() => ring.close())
    t.same(await ring.recent(10), newest.slice(0, 3), 'capacity 3, read backward two records at a time')
    site.sim.plug(2, { needWh: 50_000, maxA: 10 })
    t.equal((await site.post('/api/outlets/A2/start', { userId: 'alice' })).status, 200)
    t.equal((await site.post('/api/outlets/A2/stop', { by: 'user' })).status, 200)
    site.sim.unplug(2)
    const latest = (await allRecords(site)).filter((r): r is Ended => r.type === 'session.ended').at(-1)!
    t.same(
      (await ring.recent(10)).map((r) => r.seq),
      [latest.seq, ...newest.slice(0, 2).map((r) => r.seq)],
      'a new session comes first',
    )

    const head = site.daemon.records!.head()
    const page1 = await site.json('/api/records?from=1&limit=2')
    t.equal(page1.status, 200)
    t.same(
      page1.body.records.map((r: JournalRecord) => r.seq),
      [1, 2],
    )
    t.match(page1.body, { next: 3, head, oldest: 1 })
    t.equal(page1.body.records[0].type, 'gateway.started')
    const all = await site.json('/api/records')
    t.equal(all.body.records.length, head, 'default: from the oldest, up to 100')
    t.equal(all.body.next, null)
    t.same((await site.json(`/api/records?from=${head + 1}`)).body, { records: [], next: null, head, oldest: 1 })
    for (const q of ['from=0', 'from=abc', 'limit=0', 'limit=1001', 'from=-3'])
      await refused(t, site, q, site.json(`/api/records?${q}`), 400, 'invalid-request', q.split('=')[0])
  })

  await t.test('the live stream: the chart history and a snapshot at once, then outlet and record events', async (t) => {
    const ctl = new AbortController()
    t.teardown(() => ctl.abort())
    const res = await site.req('/api/events', { signal: ctl.signal })
    t.equal(res.status, 200)
    t.match(res.headers.get('content-type'), /^text\/event-stream/)
    const reader = res.body!.getReader()
    let text = ''
    const until = async (re: RegExp): Promise<RegExpExecArray> =>
      waitFor(
        async () => re.exec(text) ?? ((text += new TextDecoder().decode((await reader.read()).value ?? new Uint8Array())), undefined),
        `stream to show ${re}`,
        30_000,
      )
    const history = await until(/event: history\ndata: (.*)\n\n/)
    const h = JSON.parse(history[1]!) as { sampleMs: number; points: { ageMs: number; outlets: Record<string, [number, number]> }[] }
    t.equal(h.sampleMs, 250, 'as the test site asked')
    t.ok(h.points.length >= 2, 'samples from before the stream opened (the API has run for a while)')
    t.ok(h.points[0]!.ageMs > h.points.at(-1)!.ageMs, 'oldest first')
    t.same(Object.keys(h.points.at(-1)!.outlets), ['A1', 'A2'])
    const snap = await until(/event: snapshot\ndata: (.*)\n\n/)
    t.match(JSON.parse(snap[1]!), { site: { id: 'api' }, outlets: [{ id: 'A1' }, { id: 'A2' }] })
    site.sim.plug(1, { needWh: 50_000, maxA: 16 })
    const r = await site.post('/api/outlets/A1/start', { userId: 'alice' })
    t.equal(r.status, 200)
    const rec = await until(/event: record\ndata: (\{"type":"session.started".*)\n\n/)
    t.equal(JSON.parse(rec[1]!).sessionId, r.body.result.sessionId)
    const live = await until(/event: outlet\ndata: ([^\n]*"state":"charging"[^\n]*)\n\n/)
    t.match(JSON.parse(live[1]!), { outlet: 'A1', state: 'charging', sessionId: r.body.result.sessionId, userId: 'alice' })
    t.equal((await site.post('/api/outlets/A1/stop', { by: 'user' })).status, 200)
    site.sim.unplug(1)
  })
})

t.test('guessing the token: 429 after ten wrong ones from an address, for a minute', async (t) => {
  const site = await startApiSite(t, { outlets: 1 })
  for (let i = 0; i < 10; i++) t.equal((await site.json('/api/outlets', { auth: `guess-${i}-xxxx` })).status, 401, `wrong token ${i + 1}: 401`)
  const right = await site.json('/api/outlets')
  t.equal(right.status, 429, 'the eleventh try is refused, even with the right token')
  t.equal(right.body.error.code, 'too-many-attempts')
  t.ok(Number(right.res.headers.get('retry-after')) > 0, 'Retry-After says when')
  const form = await site.req('/login', {
    auth: false,
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: `token=${TOKEN}`,
  })
  t.equal(form.status, 429, 'the sign-in form too')
  t.equal((await site.json('/api/outlets', { auth: false })).status, 401, 'no credentials: still a plain 401')
  t.equal((await site.json('/api/health', { auth: false })).status, 200, 'health stays open')

  let now = 0
  const th = new AuthThrottle(() => now, 3, 1000)
  for (let i = 0; i < 3; i++) th.fail('a')
  t.ok(th.blockedFor('a') > 0, 'blocked after the limit')
  t.equal(th.blockedFor('b'), 0, 'other addresses are not')
  now = 1001
  t.equal(th.blockedFor('a'), 0, 'free again once the window has passed')
})

t.test('mount(): express-style handlers under a prefix, without the token', async (t) => {
  const site = await startApiSite(t, { outlets: 1 })
  const seen: { url: string; baseUrl: string; originalUrl: string }[] = []
  site.api.mount('/red', (req, res, next) => {
    const r = req as typeof req & { baseUrl: string; originalUrl: string }
    seen.push({ url: r.url!, baseUrl: r.baseUrl, originalUrl: r.originalUrl })
    if (r.url === '/missing') return next()
    if (r.url === '/boom') return next(new Error('kaboom'))
    if (r.url === '/throws') throw new Error('thrown')
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.end(`red:${r.url}`)
  })
  site.api.mount('/', (req, res, next) => {
    if (req.url === '/hello') return void res.end('node:hello')
    next()
  })
  t.throws(() => site.api.mount('/red/', () => undefined), /already mounted/)
  t.throws(() => site.api.mount('red', () => undefined), /must start with/)

  const r1 = await site.req('/red/flows?x=1', { auth: false })
  t.equal(r1.status, 200)
  t.equal(await r1.text(), 'red:/flows?x=1')
  t.same(seen.at(-1), { url: '/flows?x=1', baseUrl: '/red', originalUrl: '/red/flows?x=1' }, 'the handler sees the path under its prefix')
  const r2 = await site.req('/red', { auth: false })
  t.equal(r2.status, 301)
  t.equal(r2.headers.get('location'), '/red/')
  t.equal(await (await site.req('/red/', { auth: false })).text(), 'red:/')
  t.equal(await (await site.req('/hello', { auth: false })).text(), 'node:hello', 'the root mount gets other paths')
  const nx = await site.json('/redx', { auth: false })
  t.equal(nx.status, 404, '/redx is not under /red (the root mount passes it on)')
  t.equal(seen.length, 2, '/redx never reached the /red handler (2 calls: /red/flows and /red/)')
  t.equal((await site.json('/red/missing', { auth: false })).status, 404, 'next() answers 404')
  const boom = await site.json('/red/boom', { auth: false })
  t.equal(boom.status, 500)
  t.equal(boom.body.error.code, 'internal')
  t.equal((await site.json('/red/throws', { auth: false })).status, 500, 'a throwing handler answers 500; the server lives on')
  t.equal((await site.json('/api/outlets', { auth: false })).status, 401, "the API's own routes keep the token, even with a root mount")
  t.equal((await site.json('/api/health', { auth: false })).status, 200)
})

/** A loopback port held by another listener until release(). */
async function takePort(t: Test): Promise<{ port: number; release: () => Promise<void> }> {
  const blocker: Server = createServer()
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r))
  let open = true
  const release = (): Promise<void> => (open ? ((open = false), new Promise<void>((r) => blocker.close(() => r()))) : Promise.resolve())
  t.teardown(release)
  return { port: (blocker.address() as { port: number }).port, release }
}

t.test('a taken port: one clear error, charging continues, the bind is retried', async (t) => {
  const { port, release } = await takePort(t)
  const site = await startApiSite(t, { outlets: 1, listen: `127.0.0.1:${port}`, service: { api: { retryMs: 200 } } })
  t.equal(site.api.address(), undefined, 'not listening')
  const err = site.logs.filter((l) => l.msg === 'local API cannot listen; charging continues, retrying')
  t.equal(err.length, 1)
  t.match(err[0], { level: 'error', listen: `127.0.0.1:${port}`, code: 'EADDRINUSE' })
  await site.ready()
  t.ok(site.daemon.engineState.outlets.A1?.last && !site.daemon.haltedBy, 'the daemon reads its meters meanwhile')
  const polls = site.sim.served.get(1) ?? 0
  await waitFor(() => (site.sim.served.get(1) ?? 0) > polls + 3, 'more polls while the API is down')
  t.equal(site.logs.filter((l) => l.msg === 'local API cannot listen; charging continues, retrying').length, 1, 'retries do not repeat the error')
  await release()
  await waitFor(() => site.api.address(), 'the API binds once the port is free', 30_000)
  t.equal(site.api.address()!.port, port, 'on the configured port')
  t.equal((await site.json('/api/health', { auth: false })).status, 200)
})

t.test('the demo option: a taken port is replaced by a free one', async (t) => {
  const { port } = await takePort(t)
  const site = await startApiSite(t, { outlets: 1, listen: `127.0.0.1:${port}`, service: { api: { anyPortIfTaken: true } } })
  const bound = site.api.address()
  t.ok(bound && bound.port !== port && bound.port > 0, 'listening elsewhere')
  t.equal((await site.json('/api/health', { auth: false })).status, 200)
  t.ok(site.logs.some((l) => l.msg === 'local API port is taken; listening on a free port instead'))
})

t.test('Node-RED: mounted at its roots, a failure to start leaves charging alone, stopped first', async (t) => {
  await t.test('a starter that fails', async (t) => {
    const site = await startApiSite(t, {
      outlets: 1,
      config: { nodeRed: { enabled: true } },
      service: { startNodeRed: () => Promise.reject(Object.assign(new Error('no flows'), { code: 'NODE_RED_UNAVAILABLE' })) },
    })
    t.match(
      site.logs.find((l) => l.msg === 'node-red did not start; charging continues without it'),
      { level: 'error', code: 'NODE_RED_UNAVAILABLE' },
    )
    await site.ready()
    t.equal((await site.json('/api/health', { auth: false })).status, 200, 'the API serves')
    t.equal((await site.json('/red/', { auth: false })).status, 404, 'nothing mounted')
  })

  await t.test('a starter that works', async (t) => {
    const order: string[] = []
    let server: unknown
    const handle: NodeRedHandle = {
      adminRoot: '/red',
      admin: (req, res) => void res.end(`admin ${req.url}`),
      nodeRoot: '/flows-api',
      node: (req, res) => void res.end(`node ${req.url}`),
      stop: async () => void order.push('node-red'),
    }
    const site = await startApiSite(t, {
      outlets: 1,
      config: { nodeRed: { enabled: true, httpAdminRoot: '/red' } },
      service: {
        startNodeRed: async (o) => {
          server = o.server
          t.equal(o.daemon.records?.head() !== undefined, true, 'the daemon is started first')
          return handle
        },
      },
    })
    t.equal(server, site.api.server, "Node-RED gets the API's server (for its websocket)")
    t.equal(await (await site.req('/red/settings', { auth: false })).text(), 'admin /settings')
    t.equal((await site.req('/flows-api/hook', { auth: false })).status, 401, "flows' own endpoints need the API token")
    t.equal(await (await site.req('/flows-api/hook')).text(), 'node /hook')
    site.daemon.once('halted', () => undefined)
    const stopDaemon = site.daemon.stop.bind(site.daemon)
    site.daemon.stop = async () => {
      order.push(site.api.address() ? 'daemon (api still up)' : 'daemon')
      return stopDaemon()
    }
    await site.stop()
    t.same(order, ['node-red', 'daemon'], 'Node-RED, then the API, then the daemon')
  })
})

t.test('Journal.readBackward: newest first, bounded, stops at the oldest held', async (t) => {
  const log = (await openTestLog(t)) as DiskLog
  const fault = (i: number): RecordBody => ({
    type: 'outlet.fault',
    ts: new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString(),
    outlet: 'A1',
    detail: `f${i}`,
  })
  await log.append(Array.from({ length: 10 }, (_, i) => fault(i)))
  const seqs = async (to: number, limit: number) => (await log.journal.readBackward(to, limit)).map((r) => r.seq)
  t.same(await seqs(10, 3), [10, 9, 8])
  t.same(await seqs(4, 10), [4, 3, 2, 1])
  t.same(await seqs(99, 2), [10, 9], 'to past the head starts at the head')
  t.same(await seqs(0, 5), [])
  await t.rejects(log.journal.readBackward(5, 0), { code: 'JOURNAL_BAD_RANGE' })
  await log.ack(6)
  await log.compact()
  const oldest = log.oldest()
  t.ok(oldest > 1, 'acknowledged records were compacted')
  t.same(
    await seqs(10, 100),
    Array.from({ length: 10 - oldest + 1 }, (_, i) => 10 - i),
    'stops at the oldest held, no error',
  )
})
