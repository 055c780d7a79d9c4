/**
 * The meter's serial number reaches the engine as data on its readings; the session that
 * starts records it (session.started and session.ended meterSerial), so a swapped meter shows.
 */
import t from 'tap'
import { oneMeterSite, Rig, VOLTS, WED_NOON } from './engine-fixtures.js'

function readWithSerial(r: Rig, outlet: string, amps: number, meterSerial?: string): void {
  r.advance(1000)
  r.meter[outlet]! += Math.round((amps * VOLTS * 1000) / 3600)
  r.apply({
    type: 'reading',
    outlet,
    reading: {
      ts: r.now,
      currentA: amps,
      powerW: amps * VOLTS,
      energyWh: r.meter[outlet]! / 1000,
      voltageV: VOLTS,
      ...(meterSerial !== undefined ? { meterSerial } : {}),
    },
  })
}

t.test('session.started and session.ended carry the serial the meter reported when the session started', async (t) => {
  const r = new Rig(oneMeterSite('abb-b21'), WED_NOON)
  r.boot()
  readWithSerial(r, 'A1', 0, '12345678')
  r.wallet('u-1', 10_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  t.equal(r.records('session.started')[0]!.meterSerial, '12345678')
  for (let i = 0; i < 5; i++) readWithSerial(r, 'A1', 16, '12345678')
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  t.equal(r.ended()[0]!.meterSerial, '12345678')

  // The meter was swapped (its readings now report another serial): the next session shows it.
  for (let i = 0; i < 3; i++) readWithSerial(r, 'A1', 0, '99990000')
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  t.equal(r.records('session.started')[1]!.meterSerial, '99990000')
  readWithSerial(r, 'A1', 16, '99990000')
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  t.equal(r.ended()[1]!.meterSerial, '99990000')

  // A meter that reports none (no serial register, or it did not answer): no field at all.
  for (let i = 0; i < 3; i++) readWithSerial(r, 'A1', 0)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  t.notOk('meterSerial' in r.records('session.started')[2]!)
  readWithSerial(r, 'A1', 16)
  r.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  t.notOk('meterSerial' in r.ended()[2]!)
})
