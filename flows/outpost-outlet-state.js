/**
 * outpost-outlet-state: the current state of one outlet (payload: OutletStatus, or null before
 * its first reading) or of all outlets (payload: array), on every input message and, with
 * "on change", whenever an outlet's state changes.
 */
'use strict'

const { bridgeOf, watchStatuses } = require('./lib/bridge.js')

module.exports = (RED) => {
  function OutpostOutletStateNode(config) {
    RED.nodes.createNode(this, config)
    const bridge = bridgeOf(RED, this)
    if (!bridge) return
    const configured = typeof config.outlet === 'string' ? config.outlet.trim() : ''

    /** Fills msg for one outlet (id) or all (''); returns an error text for an unknown outlet. */
    const fill = (msg, id) => {
      if (id === '') {
        msg.topic = 'outlets'
        msg.payload = bridge.outlets()
        return undefined
      }
      if (!bridge.outletIds().includes(id)) return `unknown outlet "${id}" (outlets: ${bridge.outletIds().join(', ')})`
      msg.topic = id
      msg.outlet = id
      msg.payload = bridge.outlets().find((s) => s.outlet === id) ?? null
      return undefined
    }
    const show = (msg) => {
      const text = Array.isArray(msg.payload)
        ? `${msg.payload.length} outlets`
        : msg.payload
          ? `${msg.payload.outlet}: ${msg.payload.state}`
          : 'no reading yet'
      this.status({ fill: 'blue', shape: 'dot', text })
    }

    this.on('input', (msg, send, done) => {
      const asked = configured || (typeof msg.outlet === 'string' ? msg.outlet : '')
      const err = fill(msg, asked)
      if (err) {
        this.status({ fill: 'red', shape: 'ring', text: err })
        done(err)
        return
      }
      show(msg)
      send(msg)
      done()
    })

    if (config.onChange) {
      if (configured && !bridge.outletIds().includes(configured)) {
        this.error(`unknown outlet "${configured}" (outlets: ${bridge.outletIds().join(', ')})`)
        return
      }
      const off = watchStatuses(bridge, (s, previous, changed) => {
        if (!changed || (configured && s.outlet !== configured)) return
        const msg = { changed: s.outlet, previous }
        fill(msg, configured)
        show(msg)
        this.send(msg)
      })
      this.on('close', off)
    }
  }
  RED.nodes.registerType('outpost-outlet-state', OutpostOutletStateNode)
}
