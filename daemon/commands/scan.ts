/**
 * `outpost scan`: probe a Modbus bus over a unit-id range and print what
 * answers, as a table and as a config snippet. Reads only; never switches a
 * relay. Without --bus, lists the serial ports (safely, without udevadm).
 */
import { parseArgs } from 'node:util'
import { validateConfig } from '../config.js'
import type { BusConfig } from '../types.js'
import { configSnippet, formatSnippet, formatTable, listSerialPorts, parseUnits, scanBus } from '../../drivers/scan.js'

const USAGE = `Usage: outpost scan --bus tcp://HOST:PORT | --bus rtu:/dev/serial/by-id/...[@BAUD[,PARITY]]
                    [--baud 9600] [--parity none|even|odd] [--stop-bits 1|2] [--units 1-247] [--timeout MS] [--models DIR] [--json]
       outpost scan --list      (serial ports on this machine)`

export async function main(argv: string[]): Promise<number> {
  let values
  try {
    values = parseArgs({
      args: argv,
      options: {
        bus: { type: 'string' }, baud: { type: 'string' }, parity: { type: 'string' }, 'stop-bits': { type: 'string' }, units: { type: 'string' },
        timeout: { type: 'string' }, models: { type: 'string' }, json: { type: 'boolean' }, list: { type: 'boolean' },
      },
      strict: true,
    }).values
  } catch (err) {
    process.stderr.write(`outpost scan: ${(err as Error).message}\n${USAGE}\n`)
    return 64
  }
  if (values.list || values.bus === undefined) {
    const ports = await listSerialPorts()
    process.stdout.write(ports.length ? ports.map((p) => `${p.byId ?? p.path}${p.byId ? `  (${p.path})` : ''}${p.note ? '  ' + p.note : ''}`).join('\n') + '\n' : 'no serial ports found\n')
    if (values.bus === undefined && !values.list) process.stderr.write(`\n${USAGE}\n`)
    return values.list ? 0 : 64
  }
  let bus: BusConfig
  let units: number[]
  try {
    bus = parseBus(values.bus, values)
    units = parseUnits(values.units ?? '1-247')
  } catch (err) {
    process.stderr.write(`outpost scan: ${(err as Error).message}\n${USAGE}\n`)
    return 64
  }
  const started = Date.now()
  process.stderr.write(`scanning ${values.bus} units ${units[0]}-${units[units.length - 1]} (${units.length} ids, timeout ${bus.timeoutMs} ms)\n`)
  let hits
  try {
    hits = await scanBus(bus, units, {
      now: () => Date.now(),
      modelsDir: values.models,
      onUnit: (u, h) => { if (h) process.stderr.write(`  unit ${u}: ${h.kind} ${h.model ?? ''}\n`) },
    })
  } catch (err) {
    const e = err as { code?: string; message: string }
    process.stderr.write(`outpost scan: ${e.code ? e.code + ': ' : ''}${e.message}\n`)
    return 1
  }
  if (values.json) {
    process.stdout.write(JSON.stringify({ hits, config: configSnippet(bus, hits) }, null, 2) + '\n')
    return 0
  }
  process.stdout.write(hits.length ? formatTable(hits) + '\n' : 'nothing answered\n')
  process.stdout.write(`\n# config snippet (set each outlet's plan; check the meter/relay pairing):\n${formatSnippet(configSnippet(bus, hits))}\n`)
  process.stderr.write(`scan took ${((Date.now() - started) / 1000).toFixed(1)} s\n`)
  return 0
}

function parseBus(spec: string, v: { baud?: string; parity?: string; 'stop-bits'?: string; timeout?: string }): BusConfig {
  const timeoutMs = v.timeout !== undefined ? Number(v.timeout) : undefined
  let raw: Record<string, unknown>
  const tcp = spec.match(/^tcp:\/\/([^:/]+)(?::(\d+))?\/?$/)
  const rtu = spec.match(/^rtu:([^@]+)(?:@(\d+)(?:,(none|even|odd))?)?$/)
  if (tcp) {
    raw = { id: 'scan', type: 'modbus-tcp', host: tcp[1], port: tcp[2] !== undefined ? Number(tcp[2]) : 502, timeoutMs: timeoutMs ?? 300, retries: 0 }
  } else if (rtu) {
    raw = {
      id: 'scan', type: 'modbus-rtu', path: rtu[1],
      baudRate: Number(v.baud ?? rtu[2] ?? 9600), parity: v.parity ?? rtu[3] ?? 'none', stopBits: Number(v['stop-bits'] ?? 1),
      timeoutMs: timeoutMs ?? 200, retries: 0,
    }
  } else {
    throw new Error(`--bus "${spec}": expected tcp://HOST:PORT or rtu:/dev/PATH[@BAUD[,PARITY]]`)
  }
  // Validate through the site schema so scan accepts exactly what a config would.
  const r = validateConfig({
    site: { id: 'scan', timezone: 'UTC' }, storage: { dir: '/tmp' }, buses: [raw],
    outlets: [{ id: 'x', bus: 'scan', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'p' }],
    plans: [{ id: 'p', currency: 'EUR', periods: [{ days: ['mon'], from: '00:00', to: '24:00', perKwh: 0.1 }] }],
  })
  if (!r.ok) throw new Error(r.problems.filter((p) => p.pointer.startsWith('/buses/0')).map((p) => `${p.pointer.replace('/buses/0/', '')}: ${p.message}`).join('; ') || 'invalid bus')
  return r.config.buses[0]!
}
