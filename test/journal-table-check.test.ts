/**
 * The table check (daemon/journal/table-check.ts) against tables real LevelDB wrote: a healthy
 * database checks whole; a flipped byte in a data block, a torn footer, a table shorter than the
 * MANIFEST says or missing are each named with their file; a partial table a cut left (not in the
 * MANIFEST) is not damage; a MANIFEST failing its own checksum leaves the verdict to LevelDB,
 * which refuses it. What a damaged table still gives is read from its blocks (Snappy included)
 * and matches what LevelDB reads from the same table whole. Tables checked once are trusted
 * (present is enough) only when the caller says so, after a clean stop.
 */
import t from 'tap'
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import {
  CHECKED_FILE,
  crc32c,
  damagedTables,
  entriesOfDamagedTable,
  leaveOutDamagedTables,
  liveTables,
  recordCheckedTables,
  type TableStats,
} from '../daemon/journal/table-check.js'

const ROWS = 6000
const key = (i: number) => `r!${String(i).padStart(12, '0')}`
const value = (i: number) =>
  JSON.stringify({ seq: i, type: 'meter.reading', wh: i * 37, note: `outlet A${i % 9} reading ${i}`, hash: `${i}`.repeat(12) })

/** A LevelDB on disk with many small tables (a 16 kB write buffer), its keys r!… and a few m!… */
async function build(): Promise<string> {
  const loc = mkdtempSync(join(tmpdir(), 'outpost-tables-'))
  const db = new Level<string, string>(loc, { writeBufferSize: 16 * 1024 })
  await db.open()
  for (let i = 1; i <= ROWS; i += 50)
    await db.batch(Array.from({ length: 50 }, (_, k) => ({ type: 'put' as const, key: key(i + k), value: value(i + k) })))
  await db.put('m!acked', '42')
  await db.close()
  return loc
}

const tables = (loc: string) =>
  readdirSync(loc)
    .filter((f) => f.endsWith('.ldb'))
    .sort()
const flip = (file: string, at: number, n = 16) => {
  const b = readFileSync(file)
  for (let i = at; i < at + n && i < b.length; i++) b[i] = b[i]! ^ 0xff
  writeFileSync(file, b)
}
/** The largest live table (not a leftover a close cut short): several data blocks, so a flip at byte 200 lands in its first. */
const largestLive = async (loc: string) => {
  const live = await liveTables(loc)
  return tables(loc)
    .filter((f) => live!.has(Number(f.slice(0, -4))))
    .sort((a, b) => statSync(join(loc, b)).size - statSync(join(loc, a)).size)[0]!
}
const stats = (): TableStats => ({ tables: 0, blocks: 0, compressed: 0, bytes: 0 })

t.test('CRC32C is the Castagnoli CRC LevelDB uses', async (t) => {
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283)
  t.equal(crc32c(Buffer.alloc(32)), 0x8a9136aa, 'the RFC 3720 vector of 32 zero bytes')
})

t.test('a healthy database: every live table checks whole, block by block', async (t) => {
  const loc = await build()
  t.teardown(() => rmSync(loc, { recursive: true, force: true }))
  const live = await liveTables(loc)
  t.ok(live, 'the MANIFEST reads')
  const files = tables(loc)
  const names = [...live!.keys()].map((n) => `${String(n).padStart(6, '0')}.ldb`)
  // A compaction cut short by the close may leave its output behind, not live: every live table is a file.
  t.same(
    names.filter((n) => !files.includes(n)),
    [],
    'every live table is a table file',
  )
  t.ok(names.length >= files.length - 2, `the live tables are the table files, but for a compaction's leftover (${names.length} of ${files.length})`)
  for (const [n, size] of live!)
    t.equal(statSync(join(loc, `${String(n).padStart(6, '0')}.ldb`)).size, size, `table ${n}: the size the MANIFEST records`)
  const s = stats()
  t.same(await damagedTables(loc, { stats: s }), [])
  t.equal(s.tables, names.length)
  t.ok(s.blocks > s.tables * 3, `every block checked (${s.blocks} in ${s.tables} tables)`)
  t.ok(s.compressed > 0, `Snappy blocks among them (${s.compressed})`)
})

t.test('what a table gives, read block by block, is what LevelDB reads from it', async (t) => {
  const loc = await build()
  t.teardown(() => rmSync(loc, { recursive: true, force: true }))
  const fromTables = new Map<string, string>()
  for (const f of tables(loc)) for (const [k, v] of await entriesOfDamagedTable(join(loc, f), 'r!')) fromTables.set(k, v)
  // LevelDB keeps the newest rows in its log; what the tables hold must each be what LevelDB reads.
  const db = new Level<string, string>(loc)
  await db.open()
  let wrong = 0
  for (const [k, v] of fromTables) if ((await db.get(k)) !== v) wrong++
  await db.close()
  t.ok(fromTables.size > ROWS / 2, `most rows are in tables (${fromTables.size} of ${ROWS})`)
  t.equal(wrong, 0, 'every entry read from the blocks is the value LevelDB returns')
  t.notOk(
    [...fromTables.keys()].some((k) => !k.startsWith('r!')),
    'only the prefix asked for',
  )
})

t.test('a flipped byte in a data block: the table is named, and only that block is lost from it', async (t) => {
  const loc = await build()
  t.teardown(() => rmSync(loc, { recursive: true, force: true }))
  const victim = await largestLive(loc)
  const whole = await entriesOfDamagedTable(join(loc, victim), 'r!')
  flip(join(loc, victim), 200)
  const damage = await damagedTables(loc)
  t.same(damage, [{ file: victim, problem: 'a data block at 0 fails its checksum' }])
  const left = await entriesOfDamagedTable(join(loc, victim), 'r!')
  t.ok(left.size < whole.size && left.size > 0, `the first block's rows are gone, the others read (${left.size} of ${whole.size})`)
  t.ok(
    [...left].every(([k, v]) => whole.get(k) === v),
    'every row still read is the row as written',
  )
})

t.test("a torn footer, a table cut short, a table missing: each named; LevelDB's own verdict on a bad MANIFEST", async (t) => {
  const loc = await build()
  t.teardown(() => rmSync(loc, { recursive: true, force: true }))
  const [a, b, c] = tables(loc)
  flip(join(loc, a!), statSync(join(loc, a!)).size - 4, 4)
  truncateSync(join(loc, b!), statSync(join(loc, b!)).size - 100)
  rmSync(join(loc, c!))
  const damage = await damagedTables(loc)
  t.same(
    damage.map((d) => d.file),
    [a, b, c],
  )
  t.match(damage[0]!.problem, /magic number/)
  t.match(damage[1]!.problem, /bytes, the MANIFEST says \d+/)
  t.equal(damage[2]!.problem, 'missing')

  const current = readFileSync(join(loc, 'CURRENT'), 'utf8').trim()
  flip(join(loc, current), 40, 2)
  t.equal(await liveTables(loc), undefined, 'a MANIFEST record failing its checksum: the live set is unknown')
  t.same(await damagedTables(loc), [], 'so the check does not guess')
  const db = new Level(loc, { createIfMissing: false })
  await t.rejects(db.open(), 'and LevelDB refuses that MANIFEST itself')
})

t.test('a partial table a cut left behind is not damage; on a copy it is removed without a word', async (t) => {
  const loc = await build()
  t.teardown(() => rmSync(loc, { recursive: true, force: true }))
  const some = tables(loc)[0]!
  const partial = join(loc, '999999.ldb')
  copyFileSync(join(loc, some), partial)
  truncateSync(partial, Math.floor(statSync(partial).size / 2))
  t.same(await damagedTables(loc), [], 'the live MANIFEST does not name it')
  t.same(await leaveOutDamagedTables(loc, 'r!'), [], 'nothing live was left out')
  t.notOk(tables(loc).includes('999999.ldb'), 'but the partial table is gone from the copy (repair would read it)')
  const victim = await largestLive(loc)
  flip(join(loc, victim), 200)
  const out = await leaveOutDamagedTables(loc, 'r!')
  t.same(
    out.map((d) => d.file),
    [victim],
  )
  t.ok(out[0]!.entries.size > 0, 'with the rows it still gave')
  t.notOk(tables(loc).includes(victim), 'and the damaged table is out of the copy')
})

t.test('tables checked once are trusted (present is enough) only when asked, after a clean stop', async (t) => {
  const loc = await build()
  t.teardown(() => rmSync(loc, { recursive: true, force: true }))
  const first = stats()
  const passed = new Map<number, number>()
  t.same(await damagedTables(loc, { trustChecked: true, passed, stats: first }), [])
  await recordCheckedTables(loc, passed)
  t.equal(first.tables, (await liveTables(loc))!.size, 'nothing recorded yet: every live table read whole')
  t.ok(readdirSync(loc).includes(CHECKED_FILE), 'the checked tables are recorded in the directory')
  const again = stats()
  t.same(await damagedTables(loc, { trustChecked: true, stats: again }), [])
  t.equal(again.tables, 0, 'trusted: none read again')
  // A table written since (LevelDB adds one): only it is read.
  const db = new Level<string, string>(loc, { writeBufferSize: 16 * 1024 })
  await db.open()
  for (let i = 1; i <= 400; i++) await db.put(key(ROWS + i), value(ROWS + i))
  await db.close()
  const after = stats()
  t.same(await damagedTables(loc, { trustChecked: true, stats: after }), [])
  t.ok(after.tables > 0 && after.tables < tables(loc).length, `only the tables written since are read (${after.tables} of ${tables(loc).length})`)

  const live = (await liveTables(loc))!
  const liveFiles = tables(loc).filter((f) => live.has(Number(f.slice(0, -4))))
  const victim = liveFiles[0]!
  flip(join(loc, victim), 200)
  t.same(await damagedTables(loc, { trustChecked: true }), [], 'a flip inside a trusted table is not seen by the trusted check')
  t.same(
    (await damagedTables(loc)).map((d) => d.file),
    [victim],
    'the full check (after an unclean stop) finds it',
  )
  rmSync(join(loc, liveFiles[1]!))
  t.equal((await damagedTables(loc, { trustChecked: true })).length, 1, 'a trusted table gone is found')
  // Cut short, a trusted table is not read here: LevelDB finds its footer out of place and says so (an error, not an abort).
  rmSync(join(loc, CHECKED_FILE))
  truncateSync(join(loc, victim), statSync(join(loc, victim)).size - 1)
  const raw = new Level<string, string>(loc, { createIfMissing: false })
  await raw.open().catch(() => {})
  const read = async () => {
    for await (const _ of raw.iterator()) {
      // read every table
    }
  }
  await t.rejects(read(), 'LevelDB refuses a table cut short with an error, not an abort')
  await raw.close().catch(() => {})
  writeFileSync(join(loc, CHECKED_FILE), '{"v":1,"tables":[[')
  const torn = stats()
  await damagedTables(loc, { trustChecked: true, stats: torn })
  t.ok(torn.tables > 0, 'a torn record of checked tables means a full check')
})
