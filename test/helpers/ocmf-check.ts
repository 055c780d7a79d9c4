/**
 * Independent checks of an OCMF string, for the tests: the openssl CLI (`openssl dgst
 * -sha256 -verify` against the PEM public key) and an OCMF parser and verifier from npm
 * (@road-labs/ocmf with @road-labs/ocmf-crypto-noble). Neither shares code with daemon/ocmf.ts.
 *
 * Owns: only these two checks. Must never use the daemon's own OCMF or key code.
 */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import ocmf from '@road-labs/ocmf'
import noble from '@road-labs/ocmf-crypto-noble'

/** The three sections, split as OCMF defines them (no `|` inside a section). */
export function sections(value: string): { payload: string; signature: { SA?: string; SD: string } } {
  const parts = value.split('|')
  if (parts.length !== 3 || parts[0] !== 'OCMF') throw new Error(`not OCMF|payload|signature: ${value.slice(0, 40)}`)
  return { payload: parts[1]!, signature: JSON.parse(parts[2]!) }
}

/** openssl dgst -sha256 -verify: true on "Verified OK" (exit 0), false on "Verification failure". */
export function opensslVerifies(value: string, publicKeyPem: string): boolean {
  const { payload, signature } = sections(value)
  const dir = mkdtempSync(join(tmpdir(), 'outpost-ocmf-openssl-'))
  try {
    writeFileSync(join(dir, 'pub.pem'), publicKeyPem)
    writeFileSync(join(dir, 'payload'), payload, 'utf8')
    writeFileSync(join(dir, 'sig.der'), Buffer.from(signature.SD, 'hex'))
    const r = spawnSync('openssl', ['dgst', '-sha256', '-verify', join(dir, 'pub.pem'), '-signature', join(dir, 'sig.der'), join(dir, 'payload')], {
      encoding: 'utf8',
    })
    if (r.error) throw r.error
    if (r.status === 0 && /Verified OK/.test(r.stdout)) return true
    if (r.status === 1 && /Verification failure/.test(r.stdout + r.stderr)) return false
    throw new Error(`openssl: unexpected answer (status ${r.status}): ${r.stdout} ${r.stderr}`)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** @road-labs/ocmf's parseAndVerify with the noble backend; the parsed payload when it verifies. */
export async function roadLabsVerifies(value: string, publicKeyPem: string): Promise<{ verified: boolean; payload?: Record<string, unknown> }> {
  const crypto = new noble.Crypto()
  const der = Buffer.from(publicKeyPem.replace(/-----(BEGIN|END) PUBLIC KEY-----/g, '').replace(/\s+/g, ''), 'base64')
  const key = await crypto.decodeEcPublicKey(new Uint8Array(der), 'spki-der')
  const result = await new ocmf.Verifier(crypto).parseAndVerify(value, key)
  return { verified: result.verified, payload: result.value?.payloadData as Record<string, unknown> | undefined }
}
