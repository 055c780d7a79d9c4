/**
 * The status page on a site that speaks OCPP: its central system's link beside the uplink
 * (online once accepted, offline while the central system is away), in headless Chromium
 * against the built daemon, the pymodbus peer and an ocpp-rpc central system in strict mode.
 */
import t from 'tap'
import { freePort } from './helpers/mosquitto.js'
import { launchChromium } from './helpers/browser.js'
import { ocppSection, startCsms } from './helpers/csms.js'
import { startDaemon, startPeer, tempDir, waitFor, writeSiteConfig } from './helpers/e2e-kit.js'

/** The page's document, inside page functions. */
declare const document: any
const TOKEN = 'ocpp-page-token-0123'

t.test('the page shows the central system’s link, online and then offline', async (t) => {
  const dir = tempDir(t, 'outpost-e2e-ocpp-page-')
  const peer = await startPeer(t, { outlets: 1 })
  const csms = await startCsms(t)
  const port = await freePort()
  const file = writeSiteConfig({
    dir,
    port: peer.port,
    outlets: 1,
    extra: { ocpp: ocppSection(csms), api: { listen: `127.0.0.1:${port}`, token: TOKEN } },
  })
  const daemon = startDaemon(t, file)
  await waitFor(() => csms.of('BootNotification').length > 0, 'the charge point boots')
  const browser = await launchChromium(t)
  const page = await (await browser.newContext()).newPage()
  const base = `http://127.0.0.1:${port}`
  await waitFor(async () => (await fetch(`${base}/api/health`).catch(() => undefined))?.status === 200, 'the API')
  await page.goto(base)
  await page.fill('#token', TOKEN)
  await Promise.all([page.waitForURL(`${base}/`), page.click('button[type=submit]')])
  const line = () =>
    page.evaluate(() => {
      const dts = [...document.querySelectorAll('#uplink dt')] as any[]
      const dt = dts.find((d) => d.textContent === 'Central system (OCPP)')
      return dt ? `${dt.nextElementSibling.textContent} ${dt.nextElementSibling.className}` : null
    })
  await page.waitForFunction(() =>
    [...document.querySelectorAll('#uplink dd')].some((d: any) => d.textContent === 'online' && d.className === 'good'),
  )
  t.equal(await line(), 'online good', 'online once the central system accepted the boot')
  await csms.down()
  await waitFor(async () => (await line()) === 'offline bad', 'the page says offline', 30_000)
  t.pass('offline while the central system is away')
  t.equal(csms.violations.length, 0, 'no strict-mode violation')
  await daemon.stop()
})
