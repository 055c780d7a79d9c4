/**
 * The RecordLog the uplink tests run against: the real journal on
 * disk in a temp dir, LevelDB and all, closed and removed at teardown. The
 * in-memory log (test/helpers/memory-log.ts) remains for the gateway's unit
 * tests and the benchmark's baseline-free setup.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Journal } from '../../daemon/journal/index.js'
import type { CommandResult, JournalRecord, RecordBody, RecordLog } from '../../core/types.js'

interface Teardownable {
  teardown(fn: () => unknown): void
}

export interface TestLog extends RecordLog {
  /** Journal these bodies (one commit) and return the sealed records. */
  append(bodies: RecordBody[]): Promise<JournalRecord[]> | JournalRecord[]
  /** Compact every acknowledged record retention allows (all of them, in tests) but the head. */
  // biome-ignore lint/suspicious/noConfusingVoidType: MemoryLog compacts synchronously, the journal asynchronously
  compact(): Promise<unknown> | void
  commandResult(id: string): Promise<CommandResult | undefined>
  /** Store a command's first result, as the daemon's commit does. */
  storeCommandResult(result: CommandResult): Promise<void> | void
}

/** The journal behind the TestLog seams. */
export class DiskLog implements TestLog {
  /** Added to the wall clock: compact() jumps years ahead so retention lets every acked record go. */
  private skew = 0
  journal!: Journal

  static async open(dir: string): Promise<DiskLog> {
    const log = new DiskLog()
    log.journal = await Journal.open(dir, {
      bootId: 'boot-test',
      clockSynced: () => true,
      now: () => Date.now() + log.skew,
      compactEveryMs: 0,
      readingSyncMs: 0,
    })
    return log
  }
  head(): number {
    return this.journal.head()
  }
  acked(): number {
    return this.journal.acked()
  }
  oldest(): number {
    return this.journal.oldest()
  }
  read(from: number, limit: number): Promise<JournalRecord[]> {
    return this.journal.read(from, limit)
  }
  ack(upTo: number): Promise<void> {
    return this.journal.ack(upTo)
  }
  onAppend(listener: (head: number) => void): () => void {
    return this.journal.onAppend(listener)
  }
  append(bodies: RecordBody[]): Promise<JournalRecord[]> {
    return this.journal.commit({ records: bodies })
  }
  async compact(): Promise<unknown> {
    this.skew = 100 * 365 * 24 * 3600 * 1000
    try {
      return await this.journal.compact()
    } finally {
      this.skew = 0
    }
  }
  commandResult(id: string): Promise<CommandResult | undefined> {
    return this.journal.commandResult(id)
  }
  async storeCommandResult(result: CommandResult): Promise<void> {
    await this.journal.commit({ records: [], commandResults: [{ id: result.id, result }] })
  }
}

export async function openTestLog(t: Teardownable): Promise<TestLog> {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-uplink-journal-'))
  const log = await DiskLog.open(dir)
  t.teardown(async () => {
    await log.journal.close({ clean: true }).catch(() => undefined)
    rmSync(dir, { recursive: true, force: true })
  })
  return log
}
