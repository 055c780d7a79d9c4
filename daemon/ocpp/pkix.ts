/**
 * The few X.509 / PKCS#10 structures the charge point's certificate management needs, over
 * node:crypto, which has no CSR builder and does not expose a certificate's DER fields: a
 * DER writer for a certification request (RFC 2986), a DER reader for the certificate
 * fields OCPP's CertificateHashData names (RFC 5280's issuer Name and subjectPublicKey), and
 * the checks of a certificate chain against trust anchors.
 *
 * Owns: the CSR's form (ECDSA P-256 key, ecdsa-with-SHA256, subject O = CpoName and
 * CN = the charge point's identity, no attributes), PEM splitting, certificate hash data,
 * and what makes a chain acceptable (each certificate valid now, signed by the next, every
 * issuer a CA, the last one signed by a trust anchor or being one).
 *
 * Must never: do I/O, hold or print a private key (it is handed in to sign and forgotten),
 * or accept a chain it could not check in full.
 */
import { createHash, generateKeyPairSync, type KeyObject, sign, X509Certificate } from 'node:crypto'

// ---------------------------------------------------------------- DER writing

function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n])
  const bytes: number[] = []
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff)
  return Buffer.from([0x80 | bytes.length, ...bytes])
}

const tlv = (tag: number, content: Buffer): Buffer => Buffer.concat([Buffer.from([tag]), derLength(content.length), content])
const sequence = (...items: Buffer[]): Buffer => tlv(0x30, Buffer.concat(items))
const set = (...items: Buffer[]): Buffer => tlv(0x31, Buffer.concat(items))
const utf8 = (s: string): Buffer => tlv(0x0c, Buffer.from(s, 'utf8'))

function oid(dotted: string): Buffer {
  const parts = dotted.split('.').map(Number)
  const out: number[] = [40 * parts[0]! + parts[1]!]
  for (const p of parts.slice(2)) {
    const chunk: number[] = [p & 0x7f]
    for (let v = Math.floor(p / 128); v > 0; v = Math.floor(v / 128)) chunk.unshift(0x80 | (v & 0x7f))
    out.push(...chunk)
  }
  return tlv(0x06, Buffer.from(out))
}

const OID_CN = '2.5.4.3'
const OID_O = '2.5.4.10'
const OID_ECDSA_SHA256 = '1.2.840.10045.4.3.2'

/** A certificate signing request's subject: the CPO's name (O) and the charge point's identity (CN). */
export interface CsrSubject {
  organization: string
  commonName: string
}

/** A fresh ECDSA P-256 key pair for a CSR (the whitepaper's minimum is 224 bits of ECC or 2048 of RSA). */
export function newKeyPair(): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
}

/**
 * A PKCS#10 certification request (PEM) for `publicKey`, signed with `privateKey` (ecdsa-with-SHA256):
 * CertificationRequestInfo { version 0, subject, subjectPKInfo, attributes [0] {} }.
 */
export function buildCsr(subject: CsrSubject, privateKey: KeyObject, publicKey: KeyObject): string {
  const rdn = (type: string, value: string) => set(sequence(oid(type), utf8(value)))
  const name = sequence(...(subject.organization !== '' ? [rdn(OID_O, subject.organization)] : []), rdn(OID_CN, subject.commonName))
  const spki = publicKey.export({ type: 'spki', format: 'der' })
  const info = sequence(tlv(0x02, Buffer.from([0])), name, spki, Buffer.from([0xa0, 0x00]))
  // node:crypto's ECDSA signature is DER (r, s) by default: what the BIT STRING holds.
  const signature = sign('sha256', info, privateKey)
  const der = sequence(info, sequence(oid(OID_ECDSA_SHA256)), tlv(0x03, Buffer.concat([Buffer.from([0]), signature])))
  return toPem('CERTIFICATE REQUEST', der)
}

function toPem(label: string, der: Buffer): string {
  const b64 = der.toString('base64').replace(/.{1,64}/g, '$&\n')
  return `-----BEGIN ${label}-----\n${b64}-----END ${label}-----\n`
}

// ---------------------------------------------------------------- DER reading

interface Node {
  tag: number
  /** Where the element starts (its tag) and where its content starts and ends. */
  start: number
  content: number
  end: number
}

function readNode(buf: Buffer, at: number): Node {
  if (at + 2 > buf.length) throw new Error('DER: truncated')
  const tag = buf[at]!
  let len = buf[at + 1]!
  let content = at + 2
  if (len & 0x80) {
    const n = len & 0x7f
    if (n === 0 || n > 4 || content + n > buf.length) throw new Error('DER: bad length')
    len = 0
    for (let i = 0; i < n; i++) len = len * 256 + buf[content + i]!
    content += n
  }
  const end = content + len
  if (end > buf.length) throw new Error('DER: truncated')
  return { tag, start: at, content, end }
}

function children(buf: Buffer, parent: Node): Node[] {
  const out: Node[] = []
  for (let at = parent.content; at < parent.end; ) {
    const n = readNode(buf, at)
    out.push(n)
    at = n.end
  }
  return out
}

/** The DER of a certificate's issuer Name and its subjectPublicKey's bits (RFC 5280 tbsCertificate fields). */
function certFields(der: Buffer): { issuer: Buffer; publicKeyBits: Buffer } {
  const cert = readNode(der, 0)
  const tbs = children(der, cert)[0]
  if (!tbs) throw new Error('DER: no tbsCertificate')
  let f = children(der, tbs)
  // [0] EXPLICIT version is optional.
  if (f[0]?.tag === 0xa0) f = f.slice(1)
  // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
  const issuer = f[2]
  const spki = f[5]
  if (!issuer || !spki) throw new Error('DER: a tbsCertificate without issuer or subjectPublicKeyInfo')
  const bits = children(der, spki)[1]
  if (bits?.tag !== 0x03) throw new Error('DER: subjectPublicKey is not a BIT STRING')
  return { issuer: der.subarray(issuer.start, issuer.end), publicKeyBits: der.subarray(bits.content + 1, bits.end) }
}

// ---------------------------------------------------------------- certificates

/** Every PEM CERTIFICATE block of `text`, parsed; throws (naming the block) on one that is not a certificate. */
export function parseCertificates(text: string): X509Certificate[] {
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []
  return blocks.map((b, i) => {
    try {
      return new X509Certificate(b)
    } catch (err) {
      throw new Error(`certificate ${i + 1} of ${blocks.length} is not a valid X.509 certificate (${(err as Error).message})`)
    }
  })
}

export type HashAlgorithm = 'SHA256' | 'SHA384' | 'SHA512'

/** OCPP's CertificateHashDataType of a certificate, its issuer being `issuer` (itself for a root). */
export interface CertificateHashData {
  hashAlgorithm: HashAlgorithm
  issuerNameHash: string
  issuerKeyHash: string
  serialNumber: string
}

/**
 * The hash data OCPP identifies a certificate by: the hash of its issuer's DER Name, the hash of its issuer's public
 * key bits (as OCSP's CertID), and its serial number in hexadecimal without leading zeroes, lower case.
 */
export function hashData(cert: X509Certificate, issuer: X509Certificate, alg: HashAlgorithm = 'SHA256'): CertificateHashData {
  const h = (b: Buffer) => createHash(alg.toLowerCase()).update(b).digest('hex')
  return {
    hashAlgorithm: alg,
    issuerNameHash: h(certFields(cert.raw).issuer),
    issuerKeyHash: h(certFields(issuer.raw).publicKeyBits),
    serialNumber: cert.serialNumber.replace(/^0+(?=.)/, '').toLowerCase(),
  }
}

export const sameHashData = (a: CertificateHashData, b: CertificateHashData): boolean =>
  a.hashAlgorithm === b.hashAlgorithm &&
  a.issuerNameHash.toLowerCase() === b.issuerNameHash.toLowerCase() &&
  a.issuerKeyHash.toLowerCase() === b.issuerKeyHash.toLowerCase() &&
  a.serialNumber.replace(/^0+(?=.)/, '').toLowerCase() === b.serialNumber.replace(/^0+(?=.)/, '').toLowerCase()

/** Whether `cert` is signed by `issuer` (names chain and the signature verifies). */
export function issuedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return cert.checkIssued(issuer) && cert.verify(issuer.publicKey)
  } catch {
    return false
  }
}

export const selfSigned = (cert: X509Certificate): boolean => issuedBy(cert, cert)

/** Why `cert` is not valid at `now` (ms), or undefined. */
export function refuseValidity(cert: X509Certificate, now: number, what: string): string | undefined {
  if (now < Date.parse(cert.validFrom)) return `${what} is not valid before ${cert.validFrom}`
  if (now > Date.parse(cert.validTo)) return `${what} expired ${cert.validTo}`
  return undefined
}

const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2'

/** Why `leaf` cannot authenticate a TLS client: an extended key usage that leaves out clientAuth. */
export function refuseClientAuth(leaf: X509Certificate): string | undefined {
  // node names the extended key usage OIDs `keyUsage`; undefined when the certificate has none (any use).
  const eku = leaf.keyUsage as string[] | undefined
  return eku && !eku.includes(CLIENT_AUTH) ? `its extended key usage (${eku.join(', ')}) leaves out TLS client authentication` : undefined
}

/**
 * Why a certificate chain (leaf first, then the CAs that signed it, in order) cannot be trusted at `now` through
 * `anchors`, or undefined: every certificate valid now, each signed by the next, every one after the leaf a CA, and
 * the last one signed by an anchor (or an anchor itself).
 */
export function refuseChain(chain: X509Certificate[], anchors: X509Certificate[], now: number): string | undefined {
  if (chain.length === 0) return 'no certificate'
  for (const [i, c] of chain.entries()) {
    const what = i === 0 ? 'the certificate' : `CA certificate ${i + 1} of the chain`
    const why = refuseValidity(c, now, what)
    if (why) return why
    if (i > 0 && !c.ca) return `${what} is not a CA certificate`
    const next = chain[i + 1]
    if (next && !issuedBy(c, next)) return `${what} is not signed by the certificate after it in the chain`
  }
  const last = chain[chain.length - 1]!
  const trusted = anchors.some((a) => a.fingerprint256 === last.fingerprint256 || (refuseValidity(a, now, '') === undefined && issuedBy(last, a)))
  return trusted ? undefined : 'the chain does not lead to an installed CentralSystemRootCertificate (or ocpp.caFile)'
}
