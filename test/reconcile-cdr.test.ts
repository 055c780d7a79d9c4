/**
 * `outpost reconcile --cdr FILE --config SITE` (the built CLI) against a real journal's uplink
 * over mosquitto: one OCPI 2.2.1 CDR per session.ended it holds, valid against the schema, the
 * totals the records'; resumed without a CDR twice or missing; usage and config errors.
 */
import t from 'tap'
import { existsSync, writeFileSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { openTestLog } from './helpers/test-log.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { bodies } from './helpers/memory-log.js'
import { makeUplink, tempDir, uplinkConfig, waitFor } from './helpers/uplink-kit.js'
import { runCliAsync } from './helpers/cli.js'
import { OCPI, ocpiValidators } from './helpers/export-kit.js'

const run = (args: string[]) => runCliAsync(['reconcile', ...args])

function siteConfig(dir: string, ocpi: boolean): string {
  const file = join(dir, ocpi ? 'site.json' : 'site-no-ocpi.json')
  writeFileSync(
    file,
    JSON.stringify({
      site: { id: 'lot-7', timezone: 'America/Vancouver' },
      storage: { dir: join(dir, 'unused') },
      buses: [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: 5020 }],
      outlets: [{ id: 'A1', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'standard' }],
      plans: [
        {
          id: 'standard',
          currency: 'CAD',
          activationFee: 0.5,
          periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 0.15, perHour: 0.5 }],
        },
      ],
      ...(ocpi ? { ocpi: OCPI } : {}),
    }),
  )
  return file
}

const lines = (file: string) =>
  readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l))

t.test('outpost reconcile --cdr writes a CDR per held session, and resumes', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  const config = siteConfig(dir, true)
  const log = await openTestLog(t)
  await log.append(bodies(30))
  const uplink = makeUplink(t, log, uplinkConfig(broker.url, { batchRecords: 7, windowRecords: 50 }))
  uplink.start()
  await waitFor(() => uplink.state().status === 'online', 'online')
  const out = join(dir, 'lot-7.jsonl')
  const cdrFile = join(dir, 'lot-7.cdr.jsonl')
  const args = ['--url', broker.url, '--site', 'lot-7', '--out', out, '--cdr', cdrFile, '--config', config, '--until-head', '--timeout', '90']
  let r = await run(args)
  t.equal(r.status, 0, 'reconcile exits 0', { stderr: r.stderr })
  t.match(JSON.parse(r.stdout), { held: 30, cdrFile, cdrs: 30 })
  const { cdr: problems } = ocpiValidators()
  let cdrs = lines(cdrFile)
  t.equal(cdrs.length, 30, 'one CDR per session.ended')
  t.same(cdrs.flatMap(problems).slice(0, 3), [], 'each valid against the OCPI 2.2.1 schema')
  t.same(
    cdrs.map((c) => c.session_id),
    Array.from({ length: 30 }, (_, i) => `s-${i}`),
    'in record order',
  )
  t.ok(
    cdrs.every((c) => c.total_cost.excl_vat === 2.08 && c.total_fixed_cost.excl_vat === 0.5),
    'the totals are the records',
  )

  await log.append(bodies(5, 30))
  r = await run(args)
  t.equal(r.status, 0, 'reconcile exits 0', { stderr: r.stderr })
  cdrs = lines(cdrFile)
  t.same(
    cdrs.map((c) => c.session_id),
    Array.from({ length: 35 }, (_, i) => `s-${i}`),
    'resumed: rebuilt from the records file, then the new ones; none twice, none missing',
  )
})

t.test('outpost reconcile --cdr: what it needs', async (t) => {
  const dir = tempDir(t)
  let r = await run(['--url', 'mqtt://127.0.0.1:1', '--site', 'lot-7', '--cdr', join(dir, 'c.jsonl')])
  t.equal(r.status, 64, 'without --config: usage error')
  t.match(r.stderr, /--cdr needs --config FILE/)
  r = await run(['--url', 'mqtt://127.0.0.1:1', '--site', 'lot-7', '--cdr', join(dir, 'c.jsonl'), '--config', siteConfig(dir, false)])
  t.equal(r.status, 78, 'a config without an ocpi section: 78')
  t.match(r.stderr, /\/ocpi: is required for --cdr/)
  t.notOk(existsSync(join(dir, 'c.jsonl')), 'no CDR file made')
})
