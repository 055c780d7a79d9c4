import t from 'tap'
import { spawnSync } from 'node:child_process'
import { writeFileSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { openTestLog } from './helpers/test-log.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { bodies } from './helpers/memory-log.js'
import { makeUplink, readJsonLines, tempDir, uplinkConfig, waitFor } from './helpers/uplink-kit.js'
import { cliPath, runCliAsync } from './helpers/cli.js'
import { verifyChain } from '../daemon/uplink/chain.js'

const run = (args: string[]) => runCliAsync(['reconcile', ...args])

t.test('outpost reconcile collects, verifies, acks and resumes', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const log = await openTestLog(t)
  await log.append(bodies(500))
  const uplink = makeUplink(t, log, uplinkConfig(broker.url, { batchRecords: 50, windowRecords: 200 }))
  uplink.start()
  await waitFor(() => uplink.state().status === 'online', 'online')
  const out = join(dir, 'lot-7.jsonl')
  let r = await run(['--url', broker.url, '--site', 'lot-7', '--out', out, '--until-head', '--timeout', '90'])
  t.equal(r.status, 0, r.stderr)
  const summary = JSON.parse(r.stdout) as Record<string, unknown>
  t.match(summary, { file: out, held: 500, head: 500, chainBreak: null })
  t.equal(readJsonLines(out).length, 500)
  t.ok(verifyChain(readJsonLines(out)).ok)
  await waitFor(() => log.acked() === 500, 'the tool acked what it wrote')

  await log.append(bodies(20, 500))
  r = await run(['--url', broker.url, '--site', 'lot-7', '--out', out, '--until-head', '--timeout', '90'])
  t.equal(r.status, 0, r.stderr)
  t.match(JSON.parse(r.stdout), { held: 520 })
  const lines = readJsonLines(out)
  t.same(
    lines.map((l) => l.seq),
    Array.from({ length: 520 }, (_, i) => i + 1),
    'resumed: nothing twice, nothing missing',
  )
  // The journal's own offline checker agrees with the consumer about the reconciled file.
  const v = spawnSync(process.execPath, [cliPath, 'verify', out], { encoding: 'utf8' })
  t.equal(v.status, 0, v.stdout + v.stderr)
  t.match(v.stdout, /intact: 520 records/)
})

t.test('outpost reconcile: usage errors and a tampered file', async (t) => {
  const dir = tempDir(t)
  let r = await run(['--url', 'mqtt://127.0.0.1:1'])
  t.equal(r.status, 64)
  t.match(r.stderr, /--url and --site are required/)
  r = await run(['--site', 'x', '--url', 'mqtt://127.0.0.1:1', '--bogus'])
  t.equal(r.status, 64)

  // A file whose second record was altered is refused at start, naming the line.
  const log = await openTestLog(t)
  const recs = await log.append(bodies(3))
  const tampered = recs.map((x) => ({ ...x }))
  ;(tampered[1] as { total?: number }).total = 1
  const file = join(dir, 'bad.jsonl')
  writeFileSync(file, tampered.map((x) => JSON.stringify(x)).join('\n') + '\n')
  r = await run(['--url', 'mqtt://127.0.0.1:1', '--site', 'lot-7', '--out', file])
  t.equal(r.status, 70)
  t.match(r.stderr, /RECONCILE_FILE: .*bad\.jsonl:2: seq 2: hash/)
  t.equal(readFileSync(file, 'utf8').split('\n').length, 4, 'the file is left as it was')
})
