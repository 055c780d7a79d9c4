/**
 * Node-RED's files, as both the daemon (which prepares the user directory before it
 * spawns Node-RED) and Node-RED under its own unit (which alone may write its user
 * directory) create them.
 *
 * Owns: the user directory (0700), the flow file's first-start seed from the shipped
 * flows, and the credential key (0600).
 *
 * Must never: overwrite an existing flow file or key (the installer's flows, as deployed
 * from the editor, survive restarts and upgrades; a new key would make flows_cred.json
 * undecryptable).
 */
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { packagePath } from '../../core/paths.js'
import { OutpostError } from '../errors.js'

/** The shipped flows (one tab per file), the seed of a missing flow file and the editor's Import > Examples. */
export const SHIPPED_FLOWS_DIR = packagePath('flows', 'examples')
const SECRET_FILE = '.outpost-credential-secret'

/** The shipped flows as one flow file: every example's nodes, in file-name order. */
export function shippedFlows(): unknown[] {
  const files = readdirSync(SHIPPED_FLOWS_DIR)
    .filter((f) => f.endsWith('.json'))
    .sort()
  return files.flatMap((f) => {
    const nodes = JSON.parse(readFileSync(join(SHIPPED_FLOWS_DIR, f), 'utf8')) as unknown
    if (!Array.isArray(nodes)) throw new OutpostError('NODE_RED_FLOWS', `${join(SHIPPED_FLOWS_DIR, f)} is not a Node-RED flow (an array of nodes)`)
    return nodes
  })
}

/** Creates the user directory, a missing flow file (from the shipped flows) and a missing credential key. */
export function prepareFiles(userDir: string, flowFile: string): { seeded: boolean; credentialSecret: string } {
  mkdirSync(userDir, { recursive: true, mode: 0o700 })
  return { seeded: seedFlowFile(flowFile), credentialSecret: credentialSecret(userDir) }
}

/** Writes the shipped flows to a flow file that does not exist yet; an existing one is never touched. */
function seedFlowFile(flowFile: string): boolean {
  if (existsSync(flowFile)) return false
  mkdirSync(dirname(flowFile), { recursive: true })
  writeFileSync(flowFile, JSON.stringify(shippedFlows(), null, 4) + '\n', { flag: 'wx' })
  return true
}

/** The key flows_cred.json is encrypted with (created on first use). */
export function credentialSecret(userDir: string): string {
  const file = join(userDir, SECRET_FILE)
  if (!existsSync(file)) writeFileSync(file, randomBytes(32).toString('hex') + '\n', { mode: 0o600, flag: 'wx' })
  const key = readFileSync(file, 'utf8').trim()
  if (key.length < 32) throw new OutpostError('NODE_RED_SECRET', `${file} holds no usable key (delete it only together with flows_cred.json)`)
  return key
}
