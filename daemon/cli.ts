#!/usr/bin/env -S node --max-semi-space-size=1 --optimize-for-size --lite-mode
/**
 * The `outpost` executable: parses the command word and hands the rest of the
 * arguments to the command's module. Each command returns its exit status;
 * this file owns process.exit and nothing else.
 *
 * The interpreter line sizes V8 for a small gateway: a 1 MB young generation per
 * semi-space (the daemon's garbage is short-lived and small; node's default of up to
 * 16 MB costs about 20 MB of RSS), V8 favouring size over speed (the old generation
 * grows less before each collection), and lite mode (no optimising compiler: less code
 * in memory). Together about 50 MB less RSS at 64 outlets (72 MB median against 122 MB
 * with node's defaults) for about 0.7 % more of one core; peak throughput drops (2.5x
 * fewer dispatch steps/s, still 500x what 64 outlets need) while the uplink drain, being
 * I/O-bound, keeps 94 % (docs/bench.md, footprint). The systemd unit passes the same flags
 * (test/systemd-unit.test.ts checks they agree).
 */
import { EXIT_BROKEN, EXIT_OK, EXIT_USAGE, processIo, version, type Io } from './cli-common.js'

type Command = { summary: string; usage: string; load: () => Promise<{ main: (argv: string[], io?: Io) => Promise<number> }> }

const commands: Record<string, Command> = {
  run: { summary: 'run the daemon', usage: 'outpost run [--config FILE]', load: () => import('./commands/run.js') },
  'check-config': {
    summary: 'validate a site config without touching hardware',
    usage: 'outpost check-config FILE',
    load: () => import('./commands/check-config.js'),
  },
  sim: { summary: 'serve a simulated site over Modbus TCP', usage: 'outpost sim [--outlets N] [--port P]', load: () => import('./commands/sim.js') },
  scan: {
    summary: 'probe a Modbus bus for meters and relays',
    usage: 'outpost scan --bus tcp://HOST:PORT | --bus rtu:/dev/ttyUSB0[@BAUD[,PARITY]] [--units 1-247]',
    load: () => import('./commands/scan.js'),
  },
  records: {
    summary: 'print journal records as JSON lines',
    usage: 'outpost records --config FILE [--from SEQ]',
    load: () => import('./commands/records.js'),
  },
  verify: {
    summary: 'check sequence and hash chain of the journal or a JSON-lines file',
    usage: 'outpost verify --config FILE | outpost verify FILE.jsonl',
    load: () => import('./commands/verify.js'),
  },
  repair: {
    summary: "run LevelDB's repair on the journal, then verify the chain",
    usage: 'outpost repair --config FILE',
    load: () => import('./commands/repair.js'),
  },
  export: {
    summary: 'billing records as CSV or OCPI 2.2.1 CDRs, plans as OCPI 2.2.1 tariffs',
    usage: 'outpost export (--config FILE | --records FILE.jsonl) --format csv|ocpi-cdr|ocpi-tariff [--from ISO] [--to ISO] [--out FILE]',
    load: () => import('./commands/export.js'),
  },
  key: {
    summary: "print the gateway's public key (PEM) that verifies its OCMF signatures; --rotate makes a new one",
    usage: 'outpost key --config FILE [--rotate]',
    load: () => import('./commands/key.js'),
  },
  reconcile: {
    summary: "cloud-side consumer: collect, verify and ack a site's records",
    usage: 'outpost reconcile --url URL --site ID [--prefix P] [--out FILE]',
    load: () => import('./commands/reconcile.js'),
  },
  ingest: {
    summary: "cloud-side service: store every site's records in PostgreSQL, split across workers",
    usage: 'outpost ingest --url URL --db POSTGRES_URL [--group NAME] [--sites PATTERN]',
    load: () => import('./commands/ingest.js'),
  },
}

export function helpText(): string {
  const width = Math.max(...Object.keys(commands).map((c) => c.length))
  return [
    `outpost ${version} — pay-per-use EV charging on metered outlets`,
    '',
    'Usage: outpost <command> [options]',
    '',
    'Commands:',
    ...Object.entries(commands).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
    'Options:',
    '  --help, -h     this text (or: outpost <command> --help)',
    '  --version, -v  print the version',
    '',
    'Exit status: 0 ok, 64 usage error, 78 invalid config, other non-zero on a fatal fault.',
  ].join('\n')
}

export async function cli(argv: string[], io: Io = processIo): Promise<number> {
  const [word, ...rest] = argv
  if (word === undefined || word === '--help' || word === '-h' || word === 'help') {
    io.out(helpText() + '\n')
    return word === undefined ? EXIT_USAGE : EXIT_OK
  }
  if (word === '--version' || word === '-v') {
    io.out(version + '\n')
    return EXIT_OK
  }
  const command = commands[word]
  if (!command) {
    io.err(`outpost: unknown command "${word}"\n\n${helpText()}\n`)
    return EXIT_USAGE
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    io.out(`Usage: ${command.usage}\n  ${command.summary}\n`)
    return EXIT_OK
  }
  const mod = await command.load()
  return mod.main(rest, io)
}

// Run when executed, not when imported by a test.
const invoked = process.argv[1] ?? ''
if (invoked.endsWith('/cli.js') || invoked.endsWith('/outpost')) {
  cli(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code
    },
    (err: unknown) => {
      const e = err as { code?: string; message?: string }
      process.stderr.write(`outpost: ${e.code ? e.code + ': ' : ''}${e.message ?? String(err)}\n`)
      process.exitCode = EXIT_BROKEN
    },
  )
}
