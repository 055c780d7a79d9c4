import t from 'tap'
import { openSite } from '../drivers/site.js'
import { encodeLine, parseLine } from '../drivers/line-protocol.js'
import { crc16Hex } from '../drivers/crc.js'
import { startChild, PY, fixtures, siteConfig, ptyPair, type Child } from './fixtures/drivers-helpers.js'
import { join } from 'node:path'

const now = (): number => 1_700_000_000_000

t.test('line protocol: encoding, checksum and rejection of malformed lines', async (t) => {
  t.equal(crc16Hex('123456789'), '4B37', 'CRC-16/MODBUS check value')
  const q = encodeLine({ type: 'Q', addr: 1 })
  t.match(q, /^Q,1\*[0-9A-F]{4}\r\n$/)
  t.same(parseLine(q.trimEnd()), { kind: 'ok', message: { type: 'Q', addr: 1 } })
  const d = encodeLine({ type: 'D', addr: 3, relayClosed: true, voltageV: 230.5, currentA: 8.25, powerW: 1901.625, energyWh: 12345.5 })
  t.equal(d.slice(0, d.indexOf('*')), 'D,3,1,230.5,8.25,1901.625,12345.5')
  t.same(parseLine(d.replace('\r\n', '')), {
    kind: 'ok',
    message: { type: 'D', addr: 3, relayClosed: true, voltageV: 230.5, currentA: 8.25, powerW: 1901.625, energyWh: 12345.5 },
  })
  t.same(parseLine(d.replace('230.5', '230.6').trimEnd()), { kind: 'checksum' }, 'one changed digit fails the checksum')
  t.same(parseLine('D,3,1,230.5'), { kind: 'garbage' }, 'no checksum')
  t.same(parseLine('hello*ZZZZ'), { kind: 'garbage' })
  const bogus = 'X,1'
  t.same(parseLine(`${bogus}*${crc16Hex(bogus)}`), { kind: 'garbage' }, 'valid checksum, unknown message')
  const far = 'Q,300'
  t.same(parseLine(`${far}*${crc16Hex(far)}`), { kind: 'garbage' }, 'address out of range')
  t.same(parseLine('\r'), { kind: 'empty' })
})

t.test('serial outlets over a pty through the real serialport: read, switch, faults rejected and counted', async (t) => {
  const pair = await ptyPair()
  t.teardown(() => pair.close())
  const ctl: Child = startChild(PY, [join(fixtures, 'serial_outlet.py'), pair.b])
  t.teardown(() => ctl.kill())
  await ctl.waitLine((l) => l === 'READY')
  const fault = async (addr: number, kind: string): Promise<void> => {
    const tag = `OK fault ${addr} ${kind}`
    const before = ctl.lines.filter((l) => l === tag).length
    ctl.proc.stdin!.write(`fault ${addr} ${kind}\n`)
    await ctl.waitLine(() => ctl.lines.filter((l) => l === tag).length > before)
  }
  const outlets = [1, 2, 3, 4].map((n) => ({
    id: `S${n}`,
    bus: 'ser',
    meter: { model: 'outpost-serial', unit: n },
    relay: { model: 'outpost-serial', unit: n },
    plan: 'p',
  }))
  const cfg = siteConfig([{ id: 'ser', type: 'serial', path: pair.a, baudRate: 9600, timeoutMs: 1000, retries: 1 }], outlets)
  const site = await openSite(cfg, { now, scheduler: { backoffAfter: 100 } })
  t.teardown(() => site.close())
  await site.bus('ser').scheduler.waitOpen(20_000)

  t.same(await site.outlet('S1').read(), { ts: now(), voltageV: 230.5, currentA: 0, powerW: 0, energyWh: 1000.5 })
  await site.outlet('S2').setRelay(true)
  t.equal(await site.outlet('S2').readRelay(), true)
  const r2 = await site.outlet('S2').read()
  t.equal(r2.currentA, 8.25)
  t.equal(r2.powerW, 1901.62)
  t.ok(r2.energyWh > 2001, 'energy grows while closed')

  await fault(3, 'badsum')
  await t.rejects(site.outlet('S3').read(), { code: 'SERIAL_CHECKSUM' })
  await fault(3, 'garbage')
  await t.rejects(site.outlet('S3').read(), { code: 'SERIAL_GARBAGE' })
  await fault(3, 'partial')
  await t.rejects(site.outlet('S3').read(), { code: 'SERIAL_GARBAGE' })
  await fault(3, 'silent')
  await t.rejects(site.outlet('S3').read(), { code: 'SERIAL_TIMEOUT' })
  await fault(3, 'error')
  await t.rejects(site.outlet('S3').read(), { code: 'SERIAL_DEVICE_ERROR' })
  await fault(4, 'stuck')
  await t.rejects(site.outlet('S4').setRelay(true), { code: 'RELAY_MISMATCH' })
  // The others were served throughout, and still are.
  t.same(await site.outlet('S1').read(), { ts: now(), voltageV: 230.5, currentA: 0, powerW: 0, energyWh: 1000.5 })
  await fault(3, 'none')
  t.equal((await site.outlet('S3').read()).voltageV, 230.5)
  await site.outlet('S2').setRelay(false)
  t.equal((await site.outlet('S2').read()).currentA, 0)

  const h = site.health()[0]!
  t.ok(h.crcErrors >= 2, 'bad checksums counted')
  t.ok(h.garbage >= 4, 'garbage counted')
  t.ok(h.timeouts >= 2, 'timeouts counted')
  t.equal(h.devices.find((d) => d.unit === 3)?.lastOkTs, now())
  t.equal(h.state, 'open')
})
