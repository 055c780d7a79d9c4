/**
 * A throw-away PKI made with openssl for the TLS tests (the MQTT uplink's mqtts:// and the
 * OCPP charge point's wss://): a CA, a server certificate for 127.0.0.1 and localhost, a
 * client certificate, and an unrelated second CA a client must refuse; and the openssl steps the
 * OCPP security test signs its own certificates with (an intermediate CA, the gateway's CSR).
 */
import { execFileSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'

export interface Pki {
  ca: string
  serverCert: string
  serverKey: string
  clientCert: string
  clientKey: string
  otherCa: string
}

/** A throw-away CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl. */
export function makePki(dir: string): Pki {
  const p = (f: string) => join(dir, f)
  const ossl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
  ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=Outpost Test CA', '-keyout', p('ca.key'), '-out', p('ca.crt'))
  writeFileSync(p('server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n')
  ossl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', p('server.key'), '-out', p('server.csr'))
  signCsrFile(dir, p('server.csr'), p('ca.crt'), p('ca.key'), p('server.ext'), p('server.crt'))
  writeFileSync(p('client.ext'), 'extendedKeyUsage=clientAuth\n')
  ossl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=lot-7', '-keyout', p('client.key'), '-out', p('client.csr'))
  signCsrFile(dir, p('client.csr'), p('ca.crt'), p('ca.key'), p('client.ext'), p('client.crt'))
  // A second, unrelated CA: the uplink must refuse a broker it signed nothing for.
  ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=Other CA', '-keyout', p('other.key'), '-out', p('other.crt'))
  return {
    ca: p('ca.crt'),
    serverCert: p('server.crt'),
    serverKey: p('server.key'),
    clientCert: p('client.crt'),
    clientKey: p('client.key'),
    otherCa: p('other.crt'),
  }
}

/** openssl run in `dir`; its output. */
export function openssl(dir: string, ...args: string[]): string {
  return execFileSync('openssl', args, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Signs a CSR file with a CA (its certificate and key files) for 2 days, with the extensions of `extFile`; returns `out`. */
export function signCsrFile(dir: string, csr: string, ca: string, caKey: string, extFile: string, out: string): string {
  openssl(dir, 'x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-days', '2', '-extfile', extFile, '-out', out)
  return out
}

/** A new ECDSA P-256 key `<name>.key` and its certificate `<name>.crt` for `subject`, signed by the CA. */
export function issueEc(dir: string, name: string, subject: string, ca: string, caKey: string, extFile: string): { key: string; cert: string } {
  const p = (f: string) => join(dir, f)
  openssl(
    dir,
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-subj',
    subject,
    '-keyout',
    p(`${name}.key`),
    '-out',
    p(`${name}.csr`),
  )
  return { key: p(`${name}.key`), cert: signCsrFile(dir, p(`${name}.csr`), ca, caKey, extFile, p(`${name}.crt`)) }
}
