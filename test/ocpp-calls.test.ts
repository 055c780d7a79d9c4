/**
 * OCPP 1.6J calls from the central system, end to end (the built daemon, ocpp-rpc's
 * strict central system, the pymodbus site peer): a boot Pending, then Rejected,
 * then Accepted, each retried at its interval, with nothing else sent before
 * Accepted; heartbeats at the interval given; malformed and unknown calls answered
 * with the right CALLERROR, nothing changed, the connection kept; a repeated message
 * id applied once; ChangeAvailability on a connector with a session; RemoteStop, also one sent
 * ahead of the StartTransaction answer that gives its id;
 * a meter fault (Faulted); Get/ChangeConfiguration; TriggerMessage; UnlockConnector; Reset Soft and Hard.
 */
import t from 'tap'
import { journalRecords, ocppSection, startCsms } from './helpers/csms.js'
import { startDaemon, startPeer, tempDir, waitFor, writeSiteConfig, type Ended, type Started } from './helpers/e2e-kit.js'

t.test('the central system calls the charge point', async (t) => {
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 2 })
  let stopAhead: Promise<unknown> | undefined
  const csms = await startCsms(t, {
    boot: [
      { status: 'Pending', interval: 1 },
      { status: 'Rejected', interval: 1 },
      { status: 'Accepted', interval: 1 },
    ],
    // A central system that stops a transaction the moment it gives it an id: the call leaves before the answer does.
    onStartTransaction: (transactionId, params) => {
      if (params.idTag === 'drv-quick') stopAhead = csms.client().call('RemoteStopTransaction', { transactionId })
    },
  })
  const config = writeSiteConfig({ dir, port: peer.port, outlets: 2, extra: { ocpp: ocppSection(csms) } })
  const daemon = startDaemon(t, config)

  await t.test('Pending, Rejected, then Accepted; heartbeats at the interval given', async (t) => {
    await waitFor(() => csms.of('BootNotification').length >= 3, 'three BootNotifications')
    const boots = csms.of('BootNotification')
    t.ok(boots[1]!.at - boots[0]!.at >= 900, 'asked again after the Pending interval')
    t.ok(boots[2]!.at - boots[1]!.at >= 900, 'asked again after the Rejected interval')
    const accepted = csms.calls.indexOf(boots[2]!)
    t.same(
      csms.calls.slice(0, accepted).map((c) => c.action),
      ['BootNotification', 'BootNotification'],
      'nothing but BootNotification before Accepted',
    )
    await waitFor(() => csms.of('Heartbeat').length >= 2, 'two heartbeats')
    const hb = csms.of('Heartbeat')
    t.ok(hb[1]!.at - hb[0]!.at >= 800 && hb[1]!.at - hb[0]!.at < 5000, 'heartbeats at the 1 s interval the central system gave')
  })

  await t.test('malformed and unknown calls: the right CALLERROR, nothing changed, the link kept', async (t) => {
    await waitFor(() => csms.of('StatusNotification').filter((c) => c.params.connectorId === 2).length > 0, 'statuses sent')
    const statuses = csms.of('StatusNotification').length
    const cases: [string, string, string][] = [
      ['m1', JSON.stringify([2, 'm1', 'RemoteStartTransaction', { connectorId: 1 }]), 'FormationViolation'],
      ['m2', JSON.stringify([2, 'm2', 'RemoteStartTransaction', { connectorId: 1, idTag: 'x'.repeat(25) }]), 'PropertyConstraintViolation'],
      ['m3', JSON.stringify([2, 'm3', 'ChangeAvailability', { connectorId: 'one', type: 'Inoperative' }]), 'TypeConstraintViolation'],
      ['m4', JSON.stringify([2, 'm4', 'ChangeAvailability', { connectorId: 1, type: 'Broken' }]), 'PropertyConstraintViolation'],
      ['m5', JSON.stringify([2, 'm5', 'RemoteStartTransaction', { idTag: 'a', extra: 1 }]), 'PropertyConstraintViolation'],
      ['m6', JSON.stringify([2, 'm6', 'Reset', 'Hard']), 'FormationViolation'],
      ['m7', JSON.stringify([2, 'm7', 'FlyToTheMoon', {}]), 'NotImplemented'],
      [
        'm8',
        JSON.stringify([2, 'm8', 'ReserveNow', { connectorId: 1, expiryDate: new Date().toISOString(), idTag: 'a', reservationId: 1 }]),
        'NotSupported',
      ],
      ['m9', JSON.stringify([2, 'm9']), 'FormationViolation'],
      ['m10', JSON.stringify([7, 'm10', 'Reset', {}]), 'FormationViolation'],
    ]
    for (const [id, text, code] of cases) {
      const reply = await csms.raw(text, id)
      t.equal(reply[0], 4, `${id}: a CALLERROR`)
      t.equal(reply[2], code, `${id}: ${code} (${String(reply[3])})`)
    }
    // Not JSON at all: there is no message id to answer to; the link stays up all the same.
    csms.client().sendRaw('{this is not json')
    t.same(await csms.call('GetConfiguration', { key: ['NumberOfConnectors'] }), {
      configurationKey: [{ key: 'NumberOfConnectors', readonly: true, value: '2' }],
      unknownKey: [],
    })
    t.equal(csms.connections, 1, 'one connection throughout')
    t.equal(csms.of('StartTransaction').length, 0, 'no session started')
    t.notOk(
      csms
        .of('StatusNotification')
        .slice(statuses)
        .some((c) => c.params.status !== 'Available'),
      'no outlet changed state',
    )
    t.equal(daemon.logs().filter((l) => l.msg === 'session started').length, 0)
  })

  await t.test('a repeated message id is applied once', async (t) => {
    await peer.plug(1, 16)
    const frame = JSON.stringify([2, 'dup-1', 'RemoteStartTransaction', { connectorId: 1, idTag: 'drv-1' }])
    const first = await csms.raw(frame, 'dup-1')
    t.same(first, [3, 'dup-1', { status: 'Accepted' }])
    csms.frames.length = 0
    const again = await csms.raw(frame, 'dup-1')
    t.same(again, [3, 'dup-1', { status: 'Accepted' }], 'the first answer again')
    await csms.waitCall('StartTransaction', (c) => c.params.idTag === 'drv-1')
    t.equal(daemon.logs().filter((l) => l.msg === 'session started').length, 1, 'one session')
  })

  await t.test('ChangeAvailability on a connector with a session', async (t) => {
    const start = await waitFor(() => csms.of('StartTransaction').find((c) => c.reply), 'the StartTransaction answered')
    const tx = start.reply!.transactionId as number
    await waitFor(async () => (await peer.outlet(1)).energyWh > 1, 'charging')
    t.same(await csms.call('ChangeAvailability', { connectorId: 1, type: 'Inoperative' }), { status: 'Accepted' })
    const stop = await csms.waitCall('StopTransaction', (c) => c.params.transactionId === tx)
    t.equal(stop.params.reason, 'Remote', 'the central system stopped it')
    await waitFor(async () => !(await peer.outlet(1)).coil, 'the relay opens')
    await waitFor(
      () =>
        csms
          .of('StatusNotification')
          .filter((c) => c.params.connectorId === 1)
          .at(-1)?.params.status === 'Unavailable',
      'connector 1 Unavailable',
    )
    t.same(await csms.call('RemoteStartTransaction', { connectorId: 1, idTag: 'drv-2' }), { status: 'Rejected' }, 'no start while inoperative')
    t.same(await csms.call('ChangeAvailability', { connectorId: 1, type: 'Operative' }), { status: 'Accepted' })
    await waitFor(
      () =>
        csms
          .of('StatusNotification')
          .filter((c) => c.params.connectorId === 1)
          .at(-1)?.params.status === 'Available',
      'connector 1 Available again',
    )
    t.same(await csms.call('ChangeAvailability', { connectorId: 9, type: 'Operative' }), { status: 'Rejected' }, 'an unknown connector')
  })

  await t.test('RemoteStopTransaction', async (t) => {
    t.same(await csms.call('RemoteStopTransaction', { transactionId: 999 }), { status: 'Rejected' }, 'an unknown transaction')
    t.same(await csms.call('RemoteStartTransaction', { idTag: 'drv-3' }), { status: 'Accepted' }, 'a start without connectorId takes a free one')
    const start = await csms.waitCall('StartTransaction', (c) => c.params.idTag === 'drv-3' && c.reply !== undefined)
    t.same(await csms.call('RemoteStopTransaction', { transactionId: start.reply!.transactionId }), { status: 'Accepted' })
    const stop = await csms.waitCall('StopTransaction', (c) => c.params.transactionId === start.reply!.transactionId)
    t.equal(stop.params.reason, 'Remote')
  })

  await t.test('RemoteStopTransaction sent ahead of the StartTransaction answer that gives its id', async (t) => {
    t.same(await csms.call('RemoteStartTransaction', { idTag: 'drv-quick' }), { status: 'Accepted' })
    const start = await csms.waitCall('StartTransaction', (c) => c.params.idTag === 'drv-quick' && c.reply !== undefined)
    t.same(await waitFor(() => stopAhead, 'the early RemoteStopTransaction'), { status: 'Accepted' }, 'the charge point waited for the id')
    const stop = await csms.waitCall('StopTransaction', (c) => c.params.transactionId === start.reply!.transactionId)
    t.equal(stop.params.reason, 'Remote')
  })

  await t.test('a silent meter: Faulted with PowerMeterFailure, then Available again', async (t) => {
    const last2 = () =>
      csms
        .of('StatusNotification')
        .filter((c) => c.params.connectorId === 2)
        .at(-1)?.params
    await peer.silence(2)
    const faulted = await waitFor(() => (last2()?.status === 'Faulted' ? last2() : undefined), 'connector 2 Faulted')
    t.equal(faulted.errorCode, 'PowerMeterFailure')
    t.ok(typeof faulted.info === 'string' && (faulted.info as string).length <= 50, 'info names the fault within 50 characters')
    await peer.answer(2)
    await waitFor(() => last2()?.status === 'Available', 'connector 2 Available after the meter answers')
    t.equal(last2()?.errorCode, 'NoError')
  })

  await t.test('Get/ChangeConfiguration, TriggerMessage, UnlockConnector', async (t) => {
    // A triggered boot replaces the heartbeat timer (at the 1 s it gives again), it does not add one.
    const boots = csms.of('BootNotification').length
    t.same(await csms.call('TriggerMessage', { requestedMessage: 'BootNotification' }), { status: 'Accepted' })
    await waitFor(() => csms.of('BootNotification').length > boots, 'the triggered BootNotification')
    const from = csms.of('Heartbeat').length
    await waitFor(() => csms.of('Heartbeat').length >= from + 4, 'four more heartbeats')
    const beats = csms.of('Heartbeat').slice(from)
    const gaps = beats.slice(1).map((b, i) => b.at - beats[i]!.at)
    t.ok(
      gaps.every((g) => g >= 700),
      `one heartbeat a second, not two timers (gaps ${gaps.join(', ')} ms)`,
    )
    const all = (await csms.call('GetConfiguration', {})) as { configurationKey: { key: string; value: string }[] }
    t.ok(
      all.configurationKey.some((k) => k.key === 'HeartbeatInterval' && k.value === '1'),
      'HeartbeatInterval as the boot set it',
    )
    t.same(await csms.call('GetConfiguration', { key: ['NoSuchKey'] }), { configurationKey: [], unknownKey: ['NoSuchKey'] })
    t.same(await csms.call('ChangeConfiguration', { key: 'HeartbeatInterval', value: '60' }), { status: 'Accepted' })
    t.same(await csms.call('ChangeConfiguration', { key: 'HeartbeatInterval', value: 'soon' }), { status: 'Rejected' })
    t.same(await csms.call('ChangeConfiguration', { key: 'NumberOfConnectors', value: '5' }), { status: 'Rejected' }, 'read-only')
    t.same(await csms.call('ChangeConfiguration', { key: 'NoSuchKey', value: '1' }), { status: 'NotSupported' })
    t.same(await csms.call('GetConfiguration', { key: ['HeartbeatInterval'] }), {
      configurationKey: [{ key: 'HeartbeatInterval', readonly: false, value: '60' }],
      unknownKey: [],
    })
    const before = csms.of('StatusNotification').filter((c) => c.params.connectorId === 2).length
    t.same(await csms.call('TriggerMessage', { requestedMessage: 'StatusNotification', connectorId: 2 }), { status: 'Accepted' })
    await waitFor(() => csms.of('StatusNotification').filter((c) => c.params.connectorId === 2).length > before, 'the triggered StatusNotification')
    const hb = csms.of('Heartbeat').length
    t.same(await csms.call('TriggerMessage', { requestedMessage: 'Heartbeat' }), { status: 'Accepted' })
    await waitFor(() => csms.of('Heartbeat').length > hb, 'the triggered Heartbeat')
    t.same(await csms.call('TriggerMessage', { requestedMessage: 'DiagnosticsStatusNotification' }), { status: 'NotImplemented' })
    t.same(await csms.call('UnlockConnector', { connectorId: 1 }), { status: 'NotSupported' })
  })

  await t.test('Reset Soft: a clean stop, its StopTransaction Reboot sent first', async (t) => {
    await peer.plug(2, 10)
    t.same(await csms.call('RemoteStartTransaction', { connectorId: 2, idTag: 'drv-4' }), { status: 'Accepted' })
    const start = await csms.waitCall('StartTransaction', (c) => c.params.idTag === 'drv-4' && c.reply !== undefined)
    t.same(await csms.call('Reset', { type: 'Soft' }), { status: 'Accepted' })
    t.equal((await daemon.exited).code, 0, 'the daemon stops cleanly (systemd starts it again)')
    const stop = csms.of('StopTransaction').find((c) => c.params.transactionId === start.reply!.transactionId)
    t.equal(stop?.params.reason, 'Reboot')
    const records = journalRecords(config)
    const ended = records.filter((r): r is Ended => r.type === 'session.ended')
    t.same(
      ended.map((e) => e.reason),
      ['manager-stopped', 'manager-stopped', 'manager-stopped', 'reboot'],
    )
    t.equal(records.filter((r): r is Started => r.type === 'session.started').length, 4, 'four sessions, the repeated id applied once')
  })

  await t.test('Reset Hard: the same stop without waiting; what did not leave goes after the restart, once', async (t) => {
    csms.setBoot([{ status: 'Accepted', interval: 60 }])
    let again = startDaemon(t, config)
    await again.waitLog((l) => l.msg === 'ocpp: boot accepted', 'the restarted daemon is accepted')
    t.same(await csms.call('RemoteStartTransaction', { connectorId: 2, idTag: 'drv-5' }), { status: 'Accepted' })
    const start = await csms.waitCall('StartTransaction', (c) => c.params.idTag === 'drv-5' && c.reply !== undefined)
    const tx = start.reply!.transactionId as number
    t.same(await csms.call('Reset', { type: 'Hard' }), { status: 'Accepted' })
    t.equal((await again.exited).code, 0, 'a clean stop, exit 0')
    again = startDaemon(t, config)
    await again.waitLog((l) => l.msg === 'ocpp: boot accepted', 'accepted after the hard reset')
    const stop = await csms.waitCall('StopTransaction', (c) => c.params.transactionId === tx, 'the StopTransaction of the reset session')
    t.equal(stop.params.reason, 'Reboot')
    await again.waitLog((l) => l.msg === 'ocpp: boot accepted' && again.logs().some((x) => x.msg === 'ocpp: connected'), 'settled')
    t.equal((await again.stop('SIGTERM')).code, 0)
    t.equal(csms.of('StopTransaction').filter((c) => c.params.transactionId === tx).length, 1, 'sent once')
  })

  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
  // ocpp-rpc counts a CALLERROR or CALLRESULT to a message id it did not send as a bad message: the raw frames above are those.
  const ours = new Set(['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'm8', 'm9', 'm10', 'dup-1'])
  t.same(
    csms.badMessages.filter((b) => !ours.has(String((JSON.parse(String((b as { buffer: Buffer }).buffer)) as unknown[])[1]))),
    [],
    'no other bad message',
  )
})
