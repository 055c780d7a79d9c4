/**
 * Damage LevelDB hides: its log recovery skips damaged entries without an error, so a garbled
 * journal used to reopen as a new journal (seq 1 again) or at a lower head (seqs given twice).
 * Real LevelDB journals on disk, charged by the engine, then damaged: the whole log garbled,
 * its tail garbled, a table file garbled, the log truncated to zero, the journal directory
 * deleted while the key remains, the seq marker garbled, a crash during the salvage itself.
 * For each: what boot reports (journalSalvage, the error-level line), that no seq is given
 * twice, and that every record still readable is carried unchanged.
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import { type Journal, journalLocation, recordHash } from '../daemon/journal/index.js'
import { openJournalForRun } from '../daemon/journal/salvage.js'
import { markerPath, readMarker, unknownChainBase } from '../daemon/journal/seq-marker.js'
import { leaveOutDamagedTables } from '../daemon/journal/table-check.js'
import { initialState, step, type EngineState } from '../daemon/engine/index.js'
import type { JournalRecord, JournalSalvageInfo } from '../core/types.js'
import { packagePath } from '../core/paths.js'
import { siteConfig } from './fixtures/engine-site-config.js'
import { charge, garble, opts, quietLog, T0 } from './helpers/journal-charge.js'

const config = siteConfig()
const NOW = T0 + 10_000_000
const GENESIS = '0'.repeat(64)

const filesOf = (loc: string, ext: string) =>
  readdirSync(loc)
    .filter((f) => f.endsWith(ext))
    .map((f) => join(loc, f))

/**
 * The records a copy of the damaged journal still gives (as LevelDB opens it, else after its repair), each whose hash
 * checks. A table failing its checksums is read block by block instead (LevelDB would read it unchecked, or abort).
 */
async function readable(loc: string): Promise<Map<number, JournalRecord>> {
  const out = new Map<number, JournalRecord>()
  if (!existsSync(loc)) return out
  const copy = mkdtempSync(join(tmpdir(), 'outpost-damage-copy-'))
  try {
    cpSync(loc, copy, { recursive: true, filter: (src) => !src.endsWith('/LOCK') })
    for (const table of await leaveOutDamagedTables(copy, 'r!'))
      for (const [k, v] of table.entries) {
        try {
          const r = JSON.parse(v) as JournalRecord
          if (Number(k.slice(2)) === r.seq && recordHash(r) === r.hash) out.set(r.seq, r)
        } catch {
          // not readable
        }
      }
    const read = async () => {
      const db = new Level<string, string>(copy, { keyEncoding: 'utf8', valueEncoding: 'utf8', createIfMissing: false })
      await db.open()
      try {
        for await (const [k, v] of db.iterator({ gte: 'r!', lt: 'r"' })) {
          try {
            const r = JSON.parse(v) as JournalRecord
            if (Number(k.slice(2)) === r.seq && recordHash(r) === r.hash) out.set(r.seq, r)
          } catch {
            // not readable
          }
        }
      } finally {
        await db.close()
      }
    }
    await read().catch(async () => {
      await (Level as unknown as { repair(location: string): Promise<void> }).repair(copy)
      await read().catch(() => undefined)
    })
  } finally {
    rmSync(copy, { recursive: true, force: true })
  }
  return out
}

/** Every record the journal holds, oldest first (across a salvage's hole). */
async function held(journal: Journal): Promise<JournalRecord[]> {
  const out: JournalRecord[] = []
  let from = journal.oldest()
  while (from <= journal.head()) {
    const page = await journal.read(from, 500)
    if (page.length === 0) break
    out.push(...page)
    from = page.at(-1)!.seq + 1
  }
  return out
}

interface Boot {
  before: JournalRecord[]
  salvage: JournalSalvageInfo | undefined
  lines: string[]
  started: JournalRecord & { journalSalvage?: JournalSalvageInfo; cleanShutdown?: boolean }
  sealed: JournalRecord[]
  carried: JournalRecord[]
  journal: Journal
  dir: string
}

/**
 * Charge a journal (stopped clean or not, acked up to `ack`), damage it, and boot on it the way the
 * daemon does (openJournalForRun, the engine's boot step committed). Checks what holds for every
 * damage: no seq given twice, every record still readable carried unchanged, the report logged.
 */
async function bootAfter(
  t: Test,
  o: { clean: boolean; ack?: number; rounds?: number; expectExisting?: boolean; tables?: boolean },
  damage: (dir: string, loc: string) => void,
): Promise<Boot> {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-damage-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  // Damage to the log needs the records in the log: LevelDB's default 4 MB write buffer keeps them
  // there; a tiny one (o.tables) moves them into table files as the charge goes, and where the last
  // ones stand at the stop would then depend on the size of each outlet entry.
  const before = await charge(dir, o.rounds ?? 60, o.ack ?? 0, { clean: o.clean, ...(o.tables ? {} : { writeBufferSize: 4 << 20 }) })
  const last = before.at(-1)!.seq
  const loc = journalLocation(dir)
  damage(dir, loc)
  const still = await readable(loc)
  const log = quietLog()
  const { journal, salvage } = await openJournalForRun(dir, { ...opts(() => NOW), expectExisting: o.expectExisting ?? true }, log)
  t.teardown(() => journal.close({ clean: true }))
  let state = ((await journal.loadState()) as EngineState | undefined) ?? initialState(config)
  state = step(state, { type: 'config', config }, NOW).state
  const boot = step(
    state,
    { type: 'boot', cleanShutdown: journal.previousCleanShutdown, version: 't', ...(salvage ? { journalSalvage: salvage } : {}) },
    NOW,
  )
  const sealed = await journal.commit({ records: boot.effects.flatMap((e) => (e.type === 'record' ? [e.record] : [])), state: boot.state })
  const started = sealed.find((r) => r.type === 'gateway.started') as Boot['started']
  t.ok(started.seq > last, `no seq given twice: the boot record is seq ${started.seq}, the damaged journal had given out up to ${last}`)
  t.same(started.journalSalvage, salvage, 'gateway.started carries the salvage report')
  const carried = (await held(journal)).filter((r) => r.seq <= last)
  const bySeq = new Map(before.map((r) => [r.seq, r]))
  t.ok(
    carried.every((r) => recordHash(r) === r.hash && r.hash === bySeq.get(r.seq)?.hash),
    'every record held from before the damage is the record as it was written',
  )
  // Every record LevelDB still gives is carried, from the ack watermark on (below it the cloud holds them already),
  // holes and all: every seq between the carried ones that is not held is named lost.
  const heldSeqs = new Set(carried.map((r) => r.seq))
  const missing = [...still.keys()].filter((s) => !heldSeqs.has(s))
  t.same(
    missing.filter((s) => s >= (o.ack ?? 0)),
    [],
    `every readable record is carried (${still.size} readable, ${carried.length} held)`,
  )
  const named = (s: number) => (salvage?.lost ?? []).some((r) => s >= r.from && s <= r.to)
  if (salvage?.carried)
    for (let s = Math.max(salvage.carried.from, (o.ack ?? 0) + 1); s <= salvage.carried.to; s++)
      if (!heldSeqs.has(s)) t.ok(named(s), `seq ${s} between carried records is named lost`)
  for (const r of salvage?.lost ?? []) for (let s = r.from; s <= r.to; s++) if (heldSeqs.has(s)) t.fail(`seq ${s} is both held and named lost`)
  if (salvage) t.match(log.lines.join('\n'), /^JOURNAL DAMAGED: /m, 'the salvage is logged (the daemon logs it at error level)')
  return { before, salvage, lines: log.lines, started, sealed, carried, journal, dir }
}

t.test('the whole log garbled after a clean stop, every record acknowledged: a new chain past the last seq, not seq 1', async (t) => {
  let last = 0
  const b = await bootAfter(t, { clean: true, ack: 1e9 }, (_dir, loc) => {
    for (const f of filesOf(loc, '.log')) garble(f)
  })
  last = b.before.at(-1)!.seq
  t.match(b.salvage, { mode: 'fresh', newChain: true, unknownAbove: null, sessionsMayBeLost: false }, 'a fresh journal, a new chain')
  // Everything was in the log: an empty journal beside a marker that counted its seqs, or fewer records than it counted.
  t.match(b.salvage?.reason, /seq marker says (the log reached )?seqs? (up to )?\d+/, 'found by the seq marker')
  t.equal(b.started.seq, last + 1, 'the clean stop named the last seq exactly: the new chain starts right after it')
  t.equal(b.started.prev, GENESIS, 'and links to nothing: a new chain')
  t.equal(b.started.cleanShutdown, false, 'the boot reads as unclean (what was open is closed power-loss)')
})

t.test('the whole log and every table garbled (all of each file): found, never a new journal at seq 1', async (t) => {
  const b = await bootAfter(t, { clean: true, ack: 1e9 }, (_dir, loc) => {
    for (const f of [...filesOf(loc, '.log'), ...filesOf(loc, '.ldb')]) garble(f)
  })
  t.equal(b.salvage?.newChain, true)
  t.equal(b.started.seq, b.before.at(-1)!.seq + 1)
})

t.test('the tail of the log garbled after a clean stop: the records before it carried, the rest named lost', async (t) => {
  const b = await bootAfter(t, { clean: true, ack: 5 }, (_dir, loc) => {
    for (const f of filesOf(loc, '.log')) garble(f, 0.5)
  })
  const last = b.before.at(-1)!.seq
  t.equal(b.salvage?.mode, 'fresh')
  t.ok(b.salvage?.carried && b.salvage.carried.to < last, `records up to the damage are carried (${JSON.stringify(b.salvage?.carried)})`)
  t.same(b.salvage?.lostAfter, { from: b.salvage!.carried!.to + 1, to: last }, 'the seqs after them are named lost, exactly')
  t.equal(b.started.seq, last + 1, 'the next seq comes after every seq given out')
  t.equal(b.started.prev, GENESIS)
  t.match(b.lines[0], /records \d+\.\.\d+ were lost; a new chain starts/)
})

t.test('the tail of the log garbled after a power cut: records since the marker may be lost, a new chain past the reservation', async (t) => {
  let reserved = 0
  const b = await bootAfter(t, { clean: false, ack: 5 }, (dir, loc) => {
    const m = JSON.parse(readFileSync(markerPath(dir), 'utf8')) as { reserved: number }
    reserved = m.reserved
    for (const f of filesOf(loc, '.log')) garble(f, 0.5)
  })
  t.match(b.salvage?.reason, /dropped damaged log data/, "found by LevelDB's own report of dropped log data")
  t.equal(b.salvage?.newChain, true)
  t.ok(b.salvage?.unknownAbove !== null, `records above seq ${b.salvage?.unknownAbove} may be lost: how many is unknown`)
  t.equal(b.salvage?.sessionsMayBeLost, true, 'sessions open in the lost part may be lost: the report says so')
  t.equal(b.started.seq, reserved + 1, "the new chain starts past the marker's reservation")
  t.match(b.lines[0], /may have been lost \(how many is unknown\)/)
})

t.test('a table file garbled: the records it held are lost, the next seq is past every seq that may have been given out', async (t) => {
  let reserved = 0
  const b = await bootAfter(t, { clean: false, ack: 10, rounds: 120, tables: true }, (dir, loc) => {
    reserved = (JSON.parse(readFileSync(markerPath(dir), 'utf8')) as { reserved: number }).reserved
    const tables = filesOf(loc, '.ldb')
    t.ok(tables.length > 1, `a small write buffer leaves table files (${tables.length})`)
    garble(tables.at(-1)!)
  })
  t.ok(b.salvage, `salvaged (${JSON.stringify(b.salvage)})`)
  t.ok(b.started.seq > b.before.at(-1)!.seq)
  if (b.salvage?.newChain) t.equal(b.started.seq, reserved + 1, "a new chain starts past the marker's reservation")
  else t.same(b.salvage?.carried?.to, b.before.at(-1)!.seq, 'no new chain only when every record up to the last one was carried')
})

t.test('bytes flipped inside one data block of a table: found before LevelDB reads it, every seq carried or named lost', async (t) => {
  let reserved = 0
  let victim = ''
  const b = await bootAfter(t, { clean: true, ack: 10, rounds: 120, tables: true }, (dir, loc) => {
    reserved = (JSON.parse(readFileSync(markerPath(dir), 'utf8')) as { reserved: number }).reserved
    // The largest table: several data blocks, so the flip (in its first) leaves others readable.
    victim = filesOf(loc, '.ldb').sort((x, y) => statSync(y).size - statSync(x).size)[0]!
    const bytes = readFileSync(victim)
    for (let i = 200; i < 216; i++) bytes[i] = bytes[i]! ^ 0xff
    writeFileSync(victim, bytes)
  })
  const name = victim.split('/').at(-1)
  t.match(b.salvage?.reason, new RegExp(`table ${name}: a data block at 0 fails its checksum`), 'the reason names the table and the block')
  t.equal(b.salvage?.mode, 'fresh')
  // Every seq given out is accounted for: below the ack (the cloud has it), carried, or named lost.
  const carried = new Set(b.carried.map((r) => r.seq))
  const s = b.salvage!
  const named = (seq: number) => [...(s.lost ?? []), ...(s.lostAfter ? [s.lostAfter] : [])].some((r) => seq >= r.from && seq <= r.to)
  t.same(
    b.before.map((r) => r.seq).filter((seq) => seq > 10 && !carried.has(seq) && !named(seq)),
    [],
    `every seq above the ack is carried or named lost (carried ${JSON.stringify(s.carried)}, lost ${JSON.stringify(s.lost)})`,
  )
  // A clean stop's marker named the head exactly: the chain goes on right after it, even though a table was lost.
  t.equal(b.started.seq, b.before.at(-1)!.seq + 1)
  t.ok(reserved > b.before.at(-1)!.seq, 'and not past the reservation, which it did not need')
})

t.test('the log truncated to zero after a clean stop: the records only it held are named lost', async (t) => {
  const b = await bootAfter(t, { clean: true, ack: 3 }, (_dir, loc) => {
    for (const f of filesOf(loc, '.log')) truncateSync(f, 0)
  })
  const last = b.before.at(-1)!.seq
  t.equal(b.salvage?.newChain, true)
  t.equal(b.started.seq, last + 1)
  const top = b.salvage?.carried?.to ?? 3
  t.same(
    b.salvage?.carried ? b.salvage.lostAfter : b.salvage?.lost,
    b.salvage?.carried ? { from: top + 1, to: last } : [{ from: top + 1, to: last }],
    'the lost seqs are named',
  )
})

t.test('the journal directory deleted, the key (and the marker) still there: a fresh journal past every seq given out', async (t) => {
  const b = await bootAfter(t, { clean: false, ack: 4 }, (dir, loc) => {
    rmSync(loc, { recursive: true })
    t.ok(existsSync(markerPath(dir)), 'the marker lives beside the journal, not in it')
  })
  t.match(b.salvage, { mode: 'fresh', movedTo: null, carried: null, newChain: true, sessionsMayBeLost: true })
  t.match(b.salvage?.reason, /the journal is empty, but its seq marker says/)
  t.same(b.salvage?.lost, [{ from: 5, to: b.salvage!.unknownAbove! }], 'what the marker knew was given out is named lost; above it, unknown')
  const m = await readMarker(b.dir)
  t.ok(m.state === 'ok' && b.started.seq <= m.marker.reserved + 1, 'the new chain starts at the reservation (the marker carries on)')
  t.match(b.lines[0], /JOURNAL DAMAGED: the journal directory was missing/)
})

t.test('the journal directory and the marker deleted, the key still there: the highest seq is unknown, a time-based chain', async (t) => {
  const b = await bootAfter(t, { clean: false, ack: 4, expectExisting: true }, (dir, loc) => {
    rmSync(loc, { recursive: true })
    rmSync(markerPath(dir))
  })
  t.match(b.salvage, { mode: 'fresh', movedTo: null, newChain: true, unknownAbove: 0, sessionsMayBeLost: true })
  t.match(b.salvage?.reason, /the gateway key shows a journal existed here/)
  t.equal(b.started.seq, unknownChainBase(NOW) + 1, 'the first seq is 100 × the Unix time in seconds, above any chain a gateway can have written')
  t.equal(b.started.prev, GENESIS)
})

t.test('a new gateway (no key, no marker, no journal) starts at seq 1: nothing was lost', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-damage-new-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const log = quietLog()
  const { journal, salvage } = await openJournalForRun(dir, { ...opts(() => NOW), expectExisting: false }, log)
  t.teardown(() => journal.close({ clean: true }))
  t.equal(salvage, undefined)
  t.equal(journal.head(), 0)
  t.same(log.lines, [])
  const [r] = await journal.commit({ records: [{ type: 'gateway.started', ts: new Date(NOW).toISOString(), version: 't', cleanShutdown: true }] })
  t.equal(r!.seq, 1)
})

t.test('a garbled marker beside a healthy journal: reported at error level, rebuilt from the head, the chain continues', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-damage-marker-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const before = await charge(dir, 40, 2, { clean: false })
  garble(markerPath(dir), 0.3)
  t.equal((await readMarker(dir)).state, 'garbled')
  const log = quietLog()
  const { journal, salvage } = await openJournalForRun(dir, { ...opts(() => NOW), expectExisting: true }, log)
  t.teardown(() => journal.close({ clean: true }))
  t.equal(salvage, undefined, 'LevelDB reports no damage: its head is the head')
  t.match(log.lines[0], /^JOURNAL SEQ MARKER UNREADABLE: .* rebuilt from the journal's head \d+/, 'reported')
  t.equal(journal.head(), before.at(-1)!.seq)
  const m = await readMarker(dir)
  t.ok(m.state === 'ok' && m.marker.head === before.at(-1)!.seq, 'the marker is whole again')
  const [r] = await journal.commit({ records: [{ type: 'gateway.started', ts: new Date(NOW).toISOString(), version: 't', cleanShutdown: false }] })
  t.equal(r!.seq, before.at(-1)!.seq + 1)
  t.equal(r!.prev, before.at(-1)!.hash, 'the chain continues')
})

t.test('a garbled marker and a garbled log: the highest seq cannot be known, a time-based chain', async (t) => {
  const b = await bootAfter(t, { clean: true, ack: 2 }, (dir, loc) => {
    garble(markerPath(dir))
    for (const f of filesOf(loc, '.log')) garble(f, 0.5)
  })
  t.match(b.salvage, { mode: 'fresh', newChain: true, sessionsMayBeLost: true })
  t.ok(b.salvage?.unknownAbove !== null)
  t.equal(b.started.seq, unknownChainBase(NOW) + 1)
})

t.test('a power cut with the log intact: no salvage, the chain continues (the marker is not a false alarm)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-damage-cut-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const before = await charge(dir, 40, 2, { clean: false })
  const { journal, salvage } = await openJournalForRun(dir, { ...opts(() => NOW), expectExisting: true }, quietLog())
  t.teardown(() => journal.close({ clean: true }))
  t.equal(salvage, undefined)
  t.equal(journal.head(), before.at(-1)!.seq)
})

t.test('a crash during the salvage itself: every boot after it gives out no seq twice, and ends on the same report', async (t) => {
  const SALVAGE = packagePath('dist', 'daemon', 'journal', 'salvage.js')
  t.ok(existsSync(SALVAGE), 'built (npm run build)')
  const template = mkdtempSync(join(tmpdir(), 'outpost-damage-crash-'))
  t.teardown(() => rmSync(template, { recursive: true, force: true }))
  const before = await charge(template, 60, 3, { clean: true })
  const last = before.at(-1)!.seq
  for (const f of filesOf(journalLocation(template), '.log')) garble(f, 0.5)
  const script = `
    const { openJournalForRun } = await import(process.argv[1])
    const o = { bootId: 'crash', clockSynced: () => true, now: () => ${NOW}, compactEveryMs: 0, expectExisting: true }
    const { journal, salvage } = await openJournalForRun(process.argv[2], o, { warn() {} })
    const [r] = await journal.commit({ records: [{ type: 'gateway.started', ts: new Date(${NOW}).toISOString(), version: 't', cleanShutdown: false }] })
    await journal.close({ clean: false })
    console.log(JSON.stringify({ seq: r.seq, prev: r.prev, salvage }))`
  const run = (dir: string, killAfterMs?: number) =>
    new Promise<{ out: string; killed: boolean }>((resolve) => {
      const child = spawn(process.execPath, ['--input-type=module', '-e', script, SALVAGE, dir], { stdio: ['ignore', 'pipe', 'inherit'] })
      let out = ''
      child.stdout.on('data', (d: Buffer) => (out += d.toString()))
      const timer = killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), killAfterMs)
      child.on('exit', (_code, signal) => {
        clearTimeout(timer)
        resolve({ out, killed: signal === 'SIGKILL' })
      })
    })
  const began = Date.now()
  const reference = await run(
    (() => {
      const d = mkdtempSync(join(tmpdir(), 'outpost-damage-ref-'))
      t.teardown(() => rmSync(d, { recursive: true, force: true }))
      cpSync(template, d, { recursive: true })
      return d
    })(),
  )
  const ref = JSON.parse(reference.out) as { seq: number; salvage: JournalSalvageInfo }
  t.equal(ref.seq, last + 1, 'uninterrupted: the new chain starts after the last seq')
  // Kills spread over the time an uninterrupted run took (start-up, copy, repair child, build, swap, boot record).
  const took = Date.now() - began
  let interrupted = 0
  for (const ms of [0.3, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95, 1.05].map((f) => Math.round(f * took))) {
    const dir = mkdtempSync(join(tmpdir(), 'outpost-damage-cut-salvage-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    cpSync(template, dir, { recursive: true })
    const first = await run(dir, ms)
    if (first.killed) interrupted++
    const seqs = first.out ? [(JSON.parse(first.out) as { seq: number }).seq] : []
    const again = JSON.parse((await run(dir)).out) as { seq: number; prev: string; salvage?: JournalSalvageInfo }
    seqs.push(again.seq)
    t.ok(
      seqs.every((s) => s > last) && new Set(seqs).size === seqs.length,
      `killed after ${ms} ms (${first.killed ? 'mid-salvage or mid-boot' : 'it had finished'}): boot records at ${seqs.join(', ')}, none at or below ${last}`,
    )
    if (first.killed && !first.out && again.salvage)
      t.match(again.salvage, { newChain: true, lostAfter: ref.salvage.lostAfter }, 'the salvage after the crash reports the same loss')
  }
  t.ok(interrupted > 0, `some runs were cut (${interrupted})`)
})
