/**
 * Every command writes through the Io it is given: `records`, `verify`, `repair` and
 * `scan` run in-process through cli(argv, io) on a real journal on disk and a real
 * simulated Modbus TCP site, and what they say is found in that Io.
 */
import t from 'tap'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { cli } from '../daemon/cli.js'
import type { Io } from '../daemon/cli-common.js'
import { packagePath } from '../core/paths.js'
import { Journal } from '../daemon/journal/index.js'
import { startSim } from '../drivers/sim.js'
import type { JournalRecord, RecordBody } from '../core/types.js'

const dir = mkdtempSync(join(tmpdir(), 'outpost-cli-io-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

/** An Io that keeps what was written (no stream behind it: records writes through out()). */
function capture(): Io & { outText: () => string; errText: () => string } {
  const out: string[] = []
  const err: string[] = []
  return { out: (s) => void out.push(s), err: (s) => void err.push(s), outText: () => out.join(''), errText: () => err.join('') }
}

const T0 = Date.UTC(2026, 2, 1)
const body = (i: number): RecordBody => ({
  type: 'outlet.fault',
  ts: new Date(T0 + i * 1000).toISOString(),
  outlet: 'A1',
  detail: `meter timeout ${i}`,
})

async function filled(name: string, n: number): Promise<{ file: string; records: JournalRecord[] }> {
  const storage = join(dir, name)
  const cfg = JSON.parse(readFileSync(packagePath('config', 'example.json'), 'utf8')) as { storage: { dir: string } }
  cfg.storage.dir = storage
  const file = join(dir, `${name}.json`)
  writeFileSync(file, JSON.stringify(cfg))
  const j = await Journal.open(storage, { bootId: 'b-1', clockSynced: () => true, now: () => T0, compactEveryMs: 0 })
  const records = await j.commit({ records: Array.from({ length: n }, (_, i) => body(i + 1)) })
  await j.close({ clean: true })
  return { file, records }
}

t.test('records writes the JSON lines to io.out', async (t) => {
  const { file, records } = await filled('records', 3)
  const io = capture()
  t.equal(await cli(['records', '--config', file, '--from', '2'], io), 0, io.errText())
  t.same(
    io
      .outText()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l)),
    records.slice(1),
  )
  t.equal(io.errText(), '')
})

t.test('records: a usage error names the flag on io.err', async (t) => {
  const io = capture()
  t.equal(await cli(['records', '--bogus', '1'], io), 64)
  t.match(io.errText(), /outpost records: .*--bogus/)
  t.match(io.errText(), /Usage: outpost records/)
  t.equal(io.outText(), '')
})

t.test('verify writes its verdict to io.out, for the journal and for a JSON-lines file', async (t) => {
  const { file, records } = await filled('verify', 4)
  const io = capture()
  t.equal(await cli(['verify', '--config', file], io), 0)
  t.match(io.outText(), /intact: 4 records, seq 1\.\.4; acknowledged up to 0/)
  const jsonl = join(dir, 'broken.jsonl')
  writeFileSync(jsonl, [records[0], { ...records[1], detail: 'edited' }].map((r) => JSON.stringify(r)).join('\n') + '\n')
  t.equal(await cli(['verify', jsonl], io), 1)
  t.match(io.outText(), /broken\.jsonl: BROKEN at seq 2 \(line 2\)/)
  t.equal(await cli(['verify', join(dir, 'absent.jsonl')], io), 66)
  t.match(io.errText(), /outpost verify: cannot read .*absent\.jsonl: no such file/)
})

t.test('repair writes its report to io.out; an invalid config goes to io.err', async (t) => {
  const { file } = await filled('repair', 2)
  const io = capture()
  t.equal(await cli(['repair', '--config', file], io), 0, io.errText())
  t.match(io.outText(), /LevelDB repair done/)
  t.match(io.outText(), /intact: 2 records, seq 1\.\.2; acknowledged up to 0\. The daemon can start\./)
  const bad = join(dir, 'bad.json')
  writeFileSync(bad, '{"site": {}}')
  t.equal(await cli(['repair', '--config', bad], io), 78)
  t.match(io.errText(), /bad\.json/)
})

t.test('scan writes the table to io.out and its progress to io.err', async (t) => {
  const sim = await startSim({ outlets: 1, port: 0, speed: 0, script: false })
  t.teardown(() => sim.close())
  const io = capture()
  t.equal(await cli(['scan', '--bus', `tcp://127.0.0.1:${sim.port}`, '--units', '1-2,100'], io), 0, io.errText())
  t.match(io.outText(), /^1\s+meter\s+eastron-sdm120\s/m)
  t.match(io.outText(), /# config snippet/)
  t.match(io.errText(), /scanning tcp:\/\/127\.0\.0\.1:\d+ units 1-100/)
  t.equal(await cli(['scan', '--bus', `tcp://127.0.0.1:${sim.port}`, '--units', '0-3'], io), 64)
  t.match(io.errText(), /--units: 0-3 must be within 1-247/)
})
