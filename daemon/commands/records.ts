/**
 * `outpost records --config FILE [--from SEQ]`: the journal's records as JSON
 * lines, oldest first, exactly as stored (and as hashed). Works while the
 * daemon is stopped; while it runs, reads a snapshot copy (LevelDB's lock
 * allows one process); on a corrupt database, prints what a repaired copy holds.
 * Never writes to the journal.
 */
import { openOffline, storedRecords } from '../journal/index.js'
import { configFile, describeMode, loadConfig, Output, parseArgs, UsageError, EXIT_OK, EXIT_USAGE, EXIT_NOINPUT, EXIT_BROKEN } from '../journal/cli-support.js'
import * as K from '../journal/keys.js'

const USAGE = 'Usage: outpost records --config FILE [--from SEQ]\n'

export async function main(argv: string[]): Promise<number> {
  let from = 1
  let file: string
  try {
    const { options, positional } = parseArgs(argv, ['config', 'from'])
    if (positional.length > 0) throw new UsageError(`unexpected argument ${positional[0]}`)
    const f = options.get('from')
    if (f !== undefined) {
      if (!/^\d+$/.test(f) || Number(f) < 1 || !Number.isSafeInteger(Number(f))) throw new UsageError(`--from must be a sequence number (an integer >= 1), got ${f}`)
      from = Number(f)
    }
    file = configFile(options)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    process.stderr.write(`outpost records: ${err.message}\n${USAGE}`)
    return EXIT_USAGE
  }
  const cfg = loadConfig(file)
  if (!cfg.ok) return cfg.exit
  let journal
  try {
    journal = await openOffline(cfg.config.storage.dir, { allowSnapshot: true, allowRepairedCopy: true })
  } catch (err) {
    const e = err as { code?: string; message: string }
    process.stderr.write(`outpost records: ${e.code}: ${e.message}\n`)
    return e.code === 'JOURNAL_MISSING' ? EXIT_NOINPUT : EXIT_BROKEN
  }
  const note = describeMode(journal.mode, journal.location)
  if (note) process.stderr.write(note + '\n')
  const out = new Output()
  let status = EXIT_OK
  try {
    let first = true
    for await (const { key, text, error } of storedRecords(journal.db, from)) {
      if (first && K.seqOfRecordKey(key) > from) process.stderr.write(`outpost records: records before seq ${K.seqOfRecordKey(key)} were compacted after the cloud acknowledged them; starting there\n`)
      first = false
      if (error) {
        process.stderr.write(`outpost records: ${key}: ${error}\n`)
        status = EXIT_BROKEN
        continue
      }
      await out.line(text)
      if (out.closed) break
    }
    await out.flush()
  } finally {
    await journal.close()
  }
  return status
}
