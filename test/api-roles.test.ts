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

t.test('roles and CSRF', async (t) => {
  const site = await startApiSite(t, {
    config: {
      api: {
        listen: '127.0.0.1:0',
        token: TOKEN,
        tokens: [
          { name: 'vic', role: 'viewer', token: VIEWER },
          { name: 'olga', role: 'owner', token: OWNER },
        ],
      },
    },
  })
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
