/**
 * The validators the build writes (core/validators.ts, daemon/build-validators.ts): after
 * `npm run build` every one is there and loads as built; built and compiled-at-run-time give the
 * same verdict, the same errors (with verbose schema parts) and the same defaults on valid and
 * broken site configs, commands, every device model file and OCPP calls; and built code made
 * from other schema text is never used: a schema edited after the build compiles again.
 */
import t from 'tap'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { packagePath } from '../core/paths.js'
import { loadValidators, validatorOrigin, VALIDATORS_DIR, type ValidatorSpec, type Validators } from '../core/validators.js'
import { VALIDATORS } from '../daemon/build-validators.js'

/** The same spec, compiled now whatever the build wrote (a text no build was made from). */
function compiledNow(spec: ValidatorSpec): Validators {
  const v = loadValidators({ ...spec, texts: [...spec.texts, 'not what the build read'] })
  if (validatorOrigin.get(spec.name) !== 'compiled') throw new Error(`${spec.name}: not compiled`)
  return v
}

/** Runs one validator on a copy of `input`: the verdict, the errors, and the copy (defaults applied). */
function verdict(validate: Validators[string], input: unknown): unknown {
  const copy = structuredClone(input)
  const ok = validate(copy)
  return { ok, errors: validate.errors ?? null, after: copy }
}

const json = (...p: string[]): any => JSON.parse(readFileSync(packagePath(...p), 'utf8'))

const example = json('config', 'example.json')
const demo = json('config', 'demo.json')
const broken = [
  { ...example, site: { name: '<b>no id</b>' } },
  { ...example, plans: 5 },
  { ...example, buses: [{ id: 'b', type: 'modbus-rtu' }] },
  { ...example, outlets: [{ id: 'A1', bus: 'nope', meter: { model: 'x', unit: 999 } }] },
  { ...example, unknown: true },
  'not an object',
]
const commands = [
  { id: 'c1', action: 'start', outlet: 'A1', userId: 'u-42' },
  { id: 'c2', action: 'stop', outlet: 'A1' },
  { id: 'c3', action: 'start', outlet: 'A1' },
  { id: 'c4', action: 'fly' },
  { id: '', action: 'stop', outlet: 'A1', extra: 1 },
  [],
]
const models = readdirSync(packagePath('drivers', 'models'))
  .filter((f) => f.endsWith('.json') && f !== 'model.schema.json')
  .map((f) => json('drivers', 'models', f))
const ocppCalls: [string, unknown][] = [
  ['RemoteStartTransaction', { idTag: 'drv-1' }],
  ['RemoteStartTransaction', { connectorId: 1, idTag: 'x'.repeat(21) }],
  [
    'RemoteStartTransaction',
    {
      idTag: 'a',
      chargingProfile: {
        chargingProfileId: 1,
        stackLevel: 0,
        chargingProfilePurpose: 'TxProfile',
        chargingProfileKind: 'Absolute',
        validFrom: 'yesterday',
        chargingSchedule: { chargingRateUnit: 'A', chargingSchedulePeriod: [] },
      },
    },
  ],
  ['ChangeAvailability', { connectorId: 'one', type: 'Inoperative' }],
  ['Reset', { type: 'Soft' }],
  ['GetConfiguration', {}],
]

const inputs: Record<string, [string, unknown][]> = {
  site: [example, demo, ...broken].map((c) => ['site', c]),
  command: commands.map((c) => ['command', c]),
  model: [...models, { ...models[0], registers: 'none' }, {}].map((m) => ['model', m]),
  'ocpp16-requests': ocppCalls,
}

t.test('every validator is built, and loads as built', async (t) => {
  t.same(VALIDATORS.map((s) => s.name).sort(), Object.keys(inputs).sort(), 'the validators this test exercises are all there are')
  for (const spec of VALIDATORS) {
    t.ok(existsSync(join(VALIDATORS_DIR, `${spec.name}.cjs`)), `${spec.name}.cjs was written by the build`)
    loadValidators(spec)
    t.equal(validatorOrigin.get(spec.name), 'built', `${spec.name}: the built code matches this process's schema`)
  }
})

t.test('built and compiled at run time: the same verdicts, errors and defaults', async (t) => {
  for (const spec of VALIDATORS) {
    const built = loadValidators(spec)
    const now = compiledNow(spec)
    t.same(Object.keys(built).sort(), Object.keys(now).sort(), `${spec.name}: the same validators`)
    let valid = 0
    let invalid = 0
    for (const [key, input] of inputs[spec.name]!) {
      const a = verdict(built[key]!, input) as { ok: boolean }
      t.same(a, verdict(now[key]!, input), `${spec.name} ${key}: ${JSON.stringify(input).slice(0, 60)}`)
      if (a.ok) valid++
      else invalid++
    }
    t.ok(valid > 0 && invalid > 0, `${spec.name}: both valid (${valid}) and invalid (${invalid}) inputs were compared`)
  }
})

t.test('a schema edited after the build is compiled again, and holds', async (t) => {
  const site = VALIDATORS.find((s) => s.name === 'site')!
  const edited = JSON.parse(site.texts[0]!)
  edited.properties.site.required = [...edited.properties.site.required, 'name']
  const text = JSON.stringify(edited)
  const spec: ValidatorSpec = {
    ...site,
    texts: [text],
    add: (ajv) => {
      ajv.addSchema(JSON.parse(text), 'site')
      return ['site']
    },
  }
  const v = loadValidators(spec)
  t.equal(validatorOrigin.get('site'), 'compiled', 'not the built code')
  const noName = { ...example, site: { id: 'lot-7', timezone: 'Europe/Berlin' } }
  t.notOk(v.site!(structuredClone(noName)), 'the edited schema is the one applied')
  t.ok(loadValidators(site).site!(structuredClone(noName)), 'the built one, for the unedited schema, accepts it')
})
