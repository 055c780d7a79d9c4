/**
 * The gateway key and the OCMF signature of session.ended, on a real LevelDB journal on
 * disk: the key file (0600, made with a new journal, refused missing beside an existing one,
 * rotated on purpose), every session.ended signed as it is sealed, the signature verified
 * independently (openssl CLI, @road-labs/ocmf), a tampered reading, user or total failing,
 * the pagination counter gapless across reopening and salvage, `TX` `P` after a power loss,
 * and `outpost verify` / `outpost key` (the built CLI) on the result.
 */
import t, { type Test } from 'tap'
import { mkdtempSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync, readdirSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Journal, sealRecord } from '../daemon/journal/index.js'
import { loadOrCreateKey, keyPath, rotateKey, type GatewayKey } from '../daemon/gateway-key.js'
import { checkOcmf, ocmfPayload, signOcmf, parseOcmf } from '../daemon/ocmf.js'
import { openJournalForRun } from '../daemon/journal/salvage.js'
import { recordKey } from '../daemon/journal/keys.js'
import type { JournalRecord, RecordBody, SessionEndedBody } from '../core/types.js'
import { runCli } from './helpers/cli.js'
import { opensslVerifies, roadLabsVerifies, sections } from './helpers/ocmf-check.js'

const T0 = Date.parse('2026-03-07T10:00:00.000Z')

function tempDir(t: Test): string {
  const d = mkdtempSync(join(tmpdir(), 'outpost-ocmf-'))
  t.teardown(() => rmSync(d, { recursive: true, force: true }))
  return d
}

function ended(n: number, over: Partial<SessionEndedBody> = {}): SessionEndedBody {
  const start = T0 + n * 3_600_000
  return {
    type: 'session.ended',
    ts: new Date(start + 1_800_000).toISOString(),
    sessionId: `s-${n}`,
    outlet: 'A1',
    userId: `u-${n}`,
    planId: 'standard',
    trigger: 'activation',
    startedAt: new Date(start).toISOString(),
    endedAt: new Date(start + 1_800_000).toISOString(),
    reason: 'user-stopped',
    durationS: 1800,
    energyWh: 3500.25,
    meterStartWh: 10_000 + n * 5000,
    meterEndWh: 10_000 + n * 5000 + 3500.25,
    currency: 'CAD',
    lines: [],
    activationFee: 50,
    total: 235 + n,
    offline: false,
    pausedS: 0,
    ...over,
  }
}

function signer(key: GatewayKey) {
  return (body: SessionEndedBody, c: { pagination: number; clockSynced: boolean }) =>
    signOcmf(
      ocmfPayload(body, {
        siteId: 'lot-7',
        gatewaySerial: key.fingerprint,
        version: '0.1.0',
        pagination: c.pagination,
        clockSynced: c.clockSynced,
        meter: { manufacturer: 'Eastron', model: 'eastron-sdm120', serial: 'lan:1' },
      }),
      key.privateKey,
    )
}

async function openSigned(dir: string, key: GatewayKey, bootId = 'boot-1'): Promise<Journal> {
  return Journal.open(dir, { bootId, clockSynced: () => true, now: () => T0, sign: signer(key), compactEveryMs: 0 })
}

function writeConfig(dir: string): string {
  const file = join(dir, 'site.json')
  writeFileSync(
    file,
    JSON.stringify({
      site: { id: 'lot-7', timezone: 'America/Vancouver' },
      storage: { dir },
      buses: [{ id: 'lan', type: 'modbus-tcp', host: '127.0.0.1', port: 5020 }],
      outlets: [{ id: 'A1', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, plan: 'standard' }],
      plans: [{ id: 'standard', currency: 'CAD', periods: [{ days: ['mon'], from: '00:00', to: '24:00', perKwh: 0.1 }] }],
    }),
  )
  return file
}

/** Rewrites a JSON-lines log with `edit` applied to one record, re-hashing it and everything after it (a forger who keeps the chain whole). */
function forge(lines: JournalRecord[], seq: number, edit: (r: JournalRecord) => JournalRecord): JournalRecord[] {
  const out: JournalRecord[] = []
  let prev: string | undefined
  for (const r of lines) {
    if (r.seq < seq) {
      out.push(r)
      prev = r.hash
      continue
    }
    const changed = r.seq === seq ? edit(r) : r
    const { seq: s, bootId, clockSynced, prev: _p, hash: _h, ...body } = changed
    const sealed = sealRecord(body as RecordBody, s, prev ?? _p, bootId, clockSynced)
    out.push(sealed)
    prev = sealed.hash
  }
  return out
}

t.test('the key: made with a new journal, 0600, refused missing beside an existing one, rotated on purpose', async (t) => {
  const dir = tempDir(t)
  const key = loadOrCreateKey(dir)
  t.equal(statSync(keyPath(dir)).mode & 0o777, 0o600, 'mode 0600')
  t.match(key.publicKeyPem, /^-----BEGIN PUBLIC KEY-----\n[\s\S]+\n-----END PUBLIC KEY-----\n$/, 'SPKI PEM')
  t.notMatch(readFileSync(keyPath(dir), 'utf8'), /PUBLIC/, 'the file holds the private key')
  t.equal(loadOrCreateKey(dir).publicKeyPem, key.publicKeyPem, 'loaded again, not replaced')
  const j = await openSigned(dir, key)
  await j.close({ clean: true })

  unlinkSync(keyPath(dir))
  t.throws(() => loadOrCreateKey(dir), { code: 'KEY_MISSING' }, 'a missing key beside a journal is an error, not a new key')
  t.notOk(existsSync(keyPath(dir)), 'and no key was made')
  writeFileSync(keyPath(dir), 'not a key\n', { mode: 0o600 })
  t.throws(() => loadOrCreateKey(dir), { code: 'KEY_UNREADABLE' }, 'an unreadable key is an error')
  t.equal(readFileSync(keyPath(dir), 'utf8'), 'not a key\n', 'and is left as it was')

  const upgraded = tempDir(t)
  await (await Journal.open(upgraded, { bootId: 'old', clockSynced: () => true, now: () => T0, compactEveryMs: 0 })).close({ clean: true })
  t.throws(() => loadOrCreateKey(upgraded), { code: 'KEY_MISSING' }, 'beside a journal, by default missing')
  t.ok(loadOrCreateKey(upgraded, { journalSigned: false }).publicKeyPem, 'a journal that never recorded a key (an upgrade) gets its first')
  const { key: fresh, retired } = rotateKey(dir, new Date(T0))
  t.ok(retired && existsSync(retired) && readFileSync(retired, 'utf8') === 'not a key\n', `the old file kept as ${retired}`)
  t.equal(statSync(keyPath(dir)).mode & 0o777, 0o600, 'the new key is 0600 too')
  t.not(fresh.publicKeyPem, key.publicKeyPem, 'a new identity')
  t.equal(loadOrCreateKey(dir).publicKeyPem, fresh.publicKeyPem, 'and the one the daemon loads')
})

t.test('every session.ended is signed as it is sealed; openssl and @road-labs/ocmf verify it', async (t) => {
  const dir = tempDir(t)
  const key = loadOrCreateKey(dir)
  const j = await openSigned(dir, key)
  const sealed = await j.commit({
    records: [ended(1), { type: 'outlet.fault', ts: new Date(T0).toISOString(), outlet: 'A1', detail: 'x' }, ended(2)],
  })
  await j.close({ clean: true })
  const [a, fault, b] = sealed as [SessionEndedBody & JournalRecord, JournalRecord, SessionEndedBody & JournalRecord]
  t.notOk('ocmf' in fault, 'only session.ended is signed')
  for (const [r, pg] of [
    [a, 'T1'],
    [b, 'T2'],
  ] as const) {
    t.match(r.ocmf, /^OCMF\|\{.*\}\|\{"SA":"ECDSA-secp256r1-SHA256","SD":"[0-9a-f]+"\}$/, `${r.sessionId}: OCMF|{payload}|{signature}`)
    t.ok(opensslVerifies(r.ocmf!, key.publicKeyPem), `${r.sessionId}: openssl dgst -sha256 -verify says Verified OK`)
    const rl = await roadLabsVerifies(r.ocmf!, key.publicKeyPem)
    t.ok(rl.verified, `${r.sessionId}: @road-labs/ocmf verifies it`)
    const p = rl.payload!
    t.equal(p.PG, pg, `pagination ${pg}`)
    t.same(
      { FV: p.FV, GI: p.GI, GS: p.GS, MV: p.MV, MM: p.MM, MS: p.MS, IS: p.IS, IT: p.IT, ID: p.ID, CT: p.CT, CI: p.CI, TT: p.TT },
      {
        FV: '1.2',
        GI: 'lot-7',
        GS: key.fingerprint,
        MV: 'Eastron',
        MM: 'eastron-sdm120',
        MS: 'lan:1',
        IS: true,
        IT: 'CENTRAL',
        ID: r.userId,
        CT: 'CBIDC',
        CI: 'A1',
        TT: `standard ${(r.total / 100).toFixed(2)} CAD`,
      },
      'identity, meter, user, charge point and the total (TT)',
    )
    const rd = p.RD as { TM: string; TX: string; RV: number; RU: string; RI: string; ST: string }[]
    t.same(
      rd.map((x) => [x.TX, x.RV, x.RU, x.ST]),
      [
        ['B', r.meterStartWh / 1000, 'kWh', 'G'],
        ['E', r.meterEndWh / 1000, 'kWh', 'G'],
      ],
      'RD: begin and end readings in kWh',
    )
    t.equal(rd[0]!.TM, `${r.startedAt.replace('.', ',').replace('Z', '+0000')} S`, 'TM in OCMF form, S: the clock was synchronised')
    t.ok(checkOcmf(r, key.publicKeyPem).ok, 'and the daemon own check agrees')
  }

  await t.test('a tampered reading, user or total fails every verifier', async (t) => {
    const { payload, signature } = sections(a.ocmf!)
    const p = JSON.parse(payload)
    const tampered: [string, (p: Record<string, any>) => void][] = [
      ['end reading', (q) => (q.RD[1].RV = q.RD[1].RV + 0.001)],
      ['begin reading', (q) => (q.RD[0].RV = q.RD[0].RV - 1)],
      ['user', (q) => (q.ID = 'u-other')],
      ['total', (q) => (q.TT = q.TT.replace(/\d+\.\d\d/, '0.01'))],
    ]
    for (const [what, edit] of tampered) {
      const q = structuredClone(p)
      edit(q)
      const forged = `OCMF|${JSON.stringify(q)}|${JSON.stringify(signature)}`
      t.notOk(opensslVerifies(forged, key.publicKeyPem), `${what}: openssl says Verification failure`)
      t.notOk((await roadLabsVerifies(forged, key.publicKeyPem)).verified, `${what}: @road-labs/ocmf does not verify it`)
      t.notOk(checkOcmf({ ...a, ocmf: forged }, key.publicKeyPem).ok, `${what}: checkOcmf refuses it`)
    }
    const other = loadOrCreateKey(tempDir(t))
    t.notOk(opensslVerifies(a.ocmf!, other.publicKeyPem), 'another gateway key does not verify it')
    // The record edited but its OCMF left alone: the signature still holds, the record does not match what was signed.
    for (const [what, edit] of [
      ['meterEndWh', { meterEndWh: a.meterEndWh + 1 }],
      ['userId', { userId: 'u-other' }],
      ['total', { total: a.total - 100 }],
    ] as const) {
      const r = checkOcmf({ ...a, ...edit }, key.publicKeyPem)
      t.notOk(r.ok, `record ${what} edited: refused`)
      t.match(!r.ok && r.problem, /signed .* but the record says/, `names the difference: ${!r.ok && r.problem}`)
    }
  })
})

t.test('pagination: gapless across reopening (clean and not) and a salvage; a power-loss session ends TX P', async (t) => {
  const dir = tempDir(t)
  const key = loadOrCreateKey(dir)
  const pgs: string[] = []
  const take = (rs: JournalRecord[]) => {
    for (const r of rs) if (r.type === 'session.ended') pgs.push(parseOcmf(r.ocmf!).payload.PG)
  }
  let j = await openSigned(dir, key, 'b1')
  take(await j.commit({ records: [ended(1)] }))
  take(await j.commit({ records: [ended(2), ended(3)] }))
  await j.close({ clean: true })
  j = await openSigned(dir, key, 'b2')
  t.equal(j.pagination(), 3, 'the counter read back')
  take(await j.commit({ records: [ended(4, { reason: 'power-loss' })] }))
  await j.close({ clean: false })
  j = await openSigned(dir, key, 'b3')
  take(await j.commit({ records: [ended(5)] }))
  const last = (await j.read(j.head(), 1))[0] as SessionEndedBody & JournalRecord
  const powerLoss = (await j.read(1, 100)).find((r) => r.type === 'session.ended' && r.reason === 'power-loss') as SessionEndedBody
  t.equal(parseOcmf(powerLoss.ocmf!).payload.RD[1]!.TX, 'P', 'the power-loss session ends TX P')
  t.equal(parseOcmf(last.ocmf!).payload.RD[1]!.TX, 'E', 'others end TX E')
  await j.close({ clean: true })

  // A record edited in the tail: boot builds a fresh journal carrying every record still readable, the edited one
  // named lost (a hole), and the counter goes on.
  j = await openSigned(dir, key, 'b3b')
  const [victim] = await j.commit({ records: [ended(6)] })
  take([victim!])
  await j.commit({ records: [{ type: 'outlet.fault', ts: new Date(T0).toISOString(), outlet: 'A1', detail: 'after' }] })
  await j.close({ clean: true })
  const { Level } = await import('level')
  let db = new Level<string, string>(join(dir, 'journal'), { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  await db.put(recordKey(victim!.seq), JSON.stringify({ ...victim, ts: '2020-01-01T00:00:00.000Z' }))
  await db.close()
  const opened = await openJournalForRun(
    dir,
    { bootId: 'b4', clockSynced: () => true, now: () => T0, sign: signer(key), compactEveryMs: 0 },
    {
      warn: () => undefined,
    },
  )
  t.equal(opened.salvage?.mode, 'fresh', 'salvaged into a fresh journal')
  t.same(opened.salvage?.carried, { from: 1, to: victim!.seq + 1 }, 'every readable record carried, up to the one after the edit')
  t.same(opened.salvage?.lost, [{ from: victim!.seq, to: victim!.seq }], 'the edited record named lost')
  take(await opened.journal.commit({ records: [ended(7)] }))
  await opened.journal.close({ clean: true })
  db = new Level<string, string>(join(dir, 'journal'), { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  await db.open()
  t.equal(await db.get('m!pagination'), '7', 'the counter is kept in the journal')
  await db.close()
  t.same(pgs, ['T1', 'T2', 'T3', 'T4', 'T5', 'T6', 'T7'], 'T1..T7 with no gap across restarts and a fresh salvage (T6 is in the moved journal)')
})

t.test('outpost key and outpost verify (the built CLI) on a signed journal', async (t) => {
  const dir = tempDir(t)
  const config = writeConfig(dir)
  t.equal(runCli(['key', '--config', config]).status, 66, 'no key before the first run: exit 66')
  const key = loadOrCreateKey(dir)
  const j = await openSigned(dir, key)
  await j.commit({
    records: [{ type: 'gateway.started', ts: new Date(T0).toISOString(), version: '0.1.0', cleanShutdown: true, publicKey: key.publicKeyPem }],
  })
  await j.commit({ records: [ended(1)] })
  await j.commit({ records: [ended(2, { reason: 'power-loss' })] })
  await j.commit({ records: [ended(3)] })
  const records = await j.read(1, 100)
  await j.close({ clean: true })

  const k = runCli(['key', '--config', config])
  t.equal(k.status, 0, 'outpost key: exit 0')
  t.equal(k.stdout, key.publicKeyPem, 'prints the public key in PEM')
  t.notMatch(k.stdout + k.stderr, /PRIVATE/, 'never the private key')

  const v = runCli(['verify', '--config', config])
  t.equal(v.status, 0, `verify --config: intact (${v.stdout.trim()} ${v.stderr.trim()})`)
  t.match(v.stdout, /3 OCMF signatures verified \(T1\.\.T3\)/, 'says how many signatures held')

  const file = join(dir, 'log.jsonl')
  const write = (rs: JournalRecord[]) => writeFileSync(file, rs.map((r) => JSON.stringify(r)).join('\n') + '\n')
  write(records)
  const ok = runCli(['verify', file])
  t.equal(ok.status, 0, 'verify FILE.jsonl: intact')
  t.match(ok.stdout, /3 OCMF signatures verified/)

  // Forgeries that keep the hash chain whole: only the signatures can catch them.
  const cases: [string, (r: JournalRecord) => JournalRecord][] = [
    ['a reading', (r) => ({ ...r, meterEndWh: (r as SessionEndedBody).meterEndWh + 100 }) as JournalRecord],
    ['the user', (r) => ({ ...r, userId: 'u-mallory' }) as JournalRecord],
    ['the total', (r) => ({ ...r, total: 1 }) as JournalRecord],
    ['the signed payload', (r) => ({ ...r, ocmf: (r as SessionEndedBody).ocmf!.replace('"ID":"u-2"', '"ID":"u-9"') }) as JournalRecord],
    [
      'the signature removed',
      (r) => {
        const { ocmf: _o, ...rest } = r as SessionEndedBody & JournalRecord
        return rest as JournalRecord
      },
    ],
  ]
  for (const [what, edit] of cases) {
    write(forge(records, 3, edit))
    const r = runCli(['verify', file])
    t.equal(r.status, 1, `${what} changed and the chain re-hashed: exit 1`)
    t.match(r.stdout, /BROKEN at seq 3 \(line 3\): ocmf|BROKEN at seq 3 \(line 3\): session.ended carries no ocmf/, `names seq 3: ${r.stdout.trim()}`)
  }
  // A different key announced for the log: the first signature made with the real key fails.
  const intruder = loadOrCreateKey(tempDir(t))
  write(forge(records, 1, (r) => ({ ...r, publicKey: intruder.publicKeyPem }) as JournalRecord))
  const wrongKey = runCli(['verify', file])
  t.equal(wrongKey.status, 1, 'a log announcing another key fails')
  t.match(wrongKey.stdout, /BROKEN at seq 2 .*does not verify against the announced public key/)
  // A gap in the pagination (a session.ended dropped, seqs renumbered) is named too.
  const dropped = records.filter((r) => r.seq !== 3).map((r, i) => ({ ...r, seq: i + 1 }))
  write(forge(dropped, 1, (r) => r))
  const gap = runCli(['verify', file])
  t.equal(gap.status, 1, 'a dropped session.ended (renumbered) fails')
  t.match(gap.stdout, /pagination gap: T2\.\.T2 missing/)
  t.ok(readdirSync(dir).includes('journal'), 'verify wrote nothing but what the test wrote')
})

t.test("MS is the serial the meter itself reported (the record's meterSerial), else the configured one", async (t) => {
  const key = loadOrCreateKey(tempDir(t))
  const sign = signer(key)
  const withSerial = ended(1, { meterSerial: '87654321' })
  const signed = { ...withSerial, ocmf: sign(withSerial, { pagination: 1, clockSynced: true }) }
  t.equal(JSON.parse(sections(signed.ocmf).payload).MS, '87654321', 'the meter-reported serial is signed')
  t.ok(opensslVerifies(signed.ocmf, key.publicKeyPem), 'openssl verifies it')
  t.ok(checkOcmf(signed, key.publicKeyPem).ok, 'checkOcmf agrees')
  // A record whose meterSerial was edited after signing: a swapped meter cannot be hidden.
  const edited = checkOcmf({ ...signed, meterSerial: '11112222' }, key.publicKeyPem)
  t.notOk(edited.ok)
  t.match(!edited.ok && edited.problem, /signed MS \(meter serial\) is "87654321" but the record says "11112222"/)
  const without = ended(2)
  t.equal(JSON.parse(sections(sign(without, { pagination: 2, clockSynced: true })).payload).MS, 'lan:1', 'no meterSerial: the configured one')
})
