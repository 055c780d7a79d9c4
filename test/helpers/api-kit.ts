/**
 * A real site for the local API's tests: the in-process simulator (Modbus TCP on
 * loopback, no vehicle script), the Service (Daemon + LocalApi, journal on disk in
 * a temp dir) started as `outpost run` starts it, and small HTTP helpers. The
 * daemon's log lines are kept for assertions. Everything is stopped at teardown.
 */
import { Writable } from 'node:stream'
import { join } from 'node:path'
import { startSim, type Sim } from '../../drivers/index.js'
import { validateConfig } from '../../daemon/config.js'
import { createLogger } from '../../daemon/log.js'
import { systemClock } from '../../daemon/clock.js'
import { Service, type ServiceOptions } from '../../daemon/service.js'
import type { Daemon } from '../../daemon/daemon.js'
import type { LocalApi } from '../../daemon/http/index.js'
import type { SiteConfig } from '../../core/types.js'
import { tempDir, waitFor, PLANS } from './e2e-kit.js'

interface Teardownable {
  teardown(fn: () => unknown): void
}

export const TOKEN = 'api-test-token-0123'

export interface ApiSite {
  sim: Sim
  service: Service
  daemon: Daemon
  api: LocalApi
  config: SiteConfig
  dir: string
  /** http://127.0.0.1:PORT (no trailing slash). */
  base: string
  logs: Record<string, unknown>[]
  /** fetch(base + path) with the bearer token unless `auth: false` or a header of its own. */
  req(path: string, init?: RequestInit & { auth?: boolean | string }): Promise<Response>
  /** The same as JSON: status and parsed body. */
  json(path: string, init?: RequestInit & { auth?: boolean | string }): Promise<{ status: number; body: any; res: Response }>
  post(path: string, body: unknown, init?: RequestInit & { auth?: boolean | string }): Promise<{ status: number; body: any; res: Response }>
  /** A command through the gateway as the cloud would send it. */
  command(body: Record<string, unknown>): ReturnType<Daemon['gateway']['handle']>
  /** Waits until every outlet has been read at least once (start refuses `outlet-not-ready` before). */
  ready(): Promise<void>
  stop(): Promise<void>
}

export interface ApiSiteOptions {
  outlets?: number
  listen?: string
  service?: Partial<ServiceOptions>
  config?: Record<string, unknown>
}

let cmdSeq = 0

export async function startApiSite(t: Teardownable, o: ApiSiteOptions = {}): Promise<ApiSite> {
  const dir = tempDir(t, 'outpost-api-')
  const n = o.outlets ?? 2
  const sim = await startSim({ outlets: n, port: 0, speed: 1, script: false, seed: 5 })
  t.teardown(() => sim.close())
  const checked = validateConfig({
    site: { id: 'api', name: 'API test site', timezone: 'America/Vancouver' },
    storage: { dir: join(dir, 'journal'), readingSyncMs: 200 },
    buses: [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: sim.port, timeoutMs: 500 }],
    outlets: Array.from({ length: n }, (_, i) => ({
      id: `A${i + 1}`,
      name: `Bay ${i + 1}`,
      bus: 'lan',
      meter: { model: 'eastron-sdm120', unit: i + 1 },
      relay: { model: 'modbus-coil', unit: 100, coil: i },
      plan: 'standard',
    })),
    plans: PLANS,
    sessions: { pollMs: 250, graceSeconds: 30, minChargeA: 0.5, autoStartA: 0.5, noCurrentA: 0.1, noCurrentHoldMs: 750, meterFaultMs: 5000 },
    api: { listen: o.listen ?? '127.0.0.1:0', token: TOKEN },
    logging: { level: 'info' },
    ...(o.config ?? {}),
  })
  if (!checked.ok) throw new Error(`test config invalid: ${JSON.stringify(checked.problems)}`)
  const config = checked.config
  const logs: Record<string, unknown>[] = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) logs.push(JSON.parse(line) as Record<string, unknown>)
      cb()
    },
  })
  const logger = createLogger('info', sink)
  // The chart's history sampled every 250 ms, so a test need not wait 5 s for two samples.
  const { api: apiTuning, ...serviceRest } = o.service ?? {}
  const service = new Service({
    config,
    clock: systemClock,
    logger,
    version: '0.0.0-test',
    stopTimeoutMs: 5000,
    ...serviceRest,
    api: { chartSampleMs: 250, ...apiTuning },
  })
  await service.start()
  let stopped = false
  const stop = async (): Promise<void> => {
    if (stopped) return
    stopped = true
    await service.stop()
  }
  t.teardown(stop)
  const api = service.api!
  const port = () => api.address()?.port
  const site: ApiSite = {
    sim,
    service,
    daemon: service.daemon,
    api,
    config,
    dir,
    get base() {
      return `http://127.0.0.1:${port() ?? 0}`
    },
    logs,
    req(path, init = {}) {
      const { auth = true, ...rest } = init
      const headers = new Headers(rest.headers)
      if (auth !== false && !headers.has('authorization')) headers.set('authorization', `Bearer ${auth === true ? TOKEN : auth}`)
      return fetch(site.base + path, { redirect: 'manual', ...rest, headers })
    },
    async json(path, init) {
      const res = await site.req(path, init)
      const text = await res.text()
      let body: unknown = text
      try {
        body = JSON.parse(text)
      } catch {
        // not JSON: the text itself
      }
      return { status: res.status, body, res }
    },
    post(path, body, init = {}) {
      const headers = new Headers(init.headers)
      if (!headers.has('content-type')) headers.set('content-type', 'application/json')
      return site.json(path, { ...init, method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) })
    },
    command(body) {
      return service.daemon.gateway.handle({ id: `kit-${process.pid}-${++cmdSeq}`, ...body }, 'local')
    },
    async ready() {
      await waitFor(
        () => Object.values(service.daemon.engineState.outlets).every((e) => e.fresh && e.last !== null),
        'a first reading of every outlet',
        30_000,
      )
    },
    stop,
  }
  return site
}

/** Prometheus text → samples keyed `name{label="v",...}` (labels as written) → value. */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line)
    if (!m) throw new Error(`not a Prometheus sample line: ${JSON.stringify(line)}`)
    out.set(m[1]!, Number(m[2]))
  }
  return out
}
