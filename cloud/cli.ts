/**
 * `outpost ingest`: the cloud side at scale, as a long-running service. Subscribes
 * to every site's records through an MQTT 5 shared subscription (workers started
 * with the same --group split the traffic), stores them idempotently in PostgreSQL,
 * verifies each site's chain incrementally, acks each site's verified prefix after
 * the commit, and pulls gaps (cloud/, docs/ingest.md). The `outpost` bin (bin/outpost.ts)
 * routes the word `ingest` here.
 *
 * Owns: the command line of the service and its signals (SIGTERM/SIGINT: a clean
 * stop that finishes in-flight transactions), and of `outpost ingest resolve`, an
 * operator's report on one site and a fork's resolution (cloud/resolve.ts).
 * Must never: start with a flag it does not understand, or print a password.
 *
 * Exit status: 0 after a clean stop, 64 usage, 70 cannot start (database or broker settings).
 */
import pino from 'pino'
import { EXIT_CANNOT_START, EXIT_OK, EXIT_USAGE, parseCommandLine, processIo, UsageError, type Io } from '../daemon/cli-common.js'
import pg from 'pg'
import { parseListen } from './metrics.js'
import { keepSide, ResolveRefused, siteReport } from './resolve.js'
import { MIGRATIONS, schemaVersion } from './schema.js'
import { IngestWorker, safeDbUrl } from './worker.js'

const USAGE = `Usage: outpost ingest --url URL --db POSTGRES_URL [options]
  --url URL             broker: mqtt://host:1883 or mqtts://host:8883 (MQTT 5 shared subscriptions)
  --db URL              PostgreSQL: postgres://user@host:5432/dbname (migrated at start)
  --group NAME          shared-subscription group; workers of one group split the traffic (default outpost-ingest)
  --sites PATTERN       site ids to take, * and ? as wildcards (default *); the same for every worker of a group
  --prefix P            topic prefix (default outpost)
  --worker ID           this worker's name in logs, pull ids and leases (default random)
  --gap-wait MS         pull a gap that made no progress for this long (default 3000)
  --listen HOST:PORT    serve Prometheus /metrics and /health there (port 0: any free port, logged); not served without it
  --ca FILE             CA bundle (PEM) for mqtts://
  --cert FILE --key FILE  client certificate and key (PEM)
  --username U          broker user name
  --password-file FILE  file whose first line is the broker password
`

const RESOLVE_USAGE = `Usage: outpost ingest resolve --db POSTGRES_URL --site ID [--seq N --keep HASH --by WHO --why TEXT]
  without --seq: prints the site's chain break, forks (both sides), rejects, lost ranges and resolutions (JSON)
  --seq N --keep HASH   of the two records held at seq N, keep the one with this hash; the other moves to record_history
  --by WHO --why TEXT   who decides and why (the resolutions row)
Exit status: 0 done, 64 usage, 65 refused (no such site, no fork at that seq, a hash that is neither side,
a side that would break the verified prefix: nothing changed), 70 database unreachable or its schema not at this build's version (a worker migrates it; resolve never does)
`

/** A resolve refused for what it asked: nothing changed (sysexits EX_DATAERR). */
const EXIT_REFUSED = 65

async function resolveMain(argv: string[], io: Io): Promise<number> {
  let values
  try {
    values = parseCommandLine(argv, {
      db: { type: 'string' },
      site: { type: 'string' },
      seq: { type: 'string' },
      keep: { type: 'string' },
      by: { type: 'string' },
      why: { type: 'string' },
    }).values
    if (!values.db || !values.site) throw new UsageError('--db and --site are required')
    if (!/^postgres(ql)?:\/\//u.test(values.db)) throw new UsageError('--db: not a postgres:// URL')
    const acting = [values.seq, values.keep, values.by, values.why].filter((v) => v !== undefined).length
    if (acting > 0 && acting < 4) throw new UsageError('--seq, --keep, --by and --why go together')
    if (values.seq !== undefined && !(Number.isSafeInteger(Number(values.seq)) && Number(values.seq) >= 1))
      throw new UsageError(`--seq ${values.seq}: a record's seq, an integer from 1`)
    if (values.keep !== undefined && !/^[0-9a-f]{64}$/u.test(values.keep)) throw new UsageError(`--keep ${values.keep}: a record hash, 64 hex digits`)
    if (values.by !== undefined && values.by.trim() === '') throw new UsageError('--by: who decides, not empty')
    if (values.why !== undefined && values.why.trim() === '') throw new UsageError('--why: the reason, not empty')
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    io.err(`outpost ingest resolve: ${err.message}\n${RESOLVE_USAGE}`)
    return EXIT_USAGE
  }
  const client = new pg.Client({ connectionString: values.db })
  try {
    await client.connect()
    // A report or a resolution never migrates: a migration may rewrite every record, the workers' to run (docs/ingest.md).
    const version = await schemaVersion(client)
    if (version !== MIGRATIONS.length)
      throw new Error(
        `the schema is version ${version}, this build's is ${MIGRATIONS.length}: start one worker of this build first and let it migrate`,
      )
  } catch (err) {
    await client.end().catch(() => undefined)
    io.err(`outpost ingest resolve: INGEST_DB: database ${safeDbUrl(values.db)}: ${(err as Error).message}\n`)
    return EXIT_CANNOT_START
  }
  try {
    if (values.seq === undefined) io.out(JSON.stringify(await siteReport(client, values.site), null, 2) + '\n')
    else {
      const r = await keepSide(client, { site: values.site, seq: Number(values.seq), keep: values.keep!, by: values.by!, why: values.why! })
      io.out(JSON.stringify({ site: values.site, seq: Number(values.seq), kept: values.keep, ...r }) + '\n')
    }
    return EXIT_OK
  } catch (err) {
    if (!(err instanceof ResolveRefused)) throw err
    io.err(`outpost ingest resolve: refused, nothing changed: ${err.message}\n`)
    return EXIT_REFUSED
  } finally {
    await client.end().catch(() => undefined)
  }
}

const LEVEL = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/u

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  if (argv[0] === 'resolve') return resolveMain(argv.slice(1), io)
  let values
  try {
    values = parseCommandLine(argv, {
      url: { type: 'string' },
      db: { type: 'string' },
      group: { type: 'string' },
      sites: { type: 'string' },
      prefix: { type: 'string' },
      worker: { type: 'string' },
      'gap-wait': { type: 'string' },
      listen: { type: 'string' },
      ca: { type: 'string' },
      cert: { type: 'string' },
      key: { type: 'string' },
      username: { type: 'string' },
      'password-file': { type: 'string' },
    }).values
    if (!values.url || !values.db) throw new UsageError('--url and --db are required')
    if (!/^mqtts?:\/\//u.test(values.url)) throw new UsageError(`--url ${values.url}: not an mqtt:// or mqtts:// URL`)
    if (!/^postgres(ql)?:\/\//u.test(values.db)) throw new UsageError('--db: not a postgres:// URL')
    if (values.group !== undefined && !LEVEL.test(values.group))
      throw new UsageError(`--group ${values.group}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`)
    if (values.worker !== undefined && !LEVEL.test(values.worker))
      throw new UsageError(`--worker ${values.worker}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`)
    if (values.sites !== undefined && /[/+#]/u.test(values.sites))
      throw new UsageError(`--sites ${values.sites}: '/', '+' and '#' cannot be in a site id`)
    if (values.prefix !== undefined && /[+#]/u.test(values.prefix)) throw new UsageError(`--prefix ${values.prefix}: '+' and '#' are MQTT wildcards`)
    if (values['gap-wait'] !== undefined && !(Number.isSafeInteger(Number(values['gap-wait'])) && Number(values['gap-wait']) >= 100))
      throw new UsageError(`--gap-wait ${values['gap-wait']}: an integer number of milliseconds, at least 100`)
    if (values.listen !== undefined && !parseListen(values.listen))
      throw new UsageError(`--listen ${values.listen}: HOST:PORT or [IPv6]:PORT, the port 0-65535`)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    io.err(`outpost ingest: ${err.message}\n${USAGE}`)
    return EXIT_USAGE
  }
  const logger = pino({ level: 'info' }, pino.destination(2))
  const worker = new IngestWorker({
    url: values.url,
    db: values.db,
    group: values.group,
    sites: values.sites,
    prefix: values.prefix,
    workerId: values.worker,
    gapWaitMs: values['gap-wait'] !== undefined ? Number(values['gap-wait']) : undefined,
    listen: values.listen !== undefined ? parseListen(values.listen) : undefined,
    caFile: values.ca,
    certFile: values.cert,
    keyFile: values.key,
    username: values.username,
    passwordFile: values['password-file'],
    logger,
  })
  try {
    await worker.start()
  } catch (err) {
    const e = err as { code?: string; message?: string }
    io.err(`outpost ingest: ${e.code ? e.code + ': ' : ''}${e.message ?? String(err)}\n`)
    return EXIT_CANNOT_START
  }
  io.err(`outpost ingest: worker ${worker.workerId} running\n`)
  await new Promise<void>((resolve) => {
    const onSignal = () => {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
      resolve()
    }
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
  })
  await worker.stop()
  io.out(JSON.stringify({ worker: worker.workerId, ...worker.stats }) + '\n')
  return EXIT_OK
}
