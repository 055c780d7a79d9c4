/**
 * `outpost verify --config FILE` or `outpost verify FILE.jsonl`: checks that
 * sequence numbers are gapless and that every record's hash and `prev` link
 * hold, in the journal or in a JSON-lines file of records (what `outpost
 * records` or a pull wrote), and every session.ended's OCMF signature against the public
 * key the log announced (gateway.started.publicKey) with its signed readings, user, outlet
 * and total against the record. A break a salvage announced (gateway.started.journalSalvage:
 * seqs named lost, a new chain) is accepted and printed; any other is the first break.
 * Exit 0 intact, 1 broken.
 * Never writes to the journal.
 */
import { createReadStream } from 'node:fs'
import { createInterface } from 'node:readline'
import { describeAnnounced, SalvageAwareVerifier, storedRecords, verifyDb, type AnnouncedBreak, type ChainBreak } from '../journal/index.js'
import { OcmfVerifier } from '../ocmf.js'
import { readKey } from '../gateway-key.js'
import { loadConfig, openForReading } from './journal-support.js'
import { configFile, parseCommandLine, processIo, UsageError, EXIT_OK, EXIT_USAGE, EXIT_NOINPUT, EXIT_BROKEN, type Io } from '../cli-common.js'

const USAGE = 'Usage: outpost verify --config FILE | outpost verify FILE.jsonl\n'

/** A chain break, or a session.ended whose OCMF fails. */
type Break = Omit<ChainBreak, 'reason'> & { reason: ChainBreak['reason'] | 'signature' }

function printBreak(io: Io, where: string, b: Break, what: string): void {
  io.out(`${where}: BROKEN at seq ${b.seq} (${what} ${b.position}): ${b.problem}\n`)
}

function ocmfBreak(seq: unknown, position: number, problem: string): Break {
  return { seq: typeof seq === 'number' ? seq : position, position, reason: 'signature', problem }
}

/** One line per break a salvage announced: what was lost, where a new chain starts. */
function printAnnounced(io: Io, where: string, announced: AnnouncedBreak[]): void {
  for (const a of announced) io.out(`${where}: ${describeAnnounced(a)}\n`)
}

const salvaged = (announced: AnnouncedBreak[]): string =>
  announced.length === 0 ? '' : ` across ${announced.length} break${announced.length === 1 ? '' : 's'} a salvage announced`

async function verifyFile(file: string, io: Io): Promise<number> {
  const v = new SalvageAwareVerifier()
  const o = new OcmfVerifier()
  let lineNo = 0
  let brk: Break | undefined
  try {
    const lines = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity })
    for await (const line of lines) {
      lineNo++
      if (line.trim() === '') continue
      let value: unknown
      try {
        value = JSON.parse(line)
      } catch (err) {
        brk = {
          seq: (v.lastSeq ?? 0) + 1,
          position: lineNo,
          reason: 'not-a-record',
          problem: `line ${lineNo} is not JSON: ${(err as Error).message}`,
        }
        break
      }
      const before = v.lastSeq
      const b = v.push(value)
      if (b) {
        brk = { ...b, position: lineNo }
        break
      }
      const r = value as { seq?: number; type?: string } & Record<string, unknown>
      // Past a hole the pagination may jump (a session.ended may be among the lost seqs); the chain judged the hole.
      if (before !== undefined && r.seq !== before + 1) o.allowJump()
      const problem = o.push(r)
      if (problem) {
        brk = ocmfBreak(r.seq, lineNo, problem)
        break
      }
    }
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    io.err(`outpost verify: cannot read ${file}: ${e.code === 'ENOENT' ? 'no such file' : e.message}\n`)
    return EXIT_NOINPUT
  }
  brk ??= v.finish()
  printAnnounced(io, file, v.announced)
  if (brk) {
    printBreak(io, file, brk, 'line')
    return EXIT_BROKEN
  }
  if (v.count === 0) {
    io.out(`${file}: no records\n`)
    return EXIT_OK
  }
  io.out(`${file}: intact: ${v.count} records, seq ${v.firstSeq}..${v.lastSeq}${salvaged(v.announced)}; ${o.summary()}\n`)
  return EXIT_OK
}

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  let config: string | undefined
  let positional: string[]
  try {
    const parsed = parseCommandLine(argv, { config: { type: 'string' } }, { positionals: true })
    config = parsed.values.config
    positional = parsed.positionals
    if (positional.length > 1 || (positional.length === 1 && config !== undefined))
      throw new UsageError('give either --config FILE or one JSON-lines file')
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    io.err(`outpost verify: ${err.message}\n${USAGE}`)
    return EXIT_USAGE
  }
  if (positional.length === 1) return verifyFile(positional[0]!, io)

  const cfg = loadConfig(configFile(config), io)
  if (!cfg.ok) return cfg.exit
  const journal = await openForReading('verify', cfg.config.storage.dir, io)
  if (typeof journal === 'number') return journal
  try {
    const report = await verifyDb(journal.db)
    printAnnounced(io, journal.location, report.announced)
    if (report.break) {
      printBreak(io, journal.location, report.break, 'record')
      return EXIT_BROKEN
    }
    // The chain holds: now every signature, with the key the log announced (the key file for what precedes it).
    let fallback: string | undefined
    try {
      fallback = readKey(cfg.config.storage.dir)?.publicKeyPem
    } catch (err) {
      io.err(`outpost verify: ${(err as Error).message}; records before the first key announcement are not checked\n`)
    }
    const o = new OcmfVerifier(fallback)
    let position = 0
    let before: number | undefined
    for await (const { record } of storedRecords(journal.db)) {
      position++
      if (before !== undefined && record && record.seq !== before + 1) o.allowJump()
      before = record?.seq
      const problem = record ? o.push(record as unknown as { seq?: number; type?: string } & Record<string, unknown>) : undefined
      if (problem) {
        printBreak(io, journal.location, ocmfBreak(record?.seq, position, problem), 'record')
        return EXIT_BROKEN
      }
    }
    if (journal.mode === 'repaired-copy') {
      io.out(
        `${journal.location}: DAMAGED database (it cannot be opened as it is); ` +
          `a repaired copy holds an intact chain of ${report.count} records (seq ${report.first ?? '-'}..${report.last ?? '-'}). ` +
          'Run `outpost repair` with the daemon stopped.\n',
      )
      return EXIT_BROKEN
    }
    const range =
      report.count === 0
        ? 'no records'
        : `${report.count} records, seq ${report.first}..${report.last}${report.first !== 1 ? ` (earlier ones compacted after acknowledgement)` : ''}${salvaged(report.announced)}`
    io.out(`${journal.location}: intact: ${range}; acknowledged up to ${report.acked}; ${o.summary()}\n`)
    return EXIT_OK
  } finally {
    await journal.close()
  }
}
