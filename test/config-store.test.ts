/**
 * The config store on real file systems: an atomic write on a full tmpfs leaves the old file
 * whole and no temporary file behind; versions are kept, pruned to KEEP_VERSIONS (never the
 * one in force) and read back only when their bytes still hash to their name; the diff and
 * the rules of who may change what.
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { readFileSync, readdirSync, statfsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { ConfigStore, KEEP_VERSIONS, configVersion } from '../daemon/config-store.js'
import { writeAtomic } from '../daemon/journal/fsync.js'
import { REDACTED, describeChanges, diffPointers, mayChange, redact, rule, unredact } from '../daemon/config-changes.js'
import { isOutpostError } from '../daemon/errors.js'
import { effectiveConfig } from '../daemon/config.js'
import { packagePath } from '../core/paths.js'
import { tempDir } from './helpers/e2e-kit.js'

t.test('a full disk: the write fails, the old file is whole, no temporary file is left', async (t) => {
  const mnt = tempDir(t, 'outpost-cfgstore-')
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt])
  t.teardown(() => execFileSync('umount', ['-l', mnt]))
  const file = join(mnt, 'site.json')
  writeFileSync(file, '{"old": true}\n', { mode: 0o640 })
  const st = statfsSync(mnt)
  try {
    writeFileSync(join(mnt, 'filler'), Buffer.alloc(Number(st.bavail) * Number(st.bsize)))
  } catch (err) {
    if ((err as { code?: string }).code !== 'ENOSPC') throw err
  }
  await t.rejects(writeAtomic(file, JSON.stringify({ big: 'x'.repeat(20_000) })), { code: 'ENOSPC' })
  t.equal(readFileSync(file, 'utf8'), '{"old": true}\n', 'the old config, whole')
  t.same(readdirSync(mnt).sort(), ['filler', 'site.json'], 'no temporary file left behind')

  // Through the store: CONFIG_WRITE_FAILED, and the version in force is unchanged.
  const store = new ConfigStore(file, '{"old": true}\n', Date.now)
  const before = store.current()
  const err = await store.save('{"new": true}\n').catch((e: unknown) => e)
  t.ok(isOutpostError(err, 'CONFIG_WRITE_FAILED'), 'CONFIG_WRITE_FAILED')
  t.match((err as Error).message, /ENOSPC.*the config in force is unchanged/)
  t.same(store.current(), before)
  t.equal(readFileSync(file, 'utf8'), '{"old": true}\n')
})

t.test('kept versions: newest first, pruned, the one in force always kept, read back by hash', async (t) => {
  const dir = tempDir(t, 'outpost-cfgstore-')
  const file = join(dir, 'site.json')
  const first = '{"n": 0}\n'
  writeFileSync(file, first, { mode: 0o640 })
  let clock = Date.UTC(2026, 5, 10, 19)
  const store = await ConfigStore.load(file, () => (clock += 1000))
  const versions: string[] = [configVersion(first)]
  for (let i = 1; i <= KEEP_VERSIONS + 2; i++) versions.push(await store.save(`{"n": ${i}}\n`))
  const kept = await store.list()
  t.equal(kept.length, KEEP_VERSIONS, `the newest ${KEEP_VERSIONS}`)
  t.equal(kept[0]!.savedAt, new Date(clock).toISOString(), "kept at the injected clock's time")
  t.same(
    kept.map((k) => k.version),
    versions.slice(-KEEP_VERSIONS).reverse(),
    'newest first',
  )
  t.equal(store.current().version, versions.at(-1))
  t.equal(readFileSync(file, 'utf8'), `{"n": ${KEEP_VERSIONS + 2}}\n`)
  t.equal((await import('node:fs')).statSync(file).mode & 0o777, 0o640, 'the file keeps its mode')
  t.equal(await store.read(versions.at(-2)!), `{"n": ${KEEP_VERSIONS + 1}}\n`)
  t.equal(await store.read(versions[0]!), undefined, 'a pruned version is gone')
  // A kept file whose bytes no longer hash to its name is not handed out.
  const name = readdirSync(store.dir).find((n) => n.endsWith(`-${versions.at(-2)}.json`))!
  writeFileSync(join(store.dir, name), '{"tampered": 1}\n')
  t.equal(await store.read(versions.at(-2)!), undefined, 'a damaged version is refused')
  t.equal(await store.read('../site'), undefined, 'only a version names a file')
})

t.test('the diff and its rules', async (t) => {
  t.same(diffPointers({ a: 1, b: { c: [1, 2] } }, { a: 1, b: { c: [1, 3, 4] }, 'd/e': 0 }), ['/b/c/1', '/b/c/2', '/d~1e'])
  const base = {
    outlets: [{ id: 'A', plan: 'p', bus: 'x' }],
    plans: [{ id: 'p' }],
    buses: [
      { id: 'x', type: 'modbus-tcp' },
      { id: 'sh', type: 'shelly' },
    ],
  }
  const changes = (after: unknown, before: unknown = base) => describeChanges(before, after).map((c) => [c.pointer, c.hot])
  const added = { ...base, outlets: [...base.outlets, { id: 'B', plan: 'p', bus: 'x' }] }
  t.same(changes(added), [['/outlets/1', true]], 'an outlet appended on an open Modbus bus applies at once')
  const onNewBus = { ...added, outlets: [...base.outlets, { id: 'B', plan: 'p', bus: 'y' }], buses: [...base.buses, { id: 'y', type: 'shelly' }] }
  t.same(
    changes(onNewBus),
    [
      ['/outlets/1', true],
      ['/buses/2', true],
    ],
    'with a new device of its own too',
  )
  t.same(
    changes({ ...added, outlets: [...base.outlets, { id: 'B', plan: 'p', bus: 'sh' }] }),
    [['/outlets/1', false]],
    'a new channel of an open Shelly waits for a restart',
  )
  t.same(changes({ ...added, ocpp: {} }, { ...base, ocpp: {} }), [['/outlets/1', false]], 'so does any outlet on a site that speaks OCPP')
  t.same(changes(base, added), [['/outlets', false]], 'an outlet removed is a change of the list, which needs a restart')
  t.same(
    changes({ ...base, outlets: [{ id: 'B', plan: 'p', bus: 'x' }, ...base.outlets] }),
    [['/outlets', false]],
    'so is one inserted before others',
  )
  t.same(rule('/plans/0/periods/0/perKwh'), { pointer: '/plans/0/periods/0/perKwh', hot: true, owner: 'owner' })
  t.same(rule('/outlets/3/ratingA'), { pointer: '/outlets/3/ratingA', hot: true, owner: 'installer' })
  t.same(rule('/outlets/3/meter/unit'), { pointer: '/outlets/3/meter/unit', hot: false, owner: 'installer' })
  t.same(rule('/site/timezone'), { pointer: '/site/timezone', hot: false, owner: 'installer' }, 'a new zone would reprice running sessions')
  t.same(rule('/api/tokens/0/token'), { pointer: '/api/tokens/0/token', hot: true, owner: 'admin' }, 'tokens apply at the next request')
  t.same(rule('/api/listen'), { pointer: '/api/listen', hot: false, owner: 'admin' }, 'the listener waits for a restart')
  t.notOk(mayChange('installer', rule('/api/tokens')), 'nobody but admin hands out tokens')
  t.notOk(mayChange('owner', rule('/buses/0/port')))
  t.ok(mayChange('admin', rule('/buses/0/port')))
  t.notOk(mayChange('viewer', rule('/site/name')))
})

t.test('secrets: redacted for every role but admin, kept in force by a save that never saw them', async (t) => {
  const doc = {
    api: { token: 'admin-secret-1', tokens: [{ name: 'o', role: 'owner', token: 'owner-secret-12345' }] },
    uplink: { url: 'mqtts://x', password: 'mqtt-secret' },
    plans: [{ id: 'p', name: 'password' }],
  }
  const seen = redact(doc) as typeof doc
  t.equal(seen.api.token, REDACTED)
  t.equal(seen.api.tokens[0]!.token, REDACTED)
  t.equal(seen.uplink.password, REDACTED)
  t.equal(seen.plans[0]!.name, 'password', 'only secrets, by where they are')
  t.same(unredact(seen, doc), doc, 'a save of what was read keeps every secret')
  const changed = structuredClone(seen)
  changed.uplink.password = 'new-mqtt-secret'
  const back = unredact(changed, doc) as typeof doc
  t.equal(back.uplink.password, 'new-mqtt-secret', 'a secret given anew is taken')
  t.same(
    describeChanges(doc, back).map((c) => [c.pointer, c.owner]),
    [['/uplink/password', 'installer']],
  )
})

t.test('the diff compares configs as the daemon reads them: writing a default out changes nothing', async (t) => {
  const example = JSON.parse(readFileSync(packagePath('config', 'example.json'), 'utf8'))
  const implicit = structuredClone(example)
  delete implicit.sessions.pollMs
  const explicit = structuredClone(implicit)
  explicit.sessions.pollMs = (effectiveConfig(JSON.stringify(implicit)) as { sessions: { pollMs: number } }).sessions.pollMs
  t.same(describeChanges(effectiveConfig(JSON.stringify(implicit)), effectiveConfig(JSON.stringify(explicit))), [], 'the default written out')
  explicit.sessions.pollMs += 1
  t.same(
    describeChanges(effectiveConfig(JSON.stringify(implicit)), effectiveConfig(JSON.stringify(explicit))).map((c) => [c.pointer, c.hot]),
    [['/sessions/pollMs', false]],
    'another poll needs a restart',
  )
})
