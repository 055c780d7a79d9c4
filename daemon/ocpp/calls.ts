/**
 * Validation of the calls a central system sends, against the OCPP 1.6 JSON
 * schemas of the actions Outpost answers (config/ocpp16-requests.json).
 *
 * Owns: which actions are answered, which are OCPP 1.6 actions Outpost knows but
 * does not support (`NotSupported`), which are unknown (`NotImplemented`), and
 * the CALLERROR code of a payload the schema refuses: a missing field or a
 * payload that is not an object `FormationViolation` (the payload is
 * incomplete), a wrong JSON type `TypeConstraintViolation`, any other refused
 * value (length, enum, unknown field) `PropertyConstraintViolation`. The
 * description names the field.
 *
 * Must never: let a refused call reach the command gateway.
 */
import { readFileSync } from 'node:fs'
import type { ErrorObject, ValidateFunction } from 'ajv'
import { packagePath } from '../../core/paths.js'
import { loadValidators, type ValidatorSpec } from '../../core/validators.js'
import { CallError } from './rpc.js'

const fileText = readFileSync(packagePath('config', 'ocpp16-requests.json'), 'utf8')
const file = JSON.parse(fileText) as { actions: Record<string, object> }

/** One validator per answered action (built by `npm run build`, core/validators.ts). */
export const OCPP_CALL_VALIDATOR: ValidatorSpec = {
  name: 'ocpp16-requests',
  texts: [fileText],
  draft: '07',
  // multipleOf 0.1 (a charging limit) on a binary float: 0.3 / 0.1 is not a whole number without a tolerance.
  options: { allErrors: true, strict: false, multipleOfPrecision: 6 },
  add: (ajv) => {
    // The one format the 1.6 schemas use (ajv-formats is not a dependency): RFC 3339 date-time.
    ajv.addFormat('date-time', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/i)
    for (const [action, schema] of Object.entries(file.actions)) ajv.addSchema(schema, action)
    return Object.keys(file.actions)
  },
}

/** The central system's calls Outpost answers (each has its schema in config/ocpp16-requests.json). */
export const ANSWERED = Object.keys(file.actions)

/** OCPP 1.6 actions a central system may send that Outpost does not support: answered NotSupported. */
export const NOT_SUPPORTED = ['CancelReservation', 'DataTransfer', 'GetDiagnostics', 'ReserveNow', 'UpdateFirmware'] as const

let compiled: Map<string, ValidateFunction> | undefined
function validators(): Map<string, ValidateFunction> {
  if (!compiled) {
    compiled = new Map(Object.entries(loadValidators(OCPP_CALL_VALIDATOR)))
  }
  return compiled
}

/** Returns the payload if `action` is answered and its payload valid; throws the CallError to send otherwise. */
export function checkCall(action: string, payload: unknown): Record<string, unknown> {
  const validate = validators().get(action)
  if (!validate) {
    if ((NOT_SUPPORTED as readonly string[]).includes(action)) throw new CallError('NotSupported', `${action} is not supported by this charge point`)
    throw new CallError('NotImplemented', `unknown action ${JSON.stringify(action).slice(0, 60)}`)
  }
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload))
    throw new CallError('FormationViolation', `${action}: the payload must be a JSON object`)
  if (!validate(payload)) throw callErrorOf(action, validate.errors ?? [])
  return payload as Record<string, unknown>
}

function callErrorOf(action: string, errors: ErrorObject[]): CallError {
  const first = errors[0]!
  const at = (e: ErrorObject) =>
    e.keyword === 'required'
      ? `${e.instancePath}/${String((e.params as { missingProperty: string }).missingProperty)}`
      : e.keyword === 'additionalProperties'
        ? `${e.instancePath}/${String((e.params as { additionalProperty: string }).additionalProperty)}`
        : e.instancePath || '/'
  const what = errors.map((e) => `${at(e)}: ${e.keyword === 'additionalProperties' ? 'unknown field' : e.message}`).join('; ')
  const code =
    first.keyword === 'required' ? 'FormationViolation' : first.keyword === 'type' ? 'TypeConstraintViolation' : 'PropertyConstraintViolation'
  return new CallError(code, `${action}: ${what}`.slice(0, 500), { errors: errors.map((e) => ({ at: at(e), keyword: e.keyword })) })
}
