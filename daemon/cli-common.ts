/**
 * What the `outpost` executable (cli.ts) and its commands (commands/*) share: the
 * exit statuses, the version, where a command writes (Io), the default config path
 * and one argument parser. The executable imports the commands and the commands
 * import this file, never cli.ts, so the two never import each other.
 *
 * Owns: the exit statuses (sysexits.h values) and the argument rules every command follows.
 * Must never: import cli.ts or a command.
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { packagePath } from '../core/paths.js'

export const EXIT_OK = 0
/** A fatal fault, or what was checked is broken (a chain break, an unreadable record). */
export const EXIT_BROKEN = 1
export const EXIT_USAGE = 64
export const EXIT_NOINPUT = 66
/** The command could not start (a broken file, a broker that refuses it): sysexits' EX_SOFTWARE. */
export const EXIT_CANNOT_START = 70
export const EXIT_TEMPFAIL = 75
export const EXIT_CONFIG = 78

export const version: string = (JSON.parse(readFileSync(packagePath('package.json'), 'utf8')) as { version: string }).version

/** Where `outpost run` and the journal commands find the site config without --config or $OUTPOST_CONFIG. */
export const DEFAULT_CONFIG = '/etc/outpost/site.json'

/** The config named by --config, else $OUTPOST_CONFIG, else DEFAULT_CONFIG. */
export function configFile(option: string | undefined): string {
  return option ?? process.env.OUTPOST_CONFIG ?? DEFAULT_CONFIG
}

/**
 * Where a command writes; the process's streams unless a test passes its own.
 * `stdout`, when present, is the stream behind out(): a command writing a lot
 * (records) waits for it to drain and stops when its reader goes away.
 */
export interface Io {
  out(text: string): void
  err(text: string): void
  stdout?: NodeJS.WritableStream
}
export const processIo: Io = { out: (t) => void process.stdout.write(t), err: (t) => void process.stderr.write(t), stdout: process.stdout }

/** A mistake in the command line: the command prints it with its usage and exits EXIT_USAGE. */
export class UsageError extends Error {}

type OptionSpec = { type: 'string' | 'boolean'; short?: string }

/**
 * `node:util` parseArgs in strict mode (an unknown flag is an error naming it) with
 * the rules the commands promise on top: a string option takes a non-empty value and
 * is given at most once. Throws UsageError.
 */
export function parseCommandLine<const O extends Record<string, OptionSpec>>(
  argv: string[],
  options: O,
  { positionals = false }: { positionals?: boolean } = {},
): { values: { [K in keyof O]?: O[K]['type'] extends 'string' ? string : boolean }; positionals: string[] } {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      options: Object.fromEntries(Object.entries(options).map(([name, o]) => [name, { ...o, multiple: true }])),
      strict: true,
      allowPositionals: positionals,
    })
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  const values: Record<string, string | boolean> = {}
  for (const [name, given] of Object.entries(parsed.values) as [string, (string | boolean)[]][]) {
    if (given.length > 1) throw new UsageError(`--${name} given twice`)
    const value = given[0]!
    if (value === '') throw new UsageError(`--${name} needs a value`)
    values[name] = value
  }
  return { values: values as { [K in keyof O]?: O[K]['type'] extends 'string' ? string : boolean }, positionals: parsed.positionals }
}
