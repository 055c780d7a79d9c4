/**
 * What the charge point keeps across restarts and crashes (test/helpers/ocpp-rig.ts on a real journal,
 * ocpp-rpc's strict central system):
 * - the central system's ChangeConfiguration lasts across restarts (the journal's side data), over the
 *   config file's value, until that value is edited in the file; /api/status's view says where each comes from;
 * - its Remote and DeAuthorized stop reasons survive a kill -9 between the stop and the StopTransaction
 *   (the child kills itself the moment the stop is journaled, before the StopTransaction is queued).
 */
import type { ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { packagePath } from '../core/paths.js'
import { startCsms } from './helpers/csms.js'
import { OcppRig } from './helpers/ocpp-rig.js'
import { spawnLineChild } from './helpers/line-child.js'

const CHILD = packagePath('dist', 'test', 'helpers', 'ocpp-crash-child.js')

t.test('ChangeConfiguration lasts across restarts until the config file says otherwise', async (t) => {
  const csms = await startCsms(t)
  let rig = await OcppRig.open(t, csms, { ocpp: { meterValueSampleS: 60 } })
  await rig.online()
  const dir = rig.dir
  t.same(await csms.call('ChangeConfiguration', { key: 'MeterValueSampleInterval', value: '15' }), { status: 'Accepted' })
  t.same(await csms.call('ChangeConfiguration', { key: 'StopTxnSampledData', value: 'Voltage' }), { status: 'Accepted' })
  t.same(await csms.call('ChangeConfiguration', { key: 'MeterValuesAlignedData', value: 'Bogus' }), { status: 'Rejected' })
  const source = (r: OcppRig, key: string) => r.cp.state().configuration.find((k) => k.key === key)
  t.match(source(rig, 'MeterValueSampleInterval'), { value: '15', source: 'central-system' })
  t.match(source(rig, 'HeartbeatInterval'), { source: 'config' })
  await rig.close()

  rig = await OcppRig.open(t, csms, { dir, ocpp: { meterValueSampleS: 60 } })
  await rig.online()
  const keys = async () =>
    Object.fromEntries(
      (
        (await csms.call('GetConfiguration', { key: ['MeterValueSampleInterval', 'StopTxnSampledData', 'MeterValuesAlignedData'] })) as {
          configurationKey: { key: string; value: string }[]
        }
      ).configurationKey.map((k) => [k.key, k.value]),
    )
  t.same(
    await keys(),
    {
      MeterValueSampleInterval: '15',
      StopTxnSampledData: 'Voltage',
      MeterValuesAlignedData: 'Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage',
    },
    'the changes after a restart; the refused one never applied',
  )
  t.match(source(rig, 'StopTxnSampledData'), { value: 'Voltage', source: 'central-system' })
  await rig.close()

  // The installer edits the file's value of one key: the file is the newer word for that key only.
  rig = await OcppRig.open(t, csms, { dir, ocpp: { meterValueSampleS: 30 } })
  await rig.online()
  t.same((await keys()).MeterValueSampleInterval, '30', "an edited file value wins over the central system's older change")
  t.equal((await keys()).StopTxnSampledData, 'Voltage', 'the other change stands')
  t.ok(
    rig.lines.some((l) => /no longer applies/.test(l.msg) && l.key === 'MeterValueSampleInterval'),
    'logged',
  )
  // Set back to the file's value: nothing of the central system's is kept for it.
  t.same(await csms.call('ChangeConfiguration', { key: 'StopTxnSampledData', value: '' }), { status: 'Accepted' })
  t.match(source(rig, 'StopTxnSampledData'), { value: '', source: 'config' })
  await rig.close()
  t.equal(csms.violations.length, 0)
  t.equal(csms.badMessages.length, 0)
})

t.test('Remote and DeAuthorized survive a kill -9 between the stop and its StopTransaction', async (t) => {
  const children = new Set<ChildProcess>()
  t.teardown(() => {
    for (const c of children) c.kill('SIGKILL')
  })
  const csms = await startCsms(t, { invalidTags: ['mallory'] })
  for (const [idTag, reason] of [
    ['drv-remote', 'Remote'],
    ['mallory', 'DeAuthorized'],
  ] as const) {
    const dir = mkdtempSync(join(tmpdir(), 'outpost-ocpp-durable-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    const run = spawnLineChild([CHILD, 'run', dir, csms.url, idTag], children)
    if (reason === 'Remote') {
      await run.waitFor((l) => l === 'ready')
      const start = csms.of('StartTransaction').find((c) => c.params.idTag === idTag)!
      // The answer never comes: the charge point dies right after the stop is journaled.
      void csms.call('RemoteStopTransaction', { transactionId: start.reply!.transactionId as number }).catch(() => undefined)
    }
    t.equal(await run.exited, null, `${reason}: the child was killed`)
    t.equal(run.child.signalCode, 'SIGKILL')
    const restart = spawnLineChild([CHILD, 'restart', dir, csms.url], children)
    await restart.waitFor((l) => l === 'drained')
    const outbox = JSON.parse(restart.lines.find((l) => l.startsWith('outbox '))!.slice(7)) as { stops: number; overrides: { reason: string }[] }
    t.equal(outbox.stops, 0, `${reason}: the crash came before the StopTransaction was queued`)
    t.match(outbox.overrides, [{ reason }], `${reason}: the reason was on disk`)
    // A kill before the StartTransaction's answer was on disk sends it again after the restart (the
    // central system then gives a second transactionId): the session's one stop names the last.
    const starts = csms.of('StartTransaction').filter((c) => c.params.idTag === idTag)
    const stops = csms.of('StopTransaction').filter((c) => starts.some((st) => st.reply?.transactionId === c.params.transactionId))
    t.equal(stops.length, 1, `${reason}: one StopTransaction (${starts.length} StartTransaction)`)
    t.equal(stops[0]?.params.transactionId, starts.at(-1)?.reply?.transactionId, `${reason}: for the transaction the central system gave last`)
    t.equal(stops[0]?.params.reason, reason, `${reason}: sent with the central system's reason, not the table's Local`)
    t.equal(stops[0]?.params.meterStop, 113)
  }
  t.equal(csms.violations.length, 0, `no strict-mode violation: ${JSON.stringify(csms.violations.slice(0, 2))}`)
  t.equal(csms.badMessages.length, 0)
})
