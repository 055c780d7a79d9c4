/**
 * outpost-command: msg.payload {action, outlet, userId | by | available, id?} goes through
 * the daemon's command gateway (source "node-red": the same validation, at-most-once per id
 * and journal as the cloud's commands); the CommandResult comes out on msg.payload.
 * An invalid command is reported with node.error (a Catch node sees it) and the node's status.
 */
'use strict'

const { bridgeOf } = require('./lib/bridge.js')

/** Codes that mean the flow is wrong (or Outpost is), not that the site said no. */
const FLOW_ERRORS = new Set(['invalid-command', 'internal', 'unavailable'])

module.exports = (RED) => {
  function OutpostCommandNode(config) {
    RED.nodes.createNode(this, config)
    const bridge = bridgeOf(RED, this)
    if (!bridge) return
    this.on('input', (msg, send, done) => {
      const p = msg.payload
      const what = p && typeof p === 'object' ? `${p.action ?? '?'}${p.outlet ? ' ' + p.outlet : ''}` : typeof p
      bridge.command(p).then(
        (result) => {
          msg.payload = result
          if (result.ok) {
            this.status({ fill: 'green', shape: 'dot', text: `${what}: ok` })
            send(msg)
            done()
            return
          }
          const { code, message } = result.error
          this.status({ fill: FLOW_ERRORS.has(code) ? 'red' : 'yellow', shape: 'ring', text: `${what}: ${code}` })
          send(msg)
          if (FLOW_ERRORS.has(code)) done(`${code}: ${message}`)
          else done()
        },
        (err) => {
          this.status({ fill: 'red', shape: 'ring', text: 'failed' })
          done(err)
        },
      )
    })
  }
  RED.nodes.registerType('outpost-command', OutpostCommandNode)
}
