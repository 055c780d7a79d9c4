/**
 * .ci/preflight, which `npm test` runs before the build and before any test: with every
 * program of .ci/debian-packages present it is silent and exits 0; with some missing it
 * prints ONE line naming exactly the Debian packages to install and exits non-zero.
 * "Missing" is made real by running it with a PATH that lacks them.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { packagePath } from '../core/paths.js'

const PREFLIGHT = packagePath('.ci', 'preflight')
const run = (path: string, ...args: string[]) => spawnSync('/bin/bash', [PREFLIGHT, ...args], { encoding: 'utf8', env: { PATH: path } })
const lines = (s: string) => s.split('\n').filter((l) => l !== '')

/** The cmd checks of the list (the sbin ones are also found outside PATH, so are left out here). */
const commands = readFileSync(packagePath('.ci', 'debian-packages'), 'utf8')
  .split('\n')
  .map((l) => l.trim().split(/\s+/))
  .filter(([kind]) => kind === 'cmd')
  .map(([, what, pkg]) => ({ what: what!, pkg: pkg! }))

function dirWith(names: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-preflight-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  for (const name of names) {
    const found = spawnSync('/bin/bash', ['-c', `command -v ${name}`], { encoding: 'utf8' }).stdout.trim()
    if (!found) throw new Error(`${name} is not on this machine's PATH`)
    symlinkSync(found, join(dir, name))
  }
  return dir
}

t.test('everything present: silent, exit 0', async (t) => {
  const r = run(process.env.PATH ?? '')
  t.equal(r.status, 0, r.stderr)
  t.equal(r.stdout + r.stderr, '', 'says nothing')
  t.equal(run(process.env.PATH ?? '', '--missing').stdout, '\n', '--missing (for .ci/run): an empty list')
})

t.test('a PATH with none of the tools: one line naming the packages, non-zero exit', async (t) => {
  const r = run(dirWith([]))
  t.not(r.status, 0, 'non-zero exit')
  t.equal(r.stdout, '', 'nothing on stdout')
  t.equal(lines(r.stderr).length, 1, `one line: ${r.stderr}`)
  const pkgs = r.stderr.match(/apt-get install -y --no-install-recommends ([\w. -]+?) \(or run: bash \.ci\/run\)/)?.[1]?.split(' ') ?? []
  const expected = [...new Set(commands.map((c) => c.pkg))]
  t.same(
    pkgs.filter((p) => expected.includes(p)),
    expected,
    "names the package of every missing command, each once, in the list's order",
  )
  t.same(
    pkgs.filter((p) => !expected.includes(p)),
    [],
    'and nothing this machine has outside PATH (mosquitto in /usr/sbin, the python modules)',
  )
})

t.test('a PATH lacking only socat and mbpoll: names exactly those two', async (t) => {
  const present = commands.map((c) => c.what).filter((w) => w !== 'socat' && w !== 'mbpoll')
  const r = run(dirWith(present))
  t.equal(r.status, 1)
  t.same(lines(r.stderr), [
    'npm test needs Debian packages that are missing: apt-get install -y --no-install-recommends socat mbpoll (or run: bash .ci/run)',
  ])
  t.equal(run(dirWith(present), '--missing').stdout, 'socat mbpoll\n', '--missing lists the same two')
})

t.test('npm test runs it before the build and before tap', async (t) => {
  const pkg = JSON.parse(readFileSync(packagePath('package.json'), 'utf8')) as { scripts: { test: string; 'build:test': string } }
  t.match(pkg.scripts.test, /^bash \.ci\/preflight && rm -rf dist\/test && npm run build:test && tap\b/)
  // build:test is the build (tsc and the validators) with tap's own build beside it, and fails if either does.
  t.match(pkg.scripts['build:test'], /npm run build\b/)
  t.match(pkg.scripts['build:test'], /tap build/)
})

t.test('a PostgreSQL program is looked for off PATH too, and its package named when absent', async (t) => {
  // The same script beside a list of our own: a pg check that finds the server, one that cannot.
  const dir = mkdtempSync(join(tmpdir(), 'outpost-preflight-pg-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'preflight'), readFileSync(PREFLIGHT))
  writeFileSync(join(dir, 'debian-packages'), 'pg   postgres              postgresql\n')
  const present = spawnSync('/bin/bash', [join(dir, 'preflight')], { encoding: 'utf8', env: { PATH: '/nonexistent' } })
  t.equal(present.status, 0, `found in /usr/lib/postgresql/*/bin without PATH: ${present.stderr}`)
  writeFileSync(join(dir, 'debian-packages'), 'pg   no-such-pg-program    postgresql\n')
  const absent = spawnSync('/bin/bash', [join(dir, 'preflight')], { encoding: 'utf8', env: { PATH: '/nonexistent' } })
  t.equal(absent.status, 1)
  t.same(lines(absent.stderr), [
    'npm test needs Debian packages that are missing: apt-get install -y --no-install-recommends postgresql (or run: bash .ci/run)',
  ])
})
