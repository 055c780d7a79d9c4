import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { runCli } from './helpers/cli.js'
import { cli } from '../daemon/cli.js'
import { version } from '../daemon/cli-common.js'
import { packagePath } from '../core/paths.js'

const dir = mkdtempSync(join(tmpdir(), 'outpost-cli-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const example = packagePath('config', 'example.json')
const exampleObj = (): any => JSON.parse(readFileSync(example, 'utf8'))

t.test('built CLI: --version and --help', async (t) => {
  const v = runCli(['--version'])
  t.equal(v.status, 0)
  t.equal(v.stdout.trim(), JSON.parse(readFileSync(packagePath('package.json'), 'utf8')).version)
  const h = runCli(['--help'])
  t.equal(h.status, 0)
  for (const c of ['run', 'check-config', 'sim', 'scan', 'records', 'verify']) t.match(h.stdout, new RegExp(`\\n  ${c} `), `help lists ${c}`)
  const none = runCli([])
  t.equal(none.status, 64, 'no command is a usage error')
  const bad = runCli(['frobnicate'])
  t.equal(bad.status, 64)
  t.match(bad.stderr, /unknown command "frobnicate"/)
})

t.test("the outpost bin: the gateway's words and the cloud side's, from one executable", async (t) => {
  const bin = packagePath('dist', 'bin', 'outpost.js')
  const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 60_000 })
  t.equal(JSON.parse(readFileSync(packagePath('package.json'), 'utf8')).bin.outpost, 'dist/bin/outpost.js', 'package.json names it')
  const h = run('--help')
  t.equal(h.status, 0)
  for (const c of ['run', 'check-config', 'verify', 'ingest']) t.match(h.stdout, new RegExp(`\\n  ${c} `), `help lists ${c}`)
  t.notMatch(runCli(['--help']).stdout, /\n {2}ingest /, "the gateway's own CLI does not name the cloud side")
  const usage = run('ingest', '--help')
  t.equal(usage.status, 0)
  t.match(usage.stdout, /^Usage: outpost ingest --url URL --db POSTGRES_URL/)
  const missing = run('ingest', '--url', 'mqtt://127.0.0.1:1')
  t.equal(missing.status, 64, 'ingest runs: its own usage error')
  t.match(missing.stderr, /outpost ingest: --url and --db are required/)
  const check = run('check-config', example)
  t.equal(check.status, 0, check.stderr)
  t.match(check.stdout, /ok \(site lot-7/, 'a gateway word goes to the gateway')
  t.equal(run('frobnicate').status, 64)
})

t.test('built CLI: check-config accepts the contract example', async (t) => {
  const r = runCli(['check-config', example])
  t.equal(r.status, 0, r.stderr)
  t.match(r.stdout, /ok \(site lot-7: 2 buses, 2 outlets, 2 plans\)/)
})

t.test('built CLI: check-config prints every problem, one line each, exit 78', async (t) => {
  const cfg = exampleObj()
  delete cfg.site.id
  cfg.outlets[1].relay.coil = 0
  cfg.plans[1].periods[0].to = '25:00'
  const f = join(dir, 'bad.json')
  writeFileSync(f, JSON.stringify(cfg, null, 2))
  const r = runCli(['check-config', f])
  t.equal(r.status, 78)
  const lines = r.stderr.trim().split('\n')
  t.same(lines.sort(), [
    `${f}: /outlets/1/relay/coil: coil 0 of unit 100 on bus "lan" is already switched by /outlets/0`,
    `${f}: /plans/1/periods/0/to: must be a time HH:MM from 00:00 to 23:59 (24:00 only as an end)`,
    `${f}: /site/id: is required`,
  ])
  t.equal(r.stdout, '', 'nothing on stdout for an invalid config')
})

t.test('built CLI: malformed JSON, missing file, usage', async (t) => {
  const f = join(dir, 'broken.json')
  writeFileSync(f, '{\n  "site": { "id": "x" }\n  "storage": {}\n}\n')
  const r = runCli(['check-config', f])
  t.equal(r.status, 78)
  t.equal(r.stderr.trim(), `${f}:3:3: malformed JSON: expected ',' (or a closing bracket)`)
  const missing = runCli(['check-config', join(dir, 'nope.json')])
  t.equal(missing.status, 78)
  t.equal(missing.stderr.trim(), `${join(dir, 'nope.json')}: /: cannot read config: no such file`)
  t.equal(runCli(['check-config']).status, 64)
})

t.test('in-process: the same entry point', async (t) => {
  const out: string[] = []
  const err: string[] = []
  const io = { out: (s: string) => void out.push(s), err: (s: string) => void err.push(s) }
  t.equal(await cli(['--version'], io), 0)
  t.equal(out.join('').trim(), version)
  t.equal(await cli(['check-config', example], io), 0)
  t.match(out.join(''), /ok \(site lot-7/)
  const f = join(dir, 'bad2.json')
  writeFileSync(f, JSON.stringify({ ...exampleObj(), site: { id: 'x', timezone: 'Moon/Base' } }))
  t.equal(await cli(['check-config', f], io), 78)
  t.equal(err.join(''), `${f}: /site/timezone: "Moon/Base" is not an IANA time zone (e.g. America/Vancouver, Europe/Berlin, UTC)\n`)
  t.equal(await cli(['nope'], io), 64)
  t.match(err.join(''), /unknown command "nope"/)
})
