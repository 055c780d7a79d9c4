/**
 * The record types are listed once (core/types.ts RECORD_TYPES, checked against the record
 * shapes by the compiler). Node-RED's editor runs in the browser without the daemon's
 * bridge, so the events node's edit dialog carries its own copy: it must offer exactly them.
 */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { RECORD_TYPES } from '../core/types.js'
import { packageRoot } from '../core/paths.js'

t.test("the events node's editor offers exactly the record types", async (t) => {
  const html = readFileSync(join(packageRoot, 'flows', 'outpost-events.html'), 'utf8')
  const m = /var TYPES = (\[[^\]]*\])/.exec(html)
  t.ok(m, 'the editor lists its types in one array')
  const listed = JSON.parse(m![1]!.replace(/'/g, '"')) as string[]
  t.same([...listed].sort(), [...RECORD_TYPES].sort())
})
