/**
 * `outpost run [--config FILE] [--listen HOST:PORT]`: validate the config, start the service (the
 * daemon, then the local API and Node-RED: daemon/service.ts), stop it cleanly on SIGTERM/SIGINT.
 *
 * Without a valid config (no file yet: the fresh install's service; or one the checks refuse) it
 * serves the first-run setup page on `--listen` (daemon/http/setup.ts) with nothing of the site
 * opened, and starts the site in this same process once a valid config is saved there.
 *
 * Exit 0 after a clean stop, 64 on a usage mistake, 1 on a fatal fault (systemd's Restart=always
 * brings it back; 78 is excluded from restarts by the unit).
 */
import { parseArgs } from 'node:util'
import { checkConfigText, loadConfigFile, formatProblem, type ConfigProblem } from '../config.js'
import { ConfigStore } from '../config-store.js'
import { configFile, EXIT_BROKEN, EXIT_OK, EXIT_USAGE, processIo, version, type Io } from '../cli-common.js'
import { Service } from '../service.js'
import { systemClock } from '../clock.js'
import { createLogger } from '../log.js'
import { SystemdNotifier } from '../systemd.js'
import { parseListen } from '../http/server.js'
import { DEFAULT_SETUP_LISTEN, SetupServer, setupCodeFile, type SetupState } from '../http/setup.js'
import type { SiteConfig } from '../../core/types.js'

const USAGE = 'Usage: outpost run [--config FILE] [--listen HOST:PORT]'

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  let file: string
  let listen: string
  try {
    const { values } = parseArgs({ args: argv, options: { config: { type: 'string', short: 'c' }, listen: { type: 'string' } }, strict: true })
    file = configFile(values.config)
    listen = values.listen ?? DEFAULT_SETUP_LISTEN
    parseListen(listen)
  } catch (err) {
    io.err(`outpost run: ${(err as Error).message.replace('api.listen', '--listen')}\n${USAGE}\n`)
    return EXIT_USAGE
  }
  const notify = new SystemdNotifier()
  // The bytes read once: what is validated is what the config store versions (its SHA-256).
  const found = await ConfigStore.load(file, systemClock.now).catch((err: NodeJS.ErrnoException) => err)
  const checked = found instanceof ConfigStore ? checkConfigText(found.current().text) : undefined
  let store: ConfigStore
  let config: SiteConfig
  // Who saved the config the site starts with: the setup page, journaled as config.applied at boot.
  let configBy: string | undefined
  if (found instanceof ConfigStore && checked?.ok) {
    store = found
    config = checked.config
  } else {
    const state: SetupState = !(found instanceof ConfigStore) && found.code === 'ENOENT' ? 'missing' : 'invalid'
    // An unreadable file (EACCES, a directory) says why as check-config does.
    const result = state === 'missing' ? undefined : (checked ?? loadConfigFile(file))
    const problems: ConfigProblem[] = result && !result.ok ? result.problems : []
    for (const p of problems) io.err(formatProblem(file, p) + '\n')
    store = found instanceof ConfigStore ? found : ConfigStore.absent(file, systemClock.now)
    const setup = await firstRun({ file, store, state, problems, listen, io, notify })
    if (typeof setup === 'number') return setup
    config = setup
    configBy = 'setup'
  }
  return runSite(config, store, io, notify, configBy)
}

/**
 * Serves the setup page until a valid config is saved (its config), or the process is told to
 * stop (exit 0), or the page cannot listen (exit 1, and systemd tries again).
 */
async function firstRun(o: {
  file: string
  store: ConfigStore
  state: SetupState
  problems: ConfigProblem[]
  listen: string
  io: Io
  notify: SystemdNotifier
}): Promise<SiteConfig | number> {
  const logger = createLogger('info')
  const setup = new SetupServer({ ...o, codeFile: setupCodeFile(o.store.file), logger, now: systemClock.now })
  try {
    await setup.start()
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    logger.fatal({ code: e.code, err: e.message, listen: o.listen }, 'setup: cannot listen')
    o.io.err(`outpost run: the setup page cannot listen on ${o.listen}: ${e.message}\n`)
    logger.flush()
    return EXIT_BROKEN
  }
  o.notify.ready(`setup: waiting for a valid config at ${setup.urls()[0]}`)
  let onSignal: (sig: NodeJS.Signals) => void = () => undefined
  const stopped = new Promise<number>((resolve) => {
    onSignal = (sig) => {
      logger.info({ signal: sig }, 'stopping (setup)')
      resolve(EXIT_OK)
    }
  })
  process.once('SIGTERM', onSignal)
  process.once('SIGINT', onSignal)
  let out = await Promise.race([setup.saved, stopped])
  await setup.stop()
  // A stop asked for while the setup page closed: carried out, the site is not started.
  out = await Promise.race([stopped, Promise.resolve(out)])
  process.off('SIGTERM', onSignal)
  process.off('SIGINT', onSignal)
  if (typeof out === 'number') o.notify.stopping()
  logger.flush()
  return out
}

async function runSite(config: SiteConfig, store: ConfigStore, io: Io, notify: SystemdNotifier, configBy?: string): Promise<number> {
  // A file size limit (ulimit -f, systemd's LimitFSIZE=) must surface as a write error (EFBIG),
  // which the journal turns into a fault: relays open, exit 1. Left at its default, SIGXFSZ
  // kills the process on the spot with every relay as it was.
  process.on('SIGXFSZ', () => undefined)
  const logger = createLogger(config.logging.level)
  const service = new Service({ config, clock: systemClock, logger, version, configStore: store, configBy })
  const daemon = service.daemon
  // Signals are ours from the start: a stop requested while starting (say, during the wait
  // for a bus that is down) is carried out cleanly once start() has returned, instead of
  // the default action killing the process halfway through boot.
  let signalled: NodeJS.Signals | undefined
  let onSignal = (sig: NodeJS.Signals): void => {
    if (signalled) return
    signalled = sig
    logger.info({ signal: sig }, 'stop requested while starting; stopping once started')
  }
  const handler = (sig: NodeJS.Signals): void => onSignal(sig)
  process.on('SIGTERM', handler)
  process.on('SIGINT', handler)
  try {
    await service.start()
  } catch (err) {
    const e = err as { code?: string; message: string }
    logger.fatal({ code: e.code, err: e.message }, 'cannot start')
    io.err(`outpost run: ${e.code ? e.code + ': ' : ''}${e.message}\n`)
    await service.stop().catch(() => undefined)
    logger.flush()
    return EXIT_BROKEN
  }
  if (!signalled) notify.ready(`charging ${config.outlets.length} outlets`)

  return new Promise<number>((resolve) => {
    let stopping = false
    const stop = (code: () => number): void => {
      if (stopping) return
      stopping = true
      notify.stopping()
      void service.stop().then(() => {
        logger.flush()
        resolve(code())
      })
    }
    onSignal = (sig) => {
      if (stopping) return
      logger.info({ signal: sig }, 'stopping')
      stop(() => (daemon.haltedBy ? 1 : EXIT_OK))
    }
    if (signalled) onSignal(signalled)
    // The journal cannot write: relays are already open; stop and let systemd restart us.
    daemon.once('halted', () => stop(() => 1))
    // The central system's Reset: a clean stop, exit 0; systemd's Restart=always starts the daemon again.
    daemon.once('reset', (kind) => {
      logger.info({ kind }, 'stopping for a reset from the central system')
      stop(() => (daemon.haltedBy ? 1 : EXIT_OK))
    })
    if (daemon.haltedBy) stop(() => 1)
  })
}
