/**
 * End to end, the built daemon with an ABB B21 on an independent Modbus peer (registers
 * encoded by the test from ABB's published map) and a real mosquitto: the serial number the
 * meter reports goes into session.started, session.ended and the signed OCMF's MS; a meter
 * swapped while silent shows in the next session.
 */
import t from 'tap'
import { startMosquitto } from './helpers/mosquitto.js'
import { isEnded, isStarted, startCloud, startDaemon, tempDir, waitFor, writeSiteConfig, type Started } from './helpers/e2e-kit.js'
import { roadLabsVerifies, opensslVerifies } from './helpers/ocmf-check.js'
import { startRegisterPeer, type PeerEntry } from './fixtures/drivers-helpers.js'
import { runCli } from './helpers/cli.js'

const zeros = (address: number, n: number): PeerEntry => [address, 'words', new Array<number>(n).fill(0)]

t.test('the meter-reported serial number in the records and the OCMF; a swapped meter shows', async (t) => {
  const broker = await startMosquitto(t)
  const dir = tempDir(t)
  // ABB B21 (ABB B-series manual via mbmd abb.go and Victron abb.py): FC03, big-endian; no car draws.
  const peer = await startRegisterPeer(
    {
      units: {
        1: {
          hr: [
            zeros(0x5000, 8),
            [0x5000, '>Q', 4200], // 42.00 kWh import
            zeros(0x5b00, 0x3e),
            [0x5b00, '>I', 2304],
            [0x5b2c, '>H', 5000],
            [0x8900, '>I', 12345678],
            zeros(0x8960, 6),
            [0x8960, 'text', 'B21 '],
          ],
        },
      },
    },
    { tcp: true },
  )
  t.teardown(() => peer.kill())
  const config = writeSiteConfig({
    dir,
    port: peer.port,
    outlets: 0,
    brokerUrl: broker.url,
    extraOutlets: [{ id: 'B1', bus: 'site', meter: { model: 'abb-b21', unit: 1 }, plan: 'standard' }],
  })
  const cloud = await startCloud(t, broker.url, dir)
  startDaemon(t, config)
  await cloud.waitRecord((r) => r.type === 'gateway.started', 'gateway.started')
  const pem = runCli(['key', '--config', config]).stdout
  t.ok((await cloud.command({ action: 'set-wallet', userId: 'u-1', currency: 'CAD', balance: 10_000 })).ok)

  const r1 = await cloud.start('B1', 'u-1')
  t.ok(r1.ok, JSON.stringify(r1))
  const s1 = (await cloud.waitRecord(isStarted('B1'), 'the first session.started')) as Started
  t.equal(s1.meterSerial, '12345678', 'session.started names the meter by its own serial')
  t.equal(s1.meterWh, 42_000)
  // No car draws: the session ends when the grace runs out.
  const e1 = await cloud.waitRecord(isEnded(s1.sessionId), 'the first session ends')
  t.equal(e1.meterSerial, '12345678')
  t.ok(opensslVerifies(e1.ocmf!, pem), 'openssl verifies its OCMF')
  const v1 = await roadLabsVerifies(e1.ocmf!, pem)
  t.ok(v1.verified, '@road-labs/ocmf verifies it')
  t.match(v1.payload, { MV: 'ABB', MM: 'abb-b21', MS: '12345678' })

  // The meter is swapped while the bus is silent: a new serial, the counter from a new base.
  await peer.silence(1, true)
  await cloud.waitRecord((r) => r.type === 'outlet.fault' && r.outlet === 'B1', 'the silent meter faults')
  await peer.set(1, 'hr', [0x8900, '>I', 99990000])
  await peer.set(1, 'hr', [0x5000, '>Q', 7])
  await peer.silence(1, false)
  await cloud.waitRecord((r) => r.type === 'outlet.recovered' && r.outlet === 'B1', 'the new meter answers')
  const r2 = await cloud.start('B1', 'u-1')
  t.ok(r2.ok, JSON.stringify(r2))
  const s2 = await waitFor(() => cloud.records().filter((r): r is Started => isStarted('B1')(r))[1], 'the second session.started')
  t.equal(s2.meterSerial, '99990000', 'the swapped meter shows')
  const e2 = await cloud.waitRecord(isEnded(s2.sessionId), 'the second session ends')
  t.match((await roadLabsVerifies(e2.ocmf!, pem)).payload, { MS: '99990000' })
})
