/**
 * `outpost verify --config FILE` or `outpost verify FILE.jsonl`: checks that
 * sequence numbers are gapless and that every record's hash and `prev` link
 * hold, in the journal or in a JSON-lines file of records (what `outpost
 * records` or a pull wrote). Prints the first break. Exit 0 intact, 1 broken.
 * Never writes to the journal.
 */
import { createReadStream } from 'node:fs'
import { createInterface } from 'node:readline'
import { ChainVerifier, verifyDb, type ChainBreak } from '../journal/index.js'
import { configFile, loadConfig, openForReading, parseArgs, UsageError, EXIT_OK, EXIT_USAGE, EXIT_NOINPUT, EXIT_BROKEN } from '../journal/cli-support.js'

const USAGE = 'Usage: outpost verify --config FILE | outpost verify FILE.jsonl\n'

function printBreak(where: string, b: ChainBreak, what: string): void {
  process.stdout.write(`${where}: BROKEN at seq ${b.seq} (${what} ${b.position}): ${b.problem}\n`)
}

async function verifyFile(file: string): Promise<number> {
  const v = new ChainVerifier()
  let lineNo = 0
  let brk: ChainBreak | undefined
  try {
    const lines = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity })
    for await (const line of lines) {
      lineNo++
      if (line.trim() === '') continue
      let value: unknown
      try {
        value = JSON.parse(line)
      } catch (err) {
        brk = { seq: (v.lastSeq ?? 0) + 1, position: lineNo, reason: 'not-a-record', problem: `line ${lineNo} is not JSON: ${(err as Error).message}` }
        break
      }
      const b = v.push(value)
      if (b) {
        brk = { ...b, position: lineNo }
        break
      }
    }
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    process.stderr.write(`outpost verify: cannot read ${file}: ${e.code === 'ENOENT' ? 'no such file' : e.message}\n`)
    return EXIT_NOINPUT
  }
  if (brk) {
    printBreak(file, brk, 'line')
    return EXIT_BROKEN
  }
  if (v.count === 0) {
    process.stdout.write(`${file}: no records\n`)
    return EXIT_OK
  }
  process.stdout.write(`${file}: intact: ${v.count} records, seq ${v.firstSeq}..${v.lastSeq}\n`)
  return EXIT_OK
}

export async function main(argv: string[]): Promise<number> {
  let options: Map<string, string>
  let positional: string[]
  try {
    ;({ options, positional } = parseArgs(argv, ['config']))
    if (positional.length > 1 || (positional.length === 1 && options.has('config'))) throw new UsageError('give either --config FILE or one JSON-lines file')
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    process.stderr.write(`outpost verify: ${err.message}\n${USAGE}`)
    return EXIT_USAGE
  }
  if (positional.length === 1) return verifyFile(positional[0]!)

  const cfg = loadConfig(configFile(options))
  if (!cfg.ok) return cfg.exit
  const journal = await openForReading('verify', cfg.config.storage.dir)
  if (typeof journal === 'number') return journal
  try {
    const report = await verifyDb(journal.db)
    if (report.break) {
      printBreak(journal.location, report.break, 'record')
      return EXIT_BROKEN
    }
    if (journal.mode === 'repaired-copy') {
      process.stdout.write(`${journal.location}: DAMAGED database (it cannot be opened as it is); a repaired copy holds an intact chain of ${report.count} records (seq ${report.first ?? '-'}..${report.last ?? '-'}). Run \`outpost repair\` with the daemon stopped.\n`)
      return EXIT_BROKEN
    }
    const range = report.count === 0 ? 'no records' : `${report.count} records, seq ${report.first}..${report.last}${report.first !== 1 ? ` (earlier ones compacted after acknowledgement)` : ''}`
    process.stdout.write(`${journal.location}: intact: ${range}; acknowledged up to ${report.acked}\n`)
    return EXIT_OK
  } finally {
    await journal.close()
  }
}
