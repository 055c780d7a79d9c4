/**
 * A real MQTT broker for tests: Debian's mosquitto (/usr/sbin/mosquitto) on a
 * free loopback port, started, awaited until it accepts TCP connections, and
 * killed at teardown. Each test gets its own broker.
 *
 *   const broker = await startMosquitto(t)            // plain mqtt://127.0.0.1:PORT
 *   const tls = await startMosquitto(t, { tls: { caFile, certFile, keyFile } })
 *   await broker.kill()      // SIGKILL: the broker vanishes mid-stream
 *   await broker.restart()   // same port again
 *
 * Passing a tap `t` registers teardown; otherwise call stop() yourself.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs'
import { createServer, connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export const MOSQUITTO = existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : 'mosquitto'

export interface BrokerOptions {
  /** A TLS listener instead of plain TCP (certificates in PEM files). */
  tls?: { caFile: string; certFile: string; keyFile: string; requireCertificate?: boolean }
  /** Extra lines for mosquitto.conf. */
  extraConfig?: string[]
  port?: number
}

export interface Broker {
  port: number
  url: string
  /** Whether the broker process is running. */
  running(): boolean
  /** SIGKILL the broker and wait until it is gone. */
  kill(): Promise<void>
  /** Start it again on the same port. */
  restart(): Promise<void>
  /** Kill and remove the temp dir. Idempotent. */
  stop(): Promise<void>
}

interface Teardownable {
  teardown(fn: () => unknown): void
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      const port = typeof addr === 'object' && addr ? addr.port : 0
      srv.close(() => resolve(port))
    })
  })
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1' })
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

export async function startMosquitto(t?: Teardownable, opts: BrokerOptions = {}): Promise<Broker> {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-mosq-'))
  let port = opts.port ?? (await freePort())
  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  let stderr = ''
  let stopped = false

  const writeConf = () => {
    const lines = [`listener ${port} 127.0.0.1`, 'allow_anonymous true', 'persistence false', 'log_dest stderr', 'log_type error', 'log_type warning']
    // Started as root, mosquitto drops to the 'mosquitto' user, which cannot read our 0700 temp dir.
    if (process.getuid?.() === 0) lines.push('user root')
    if (opts.tls) {
      lines.push(`cafile ${opts.tls.caFile}`, `certfile ${opts.tls.certFile}`, `keyfile ${opts.tls.keyFile}`)
      if (opts.tls.requireCertificate) lines.push('require_certificate true')
    }
    lines.push(...(opts.extraConfig ?? []))
    const file = join(dir, 'mosquitto.conf')
    writeFileSync(file, lines.join('\n') + '\n')
    return file
  }

  const launch = async (): Promise<void> => {
    const conf = writeConf()
    stderr = ''
    const c = spawn(MOSQUITTO, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] })
    child = c
    c.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString()
    })
    let gone = false
    exited = new Promise((resolve) =>
      c.once('exit', () => {
        gone = true
        resolve()
      }),
    )
    const deadline = Date.now() + 30_000
    while (Date.now() < deadline) {
      if (gone) throw new Error(`mosquitto exited at start (port ${port}): ${stderr.trim()}`)
      if (await canConnect(port)) return
      await new Promise((r) => setTimeout(r, 50))
    }
    c.kill('SIGKILL')
    throw new Error(`mosquitto did not accept connections on port ${port} within 30 s: ${stderr.trim()}`)
  }

  // A free port can be taken between the probe and mosquitto's bind: retry with another.
  for (let attempt = 0; ; attempt++) {
    try {
      await launch()
      break
    } catch (err) {
      if (attempt >= 4 || opts.port !== undefined) {
        rmSync(dir, { recursive: true, force: true })
        throw err
      }
      port = await freePort()
    }
  }

  const kill = async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await exited
    }
  }
  const broker: Broker = {
    get port() {
      return port
    },
    get url() {
      return `${opts.tls ? 'mqtts' : 'mqtt'}://127.0.0.1:${port}`
    },
    running: () => !!child && child.exitCode === null && child.signalCode === null,
    kill,
    restart: async () => {
      await kill()
      // The port may linger briefly after SIGKILL; mosquitto sets SO_REUSEADDR, but retry anyway.
      for (let i = 0; ; i++) {
        try {
          await launch()
          return
        } catch (err) {
          if (i >= 20) throw err
          await new Promise((r) => setTimeout(r, 250))
        }
      }
    },
    stop: async () => {
      if (stopped) return
      stopped = true
      await kill()
      rmSync(dir, { recursive: true, force: true })
    },
  }
  t?.teardown(() => broker.stop())
  return broker
}
