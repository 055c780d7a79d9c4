/**
 * The JSON Schema validators the product runs (the site config, commands, device models, OCPP
 * calls), compiled by the build instead of at every start. ajv turns a schema into JavaScript
 * when a validator is first needed: for the site schema and the command schema built on it
 * that is most of a second of CPU per process on a laptop core, several seconds on a Pi, at
 * every daemon start and every CLI command. `npm run build` writes ajv's standalone code for
 * each validator to dist/core/validators/NAME.cjs (daemon/build-validators.ts), and a process
 * loads that instead.
 *
 * Owns: a validator's fingerprint (the schema texts it is made from, the code that compiles it,
 * ajv's version), writing the standalone code with it, and loading: the built code when its
 * fingerprint is this process's, else compiling at run time (a schema edited after the build,
 * a build that skipped the step).
 * Must never: use built code made from another schema, other options or another ajv; or fail
 * to validate because the built code is missing.
 */
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Ajv, Options, ValidateFunction } from 'ajv'

const require = createRequire(import.meta.url)
// ajv's standalone module is CommonJS whose module.exports is the function itself.
const standaloneCode = require('ajv/dist/standalone/index.js') as typeof import('ajv/dist/standalone/index.js').default
const AJV_VERSION = (require('ajv/package.json') as { version: string }).version

/** Where the build writes the validators' code: beside this module, so that it ships with it. */
export const VALIDATORS_DIR = join(fileURLToPath(new URL('.', import.meta.url)), 'validators')

export interface ValidatorSpec {
  /** The file name under VALIDATORS_DIR, without `.cjs`. */
  name: string
  /** The texts the schemas are parsed from, as this process read them. */
  texts: string[]
  /** The JSON Schema draft: 2020-12 (Outpost's own schemas) or draft-07 (OCPP 1.6's). */
  draft: '2020-12' | '07'
  options: Options
  /** Adds the schemas (and any format) to a fresh ajv; returns the keys of the validators it gives. */
  add: (ajv: Ajv) => string[]
}

export type Validators = Record<string, ValidateFunction>

/** What a built file must match: the schema texts, how they are compiled, and by which ajv. */
export function fingerprint(spec: ValidatorSpec): string {
  const h = createHash('sha256')
  for (const part of [AJV_VERSION, spec.draft, JSON.stringify(spec.options), spec.add.toString(), ...spec.texts]) h.update(`${part.length}:${part}`)
  return h.digest('hex')
}

const FINGERPRINT = '__outpostFingerprint'

/** ajv itself is loaded only to compile: a process on built validators never needs it. */
function compile(spec: ValidatorSpec, source: boolean): { ajv: Ajv; keys: string[] } {
  const Class =
    spec.draft === '07'
      ? (require('ajv') as typeof import('ajv')).Ajv
      : ((require('ajv/dist/2020.js') as typeof import('ajv/dist/2020.js')).Ajv2020 as unknown as typeof import('ajv').Ajv)
  const ajv = new Class({ ...spec.options, code: { source } })
  return { ajv, keys: spec.add(ajv) }
}

/** How each loaded validator set was obtained, for the status of a build and its test. */
export const validatorOrigin = new Map<string, 'built' | 'compiled'>()

/** The spec's validators by key: the build's code when it matches, else compiled now. */
export function loadValidators(spec: ValidatorSpec): Validators {
  const file = join(VALIDATORS_DIR, `${spec.name}.cjs`)
  if (existsSync(file)) {
    const built = require(file) as Record<string, unknown>
    if (built[FINGERPRINT] === fingerprint(spec)) {
      validatorOrigin.set(spec.name, 'built')
      return Object.fromEntries(Object.entries(built).filter(([k]) => k !== FINGERPRINT)) as Validators
    }
  }
  const { ajv, keys } = compile(spec, false)
  validatorOrigin.set(spec.name, 'compiled')
  return Object.fromEntries(
    keys.map((k) => {
      const v = ajv.getSchema(k)
      if (!v) throw new Error(`validator ${spec.name}: no schema under the key ${k}`)
      return [k, v]
    }),
  )
}

/** Writes the spec's standalone code with its fingerprint (the build step); returns the file. */
export function writeValidators(spec: ValidatorSpec): string {
  const { ajv, keys } = compile(spec, true)
  const code = standaloneCode(ajv, Object.fromEntries(keys.map((k) => [k, k])))
  mkdirSync(VALIDATORS_DIR, { recursive: true })
  const file = join(VALIDATORS_DIR, `${spec.name}.cjs`)
  writeFileSync(`${file}.tmp`, `${code}\nexports[${JSON.stringify(FINGERPRINT)}] = ${JSON.stringify(fingerprint(spec))};\n`)
  renameSync(`${file}.tmp`, file)
  return file
}
