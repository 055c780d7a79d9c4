/**
 * Headless Chromium for page tests: Debian's `chromium` (/usr/bin/chromium; CI
 * installs it) driven by playwright-core. Closed at teardown.
 */
import { existsSync, mkdirSync, copyFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import { chromium, type Browser, type Page } from 'playwright-core'

interface Teardownable {
  teardown(fn: () => unknown): void
}

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'

export async function launchChromium(t: Teardownable): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does)`)
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking'],
  })
  t.teardown(() => browser.close())
  return browser
}

/** Also keep a screenshot where a person can look at it (OUTPOST_SCREENSHOTS=DIR), since test temp dirs are removed. */
export function keepScreenshot(file: string): void {
  const dir = process.env.OUTPOST_SCREENSHOTS
  if (!dir) return
  mkdirSync(dir, { recursive: true })
  copyFileSync(file, join(dir, basename(file)))
}

/** The status page at `base` in headless Chromium, signed in with `token`; `errors` collects the page's script errors. */
export async function signedInPage(
  t: Teardownable,
  base: string,
  token: string,
  viewport = { width: 1100, height: 900 },
): Promise<{ page: Page; errors: string[] }> {
  const browser = await launchChromium(t)
  const page = await (await browser.newContext({ viewport })).newPage()
  const errors: string[] = []
  page.on('pageerror', (e) => errors.push(e.message))
  await page.goto(base)
  await page.fill('#token', token)
  await Promise.all([page.waitForURL(`${base}/`), page.click('button[type=submit]')])
  return { page, errors }
}
