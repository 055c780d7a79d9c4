/**
 * `outpost export (--config FILE | --records FILE.jsonl) --format csv|ocpi-cdr|ocpi-tariff
 * [--from ISO] [--to ISO] [--out FILE]`: the billing records as CSV (one row per
 * session.ended), as OCPI 2.2.1 CDRs (a JSON array), or the plans as OCPI 2.2.1 Tariffs.
 * `--from`/`--to` select sessions by their end (from inclusive, to exclusive). With
 * `--records` the records come from a JSON-lines file (what `outpost records` or `outpost
 * reconcile --out` wrote); the OCPI formats also need `--config` for the site's OCPI section.
 *
 * Owns: the command line of export. Must never write to the journal, or leave a partial
 * `--out` file (it is written whole, then renamed into place).
 */
import { createReadStream, renameSync, rmSync, writeFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import type { JournalRecord, SessionEndedBody, SiteConfig } from '../../core/types.js'
import { storedRecords } from '../journal/index.js'
import { readKey } from '../gateway-key.js'
import { csvHeader, csvRow, ocpiSite, planToTariff, sessionToCdr } from '../export.js'
import { loadConfig, openForReading } from './journal-support.js'
import { parseCommandLine, processIo, UsageError, EXIT_OK, EXIT_USAGE, EXIT_NOINPUT, EXIT_BROKEN, EXIT_CONFIG, type Io } from '../cli-common.js'

const USAGE = 'Usage: outpost export (--config FILE | --records FILE.jsonl) --format csv|ocpi-cdr|ocpi-tariff [--from ISO] [--to ISO] [--out FILE]\n'
const FORMATS = ['csv', 'ocpi-cdr', 'ocpi-tariff'] as const
type Format = (typeof FORMATS)[number]
const ISO = /^\d{4}-\d\d-\d\d(T\d\d:\d\d(:\d\d(\.\d{1,9})?)?(Z|[+-]\d\d:\d\d))?$/

function parseTime(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined
  const t = ISO.test(v) ? Date.parse(v) : Number.NaN
  if (Number.isNaN(t))
    throw new UsageError(`--${flag} must be an ISO 8601 date or time with its offset (2026-03-01 or 2026-03-01T00:00:00Z), got ${v}`)
  return t
}

/** The records, oldest first, from the journal or a JSON-lines file; `onRecord` sees each. */
async function readRecords(
  source: { config?: SiteConfig; file?: string },
  io: Io,
  onRecord: (r: JournalRecord) => void,
): Promise<number | undefined> {
  if (source.file !== undefined) {
    let lineNo = 0
    try {
      const lines = createInterface({ input: createReadStream(source.file, { encoding: 'utf8' }), crlfDelay: Infinity })
      for await (const line of lines) {
        lineNo++
        if (line.trim() === '') continue
        let r: JournalRecord
        try {
          r = JSON.parse(line) as JournalRecord
        } catch (err) {
          io.err(`outpost export: EXPORT_INPUT: ${source.file}: line ${lineNo} is not JSON: ${(err as Error).message}; nothing was written\n`)
          return EXIT_BROKEN
        }
        if (r === null || typeof r !== 'object' || typeof r.type !== 'string') {
          io.err(`outpost export: EXPORT_INPUT: ${source.file}: line ${lineNo} is not a record (no type); nothing was written\n`)
          return EXIT_BROKEN
        }
        onRecord(r)
      }
    } catch (err) {
      const e = err as NodeJS.ErrnoException
      io.err(`outpost export: cannot read ${source.file}: ${e.code === 'ENOENT' ? 'no such file' : e.message}\n`)
      return EXIT_NOINPUT
    }
    return undefined
  }
  const journal = await openForReading('export', source.config!.storage.dir, io)
  if (typeof journal === 'number') return journal
  try {
    for await (const { key, record, error } of storedRecords(journal.db)) {
      if (error || !record) {
        io.err(`outpost export: ${key}: ${error}; nothing was written\n`)
        return EXIT_BROKEN
      }
      onRecord(record)
    }
  } finally {
    await journal.close()
  }
  return undefined
}

export async function main(argv: string[], io: Io = processIo, now: () => number = Date.now): Promise<number> {
  let format: Format
  let configPath: string | undefined
  let recordsPath: string | undefined
  let from: number | undefined
  let to: number | undefined
  let out: string | undefined
  try {
    const { values, positionals } = parseCommandLine(
      argv,
      {
        config: { type: 'string' },
        records: { type: 'string' },
        format: { type: 'string' },
        from: { type: 'string' },
        to: { type: 'string' },
        out: { type: 'string' },
      },
      { positionals: true },
    )
    if (positionals.length > 0) throw new UsageError(`unexpected argument ${positionals[0]}`)
    if (values.format === undefined) throw new UsageError(`--format is required (${FORMATS.join(', ')})`)
    if (!(FORMATS as readonly string[]).includes(values.format))
      throw new UsageError(`--format must be one of ${FORMATS.join(', ')}, got ${values.format}`)
    format = values.format as Format
    configPath = values.config
    recordsPath = values.records
    if (configPath === undefined && recordsPath === undefined) throw new UsageError('give --config FILE or --records FILE.jsonl')
    if (format === 'ocpi-tariff' && recordsPath !== undefined)
      throw new UsageError('--format ocpi-tariff exports the plans of --config; --records does not apply')
    if (format !== 'csv' && configPath === undefined)
      throw new UsageError(
        `--format ${format} needs --config FILE (its "ocpi" section names the operator and the location), with --records if the records come from a file`,
      )
    from = parseTime('from', values.from)
    to = parseTime('to', values.to)
    if (from !== undefined && to !== undefined && to <= from) throw new UsageError(`--to (${values.to}) must be after --from (${values.from})`)
    out = values.out
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    io.err(`outpost export: ${err.message}\n${USAGE}`)
    return EXIT_USAGE
  }

  let config: SiteConfig | undefined
  if (configPath !== undefined) {
    const cfg = loadConfig(configPath, io)
    if (!cfg.ok) return cfg.exit
    config = cfg.config
  }
  const site = config ? ocpiSite(config) : undefined
  if (format !== 'csv' && !site) {
    io.err(`${configPath}: /ocpi: is required for --format ${format} (countryCode, partyId, address, city, country, latitude, longitude)\n`)
    return EXIT_CONFIG
  }
  const lastUpdated = new Date(now()).toISOString()

  let text: string
  if (format === 'ocpi-tariff') {
    text = JSON.stringify(
      config!.plans.map((p) => planToTariff(p, site!, lastUpdated)),
      null,
      2,
    )
    text += '\n'
  } else {
    const chunks: string[] = format === 'csv' ? [csvHeader()] : []
    const cdrs: unknown[] = []
    let publicKey: string | undefined
    if (config && recordsPath === undefined) {
      try {
        publicKey = readKey(config.storage.dir)?.publicKeyPem
      } catch {
        // the key announced in the log is what counts; the key file is only a fallback
      }
    }
    const status = await readRecords(recordsPath !== undefined ? { file: recordsPath } : { config: config! }, io, (r) => {
      if (r.type === 'gateway.started' && typeof r.publicKey === 'string') publicKey = r.publicKey
      if (r.type !== 'session.ended') return
      const ended = Date.parse(r.endedAt)
      if ((from !== undefined && ended < from) || (to !== undefined && ended >= to)) return
      const body = r as unknown as SessionEndedBody
      if (format === 'csv') chunks.push(csvRow(body))
      else cdrs.push(sessionToCdr(body, site!, { ...(publicKey ? { publicKeyPem: publicKey } : {}), lastUpdated }))
    })
    if (status !== undefined) return status
    text = format === 'csv' ? chunks.join('') : `${JSON.stringify(cdrs, null, 2)}\n`
  }

  if (out === undefined) {
    io.out(text)
    return EXIT_OK
  }
  const tmp = `${out}.tmp-${process.pid}`
  try {
    writeFileSync(tmp, text)
    renameSync(tmp, out)
  } catch (err) {
    rmSync(tmp, { force: true })
    io.err(`outpost export: cannot write ${out}: ${(err as Error).message}\n`)
    return EXIT_BROKEN
  }
  return EXIT_OK
}
