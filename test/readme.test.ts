import t from 'tap'
import { readFileSync } from 'node:fs'
import { withReference } from '../daemon/config-reference.js'
import { withErrorTables } from '../daemon/error-reference.js'
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

t.test('docs/errors.md lists the error catalog as generated, and the README links it', async (t) => {
  const doc = readFileSync(packagePath('docs', 'errors.md'), 'utf8')
  t.equal(doc, withErrorTables(doc), 'out of date: run `npm run docs`')
  for (const code of ['BUS_WRITE_FAILED', 'JOURNAL_COMPACTED', 'ENGINE_UNKNOWN_PLAN', 'NODE_RED_USER'])
    t.match(doc, `| \`${code}\` |`, `documents ${code}`)
  t.match(doc, '| `no-balance` | 402 |', 'a refusal code with its HTTP status')
  t.match(readFileSync(packagePath('README.md'), 'utf8'), '(docs/errors.md)')
})
