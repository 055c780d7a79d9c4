/** The journal's public face: import from here, not from the files behind it. */
export {
  Journal,
  journalLocation,
  openError,
  type JournalOptions,
  type CommitStep,
  type ReadingEntry,
  type CompactionResult,
  type JournalDb,
  type SalvageSigner,
  type SessionSigner,
} from './journal.js'
export {
  canonicalJson,
  recordHash,
  sealRecord,
  sealRecordText,
  verifyRecords,
  ChainVerifier,
  SalvageAwareVerifier,
  describeAnnounced,
  GENESIS_PREV,
  type ChainBreak,
  type AnnouncedBreak,
} from './chain.js'
export { openOffline, storedRecords, verifyDb, repairJournal, type OfflineJournal, type OfflineMode, type VerifyReport } from './offline.js'
