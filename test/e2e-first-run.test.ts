/**
 * First run, end to end: the built daemon as a child (`outpost run --config FILE --listen …`)
 * with no config file, then with an invalid one, against the pymodbus site peer.
 *
 * No file: the setup page is served, the code is in the log (stdout) and in a file of mode 0600;
 * wrong codes are refused and throttled per address; the right one opens one setup session and
 * is spent; a config the checks refuse is refused at its pointers, in check-config's words, and
 * nothing is written; the first valid one is written and the site starts in the same process
 * (the peer is polled), journaled as `config.applied` by `setup`. Meanwhile the peer is never
 * asked anything and its relay coil stays open.
 *
 * An invalid file: the same page in headless Chromium lists each problem at its pointer (a
 * name with HTML in it shown as text), the relay stays open; the fix saved from the page starts
 * the site. The page's screenshot goes to docs/setup-first-run.png.
 */
import t from 'tap'
import { request } from 'node:http'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { formatProblem, type ConfigProblem } from '../daemon/config.js'
import { journalRecords } from './helpers/csms.js'
import { freePort } from './helpers/mosquitto.js'
import { keepScreenshot, launchChromium } from './helpers/browser.js'
import { runCli } from './helpers/cli.js'
import { startDaemon, startPeer, tempDir, waitFor, writeSiteConfig, type DaemonProc } from './helpers/e2e-kit.js'

const sha = (s: string): string => createHash('sha256').update(s).digest('hex')

interface Answer {
  status: number
  headers: Record<string, string | string[] | undefined>
  json: { error?: { code: string; message: string; problems?: ConfigProblem[] } } & Record<string, unknown>
}

/** One HTTP request from `from` (a loopback source address of its own: the throttle counts per address). */
function http(
  port: number,
  method: string,
  path: string,
  o: { body?: string; headers?: Record<string, string>; from?: string } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        localAddress: o.from ?? '127.0.0.1',
        headers: { ...(o.body ? { 'content-type': 'application/json' } : {}), ...o.headers },
      },
      (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => (text += c))
        res.on('end', () => {
          let json = {}
          try {
            json = JSON.parse(text)
          } catch {
            json = { text }
          }
          resolve({ status: res.statusCode!, headers: res.headers, json: json as Answer['json'] })
        })
      },
    )
    req.on('error', reject)
    req.end(o.body)
  })
}

/** The setup code as the daemon logged it. */
async function setupLine(daemon: DaemonProc): Promise<{ setupCode: string; codeFile: string; urls: string[] }> {
  return (await daemon.waitLog((l) => typeof l.setupCode === 'string', 'the setup code in the log')) as never
}

/** check-config's own lines for `text`, as the built CLI prints them. */
function checkConfigLines(dir: string, text: string): string[] {
  const f = join(dir, 'check.json')
  writeFileSync(f, text)
  const r = runCli(['check-config', f])
  unlinkSync(f)
  return r.stderr.trim().split('\n')
}

/** The peer never asked anything, and its coil open: nothing of the site runs. */
async function untouched(
  t: { equal(a: unknown, b: unknown, m: string): unknown },
  peer: Awaited<ReturnType<typeof startPeer>>,
  what: string,
): Promise<void> {
  const o = await peer.outlet(1)
  t.equal(o.polls, 0, `${what}: the meter was never read`)
  t.equal(o.coil, false, `${what}: the relay is open`)
}

t.test('no config file: the setup page, its code, and the first valid config starts the site in the same process', async (t) => {
  const dir = tempDir(t, 'outpost-first-run-')
  const file = join(dir, 'site.json')
  const peer = await startPeer(t, { outlets: 1 })
  await peer.plug(1, 8)
  const port = await freePort()
  const apiPort = await freePort()
  const daemon = startDaemon(t, file, {}, undefined, [], ['--listen', `127.0.0.1:${port}`])
  const line = await setupLine(daemon)
  t.same(line.urls, [`http://127.0.0.1:${port}/`], 'the URL is logged')
  t.equal(line.codeFile, `${file}.setup-code`, 'beside the config without a systemd state directory')
  t.match(line.setupCode, /^[2-9A-Z]{4}(-[2-9A-Z]{4}){4}$/, 'a code of 20 characters in groups')
  t.equal(statSync(line.codeFile).mode & 0o777, 0o600, 'the code file is readable by its owner only')
  t.equal(readFileSync(line.codeFile, 'utf8').split('\n')[0], line.setupCode, 'the code file holds the code')

  const page = await http(port, 'GET', '/')
  t.equal(page.status, 200, 'the setup page is served')
  t.match(String(page.json.text), /first-run setup/)
  t.equal((await http(port, 'GET', '/api/setup')).status, 401, 'the setup API needs the code')
  t.equal((await http(port, 'GET', '/api/health')).json.setup, 'missing', 'health says why the site is not running')
  t.equal((await http(port, 'GET', '/api/outlets')).json.error?.code, 'setup-mode', 'the site API is not there')

  // Guessing: ten wrong codes from one address, then even the right code is refused from there.
  const guess = (code: string, from: string): Promise<Answer> => http(port, 'POST', '/api/setup/session', { body: JSON.stringify({ code }), from })
  for (let i = 0; i < 10; i++) t.equal((await guess(`WRONG-${i}`, '127.0.0.2')).status, 401, `wrong code ${i + 1} refused`)
  const blocked = await guess(line.setupCode, '127.0.0.2')
  t.equal(blocked.status, 429, 'the eleventh try from that address is throttled, right code or not')
  t.ok(Number(blocked.headers['retry-after']) > 0, 'with Retry-After')
  const opened = await guess(line.setupCode.toLowerCase().replace(/-/g, ' '), '127.0.0.1')
  t.equal(opened.status, 200, 'the right code from another address (typed loosely)')
  const cookie = String(opened.headers['set-cookie']).split(';')[0]!
  t.match(String(opened.headers['set-cookie']), /^outpost_setup=[A-Za-z0-9_-]{43}; HttpOnly; SameSite=Strict; Path=\//, 'a setup session cookie')
  t.equal((await guess(line.setupCode, '127.0.0.3')).json.error?.code, 'setup-code-used', 'the code opens one session only')
  t.notOk(existsSync(line.codeFile), 'the code file is removed once the code is spent')
  const forged = await http(port, 'GET', '/api/setup', { headers: { cookie: 'outpost_setup=forged' }, from: '127.0.0.4' })
  t.equal(forged.status, 401, 'a forged session is refused')

  const setup = (method: string, path: string, body?: string, origin = `http://127.0.0.1:${port}`): Promise<Answer> =>
    http(port, method, path, { body, headers: { cookie, host: `127.0.0.1:${port}`, ...(origin ? { origin } : {}) } })
  const state = await setup('GET', '/api/setup')
  t.match(state.json, { state: 'missing', file, problems: [], text: null }, 'the setup state: no file yet')

  // The config that gets saved: the peer's outlet, and the local API where the site will listen.
  const src = tempDir(t, 'outpost-first-run-src-')
  const token = 'first-run-admin-token-0123'
  const good = readFileSync(
    writeSiteConfig({
      dir: src,
      port: peer.port,
      outlets: 1,
      storage: { dir: join(dir, 'journal') },
      extra: { api: { listen: `127.0.0.1:${apiPort}`, token } },
    }),
    'utf8',
  )
  const badDoc = JSON.parse(good) as { sessions: Record<string, unknown>; outlets: Record<string, unknown>[] }
  badDoc.sessions.pollMs = 5
  badDoc.outlets[0]!.plan = 'nope'
  const bad = JSON.stringify(badDoc, null, 2)

  const checked = await setup('POST', '/api/setup/check', bad)
  t.equal(checked.json.ok, false)
  const words = (checked.json.problems as ConfigProblem[]).map((p) => formatProblem('F', p).replace(/^F: /, ''))
  t.same(
    words,
    checkConfigLines(src, bad).map((l) => l.replace(/^[^:]+: /, '')),
    "the check's problems are check-config's, at their pointers",
  )
  t.ok(words.includes('/sessions/pollMs: must be >= 100') && words.some((w) => w.startsWith('/outlets/0/plan: unknown plan "nope"')), 'both named', {
    words,
  })
  const refused = await setup('PUT', '/api/setup/config', bad)
  t.equal(refused.status, 422, 'an invalid config is refused')
  t.same(refused.json.error?.problems, checked.json.problems, 'at the same pointers')
  t.notOk(existsSync(file), 'nothing written')
  t.equal((await setup('PUT', '/api/setup/config', good, '')).json.error?.code, 'cross-site', 'a save without Origin is refused (CSRF)')
  t.notOk(existsSync(file), 'nothing written')
  await untouched(t, peer, 'after the refusals')

  const saved = await setup('PUT', '/api/setup/config', good)
  t.equal(saved.status, 200, 'the first valid config is saved')
  t.equal(saved.json.version, sha(good), 'its version is the SHA-256 of its bytes')
  t.equal(readFileSync(file, 'utf8'), good, 'the file holds exactly those bytes')
  t.equal(statSync(file).mode & 0o777, 0o600, 'mode 0600 (a config holds secrets)')

  // The site runs in the same process: the peer is polled, the API answers on api.listen.
  await waitFor(async () => (await peer.outlet(1)).polls > 0, 'the peer polled by the site')
  t.ok(daemon.running(), 'the same process (no restart)')
  const health = await waitFor(async () => {
    const h = await http(apiPort, 'GET', '/api/health').catch(() => undefined)
    return h?.status === 200 && h
  }, 'the local API of the saved config')
  t.equal(health.json.ok, true)
  const outlets = await http(apiPort, 'GET', '/api/outlets', { headers: { authorization: `Bearer ${token}` } })
  t.equal(outlets.status, 200, "api.token of the saved config is the admin's")
  t.rejects(http(port, 'GET', '/'), 'the setup page is gone')
  t.equal((await daemon.stop('SIGTERM')).code, 0, 'a clean stop')
  const applied = journalRecords(file).filter((r) => r.type === 'config.applied')
  t.match(applied, [{ who: 'setup', configHash: sha(good), previousHash: null, changed: [''] }], 'journaled: config.applied by setup')
})

t.test('an invalid config: the page lists each problem at its pointer, relays stay open, the fix saved from the page starts the site', async (t) => {
  const dir = tempDir(t, 'outpost-first-run-bad-')
  const peer = await startPeer(t, { outlets: 1 })
  const port = await freePort()
  const file = writeSiteConfig({ dir, port: peer.port, outlets: 1 })
  const good = readFileSync(file, 'utf8')
  const doc = JSON.parse(good) as { sessions: Record<string, unknown>; outlets: Record<string, unknown>[] }
  doc.sessions.pollMs = 5
  doc.outlets[0]!.plan = '<img src=x id=injected>'
  const bad = `${JSON.stringify(doc, null, 2)}\n`
  writeFileSync(file, bad)
  const expected = checkConfigLines(dir, bad).map((l) => l.replace(/^[^:]+: /, ''))
  t.equal(expected.length, 3, 'check-config finds three problems (the plan twice: not an id, and unknown)', { expected })

  // As under systemd (StateDirectory=): the code file goes to the state directory.
  const state = join(dir, 'state')
  mkdirSync(state, { mode: 0o750 })
  const daemon = startDaemon(t, file, { STATE_DIRECTORY: state }, undefined, [], ['--listen', `127.0.0.1:${port}`])
  const line = await setupLine(daemon)
  t.equal(line.codeFile, join(state, 'setup-code'), 'the code file in $STATE_DIRECTORY')
  t.equal(statSync(line.codeFile).mode & 0o777, 0o600, 'readable by its owner only')
  t.same(
    daemon.stderr().map((l) => l.replace(/^[^:]+: /, '')),
    expected,
    "the problems on stderr in check-config's words",
  )
  const code = readFileSync(line.codeFile, 'utf8').split('\n')[0]!
  await untouched(t, peer, 'with an invalid config')

  const browser = await launchChromium(t)
  const page = await (await browser.newContext({ viewport: { width: 900, height: 900 } })).newPage()
  const errors: string[] = []
  page.on('pageerror', (e) => errors.push(e.message))
  await page.goto(`http://127.0.0.1:${port}/`)
  await page.fill('#code', code)
  await page.click('#code-form button')
  await page.waitForSelector('#problems li')
  const listed = await page.$$eval('#problems li', (lis) => lis.map((li) => li.textContent))
  t.same(listed, expected, 'each problem at its pointer, in check-config words')
  t.equal(await page.$('#injected'), null, 'a name with HTML in it is shown as text')
  t.equal(await page.inputValue('#config'), bad, 'the file as it is, to fix')
  const shot = join(dir, 'setup-first-run.png')
  await page.screenshot({ path: shot, fullPage: true })
  keepScreenshot(shot)

  await page.fill('#config', good)
  await page.click('#save')
  await page.waitForSelector('#msg.ok')
  t.match(await page.textContent('#msg'), /^Saved \(version [0-9a-f]{12}…\)\. The site is starting\./, 'the page says so')
  await waitFor(async () => (await peer.outlet(1)).polls > 0, 'the peer polled by the site')
  t.ok(daemon.running(), 'the same process (no restart)')
  t.equal(readFileSync(file, 'utf8'), good, 'the fix is the file')
  t.same(errors, [], 'no script errors')
  t.notOk(existsSync(line.codeFile), 'the code file is gone')
  t.equal((await daemon.stop('SIGTERM')).code, 0, 'a clean stop')
  t.match(
    journalRecords(file).filter((r) => r.type === 'config.applied'),
    [{ who: 'setup', configHash: sha(good) }],
    'journaled: config.applied by setup',
  )
  t.ok(
    readFileSync(join(`${file}.versions`, readdirSync(`${file}.versions`).find((n) => n.endsWith(`-${sha(bad)}.json`))!), 'utf8') === bad,
    'the invalid file it replaced is kept as a version',
  )
})
