/**
 * Full disk and I/O errors while the engine is charging, with a driver that
 * does what the daemon must: carry out relay closes only after the commit
 * resolved, and on a journal fault open every relay and stop. Checks: charging
 * stops (every relay open, none closed again), the fault is reported once with
 * its cause, nothing already committed is damaged, and after a restart the
 * session is closed at its last journaled reading and the chain continues.
 */
import t from 'tap'
import { Journal, verifyRecords } from '../daemon/journal/index.js'
import { initialState, step, type EngineState, type Effect } from '../daemon/engine/index.js'
import type { OutpostError } from '../daemon/errors.js'
import { PowerCutLevel, StorageFault } from './fixtures/power-cut-level.js'
import { reading } from './fixtures/engine-site.js'
import { siteConfig } from './fixtures/engine-site-config.js'

const faults: [string, StorageFault][] = [
  ['full disk', new StorageFault('LEVEL_IO_ERROR', 'IO error: /var/lib/outpost/journal/000012.log: No space left on device')],
  ['I/O error', new StorageFault('LEVEL_IO_ERROR', 'IO error: /var/lib/outpost/journal/000012.log: Input/output error')],
]

for (const [name, fault] of faults) {
  t.test(`${name} while charging: every relay opens, the fault is reported, nothing committed is damaged`, async (t) => {
    const config = siteConfig()
    const db = new PowerCutLevel()
    await db.open()
    let now = Date.UTC(2026, 2, 3, 20, 0, 0) // a Tuesday evening: both plans available
    const relays = new Map<string, boolean>(config.outlets.map((o) => [o.id, false]))
    const reported: OutpostError[] = []
    let stopped = false

    const open = async (bootId: string): Promise<Journal> => {
      const j = await Journal.open('faults', { bootId, clockSynced: () => true, now: () => now, compactEveryMs: 0, readingSyncMs: 50, db })
      j.onFault((e) => {
        reported.push(e)
        // The daemon's answer: open every relay (the safe direction needs no journal), stop starting sessions.
        for (const id of relays.keys()) relays.set(id, false)
        stopped = true
      })
      return j
    }
    let journal = await open('run-1')
    let state: EngineState = initialState(config)
    const drive = async (event: Parameters<typeof step>[1], read?: { outlet: string; reading: ReturnType<typeof reading> }): Promise<Effect[]> => {
      const r = step(state, event, now)
      for (const e of r.effects) if (e.type === 'relay' && !e.closed) relays.set(e.outlet, false)
      const session = read ? r.state.outlets[read.outlet]?.session : null
      await journal.commit({
        records: r.effects.flatMap((e) => (e.type === 'record' ? [e.record] : [])),
        state: r.state,
        commandResults: r.effects.flatMap((e) => (e.type === 'result' ? [{ id: e.result.id, result: e.result }] : [])),
        readings: session && read ? [{ outlet: read.outlet, sessionId: session.id, reading: read.reading }] : [],
      })
      state = r.state
      if (!stopped) for (const e of r.effects) if (e.type === 'relay' && e.closed) relays.set(e.outlet, true)
      return r.effects
    }
    const readAll = async (): Promise<void> => {
      for (let i = 0; i < config.outlets.length; i++) {
        const id = config.outlets[i]!.id
        const r = reading(i, now)
        await drive({ type: 'reading', outlet: id, reading: r }, { outlet: id, reading: r })
      }
    }

    await drive({ type: 'boot', cleanShutdown: journal.previousCleanShutdown, version: 'test' })
    await readAll()
    await drive({ type: 'command', id: 'w-1', source: 'cloud', command: { action: 'set-wallet', userId: 'u-1', currency: 'CAD', balance: 100_000 } })
    await drive({ type: 'command', id: 'c-1', source: 'cloud', command: { action: 'start', outlet: 'A1', userId: 'u-1' } })
    for (let s = 0; s < 30; s++) {
      now += 1000
      await readAll()
    }
    t.equal(relays.get('A1'), true, 'A1 charges')
    t.equal(state.outlets.A1!.session?.userId, 'u-1')
    await journal.flush()
    const before = await journal.read(1, 1000)
    const persisted = await journal.loadState()

    db.failWrites = fault
    // Readings wait for the group commit, so the fault surfaces at its next write, within readingSyncMs.
    for (let s = 0; s < 1000 && reported.length === 0; s++) {
      now += 1000
      await readAll().catch((err: { code?: string }) => t.equal(err.code, 'JOURNAL_WRITE_FAILED'))
      await new Promise((r) => setTimeout(r, 5))
    }
    t.equal(reported.length, 1, 'the fault was reported once')
    t.match(reported[0]!.message, fault.message.split(': ').pop()!)
    t.same([...relays.values()], [false, false, false], 'every relay is open: nobody charges unbilled')
    db.failWrites = undefined
    // Even with the disk back, nothing is written and nothing closes again until the daemon restarts.
    await t.rejects(drive({ type: 'command', id: 'c-2', source: 'cloud', command: { action: 'start', outlet: 'A3', userId: 'u-1' } }), {
      code: 'JOURNAL_WRITE_FAILED',
    })
    t.same([...relays.values()], [false, false, false])
    t.same(await journal.read(1, 1000), before, 'the records committed before the fault are untouched')
    await journal.close({ clean: true })

    // Restart: the daemon reopens, resumes from what was persisted, and closes the session at its last journaled reading.
    now += 60_000
    stopped = false
    journal = await open('run-2')
    t.equal(journal.previousCleanShutdown, false, 'a failed journal could not record a clean stop')
    const loaded = (await journal.loadState()) as EngineState
    t.same(loaded, persisted, 'the state is the last one committed before the fault')
    state = step(loaded, { type: 'config', config }, now).state
    const effects = await drive({ type: 'boot', cleanShutdown: journal.previousCleanShutdown, version: 'test' })
    const ended = effects.flatMap((e) => (e.type === 'record' && e.record.type === 'session.ended' ? [e.record] : []))
    t.equal(ended.length, 1)
    t.equal(ended[0]!.reason, 'power-loss')
    const lastJournaled = (persisted as EngineState).outlets.A1!.session!
    t.equal(Date.parse(ended[0]!.endedAt), lastJournaled.lastTs, 'closed at the last journaled reading')
    const all = await journal.read(1, 1000)
    t.equal(verifyRecords(all), undefined)
    t.same(all.slice(0, before.length), before)
    await journal.close({ clean: true })
    await db.close()
  })
}
