/**
 * A throw-away PKI made with openssl for the TLS tests (the MQTT uplink's mqtts:// and the
 * OCPP charge point's wss://): a CA, a server certificate for 127.0.0.1 and localhost, a
 * client certificate, and an unrelated second CA a client must refuse.
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
  ossl(
    'x509',
    '-req',
    '-in',
    p('server.csr'),
    '-CA',
    p('ca.crt'),
    '-CAkey',
    p('ca.key'),
    '-CAcreateserial',
    '-days',
    '2',
    '-extfile',
    p('server.ext'),
    '-out',
    p('server.crt'),
  )
  writeFileSync(p('client.ext'), 'extendedKeyUsage=clientAuth\n')
  ossl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=lot-7', '-keyout', p('client.key'), '-out', p('client.csr'))
  ossl(
    'x509',
    '-req',
    '-in',
    p('client.csr'),
    '-CA',
    p('ca.crt'),
    '-CAkey',
    p('ca.key'),
    '-CAcreateserial',
    '-days',
    '2',
    '-extfile',
    p('client.ext'),
    '-out',
    p('client.crt'),
  )
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
