/**
 * `outpost scan`: probe a Modbus bus over a unit-id range and print what
 * answers, as a table and as a config snippet. Reads only; never switches a
 * relay. Without --bus, lists the serial ports (safely, without udevadm).
 */
import { parseArgs } from 'node:util'
import { checkBus } from '../scan-bus.js'
import { EXIT_BROKEN, EXIT_OK, EXIT_USAGE, processIo, type Io } from '../cli-common.js'
import type { BusConfig } from '../../core/types.js'
import { configSnippet, formatSnippet, formatTable, listSerialPorts, parseUnits, scanBus } from '../../drivers/scan.js'

const USAGE = `Usage: outpost scan --bus tcp://HOST:PORT | --bus rtu:/dev/serial/by-id/...[@BAUD[,PARITY]]
                    [--baud 9600] [--parity none|even|odd] [--stop-bits 1|2] [--echo] [--units 1-247] [--timeout MS] [--models DIR] [--json]
       outpost scan --list      (serial ports on this machine)`

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  let values
  try {
    values = parseArgs({
      args: argv,
      options: {
        bus: { type: 'string' },
        baud: { type: 'string' },
        parity: { type: 'string' },
        'stop-bits': { type: 'string' },
        echo: { type: 'boolean' },
        units: { type: 'string' },
        timeout: { type: 'string' },
        models: { type: 'string' },
        json: { type: 'boolean' },
        list: { type: 'boolean' },
      },
      strict: true,
    }).values
  } catch (err) {
    io.err(`outpost scan: ${(err as Error).message}\n${USAGE}\n`)
    return EXIT_USAGE
  }
  if (values.list || values.bus === undefined) {
    const ports = await listSerialPorts()
    io.out(
      ports.length
        ? ports.map((p) => `${p.byId ?? p.path}${p.byId ? `  (${p.path})` : ''}${p.note ? '  ' + p.note : ''}`).join('\n') + '\n'
        : 'no serial ports found\n',
    )
    if (values.bus === undefined && !values.list) io.err(`\n${USAGE}\n`)
    return values.list ? EXIT_OK : EXIT_USAGE
  }
  let bus: BusConfig
  let units: number[]
  try {
    bus = parseBus(values.bus, values)
    units = parseUnits(values.units ?? '1-247')
  } catch (err) {
    io.err(`outpost scan: ${(err as Error).message}\n${USAGE}\n`)
    return EXIT_USAGE
  }
  const started = Date.now()
  io.err(`scanning ${values.bus} units ${units[0]}-${units[units.length - 1]} (${units.length} ids, timeout ${bus.timeoutMs} ms)\n`)
  let hits
  try {
    hits = await scanBus(bus, units, {
      now: () => Date.now(),
      modelsDir: values.models,
      onUnit: (u, h) => {
        if (h) io.err(`  unit ${u}: ${h.kind} ${h.model ?? ''}\n`)
      },
    })
  } catch (err) {
    const e = err as { code?: string; message: string }
    const hint = e.code === 'BUS_ECHO_UNEXPECTED' ? ' (scan: add --echo)' : e.code === 'BUS_ECHO_MISSING' ? ' (scan: drop --echo)' : ''
    io.err(`outpost scan: ${e.code ? e.code + ': ' : ''}${e.message}${hint}\n`)
    return EXIT_BROKEN
  }
  if (values.json) {
    io.out(JSON.stringify({ hits, config: configSnippet(bus, hits) }, null, 2) + '\n')
    return EXIT_OK
  }
  io.out(hits.length ? formatTable(hits) + '\n' : 'nothing answered\n')
  io.out(`\n# config snippet (set each outlet's plan; check the meter/relay pairing):\n${formatSnippet(configSnippet(bus, hits))}\n`)
  io.err(`scan took ${((Date.now() - started) / 1000).toFixed(1)} s\n`)
  return EXIT_OK
}

function parseBus(spec: string, v: { baud?: string; parity?: string; 'stop-bits'?: string; echo?: boolean; timeout?: string }): BusConfig {
  const timeoutMs = v.timeout !== undefined ? Number(v.timeout) : undefined
  let raw: Record<string, unknown>
  const tcp = spec.match(/^tcp:\/\/([^:/]+)(?::(\d+))?\/?$/)
  const rtu = spec.match(/^rtu:([^@]+)(?:@(\d+)(?:,(none|even|odd))?)?$/)
  if (tcp) {
    raw = { id: 'scan', type: 'modbus-tcp', host: tcp[1], port: tcp[2] !== undefined ? Number(tcp[2]) : 502, timeoutMs: timeoutMs ?? 300, retries: 0 }
  } else if (rtu) {
    raw = {
      id: 'scan',
      type: 'modbus-rtu',
      path: rtu[1],
      baudRate: Number(v.baud ?? rtu[2] ?? 9600),
      parity: v.parity ?? rtu[3] ?? 'none',
      stopBits: Number(v['stop-bits'] ?? 1),
      timeoutMs: timeoutMs ?? 200,
      retries: 0,
      echo: v.echo === true,
    }
  } else {
    throw new Error(`--bus "${spec}": expected tcp://HOST:PORT or rtu:/dev/PATH[@BAUD[,PARITY]]`)
  }
  // Checked as a site config would check it, so scan accepts exactly what a config would.
  const r = checkBus(raw)
  if (!r.ok) throw new Error(r.problems.map((p) => `${p.pointer.replace(/^\/bus\/?/, '') || 'bus'}: ${p.message}`).join('; '))
  return r.bus
}
