/**
 * replayReadings: rebuilding the engine state after a process death from the
 * checkpoint and the readings journaled after it. The replayed state must be
 * the one the engine had (same billing), effects are discarded, a reading
 * already accounted for or of another session is skipped, the order is `now`
 * across outlets, and a reading whose replay would produce a record stops the
 * replay before it.
 */
import t from 'tap'
import { Rig, siteConfig, VOLTS, WED_NOON } from './engine-fixtures.js'
import { replayReadings, step, type EngineState, type ReplayReading } from '../daemon/engine/index.js'

/** Two sessions charging, with every reading fed after the "checkpoint" kept for the replay. */
function charging(): { r: Rig; checkpoint: EngineState; journaled: ReplayReading[] } {
  const r = new Rig(siteConfig(), WED_NOON)
  r.boot()
  r.run(1, {})
  r.wallet('u-1', 100_000)
  r.wallet('u-2', 100_000)
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  r.cmd({ action: 'start', outlet: 'A2', userId: 'u-2' })
  r.run(3, { A1: 16, A2: 10 })
  const checkpoint = r.state
  const journaled: ReplayReading[] = []
  for (let i = 0; i < 5; i++) {
    for (const [outlet, amps] of [
      ['A1', 16],
      ['A2', 10],
    ] as const) {
      r.advance(500)
      r.meter[outlet]! += Math.round((amps * VOLTS * 500) / 3600)
      const reading = { ts: r.now - 3, currentA: amps, powerW: amps * VOLTS, energyWh: r.meter[outlet]! / 1000, voltageV: VOLTS }
      const sessionId = r.state.outlets[outlet]!.session!.id
      r.apply({ type: 'reading', outlet, reading }) // stepped at now = ts + 3
      journaled.push({ outlet, sessionId, reading, now: r.now })
    }
  }
  return { r, checkpoint, journaled }
}

t.test('replaying the journaled readings from the checkpoint rebuilds the state the engine had', async (t) => {
  const { r, checkpoint, journaled } = charging()
  // The journal hands them back per session: out of `now` order across outlets.
  const perSession = [...journaled.filter((g) => g.outlet === 'A2'), ...journaled.filter((g) => g.outlet === 'A1')]
  const out = replayReadings(checkpoint, perSession)
  t.equal(out.stopped, null)
  t.equal(out.replayed, 10)
  t.same(out.state.outlets, r.state.outlets, 'every outlet entry as the engine had it (lines, window, last reading)')
  t.equal(out.state.outlets.A1!.session!.lastMWh, r.meter.A1, 'A1 accounted up to its last stepped reading')
  // Boot then bills exactly what the uninterrupted engine would have billed at that reading.
  const fromReplay = step(out.state, { type: 'boot', cleanShutdown: false, version: 't' }, r.now + 60_000)
  const fromLive = step(r.state, { type: 'boot', cleanShutdown: false, version: 't' }, r.now + 60_000)
  t.same(fromReplay.effects, fromLive.effects, 'the power-loss records are identical')
  // Without the replay, boot would have closed at the checkpoint: 2.5 s of 16 A less.
  const fromCheckpoint = step(checkpoint, { type: 'boot', cleanShutdown: false, version: 't' }, r.now + 60_000)
  t.not(JSON.stringify(fromCheckpoint.effects), JSON.stringify(fromLive.effects))

  const again = replayReadings(out.state, perSession)
  t.equal(again.replayed, 0, 'idempotent: a second replay (another crash during boot) steps nothing')
  t.equal(again.skipped, 10)
  t.equal(again.state, out.state, 'and returns the very same state')
})

t.test('readings of another session, of an outlet with none, or already accounted for are skipped', async (t) => {
  const { checkpoint, journaled } = charging()
  const first = journaled[0]!
  const out = replayReadings(checkpoint, [
    { ...first, sessionId: 'someone-else' },
    { ...first, reading: { ...first.reading, ts: checkpoint.outlets.A1!.session!.lastTs } },
    { ...first, outlet: 'nope' },
  ])
  t.same({ replayed: out.replayed, skipped: out.skipped, stopped: out.stopped }, { replayed: 0, skipped: 3, stopped: null })
  t.equal(out.state, checkpoint)
})

t.test('a reading whose replay would produce a record stops the replay before it', async (t) => {
  const { checkpoint, journaled } = charging()
  const a1 = journaled.filter((g) => g.outlet === 'A1')
  // The log says the current stopped long enough to end the session (unplugged): when first
  // stepped, that would have been a durable step with its record, so the checkpoint would be after it.
  const low = (i: number) => ({
    ...a1[1]!,
    reading: { ...a1[1]!.reading, ts: a1[1]!.reading.ts + i * 1000, currentA: 0, powerW: 0 },
    now: a1[1]!.now + i * 1000,
  })
  const list = [a1[0]!, a1[1]!, low(1), low(2), low(3), low(4)]
  const out = replayReadings(checkpoint, list)
  t.ok(out.stopped, 'stopped')
  t.match(out.stopped!.why, /replaying it would produce session\.ended/)
  t.equal(out.stopped!.outlet, 'A1')
  t.ok(out.replayed >= 3, `the readings before it were replayed (${out.replayed})`)
  t.ok(out.state.outlets.A1!.session, 'the session is still open in the state returned: boot closes it')
  t.equal(out.stopped!.ts, list[out.replayed]!.reading.ts, 'at the reading that would have produced it')
  t.same(out.state, replayReadings(checkpoint, list.slice(0, out.replayed)).state, 'the state returned is the one before that reading')
  const refused = replayReadings(checkpoint, [{ ...a1[0]!, now: NaN }])
  t.match(refused.stopped?.why, /the engine refused it/, 'a reading the engine refuses stops the replay too')
  t.equal(refused.state, checkpoint)
})
