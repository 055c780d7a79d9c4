/**
 * The installed `outpost ingest`: the bin's interpreter line carries the gateway's V8 flags (lite mode,
 * a 1 MB young generation), under which `pg` cannot even load (lite mode has no WebAssembly). Run as the
 * bin runs it, with those flags, the worker must start, store, and stop cleanly on SIGTERM.
 */
import { execFileSync, spawn } from 'node:child_process'
import t from 'tap'
import mqtt from 'mqtt'
import { binNodeFlags } from '../bench/lib.js'
import { CLI, waitFor } from './helpers/ingest-kit.js'
import { FleetLog } from './helpers/fleet.js'
import { bodies } from './helpers/memory-log.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { startPostgres } from './helpers/postgres.js'

t.test("outpost ingest under the bin's own node flags starts, stores, acks and stops on SIGTERM", async (t) => {
  const flags = binNodeFlags(CLI)
  t.ok(flags.includes('--lite-mode'), `the interpreter line's flags: ${flags.join(' ')}`)
  const db = await startPostgres(t)
  const broker = await startMosquitto(t)
  const p = spawn(process.execPath, [...flags, CLI, 'ingest', '--url', broker.url, '--db', db.url, '--worker', 'bin'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let err = ''
  let out = ''
  p.stderr.on('data', (d: Buffer) => (err += d.toString()))
  p.stdout.on('data', (d: Buffer) => (out += d.toString()))
  const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)))
  t.teardown(() => void p.kill('SIGKILL'))
  await waitFor(() => {
    if (p.exitCode !== null) throw new Error(`exited at start (${p.exitCode}):\n${err}`)
    return err.includes('"msg":"subscribed"')
  }, 'the worker subscribed')

  const log = new FleetLog()
  log.append(bodies(3))
  const pub = await mqtt.connectAsync(broker.url)
  t.teardown(() => pub.endAsync(true))
  await pub.subscribeAsync('outpost/bin-1/ack', { qos: 1 })
  const ack = new Promise<number>((r) => pub.on('message', (_topic, payload) => r((JSON.parse(payload.toString()) as { upTo: number }).upTo)))
  await pub.publishAsync('outpost/bin-1/records', JSON.stringify(log.records), { qos: 1 })
  t.equal(await ack, 3, 'stored and acked')
  t.same(await db.query('SELECT count(*)::int AS n FROM records'), [{ n: 3 }])

  p.kill('SIGTERM')
  t.equal(await exited, 0, 'a clean stop, passed through')
  t.match(out, /"stored":3/, 'the counters line of the worker itself')
})

t.test('the worker under the bin stops when the bin process is killed -9 (no orphan left running)', async (t) => {
  const db = await startPostgres(t)
  const broker = await startMosquitto(t)
  const p = spawn(process.execPath, [...binNodeFlags(CLI), CLI, 'ingest', '--url', broker.url, '--db', db.url, '--worker', 'orphan'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let err = ''
  let out = ''
  p.stderr.on('data', (d: Buffer) => (err += d.toString()))
  p.stdout.on('data', (d: Buffer) => (out += d.toString()))
  t.teardown(() => void p.kill('SIGKILL'))
  await waitFor(() => err.includes('"msg":"subscribed"'), 'the worker subscribed')
  const children = execFileSync('pgrep', ['-P', String(p.pid)], { encoding: 'utf8' })
    .trim()
    .split('\n')
    .map(Number)
  t.equal(children.length, 1, 'one child: the worker')
  const child = children[0]!
  const args = execFileSync('ps', ['-o', 'args=', '-p', String(child)], { encoding: 'utf8' })
  t.match(args, /--max-semi-space-size=32/, "the cloud side's flags")
  t.notMatch(args, /--lite-mode/, "not the gateway's")
  t.teardown(() => {
    try {
      process.kill(child, 'SIGKILL')
    } catch {}
  })
  p.kill('SIGKILL')
  const alive = () => {
    try {
      process.kill(child, 0)
      return true
    } catch {
      return false
    }
  }
  await waitFor(() => !alive(), 'the worker gone after its parent', 20_000)
  await waitFor(() => out.includes('"worker":"orphan"'), 'its counters line', 5000)
  t.pass('it stopped cleanly (its counters line is printed at the end of a clean stop)')
})
