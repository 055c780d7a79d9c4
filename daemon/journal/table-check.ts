/**
 * Checking LevelDB's table files before LevelDB reads them: every block of every
 * table the live MANIFEST names must match its CRC32C.
 *
 * Why: the LevelDB bundled with classic-level runs without paranoid checks, so it
 * reads table blocks without verifying their checksums, and it keeps its debug
 * assertions. A flipped byte in a table is then either read as a different value,
 * or (when it garbles a key) trips an assertion in a compaction
 * (`TableBuilder::Add: Compare(key, last_key) > 0`) that aborts the whole process,
 * at every boot. Checked here first, the same damage is JOURNAL_CORRUPT, and boot
 * salvages instead of crashing in a loop.
 *
 * Owns: the table format as far as checksums go (footer, index and meta blocks,
 * block trailers, Snappy for compressed index blocks), the MANIFEST's log format and
 * version edits as far as which tables are live, and leaving damaged tables out of a
 * copy that is about to be repaired or read.
 * Must never: write to a journal directory other than a copy the caller owns
 * (leaveOutDamagedTables), or call a table damaged that LevelDB would read whole: a
 * partial table a cut left behind is not live, so it is not damage.
 */
import { open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { levelLocked } from './level-repair.js'

const CRC_TABLE = (() => {
  const table = new Uint32Array(256)
  for (let i = 0; i < 256; i++) {
    let c = i
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
    table[i] = c >>> 0
  }
  return table
})()

/** CRC32C (Castagnoli) of `buf[start, end)`, as LevelDB's crc32c::Value computes it. */
export function crc32c(buf: Uint8Array, start = 0, end = buf.length): number {
  let c = 0xffffffff
  for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

/** LevelDB stores a CRC masked (rotated and offset) so that a CRC of data holding CRCs stays strong. */
export function maskCrc(crc: number): number {
  return (((crc >>> 15) | (crc << 17)) + 0xa282ead8) >>> 0
}

class Damage extends Error {}

/** A varint (up to 64 bits, kept as a JS number: offsets and sizes of files fit) at `pos`. */
function varint(buf: Uint8Array, pos: { at: number }, limit = buf.length): number {
  let result = 0
  let scale = 1
  for (let i = 0; i < 10; i++) {
    if (pos.at >= limit) throw new Damage('a varint runs past its block')
    const b = buf[pos.at++]!
    result += (b & 0x7f) * scale
    if (b < 0x80) return result
    scale *= 128
  }
  throw new Damage('a varint longer than 10 bytes')
}

/** Snappy's raw format (what LevelDB's kSnappyCompression blocks hold). */
export function snappyUncompress(src: Uint8Array): Uint8Array {
  const pos = { at: 0 }
  const length = varint(src, pos)
  if (length > 64 * 1024 * 1024) throw new Damage(`a compressed block claims ${length} bytes`)
  const out = new Uint8Array(length)
  let o = 0
  while (pos.at < src.length) {
    const tag = src[pos.at++]!
    const kind = tag & 3
    if (kind === 0) {
      let len = tag >>> 2
      if (len >= 60) {
        const bytes = len - 59
        if (pos.at + bytes > src.length) throw new Damage('a literal length runs past the block')
        len = 0
        for (let i = 0; i < bytes; i++) len += src[pos.at + i]! * 2 ** (8 * i)
        pos.at += bytes
      }
      len += 1
      if (pos.at + len > src.length || o + len > length) throw new Damage('a literal runs past the block')
      out.set(src.subarray(pos.at, pos.at + len), o)
      pos.at += len
      o += len
      continue
    }
    let len: number
    let offset: number
    if (kind === 1) {
      if (pos.at >= src.length) throw new Damage('a copy runs past the block')
      len = ((tag >>> 2) & 7) + 4
      offset = ((tag >>> 5) << 8) | src[pos.at++]!
    } else {
      const bytes = kind === 2 ? 2 : 4
      if (pos.at + bytes > src.length) throw new Damage('a copy runs past the block')
      len = (tag >>> 2) + 1
      offset = 0
      for (let i = 0; i < bytes; i++) offset += src[pos.at + i]! * 2 ** (8 * i)
      pos.at += bytes
    }
    if (offset === 0 || offset > o || o + len > length) throw new Damage('a copy reaches outside the block')
    for (let i = 0; i < len; i++, o++) out[o] = out[o - offset]!
  }
  if (o !== length) throw new Damage(`a compressed block gives ${o} bytes, not the ${length} it claims`)
  return out
}

const FOOTER = 48
const MAGIC = [0x57, 0xfb, 0x80, 0x8b, 0x24, 0x75, 0x47, 0xdb]
const TRAILER = 5

interface Handle {
  offset: number
  size: number
}

function handleAt(buf: Uint8Array, pos: { at: number }, limit: number): Handle {
  return { offset: varint(buf, pos, limit), size: varint(buf, pos, limit) }
}

/** The block at `h` of a table held in `file`, its checksum verified; uncompressed. */
function block(file: Uint8Array, h: Handle, what: string, stats: TableStats): Uint8Array {
  const end = h.offset + h.size
  if (end + TRAILER > file.length) throw new Damage(`${what} at ${h.offset} (${h.size} bytes) runs past the end of the table`)
  const stored = (file[end + 1]! | (file[end + 2]! << 8) | (file[end + 3]! << 16) | (file[end + 4]! << 24)) >>> 0
  if (maskCrc(crc32c(file, h.offset, end + 1)) !== stored) throw new Damage(`${what} at ${h.offset} fails its checksum`)
  stats.blocks++
  const type = file[end]!
  if (type === 0) return file.subarray(h.offset, end)
  if (type === 1) {
    stats.compressed++
    try {
      return snappyUncompress(file.subarray(h.offset, end))
    } catch (err) {
      throw new Damage(`${what} at ${h.offset} does not uncompress: ${(err as Error).message}`)
    }
  }
  throw new Damage(`${what} at ${h.offset} has an unknown compression type ${type}`)
}

/** The entries of a block, keys whole (each shares a prefix with the one before); stops with Damage at the first that does not parse. */
function blockEntries(b: Uint8Array, what: string, onEntry: (key: Uint8Array, value: Uint8Array) => void): void {
  if (b.length < 4) throw new Damage(`${what} is too short to hold its restart count`)
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength)
  const restarts = view.getUint32(b.length - 4, true)
  const limit = b.length - 4 - 4 * restarts
  if (restarts < 1 || limit < 0) throw new Damage(`${what} has a restart count (${restarts}) its size cannot hold`)
  let key: Uint8Array = new Uint8Array(0)
  const pos = { at: 0 }
  while (pos.at < limit) {
    const shared = varint(b, pos, limit)
    const unshared = varint(b, pos, limit)
    const valueLength = varint(b, pos, limit)
    if (shared > key.length || pos.at + unshared + valueLength > limit) throw new Damage(`an entry of ${what} runs past its block`)
    const next = new Uint8Array(shared + unshared)
    next.set(key.subarray(0, shared))
    next.set(b.subarray(pos.at, pos.at + unshared), shared)
    key = next
    pos.at += unshared
    onEntry(key, b.subarray(pos.at, pos.at + valueLength))
    pos.at += valueLength
  }
}

/** The values of a block's entries (for an index or meta-index block: the handles of the blocks it names). */
function blockValues(b: Uint8Array, what: string): Uint8Array[] {
  if (b.length < 4) throw new Damage(`${what} is too short to hold its restart count`)
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength)
  const restarts = view.getUint32(b.length - 4, true)
  const limit = b.length - 4 - 4 * restarts
  if (restarts < 1 || limit < 0) throw new Damage(`${what} has a restart count (${restarts}) its size cannot hold`)
  const values: Uint8Array[] = []
  const pos = { at: 0 }
  while (pos.at < limit) {
    varint(b, pos, limit) // the key bytes shared with the entry before
    const unshared = varint(b, pos, limit)
    const valueLength = varint(b, pos, limit)
    pos.at += unshared
    if (pos.at + valueLength > limit) throw new Damage(`an entry of ${what} runs past its block`)
    values.push(b.subarray(pos.at, pos.at + valueLength))
    pos.at += valueLength
  }
  return values
}

export interface TableStats {
  tables: number
  blocks: number
  compressed: number
  bytes: number
}

/** Throws Damage naming what fails; otherwise every block of the table (data, filter, meta-index, index) checked. */
function checkTable(file: Uint8Array, stats: TableStats): void {
  if (file.length < FOOTER) throw new Damage(`${file.length} bytes: shorter than a table's footer`)
  const footer = file.length - FOOTER
  for (let i = 0; i < 8; i++) if (file[footer + 40 + i] !== MAGIC[i]) throw new Damage("the footer's magic number is wrong")
  const pos = { at: footer }
  const metaindex = handleAt(file, pos, footer + 40)
  const index = handleAt(file, pos, footer + 40)
  const handles = (b: Uint8Array, what: string): Handle[] =>
    blockValues(b, what).map((v) => {
      const p = { at: 0 }
      const h = handleAt(v, p, v.length)
      if (p.at !== v.length) throw new Damage(`${what} holds an entry that is not a block handle`)
      return h
    })
  for (const h of handles(block(file, index, 'the index block', stats), 'the index block')) block(file, h, 'a data block', stats)
  for (const h of handles(block(file, metaindex, 'the meta-index block', stats), 'the meta-index block')) block(file, h, 'a meta block', stats)
  stats.tables++
  stats.bytes += file.length
}

/** The records of a LevelDB log-format file (the MANIFEST); undefined when a record fails its checksum. */
function logRecords(buf: Uint8Array): Uint8Array[] | undefined {
  const BLOCK = 32768
  const records: Uint8Array[] = []
  let pending: Uint8Array[] | undefined
  let at = 0
  while (at < buf.length) {
    const left = BLOCK - (at % BLOCK)
    if (left < 7) {
      at += left
      continue
    }
    if (at + 7 > buf.length) break // a header a cut tore off: LevelDB reads to here too
    const length = buf[at + 4]! | (buf[at + 5]! << 8)
    const type = buf[at + 6]!
    if (type === 0 && length === 0) {
      at += left // preallocated zeros: the rest of the block is empty
      continue
    }
    if (7 + length > left) return undefined
    if (at + 7 + length > buf.length) break // a record a cut tore off at the end
    const stored = (buf[at]! | (buf[at + 1]! << 8) | (buf[at + 2]! << 16) | (buf[at + 3]! << 24)) >>> 0
    if (maskCrc(crc32c(buf, at + 6, at + 7 + length)) !== stored) return undefined
    const payload = buf.subarray(at + 7, at + 7 + length)
    at += 7 + length
    if (type === 1) records.push(payload)
    else if (type === 2) pending = [payload]
    else if (type === 3 && pending) pending.push(payload)
    else if (type === 4 && pending) {
      pending.push(payload)
      records.push(Buffer.concat(pending))
      pending = undefined
    } else return undefined
  }
  return records
}

/** Table number → its size, as the MANIFEST's version edits leave them; undefined when they cannot be read. */
function liveFromManifest(buf: Uint8Array): Map<number, number> | undefined {
  const records = logRecords(buf)
  if (!records) return undefined
  const live = new Map<string, { number: number; size: number }>()
  try {
    for (const edit of records) {
      const pos = { at: 0 }
      const deleted: string[] = []
      const added: [string, { number: number; size: number }][] = []
      while (pos.at < edit.length) {
        const tag = varint(edit, pos)
        const skipSlice = () => {
          const n = varint(edit, pos)
          pos.at += n
        }
        if (tag === 1) skipSlice()
        else if (tag === 2 || tag === 3 || tag === 4 || tag === 9) varint(edit, pos)
        else if (tag === 5) {
          varint(edit, pos)
          skipSlice()
        } else if (tag === 6) deleted.push(`${varint(edit, pos)}:${varint(edit, pos)}`)
        else if (tag === 7) {
          const level = varint(edit, pos)
          const number = varint(edit, pos)
          const size = varint(edit, pos)
          skipSlice()
          skipSlice()
          added.push([`${level}:${number}`, { number, size }])
        } else return undefined
        if (pos.at > edit.length) return undefined
      }
      for (const k of deleted) live.delete(k)
      for (const [k, v] of added) live.set(k, v)
    }
  } catch {
    return undefined
  }
  return new Map([...live.values()].map((v) => [v.number, v.size]))
}

/** The tables the live version of the LevelDB at `location` is made of (number → size); undefined when CURRENT or its MANIFEST cannot be read. */
export async function liveTables(location: string): Promise<Map<number, number> | undefined> {
  try {
    const current = (await readFile(join(location, 'CURRENT'), 'utf8')).trim()
    if (!/^MANIFEST-\d+$/.test(current)) return undefined
    return liveFromManifest(await readFile(join(location, current)))
  } catch {
    return undefined
  }
}

export interface TableDamage {
  /** The table's file name, e.g. `000051.ldb` (or `.sst`, LevelDB's older name). */
  file: string
  problem: string
}

/** A live table left out of a copy, with the entries under the asked prefix it still gave (leaveOutDamagedTables). */
export interface LeftOutTable extends TableDamage {
  entries: Map<string, string>
}

/** LevelDB's name for table `number` (a missing one is named so too). */
const tableName = (number: number): string => `${String(number).padStart(6, '0')}.ldb`

function tableFile(names: string[], number: number): string | undefined {
  const base = String(number).padStart(6, '0')
  return names.find((n) => n === `${base}.ldb` || n === `${base}.sst`)
}

/**
 * What is wrong with the table file at `path`, or undefined when every block checks: shorter or
 * longer than the MANIFEST's `size` (when it names one), or a block failing its checksum. Throws
 * only what is not damage (an I/O error).
 */
async function tableProblem(path: string, size: number | undefined, stats: TableStats): Promise<string | undefined> {
  try {
    const actual = (await stat(path)).size
    if (size !== undefined && actual !== size) throw new Damage(`${actual} bytes, the MANIFEST says ${size}`)
    checkTable(await readTable(path, size), stats)
    return undefined
  } catch (err) {
    if (err instanceof Damage) return err.message
    throw err
  }
}

async function readTable(path: string, size?: number): Promise<Uint8Array> {
  const fd = await open(path, 'r')
  try {
    const length = size ?? (await fd.stat()).size
    const buf = Buffer.alloc(length)
    const { bytesRead } = await fd.read(buf, 0, length, 0)
    if (bytesRead < length) throw new Damage(`the MANIFEST says ${length} bytes, the file holds ${bytesRead}`)
    return buf
  } finally {
    await fd.close()
  }
}

/**
 * The tables of a journal directory checked whole before (number → size), in a file LevelDB
 * ignores (it is not one of its names), so that it moves with the directory and never outlives
 * it. A table file is never rewritten and its number never reused within a directory, so a
 * table checked once needs only to be there, as long as nothing could have changed it since: the
 * caller trusts this only after a clean stop (see CheckOptions.trustChecked).
 */
export const CHECKED_FILE = 'OUTPOST-CHECKED-TABLES.json'

async function readChecked(location: string): Promise<Map<number, number>> {
  try {
    const parsed = JSON.parse(await readFile(join(location, CHECKED_FILE), 'utf8')) as { v?: unknown; tables?: unknown }
    if (parsed.v !== 1 || !Array.isArray(parsed.tables)) return new Map()
    return new Map(
      (parsed.tables as unknown[]).filter((e): e is [number, number] => Array.isArray(e) && e.length === 2 && e.every(Number.isSafeInteger)),
    )
  } catch {
    return new Map()
  }
}

/**
 * Record `tables` (a check's CheckOptions.passed) as checked. Written whole or not at all (a temporary file renamed);
 * unsynced: a lost or torn file only means a full check. The caller writes it only once LevelDB opened the
 * directory: a journal found damaged is kept exactly as it was.
 */
export async function recordCheckedTables(location: string, tables: Map<number, number>): Promise<void> {
  const tmp = join(location, `${CHECKED_FILE}.tmp`)
  await writeFile(tmp, JSON.stringify({ v: 1, tables: [...tables] }))
  await rename(tmp, join(location, CHECKED_FILE))
}

export interface CheckOptions {
  /**
   * Tables a previous check recorded (CHECKED_FILE) are checked for presence only. Only after a clean
   * stop: after a crash (an abort in a compaction among them) every table is read again.
   */
  trustChecked?: boolean
  /** Filled with the live tables (number → size) when every one checks, for recordCheckedTables. */
  passed?: Map<number, number>
  stats?: TableStats
}

/**
 * Every table the live MANIFEST of `location` names that is missing, shorter than recorded, or
 * holds a block failing its checksum. [] when all check out, and when the MANIFEST itself cannot
 * be read (LevelDB then refuses to open on its own, with its own error). Only a verdict on a
 * database no process has open: a running LevelDB replaces its tables under the check (see
 * checkedTables).
 */
export async function damagedTables(location: string, o: CheckOptions = {}): Promise<TableDamage[]> {
  const stats = o.stats ?? { tables: 0, blocks: 0, compressed: 0, bytes: 0 }
  const live = await liveTables(location)
  if (!live) return []
  const names = await readdir(location)
  const checked = o.trustChecked ? await readChecked(location) : new Map<number, number>()
  const damage: TableDamage[] = []
  for (const [number, size] of [...live].sort((a, b) => a[0] - b[0])) {
    const file = tableFile(names, number)
    if (!file) {
      damage.push({ file: tableName(number), problem: 'missing' })
      continue
    }
    // Trusted: present is enough. A trusted table cut short or grown since reads as a footer out of place, which
    // LevelDB reports as corruption (an error, not an abort); a stat per table would cost more than the open.
    if (checked.get(number) === size) continue
    try {
      const problem = await tableProblem(join(location, file), size, stats)
      if (problem !== undefined) damage.push({ file, problem })
    } catch (err) {
      // Gone between the listing and the read: another process has this LevelDB open (the caller asks its lock).
      if ((err as { code?: string }).code !== 'ENOENT') throw err
      damage.push({ file, problem: 'missing' })
    }
  }
  if (damage.length === 0) for (const [n, size] of live) o.passed?.set(n, size)
  return damage
}

/**
 * What a damaged table still gives: every entry (a put, not a deletion) whose user key starts with
 * `prefix`, read from each data block that still parses, checksum or not. The caller must check
 * each value on its own terms (a journal record carries its own hash); for the same key, the
 * newest put wins.
 */
export async function entriesOfDamagedTable(path: string, prefix: string): Promise<Map<string, string>> {
  const out = new Map<string, { seq: number; value: string }>()
  const want = Buffer.from(prefix)
  let file: Uint8Array
  try {
    file = await readTable(path)
  } catch {
    return new Map()
  }
  const unchecked = (h: Handle): Uint8Array => {
    const end = h.offset + h.size
    if (end + TRAILER > file.length) throw new Damage('a block runs past the end of the table')
    return file[end] === 1 ? snappyUncompress(file.subarray(h.offset, end)) : file.subarray(h.offset, end)
  }
  try {
    if (file.length < FOOTER) return new Map()
    const pos = { at: file.length - FOOTER }
    handleAt(file, pos, file.length)
    const index = handleAt(file, pos, file.length)
    const handles = blockValues(unchecked(index), 'the index block').map((v) => handleAt(v, { at: 0 }, v.length))
    for (const h of handles) {
      try {
        blockEntries(unchecked(h), 'a data block', (key, value) => {
          if (key.length < 8 + want.length || Buffer.compare(key.subarray(0, want.length), want) !== 0) return
          const tag = key.subarray(key.length - 8)
          if (tag[0] !== 1) return // a deletion (type 0), or garbage
          const seq = Number(Buffer.from(tag).readBigUInt64LE(0) >> 8n)
          const user = Buffer.from(key.subarray(0, key.length - 8)).toString('utf8')
          const had = out.get(user)
          if (!had || had.seq < seq) out.set(user, { seq, value: Buffer.from(value).toString('utf8') })
        })
      } catch {
        // this block gives nothing more; the next may
      }
    }
  } catch {
    // the index itself is unreadable: what was read stays
  }
  return new Map([...out].map(([k, v]) => [k, v.value]))
}

/** How a damage list reads in a log line or an error message. */
export function describeDamage(damage: TableDamage[]): string {
  return damage.map((d) => `table ${d.file}: ${d.problem}`).join('; ')
}

/**
 * On a copy about to be repaired or read: delete every table file that fails its check, live
 * or not (LevelDB's repair reads every table in the directory). Returns the live ones, each with
 * the entries under `prefix` (when given) it still gave (entriesOfDamagedTable); a failing table the MANIFEST
 * does not name (a partial output a cut left, an obsolete input) held nothing the live ones do not.
 */
export async function leaveOutDamagedTables(copy: string, prefix?: string): Promise<LeftOutTable[]> {
  const live = (await liveTables(copy)) ?? new Map<number, number>()
  const lost: LeftOutTable[] = []
  const stats: TableStats = { tables: 0, blocks: 0, compressed: 0, bytes: 0 }
  const names = await readdir(copy)
  for (const number of live.keys()) if (!tableFile(names, number)) lost.push({ file: tableName(number), problem: 'missing', entries: new Map() })
  for (const file of names.filter((n) => /^\d+\.(ldb|sst)$/.test(n))) {
    const size = live.get(Number(file.slice(0, -4)))
    const problem = await tableProblem(join(copy, file), size, stats)
    if (problem === undefined) continue
    if (size !== undefined)
      lost.push({ file, problem, entries: prefix === undefined ? new Map() : await entriesOfDamagedTable(join(copy, file), prefix) })
    await rm(join(copy, file), { force: true })
  }
  return lost
}

/**
 * damagedTables, for a caller about to open `location`: [] when every table checks, or the damage
 * found. When something looks damaged, levelLocked (LevelDB's lock, asked in a child without
 * recovering anything) tells whether another process has it open, replacing tables under the check: 'locked' then,
 * for the caller to refuse as LevelDB's own open would. Otherwise the check is run again on the
 * database at rest, and that is the verdict.
 */
export async function checkedTables(location: string, o: CheckOptions = {}): Promise<TableDamage[] | 'locked'> {
  if ((await damagedTables(location, o)).length === 0) return []
  if (await levelLocked(location)) return 'locked'
  return damagedTables(location, o)
}
