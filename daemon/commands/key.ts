/**
 * `outpost key --config FILE [--rotate]`: prints the gateway's public key (SPKI, PEM), what
 * a back end or transparency software verifies the OCMF signatures with. `--rotate` retires
 * the key (kept beside it as gateway-key.pem.retired-<UTC time>) and makes a new one, which
 * the daemon signs with from its next start (its gateway.started announces it).
 *
 * Owns: the command line of the key command. Must never print the private key.
 */
import { readKey, rotateKey, keyPath } from '../gateway-key.js'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { loadConfig } from './journal-support.js'
import { configFile, parseCommandLine, processIo, UsageError, EXIT_OK, EXIT_USAGE, EXIT_NOINPUT, EXIT_BROKEN, type Io } from '../cli-common.js'
import { describeError } from '../errors.js'

const USAGE = 'Usage: outpost key --config FILE [--rotate]\n'

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  let file: string
  let rotate: boolean
  try {
    const { values, positionals } = parseCommandLine(argv, { config: { type: 'string' }, rotate: { type: 'boolean' } }, { positionals: true })
    if (positionals.length > 0) throw new UsageError(`unexpected argument ${positionals[0]}`)
    file = configFile(values.config)
    rotate = values.rotate === true
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    io.err(`outpost key: ${err.message}\n${USAGE}`)
    return EXIT_USAGE
  }
  const cfg = loadConfig(file, io)
  if (!cfg.ok) return cfg.exit
  const dir = cfg.config.storage.dir
  try {
    if (rotate) {
      const { key, retired } = rotateKey(dir, new Date())
      io.err(
        `outpost key: a new gateway key is in ${key.file}${retired ? `; the old one is kept as ${retired}` : ''}. ` +
          'The daemon signs with it from its next start, whose gateway.started announces it: register this public key with the back end.\n',
      )
      io.out(key.publicKeyPem)
      return EXIT_OK
    }
    const key = readKey(dir)
    if (!key) {
      const journal = existsSync(join(dir, 'journal'))
      io.err(
        journal
          ? `outpost key: KEY_MISSING: ${keyPath(dir)} is missing beside the journal in ${dir}; restore it from a backup, ` +
              `or rotate with \`outpost key --config ${file} --rotate\` ` +
              '(a journal written by a version that did not sign gets its first key at the next `outpost run`)\n'
          : `outpost key: no gateway key in ${dir} yet: it is made with the journal when \`outpost run\` first starts\n`,
      )
      return journal ? EXIT_BROKEN : EXIT_NOINPUT
    }
    io.out(key.publicKeyPem)
    return EXIT_OK
  } catch (err) {
    io.err(`outpost key: ${describeError(err)}\n`)
    return EXIT_BROKEN
  }
}
