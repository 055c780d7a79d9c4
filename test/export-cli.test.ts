/**
 * `outpost export` (the built CLI) on a JSON-lines file of records and on a config: the CSV
 * from --records alone, --out written whole, and every bad flag, config or input refused with
 * a message naming it and nothing written.
 */
import t from 'tap'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli } from './helpers/cli.js'
import { bodies } from './helpers/memory-log.js'
import { sealRecord, GENESIS_PREV } from '../daemon/journal/index.js'
import { csvHeader, csvRow } from '../daemon/export.js'
import type { JournalRecord, SessionEndedBody } from '../core/types.js'
import { OCPI } from './helpers/export-kit.js'

t.test('outpost export: inputs, outputs and refusals', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-export-cli-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  let prev = GENESIS_PREV
  const records: JournalRecord[] = bodies(5).map((b, i) => {
    const r = sealRecord(b, i + 1, prev, 'boot', true)
    prev = r.hash
    return r
  })
  const file = join(dir, 'records.jsonl')
  writeFileSync(file, records.map((r) => JSON.stringify(r)).join('\n') + '\n')
  const site = (ocpi: boolean) => {
    const f = join(dir, ocpi ? 'site.json' : 'plain.json')
    writeFileSync(
      f,
      JSON.stringify({
        site: { id: 'lot-7', timezone: 'America/Vancouver' },
        storage: { dir: join(dir, 'storage') },
        buses: [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: 5020 }],
        outlets: [{ id: 'A1', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'standard' }],
        plans: [{ id: 'standard', currency: 'CAD', periods: [{ days: ['mon'], from: '00:00', to: '24:00', perKwh: 0.15 }] }],
        ...(ocpi ? { ocpi: OCPI } : {}),
      }),
    )
    return f
  }

  const csv = runCli(['export', '--records', file, '--format', 'csv'])
  t.equal(csv.status, 0, csv.stderr)
  t.equal(csv.stdout, csvHeader() + records.map((r) => csvRow(r as unknown as SessionEndedBody)).join(''), 'the CSV from a records file alone')
  const window = runCli(['export', '--records', file, '--format', 'csv', '--from', '2026-01-01T01:01:00Z', '--to', '2026-01-01T01:03:00Z'])
  t.equal(window.stdout.split('\r\n').length - 2, 2, '--from inclusive, --to exclusive, by the end of the session')
  const out = join(dir, 'out.csv')
  t.equal(runCli(['export', '--records', file, '--format', 'csv', '--out', out]).status, 0)
  t.equal(readFileSync(out, 'utf8'), csv.stdout, '--out holds the same')
  const cdr = runCli(['export', '--records', file, '--config', site(true), '--format', 'ocpi-cdr'])
  t.equal(cdr.status, 0, cdr.stderr)
  t.equal(JSON.parse(cdr.stdout).length, 5, '--records with --config for the OCPI section')

  const refused: [string[], number, RegExp][] = [
    [['--records', file], 64, /--format is required \(csv, ocpi-cdr, ocpi-tariff\)/],
    [['--records', file, '--format', 'pdf'], 64, /--format must be one of csv, ocpi-cdr, ocpi-tariff, got pdf/],
    [['--format', 'csv'], 64, /give --config FILE or --records FILE.jsonl/],
    [['--records', file, '--format', 'csv', '--from', 'yesterday'], 64, /--from must be an ISO 8601 date or time/],
    [['--records', file, '--format', 'csv', '--from', '2026-02-01', '--to', '2026-01-01'], 64, /--to \(2026-01-01\) must be after --from/],
    [['--records', file, '--format', 'ocpi-cdr'], 64, /--format ocpi-cdr needs --config FILE/],
    [['--records', file, '--config', site(true), '--format', 'ocpi-tariff'], 64, /--records does not apply/],
    [['--config', site(false), '--format', 'ocpi-tariff'], 78, /plain\.json: \/ocpi: is required for --format ocpi-tariff/],
    [['--records', join(dir, 'none.jsonl'), '--format', 'csv'], 66, /cannot read .*none\.jsonl: no such file/],
    [['--records', file, '--format', 'csv', '--bogus'], 64, /Unknown option '--bogus'/],
  ]
  for (const [args, status, message] of refused) {
    const r = runCli(['export', ...args, '--out', join(dir, 'refused.out')])
    t.equal(r.status, status, `${args.join(' ')}: exit ${status}`)
    t.match(r.stderr, message, `names it: ${r.stderr.split('\n')[0]}`)
  }
  const bad = join(dir, 'bad.jsonl')
  writeFileSync(bad, `${JSON.stringify(records[0])}\n{not json\n`)
  const b = runCli(['export', '--records', bad, '--format', 'csv', '--out', join(dir, 'refused.out')])
  t.equal(b.status, 1, 'a line that is not a record: exit 1')
  t.match(b.stderr, /EXPORT_INPUT: .*bad\.jsonl: line 2 is not JSON/)
  t.notOk(existsSync(join(dir, 'refused.out')), 'nothing was written by any refused export')
  const help = runCli(['export', '--help'])
  t.match(help.stdout, /outpost export \(--config FILE \| --records FILE.jsonl\) --format csv\|ocpi-cdr\|ocpi-tariff/)
})
