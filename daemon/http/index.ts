/** The local HTTP API, the status page and /metrics. See README "Status page and local API". */
export { LocalApi, parseListen, DEFAULT_LISTEN, type LocalApiOptions } from './server.js'
export { COMMAND_STATUS, MAX_BODY_BYTES } from './routes.js'
export { SESSION_COOKIE, TokenAuth, sameSecret } from './auth.js'
export { Metrics } from './metrics.js'
export { RecentSessions } from './sessions.js'
