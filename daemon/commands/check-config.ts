/** `outpost check-config FILE`: every problem at once, one line each; 0 valid, 78 invalid. */
import { loadConfigFile, formatProblem } from '../config.js'
import { EXIT_CONFIG, EXIT_OK, EXIT_USAGE, parseCommandLine, processIo, UsageError, type Io } from '../cli-common.js'

const USAGE = 'Usage: outpost check-config FILE\n'

/** "1 bus", "2 buses". */
const count = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`

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
      `${file}: ok (site ${c.site.id}: ${count(c.buses.length, 'bus', 'buses')}, ${count(c.outlets.length, 'outlet')}, ${count(c.plans.length, 'plan')})\n`,
    )
    return EXIT_OK
  }
  for (const p of result.problems) io.err(formatProblem(file, p) + '\n')
  return EXIT_CONFIG
}
