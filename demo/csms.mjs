#!/usr/bin/env node
/**
 * A small OCPP 1.6J central system for the demo (`npm start -- --ocpp ws://127.0.0.1:9220/ocpp`):
 * ocpp-rpc's server in strict mode (every call checked against the official OCPP 1.6
 * schemas) that accepts the boot, authorizes every idTag but `blocked`, hands out
 * transaction ids and prints one line per message, with each transaction's energy.
 *
 * Owns: nothing of the gateway; it is the other side of the link, for trying it out.
 * Must never: be mistaken for a production central system (no storage, no billing).
 *
 *   node demo/csms.mjs [--port 9220] [--host 127.0.0.1]
 *
 * Needs the dev dependencies (ocpp-rpc), as `npm ci` in a clone installs them.
 */
import { parseArgs } from 'node:util'
import ocppRpc from 'ocpp-rpc'

const { RPCServer } = ocppRpc
const { values } = parseArgs({ options: { port: { type: 'string', default: '9220' }, host: { type: 'string', default: '127.0.0.1' } } })
const server = new RPCServer({ protocols: ['ocpp1.6'], strictMode: true })
const out = (s) => process.stdout.write(`${new Date().toISOString().slice(11, 19)}  ${s}\n`)
let nextTx = 1
const open = new Map()

server.on('client', (client) => {
  out(`${client.identity} connected (subprotocol ${client.protocol})`)
  client.on('strictValidationFailure', (e) => out(`STRICT-MODE VIOLATION ${e.method}: ${e.error.message}`))
  client.on('close', () => out(`${client.identity} disconnected`))
  client.handle('BootNotification', ({ params }) => {
    out(`BootNotification ${params.chargePointVendor} ${params.chargePointModel} ${params.firmwareVersion ?? ''}: Accepted`)
    return { status: 'Accepted', interval: 60, currentTime: new Date().toISOString() }
  })
  client.handle('Heartbeat', () => ({ currentTime: new Date().toISOString() }))
  client.handle('StatusNotification', ({ params }) => {
    out(`StatusNotification connector ${params.connectorId}: ${params.status}${params.errorCode !== 'NoError' ? ` (${params.errorCode})` : ''}`)
    return {}
  })
  const tagStatus = (idTag) => (idTag === 'blocked' ? 'Blocked' : 'Accepted')
  client.handle('Authorize', ({ params }) => {
    out(`Authorize ${params.idTag}: ${tagStatus(params.idTag)}`)
    return { idTagInfo: { status: tagStatus(params.idTag) } }
  })
  client.handle('StartTransaction', ({ params }) => {
    const transactionId = nextTx++
    open.set(transactionId, params)
    out(`StartTransaction #${transactionId} connector ${params.connectorId} ${params.idTag}, meter at ${params.meterStart} Wh (${params.timestamp})`)
    return { transactionId, idTagInfo: { status: tagStatus(params.idTag) } }
  })
  client.handle('MeterValues', ({ params }) => {
    const v = Object.fromEntries(params.meterValue[0].sampledValue.map((s) => [s.measurand, `${s.value} ${s.unit}`]))
    out(`MeterValues #${params.transactionId ?? '-'} connector ${params.connectorId}: ${v['Power.Active.Import'] ?? ''} ${v['Current.Import'] ?? ''}`)
    return {}
  })
  client.handle('StopTransaction', ({ params }) => {
    const start = open.get(params.transactionId)
    open.delete(params.transactionId)
    const wh = start ? params.meterStop - start.meterStart : '?'
    out(`StopTransaction #${params.transactionId} ${params.reason ?? 'Local'}: ${wh} Wh`)
    return { idTagInfo: { status: 'Accepted' } }
  })
})

const http = await server.listen(Number(values.port), values.host)
const { port } = http.address()
out(`central system listening on ws://${values.host}:${port}/ocpp   (npm start -- --ocpp ws://${values.host}:${port}/ocpp)`)
const stop = () => void server.close({ force: true }).then(() => process.exit(0))
process.once('SIGINT', stop)
process.once('SIGTERM', stop)
