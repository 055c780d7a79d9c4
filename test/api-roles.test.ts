/**
 * The local API's roles and CSRF defence over real HTTP (the in-process site of api-kit):
 * each `api.tokens` role signs in and gets a cookie of its own; a viewer reads but changes
 * nothing (403 naming who and what); a change made with the cookie must carry the page's
 * Origin (403 `cross-site` otherwise, and nothing happens); Bearer requests are unaffected.
 */
import t from 'tap'
import { TOKEN, startApiSite } from './helpers/api-kit.js'

const VIEWER = 'viewer-token-0123456789'
const OWNER = 'owner-token-0123456789'

const INSTALLER = 'installer-token-0123456789'
/** The site's api section: the admin's token, and a viewer, an owner and an installer. */
const API = {
  listen: '127.0.0.1:0',
  token: TOKEN,
  tokens: [
    { name: 'vic', role: 'viewer', token: VIEWER },
    { name: 'olga', role: 'owner', token: OWNER },
    { name: 'ian', role: 'installer', token: INSTALLER },
  ],
}

t.test('roles and CSRF', async (t) => {
  const site = await startApiSite(t, { config: { api: API } })
  await site.ready()
  const signIn = async (token: string): Promise<string> => {
    const res = await site.req('/login', {
      auth: false,
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }).toString(),
    })
    t.equal(res.status, 303, 'signed in')
    return res.headers.get('set-cookie')!.split(';')[0]!
  }
  const viewer = await signIn(VIEWER)
  const owner = await signIn(OWNER)
  t.not(viewer, owner, 'each token its own cookie')

  // The viewer reads, with its cookie or its token, and changes nothing.
  t.equal((await site.req('/api/status', { auth: false, headers: { cookie: viewer } })).status, 200, 'the viewer reads the status')
  t.equal((await site.req('/api/sessions.csv', { auth: VIEWER })).status, 200, 'and the CSV')
  let r = await site.post('/api/outlets/A1/stop', { by: 'manager' }, { auth: VIEWER })
  t.equal(r.status, 403)
  t.same(r.body.error, { code: 'forbidden', message: 'viewer:vic may only read: the viewer role cannot POST /api/outlets/A1/stop' })
  const head = site.daemon.records!.head()
  r = await site.post('/api/outlets/A1/start', { userId: 'u1' }, { auth: false, headers: { cookie: viewer, origin: site.base } })
  t.equal(r.status, 403, 'the viewer signed in in a browser cannot start either')
  t.equal(site.daemon.records!.head(), head, 'nothing journaled')

  // The owner's cookie: a change from another origin, or with no origin at all, is refused.
  r = await site.post('/api/outlets/A1/stop', { by: 'manager' }, { auth: false, headers: { cookie: owner, origin: 'http://evil.example' } })
  t.equal(r.status, 403)
  t.equal(r.body.error.code, 'cross-site')
  t.match(r.body.error.message, /evil\.example/)
  r = await site.post('/api/outlets/A1/stop', { by: 'manager' }, { auth: false, headers: { cookie: owner } })
  t.equal(r.status, 403, 'a cookie request without Origin or Sec-Fetch-Site is refused')
  t.equal(site.daemon.records!.head(), head, 'nothing journaled')
  // From the page itself it reaches the engine (which has no session to stop).
  r = await site.post('/api/outlets/A1/stop', { by: 'manager' }, { auth: false, headers: { cookie: owner, origin: site.base } })
  t.equal(r.status, 409)
  t.equal(r.body.error.code, 'no-session')
  r = await site.post('/api/outlets/A1/stop', { by: 'manager' }, { auth: false, headers: { cookie: owner, 'sec-fetch-site': 'same-origin' } })
  t.equal(r.status, 409, 'Sec-Fetch-Site same-origin too')
  // Bearer requests carry no ambient credential: no Origin needed.
  r = await site.post('/api/outlets/A1/stop', { by: 'manager' }, { auth: OWNER })
  t.equal(r.status, 409)
  t.equal(r.body.error.code, 'no-session')
})

t.test("users' wallets are the owner's: set from the local API as the cloud's set-wallet sets them", async (t) => {
  const site = await startApiSite(t, { config: { api: API } })
  await site.ready()
  const put = (user: string, body: unknown, auth: string) =>
    site.json(`/api/wallets/${encodeURIComponent(user)}`, {
      auth,
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
  t.same((await site.json('/api/wallets', { auth: VIEWER })).body, { wallets: [] }, 'none yet; the viewer reads them')

  for (const [who, token] of [
    ['viewer:vic', VIEWER],
    ['installer:ian', INSTALLER],
  ] as const) {
    const r = await put('ann', { currency: 'EUR', balance: 2500 }, token)
    t.equal(r.status, 403, `${who} may not set a wallet`)
    t.match(r.body.error.message, who)
  }
  for (const [body, field] of [
    [{ currency: 'EURO', balance: 2500 }, /body\/currency/],
    [{ currency: 'EUR', balance: 25.5 }, /body\/balance/],
    [{ currency: 'EUR' }, /body\/balance/],
    [{ currency: 'EUR', balance: 100, extra: 1 }, /body\/extra: unknown field/],
  ] as const) {
    const r = await put('ann', body, OWNER)
    t.equal(r.status, 400, `refused: ${JSON.stringify(body)}`)
    t.match(r.body.error.message, field, 'the error names the field')
  }
  t.same((await site.json('/api/wallets', { auth: OWNER })).body, { wallets: [] }, 'nothing changed')

  const r = await put('ann <b>', { currency: 'CAD', balance: 2500 }, OWNER)
  t.equal(r.status, 200)
  t.same(r.body.wallet, { userId: 'ann <b>', currency: 'CAD', balance: 2500, reserved: 0, digits: 2 })
  // The wallet is the engine's, as set-wallet makes it: a start for that user is accepted, and reserves the balance.
  const started = await site.post('/api/outlets/A1/start', { userId: 'ann <b>' }, { auth: OWNER })
  t.equal(started.status, 200, JSON.stringify(started.body))
  t.same(
    (await site.json('/api/wallets', { auth: OWNER })).body.wallets,
    [{ userId: 'ann <b>', currency: 'CAD', balance: 2500, reserved: 2500, digits: 2 }],
    'the open session reserves the balance',
  )
  const nobody = await site.post('/api/outlets/A2/start', { userId: 'nobody' }, { auth: OWNER })
  t.equal(nobody.body.error?.code, 'unknown-user', 'a user without a wallet is refused, as before')
})
