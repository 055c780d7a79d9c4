/**
 * Security profile 3 and the OCPP 1.6 security whitepaper (test/helpers/ocpp-rig.ts on a real journal, ocpp-rpc's
 * strict central system on an https server that asks for client certificates, a throw-away PKI made by openssl):
 * - ExtendedTriggerMessage SignChargePointCertificate → SignCertificate with a CSR made on the gateway (checked by
 *   `openssl req -verify`; its key 0600 under storage.dir, never logged, sent or shown);
 * - CertificateSigned: a chain that does not lead to the roots, one for another key, a server certificate, garbage,
 *   an oversized chain are refused and change nothing; the CA's signature of the CSR (through an intermediate) is
 *   installed; profile 3 from clientCertFile, and a renewal asked for by the charge point itself near the end;
 * - SecurityProfile: never lowered, raised to 3 only with the certificate, then the connection is made with it (the
 *   central system sees the certificate's CN and no password), also after a restart;
 * - InstallCertificate, GetInstalledCertificateIds (hash data checked against openssl's OCSP CertID),
 *   DeleteCertificate and CertificateStoreMaxLength;
 * - SecurityEventNotification for the startup, a reset, a certificate changed, a refused connection (once per
 *   failure, sent when connected again), kept in the journal while the central system is away;
 * - the config checks of a security profile.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { validateConfig } from '../daemon/config.js'
import { siteConfig } from './engine-fixtures.js'
import { type Csms, startCsms } from './helpers/csms.js'
import { waitFor } from './helpers/e2e-kit.js'
import { OcppRig } from './helpers/ocpp-rig.js'
import { issueEc, makePki, openssl, signCsrFile } from './helpers/pki.js'

const dir = mkdtempSync(join(tmpdir(), 'outpost-ocpp-sec-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const pki = makePki(dir)
const p = (f: string) => join(dir, f)
const ossl = (...args: string[]) => openssl(dir, ...args)
writeFileSync(p('ca.ext'), 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n')
// An intermediate CA under the test CA: the charge point's certificate comes with it in its chain.
issueEc(dir, 'sub', '/CN=Outpost Test Sub CA', pki.ca, p('ca.key'), p('ca.ext'))
// A server certificate for 127.0.0.1 from a CA the charge point does not trust: a central system it must refuse.
issueEc(dir, 'rogue', '/CN=127.0.0.1', pki.otherCa, p('other.key'), p('server.ext'))

/** The CSR signed by `ca` (a clientAuth certificate, 2 days; `ext` another extensions file). */
function signCsr(csr: string, ca: string, caKey: string, out: string, ext = 'client.ext'): string {
  writeFileSync(p(`${out}.csr`), csr)
  return readFileSync(signCsrFile(dir, p(`${out}.csr`), ca, caKey, p(ext), p(`${out}.crt`)), 'utf8')
}

/** A self-signed EC root certificate (fast to make). */
function makeRoot(name: string): string {
  ossl(
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-days',
    '2',
    '-subj',
    `/CN=${name}`,
    '-keyout',
    p(`${name}.key`),
    '-out',
    p(`${name}.crt`),
  )
  return readFileSync(p(`${name}.crt`), 'utf8')
}

const events = (csms: Csms, type?: string) =>
  csms
    .of('SecurityEventNotification')
    .map((c) => c.params)
    .filter((e) => type === undefined || e.type === type)
const key = async (csms: Csms, k: string) =>
  ((await csms.call('GetConfiguration', { key: [k] })).configurationKey as { key: string; value: string }[])[0]?.value

t.test('a CSR made on the gateway, a signed certificate checked and installed, security profile 3', async (t) => {
  const tls = { key: readFileSync(pki.serverKey), cert: readFileSync(pki.serverCert), clientCa: readFileSync(pki.ca), requireClientCert: false }
  const outer = t
  const csms = await startCsms(t, { password: 'secret-pw', tls })
  const ocpp = { url: csms.url, password: 'secret-pw', caFile: pki.ca }
  // The rig's clock stands still: an hour ahead, every certificate made during the test is valid on it.
  const at = Date.now() + 3_600_000
  let rig = await OcppRig.open(t, csms, { at, ocpp })
  const store = join(rig.dir, 'storage', 'ocpp-security')
  await rig.online()
  await csms.waitCall('SecurityEventNotification', (c) => c.params.type === 'StartupOfTheDevice', 'the startup event')
  t.equal(await key(csms, 'SecurityProfile'), '2', 'wss:// with a password is profile 2')
  t.equal(await key(csms, 'CertificateSignedMaxChainSize'), '10000')
  t.equal(await key(csms, 'CertificateStoreMaxLength'), '10')
  t.equal(await key(csms, 'AdditionalRootCertificateCheck'), 'false')
  t.equal(csms.peers.at(-1)?.password, 'secret-pw', 'profile 2: Basic auth')
  t.equal(csms.peers.at(-1)?.certCn, undefined, 'profile 2: no client certificate')

  let csr = ''
  await t.test('ExtendedTriggerMessage SignChargePointCertificate → SignCertificate with a CSR verified by openssl', async (t) => {
    t.same(
      await csms.call('ExtendedTriggerMessage', { requestedMessage: 'SignChargePointCertificate' }),
      { status: 'Rejected' },
      'no CpoName yet: the subject would lack its O',
    )
    t.same(await csms.call('ChangeConfiguration', { key: 'CpoName', value: 'Outpost Test CPO' }), { status: 'Accepted' })
    t.same(await csms.call('ExtendedTriggerMessage', { requestedMessage: 'SignChargePointCertificate' }), { status: 'Accepted' })
    csr = (await csms.waitCall('SignCertificate', undefined, 'a SignCertificate')).params.csr as string
    writeFileSync(p('gw.csr'), csr)
    const text = ossl('req', '-in', p('gw.csr'), '-verify', '-noout', '-subject', '-text')
    t.match(text, /subject=O = Outpost Test CPO, CN = outpost-rig/, 'O = CpoName, CN = the identity')
    t.match(text, /NIST CURVE: P-256/, 'an ECDSA P-256 key')
    t.match(text, /Signature Algorithm: ecdsa-with-SHA256/)
    t.same(
      await csms.call('ExtendedTriggerMessage', { requestedMessage: 'Heartbeat' }),
      { status: 'Accepted' },
      'the other triggers as TriggerMessage',
    )
    t.same(await csms.call('ExtendedTriggerMessage', { requestedMessage: 'FirmwareStatusNotification' }), { status: 'NotImplemented' })
    const mode = statSync(join(store, 'csr-key.pem')).mode & 0o777
    t.equal(mode, 0o600, 'the private key file is 0600')
    t.equal(statSync(store).mode & 0o777, 0o700, 'its folder 0700')
  })

  const keyPem = () => readFileSync(join(store, 'csr-key.pem'), 'utf8')
  const secretOf = (pem: string) => pem.split('\n').slice(1, 3).join('')
  const pending = secretOf(keyPem())

  await t.test('a certificate that does not chain, for another key, garbage, oversized: Rejected, nothing changed', async (t) => {
    const signed = (chain: string) => csms.call('CertificateSigned', { certificateChain: chain })
    const foreign = signCsr(csr, pki.otherCa, p('other.key'), 'foreign')
    t.same(await signed(foreign), { status: 'Rejected' }, 'signed by a CA that is not a root here')
    t.same(await signed(readFileSync(pki.clientCert, 'utf8')), { status: 'Rejected' }, "the right CA's certificate for another key")
    const leafOnly = signCsr(csr, p('sub.crt'), p('sub.key'), 'leaf-only')
    t.same(await signed(leafOnly), { status: 'Rejected' }, 'an intermediate missing from the chain')
    t.same(await signed('-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n'), { status: 'Rejected' }, 'garbage PEM')
    t.same(await signed('no PEM at all'), { status: 'Rejected' }, 'no PEM block')
    const serverOnly = signCsr(csr, p('sub.crt'), p('sub.key'), 'server-only', 'server.ext')
    t.same(await signed(serverOnly + readFileSync(p('sub.crt'), 'utf8')), { status: 'Rejected' }, 'a server certificate, not a client one')
    const reply = await csms.raw(JSON.stringify([2, 'big-chain', 'CertificateSigned', { certificateChain: 'A'.repeat(10_001) }]), 'big-chain')
    t.equal(reply[0], 4, 'a chain over CertificateSignedMaxChainSize: CALLERROR')
    t.equal(reply[2], 'PropertyConstraintViolation', reply[3] as string)
    t.equal(rig.cp.state().security?.clientCertificate, null, 'no client certificate')
    t.equal(rig.cp.state().security?.csrWaiting, true, 'the CSR still waits')
    t.notOk(existsSync(join(store, 'charge-point.pem')), 'nothing installed')
    t.equal(secretOf(keyPem()), pending, 'the key of the CSR unchanged')
    await waitFor(() => events(csms, 'InvalidChargePointCertificate').length === 6, 'an InvalidChargePointCertificate event per refusal')
    t.match(
      rig.lines.filter((l) => l.msg === 'ocpp: CertificateSigned rejected; the certificate in use stays').map((l) => l.why),
      [
        /does not lead to an installed CentralSystemRootCertificate/,
        /not for the key of this charge point's last certificate signing request/,
        /does not lead to an installed CentralSystemRootCertificate/,
        /certificate 1 of 1 is not a valid X.509 certificate/,
        /no PEM certificate/,
        /extended key usage \(1.3.6.1.5.5.7.3.1\) leaves out TLS client authentication/,
      ],
      'each refused for its reason',
    )
    t.same(await csms.call('ChangeConfiguration', { key: 'SecurityProfile', value: '3' }), { status: 'Rejected' }, 'profile 3 needs a certificate')
    t.same(await csms.call('ChangeConfiguration', { key: 'SecurityProfile', value: '1' }), { status: 'Rejected' }, 'never lowered')
    t.equal(await key(csms, 'SecurityProfile'), '2')
  })

  await t.test('the CA signature of the CSR (leaf and intermediate) installed; profile 3 connects with it', async (t) => {
    const leaf = signCsr(csr, p('sub.crt'), p('sub.key'), 'gw')
    t.same(await csms.call('CertificateSigned', { certificateChain: leaf + readFileSync(p('sub.crt'), 'utf8') }), { status: 'Accepted' })
    t.equal(statSync(join(store, 'charge-point.pem')).mode & 0o777, 0o600, 'key and chain in one 0600 file')
    t.notOk(existsSync(join(store, 'csr-key.pem')), 'the CSR key became the certificate key')
    t.match(rig.cp.state().security?.clientCertificate, { subject: /CN=outpost-rig/, source: 'store' })
    await csms.waitCall('SecurityEventNotification', (c) => c.params.type === 'ReconfigurationOfSecurityParameters', 'the certificate change event')
    const before = csms.connections
    t.same(await csms.call('ChangeConfiguration', { key: 'SecurityProfile', value: '3' }), { status: 'Accepted' })
    await waitFor(() => csms.connections > before && rig.cp.state().accepted, 'reconnected with profile 3')
    t.equal(csms.peers.at(-1)?.certCn, 'outpost-rig', 'the central system sees the client certificate')
    t.equal(csms.peers.at(-1)?.password, undefined, 'no Basic auth in profile 3')
    t.same(await csms.call('ChangeConfiguration', { key: 'SecurityProfile', value: '2' }), { status: 'Rejected' }, 'never lowered')
  })

  await t.test('a refused connection: one security event, sent once connected again', async (t) => {
    await csms.down()
    // The central system now trusts only another CA for client certificates: the TLS handshake refuses the gateway's.
    tls.clientCa = readFileSync(pki.otherCa)
    tls.requireClientCert = true
    await csms.up()
    await waitFor(
      () => rig.lines.filter((l) => l.msg === "ocpp: the central system refused this charge point's TLS certificate").length >= 2,
      'refused twice',
    )
    await csms.down()
    tls.clientCa = readFileSync(pki.ca)
    await csms.up()
    await rig.online()
    const e = await csms.waitCall('SecurityEventNotification', (c) => c.params.type === 'FailedToAuthenticateAtCentralSystem', 'the failure event')
    // Under TLS 1.3 node's server resets the connection after the handshake rather than alerting: either is a refusal.
    t.match(e.params.techInfo, /ALERT_UNKNOWN_CA|reset after the TLS handshake, before the upgrade was answered/, e.params.techInfo as string)
    await new Promise((r) => setTimeout(r, 500))
    t.equal(events(csms, 'FailedToAuthenticateAtCentralSystem').length, 1, 'one event for the whole failing streak')
    t.equal(csms.peers.at(-1)?.certCn, 'outpost-rig')

    // A central system whose certificate does not lead to the charge point's roots is refused, one event.
    await csms.down()
    const good = { key: tls.key, cert: tls.cert }
    tls.key = readFileSync(p('rogue.key'))
    tls.cert = readFileSync(p('rogue.crt'))
    await csms.up()
    const refusedCert = "ocpp: the central system's TLS certificate was refused"
    await waitFor(() => rig.lines.filter((l) => l.msg === refusedCert).length >= 2, 'its certificate refused twice')
    await csms.down()
    Object.assign(tls, good)
    await csms.up()
    await rig.online()
    const bad = await csms.waitCall('SecurityEventNotification', (c) => c.params.type === 'InvalidCentralSystemCertificate', 'the certificate event')
    t.match(bad.params.techInfo, /^UNABLE_TO_VERIFY_LEAF_SIGNATURE/, bad.params.techInfo as string)
    await new Promise((r) => setTimeout(r, 500))
    t.equal(events(csms, 'InvalidCentralSystemCertificate').length, 1, 'one event for the whole failing streak')
  })

  await t.test('after a restart (the central system away meanwhile): profile 3 kept, the events queued on disk', async (t) => {
    await rig.close()
    await csms.down()
    const startups = events(csms, 'StartupOfTheDevice').length
    rig = await OcppRig.open(outer, csms, { dir: rig.dir, at, ocpp })
    await new Promise((r) => setTimeout(r, 300))
    await rig.close()
    rig = await OcppRig.open(outer, csms, { dir: rig.dir, at, ocpp })
    await csms.up()
    await rig.online()
    await waitFor(() => events(csms, 'StartupOfTheDevice').length === startups + 2, 'both startups delivered once connected')
    t.equal(await key(csms, 'SecurityProfile'), '3')
    t.equal(csms.peers.at(-1)?.certCn, 'outpost-rig', 'connected with the installed certificate')
    t.same(await csms.call('Reset', { type: 'Soft' }), { status: 'Accepted' })
    await csms.waitCall('SecurityEventNotification', (c) => c.params.type === 'ResetOrReboot', 'the reset event')
  })

  await t.test('InstallCertificate, GetInstalledCertificateIds, DeleteCertificate', async (t) => {
    const ids = async (certificateType: string) => csms.call('GetInstalledCertificateIds', { certificateType })
    t.same(await ids('ManufacturerRootCertificate'), { status: 'NotFound' })
    const fromFile = (await ids('CentralSystemRootCertificate')).certificateHashData as Record<string, string>[]
    t.equal(fromFile.length, 1, 'the root of ocpp.caFile')
    // openssl's OCSP CertID of the CA (issued by itself): the same issuerNameHash, issuerKeyHash and serial.
    ossl('ocsp', '-issuer', pki.ca, '-sha256', '-cert', pki.ca, '-no_nonce', '-reqout', p('req.der'))
    const certId = ossl('ocsp', '-reqin', p('req.der'), '-req_text')
    const field = (name: string) => certId.match(new RegExp(`${name}: ([0-9A-F]+)`))![1]!.toLowerCase()
    t.same(fromFile[0], {
      hashAlgorithm: 'SHA256',
      issuerNameHash: field('Issuer Name Hash'),
      issuerKeyHash: field('Issuer Key Hash'),
      serialNumber: field('Serial Number').replace(/^0+/, ''),
    })
    const install = (certificate: string, certificateType = 'CentralSystemRootCertificate') =>
      csms.call('InstallCertificate', { certificateType, certificate })
    const root2 = makeRoot('root2')
    t.same(await install(root2), { status: 'Accepted' })
    t.same(await install(root2), { status: 'Accepted' }, 'again: nothing new')
    t.same(await install('-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n'), { status: 'Rejected' }, 'garbage')
    t.same(await install(readFileSync(pki.serverCert, 'utf8')), { status: 'Rejected' }, 'not a CA')
    t.same(await install(readFileSync(p('sub.crt'), 'utf8')), { status: 'Rejected' }, 'a CA that is not a root')
    t.same(await install(root2 + readFileSync(pki.ca, 'utf8')), { status: 'Rejected' }, 'two certificates')
    const listed = (await ids('CentralSystemRootCertificate')).certificateHashData as Record<string, string>[]
    t.equal(listed.length, 2)
    t.same(await install(makeRoot('maker'), 'ManufacturerRootCertificate'), { status: 'Accepted' })
    t.equal(((await ids('ManufacturerRootCertificate')).certificateHashData as unknown[]).length, 1)
    for (let i = 3; i <= 10; i++) t.same(await install(makeRoot(`root${i}`)), { status: 'Accepted' }, `root ${i}`)
    t.same(await install(makeRoot('root11')), { status: 'Rejected' }, 'past CertificateStoreMaxLength (10 installed)')
    t.equal(((await ids('CentralSystemRootCertificate')).certificateHashData as unknown[]).length, 10, 'nothing changed')
    const del = (h: Record<string, string>) => csms.call('DeleteCertificate', { certificateHashData: h })
    t.same(await del(fromFile[0]!), { status: 'Failed' }, "ocpp.caFile's root is the installer's")
    t.same(await del({ ...listed[1]!, serialNumber: 'abcdef' }), { status: 'NotFound' })
    t.same(await del(listed[1]!), { status: 'Accepted' })
    t.equal(((await ids('CentralSystemRootCertificate')).certificateHashData as unknown[]).length, 9)
  })

  await t.test('the private keys never leave the gateway', async (t) => {
    const stored = readFileSync(join(store, 'charge-point.pem'), 'utf8')
    const secret = secretOf(stored.slice(stored.indexOf('-----BEGIN PRIVATE KEY-----')))
    t.ok(secret.length > 40)
    for (const [what, text] of [
      ['the log', JSON.stringify(rig.lines)],
      ['the frames to the central system', csms.frames.join('\n')],
      ['the state /api/status shows', JSON.stringify(rig.cp.state())],
    ] as const) {
      t.notOk(text.includes(secret), `not in ${what}`)
      t.notOk(text.includes(pending), `the first key not in ${what}`)
      t.notOk(text.includes('PRIVATE KEY'), `no private key in ${what}`)
    }
  })
  t.equal(csms.violations.length, 0, 'no strict-mode violation')
  // ocpp-rpc counts the answer to a frame it did not send itself (the raw oversized chain) as a bad message.
  t.same(
    csms.badMessages.filter((b) => (JSON.parse(String((b as { buffer: Buffer }).buffer)) as unknown[])[1] !== 'big-chain'),
    [],
    'no other bad message',
  )
  t.equal(csms.badMessages.length, 1, 'the answer to the raw frame')
})

t.test('profile 3 from the config file: clientCertFile and clientKeyFile', async (t) => {
  const tls = { key: readFileSync(pki.serverKey), cert: readFileSync(pki.serverCert), clientCa: readFileSync(pki.ca), requireClientCert: true }
  const csms = await startCsms(t, { password: 'unused', tls })
  const ocpp = { url: csms.url, caFile: pki.ca, clientCertFile: pki.clientCert, clientKeyFile: pki.clientKey }
  const rig = await OcppRig.open(t, csms, { at: Date.now() + 3_600_000, ocpp })
  await rig.online()
  t.equal(await key(csms, 'SecurityProfile'), '3', 'wss:// with a client certificate and no password is profile 3')
  t.same(csms.peers.at(-1), { certCn: 'lot-7', certSerial: csms.peers.at(-1)?.certSerial }, 'the certificate of the file, no password')
  t.match(rig.cp.state().security?.clientCertificate, { subject: /CN=lot-7/, source: 'config' })

  // Near its end (a quarter of its 2 days left), the charge point asks for a new certificate itself, once a day.
  t.same(await csms.call('ChangeConfiguration', { key: 'CpoName', value: 'Outpost Test CPO' }), { status: 'Accepted' })
  await rig.advance(60_000)
  t.equal(csms.of('SignCertificate').length, 0, 'not yet: most of its lifetime left')
  rig.now = Date.parse(rig.cp.state().security!.clientCertificate!.validTo) - 11 * 3_600_000
  await rig.advance(1000)
  const req = await csms.waitCall('SignCertificate', undefined, 'a SignCertificate of its own accord')
  writeFileSync(p('renew.csr'), req.params.csr as string)
  t.match(ossl('req', '-in', p('renew.csr'), '-verify', '-noout', '-subject'), /subject=O = Outpost Test CPO, CN = outpost-rig/)
  await rig.advance(3_600_000)
  t.equal(csms.of('SignCertificate').length, 1, 'not again within the day')
  await rig.advance(86_400_000)
  await waitFor(() => csms.of('SignCertificate').length === 2, 'asked again the next day')
  await rig.close()

  // A key that is not the certificate's: the certificate is not used, said at error level; the central system refuses.
  const wrong = await OcppRig.open(t, csms, { at: Date.now() + 3_600_000, ocpp: { ...ocpp, clientKeyFile: pki.serverKey } })
  t.match(
    wrong.lines.find((l) => l.msg === 'ocpp: the client certificate cannot be used'),
    { level: 'error', err: /not the private key/ },
  )
  t.ok(wrong.lines.some((l) => l.msg === 'ocpp: security profile 3 without a client certificate: the central system will refuse the connection'))
  await waitFor(() => wrong.lines.some((l) => l.msg === "ocpp: the central system refused this charge point's TLS certificate"), 'refused')
  t.notOk(wrong.cp.state().accepted)
  t.equal(csms.violations.length, 0, 'no strict-mode violation')
})

t.test('the config checks of a security profile', async (t) => {
  const base = JSON.parse(JSON.stringify(siteConfig())) as Record<string, unknown>
  const check = (ocpp: Record<string, unknown>) => validateConfig({ ...base, ocpp: { url: 'ws://127.0.0.1:1/ocpp', identity: 'x', ...ocpp } })
  const problems = (ocpp: Record<string, unknown>) => {
    const r = check(ocpp)
    return r.ok ? [] : r.problems.map((q) => `${q.pointer}: ${q.message}`)
  }
  t.match(problems({ securityProfile: 3 }), [/securityProfile: security profile 3 needs a wss:\/\/ url/])
  t.match(problems({ securityProfile: 1 }), [/security profile 1 is Basic auth: it needs ocpp.password/])
  t.match(problems({ url: 'wss://h/ocpp', clientCertFile: '/x.pem' }), [/clientCertFile: clientCertFile and clientKeyFile go together/])
  t.same(problems({ url: 'wss://h/ocpp', securityProfile: 3, clientCertFile: '/x.pem', clientKeyFile: '/x.key' }), [])
  t.same(problems({ securityProfile: 1, password: 'p' }), [])
})
