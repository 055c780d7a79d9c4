/**
 * The shape every config test's table of invalid cases has, and the one loop that runs it:
 * each case mutates a fresh valid config and names the pointer and message it must be refused with.
 */
import t from 'tap'
import { validateConfig, type ConfigProblem } from '../../daemon/config.js'

export type RejectCase = [name: string, mutate: (c: any) => void, pointer: string, message: RegExp]

/** One subtest per case: `fresh()` made invalid by the case is refused with its pointer and message. */
export function testRejections(cases: RejectCase[], fresh: () => unknown, title = 'invalid'): void {
  for (const [name, mutate, pointer, message] of cases) {
    t.test(`${title}: ${name}`, async (t) => {
      const cfg = fresh()
      mutate(cfg)
      const r = validateConfig(cfg)
      t.notOk(r.ok, 'rejected')
      if (r.ok) return
      const hit = r.problems.find((p: ConfigProblem) => p.pointer === pointer && message.test(p.message))
      t.ok(hit, `expected ${pointer}: ${message} in ${JSON.stringify(r.problems)}`)
    })
  }
}
