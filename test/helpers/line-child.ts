/**
 * A child process that reports on stdout one line per event (the kill -9 and LazyFS
 * suites' children): spawned with plain node, its lines kept, and a wait for a line.
 *
 * Owns: spawning with plain node (tap's hooks stay out of test children: .taprc's node-arg),
 * collecting lines, and `waitFor`, which rejects naming the last
 * lines and stderr when the child exits without the line. Registers every child in
 * `children` until it exits, so the suite can SIGKILL what is left at teardown.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { createInterface } from 'node:readline'

export interface LineChild {
  child: ChildProcess
  lines: string[]
  /** Resolves with the exit code once the lines the child wrote before it exited are read. */
  exited: Promise<number | null>
  waitFor: (pred: (line: string) => boolean) => Promise<void>
}

export function spawnLineChild(args: string[], children: Set<ChildProcess>): LineChild {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  children.add(child)
  const lines: string[] = []
  const waiters: { pred: (l: string) => boolean; resolve: () => void }[] = []
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-2000)
  })
  createInterface({ input: child.stdout! }).on('line', (line) => {
    lines.push(line)
    for (const w of [...waiters])
      if (w.pred(line)) {
        waiters.splice(waiters.indexOf(w), 1)
        w.resolve()
      }
  })
  const exited = new Promise<number | null>((resolve) =>
    child.on('exit', (code) => {
      children.delete(child)
      // Let the line reader drain what the child wrote before it exited.
      setImmediate(() => resolve(code))
    }),
  )
  const waitFor = (pred: (l: string) => boolean): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      if (lines.some(pred)) return resolve()
      waiters.push({ pred, resolve })
      void exited.then((code) =>
        lines.some(pred)
          ? resolve()
          : reject(
              new Error(`child exited (${code}) before the expected line; stdout: ${lines.slice(-3).join(' | ')}; stderr: ${stderr.slice(-500)}`),
            ),
      )
    })
  return { child, lines, exited, waitFor }
}

/**
 * For children that say `ready <head>` once booted and `c <seq> <hash>` per commit (the kill -9
 * and LazyFS children): unless one has committed since `ready`, waits for its next commit, at
 * most `maxMs` (or until it exits). A kill timed in milliseconds after boot can land before a
 * child on a loaded machine charged at all; this keeps every such run writing.
 */
export async function untilCommitAfterReady(run: LineChild, maxMs: number): Promise<void> {
  const booted = run.lines.findIndex((l) => l.startsWith('ready '))
  if (booted < 0 || run.lines.slice(booted + 1).some((l) => l.startsWith('c '))) return
  const seen = run.lines.length
  let timer: NodeJS.Timeout | undefined
  await Promise.race([
    run.waitFor((l) => l.startsWith('c ') && run.lines.length > seen).catch(() => undefined),
    new Promise((r) => (timer = setTimeout(r, maxMs))),
  ])
  clearTimeout(timer)
}
