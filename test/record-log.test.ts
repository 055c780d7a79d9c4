/**
 * One RecordLog contract (test/helpers/record-log-contract.ts), two implementations:
 * MemoryLog, the stand-in the uplink tests run on, and the real Journal on LevelDB in a
 * temporary directory on disk.
 */
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Journal, type JournalOptions } from '../daemon/journal/index.js'
import { MemoryLog } from './helpers/memory-log.js'
import { recordLogContract, type Subject } from './helpers/record-log-contract.js'

t.test('MemoryLog', async (t) => {
  recordLogContract(t, async () => {
    const log = new MemoryLog()
    const subject: Subject = {
      log,
      append: async (records) => log.append(records),
      // As the journal's retention: acknowledged records only, never the head.
      compact: async () => log.compact(Math.min(log.acked(), log.head() - 1)),
      // Memory does not outlive its process: the next "run" is the same object.
      reopen: async () => subject,
      close: async () => undefined,
    }
    return subject
  })
})

t.test('Journal (LevelDB on disk)', async (t) => {
  // The bodies are dated January 2026: a clock a year later with 1 day of retention makes every record old enough.
  const options: JournalOptions = {
    bootId: 'boot-contract',
    clockSynced: () => true,
    now: () => Date.parse('2027-01-15T00:00:00Z'),
    compactEveryMs: 0,
    retentionDays: 1,
  }
  const subject = async (dir: string): Promise<Subject> => {
    const j = await Journal.open(dir, options)
    let closed = false
    const close = async () => {
      if (closed) return
      closed = true
      await j.close({ clean: true })
    }
    return {
      log: j,
      append: (records) => j.commit({ records }),
      compact: async () => void (await j.compact()),
      reopen: async () => {
        await close()
        return subject(dir)
      },
      close,
    }
  }
  recordLogContract(t, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'outpost-record-log-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    return subject(dir)
  })
})
