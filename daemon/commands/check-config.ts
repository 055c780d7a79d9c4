/** `outpost check-config FILE`: every problem at once, one line each; 0 valid, 78 invalid. */
import { loadConfigFile, formatProblem } from '../config.js'
import { EXIT_CONFIG, EXIT_OK, EXIT_USAGE, processIo, type Io } from '../cli.js'

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  const files = argv.filter((a) => !a.startsWith('-'))
  if (files.length !== 1 || argv.length !== 1) {
    io.err('Usage: outpost check-config FILE\n')
    return EXIT_USAGE
  }
  const file = files[0]!
  const result = loadConfigFile(file)
  if (result.ok) {
    const c = result.config
    io.out(`${file}: ok (site ${c.site.id}: ${c.buses.length} bus${c.buses.length === 1 ? '' : 'es'}, ${c.outlets.length} outlet${c.outlets.length === 1 ? '' : 's'}, ${c.plans.length} plan${c.plans.length === 1 ? '' : 's'})\n`)
    return EXIT_OK
  }
  for (const p of result.problems) io.err(formatProblem(file, p) + '\n')
  return EXIT_CONFIG
}
