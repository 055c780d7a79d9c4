/**
 * Shared plumbing for the uplink tests: waiting for conditions (never fixed
 * sleeps), temp dirs, raw MQTT clients, an Uplink wired to a RecordLog.
 */
import { mkdtempSync, rmSync, readFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import mqtt, { type MqttClient } from 'mqtt'
import { Uplink, type UplinkOptions } from '../../daemon/uplink/uplink.js'
import type { CommandResult, RecordLog, UplinkConfig } from '../../core/types.js'

interface Teardownable {
  teardown(fn: () => unknown): void
}

/** Polls `cond` until true; fails with `what` after a generous timeout (the machine may be loaded). */
export async function waitFor(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await cond()) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

export function tempDir(t: Teardownable, prefix = 'outpost-uplink-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A raw client (the "cloud" side of a test), connected. */
export async function rawClient(t: Teardownable, url: string, opts: mqtt.IClientOptions = {}): Promise<MqttClient> {
  const c = await mqtt.connectAsync(url, { reconnectPeriod: 200, connectTimeout: 10_000, ...opts })
  t.teardown(() => c.endAsync(true))
  return c
}

export function uplinkConfig(url: string, over: Partial<UplinkConfig> = {}): UplinkConfig {
  return { url, topicPrefix: 'outpost', keepaliveS: 30, windowRecords: 2000, batchRecords: 100, reconnectMaxMs: 1000, ...over }
}

export function makeUplink(t: Teardownable, log: RecordLog, config: UplinkConfig, over: Partial<UplinkOptions> = {}): Uplink {
  const u = new Uplink({
    config,
    siteId: 'lot-7',
    log,
    version: '0.1.0-test',
    bootId: 'boot-test',
    onCommand: async (): Promise<CommandResult> => ({ id: '', ok: false, error: { code: 'invalid-command', message: 'no gateway in this test' } }),
    now: () => Date.now(),
    reconnectBaseMs: 100,
    ...over,
  })
  t.teardown(() => u.stop())
  return u
}

/** The records of a JSON-lines file. */
export function readJsonLines(file: string): Record<string, unknown>[] {
  if (!existsSync(file)) return []
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>)
}
