/**
 * The running site as `outpost run` and the demo compose it: the Daemon (journal,
 * buses, engine, uplink), then the local HTTP API (if `api` is configured), then
 * Node-RED (if `nodeRed.enabled`: its own process, proxied by the API's server). Stopped in
 * reverse order.
 *
 * Charging never depends on the extras: a local API that cannot bind logs and
 * retries (server.ts), a Node-RED that fails to start is logged and left out. Only
 * the Daemon's own start can fail the service.
 */
import type { SiteConfig } from '../core/types.js'
import type { Clock } from './clock.js'
import type { Logger } from './log.js'
import { Daemon } from './daemon.js'
import { LocalApi, type LocalApiOptions } from './http/index.js'
import type { ConfigStore } from './config-store.js'
import { describeChanges } from './config-changes.js'
import { effectiveConfig } from './config.js'
import { startNodeRed as realStartNodeRed, type NodeRedHandle, type NodeRedOptions } from './nodered/index.js'

export interface ServiceOptions {
  config: SiteConfig
  clock: Clock
  logger: Logger
  version: string
  stopTimeoutMs?: number
  /** Local API tuning: `anyPortIfTaken` (the demo), `retryMs`, `snapshotMs`, `chartSampleMs` (tests). */
  api?: Partial<Pick<LocalApiOptions, 'anyPortIfTaken' | 'retryMs' | 'snapshotMs' | 'chartSampleMs'>>
  /** The config file the daemon runs (outpost run): its version is journaled, and the API's config routes save through it. */
  configStore?: ConfigStore
  /** Who saved the config it starts with (`setup`: the first-run page), journaled as `config.applied.who` at boot. */
  configBy?: string
  /** Node-RED's starter (tests give their own; the default is daemon/nodered). */
  startNodeRed?: (opts: NodeRedOptions) => Promise<NodeRedHandle>
}

export class Service {
  readonly daemon: Daemon
  api: LocalApi | undefined
  nodeRed: NodeRedHandle | undefined

  constructor(private readonly opts: ServiceOptions) {
    this.daemon = new Daemon({
      config: opts.config,
      clock: opts.clock,
      logger: opts.logger,
      version: opts.version,
      stopTimeoutMs: opts.stopTimeoutMs,
      ...(opts.configStore ? configOptions(opts.configStore) : {}),
      ...(opts.configBy ? { configBy: opts.configBy } : {}),
    })
  }

  /** Starts the daemon (throws if it cannot), then the extras (which never throw). */
  async start(): Promise<void> {
    const { config, logger } = this.opts
    await this.daemon.start()
    if (!config.api) {
      logger.info('no api configured: no local HTTP API, status page or metrics')
      if (config.nodeRed?.enabled) logger.error('nodeRed.enabled needs the local API (api) to serve the editor: Node-RED not started')
      return
    }
    this.api = new LocalApi({
      ...this.opts.api,
      daemon: this.daemon,
      config: config.api,
      logger,
      now: () => this.opts.clock.now(),
      configStore: this.opts.configStore,
    })
    await this.api.start()
    if (config.nodeRed?.enabled) await this.startNodeRed(this.api)
  }

  private async startNodeRed(api: LocalApi): Promise<void> {
    const { config, logger } = this.opts
    const start = this.opts.startNodeRed ?? realStartNodeRed
    try {
      const handle = await start({
        daemon: this.daemon,
        config,
        server: api.server,
        logger,
        clock: this.opts.clock,
        configFile: this.opts.configStore?.file,
      })
      api.mount(handle.adminRoot, handle.admin)
      if (handle.node && handle.nodeRoot) api.mount(handle.nodeRoot, handle.node, { token: true })
      this.nodeRed = handle
      logger.info({ adminRoot: handle.adminRoot, nodeRoot: handle.nodeRoot ?? null }, 'node-red started')
    } catch (err) {
      const e = err as { code?: string; message?: string }
      logger.error({ code: e.code, err: e.message ?? String(err) }, 'node-red did not start; charging continues without it')
    }
  }

  /** Node-RED, then the API, then the daemon (the clean stop of docs/daemon.md). */
  async stop(): Promise<void> {
    const { logger } = this.opts
    if (this.nodeRed) await this.nodeRed.stop().catch((err: unknown) => logger.error({ err: (err as Error).message }, 'node-red stop failed'))
    this.nodeRed = undefined
    await this.api?.stop().catch((err: unknown) => logger.error({ err: (err as Error).message }, 'local API stop failed'))
    await this.daemon.stop()
  }
}

/** The daemon's view of the config file: its version, and what changed since an earlier one still kept. */
function configOptions(store: ConfigStore): { configHash: string; changedSince: (previous: string) => Promise<string[]> } {
  const { text, version } = store.current()
  return {
    configHash: version,
    changedSince: async (previous) => {
      const old = await store.read(previous).catch(() => undefined)
      return old === undefined ? [''] : describeChanges(effectiveConfig(old), effectiveConfig(text)).map((c) => c.pointer)
    },
  }
}
