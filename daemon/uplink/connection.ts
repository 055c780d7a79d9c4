/**
 * Broker connection options shared by the uplink and the reconciling consumer:
 * TLS material and credentials read from files, and a URL safe to log.
 *
 * Owns: turning UplinkConfig-like settings into mqtt.js options. Never logs or
 * returns a secret in anything meant for a log line.
 */
import { readFileSync } from 'node:fs'
import type { IClientOptions } from 'mqtt'
import type { UplinkConfig } from '../../core/types.js'
import { OutpostError } from '../errors.js'

/** The broker credentials and TLS files of an uplink config (the consumer takes the same). */
export type BrokerAuth = Pick<UplinkConfig, 'username' | 'password' | 'passwordFile' | 'caFile' | 'certFile' | 'keyFile'>

function readFile(what: string, file: string): Buffer {
  try {
    return readFileSync(file)
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    throw new OutpostError('UPLINK_CONFIG', `uplink ${what} ${file}: cannot read (${e.code ?? e.message})`, { cause: err })
  }
}

/** mqtt.js options for credentials and TLS. Throws OutpostError('UPLINK_CONFIG') naming the file that cannot be read. */
export function authOptions(auth: BrokerAuth): Partial<IClientOptions> {
  const out: Partial<IClientOptions> = {}
  if (auth.username !== undefined) out.username = auth.username
  if (auth.passwordFile !== undefined) {
    // First line only: a trailing newline from `echo secret > file` is not part of the password.
    out.password = readFile('passwordFile', auth.passwordFile).toString('utf8').split(/\r?\n/)[0]
  } else if (auth.password !== undefined) {
    out.password = auth.password
  }
  if (auth.caFile !== undefined) out.ca = readFile('caFile', auth.caFile)
  if (auth.certFile !== undefined) out.cert = readFile('certFile', auth.certFile)
  if (auth.keyFile !== undefined) out.key = readFile('keyFile', auth.keyFile)
  if ((out.cert === undefined) !== (out.key === undefined)) {
    throw new OutpostError('UPLINK_CONFIG', 'uplink certFile and keyFile go together: give both or neither')
  }
  // Never accept an unverifiable broker: billing records and commands go over this link.
  out.rejectUnauthorized = true
  return out
}

/** The broker URL without user info or query, for log lines. */
export function safeUrl(url: string): string {
  try {
    const u = new URL(url)
    return `${u.protocol}//${u.host}${u.pathname === '/' ? '' : u.pathname}`
  } catch {
    return '(unparseable url)'
  }
}
