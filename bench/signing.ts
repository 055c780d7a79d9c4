/**
 * What the OCMF signature costs a billing record: the durable append of a session.ended
 * (Journal.commit: sealed, hashed, fsynced) with the gateway's signer against the same
 * journal without it, interleaved one commit each in turn so both see the same disk and CPU
 * weather, each round's figure the median commit (fsync stalls on a shared disk are outliers).
 * Goal: signing adds at most 10 % (the fsync dominates). The note gives the signing
 * alone (payload, ECDSA P-256, DER to hex) in microseconds per record; a second row adds that
 * to the unsigned append run by run, which a busy shared machine disturbs less than the first.
 * Runs alone with `node dist/bench/run.js signing`.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Journal } from '../daemon/journal/index.js'
import { loadOrCreateKey } from '../daemon/gateway-key.js'
import { ocmfPayload, signOcmf } from '../daemon/ocmf.js'
import type { SessionEndedBody } from '../core/types.js'
import { median, row, type BenchRow } from './lib.js'
import { ended, options } from './journal.js'

export async function run(): Promise<BenchRow[]> {
  const keyDir = mkdtempSync(join(tmpdir(), 'outpost-bench-key-'))
  const key = loadOrCreateKey(keyDir)
  const sign = (body: SessionEndedBody, c: { pagination: number; clockSynced: boolean }): string =>
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
  const N = 300
  const bodies = Array.from({ length: N + 1 }, (_, i) => ended(i))

  const round = async (): Promise<[number, number]> => {
    const plainDir = mkdtempSync(join(tmpdir(), 'outpost-bench-plain-'))
    const signedDir = mkdtempSync(join(tmpdir(), 'outpost-bench-signed-'))
    const plain = await Journal.open(plainDir, options())
    const signed = await Journal.open(signedDir, { ...options(), sign })
    const plainMs: number[] = []
    const signedMs: number[] = []
    const one = async (j: Journal, i: number): Promise<number> => {
      const t = performance.now()
      await j.commit({ records: [bodies[i]!] })
      return performance.now() - t
    }
    for (let i = 1; i <= N; i++) {
      // Alternate who goes first: an fsync right after another file's fsync costs differently.
      if (i % 2 === 0) {
        plainMs.push(await one(plain, i))
        signedMs.push(await one(signed, i))
      } else {
        signedMs.push(await one(signed, i))
        plainMs.push(await one(plain, i))
      }
    }
    await plain.close({ clean: true })
    await signed.close({ clean: true })
    rmSync(plainDir, { recursive: true, force: true })
    rmSync(signedDir, { recursive: true, force: true })
    // Medians, not means: a single fsync that stalls behind another suite's writes says nothing about signing.
    return [median(plainMs), median(signedMs)]
  }

  await round()
  const plainRuns: number[] = []
  const signedRuns: number[] = []
  for (let k = 0; k < 5; k++) {
    const [p, s] = await round()
    plainRuns.push(p)
    signedRuns.push(s)
  }
  // The signing alone, without the journal.
  const signRuns: number[] = []
  for (let k = 0; k < 5; k++) {
    const t = performance.now()
    for (let i = 1; i <= 2000; i++) sign(bodies[(i % N) + 1]!, { pagination: i, clockSynced: true })
    signRuns.push(((performance.now() - t) * 1000) / 2000)
  }
  rmSync(keyDir, { recursive: true, force: true })
  const r = row(
    'durable append of a session.ended (fsynced commit) with its OCMF signature vs the same commit unsigned',
    'ms/append',
    plainRuns,
    signedRuns,
    { op: '<=', ratio: 1.1 },
  )
  r.note = [r.note, `signing alone: ${median(signRuns).toFixed(0)} µs/record`].filter(Boolean).join('; ')
  // The same question with less weather: the unsigned append plus the signing measured alone, run by run.
  const derived = row(
    'unsigned durable append plus the signing measured alone vs the unsigned durable append',
    'ms/append',
    plainRuns,
    plainRuns.map((p, k) => p + signRuns[k]! / 1000),
    { op: '<=', ratio: 1.1 },
  )
  return [r, derived]
}
