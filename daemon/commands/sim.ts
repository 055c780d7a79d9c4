/**
 * `outpost sim`: a simulated site on Modbus TCP (and optionally RTU) for the
 * demo, tests and installers without hardware. The physics and the Modbus
 * server live in drivers/sim.ts; this file parses options, wires the JSON-line
 * control interface to stdin/stdout, and stops cleanly on SIGINT/SIGTERM.
 */
import { parseArgs } from 'node:util'
import { createInterface } from 'node:readline'
import { startSim, RELAY_UNIT, type SimCommand } from '../../drivers/sim.js'
import { EXIT_BROKEN, EXIT_OK, EXIT_USAGE, processIo, type Io } from '../cli-common.js'

const USAGE = `Usage: outpost sim [--outlets N] [--port P] [--host H] [--seed S] [--speed X] [--no-script] [--rtu PATH [--rtu-baud B]]
  --outlets N   meters at units 1..N (SDM120 layout), relay board at unit ${RELAY_UNIT} with coils 0..N-1 (default 2)
  --port P      Modbus TCP port (default 5020; 0 picks a free one)
  --seed S      vehicle script seed (default 1): the same seed gives the same vehicles
  --speed X     simulated seconds per real second (default 1; 0 freezes time, use {"cmd":"advance"})
  --no-script   no scripted vehicles: plug and unplug them yourself
  --rtu PATH    also serve Modbus RTU on this serial device
  --turnaround-ms T  hold every reply back T ms (benchmarks: a slow device)
Control: one JSON object per line on stdin, one JSON reply per line on stdout, e.g.
  {"cmd":"plug","outlet":1,"needWh":8000,"maxA":16}   {"cmd":"unplug","outlet":1}
  {"cmd":"fault","unit":1,"fault":"silent"}            {"cmd":"state"}   {"cmd":"advance","ms":60000}`

function num(v: string | undefined, name: string, dflt: number, ok: (n: number) => boolean): number {
  if (v === undefined) return dflt
  const n = Number(v)
  if (!Number.isFinite(n) || !ok(n)) throw new Error(`--${name}: "${v}" is not valid`)
  return n
}

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  let o
  try {
    const { values } = parseArgs({
      args: argv,
      options: {
        outlets: { type: 'string' },
        port: { type: 'string' },
        host: { type: 'string' },
        seed: { type: 'string' },
        speed: { type: 'string' },
        'no-script': { type: 'boolean' },
        rtu: { type: 'string' },
        'rtu-baud': { type: 'string' },
        'turnaround-ms': { type: 'string' },
      },
      strict: true,
    })
    o = {
      outlets: num(values.outlets, 'outlets', 2, (n) => Number.isInteger(n) && n >= 1 && n <= 99),
      port: num(values.port, 'port', 5020, (n) => Number.isInteger(n) && n >= 0 && n <= 65535),
      host: values.host ?? '127.0.0.1',
      seed: num(values.seed, 'seed', 1, Number.isInteger),
      speed: num(values.speed, 'speed', 1, (n) => n >= 0 && n <= 10_000),
      script: values['no-script'] !== true,
      rtuPath: values.rtu,
      rtuBaud: num(values['rtu-baud'], 'rtu-baud', 9600, (n) => Number.isInteger(n) && n > 0),
      turnaroundMs: num(values['turnaround-ms'], 'turnaround-ms', 0, (n) => n >= 0 && n <= 10_000),
    }
  } catch (err) {
    io.err(`outpost sim: ${(err as Error).message}\n${USAGE}\n`)
    return EXIT_USAGE
  }
  let sim
  try {
    sim = await startSim(o)
  } catch (err) {
    io.err(`outpost sim: cannot start: ${(err as Error).message}\n`)
    return EXIT_BROKEN
  }
  io.err(
    `outpost sim: ${o.outlets} outlet(s) on tcp://${o.host}:${sim.port}${o.rtuPath ? ` and RTU ${o.rtuPath}` : ''}; ` +
      `meters at units 1..${o.outlets} (SDM120), relay board at unit ${RELAY_UNIT} coils 0..${o.outlets - 1}; ` +
      `seed ${o.seed}, speed ${o.speed}x${o.script ? '' : ', no script'}\n`,
  )
  io.out(JSON.stringify({ ready: true, port: sim.port }) + '\n')
  const rl = createInterface({ input: process.stdin })
  rl.on('line', (line) => {
    if (line.trim() === '') return
    let reply
    try {
      reply = sim.control(JSON.parse(line) as SimCommand)
    } catch (err) {
      reply = { ok: false, error: `not JSON: ${(err as Error).message}` }
    }
    io.out(JSON.stringify(reply) + '\n')
  })
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve)
    process.once('SIGTERM', resolve)
  })
  rl.close()
  await sim.close()
  return EXIT_OK
}
