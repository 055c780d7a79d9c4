/**
 * What the session engine refuses and throws, each code with its meaning: the codes
 * of refused commands (CommandResult.error.code, lower-case, part of the contract)
 * and the codes of the OutpostErrors it throws on a programming error or an
 * impossible input. daemon/errors.ts takes both into the catalog.
 *
 * Owns: the engine's codes and their meanings.
 * Must never: import anything outside the engine but core/ (the engine stays pure).
 */
import {
  OutpostError as CoreOutpostError,
  isOutpostError as coreIsOutpostError,
  type OutpostErrorClass,
  type OutpostErrorGuard,
} from '../../core/errors.js'

/** Codes of refused commands (CommandResult.error.code). Stable: the cloud and the API build on them. */
export const COMMAND_ERRORS = {
  'invalid-command': 'the command is malformed (fields missing or of the wrong type)',
  'invalid-plan': 'set-plan: the plan is not valid (the message lists every problem)',
  'unknown-outlet': 'no outlet with that id on this site',
  'unknown-user': 'no wallet is known for that user (the cloud has not sent set-wallet)',
  'unknown-plan': 'no plan with that id (assign-plan), or the outlet’s plan does not exist (start)',
  'outlet-busy': 'the outlet already has an open session',
  'outlet-unavailable': 'the manager made the outlet unavailable',
  'outlet-fault': 'the outlet’s meter or relay is in fault',
  'outlet-not-ready': 'the meter has not been read since the gateway started',
  'plan-unavailable': 'the outlet’s plan is in an unavailable window now',
  'offline-limit': 'the uplink has been down longer than offline.limitMinutes',
  'no-balance': 'the user’s available balance is not positive, or does not exceed the activation fee',
  'not-authorized':
    'start on a site with ocpp while its central system is unreachable: the idTag is refused by the local list or the authorization cache, or unknown to both and AllowOfflineTxForUnknownId is false (docs/ocpp.md); the gateway refuses it, the engine journals the refusal',
  'currency-mismatch': 'the user’s wallet is in another currency than the outlet’s plan',
  'no-session': 'stop: the outlet has no open session',
  'no-relay': 'set-auto-start: a meter-only outlet cannot be armed',
  'not-running': 'start: the gateway is not running (before boot or after shutdown)',
  'unknown-circuit': 'set-circuit-limit: no circuit with that id on this site',
  'limit-above-circuit': 'set-circuit-limit: maxA above the circuit’s configured maxA (the wiring’s limit cannot be raised by a command)',
  'cross-check-running': 'start: the wiring cross-check is switching the relays (no session starts until it ends)',
} as const satisfies Record<string, string>
export type CommandErrorCode = keyof typeof COMMAND_ERRORS

export const ENGINE_ERRORS = {
  ENGINE_BAD_EVENT: 'step() was given something that is not an event, or a now that is not finite epoch ms',
  ENGINE_BAD_ARGUMENT: 'priceTimeline was given a non-finite start or a span not within 0-744 hours',
  ENGINE_BAD_TIMEZONE: 'site.timezone is not an IANA time zone',
  ENGINE_UNKNOWN_CURRENCY: 'a plan or wallet names a currency that is not ISO 4217',
  ENGINE_UNKNOWN_OUTLET: 'an event or query names an outlet the state does not hold',
  ENGINE_UNKNOWN_CIRCUIT: 'a feeder meter event names a circuit the state does not hold, or one without a feeder meter',
  ENGINE_UNKNOWN_PLAN: 'an outlet is assigned a plan that does not exist',
} as const satisfies Record<string, string>
export type EngineErrorCode = keyof typeof ENGINE_ERRORS

/** OutpostError as the engine throws it: only its own codes compile. */
export const OutpostError: OutpostErrorClass<EngineErrorCode> = CoreOutpostError
export type OutpostError = CoreOutpostError<EngineErrorCode>
export const isOutpostError: OutpostErrorGuard<EngineErrorCode> = coreIsOutpostError
