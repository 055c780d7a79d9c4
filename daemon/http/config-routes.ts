/**
 * The config routes of the local API (docs/contract.md "Config changes"): read the config in
 * force with its version, check a new one (problems at their JSON pointers, and the diff),
 * save it with If-Match, list the kept versions, roll back to one.
 *
 * A save runs, in this order and one at a time: the version check (If-Match, and the file on
 * disk still the one in force), the checks of `check-config` (daemon/config.ts, the same code),
 * the diff and who may change what (daemon/config-changes.ts), the atomic write
 * (daemon/config-store.ts), then the daemon's `config` step, which journals `config.applied`.
 *
 * Owns: the order of a save, its refusals and their HTTP statuses.
 * Must never: write the file or apply a config that a check refused, overwrite a file edited
 * by hand without being told its version, or apply a change that needs a restart (it is
 * refused, naming it, never saved to be silently ignored).
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Daemon } from '../daemon.js'
import type { ConfigStore } from '../config-store.js'
import { checkConfigText, effectiveConfig, siteSchema, type ConfigProblem } from '../config.js'
import { REDACTED, describeChanges, mayChange, redact, unredact, type PointerRule } from '../config-changes.js'
import { pendingConfig } from '../engine/index.js'
import { isOutpostError } from '../errors.js'
import { HttpError, allow, mediaType, readBody, sendJson } from './util.js'
import type { Principal } from './auth.js'

/** A site config is a few kB; a thousand outlets stay well under this. */
export const MAX_CONFIG_BYTES = 1 << 20

export class ConfigRoutes {
  /** Saves and rollbacks, one at a time. */
  private lock: Promise<unknown> = Promise.resolve()

  constructor(
    private readonly daemon: Daemon,
    private readonly store: ConfigStore,
  ) {}

  async handle(req: IncomingMessage, res: ServerResponse, method: string, rest: string[], who: Principal): Promise<void> {
    const sub = rest.join('/')
    if (sub === '') {
      allow(method, ['GET', 'HEAD', 'PUT'])
      if (method === 'PUT') return this.serialized(res, () => this.save(req, who))
      const view = await this.view(who)
      return sendJson(res, 200, view, { etag: etag(view.version) })
    }
    if (sub === 'check') {
      allow(method, ['POST'])
      return sendJson(res, 200, await this.check(await configText(req), who))
    }
    if (sub === 'schema') {
      // The site config's JSON Schema: the page builds its forms from it (and so never disagrees with check-config).
      allow(method, ['GET', 'HEAD'])
      return sendJson(res, 200, siteSchema)
    }
    if (sub === 'versions') {
      allow(method, ['GET', 'HEAD'])
      const current = this.store.current().version
      return sendJson(res, 200, { current, versions: (await this.store.list()).map((v) => ({ ...v, current: v.version === current })) })
    }
    if (sub === 'rollback') {
      allow(method, ['POST'])
      return this.serialized(res, () => this.rollback(req, who))
    }
    throw new HttpError(404, 'not-found', `no route /api/config/${sub} (see docs/contract.md "Config changes")`)
  }

  private async serialized(res: ServerResponse, work: () => Promise<{ version: string } & Record<string, unknown>>): Promise<void> {
    const run = this.lock.then(work)
    this.lock = run.catch(() => undefined)
    const out = await run
    sendJson(res, 200, out, { etag: etag(out.version) })
  }

  /** The config in force, its version, whether the file on disk is still it, and the outlets whose change waits for their session. */
  async view(who: Principal): Promise<{ version: string } & Record<string, unknown>> {
    const cur = this.store.current()
    const disk = await this.store.onDisk()
    const config = JSON.parse(cur.text) as unknown
    return {
      version: cur.version,
      // Tokens and passwords are the admin's to read: another role would read its way up.
      config: who.role === 'admin' ? config : redact(config),
      file: { path: this.store.file, ...fileState(cur.version, disk) },
      pending: pendingConfig(this.daemon.engineState).map((p) => ({ ...p, note: 'pending until the session ends' })),
    }
  }

  /** A dry run: the problems `check-config` finds, or what would change, what applies at once and what this role may change. */
  private async check(body: string, who: Principal): Promise<Record<string, unknown>> {
    const base = this.store.current()
    const text = this.withSecrets(body, base.text)
    const checked = checkConfigText(text)
    // Whether the file was edited by hand since: a save would then need its version as If-Match.
    const file = fileState(base.version, await this.store.onDisk())
    if (!checked.ok) return { ok: false, base: base.version, file, problems: checked.problems }
    const changes = describeChanges(effectiveConfig(base.text), checked.config)
    return {
      ok: true,
      base: base.version,
      file,
      changes: changes.map((c) => ({ ...c, allowed: mayChange(who.role, c) })),
      restartRequired: changes.filter((c) => !c.hot).map((c) => c.pointer),
    }
  }

  /** Saves `text` (made by another route, e.g. a cross-check's fix) as PUT /api/config would, If-Match from `req`, one at a time with every other save. */
  saveText(text: string, req: IncomingMessage, who: Principal): Promise<{ version: string } & Record<string, unknown>> {
    const ifMatch = ifMatchOf(req)
    const run = this.lock.then(() => this.apply(text, ifMatch, who))
    this.lock = run.catch(() => undefined)
    return run
  }

  private async save(req: IncomingMessage, who: Principal): Promise<{ version: string } & Record<string, unknown>> {
    const ifMatch = ifMatchOf(req)
    return this.apply(this.withSecrets(await configText(req), this.store.current().text), ifMatch, who)
  }

  /**
   * The body with each secret still REDACTED (as a role other than admin read it) given its
   * value in force; the body's own bytes when it has none (or is not JSON: the checks say so).
   */
  private withSecrets(body: string, inForce: string): string {
    if (!body.includes(REDACTED)) return body
    let doc: unknown
    try {
      doc = JSON.parse(body)
    } catch {
      return body
    }
    return `${JSON.stringify(unredact(doc, JSON.parse(inForce)), null, 2)}\n`
  }

  private async rollback(req: IncomingMessage, who: Principal): Promise<{ version: string } & Record<string, unknown>> {
    const ifMatch = ifMatchOf(req)
    const body = parseObject(await readBody(req, 4096), 'body')
    const version = body.version
    if (typeof version !== 'string' || !/^[0-9a-f]{64}$/.test(version))
      throw new HttpError(400, 'invalid-request', 'body/version: must be a kept version (64 hex digits, from GET /api/config/versions)')
    const text = await this.store.read(version)
    if (text === undefined) throw new HttpError(404, 'unknown-version', `no kept version ${version} (see GET /api/config/versions)`)
    return this.apply(text, ifMatch, who)
  }

  private async apply(text: string, ifMatch: string, who: Principal): Promise<{ version: string } & Record<string, unknown>> {
    if (this.daemon.haltedBy) throw new HttpError(503, 'halted', `the daemon is halted (${this.daemon.haltedBy.message}); nothing was changed`)
    const cur = this.store.current()
    const disk = await this.store.onDisk()
    const edited = disk.version !== null && disk.version !== cur.version
    if (edited) {
      if (ifMatch !== disk.version)
        throw new HttpError(
          409,
          'config-edited-on-disk',
          `${this.store.file} was edited since the daemon applied version ${cur.version} (it is now ${disk.version}); nothing was changed. ` +
            "Restart the daemon to run the file as edited, or save again with If-Match: the file's version (GET /api/config, file.version) to replace it",
        )
    } else if (ifMatch !== cur.version) {
      throw new HttpError(
        412,
        'version-mismatch',
        `If-Match ${ifMatch} is not the config in force (${cur.version}): someone saved since; nothing was changed`,
      )
    }
    const checked = checkConfigText(text)
    if (!checked.ok) throw invalidConfig(checked.problems)
    const changes = describeChanges(effectiveConfig(cur.text), checked.config)
    const denied = changes.filter((c) => !mayChange(who.role, c))
    if (denied.length > 0)
      throw new HttpError(403, 'forbidden', `${who.who} may not change ${list(denied)} (${ownersOf(denied)}); nothing was changed`)
    const restart = changes.filter((c) => !c.hot)
    if (restart.length > 0)
      throw new HttpError(
        409,
        'restart-required',
        `${list(restart)} cannot change while the daemon runs (buses, devices and the rest open at start): edit the file and restart the daemon; nothing was changed`,
      )
    const busy = this.daemon.rewiredDuringSession(checked.config)
    if (busy.length > 0)
      throw new HttpError(409, 'session-open', `the relay of ${busy.join(', ')} cannot change while a session is open there; nothing was changed`)
    if (text === cur.text && !edited) return { version: cur.version, changed: [], unchanged: true }
    let version: string
    try {
      version = await this.store.save(text, edited && disk.version !== null ? disk : undefined)
    } catch (err) {
      if (isOutpostError(err, 'CONFIG_WRITE_FAILED')) throw new HttpError(507, 'config-write-failed', err.message)
      throw err
    }
    const record = await this.daemon.applyConfig(checked.config, version, { who: who.who, changed: changes.map((c) => c.pointer) })
    return { version, changed: changes.map((c) => c.pointer), record: record ?? null }
  }
}

function fileState(version: string, disk: Awaited<ReturnType<ConfigStore['onDisk']>>): Record<string, unknown> {
  if (disk.version === null) return { version: null, edited: true, error: disk.error }
  return { version: disk.version, edited: disk.version !== version }
}

/** 422 `invalid-config`: a config the checks of `check-config` refuse, each problem at its pointer in `error.problems`. */
export function invalidConfig(problems: ConfigProblem[]): HttpError {
  return new HttpError(
    422,
    'invalid-config',
    `the config has ${problems.length} problem${problems.length === 1 ? '' : 's'} (error.problems, each at its JSON pointer); nothing was changed`,
    {},
    { problems },
  )
}

const etag = (version: string): string => `"${version}"`

function ifMatchOf(req: IncomingMessage): string {
  const h = req.headers['if-match']
  if (typeof h !== 'string' || h.trim() === '')
    throw new HttpError(428, 'if-match-required', 'a save needs If-Match: the version it was made from (the ETag of GET /api/config)')
  const m = /^(?:W\/)?"?([0-9a-fA-F]{64})"?$/.exec(h.trim())
  if (!m) throw new HttpError(400, 'invalid-request', `If-Match must be a config version (the ETag of GET /api/config), got ${JSON.stringify(h)}`)
  return m[1]!.toLowerCase()
}

export async function configText(req: IncomingMessage): Promise<string> {
  const type = mediaType(req)
  if (type !== 'application/json')
    throw new HttpError(
      415,
      'unsupported-media-type',
      `the body must be the config as JSON (content-type: application/json), got ${type || 'no content type'}`,
    )
  return readBody(req, MAX_CONFIG_BYTES)
}

function parseObject(text: string, what: string): Record<string, unknown> {
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch (err) {
    throw new HttpError(400, 'invalid-request', `${what}: ${(err as Error).message}`)
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new HttpError(400, 'invalid-request', `${what}: must be a JSON object`)
  return v as Record<string, unknown>
}

const list = (rules: PointerRule[]): string => rules.map((r) => r.pointer || '/').join(', ')
const ownersOf = (rules: PointerRule[]): string => [...new Set(rules.map((r) => `${r.pointer || '/'} is the ${r.owner}'s`))].join('; ')
