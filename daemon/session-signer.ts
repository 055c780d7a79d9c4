/**
 * The journal's OCMF signer: each session.ended is signed as it is sealed, with the gateway
 * key and the identity of the outlet's meter (MV from the meter model's manufacturer, from
 * the built-in models and models.dir; MS from the record's meterSerial, the serial the meter reported, else meter.serial or `<bus>:<unit>`).
 *
 * Owns: which meter identity and which context (site, gateway serial, version) a signature
 * carries; and the signature of a salvage's statement (gateway.started.salvageProof).
 * Must never: hold or hand out the private key (it asks for it at each signature, so a key
 * loaded after the journal opened is the one used), or sign without a key (KEY_MISSING).
 */
import { sign } from 'node:crypto'
import type { SiteConfig } from '../core/types.js'
import { ModelRegistry } from '../drivers/index.js'
import type { GatewayKey } from './gateway-key.js'
import { salvageStatement } from './journal/chain.js'
import type { SalvageSigner, SessionSigner } from './journal/index.js'
import { meterIdentities, ocmfPayload, signOcmf } from './ocmf.js'

export function sessionSigner(opts: { config: () => SiteConfig; version: string; key: () => GatewayKey }): SessionSigner {
  const { version, key } = opts
  const manufacturerOf = manufacturers(opts.config())
  // The meters of the config in force (outlets added while the daemon runs are signed with their own), worked out once per config.
  let meters = { of: opts.config(), map: meterIdentities(opts.config(), manufacturerOf) }
  return (body, { pagination, clockSynced }) => {
    const config = opts.config()
    if (meters.of !== config) meters = { of: config, map: meterIdentities(config, manufacturerOf) }
    return signOcmf(
      ocmfPayload(body, {
        siteId: config.site.id,
        gatewaySerial: key().fingerprint,
        version,
        pagination,
        clockSynced,
        meter: meters.map.get(body.outlet) ?? { model: 'unknown', serial: body.outlet },
      }),
      key().privateKey,
    )
  }
}

/** The journal's salvage signer: a salvage's statement, with the site id, signed with the gateway key (the cloud checks it against the key the site announced). */
export function salvageSigner(opts: { siteId: () => string; key: () => GatewayKey }): SalvageSigner {
  return (statement) => {
    const proof = { site: opts.siteId(), ...statement }
    return { ...proof, signature: sign('sha256', Buffer.from(salvageStatement(proof), 'utf8'), opts.key().privateKey).toString('base64') }
  }
}

/** Each meter model's manufacturer (OCMF MV), from the built-in models and models.dir. */
function manufacturers(config: SiteConfig): (model: string) => string | undefined {
  const registry = new ModelRegistry(config.models?.dir)
  return (model) => registry.find(model, 'meter')?.manufacturer
}
