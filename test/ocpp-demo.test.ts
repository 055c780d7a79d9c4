/**
 * The OCPP demo as the README gives it: the shipped central system
 * (`node demo/csms.mjs`, ocpp-rpc in strict mode) and `npm start -- --ocpp URL`
 * (`node dist/daemon/demo.js --ocpp URL`): the demo site boots there, its bays'
 * sessions become transactions (Authorize, StartTransaction), Ctrl-C stops them
 * (StopTransaction Reboot, each once), and the central system saw no violation.
 */
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import t, { type Test } from 'tap'
import { ROOT, tempDir, waitFor } from './helpers/e2e-kit.js'

function run(t: Test, args: string[]) {
  const p = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT })
  const out: string[] = []
  const err: string[] = []
  createInterface({ input: p.stdout }).on('line', (l) => out.push(l))
  createInterface({ input: p.stderr }).on('line', (l) => err.push(l))
  const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)))
  t.teardown(async () => {
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL')
    await exited
  })
  return { p, out, err, exited }
}

t.test('npm start -- --ocpp against demo/csms.mjs', async (t) => {
  const csms = run(t, [join(ROOT, 'demo', 'csms.mjs'), '--port', '0'])
  const listening = await waitFor(() => csms.out.find((l) => l.includes('central system listening on')), 'the demo CSMS listening', 30_000)
  const url = /listening on (ws:\/\/\S+)/.exec(listening)![1]!
  const dir = tempDir(t, 'outpost-ocpp-demo-')
  const demo = run(t, [join(ROOT, 'dist', 'daemon', 'demo.js'), '--dir', dir, '--speed', '300', '--ocpp', url])
  await waitFor(() => demo.out.find((l) => l.startsWith('ocpp: charge point outpost-demo of ')), 'the demo names its charge point', 60_000)
  await waitFor(() => csms.out.some((l) => l.includes('BootNotification Outpost')), 'the boot reaches the central system', 60_000)
  await waitFor(() => csms.out.filter((l) => l.includes('StartTransaction #')).length >= 2, 'two transactions', 90_000)
  t.ok(
    csms.out.some((l) => / Authorize driver-\d: Accepted/.test(l)),
    'a driver activating a bay is authorized by the central system',
  )
  demo.p.kill('SIGINT')
  t.equal(await demo.exited, 0, 'Ctrl-C: exit 0', { stderr: demo.err })
  const started = csms.out.filter((l) => l.includes('StartTransaction #')).map((l) => /#(\d+)/.exec(l)![1])
  const stopped = csms.out.filter((l) => l.includes('StopTransaction #')).map((l) => /#(\d+)/.exec(l)![1])
  t.same([...stopped].sort(), [...started].sort(), 'every transaction stopped once')
  t.notOk(
    csms.out.some((l) => l.includes('STRICT-MODE VIOLATION')),
    'no strict-mode violation',
  )
  const sessions = demo.out.filter((l) => l.includes('session ended'))
  t.equal(sessions.length, started.length, 'one transaction per session')
})
