/**
 * The wiring cross-check's routes (docs/contract.md "Wiring cross-check"): begin one (the
 * installer confirms that loads may be switched), follow its progress, cancel it, read the
 * kept reports, and apply a report's fixes to the config in force.
 *
 * Owns: who may run and fix (installer and admin), the confirmation, turning a report's fixes
 * into a config save (through ConfigRoutes, so every check of a save applies).
 * Must never: switch a relay itself (the daemon's check does), or apply a fix whose tests
 * (what the check saw where it changes) no longer hold.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Daemon } from '../daemon.js'
import type { ConfigStore } from '../config-store.js'
import { applyPatch } from '../../core/crosscheck.js'
import type { CrossCheckReport } from '../crosscheck.js'
import { isOutpostError } from '../errors.js'
import type { ConfigRoutes } from './config-routes.js'
import type { Principal } from './auth.js'
import { HttpError, allow, jsonBody, sendJson } from './util.js'

export interface CrossCheckView {
  running: ReturnType<Daemon['crossCheckRunning']> | null
  blocker: string | null
  wiring: string
  passed: { id: string; finishedAt: number; who: string } | null
  last: CrossCheckReport | null
}

export class CrossCheckRoutes {
  constructor(
    private readonly daemon: Daemon,
    private readonly store: ConfigStore | undefined,
    private readonly config: ConfigRoutes | undefined,
  ) {}

  async handle(req: IncomingMessage, res: ServerResponse, method: string, rest: string[], who: Principal): Promise<void> {
    const sub = rest.join('/')
    const changes = method !== 'GET' && method !== 'HEAD'
    if (changes && who.role !== 'admin' && who.role !== 'installer')
      throw new HttpError(
        403,
        'forbidden',
        `${who.who} may not ${method} /api/crosscheck${sub ? `/${sub}` : ''}: the wiring cross-check is the installer's`,
      )
    if (sub === '') {
      allow(method, ['GET', 'HEAD', 'POST', 'DELETE'])
      if (method === 'POST') return this.begin(req, res, who)
      if (method === 'DELETE') {
        if (!this.daemon.cancelCrossCheck()) throw new HttpError(409, 'not-running', 'no cross-check is running')
        return sendJson(res, 200, { cancelled: true })
      }
      return sendJson(res, 200, await this.view())
    }
    if (sub === 'reports') {
      allow(method, ['GET', 'HEAD'])
      return sendJson(res, 200, { reports: await this.daemon.crossChecks.list() })
    }
    if (rest[0] === 'reports' && rest.length === 2) {
      allow(method, ['GET', 'HEAD'])
      const report = await this.daemon.crossChecks.read(rest[1]!)
      if (!report) throw new HttpError(404, 'unknown-report', `no cross-check report ${JSON.stringify(rest[1])} (see GET /api/crosscheck/reports)`)
      return sendJson(res, 200, report)
    }
    if (sub === 'fix') {
      allow(method, ['POST'])
      return this.fix(req, res, who)
    }
    throw new HttpError(404, 'not-found', `no route /api/crosscheck/${sub} (see docs/contract.md "Wiring cross-check")`)
  }

  /** What the status page shows: a check running, the last report, and whether the wiring in force has passed one. */
  async view(): Promise<CrossCheckView> {
    const wiring = this.daemon.wiringHash()
    const last = await this.daemon.crossChecks.latest()
    const passed = await this.daemon.crossChecks.passedFor(wiring)
    return {
      running: this.daemon.crossCheckRunning() ?? null,
      blocker: this.daemon.crossCheckRunning() ? null : (this.daemon.crossCheckBlocker() ?? null),
      wiring,
      passed: passed ? { id: passed.id, finishedAt: passed.finishedAt, who: passed.who } : null,
      last: last ?? null,
    }
  }

  private async begin(req: IncomingMessage, res: ServerResponse, who: Principal): Promise<void> {
    const body = await jsonBody(req)
    for (const k of Object.keys(body)) if (k !== 'confirm') throw new HttpError(400, 'invalid-request', `body/${k}: unknown field (allowed: confirm)`)
    if (body.confirm !== true)
      throw new HttpError(
        400,
        'confirm-required',
        'body/confirm: must be true: the check closes every relay in turn, so loads plugged in will be switched on for a few seconds each',
        {},
        { pointer: '/confirm' },
      )
    let version: string | null = null
    if (this.store) version = this.store.current().version
    try {
      await this.daemon.beginCrossCheck(who.who, version)
    } catch (err) {
      if (isOutpostError(err, 'CROSS_CHECK_REFUSED')) throw new HttpError(409, 'cross-check-refused', `${err.message}; nothing was switched`)
      throw err
    }
    sendJson(res, 202, await this.view())
  }

  /** Applies the fixes of findings of a report, as one config save with If-Match (the same checks as PUT /api/config). */
  private async fix(req: IncomingMessage, res: ServerResponse, who: Principal): Promise<void> {
    if (!this.store || !this.config) throw new HttpError(404, 'not-found', 'this daemon runs without a config file: there is nothing to fix')
    const body = await jsonBody(req)
    for (const k of Object.keys(body))
      if (k !== 'report' && k !== 'findings') throw new HttpError(400, 'invalid-request', `body/${k}: unknown field (allowed: report, findings)`)
    if (typeof body.report !== 'string') throw new HttpError(400, 'invalid-request', 'body/report: must be a report id (GET /api/crosscheck/reports)')
    const report = await this.daemon.crossChecks.read(body.report)
    if (!report) throw new HttpError(404, 'unknown-report', `no cross-check report ${JSON.stringify(body.report)}`)
    const picked = body.findings
    if (!Array.isArray(picked) || picked.length === 0 || !picked.every((i) => Number.isInteger(i)))
      throw new HttpError(400, 'invalid-request', 'body/findings: must be a non-empty list of finding indices (report.findings)')
    const ops = (picked as number[]).flatMap((i) => {
      const f = report.findings[i]
      if (!f) throw new HttpError(400, 'invalid-request', `body/findings: report ${report.id} has no finding ${i}`, {}, { pointer: '/findings' })
      if (!f.fix) throw new HttpError(400, 'no-fix', `finding ${i} (${f.kind}) has no fix: ${f.message}`, {}, { pointer: '/findings' })
      return f.fix.patch
    })
    const cur = this.store.current()
    let next: unknown
    try {
      next = applyPatch(JSON.parse(cur.text), ops)
    } catch (err) {
      throw new HttpError(
        409,
        'stale-report',
        `report ${report.id}: ${(err as Error).message}: applied already, or changed since; nothing was changed`,
      )
    }
    const out = await this.config.saveText(`${JSON.stringify(next, null, 2)}\n`, req, who)
    sendJson(res, 200, out, { etag: `"${out.version}"` })
  }
}
