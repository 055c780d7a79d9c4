/**
 * A child process that reports on stdout one line per event (the kill -9 and LazyFS
 * suites' children): spawned with plain node, its lines kept, and a wait for a line.
 *
 * Owns: spawning (without tap's NODE_OPTIONS hooks: a child killed hundreds of times
 * should not carry them), collecting lines, and `waitFor`, which rejects naming the last
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
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env })
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
