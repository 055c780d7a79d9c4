/**
 * The RecordLog the uplink tests run against. One place to switch between the
 * in-memory log (test/helpers/memory-log.ts) and the real journal on disk.
 */
import type { CommandResult, JournalRecord, RecordBody, RecordLog } from '../../daemon/types.js'
import { MemoryLog } from './memory-log.js'

interface Teardownable {
  teardown(fn: () => unknown): void
}

export interface TestLog extends RecordLog {
  /** Journal these bodies (one commit) and return the sealed records. */
  append(bodies: RecordBody[]): Promise<JournalRecord[]> | JournalRecord[]
  /** Compact every acknowledged record retention allows (all of them, in tests) but the head. */
  compact(): Promise<unknown> | void
  commandResult(id: string): Promise<CommandResult | undefined>
  /** Store a command's first result, as the daemon's commit does. */
  storeCommandResult(result: CommandResult): Promise<void> | void
}

export async function openTestLog(_t: Teardownable): Promise<TestLog> {
  return new MemoryLog()
}
