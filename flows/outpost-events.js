/**
 * outpost-events: the daemon's journal records and outlet status changes as messages.
 * Records: topic = record type, payload = the record (a copy), msg.outlet when it has one.
 * Statuses: topic = "outlet.status", payload = the OutletStatus, msg.outlet, msg.previous (the state before).
 */
'use strict'

const { bridgeOf, watchStatuses } = require('./lib/bridge.js')

module.exports = (RED) => {
  function OutpostEventsNode(config) {
    RED.nodes.createNode(this, config)
    const bridge = bridgeOf(RED, this)
    if (!bridge) return
    const all = bridge.recordTypes
    const types = new Set(Array.isArray(config.types) ? config.types.filter((t) => all.includes(t)) : all)
    const outlet = typeof config.outlet === 'string' ? config.outlet.trim() : ''
    const statuses = ['none', 'changes', 'all'].includes(config.statuses) ? config.statuses : 'changes'
    if (outlet && !bridge.outletIds().includes(outlet)) {
      this.status({ fill: 'red', shape: 'ring', text: `unknown outlet ${outlet}` })
      this.error(`unknown outlet "${outlet}" (outlets: ${bridge.outletIds().join(', ')})`)
      return
    }
    const wanted = (id) => !outlet || id === outlet
    let sent = 0
    const emit = (msg) => {
      sent++
      this.status({ fill: 'green', shape: 'dot', text: `${msg.topic} (${sent})` })
      this.send(msg)
    }
    const offs = []
    offs.push(
      bridge.on('record', (r) => {
        if (!types.has(r.type)) return
        if (r.outlet !== undefined ? !wanted(r.outlet) : outlet !== '') return
        emit({ topic: r.type, payload: r, ...(r.outlet !== undefined ? { outlet: r.outlet } : {}) })
      }),
    )
    if (statuses !== 'none') {
      offs.push(
        // "changes" means a change of state, not of power or energy.
        watchStatuses(bridge, (s, previous, changed) => {
          if (!wanted(s.outlet) || (statuses === 'changes' && !changed)) return
          emit({ topic: 'outlet.status', payload: s, outlet: s.outlet, previous })
        }),
      )
    }
    // gateway.started is journaled before Node-RED starts: each node gets this boot's one once.
    if (types.has('gateway.started') && outlet === '') {
      const boot = bridge.bootRecord(this.id)
      if (boot) setImmediate(() => emit({ topic: boot.type, payload: boot }))
    }
    this.status({ fill: 'grey', shape: 'ring', text: 'listening' })
    this.on('close', () => {
      for (const off of offs) off()
    })
  }
  RED.nodes.registerType('outpost-events', OutpostEventsNode)
}
