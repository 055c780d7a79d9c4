/**
 * systemd/install.sh, run for real with --root into temporary trees, from a copy of this
 * checkout (the files git knows, as a fresh clone would have them): it installs the
 * clone's dependencies and builds it, creates the user in the tree's own /etc/passwd,
 * packs the package, runs the real `npm ci --omit=dev` into DIR/opt/outpost, and enables
 * the unit with `systemctl --root`. The installed tree then runs on its own node_modules:
 * `outpost --version`, `check-config`, and `outpost run` against a pymodbus site on a
 * serial pty. Re-running it upgrades to the same tree and keeps the config and the state.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import {
  chmodSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs'
import { join, relative } from 'node:path'
import { packagePath } from '../core/paths.js'
import { version } from '../daemon/cli-common.js'
import { ptyPair, startDaemon, startPeer, tempDir, waitFor, writeSiteConfig } from './helpers/e2e-kit.js'

// Real installer runs (the first runs npm ci in a fresh clone and builds it; the re-run on the
// unchanged clone skips the compile, the live upgrade compiles again over a stale dist/) take
// about two minutes on a loaded 2-core machine: more than .taprc's 240 s per file allows when
// the suite runs several files at a time. One upgrade serves both the stale-code checks and
// the live path: a second identical upgrade would only repeat the build and the npm ci.
t.setTimeout(900_000)

const ETC_FILES = {
  'etc/passwd': 'root:x:0:0:root:/root:/bin/bash\n',
  'etc/group': 'root:x:0:\ndialout:x:20:\n',
  'etc/shadow': 'root:*:19000:0:99999:7:::\n',
  'etc/gshadow': 'root:*::\ndialout:*::\n',
}

/** A fresh target tree holding just enough of /etc for useradd --prefix. */
function freshRoot(): string {
  const root = tempDir(t, 'outpost-install-root-')
  mkdirSync(join(root, 'etc'))
  for (const [file, text] of Object.entries(ETC_FILES)) writeFileSync(join(root, file), text, { mode: file.includes('shadow') ? 0o600 : 0o644 })
  return root
}

/** This checkout as a clone would have it: tracked and new files, nothing ignored (no node_modules, no dist). */
function cloneCopy(): string {
  const src = tempDir(t, 'outpost-install-src-')
  const list = spawnSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: packagePath(), encoding: 'utf8' })
  if (list.status !== 0) throw new Error(`git ls-files: ${list.stderr}`)
  for (const file of list.stdout.split('\0').filter(Boolean)) {
    const from = packagePath(file)
    if (!existsSync(from)) continue // deleted in the working tree
    cpSync(from, join(src, file), { recursive: false, preserveTimestamps: true })
  }
  return src
}

interface Run {
  status: number | null
  out: string
}

/** npm's own variables from `npm test` are not the installer's business; the cache is warm. */
function installerEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k)) env[k] = v
  return { ...env, npm_config_prefer_offline: 'true', ...extra }
}

function install(src: string, root: string, env: NodeJS.ProcessEnv = installerEnv(), args: string[] = []): Run {
  const r = spawnSync('bash', [join(src, 'systemd', 'install.sh'), '--root', root, ...args], { env, encoding: 'utf8', timeout: 400_000 })
  if (r.error) throw r.error
  return { status: r.status, out: r.stdout + r.stderr }
}

/** Every entry under `root`: path, type, mode, owner, and content hash or link target. */
function snapshot(root: string, excluded: string[] = []): string[] {
  const lines: string[] = []
  const walk = (dir: string) => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name)
      const rel = relative(root, path)
      if (excluded.includes(rel)) continue
      const s = lstatSync(path)
      const head = `${rel} ${(s.mode & 0o7777).toString(8)} ${s.uid}:${s.gid}`
      if (s.isSymbolicLink()) lines.push(`${head} -> ${readlinkSync(path)}`)
      else if (s.isDirectory()) {
        lines.push(`${head} dir`)
        walk(path)
      } else lines.push(`${head} ${createHash('sha256').update(readFileSync(path)).digest('hex')}`)
    }
  }
  walk(root)
  return lines
}

const userLine = (root: string, name: string) =>
  readFileSync(join(root, 'etc/passwd'), 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${name}:`))
const groupLine = (root: string, name: string) =>
  readFileSync(join(root, 'etc/group'), 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${name}:`))
const WANTS = 'etc/systemd/system/multi-user.target.wants/outpost.service'
const nodePath = spawnSync('sh', ['-c', 'command -v node'], { encoding: 'utf8' }).stdout.trim()

t.test('every file the code reads at run time is in the package (package.json "files")', async (t) => {
  const packed = spawnSync('npm', ['pack', '--dry-run', '--json'], { cwd: packagePath(), encoding: 'utf8', env: installerEnv() })
  const files = (JSON.parse(packed.stdout) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path)
  const shipped = (p: string) => files.some((f) => f === p || f.startsWith(p.replace(/\/?$/, '/')))
  const wanted = new Set<string>()
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name)
      if (statSync(path).isDirectory()) walk(path)
      else if (name.endsWith('.js') && shipped(relative(packagePath(), path))) {
        const code = readFileSync(path, 'utf8')
        // packagePath('config', 'site.schema.json'); var/ is where the demo writes, not something shipped.
        for (const m of code.matchAll(/packagePath\(((?:'[^']*'(?:,\s*)?)+)\)/g)) {
          const parts = [...m[1]!.matchAll(/'([^']*)'/g)].map((x) => x[1]!)
          if (parts[0] !== 'var') wanted.add(parts.join('/'))
        }
        // new URL('./static/', import.meta.url): relative to the compiled file.
        for (const m of code.matchAll(/new URL\('([^']+)',\s*import\.meta\.url\)/g)) wanted.add(relative(packagePath(), join(dir, m[1]!)))
      }
    }
  }
  walk(packagePath('dist'))
  t.ok(wanted.has('config/site.schema.json') && wanted.has('drivers/models'), `found the run-time reads (${[...wanted].join(', ')})`)
  t.same(
    [...wanted].filter((p) => !shipped(p)),
    [],
    'each one is packed',
  )
  t.ok(shipped('dist/daemon/cli.js'), 'the CLI is packed')
  t.ok(shipped('dist/bin/outpost.js'), 'and the bin')
})

t.test('an old Node is refused before anything is written', async (t) => {
  const root = freshRoot()
  const fake = tempDir(t, 'outpost-install-fakenode-')
  writeFileSync(join(fake, 'node'), '#!/bin/sh\necho v18.19.1\n')
  chmodSync(join(fake, 'node'), 0o755)
  const r = install(packagePath(), root, installerEnv({ PATH: `${fake}:${process.env.PATH}` }))
  t.not(r.status, 0, 'non-zero exit')
  t.match(r.out, /Node v18\.19\.1 at .*\/node is too old: Outpost needs Node 20 or newer/, 'says which Node and what is needed')
  t.same(readdirSync(root), ['etc'], 'nothing written')
  t.notOk(userLine(root, 'outpost'), 'no user created')
})

t.test('install, edit, upgrade, refuse an invalid config', async (t) => {
  const src = cloneCopy()
  const root = freshRoot()

  // ------------------------------------------------------------ first install: no site.json, the setup page's
  const setup = install(src, root)
  t.equal(setup.status, 0, `first install exits 0\n${setup.out}`)
  t.match(setup.out, /installing the clone's dependencies \(npm ci/, 'a fresh clone gets its dependencies')
  t.match(setup.out, /installing \S+'s runtime dependencies \(npm ci --omit=dev --omit=optional\)/, 'and the install its runtime dependencies')
  t.match(setup.out, /no \/etc\/outpost\/site\.json yet: the service will serve the first-run setup page/)
  t.match(setup.out, /open http:\/\/\S+:8080\/ and enter the one-time setup code/, 'says where the page is')
  t.match(setup.out, /sudo cat \/var\/lib\/outpost\/setup-code/, 'and where its code is')
  t.notOk(existsSync(join(root, 'etc/outpost/site.json')), 'no config written: the page writes it')
  t.ok(lstatSync(join(root, WANTS)).isSymbolicLink(), 'enabled: the service serves the setup page')

  // ------------------------------------------------------------ --example: the hand-written path
  unlinkSync(join(root, WANTS))
  const first = install(src, root, installerEnv(), ['--example'])
  t.equal(first.status, 0, `the --example install exits 0\n${first.out}`)
  t.match(first.out, /installed the example configuration as \/etc\/outpost\/site\.json/)
  t.match(first.out, /skipped daemon-reload, udevadm reload\/trigger and starting the service \(--root\)/, 'says what it skipped')
  t.match(first.out, /not enabling outpost\.service: \/etc\/outpost\/site\.json is still the example/, 'tells the installer to edit it')
  t.notOk(existsSync(join(root, WANTS)), 'not enabled')

  const user = userLine(root, 'outpost')?.split(':') ?? []
  t.match(user, ['outpost', 'x', /^\d+$/, /^\d+$/, /Outpost/, '/var/lib/outpost', '/usr/sbin/nologin'], 'a system user with no login')
  const uid = Number(user[2])
  const gid = Number(groupLine(root, 'outpost')?.split(':')[2])
  t.equal(Number(user[3]), gid, 'primary group outpost')
  t.ok(groupLine(root, 'dialout')?.split(':')[3]?.split(',').includes('outpost'), 'outpost is in dialout')

  const mode = (p: string) => (statSync(join(root, p)).mode & 0o7777).toString(8)
  const owner = (p: string) => `${statSync(join(root, p)).uid}:${statSync(join(root, p)).gid}`
  t.equal(
    `${mode('etc/outpost')} ${owner('etc/outpost')}`,
    `770 0:${gid}`,
    '/etc/outpost: root-owned, the service group may save site.json there (setup page, config API)',
  )
  t.equal(`${mode('etc/outpost/site.json')} ${owner('etc/outpost/site.json')}`, `640 0:${gid}`, 'site.json: secrets readable by the service only')
  t.equal(`${mode('var/lib/outpost')} ${owner('var/lib/outpost')}`, `750 ${uid}:${gid}`, "/var/lib/outpost: the service user's")
  const site = JSON.parse(readFileSync(join(root, 'etc/outpost/site.json'), 'utf8')) as { api: { token: string }; site: { name: string } }
  const example = JSON.parse(readFileSync(packagePath('config', 'example.json'), 'utf8')) as { api: { token: string } }
  t.match(site.api.token, /^[\w-]{32}$/, 'a random api.token, not change-me')
  t.same({ ...site, api: { ...site.api, token: 'change-me' } }, example, 'otherwise the example as written')

  const unitText = readFileSync(packagePath('systemd', 'outpost.service'), 'utf8').replace('ExecStart=/usr/bin/node ', `ExecStart=${nodePath} `)
  t.equal(readFileSync(join(root, 'etc/systemd/system/outpost.service'), 'utf8'), unitText, "the unit (with this machine's node)")
  const nrUnitText = readFileSync(packagePath('systemd', 'outpost-node-red.service'), 'utf8').replace(
    'ExecStart=/usr/bin/node ',
    `ExecStart=${nodePath} `,
  )
  t.equal(readFileSync(join(root, 'etc/systemd/system/outpost-node-red.service'), 'utf8'), nrUnitText, "Node-RED's unit")
  const nr = userLine(root, 'outpost-node-red')?.split(':') ?? []
  t.match(nr, ['outpost-node-red', 'x', /^\d+$/, /^\d+$/, /Node-RED/, '/var/lib/outpost-node-red', '/usr/sbin/nologin'], "Node-RED's own system user")
  t.notOk(groupLine(root, 'dialout')?.split(':')[3]?.split(',').includes('outpost-node-red'), 'not in dialout')
  t.equal(
    `${mode('var/lib/outpost-node-red')} ${owner('var/lib/outpost-node-red')}`,
    `700 ${nr[2]}:${nr[3]}`,
    "Node-RED's directory: its user's alone",
  )
  t.equal(
    `${mode('etc/outpost/node-red-channel.token')} ${owner('etc/outpost/node-red-channel.token')}`,
    '600 0:0',
    'the channel credential: root’s (systemd hands it out)',
  )
  t.match(readFileSync(join(root, 'etc/outpost/node-red-channel.token'), 'utf8'), /^[\w-]{43}\n$/)
  t.equal(
    readFileSync(join(root, 'etc/udev/rules.d/99-outpost-rs485.rules'), 'utf8'),
    readFileSync(packagePath('systemd', '99-outpost-rs485.rules'), 'utf8'),
    'the udev rule',
  )
  t.match(readFileSync(join(root, 'usr/local/bin/outpost'), 'utf8'), `exec ${nodePath} /opt/outpost/dist/bin/outpost.js "$@"`, 'the outpost command')
  t.equal(mode('usr/local/bin/outpost'), '755')

  // /opt/outpost is exactly the packed package plus its runtime dependencies.
  const packed = spawnSync('npm', ['pack', '--dry-run', '--json'], { cwd: src, encoding: 'utf8', env: installerEnv() })
  const files = (JSON.parse(packed.stdout) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path)
  const opt = join(root, 'opt/outpost')
  const missing = files.filter((f) => !existsSync(join(opt, f)) || !readFileSync(join(opt, f)).equals(readFileSync(join(src, f))))
  t.same(missing, [], `the ${files.length} packed files, byte for byte`)
  t.same(
    readdirSync(opt).sort(),
    [...new Set([...files.map((f) => f.split('/')[0]!), 'node_modules', 'package-lock.json'])].sort(),
    'nothing else at the top',
  )
  t.ok(existsSync(join(opt, 'dist/daemon/cli.js')) && existsSync(join(opt, 'drivers/models/eastron-sdm120.json')), 'the build and the device models')
  for (const dep of ['level', 'serialport', 'ajv', 'mqtt', 'node-red'])
    t.ok(existsSync(join(opt, 'node_modules', dep, 'package.json')), `runtime dependency ${dep}`)
  // modbus-serial is the bench's baseline and canonicalize a test oracle: neither runs here.
  // typescript is i18next's optional peer (under node-red): kept out with the optional packages.
  for (const dev of ['tap', 'fast-check', 'playwright-core', 'memory-level', 'modbus-serial', 'canonicalize', 'typescript'])
    t.notOk(existsSync(join(opt, 'node_modules', dev)), `no dev dependency ${dev}`)
  t.notOk(existsSync(join(opt, 'dist/test')), 'no compiled tests')
  // Without the optional native bcrypt, Node-RED's editor sign-in checks passwords with bcryptjs.
  const bcrypt = spawnSync(
    process.execPath,
    [
      '-e',
      `const r = require('node:module').createRequire(process.argv[1]); const b = r('bcryptjs'); process.stdout.write(String(b.compareSync('pw', b.hashSync('pw', 4))))`,
      join(opt, 'node_modules/@node-red/editor-api/lib/auth/users.js'),
    ],
    { encoding: 'utf8' },
  )
  t.equal(bcrypt.stdout, 'true', "the editor's password check loads in the installed tree")
  t.notOk(existsSync(join(root, 'opt/outpost.new')) || existsSync(join(root, 'opt/outpost.old')), 'no staging left behind')

  // The installed tree works on its own node_modules.
  const cli = join(opt, 'dist/daemon/cli.js')
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', cwd: opt })
  t.equal(run('--version').stdout.trim(), version, 'installed outpost --version')
  const bin = spawnSync(process.execPath, [join(opt, 'dist/bin/outpost.js'), 'ingest', '--help'], { encoding: 'utf8', cwd: opt })
  t.match(bin.stdout, /^Usage: outpost ingest /, 'the installed bin routes ingest to the cloud side')
  const check = run('check-config', join(root, 'etc/outpost/site.json'))
  t.equal(check.status, 0, 'installed check-config accepts the installed site.json')
  t.match(check.stdout, /: ok \(site lot-7/)

  const dir = tempDir(t)
  const pty = await ptyPair(t)
  const peer = await startPeer(t, { outlets: 1, rtu: pty.b, baud: 9600 })
  const daemon = startDaemon(t, writeSiteConfig({ dir, rtuPath: pty.a, outlets: 1 }), {}, cli)
  await daemon.waitLog((l) => l.msg === 'outpost running', 'the installed daemon running')
  const polled = (await peer.outlet(1)).polls
  await waitFor(async () => (await peer.outlet(1)).polls >= polled + 3, 'the installed daemon polling the meter over the serial port')
  const stopped = await daemon.stop('SIGTERM')
  t.equal(stopped.code, 0, 'the installed daemon (LevelDB journal, serialport) stops cleanly')

  // ------------------------------------------------------------ edited: the re-run enables it
  const edited = readFileSync(join(root, 'etc/outpost/site.json'), 'utf8').replace('Lot 7 resident parking', 'Lot 7, edited')
  writeFileSync(join(root, 'etc/outpost/site.json'), edited)
  mkdirSync(join(root, 'var/lib/outpost/journal'))
  writeFileSync(join(root, 'var/lib/outpost/journal/CURRENT'), 'MANIFEST-000042\n')
  // Node-RED's files as an older version kept them, in /var/lib/outpost.
  mkdirSync(join(root, 'var/lib/outpost/node-red'), { mode: 0o700 })
  writeFileSync(join(root, 'var/lib/outpost/node-red/flows.json'), '[{"id":"kept","type":"tab"}]\n')
  writeFileSync(join(root, 'var/lib/outpost/node-red/.outpost-credential-secret'), 'a'.repeat(64) + '\n', { mode: 0o600 })
  mkdirSync(join(root, 'var/lib/outpost/billing-csv'))
  writeFileSync(join(root, 'var/lib/outpost/billing-csv/billing-2026-01-01.csv'), 'seq\n1\n')
  const second = install(src, root)
  t.equal(second.status, 0, `the re-run exits 0\n${second.out}`)
  t.match(second.out, /moved Node-RED's user directory from \/var\/lib\/outpost\/node-red to \/var\/lib\/outpost-node-red/)
  t.equal(readFileSync(join(root, 'var/lib/outpost-node-red/flows.json'), 'utf8'), '[{"id":"kept","type":"tab"}]\n', 'its flows moved')
  t.equal(readFileSync(join(root, 'var/lib/outpost-node-red/.outpost-credential-secret'), 'utf8'), 'a'.repeat(64) + '\n', 'with their key')
  t.ok(existsSync(join(root, 'var/lib/outpost-node-red/billing-csv/billing-2026-01-01.csv')), "and the CSV flow's files")
  t.equal(owner('var/lib/outpost-node-red/flows.json'), `${nr[2]}:${nr[3]}`, "owned by Node-RED's user")
  t.notOk(
    existsSync(join(root, 'var/lib/outpost/node-red')) || existsSync(join(root, 'var/lib/outpost/billing-csv')),
    'nothing of it left beside the journal',
  )
  t.match(second.out, /Node-RED is not enabled in \/etc\/outpost\/site\.json: outpost-node-red\.service is installed, not enabled/)
  t.match(second.out, /the clone's dependencies match package-lock\.json/, 'no second npm ci in the clone')
  t.match(
    second.out,
    /the runtime dependencies are those installed \(same package-lock\.json, node-abi \d+ \w+\): copied, not installed again/,
    'nor of the runtime dependencies: the same lock, the same Node',
  )
  t.notMatch(second.out, /runtime dependencies \(npm ci/)
  t.match(
    second.out,
    /the build is current \(dist\/ is what these sources compile to\): not compiling again/,
    'nor a second compile of an unchanged clone',
  )
  t.equal(
    lstatSync(join(root, WANTS)).isSymbolicLink() && readlinkSync(join(root, WANTS)),
    '/etc/systemd/system/outpost.service',
    'enabled (systemctl --root)',
  )
  t.match(second.out, /enabled outpost\.service/)
  const before = snapshot(root)
  const kept = (p: string) => ({ bytes: readFileSync(join(root, p), 'utf8'), mtime: statSync(join(root, p)).mtimeMs })
  const keptBefore = [kept('etc/outpost/site.json'), kept('var/lib/outpost/journal/CURRENT')]

  // ------------------------------------------------------------ upgrade to the same tree, on the live path (systemd running), with stand-ins
  // systemctl and udevadm log their arguments; stop and restart also note what /opt held at that moment.
  const fakes = tempDir(t, 'outpost-install-fakes-')
  const calls = join(fakes, 'calls')
  writeFileSync(
    join(fakes, 'systemctl'),
    `#!/bin/sh
extra=
[ "$1" = stop ] && [ -e '${root}/opt/outpost.new/node_modules/level/package.json' ] && extra=' (new code staged)'
[ "$1" = restart ] && [ ! -e '${root}/opt/outpost.new' ] && [ -e '${root}/opt/outpost/node_modules/level/package.json' ] && extra=' (new code in place)'
echo "systemctl $*$extra" >> '${calls}'
`,
  )
  writeFileSync(join(fakes, 'udevadm'), `#!/bin/sh\necho "udevadm $*" >> '${calls}'\n`)
  chmodSync(join(fakes, 'systemctl'), 0o755)
  chmodSync(join(fakes, 'udevadm'), 0o755)
  // Installed under another Node (its ABI marker says so): the upgrade installs the runtime dependencies again.
  const abiMark = join(opt, 'node_modules/.outpost-node-abi')
  const abi = readFileSync(abiMark, 'utf8')
  writeFileSync(abiMark, 'node-abi 83 x64\n')
  // Stale code on both sides: an older version's file in the install, a removed source's output in the clone.
  writeFileSync(join(opt, 'dist/daemon/left-over.js'), 'stale code from an older version\n')
  writeFileSync(join(src, 'dist/daemon/deleted-upstream.js'), 'compiled from a source file git pull removed\n')
  const live = install(src, root, installerEnv({ PATH: `${fakes}:${process.env.PATH}`, OUTPOST_INSTALL_ASSUME_SYSTEMD: 'yes' }))
  t.equal(live.status, 0, `the live upgrade exits 0\n${live.out}`)
  t.notOk(existsSync(join(opt, 'dist/daemon/left-over.js')), 'the code is replaced, not overlaid')
  t.notOk(existsSync(join(opt, 'dist/daemon/deleted-upstream.js')), 'the clone is built from scratch: nothing stale is packed')
  t.match(live.out, /building \(npm run build:ship\)/, 'a file in dist/ the build did not write: compiled again, from scratch')
  t.match(live.out, /installing \S+'s runtime dependencies \(npm ci/, 'installed under another Node ABI: npm ci again')
  t.equal(readFileSync(abiMark, 'utf8'), abi, 'and the marker names this Node again')
  t.same(
    [kept('etc/outpost/site.json'), kept('var/lib/outpost/journal/CURRENT')],
    keptBefore,
    'site.json and /var/lib/outpost untouched (bytes and mtime)',
  )
  t.same(
    readFileSync(calls, 'utf8').trim().split('\n'),
    [
      'systemctl is-active --quiet outpost.service',
      'systemctl stop outpost.service (new code staged)',
      'systemctl daemon-reload',
      'udevadm control --reload',
      'udevadm trigger --action=change --subsystem-match=tty --subsystem-match=usb-serial',
      'systemctl enable --quiet outpost.service',
      'systemctl restart outpost.service (new code in place)',
    ],
    'stops only once the new code is ready, reloads systemd and udev, enables, restarts',
  )
  t.match(live.out, /outpost \S+ is enabled and running: journalctl -u outpost -f/)
  t.same(snapshot(root), before, 'the same tree: paths, modes, owners, contents, links')

  // ------------------------------------------------------------ an invalid config: refused, nothing changes
  const broken = edited.replace('"id": "lot-7", ', '')
  writeFileSync(join(root, 'etc/outpost/site.json'), broken)
  const callsBefore = readFileSync(calls, 'utf8')
  const refused = install(src, root, installerEnv({ PATH: `${fakes}:${process.env.PATH}`, OUTPOST_INSTALL_ASSUME_SYSTEMD: 'yes' }))
  t.equal(refused.status, 78, 'exit 78')
  t.equal(readFileSync(calls, 'utf8'), callsBefore, 'the running service is not stopped or restarted')
  t.match(refused.out, /\/etc\/outpost\/site\.json: \/site\/id: is required/, "check-config's line, naming the pointer")
  t.match(refused.out, /nothing was installed, upgraded, enabled or restarted/)
  t.same(
    snapshot(root, ['etc/outpost/site.json']),
    before.filter((l) => !l.startsWith('etc/outpost/site.json ')),
    'the running install is left as it was',
  )
  t.equal(readFileSync(join(root, 'etc/outpost/site.json'), 'utf8'), broken, 'the config is not rewritten')

  // A first install with a config the service could not read (root's, 0600): refused too.
  const fresh = freshRoot()
  mkdirSync(join(fresh, 'etc/outpost'))
  writeFileSync(join(fresh, 'etc/outpost/site.json'), edited, { mode: 0o600 })
  const refusedFresh = install(src, fresh)
  t.equal(refusedFresh.status, 78, 'a first install with an unreadable config: exit 78')
  t.match(refusedFresh.out, /\/etc\/outpost\/site\.json is not readable by the outpost user: sudo chgrp outpost/)
  t.notOk(existsSync(join(fresh, 'opt/outpost')), 'no code installed')
  t.notOk(existsSync(join(fresh, WANTS)) || existsSync(join(fresh, 'etc/systemd/system/outpost.service')), 'no unit, not enabled')
})
