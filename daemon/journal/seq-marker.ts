/**
 * The seq marker: `<storage.dir>/journal-seq.json`, the journal's evidence outside LevelDB of
 * how far its log went. LevelDB (as classic-level opens it) skips damaged log entries without an
 * error, so the journal cannot learn from LevelDB alone that it lost its newest records, or all
 * of them; this small file, beside the journal directory and the gateway key, tells it.
 *
 * It holds `reserved`, a seq the journal never seals past before the marker says so (fsynced):
 * every seq ever given out is <= reserved, whatever happens to LevelDB's files. The journal
 * reserves in blocks (RESERVE_BLOCK), so the marker is written once per block of records, not
 * with each one. `head` is the log's head when the marker was last written (at open, each
 * reservation, each checkpoint, and a clean close, where `clean` says it is exact), `acked` the
 * ack watermark then.
 *
 * Owns: the file's format, its checksum, and writing it atomically (temporary file, fsync,
 * rename, fsync of the directory). Must never: be written with a `reserved` below one it
 * replaces (reservations only grow), or be trusted when its checksum does not match.
 */
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { writeAtomic } from './fsync.js'

export const MARKER_FILE = 'journal-seq.json'
/** Seqs reserved at a time: one marker write per this many records (a few ms on an SD card). */
export const RESERVE_BLOCK = 4096

export interface SeqMarker {
  /** Every seq this gateway ever gave out is <= reserved. */
  reserved: number
  /** The log's head when the marker was written; exact when `clean`. */
  head: number
  /** The ack watermark when the marker was written. */
  acked: number
  /** Written by a clean close: `head` is the head exactly. */
  clean: boolean
}

export type MarkerRead = { state: 'ok'; marker: SeqMarker } | { state: 'missing' } | { state: 'garbled'; detail: string }

export function markerPath(storageDir: string): string {
  return join(storageDir, MARKER_FILE)
}

function sum(m: SeqMarker): string {
  return createHash('sha256').update(`${m.reserved}|${m.head}|${m.acked}|${m.clean}`).digest('hex').slice(0, 16)
}

const isSeq = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0

export async function readMarker(storageDir: string): Promise<MarkerRead> {
  let text: string
  try {
    text = await readFile(markerPath(storageDir), 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { state: 'missing' }
    return { state: 'garbled', detail: `cannot read ${markerPath(storageDir)}: ${(err as Error).message}` }
  }
  let v: Partial<SeqMarker> & { v?: unknown; sum?: unknown }
  try {
    v = JSON.parse(text)
  } catch {
    return { state: 'garbled', detail: `${markerPath(storageDir)} is not JSON` }
  }
  if (v === null || typeof v !== 'object' || v.v !== 1 || !isSeq(v.reserved) || !isSeq(v.head) || !isSeq(v.acked) || typeof v.clean !== 'boolean')
    return { state: 'garbled', detail: `${markerPath(storageDir)} is not a seq marker` }
  const marker: SeqMarker = { reserved: v.reserved, head: v.head, acked: v.acked, clean: v.clean }
  if (v.sum !== sum(marker) || marker.head > marker.reserved || marker.acked > marker.head)
    return { state: 'garbled', detail: `${markerPath(storageDir)} fails its checksum` }
  return { state: 'ok', marker }
}

/** Writes the marker atomically and durably (a power cut leaves the old one or the new one, never a torn one). */
export async function writeMarker(storageDir: string, marker: SeqMarker): Promise<void> {
  await writeAtomic(markerPath(storageDir), `${JSON.stringify({ v: 1, ...marker, sum: sum(marker) })}\n`, 0o644)
}

/**
 * The first seq of a chain started when the highest seq ever given out cannot be known (the
 * journal and its marker both lost): 100 × the Unix time in seconds, above any seq a chain
 * started earlier can have reached (that would take 100 records a second, sustained since it
 * started; a site writes a few hundred a day). It still fits the journal's 12-digit keys until
 * the year 2286. Callers take the max with every seq the evidence still shows.
 */
export function unknownChainBase(now: number): number {
  return Math.floor(now / 1000) * 100
}
