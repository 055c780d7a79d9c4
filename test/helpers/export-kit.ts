/**
 * What the export tests share: sessions billed by the real engine (the Rig from
 * engine-fixtures) with readings chosen to the mWh, the OCPI JSON Schema compiled with
 * ajv, and a site's OCPI section.
 *
 * Owns: only test plumbing. Must never compute a bill itself (the engine does).
 */
import { readFileSync } from 'node:fs'
import { Ajv2020 } from 'ajv/dist/2020.js'
import type { OcpiConfig, PlanConfig, SessionEndedBody } from '../../core/types.js'
import { packagePath } from '../../core/paths.js'
import { Rig, siteConfig } from '../engine-fixtures.js'

export const OCPI: OcpiConfig = {
  countryCode: 'CA',
  partyId: 'OUT',
  address: '1 Lot Street',
  city: 'Vancouver',
  postalCode: 'V5K 0A1',
  country: 'CAN',
  latitude: 49.2827,
  longitude: -123.1207,
}

/** ajv validators for the OCPI 2.2.1 CDR and Tariff objects (config/ocpi-2.2.1.schema.json). */
export function ocpiValidators(): { cdr: (v: unknown) => string[]; tariff: (v: unknown) => string[] } {
  const schema = JSON.parse(readFileSync(packagePath('config', 'ocpi-2.2.1.schema.json'), 'utf8'))
  const ajv = new Ajv2020({ allErrors: true, strict: true })
  ajv.addSchema(schema)
  const check = (ref: string) => {
    const v = ajv.getSchema(`${schema.$id}#/$defs/${ref}`)!
    return (x: unknown): string[] => (v(x) ? [] : (v.errors ?? []).map((e) => `${e.instancePath || '/'}: ${e.message}`))
  }
  return { cdr: check('Cdr'), tariff: check('Tariff') }
}

/**
 * One session billed by the engine: activated at `start` (epoch ms) on outlet A1 under `plan`
 * in `timezone`, then readings every `stepS` seconds adding `wh` in total over `seconds`
 * (spread to the mWh, the last reading exactly at start + seconds), stopped by the user.
 */
export function billOne(plan: PlanConfig, timezone: string, start: number, seconds: number, wh: number, stepS = 5): SessionEndedBody {
  const config = siteConfig({
    timezone,
    plans: [plan],
    outlets: [
      { id: 'A1', bus: 'lan', meter: { model: 'eastron-sdm120', unit: 1 }, relay: { model: 'modbus-coil', unit: 100, coil: 0 }, plan: plan.id },
    ],
  })
  const rig = new Rig(config, start - 1000)
  rig.apply({ type: 'config', config })
  rig.boot(true)
  rig.apply({ type: 'uplink', online: true })
  rig.read('A1', 0, 0)
  rig.wallet('u-1', 100_000_000, plan.currency)
  rig.advance(1000)
  rig.cmd({ action: 'start', outlet: 'A1', userId: 'u-1' })
  if (!rig.result().ok) throw new Error(`start refused: ${JSON.stringify(rig.result())}`)
  const totalMWh = Math.round(wh * 1000)
  const n = Math.ceil(seconds / stepS)
  let given = 0
  for (let i = 1; i <= n; i++) {
    const t = Math.min(i * stepS, seconds)
    const target = Math.round((totalMWh * t) / seconds)
    const add = target - given
    given = target
    rig.now = start + t * 1000
    rig.meter.A1! += add
    const amps = 16
    rig.apply({
      type: 'reading',
      outlet: 'A1',
      reading: { ts: rig.now, currentA: amps, powerW: amps * 230, energyWh: rig.meter.A1! / 1000, voltageV: 230 },
    })
  }
  rig.cmd({ action: 'stop', outlet: 'A1', by: 'user' })
  const ended = rig.ended()
  if (ended.length !== 1) throw new Error(`expected one session.ended, got ${ended.length}`)
  return ended[0]!
}
