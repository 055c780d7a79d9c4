/**
 * `outpost records`, `outpost verify` and `outpost repair` through the BUILT CLI
 * (npm test builds first), on a real journal on disk: stopped, running (a
 * snapshot is read), edited, and corrupt.
 */
import t from 'tap'
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import { spawnSync } from 'node:child_process'
import { runCli, cliPath } from './helpers/cli.js'
import { packagePath } from '../core/paths.js'
import { GENESIS_PREV, Journal, journalLocation, sealRecord } from '../daemon/journal/index.js'
import { openJournalForRun } from '../daemon/journal/salvage.js'
import { liveTables } from '../daemon/journal/table-check.js'
import { editOnDisk, opts, quietLog } from './helpers/journal-charge.js'
import type { JournalRecord, RecordBody } from '../core/types.js'

const dir = mkdtempSync(join(tmpdir(), 'outpost-journal-cli-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

function siteConfig(name: string): { file: string; storage: string } {
  const storage = join(dir, name)
  const cfg = JSON.parse(readFileSync(packagePath('config', 'example.json'), 'utf8')) as { storage: { dir: string } }
  cfg.storage.dir = storage
  const file = join(dir, `${name}.json`)
  writeFileSync(file, JSON.stringify(cfg))
  return { file, storage }
}

const T0 = Date.UTC(2026, 2, 1)
const body = (i: number): RecordBody => ({
  type: 'outlet.fault',
  ts: new Date(T0 + i * 1000).toISOString(),
  outlet: 'A1',
  detail: `meter timeout ${i}`,
})
const open = (storage: string): Promise<Journal> =>
  Journal.open(storage, { bootId: 'b-1', clockSynced: () => true, now: () => T0, compactEveryMs: 0 })

async function filled(name: string, n: number): Promise<{ file: string; storage: string; records: JournalRecord[] }> {
  const site = siteConfig(name)
  const j = await open(site.storage)
  const records = await j.commit({ records: Array.from({ length: n }, (_, i) => body(i + 1)) })
  await j.close({ clean: true })
  return { ...site, records }
}

t.test('records prints JSON lines exactly as committed; --from; verify says intact', async (t) => {
  const { file, records } = await filled('plain', 5)
  const r = runCli(['records', '--config', file])
  t.equal(r.status, 0, r.stderr)
  const lines = r.stdout.trim().split('\n')
  t.same(
    lines.map((l) => JSON.parse(l)),
    records,
  )
  const from = runCli(['records', `--config=${file}`, '--from', '4'])
  t.same(
    from.stdout
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as JournalRecord).seq),
    [4, 5],
  )
  t.equal(runCli(['records', '--config', file, '--from', '9']).stdout, '', 'past the head: nothing')
  const v = runCli(['verify', '--config', file])
  t.equal(v.status, 0, v.stdout + v.stderr)
  t.match(v.stdout, /intact: 5 records, seq 1\.\.5; acknowledged up to 0/)
})

t.test('verify of a JSON-lines file: intact, then the first break of an edit, a gap, a non-JSON line', async (t) => {
  const { file } = await filled('jsonl', 6)
  const text = runCli(['records', '--config', file]).stdout
  const good = join(dir, 'good.jsonl')
  writeFileSync(good, text)
  const ok = runCli(['verify', good])
  t.equal(ok.status, 0)
  t.match(ok.stdout, /intact: 6 records, seq 1\.\.6/)
  const lines = text.trim().split('\n')
  const edited = [...lines]
  edited[2] = edited[2]!.replace('meter timeout 3', 'meter timeout 33')
  writeFileSync(join(dir, 'edited.jsonl'), edited.join('\n') + '\n')
  const e = runCli(['verify', join(dir, 'edited.jsonl')])
  t.equal(e.status, 1)
  t.match(e.stdout, /BROKEN at seq 3 \(line 3\): hash mismatch/)
  writeFileSync(join(dir, 'gap.jsonl'), [...lines.slice(0, 3), ...lines.slice(4)].join('\n'))
  const g = runCli(['verify', join(dir, 'gap.jsonl')])
  t.equal(g.status, 1)
  t.match(g.stdout, /BROKEN at seq 5 \(line 4\): gap: seq 4\.\.4 missing/)
  writeFileSync(join(dir, 'junk.jsonl'), [lines[0], '{"seq": 2,', lines[1]].join('\n'))
  const j = runCli(['verify', join(dir, 'junk.jsonl')])
  t.equal(j.status, 1)
  t.match(j.stdout, /line 2 is not JSON/)
  const tail = join(dir, 'tail.jsonl')
  writeFileSync(tail, lines.slice(3).join('\n'))
  t.equal(runCli(['verify', tail]).status, 0, 'a range that starts after seq 1 (a pull, a compacted journal) verifies')
  t.equal(runCli(['verify', join(dir, 'missing.jsonl')]).status, 66)
})

t.test('usage, invalid config, missing journal', async (t) => {
  const { file } = await filled('usage', 1)
  t.equal(runCli(['records', '--config', file, '--from', 'x']).status, 64)
  t.equal(runCli(['records', '--config', file, '--bogus', '1']).status, 64)
  t.equal(runCli(['verify', '--config', file, 'also.jsonl']).status, 64)
  const bad = join(dir, 'bad.json')
  writeFileSync(bad, JSON.stringify({ site: { id: 'x' } }))
  for (const cmd of ['records', 'verify', 'repair']) {
    const r = runCli([cmd, '--config', bad])
    t.equal(r.status, 78, `${cmd}: invalid config`)
    t.ok(r.stderr.split('\n').includes(`${bad}: /storage: is required`), 'problems printed like check-config')
  }
  const empty = siteConfig('never-ran')
  const m = runCli(['records', '--config', empty.file])
  t.equal(m.status, 66)
  t.match(m.stderr, /JOURNAL_MISSING: no journal at/)
})

t.test('while the daemon holds the journal, records and verify read a snapshot; repair refuses', async (t) => {
  const { file, storage } = await filled('live', 3)
  const j = await open(storage)
  t.teardown(() => j.close({ clean: true }))
  await j.commit({ records: [body(4)] })
  const r = runCli(['records', '--config', file])
  t.equal(r.status, 0, r.stderr)
  t.equal(r.stdout.trim().split('\n').length, 4)
  t.match(r.stderr, /reading a snapshot copy/)
  const v = runCli(['verify', '--config', file])
  t.equal(v.status, 0)
  t.match(v.stdout, /intact: 4 records/)
  const rep = runCli(['repair', '--config', file])
  t.equal(rep.status, 75)
  t.match(rep.stderr, /JOURNAL_LOCKED: another outpost is already running/)
  await j.commit({ records: [body(5)] })
  t.equal(j.head(), 5, 'the running journal was not disturbed')
})

t.test('an edited record: verify names it, repair cannot fix a changed record and says so', async (t) => {
  const { file, storage } = await filled('edited', 4)
  const raw = new Level<string, string>(journalLocation(storage), { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  const r2 = JSON.parse((await raw.get('r!000000000002'))!) as { detail: string }
  r2.detail = 'nothing to see'
  await raw.put('r!000000000002', JSON.stringify(r2))
  await raw.close()
  const v = runCli(['verify', '--config', file])
  t.equal(v.status, 1)
  t.match(v.stdout, /BROKEN at seq 2 \(record 2\): hash mismatch/)
  const rep = runCli(['repair', '--config', file])
  t.equal(rep.status, 1)
  t.match(rep.stdout, /BROKEN at seq 2/)
})

t.test('a corrupt database: the daemon refuses, records/verify read a repaired copy, repair fixes it, the chain continues', async (t) => {
  const { file, storage, records } = await filled('corrupt', 5)
  writeFileSync(join(journalLocation(storage), 'CURRENT'), 'MANIFEST-999999\n')
  await t.rejects(open(storage), { code: /JOURNAL_(CORRUPT|OPEN_FAILED)/ })
  const v = runCli(['verify', '--config', file])
  t.equal(v.status, 1, 'a corrupt database is not "intact"')
  t.match(v.stderr + v.stdout, /corrupt|CORRUPT|cannot open/)
  const rep = runCli(['repair', '--config', file])
  t.equal(rep.status, 0, rep.stdout + rep.stderr)
  t.match(rep.stdout, /intact: 5 records, seq 1\.\.5/)
  const j = await open(storage)
  t.same(await j.read(1, 10), records, 'every record survived the repair')
  const [next] = await j.commit({ records: [body(6)] })
  t.equal(next!.prev, records[4]!.hash)
  await j.close({ clean: true })
  t.equal(runCli(['verify', '--config', file]).status, 0)
})

t.test('a flipped byte in a table: the daemon refuses naming it, verify reads around it, repair leaves it out and says so', async (t) => {
  const site = siteConfig('flipped')
  // A small write buffer moves the records into table files as they are committed.
  const j = await Journal.open(site.storage, { bootId: 'b-1', clockSynced: () => true, now: () => T0, compactEveryMs: 0, writeBufferSize: 4096 })
  for (let i = 0; i < 30; i++) await j.commit({ records: Array.from({ length: 10 }, (_, k) => body(i * 10 + k + 1)) })
  await j.close({ clean: true })
  const loc = journalLocation(site.storage)
  // A close can land during a memtable flush: LevelDB then abandons the table it was writing (not in
  // the MANIFEST; the log it came from is kept and replayed at the next open). An open replays that
  // log into a live table, and only a table the live MANIFEST names is damage when flipped.
  const db = new Level(loc)
  await db.open()
  await db.close()
  const live = (await liveTables(loc)) ?? new Map<number, number>()
  const tables = readdirSync(loc).filter((f) => f.endsWith('.ldb') && live.has(Number(f.slice(0, -4))))
  const victim = tables.sort((a, b) => statSync(join(loc, b)).size - statSync(join(loc, a)).size)[0]!
  const bytes = readFileSync(join(loc, victim))
  for (let i = 200; i < 216; i++) bytes[i] = bytes[i]! ^ 0xff
  writeFileSync(join(loc, victim), bytes)
  await t.rejects(open(site.storage), { code: 'JOURNAL_CORRUPT', message: new RegExp(`table ${victim}: a data block at 0 fails its checksum`) })
  const v = runCli(['verify', '--config', site.file])
  t.equal(v.status, 1, `verify ends (not a crash) and does not call it intact: ${v.stdout}${v.stderr}`)
  const rep = runCli(['repair', '--config', site.file])
  t.equal(rep.status, 1, `repair runs to its end: ${rep.stderr}`)
  t.match(rep.stdout, new RegExp(`table ${victim} left out \\(a data block at 0 fails its checksum\\)`))
  t.match(rep.stdout, /BROKEN at seq 1 .*records 1\.\.\d+ were lost/, 'and the records only it held are named lost, not called intact')
  // The daemon's boot on what repair left: it charges on, past every seq given out.
  const { journal, salvage } = await openJournalForRun(site.storage, { ...opts(() => T0), expectExisting: true }, quietLog())
  t.ok(salvage === undefined || journal.head() >= 300, `the boot goes on past seq 300 (head ${journal.head()})`)
  await journal.close({ clean: true })
})

t.test('records into a pipe that closes early (| head) stops quietly with exit 0', async (t) => {
  const { file } = await filled('pipe', 20_000)
  const r = spawnSync('bash', ['-c', `set -o pipefail; "${process.execPath}" "${cliPath}" records --config "${file}" | head -n 2`], {
    encoding: 'utf8',
    timeout: 120_000,
  })
  t.equal(r.status, 0, r.stderr)
  t.equal(r.stdout.trim().split('\n').length, 2)
  t.equal(r.stderr, '', 'no EPIPE trace')
})

t.test('verify understands a salvage: an announced hole passes with a line naming it; an unannounced gap or new chain fails', async (t) => {
  const { file, storage, records } = await filled('salvaged', 12)
  // Record 5 edited on disk: the salvage carries every other record and names seq 5 lost.
  await editOnDisk(storage, [records[4]!])
  const { journal, salvage } = await openJournalForRun(
    storage,
    opts(() => T0 + 1000),
    quietLog(),
  )
  t.same(salvage?.lost, [{ from: 5, to: 5 }])
  const [started] = await journal.commit({
    records: [{ type: 'gateway.started', ts: new Date(T0).toISOString(), version: 't', cleanShutdown: false, journalSalvage: salvage! }],
  })
  await journal.commit({ records: [body(13)] })
  await journal.close({ clean: true })
  t.equal(started!.seq, 13)

  const v = runCli(['verify', '--config', file])
  t.equal(v.status, 0, `the journal verifies: ${v.stdout}`)
  t.match(v.stdout, /salvage announced at seq 13: seqs 5\.\.5 lost\n/, 'the lost seqs are named')
  t.match(v.stdout, /intact: 13 records, seq 1\.\.14 across 1 break a salvage announced/)
  const text = runCli(['records', '--config', file]).stdout
  const lines = text.trim().split('\n')
  const good = join(dir, 'salvaged.jsonl')
  writeFileSync(good, text)
  const f = runCli(['verify', good])
  t.equal(f.status, 0, 'so does its JSON-lines export')
  t.match(f.stdout, /salvage announced at seq 13: seqs 5\.\.5 lost/)

  // A gap the salvage record does not name: seq 8 left out.
  writeFileSync(join(dir, 'salvaged-gap.jsonl'), lines.filter((l) => (JSON.parse(l) as JournalRecord).seq !== 8).join('\n'))
  const g = runCli(['verify', join(dir, 'salvaged-gap.jsonl')])
  t.equal(g.status, 1, 'an unannounced gap is a break')
  t.match(g.stdout, /BROKEN at seq 9 \(line 7\): gap: seq 8\.\.8 missing, and no salvage record after it names those seqs lost/)

  // A new chain (prev 64 zeros) that no salvage announces.
  const last = JSON.parse(lines.at(-1)!) as JournalRecord
  const forged = sealRecord(body(15), last.seq + 1, GENESIS_PREV, 'b-1', true)
  writeFileSync(join(dir, 'salvaged-chain.jsonl'), [...lines, JSON.stringify(forged)].join('\n'))
  const c = runCli(['verify', join(dir, 'salvaged-chain.jsonl')])
  t.equal(c.status, 1, 'an unannounced new chain is a break')
  t.match(c.stdout, /BROKEN at seq 15 \(line 14\): prev does not match .*no salvage announces a new chain here/)

  // The same new chain, announced by its first record: accepted, named.
  const announced = sealRecord(
    {
      type: 'gateway.started',
      ts: new Date(T0).toISOString(),
      version: 't',
      cleanShutdown: false,
      journalSalvage: { ...salvage!, lost: null, carried: { from: 1, to: last.seq }, newChain: true, lostAfter: { from: last.seq + 1, to: 30 } },
    },
    100,
    GENESIS_PREV,
    'b-1',
    true,
  )
  writeFileSync(join(dir, 'salvaged-new.jsonl'), [...lines, JSON.stringify(announced)].join('\n'))
  const n = runCli(['verify', join(dir, 'salvaged-new.jsonl')])
  t.equal(n.status, 0, `an announced new chain passes: ${n.stdout}`)
  t.match(n.stdout, /salvage announced at seq 100: seqs 15\.\.99 lost, a new chain starts at seq 100/)
})
