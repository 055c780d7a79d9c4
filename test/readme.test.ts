import t from 'tap'
import { readFileSync } from 'node:fs'
import { withReference } from '../daemon/config-reference.js'
import { packagePath } from '../core/paths.js'

t.test("the README's configuration reference is the one generated from the schema", async (t) => {
  const readme = readFileSync(packagePath('README.md'), 'utf8')
  t.equal(readme, withReference(readme), 'out of date: run `npm run docs`')
  for (const key of ['site.timezone', 'sessions.graceSeconds', 'outlets[].relay.coil', 'buses[].baudRate', 'offline.limitMinutes']) {
    t.match(readme, `\`${key}\``, `documents ${key}`)
  }
})

t.test('the README shows the two commands', async (t) => {
  const readme = readFileSync(packagePath('README.md'), 'utf8')
  t.match(readme, 'npm start')
  t.match(readme, 'npm test')
})
