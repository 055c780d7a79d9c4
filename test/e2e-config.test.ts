/**
 * Config changes through the local API, end to end: the built daemon as a child, the pymodbus
 * site peer, mosquitto and the reconciling consumer as the cloud, the journal in LevelDB on
 * disk and the config file on a small tmpfs of its own (so the disk can be filled for real).
 *
 * One daemon run goes through: roles (viewer, installer, owner) refused what they may not do;
 * an invalid config refused at its pointers; a price change (and a plan change of the outlet
 * that is charging) saved while E1 charges — E1 ends billed at the old price, E2 started after
 * pays the new one, and E1 takes its new plan once its session ended; `config.applied` reaches
 * the cloud; a stale If-Match; a rollback; a hand edit detected and replaced knowingly; a full
 * disk that leaves the old config whole. Then kill -9 right as a save renames the file: what
 * boots is one config whole and the journal agrees; and a hand edit found at boot is journaled.
 */
import t from 'tap'
import { execFileSync, spawnSync } from 'node:child_process'
import { readFileSync, statfsSync, unlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import type { JournalRecord } from '../core/types.js'
import { formatProblem, type ConfigProblem } from '../daemon/config.js'
import { freePort, startMosquitto } from './helpers/mosquitto.js'
import {
  PY,
  isEnded,
  startCloud,
  startDaemon,
  startPeer,
  startProc,
  startSession,
  tempDir,
  waitFor,
  writeSiteConfig,
  type DaemonProc,
} from './helpers/e2e-kit.js'

const ADMIN = 'admin-token-0123456789'
const TOKENS = [
  { name: 'ian', role: 'installer', token: 'installer-token-0123456789' },
  { name: 'olga', role: 'owner', token: 'owner-token-0123456789' },
  { name: 'vic', role: 'viewer', token: 'viewer-token-0123456789' },
]
const tokenOf = (role: string): string => (role === 'admin' ? ADMIN : TOKENS.find((x) => x.role === role)!.token)
const sha = (s: string): string => createHash('sha256').update(s).digest('hex')
type Applied = Extract<JournalRecord, { type: 'config.applied' }>

t.test('config changes through the API while sessions run', async (t) => {
  // The config file on a 1 MiB tmpfs of its own (root mounts it): a full disk for real, not a mock.
  const mnt = tempDir(t, 'outpost-cfgfs-')
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=0700', 'tmpfs', mnt])
  t.teardown(() => execFileSync('umount', ['-l', mnt]))
  const work = tempDir(t, 'outpost-e2e-config-')
  const broker = await startMosquitto(t)
  // Three outlets wired in the peer, two in the config: E3 is added while the site runs.
  const peer = await startPeer(t, { outlets: 3 })
  const port = await freePort()
  const file = writeSiteConfig({
    dir: mnt,
    port: peer.port,
    outlets: 2,
    brokerUrl: broker.url,
    storage: { dir: join(work, 'journal') },
    extra: { api: { listen: `127.0.0.1:${port}`, token: ADMIN, tokens: TOKENS }, logging: { level: 'info' } },
  })
  const cloud = await startCloud(t, broker.url, work)
  let daemon: DaemonProc = startDaemon(t, file)
  const base = `http://127.0.0.1:${port}`
  const api = async (
    path: string,
    o: { role?: string; method?: string; body?: unknown; ifMatch?: string; headers?: Record<string, string> } = {},
  ) => {
    const headers: Record<string, string> = { authorization: `Bearer ${tokenOf(o.role ?? 'admin')}`, ...(o.headers ?? {}) }
    if (o.body !== undefined) headers['content-type'] = 'application/json'
    if (o.ifMatch !== undefined) headers['if-match'] = `"${o.ifMatch}"`
    const res = await fetch(base + path, {
      method: o.method ?? 'GET',
      headers,
      ...(o.body !== undefined ? { body: typeof o.body === 'string' ? o.body : JSON.stringify(o.body, null, 2) } : {}),
    })
    const text = await res.text()
    return { status: res.status, body: JSON.parse(text) as any, etag: res.headers.get('etag') }
  }
  const put = (doc: unknown, ifMatch: string, role = 'admin') => api('/api/config', { method: 'PUT', body: doc, ifMatch, role })
  await waitFor(async () => (await api('/api/config').catch(() => ({ status: 0 }))).status === 200, 'the config API', 60_000)

  const v0 = sha(readFileSync(file, 'utf8'))
  const got = await api('/api/config')
  t.equal(got.body.version, v0, 'the version is the SHA-256 of the file')
  t.equal(got.etag, `"${v0}"`, 'and the ETag')
  t.equal(got.body.file.edited, false)
  const doc0 = got.body.config
  const edit = (f: (d: any) => void): any => {
    const d = structuredClone(doc0)
    f(d)
    return d
  }
  let current = v0
  const unchanged = async (what: string): Promise<void> => {
    t.equal(sha(readFileSync(file, 'utf8')), current, `${what}: the file is unchanged`)
    t.equal((await api('/api/config')).body.version, current, `${what}: the version in force is unchanged`)
  }

  // Roles: each refused what it may not change, naming it.
  const priceUp = edit((d) => {
    d.plans[0].periods[0].perKwh = 7.5
    d.outlets[0].plan = 'pricey'
  })
  let r = await put(priceUp, v0, 'viewer')
  t.equal(r.status, 403, 'the viewer may only read')
  t.match(r.body.error.message, /viewer:vic may only read/)
  r = await put(priceUp, v0, 'installer')
  t.equal(r.status, 403, 'the installer may not change prices')
  t.match(r.body.error.message, /installer:ian may not change \/outlets\/0\/plan, \/plans\/0\/periods\/0\/perKwh/)
  const busTimeout = edit((d) => {
    d.buses[0].timeoutMs = 800
  })
  r = await put(busTimeout, v0, 'owner')
  t.equal(r.status, 403, 'the owner may not change a bus')
  t.match(r.body.error.message, /\/buses\/0\/timeoutMs is the installer's/)
  r = await put(busTimeout, v0, 'installer')
  t.equal(r.status, 409, 'a bus change needs a restart: refused, not saved to be ignored')
  t.equal(r.body.error.code, 'restart-required')
  t.match(r.body.error.message, /\/buses\/0\/timeoutMs/)
  await unchanged('refused by role or restart')

  // An invalid config: check-config's problems at their pointers, nothing changes.
  const invalid = edit((d) => {
    d.outlets[1].plan = 'nope'
    d.plans[0].currency = 'CADX'
  })
  r = await put(invalid, v0)
  t.equal(r.status, 422)
  const pointers = (r.body.error.problems as { pointer: string }[]).map((p) => p.pointer)
  t.ok(
    pointers.includes('/outlets/1/plan') && pointers.some((p) => p.startsWith('/plans/0/currency')),
    `problems at their pointers: ${pointers.join(', ')}`,
  )
  // In check-config's words: the same lines `outpost check-config` prints for the same document.
  const invalidFile = join(work, 'invalid.json')
  writeFileSync(invalidFile, JSON.stringify(invalid))
  const cli = spawnSync(process.execPath, [join('dist', 'daemon', 'cli.js'), 'check-config', invalidFile], { encoding: 'utf8' })
  t.equal(cli.status, 78, 'check-config refuses it too')
  t.same(
    (r.body.error.problems as ConfigProblem[]).map((p) => formatProblem(invalidFile, p)),
    cli.stderr.trim().split('\n'),
    'the API says exactly what check-config says',
  )
  await unchanged('an invalid config')

  // The dry run shows the diff and who may do it.
  r = await api('/api/config/check', { method: 'POST', body: priceUp, role: 'owner' })
  t.match(r.body, { ok: true, base: v0, file: { version: v0, edited: false }, restartRequired: [] })
  t.same(
    r.body.changes.map((c: { pointer: string; allowed: boolean; hot: boolean }) => [c.pointer, c.allowed, c.hot]),
    [
      ['/outlets/0/plan', true, true],
      ['/plans/0/periods/0/perKwh', true, true],
    ],
    'the diff, each change allowed for the owner and applied at once',
  )

  // E1 charges on the old price; the owner raises it (and moves E1 to another plan).
  const s1 = await startSession(t, peer, cloud, { outlet: 1, userId: 'u1', amps: 16, wallet: 100_000, chargeWh: 2 })
  // The owner edits the config as the owner reads it: the tokens redacted, kept as they are by the save.
  const ownerView = (await api('/api/config', { role: 'owner' })).body.config
  t.equal(ownerView.api.token, '<redacted>', 'only the admin reads the tokens back')
  t.same(
    ownerView.api.tokens.map((x: { token: string }) => x.token),
    ['<redacted>', '<redacted>', '<redacted>'],
  )
  ownerView.plans[0].periods[0].perKwh = 7.5
  ownerView.outlets[0].plan = 'pricey'
  r = await put(ownerView, v0, 'owner')
  t.equal(r.status, 200, `the owner's save is applied: ${JSON.stringify(r.body)}`)
  const v1 = r.body.version as string
  t.equal(sha(readFileSync(file, 'utf8')), v1, 'the version is the hash of the file saved')
  t.same(JSON.parse(readFileSync(file, 'utf8')), priceUp, 'the file holds the new config, with the tokens in force')
  current = v1
  const applied = (await cloud.waitRecord((x) => x.type === 'config.applied' && x.configHash === v1, 'config.applied reaches the cloud')) as Applied
  t.match(applied, { who: 'owner:olga', previousHash: v0 })
  t.same(applied.changed, ['/outlets/0/plan', '/plans/0/periods/0/perKwh'], 'what changed, as JSON pointers')
  t.same(applied.pendingOutlets, ['E1'], 'E1 has a session: its change waits')
  const view = await api('/api/config', { role: 'viewer' })
  t.match(view.body.pending, [{ outlet: 'E1', sessionId: s1.sessionId, note: 'pending until the session ends' }], 'the API says what waits')
  const during = (await api('/api/status')).body.outlets
  t.equal(during[0].planId, 'standard', 'E1 keeps its plan while its session runs')
  t.same(
    during.map((o: { configPending: boolean }) => o.configPending),
    [true, false],
    'the status says E1 has a change pending',
  )

  // A stale If-Match changes nothing.
  r = await put(
    edit((d) => {
      d.plans[0].periods[0].perKwh = 1
    }),
    v0,
    'owner',
  )
  t.equal(r.status, 412, 'a save made from an older version')
  t.equal(r.body.error.code, 'version-mismatch')
  await unchanged('a stale If-Match')

  // A new session on E2 gets the new price; E1 ends on the old one, and only then takes its new plan.
  const s2 = await startSession(t, peer, cloud, { outlet: 2, userId: 'u2', amps: 16, wallet: 100_000, chargeWh: 2 })
  await peer.unplug(1)
  await peer.unplug(2)
  const e1 = await cloud.waitRecord(isEnded(s1.sessionId), 'E1 ended')
  const e2 = await cloud.waitRecord(isEnded(s2.sessionId), 'E2 ended')
  t.equal(e1.reason, 'unplugged', 'E1 went on to its unplug: the change did not interrupt it')
  t.ok(e1.lines.length > 0 && e1.lines.every((l) => l.perKwh === 2.5), 'E1 billed at the old price throughout')
  t.equal(e1.planId, 'standard')
  t.ok(e2.lines.length > 0 && e2.lines.every((l) => l.perKwh === 7.5), 'E2 billed at the new price')
  await waitFor(async () => (await api('/api/status')).body.outlets[0].planId === 'pricey', 'E1 takes its new plan once its session ended')
  t.same((await api('/api/config')).body.pending, [], 'nothing waits any more')
  t.equal((await api('/api/status')).body.outlets[0].configPending, false)

  // Rollback to the first version.
  const versions = (await api('/api/config/versions')).body
  t.same(
    versions.versions.map((v: { version: string }) => v.version),
    [v1, v0],
    'both versions are kept, newest first',
  )
  r = await api('/api/config/rollback', { method: 'POST', body: { version: v0 }, ifMatch: v1, role: 'owner' })
  t.equal(r.status, 200, `rollback: ${JSON.stringify(r.body)}`)
  t.equal(r.body.version, v0)
  t.equal(sha(readFileSync(file, 'utf8')), v0, 'the file is the first version again, byte for byte')
  current = v0
  await waitFor(async () => (await api('/api/status')).body.outlets[0].planId === 'standard', 'E1 sells its first plan again')

  // A hand edit is noticed and never overwritten blindly.
  const handText = JSON.stringify(
    edit((d) => {
      d.site.name = 'edited by hand'
    }),
    null,
    2,
  )
  writeFileSync(file, handText)
  const vHand = sha(handText)
  r = await api('/api/config')
  t.match(r.body.file, { version: vHand, edited: true }, 'GET says the file was edited')
  const rename = edit((d) => {
    d.site.name = 'renamed by the API'
  })
  r = await put(rename, v0, 'installer')
  t.equal(r.status, 409, 'a save over a hand edit is refused')
  t.equal(r.body.error.code, 'config-edited-on-disk')
  t.equal(readFileSync(file, 'utf8'), handText, 'the hand edit is still there')
  r = await put(rename, vHand, 'installer')
  t.equal(r.status, 200, 'saved knowingly, with the file version as If-Match')
  current = r.body.version
  t.ok(
    (await api('/api/config/versions')).body.versions.some((v: { version: string }) => v.version === vHand),
    'the hand edit is kept as a version',
  )

  // A full disk: the write fails, the old config stays whole, nothing is applied or journaled.
  const headBefore = (await api('/api/records?limit=1')).body.head as number
  const st = statfsSync(mnt)
  const filler = join(mnt, 'filler')
  try {
    writeFileSync(filler, Buffer.alloc(Number(st.bavail) * Number(st.bsize)))
  } catch (err) {
    if ((err as { code?: string }).code !== 'ENOSPC') throw err // full either way
  }
  t.teardown(() => {
    try {
      unlinkSync(filler)
    } catch {
      // gone already
    }
  })
  const full = structuredClone((await api('/api/config')).body.config)
  full.plans[0].periods[0].perKwh = 9
  r = await put(full, current, 'owner')
  t.equal(r.status, 507, `a full disk: ${JSON.stringify(r.body)}`)
  t.equal(r.body.error.code, 'config-write-failed')
  t.match(r.body.error.message, /ENOSPC/)
  await unchanged('a full disk')
  t.same(
    (await api(`/api/records?limit=1000&from=${headBefore + 1}`)).body.records.filter((x: JournalRecord) => x.type === 'config.applied'),
    [],
    'nothing journaled',
  )
  t.equal(JSON.parse(readFileSync(file, 'utf8')).site.name, 'renamed by the API', 'the file parses: the old config, whole')
  unlinkSync(filler)

  // An outlet added while the site runs: the installer's (not the owner's), opened beside the others, billed and signed as its own meter.
  const withE3 = structuredClone((await api('/api/config')).body.config)
  withE3.outlets.push({
    ...withE3.outlets[1],
    id: 'E3',
    meter: { model: 'eastron-sdm120', unit: 3 },
    relay: { model: 'modbus-coil', unit: 100, coil: 2 },
  })
  r = await put(withE3, current, 'owner')
  t.equal(r.status, 403, "adding an outlet is the installer's")
  // Its relay was left closed (by hand, or another master): adding it opens it first, as a boot does.
  await peer.cmd({ cmd: 'coil', outlet: 3, closed: true })
  t.equal((await peer.outlet(3)).coil, true)
  r = await put(withE3, current, 'installer')
  t.equal(r.status, 200, `E3 added: ${JSON.stringify(r.body)}`)
  await waitFor(async () => !(await peer.outlet(3)).coil, "E3's relay opened when it was added")
  t.same(r.body.changed, ['/outlets/2'])
  current = r.body.version
  const s4 = await startSession(t, peer, cloud, { outlet: 3, userId: 'u1', amps: 16, chargeWh: 1 })
  await peer.unplug(3)
  const e4 = await cloud.waitRecord(isEnded(s4.sessionId), 'E3 ended')
  t.equal(e4.reason, 'unplugged')
  t.ok(e4.energyWh > 1, `E3 billed from its meter (${e4.energyWh} Wh)`)
  const ocmf = JSON.parse(e4.ocmf!.split('|')[1]!) as { MM?: string; CI?: string }
  t.equal(ocmf.MM, 'eastron-sdm120', "signed with E3's meter model")
  t.equal((await api('/api/status')).body.outlets.length, 3, 'the status shows it')

  // A token handed out while the site runs: the admin's to give, valid at the next request.
  const withNina = structuredClone(withE3)
  withNina.api.tokens.push({ name: 'nina', role: 'owner', token: 'nina-token-0123456789' })
  r = await put(withNina, current, 'owner')
  t.equal(r.status, 403, 'an owner cannot hand out tokens')
  t.match(r.body.error.message, /\/api\/tokens\/3 is the admin's/)
  const nina = { authorization: 'Bearer nina-token-0123456789' }
  t.equal((await fetch(`${base}/api/status`, { headers: nina })).status, 401, 'not yet a token')
  r = await put(withNina, current)
  t.equal(r.status, 200, 'the admin hands it out')
  current = r.body.version
  t.equal((await fetch(`${base}/api/status`, { headers: nina })).status, 200, 'valid at once')

  // kill -9 right as a save renames the file, while E2 charges and its plan change waits for it: whatever boots is
  // one config whole, the journal agrees with it, E2's session is closed at the price it started with, and only then
  // does E2 take the plan of the config that booted.
  const s3 = await startSession(t, peer, cloud, { outlet: 2, userId: 'u2', amps: 16, chargeWh: 1 })
  const before = current
  const crashDoc = structuredClone(withNina)
  crashDoc.plans[0].periods[0].perKwh = 4
  crashDoc.outlets[1].plan = 'pricey'
  // A watcher spinning on the file kills the daemon the moment the rename lands: most often before the journal commit.
  const watcher = startProc(t, PY, [
    '-c',
    'import hashlib,os,sys\nf,h,pid=sys.argv[1],sys.argv[2],int(sys.argv[3])\nprint("WATCHING",flush=True)\n' +
      'while hashlib.sha256(open(f,"rb").read()).hexdigest()==h: pass\nos.kill(pid,9)\nprint("KILLED",flush=True)',
    file,
    before,
    String(daemon.pid),
  ])
  await waitFor(() => watcher.out.includes('WATCHING'), 'the watcher')
  const saving = put(crashDoc, current, 'owner').catch(() => undefined)
  await waitFor(() => watcher.out.includes('KILLED'), 'the kill', 30_000)
  await daemon.exited
  await saving
  const afterCrash = readFileSync(file, 'utf8')
  const vCrash = sha(afterCrash)
  t.ok(vCrash === before || vCrash === sha(JSON.stringify(crashDoc, null, 2)), 'the file is the old config or the new one, whole')
  JSON.parse(afterCrash)
  daemon = startDaemon(t, file)
  await waitFor(async () => (await api('/api/config').catch(() => ({ status: 0 }))).status === 200, 'the API after the restart', 60_000)
  t.equal((await api('/api/config')).body.version, vCrash, 'the daemon runs the file as it is')
  const lastApplied = async (): Promise<Applied> => {
    const all = (await api('/api/records?limit=1000')).body.records as JournalRecord[]
    return all.filter((x): x is Applied => x.type === 'config.applied').pop()!
  }
  const last = await lastApplied()
  t.equal(last.configHash, vCrash, `the last config.applied names the config that booted (by ${last.who})`)
  t.comment(last.who === 'file' ? 'the kill came before the journal commit: boot journaled the file' : 'the kill came after the journal commit')
  const e3 = await cloud.waitRecord(isEnded(s3.sessionId), 'E2 closed by the boot')
  t.equal(e3.reason, 'power-loss')
  t.equal(e3.planId, 'standard')
  t.ok(e3.lines.length > 0 && e3.lines.every((l) => l.perKwh === 2.5), 'billed at the price it started with')
  const newPlan = vCrash === before ? 'standard' : 'pricey'
  await waitFor(async () => (await api('/api/status')).body.outlets[1].planId === newPlan, `E2 sells the booted config's plan (${newPlan})`)
  await peer.unplug(2)

  // A hand edit while stopped is journaled at boot, with what changed.
  await daemon.stop('SIGTERM')
  const stoppedEdit = JSON.parse(afterCrash)
  stoppedEdit.plans[1].periods[0].perKwh = 50
  writeFileSync(file, JSON.stringify(stoppedEdit))
  daemon = startDaemon(t, file)
  await waitFor(async () => (await api('/api/config').catch(() => ({ status: 0 }))).status === 200, 'the API after the hand edit', 60_000)
  const boot = await lastApplied()
  t.match(boot, { who: 'file', previousHash: vCrash, configHash: sha(JSON.stringify(stoppedEdit)) })
  t.same(boot.changed, ['/plans/1/periods/0/perKwh'], 'boot names what the hand edit changed')
  await cloud.waitRecord((x) => x.type === 'config.applied' && x.configHash === boot.configHash, 'the boot record reaches the cloud')
  await daemon.stop('SIGTERM')
})

t.test('CSRF: a change made with the browser cookie must come from the page', async (t) => {
  // Covered without a daemon child: the rule is a pure function of the request headers.
  const { crossSite } = await import('../daemon/http/auth.js')
  const req = (h: Record<string, string>) => ({ headers: { host: '127.0.0.1:8080', ...h } }) as never
  t.equal(crossSite(req({ origin: 'http://127.0.0.1:8080' })), undefined, 'same origin')
  t.match(crossSite(req({ origin: 'http://evil.example' })), /evil.example/, 'another origin')
  t.equal(crossSite(req({ 'sec-fetch-site': 'same-origin' })), undefined, 'no Origin, same site')
  t.match(crossSite(req({ 'sec-fetch-site': 'cross-site' })), /another site/)
  t.match(crossSite(req({})), /must carry Origin/, 'neither header: refused')
})
