/**
 * Waiting for a promise at most so long: the stop of the daemon and of the uplink.
 *
 * Owns: the timer and its clean-up. Must never: cancel the work itself (it carries on; the caller stops waiting).
 */
export function withTimeout<T>(p: Promise<T>, ms: number, timeoutError: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(timeoutError()), ms)
    p.then(
      (v) => {
        clearTimeout(timer)
        resolve(v)
      },
      (e: unknown) => {
        clearTimeout(timer)
        reject(e)
      },
    )
  })
}
