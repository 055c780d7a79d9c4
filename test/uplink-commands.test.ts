import t from 'tap'
import { Writable } from 'node:stream'
import { createLogger } from '../daemon/log.js'
import { openTestLog, type TestLog } from './helpers/test-log.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { MemoryLog } from './helpers/memory-log.js'
import { makeUplink, rawClient, uplinkConfig, waitFor } from './helpers/uplink-kit.js'
import { CommandGateway, MAX_COMMAND_BYTES } from '../daemon/command-gateway.js'
import type { Command, CommandResult, CommandSource } from '../core/types.js'

/** A daemon stand-in: records every apply, stores results in the ledger as the journal commit would. */
function fakeDaemon(
  opts: { delayMs?: number; refuse?: (c: Command) => { code: string; message: string } | undefined; throwOn?: string } = {},
  ledger: TestLog = new MemoryLog(),
) {
  const calls: { id: string; command: Command; source: CommandSource }[] = []
  const gateway = new CommandGateway({
    ledger,
    apply: async (id, command, source) => {
      calls.push({ id, command, source })
      if (opts.delayMs) await new Promise((r) => setTimeout(r, opts.delayMs))
      if (opts.throwOn === id) throw new Error('journal write failed')
      const refusal = opts.refuse?.(command)
      const result: CommandResult = refusal ? { id, ok: false, error: refusal } : { id, ok: true, result: { applied: calls.length } }
      await ledger.storeCommandResult(result)
      return result
    },
  })
  return { gateway, calls, ledger }
}

const plan = { id: 'p2', currency: 'CAD', periods: [{ days: ['mon'], from: '00:00', to: '24:00', perKwh: 0.15 }] }

t.test('every valid action passes validation and reaches apply once', async (t) => {
  const { gateway, calls } = fakeDaemon()
  const valid: Record<string, unknown>[] = [
    { id: 'c1', action: 'start', outlet: 'A1', userId: 'u-42' },
    { id: 'c2', action: 'stop', outlet: 'A1', by: 'user' },
    { id: 'c3', action: 'stop', outlet: 'A1', by: 'manager' },
    { id: 'c4', action: 'set-wallet', userId: 'u-42', currency: 'CAD', balance: 2500 },
    { id: 'c5', action: 'set-wallet', userId: 'u-42', currency: 'JPY', balance: -10 },
    { id: 'c6', action: 'set-auto-start', outlet: 'A2', userId: 'u-42' },
    { id: 'c7', action: 'set-auto-start', outlet: 'A2', userId: null },
    { id: 'c8', action: 'set-availability', outlet: 'A1', available: false },
    { id: 'c9', action: 'set-plan', plan },
    { id: 'c10', action: 'assign-plan', outlet: 'A1', planId: 'p2' },
  ]
  for (const c of valid) {
    const r = await gateway.handle(JSON.stringify(c), 'cloud')
    t.same(r, { id: c.id, ok: true, result: { applied: calls.length } }, `${String(c.action)} ${String(c.id)} applied`)
  }
  t.equal(calls.length, valid.length)
  const { id: _id, ...first } = valid[0]!
  t.same(calls[0], { id: 'c1', command: first, source: 'cloud' }, 'apply gets id, command without id, and the source')
  // Already-parsed objects (local API, Node-RED) and Buffers are accepted too.
  t.match(await gateway.handle({ id: 'l1', action: 'stop', outlet: 'A1', by: 'user' }, 'local'), { ok: true })
  t.match(await gateway.handle(Buffer.from(JSON.stringify({ id: 'n1', action: 'stop', outlet: 'A1', by: 'user' })), 'node-red'), { ok: true })
  t.same(
    calls.slice(-2).map((c) => c.source),
    ['local', 'node-red'],
  )
})

t.test('every malformed class: invalid-command naming the field, nothing applied', async (t) => {
  const { gateway, calls } = fakeDaemon()
  const cases: [string, unknown, RegExp, string?][] = [
    ['malformed JSON', '{"id": "x1", "action": ', /malformed JSON/],
    ['duplicate key', '{"id":"x2","action":"stop","outlet":"A1","by":"user","by":"manager"}', /duplicate key "by"/],
    ['not an object', '[1,2,3]', /JSON object/],
    ['a bare string', '"start"', /JSON object/],
    ['empty payload', '', /malformed JSON/],
    ['unknown action', { id: 'x3', action: 'explode', outlet: 'A1' }, /\/action: unknown action "explode"/, 'x3'],
    ['missing action', { id: 'x4', outlet: 'A1' }, /\/action: is required/, 'x4'],
    ['action not a string', { id: 'x5', action: 7 }, /\/action/, 'x5'],
    ['missing id', { action: 'stop', outlet: 'A1', by: 'user' }, /\/id: is required/, ''],
    ['id not a string', { id: 5, action: 'stop', outlet: 'A1', by: 'user' }, /\/id: must be a string/, ''],
    ['id with a slash', { id: 'a/b', action: 'stop', outlet: 'A1', by: 'user' }, /\/id: must be/, 'a/b'],
    ['missing field', { id: 'x6', action: 'start', outlet: 'A1' }, /\/userId: is required/, 'x6'],
    ['wrong type', { id: 'x7', action: 'set-wallet', userId: 'u', currency: 'CAD', balance: '2500' }, /\/balance: must be an integer/, 'x7'],
    ['float money', { id: 'x8', action: 'set-wallet', userId: 'u', currency: 'CAD', balance: 25.5 }, /\/balance: must be an integer/, 'x8'],
    ['bad enum', { id: 'x9', action: 'stop', outlet: 'A1', by: 'admin' }, /\/by: must be one of: "user", "manager"/, 'x9'],
    ['unknown field', { id: 'x10', action: 'stop', outlet: 'A1', by: 'user', force: true }, /\/force: unknown field/, 'x10'],
    ['bad outlet id', { id: 'x11', action: 'stop', outlet: '', by: 'user' }, /\/outlet: must be an id/, 'x11'],
    ['bool as string', { id: 'x12', action: 'set-availability', outlet: 'A1', available: 'no' }, /\/available: must be true or false/, 'x12'],
    [
      'auto-start user neither string nor null',
      { id: 'x13', action: 'set-auto-start', outlet: 'A1', userId: 3 },
      /\/userId: must be a user id .* or null/,
      'x13',
    ],
    [
      'unknown currency',
      { id: 'x14', action: 'set-wallet', userId: 'u', currency: 'QQQ', balance: 1 },
      /\/currency: "QQQ" is not a known ISO 4217/,
      'x14',
    ],
    ['plan: schema', { id: 'x15', action: 'set-plan', plan: { id: 'p', currency: 'CAD', periods: [] } }, /\/plan\/periods: /, 'x15'],
    [
      'plan: semantic (decimals)',
      { id: 'x16', action: 'set-plan', plan: { ...plan, periods: [{ ...plan.periods[0], perKwh: 0.1234567 }] } },
      /\/plan\/periods\/0\/perKwh: .*more than 6 decimals/,
      'x16',
    ],
    [
      'plan: semantic (no rate)',
      { id: 'x17', action: 'set-plan', plan: { ...plan, periods: [{ days: ['mon'], from: '00:00', to: '24:00' }] } },
      /\/plan\/periods\/0: a period needs perKwh/,
      'x17',
    ],
    [
      'plan: bad time',
      { id: 'x18', action: 'set-plan', plan: { ...plan, periods: [{ ...plan.periods[0], from: '7am' }] } },
      /\/plan\/periods\/0\/from: must be a time/,
      'x18',
    ],
    [
      'oversized',
      JSON.stringify({ id: 'x19', action: 'stop', outlet: 'A1', by: 'user', pad: 'x'.repeat(MAX_COMMAND_BYTES) }),
      /bytes; at most 65536/,
    ],
    ['oversized object', { id: 'x20', action: 'stop', outlet: 'A1', by: 'user', pad: 'x'.repeat(MAX_COMMAND_BYTES) }, /bytes; at most 65536/, 'x20'],
  ]
  for (const [what, raw, message, id] of cases) {
    const r = await gateway.handle(raw, 'cloud')
    t.equal(r.ok, false, `${what}: refused`)
    if (!r.ok) {
      t.equal(r.error.code, 'invalid-command', `${what}: invalid-command`)
      t.match(r.error.message, message, `${what}: ${r.error.message}`)
    }
    if (id !== undefined) t.equal(r.id, id, `${what}: answered with the command's id`)
  }
  t.equal(calls.length, 0, 'nothing reached the engine')
})

t.test('a repeated id is applied once and returns the first result, also while in flight', async (t) => {
  const { gateway, calls } = fakeDaemon({
    delayMs: 100,
    refuse: (c) => (c.action === 'start' ? { code: 'busy', message: 'outlet A1 is charging' } : undefined),
  })
  const cmd = JSON.stringify({ id: 'dup-1', action: 'stop', outlet: 'A1', by: 'user' })
  const concurrent = await Promise.all([gateway.handle(cmd, 'cloud'), gateway.handle(cmd, 'cloud'), gateway.handle(cmd, 'local')])
  t.equal(calls.length, 1, 'applied once though three arrived together')
  t.same(concurrent[1], concurrent[0])
  t.same(concurrent[2], concurrent[0])
  const later = await gateway.handle(cmd, 'cloud')
  t.same(later, concurrent[0], 'a later repeat gets the stored result')
  // Same id, different body: still the first result (the id is the identity).
  const other = await gateway.handle({ id: 'dup-1', action: 'set-availability', outlet: 'A1', available: false }, 'cloud')
  t.same(other, concurrent[0])
  t.equal(calls.length, 1)
  // An engine refusal is a result like any other: stored and repeated, with the engine's code.
  const refused = await gateway.handle({ id: 'dup-2', action: 'start', outlet: 'A1', userId: 'u' }, 'cloud')
  t.same(refused, { id: 'dup-2', ok: false, error: { code: 'busy', message: 'outlet A1 is charging' } })
  t.same(await gateway.handle({ id: 'dup-2', action: 'start', outlet: 'A1', userId: 'u' }, 'cloud'), refused)
  t.equal(calls.length, 2)
})

t.test('an apply that throws is answered, not thrown, and a retry may try again', async (t) => {
  const { gateway, calls } = fakeDaemon({ throwOn: 'boom' })
  const r = await gateway.handle({ id: 'boom', action: 'stop', outlet: 'A1', by: 'user' }, 'cloud')
  t.match(r, { id: 'boom', ok: false, error: { code: 'internal' } })
  await gateway.handle({ id: 'boom', action: 'stop', outlet: 'A1', by: 'user' }, 'cloud')
  t.equal(calls.length, 2, 'nothing was stored, so the retry is applied')
})

t.test('commands over MQTT: answered on P/cmd/{id}/result; malformed ones never stop the uplink', async (t) => {
  const broker = await startMosquitto(t)
  // The journal is the ledger here, as in the daemon.
  const log = await openTestLog(t)
  const { gateway, calls } = fakeDaemon({}, log)
  const uplink = makeUplink(t, log, uplinkConfig(broker.url), { onCommand: (raw) => gateway.handle(raw, 'cloud') })
  uplink.start()
  await waitFor(() => uplink.state().status === 'online', 'online')
  const cloud = await rawClient(t, broker.url)
  const results = new Map<string, CommandResult[]>()
  cloud.on('message', (topic, p) => {
    const id = topic.split('/')[3]!
    results.set(id, [...(results.get(id) ?? []), JSON.parse(p.toString()) as CommandResult])
  })
  await cloud.subscribeAsync('outpost/lot-7/cmd/+/result', { qos: 1 })
  const send = async (payload: string, topicId: string, n = 1) => {
    await cloud.publishAsync('outpost/lot-7/cmd', payload, { qos: 1 })
    await waitFor(() => (results.get(topicId)?.length ?? 0) >= n, `result on cmd/${topicId}/result`)
    return results.get(topicId)![n - 1]!
  }
  t.same(await send(JSON.stringify({ id: 'm1', action: 'start', outlet: 'A1', userId: 'u-42' }), 'm1'), {
    id: 'm1',
    ok: true,
    result: { applied: 1 },
  })
  t.match(await send('{"id":"m2","action":"fly"}', 'm2'), {
    id: 'm2',
    ok: false,
    error: { code: 'invalid-command', message: /unknown action "fly"/ },
  })
  t.match(await send('not json at all', '_invalid'), { id: '', ok: false, error: { code: 'invalid-command', message: /malformed JSON/ } })
  t.match(await send(JSON.stringify({ id: 'a/b', action: 'stop', outlet: 'A1', by: 'user' }), '_invalid', 2), {
    id: 'a/b',
    ok: false,
    error: { code: 'invalid-command' },
  })
  // Too large to parse, but its id is in the first KiB: answered where the cloud waits for it.
  t.match(await send(JSON.stringify({ id: 'm3', action: 'stop', outlet: 'A1', by: 'user', pad: 'x'.repeat(70_000) }), 'm3'), {
    id: 'm3',
    ok: false,
    error: { code: 'invalid-command', message: /is 7\d{4} bytes; at most 65536/ },
  })
  t.same(
    await send(JSON.stringify({ id: 'm1', action: 'start', outlet: 'A1', userId: 'u-42' }), 'm1', 2),
    { id: 'm1', ok: true, result: { applied: 1 } },
    'repeat over MQTT: first result',
  )
  t.same(
    await send(JSON.stringify({ id: 'm4', action: 'stop', outlet: 'A1', by: 'manager' }), 'm4'),
    { id: 'm4', ok: true, result: { applied: 2 } },
    'still serving after malformed commands',
  )
  t.equal(calls.length, 2)
  t.equal(uplink.state().status, 'online')
})

t.test('an oversized command: its id recovered from the first KiB, never from the rest; id-less refusals counted', async (t) => {
  const { gateway, calls } = fakeDaemon()
  const pad = 'x'.repeat(2 * 1024 * 1024)
  const big = (head: string) => `${head}"pad":"${pad}"}`
  const cases: [string, string, string][] = [
    ['id first', big('{"id":"big-1","action":"set-wallet","userId":"u1","currency":"CAD","balance":5,'), 'big-1'],
    [
      'id after other fields and a nested object',
      big('{ "action" : "set-plan", "plan": {"id": "inner", "periods": [{"days": ["mon"]}]}, "id": "big-2", '),
      'big-2',
    ],
    ['an escaped id, decoded', big('{"id":"big\\u002d3","action":"stop",'), 'big-3'],
    ['an escaped quote in an earlier value', big('{"note":"say \\"id\\": \\"fake\\"","id":"big-4",'), 'big-4'],
    ['only a nested id', big('{"plan":{"id":"inner"},'), ''],
    ['id past the first KiB', big(`{"note":"${'n'.repeat(1100)}","id":"late",`), ''],
    ['id cut off at the KiB boundary', `{"note":"${'n'.repeat(1000)}","id":"${'a'.repeat(100)}${pad}"}`, ''],
    ['an id that cannot be a topic level', big('{"id":"a/b",'), ''],
    ['an id that is not a string', big('{"id":42,'), ''],
    ['not an object', `[${JSON.stringify(pad)}]`, ''],
  ]
  for (const [what, raw, id] of cases) {
    const r = await gateway.handle(raw, 'cloud')
    t.equal(r.id, id, `${what}: answered as ${JSON.stringify(id)}`)
    t.match(
      r,
      {
        ok: false,
        error: {
          code: 'invalid-command',
          message: new RegExp(`^command is ${Buffer.byteLength(raw)} bytes; at most ${MAX_COMMAND_BYTES} are accepted$`),
        },
      },
      `${what}: names the size and the limit`,
    )
  }
  // Buffers (MQTT payloads) the same way.
  t.match(await gateway.handle(Buffer.from(big('{"id":"big-5",')), 'cloud'), { id: 'big-5', ok: false, error: { code: 'invalid-command' } })
  t.equal(calls.length, 0, 'nothing reached the engine')
  t.same(gateway.rejectedCounts(), { 'too-large': 6, 'not-json': 0, 'no-id': 0 }, 'the six without a usable id counted as too-large')

  t.match(await gateway.handle('not json', 'cloud'), { id: '', error: { code: 'invalid-command' } })
  t.match(
    await gateway.handle('{"id":"half-1","action":', 'cloud'),
    { id: 'half-1', error: { code: 'invalid-command', message: /malformed JSON/ } },
    'cut-off JSON with an id is answered to it',
  )
  t.match(await gateway.handle({ action: 'stop', outlet: 'A1', by: 'user' }, 'local'), { id: '', error: { code: 'invalid-command' } })
  t.match(await gateway.handle({ id: 'a/b', action: 'stop', outlet: 'A1', by: 'user' }, 'cloud'), { id: 'a/b', error: { code: 'invalid-command' } })
  t.match(
    await gateway.handle({ id: 'ok-1', action: 'fly' }, 'cloud'),
    { id: 'ok-1', error: { code: 'invalid-command' } },
    'an invalid command with a usable id is answered, not counted',
  )
  t.same(gateway.rejectedCounts(), { 'too-large': 6, 'not-json': 1, 'no-id': 2 })
})

t.test('id-less refusals are logged at most once a minute per reason', async (t) => {
  const lines: { msg: string; reason?: string; repeats?: number }[] = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) lines.push(JSON.parse(line) as (typeof lines)[number])
      cb()
    },
  })
  const logger = createLogger('info', sink)
  let now = 0
  const gateway = new CommandGateway({ ledger: new MemoryLog(), apply: async (id) => ({ id, ok: true }), logger, monotonic: () => now })
  for (let i = 0; i < 50; i++) await gateway.handle('x'.repeat(MAX_COMMAND_BYTES + 1), 'cloud')
  t.equal(lines.length, 1, 'fifty refusals, one line')
  t.match(lines[0], { reason: 'too-large', msg: 'command refused with no id to answer to' })
  await gateway.handle('nope', 'cloud')
  t.equal(lines.length, 2, 'another reason gets its own line')
  now = 61_000
  await gateway.handle('x'.repeat(MAX_COMMAND_BYTES + 1), 'cloud')
  t.equal(lines.length, 3, 'a minute later: one summary line')
  t.match(lines[2], { reason: 'too-large', repeats: 50 })
  t.equal(gateway.rejectedCounts()['too-large'], 51)
})
