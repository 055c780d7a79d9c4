/**
 * The gateway's executable: parses the command word and hands the rest of the
 * arguments to the command's module. Each command returns its exit status; `main`
 * owns process.exit and nothing else. systemd runs this file (`run`); the `outpost`
 * bin (bin/outpost.ts) runs it too, with the cloud side's commands added to the table,
 * so that this file never names the cloud side (test/layers.test.ts).
 */
import { realpathSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import { EXIT_BROKEN, EXIT_OK, EXIT_USAGE, processIo, version, type Io } from './cli-common.js'

/** One command word: its help line, its usage, and its module, loaded only when the word is given. */
export type Command = { summary: string; usage: string; load: () => Promise<{ main: (argv: string[], io?: Io) => Promise<number> }> }

const commands: Record<string, Command> = {
  run: { summary: 'run the daemon', usage: 'outpost run [--config FILE] [--listen HOST:PORT]', load: () => import('./commands/run.js') },
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
}

/** The help text listing the gateway's commands and any `more` (the cloud side's, from the bin). */
export function helpText(more: Record<string, Command> = {}): string {
  const all = { ...commands, ...more }
  const width = Math.max(...Object.keys(all).map((c) => c.length))
  return [
    `outpost ${version} — pay-per-use EV charging on metered outlets`,
    '',
    'Usage: outpost <command> [options]',
    '',
    'Commands:',
    ...Object.entries(all).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
    'Options:',
    '  --help, -h     this text (or: outpost <command> --help)',
    '  --version, -v  print the version',
    '',
    'Exit status: 0 ok, 64 usage error, 78 invalid config, other non-zero on a fatal fault.',
  ].join('\n')
}

/** Runs one command line; `more` adds command words from outside the gateway (bin/outpost.ts adds the cloud side's). */
export async function cli(argv: string[], io: Io = processIo, more: Record<string, Command> = {}): Promise<number> {
  const [word, ...rest] = argv
  if (word === undefined || word === '--help' || word === '-h' || word === 'help') {
    io.out(helpText(more) + '\n')
    return word === undefined ? EXIT_USAGE : EXIT_OK
  }
  if (word === '--version' || word === '-v') {
    io.out(version + '\n')
    return EXIT_OK
  }
  const command = Object.hasOwn(more, word) ? more[word] : Object.hasOwn(commands, word) ? commands[word] : undefined
  if (!command) {
    io.err(`outpost: unknown command "${word}"\n\n${helpText(more)}\n`)
    return EXIT_USAGE
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    io.out(`Usage: ${command.usage}\n  ${command.summary}\n`)
    return EXIT_OK
  }
  const mod = await command.load()
  return mod.main(rest, io)
}

/** Runs the process's command line and sets its exit status (a thrown error is printed, exit 1). */
export function main(more: Record<string, Command> = {}): void {
  cli(process.argv.slice(2), processIo, more).then(
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

/** Whether this module is the process's main script (not imported by the bin or a test). */
function isMain(): boolean {
  const invoked = process.argv[1]
  if (!invoked) return false
  try {
    return pathToFileURL(realpathSync(invoked)).href === import.meta.url
  } catch {
    return false
  }
}

if (isMain()) main()
