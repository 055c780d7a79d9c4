/**
 * The record chain: RFC 8785 canonicalization (the `canonicalize` package, checked
 * against the RFC's published examples and its Appendix B number vectors), record
 * hashing, and verification of sequence and links.
 */
import t from 'tap'
import { createHash } from 'node:crypto'
import fc from 'fast-check'
import canonicalize from 'canonicalize'
import { canonicalJson, recordHash, sealRecord, sealRecordText, verifyRecords, GENESIS_PREV } from '../daemon/journal/index.js'
import type { JournalRecord, RecordBody } from '../core/types.js'

t.test('RFC 8785 section 3.2.2: the sample input canonicalizes to the published output', async (t) => {
  // The input as JSON text, so that number literals such as 333333333.33333329 go through JSON parsing as in the RFC.
  const input = JSON.parse(String.raw`{
    "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
    "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
    "literals": [null, true, false]
  }`)
  const expected = String.raw`{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`
  t.equal(canonicalJson(input), expected)
})

t.test('RFC 8785 section 3.2.3: properties sort by UTF-16 code units', async (t) => {
  const input = JSON.parse(String.raw`{
    "\u20ac": "Euro Sign",
    "\r": "Carriage Return",
    "\ufb33": "Hebrew Letter Dalet With Dagesh",
    "1": "One",
    "\ud83d\ude00": "Emoji: Grinning Face",
    "\u0080": "Control",
    "\u00f6": "Latin Small Letter O With Diaeresis"
  }`)
  const keys = Object.keys(JSON.parse(canonicalJson(input)) as object)
  // JSON.parse puts "1" first regardless (integer-like key), so check the canonical text's order instead.
  const text = canonicalJson(input)
  const order = ['\r', '1', '\u0080', '\u00f6', '\u20ac', '\ud83d\ude00', '\ufb33'].map((k) => text.indexOf(JSON.stringify(k) + ':'))
  t.same(
    [...order].sort((a, b) => a - b),
    order,
    'keys appear in code-unit order',
  )
  t.ok(order.every((i) => i >= 0))
  t.equal(keys.length, 7)
  t.ok(text.startsWith('{"\\r":"Carriage Return","1":"One","\u0080":"Control"'), 'control characters above U+001F are not escaped')
})

t.test('RFC 8785 section 3.2.4: the UTF-8 bytes of the cyberphone sample', async (t) => {
  const input = JSON.parse(
    String.raw`{"numbers":[1E30,4.50,6,2e-3,0.000000000000000000000000001],"escaping":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","other":[null,true,false]}`,
  )
  const hex = Buffer.from(canonicalJson(input), 'utf8').toString('hex')
  const expected = (
    '7b 22 65 73 63 61 70 69 6e 67 22 3a 22 e2 82 ac 24 5c 75 30 30 30 66 5c 6e 41 27 42 5c 22 5c 5c' +
    ' 5c 5c 5c 22 2f 22 2c 22 6e 75 6d 62 65 72 73 22 3a 5b 31 65 2b 33 30 2c 34 2e 35 2c 36 2c 30 2e' +
    ' 30 30 32 2c 31 65 2d 32 37 5d 2c 22 6f 74 68 65 72 22 3a 5b 6e 75 6c 6c 2c 74 72 75 65 2c 66 61' +
    ' 6c 73 65 5d 7d'
  ).replace(/ /g, '')
  t.equal(hex, expected)
})

t.test('property: the canonicalizer agrees with the canonicalize package (a maintained RFC 8785 implementation) on random JSON', async (t) => {
  // Any UTF-16 code units, lone surrogates included: both must refuse the same strings.
  const units = fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 8 }).map((a) => String.fromCharCode(...a))
  const value = fc.letrec((tie) => ({
    node: fc.oneof(
      { maxDepth: 4 },
      fc.constant(null),
      fc.boolean(),
      fc.double(),
      fc.integer(),
      units,
      fc.array(tie('node'), { maxLength: 4 }),
      fc.dictionary(units, tie('node'), { maxKeys: 5 }),
    ),
  })).node
  t.doesNotThrow(() =>
    fc.assert(
      fc.property(value, (v) => {
        let theirs: string | undefined
        let ours: string | undefined
        try {
          theirs = canonicalize(v)
        } catch {
          theirs = 'THROWS'
        }
        try {
          ours = canonicalJson(v)
        } catch {
          ours = 'THROWS'
        }
        return ours === theirs
      }),
      { numRuns: 3000 },
    ),
  )
  // A value parsed back from its canonical text (keys in order: the short path through JSON.stringify) canonicalizes to that same text.
  t.doesNotThrow(() =>
    fc.assert(
      fc.property(value, (v) => {
        let text: string
        try {
          text = canonicalJson(v)
        } catch {
          return true
        }
        const back = JSON.parse(text) as unknown
        return canonicalJson(back) === text && canonicalize(back) === text
      }),
      { numRuns: 3000 },
    ),
  )
  t.equal(canonicalJson({ a: '\\ud800', b: [1, { c: 'x' }] }), '{"a":"\\\\ud800","b":[1,{"c":"x"}]}', 'a literal backslash-u-d in sorted input')
  t.throws(() => canonicalJson({ a: ['\udfff'] }), { code: 'JOURNAL_INVALID_RECORD' }, 'a lone surrogate in sorted input is refused')
  t.throws(() => canonicalJson({ a: 1, b: Number.NaN }), { code: 'JOURNAL_INVALID_RECORD' })
  t.equal(canonicalJson({ '10': 1, '9': 2, a: 3 }), '{"10":1,"9":2,"a":3}', 'integer-like keys in code-unit order, not numeric')
  t.throws(() => canonicalJson({ a: '\ud800' }), { code: 'JOURNAL_INVALID_RECORD' })
  t.throws(() => canonicalJson({ '\udc00': 1 }), { code: 'JOURNAL_INVALID_RECORD' })
  t.equal(
    canonicalJson({ b: undefined, a: [undefined, 1] }),
    '{"a":[null,1]}',
    'undefined members are left out, undefined items are null, as JSON.stringify does',
  )
  const cyclic: Record<string, unknown> = {}
  cyclic.self = cyclic
  t.throws(() => canonicalJson(cyclic), { code: 'JOURNAL_INVALID_RECORD' })
})

t.test('RFC 8785 appendix B: IEEE 754 number serialization vectors', async (t) => {
  const vectors: [string, string | null][] = [
    ['0000000000000000', '0'],
    ['8000000000000000', '0'],
    ['0000000000000001', '5e-324'],
    ['8000000000000001', '-5e-324'],
    ['7fefffffffffffff', '1.7976931348623157e+308'],
    ['ffefffffffffffff', '-1.7976931348623157e+308'],
    ['4340000000000000', '9007199254740992'],
    ['c340000000000000', '-9007199254740992'],
    ['4430000000000000', '295147905179352830000'],
    ['7fffffffffffffff', null],
    ['7ff0000000000000', null],
    ['44b52d02c7e14af5', '9.999999999999997e+22'],
    ['44b52d02c7e14af6', '1e+23'],
    ['44b52d02c7e14af7', '1.0000000000000001e+23'],
    ['444b1ae4d6e2ef4e', '999999999999999700000'],
    ['444b1ae4d6e2ef4f', '999999999999999900000'],
    ['444b1ae4d6e2ef50', '1e+21'],
    ['3eb0c6f7a0b5ed8c', '9.999999999999997e-7'],
    ['3eb0c6f7a0b5ed8d', '0.000001'],
    ['41b3de4355555553', '333333333.3333332'],
    ['41b3de4355555554', '333333333.33333325'],
    ['41b3de4355555555', '333333333.3333333'],
    ['41b3de4355555556', '333333333.3333334'],
    ['41b3de4355555557', '333333333.33333343'],
    ['becbf647612f3696', '-0.0000033333333333333333'],
    ['43143ff3c1cb0959', '1424953923781206.2'],
  ]
  for (const [bits, expected] of vectors) {
    const n = Buffer.from(bits, 'hex').readDoubleBE(0)
    if (expected === null) {
      t.throws(() => canonicalJson(n), { code: 'JOURNAL_INVALID_RECORD' }, `${bits} (${n}) has no JSON form`)
    } else {
      t.equal(canonicalJson(n), expected, `${bits}`)
    }
  }
})

const started = (i: number): RecordBody => ({
  type: 'session.started',
  ts: new Date(1_700_000_000_000 + i * 1000).toISOString(),
  sessionId: `s-${i}`,
  outlet: 'A1',
  userId: 'u-1',
  planId: 'standard',
  trigger: 'activation',
  meterWh: 1000.5 + i,
})

function chain(n: number): JournalRecord[] {
  const out: JournalRecord[] = []
  let prev = GENESIS_PREV
  for (let i = 1; i <= n; i++) {
    const r = sealRecord(started(i), i, prev, 'boot-1', i % 2 === 0)
    out.push(r)
    prev = r.hash
  }
  return out
}

t.test('a sealed record hashes the canonical JSON of everything but its hash', async (t) => {
  const [r] = chain(1)
  const { hash, ...rest } = r!
  const expected = createHash('sha256').update(canonicalJson(rest)).digest('hex')
  t.equal(hash, expected)
  t.equal(recordHash(r!), expected, 'recordHash ignores an existing hash field')
  t.match(hash, /^[0-9a-f]{64}$/)
  t.equal(r!.prev, GENESIS_PREV)
  t.equal(r!.seq, 1)
  t.equal(r!.bootId, 'boot-1')
  t.equal(r!.clockSynced, false)
})

t.test('the stored text of a record is its canonical JSON with the hash appended, and parses back to the record', async (t) => {
  const { record, text } = sealRecordText(started(7), 7, 'ab'.repeat(32), 'boot-1', true)
  const { hash, ...rest } = record
  t.equal(text, `${canonicalJson(rest).slice(0, -1)},"hash":"${hash}"}`)
  t.same(JSON.parse(text), record)
  t.equal(recordHash(JSON.parse(text) as JournalRecord), hash)
})

t.test('the verifier accepts an intact chain and names the first break', async (t) => {
  const good = chain(20)
  t.equal(verifyRecords(good), undefined)
  t.equal(verifyRecords(good.slice(5)), undefined, 'a compacted or pulled range that starts later is intact')

  const edited = good.map((r) => ({ ...r }))
  ;(edited[7] as { meterWh: number }).meterWh = 1
  t.match(verifyRecords(edited), { seq: 8, position: 8, problem: /hash mismatch/ })

  const gap = [...good.slice(0, 4), ...good.slice(5)]
  t.match(verifyRecords(gap), { seq: 6, problem: /gap: seq 5..5 missing/ })

  const relinked = good.map((r) => ({ ...r }))
  relinked[3] = sealRecord(started(99), 4, 'f'.repeat(64), 'boot-1', false)
  t.match(verifyRecords(relinked), { seq: 4, problem: /prev does not match the hash of seq 3/ })

  const badGenesis = [sealRecord(started(1), 1, 'a'.repeat(64), 'b', true)]
  t.match(verifyRecords(badGenesis), { seq: 1, problem: /64 zeros/ })

  t.match(verifyRecords([good[0], good[0]]), { seq: 1, position: 2, problem: /repeats or goes back/ })
  t.match(verifyRecords([good[0], 'nope']), { position: 2, problem: /not a record object/ })
  t.match(verifyRecords([{ ...good[0], hash: 'XYZ' }]), { problem: /hash is not 64/ })
})

t.test('property: any single change to any field of any record is caught at that record', async (t) => {
  const records = chain(12)
  t.doesNotThrow(() =>
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 11 }),
        fc.constantFrom('ts', 'meterWh', 'userId', 'bootId', 'clockSynced', 'outlet', 'seq'),
        (i, field) => {
          const copy = records.map((r) => ({ ...r })) as unknown as Record<string, unknown>[]
          const v = copy[i]![field]
          copy[i]![field] = typeof v === 'number' ? v + 0.25 : typeof v === 'boolean' ? !v : `${String(v)}x`
          const b = verifyRecords(copy)
          return b !== undefined && b.position === i + 1
        },
      ),
    ),
  )
})
