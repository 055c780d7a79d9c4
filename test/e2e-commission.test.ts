/**
 * Commissioning a site from the browser, every step in one run: the built daemon as a child
 * (`outpost run --config FILE` with no file yet), the pymodbus site peer wired wrong on purpose
 * — the contactors of outlets 1 and 2 swapped, outlet 3's coil wired to nothing, outlet 4's
 * socket on L2 — with a feeder meter, and headless Chromium doing what an installer and an
 * owner do:
 *
 * 1. the setup page's form (no JSON) takes the site with no config to a running site, with its
 *    bus, supply circuit, feeder meter, price and tokens, and no outlets yet;
 * 2. the installer signs in and scans the bus;
 * 3. adds each meter found as an outlet, paired with the relay board's next coil (applied
 *    without a restart);
 * 4. runs the cross-check, which finds the swapped pair, the dead relay and the wrong phase;
 *    applies the two fixes; the electrician mends the wire; the site passes;
 * 5. the owner gives two drivers their wallets;
 * 6. the installer starts a session;
 * 7. the owner raises the price while that session runs: the session goes on at its price, a
 *    session started after the change has the new one.
 *
 * Screenshots of each step (OUTPOST_SCREENSHOTS=docs keeps them): commission-N-*.png.
 */
import t from 'tap'
import { join } from 'node:path'
import type { Page } from 'playwright-core'
import type { JournalRecord } from '../core/types.js'
import { freePort } from './helpers/mosquitto.js'
import { keepScreenshot, launchChromium } from './helpers/browser.js'
import { startDaemon, startPeer, tempDir, waitFor } from './helpers/e2e-kit.js'

/** The page's document, inside page functions. */
declare const document: any
const FEEDER = 50
type Ended = Extract<JournalRecord, { type: 'session.ended' }>

t.test('from no config to a site that charges, through the pages alone', async (t) => {
  const work = tempDir(t, 'outpost-e2e-commission-')
  const file = join(work, 'site.json')
  const peer = await startPeer(t, { outlets: 4, feeder: FEEDER, phases: [1, 1, 1, 2], wiring: { 1: 2, 2: 1, 3: 0 } })
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const daemon = startDaemon(t, file, {}, undefined, [], ['--listen', `127.0.0.1:${port}`])
  const line = (await daemon.waitLog((l) => typeof l.setupCode === 'string', 'the setup code in the log')) as unknown as { setupCode: string }
  const browser = await launchChromium(t)
  const errors: string[] = []
  const newPage = async (): Promise<Page> => {
    const page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage()
    page.on('pageerror', (e) => errors.push(e.message))
    return page
  }
  const shoot = async (page: Page, name: string): Promise<void> => {
    const shot = join(work, `commission-${name}.png`)
    await page.screenshot({ path: shot, fullPage: true })
    keepScreenshot(shot)
  }
  const records = async (token: string): Promise<JournalRecord[]> => {
    const res = await fetch(`${base}/api/records?from=1&limit=1000`, { headers: { authorization: `Bearer ${token}` } })
    return ((await res.json()) as { records: JournalRecord[] }).records
  }

  /** A start from the page's form: charging, or the page's error as the failure. */
  const startFrom = async (p: Page, outlet: string, user: string): Promise<void> => {
    await p.selectOption('#start-outlet', outlet)
    await p.fill('#start-user', user)
    await p.click('#start-go')
    await p
      .waitForFunction(
        (o: string) =>
          document.querySelector('#start-error').textContent !== '' ||
          document.querySelector(`#outlets article[data-outlet="${o}"][data-state="charging"]`),
        outlet,
        { timeout: 30_000 },
      )
      .catch(async (err: Error) => {
        const states = await p.$$eval('#outlets article', (as: any[]) => as.map((a) => `${a.dataset.outlet} ${a.dataset.state}`))
        throw new Error(`${outlet} did not start charging (outlets: ${states.join(', ')}): ${err.message}`)
      })
    t.equal(await p.textContent('#start-error'), '', `${outlet} started for ${user} from the page`)
    await p.waitForSelector(`#outlets article[data-outlet="${outlet}"][data-state="charging"]`)
  }

  // 1. First run: the form, checked at its fields, saved; the site starts in the same process.
  const page = await newPage()
  await page.goto(`${base}/`)
  await page.fill('#code', line.setupCode)
  await page.click('#code-form button')
  await page.waitForSelector('#site-form:not([hidden])')
  t.ok(await page.$('#f-bus option[value="tcp:"]'), 'a Modbus TCP host is offered beside the ports found')
  await page.fill('#f-site-id', 'lot 7')
  await page.fill('#f-site-name', 'Lot <b id="injected">7</b>')
  await page.fill('#f-storage', join(work, 'journal'))
  await page.selectOption('#f-bus', 'tcp:')
  await page.fill('#f-host', '127.0.0.1')
  await page.fill('#f-port', String(peer.port))
  await page.fill('#f-maxa', '63')
  await page.fill('#f-feeder-unit', String(FEEDER))
  t.equal(await page.inputValue('#f-feeder-model'), 'eastron-sdm630', 'the three-phase meter is the feeder model offered first')
  await page.fill('#f-currency', 'EUR')
  await page.fill('#f-perkwh', '0.40')
  await page.fill('#f-listen', `127.0.0.1:${port}`)
  await page.click('#check')
  await page.waitForSelector('#f-site-id + .field-err')
  t.match(await page.textContent('#f-site-id + .field-err'), /must be an id/, 'a bad site id: the problem at its field')
  t.equal(await page.$$eval('#problems li', (lis) => lis.length), 0, 'and nowhere else')
  await shoot(page, '1-setup')
  await page.fill('#f-site-id', 'lot-7')
  await page.click('#check')
  await page.waitForSelector('#msg.ok')
  t.equal(await page.$('.field-err'), null, 'the field error is gone once fixed')
  const installerToken = await page.inputValue('#f-token-installer')
  const ownerToken = await page.inputValue('#f-token-owner')
  t.match(installerToken, /^[A-Za-z0-9_-]{32}$/, 'a token made in the browser for the installer')
  t.not(installerToken, ownerToken, 'and another for the owner')
  const saved = JSON.parse(await page.inputValue('#config'))
  t.same(saved.outlets, [], 'the site starts with no outlets')
  t.same(
    saved.circuits,
    [{ id: 'supply', maxA: 63, meter: { bus: 'modbus', model: 'eastron-sdm630', unit: FEEDER } }],
    'the supply circuit with its feeder meter',
  )
  await page.click('#save')
  await page.waitForSelector('#started:not([hidden])')
  t.equal(await page.getAttribute('#status-link', 'href'), `${base}/`, 'the status page is where the setup page was')
  await waitFor(async () => (await peer.feeder()).polls > 0, 'the site reads its feeder meter')
  t.ok(daemon.running(), 'the same process: no restart')

  // 2. The installer signs in and scans the bus.
  await page.click('#status-link')
  await page.fill('#token', installerToken)
  await Promise.all([page.waitForURL(`${base}/`), page.click('button[type=submit]')])
  await page.waitForSelector('#outlets p.empty')
  t.equal(await page.textContent('#site'), 'Lot <b id="injected">7</b>', 'the name as text')
  await page.waitForSelector('#scan-source option[value="bus:modbus"]', { state: 'attached' })
  await page.selectOption('#scan-source', 'bus:modbus')
  await page.fill('#scan-units', `1-6,${FEEDER},100`)
  await page.click('#scan-start')
  await page.waitForSelector('#scan-result p.sub:has-text("done")', { timeout: 60_000 })
  const found = await page.$$eval('#scan-hits tbody tr', (trs: any[]) =>
    trs.map((tr) => [tr.dataset.unit, tr.children[1].textContent, tr.children[5].textContent]),
  )
  t.same(
    found.map(([unit, kind]: string[]) => [unit, kind]),
    [
      ['1', 'meter'],
      ['2', 'meter'],
      ['3', 'meter'],
      ['4', 'meter'],
      [String(FEEDER), 'meter'],
      ['100', 'relay'],
    ],
    'four meters, the feeder meter and the relay board answer',
  )
  t.equal(found.find(([u]: string[]) => u === String(FEEDER))?.[2], 'in the config: feeder of supply', 'the feeder meter is known as such')
  await shoot(page, '2-scan')

  // 3. Each meter becomes an outlet, paired with the board's next coil, polled at once.
  for (const unit of [1, 2, 3, 4]) {
    await page.click(`#scan-hits button[data-unit="${unit}"]`)
    await page.waitForSelector(`#scan-hits tr[data-unit="${unit}"] td:has-text("added")`)
  }
  await page.waitForFunction(() => document.querySelectorAll('#outlets article[data-state="off"]').length === 4, undefined, { timeout: 30_000 })
  const cfg = await fetch(`${base}/api/config`, { headers: { authorization: `Bearer ${installerToken}` } }).then((r) => r.json() as any)
  t.same(
    cfg.config.outlets.map((o: any) => [o.id, o.meter.unit, o.relay, o.circuit, o.phase]),
    [1, 2, 3, 4].map((n) => [`O${n}`, n, { model: 'modbus-coil', unit: 100, coil: n - 1 }, 'supply', 'L1']),
    'O1–O4: each meter with the next coil, on the supply circuit',
  )
  t.ok(daemon.running(), 'added without a restart')
  await shoot(page, '3-outlets')

  // 4. The cross-check, with a load on every outlet.
  for (const n of [1, 2, 3, 4]) await peer.plug(n, 10)
  await page.check('#cc-confirm')
  await page.click('#cc-start')
  await page.waitForSelector('#cc-report .cc-findings li', { timeout: 120_000 })
  const kinds = await page.$$eval('#cc-report .cc-findings li', (lis: any[]) => lis.map((li) => li.getAttribute('data-kind')))
  t.ok(kinds.includes('swapped'), `the swapped pair is found (${kinds})`)
  t.ok(kinds.includes('dead'), 'the dead relay is found')
  t.ok(kinds.includes('wrong-phase'), 'the meter on the wrong phase is found')
  await shoot(page, '4-crosscheck')
  const fixes = await page.$$eval('#cc-report button[data-finding]', (bs: any[]) => bs.map((b) => b.getAttribute('data-finding')))
  t.equal(fixes.length, 2, 'two one-click fixes: the swap and the phase')
  for (const f of fixes) {
    await page.click(`#cc-report button[data-finding="${f}"]`)
    await page.waitForFunction((f: string) => /^Fixed/.test(document.querySelector(`#cc-report button[data-finding="${f}"]`)?.textContent ?? ''), f)
  }
  const fixed = await fetch(`${base}/api/config`, { headers: { authorization: `Bearer ${installerToken}` } }).then((r) => r.json() as any)
  t.same(
    fixed.config.outlets.map((o: any) => [o.id, o.relay.coil, o.phase]),
    [
      ['O1', 1, 'L1'],
      ['O2', 0, 'L1'],
      ['O3', 2, 'L1'],
      ['O4', 3, 'L2'],
    ],
    'the relays of O1 and O2 swapped back, O4 on L2',
  )
  // The electrician mends what no config can, and the check runs again.
  await peer.cmd({ cmd: 'wire', coil: 3, socket: 3 })
  await page.check('#cc-confirm')
  await page.click('#cc-start')
  await page.waitForFunction(() => /^Passed/.test(document.querySelector('#cc-state')?.textContent ?? ''), undefined, { timeout: 120_000 })
  t.equal(await page.$$eval('#cc-report .cc-findings li[data-kind]:not([data-kind="ok"])', (lis: any[]) => lis.length), 0, 'no finding left')
  await shoot(page, '5-passed')

  // 5. The owner gives the drivers their wallets; the installer may not.
  const owner = await newPage()
  await owner.goto(`${base}/`)
  await owner.fill('#token', ownerToken)
  await Promise.all([owner.waitForURL(`${base}/`), owner.click('button[type=submit]')])
  await owner.click('#wallet-settings summary')
  await owner.waitForFunction(() => document.querySelector('#wallet-currency').value === 'EUR')
  for (const [user, amount] of [
    ['ann', '25'],
    ['bob', '12.50'],
  ] as const) {
    await owner.fill('#wallet-user', user)
    await owner.fill('#wallet-balance', amount)
    await owner.click('#wallet-form button')
    await owner.waitForSelector(`#wallets tr[data-user="${user}"]`)
  }
  t.same(
    await owner.$$eval('#wallets tbody tr', (trs: any[]) => trs.map((tr) => [...tr.children].map((td: any) => td.textContent))),
    [
      ['ann', '25.00 EUR', '0.00 EUR'],
      ['bob', '12.50 EUR', '0.00 EUR'],
    ],
    'two wallets, in minor units underneath',
  )
  const asInstaller = await fetch(`${base}/api/wallets/eve`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${installerToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ currency: 'EUR', balance: 100 }),
  })
  t.equal(asInstaller.status, 403, 'wallets are the owner’s: the installer is refused')
  await shoot(owner, '6-wallets')

  // 6. A session, started from the installer's page.
  await startFrom(page, 'O1', 'ann')
  await waitFor(async () => (await peer.outlet(1)).drawA > 9, 'O1 draws (through coil 1, the one wired to its socket)')
  await shoot(page, '7-session')

  // 7. The owner raises the price while O1's session runs.
  await owner.click('#plan-settings summary')
  const plan = '#plan-forms form[data-plan="standard"]'
  await owner.waitForSelector(plan)
  await owner.fill(`${plan} [data-pointer="/periods/0/from"]`, '25:00')
  await owner.click(`${plan} button[type=submit]`)
  await owner.waitForSelector(`${plan} .of-msg.bad`)
  t.match(await owner.textContent(`${plan} [data-error-for="/periods/0/from"]`), /HH:MM/, 'an hour that does not exist: refused at its field')
  await owner.fill(`${plan} [data-pointer="/periods/0/from"]`, '00:00')
  const before = (await records(ownerToken)).filter((r) => r.type === 'config.applied').length
  await owner.fill(`${plan} [data-pointer="/periods/0/perKwh"]`, '0.55')
  await owner.click(`${plan} button[type=submit]`)
  await owner.waitForSelector(`${plan} .of-msg.good`)
  t.match(await owner.textContent(`${plan} .of-msg`), /saved: \/plans\/0\/periods\/0\/perKwh/, 'saved: the price')
  await shoot(owner, '8-price')
  const applied = (await records(ownerToken)).filter((r) => r.type === 'config.applied')
  t.equal(applied.length, before + 1, 'one config.applied for the change')
  t.match(applied.at(-1), { who: 'owner:owner' }, 'journaled as the owner’s')
  // The installer may not change a price.
  const refused = await fetch(`${base}/api/config`, { headers: { authorization: `Bearer ${installerToken}` } }).then((r) => r.json() as any)
  t.equal(refused.config.plans[0].periods[0].perKwh, 0.55, 'the price in force')

  const e1 = (await peer.outlet(1)).energyWh
  await waitFor(async () => (await peer.outlet(1)).energyWh > e1 + 5, 'O1 goes on charging after the change')
  await owner.waitForSelector('#outlets article[data-outlet="O1"][data-state="charging"]')
  // A session started after the change has the new price.
  await startFrom(owner, 'O2', 'bob')
  await waitFor(async () => (await peer.outlet(2)).drawA > 9, 'O2 draws')
  const e2 = (await peer.outlet(2)).energyWh
  await waitFor(async () => (await peer.outlet(2)).energyWh > e2 + 5, 'O2 charges')
  for (const o of ['O1', 'O2']) {
    await owner.click(`#outlets article[data-outlet="${o}"] button[data-stop]`)
    await owner.waitForSelector(`#outlets article[data-outlet="${o}"][data-state="off"]`, { timeout: 30_000 })
  }
  const ended = (await records(ownerToken)).filter((r): r is Ended => r.type === 'session.ended')
  const ann = ended.find((r) => r.userId === 'ann')!
  const bob = ended.find((r) => r.userId === 'bob')!
  t.match(ann, { outlet: 'O1', reason: 'manager-stopped' }, 'ann’s session ran until it was stopped')
  t.ok(ann.energyWh > 0 && ann.lines.every((l) => l.perKwh === 0.4), 'ann’s session kept the price it started with')
  t.ok(bob.energyWh > 0 && bob.lines.every((l) => l.perKwh === 0.55), 'bob’s session, started after the change, has the new price')
  t.same(errors, [], 'no script errors on any page')
  t.ok(daemon.running(), 'one process from the setup page to here')
})
