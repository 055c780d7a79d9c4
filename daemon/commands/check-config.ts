/** `outpost check-config FILE`: every problem at once, one line each; 0 valid, 78 invalid. */
import { loadConfigFile, formatProblem } from '../config.js'
import { EXIT_CONFIG, EXIT_OK, EXIT_USAGE, parseCommandLine, processIo, UsageError, type Io } from '../cli-common.js'

const USAGE = 'Usage: outpost check-config FILE\n'

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  let file: string
  try {
    const { positionals } = parseCommandLine(argv, {}, { positionals: true })
    if (positionals.length !== 1) throw new UsageError('give one config file')
    file = positionals[0]!
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    io.err(`outpost check-config: ${err.message}\n${USAGE}`)
    return EXIT_USAGE
  }
  const result = loadConfigFile(file)
  if (result.ok) {
    const c = result.config
    io.out(
      `${file}: ok (site ${c.site.id}: ${c.buses.length} bus${c.buses.length === 1 ? '' : 'es'}, ${c.outlets.length} outlet${c.outlets.length === 1 ? '' : 's'}, ${c.plans.length} plan${c.plans.length === 1 ? '' : 's'})\n`,
    )
    return EXIT_OK
  }
  for (const p of result.problems) io.err(formatProblem(file, p) + '\n')
  return EXIT_CONFIG
}
