/**
 * `outpost repair --config FILE`: runs LevelDB's repair on the journal (the
 * daemon must be stopped), then verifies the chain. The installer's explicit
 * way out when the daemon refuses to start with JOURNAL_CORRUPT; the daemon
 * never repairs or resets anything by itself. Repair salvages every readable
 * entry and can resurrect entries that had been deleted (compacted records,
 * old readings, a removed state section): see docs/journal.md. The journal as it
 * was is kept beside it (journal.pre-repair-<time>). Exit 0 when the chain verifies afterwards, 1 when not.
 */
import { repairJournal } from '../journal/index.js'
import { configFile, loadConfig, parseArgs, UsageError, EXIT_OK, EXIT_USAGE, EXIT_NOINPUT, EXIT_BROKEN, EXIT_TEMPFAIL } from '../journal/cli-support.js'

const USAGE = 'Usage: outpost repair --config FILE\n'

export async function main(argv: string[]): Promise<number> {
  let file: string
  try {
    const { options, positional } = parseArgs(argv, ['config'])
    if (positional.length > 0) throw new UsageError(`unexpected argument ${positional[0]}`)
    file = configFile(options)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    process.stderr.write(`outpost repair: ${err.message}\n${USAGE}`)
    return EXIT_USAGE
  }
  const cfg = loadConfig(file)
  if (!cfg.ok) return cfg.exit
  try {
    const report = await repairJournal(cfg.config.storage.dir)
    process.stdout.write(`${report.location}: LevelDB repair done; the journal as it was is kept in ${report.keptAs} (delete it once the daemon runs again)\n`)
    if (report.break) {
      process.stdout.write(`${report.location}: BROKEN at seq ${report.break.seq} (record ${report.break.position}): ${report.break.problem}\n`)
      process.stdout.write('The records up to the break are intact; tell the cloud team the seq above (the gap cannot be re-created on the gateway).\n')
      return EXIT_BROKEN
    }
    process.stdout.write(`${report.location}: intact: ${report.count} records${report.count ? `, seq ${report.first}..${report.last}` : ''}; acknowledged up to ${report.acked}. The daemon can start.\n`)
    return EXIT_OK
  } catch (err) {
    const e = err as { code?: string; message: string }
    process.stderr.write(`outpost repair: ${e.code ?? 'ERROR'}: ${e.message}\n`)
    return e.code === 'JOURNAL_MISSING' ? EXIT_NOINPUT : e.code === 'JOURNAL_LOCKED' ? EXIT_TEMPFAIL : EXIT_BROKEN
  }
}
