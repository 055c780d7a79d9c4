/** Run the BUILT CLI (dist/, produced by `npm test`'s build step) as a subprocess. */
import { spawn, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { packagePath } from '../../core/paths.js'

export const cliPath = packagePath('dist', 'daemon', 'cli.js')

export function runCli(
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): { status: number | null; stdout: string; stderr: string } {
  if (!existsSync(cliPath)) throw new Error(`${cliPath} is missing: run \`npm run build\` (npm test does)`)
  const r = spawnSync(process.execPath, [cliPath, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...opts.env },
    timeout: opts.timeoutMs ?? 60_000,
  })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

/** The built CLI, asynchronously: for a command (reconcile) that runs while the test drives an uplink in this process. */
export function runCliAsync(args: string[], killAfterMs = 120_000): Promise<{ status: number | null; stdout: string; stderr: string }> {
  if (!existsSync(cliPath)) throw new Error(`${cliPath} is missing: run \`npm run build\` (npm test does)`)
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [cliPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const killer = setTimeout(() => c.kill('SIGKILL'), killAfterMs)
    c.on('close', (status) => {
      clearTimeout(killer)
      resolve({ status, stdout, stderr })
    })
  })
}
