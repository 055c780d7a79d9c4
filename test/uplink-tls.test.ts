import t from 'tap'
import { execFileSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import pino from 'pino'
import { openTestLog } from './helpers/test-log.js'
import { startMosquitto } from './helpers/mosquitto.js'
import { bodies } from './helpers/memory-log.js'
import { makeUplink, tempDir, uplinkConfig, waitFor } from './helpers/uplink-kit.js'
import { ReconcilingConsumer } from '../daemon/uplink/consumer.js'
import { verifyChain } from '../daemon/uplink/chain.js'
import { readJsonLines } from './helpers/uplink-kit.js'
import { makePki } from './helpers/pki.js'

function capturingLogger() {
  const lines: string[] = []
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString())
      cb()
    },
  })
  return { logger: pino({ level: 'trace' }, stream), text: () => lines.join('') }
}

t.test('mqtts:// with a test CA, client certificate, and a password file; secrets never logged', async (t) => {
  const dir = tempDir(t)
  const pki = makePki(dir)
  const password = 's3cret-Pa55word'
  const pwFile = join(dir, 'mosquitto.passwd')
  writeFileSync(pwFile, '')
  execFileSync('mosquitto_passwd', ['-b', pwFile, 'lot-7', password])
  const broker = await startMosquitto(t, {
    tls: { caFile: pki.ca, certFile: pki.serverCert, keyFile: pki.serverKey, requireCertificate: true },
    extraConfig: [`password_file ${pwFile}`],
  })
  // The mosquitto.conf above says allow_anonymous true, but a password_file makes it check the given credentials.
  const passwordFile = join(dir, 'uplink.pw')
  writeFileSync(passwordFile, password + '\n')
  const log = await openTestLog(t)
  await log.append(bodies(300))
  const cap = capturingLogger()
  const uplink = makeUplink(
    t,
    log,
    uplinkConfig(broker.url, { caFile: pki.ca, certFile: pki.clientCert, keyFile: pki.clientKey, username: 'lot-7', passwordFile }),
    { logger: cap.logger },
  )
  const file = join(dir, 'cloud.jsonl')
  const consumer = new ReconcilingConsumer({
    url: broker.url,
    siteId: 'lot-7',
    file,
    caFile: pki.ca,
    certFile: pki.clientCert,
    keyFile: pki.clientKey,
    username: 'lot-7',
    password,
  })
  t.teardown(() => consumer.stop())
  await consumer.start()
  uplink.start()
  await waitFor(() => consumer.held() === 300 && log.acked() === 300, 'records over TLS, acked')
  t.ok(verifyChain(readJsonLines(file)).ok, 'chain verifies')
  t.equal(uplink.state().status, 'online')

  // A wrong password: refused by the broker, retried with back-off, and the password is not in the log.
  const wrongPw = 'Wr0ng-pa55-do-not-log'
  const cap2 = capturingLogger()
  const bad = makeUplink(
    t,
    await openTestLog(t),
    uplinkConfig(`mqtts://lot-7:${wrongPw}@127.0.0.1:${broker.port}`, {
      caFile: pki.ca,
      certFile: pki.clientCert,
      keyFile: pki.clientKey,
      clientId: 'bad-pw',
    }),
    { logger: cap2.logger },
  )
  bad.start()
  await waitFor(() => /connection error/.test(cap2.text()), 'the refusal is logged')
  t.equal(bad.state().status, 'offline')
  t.notMatch(cap.text() + cap2.text(), password, 'the password never appears in the log')
  t.notMatch(cap2.text(), wrongPw, 'nor does a password given in the URL')
  t.match(cap2.text(), `mqtts://127.0.0.1:${broker.port}`, 'the URL is logged without its user info')
  await bad.stop()
})

t.test('a broker whose certificate the CA did not sign is refused', async (t) => {
  const dir = tempDir(t)
  const pki = makePki(dir)
  const broker = await startMosquitto(t, { tls: { caFile: pki.ca, certFile: pki.serverCert, keyFile: pki.serverKey } })
  const cap = capturingLogger()
  const uplink = makeUplink(t, await openTestLog(t), uplinkConfig(broker.url, { caFile: pki.otherCa }), { logger: cap.logger })
  uplink.start()
  await waitFor(() => /certificate|self.signed|unable to verify/i.test(cap.text()), 'the TLS failure is logged')
  t.equal(uplink.state().status, 'offline', 'never online with an unverified broker')
})

t.test('an unreadable TLS file is a clear start error', async (t) => {
  const uplink = makeUplink(t, await openTestLog(t), uplinkConfig('mqtts://127.0.0.1:1', { caFile: '/nonexistent/ca.pem' }))
  t.throws(() => uplink.start(), { code: 'UPLINK_CONFIG', message: /caFile \/nonexistent\/ca.pem: cannot read \(ENOENT\)/ })
})
