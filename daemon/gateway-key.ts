/**
 * The gateway's signing key: one ECDSA P-256 private key in `<storage.dir>/gateway-key.pem`
 * (PKCS#8 PEM, mode 0600), the identity every OCMF signature of this gateway is made with.
 *
 * Owns: creating the key when the journal is created (before it, so a journal never exists
 * without its key), loading it, rotating it on an installer's request, and the public key's
 * PEM (SPKI) and fingerprint.
 * Must never: write the private key anywhere but storage.dir, print it, or make a new key
 * silently beside an existing journal (a new key is a new identity: that is KEY_MISSING,
 * and rotation is an installer's explicit `outpost key --rotate`).
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto'
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { OutpostError } from './errors.js'

export const KEY_FILE = 'gateway-key.pem'

export interface GatewayKey {
  /** The private key (never leaves this process). */
  readonly privateKey: KeyObject
  /** The public key, SPKI in PEM: what gateway.started and P/status announce. */
  readonly publicKeyPem: string
  /** The first 16 hex digits of SHA-256 over the public key's SPKI DER: the gateway serial (OCMF GS). */
  readonly fingerprint: string
  readonly file: string
}

export function keyPath(storageDir: string): string {
  return join(storageDir, KEY_FILE)
}

/** Whether a journal (or a swap's finished replacement) already exists in storage.dir. */
function journalExists(storageDir: string): boolean {
  return existsSync(join(storageDir, 'journal')) || existsSync(join(storageDir, 'journal.next'))
}

function fromPrivate(privateKey: KeyObject, file: string): GatewayKey {
  const details = privateKey.asymmetricKeyDetails
  if (privateKey.asymmetricKeyType !== 'ec' || details?.namedCurve !== 'prime256v1')
    throw new OutpostError(
      'KEY_UNREADABLE',
      `${file} is not an ECDSA P-256 key (found ${privateKey.asymmetricKeyType} ${details?.namedCurve ?? ''}); OCMF signatures need ECDSA-secp256r1`,
    )
  const pub = createPublicKey(privateKey)
  const der = pub.export({ type: 'spki', format: 'der' })
  return {
    privateKey,
    publicKeyPem: pub.export({ type: 'spki', format: 'pem' }).toString(),
    fingerprint: createHash('sha256').update(der).digest('hex').slice(0, 16),
    file,
  }
}

/** Reads the key file; KEY_UNREADABLE when it is there but cannot be used, undefined when it is absent. */
export function readKey(storageDir: string): GatewayKey | undefined {
  const file = keyPath(storageDir)
  let pem: string
  try {
    pem = readFileSync(file, 'utf8')
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    if (e.code === 'ENOENT') return undefined
    throw new OutpostError('KEY_UNREADABLE', `cannot read the gateway key ${file}: ${e.code ?? e.message}`, { cause: err })
  }
  let key: KeyObject
  try {
    key = createPrivateKey({ key: pem, format: 'pem' })
  } catch (err) {
    throw new OutpostError('KEY_UNREADABLE', `the gateway key ${file} is not a PEM private key: ${(err as Error).message}`, { cause: err })
  }
  return fromPrivate(key, file)
}

/** Writes a new key atomically (temporary file, 0600, fsync, rename, fsync of the directory). */
function writeNewKey(storageDir: string): GatewayKey {
  const file = keyPath(storageDir)
  const tmp = `${file}.new`
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  try {
    if (existsSync(tmp)) unlinkSync(tmp)
    const fd = openSync(tmp, 'wx', 0o600)
    try {
      writeSync(fd, pem)
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }
    renameSync(tmp, file)
    const dir = openSync(storageDir, 'r')
    try {
      fsyncSync(dir)
    } finally {
      closeSync(dir)
    }
  } catch (err) {
    throw new OutpostError('KEY_WRITE_FAILED', `cannot write the gateway key ${file}: ${(err as Error).message}`, { cause: err })
  }
  return fromPrivate(privateKey, file)
}

/**
 * The key `outpost run` signs with: loaded, or created when storage.dir holds no journal
 * yet (a new gateway). Beside an existing journal a missing key is KEY_MISSING, unless the
 * caller found that journal never recorded a key (`journalSigned: false`).
 */
export function loadOrCreateKey(storageDir: string, opts: { journalSigned?: boolean } = {}): GatewayKey {
  const key = readKey(storageDir)
  if (key) return key
  // `journalSigned: false`: the caller opened the journal and found no key on record (one written before
  // records were signed, an upgrade): the first key of that journal is not a new identity.
  if (journalExists(storageDir) && opts.journalSigned !== false)
    throw new OutpostError(
      'KEY_MISSING',
      `the gateway key ${keyPath(storageDir)} is missing, but a journal exists in ${storageDir}. ` +
        'A new key would be a new identity for this gateway: restore the key file from a backup, ' +
        'or rotate the key on purpose with `outpost key --config FILE --rotate` (README: key rotation)',
    )
  try {
    // A new gateway: storage.dir may not exist yet (the journal would create it next).
    mkdirSync(storageDir, { recursive: true })
  } catch (err) {
    throw new OutpostError('KEY_WRITE_FAILED', `storage.dir ${storageDir} cannot be used: ${(err as Error).message}`, { cause: err })
  }
  return writeNewKey(storageDir)
}

/**
 * Rotation: the old key file is kept beside it as `gateway-key.pem.retired-<UTC time>` (records
 * it signed are verified with the public key their log announced), a new key takes its place.
 * An unreadable key file is retired the same way: it is kept, never deleted.
 */
export function rotateKey(storageDir: string, now: Date): { key: GatewayKey; retired: string | null } {
  const file = keyPath(storageDir)
  let retired: string | null = null
  if (existsSync(file)) {
    retired = `${file}.retired-${now
      .toISOString()
      .replace(/[-:]/g, '')
      .replace(/\.\d+Z$/, 'Z')}`
    try {
      renameSync(file, retired)
    } catch (err) {
      throw new OutpostError('KEY_WRITE_FAILED', `cannot move ${file} aside: ${(err as Error).message}`, { cause: err })
    }
  }
  return { key: writeNewKey(storageDir), retired }
}
