/**
 * Offline authorization of idTags: the central system's local authorization list
 * (SendLocalList, full and differential, with its version) and the authorization cache
 * (every idTagInfo the central system answered), both kept in the journal's side data
 * (owner `ocpp-auth`: `lv` the list version, `l!<idTag>` a list entry, `a!<idTag>` a cached
 * one; a salvage carries them).
 *
 * Owns: what an idTag is known as locally (the list before the cache, an expiryDate in the
 * past reading `Expired`), the list's version, and the rules of an update: a version that
 * goes back is `VersionMismatch`, an entry listed twice or a full list entry without
 * idTagInfo `Failed`, more entries than SEND_LIST_MAX a CALLERROR, a list that would grow
 * past LIST_MAX `Failed`; a refused update changes nothing.
 *
 * Must never: change the list or the cache other than in one fsynced batch (a crash leaves
 * the old list or the new one, never half of it), or decide whether a start goes ahead
 * (chargepoint.ts does, from the configuration keys).
 */
import type { Journal } from '../journal/index.js'
import { escapeId } from '../journal/keys.js'
import { CallError } from './rpc.js'

const OWNER = 'ocpp-auth'
/** At most this many entries in the local list (LocalAuthListMaxLength). */
export const LIST_MAX = 10_000
/** At most this many entries in one SendLocalList (SendLocalListMaxLength). */
export const SEND_LIST_MAX = 1_000
/** At most this many idTags in the cache; the oldest answer since start leaves first (after a restart, in idTag order). */
const CACHE_MAX = 10_000

export type AuthStatus = 'Accepted' | 'Blocked' | 'Expired' | 'Invalid' | 'ConcurrentTx'

export interface IdTagInfo {
  status: AuthStatus
  expiryDate?: string
  parentIdTag?: string
}

export interface Known {
  source: 'list' | 'cache'
  status: AuthStatus
}

export class LocalAuth {
  private version = 0
  private readonly list = new Map<string, IdTagInfo>()
  private readonly cache = new Map<string, IdTagInfo>()

  private constructor(private readonly journal: Journal) {}

  static async open(journal: Journal): Promise<LocalAuth> {
    const a = new LocalAuth(journal)
    for (const [key, value] of await journal.asideRead(OWNER)) {
      if (key === 'lv') a.version = Number(value)
      else if (key.startsWith('l!') || key.startsWith('a!')) {
        const v = JSON.parse(value) as { idTag: string; info: IdTagInfo; at?: number }
        ;(key.startsWith('l!') ? a.list : a.cache).set(v.idTag, v.info)
      }
    }
    return a
  }

  get listVersion(): number {
    return this.version
  }

  get listSize(): number {
    return this.list.size
  }

  get cacheSize(): number {
    return this.cache.size
  }

  /** What the idTag is known as locally, or undefined. `useList` / `useCache`: the keys that enable them. */
  lookup(idTag: string, now: number, use: { list: boolean; cache: boolean }): Known | undefined {
    const hit = (source: 'list' | 'cache', info: IdTagInfo | undefined): Known | undefined => {
      if (!info) return undefined
      const expired = info.expiryDate !== undefined && Date.parse(info.expiryDate) <= now
      return { source, status: expired && info.status === 'Accepted' ? 'Expired' : info.status }
    }
    return (use.list ? hit('list', this.list.get(idTag)) : undefined) ?? (use.cache ? hit('cache', this.cache.get(idTag)) : undefined)
  }

  /**
   * SendLocalList: applies a full or differential update in one fsynced batch, or refuses it and changes nothing.
   * Throws a CallError (OccurenceConstraintViolation) for more entries than one message may carry.
   */
  async update(p: {
    listVersion: number
    updateType: 'Full' | 'Differential'
    localAuthorizationList?: { idTag: string; idTagInfo?: IdTagInfo }[]
  }): Promise<'Accepted' | 'Failed' | 'VersionMismatch'> {
    const entries = p.localAuthorizationList ?? []
    if (entries.length > SEND_LIST_MAX)
      throw new CallError(
        'OccurenceConstraintViolation',
        `SendLocalList: /localAuthorizationList: ${entries.length} entries, at most ${SEND_LIST_MAX} in one message (SendLocalListMaxLength)`,
      )
    if (p.listVersion < 1) return 'Failed'
    // A differential update names the version after it: it must move on. A full list must not go back.
    if (p.updateType === 'Differential' ? p.listVersion <= this.version : p.listVersion < this.version) return 'VersionMismatch'
    if (new Set(entries.map((e) => e.idTag)).size !== entries.length) return 'Failed'
    const ops: { key: string; value: string | null }[] = []
    const next = new Map(p.updateType === 'Full' ? [] : this.list)
    if (p.updateType === 'Full') {
      if (entries.some((e) => !e.idTagInfo)) return 'Failed'
      for (const idTag of this.list.keys()) ops.push({ key: `l!${escapeId(idTag)}`, value: null })
    }
    for (const e of entries) {
      if (e.idTagInfo) next.set(e.idTag, e.idTagInfo)
      else next.delete(e.idTag)
      ops.push({ key: `l!${escapeId(e.idTag)}`, value: e.idTagInfo ? JSON.stringify({ idTag: e.idTag, info: e.idTagInfo }) : null })
    }
    if (next.size > LIST_MAX) return 'Failed'
    ops.push({ key: 'lv', value: String(p.listVersion) })
    await this.journal.asideWrite(OWNER, ops)
    this.list.clear()
    for (const [k, v] of next) this.list.set(k, v)
    this.version = p.listVersion
    return 'Accepted'
  }

  /** Keeps the central system's answer for an idTag (Authorize, StartTransaction). */
  async remember(idTag: string, info: IdTagInfo): Promise<void> {
    const ops: { key: string; value: string | null }[] = [{ key: `a!${escapeId(idTag)}`, value: JSON.stringify({ idTag, info }) }]
    this.cache.delete(idTag)
    if (this.cache.size >= CACHE_MAX) {
      const oldest = this.cache.keys().next().value as string
      this.cache.delete(oldest)
      ops.push({ key: `a!${escapeId(oldest)}`, value: null })
    }
    this.cache.set(idTag, info)
    await this.journal.asideWrite(OWNER, ops)
  }

  /** ClearCache: every cached idTag forgotten (the local list stays). */
  async clearCache(): Promise<void> {
    const ops = [...this.cache.keys()].map((idTag) => ({ key: `a!${escapeId(idTag)}`, value: null }))
    await this.journal.asideWrite(OWNER, ops)
    this.cache.clear()
  }
}
