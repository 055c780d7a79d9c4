/**
 * A child process for the kill -9 tests of the OCPP charge point (test/ocpp-durable.test.ts): the
 * charge point of test/helpers/ocpp-rig.ts on a journal folder, against the test's central system.
 *
 *   node ocpp-crash-child.js run DIR URL IDTAG       starts a session for IDTAG and prints `ready` once its
 *                                                    StartTransaction is answered; the first `stop` command the
 *                                                    charge point sends is applied (session.ended journaled) and
 *                                                    the process SIGKILLs itself at once, before the charge point
 *                                                    can queue the StopTransaction
 *   node ocpp-crash-child.js restart DIR URL         prints what the outbox held (`outbox {json}`), then runs the
 *                                                    charge point until the orphaned transaction is closed and its
 *                                                    queue empty, and prints `drained`
 *
 * Owns: the moment of the kill (right after the stop is on disk).
 * Must never: print anything but those lines on stdout.
 */
import { join } from 'node:path'
import { Journal } from '../../daemon/journal/index.js'
import type { Csms } from './csms.js'
import { waitFor } from './e2e-kit.js'
import { OcppRig } from './ocpp-rig.js'

const [phase, dir, url, idTag] = process.argv.slice(2) as [string, string, string, string]
const t = { teardown: () => undefined }
const csms = { url } as Csms

if (phase === 'run') {
  const rig = await OcppRig.open(t, csms, {
    dir,
    onCommand: (cmd) => {
      if (cmd.action === 'stop') process.kill(process.pid, 'SIGKILL')
    },
  })
  await rig.online()
  await rig.start('A1', idTag, 100)
  await rig.step('A1', 112.6)
  await waitFor(async () => (await rig.journal.asideRead('ocpp', 't!')).length === 1, 'the StartTransaction answered on disk', 30_000)
  process.stdout.write('ready\n')
  setInterval(() => undefined, 1000)
} else {
  const j = await Journal.open(join(dir, 'journal'), { bootId: 'peek', clockSynced: () => true, now: Date.now, compactEveryMs: 0 })
  const side = await j.asideRead('ocpp')
  await j.close({ clean: true })
  const stops = side.filter(([k, v]) => k.startsWith('q!') && (JSON.parse(v) as { action: string }).action === 'StopTransaction').length
  const overrides = side.filter(([k]) => k.startsWith('o!')).map(([, v]) => JSON.parse(v) as unknown)
  process.stdout.write(`outbox ${JSON.stringify({ stops, overrides })}\n`)
  const rig = await OcppRig.open(t, csms, { dir })
  await rig.online()
  // Drained: the orphaned transaction closed (its StopTransaction answered, its entry gone), not
  // merely an empty queue, which it also is before the boot's orphan check has queued that stop.
  await waitFor(
    async () => rig.cp.state().queued === 0 && (await rig.journal.asideRead('ocpp', 't!')).length === 0,
    'the orphaned transaction closed and the queue drained',
    30_000,
  )
  await rig.close()
  process.stdout.write('drained\n')
  process.exit(0)
}
