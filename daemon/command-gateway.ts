/**
 * The command gateway: the one path by which a command reaches the engine,
 * whether it comes from the cloud (P/cmd), the local API or Node-RED.
 *
 * Owns: refusing oversized payloads before parsing, parsing, validation against
 * config/command.schema.json (draft 2020-12; set-plan's `plan` is the site
 * schema's own $defs/plan, plus the same semantic plan checks as the config),
 * and at-most-once application per command id — a repeated id gets the first
 * result, from the journal's ledger once committed and from memory while the
 * first is still in flight (or held for its outlet's first reading). An
 * oversized command still gets an answer when its id can be recovered from the
 * payload's first KiB; a refusal with no id to answer to is counted by reason
 * (`outpost_commands_rejected_total{reason}`) and logged at most once a minute.
 *
 * Must never: throw (every outcome is a CommandResult), change anything for an
 * invalid command, apply one id twice, or store results itself (the daemon's
 * `apply` commits the engine step and its result in one journal batch).
 */
import { readFileSync } from 'node:fs'
import type { ErrorObject, ValidateFunction } from 'ajv/dist/2020.js'
import { loadValidators, type ValidatorSpec } from '../core/validators.js'
import { article, parseJson, siteSchema, siteSchemaText } from './config.js'
import { planIssues } from './engine/index.js'
import { currencyMinorDigits } from '../core/money.js'
import { packagePath } from '../core/paths.js'
import type { Command, CommandResult, CommandSource } from '../core/types.js'
import { QuietLog, type Logger } from './log.js'
import { escapeSegment as escapePointer } from '../core/json-pointer.js'

/** A command payload larger than this is refused before it is parsed (a plan of ~200 periods fits in 32 KiB). */
export const MAX_COMMAND_BYTES = 64 * 1024

export const INVALID_COMMAND = 'invalid-command'

/** How much of an oversized payload is searched for its `"id"`: the payload itself is never parsed. */
export const ID_SEARCH_BYTES = 1024

/**
 * Why a command was refused with no id to answer to (the `reason` label of
 * outpost_commands_rejected_total): `too-large` (over MAX_COMMAND_BYTES, no id in its
 * first KiB), `not-json` (not parseable JSON), `no-id` (JSON without a valid command id:
 * missing, not a string, or not usable as a topic level).
 */
export const REJECT_REASONS = ['too-large', 'not-json', 'no-id'] as const
export type RejectReason = (typeof REJECT_REASONS)[number]

// biome-ignore lint/suspicious/noControlCharactersInRegex: a command id must not hold control characters, so the class names them
const COMMAND_ID = /^[A-Za-z0-9][^/+#\u0000-\u001f\u007f]{0,127}$/u

export interface CommandLedger {
  /** The stored result of a command id already applied, if any. */
  commandResult(id: string): Promise<CommandResult | undefined>
}

export interface CommandGatewayOptions {
  ledger: CommandLedger
  /**
   * Runs the engine step and commits it with the result; returns the result (engine refusals
   * are ok:false with the engine's code). Calls `held` when it holds the command for a
   * reading rather than applying it at once.
   */
  apply: (id: string, command: Command, source: CommandSource, held: () => void) => Promise<CommandResult>
  /** Where id-less refusals are logged (at most once a minute per reason). */
  logger?: Logger
  /** Monotonic ms for the log's rate limit (the injected clock). */
  monotonic?: () => number
}

const commandSchemaText = readFileSync(packagePath('config', 'command.schema.json'), 'utf8')
export const commandSchema = JSON.parse(commandSchemaText) as Record<string, unknown>

/** The command validator (built by `npm run build`, core/validators.ts); it refers to the site schema's definitions. */
export const COMMAND_VALIDATOR: ValidatorSpec = {
  name: 'command',
  texts: [commandSchemaText, siteSchemaText],
  draft: '2020-12',
  options: { allErrors: true, discriminator: true, strict: true, strictRequired: false, verbose: true },
  add: (ajv) => {
    ajv.addSchema(siteSchema)
    ajv.addSchema(commandSchema, 'command')
    return ['command']
  },
}

let validator: ValidateFunction | undefined
function compiled(): ValidateFunction {
  validator ??= loadValidators(COMMAND_VALIDATOR).command!
  return validator
}

/** The actions, as the schema lists them (one branch of its oneOf per action). */
const ACTIONS = (commandSchema.oneOf as { properties: { action: { const: string } } }[]).map((b) => b.properties.action.const)

export class CommandGateway {
  private readonly inFlight = new Map<string, { result: Promise<CommandResult>; held: boolean }>()
  private readonly rejected = new Map<RejectReason, number>(REJECT_REASONS.map((r) => [r, 0]))
  private readonly quiet: QuietLog | undefined

  constructor(private readonly opts: CommandGatewayOptions) {
    compiled() // fail at construction, not on the first command, if the schema is broken
    if (opts.logger) this.quiet = new QuietLog(opts.logger, 60_000, opts.monotonic ?? (() => performance.now()))
  }

  /** Refusals with no id to answer to, by reason, since the gateway was created. */
  rejectedCounts(): Record<RejectReason, number> {
    return Object.fromEntries(this.rejected) as Record<RejectReason, number>
  }

  /**
   * Validates and applies one command. Never throws. `held` is called (at most once) when the
   * command is held for its outlet's first reading, or joins a held one: a caller that keeps
   * commands in order (the uplink) may then hand over the next one.
   */
  async handle(raw: unknown, source: CommandSource, held?: () => void): Promise<CommandResult> {
    let checked: ReturnType<typeof validateCommand>
    try {
      checked = validateCommand(raw)
    } catch (err) {
      return { id: '', ok: false, error: { code: 'internal', message: `command validation failed: ${(err as Error).message}` } }
    }
    if (!checked.ok) {
      // Answered on P/cmd/_invalid/result at best: no cloud can tell whose command it was.
      if (!COMMAND_ID.test(checked.result.id)) this.countRejected(checked.reason ?? 'no-id', source, checked.result)
      return checked.result
    }
    const { id, command } = checked
    const running = this.inFlight.get(id)
    if (running) {
      if (running.held) held?.()
      return running.result
    }
    // Registered before the first await, so a repeat arriving meanwhile finds it.
    const entry = { result: Promise.resolve() as unknown as Promise<CommandResult>, held: false }
    entry.result = this.run(id, command, source, () => {
      entry.held = true
      held?.()
    })
    this.inFlight.set(id, entry)
    try {
      return await entry.result
    } finally {
      this.inFlight.delete(id)
    }
  }

  private countRejected(reason: RejectReason, source: CommandSource, result: CommandResult): void {
    this.rejected.set(reason, (this.rejected.get(reason) ?? 0) + 1)
    const message = result.ok ? '' : result.error.message
    this.quiet?.warn(`rejected:${reason}`, { reason, source, err: message }, 'command refused with no id to answer to')
  }

  private async run(id: string, command: Command, source: CommandSource, held: () => void): Promise<CommandResult> {
    try {
      const stored = await this.opts.ledger.commandResult(id)
      if (stored) return stored
      const result = await this.opts.apply(id, command, source, held)
      // The daemon's apply answers for this id; make sure the answer names it.
      return { ...result, id } as CommandResult
    } catch (err) {
      // Not stored: a retry with the same id tries again.
      return { id, ok: false, error: { code: 'internal', message: `the command could not be applied: ${(err as Error).message}` } }
    }
  }
}

/** Parses and validates a command without applying it. */
export function validateCommand(
  raw: unknown,
): { ok: true; id: string; command: Command } | { ok: false; result: CommandResult; reason?: RejectReason } {
  const invalid = (id: string, message: string, reason: RejectReason = 'no-id') => ({
    ok: false as const,
    result: { id, ok: false as const, error: { code: INVALID_COMMAND, message } },
    reason,
  })
  const tooLarge = (size: number) => `command is ${size} bytes; at most ${MAX_COMMAND_BYTES} are accepted`
  let value: unknown = raw
  if (typeof raw === 'string' || Buffer.isBuffer(raw) || raw instanceof Uint8Array) {
    const size = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.length
    if (size > MAX_COMMAND_BYTES) {
      const head = typeof raw === 'string' ? raw.slice(0, ID_SEARCH_BYTES) : Buffer.from(raw.buffer, raw.byteOffset, ID_SEARCH_BYTES).toString('utf8')
      return invalid(recoverId(head) ?? '', tooLarge(size), 'too-large')
    }
    const text = typeof raw === 'string' ? raw : Buffer.from(raw).toString('utf8')
    const parsed = parseJson(text)
    if (!parsed.ok) {
      const p = parsed.problems[0]!
      return invalid(
        recoverId(text.slice(0, ID_SEARCH_BYTES)) ?? '',
        p.line !== undefined ? `${p.message} at line ${p.line}, column ${p.column}` : `${p.pointer || '/'}: ${p.message}`,
        'not-json',
      )
    }
    value = parsed.value
  } else {
    let size: number
    try {
      size = Buffer.byteLength(JSON.stringify(raw) ?? '')
    } catch {
      return invalid(looseId(raw), 'command is not JSON-serialisable', 'not-json')
    }
    if (size > MAX_COMMAND_BYTES) return invalid(looseId(raw), tooLarge(size), 'too-large')
  }
  const id = looseId(value)
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    return invalid(id, '/: a command must be a JSON object {"id", "action", ...}')
  const validate = compiled()
  const problems: string[] = []
  if (!validate(value)) problems.push(...describeErrors(validate.errors ?? []))
  const o = value as Record<string, unknown>
  if (problems.length === 0 && o.action === 'set-plan') {
    for (const p of planIssues(o.plan, '/plan')) problems.push(`${p.pointer}: ${p.message}`)
  }
  if (problems.length === 0 && o.action === 'set-wallet' && currencyMinorDigits(o.currency as string) === undefined) {
    problems.push(`/currency: "${String(o.currency)}" is not a known ISO 4217 currency`)
  }
  if (problems.length > 0) return invalid(id, [...new Set(problems)].join('; '))
  const { id: _id, ...command } = o
  return { ok: true, id: o.id as string, command: command as unknown as Command }
}

/** The id to answer with, even for an invalid command: its id if it has a string one. */
function looseId(v: unknown): string {
  if (typeof v === 'object' && v !== null && typeof (v as { id?: unknown }).id === 'string') return (v as { id: string }).id.slice(0, 128)
  return ''
}

/**
 * The top-level `"id"` string of a JSON object from the start of its text (the first KiB of a
 * payload too large to parse), or undefined. Conservative: only keys of the outer object
 * count (an "id" inside a plan does not), the value must be a complete string literal, and
 * once its escapes are decoded it must be a valid command id (it becomes a topic level).
 * Anything unexpected (a cut-off value before "id", a non-object) gives undefined.
 */
export function recoverId(head: string): string | undefined {
  let i = 0
  const ws = () => {
    while (i < head.length && ' \t\r\n'.includes(head[i]!)) i++
  }
  /** A string literal starting at i (on its quote); returns its raw text with quotes, or undefined if it is cut off. */
  const str = (): string | undefined => {
    const from = i
    i++
    while (i < head.length) {
      const c = head[i]!
      if (c === '\\') i += 2
      else if (c === '"') return head.slice(from, ++i)
      else i++
    }
    return undefined
  }
  /** Skips one value (any JSON); false if it does not end inside `head`. */
  const skip = (): boolean => {
    let depth = 0
    while (i < head.length) {
      const c = head[i]!
      if (c === '"') {
        if (str() === undefined) return false
        if (depth === 0) return true
        continue
      }
      if (c === '{' || c === '[') depth++
      else if (c === '}' || c === ']') {
        if (depth === 0) return true // the end of the outer object: the scalar before it is over
        depth--
        if (depth === 0) {
          i++
          return true
        }
      } else if (depth === 0 && (c === ',' || ' \t\r\n'.includes(c))) return true
      i++
    }
    return false
  }
  ws()
  if (head[i] !== '{') return undefined
  i++
  for (;;) {
    ws()
    if (head[i] !== '"') return undefined
    const key = str()
    if (key === undefined) return undefined
    ws()
    if (head[i] !== ':') return undefined
    i++
    ws()
    if (key === '"id"') {
      if (head[i] !== '"') return undefined
      const lit = str()
      if (lit === undefined) return undefined
      let id: unknown
      try {
        id = JSON.parse(lit)
      } catch {
        return undefined
      }
      return typeof id === 'string' && COMMAND_ID.test(id) ? id : undefined
    }
    if (!skip()) return undefined
    ws()
    if (head[i] !== ',') return undefined
    i++
  }
}

function describeErrors(all: ErrorObject[]): string[] {
  const out: string[] = []
  // A oneOf or discriminator error says it all for its place; the branches' own errors there only repeat it.
  const summarised = new Set(all.filter((e) => e.keyword === 'oneOf').map((e) => e.instancePath))
  const badAction = all.some((e) => e.keyword === 'discriminator')
  const errors = all.filter((e) => {
    if (e.keyword !== 'oneOf' && summarised.has(e.instancePath)) return false
    if (badAction && e.instancePath === '/action') return false
    if (badAction && e.keyword === 'required' && e.instancePath === '' && (e.params as { missingProperty?: string }).missingProperty === 'action')
      return false
    return true
  })
  for (const e of errors) {
    const at = e.instancePath || ''
    const p = e.params as Record<string, unknown>
    switch (e.keyword) {
      case 'required':
        out.push(`${at}/${escapePointer(String(p.missingProperty))}: is required`)
        break
      case 'additionalProperties': {
        const allowed = Object.keys((e.parentSchema as { properties?: object })?.properties ?? {})
        out.push(`${at}/${escapePointer(String(p.additionalProperty))}: unknown field (allowed here: ${allowed.join(', ')})`)
        break
      }
      case 'discriminator':
        if (p.error === 'mapping') out.push(`${at}/action: unknown action ${JSON.stringify(p.tagValue)} (one of: ${ACTIONS.join(', ')})`)
        else out.push(`${at}/action: is required, a string (one of: ${ACTIONS.join(', ')})`)
        break
      case 'type':
        out.push(`${at || '/'}: must be ${article(String(p.type))}`)
        break
      case 'enum':
        out.push(`${at || '/'}: must be one of: ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`)
        break
      case 'const':
        out.push(`${at || '/'}: must be ${JSON.stringify(p.allowedValue)}`)
        break
      case 'pattern':
        out.push(`${at || '/'}: ${patternWords(at, String(p.pattern))}`)
        break
      case 'oneOf':
        if (at.endsWith('/userId')) out.push(`${at}: must be a user id (string of 1-128 characters) or null`)
        break
      default:
        out.push(`${at || '/'}: ${e.message ?? e.keyword}`)
    }
  }
  return out
}

function patternWords(at: string, pattern: string): string {
  if (at === '/id') return "must be 1-128 characters, starting with a letter or digit, without '/', '+', '#' or control characters"
  if (pattern === '^[A-Z]{3}$') return 'must be an ISO 4217 currency code such as CAD'
  if (pattern.startsWith('^[A-Za-z0-9][A-Za-z0-9_.-]')) return "must be an id: a letter or digit, then letters, digits, '-', '_' or '.' (at most 64)"
  if (pattern.includes('24:00')) return 'must be a time HH:MM from 00:00 to 23:59 (24:00 only as an end)'
  return `must match ${pattern}`
}
