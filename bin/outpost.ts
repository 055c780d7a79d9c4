#!/usr/bin/env -S node --max-semi-space-size=1 --optimize-for-size --lite-mode
/**
 * The `outpost` executable (package.json `bin`) of both sides: the gateway's command
 * words go to the gateway's CLI (daemon/cli.ts), and the cloud side's words, listed
 * here, to the cloud's (cloud/cli.ts). Each side's modules load only when one of its
 * words is given, so `outpost run` never loads PostgreSQL and `outpost ingest` never
 * loads the daemon; and since only this file names both, the gateway never imports the
 * cloud side (test/layers.test.ts).
 *
 * Owns: which side a command word belongs to; the cloud side's help lines.
 * Must never: be imported (it runs itself), or load a side's command before its word is given.
 *
 * The interpreter line sizes V8 for a small gateway: a 1 MB young generation per
 * semi-space (the daemon's garbage is short-lived and small; node's default of up to
 * 16 MB costs about 20 MB of RSS), V8 favouring size over speed (the old generation
 * grows less before each collection), and lite mode (no optimising compiler: less code
 * in memory). Together about 50 MB less RSS at 64 outlets (72 MB median against 122 MB
 * with node's defaults) for about 0.7 % more of one core; peak throughput drops (2.5x
 * fewer dispatch steps/s, still 500x what 64 outlets need) while the uplink drain, being
 * I/O-bound, keeps 94 % (docs/bench.md, footprint). The systemd unit passes the same flags
 * to daemon/cli.ts (test/systemd-unit.test.ts checks they agree).
 */
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { main, type Command } from '../daemon/cli.js'
import { constants } from 'node:os'

/** The cloud side's command words. */
const CLOUD: Record<string, Command> = {
  ingest: {
    summary: "cloud-side service: store every site's records in PostgreSQL, split across workers",
    usage: 'outpost ingest --url URL --db POSTGRES_URL [--group NAME] [--sites PATTERN] | outpost ingest resolve --db URL --site ID',
    load: () => import('../cloud/cli.js'),
  },
}

/**
 * The cloud side's node flags instead: a young generation of up to 32 MB per semi-space. A worker's batches
 * (thousands of parsed records, their texts and one JSON document a transaction) are short-lived garbage;
 * with node's default sizing the catch-up's 200,000 records took 11–15 s, with this 8.8–9.8 s (docs/bench.md).
 */
const CLOUD_NODE_FLAGS = ['--max-semi-space-size=32']

/**
 * The interpreter line's flags suit the gateway, not the cloud side: lite mode has no WebAssembly (loading `pg`
 * touches it and throws) and no optimising compiler, and a 1 MB young generation turns a worker's batches
 * into constant scavenges. A cloud word given under them runs in a child node with CLOUD_NODE_FLAGS instead
 * (any other node flag kept), the signals passed on and its exit status returned; the child stops (as on
 * SIGTERM) when this process is gone, through the IPC channel closing.
 */
function cloudWithoutGatewayFlags(): boolean {
  const word = process.argv[2]
  if (!word || !Object.hasOwn(CLOUD, word)) return false
  if (process.env.OUTPOST_CLOUD_CHILD === '1' && process.channel) {
    process.channel.unref()
    process.once('disconnect', () => process.kill(process.pid, 'SIGTERM'))
    return false
  }
  const self = fileURLToPath(import.meta.url)
  const gateway = new Set(
    (
      readFileSync(self, 'utf8')
        .split('\n', 1)[0]!
        .match(/^#!.*?\bnode\b(.*)$/)?.[1] ?? ''
    )
      .trim()
      .split(/\s+/)
      .filter(Boolean),
  )
  const kept = process.execArgv.filter((f) => !gateway.has(f))
  if (kept.length === process.execArgv.length) return false
  const child = spawn(process.execPath, [...kept, ...CLOUD_NODE_FLAGS, self, ...process.argv.slice(2)], {
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, OUTPOST_CLOUD_CHILD: '1' },
  })
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => child.kill(sig))
  child.once('exit', (code, signal) => {
    // A signal's death as a shell reports it: 128 + its number (a SIGKILL from the OOM killer is 137, not a SIGTERM's 143).
    process.exitCode = code ?? 128 + (signal ? (constants.signals[signal] ?? 15) : 15)
  })
  return true
}

if (!cloudWithoutGatewayFlags()) main(CLOUD)
