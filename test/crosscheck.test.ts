/**
 * The wiring cross-check's verdict (core/crosscheck.ts) on observations built by hand for each
 * fault, the engine's side of a check (no start, nothing armed, a boot ends it), and the config
 * rule that lets a relay be rebound while the daemon runs. The check on hardware, its routes
 * and fixes: test/e2e-crosscheck.test.ts.
 */
import t from 'tap'
import type { SiteConfig } from '../core/types.js'
import { applyPatch, diagnose, wiringOf, type CrossCheckStep, type MeterSample } from '../core/crosscheck.js'
import { describeChanges } from '../daemon/config-changes.js'
import { Rig, WED_NOON, siteConfig } from './engine-fixtures.js'

const idle: MeterSample = { currentA: 0, powerW: 0, voltageV: 230 }
const load = (a: number, sign = 1): MeterSample => ({ currentA: a, powerW: sign * a * 230, voltageV: 230 })

function config(n: number, extra: Partial<Record<number, Record<string, unknown>>> = {}): Pick<SiteConfig, 'outlets' | 'circuits'> {
  return {
    outlets: Array.from({ length: n }, (_, i) => ({
      id: `A${i + 1}`,
      bus: 'lan',
      meter: { model: 'eastron-sdm120', unit: i + 1 },
      relay: { model: 'modbus-coil', unit: 100, coil: i },
      plan: 'p',
      ratingA: 16,
      phase: 'L1' as const,
      priority: 0,
      ...(extra[i + 1] ?? {}),
    })) as SiteConfig['outlets'],
    circuits: [{ id: 'main', maxA: 63, failsafeA: 16, slotS: 60, meter: { bus: 'lan', model: 'eastron-sdm630', unit: 50 } }],
  }
}

/** One step: relay `relay` closed; `moves` maps each meter that moved to what it showed. */
function step(ids: string[], relay: string, moves: Record<string, MeterSample>, o: Partial<CrossCheckStep> = {}): CrossCheckStep {
  const all = (f: (id: string) => MeterSample | null) => Object.fromEntries(ids.map((id) => [id, f(id)]))
  return {
    relay,
    before: all(() => idle),
    closed: all((id) => moves[id] ?? idle),
    after: all(() => idle),
    feedersBefore: {},
    feedersClosed: {},
    ...o,
  }
}

const kinds = (v: ReturnType<typeof diagnose>) => v.findings.map((f) => `${f.kind}:${f.outlets.join('+')}`)

t.test('a site wired as configured passes; every cell measured against the reading before', async (t) => {
  const c = config(3)
  const ids = ['A1', 'A2', 'A3']
  const v = diagnose(c, [step(ids, 'A1', { A1: load(10) }), step(ids, 'A2', { A2: load(6) }), step(ids, 'A3', { A3: load(16) })])
  t.equal(v.passed, true)
  t.same(kinds(v), ['ok:A1', 'ok:A2', 'ok:A3'])
  t.same(v.cells[1]![1], { currentA: 6, powerW: 1380, voltageV: 0, moved: true })
  t.same(v.cells[1]![0], { currentA: 0, powerW: 0, voltageV: 0, moved: false })
  t.equal(diagnose(c, []).passed, true, 'no step, no finding: the caller (runCrossCheck) refuses to call that a pass')
})

t.test('each fault found, with the fix the config can take', async (t) => {
  const ids = ['A1', 'A2', 'A3', 'A4', 'A5', 'A6']
  const c = config(6, { 5: { circuit: 'main' } })
  const v = diagnose(c, [
    step(ids, 'A1', { A2: load(10) }),
    step(ids, 'A2', { A1: load(10) }),
    step(ids, 'A3', {}),
    step(ids, 'A4', { A4: load(10), A6: load(8) }),
    step(ids, 'A5', { A5: load(10) }, { feedersBefore: { main: [1, 0, 0] }, feedersClosed: { main: [1, 0, 10] } }),
    step(ids, 'A6', { A6: load(10, -1) }),
  ])
  t.equal(v.passed, false)
  t.same(kinds(v), ['swapped:A1+A2', 'dead:A3', 'several:A4+A6', 'wrong-phase:A5', 'reversed:A6'])
  t.same(v.findings[0]!.fix!.patch, [
    { op: 'test', path: '/outlets/0/relay', value: c.outlets[0]!.relay },
    { op: 'test', path: '/outlets/1/relay', value: c.outlets[1]!.relay },
    { op: 'replace', path: '/outlets/0/relay', value: c.outlets[1]!.relay },
    { op: 'replace', path: '/outlets/1/relay', value: c.outlets[0]!.relay },
  ])
  t.same(v.findings[3]!.fix!.patch, [
    { op: 'test', path: '/outlets/4/phase', value: 'L1' },
    { op: 'replace', path: '/outlets/4/phase', value: 'L3' },
  ])
  // Each fix applies on its own, in either order, and once.
  const both = applyPatch(applyPatch(c, v.findings[3]!.fix!.patch), v.findings[0]!.fix!.patch) as typeof c
  t.same([both.outlets[0]!.relay!.coil, both.outlets[1]!.relay!.coil, both.outlets[4]!.phase], [1, 0, 'L3'])
  t.throws(
    () => applyPatch(both, v.findings[0]!.fix!.patch),
    /\/outlets\/0\/relay: is .* now, not .* as the check saw it/,
    'a swap applied twice fails its test',
  )
  t.notOk(v.findings[1]!.fix, 'no config mends a dead relay')
})

t.test('one-way moves, a relay that does not open, a silent meter, a relay that refuses, no load', async (t) => {
  const ids = ['A1', 'A2', 'A3']
  const c = config(3)
  let v = diagnose(c, [step(ids, 'A1', { A2: load(10) }), step(ids, 'A2', { A2: load(10) }), step(ids, 'A3', { A3: load(10) })])
  t.same(kinds(v), ['moves-other:A1+A2', 'ok:A2', 'ok:A3'], 'A1’s relay feeds A2 without a swap back: no swap fix')
  v = diagnose(c, [
    step(ids, 'A1', { A1: load(10) }, { after: { A1: load(10), A2: idle, A3: idle } }),
    step(ids, 'A2', { A2: load(10) }, { openError: 'it still reads closed' }),
    step(
      ids,
      'A3',
      { A3: { currentA: 0, powerW: 0, voltageV: 230 } },
      { before: { A1: idle, A2: idle, A3: { currentA: 0, powerW: 0, voltageV: 0 } } },
    ),
  ])
  t.same(kinds(v), ['ok:A1', 'welded:A1', 'ok:A2', 'welded:A2', 'no-load:A3'], 'current after opening, or a read-back still closed: welded')
  const silent = { A1: idle, A2: null, A3: idle }
  v = diagnose(c, [
    step(ids, 'A1', { A1: load(10) }, { closed: { A1: load(10), A2: null, A3: idle } }),
    step(ids, 'A2', {}, { before: silent, closed: silent }),
    step(ids, 'A3', {}, { closeError: 'MODBUS_TIMEOUT: unit 100 did not answer' }),
  ])
  t.same(kinds(v), ['relay-error:A3', 'ok:A1', 'meter-silent:A2'], 'a silent meter is a finding once, never a zero')
  t.equal(v.cells[0]![1], null)
})

t.test('the wiring leaves out what a check does not vouch for; fixes land only where they were made', async (t) => {
  const c = config(2)
  const priced = { ...c, outlets: c.outlets.map((o) => ({ ...o, plan: 'other', name: 'Bay' })) }
  t.same(wiringOf(priced), wiringOf(c), 'plans and names are not wiring')
  const moved = { ...c, outlets: c.outlets.map((o, i) => (i === 0 ? { ...o, phase: 'L2' as const } : o)) }
  t.not(JSON.stringify(wiringOf(moved)), JSON.stringify(wiringOf(c)), 'a phase is')
  const doc = { outlets: [{ phase: 'L1' }] }
  t.same(applyPatch(doc, [{ op: 'replace', path: '/outlets/0/phase', value: 'L3' }]), { outlets: [{ phase: 'L3' }] })
  t.same(doc, { outlets: [{ phase: 'L1' }] }, 'the document given is not changed')
  t.throws(() => applyPatch(doc, [{ op: 'replace', path: '/outlets/1/phase', value: 'L3' }]), /\/outlets\/1\/phase: no such member/)
  t.same(applyPatch({ a: { x: 1, y: 2 } }, [{ op: 'test', path: '/a', value: { y: 2, x: 1 } }]), { a: { x: 1, y: 2 } }, 'a test ignores key order')
})

t.test('the engine while a check runs: no start, nothing armed, and a boot ends it', async (t) => {
  const r = new Rig(siteConfig(), WED_NOON)
  r.boot()
  r.wallet('u1', 100_000)
  r.run(1, {})
  r.cmd({ action: 'set-auto-start', outlet: 'A2', userId: 'u1' })
  t.equal(r.stateOf('A2'), 'armed')
  const fx = r.apply({ type: 'cross-check', running: true })
  t.ok(
    fx.some((e) => e.type === 'relay' && e.outlet === 'A2' && !e.closed),
    'the armed relay opens: the check switches the relays itself',
  )
  t.equal(r.stateOf('A1'), 'unavailable')
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u1' })
  t.same(r.result(), { ok: false, code: 'cross-check-running' })
  r.run(2, { A2: 10 })
  t.equal(r.records('session.started').length, 0, 'current on an armed outlet starts nothing during the check')
  r.apply({ type: 'cross-check', running: false })
  t.equal(r.stateOf('A2'), 'armed', 'armed again once it ends')
  r.apply({ type: 'cross-check', running: true })
  r.boot()
  t.equal(r.state.gateway.crossCheck, undefined, 'a boot ends a check its process did not finish')
  r.run(1, {})
  r.cmd({ action: 'start', outlet: 'A1', userId: 'u1' })
  t.equal(r.result().ok, true)
})

t.test('a relay rebound on the bus it stays on applies at once; anything else about it waits for a restart', async (t) => {
  const doc = (coil: number, bus = 'lan', type = 'modbus-tcp') => ({
    buses: [{ id: bus, type }],
    outlets: [{ id: 'A1', bus, relay: { model: 'modbus-coil', unit: 100, coil } }],
  })
  t.same(describeChanges(doc(0), doc(1)), [{ pointer: '/outlets/0/relay/coil', hot: true, owner: 'installer' }])
  t.same(describeChanges(doc(0, 'lan', 'serial'), doc(1, 'lan', 'serial'))[0]!.hot, true)
  t.same(describeChanges(doc(0, 'plug', 'shelly'), doc(1, 'plug', 'shelly'))[0]!.hot, false, 'a network device’s channels change at a restart')
  const moved = { ...doc(0), outlets: [{ id: 'A1', bus: 'other', relay: { model: 'modbus-coil', unit: 100, coil: 0 } }] }
  t.equal(
    describeChanges(doc(0), moved).every((c) => !c.hot),
    true,
    'another bus: a restart',
  )
})
