/**
 * How Outpost's nodes reach the daemon: the bridge object Outpost's Node-RED process
 * is started with (daemon/nodered/child.ts, over the channel to the daemon; exposed as
 * RED.settings.outpost):
 *
 *   siteId, timezone            the site's config
 *   recordTypes                 every record type (the daemon's one list)
 *   outletIds()                 outlet ids in config order
 *   outlets()                   latest OutletStatus of every outlet that has one
 *   on(event, fn) -> off()      event: 'record' | 'status' | 'result'
 *   command(payload)            Promise<CommandResult>, through the command gateway (source 'node-red');
 *                               rate-limited past nodeRed.commandRate, unavailable while the channel is down
 *   bootRecord(nodeId)          this boot's gateway.started record, once per node id
 *
 * Outside Outpost (a stock Node-RED) there is no bridge: the node says so and does nothing.
 */
'use strict'

function bridgeOf(RED, node) {
  let bridge
  try {
    bridge = RED.settings.outpost
  } catch {
    bridge = undefined
  }
  if (bridge?.version !== 1) {
    node.status({ fill: 'red', shape: 'ring', text: 'not inside Outpost' })
    node.error('Outpost nodes run only in the Node-RED that `outpost run` (or its outpost-node-red unit) starts (RED.settings.outpost is missing)')
    return undefined
  }
  return bridge
}

/**
 * Every outlet status update, with the state the outlet was in before (null: first seen since
 * the node started) and whether the state changed (a new state, not just new power or energy).
 */
function watchStatuses(bridge, fn) {
  const last = new Map(bridge.outlets().map((s) => [s.outlet, s.state]))
  return bridge.on('status', (s) => {
    const previous = last.has(s.outlet) ? last.get(s.outlet) : null
    last.set(s.outlet, s.state)
    fn(s, previous, previous !== s.state)
  })
}

module.exports = { bridgeOf, watchStatuses }
