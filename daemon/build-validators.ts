/**
 * The build step after tsc (`npm run build`, `npm run build:ship`): writes ajv's standalone
 * code for every JSON Schema validator the product runs to dist/core/validators/, so that no
 * process compiles a schema at start (core/validators.ts loads them).
 *
 * Owns: the list of the product's validators.
 * Must never: leave a half-written file (each is written aside and renamed).
 */
import { COMMAND_VALIDATOR } from './command-gateway.js'
import { SITE_VALIDATOR } from './config.js'
import { OCPP_CALL_VALIDATOR } from './ocpp/calls.js'
import { MODEL_VALIDATOR } from '../drivers/models.js'
import { writeValidators } from '../core/validators.js'

export const VALIDATORS = [SITE_VALIDATOR, COMMAND_VALIDATOR, MODEL_VALIDATOR, OCPP_CALL_VALIDATOR]

if (process.argv[1]?.endsWith('build-validators.js')) for (const spec of VALIDATORS) writeValidators(spec)
