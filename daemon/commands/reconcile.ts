/**
 * `outpost reconcile`: the cloud-side reconciling consumer as a command, for an
 * operator checking a site (and a reference for the cloud team). Collects the
 * site's records into a JSON-lines file, verifies seq and hash chain, acks what
 * it holds durably, pulls gaps. Runs until stopped, or with --until-head until
 * it holds everything up to the head the gateway announced. With --cdr FILE (and the
 * site's --config for its `ocpi` section) it also writes an OCPI 2.2.1 CDR, one JSON
 * object per line, for every session.ended it holds: rebuilt from the records file at
 * start, then appended (and fsynced) as records are held.
 *
 * Exit status: 0 stopped cleanly (or caught up with --until-head), 1 chain break
 * or unrecoverable gap, 64 usage error, 70 could not start (e.g. a broken file).
 */
import { parseArgs } from 'node:util'
import pino from 'pino'
import { ReconcilingConsumer } from '../uplink/consumer.js'
import { EXIT_CANNOT_START, EXIT_CONFIG, EXIT_OK, EXIT_USAGE, processIo, type Io } from '../cli-common.js'
import { open, rename, type FileHandle } from 'node:fs/promises'
import { createReadStream, existsSync } from 'node:fs'
import { createInterface } from 'node:readline'
import type { JournalRecord, SessionEndedBody } from '../../core/types.js'
import { ocpiSite, sessionToCdr, type OcpiSite } from '../export.js'
import { loadConfig } from './journal-support.js'

/**
 * The CDR file of --cdr: derived from the records file, so it is rebuilt from it at start
 * (written whole, then renamed into place) and appended as records are held.
 */
class CdrWriter {
  count = 0
  private publicKey: string | undefined
  private constructor(
    readonly file: string,
    private readonly site: OcpiSite,
    private fh: FileHandle,
  ) {}

  static async open(file: string, recordsFile: string, site: OcpiSite): Promise<CdrWriter> {
    const tmp = `${file}.rebuild-${process.pid}`
    const fh = await open(tmp, 'w')
    const w = new CdrWriter(file, site, fh)
    if (existsSync(recordsFile)) {
      const batch: JournalRecord[] = []
      for await (const line of createInterface({ input: createReadStream(recordsFile), crlfDelay: Infinity })) {
        try {
          batch.push(JSON.parse(line) as JournalRecord)
        } catch {
          break // a torn last line: the consumer cuts it when it resumes
        }
        if (batch.length >= 1000) await w.append(batch.splice(0))
      }
      await w.append(batch)
    }
    await fh.sync()
    await fh.close()
    await rename(tmp, file)
    w.fh = await open(file, 'a')
    return w
  }

  async append(records: JournalRecord[]): Promise<void> {
    let text = ''
    for (const r of records) {
      if (r.type === 'gateway.started' && typeof r.publicKey === 'string') this.publicKey = r.publicKey
      if (r.type !== 'session.ended') continue
      const cdr = sessionToCdr(r as unknown as SessionEndedBody, this.site, {
        ...(this.publicKey ? { publicKeyPem: this.publicKey } : {}),
        lastUpdated: new Date().toISOString(),
      })
      text += JSON.stringify(cdr) + '\n'
      this.count++
    }
    if (text === '') return
    await this.fh.write(text)
    await this.fh.sync()
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined)
  }
}

const USAGE = `Usage: outpost reconcile --url URL --site ID [options]
  --url URL             broker: mqtt://host:1883 or mqtts://host:8883
  --site ID             the site id (topics are PREFIX/ID/...)
  --prefix P            topic prefix (default outpost)
  --out FILE            JSON-lines output, resumed if present (default ./ID.records.jsonl)
  --ca FILE             CA bundle (PEM) for mqtts://
  --cert FILE --key FILE  client certificate and key (PEM)
  --username U          broker user name
  --password-file FILE  file whose first line is the broker password
  --no-ack              observe only: never ack (the gateway keeps its backlog)
  --until-head          exit once every record up to the gateway's head is held
  --timeout S           with --until-head: give up after S seconds (exit 1)
  --cdr FILE            also write an OCPI 2.2.1 CDR per session.ended (JSON lines), as records are held
  --config FILE         the site config, for its "ocpi" section and plans (needed by --cdr)
`

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  let values: Record<string, string | boolean | undefined>
  try {
    values = parseArgs({
      args: argv,
      options: {
        url: { type: 'string' },
        site: { type: 'string' },
        prefix: { type: 'string', default: 'outpost' },
        out: { type: 'string' },
        ca: { type: 'string' },
        cert: { type: 'string' },
        key: { type: 'string' },
        username: { type: 'string' },
        'password-file': { type: 'string' },
        'no-ack': { type: 'boolean', default: false },
        'until-head': { type: 'boolean', default: false },
        timeout: { type: 'string' },
        cdr: { type: 'string' },
        config: { type: 'string' },
      },
      strict: true,
      allowPositionals: false,
    }).values
  } catch (err) {
    io.err(`outpost reconcile: ${(err as Error).message}\n${USAGE}`)
    return EXIT_USAGE
  }
  const url = values.url as string | undefined
  const site = values.site as string | undefined
  if (!url || !site) {
    io.err(`outpost reconcile: --url and --site are required\n${USAGE}`)
    return EXIT_USAGE
  }
  const timeoutS = values.timeout !== undefined ? Number(values.timeout) : undefined
  if (timeoutS !== undefined && !(timeoutS > 0)) {
    io.err(`outpost reconcile: --timeout must be a positive number of seconds\n`)
    return EXIT_USAGE
  }
  const file = (values.out as string | undefined) ?? `./${site}.records.jsonl`
  const logger = pino({ level: 'info' }, pino.destination(2))
  let cdrs: CdrWriter | undefined
  if (values.cdr !== undefined) {
    if (values.config === undefined) {
      io.err(`outpost reconcile: --cdr needs --config FILE (the site config: its "ocpi" section names the operator and the location)\n${USAGE}`)
      return EXIT_USAGE
    }
    const cfg = loadConfig(values.config as string, io)
    if (!cfg.ok) return cfg.exit
    const ocpi = ocpiSite(cfg.config)
    if (!ocpi) {
      io.err(`${values.config}: /ocpi: is required for --cdr (countryCode, partyId, address, city, country, latitude, longitude)\n`)
      return EXIT_CONFIG
    }
    try {
      cdrs = await CdrWriter.open(values.cdr as string, file, ocpi)
    } catch (err) {
      io.err(`outpost reconcile: cannot write ${values.cdr}: ${(err as Error).message}\n`)
      return EXIT_CANNOT_START
    }
  }
  const consumer = new ReconcilingConsumer({
    url,
    siteId: site,
    prefix: values.prefix as string,
    file,
    caFile: values.ca as string | undefined,
    certFile: values.cert as string | undefined,
    keyFile: values.key as string | undefined,
    username: values.username as string | undefined,
    passwordFile: values['password-file'] as string | undefined,
    ack: !values['no-ack'],
    logger,
    ...(cdrs ? { onHeld: (records: JournalRecord[]) => cdrs.append(records) } : {}),
  })
  try {
    await consumer.start()
  } catch (err) {
    const e = err as { code?: string; message?: string }
    io.err(`outpost reconcile: ${e.code ? e.code + ': ' : ''}${e.message ?? String(err)}\n`)
    return EXIT_CANNOT_START
  }
  const code = await new Promise<number>((resolve) => {
    const finish = (c: number) => {
      clearInterval(check)
      clearTimeout(timer)
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
      resolve(c)
    }
    const onSignal = () => finish(consumer.chainBreak() ? 1 : EXIT_OK)
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    const check = setInterval(() => {
      if (consumer.chainBreak()) return finish(1)
      const oldest = consumer.compacted()
      if (oldest !== undefined && consumer.held() < oldest - 1) return finish(1)
      if (values['until-head'] && consumer.headConfirmed() && consumer.held() >= consumer.head()) finish(EXIT_OK)
    }, 200)
    const timer = timeoutS !== undefined ? setTimeout(() => finish(1), timeoutS * 1000) : undefined
  })
  await consumer.stop()
  await cdrs?.close()
  const brk = consumer.chainBreak()
  const summary = {
    file,
    held: consumer.held(),
    head: consumer.head(),
    lastHash: consumer.heldHash(),
    ...consumer.stats,
    chainBreak: brk ?? null,
    compactedBefore: consumer.compacted() ?? null,
    ...(cdrs ? { cdrFile: cdrs.file, cdrs: cdrs.count } : {}),
  }
  io.out(JSON.stringify(summary) + '\n')
  if (brk) io.err(`outpost reconcile: chain broken at seq ${brk.seq}: ${brk.message}\n`)
  return code
}
