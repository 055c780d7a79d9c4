/**
 * The command gateway: the one path by which a command reaches the engine,
 * whether it comes from the cloud (P/cmd), the local API or Node-RED.
 *
 * Owns: refusing oversized payloads before parsing, parsing, validation against
 * config/command.schema.json (draft 2020-12; set-plan's `plan` is the site
 * schema's own $defs/plan, plus the same semantic plan checks as the config),
 * and at-most-once application per command id — a repeated id gets the first
 * result, from the journal's ledger once committed and from memory while the
 * first is still in flight.
 *
 * Must never: throw (every outcome is a CommandResult), change anything for an
 * invalid command, apply one id twice, or store results itself (the daemon's
 * `apply` commits the engine step and its result in one journal batch).
 */
import { readFileSync } from 'node:fs'
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js'
import { currencyMinorDigits, parseJson, planProblems, siteSchema } from './config.js'
import { packagePath } from './paths.js'
import type { Command, CommandResult } from './types.js'

export type CommandSource = 'cloud' | 'local' | 'node-red'

/** A command payload larger than this is refused before it is parsed (a plan of ~200 periods fits in 32 KiB). */
export const MAX_COMMAND_BYTES = 64 * 1024

export const INVALID_COMMAND = 'invalid-command'

export interface CommandLedger {
  /** The stored result of a command id already applied, if any. */
  commandResult(id: string): Promise<CommandResult | undefined>
}

export interface CommandGatewayOptions {
  ledger: CommandLedger
  /** Runs the engine step and commits it with the result; returns the result (engine refusals are ok:false with the engine's code). */
  apply: (id: string, command: Command, source: CommandSource) => Promise<CommandResult>
}

export const commandSchema = JSON.parse(readFileSync(packagePath('config', 'command.schema.json'), 'utf8')) as Record<string, unknown>

let validator: ValidateFunction | undefined
function compiled(): ValidateFunction {
  if (!validator) {
    const ajv = new Ajv2020({ allErrors: true, discriminator: true, strict: true, strictRequired: false, verbose: true })
    ajv.addSchema(siteSchema)
    validator = ajv.compile(commandSchema)
  }
  return validator
}

const ACTIONS = ['start', 'stop', 'set-wallet', 'set-auto-start', 'set-availability', 'set-plan', 'assign-plan']

export class CommandGateway {
  private readonly inFlight = new Map<string, Promise<CommandResult>>()

  constructor(private readonly opts: CommandGatewayOptions) {
    compiled() // fail at construction, not on the first command, if the schema is broken
  }

  /** Validates and applies one command. Never throws. */
  async handle(raw: unknown, source: CommandSource): Promise<CommandResult> {
    let checked: { ok: true; id: string; command: Command } | { ok: false; result: CommandResult }
    try {
      checked = validateCommand(raw)
    } catch (err) {
      return { id: '', ok: false, error: { code: 'internal', message: `command validation failed: ${(err as Error).message}` } }
    }
    if (!checked.ok) return checked.result
    const { id, command } = checked
    const running = this.inFlight.get(id)
    if (running) return running
    // Registered before the first await, so a repeat arriving meanwhile finds it.
    const p = this.run(id, command, source)
    this.inFlight.set(id, p)
    try {
      return await p
    } finally {
      this.inFlight.delete(id)
    }
  }

  private async run(id: string, command: Command, source: CommandSource): Promise<CommandResult> {
    try {
      const stored = await this.opts.ledger.commandResult(id)
      if (stored) return stored
      const result = await this.opts.apply(id, command, source)
      // The daemon's apply answers for this id; make sure the answer names it.
      return { ...result, id } as CommandResult
    } catch (err) {
      // Not stored: a retry with the same id tries again.
      return { id, ok: false, error: { code: 'internal', message: `the command could not be applied: ${(err as Error).message}` } }
    }
  }
}

/** Parses and validates a command without applying it. */
export function validateCommand(raw: unknown): { ok: true; id: string; command: Command } | { ok: false; result: CommandResult } {
  const invalid = (id: string, message: string) => ({ ok: false as const, result: { id, ok: false as const, error: { code: INVALID_COMMAND, message } } })
  let value: unknown = raw
  if (typeof raw === 'string' || Buffer.isBuffer(raw) || raw instanceof Uint8Array) {
    const size = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.length
    if (size > MAX_COMMAND_BYTES) return invalid('', `command is ${size} bytes; at most ${MAX_COMMAND_BYTES} are accepted`)
    const text = typeof raw === 'string' ? raw : Buffer.from(raw).toString('utf8')
    const parsed = parseJson(text)
    if (!parsed.ok) {
      const p = parsed.problems[0]!
      return invalid(looseId(undefined), p.line !== undefined ? `${p.message} at line ${p.line}, column ${p.column}` : `${p.pointer || '/'}: ${p.message}`)
    }
    value = parsed.value
  } else {
    let size: number
    try {
      size = Buffer.byteLength(JSON.stringify(raw) ?? '')
    } catch {
      return invalid('', 'command is not JSON-serialisable')
    }
    if (size > MAX_COMMAND_BYTES) return invalid(looseId(raw), `command is ${size} bytes; at most ${MAX_COMMAND_BYTES} are accepted`)
  }
  const id = looseId(value)
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return invalid(id, '/: a command must be a JSON object {"id", "action", ...}')
  const validate = compiled()
  const problems: string[] = []
  if (!validate(value)) problems.push(...describeErrors(validate.errors ?? []))
  const o = value as Record<string, unknown>
  if (problems.length === 0 && o.action === 'set-plan') {
    for (const p of planProblems(o.plan as Record<string, unknown>, '/plan')) problems.push(`${p.pointer}: ${p.message}`)
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

function escapePointer(s: string): string {
  return s.replace(/~/g, '~0').replace(/\//g, '~1')
}

function describeErrors(all: ErrorObject[]): string[] {
  const out: string[] = []
  // A oneOf or discriminator error says it all for its place; the branches' own errors there only repeat it.
  const summarised = new Set(all.filter((e) => e.keyword === 'oneOf').map((e) => e.instancePath))
  const badAction = all.some((e) => e.keyword === 'discriminator')
  const errors = all.filter((e) => {
    if (e.keyword !== 'oneOf' && summarised.has(e.instancePath)) return false
    if (badAction && e.instancePath === '/action') return false
    if (badAction && e.keyword === 'required' && e.instancePath === '' && (e.params as { missingProperty?: string }).missingProperty === 'action') return false
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

function article(type: string): string {
  return ({ object: 'an object', array: 'an array', integer: 'an integer', null: 'null', number: 'a number', string: 'a string', boolean: 'true or false' } as Record<string, string>)[type] ?? type
}

function patternWords(at: string, pattern: string): string {
  if (at === '/id') return "must be 1-128 characters, starting with a letter or digit, without '/', '+', '#' or control characters"
  if (pattern === '^[A-Z]{3}$') return 'must be an ISO 4217 currency code such as CAD'
  if (pattern.startsWith('^[A-Za-z0-9][A-Za-z0-9_.-]')) return "must be an id: a letter or digit, then letters, digits, '-', '_' or '.' (at most 64)"
  if (pattern.includes('24:00')) return 'must be a time HH:MM from 00:00 to 23:59 (24:00 only as an end)'
  return `must match ${pattern}`
}
