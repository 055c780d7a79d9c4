/**
 * `outpost records --config FILE [--from SEQ]`: the journal's records as JSON
 * lines, oldest first, exactly as stored (and as hashed). Works while the
 * daemon is stopped; while it runs, reads a snapshot copy (LevelDB's lock
 * allows one process); on a corrupt database, prints what a repaired copy holds.
 * Never writes to the journal.
 */
import { storedRecords } from '../journal/index.js'
import { loadConfig, openForReading, Output } from './journal-support.js'
import { configFile, parseCommandLine, processIo, UsageError, EXIT_OK, EXIT_USAGE, EXIT_BROKEN, type Io } from '../cli-common.js'
import * as K from '../journal/keys.js'

const USAGE = 'Usage: outpost records --config FILE [--from SEQ]\n'

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  let from = 1
  let file: string
  try {
    const { values, positionals } = parseCommandLine(argv, { config: { type: 'string' }, from: { type: 'string' } }, { positionals: true })
    if (positionals.length > 0) throw new UsageError(`unexpected argument ${positionals[0]}`)
    const f = values.from
    if (f !== undefined) {
      if (!/^\d+$/.test(f) || Number(f) < 1 || !Number.isSafeInteger(Number(f)))
        throw new UsageError(`--from must be a sequence number (an integer >= 1), got ${f}`)
      from = Number(f)
    }
    file = configFile(values.config)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    io.err(`outpost records: ${err.message}\n${USAGE}`)
    return EXIT_USAGE
  }
  const cfg = loadConfig(file, io)
  if (!cfg.ok) return cfg.exit
  const journal = await openForReading('records', cfg.config.storage.dir, io)
  if (typeof journal === 'number') return journal
  const out = new Output(io)
  let status = EXIT_OK
  try {
    let first = true
    for await (const { key, text, error } of storedRecords(journal.db, from)) {
      if (first && K.seqOfRecordKey(key) > from)
        io.err(`outpost records: records before seq ${K.seqOfRecordKey(key)} were compacted after the cloud acknowledged them; starting there\n`)
      first = false
      if (error) {
        io.err(`outpost records: ${key}: ${error}\n`)
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
