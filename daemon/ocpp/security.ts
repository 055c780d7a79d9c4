/**
 * The charge point's side of the OCPP 1.6 security whitepaper: its certificates and its
 * security events.
 *
 * Files, under `<storage.dir>/ocpp-security/` (mode 0700; each written whole, atomically):
 *
 *   charge-point.pem                 the ChargePointCertificate in use (security profile 3): its private key
 *                                    and its chain, one file (0600), so key and certificate change together
 *   csr-key.pem                      the private key of the last certificate signing request, waiting for the
 *                                    CertificateSigned that certifies it (0600)
 *   central-system-root/<sha256>.pem, manufacturer-root/<sha256>.pem
 *                                    root certificates installed by InstallCertificate
 *
 * Security events (SecurityEventNotification) wait in the journal's side data (owner `ocpp-sec`:
 * `e!<n:12>` an event, `next` the counter), written before anything is sent, removed once
 * the central system answered, so an event recorded offline or just before a restart goes
 * out after the next accepted boot.
 *
 * Owns: making a key pair and its CSR (the key is made here and never leaves the gateway:
 * not logged, not sent, not in /api), checking a signed chain before it replaces anything
 * (it must certify the key of the last CSR and lead to a trusted root), the installed roots
 * and their limit, the TLS credentials of each connection, and the queue of events with
 * the dedupe of a failing connection (one event per kind of failure until a connection
 * succeeds).
 *
 * Must never: write a private key anywhere but this folder or with a mode other than 0600,
 * change anything for a certificate it refused, or let a failure to write an event stop
 * the charge point.
 */
import { createPrivateKey, type KeyObject, type X509Certificate } from 'node:crypto'
import { mkdirSync, readdirSync, readFileSync } from 'node:fs'
import { unlink } from 'node:fs/promises'
import { join } from 'node:path'
import type { Journal } from '../journal/index.js'
import { syncDir, writeAtomic } from '../journal/fsync.js'
import type { Logger } from '../log.js'
import {
  buildCsr,
  type CertificateHashData,
  hashData,
  issuedBy,
  newKeyPair,
  parseCertificates,
  refuseChain,
  refuseClientAuth,
  refuseValidity,
  sameHashData,
  selfSigned,
} from './pkix.js'

const OWNER = 'ocpp-sec'
const SECURITY_DIR = 'ocpp-security'
const CLIENT_FILE = 'charge-point.pem'
const CSR_KEY_FILE = 'csr-key.pem'
/** CertificateSignedMaxChainSize: the longest certificateChain accepted, in characters (the whitepaper's ceiling). */
export const CHAIN_MAX = 10_000
/** CertificateStoreMaxLength: at most this many root certificates installed through InstallCertificate (both kinds). */
export const STORE_MAX = 10
/** A client certificate with less than this left (or a quarter of its lifetime, if shorter) is renewed. */
const RENEW_BEFORE_MS = 30 * 86_400_000
/** At most this many security events wait for the central system; the oldest leaves first. */
const EVENTS_MAX = 1000

export type RootType = 'CentralSystemRootCertificate' | 'ManufacturerRootCertificate'
const ROOT_DIR: Record<RootType, string> = {
  CentralSystemRootCertificate: 'central-system-root',
  ManufacturerRootCertificate: 'manufacturer-root',
}

interface Root {
  type: RootType
  cert: X509Certificate
  /** Its file in the store; undefined for one of ocpp.caFile (the installer's, not the central system's to delete). */
  file?: string
}

interface ClientCredential {
  key: KeyObject
  keyPem: string
  chainPem: string
  leaf: X509Certificate
  source: 'store' | 'config'
}

export interface SecurityEvent {
  n: number
  type: string
  timestamp: string
  techInfo?: string
}

/** Why a connection attempt failed, as far as security goes: the central system refused us, or we refused its certificate. */
export type ConnectFailure = 'auth' | 'server-certificate'

export interface SecurityOptions {
  journal: Journal
  storageDir: string
  logger: Logger
  now(): number
  caFile?: string
  clientCertFile?: string
  clientKeyFile?: string
}

const pad = (n: number): string => String(n).padStart(12, '0')

export class Security {
  private readonly dir: string
  private readonly roots: Root[] = []
  private client: ClientCredential | undefined
  private csrKey: { key: KeyObject; pem: string } | undefined
  private readonly events: SecurityEvent[] = []
  private next = 1
  /** The kind of connection failure already recorded since the last successful connection. */
  private failing: ConnectFailure | undefined

  private constructor(private readonly opts: SecurityOptions) {
    this.dir = join(opts.storageDir, SECURITY_DIR)
  }

  static async open(opts: SecurityOptions): Promise<Security> {
    const s = new Security(opts)
    s.load()
    for (const [key, value] of await opts.journal.asideRead(OWNER)) {
      if (key === 'next') s.next = Math.max(s.next, Number(value))
      else if (key.startsWith('e!')) {
        const e = JSON.parse(value) as SecurityEvent
        s.events.push(e)
        s.next = Math.max(s.next, e.n + 1)
      }
    }
    s.events.sort((a, b) => a.n - b.n)
    return s
  }

  private load(): void {
    const log = this.opts.logger
    if (this.opts.caFile !== undefined) {
      // rpc.ts has read it already (an unreadable file is OCPP_CONFIG there); its certificates are anchors too.
      try {
        for (const cert of parseCertificates(readFileSync(this.opts.caFile, 'utf8'))) this.roots.push({ type: 'CentralSystemRootCertificate', cert })
      } catch (err) {
        log.error({ file: this.opts.caFile, err: (err as Error).message }, 'ocpp: ocpp.caFile holds a certificate that cannot be read')
      }
    }
    for (const type of Object.keys(ROOT_DIR) as RootType[]) {
      const dir = join(this.dir, ROOT_DIR[type])
      let names: string[] = []
      try {
        names = readdirSync(dir).filter((n) => n.endsWith('.pem'))
      } catch {
        continue
      }
      for (const name of names.sort()) {
        const file = join(dir, name)
        try {
          const [cert] = parseCertificates(readFileSync(file, 'utf8'))
          if (cert) this.roots.push({ type, cert, file })
        } catch (err) {
          log.error({ file, err: (err as Error).message }, 'ocpp: an installed root certificate cannot be read; left out')
        }
      }
    }
    const stored = this.readCredential(join(this.dir, CLIENT_FILE), join(this.dir, CLIENT_FILE), 'store')
    if (stored) this.client = stored
    else if (this.opts.clientCertFile !== undefined && this.opts.clientKeyFile !== undefined)
      this.client = this.readCredential(this.opts.clientCertFile, this.opts.clientKeyFile, 'config')
    const csrKeyFile = join(this.dir, CSR_KEY_FILE)
    try {
      const pem = readFileSync(csrKeyFile, 'utf8')
      this.csrKey = { key: createPrivateKey(pem), pem }
    } catch {
      this.csrKey = undefined
    }
  }

  /** A key and its certificate chain (one file may hold both); undefined (logged unless absent) when unusable. */
  private readCredential(certFile: string, keyFile: string, source: 'store' | 'config'): ClientCredential | undefined {
    let certText: string
    let keyText: string
    try {
      certText = readFileSync(certFile, 'utf8')
      keyText = keyFile === certFile ? certText : readFileSync(keyFile, 'utf8')
    } catch (err) {
      if (source === 'config' || (err as NodeJS.ErrnoException).code !== 'ENOENT')
        this.opts.logger.error(
          { file: certFile, err: (err as NodeJS.ErrnoException).code ?? String(err) },
          'ocpp: the client certificate cannot be read',
        )
      return undefined
    }
    try {
      const chain = parseCertificates(certText)
      const keyPem = keyText.match(/-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----\n?/)?.[0]
      if (chain.length === 0 || !keyPem) throw new Error('no certificate or no private key')
      const key = createPrivateKey(keyPem)
      if (!chain[0]!.checkPrivateKey(key)) throw new Error('the certificate is not the private key’s')
      return { key, keyPem, chainPem: chain.map((c) => c.toString()).join(''), leaf: chain[0]!, source }
    } catch (err) {
      this.opts.logger.error({ file: certFile, err: (err as Error).message }, 'ocpp: the client certificate cannot be used')
      return undefined
    }
  }

  // ---------------------------------------------------------------- connection

  /** The TLS credentials of the next connection: the installed central-system roots, and the client certificate in profile 3. */
  connection(profile: number): { ca?: string[]; cert?: string; key?: string } {
    const installed = this.roots.filter((r) => r.type === 'CentralSystemRootCertificate' && r.file).map((r) => r.cert.toString())
    return {
      ...(installed.length > 0 ? { ca: installed } : {}),
      ...(profile === 3 && this.client ? { cert: this.client.chainPem, key: this.client.keyPem } : {}),
    }
  }

  get hasClientCertificate(): boolean {
    return this.client !== undefined
  }

  /**
   * Whether the client certificate in use is near its end at `now`: less than RENEW_BEFORE_MS or a quarter of its
   * lifetime left, whichever is shorter (the charge point then asks for a new one itself).
   */
  renewalDue(now: number): boolean {
    const leaf = this.client?.leaf
    if (!leaf) return false
    const from = Date.parse(leaf.validFrom)
    const to = Date.parse(leaf.validTo)
    return to - now < Math.min(RENEW_BEFORE_MS, (to - from) / 4)
  }

  get hasCentralSystemRoot(): boolean {
    return this.roots.some((r) => r.type === 'CentralSystemRootCertificate')
  }

  /** What /api/status shows: no key, only what identifies the certificates. */
  state(): {
    clientCertificate: { subject: string; issuer: string; serialNumber: string; validTo: string; source: 'store' | 'config' } | null
    csrWaiting: boolean
    roots: { type: RootType; subject: string; validTo: string; source: 'store' | 'config' }[]
    queuedEvents: number
  } {
    const c = this.client
    return {
      clientCertificate: c
        ? { subject: c.leaf.subject, issuer: c.leaf.issuer, serialNumber: c.leaf.serialNumber, validTo: c.leaf.validTo, source: c.source }
        : null,
      csrWaiting: this.csrKey !== undefined,
      roots: this.roots.map((r) => ({ type: r.type, subject: r.cert.subject, validTo: r.cert.validTo, source: r.file ? 'store' : 'config' })),
      queuedEvents: this.events.length,
    }
  }

  // ---------------------------------------------------------------- the charge point's certificate

  /**
   * A new key pair and its CSR (subject O = `organization`, CN = `commonName`): the key is kept (0600) until a
   * CertificateSigned certifies it, replacing the key of an earlier CSR; the CSR is returned (PEM).
   */
  async newCsr(organization: string, commonName: string): Promise<string> {
    const { privateKey, publicKey } = newKeyPair()
    const csr = buildCsr({ organization, commonName }, privateKey, publicKey)
    const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
    this.ensureDir()
    await writeAtomic(join(this.dir, CSR_KEY_FILE), pem, 0o600)
    this.csrKey = { key: privateKey, pem }
    return csr
  }

  /**
   * CertificateSigned: the chain (leaf first) is installed as the charge point's certificate when its leaf certifies
   * the key of the last CSR and the chain leads to a central-system root; otherwise nothing changes and `why` says
   * what was wrong.
   */
  async certificateSigned(chainText: string): Promise<{ ok: true; leaf: X509Certificate } | { ok: false; why: string }> {
    if (chainText.length > CHAIN_MAX)
      return { ok: false, why: `the chain is ${chainText.length} characters, over CertificateSignedMaxChainSize ${CHAIN_MAX}` }
    let chain: X509Certificate[]
    try {
      chain = parseCertificates(chainText)
    } catch (err) {
      return { ok: false, why: (err as Error).message }
    }
    if (chain.length === 0) return { ok: false, why: 'no PEM certificate in certificateChain' }
    const pending = this.csrKey
    if (!pending) return { ok: false, why: 'no certificate signing request of this charge point is waiting for its certificate' }
    const leaf = chain[0]!
    if (!leaf.checkPrivateKey(pending.key))
      return { ok: false, why: "the certificate is not for the key of this charge point's last certificate signing request" }
    const why = refuseClientAuth(leaf) ?? refuseChain(chain, this.anchors('CentralSystemRootCertificate'), this.opts.now())
    if (why) return { ok: false, why }
    const chainPem = chain.map((c) => c.toString()).join('')
    this.ensureDir()
    await writeAtomic(join(this.dir, CLIENT_FILE), pending.pem + chainPem, 0o600)
    this.client = { key: pending.key, keyPem: pending.pem, chainPem, leaf, source: 'store' }
    this.csrKey = undefined
    await unlink(join(this.dir, CSR_KEY_FILE)).catch(() => undefined)
    await syncDir(this.dir).catch(() => undefined)
    return { ok: true, leaf }
  }

  // ---------------------------------------------------------------- root certificates

  private anchors(type: RootType): X509Certificate[] {
    return this.roots.filter((r) => r.type === type).map((r) => r.cert)
  }

  /** InstallCertificate: one self-signed CA certificate, valid now; `Rejected` (why) otherwise, `Failed` when it cannot be written. */
  async install(type: RootType, pem: string): Promise<{ status: 'Accepted' | 'Rejected' | 'Failed'; why?: string; cert?: X509Certificate }> {
    let certs: X509Certificate[]
    try {
      certs = parseCertificates(pem)
    } catch (err) {
      return { status: 'Rejected', why: (err as Error).message }
    }
    if (certs.length !== 1) return { status: 'Rejected', why: `${certs.length} PEM certificates where one root certificate was expected` }
    const cert = certs[0]!
    const why =
      refuseValidity(cert, this.opts.now(), 'the certificate') ??
      (!cert.ca ? 'not a CA certificate' : !selfSigned(cert) ? 'not self-signed: a root certificate is signed by its own key' : undefined)
    if (why) return { status: 'Rejected', why }
    if (this.roots.some((r) => r.type === type && r.cert.fingerprint256 === cert.fingerprint256)) return { status: 'Accepted', cert }
    if (this.roots.filter((r) => r.file).length >= STORE_MAX)
      return { status: 'Rejected', why: `${STORE_MAX} root certificates are installed already (CertificateStoreMaxLength)` }
    const dir = join(this.dir, ROOT_DIR[type])
    const file = join(dir, `${cert.fingerprint256.replace(/:/g, '').toLowerCase()}.pem`)
    try {
      this.ensureDir()
      mkdirSync(dir, { recursive: true, mode: 0o700 })
      await writeAtomic(file, cert.toString(), 0o600)
    } catch (err) {
      return { status: 'Failed', why: (err as Error).message }
    }
    this.roots.push({ type, cert, file })
    return { status: 'Accepted', cert }
  }

  /** The certificate that issued `cert`: itself for a self-signed one, else one of the known roots, else undefined. */
  private issuerOf(cert: X509Certificate): X509Certificate | undefined {
    return selfSigned(cert) ? cert : this.roots.find((r) => r.cert !== cert && issuedBy(cert, r.cert))?.cert
  }

  /**
   * GetInstalledCertificateIds: the hash data of every root of `type` (those of ocpp.caFile included; one of its
   * intermediates whose issuer is not known here has no issuerKeyHash to give and is left out).
   */
  installedIds(type: RootType): CertificateHashData[] {
    return this.roots.flatMap((r) => {
      const issuer = r.type === type ? this.issuerOf(r.cert) : undefined
      return issuer ? [hashData(r.cert, issuer)] : []
    })
  }

  /**
   * DeleteCertificate: `NotFound` for no such root; `Failed` for one of ocpp.caFile (the installer's file) and for the
   * last central-system root while the connection needs one (security profile 2 or 3).
   */
  async delete(
    hd: CertificateHashData,
    profile: number,
  ): Promise<{ status: 'Accepted' | 'Failed' | 'NotFound'; why?: string; cert?: X509Certificate }> {
    const root = this.roots.find((r) => {
      const issuer = this.issuerOf(r.cert)
      return issuer !== undefined && sameHashData(hashData(r.cert, issuer, hd.hashAlgorithm), hd)
    })
    if (!root) return { status: 'NotFound' }
    if (!root.file) return { status: 'Failed', why: 'a certificate of ocpp.caFile (the installer’s file) is not deleted over OCPP' }
    if (root.type === 'CentralSystemRootCertificate' && profile >= 2 && this.anchors('CentralSystemRootCertificate').length === 1)
      return { status: 'Failed', why: `the last CentralSystemRootCertificate: security profile ${profile} needs one to connect` }
    try {
      await unlink(root.file)
      await syncDir(join(this.dir, ROOT_DIR[root.type]))
    } catch (err) {
      return { status: 'Failed', why: (err as Error).message }
    }
    this.roots.splice(this.roots.indexOf(root), 1)
    return { status: 'Accepted', cert: root.cert }
  }

  private ensureDir(): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 })
  }

  // ---------------------------------------------------------------- security events

  /** Keeps a security event on disk until the central system has it (SecurityEventNotification). */
  async record(type: string, techInfo?: string): Promise<void> {
    const e: SecurityEvent = {
      n: this.next,
      type: type.slice(0, 50),
      timestamp: new Date(this.opts.now()).toISOString(),
      ...(techInfo ? { techInfo: techInfo.slice(0, 255) } : {}),
    }
    const dropped = this.events.length >= EVENTS_MAX ? this.events.slice(0, this.events.length - EVENTS_MAX + 1) : []
    await this.opts.journal.asideWrite(OWNER, [
      ...dropped.map((d) => ({ key: `e!${pad(d.n)}`, value: null })),
      { key: `e!${pad(e.n)}`, value: JSON.stringify(e) },
      { key: 'next', value: String(e.n + 1) },
    ])
    if (dropped.length > 0) {
      this.events.splice(0, dropped.length)
      this.opts.logger.warn({ dropped: dropped.length }, 'ocpp: security events dropped (the oldest) to keep at most 1000 waiting')
    }
    this.events.push(e)
    this.next = e.n + 1
    this.opts.logger.info({ type: e.type, techInfo: e.techInfo }, 'ocpp: security event')
  }

  /** A connection attempt failed: one event per kind of failure until a connection succeeds. */
  async connectFailed(kind: ConnectFailure, detail: string): Promise<void> {
    if (this.failing === kind) return
    this.failing = kind
    await this.record(kind === 'auth' ? 'FailedToAuthenticateAtCentralSystem' : 'InvalidCentralSystemCertificate', detail)
  }

  connected(): void {
    this.failing = undefined
  }

  /** The oldest event waiting for the central system. */
  firstEvent(): SecurityEvent | undefined {
    return this.events[0]
  }

  /** The central system has the event: it leaves the queue (on disk first). */
  async sent(e: SecurityEvent): Promise<void> {
    await this.opts.journal.asideWrite(OWNER, [{ key: `e!${pad(e.n)}`, value: null }])
    const i = this.events.findIndex((x) => x.n === e.n)
    if (i >= 0) this.events.splice(i, 1)
  }
}
