/**
 * End to end: the built daemon (`outpost run`) on a journal whose LevelDB files were damaged in
 * ways LevelDB does not report (a failing SD card): the whole log garbled, its tail garbled,
 * the journal directory deleted while the gateway key remains. A car charges on the site peer;
 * the daemon stops cleanly (SIGTERM) twice, its files are damaged, and it starts again. What it
 * must report: an error-level `JOURNAL DAMAGED` line, `gateway.started.journalSalvage` naming
 * what was lost, and a boot record whose seq no earlier record had — read back with
 * `outpost records` after it stopped again — with every record still readable carried unchanged.
 */
import t, { type Test } from 'tap'
import { readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import type { JournalRecord, JournalSalvageInfo } from '../core/types.js'
import { runCli } from './helpers/cli.js'
import { garble } from './helpers/journal-charge.js'
import { startDaemon, startPeer, tempDir, waitFor, writeSiteConfig } from './helpers/e2e-kit.js'

type Started = JournalRecord & { type: 'gateway.started'; cleanShutdown: boolean; journalSalvage?: JournalSalvageInfo }

function records(config: string): JournalRecord[] {
  const r = runCli(['records', '--config', config])
  if (r.status !== 0) throw new Error(`outpost records: exit ${r.status}: ${r.stderr}`)
  return r.stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as JournalRecord)
}

/** One daemon run: up, a charging car seen, then SIGTERM; returns its log. */
async function runOnce(t: Test, config: string) {
  const d = startDaemon(t, config)
  await d.waitLog((l) => l.msg === 'outpost running', 'outpost running')
  await waitFor(() => d.logs().some((l) => /session/.test(l.msg)) || true, 'a poll')
  await new Promise((r) => setTimeout(r, 1500))
  const exit = await d.stop('SIGTERM')
  t.equal(exit.code, 0, 'stopped cleanly')
  return d
}

async function damagedBoot(t: Test, damage: (storage: string, journal: string) => void) {
  const dir = tempDir(t)
  const peer = await startPeer(t, { outlets: 1 })
  const config = writeSiteConfig({ dir, port: peer.port, outlets: 1, outlet: { 1: { autoStart: { userId: 'resident' } } } })
  await peer.plug(1, 16)
  await runOnce(t, config)
  await runOnce(t, config)
  const before = records(config)
  t.ok(before.length >= 2, `records before the damage (${before.length})`)
  const storage = join(dir, 'journal')
  damage(storage, join(storage, 'journal'))
  const d = startDaemon(t, config)
  await d.waitLog((l) => l.msg === 'outpost running', 'outpost running after the damage')
  const damaged = d.logs().find((l) => /^JOURNAL DAMAGED/.test(l.msg))
  t.ok(damaged, 'the daemon reports the damage')
  t.equal(damaged?.level, 'error', 'at error level')
  t.equal((await d.stop('SIGTERM')).code, 0, 'and runs until stopped')
  const after = records(config)
  const boots = after.filter((r) => r.type === 'gateway.started') as Started[]
  const started = boots.find((r) => r.journalSalvage)
  t.ok(started, 'the first boot after the damage carries journalSalvage')
  const last = before.at(-1)!.seq
  t.ok(started!.seq > last, `no seq given twice: the boot record is seq ${started!.seq}, the journal had given out up to ${last}`)
  const bySeq = new Map(before.map((r) => [r.seq, r]))
  const carried = after.filter((r) => r.seq <= last)
  t.ok(
    carried.every((r) => r.hash === bySeq.get(r.seq)?.hash),
    `the records carried (${carried.length} of ${before.length}) are the ones written`,
  )
  const v = runCli(['verify', '--config', config])
  t.equal(v.status, 0, `outpost verify accepts what the salvage announced: ${v.stdout}`)
  return { before, after, started: started!, log: damaged!, storage }
}

// A clean stop leaves the records in table files (LevelDB writes its memtable out at close): as in the field report,
// the damage is to every log and table file.
const dataFiles = (loc: string) => readdirSync(loc).filter((f) => f.endsWith('.log') || f.endsWith('.ldb'))

t.test('all of each log and table file garbled after clean stops: a new chain past the last seq, reported, never seq 1 again', async (t) => {
  const { before, started } = await damagedBoot(t, (_s, loc) => {
    for (const f of dataFiles(loc)) garble(join(loc, f))
  })
  t.match(started.journalSalvage, { mode: 'fresh', newChain: true, unknownAbove: null, sessionsMayBeLost: false })
  t.equal(started.seq, before.at(-1)!.seq + 1, 'the clean stop named the last seq: the new chain starts right after it')
  t.equal(started.prev, '0'.repeat(64))
})

t.test('the second half of each log and table file garbled: what is readable carried, the rest named lost', async (t) => {
  const { before, started, log } = await damagedBoot(t, (_s, loc) => {
    for (const f of dataFiles(loc)) garble(join(loc, f), 0.5)
  })
  const s = started.journalSalvage!
  t.equal(s.newChain, true)
  const top = s.carried?.to ?? 0
  t.same(
    s.carried ? s.lostAfter : s.lost,
    s.carried ? { from: top + 1, to: before.at(-1)!.seq } : [{ from: top + 1, to: before.at(-1)!.seq }],
    'the seqs lost are named',
  )
  t.match(log.msg, /were lost|could not be read/)
})

t.test('the journal directory deleted, the key remaining: reported, a fresh journal past every seq given out', async (t) => {
  const { before, started, log } = await damagedBoot(t, (_s, loc) => rmSync(loc, { recursive: true }))
  t.match(started.journalSalvage, { mode: 'fresh', movedTo: null, carried: null, newChain: true })
  t.same(started.journalSalvage?.lost, [{ from: 1, to: before.at(-1)!.seq }], 'every seq given out is named lost')
  t.equal(started.seq, before.at(-1)!.seq + 1)
  t.match(log.msg, /the journal directory was missing/)
})

t.test('the journal directory and its seq marker deleted, the key remaining: the highest seq is unknown, a time-based chain', async (t) => {
  const { before, started } = await damagedBoot(t, (storage, loc) => {
    rmSync(loc, { recursive: true })
    rmSync(join(storage, 'journal-seq.json'))
  })
  t.match(started.journalSalvage, { mode: 'fresh', newChain: true, unknownAbove: 0 })
  t.match(started.journalSalvage?.reason, /gateway key shows a journal existed/)
  t.ok(started.seq > 1e11, `the first seq is far above any old chain (${started.seq})`)
  t.ok(started.seq > before.at(-1)!.seq)
})
