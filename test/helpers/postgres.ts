/**
 * A real PostgreSQL for tests: Debian's (/usr/lib/postgresql/VERSION/bin, the newest),
 * a fresh cluster made with initdb in a temp directory, served on a free loopback
 * port, awaited until it accepts queries, and stopped at teardown. PostgreSQL
 * refuses to run as root, so under root the cluster belongs to the `postgres`
 * user and its programs are spawned with that user's ids.
 *
 *   const pg = await startPostgres(t)     // pg.url: postgres://outpost@127.0.0.1:PORT/outpost
 *
 * Owns: the test cluster's life (initdb, start, readiness, stop, removal).
 * Must never: touch a cluster it did not create, or leave a server running after teardown.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { freePort } from './mosquitto.js'

/** Debian keeps PostgreSQL's programs off PATH, one directory per major version: the newest installed. */
export const PG_BIN: string = (() => {
  const root = '/usr/lib/postgresql'
  const versions = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, 'bin', 'postgres'))) : []
  versions.sort((a, b) => Number(b) - Number(a))
  return join(root, versions[0] ?? '15', 'bin')
})()
const USER = 'outpost'

interface Teardownable {
  teardown(fn: () => unknown): void
}

export interface Postgres {
  url: string
  port: number
  /** A query on a fresh connection (for the test's own checks). */
  query<T extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<T[]>
  /** A restart: a fast shutdown (every connection closed), `downMs` with no server, then the same cluster on the same port. */
  restart(downMs: number): Promise<void>
  stop(): Promise<void>
}

/** Under root, PostgreSQL's programs run as the postgres user (the server refuses root); spawned with its ids, no wrapper. */
function owner(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined
  const uid = Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout.trim())
  const gid = Number(spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).stdout.trim())
  if (!Number.isInteger(uid) || !Number.isInteger(gid)) throw new Error('running as root, but there is no postgres user to run PostgreSQL as')
  return { uid, gid }
}

export async function startPostgres(t?: Teardownable): Promise<Postgres> {
  if (!existsSync(join(PG_BIN, 'postgres'))) throw new Error(`${PG_BIN}/postgres is missing: apt-get install postgresql`)
  const dir = mkdtempSync(join(tmpdir(), 'outpost-pg-'))
  const data = join(dir, 'data')
  const ids = owner()
  if (ids) chownSync(dir, ids.uid, ids.gid)
  chmodSync(dir, 0o700)
  const init = spawnSync(join(PG_BIN, 'initdb'), ['-D', data, '-A', 'trust', '-U', USER, '--no-sync', '-E', 'UTF8', '--locale', 'C'], {
    encoding: 'utf8',
    cwd: dir,
    ...ids,
  })
  if (init.status !== 0) {
    rmSync(dir, { recursive: true, force: true })
    throw new Error(`initdb failed: ${init.stderr}`)
  }
  let port = 0
  let stderr = ''
  const launch = async (): Promise<ChildProcess | undefined> => {
    // fsync stays on: the tests check what a commit promises. Small buffers: several clusters may run at once.
    const args = ['-D', data, '-p', String(port), '-k', dir, '-h', '127.0.0.1', '-c', 'shared_buffers=32MB', '-c', 'max_connections=200']
    stderr = ''
    const c = spawn(join(PG_BIN, 'postgres'), args, { stdio: ['ignore', 'ignore', 'pipe'], cwd: dir, ...ids })
    c.stderr?.on('data', (d: Buffer) => (stderr += d.toString()))
    if (await ready(port, c)) return c
    c.kill('SIGKILL')
    return undefined
  }
  let child: ChildProcess | undefined
  for (let attempt = 0; ; attempt++) {
    port = await freePort()
    child = await launch()
    if (child) break
    if (attempt >= 3) {
      rmSync(dir, { recursive: true, force: true })
      throw new Error(`postgres did not start: ${stderr}`)
    }
  }
  const url = `postgres://${USER}@127.0.0.1:${port}/postgres`
  let stopped = false
  let server = child!
  // Should the test process die without its teardown (an uncaught exception), the server goes with it:
  // SIGQUIT is PostgreSQL's immediate shutdown.
  const onExit = () => {
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGQUIT')
  }
  process.once('exit', onExit)
  const result: Postgres = {
    url,
    port,
    async query(sql, params) {
      const c = new pg.Client({ connectionString: url })
      await c.connect()
      try {
        return (await c.query(sql, params)).rows
      } finally {
        await c.end()
      }
    },
    async restart(downMs) {
      const gone = new Promise((r) => server.once('exit', r))
      server.kill('SIGINT')
      await gone
      await new Promise((r) => setTimeout(r, downMs))
      const again = await launch()
      if (!again) throw new Error(`postgres did not start again on port ${port}: ${stderr}`)
      server = again
    },
    async stop() {
      if (stopped) return
      stopped = true
      if (server.exitCode === null && server.signalCode === null) {
        const gone = new Promise((r) => server.once('exit', r))
        // SIGINT is PostgreSQL's fast shutdown: open connections are closed, nothing waits for them.
        server.kill('SIGINT')
        const timer = setTimeout(() => server.kill('SIGKILL'), 10_000)
        await gone
        clearTimeout(timer)
      }
      process.off('exit', onExit)
      rmSync(dir, { recursive: true, force: true })
    },
  }
  t?.teardown(() => result.stop())
  return result
}

async function ready(port: number, c: ChildProcess): Promise<boolean> {
  const deadline = Date.now() + 30_000
  while (Date.now() < deadline) {
    if (c.exitCode !== null || c.signalCode !== null) return false
    const client = new pg.Client({ host: '127.0.0.1', port, user: USER, database: 'postgres' })
    try {
      await client.connect()
      await client.query('select 1')
      await client.end()
      return true
    } catch {
      await client.end().catch(() => undefined)
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  return false
}
