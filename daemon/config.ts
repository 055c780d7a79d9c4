/**
 * Site configuration: reading, JSON Schema validation (config/site.schema.json),
 * the checks a schema cannot express, and defaults.
 *
 * Owns: turning a file into a SiteConfig or a complete list of problems, each
 * with its JSON pointer. Never touches hardware, never starts anything.
 * Defaults live in the schema's `default` keywords and nowhere else; ajv's
 * useDefaults applies them, and the README's reference is generated from them.
 */
import { readFileSync } from 'node:fs'
import { join, resolve as pathResolve } from 'node:path'
import { parseTree, printParseErrorCode, type ParseError, visit } from 'jsonc-parser'
import type { ErrorObject, ValidateFunction } from 'ajv/dist/2020.js'
import type { NetDeviceConfig, SiteConfig, PlanConfig } from '../core/types.js'

import { packagePath } from '../core/paths.js'
import { loadValidators, type ValidatorSpec } from '../core/validators.js'
import { BUS_TRANSPORT, defaultChannel, isNetBusType, ModelRegistry } from '../drivers/models.js'
import { DEFAULT_PHASES, planIssues } from './engine/index.js'
import { escapeSegment as escapePointer } from '../core/json-pointer.js'
import { securityProfileNeeds } from './ocpp/settings.js'

export const siteSchemaText = readFileSync(packagePath('config', 'site.schema.json'), 'utf8')
export const siteSchema = JSON.parse(siteSchemaText) as Record<string, unknown>

/** The site config's validator (built by `npm run build`, core/validators.ts). */
export const SITE_VALIDATOR: ValidatorSpec = {
  name: 'site',
  texts: [siteSchemaText],
  draft: '2020-12',
  options: { allErrors: true, discriminator: true, useDefaults: true, verbose: true, strict: true, strictRequired: false },
  add: (ajv) => {
    ajv.addSchema(siteSchema, 'site')
    return ['site']
  },
}

export interface ConfigProblem {
  /** JSON pointer into the config ('' for the whole document). */
  pointer: string
  message: string
  /** For malformed JSON: 1-based line and column. */
  line?: number
  column?: number
}

export type ConfigResult = { ok: true; config: SiteConfig } | { ok: false; problems: ConfigProblem[] }

let validator: ValidateFunction | undefined
function compiled(): ValidateFunction {
  validator ??= loadValidators(SITE_VALIDATOR).site!
  return validator
}

/** Validate an already-parsed config. Applies defaults in place on success. */
export function validateConfig(input: unknown): ConfigResult {
  const copy = structuredClone(input)
  const validate = compiled()
  const problems: ConfigProblem[] = []
  if (!validate(copy)) {
    problems.push(...schemaProblems(validate.errors ?? []))
  }
  // Semantic checks run even when the schema failed, on whatever is well-formed enough,
  // so the installer sees every problem in one go.
  const models: { registry?: ModelRegistry } = {}
  problems.push(...semanticProblems(copy, problems, models))
  if (problems.length > 0) return { ok: false, problems: dedupe(problems) }
  const config = copy as SiteConfig
  // The engine never reads a model file: each outlet carries its phases (default: its meter's), which bound its energy steps.
  // An installer's model file written before "phases" existed gets the engine's default (the loose
  // bound it had): an upgrade never stops a site; every built-in model says its phases.
  for (const o of config.outlets) o.phases ??= models.registry!.get(o.meter.model, 'meter').phases ?? DEFAULT_PHASES
  return { ok: true, config }
}

/** Read, parse and validate a config file. */
export function loadConfigFile(file: string): ConfigResult {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    const why =
      e.code === 'ENOENT'
        ? 'no such file'
        : e.code === 'EACCES'
          ? 'permission denied'
          : e.code === 'EISDIR'
            ? 'is a directory, not a file'
            : e.message
    return { ok: false, problems: [{ pointer: '', message: `cannot read config: ${why}` }] }
  }
  return checkConfigText(text)
}

/**
 * A config's text as the daemon reads it (defaults filled in, each outlet's phases resolved),
 * or, when it is not valid, as written: what a diff compares, so that writing a default out
 * changes nothing.
 */
export function effectiveConfig(text: string): unknown {
  const r = checkConfigText(text)
  return r.ok ? r.config : JSON.parse(text)
}

/** Parse and validate a config's text: what `check-config` checks in a file, and the local API at every save. */
export function checkConfigText(text: string): ConfigResult {
  const parsed = parseJson(text)
  if (!parsed.ok) return { ok: false, problems: parsed.problems }
  return validateConfig(parsed.value)
}

/** One line per problem, as `outpost check-config` prints them. */
export function formatProblem(file: string, p: ConfigProblem): string {
  if (p.line !== undefined) return `${file}:${p.line}:${p.column}: ${p.message}`
  return `${file}: ${p.pointer === '' ? '/' : p.pointer}: ${p.message}`
}

// ---------------------------------------------------------------- JSON parsing

/** Strict JSON with line/column on error and duplicate keys reported (JSON.parse keeps the last silently). */
export function parseJson(text: string): { ok: true; value: unknown } | { ok: false; problems: ConfigProblem[] } {
  if (text.trim() === '') return { ok: false, problems: [{ pointer: '', line: 1, column: 1, message: 'malformed JSON: the file is empty' }] }
  const errors: ParseError[] = []
  const tree = parseTree(text, errors, { disallowComments: true, allowTrailingComma: false, allowEmptyContent: false })
  const problems: ConfigProblem[] = []
  for (const e of errors) {
    const { line, column } = lineColumn(text, e.offset)
    problems.push({ pointer: '', line, column, message: `malformed JSON: ${describeParseError(printParseErrorCode(e.error))}` })
  }
  void tree
  if (problems.length > 0) return { ok: false, problems: problems.slice(0, 1) }
  // Duplicate keys: walk once, tracking the pointer of each object.
  const stack: { keys: Set<string>; path: string }[] = []
  visit(text, {
    onObjectBegin: (_o, _l, _sl, _sc, pathSupplier) => {
      stack.push({ keys: new Set(), path: toPointer(pathSupplier()) })
    },
    onObjectEnd: () => {
      stack.pop()
    },
    onObjectProperty: (name, offset) => {
      const top = stack[stack.length - 1]
      if (!top) return
      if (top.keys.has(name)) {
        const { line, column } = lineColumn(text, offset)
        problems.push({
          pointer: `${top.path}/${escapePointer(name)}`,
          line,
          column,
          message: `duplicate key "${name}" (JSON keeps only the last one)`,
        })
      }
      top.keys.add(name)
    },
  })
  if (problems.length > 0) return { ok: false, problems }
  return { ok: true, value: JSON.parse(text) }
}

function describeParseError(code: string): string {
  const words: Record<string, string> = {
    InvalidSymbol: 'unexpected character',
    InvalidNumberFormat: 'invalid number',
    PropertyNameExpected: 'expected a quoted property name',
    ValueExpected: 'expected a value',
    ColonExpected: "expected ':'",
    CommaExpected: "expected ',' (or a closing bracket)",
    CloseBraceExpected: "expected '}'",
    CloseBracketExpected: "expected ']'",
    EndOfFileExpected: 'unexpected content after the end of the document',
    InvalidCommentToken: 'comments are not allowed in JSON',
    UnexpectedEndOfComment: 'unterminated comment',
    UnexpectedEndOfString: 'unterminated string',
    UnexpectedEndOfNumber: 'unterminated number',
    InvalidUnicode: 'invalid unicode escape',
    InvalidEscapeCharacter: 'invalid escape character',
    InvalidCharacter: 'invalid character in string',
  }
  return words[code] ?? code
}

function lineColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1
  let lineStart = 0
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text.charCodeAt(i) === 10) {
      line++
      lineStart = i + 1
    }
  }
  return { line, column: offset - lineStart + 1 }
}

function toPointer(parts: (string | number)[]): string {
  return parts.map((p) => '/' + escapePointer(String(p))).join('')
}

// ---------------------------------------------------------------- schema errors

const PATTERN_WORDS: Record<string, string> = {
  '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$': "must be an id: a letter or digit, then letters, digits, '-', '_' or '.' (at most 64)",
  '^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$': 'must be a time HH:MM from 00:00 to 23:59 (24:00 only as an end)',
  '^[A-Z]{3}$': 'must be an ISO 4217 currency code such as CAD',
  '^[a-z0-9][a-z0-9_.-]{0,63}$': "must be a model name: lower-case letters, digits, '-', '_' or '.'",
}

function schemaProblems(errors: ErrorObject[]): ConfigProblem[] {
  const out: ConfigProblem[] = []
  for (const e of errors) {
    const at = e.instancePath
    const p = e.params as Record<string, unknown>
    switch (e.keyword) {
      case 'required':
        out.push({ pointer: `${at}/${escapePointer(String(p.missingProperty))}`, message: 'is required' })
        break
      case 'additionalProperties': {
        const allowed = Object.keys((e.parentSchema as { properties?: object })?.properties ?? {}).filter((k) => k !== '$schema')
        out.push({ pointer: `${at}/${escapePointer(String(p.additionalProperty))}`, message: `unknown key (allowed here: ${allowed.join(', ')})` })
        break
      }
      case 'type':
        out.push({ pointer: at, message: `must be ${article(String(p.type))}` })
        break
      case 'enum':
        out.push({ pointer: at, message: `must be one of: ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}` })
        break
      case 'const':
        out.push({ pointer: at, message: `must be ${JSON.stringify(p.allowedValue)}` })
        break
      case 'pattern':
        out.push({ pointer: at, message: PATTERN_WORDS[String(p.pattern)] ?? describePattern(at, String(p.pattern)) })
        break
      case 'minimum':
      case 'maximum':
      case 'exclusiveMinimum':
      case 'exclusiveMaximum': {
        const op = { minimum: '>=', maximum: '<=', exclusiveMinimum: '>', exclusiveMaximum: '<' }[e.keyword]
        out.push({ pointer: at, message: `must be ${op} ${String(p.limit)}` })
        break
      }
      case 'minItems':
        out.push({ pointer: at, message: `must have at least ${String(p.limit)} item${p.limit === 1 ? '' : 's'}` })
        break
      case 'minLength':
        out.push({ pointer: at, message: Number(p.limit) === 1 ? 'must not be empty' : `must be at least ${String(p.limit)} characters` })
        break
      case 'maxLength':
        out.push({ pointer: at, message: `must be at most ${String(p.limit)} characters` })
        break
      case 'uniqueItems':
        out.push({ pointer: at, message: `must not repeat items (items ${String(p.j)} and ${String(p.i)} are the same)` })
        break
      case 'discriminator':
        if (p.error === 'mapping') {
          out.push({ pointer: `${at}/type`, message: `must be one of: ${BUS_TYPES}` })
        } else {
          out.push({ pointer: `${at}/type`, message: `is required (one of ${BUS_TYPES})` })
        }
        break
      case 'oneOf':
      case 'if':
        break // the branch's own errors say what is wrong
      default:
        out.push({ pointer: at, message: e.message ?? e.keyword })
    }
  }
  return out
}

const BUS_TYPES = '"modbus-rtu", "modbus-tcp", "serial", "shelly", "tasmota"'

function describePattern(at: string, pattern: string): string {
  if (at.endsWith('/url')) return 'must be a broker URL: mqtt://, mqtts://, ws:// or wss:// followed by host[:port]'
  if (at.endsWith('/host')) return 'must be a host name or an IP address alone (no scheme, path or port: set port)'
  if (at.endsWith('/listen')) return 'must be host:port, e.g. 127.0.0.1:8080 or [::1]:8080'
  if (at.endsWith('/topicPrefix')) return "must not contain '#', '+' or spaces"
  if (at.endsWith('/httpAdminRoot') || at.endsWith('/httpNodeRoot')) return "must start with '/'"
  return `must match ${pattern}`
}

/** A JSON Schema type (or ajv's comma-joined list of them) as words: "an integer or null". */
export function article(type: string): string {
  return type
    .split(',')
    .map(
      (t) =>
        ({
          object: 'an object',
          array: 'an array',
          integer: 'an integer',
          null: 'null',
          number: 'a number',
          string: 'a string',
          boolean: 'true or false',
        })[t] ?? t,
    )
    .join(' or ')
}

function dedupe(problems: ConfigProblem[]): ConfigProblem[] {
  const seen = new Set<string>()
  return problems.filter((p) => {
    const k = `${p.pointer}\u0000${p.message}`
    if (seen.has(k)) return false
    seen.add(k)
    return true
  })
}

// ---------------------------------------------------------------- semantic checks

type Loose = Record<string, unknown>
const isObj = (v: unknown): v is Loose => typeof v === 'object' && v !== null && !Array.isArray(v)
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : [])
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined)

/**
 * The plan rules repeat the schema's shape checks (the engine needs them without a schema), so
 * a plan problem at a value the schema already named, or inside one, is not said twice.
 */
function saidAtOrAbove(schema: readonly ConfigProblem[], pointer: string): boolean {
  return schema.some((p) => pointer === p.pointer || pointer.startsWith(p.pointer + '/'))
}

/** Checks a schema cannot express. Tolerates a config the schema rejected (`schema`: what it said). */
/** `models.registry` is set to the model registry the checks used (when the models loaded). */
function semanticProblems(cfg: unknown, schema: readonly ConfigProblem[], models: { registry?: ModelRegistry }): ConfigProblem[] {
  const out: ConfigProblem[] = []
  if (!isObj(cfg)) return out
  const site = isObj(cfg.site) ? cfg.site : {}
  const tz = str(site.timezone)
  if (tz !== undefined && tz !== '' && !isTimeZone(tz)) {
    out.push({ pointer: '/site/timezone', message: `"${tz}" is not an IANA time zone (e.g. America/Vancouver, Europe/Berlin, UTC)` })
  }

  const buses = new Map<string, Loose>()
  arr(cfg.buses).forEach((b, i) => {
    if (!isObj(b)) return
    const id = str(b.id)
    if (id === undefined) return
    if (buses.has(id)) out.push({ pointer: `/buses/${i}/id`, message: `duplicate bus id "${id}"` })
    else buses.set(id, b)
  })
  const busPaths = new Map<string, number>()
  arr(cfg.buses).forEach((b, i) => {
    if (!isObj(b) || b.type === 'modbus-tcp') return
    const path = str(b.path)
    if (path === undefined) return
    const first = busPaths.get(path)
    if (first !== undefined)
      out.push({ pointer: `/buses/${i}/path`, message: `serial port "${path}" is already used by /buses/${first}; one port is one bus` })
    else busPaths.set(path, i)
  })

  const plans = new Map<string, Loose>()
  arr(cfg.plans).forEach((p, i) => {
    if (!isObj(p)) return
    const id = str(p.id)
    if (id !== undefined) {
      if (plans.has(id)) out.push({ pointer: `/plans/${i}/id`, message: `duplicate plan id "${id}"` })
      else plans.set(id, p)
    }
    out.push(...planIssues(p, `/plans/${i}`).filter((q) => !saidAtOrAbove(schema, q.pointer)))
  })

  if (isObj(cfg.api)) {
    const seen = new Map<string, string>()
    const token = str(cfg.api.token)
    if (token !== undefined) seen.set(token, '/api/token')
    const names = new Set<string>()
    arr(cfg.api.tokens).forEach((x, i) => {
      if (!isObj(x)) return
      const t = str(x.token)
      const first = t === undefined ? undefined : seen.get(t)
      if (first !== undefined) out.push({ pointer: `/api/tokens/${i}/token`, message: `is the same token as ${first}: each token is one role` })
      else if (t !== undefined) seen.set(t, `/api/tokens/${i}/token`)
      const name = str(x.name)
      if (name !== undefined && names.has(name)) out.push({ pointer: `/api/tokens/${i}/name`, message: `duplicate token name "${name}"` })
      else if (name !== undefined) names.add(name)
    })
  }

  if (isObj(cfg.ocpp)) out.push(...ocppProblems(cfg.ocpp))

  const outletIds = new Set<string>()
  const meterUnits = new Map<string, string>() // `${bus}#${unit}` -> pointer
  const relayPoints = new Map<string, string>() // `${bus}#${unit}#${coil|reg}` -> pointer
  const relayUnits = new Map<string, string>()
  const modelsDir = isObj(cfg.models) ? str(cfg.models.dir) : undefined
  // The model folders are the list of models: ask the registry what exists and what it speaks.
  let registry: ModelRegistry | undefined
  try {
    registry = new ModelRegistry(modelsDir)
    models.registry = registry
  } catch (err) {
    out.push({ pointer: '/models/dir', message: (err as Error).message })
  }
  const connectors = new Map<number, string>()
  const netClaims = new Map<string, string>() // `${bus}#${meter|relay}#${channel}` -> pointer
  arr(cfg.outlets).forEach((o, i) => {
    if (!isObj(o)) return
    const at = `/outlets/${i}`
    const id = str(o.id)
    if (id !== undefined) {
      if (outletIds.has(id)) out.push({ pointer: `${at}/id`, message: `duplicate outlet id "${id}"` })
      outletIds.add(id)
    }
    // The OCPP connector of an outlet: explicit, or its 1-based position; two outlets on one connector would share transactions.
    const connector = typeof o.connectorId === 'number' ? o.connectorId : i + 1
    const holder = connectors.get(connector)
    if (holder !== undefined)
      out.push({
        pointer: typeof o.connectorId === 'number' ? `${at}/connectorId` : at,
        message: `connectorId ${connector} is already outlet ${holder}'s (each outlet needs its own connector; set outlets[].connectorId)`,
      })
    else connectors.set(connector, id ?? `#${i + 1}`)
    const busId = str(o.bus)
    const bus = busId !== undefined ? buses.get(busId) : undefined
    if (busId !== undefined && !bus && Array.isArray(cfg.buses)) {
      out.push({ pointer: `${at}/bus`, message: `unknown bus "${busId}" (buses: ${[...buses.keys()].join(', ') || 'none'})` })
    }
    const planId = str(o.plan)
    if (planId !== undefined && !plans.has(planId) && Array.isArray(cfg.plans)) {
      out.push({ pointer: `${at}/plan`, message: `unknown plan "${planId}" (plans: ${[...plans.keys()].join(', ') || 'none'})` })
    }
    const busType = str(bus?.type)
    const meter = isObj(o.meter) ? o.meter : undefined
    const relay = isObj(o.relay) ? o.relay : undefined
    if (busType !== undefined && (BUS_TRANSPORT as Record<string, string>)[busType] !== undefined) {
      for (const part of ['meter', 'relay'] as const) out.push(...addressProblems(o[part], busType, `${at}/${part}`))
      if (isNetBusType(busType)) out.push(...channelProblems(o, busId!, busType, at, netClaims))
    }
    if (meter) {
      const model = str(meter.model)
      if (model !== undefined) out.push(...modelProblems(registry, model, 'meter', `${at}/meter/model`, modelsDir, busType))
      const measured = model !== undefined ? registry?.find(model, 'meter')?.phases : undefined
      if (o.phases === 3 && measured === 1)
        out.push({
          pointer: `${at}/phases`,
          message: `is 3 but "${model}" is a single-phase meter: it measures one phase (set 1, or leave phases out)`,
        })
      if (busId !== undefined && typeof meter.unit === 'number') {
        const k = `${busId}#${meter.unit}`
        const prev = meterUnits.get(k) ?? relayUnits.get(k)
        if (prev) out.push({ pointer: `${at}/meter/unit`, message: `unit ${meter.unit} on bus "${busId}" is already claimed by ${prev}` })
        else meterUnits.set(k, `${at}/meter`)
      }
    }
    if (relay) {
      const model = str(relay.model)
      if (model !== undefined) out.push(...modelProblems(registry, model, 'relay', `${at}/relay/model`, modelsDir, busType))
      // A relay model that names no coil or register of its own takes it from the outlet's config.
      const point = model !== undefined ? registry?.find(model, 'relay')?.relay : undefined
      if (point && point.address === undefined && (point.point === 'coil' || point.point === 'register')) {
        const key = point.point === 'coil' ? 'coil' : 'register'
        if (relay[key] === undefined) out.push({ pointer: `${at}/relay/${key}`, message: `is required for a ${model} relay` })
      }
      if (busId !== undefined && typeof relay.unit === 'number') {
        const uk = `${busId}#${relay.unit}`
        const meterThere = meterUnits.get(uk)
        // A relay may share its unit with this outlet's own meter (a meter with a built-in relay), not another's.
        if (meterThere && meterThere !== `${at}/meter`) {
          out.push({
            pointer: `${at}/relay/unit`,
            message: `unit ${relay.unit} on bus "${busId}" is the meter of ${meterThere.replace('/meter', '')}`,
          })
        }
        relayUnits.set(uk, `${at}/relay`)
        const point = relay.coil ?? relay.register ?? 'relay'
        const pk = `${uk}#${String(point)}`
        const prev = relayPoints.get(pk)
        const what = relay.coil !== undefined ? 'coil' : relay.register !== undefined ? 'register' : 'unit'
        if (prev)
          out.push({
            pointer: `${at}/relay/${what === 'unit' ? 'unit' : what}`,
            message: `${what} ${String(point)} of unit ${relay.unit} on bus "${busId}" is already switched by ${prev}`,
          })
        else relayPoints.set(pk, at)
      }
    }
    if (isObj(o.autoStart) && !relay) {
      out.push({ pointer: `${at}/autoStart`, message: 'auto-start needs a relay: an outlet without one can never be switched off for its user' })
    }
  })
  out.push(...circuitProblems(cfg, buses, registry, modelsDir, meterUnits, relayUnits))
  out.push(...nodeRedProblems(cfg))
  return out
}

/**
 * Circuits: ids unique, parents that exist and form no cycle, every outlet's circuit known
 * and its rating within the smallest limit on its way to the root (an outlet that alone
 * exceeds its circuit could never be switched on), and a feeder meter that is a device of
 * its own on a known bus.
 */
function circuitProblems(
  cfg: Loose,
  buses: Map<string, Loose>,
  registry: ModelRegistry | undefined,
  modelsDir: string | undefined,
  meterUnits: Map<string, string>,
  relayUnits: Map<string, string>,
): ConfigProblem[] {
  const out: ConfigProblem[] = []
  const circuits = new Map<string, { at: string; maxA: number | undefined; parent: string | undefined }>()
  arr(cfg.circuits).forEach((c, i) => {
    if (!isObj(c)) return
    const id = str(c.id)
    if (id === undefined) return
    if (circuits.has(id)) out.push({ pointer: `/circuits/${i}/id`, message: `duplicate circuit id "${id}"` })
    else circuits.set(id, { at: `/circuits/${i}`, maxA: typeof c.maxA === 'number' ? c.maxA : undefined, parent: str(c.parent) })
  })
  const known = (): string => [...circuits.keys()].join(', ') || 'none'
  const cyclic = new Set<string>()
  for (const [id, c] of circuits) {
    if (c.parent === undefined) continue
    if (!circuits.has(c.parent)) {
      out.push({ pointer: `${c.at}/parent`, message: `unknown circuit "${c.parent}" (circuits: ${known()})` })
      continue
    }
    // Walk up: a cycle comes back to where it began (each cycle is reported once, at its first member).
    const path = [id]
    let cur: string | undefined = c.parent
    while (cur !== undefined && circuits.has(cur) && !path.includes(cur)) {
      path.push(cur)
      cur = circuits.get(cur)!.parent
    }
    if (cur === id && !path.some((p) => cyclic.has(p))) {
      for (const p of path) cyclic.add(p)
      out.push({ pointer: `${c.at}/parent`, message: `circuits form a cycle: ${[...path, id].join(' -> ')} (a circuit cannot feed itself)` })
    }
  }
  /** The smallest maxA from a circuit up to its root, and where it is. */
  const tightest = (id: string): { maxA: number; id: string } | undefined => {
    let best: { maxA: number; id: string } | undefined
    const seen = new Set<string>()
    for (let cur: string | undefined = id; cur !== undefined && circuits.has(cur) && !seen.has(cur); cur = circuits.get(cur)!.parent) {
      seen.add(cur)
      const m = circuits.get(cur)!.maxA
      if (m !== undefined && (best === undefined || m < best.maxA)) best = { maxA: m, id: cur }
    }
    return best
  }
  arr(cfg.outlets).forEach((o, i) => {
    if (!isObj(o)) return
    const circuit = str(o.circuit)
    if (circuit === undefined) return
    if (!circuits.has(circuit)) {
      out.push({ pointer: `/outlets/${i}/circuit`, message: `unknown circuit "${circuit}" (circuits: ${known()})` })
      return
    }
    const rating = typeof o.ratingA === 'number' ? o.ratingA : 32
    const t = tightest(circuit)
    if (t && rating > t.maxA) {
      const feeds = t.id === circuit ? '' : ` (which feeds "${circuit}")`
      out.push({
        pointer: `/outlets/${i}/ratingA`,
        message:
          `rating ${rating} A exceeds the ${t.maxA} A limit of circuit "${t.id}"${feeds}: ` +
          'it could never be switched on (set ratingA to what the outlet may draw)',
      })
    }
  })
  const feeders = new Map<string, string>()
  arr(cfg.circuits).forEach((c, i) => {
    if (!isObj(c) || !isObj(c.meter)) return
    const at = `/circuits/${i}/meter`
    const m = c.meter
    const busId = str(m.bus)
    const bus = busId !== undefined ? buses.get(busId) : undefined
    if (busId !== undefined && !bus)
      out.push({ pointer: `${at}/bus`, message: `unknown bus "${busId}" (buses: ${[...buses.keys()].join(', ') || 'none'})` })
    const model = str(m.model)
    if (model !== undefined) {
      out.push(...modelProblems(registry, model, 'meter', `${at}/model`, modelsDir, str(bus?.type)))
      if (bus !== undefined && bus.type !== 'modbus-rtu' && bus.type !== 'modbus-tcp')
        out.push({
          pointer: `${at}/bus`,
          message: `a feeder meter must be on a Modbus bus; "${busId}" is ${bus.type === 'serial' ? 'a plain serial bus' : `a ${String(bus.type)} device`}`,
        })
    }
    if (busId !== undefined && typeof m.unit === 'number') {
      const k = `${busId}#${m.unit}`
      const prev = meterUnits.get(k) ?? relayUnits.get(k) ?? feeders.get(k)
      if (prev)
        out.push({
          pointer: `${at}/unit`,
          message: `unit ${m.unit} on bus "${busId}" is already claimed by ${prev}: a feeder meter needs a unit id of its own`,
        })
      else feeders.set(k, at)
    }
  })
  return out
}

/** host:port whose host is a loopback address (127.0.0.0/8, ::1, localhost): reachable only from the gateway itself. */
/** What an OCPP security profile needs of the rest of the section (the OCPP 1.6 security whitepaper). */
function ocppProblems(o: Loose): ConfigProblem[] {
  const out: ConfigProblem[] = []
  const profile = typeof o.securityProfile === 'number' ? o.securityProfile : undefined
  if (profile !== undefined)
    for (const message of securityProfileNeeds(profile, { url: str(o.url), password: o.password !== undefined }))
      out.push({ pointer: '/ocpp/securityProfile', message })
  if ((o.clientCertFile === undefined) !== (o.clientKeyFile === undefined))
    out.push({
      pointer: o.clientCertFile === undefined ? '/ocpp/clientKeyFile' : '/ocpp/clientCertFile',
      message: 'clientCertFile and clientKeyFile go together (a certificate and its private key)',
    })
  return out
}

export function isLoopbackListen(listen: string): boolean {
  const host = listen.startsWith('[') ? listen.slice(1, listen.indexOf(']')) : listen.slice(0, listen.lastIndexOf(':'))
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)
}

const BCRYPT_HASH = /^\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}$/
/** Paths the local API serves itself: Node-RED's roots must not cover them. */
const API_PATHS = ['/api', '/metrics']

/** Embedded Node-RED: served by the API listener, never an open editor off loopback, roots that do not shadow the API. */
function nodeRedProblems(cfg: Loose): ConfigProblem[] {
  const out: ConfigProblem[] = []
  const nr = isObj(cfg.nodeRed) ? cfg.nodeRed : undefined
  if (!nr) return out
  const auth = isObj(nr.adminAuth) ? nr.adminAuth : undefined
  const hash = auth ? str(auth.passwordHash) : undefined
  if (hash !== undefined && hash.length >= 20 && !BCRYPT_HASH.test(hash)) {
    out.push({
      pointer: '/nodeRed/adminAuth/passwordHash',
      message: 'must be a bcrypt hash ($2b$..., 60 characters) such as `npx node-red admin hash-pw` prints, never the password itself',
    })
  }
  const roots: Partial<Record<'httpAdminRoot' | 'httpNodeRoot', string>> = {}
  for (const k of ['httpAdminRoot', 'httpNodeRoot'] as const) {
    const root = str(nr[k])
    if (root === undefined || !root.startsWith('/')) continue
    const r = root.replace(/\/+$/, '')
    if (r === '') out.push({ pointer: `/nodeRed/${k}`, message: 'must not be "/": it would cover the status page and the API' })
    else {
      const hit = API_PATHS.find((a) => r === a || r.startsWith(a + '/') || a.startsWith(r + '/'))
      if (hit) out.push({ pointer: `/nodeRed/${k}`, message: `"${root}" overlaps the local API's ${hit}` })
      roots[k] = r
    }
  }
  const { httpAdminRoot: a, httpNodeRoot: n } = roots
  if (a !== undefined && n !== undefined && (a === n || a.startsWith(n + '/') || n.startsWith(a + '/'))) {
    out.push({ pointer: '/nodeRed/httpNodeRoot', message: `"${n}" overlaps httpAdminRoot "${a}": flows' endpoints need a path of their own` })
  }
  // Node-RED's user must reach nothing of storage.dir (the journal, the key): its files live apart.
  const userDir = str(nr.userDir)
  const storage = isObj(cfg.storage) ? str(cfg.storage.dir) : undefined
  if (userDir !== undefined && storage !== undefined) {
    const u = pathResolve(userDir)
    const d = pathResolve(storage)
    if (u === d || u.startsWith(d + '/') || d.startsWith(u + '/'))
      out.push({
        pointer: '/nodeRed/userDir',
        message: `"${userDir}" overlaps storage.dir "${storage}": Node-RED's user must not reach the journal or the key`,
      })
  }
  if (str(nr.user) === 'root') out.push({ pointer: '/nodeRed/user', message: 'must not be root: flows run code on the gateway' })
  if (nr.enabled !== true) return out
  const api = isObj(cfg.api) ? cfg.api : undefined
  if (!api) {
    out.push({ pointer: '/api', message: 'is required when nodeRed is enabled: Node-RED is served by the local API listener' })
    return out
  }
  const listen = str(api.listen) ?? '127.0.0.1:8080'
  if (!auth && !isLoopbackListen(listen)) {
    out.push({
      pointer: '/nodeRed/adminAuth',
      message: `is required when nodeRed is enabled and api.listen (${listen}) is not loopback: the editor runs code on the gateway`,
    })
  }
  return out
}

function modelProblems(
  registry: ModelRegistry | undefined,
  model: string,
  kind: 'meter' | 'relay',
  pointer: string,
  modelsDir: string | undefined,
  busType: string | undefined,
): ConfigProblem[] {
  if (!registry) return [] // models.dir itself is reported
  const m = registry.find(model, kind)
  if (!m) {
    const where = modelsDir ? ` or a file ${join(modelsDir, model + '.json')}` : ' (or set models.dir for your own)'
    return [{ pointer, message: `unknown ${kind} model "${model}": expected one of ${registry.names(kind).join(', ')}${where}` }]
  }
  const want = busType !== undefined ? (BUS_TRANSPORT as Record<string, string>)[busType] : undefined
  if (want === undefined || m.transport === want) return []
  if (want === 'serial' && m.transport === 'modbus')
    return [
      {
        pointer,
        message: `"${model}" is a Modbus model but the outlet's bus is a plain serial bus (use a model with "transport": "serial", such as outpost-serial)`,
      },
    ]
  if (want === 'modbus' && m.transport === 'serial')
    return [{ pointer, message: `"${model}" speaks the serial line protocol but the outlet's bus is Modbus` }]
  const fitting = registry
    .all()
    .filter((x) => x.transport === want && x.kinds.includes(kind))
    .map((x) => x.name)
    .sort()
  const bus = busType === 'serial' ? 'a plain serial bus' : busType !== undefined && isNetBusType(busType) ? `a ${busType} device` : 'Modbus'
  return [
    {
      pointer,
      message: `"${model}" speaks ${m.transport} but the outlet's bus is ${bus} (${kind} models for it: ${fitting.join(', ') || 'none'})`,
    },
  ]
}

/** Modbus and serial devices are addressed by unit; a network device's meter and relay by channel. */
function addressProblems(part: unknown, busType: string, at: string): ConfigProblem[] {
  if (!isObj(part)) return []
  const out: ConfigProblem[] = []
  if (isNetBusType(busType)) {
    for (const k of ['unit', 'coil', 'register', 'delayMs'])
      if (part[k] !== undefined) out.push({ pointer: `${at}/${k}`, message: `is for Modbus and serial buses; on a ${busType} device use channel` })
  } else {
    if (part.unit === undefined) out.push({ pointer: `${at}/unit`, message: 'is required' })
    if (part.channel !== undefined) out.push({ pointer: `${at}/channel`, message: 'is for a shelly or tasmota device; on this bus use unit' })
  }
  return out
}

/** One outlet per meter channel and per relay channel of a network device. */
function channelProblems(o: Loose, busId: string, busType: NetDeviceConfig['type'], at: string, claims: Map<string, string>): ConfigProblem[] {
  const out: ConfigProblem[] = []
  for (const part of ['meter', 'relay'] as const) {
    const p = o[part]
    if (!isObj(p)) continue
    const ch = typeof p.channel === 'number' ? p.channel : defaultChannel(busType)
    const k = `${busId}#${part}#${ch}`
    const prev = claims.get(k)
    if (prev)
      out.push({
        pointer: `${at}/${part}${typeof p.channel === 'number' ? '/channel' : ''}`,
        message: `the ${part} channel ${ch} of device "${busId}" is already ${prev}'s`,
      })
    else claims.set(k, at)
  }
  return out
}

/** Zones already found valid: building an Intl.DateTimeFormat is costly, and configs are validated often (each engine simulation seed, each reload). */
const knownZones = new Set<string>()

export function isTimeZone(tz: string): boolean {
  if (knownZones.has(tz)) return true
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz })
    knownZones.add(tz)
    return true
  } catch {
    return false
  }
}

export type { PlanConfig }
