/**
 * Smart charging on the charge point (test/helpers/ocpp-rig.ts: a real journal, an injected clock,
 * ocpp-rpc's strict central system): SetChargingProfile, ClearChargingProfile, GetCompositeSchedule.
 * - a ChargePointMaxProfile becomes the root circuit's limit (the OCPP site circuit on a site without
 *   circuits), its periods on the injected clock, W at 230 V on its phases;
 * - TxDefaultProfile and TxProfile become each outlet's own limit; a TxProfile ends with its transaction;
 * - the advertised limits (GetConfiguration) and every impossible profile: Rejected or CALLERROR, nothing changed;
 * - profiles survive a restart and apply while the central system is away.
 * What the engine does with those limits is test/engine-circuits.test.ts; the daemon, the site peer with its
 * feeder meter and the circuit rules together are test/e2e-ocpp-smart.test.ts.
 */
import t, { type Test } from 'tap'
import { startCsms } from './helpers/csms.js'
import { OcppRig } from './helpers/ocpp-rig.js'

const T0 = Date.parse('2026-06-10T12:00:00.000Z')
const iso = (ms: number) => new Date(ms).toISOString()

/** An Absolute profile starting at `start` with [startPeriod s, limit] periods. */
function profile(over: Record<string, unknown> = {}, periods: [number, number][] = [[0, 20]], schedule: Record<string, unknown> = {}) {
  return {
    chargingProfileId: 1,
    stackLevel: 0,
    chargingProfilePurpose: 'ChargePointMaxProfile',
    chargingProfileKind: 'Absolute',
    ...over,
    chargingSchedule: {
      startSchedule: iso(T0),
      chargingRateUnit: 'A',
      chargingSchedulePeriod: periods.map(([startPeriod, limit]) => ({ startPeriod, limit })),
      ...schedule,
    },
  }
}

/** A strict central system and the rig on its clock at T0, booted. */
async function online(t: Parameters<typeof startCsms>[0], dir?: string) {
  const csms = await startCsms(t)
  const rig = await OcppRig.open(t, csms, { at: T0, ...(dir ? { dir } : {}) })
  await rig.online()
  return { csms, rig }
}

/** Closes the rig; the central system saw no strict-mode violation and (unless `bad` says which) no bad message. */
async function closeClean(t: Test, csms: Awaited<ReturnType<typeof startCsms>>, rig: OcppRig, bad: string[] = []) {
  await rig.close()
  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
  t.same(
    csms.badMessages.map((b) => (JSON.parse(String((b as { buffer: Buffer }).buffer)) as unknown[])[1]),
    bad,
    'no bad message but the answers to raw frames (ocpp-rpc did not send them)',
  )
}

const limits = (rig: OcppRig) =>
  rig.commands
    .filter((c) => c.action === 'set-circuit-limit' || c.action === 'set-outlet-limit')
    .map((c) => [c.action, c.circuit ?? c.outlet, c.maxA])

t.test('a ChargePointMaxProfile is the site circuit limit, period by period on the injected clock; W at 230 V', async (t) => {
  const { csms, rig } = await online(t)
  const conf = (await csms.call('GetConfiguration', {
    key: [
      'ChargeProfileMaxStackLevel',
      'ChargingScheduleAllowedChargingRateUnit',
      'ChargingScheduleMaxPeriods',
      'MaxChargingProfilesInstalled',
      'SupportedFeatureProfiles',
    ],
  })) as { configurationKey: { key: string; value: string; readonly: boolean }[] }
  t.same(
    conf.configurationKey.map((k) => [k.key, k.value, k.readonly]),
    [
      ['ChargeProfileMaxStackLevel', '8', true],
      ['ChargingScheduleAllowedChargingRateUnit', 'Current,Power', true],
      ['ChargingScheduleMaxPeriods', '48', true],
      ['MaxChargingProfilesInstalled', '32', true],
      ['SupportedFeatureProfiles', 'Core,RemoteTrigger,LocalAuthListManagement,SmartCharging', true],
    ],
  )
  t.same(limits(rig), [], 'no profile: nothing given to the engine')

  const set = await csms.call('SetChargingProfile', {
    connectorId: 0,
    csChargingProfiles: profile(
      {},
      [
        [0, 40],
        [60, 10],
        [120, 0],
      ],
      { duration: 180 },
    ),
  })
  t.same(set, { status: 'Accepted' })
  t.same(limits(rig), [['set-circuit-limit', 'site', 40]], 'in force before the answer')
  t.equal(rig.cp.state().siteLimitA, 40)
  t.equal(rig.cp.state().chargingProfiles, 1)

  const composite = await csms.call('GetCompositeSchedule', { connectorId: 0, duration: 300 })
  t.same(composite, {
    status: 'Accepted',
    connectorId: 0,
    scheduleStart: iso(T0),
    chargingSchedule: {
      duration: 300,
      startSchedule: iso(T0),
      chargingRateUnit: 'A',
      chargingSchedulePeriod: [
        { startPeriod: 0, limit: 40, numberPhases: 3 },
        { startPeriod: 60, limit: 10, numberPhases: 3 },
        { startPeriod: 120, limit: 0, numberPhases: 3 },
        // After its duration: the site circuit's own limit, the sum of the two 32 A outlets.
        { startPeriod: 180, limit: 64, numberPhases: 3 },
      ],
    },
  })
  // Connector 1 (a 32 A single-phase outlet): switched, not dimmed: its rating while the site has room for it, else 0.
  const c1 = (await csms.call('GetCompositeSchedule', { connectorId: 1, duration: 300, chargingRateUnit: 'W' })) as {
    chargingSchedule: { chargingSchedulePeriod: unknown[] }
  }
  t.same(c1.chargingSchedule.chargingSchedulePeriod, [
    { startPeriod: 0, limit: 32 * 230, numberPhases: 1 },
    { startPeriod: 60, limit: 0, numberPhases: 1 },
    { startPeriod: 180, limit: 32 * 230, numberPhases: 1 },
  ])

  await rig.advance(59_000)
  t.same(limits(rig).length, 1, 'nothing before the period')
  await rig.advance(1_000)
  t.same(limits(rig).at(-1), ['set-circuit-limit', 'site', 10], 'the second period at 60 s on the clock')
  await rig.advance(60_000)
  t.same(limits(rig).at(-1), ['set-circuit-limit', 'site', 0])
  await rig.advance(60_000)
  t.same(limits(rig).at(-1), ['set-circuit-limit', 'site', null], 'the schedule over: back to the wiring')
  t.equal(rig.cp.state().siteLimitA, null)

  // W: 13800 W on 3 phases at 230 V is 20 A per phase; 23000 W on 1 phase 100 A, capped at the site's 64 A.
  t.same(
    await csms.call('SetChargingProfile', {
      connectorId: 0,
      csChargingProfiles: profile({ chargingProfileId: 2 }, [[0, 13800]], { chargingRateUnit: 'W', startSchedule: iso(rig.now) }),
    }),
    { status: 'Accepted' },
  )
  t.same(limits(rig).at(-1), ['set-circuit-limit', 'site', 20])
  t.same(
    await csms.call('SetChargingProfile', {
      connectorId: 0,
      csChargingProfiles: {
        ...profile({ chargingProfileId: 3, stackLevel: 1 }),
        chargingSchedule: {
          startSchedule: iso(rig.now),
          chargingRateUnit: 'W',
          chargingSchedulePeriod: [{ startPeriod: 0, limit: 23000, numberPhases: 1 }],
        },
      },
    }),
    { status: 'Accepted' },
  )
  t.same(limits(rig).at(-1), ['set-circuit-limit', 'site', 64], 'the higher stack level wins, capped at the wiring')

  // A Recurring Daily profile: 6 A from 18:00 to 22:00 every day.
  t.same(
    await csms.call('SetChargingProfile', {
      connectorId: 0,
      csChargingProfiles: profile(
        { chargingProfileId: 4, stackLevel: 2, chargingProfileKind: 'Recurring', recurrencyKind: 'Daily' },
        [
          [0, 6],
          [4 * 3600, 32],
        ],
        { startSchedule: '2026-06-09T18:00:00.000Z', duration: 86_400 },
      ),
    }),
    { status: 'Accepted' },
  )
  t.same(limits(rig).at(-1), ['set-circuit-limit', 'site', 32], 'at 12:02 the evening window is not in force')
  await rig.advance(Date.parse('2026-06-10T18:00:00.000Z') - rig.now)
  t.same(limits(rig).at(-1), ['set-circuit-limit', 'site', 6], 'at 18:00')
  await rig.advance(4 * 3600_000)
  t.same(limits(rig).at(-1), ['set-circuit-limit', 'site', 32], 'at 22:00')
  await closeClean(t, csms, rig)
})

t.test('TxDefaultProfile and TxProfile: each outlet its own limit; a TxProfile ends with its transaction', async (t) => {
  const { csms, rig } = await online(t)
  const tx = (connectorId: number, p: Record<string, unknown>) => csms.call('SetChargingProfile', { connectorId, csChargingProfiles: p })

  t.same(await tx(1, profile({ chargingProfileId: 10, chargingProfilePurpose: 'TxProfile' }, [[0, 0]])), { status: 'Rejected' }, 'no transaction')
  t.same(limits(rig), [], 'nothing changed')

  // A TxDefaultProfile on connector 0: every outlet paused (0 A) for the first 10 minutes of each transaction.
  t.same(
    await tx(0, {
      chargingProfileId: 11,
      stackLevel: 0,
      chargingProfilePurpose: 'TxDefaultProfile',
      chargingProfileKind: 'Relative',
      chargingSchedule: {
        chargingRateUnit: 'A',
        chargingSchedulePeriod: [
          { startPeriod: 0, limit: 0 },
          { startPeriod: 600, limit: 16 },
        ],
      },
    }),
    { status: 'Accepted' },
  )
  t.same(
    limits(rig),
    [
      ['set-outlet-limit', 'A1', 0],
      ['set-outlet-limit', 'A2', 0],
    ],
    'without a transaction a Relative schedule stands at its first period',
  )
  const s1 = await rig.start('A1', 'alice', 1000)
  await rig.advance(0)
  await csms.waitCall('StartTransaction')
  await rig.cp.idle()
  await rig.advance(599_000)
  t.equal(limits(rig).length, 2, 'paused for ten minutes of its transaction')
  await rig.advance(1_000)
  t.same(limits(rig).at(-1), ['set-outlet-limit', 'A1', 16], 'A1 runs at 600 s of its transaction')
  const composite = (await csms.call('GetCompositeSchedule', { connectorId: 2, duration: 60 })) as {
    chargingSchedule: { chargingSchedulePeriod: unknown[] }
  }
  t.same(composite.chargingSchedule.chargingSchedulePeriod, [{ startPeriod: 0, limit: 0, numberPhases: 1 }], 'A2 is held at 0')

  // A TxProfile on the transaction wins over the default; its transactionId must be this transaction's.
  const start = (await csms.waitCall('StartTransaction')).reply as { transactionId: number }
  t.same(
    await tx(1, profile({ chargingProfileId: 12, chargingProfilePurpose: 'TxProfile', transactionId: start.transactionId + 1 }, [[0, 0]])),
    { status: 'Rejected' },
    'another transaction',
  )
  t.same(
    await tx(
      1,
      profile({ chargingProfileId: 12, chargingProfilePurpose: 'TxProfile', transactionId: start.transactionId }, [[0, 0.3]], {
        startSchedule: iso(rig.now),
      }),
    ),
    { status: 'Accepted' },
  )
  t.same(limits(rig).at(-1), ['set-outlet-limit', 'A1', 0.3], 'below the 0.5 A minimum: the engine pauses it')
  t.equal(rig.cp.state().chargingProfiles, 2)
  await rig.end('A1')
  await rig.advance(250)
  t.equal(rig.cp.state().chargingProfiles, 1, 'the TxProfile went with its transaction')
  t.same(limits(rig).at(-1), ['set-outlet-limit', 'A1', 0], 'A1 back to the default, at its first period')
  void s1

  // ClearChargingProfile by purpose: every outlet free.
  t.same(await csms.call('ClearChargingProfile', { chargingProfilePurpose: 'TxDefaultProfile' }), { status: 'Accepted' })
  t.same(limits(rig).slice(-2), [
    ['set-outlet-limit', 'A1', null],
    ['set-outlet-limit', 'A2', null],
  ])
  t.same(await csms.call('ClearChargingProfile', { chargingProfilePurpose: 'TxDefaultProfile' }), { status: 'Unknown' }, 'nothing left to clear')
  await closeClean(t, csms, rig)
})

t.test('impossible profiles are Rejected (or a CALLERROR) and change nothing', async (t) => {
  const { csms, rig } = await online(t)
  t.same(await csms.call('SetChargingProfile', { connectorId: 0, csChargingProfiles: profile({ chargingProfileId: 7 }, [[0, 24]]) }), {
    status: 'Accepted',
  })
  const before = JSON.stringify([limits(rig), rig.cp.state().chargingProfiles])
  const composite = await csms.call('GetCompositeSchedule', { connectorId: 0, duration: 3600 })
  const cases: [string, number, Record<string, unknown>][] = [
    ['an unknown connector', 9, profile({ chargingProfileId: 8, chargingProfilePurpose: 'TxDefaultProfile' })],
    ['a ChargePointMaxProfile on a connector', 1, profile({ chargingProfileId: 8 })],
    ['a stack level above ChargeProfileMaxStackLevel', 0, profile({ chargingProfileId: 8, stackLevel: 9 })],
    ['a negative stack level', 0, profile({ chargingProfileId: 8, stackLevel: -1 })],
    [
      'periods that go back in time',
      0,
      profile({ chargingProfileId: 8 }, [
        [0, 10],
        [600, 12],
        [300, 14],
      ]),
    ],
    [
      'two periods at the same time',
      0,
      profile({ chargingProfileId: 8 }, [
        [0, 10],
        [0, 12],
      ]),
    ],
    ['a first period after 0', 0, profile({ chargingProfileId: 8 }, [[60, 10]])],
    ['no period', 0, profile({ chargingProfileId: 8 }, [])],
    ['a negative limit', 0, profile({ chargingProfileId: 8 }, [[0, -1]])],
    ['an Absolute schedule without startSchedule', 0, profile({ chargingProfileId: 8 }, [[0, 10]], { startSchedule: undefined })],
    ['a schedule that ended before now', 0, profile({ chargingProfileId: 8 }, [[0, 10]], { startSchedule: iso(T0 - 7200_000), duration: 3600 })],
    [
      'a period after the duration',
      0,
      profile(
        { chargingProfileId: 8 },
        [
          [0, 10],
          [3600, 5],
        ],
        { duration: 3600 },
      ),
    ],
    ['a zero duration', 0, profile({ chargingProfileId: 8 }, [[0, 10]], { duration: 0 })],
    ['validTo before validFrom', 0, profile({ chargingProfileId: 8, validFrom: iso(T0 + 3600_000), validTo: iso(T0) })],
    ['validTo passed', 0, profile({ chargingProfileId: 8, validTo: iso(T0 - 1000) })],
    [
      'a Relative ChargePointMaxProfile',
      0,
      { ...profile({ chargingProfileId: 8, chargingProfileKind: 'Relative' }, [[0, 10]], { startSchedule: undefined }) },
    ],
    [
      'a Relative schedule with startSchedule',
      0,
      profile({ chargingProfileId: 8, chargingProfilePurpose: 'TxDefaultProfile', chargingProfileKind: 'Relative' }),
    ],
    ['Recurring without recurrencyKind', 0, profile({ chargingProfileId: 8, chargingProfileKind: 'Recurring' })],
    ['recurrencyKind on an Absolute profile', 0, profile({ chargingProfileId: 8, recurrencyKind: 'Daily' })],
    [
      'a Daily recurrence longer than a day',
      0,
      profile({ chargingProfileId: 8, chargingProfileKind: 'Recurring', recurrencyKind: 'Daily' }, [[0, 10]], { duration: 90_000 }),
    ],
    ['a ChargePointMaxProfile naming a transaction', 0, profile({ chargingProfileId: 8, transactionId: 5 })],
    ['a TxProfile on connector 0', 0, profile({ chargingProfileId: 8, chargingProfilePurpose: 'TxProfile' })],
    ['a TxProfile without a transaction', 1, profile({ chargingProfileId: 8, chargingProfilePurpose: 'TxProfile' })],
  ]
  for (const [what, connectorId, p] of cases) {
    const sched = p.chargingSchedule as Record<string, unknown>
    for (const k of Object.keys(sched)) if (sched[k] === undefined) delete sched[k]
    t.same(await csms.call('SetChargingProfile', { connectorId, csChargingProfiles: p }), { status: 'Rejected' }, what)
  }
  // numberPhases 4 is valid JSON for the schema (an integer) but not a phase count.
  t.same(
    await csms.call('SetChargingProfile', {
      connectorId: 0,
      csChargingProfiles: {
        ...profile({ chargingProfileId: 8 }),
        chargingSchedule: { startSchedule: iso(T0), chargingRateUnit: 'A', chargingSchedulePeriod: [{ startPeriod: 0, limit: 10, numberPhases: 4 }] },
      },
    }),
    { status: 'Rejected' },
    'four phases',
  )
  const tooMany = (await csms
    .call('SetChargingProfile', {
      connectorId: 0,
      csChargingProfiles: profile(
        { chargingProfileId: 8 },
        Array.from({ length: 49 }, (_, i) => [i * 60, 10] as [number, number]),
      ),
    })
    .catch((e: unknown) => e)) as { rpcErrorCode?: string }
  t.equal(tooMany.rpcErrorCode, 'OccurenceConstraintViolation', '49 periods (ChargingScheduleMaxPeriods 48): CALLERROR')
  // A unit the schema does not know: ocpp-rpc's strict mode will not send it, so it goes as a raw frame.
  const kW = profile({ chargingProfileId: 8 }, [[0, 10]], { chargingRateUnit: 'kW' })
  const badUnit = await csms.raw(JSON.stringify([2, 'unit-1', 'SetChargingProfile', { connectorId: 0, csChargingProfiles: kW }]), 'unit-1')
  t.same(badUnit.slice(0, 3), [4, 'unit-1', 'PropertyConstraintViolation'], `an unsupported chargingRateUnit: CALLERROR (${String(badUnit[3])})`)
  t.same(await csms.call('GetCompositeSchedule', { connectorId: 9, duration: 60 }), { status: 'Rejected' }, 'composite: an unknown connector')
  t.same(await csms.call('GetCompositeSchedule', { connectorId: 0, duration: 0 }), { status: 'Rejected' }, 'composite: no duration')
  t.same(JSON.stringify([limits(rig), rig.cp.state().chargingProfiles]), before, 'nothing changed')
  t.same(await csms.call('GetCompositeSchedule', { connectorId: 0, duration: 3600 }), composite, 'the composite schedule is the same')

  await closeClean(t, csms, rig, ['unit-1'])
})

t.test('replacement, ClearChargingProfile by id, connector, purpose and stack level; the limit of installed profiles', async (t) => {
  const { csms, rig } = await online(t)
  const set = (connectorId: number, over: Record<string, unknown>, limit = 16) =>
    csms.call('SetChargingProfile', {
      connectorId,
      csChargingProfiles: profile({ chargingProfilePurpose: 'TxDefaultProfile', ...over }, [[0, limit]]),
    })
  t.same(await set(1, { chargingProfileId: 1, stackLevel: 0 }), { status: 'Accepted' })
  t.same(await set(1, { chargingProfileId: 1, stackLevel: 1 }, 8), { status: 'Accepted' }, 'the same id replaces')
  t.equal(rig.cp.state().chargingProfiles, 1)
  t.same(await set(1, { chargingProfileId: 2, stackLevel: 1 }, 6), { status: 'Accepted' }, 'the same connector, purpose and stack level replaces')
  t.equal(rig.cp.state().chargingProfiles, 1)
  t.same(limits(rig).at(-1), ['set-outlet-limit', 'A1', 6])
  t.same(await set(2, { chargingProfileId: 3, stackLevel: 1 }), { status: 'Accepted' })
  t.same(await set(0, { chargingProfileId: 4, stackLevel: 3 }, 0), { status: 'Accepted' })
  t.same(await set(1, { chargingProfileId: 5, stackLevel: 3 }, 10), { status: 'Accepted' })
  t.same(
    limits(rig).slice(-2),
    [
      ['set-outlet-limit', 'A2', 0],
      ['set-outlet-limit', 'A1', 10],
    ],
    "connector 0's at level 3 holds both at 0, then at the same stack level the connector's own TxDefaultProfile wins over connector 0's",
  )
  t.equal(rig.cp.state().chargingProfiles, 4)
  t.same(await csms.call('ClearChargingProfile', { id: 99 }), { status: 'Unknown' })
  t.same(await csms.call('ClearChargingProfile', { id: 5, connectorId: 2 }), { status: 'Accepted' }, 'by id, whatever else it names')
  t.same(limits(rig).at(-1), ['set-outlet-limit', 'A1', 0], "A1 now under connector 0's")
  t.same(await csms.call('ClearChargingProfile', { connectorId: 2, stackLevel: 0 }), { status: 'Unknown' }, 'both criteria must match')
  t.same(await csms.call('ClearChargingProfile', { connectorId: 0, stackLevel: 3 }), { status: 'Accepted' })
  t.same(await csms.call('ClearChargingProfile', {}), { status: 'Accepted' }, 'no criterion: all')
  t.equal(rig.cp.state().chargingProfiles, 0)
  t.same(limits(rig).slice(-2), [
    ['set-outlet-limit', 'A1', null],
    ['set-outlet-limit', 'A2', null],
  ])

  // The installed limit: 32 at once; a 33rd is Rejected, and changes nothing.
  for (let i = 0; i < 32; i++) {
    const r = await csms.call('SetChargingProfile', {
      connectorId: i % 3,
      csChargingProfiles: profile({ chargingProfileId: 200 + i, chargingProfilePurpose: 'TxDefaultProfile', stackLevel: Math.floor(i / 3) % 9 }, [
        [0, 16],
      ]),
    })
    if (r.status !== 'Accepted') t.fail(`profile ${i}: ${JSON.stringify(r)}`)
  }
  t.equal(rig.cp.state().chargingProfiles, 27, 'the same connector, purpose and stack level replaced five of them')
  for (let i = 0; i < 5; i++)
    await csms.call('SetChargingProfile', {
      connectorId: 1,
      csChargingProfiles: profile({ chargingProfileId: 300 + i, chargingProfilePurpose: 'ChargePointMaxProfile', stackLevel: i }, [[0, 32]]),
    })
  t.same(
    await csms.call('SetChargingProfile', {
      connectorId: 0,
      csChargingProfiles: profile({ chargingProfileId: 400, stackLevel: 0 }, [[0, 32]]),
    }),
    { status: 'Accepted' },
  )
  t.equal(rig.cp.state().chargingProfiles, 28)
  for (let i = 1; i <= 4; i++)
    t.same(
      await csms.call('SetChargingProfile', {
        connectorId: 0,
        csChargingProfiles: profile({ chargingProfileId: 400 + i, stackLevel: i }, [[0, 32]]),
      }),
      { status: 'Accepted' },
    )
  t.equal(rig.cp.state().chargingProfiles, 32)
  t.same(
    await csms.call('SetChargingProfile', { connectorId: 0, csChargingProfiles: profile({ chargingProfileId: 500, stackLevel: 5 }, [[0, 1]]) }),
    { status: 'Rejected' },
    'a 33rd: MaxChargingProfilesInstalled',
  )
  t.equal(rig.cp.state().chargingProfiles, 32)
  t.same(
    await csms.call('SetChargingProfile', { connectorId: 0, csChargingProfiles: profile({ chargingProfileId: 404, stackLevel: 4 }, [[0, 12]]) }),
    { status: 'Accepted' },
    'a replacement still goes in',
  )
  t.same(limits(rig).at(-1), ['set-circuit-limit', 'site', 12])
  await closeClean(t, csms, rig)
})

t.test('profiles survive a restart and apply while the central system is away', async (t) => {
  const csms = await startCsms(t)
  let rig = await OcppRig.open(t, csms, { at: T0 })
  await rig.online()
  t.same(
    await csms.call('SetChargingProfile', {
      connectorId: 0,
      csChargingProfiles: profile({}, [
        [0, 20],
        [3600, 8],
      ]),
    }),
    { status: 'Accepted' },
  )
  await rig.close()
  await csms.down()
  rig = await OcppRig.open(t, csms, { at: T0 + 60_000, dir: rig.dir })
  await rig.cp.idle()
  t.equal(rig.cp.state().chargingProfiles, 1, 'kept in the journal')
  // The engine keeps its limit in its journaled state; the charge point knows it gave 20 A and gives it again only when it changes.
  t.same(limits(rig), [], 'nothing to give at start: 20 A is what the engine has')
  t.equal(rig.cp.state().siteLimitA, 20, 'in force at start, with no central system')
  t.notOk(rig.cp.state().connected)
  await rig.advance(3540_000)
  t.same(limits(rig).at(-1), ['set-circuit-limit', 'site', 8], 'the next period at its time, offline')
  await csms.up()
  await rig.online()
  t.same(await csms.call('ClearChargingProfile', { id: 1 }), { status: 'Accepted' })
  t.same(limits(rig).at(-1), ['set-circuit-limit', 'site', null])
  await rig.close()
  rig = await OcppRig.open(t, csms, { at: T0 + 7200_000, dir: rig.dir })
  await rig.cp.idle()
  t.equal(rig.cp.state().chargingProfiles, 0, 'the clear is kept too')
  t.same(limits(rig), [], 'and nothing is given to the engine')
  await closeClean(t, csms, rig)
})

t.test('RemoteStartTransaction.chargingProfile must be a TxProfile naming no transaction', async (t) => {
  const { csms, rig } = await online(t)
  for (const [what, p] of [
    ['a TxDefaultProfile', profile({ chargingProfilePurpose: 'TxDefaultProfile' })],
    ['a TxProfile naming a transaction', profile({ chargingProfilePurpose: 'TxProfile', transactionId: 4 })],
    [
      'a TxProfile whose periods go back',
      profile({ chargingProfilePurpose: 'TxProfile' }, [
        [0, 1],
        [60, 2],
        [30, 3],
      ]),
    ],
  ] as const)
    t.same(await csms.call('RemoteStartTransaction', { connectorId: 1, idTag: 'alice', chargingProfile: p }), { status: 'Rejected' }, what)
  t.same(
    rig.commands.filter((c) => c.action === 'start' || c.action === 'set-outlet-limit'),
    [],
    'no start, no limit',
  )
  await closeClean(t, csms, rig)
})

t.test(
  'a schedule that ended while the daemon was down is lifted at the next start; a limit the charge point never gave is left alone',
  async (t) => {
    let { csms, rig } = await online(t)
    t.same(limits(rig), [], 'no site limit given at a start without profiles (a limit set by the cloud would stay)')
    t.same(await csms.call('SetChargingProfile', { connectorId: 0, csChargingProfiles: profile({}, [[0, 20]], { duration: 600 }) }), {
      status: 'Accepted',
    })
    t.same(limits(rig), [['set-circuit-limit', 'site', 20]])
    await rig.close()
    // Down for an hour: the ten-minute schedule ended meanwhile.
    rig = await OcppRig.open(t, csms, { at: T0 + 3600_000, dir: rig.dir })
    await rig.cp.idle()
    t.same(limits(rig), [['set-circuit-limit', 'site', null]], 'lifted at the start')
    t.equal(rig.cp.state().siteLimitA, null)
    await rig.close()
    rig = await OcppRig.open(t, csms, { at: T0 + 7200_000, dir: rig.dir })
    await rig.cp.idle()
    t.same(limits(rig), [], 'and not again')
    await closeClean(t, csms, rig)
  },
)
