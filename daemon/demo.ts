/**
 * `npm start`: a demonstration site with no hardware and no set-up. It starts
 * the simulator (four SDM120 meters and a relay board on loopback Modbus TCP)
 * and the real daemon against it through the real driver path, gives the demo
 * drivers some money, and plays the drivers' part: when a car is plugged into a
 * public bay, its driver activates the bay, as they would from the app. Bay 4
 * is a resident's auto-start outlet and needs nobody.
 *
 * The simulator runs faster than real time (--speed, default 120) so sessions
 * charge, taper and end within minutes; the daemon's own timing (grace period,
 * unplug hold, per-hour prices) runs on the real clock.
 *
 * The status page and local API listen where the config's api.listen says
 * (127.0.0.1:8080 in config/demo.json), or on a free port if that one is taken;
 * the demo prints the URL and the token.
 *
 * Output: one line per billable fact on stdout, and every 30 s (when it changed)
 * how many records are queued for the cloud; the daemon's structured log goes to
 * var/demo/outpost.log. Ctrl-C stops cleanly (sessions close `reboot`).
 *
 * Options: --uplink URL (a broker, e.g. a local mosquitto: records then leave the
 * queue as the cloud acks them; without a consumer they stay queued), --config FILE
 * (a copy of config/demo.json to play with), --dir, --speed, --seed, --ocpp URL (an
 * OCPP 1.6J central system, e.g. demo/csms.mjs: the site is then one charge point there).
 */
import { mkdirSync, readFileSync, writeFileSync, createWriteStream } from 'node:fs'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { startSim } from '../drivers/index.js'
import { validateConfig, formatProblem } from './config.js'
import { Service } from './service.js'
import { systemClock } from './clock.js'
import { createLogger } from './log.js'
import { packagePath } from '../core/paths.js'
import { EXIT_BROKEN, EXIT_CONFIG, version } from './cli-common.js'
import type { JournalRecord } from '../core/types.js'

const DRIVERS = ['driver-1', 'driver-2', 'driver-3']
const RESIDENT = 'resident-4'

/** Wh as kWh with three decimals, exactly as the journal's integers allow. */
const kWh = (wh: number): string => (wh / 1000).toFixed(3)

function money(minor: number, currency: string): string {
  return `${currency} ${(minor / 100).toFixed(2)}`
}

function describe(r: JournalRecord): string {
  const at = `#${String(r.seq).padStart(4)} ${r.ts.slice(11, 19)}`
  switch (r.type) {
    case 'gateway.started':
      return `${at}  gateway started (outpost ${r.version}, previous stop ${r.cleanShutdown ? 'clean' : 'NOT clean'})`
    case 'session.started':
      return `${at}  ${r.outlet}  session started   ${r.userId.padEnd(10)} (${r.trigger}, meter at ${(r.meterWh / 1000).toFixed(3)} kWh)`
    case 'session.ended':
      return (
        `${at}  ${r.outlet}  session ended     ${r.userId.padEnd(10)} ${r.reason.padEnd(16)} ${kWh(r.energyWh)} kWh ` +
        `in ${Math.round(r.durationS)} s -> ${money(r.total, r.currency)}${r.offline ? ' (offline)' : ''}` +
        `${r.meterEvents ? ` (${r.meterEvents.length + (r.meterEventsOmitted ?? 0)} meter events)` : ''}`
      )
    case 'outlet.fault':
      return `${at}  ${r.outlet}  FAULT  ${r.detail}`
    case 'outlet.recovered':
      return `${at}  ${r.outlet}  recovered  ${r.detail}`
    case 'meter.reconciliation':
      return (
        `${at}  ${r.outlet}  reconciliation: meter ${kWh(r.meterEndWh - r.meterStartWh)} kWh, billed ${kWh(r.billedWh)}, unbilled ${kWh(r.unbilledWh)}` +
        `${r.rebasedWh ? `, rebased ${kWh(r.rebasedWh)}` : ''}${r.rejectedReadings ? `, ${r.rejectedReadings} readings rejected` : ''}`
      )
    case 'session.queued':
      return `${at}  ${r.outlet}  session queued    circuit ${r.circuit} (${r.why})`
    case 'session.resumed':
      return `${at}  ${r.outlet}  session resumed   circuit ${r.circuit} after ${Math.round(r.waitedS)} s`
    case 'config.applied':
      return `${at}  config applied by ${r.who}: ${r.changed.join(', ') || '(nothing)'}${r.pendingOutlets ? ` (waits for the session of ${r.pendingOutlets.join(', ')})` : ''}`
  }
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      speed: { type: 'string', default: '120' },
      dir: { type: 'string' },
      seed: { type: 'string', default: '7' },
      config: { type: 'string' },
      uplink: { type: 'string' },
      ocpp: { type: 'string' },
    },
    strict: true,
  })
  const dir = resolve(values.dir ?? packagePath('var', 'demo'))
  mkdirSync(dir, { recursive: true })
  const sim = await startSim({ outlets: 4, port: 0, seed: Number(values.seed), speed: Number(values.speed) })

  // The demo config (or the installer's copy of it): its first bus is pointed at the simulator.
  const configFile = values.config ?? packagePath('config', 'demo.json')
  const raw = JSON.parse(readFileSync(configFile, 'utf8')) as {
    site: { id: string }
    buses: { port: number }[]
    storage: { dir: string }
    uplink?: { url: string }
    ocpp?: { url: string; identity?: string }
  }
  raw.buses[0]!.port = sim.port
  raw.storage.dir = join(dir, 'journal')
  if (values.uplink) raw.uplink = { ...(raw.uplink ?? {}), url: values.uplink }
  // The charge point's identity is the site id unless the config names one.
  if (values.ocpp) raw.ocpp = { ...(raw.ocpp ?? {}), url: values.ocpp.replace(/\/+$/, ''), identity: raw.ocpp?.identity ?? `outpost-${raw.site.id}` }
  const checked = validateConfig(raw)
  if (!checked.ok) {
    for (const p of checked.problems) process.stderr.write(formatProblem(configFile, p) + '\n')
    await sim.close()
    return EXIT_CONFIG
  }
  const config = checked.config
  // The effective config, so `outpost records/verify --config` work on the demo's journal.
  const siteFile = join(dir, 'site.json')
  writeFileSync(siteFile, JSON.stringify(raw, null, 2) + '\n')
  const logFile = join(dir, 'outpost.log')
  const logger = createLogger(config.logging.level, createWriteStream(logFile, { flags: 'a' }))
  // The demo's API takes any free port when api.listen's is taken (it says which).
  const service = new Service({ config, clock: systemClock, logger, version, api: { anyPortIfTaken: true } })
  const daemon = service.daemon
  const out = (s: string): void => void process.stdout.write(s + '\n')

  daemon.on('record', (r) => out(describe(r)))
  out(`Outpost ${version} demo: simulated site on 127.0.0.1:${sim.port} (Modbus TCP), simulator at ${values.speed}x speed`)
  out(`journal: ${config.storage.dir}`)
  out(`daemon log: ${logFile}`)
  if (config.uplink) {
    out(
      `uplink: ${config.uplink.url}; watch records arrive with: mosquitto_sub -v -h <host> -p <port> -t '${config.uplink.topicPrefix}/${config.site.id}/#'`,
    )
  } else {
    out('uplink: none configured, so the site runs offline and records queue in the journal')
    out("        (with a local mosquitto: npm start -- --uplink mqtt://127.0.0.1:1883, then mosquitto_sub -v -t 'outpost/demo/#')")
  }
  if (config.ocpp) out(`ocpp: charge point ${config.ocpp.identity} of ${config.ocpp.url} (one connector per bay, D1..D${config.outlets.length})`)
  else out('ocpp: none configured (to try it: node demo/csms.mjs, then npm start -- --ocpp ws://127.0.0.1:9220/ocpp)')
  out(`records: npx outpost records --config ${siteFile}   (verify the chain: npx outpost verify --config ${siteFile})`)
  await service.start()
  const url = service.api?.url()
  if (url) {
    const wanted = config.api!.listen
    if (!url.endsWith(`:${wanted.split(':').pop()}/`))
      out(`status page: ${wanted} is taken (another program, or another demo), so it is on a free port instead`)
    out(
      `status page: ${url}   (sign in with the token ${config.api!.token}; API: curl -H 'Authorization: Bearer ${config.api!.token}' ${url}api/outlets)`,
    )
  } else if (config.api) {
    out(`status page: could not listen on ${config.api.listen} (see ${logFile}); charging runs without it`)
  }
  out('')

  let n = 0
  const cmd = async (body: Record<string, unknown>): Promise<void> => {
    const res = await daemon.gateway.handle({ id: `demo-${daemon.bootId}-${++n}`, ...body }, 'local')
    if (!res.ok)
      out(`          command ${String(body.action)} ${String(body.outlet ?? body.userId)} refused: ${res.error.code} (${res.error.message})`)
  }
  for (const userId of [...DRIVERS, RESIDENT]) await cmd({ action: 'set-wallet', userId, currency: 'CAD', balance: 2500 })
  out('wallets: driver-1..3 and resident-4 hold CAD 25.00 each; D4 auto-starts for resident-4')

  // The drivers: activate a public bay when a car is plugged into it and the bay is off.
  const tried = new Map<string, number>()
  const driver = setInterval(() => {
    const statuses = new Map(daemon.outletStatuses().map((s) => [s.outlet, s]))
    for (const o of sim.outlets()) {
      const id = `D${o.outlet}`
      const s = statuses.get(id)
      if (id === 'D4' || !o.vehicle || o.vehicle.full || s?.state !== 'off') continue
      const last = tried.get(id) ?? 0
      if (Date.now() - last < 90_000) continue
      tried.set(id, Date.now())
      const userId = DRIVERS[(o.outlet - 1) % DRIVERS.length]!
      out(`          ${id}  a car is plugged in; ${userId} activates the bay`)
      void cmd({ action: 'start', outlet: id, userId })
    }
  }, 1000)

  // Records queue in the journal until a cloud acknowledges them: show the backlog when it changes.
  let shownHead = -1
  const backlog = setInterval(() => {
    const u = daemon.uplinkState()
    if (u.head === shownHead) return
    shownHead = u.head
    out(`          journal: ${u.head} records, ${u.backlog} queued for the cloud (uplink ${u.status}, acknowledged up to #${u.acked})`)
  }, 30_000)

  return new Promise<number>((done) => {
    const stop = (): void => {
      clearInterval(driver)
      clearInterval(backlog)
      out('\nstopping: open sessions close with reason "reboot", every relay opens')
      void service
        .stop()
        .then(() => sim.close())
        .then(() => done(0))
    }
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
  })
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (err: unknown) => {
    process.stderr.write(`demo: ${(err as Error).stack ?? String(err)}\n`)
    process.exitCode = EXIT_BROKEN
  },
)
