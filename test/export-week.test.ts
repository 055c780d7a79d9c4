/**
 * A simulated week of sessions (the pure engine, seeded), journaled on disk with the
 * gateway's OCMF signatures, then exported by the built CLI: the week holds the spring-forward
 * night in Vancouver, time-of-use plans (a window wrapping midnight, an unavailable window),
 * wallet caps and power losses. The CSV's totals and the CDRs' totals add back to the
 * journal's, to the minor unit; `--from`/`--to` partition the week without losing a session;
 * every CDR and Tariff validates against the OCPI schema; `outpost verify` holds.
 */
import t from 'tap'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { validateConfig } from '../daemon/config.js'
import { initialState, step, type EngineEvent, type EngineState } from '../daemon/engine/index.js'
import { Journal } from '../daemon/journal/index.js'
import { loadOrCreateKey } from '../daemon/gateway-key.js'
import { ocmfPayload, signOcmf } from '../daemon/ocmf.js'
import { mulberry32 } from '../core/prng.js'
import type { JournalRecord, RecordBody, SessionEndedBody } from '../core/types.js'
import { runCli } from './helpers/cli.js'
import { OCPI, ocpiValidators } from './helpers/export-kit.js'

const ALL = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun']
const WEEKDAYS = ['mon', 'tue', 'wed', 'thu', 'fri']
/** Thursday 2026-0305 00:00 in Vancouver (PST, UTC-8); the clocks spring forward on Sunday 03-08 at 02:00. */
const WEEK_START = Date.UTC(2026, 2, 5, 8, 0)
const WEEK_MS = 7 * 86_400_000
const STEP_MS = 5000
const VOLTS = 230

/** Minor units from a major-unit decimal string, exactly (no float). */
function minor(text: string, digits = 2): number {
  const [int, frac = ''] = text.split('.')
  if (frac.length !== digits) throw new Error(`${text} does not have ${digits} decimals`)
  return Number(int) * 10 ** digits + (int!.startsWith('-') ? -1 : 1) * Number(frac)
}

t.test('a simulated week exported: CSV and CDR totals add back to the journal', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-export-week-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const raw = {
    site: { id: 'lot-7', name: 'Lot 7 resident parking', timezone: 'America/Vancouver' },
    storage: { dir },
    buses: [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: 5020 }],
    outlets: [
      { id: 'A1', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, relay: { model: 'modbus-coil', unit: 100, coil: 0 }, plan: 'tou' },
      {
        id: 'A2',
        bus: 'lan',
        meter: { model: 'eastron-sdm120', unit: 2, serial: 'SDM-0002' },
        relay: { model: 'modbus-coil', unit: 100, coil: 1 },
        plan: 'night',
      },
    ],
    plans: [
      {
        id: 'tou',
        currency: 'CAD',
        activationFee: 0.35,
        periods: [
          { days: WEEKDAYS, from: '07:00', to: '19:00', perKwh: 0.2125, perHour: 0.3 },
          { days: ALL, from: '19:00', to: '07:00', perKwh: 0.0825 },
          { days: ALL, from: '00:00', to: '24:00', perKwh: 0.12, perHour: 0.1 },
        ],
      },
      {
        id: 'night',
        currency: 'CAD',
        periods: [
          { days: WEEKDAYS, from: '07:00', to: '19:00', unavailable: true },
          { days: ALL, from: '00:00', to: '24:00', perKwh: 0.1034 },
        ],
      },
    ],
    uplink: { url: 'mqtt://127.0.0.1:1883', topicPrefix: 'outpost' },
    ocpi: OCPI,
  }
  const configFile = join(dir, 'site.json')
  writeFileSync(configFile, JSON.stringify(raw, null, 2))
  const v = validateConfig(raw)
  if (!v.ok) throw new Error(JSON.stringify(v.problems))
  const config = v.config

  const key = loadOrCreateKey(dir)
  let clock = WEEK_START
  let bootNo = 0
  let journal = await Journal.open(dir, {
    bootId: `b${bootNo}`,
    clockSynced: () => true,
    now: () => clock,
    compactEveryMs: 0,
    sign: (body, c) =>
      signOcmf(
        ocmfPayload(body, {
          siteId: 'lot-7',
          gatewaySerial: key.fingerprint,
          version: 't',
          pagination: c.pagination,
          clockSynced: c.clockSynced,
          meter: { model: 'eastron-sdm120', serial: body.outlet },
        }),
        key.privateKey,
      ),
  })
  const reopen = async (clean: boolean) => {
    const sign = (journal as unknown as { opts: { sign: unknown } }).opts.sign
    await journal.close({ clean })
    journal = await Journal.open(dir, { bootId: `b${++bootNo}`, clockSynced: () => true, now: () => clock, compactEveryMs: 0, sign: sign as never })
  }

  let state: EngineState = initialState(config)
  const journaled: JournalRecord[] = []
  const apply = async (ev: EngineEvent) => {
    const r = step(state, ev, clock)
    state = r.state
    const records = r.effects.flatMap((e) => (e.type === 'record' ? [e.record as RecordBody] : []))
    if (records.length > 0) journaled.push(...(await journal.commit({ records })))
    return r.effects
  }
  const meter: Record<string, number> = { A1: 5_000_000_000, A2: 7_000_000_000 }
  const amps: Record<string, number> = { A1: 0, A2: 0 }
  await apply({ type: 'config', config })
  await apply({ type: 'boot', cleanShutdown: true, version: 't', publicKey: key.publicKeyPem })
  await apply({ type: 'uplink', online: true })

  const random = mulberry32(20260305)
  const wallets: Record<string, number> = { 'u-1': 10_000_000, 'u-2': 10_000_000, 'u-3': 0 }
  for (const [u, b] of Object.entries(wallets))
    await apply({ type: 'command', id: `w-${u}`, source: 'cloud', command: { action: 'set-wallet', userId: u, currency: 'CAD', balance: b } })
  let cmdNo = 0
  // Each outlet: when its car leaves (epoch ms), and whether the gateway dies during that session.
  const plan: Record<string, { until: number; crashAt: number | null } | null> = { A1: null, A2: null }
  let nextStart: Record<string, number> = { A1: WEEK_START + 3_600_000, A2: WEEK_START + 2 * 3_600_000 }
  let crashes = 0
  /** The balance u-3 had when each of its sessions started. */
  const caps = new Map<string, number>()

  while (clock < WEEK_START + WEEK_MS) {
    clock += STEP_MS
    for (const o of ['A1', 'A2']) {
      const p = plan[o]
      if (p && p.crashAt !== null && clock >= p.crashAt) {
        // A power loss: the gateway is down for 20 minutes; the car keeps drawing, unbilled.
        crashes++
        p.crashAt = null
        meter[o]! += Math.round((amps[o]! * VOLTS * 1_200_000) / 3600)
        clock += 1_200_000
        await reopen(false)
        state = ((await journal.loadState()) as EngineState | undefined) ?? state
        await apply({ type: 'boot', cleanShutdown: false, version: 't', publicKey: key.publicKeyPem })
        await apply({ type: 'uplink', online: true })
        plan[o] = null
        amps[o] = 0
        nextStart[o] = clock + 600_000
      }
      meter[o]! += Math.round((amps[o]! * VOLTS * STEP_MS) / 3600)
      await apply({
        type: 'reading',
        outlet: o,
        reading: { ts: clock, currentA: amps[o]!, powerW: amps[o]! * VOLTS, energyWh: meter[o]! / 1000, voltageV: VOLTS },
      })
      if (plan[o] && clock >= plan[o]!.until) {
        amps[o] = 0 // unplugged
        plan[o] = null
        nextStart[o] = clock + (1 + Math.floor(random() * 5)) * 3_600_000
      }
      if (!plan[o] && !state.outlets[o]!.session && clock >= nextStart[o]!) {
        const user = ['u-1', 'u-2', 'u-3'][Math.floor(random() * 3)]!
        // u-3 gets a small balance each time: its sessions end wallet-depleted, billed at the cap.
        const balance = 8 + Math.floor(random() * 25)
        if (user === 'u-3')
          await apply({
            type: 'command',
            id: `w3-${++cmdNo}`,
            source: 'cloud',
            command: { action: 'set-wallet', userId: 'u-3', currency: 'CAD', balance },
          })
        const effects = await apply({ type: 'command', id: `s-${++cmdNo}`, source: 'cloud', command: { action: 'start', outlet: o, userId: user } })
        const result = effects.find((e) => e.type === 'result')
        if (result && result.type === 'result' && result.result.ok) {
          if (user === 'u-3') caps.set((result.result.result as { sessionId: string }).sessionId, balance)
          const hours = 0.5 + random() * 3.5
          amps[o] = 6 + Math.floor(random() * 10)
          plan[o] = { until: clock + hours * 3_600_000, crashAt: random() < 0.12 ? clock + hours * 0.5 * 3_600_000 : null }
        } else {
          nextStart[o] = clock + 1_800_000 // unavailable window or the like: try again later
        }
      }
      if (!state.outlets[o]!.session && plan[o]) {
        // The engine ended it (wallet, plan window): the car leaves.
        amps[o] = 0
        plan[o] = null
        nextStart[o] = clock + 2 * 3_600_000
      }
    }
    await apply({ type: 'tick' })
  }
  await journal.close({ clean: true })
  nextStart = {}

  const ended = journaled.filter((r): r is JournalRecord & SessionEndedBody => r.type === 'session.ended')
  const journalTotal = ended.reduce((s, r) => s + r.total, 0)
  const reasons = new Set(ended.map((r) => r.reason))
  t.ok(ended.length >= 25, `${ended.length} sessions in the week`)
  t.ok(crashes >= 2 && reasons.has('power-loss'), `power losses (${crashes})`)
  t.ok(
    reasons.has('wallet-depleted'),
    `wallet caps (reasons: ${[...reasons].join(', ')}; users: ${[...new Set(ended.map((r) => r.userId))].join(', ')})`,
  )
  const capped = ended.filter((r) => r.reason === 'wallet-depleted')
  t.ok(
    capped.every((r) => caps.has(r.sessionId) && r.total <= caps.get(r.sessionId)! && r.total >= caps.get(r.sessionId)! - 1),
    `the ${capped.length} wallet-depleted sessions are billed their balance (to the cent), never more`,
  )
  t.ok(reasons.has('plan-unavailable'), 'sessions ended by the unavailable window')
  t.ok(
    ended.some((r) => r.lines.length >= 2),
    'sessions split at time-of-use boundaries',
  )
  const dst = Date.UTC(2026, 2, 8, 10, 0)
  t.ok(
    ended.some((r) => Date.parse(r.startedAt) < dst && Date.parse(r.endedAt) > dst) ||
      ended.some((r) => r.lines.some((l) => l.from.startsWith('2026-03-08T1'))),
    'the DST night is in the week',
  )
  t.ok(
    ended.every((r) => typeof r.ocmf === 'string'),
    'every session.ended signed',
  )

  // CSV
  const csvFile = join(dir, 'week.csv')
  const csv = runCli(['export', '--config', configFile, '--format', 'csv', '--out', csvFile])
  t.equal(csv.status, 0, `export csv: ${csv.stderr}`)
  const rows = readFileSync(csvFile, 'utf8')
    .split('\r\n')
    .filter((l) => l !== '')
  const header = rows.shift()!.split(',')
  t.equal(rows.length, ended.length, 'one row per session.ended')
  const col = (name: string) => header.indexOf(name)
  let csvTotal = 0
  rows.forEach((line, i) => {
    const cells = line.split(',') // no field of this week needs quoting
    const total = minor(cells[col('total')]!)
    csvTotal += total
    const parts = minor(cells[col('activation_fee')]!) + minor(cells[col('energy_cost')]!) + minor(cells[col('time_cost')]!)
    if (parts !== total) t.fail(`row ${i + 1}: fee + energy + time ${parts} != total ${total}`)
    if (cells[col('session_id')] !== ended[i]!.sessionId || total !== ended[i]!.total) t.fail(`row ${i + 1} is not session ${ended[i]!.sessionId}`)
  })
  t.equal(csvTotal, journalTotal, `the CSV adds up to the journal: ${journalTotal} cents`)

  // CDRs
  const { cdr: cdrProblems, tariff: tariffProblems } = ocpiValidators()
  const cdrOut = runCli(['export', '--config', configFile, '--format', 'ocpi-cdr'])
  t.equal(cdrOut.status, 0, `export ocpi-cdr: ${cdrOut.stderr}`)
  const cdrs = JSON.parse(cdrOut.stdout) as { id: string; total_cost: { excl_vat: number }; signed_data?: { public_key?: string } }[]
  t.equal(cdrs.length, ended.length, 'one CDR per session')
  t.equal(
    cdrs.reduce((s, c) => s + Math.round(c.total_cost.excl_vat * 100), 0),
    journalTotal,
    'the CDRs add up to the journal, to the cent',
  )
  const invalid = cdrs.map((c) => cdrProblems(c)).filter((p) => p.length > 0)
  t.same(invalid.slice(0, 2), [], 'every CDR validates against the OCPI 2.2.1 schema')
  t.ok(
    cdrs.every((c) => c.signed_data?.public_key === Buffer.from(key.publicKeyPem.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64').toString('base64')),
    'signed_data carries the OCMF and the announced key',
  )

  // --from/--to partition the week: every session in exactly one part.
  let parts = 0
  let partCount = 0
  for (let d = 0; d < 8; d++) {
    const from = new Date(WEEK_START + d * 86_400_000).toISOString()
    const to = new Date(WEEK_START + (d + 1) * 86_400_000).toISOString()
    const part = runCli(['export', '--config', configFile, '--format', 'ocpi-cdr', '--from', from, '--to', to])
    const list = JSON.parse(part.stdout) as { total_cost: { excl_vat: number } }[]
    partCount += list.length
    parts += list.reduce((s, c) => s + Math.round(c.total_cost.excl_vat * 100), 0)
  }
  t.equal(partCount, ended.length, 'the days hold every session once')
  t.equal(parts, journalTotal, 'and add up to the week')

  // Tariffs
  const tariffOut = runCli(['export', '--config', configFile, '--format', 'ocpi-tariff'])
  t.equal(tariffOut.status, 0, 'export ocpi-tariff')
  const tariffs = JSON.parse(tariffOut.stdout) as unknown[]
  t.equal(tariffs.length, 2, 'one tariff per plan')
  t.same(
    tariffs.map((x) => tariffProblems(x)),
    [[], []],
    'the tariffs validate',
  )

  const verified = runCli(['verify', '--config', configFile])
  t.equal(verified.status, 0, verified.stdout)
  t.match(
    verified.stdout,
    new RegExp(`${ended.length} OCMF signatures verified \\(T1\\.\\.T${ended.length}\\)`),
    'every signature, T1..Tn without a gap',
  )
})
