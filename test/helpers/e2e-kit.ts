/**
 * End-to-end plumbing: the BUILT daemon (`node dist/daemon/cli.js run`) as a
 * subprocess against an independent site (test/helpers/site-peer.py on
 * pymodbus), a real mosquitto, and the ReconcilingConsumer as the cloud.
 *
 * Everything started here is registered for teardown on the tap test that
 * started it (daemon, peer, socat, mosquitto, temp dirs), so a failing
 * assertion never leaves a process behind. Nothing here sleeps a fixed time to
 * decide a result: every wait is for a condition, with a generous deadline.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import mqtt, { type MqttClient } from 'mqtt'
import { ReconcilingConsumer } from '../../daemon/uplink/consumer.js'
import type { CommandResult, JournalRecord } from '../../core/types.js'
import { packageRoot } from '../../core/paths.js'

/** The package root, from test/helpers (ts-node) or dist/test/helpers (the built benchmarks). */
export const ROOT = packageRoot
export const CLI = join(ROOT, 'dist', 'daemon', 'cli.js')
export const PEER = join(ROOT, 'test', 'helpers', 'site-peer.py')
/** Debian's python3: the only interpreter here with pymodbus (not the python3 on PATH). */
export const PY = '/usr/bin/python3'
export const SITE = 'e2e'
export const PREFIX = 'outpost'

interface Teardownable {
  teardown(fn: () => unknown): void
}

/** Polls `cond` until it holds; fails naming `what` after a generous deadline (the machine may be loaded). */
export async function waitFor<T>(cond: () => T | undefined | false | Promise<T | undefined | false>, what: string, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await cond()
    if (v !== undefined && v !== false) return v as T
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

export function tempDir(t: Teardownable, prefix = 'outpost-e2e-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

// ---------------------------------------------------------------- child processes

/** A child process of a test, its output lines kept, killed at the test's teardown. */
export interface Proc {
  proc: ChildProcess
  out: string[]
  err: string[]
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  running(): boolean
  kill(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

export function startProc(t: Teardownable, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Proc {
  const proc = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env })
  const out: string[] = []
  const err: string[] = []
  createInterface({ input: proc.stdout! }).on('line', (l) => out.push(l))
  createInterface({ input: proc.stderr! }).on('line', (l) => err.push(l))
  proc.stdin!.on('error', () => undefined) // the child may be gone when we write
  let done = false
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    proc.once('exit', (code, signal) => {
      done = true
      r({ code, signal })
    }),
  )
  const p: Proc = {
    proc,
    out,
    err,
    exited,
    running: () => !done,
    async kill(signal = 'SIGKILL') {
      if (!done) proc.kill(signal)
      return exited
    },
  }
  t.teardown(() => p.kill('SIGKILL'))
  return p
}

// ---------------------------------------------------------------- the site peer

export interface PeerOutlet {
  outlet: number
  coil: boolean
  plugged: boolean
  amps: number
  drawA: number
  energyWh: number
  /** Requests meter n has answered so far. */
  polls: number
  /** Replies meter n sent with a glitched import register (the peer's `glitch` command). */
  glitched: number
}

/** The peer's feeder meter (--feeder): the physical phase currents and their maxima since reset-max. */
export interface PeerFeeder {
  unit: number
  currentsA: [number, number, number]
  loadA: [number, number, number]
  polls: number
  maxA: [number, number, number]
  maxDrawing: number
  /** The feeder's poll count when the last unmanaged load came on (null without one). */
  loadAtPolls: number | null
  /** Its poll count at the first tick after that with no outlet drawing (null until then). */
  clearAtPolls: number | null
}

export interface Peer {
  /** TCP port (TCP mode). */
  port: number
  /** The feeder meter's state (a peer started with `feeder`). */
  feeder(): Promise<PeerFeeder>
  /** Sends one command and waits for its reply; throws when the peer refused it. */
  cmd(c: Record<string, unknown>): Promise<PeerOutlet[]>
  state(): Promise<PeerOutlet[]>
  outlet(n: number): Promise<PeerOutlet>
  plug(n: number, amps: number): Promise<PeerOutlet[]>
  amps(n: number, amps: number): Promise<PeerOutlet[]>
  unplug(n: number): Promise<PeerOutlet[]>
  silence(unit: number): Promise<PeerOutlet[]>
  answer(unit: number): Promise<PeerOutlet[]>
  kill(): Promise<void>
}

export async function startPeer(
  t: Teardownable,
  opts: {
    outlets: number
    rtu?: string
    baud?: number
    port?: number
    energyKwh?: number
    feeder?: number
    phases?: number[]
    /** Which socket each coil really switches (coil outlet → socket outlet, 0: none); the rest switch their own. */
    wiring?: Record<number, number>
    /** Meters whose current sensor is the wrong way round. */
    reversed?: number[]
  },
): Promise<Peer> {
  const args = [PEER, '--outlets', String(opts.outlets)]
  if (opts.feeder !== undefined) args.push('--feeder', String(opts.feeder))
  if (opts.phases) args.push('--phases', opts.phases.join(','))
  if (opts.wiring)
    args.push(
      '--wiring',
      Object.entries(opts.wiring)
        .map(([c, m]) => `${c}:${m}`)
        .join(','),
    )
  if (opts.reversed) args.push('--reversed', opts.reversed.join(','))
  if (opts.energyKwh !== undefined) args.push('--energy-kwh', String(opts.energyKwh))
  if (opts.rtu) args.push('--rtu', opts.rtu, '--baud', String(opts.baud ?? 9600))
  else args.push('--tcp', String(opts.port ?? 0))
  const p = startProc(t, PY, args)
  const ready = await waitFor(() => p.out.find((l) => l.startsWith('READY ')) ?? (!p.running() && 'exited'), 'site-peer READY', 30_000)
  if (ready === 'exited') throw new Error(`site-peer exited at start:\n${p.err.join('\n')}`)
  let next = 0
  let lastFeeder: PeerFeeder | undefined
  const cmd = async (c: Record<string, unknown>): Promise<PeerOutlet[]> => {
    const id = `c${++next}`
    p.proc.stdin!.write(JSON.stringify({ ...c, id }) + '\n')
    const line = await waitFor(
      () => p.out.find((l) => l.startsWith('{') && (JSON.parse(l) as { id?: string }).id === id) ?? (!p.running() && 'exited'),
      `site-peer reply to ${JSON.stringify(c)}`,
      30_000,
    )
    if (line === 'exited') throw new Error(`site-peer exited:\n${p.err.join('\n')}`)
    const reply = JSON.parse(line) as { ok: boolean; error?: string; outlets: PeerOutlet[]; feeder?: PeerFeeder }
    if (!reply.ok) throw new Error(`site-peer refused ${JSON.stringify(c)}: ${reply.error}`)
    lastFeeder = reply.feeder
    return reply.outlets
  }
  const peer: Peer = {
    port: opts.rtu ? 0 : Number(ready.split(' ')[1]),
    cmd,
    async feeder() {
      await cmd({ cmd: 'state' })
      if (!lastFeeder) throw new Error('the site-peer has no feeder meter (start it with feeder)')
      return lastFeeder
    },
    state: () => cmd({ cmd: 'state' }),
    outlet: async (n) => (await cmd({ cmd: 'state' })).find((o) => o.outlet === n)!,
    plug: (n, amps) => cmd({ cmd: 'plug', outlet: n, amps }),
    amps: (n, amps) => cmd({ cmd: 'amps', outlet: n, amps }),
    unplug: (n) => cmd({ cmd: 'unplug', outlet: n }),
    silence: (unit) => cmd({ cmd: 'silence', unit }),
    answer: (unit) => cmd({ cmd: 'answer', unit }),
    kill: async () => void (await p.kill('SIGKILL')),
  }
  return peer
}

// ---------------------------------------------------------------- socat pty pair

export interface PtyPair {
  dir: string
  a: string
  b: string
  /** Kills socat: both ends vanish, as when a USB adapter is pulled. */
  close(): Promise<void>
}

/** A socat pty pair linked as DIR/a and DIR/b (a new temp DIR, or `dir` again to "plug back" the same names). */
export async function ptyPair(t: Teardownable, dir = tempDir(t, 'outpost-e2e-pty-')): Promise<PtyPair> {
  const a = join(dir, 'a')
  const b = join(dir, 'b')
  const p = startProc(t, 'socat', ['-d', '-d', `pty,raw,echo=0,link=${a}`, `pty,raw,echo=0,link=${b}`])
  await waitFor(
    () => (p.err.some((l) => l.includes('starting data transfer loop')) && existsSync(a) && existsSync(b)) || (!p.running() && 'exited'),
    'socat pty pair',
    30_000,
  ).then((v) => {
    if (v === 'exited') throw new Error(`socat exited:\n${p.err.join('\n')}`)
  })
  return {
    dir,
    a,
    b,
    close: async () => {
      await p.kill('SIGKILL')
      await waitFor(() => !existsSync(a) && !existsSync(b), 'socat links gone', 10_000)
    },
  }
}

// ---------------------------------------------------------------- the site config

/** Short timings so a scenario takes seconds; billing rates high enough that a few Wh cost real cents. */
export interface SiteOptions {
  dir: string
  /** The peer's TCP port (bus "site"), unless `rtuPath` is given. */
  port?: number
  rtuPath?: string
  /** Further keys of bus "site" (echo, requestGapMs, ...). */
  bus?: Record<string, unknown>
  outlets: number
  brokerUrl?: string
  /** Per-outlet extras, by outlet number (1-based): plan, autoStart. */
  outlet?: Record<number, Record<string, unknown>>
  /** Extra buses (a dead one) and outlets on them. */
  extraBuses?: unknown[]
  extraOutlets?: unknown[]
  sessions?: Record<string, unknown>
  storage?: Record<string, unknown>
  /** Further top-level sections (api, nodeRed, logging), replacing the defaults above. */
  extra?: Record<string, unknown>
}

export const PLANS = [
  // 2.50 CAD/kWh and 36 CAD/h (one cent a second): a few Wh and seconds make a total worth checking.
  {
    id: 'standard',
    currency: 'CAD',
    activationFee: 0.5,
    periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 2.5, perHour: 36 }],
  },
  // 100 CAD/kWh: 16 A at 230 V costs about ten cents a second.
  {
    id: 'pricey',
    currency: 'CAD',
    activationFee: 0.5,
    periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 100 }],
  },
]

export function writeSiteConfig(o: SiteOptions): string {
  const bus = o.rtuPath
    ? { id: 'site', type: 'modbus-rtu', path: o.rtuPath, baudRate: 9600, parity: 'none', stopBits: 1, timeoutMs: 500, retries: 1 }
    : { id: 'site', type: 'modbus-tcp', host: '127.0.0.1', port: o.port, timeoutMs: 500, retries: 1 }
  Object.assign(bus, o.bus)
  const outlets = Array.from({ length: o.outlets }, (_, i) => ({
    id: `E${i + 1}`,
    bus: 'site',
    meter: { model: 'eastron-sdm120', unit: i + 1 },
    relay: { model: 'modbus-coil', unit: 100, coil: i },
    plan: 'standard',
    ...(o.outlet?.[i + 1] ?? {}),
  }))
  const config = {
    site: { id: SITE, name: 'end-to-end test site', timezone: 'America/Vancouver' },
    storage: { dir: join(o.dir, 'journal'), readingSyncMs: 500, ...(o.storage ?? {}) },
    buses: [bus, ...(o.extraBuses ?? [])],
    outlets: [...outlets, ...(o.extraOutlets ?? [])],
    plans: PLANS,
    sessions: {
      pollMs: 250,
      graceSeconds: 3,
      minChargeA: 0.5,
      autoStartA: 0.5,
      noCurrentA: 0.1,
      noCurrentHoldMs: 750,
      meterFaultMs: 2500,
      ...(o.sessions ?? {}),
    },
    ...(o.brokerUrl ? { uplink: { url: o.brokerUrl, topicPrefix: PREFIX, keepaliveS: 5, reconnectMaxMs: 1000 } } : {}),
    logging: { level: 'info' },
    ...(o.extra ?? {}),
  }
  const file = join(o.dir, 'site.json')
  writeFileSync(file, JSON.stringify(config, null, 2) + '\n')
  return file
}

// ---------------------------------------------------------------- the daemon

export interface LogLine {
  level: string
  time: string
  msg: string
  [k: string]: unknown
}

export interface DaemonProc {
  /** Every stdout line parsed as pino JSON (a line that is not JSON is kept as {msg: line}). */
  logs(): LogLine[]
  stderr(): string[]
  running(): boolean
  waitLog(pred: (l: LogLine) => boolean, what: string, timeoutMs?: number): Promise<LogLine>
  /** Sends `signal` and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  pid: number
}

/**
 * Runs `outpost run` from this checkout's build, or from another tree's `cli` (an installed one).
 * `nodeArgs` go before the script (V8 flags such as --optimize-for-size, which NODE_OPTIONS does not accept);
 * `runArgs` after `run --config FILE` (--listen).
 */
export function startDaemon(
  t: Teardownable,
  configFile: string,
  env: NodeJS.ProcessEnv = {},
  cli = CLI,
  nodeArgs: string[] = [],
  runArgs: string[] = [],
): DaemonProc {
  if (!existsSync(cli)) throw new Error(`${cli} is missing: build first (npx tsc -p .; npm test does)`)
  // The runner's own systemd settings (if it runs under systemd) are not the daemon's.
  const base: NodeJS.ProcessEnv = { ...process.env }
  delete base.NOTIFY_SOCKET
  delete base.WATCHDOG_USEC
  delete base.WATCHDOG_PID
  const p = startProc(t, process.execPath, [...nodeArgs, cli, 'run', '--config', configFile, ...runArgs], {
    ...base,
    OUTPOST_CLOCK_SYNCED: '1',
    ...env,
  })
  const logs = (): LogLine[] =>
    p.out.map((l) => {
      try {
        return JSON.parse(l) as LogLine
      } catch {
        return { level: 'raw', time: '', msg: l }
      }
    })
  const d: DaemonProc = {
    logs,
    stderr: () => p.err,
    running: () => p.running(),
    pid: p.proc.pid!,
    exited: p.exited,
    async waitLog(pred, what, timeoutMs = 60_000) {
      return waitFor(
        () => {
          const hit = logs().find(pred)
          if (hit) return hit
          if (!p.running())
            throw new Error(`the daemon exited while waiting for ${what}; stderr:\n${p.err.join('\n')}\nlog tail:\n${p.out.slice(-20).join('\n')}`)
          return undefined
        },
        what,
        timeoutMs,
      )
    },
    stop: (signal = 'SIGTERM') => p.kill(signal),
  }
  return d
}

/** A `start` through the daemon's local API (`api`: its base URL without the trailing slash), with a command `id` if given. */
export function localStart(api: string, token: string, outlet: string, userId: string, id?: string): Promise<Response> {
  return fetch(`${api}/api/outlets/${outlet}/start`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ userId, ...(id !== undefined ? { id } : {}) }),
  })
}

// ---------------------------------------------------------------- the cloud

export interface Cloud {
  consumer: ReconcilingConsumer
  client: MqttClient
  /** Records the consumer holds (verified, gapless, as written to its file). */
  records(): JournalRecord[]
  waitRecord<T extends JournalRecord>(pred: (r: JournalRecord) => r is T, what: string, timeoutMs?: number): Promise<T>
  waitRecord(pred: (r: JournalRecord) => boolean, what: string, timeoutMs?: number): Promise<JournalRecord>
  /** Sends a command and waits for its result, re-sending with the same id (the contract's at-most-once) until one comes. */
  command(body: Record<string, unknown>, timeoutMs?: number): Promise<CommandResult>
  /** `start`, retried with fresh ids while the outlet has no reading since boot yet. */
  start(outlet: string, userId: string): Promise<CommandResult>
  /** The latest retained/live P/outlets/{id} payload. */
  outlet(id: string): Record<string, unknown> | undefined
  status(): Record<string, unknown> | undefined
  stop(): Promise<void>
}

let cmdSeq = 0

export async function startCloud(t: Teardownable, brokerUrl: string, dir: string): Promise<Cloud> {
  const file = join(dir, 'cloud.records.jsonl')
  const consumer = new ReconcilingConsumer({ url: brokerUrl, siteId: SITE, prefix: PREFIX, file, gapWaitMs: 1000, pullTimeoutMs: 5000 })
  await consumer.start()
  const base = `${PREFIX}/${SITE}`
  const client = await mqtt.connectAsync(brokerUrl, {
    reconnectPeriod: 250,
    connectTimeout: 10_000,
    clientId: `e2e-cloud-${process.pid}-${Math.random().toString(36).slice(2, 8)}`,
  })
  const results = new Map<string, CommandResult>()
  const outlets = new Map<string, Record<string, unknown>>()
  let status: Record<string, unknown> | undefined
  client.on('message', (topic, payload) => {
    let v: unknown
    try {
      v = JSON.parse(payload.toString())
    } catch {
      return
    }
    if (topic.startsWith(`${base}/cmd/`) && topic.endsWith('/result')) {
      const r = v as CommandResult
      results.set(r.id, r)
    } else if (topic.startsWith(`${base}/outlets/`)) {
      outlets.set(topic.slice(`${base}/outlets/`.length), v as Record<string, unknown>)
    } else if (topic === `${base}/status`) {
      status = v as Record<string, unknown>
    }
  })
  // Subscribe again after every reconnect (clean session): a broker restart forgets subscriptions.
  const subscribe = () => client.subscribeAsync([`${base}/cmd/+/result`, `${base}/outlets/+`, `${base}/status`], { qos: 1 })
  client.on('connect', () => void subscribe().catch(() => undefined))
  await subscribe()

  let stopped = false
  const cloud: Cloud = {
    consumer,
    client,
    records: () => {
      if (!existsSync(file)) return []
      return readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l) as JournalRecord)
    },
    waitRecord: ((pred: (r: JournalRecord) => boolean, what: string, timeoutMs = 60_000) =>
      waitFor(() => cloud.records().find(pred), `cloud record: ${what}`, timeoutMs)) as Cloud['waitRecord'],
    async command(body, timeoutMs = 60_000) {
      const id = `e2e-${process.pid}-${++cmdSeq}`
      const msg = JSON.stringify({ id, ...body })
      let sentAt = 0
      return waitFor(
        () => {
          const r = results.get(id)
          if (r) return r
          // The gateway's session is clean: a command sent while it was offline is lost, so resend (same id: applied once).
          if (Date.now() - sentAt > 3000 && client.connected) {
            sentAt = Date.now()
            client.publish(`${base}/cmd`, msg, { qos: 1 })
          }
          return undefined
        },
        `result of ${msg}`,
        timeoutMs,
      )
    },
    async start(outlet, userId) {
      return waitFor(async () => {
        const r = await cloud.command({ action: 'start', outlet, userId })
        if (!r.ok && r.error.code === 'outlet-not-ready') return undefined
        return r
      }, `start ${outlet} for ${userId} past outlet-not-ready`)
    },
    outlet: (id) => outlets.get(id),
    status: () => status,
    async stop() {
      if (stopped) return
      stopped = true
      await client.endAsync(true).catch(() => undefined)
      await consumer.stop().catch(() => undefined)
    },
  }
  t.teardown(() => cloud.stop())
  return cloud
}

// ---------------------------------------------------------------- a session

interface Asserts {
  ok(value: unknown, message: string): unknown
}

export interface StartedSession {
  sessionId: string
  /** The outlet's meter register just before the start was sent (the car plugged, the relay open). */
  e0: number
  result: CommandResult
}

/**
 * How most scenarios open a session: the user's wallet (when `wallet` is given, in cents),
 * the car plugged drawing `amps` (when given), the cloud's `start` for outlet E`outlet`
 * (asserted accepted), then, when `chargeWh` is given, a wait until the meter has counted
 * more than that many Wh past `e0`.
 */
export async function startSession(
  t: Asserts,
  peer: Peer,
  cloud: Cloud,
  o: { outlet: number; userId: string; amps?: number; wallet?: number; chargeWh?: number; charging?: string },
): Promise<StartedSession> {
  if (o.wallet !== undefined)
    t.ok((await cloud.command({ action: 'set-wallet', userId: o.userId, currency: 'CAD', balance: o.wallet })).ok, `wallet of ${o.userId}`)
  if (o.amps !== undefined) await peer.plug(o.outlet, o.amps)
  const e0 = (await peer.outlet(o.outlet)).energyWh
  const result = await cloud.start(`E${o.outlet}`, o.userId)
  t.ok(result.ok, 'start accepted: ' + JSON.stringify(result))
  if (!result.ok) throw new Error(`start of E${o.outlet} for ${o.userId} refused: ${JSON.stringify(result)}`)
  const sessionId = (result as { result: { sessionId: string } }).result.sessionId
  if (o.chargeWh !== undefined)
    await waitFor(async () => (await peer.outlet(o.outlet)).energyWh > e0 + o.chargeWh!, o.charging ?? `E${o.outlet} charging ${o.chargeWh} Wh`)
  return { sessionId, e0, result }
}

/**
 * One whole session on outlet E1 of the peer at 16 A: started, billed from the meter,
 * ended by the unplug, relay (coil 0) closed while charging and open after.
 */
export async function unplugSession(t: Asserts, peer: Peer, cloud: Cloud, via: string): Promise<void> {
  const whEps = 0.02
  const { sessionId, e0 } = await startSession(t, peer, cloud, { outlet: 1, userId: 'u1', amps: 16, wallet: 100_000 })
  const started = await cloud.waitRecord(isStarted('E1'), 'session.started')
  t.ok(Math.abs(started.meterWh - e0) < whEps, `meterWh read ${via} is the register`)
  await waitFor(async () => (await peer.outlet(1)).coil, `coil 0 closed ${via}`)
  await waitFor(async () => (await peer.outlet(1)).energyWh > e0 + 3, 'charging')
  await peer.unplug(1)
  const eFinal = (await peer.outlet(1)).energyWh
  const ended = await cloud.waitRecord(isEnded(sessionId), 'session.ended')
  t.ok(ended.reason === 'unplugged', `ended by the unplug (${ended.reason})`)
  t.ok(Math.abs(ended.energyWh - (eFinal - e0)) < whEps, `energy ${ended.energyWh} = the peer's delta ${(eFinal - e0).toFixed(3)}`)
  await waitFor(async () => !(await peer.outlet(1)).coil, `coil 0 open ${via}`)
}

// ---------------------------------------------------------------- checks

export type Ended = Extract<JournalRecord, { type: 'session.ended' }>
export type Started = Extract<JournalRecord, { type: 'session.started' }>

export const isEnded =
  (sessionId?: string) =>
  (r: JournalRecord): r is Ended =>
    r.type === 'session.ended' && (sessionId === undefined || r.sessionId === sessionId)
export const isStarted =
  (outlet?: string) =>
  (r: JournalRecord): r is Started =>
    r.type === 'session.started' && (outlet === undefined || r.outlet === outlet)

/** Half-up division of a non-negative integer. */
export function roundHalfUp(n: number, d: number): number {
  return Math.floor((n * 2 + d) / (2 * d))
}
