/**
 * OCPP offline authorization benchmark: the decision on a start at the gateway while the
 * central system is away, on a site whose local authorization list holds 10,000 idTags
 * (kept in the journal's side data, loaded by the charge point), against the same start on
 * the same site without OCPP. A decision is what the gateway does before its journal write:
 * with OCPP, the charge point's admission (the list, the cache, the keys) and the engine's
 * start step; without, the engine's start step (one of eight users with a wallet, as a site
 * without a central system needs). The journal's fsync, the same on both sides, is left out
 * so that the figure is the authorization's cost, not the disk's. Interleaved rounds, medians.
 * Goal: ≤ 1.2x the time of a start without OCPP.
 * Run alone: node dist/bench/ocpp-auth.js
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { SiteConfig } from '../core/types.js'
import { type EngineState, initialState, step } from '../daemon/engine/index.js'
import { Journal } from '../daemon/journal/index.js'
import { createLogger } from '../daemon/log.js'
import { LocalAuth, SEND_LIST_MAX } from '../daemon/ocpp/auth.js'
import { ChargePoint } from '../daemon/ocpp/chargepoint.js'
import { type BenchRow, benchSite, readingAt, row, runAlone } from './lib.js'

const LIST = 10_000
const STARTS = 20_000
const ROUNDS = 7
const T0 = Date.UTC(2026, 5, 10, 19, 0)

function site(ocpp: boolean): SiteConfig {
  return benchSite({
    outlets: 8,
    port: 5020,
    storageDir: '/tmp/unused',
    ...(ocpp ? { extra: { ocpp: { url: 'ws://127.0.0.1:9/ocpp', identity: 'bench', allowOfflineTxForUnknownId: false } } } : {}),
  })
}

/** The booted engine with every outlet read and free; without OCPP, every user a wallet. */
function ready(config: SiteConfig, users: number): EngineState {
  let state = initialState(config)
  state = step(state, { type: 'boot', cleanShutdown: true, version: 'bench' }, T0).state
  for (let i = 0; i < 8; i++) state = step(state, readingAt(`O${i}`, T0 + 500, 0, 1000), T0 + 500).state
  if (!config.ocpp)
    for (let u = 0; u < users; u++) {
      const wallet = { action: 'set-wallet', userId: `tag-${u}`, currency: 'CAD', balance: 10_000_000 } as const
      state = step(state, { type: 'command', id: `w${u}`, source: 'cloud', command: wallet }, T0).state
    }
  return state
}

/** µs per start decision: `admit` (or nothing) and the engine's start step, for users spread over the list. */
function timeStarts(state: EngineState, admit: ((userId: string) => boolean) | undefined): number {
  const t0 = performance.now()
  let ok = 0
  for (let k = 0; k < STARTS; k++) {
    // With OCPP, idTags spread over the whole list; without, one of the eight users with a wallet.
    const userId = admit ? `tag-${(k * 7919) % LIST}` : `tag-${k % 8}`
    if (admit && !admit(userId)) continue
    const r = step(state, { type: 'command', id: `s${k}`, source: 'local', command: { action: 'start', outlet: `O${k % 8}`, userId } }, T0 + 1000)
    if (r.effects.some((e) => e.type === 'result' && e.result.ok)) ok++
  }
  if (ok !== STARTS) throw new Error(`only ${ok} of ${STARTS} starts were accepted: the bench is not measuring starts`)
  return ((performance.now() - t0) * 1000) / STARTS
}

export async function run(): Promise<BenchRow[]> {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-bench-ocpp-auth-'))
  try {
    const journal = await Journal.open(join(dir, 'journal'), { bootId: 'bench', clockSynced: () => true, now: () => T0, compactEveryMs: 0 })
    const auth = await LocalAuth.open(journal)
    for (let v = 1; v <= LIST / SEND_LIST_MAX; v++) {
      const entries = Array.from({ length: SEND_LIST_MAX }, (_, i) => ({
        idTag: `tag-${(v - 1) * SEND_LIST_MAX + i}`,
        idTagInfo: { status: 'Accepted' as const },
      }))
      if ((await auth.update({ listVersion: v, updateType: v === 1 ? 'Full' : 'Differential', localAuthorizationList: entries })) !== 'Accepted')
        throw new Error('the local list was not accepted')
    }
    const withOcpp = site(true)
    const cp = new ChargePoint({
      config: withOcpp,
      version: 'bench',
      journal,
      logger: createLogger('error'),
      now: () => T0 + 1000,
      outlets: () => [],
      command: async (cmd) => ({ id: String(cmd.id), ok: false, error: { code: 'internal', message: 'bench' } }),
      reset: () => undefined,
      manualClock: true,
    })
    // Attached (the list loaded from the journal) and never connected: the central system is away.
    await cp.attach()
    if (cp.state().localList.size !== LIST) throw new Error(`the charge point loaded ${cp.state().localList.size} idTags, not ${LIST}`)
    const admit = (userId: string) => cp.admitStart(userId).ok
    const ocppState = ready(withOcpp, 0)
    const plainState = ready(site(false), 8)
    const plain: number[] = []
    const ours: number[] = []
    timeStarts(plainState, undefined)
    timeStarts(ocppState, admit)
    for (let i = 0; i < ROUNDS; i++) {
      plain.push(timeStarts(plainState, undefined))
      ours.push(timeStarts(ocppState, admit))
    }
    await cp.stop(0)
    await journal.close({ clean: true })
    return [
      row(
        `start decided offline from a ${LIST}-entry OCPP local list (admission + engine step) vs a start without OCPP (engine step)`,
        'µs/start',
        plain,
        ours,
        { op: '<=', ratio: 1.2 },
      ),
    ]
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

runAlone('ocpp-auth', run)
