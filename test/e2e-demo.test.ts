/**
 * The demo (`npm start` runs `node dist/daemon/demo.js`): with no hardware and no
 * broker it starts the simulator and the real daemon, shows sessions starting,
 * prints where its status page is (and the token, which opens the API), stops cleanly
 * on Ctrl-C (open sessions close `reboot`), and leaves a journal that `outpost verify`
 * accepts.
 */
import t from 'tap'
import { join } from 'node:path'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { runCli } from './helpers/cli.js'
import { ROOT, tempDir, waitFor } from './helpers/e2e-kit.js'

t.test('npm start: the demo site charges, queues records offline and stops cleanly', async (t) => {
  const dir = tempDir(t, 'outpost-e2e-demo-')
  const demo = spawn(process.execPath, [join(ROOT, 'dist', 'daemon', 'demo.js'), '--dir', dir, '--speed', '300'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const out: string[] = []
  const err: string[] = []
  createInterface({ input: demo.stdout }).on('line', (l) => out.push(l))
  createInterface({ input: demo.stderr }).on('line', (l) => err.push(l))
  const exited = new Promise<number | null>((r) => demo.once('exit', (code) => r(code)))
  t.teardown(async () => {
    if (demo.exitCode === null && demo.signalCode === null) demo.kill('SIGKILL')
    await exited
  })

  await waitFor(() => out.some((l) => l.includes('gateway started')), 'gateway started', 60_000)
  t.ok(
    out.some((l) => l.includes('uplink: none configured')),
    'says it runs offline',
  )
  // Cars arrive 5-65 simulated seconds in: at 300x, within a second or so of real time.
  // The status page: the demo prints its URL and token; the API answers with the demo's four bays.
  const line = await waitFor(() => out.find((l) => l.startsWith('status page: http')), 'the status page line', 60_000)
  const m = /^status page: (http:\/\/127\.0\.0\.1:\d+\/) +\(sign in with the token (\S+);/.exec(line)
  t.ok(m, 'URL and token printed: ' + line)
  const health = await fetch(m![1] + 'api/health')
  t.equal(health.status, 200, '/api/health answers')
  const outlets = (await (await fetch(m![1] + 'api/outlets', { headers: { authorization: `Bearer ${m![2]}` } })).json()) as { outlet: string }[]
  t.same(
    outlets.map((o) => o.outlet),
    ['D1', 'D2', 'D3', 'D4'],
    'the token printed opens the API',
  )
  await waitFor(() => out.filter((l) => l.includes('session started')).length >= 2, 'two sessions started', 90_000)
  t.ok(
    out.filter((l) => l.includes('session started')).every((l) => /\((activation|auto-start), meter at \d+\.\d{3} kWh\)/.test(l)),
    'each start says its trigger and the meter register',
  )
  demo.kill('SIGINT')
  const code = await exited
  t.equal(code, 0, 'Ctrl-C: exit 0', { stderr: err, out: out.slice(-10) })
  const started = out.filter((l) => l.includes('session started')).length
  const ended = out.filter((l) => l.includes('session ended'))
  t.equal(ended.length, started, 'every session that started has ended (its billing record printed)')
  t.ok(
    ended.every((l) => l.includes('(offline)')),
    'no broker: every record says offline',
  )
  t.ok(
    ended.some((l) => / reboot /.test(l)),
    'the sessions still open at Ctrl-C closed "reboot"',
  )
  const v = runCli(['verify', '--config', join(dir, 'site.json')])
  t.equal(v.status, 0, 'outpost verify accepts the demo journal: ' + v.stdout + v.stderr)
})
