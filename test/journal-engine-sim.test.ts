/**
 * The session engine and the journal together under power cuts (and clean
 * restarts), seeded. A simulated site — meters whose registers advance only
 * while the relay the engine commanded is closed and a car draws, cars that plug,
 * charge, taper and unplug, users with wallets, cloud commands (some repeated),
 * uplink outages — runs step by step through `step()` and `Journal.commit()`,
 * over the power-cut storage layer: at a random write the power dies, every
 * relay drops open, and only what was fsynced (plus any subset of the rest)
 * survives. The gateway restarts from that image the way the daemon does: load
 * the persisted state, `config`, `boot`, commit, relays.
 *
 * After every restart: the chain verifies with no seq gap; every record whose
 * commit resolved is there unchanged; every session.started has exactly one
 * session.ended; each ended session's registers are ones its meter really
 * reported (the end one at `endedAt`, never later than the cut), and nothing
 * billed exceeds the meter's register delta; no relay was ever closed before the
 * commit that made it billable was durable.
 */
import t from 'tap'
import { Journal, verifyRecords } from '../daemon/journal/index.js'
import { initialState, step, type EngineState, type Effect } from '../daemon/engine/index.js'
import type { Command, JournalRecord } from '../core/types.js'
import { PowerCutLevel } from './fixtures/power-cut-level.js'
import { rng } from './fixtures/journal-workload.js'
import { siteConfig } from './fixtures/engine-site-config.js'

const SEEDS = [11, 12, 13, 14, 15, 16]
const RESTARTS_PER_SEED = 25
const USERS = ['u-1', 'u-2', 'u-3', 'u-42']

interface Car {
  needMWh: number
  tapering: boolean
}

interface Meter {
  /** Register in integer mWh (reported as Wh with 3 decimals, exactly). */
  mWh: number
  relayClosed: boolean
  car: Car | null
  /** Every register value reported, by reading ts. */
  reported: Map<number, number>
  /** The first ts each register value was reported at. */
  firstSeen: Map<number, number>
}

function report(m: Meter, ts: number, wh: number): void {
  m.reported.set(ts, wh)
  if (!m.firstSeen.has(wh)) m.firstSeen.set(wh, ts)
}

for (const seed of SEEDS) {
  t.test(`seed ${seed}: engine + journal through ${RESTARTS_PER_SEED} power cuts and restarts`, async (t) => {
    const config = siteConfig()
    const random = rng(seed)
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!
    let now = Date.UTC(2026, 2, 2, 8, 0, 0) + seed * 3_600_000
    const meters = new Map<string, Meter>(
      config.outlets.map((o) => [
        o.id,
        { mWh: 1_000_000 * (1 + Math.floor(random() * 100)), relayClosed: false, car: null, reported: new Map(), firstSeen: new Map() },
      ]),
    )
    const reported = new Map<number, string>()
    const problems: string[] = []
    const cuts: number[] = []
    let db = new PowerCutLevel()
    await db.open()
    let commandNo = 0
    const pastCommands: { id: string; command: Command }[] = []
    /** The result first returned for each command id whose commit resolved. */
    const firstResults = new Map<string, unknown>()
    let repeats = 0
    const stats = { sessions: 0, powerLoss: 0, reboots: 0, steps: 0 }

    /** Carry out a step's effects the way the daemon must: records first (committed), then relays. */
    async function commitStep(
      journal: Journal,
      state: EngineState,
      effects: Effect[],
      reading?: { outlet: string; reading: { ts: number; currentA: number; powerW: number; energyWh: number; voltageV: number } },
    ): Promise<void> {
      const records = effects.flatMap((e) => (e.type === 'record' ? [e.record] : []))
      const commandResults = effects.flatMap((e) => (e.type === 'result' ? [{ id: e.result.id, result: e.result }] : []))
      const session = reading ? state.outlets[reading.outlet]?.session : null
      // Opening is safe before the commit; closing only after it.
      for (const e of effects) if (e.type === 'relay' && !e.closed) meters.get(e.outlet)!.relayClosed = false
      const sealed = await journal.commit({
        records,
        state,
        commandResults,
        readings: session && reading ? [{ outlet: reading.outlet, sessionId: session.id, reading: reading.reading }] : [],
      })
      for (const r of sealed) reported.set(r.seq, r.hash)
      const closes = effects.filter((e) => e.type === 'relay' && e.closed)
      if (closes.length > 0 && records.length > 0 && db.unsyncedBatches > 0)
        problems.push(`a relay close followed a commit of records that was not yet fsynced`)
      for (const e of closes) if (e.type === 'relay') meters.get(e.outlet)!.relayClosed = true
    }

    async function allRecords(journal: Journal): Promise<JournalRecord[]> {
      return journal.head() === 0 ? [] : journal.read(1, 10_000_000)
    }

    function checkRecords(records: JournalRecord[], where: string, lastCut: number | undefined): void {
      const brk = verifyRecords(records)
      if (brk) problems.push(`${where}: chain: seq ${brk.seq}: ${brk.problem}`)
      const bySeq = new Map(records.map((r) => [r.seq, r.hash]))
      for (const [seq, hash] of reported)
        if (bySeq.get(seq) !== hash) problems.push(`${where}: seq ${seq} was reported committed but is ${bySeq.has(seq) ? 'different' : 'missing'}`)
      const started = new Map<string, JournalRecord & { type: 'session.started' }>()
      const ended = new Map<string, number>()
      for (const r of records) {
        if (r.type === 'session.started') started.set(r.sessionId, r)
        if (r.type !== 'session.ended') continue
        ended.set(r.sessionId, (ended.get(r.sessionId) ?? 0) + 1)
        const s = started.get(r.sessionId)
        if (!s) problems.push(`${where}: ${r.sessionId} ended without a start`)
        const m = meters.get(r.outlet)!
        const endTs = Date.parse(r.endedAt)
        const startTs = Date.parse(r.startedAt)
        const endReported = m.reported.get(endTs)
        // A session that never saw a reading ends at its start register.
        if (endReported !== undefined ? endReported !== r.meterEndWh : r.meterEndWh !== r.meterStartWh)
          problems.push(`${where}: ${r.sessionId} meterEndWh ${r.meterEndWh} is not what the meter reported at ${r.endedAt}`)
        if (s && s.meterWh !== r.meterStartWh) problems.push(`${where}: ${r.sessionId} meterStartWh differs from its session.started`)
        const seen = m.firstSeen.get(r.meterStartWh)
        if (seen === undefined || seen > startTs)
          problems.push(`${where}: ${r.sessionId} meterStartWh ${r.meterStartWh} was never reported before ${r.startedAt}`)
        if (r.energyWh < 0 || r.energyWh > r.meterEndWh - r.meterStartWh + 0.0005)
          problems.push(`${where}: ${r.sessionId} billed ${r.energyWh} Wh beyond the register delta ${r.meterEndWh - r.meterStartWh}`)
        if (r.reason === 'power-loss' && lastCut !== undefined && r.endedAt > new Date(lastCut).toISOString())
          problems.push(`${where}: ${r.sessionId} closed at ${r.endedAt}, after the power cut`)
      }
      for (const [id, n] of ended) if (n > 1) problems.push(`${where}: ${id} ended ${n} times`)
      for (const id of started.keys()) if (!ended.has(id)) problems.push(`${where}: ${id} never ended after boot`)
    }

    for (let restart = 0; restart <= RESTARTS_PER_SEED && problems.length === 0; restart++) {
      const bootId = `seed${seed}-run${restart}`
      let journal: Journal
      try {
        journal = await Journal.open('sim', {
          bootId,
          clockSynced: () => true,
          now: () => now,
          compactEveryMs: 0,
          readingSyncMs: random() < 0.2 ? 0 : 600_000,
          db,
        })
      } catch (err) {
        problems.push(`run ${restart}: open failed: ${(err as Error).message}`)
        break
      }
      const loaded = (await journal.loadState()) as EngineState | undefined
      let state = loaded ?? initialState(config)
      state = step(state, { type: 'config', config }, now).state
      const final = restart === RESTARTS_PER_SEED
      const cutAfter = final ? undefined : random() < 0.25 ? 'clean' : 1 + Math.floor(random() * 3000)
      if (typeof cutAfter === 'number') db.cutDuringWrite(cutAfter, random)
      try {
        const boot = step(state, { type: 'boot', cleanShutdown: journal.previousCleanShutdown, version: 'sim' }, now)
        state = boot.state
        await commitStep(journal, state, boot.effects)
        stats.powerLoss += boot.effects.filter(
          (e) => e.type === 'record' && e.record.type === 'session.ended' && e.record.reason === 'power-loss',
        ).length
        checkRecords(await allRecords(journal), `run ${restart} after boot`, cuts.at(-1))
        if (final) break
        const seconds = 200 + Math.floor(random() * 1500)
        for (let s = 0; s < seconds; s++) {
          now += 1000
          // The physical site for one second.
          for (const [id, m] of meters) {
            if (!m.car && random() < 0.01) m.car = { needMWh: 2_000_000 + Math.floor(random() * 20_000_000), tapering: false }
            else if (m.car && random() < 0.001) m.car = null
            const drawing = m.relayClosed && m.car !== null && m.car.needMWh > 0
            const currentA = drawing ? (m.car!.needMWh < 1_500_000 ? 4 : 16) : 0
            const powerW = currentA * 230
            const delta = Math.round((powerW * 1000) / 3600)
            m.mWh += delta
            if (drawing) m.car!.needMWh -= delta
            const energyWh = m.mWh / 1000
            if (random() < 0.002) {
              const r = step(state, { type: 'read-failed', outlet: id, error: 'timeout' }, now)
              state = r.state
              await commitStep(journal, state, r.effects)
              continue
            }
            const reading = { ts: now, currentA, powerW, energyWh, voltageV: 230 }
            report(m, now, energyWh)
            const r = step(state, { type: 'reading', outlet: id, reading }, now)
            state = r.state
            stats.steps++
            await commitStep(journal, state, r.effects, { outlet: id, reading })
          }
          if (random() < 0.03) {
            let id = `cmd-${seed}-${++commandNo}`
            const outlet = pick(config.outlets).id
            const userId = pick(USERS)
            let command: Command = pick<Command>([
              { action: 'start', outlet, userId },
              { action: 'start', outlet, userId },
              { action: 'start', outlet, userId },
              { action: 'stop', outlet, by: random() < 0.5 ? 'user' : 'manager' },
              { action: 'set-wallet', userId, currency: 'CAD', balance: 500 + Math.floor(random() * 50_000) },
              { action: 'set-wallet', userId, currency: 'CAD', balance: 500 + Math.floor(random() * 50_000) },
              { action: 'set-availability', outlet, available: random() < 0.8 },
            ])
            if (pastCommands.length > 0 && random() < 0.1) ({ id, command } = pick(pastCommands))
            else pastCommands.push({ id, command })
            // As the daemon must: a command id the journal already answered gets that first answer, and never
            // reaches the engine again (the engine remembers only its most recent ids).
            const prior = await journal.commandResult(id)
            if (prior) {
              const first = firstResults.get(id)
              if (first && JSON.stringify(prior) !== JSON.stringify(first))
                problems.push(`command ${id}: the journal's stored result differs from the first one returned`)
              repeats++
            } else {
              const r = step(state, { type: 'command', id, source: 'cloud', command }, now)
              state = r.state
              stats.sessions += r.effects.filter((e) => e.type === 'record' && e.record.type === 'session.started').length
              await commitStep(journal, state, r.effects)
              const result = r.effects.find((e) => e.type === 'result')
              if (result?.type === 'result' && !firstResults.has(id)) firstResults.set(id, result.result)
            }
          }
          if (random() < 0.002) {
            const r = step(state, { type: 'uplink', online: random() < 0.6 }, now)
            state = r.state
            await commitStep(journal, state, r.effects)
          }
          const tick = step(state, { type: 'tick' }, now)
          state = tick.state
          await commitStep(journal, state, tick.effects)
        }
        // No cut happened in this run: a clean stop (final readings, shutdown), as on SIGTERM.
        for (const [id, m] of meters) {
          const reading = { ts: now, currentA: 0, powerW: 0, energyWh: m.mWh / 1000, voltageV: 230 }
          report(m, now, reading.energyWh)
          const r = step(state, { type: 'reading', outlet: id, reading }, now)
          state = r.state
          await commitStep(journal, state, r.effects, { outlet: id, reading })
        }
        const down = step(state, { type: 'shutdown' }, now)
        await commitStep(journal, down.state, down.effects)
        await journal.close({ clean: true })
        stats.reboots++
        db.cutDuringWrite(Number.MAX_SAFE_INTEGER, random)
        const image = db.everything()
        await db.close()
        db = await PowerCutLevel.fromImage(image)
      } catch (err) {
        if ((err as { code?: string }).code !== 'JOURNAL_WRITE_FAILED' || !db.poweredOff) {
          problems.push(`run ${restart}: unexpected failure: ${(err as Error).stack}`)
          break
        }
        // The power died: relays drop open, the cars stop drawing; the meters keep their registers.
        cuts.push(now)
        for (const m of meters.values()) m.relayClosed = false
        const image = db.image(random)
        await db.close()
        db = await PowerCutLevel.fromImage(image)
      }
      now += 10_000 + Math.floor(random() * 600_000)
    }
    await db.close()
    t.same(problems.slice(0, 8), [], 'no invariant broken')
    t.ok(stats.sessions >= 20, `sessions started (${stats.sessions})`)
    t.ok(cuts.length > 0 && stats.reboots > 0, `power cuts (${cuts.length}) and clean restarts (${stats.reboots})`)
    t.ok(repeats > 0, `repeated command ids were answered from the journal (${repeats})`)
    t.comment(
      `${stats.steps} reading steps, ${stats.sessions} sessions, ${stats.powerLoss} closed by power-loss, ${cuts.length} cuts, ${stats.reboots} clean restarts`,
    )
  })
}
