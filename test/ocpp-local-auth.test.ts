/**
 * Offline authorization (test/helpers/ocpp-rig.ts on a real journal, ocpp-rpc's strict central system):
 * - SendLocalList full and differential, GetLocalListVersion, kept across a restart; impossible updates
 *   (a version that goes back, an idTag twice, a full entry without idTagInfo, more entries than one message
 *   may carry, a list past LocalAuthListMaxLength) refused and nothing changed;
 * - the authorization cache from the central system's answers, ClearCache;
 * - the matrix of docs/ocpp.md: online / offline × local list / cache / unknown × the keys, one check per cell.
 */
import t from 'tap'
import { startCsms } from './helpers/csms.js'
import { waitFor } from './helpers/e2e-kit.js'
import { OcppRig } from './helpers/ocpp-rig.js'

const version = async (csms: { call: (a: string, p: Record<string, unknown>) => Promise<Record<string, unknown>> }) =>
  (await csms.call('GetLocalListVersion', {})).listVersion

t.test('SendLocalList, GetLocalListVersion, ClearCache; impossible updates change nothing', async (t) => {
  const csms = await startCsms(t)
  let rig = await OcppRig.open(t, csms)
  await rig.online()
  t.equal(await version(csms), 0, 'no list yet')
  const send = (p: Record<string, unknown>) => csms.call('SendLocalList', p)
  t.same(
    await send({
      listVersion: 3,
      updateType: 'Full',
      localAuthorizationList: [
        { idTag: 'alice', idTagInfo: { status: 'Accepted' } },
        { idTag: 'bob', idTagInfo: { status: 'Blocked' } },
        { idTag: 'carol', idTagInfo: { status: 'Accepted', expiryDate: '2026-01-01T00:00:00Z' } },
      ],
    }),
    { status: 'Accepted' },
  )
  t.equal(await version(csms), 3)
  t.same(
    await send({ listVersion: 3, updateType: 'Differential', localAuthorizationList: [{ idTag: 'dave', idTagInfo: { status: 'Accepted' } }] }),
    {
      status: 'VersionMismatch',
    },
    'a differential update must move the version on',
  )
  t.same(
    await send({ listVersion: 2, updateType: 'Full', localAuthorizationList: [] }),
    { status: 'VersionMismatch' },
    'a full list must not go back',
  )
  t.same(
    await send({
      listVersion: 4,
      updateType: 'Differential',
      localAuthorizationList: [
        { idTag: 'x', idTagInfo: { status: 'Accepted' } },
        { idTag: 'x', idTagInfo: { status: 'Blocked' } },
      ],
    }),
    { status: 'Failed' },
    'an idTag twice',
  )
  t.same(
    await send({ listVersion: 4, updateType: 'Full', localAuthorizationList: [{ idTag: 'y' }] }),
    { status: 'Failed' },
    'a full entry without idTagInfo',
  )
  const big = Array.from({ length: 10_000 }, (_, i) => ({ idTag: `tag-${i}`, idTagInfo: { status: 'Accepted' } }))
  const tooMany = (await send({ listVersion: 5, updateType: 'Full', localAuthorizationList: big }).catch((e: unknown) => e)) as {
    rpcErrorCode?: string
  }
  t.equal(tooMany.rpcErrorCode, 'OccurenceConstraintViolation', '10,000 entries in one message: CALLERROR')
  t.equal(await version(csms), 3, 'nothing changed')
  t.same(rig.cp.state().localList, { version: 3, size: 3 })

  // A differential update: add dave, remove bob.
  t.same(
    await send({
      listVersion: 4,
      updateType: 'Differential',
      localAuthorizationList: [{ idTag: 'dave', idTagInfo: { status: 'Accepted' } }, { idTag: 'bob' }],
    }),
    { status: 'Accepted' },
  )
  // Up to LocalAuthListMaxLength (10,000) in messages of at most SendLocalListMaxLength (1,000); one more is Failed.
  for (let v = 5; v < 15; v++)
    t.same(
      await send({
        listVersion: v,
        updateType: 'Differential',
        localAuthorizationList: big.slice((v - 5) * 1000, (v - 4) * 1000 - (v === 14 ? 3 : 0)),
      }),
      { status: 'Accepted' },
      `differential ${v}`,
    )
  t.same(rig.cp.state().localList, { version: 14, size: 10_000 })
  t.same(
    await send({ listVersion: 15, updateType: 'Differential', localAuthorizationList: [{ idTag: 'one-more', idTagInfo: { status: 'Accepted' } }] }),
    {
      status: 'Failed',
    },
    'past LocalAuthListMaxLength',
  )
  t.same(rig.cp.state().localList, { version: 14, size: 10_000 }, 'nothing changed')
  const keys = (await csms.call('GetConfiguration', { key: ['LocalAuthListMaxLength', 'SendLocalListMaxLength', 'SupportedFeatureProfiles'] })) as {
    configurationKey: { key: string; value: string }[]
  }
  t.same(
    keys.configurationKey.map((k) => k.value),
    ['10000', '1000', 'Core,RemoteTrigger,LocalAuthListManagement,SmartCharging'],
  )

  // The cache: the central system's answers, forgotten on ClearCache.
  await rig.start('A1', 'erin', 10)
  await csms.waitCall('StartTransaction', (c) => c.reply !== undefined && c.params.idTag === 'erin')
  await waitFor(() => rig.cp.state().cachedIdTags === 1, 'erin cached')
  const dir = rig.dir
  await rig.close()

  rig = await OcppRig.open(t, csms, { dir })
  await rig.online()
  t.equal(await version(csms), 14, 'the list version after a restart')
  t.same(rig.cp.state().localList, { version: 14, size: 10_000 }, 'the list after a restart')
  t.equal(rig.cp.state().cachedIdTags, 1, 'the cache after a restart')
  t.same(await csms.call('ClearCache', {}), { status: 'Accepted' })
  t.equal(rig.cp.state().cachedIdTags, 0)
  t.same(rig.cp.state().localList, { version: 14, size: 10_000 }, 'ClearCache leaves the list')
  t.same(await send({ listVersion: 15, updateType: 'Full', localAuthorizationList: [] }), { status: 'Accepted' }, 'an empty full list clears it')
  t.same(rig.cp.state().localList, { version: 15, size: 0 })
  await rig.close()
  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
  t.equal(csms.badMessages.length, 0)
})

t.test('the matrix: online / offline × list / cache / unknown × the keys', async (t) => {
  const csms = await startCsms(t, { invalidTags: ['mallory'] })
  const rig = await OcppRig.open(t, csms, { at: Date.parse('2026-06-10T12:00:00Z') })
  await rig.online()
  const set = async (key: string, value: string) =>
    t.same(await csms.call('ChangeConfiguration', { key, value }), { status: 'Accepted' }, `${key}=${value}`)
  t.same(
    await csms.call('SendLocalList', {
      listVersion: 1,
      updateType: 'Full',
      localAuthorizationList: [
        { idTag: 'list-ok', idTagInfo: { status: 'Accepted' } },
        { idTag: 'list-blocked', idTagInfo: { status: 'Blocked' } },
        { idTag: 'list-expired', idTagInfo: { status: 'Accepted', expiryDate: '2026-06-10T11:00:00Z' } },
        { idTag: 'both', idTagInfo: { status: 'Invalid' } },
      ],
    }),
    { status: 'Accepted' },
  )

  // Online: every start goes ahead; LocalPreAuthorize spares the Authorize of an idTag known as Accepted.
  const authorizes = (idTag: string) => csms.of('Authorize').filter((c) => c.params.idTag === idTag).length
  const online = async (idTag: string, pre: boolean) => {
    await set('LocalPreAuthorize', String(pre))
    t.same(rig.cp.admitStart(idTag), { ok: true }, `online: ${idTag} starts`)
    await rig.start('A1', idTag, 10)
    await csms.waitCall('StartTransaction', (c) => c.reply !== undefined && c.params.idTag === idTag)
    // A refused idTag's session is already stopped by the charge point (DeAuthorized).
    if (rig.view('A1').sessionId) await rig.end('A1')
    await waitFor(() => rig.cp.state().queued === 0, 'sent')
  }
  await online('list-ok', false)
  t.equal(authorizes('list-ok'), 1, 'online, list Accepted, LocalPreAuthorize false: Authorize sent')
  await online('cached-ok', false)
  t.equal(authorizes('cached-ok'), 1, 'online, unknown: Authorize sent (and its answer cached)')
  await online('cached-ok', true)
  t.equal(authorizes('cached-ok'), 1, 'online, cache Accepted, LocalPreAuthorize true: no Authorize')
  await online('list-ok', true)
  t.equal(authorizes('list-ok'), 1, 'online, list Accepted, LocalPreAuthorize true: no Authorize')
  await online('list-blocked', true)
  t.equal(authorizes('list-blocked'), 1, 'online, list Blocked, LocalPreAuthorize true: Authorize sent (only Accepted skips it)')
  await online('mallory', false)
  t.equal(
    rig.cp.state().cachedIdTags,
    4,
    'the cache holds every idTag the central system answered (list-ok, cached-ok, list-blocked as it answered Accepted, mallory Invalid)',
  )

  await csms.down()
  await waitFor(() => !rig.cp.state().connected, 'offline')
  const cell = (idTag: string, want: boolean, what: string) =>
    t.equal(rig.cp.admitStart(idTag).ok, want, `offline, ${what}: ${want ? 'starts' : 'refused'}`)
  // Defaults: LocalAuthorizeOffline true, AllowOfflineTxForUnknownId true, both stores enabled.
  cell('list-ok', true, 'list Accepted')
  cell('list-blocked', false, 'list Blocked (the cache, Accepted by the central system, comes after the list)')
  cell('list-expired', false, 'list Accepted past its expiryDate')
  cell('cached-ok', true, 'cache Accepted')
  cell('mallory', false, 'cache Invalid')
  cell('both', false, 'list Invalid (the list before the cache)')
  cell('stranger', true, 'unknown, AllowOfflineTxForUnknownId true')
  t.match(rig.cp.admitStart('list-blocked'), { ok: false, message: /local list holds idTag list-blocked as Blocked/ }, 'the refusal says why')
  // The keys, changed on disk while offline (the rig's config stands in for what ChangeConfiguration would set).
  const offlineSet = async (key: string, value: string) => {
    await csms.up()
    await rig.online()
    await set(key, value)
    await csms.down()
    await waitFor(() => !rig.cp.state().connected, 'offline')
  }
  await offlineSet('AllowOfflineTxForUnknownId', 'false')
  cell('stranger', false, 'unknown, AllowOfflineTxForUnknownId false')
  t.match(rig.cp.admitStart('stranger'), { ok: false, message: /not on its local list nor in the authorization cache/ })
  cell('list-ok', true, 'list Accepted, AllowOfflineTxForUnknownId false')
  cell('cached-ok', true, 'cache Accepted, AllowOfflineTxForUnknownId false')
  await offlineSet('AuthorizationCacheEnabled', 'false')
  cell('cached-ok', false, 'cache Accepted, AuthorizationCacheEnabled false (unknown)')
  cell('mallory', false, 'cache Invalid, AuthorizationCacheEnabled false (unknown)')
  await offlineSet('LocalAuthListEnabled', 'false')
  cell('list-ok', false, 'list Accepted, LocalAuthListEnabled false (unknown)')
  await offlineSet('AllowOfflineTxForUnknownId', 'true')
  cell('list-blocked', true, 'list Blocked, LocalAuthListEnabled false, AllowOfflineTxForUnknownId true (unknown)')
  await offlineSet('LocalAuthListEnabled', 'true')
  await offlineSet('AuthorizationCacheEnabled', 'true')
  await offlineSet('LocalAuthorizeOffline', 'false')
  cell('list-blocked', true, 'list Blocked, LocalAuthorizeOffline false, AllowOfflineTxForUnknownId true (the list is not consulted)')
  cell('list-ok', true, 'list Accepted, LocalAuthorizeOffline false, AllowOfflineTxForUnknownId true')
  await offlineSet('AllowOfflineTxForUnknownId', 'false')
  cell('list-ok', false, 'list Accepted, LocalAuthorizeOffline false, AllowOfflineTxForUnknownId false')
  cell('cached-ok', false, 'cache Accepted, LocalAuthorizeOffline false, AllowOfflineTxForUnknownId false')
  cell('stranger', false, 'unknown, LocalAuthorizeOffline false, AllowOfflineTxForUnknownId false')
  t.same(await Promise.resolve(rig.cp.admitStart('anyone')).then((r) => r.ok), false)
  await csms.up()
  await rig.online()
  t.same(rig.cp.admitStart('stranger'), { ok: true }, 'online again: the central system decides')
  t.same(await csms.call('ChangeConfiguration', { key: 'LocalPreAuthorize', value: 'yes' }), { status: 'Rejected' }, 'a boolean is true or false')
  await rig.close()
  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
  t.equal(csms.badMessages.length, 0)
})

t.test('an idTag refused at the reconnect: stopped at once, or run on up to MaxEnergyOnInvalidId', async (t) => {
  const csms = await startCsms(t, { invalidTags: ['mallory', 'eve'] })
  const rig = await OcppRig.open(t, csms)
  await rig.online()
  const offlineStart = async (outlet: string, idTag: string, wh: number) => {
    await csms.down()
    await waitFor(() => !rig.cp.state().connected, 'offline')
    t.same(rig.cp.admitStart(idTag), { ok: true }, `${idTag} starts while the central system is away (unknown, allowed)`)
    await rig.start(outlet, idTag, wh)
    await rig.step(outlet, wh + 5)
    await csms.up()
    await rig.online()
    return csms.waitCall('StartTransaction', (c) => c.reply !== undefined && c.params.idTag === idTag)
  }
  // StopTransactionOnInvalidId true (the default): stopped at once.
  await offlineStart('A1', 'mallory', 100)
  const stop1 = await csms.waitCall('StopTransaction', (c) => c.params.idTag === 'mallory')
  t.equal(stop1.params.reason, 'DeAuthorized')
  t.equal(csms.of('Authorize').filter((c) => c.params.idTag === 'mallory').length, 0, 'a start decided offline goes as a StartTransaction alone')

  t.same(await csms.call('ChangeConfiguration', { key: 'StopTransactionOnInvalidId', value: 'false' }), { status: 'Accepted' })
  t.same(await csms.call('ChangeConfiguration', { key: 'MaxEnergyOnInvalidId', value: '50' }), { status: 'Accepted' })
  t.same(await csms.call('ChangeConfiguration', { key: 'MaxEnergyOnInvalidId', value: '-1' }), { status: 'Rejected' })
  await offlineStart('A2', 'eve', 1000)
  await rig.advance(1000)
  t.ok(rig.view('A2').sessionId, 'refused, but it runs on')
  await rig.step('A2', 1049)
  await rig.advance(1000)
  t.ok(rig.view('A2').sessionId, '49 Wh since the start: still on')
  await rig.step('A2', 1050.2)
  await rig.advance(1000)
  await waitFor(() => !rig.view('A2').sessionId, 'stopped at 50 Wh since the start')
  t.match(rig.commands.at(-1), { action: 'stop', outlet: 'A2' }, 'the relay opened through the stop command')
  const stop2 = await csms.waitCall('StopTransaction', (c) => c.params.idTag === 'eve')
  t.equal(stop2.params.reason, 'DeAuthorized')
  t.equal(stop2.params.meterStop, 1050)
  await rig.close()
  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
  t.equal(csms.badMessages.length, 0)
})

t.test('an auto-start while the central system is away goes through offline authorization: a refused one is stopped at once', async (t) => {
  const csms = await startCsms(t)
  const rig = await OcppRig.open(t, csms, { ocpp: { allowOfflineTxForUnknownId: false } })
  await rig.online()
  t.same(
    await csms.call('SendLocalList', {
      listVersion: 1,
      updateType: 'Full',
      localAuthorizationList: [{ idTag: 'resident', idTagInfo: { status: 'Accepted' } }],
    }),
    { status: 'Accepted' },
  )
  await csms.down()
  await waitFor(() => !rig.cp.state().connected, 'offline')
  /** The engine opened an auto-start session on the outlet (the car drew on the armed relay). */
  const autoStart = async (outlet: string, userId: string, wh: number) => {
    await rig.start(outlet, userId, wh)
    Object.assign(rig.view(outlet), { sessionTrigger: 'auto-start', userId })
    rig.cp.onStatus()
    await rig.cp.idle()
  }
  await autoStart('A1', 'resident', 100)
  t.same(
    rig.commands.filter((c) => c.action === 'stop'),
    [],
    'an auto-start for a listed idTag runs',
  )
  await autoStart('A2', 'stranger', 500)
  await waitFor(() => rig.commands.some((c) => c.action === 'stop' && c.outlet === 'A2'), 'the refused auto-start stopped')
  t.equal(rig.commands.filter((c) => c.action === 'stop').length, 1, 'only that one')
  t.ok(rig.lines.some((l) => l.msg === 'ocpp: offline authorization refused an auto-start; stopping it' && l.outlet === 'A2'))
  await csms.up()
  await rig.online()
  const stop = await csms.waitCall('StopTransaction', (c) => c.params.idTag === 'stranger')
  t.equal(stop.params.reason, 'DeAuthorized', 'the central system hears why')
  await rig.close()
  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
  t.equal(csms.badMessages.length, 0)
})
