/**
 * The bus scan's routes (docs/contract.md "Bus scan"): the serial ports found and the line
 * settings to try, a scan of a configured bus (through the site's own bus) or of a new port,
 * its progress and cancel. What a scan finds is added to the site by a config save
 * (`PUT /api/config`: an outlet or a bus appended applies at once).
 *
 * Owns: who may scan (installer and admin), the request's checks and conflicts.
 * Must never: open a port a configured bus already uses under another config, or run two
 * scans at once.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { dirname, join } from 'node:path'
import type { BusConfig, NetDeviceConfig } from '../../core/types.js'
import { findNetDevice, type NetDeviceFind } from '../../drivers/netscan.js'
import { writeAtomic } from '../journal/fsync.js'
import type { Daemon } from '../daemon.js'
import { listSerialPorts, parseUnits, testDevice } from '../../drivers/scan.js'
import { checkBus, portOf, ScanJobs } from '../scan-bus.js'
import type { Principal } from './auth.js'
import { HttpError, allow, jsonBody, sendJson } from './util.js'
import { describeError } from '../errors.js'

/** What the page offers for a serial line: the common rates first, with what ships at each. */
export const LINE_HINTS = {
  baudRates: [2400, 4800, 9600, 19200, 38400, 57600, 115200],
  parities: ['none', 'even', 'odd'],
  notes: [
    'Eastron SDM120 and SDM230 ship at 2400 baud, SDM630 and SDM72D at 9600; 8N1 (parity none, 1 stop bit).',
    'Everything on one line shares baud rate, parity and stop bits; each device needs its own unit id.',
    'Nothing answers? Check the baud rate and parity on the meter’s panel, then swap A and B.',
  ],
}

export class ScanRoutes {
  private readonly jobs: ScanJobs

  constructor(
    private readonly daemon: Daemon,
    private readonly now: () => number,
    /** The site's config file: a found device's password is kept beside it. */
    private readonly configFile?: string,
  ) {
    this.jobs = new ScanJobs(now)
  }

  async handle(req: IncomingMessage, res: ServerResponse, method: string, rest: string[], who: Principal): Promise<void> {
    const sub = rest.join('/')
    if (method !== 'GET' && method !== 'HEAD' && who.role !== 'admin' && who.role !== 'installer')
      throw new HttpError(403, 'forbidden', `${who.who} may not ${method} /api/scan${sub ? `/${sub}` : ''}: scanning the buses is the installer's`)
    if (sub === 'ports') {
      allow(method, ['GET', 'HEAD'])
      return sendJson(res, 200, { ports: await listSerialPorts(), ...LINE_HINTS })
    }
    if (sub === 'device') {
      allow(method, ['POST'])
      return sendJson(res, 200, await this.device(await jsonBody(req)))
    }
    if (sub === 'test') {
      allow(method, ['POST'])
      return sendJson(res, 200, await this.test(await jsonBody(req)))
    }
    if (sub !== '') throw new HttpError(404, 'not-found', `no route /api/scan/${sub} (see docs/contract.md "Bus scan")`)
    allow(method, ['GET', 'HEAD', 'POST', 'DELETE'])
    if (method === 'DELETE') {
      if (!this.jobs.cancel()) throw new HttpError(409, 'not-running', 'no scan is running')
      return sendJson(res, 200, { cancelled: true })
    }
    if (method === 'POST') {
      await this.begin(await jsonBody(req), who)
      return sendJson(res, 202, { scan: this.jobs.state() })
    }
    sendJson(res, 200, { scan: this.jobs.state() ?? null })
  }

  /** The bus a request names: a configured Modbus bus (`busId`), or a new one (`bus`) on a port no configured bus uses. */
  private busOf(body: Record<string, unknown>): { bus: BusConfig; busId: string | null } {
    const config = this.daemon.config
    let bus: BusConfig
    let busId: string | null = null
    if (body.busId !== undefined) {
      if (body.bus !== undefined) throw field('/bus', 'give busId (a configured bus) or bus (a new one), not both')
      const found = config.buses.find((b) => b.id === body.busId)
      if (!found) throw field('/busId', `no bus ${JSON.stringify(body.busId)} in the config (buses: ${config.buses.map((b) => b.id).join(', ')})`)
      if (found.type !== 'modbus-rtu' && found.type !== 'modbus-tcp')
        throw field('/busId', `${found.id} is ${found.type}: only Modbus buses are scanned`)
      bus = found
      busId = found.id
    } else {
      const raw = body.bus
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
        throw field('/bus', 'a bus to scan is required: busId, or bus {type, path… or host, port}')
      const checked = checkBus({ id: 'scan', ...(raw as Record<string, unknown>) })
      if (!checked.ok)
        throw new HttpError(
          400,
          'invalid-request',
          `${checked.problems[0]!.pointer}: ${checked.problems[0]!.message}`,
          {},
          { pointer: checked.problems[0]!.pointer, problems: checked.problems },
        )
      bus = checked.bus
      if (bus.type !== 'modbus-rtu' && bus.type !== 'modbus-tcp') throw field('/bus/type', 'only Modbus buses (modbus-rtu, modbus-tcp) are scanned')
      const port = portOf(bus)
      const taken = config.buses.find((b) => portOf(b) === port)
      if (taken)
        throw new HttpError(
          409,
          'port-in-use',
          `${port} is bus ${taken.id} (${taken.type}) of the site: scan it as busId "${taken.id}", through the site's own bus; two configs on one port would fight over it`,
          {},
          { pointer: '/bus' },
        )
    }
    return { bus, busId }
  }

  /** Reads one meter (and its relay's position) as its model says, before it is added: the form's "Test". */
  private async test(body: Record<string, unknown>): Promise<unknown> {
    for (const k of Object.keys(body))
      if (!['busId', 'bus', 'meter', 'relay'].includes(k)) throw field(`/${k}`, 'unknown field (allowed: busId, bus, meter, relay)')
    const { bus, busId } = this.busOf(body)
    const device = (v: unknown, what: string, coil: boolean): { model: string; unit: number; coil?: number } | undefined => {
      if (v === undefined) return undefined
      const o = v as Record<string, unknown> | null
      if (typeof o !== 'object' || o === null || typeof o.model !== 'string')
        throw field(`/${what}/model`, 'a model name is required (the model folder lists them)')
      if (!Number.isInteger(o.unit) || (o.unit as number) < 1 || (o.unit as number) > 247)
        throw field(`/${what}/unit`, 'must be a unit id from 1 to 247')
      if (coil && o.coil !== undefined && (!Number.isInteger(o.coil) || (o.coil as number) < 0 || (o.coil as number) > 65535))
        throw field(`/${what}/coil`, 'must be a coil number from 0 to 65535')
      return { model: o.model, unit: o.unit as number, ...(o.coil !== undefined ? { coil: o.coil as number } : {}) }
    }
    const meter = device(body.meter, 'meter', false)
    if (!meter) throw field('/meter', 'the meter to read is required: {model, unit}')
    const relay = device(body.relay, 'relay', true)
    try {
      return await testDevice(
        bus,
        { meter, ...(relay ? { relay } : {}) },
        {
          now: this.now,
          modelsDir: this.daemon.config.models?.dir,
          bus: busId !== null ? this.daemon.buses?.bus(busId) : undefined,
        },
      )
    } catch (err) {
      const e = err as { code?: string; message: string }
      if (e.code === 'MODEL_UNKNOWN') throw field(relay && e.message.includes(`"${relay.model}"`) ? '/relay/model' : '/meter/model', e.message)
      if (e.code === 'USAGE') throw field('/bus', e.message)
      throw err
    }
  }

  /**
   * A Shelly or a Tasmota by address: what it offers, each channel read once, and the bus to
   * add it as (a new id; `passwordFile` when a password was given: kept beside the config
   * file, mode 0600, never in the config itself).
   */
  private async device(body: Record<string, unknown>): Promise<unknown> {
    for (const k of Object.keys(body))
      if (!['type', 'host', 'port', 'password'].includes(k)) throw field(`/${k}`, 'unknown field (allowed: type, host, port, password)')
    if (body.type !== 'shelly' && body.type !== 'tasmota') throw field('/type', 'must be "shelly" or "tasmota"')
    if (body.password !== undefined && (typeof body.password !== 'string' || body.password === '' || body.password.length > 128))
      throw field('/password', 'must be the device’s password (1 to 128 characters), or left out when it has none')
    const config = this.daemon.config
    const taken = new Set(config.buses.map((b) => b.id))
    const stem = `${body.type}-${String(body.host ?? '').replace(/[^A-Za-z0-9]+/g, '-')}`.replace(/-+$/, '').slice(0, 56)
    let id = stem
    for (let n = 2; taken.has(id); n++) id = `${stem}-${n}`
    const checked = checkBus({ id, type: body.type, host: body.host, ...(body.port !== undefined ? { port: body.port } : {}) })
    if (!checked.ok) {
      // The body is the bus's fields themselves: /bus/host is /host here.
      const problems = checked.problems.map((p) => ({ ...p, pointer: p.pointer.replace(/^\/bus/, '') || '/' }))
      const p = problems[0]!
      throw new HttpError(400, 'invalid-request', `body${p.pointer}: ${p.message}`, {}, { pointer: p.pointer, problems })
    }
    const bus = checked.bus as NetDeviceConfig
    const same = config.buses.find((b) => (b.type === 'shelly' || b.type === 'tasmota') && b.host === bus.host && b.port === bus.port)
    if (same) throw new HttpError(409, 'device-in-use', `${bus.host}:${bus.port} is device ${same.id} of the site already`, {}, { pointer: '/host' })
    const password = typeof body.password === 'string' ? body.password : undefined
    let found: NetDeviceFind
    try {
      found = await findNetDevice(bus, { now: this.now, modelsDir: config.models?.dir, ...(password ? { password: () => password } : {}) })
    } catch (err) {
      const e = err as { code?: string; message: string }
      throw new HttpError(
        502,
        'device-unreachable',
        `${bus.type} at ${bus.host}:${bus.port}: ${describeError(err)}`,
        {},
        {
          pointer: e.code === 'NET_AUTH' ? '/password' : '/host',
        },
      )
    }
    let passwordFile: string | undefined
    if (password) {
      if (!this.configFile) throw new HttpError(409, 'no-config-file', 'the password is kept beside the config file: this daemon runs without one')
      passwordFile = join(dirname(this.configFile), `${id}.password`)
      await writeAtomic(passwordFile, `${password}\n`, 0o600)
    }
    return { device: found, bus: { id, type: bus.type, host: bus.host, port: bus.port, ...(passwordFile ? { passwordFile } : {}) } }
  }

  private async begin(body: Record<string, unknown>, who: Principal): Promise<void> {
    for (const k of Object.keys(body))
      if (k !== 'busId' && k !== 'bus' && k !== 'units') throw field(`/${k}`, 'unknown field (allowed: busId, bus, units)')
    if (this.jobs.running()) throw new HttpError(409, 'scan-running', 'a scan is already running: wait for it or cancel it (DELETE /api/scan)')
    let units: number[]
    try {
      units = parseUnits(typeof body.units === 'string' ? body.units : '1-247')
    } catch (err) {
      throw field('/units', (err as Error).message.replace(/^--units: /, ''))
    }
    const config = this.daemon.config
    const { bus, busId } = this.busOf(body)
    void this.jobs.begin({ bus, busId, units, site: this.daemon.buses, config, who: who.who })
  }
}

function field(pointer: string, message: string): HttpError {
  return new HttpError(400, 'invalid-request', `body${pointer}: ${message}`, {}, { pointer })
}
