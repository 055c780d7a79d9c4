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
import { loadConfig } from './journal-support.js'
import {
  configFile,
  parseCommandLine,
  processIo,
  UsageError,
  EXIT_OK,
  EXIT_USAGE,
  EXIT_NOINPUT,
  EXIT_BROKEN,
  EXIT_TEMPFAIL,
  type Io,
} from '../cli-common.js'

const USAGE = 'Usage: outpost repair --config FILE\n'

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  let file: string
  try {
    const { values, positionals } = parseCommandLine(argv, { config: { type: 'string' } }, { positionals: true })
    if (positionals.length > 0) throw new UsageError(`unexpected argument ${positionals[0]}`)
    file = configFile(values.config)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    io.err(`outpost repair: ${err.message}\n${USAGE}`)
    return EXIT_USAGE
  }
  const cfg = loadConfig(file, io)
  if (!cfg.ok) return cfg.exit
  try {
    const report = await repairJournal(cfg.config.storage.dir)
    io.out(`${report.location}: LevelDB repair done; the journal as it was is kept in ${report.keptAs} (delete it once the daemon runs again)\n`)
    for (const t of report.tablesLeftOut)
      io.out(
        `${report.location}: table ${t.file} left out (${t.problem}): LevelDB would have read it unchecked; the records only it held are lost to the repaired journal\n`,
      )
    if (report.break) {
      io.out(`${report.location}: BROKEN at seq ${report.break.seq} (record ${report.break.position}): ${report.break.problem}\n`)
      io.out('The records up to the break are intact; tell the cloud team the seq above (the gap cannot be re-created on the gateway).\n')
      return EXIT_BROKEN
    }
    io.out(
      `${report.location}: intact: ${report.count} records${report.count ? `, seq ${report.first}..${report.last}` : ''}; ` +
        `acknowledged up to ${report.acked}. The daemon can start.\n`,
    )
    return EXIT_OK
  } catch (err) {
    const e = err as { code?: string; message: string }
    io.err(`outpost repair: ${e.code ?? 'ERROR'}: ${e.message}\n`)
    return e.code === 'JOURNAL_MISSING' ? EXIT_NOINPUT : e.code === 'JOURNAL_LOCKED' ? EXIT_TEMPFAIL : EXIT_BROKEN
  }
}
