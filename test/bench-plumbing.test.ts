/**
 * The benchmark plumbing on a tiny scale (no timing asserted: performance lives
 * in bench/): /proc parsing, the leak-indicator slopes, percentiles, the
 * table's verdict column, and the exit status of `npm run bench` (the built
 * dist/bench/run.js) when a benchmark throws or cannot measure.
 */
import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { packagePath } from '../core/paths.js'
import { parseCpuS, parseRssMB, sampleFor, sampleProc, slope, floorSlope, summarise, type ProcSample } from '../bench/footprint.js'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { binNodeFlags, bounded, notMeasured, percentile, row, table, verdict } from '../bench/lib.js'
import { parseProcIo, rawFacts, readProcIo, simulatedDay } from '../bench/disk.js'
import { openSync, writeSync, fsyncSync, closeSync } from 'node:fs'
import { Journal, openOffline } from '../daemon/journal/index.js'
import { recordKey } from '../daemon/journal/keys.js'

t.test('/proc parsing', async (t) => {
  t.equal(parseRssMB('Name:\tnode\nVmPeak:\t  900000 kB\nVmRSS:\t   102400 kB\nRssAnon:\t 1 kB\n'), 100)
  t.throws(() => parseRssMB('Name:\tnode\nState:\tZ (zombie)\n'), /no VmRSS/)
  // A command name with spaces and a parenthesis must not shift the fields: utime 250, stime 50 ticks.
  const stat = '4242 (node (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 11 0 100 1000000 2000 18446744073709551615'
  t.equal(parseCpuS(stat, 100), 3)
  t.throws(() => parseCpuS('4242 (node) S 1', 100), /utime\/stime/)
})

t.test('sampling a real process: its RSS and CPU time', async (t) => {
  const mine = sampleProc(process.pid)
  const rss = process.memoryUsage().rss / 1048576
  t.ok(Math.abs(mine.rssMB - rss) < 0.25 * rss, `VmRSS ${mine.rssMB.toFixed(1)} MB agrees with process.memoryUsage().rss ${rss.toFixed(1)} MB`)
  // A child that burns CPU for a while: its utime+stime grows between samples.
  const child = spawn(process.execPath, ['-e', 'const end = Date.now() + 1500; while (Date.now() < end) {}'], { stdio: 'ignore' })
  const exited = new Promise((r) => child.once('exit', r))
  let alive = true
  child.once('exit', () => (alive = false))
  const samples = await sampleFor(child.pid!, 600, 200, () => alive)
  t.ok(samples.length >= 3, `${samples.length} samples`)
  t.ok(samples[samples.length - 1]!.cpuS > samples[0]!.cpuS, 'CPU time grows while the child spins')
  t.ok(
    samples.every((s) => s.rssMB > 0),
    'every sample has an RSS',
  )
  t.ok(samples[samples.length - 1]!.rssMB > 10, `a running node has more than 10 MB resident (${samples[samples.length - 1]!.rssMB.toFixed(1)} MB)`)
  await exited
  await t.rejects(
    sampleFor(child.pid!, 1000, 100, () => alive),
    /exited while being sampled/,
  )
})

t.test('slopes: least squares, and the GC floor', async (t) => {
  t.equal(
    slope([
      { x: 0, y: 1 },
      { x: 1, y: 3 },
      { x: 2, y: 5 },
    ]),
    2,
  )
  t.ok(Number.isNaN(slope([{ x: 0, y: 1 }])), 'one point has no slope')
  // A sawtooth around a flat floor: the raw slope depends on where the drops fall, the floor's is ~0.
  const saw: ProcSample[] = Array.from({ length: 48 }, (_, i) => ({ t: i * 5000, rssMB: 100 + (i % 12) * 2, cpuS: i * 0.1 }))
  t.ok(Math.abs(floorSlope(saw)) < 1e-9, `flat floor: ${floorSlope(saw)}`)
  // The same sawtooth on a floor rising 1 MB/min: the floor slope sees it.
  const leak = saw.map((s) => ({ ...s, rssMB: s.rssMB + s.t / 60_000 }))
  t.ok(Math.abs(floorSlope(leak) - 1) < 0.2, `rising floor: ${floorSlope(leak).toFixed(3)} MB/min`)
  const s = summarise(leak)
  t.equal(s.samples, 48)
  t.equal(s.rssMaxMB, Math.max(...leak.map((x) => x.rssMB)))
  // cpuS grows 0.1 s per 5 s: 2 % of one core, in both halves.
  t.ok(Math.abs(s.cpuPct - 2) < 1e-9 && Math.abs(s.cpuPctAll - 2) < 1e-9, `cpu ${s.cpuPct} %`)
  t.throws(() => summarise(leak.slice(0, 3)), /too few/)
})

t.test('rows, verdicts and the table', async (t) => {
  t.equal(percentile([5, 1, 4, 2, 3], 95), 5)
  t.equal(percentile([5, 1, 4, 2, 3], 50), 3)
  const ok = bounded('rss', 'MB', 60, 80)
  t.equal(ok.ratio, 0.75)
  t.equal(verdict(ok), 'yes')
  t.equal(verdict(bounded('rss', 'MB', 100, 80)), 'NO')
  t.equal(verdict(row('x', 'ops/s', [100, 100, 100], [50, 90, 130], { op: '>=', ratio: 0.8 })), 'noisy', 'met but spread 89 %')
  t.equal(verdict(row('x', 'ops/s', [100, 100, 100], [50, 60, 90], { op: '>=', ratio: 0.8 })), 'NO (noisy)')
  const nm = notMeasured('rss with Node-RED', 'MB', '<= 160 MB', 'not measured: Node-RED not running')
  t.equal(verdict(nm), 'not measured')
  const text = table([
    { ...nm, bench: 'footprint' },
    { ...ok, bench: 'footprint' },
  ])
  t.match(text, /not measured: Node-RED not running/)
  t.notMatch(text, /NaN/, 'no NaN printed for a figure not measured')
})

t.test("the bin's node flags come from its interpreter line", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-bench-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const f = join(dir, 'cli.js')
  writeFileSync(f, '#!/usr/bin/env -S node --max-semi-space-size=2 --optimize-for-size\nconsole.log(1)\n')
  t.same(binNodeFlags(f), ['--max-semi-space-size=2', '--optimize-for-size'])
  writeFileSync(f, '#!/usr/bin/env node\n')
  t.same(binNodeFlags(f), [])
  writeFileSync(f, 'console.log(1)\n')
  t.throws(() => binNodeFlags(f), /no node interpreter line/)
})

t.test("disk bench: /proc/PID/io parsing, a real process's write_bytes, and the raw facts of a journal", async (t) => {
  t.same(parseProcIo('rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 5\nwrite_bytes: 8192\ncancelled_write_bytes: 4096\n'), {
    writeBytes: 8192,
    cancelledWriteBytes: 4096,
  })
  t.throws(() => parseProcIo('rchar: 1\n'), /no write_bytes line/)
  // This process writes 256 kB to disk and fsyncs: its write_bytes grows by at least that much.
  const dir = mkdtempSync(join(tmpdir(), 'outpost-bench-plumbing-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const before = readProcIo(process.pid)
  const fd = openSync(join(dir, 'blob'), 'w')
  writeSync(fd, Buffer.alloc(256 * 1024, 7))
  fsyncSync(fd)
  closeSync(fd)
  const after = readProcIo(process.pid)
  t.ok(after.writeBytes - before.writeBytes >= 256 * 1024, `write_bytes grew by ${after.writeBytes - before.writeBytes}`)

  // Raw facts: the reading values and record texts journaled in the window, nothing else.
  const T = Date.parse('2026-03-02T10:00:00Z')
  const j = await Journal.open(dir, { bootId: 'b', clockSynced: () => true, now: () => T, compactEveryMs: 0, readingSyncMs: 0 })
  const g = (ts: number) => ({ outlet: 'A1', sessionId: 's-1', reading: { ts, currentA: 16, powerW: 3680, energyWh: 12.5, voltageV: 230 } })
  const [rec] = await j.commit({
    records: [{ type: 'outlet.fault', ts: new Date(T + 1000).toISOString(), outlet: 'A1', detail: 'x' }],
    state: { outlets: { A1: { big: 'y'.repeat(5000) } } },
    readings: [g(T + 1000)],
  })
  await j.commit({
    records: [{ type: 'outlet.recovered', ts: new Date(T + 90_000).toISOString(), outlet: 'A1', detail: 'x' }],
    readings: [g(T + 2000), g(T + 90_000)],
  })
  await j.close({ clean: true })
  const f = await rawFacts(dir, T, T + 60_000)
  const value = JSON.stringify([16, 3680, 12.5, 230, 'A1'])
  t.same(
    f,
    { readings: 2, readingBytes: 2 * value.length, records: 1, recordBytes: (await recordText(dir, rec!.seq)).length },
    'two readings and one record in the window; the engine state is not a raw fact',
  )
})

async function recordText(dir: string, seq: number): Promise<string> {
  const j = await openOffline(dir)
  try {
    return (await j.db.get(recordKey(seq)))!
  } finally {
    await j.close()
  }
}

t.test('disk bench: the simulated journal run counts what it journaled and what this process wrote', async (t) => {
  const r = await simulatedDay(20, 4)
  t.equal(r.simulatedS, 20)
  t.ok(r.raw > 80 * 30, `raw facts: 80 readings of ~35 bytes and 4 records at least (${r.raw} B)`)
  t.ok(r.bytes >= r.raw, `LevelDB wrote at least the raw facts (${r.bytes} B)`)
  t.equal(r.amplification, r.bytes / r.raw)
})

t.test('npm run bench exits non-zero, naming them, when a benchmark throws or a row is not measured; a missed goal is a result', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-bench-runner-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'package.json'), '{"type": "module"}\n')
  const goal = "goal: '>= 0.8x', unit: 'ops/s', baseline: 100"
  writeFileSync(join(dir, 'broken.js'), "export async function run() { throw new Error('2 of 8 outlets charging; the feed is wrong') }\n")
  writeFileSync(
    join(dir, 'invalid.js'),
    `export async function run() { return [{ figure: 'lag', ${goal}, value: NaN, ratio: NaN, met: false, notMeasured: true, note: 'only 3 of 600 acks seen' }] }\n`,
  )
  writeFileSync(join(dir, 'slow.js'), `export async function run() { return [{ figure: 'steps', ${goal}, value: 50, ratio: 0.5, met: false }] }\n`)
  writeFileSync(join(dir, 'helper.js'), 'export const notABenchmark = 1\n')
  const bench = (...args: string[]) =>
    spawnSync(process.execPath, [packagePath('dist', 'bench', 'run.js'), '--from', dir, ...args], { encoding: 'utf8' })

  const all = bench()
  t.equal(all.status, 1, `exit 1 when any row is not measured\n${all.stdout}${all.stderr}`)
  t.match(all.stderr, /bench: FAILED: 2 figures not measured \(broken, invalid\)/, 'says so loudly, naming the benchmarks')
  t.match(all.stderr, /bench: broken failed: Error: 2 of 8 outlets charging; the feed is wrong/, "the benchmark's error")
  t.match(all.stdout, /broken\s+FAILED .*not measured\s+2 of 8 outlets charging/, 'the failed benchmark has its row')
  t.match(all.stdout, /invalid\s+lag .*not measured\s+only 3 of 600 acks seen/, 'the invalid run has its row')
  t.match(all.stdout, /slow\s+steps .*0\.50x\s+>= 0\.8x\s+NO/, 'the missed goal is reported as one')
  t.match(all.stdout, /3 figures: 1 missed their goal, 0 noisy .*, 2 not measured/)

  const missed = bench('slow')
  t.equal(missed.status, 0, `a missed goal alone: exit 0\n${missed.stdout}${missed.stderr}`)
  t.match(missed.stdout, /1 figures: 1 missed their goal, 0 noisy .*, 0 not measured/)
  t.notMatch(missed.stderr, /FAILED/)

  const thrown = bench('broken')
  t.equal(thrown.status, 1, 'a benchmark that throws alone: exit 1')

  const unknown = bench('slow', 'nosuch')
  t.equal(unknown.status, 2, 'a benchmark name that does not exist: exit 2')
  t.match(unknown.stderr, /bench: no benchmark named nosuch in .* \(there are: broken, helper, invalid, slow\)/)
  t.equal(unknown.stdout, '', 'nothing run')
})
