/**
 * `outpost run [--config FILE]`: validate the config, start the service (the daemon,
 * then the local API and Node-RED: daemon/service.ts), stop it cleanly on
 * SIGTERM/SIGINT. Exit 0 after a clean stop, 78 on an invalid config, 1 on a fatal fault (systemd's Restart=always brings it back; 78 is excluded
 * from restarts by the unit so an invalid config does not restart-loop).
 */
import { parseArgs } from 'node:util'
import { checkConfigText, loadConfigFile, formatProblem } from '../config.js'
import { ConfigStore } from '../config-store.js'
import { configFile, EXIT_BROKEN, EXIT_CONFIG, EXIT_OK, EXIT_USAGE, processIo, version, type Io } from '../cli-common.js'
import { Service } from '../service.js'
import { systemClock } from '../clock.js'
import { createLogger } from '../log.js'
import { SystemdNotifier } from '../systemd.js'

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  let file: string
  try {
    const { values } = parseArgs({ args: argv, options: { config: { type: 'string', short: 'c' } }, strict: true })
    file = configFile(values.config)
  } catch (err) {
    io.err(`outpost run: ${(err as Error).message}\nUsage: outpost run [--config FILE]\n`)
    return EXIT_USAGE
  }
  // The bytes read once: what is validated is what the config store versions (its SHA-256).
  const store = await ConfigStore.load(file, systemClock.now).catch(() => undefined)
  const loaded = store ? checkConfigText(store.current().text) : loadConfigFile(file)
  if (!loaded.ok) {
    for (const p of loaded.problems) io.err(formatProblem(file, p) + '\n')
    return EXIT_CONFIG
  }
  const config = loaded.config
  // A file size limit (ulimit -f, systemd's LimitFSIZE=) must surface as a write error (EFBIG),
  // which the journal turns into a fault: relays open, exit 1. Left at its default, SIGXFSZ
  // kills the process on the spot with every relay as it was.
  process.on('SIGXFSZ', () => undefined)
  const logger = createLogger(config.logging.level)
  const notify = new SystemdNotifier()
  const service = new Service({ config, clock: systemClock, logger, version, configStore: store })
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
