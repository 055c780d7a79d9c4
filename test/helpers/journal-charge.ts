/**
 * A journal on disk charged by the engine, for the tests that damage it (journal-salvage,
 * journal-damage): the engine-site's outlets polled, wallets set, sessions started and
 * stopped by commands, one session left open; and the tools to look at what a damage left.
 */
import { createHash, randomUUID } from 'node:crypto'
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Level } from 'level'
import { Journal, journalLocation } from '../../daemon/journal/index.js'
import { recordKey } from '../../daemon/journal/keys.js'
import { initialState, step, type EngineState } from '../../daemon/engine/index.js'
import type { JournalRecord } from '../../core/types.js'
import { reading } from '../fixtures/engine-site.js'
import { siteConfig } from '../fixtures/engine-site-config.js'

const config = siteConfig()
export const T0 = 1_767_225_600_000
export const opts = (now: () => number) => ({
  bootId: randomUUID(),
  clockSynced: () => true,
  now,
  compactEveryMs: 0,
  readingSyncMs: 0,
  writeBufferSize: 4096,
})

/**
 * Drive the engine for `rounds` polls on a journal, with one session open at the end; ack up to `ack`.
 * `clean`: then stop as the daemon does on SIGTERM (the engine closes every session, the journal closes clean).
 */
export async function charge(
  dir: string,
  rounds: number,
  ack: number,
  o: { clean?: boolean; start?: number; writeBufferSize?: number } = {},
): Promise<JournalRecord[]> {
  let clock = o.start ?? T0
  const journal = await Journal.open(dir, { ...opts(() => clock), ...(o.writeBufferSize ? { writeBufferSize: o.writeBufferSize } : {}) })
  const out: JournalRecord[] = []
  let state = ((await journal.loadState()) as EngineState | undefined) ?? initialState(config)
  const run = async (event: Parameters<typeof step>[1], outlet?: string, r?: ReturnType<typeof reading>): Promise<void> => {
    const res = step(state, event, clock)
    state = res.state
    const records = res.effects.flatMap((e) => (e.type === 'record' ? [e.record] : []))
    const session = outlet ? state.outlets[outlet]?.session : null
    out.push(...(await journal.commit({ records, state, readings: session && r ? [{ outlet: outlet!, sessionId: session.id, reading: r }] : [] })))
  }
  await run({ type: 'config', config })
  await run({ type: 'boot', cleanShutdown: true, version: 't' })
  for (const userId of ['u-1', 'u-2'])
    await run({ type: 'command', id: `w-${userId}`, source: 'local', command: { action: 'set-wallet', userId, currency: 'CAD', balance: 1_000_000 } })
  for (let i = 0; i < rounds; i++) {
    clock += 1000
    for (let o = 0; o < config.outlets.length; o++) {
      const r = reading(o, clock)
      await run({ type: 'reading', outlet: config.outlets[o]!.id, reading: r }, config.outlets[o]!.id, r)
    }
    if (i % 7 === 0)
      await run({
        type: 'command',
        id: `c-${i}`,
        source: 'local',
        command: i % 14 === 0 ? { action: 'start', outlet: 'A1', userId: 'u-1' } : { action: 'stop', outlet: 'A1', by: 'user' },
      })
    await run({ type: 'tick' })
  }
  await run({ type: 'command', id: 'c-last', source: 'local', command: { action: 'start', outlet: 'A3', userId: 'u-2' } })
  if (o.clean) await run({ type: 'shutdown' })
  await journal.ack(ack)
  await journal.close({ clean: o.clean === true })
  return out
}

export function fingerprint(dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  // LevelDB's info log (LOG, LOG.old) is rewritten by any open attempt, so it is not part of the evidence.
  for (const f of readdirSync(dir))
    if (statSync(join(dir, f)).isFile() && !['LOCK', 'LOG', 'LOG.old'].includes(f))
      out[f] = createHash('sha256')
        .update(readFileSync(join(dir, f)))
        .digest('hex')
  return out
}

export const quietLog = () => {
  const lines: string[] = []
  return { lines, warn: (_f: Record<string, unknown>, msg: string) => void lines.push(msg) }
}

/** Each record stored again with its `ts` changed (its hash no longer holds), as if edited on disk: the salvage must leave a hole there. */
export async function editOnDisk(dir: string, records: JournalRecord[]): Promise<void> {
  const db = new Level<string, string>(journalLocation(dir), { keyEncoding: 'utf8', valueEncoding: 'utf8' })
  for (const r of records) await db.put(recordKey(r.seq), JSON.stringify({ ...r, ts: '2020-01-01T00:00:00.000Z' }))
  await db.close()
}

/** Every byte of `file` from `from` (a fraction of its length) on, XORed with a pattern: a failing card's bad sectors. */
export function garble(file: string, from = 0): void {
  const b = readFileSync(file)
  for (let i = Math.floor(b.length * from); i < b.length; i++) b[i] = b[i]! ^ (0x5a + (i % 61))
  writeFileSync(file, b)
}
