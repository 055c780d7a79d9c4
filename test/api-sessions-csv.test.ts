/**
 * GET /api/sessions.csv on a running daemon (the simulated Modbus site, the real journal,
 * the local API): behind the token, the last sessions oldest first as the CSV export writes
 * them, `limit` validated; and the status page links it (headless Chromium: a signed-in
 * browser downloads it with its session cookie).
 */
import t from 'tap'
import { startApiSite, TOKEN } from './helpers/api-kit.js'
import { launchChromium } from './helpers/browser.js'
import { csvHeader, csvRow } from '../daemon/export.js'
import type { JournalRecord, SessionEndedBody } from '../core/types.js'

t.test('the sessions CSV', async (t) => {
  const site = await startApiSite(t, { outlets: 1 })
  await site.ready()
  t.ok((await site.command({ action: 'set-wallet', userId: 'alice, "a"', currency: 'CAD', balance: 100_000 })).ok, 'wallet')
  for (let i = 0; i < 3; i++) {
    t.equal((await site.post('/api/outlets/A1/start', { userId: 'alice, "a"' })).status, 200, `start ${i}`)
    t.equal((await site.post('/api/outlets/A1/stop', { by: 'user' })).status, 200, `stop ${i}`)
  }
  const records = (await site.daemon.records!.read(1, 1000)) as JournalRecord[]
  const ended = records.filter((r) => r.type === 'session.ended') as unknown as SessionEndedBody[]
  t.equal(ended.length, 3)

  const anon = await site.req('/api/sessions.csv', { auth: false })
  t.equal(anon.status, 401, 'behind the token')
  await anon.text()

  const res = await site.req('/api/sessions.csv')
  t.equal(res.status, 200)
  t.equal(res.headers.get('content-type'), 'text/csv; charset=utf-8')
  t.equal(res.headers.get('content-disposition'), 'attachment; filename="api-sessions.csv"')
  const text = await res.text()
  t.equal(text, csvHeader() + ended.map(csvRow).join(''), 'every session, oldest first, as the export writes them')
  t.match(text, /,"alice, ""a""",/, 'RFC 4180 quoting of the user')

  const one = await site.req('/api/sessions.csv?limit=1')
  t.equal(await one.text(), csvHeader() + csvRow(ended[2]!), 'limit=1: the newest')
  for (const q of ['limit=0', 'limit=201', 'limit=x']) {
    const bad = await site.json(`/api/sessions.csv?${q}`)
    t.equal(bad.status, 400, `${q} refused`)
    t.match(bad.body.error.message, /limit/, 'naming the parameter')
  }

  const browser = await launchChromium(t)
  const context = await browser.newContext({ acceptDownloads: true })
  const page = await context.newPage()
  await page.goto(`${site.base}/`)
  await page.fill('#token', TOKEN)
  await Promise.all([page.waitForURL(`${site.base}/`), page.click('button[type=submit]')])
  const link = page.locator('a.csv')
  t.equal(await link.getAttribute('href'), '/api/sessions.csv', 'the status page links the CSV')
  const [download] = await Promise.all([page.waitForEvent('download'), link.click()])
  t.equal(download.suggestedFilename(), 'api-sessions.csv', 'downloaded under the site name')
  const path = await download.path()
  const { readFileSync } = await import('node:fs')
  t.equal(readFileSync(path!, 'utf8'), text, 'with the session cookie: the same CSV')
})
