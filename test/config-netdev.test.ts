/**
 * Site config for network devices: a Shelly or Tasmota bus, outlets on it by
 * channel, and every mistake named by its JSON pointer.
 */
import t from 'tap'
import { validateConfig } from '../daemon/config.js'
import { type RejectCase, testRejections } from './helpers/config-cases.js'

const PLAN = {
  id: 'p',
  currency: 'CAD',
  periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 1 }],
}

function base(): any {
  return {
    site: { id: 's', timezone: 'UTC' },
    storage: { dir: '/var/lib/outpost' },
    buses: [
      { id: 'rs485', type: 'modbus-tcp', host: '127.0.0.1' },
      { id: 'garage', type: 'shelly', host: '192.0.2.10', passwordFile: '/etc/outpost/garage.pw' },
      { id: 'plug', type: 'tasmota', host: 'plug-1.local' },
      { id: 'pro-em', type: 'shelly', host: '192.0.2.11' },
    ],
    outlets: [
      { id: 'M1', bus: 'rs485', meter: { model: 'eastron-sdm120', unit: 1 }, relay: { model: 'modbus-coil', unit: 100, coil: 0 }, plan: 'p' },
      { id: 'G1', bus: 'garage', meter: { model: 'shelly-switch' }, relay: { model: 'shelly-switch' }, plan: 'p' },
      { id: 'G2', bus: 'garage', meter: { model: 'shelly-switch', channel: 1 }, relay: { model: 'shelly-switch', channel: 1 }, plan: 'p' },
      { id: 'T1', bus: 'plug', meter: { model: 'tasmota' }, relay: { model: 'tasmota' }, plan: 'p' },
      { id: 'E1', bus: 'pro-em', meter: { model: 'shelly-em1' }, relay: { model: 'shelly-switch' }, plan: 'p' },
    ],
    plans: [PLAN],
  }
}

t.test('a site with Shelly and Tasmota devices validates, with their defaults', async (t) => {
  const r = validateConfig(base())
  t.ok(r.ok, JSON.stringify(!r.ok && r.problems))
  if (!r.ok) return
  const [, sh, ta] = r.config.buses
  t.match(sh, { type: 'shelly', port: 80, timeoutMs: 2000, retries: 1, autoOffS: 60, notify: true })
  t.match(ta, { type: 'tasmota', port: 80, user: 'admin', timeoutMs: 2000, retries: 1, autoOffS: 60 })
})

const cases: RejectCase[] = [
  ['an unknown bus type', (c) => (c.buses[1].type = 'shelly-gen1'), '/buses/1/type', /"shelly", "tasmota"/],
  ['a Shelly without a host', (c) => delete c.buses[1].host, '/buses/1/host', /is required/],
  ['a host with a path in it', (c) => (c.buses[2].host = 'http://plug/cm'), '/buses/2/host', /must be a host name or an IP address alone/],
  ['an auto-off too short to re-arm', (c) => (c.buses[1].autoOffS = 1), '/buses/1/autoOffS', /must be >= 3/],
  [
    'a Modbus meter on a Shelly',
    (c) => (c.outlets[1].meter.model = 'eastron-sdm120'),
    '/outlets/1/meter/model',
    /speaks modbus but the outlet's bus is a shelly device \(meter models for it: shelly-em1, shelly-pm1, shelly-switch\)/,
  ],
  [
    'a Tasmota model on a Shelly',
    (c) => (c.outlets[1].relay.model = 'tasmota'),
    '/outlets/1/relay/model',
    /speaks tasmota-http but the outlet's bus is a shelly device/,
  ],
  [
    'a Shelly model on a Modbus bus',
    (c) => (c.outlets[0].meter.model = 'shelly-pm1'),
    '/outlets/0/meter/model',
    /speaks shelly-rpc but the outlet's bus is Modbus/,
  ],
  ['a unit on a network device', (c) => (c.outlets[3].meter.unit = 1), '/outlets/3/meter/unit', /on a tasmota device use channel/],
  ['a coil on a network device', (c) => (c.outlets[1].relay.coil = 0), '/outlets/1/relay/coil', /on a shelly device use channel/],
  ['a channel on a Modbus bus', (c) => (c.outlets[0].meter.channel = 0), '/outlets/0/meter/channel', /on this bus use unit/],
  ['a Modbus meter without its unit', (c) => delete c.outlets[0].meter.unit, '/outlets/0/meter/unit', /is required/],
  [
    'two outlets on one Shelly channel',
    (c) => (c.outlets[2].meter.channel = 0),
    '/outlets/2/meter/channel',
    /the meter channel 0 of device "garage" is already \/outlets\/1's/,
  ],
  [
    'two outlets on the default channel',
    (c) => delete c.outlets[2].relay.channel,
    '/outlets/2/relay',
    /the relay channel 0 of device "garage" is already \/outlets\/1's/,
  ],
  ['a channel out of range', (c) => (c.outlets[1].meter.channel = 16), '/outlets/1/meter/channel', /must be <= 15/],
  ['a PM Mini as a relay', (c) => (c.outlets[4].relay.model = 'shelly-pm1'), '/outlets/4/relay/model', /unknown relay model "shelly-pm1"/],
  [
    'a feeder meter on a network device',
    (c) => (c.circuits = [{ id: 'main', maxA: 63, meter: { bus: 'garage', model: 'shelly-switch', unit: 1 } }]),
    '/circuits/0/meter/bus',
    /a feeder meter must be on a Modbus bus; "garage" is a shelly device/,
  ],
]

testRejections(cases, base)
