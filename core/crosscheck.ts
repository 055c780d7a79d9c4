/**
 * The wiring cross-check's verdict: from what every meter (and feeder meter) showed while
 * each relay in turn was closed and opened again, the matrix of relays against meters and
 * what it means (a swapped pair, a dead relay or no load, one relay moving several meters, a
 * meter on another phase than configured, reversed power, a relay that does not open), each
 * finding with the config change that mends it where one can.
 *
 * Owns: the thresholds of "a meter moved", the diagnosis and its fixes (JSON Patch `replace`
 * operations on the config as written), which part of a config is its wiring.
 * Must never: switch or read hardware (daemon/crosscheck.ts does), or judge a reading it was
 * not given (a meter that did not answer is a finding, never a zero).
 */
import type { Phase, SiteConfig } from './types.js'
import { PHASES } from './types.js'
import { pointerSegments } from './json-pointer.js'

/** A meter "moved" when a relay's closing changed its current, power or voltage by at least this much. */
export const MOVED = { currentA: 0.5, powerW: 100, voltageV: 50 } as const

/** One meter's sample: null when it did not answer. */
export interface MeterSample {
  currentA: number
  powerW: number
  voltageV: number
}

/** What was seen while one outlet's relay was closed, then opened again (every other relay open). */
export interface CrossCheckStep {
  /** The outlet whose relay was switched. */
  relay: string
  /** Every outlet's meter just before the relay closed, and the feeders' phase currents. */
  before: Record<string, MeterSample | null>
  /** While it was closed: per meter, the sample of the polls that moved furthest from `before`. */
  closed: Record<string, MeterSample | null>
  /** After it was opened again: the last poll. */
  after: Record<string, MeterSample | null>
  feedersBefore: Record<string, [number, number, number] | null>
  feedersClosed: Record<string, [number, number, number] | null>
  /** The relay refused to close (an error, or its read-back disagreed). */
  closeError?: string
  /** The relay did not open (an error, or its read-back still said closed). */
  openError?: string
}

export interface CellDelta {
  currentA: number
  powerW: number
  voltageV: number
  moved: boolean
}

export type FindingKind =
  | 'ok'
  | 'swapped'
  | 'moves-other'
  | 'dead'
  | 'no-load'
  | 'several'
  | 'welded'
  | 'wrong-phase'
  | 'reversed'
  | 'relay-error'
  | 'meter-silent'

/**
 * One RFC 6902 operation of a fix: a `test` of what the check saw there, then the `replace`
 * (a fix never adds or removes outlets). The tests make a fix apply only to the config it was
 * made for: applied twice, or after the same place changed, it fails and changes nothing.
 */
export interface PatchOp {
  op: 'test' | 'replace'
  path: string
  value: unknown
}

export interface Finding {
  kind: FindingKind
  /** The outlets it is about (the relay's first). */
  outlets: string[]
  /** `error`: the site as configured would bill or limit the wrong outlet; `ok`: as configured. */
  severity: 'ok' | 'error'
  message: string
  fix?: { label: string; patch: PatchOp[] }
}

export interface CrossCheckVerdict {
  /** Rows: the outlets with a relay, in config order; columns: every outlet's meter. */
  relays: string[]
  meters: string[]
  /** cells[r][m]: meter m while relay r was closed, against before; null where the meter did not answer. */
  cells: (CellDelta | null)[][]
  findings: Finding[]
  passed: boolean
}

const round = (v: number, digits: number): number => Math.round(v * 10 ** digits) / 10 ** digits

export function cellOf(before: MeterSample | null | undefined, closed: MeterSample | null | undefined): CellDelta | null {
  if (!before || !closed) return null
  const currentA = closed.currentA - before.currentA
  const powerW = closed.powerW - before.powerW
  const voltageV = closed.voltageV - before.voltageV
  const moved = Math.abs(currentA) >= MOVED.currentA || Math.abs(powerW) >= MOVED.powerW || Math.abs(voltageV) >= MOVED.voltageV
  return { currentA: round(currentA, 2), powerW: round(powerW, 1), voltageV: round(voltageV, 1), moved }
}

/** Whether a sample shows current flowing (what a load behind a closed contact draws). */
const drawing = (s: MeterSample | null | undefined): boolean =>
  s != null && (Math.abs(s.currentA) >= MOVED.currentA || Math.abs(s.powerW) >= MOVED.powerW)

/**
 * The verdict on a site's wiring from one pass over its relays. `config` is the config the
 * pass ran with (its outlets' order gives the patches' indices).
 */
export function diagnose(config: Pick<SiteConfig, 'outlets' | 'circuits'>, steps: readonly CrossCheckStep[]): CrossCheckVerdict {
  const meters = config.outlets.map((o) => o.id)
  const index = new Map(meters.map((id, i) => [id, i]))
  const relays = steps.map((s) => s.relay)
  const cells = steps.map((s) => meters.map((m) => cellOf(s.before[m], s.closed[m])))
  const moved = cells.map((row) => meters.filter((_, i) => row[i]?.moved === true))
  const findings: Finding[] = []
  const handled = new Set<string>()

  // A relay whose own outlet's meter never answered cannot be judged (nor that meter's column).
  const silent = meters.filter((m) => steps.length > 0 && steps.every((s) => s.before[m] == null || s.closed[m] == null))
  for (const m of silent)
    findings.push({
      kind: 'meter-silent',
      outlets: [m],
      severity: 'error',
      message: `the meter of ${m} did not answer during the cross-check: its wiring could not be checked`,
    })

  steps.forEach((s, r) => {
    const a = s.relay
    if (s.closeError) {
      findings.push({ kind: 'relay-error', outlets: [a], severity: 'error', message: `the relay of ${a} did not close: ${s.closeError}` })
      handled.add(a)
      return
    }
    const m = moved[r]!
    // A swapped pair: a's relay moves only b's meter and b's relay only a's.
    if (m.length === 1 && m[0] !== a && !handled.has(a)) {
      const b = m[0]!
      const rb = relays.indexOf(b)
      if (rb >= 0 && !steps[rb]!.closeError && moved[rb]!.length === 1 && moved[rb]![0] === a) {
        const ia = index.get(a)!
        const ib = index.get(b)!
        findings.push({
          kind: 'swapped',
          outlets: [a, b],
          severity: 'error',
          message: `the relays of ${a} and ${b} are swapped: ${a}'s relay switches ${b}'s socket and ${b}'s relay switches ${a}'s`,
          fix: {
            label: `swap the relays of ${a} and ${b} in the config`,
            patch: [
              { op: 'test', path: `/outlets/${ia}/relay`, value: config.outlets[ia]!.relay },
              { op: 'test', path: `/outlets/${ib}/relay`, value: config.outlets[ib]!.relay },
              { op: 'replace', path: `/outlets/${ia}/relay`, value: config.outlets[ib]!.relay },
              { op: 'replace', path: `/outlets/${ib}/relay`, value: config.outlets[ia]!.relay },
            ],
          },
        })
        handled.add(a)
        handled.add(b)
      }
    }
  })

  steps.forEach((s, r) => {
    const a = s.relay
    const m = moved[r]!
    if (!handled.has(a)) {
      if (m.length === 0) {
        // A relay whose own meter did not answer while it was closed cannot be judged dead (a
        // meter silent throughout is already a finding of its own).
        const unread = s.before[a] == null || s.closed[a] == null
        if (unread && !silent.includes(a))
          findings.push({
            kind: 'meter-silent',
            outlets: [a],
            severity: 'error',
            message: `the meter of ${a} did not answer while its relay was closed: that relay could not be checked`,
          })
        else if (!unread)
          findings.push({
            kind: 'dead',
            outlets: [a],
            severity: 'error',
            message: `closing the relay of ${a} moved no meter: a dead relay or contactor, a broken wire, or no load plugged into ${a}`,
          })
      } else if (m.length > 1) {
        findings.push({
          kind: 'several',
          outlets: [a, ...m.filter((x) => x !== a)],
          severity: 'error',
          message: `closing the relay of ${a} moved ${m.length} meters (${m.join(', ')}): one relay feeds several sockets, or a load is shared`,
        })
      } else if (m[0] !== a) {
        findings.push({
          kind: 'moves-other',
          outlets: [a, m[0]!],
          severity: 'error',
          message: `the relay of ${a} switches the socket metered as ${m[0]}, not ${a}'s`,
        })
      } else {
        const cell = cells[r]![index.get(a)!]!
        if (cell.powerW <= -MOVED.powerW) {
          findings.push({
            kind: 'reversed',
            outlets: [a],
            severity: 'error',
            message: `the meter of ${a} shows reversed power (${cell.powerW} W) while its relay is closed: its current sensor or its in and out terminals are the wrong way round, so its import register does not count the charge`,
          })
        } else if (cell.currentA < MOVED.currentA && cell.powerW < MOVED.powerW) {
          findings.push({
            kind: 'no-load',
            outlets: [a],
            severity: 'error',
            message: `the relay of ${a} switches its meter (voltage ${cell.voltageV > 0 ? '+' : ''}${cell.voltageV} V) but no current flowed: plug a load into ${a} and run the check again`,
          })
        } else {
          const phase = phaseFinding(config, s, a, cell)
          if (phase) findings.push(phase)
          else findings.push({ kind: 'ok', outlets: [a], severity: 'ok', message: `the relay of ${a} switches ${a}'s meter and no other` })
        }
      }
    }
    // Whatever it moved must fall back once the relay is open again.
    const stuck = s.openError !== undefined || m.some((x) => drawing(s.after[x]) && !drawing(s.before[x]))
    if (stuck)
      findings.push({
        kind: 'welded',
        outlets: [a],
        severity: 'error',
        message: `the relay of ${a} did not open${s.openError ? ` (${s.openError})` : ': current kept flowing after it was told to open'}: a welded contact; do not charge on ${a} until it is replaced`,
      })
  })
  return { relays, meters, cells, findings, passed: findings.every((f) => f.severity === 'ok') }
}

/** An outlet on one phase whose load showed up on another phase of its circuit's feeder meter (or its nearest ancestor's). */
function phaseFinding(config: Pick<SiteConfig, 'outlets' | 'circuits'>, s: CrossCheckStep, outlet: string, cell: CellDelta): Finding | undefined {
  const i = config.outlets.findIndex((o) => o.id === outlet)
  const o = config.outlets[i]!
  if (o.phases === 3 || o.circuit === undefined) return undefined
  let circuit: string | undefined = o.circuit
  const seen = new Set<string>()
  while (circuit !== undefined && !seen.has(circuit)) {
    seen.add(circuit)
    const before = s.feedersBefore[circuit]
    const closed = s.feedersClosed[circuit]
    if (before && closed) {
      const rise = closed.map((v, k) => v - before[k]!)
      const top = rise.indexOf(Math.max(...rise))
      // The feeder must see most of what the outlet's meter saw, on one phase.
      if (rise[top]! < MOVED.currentA || rise[top]! < 0.5 * Math.abs(cell.currentA)) return undefined
      const measured: Phase = PHASES[top]!
      if (measured === o.phase) return undefined
      return {
        kind: 'wrong-phase',
        outlets: [outlet],
        severity: 'error',
        message: `${outlet} is configured on ${o.phase}, but its load appeared on ${measured} of circuit ${circuit}'s feeder meter (+${round(rise[top]!, 1)} A): the circuit limits count it on the wrong phase`,
        fix: {
          label: `set ${outlet}'s phase to ${measured}`,
          patch: [
            { op: 'test', path: `/outlets/${i}/phase`, value: o.phase },
            { op: 'replace', path: `/outlets/${i}/phase`, value: measured },
          ],
        },
      }
    }
    circuit = config.circuits?.find((c) => c.id === circuit)?.parent
  }
  return undefined
}

/**
 * The part of a config a cross-check vouches for: which bus, unit and channel each outlet's
 * meter and relay are, its phase and circuit, and where the feeder meters are. A change to
 * anything else (a price, a name) keeps a passed check valid.
 */
export function wiringOf(config: Pick<SiteConfig, 'outlets' | 'circuits'>): unknown {
  return {
    outlets: config.outlets.map((o) => ({
      id: o.id,
      bus: o.bus,
      meter: { model: o.meter.model, unit: o.meter.unit ?? null, channel: o.meter.channel ?? null },
      relay: o.relay
        ? {
            model: o.relay.model,
            unit: o.relay.unit ?? null,
            channel: o.relay.channel ?? null,
            coil: o.relay.coil ?? null,
            register: o.relay.register ?? null,
          }
        : null,
      phase: o.phase,
      phases: o.phases ?? null,
      circuit: o.circuit ?? null,
    })),
    circuits: (config.circuits ?? []).map((c) => ({
      id: c.id,
      parent: c.parent ?? null,
      meter: c.meter ? { bus: c.meter.bus, unit: c.meter.unit } : null,
    })),
  }
}

/**
 * `doc` with the operations applied in order (a copy; `doc` is left as it was). Throws, naming
 * the operation's path, when a `test` finds another value or a path does not exist: a fix made
 * for another config never lands.
 */
export function applyPatch(doc: unknown, ops: readonly PatchOp[]): unknown {
  const out = structuredClone(doc)
  for (const op of ops) {
    if (op.op !== 'test' && op.op !== 'replace') throw new Error(`${op.path}: only test and replace operations are applied`)
    const parts = pointerSegments(op.path)
    const last = parts.pop()
    let at: unknown = out
    for (const p of parts) {
      if (typeof at !== 'object' || at === null || !Object.hasOwn(at, p)) throw new Error(`${op.path}: no such member in the config`)
      at = (at as Record<string, unknown>)[p]
    }
    if (last === undefined || typeof at !== 'object' || at === null || !Object.hasOwn(at, last))
      throw new Error(`${op.path}: no such member in the config`)
    const parent = at as Record<string, unknown>
    if (op.op === 'test') {
      if (!sameJson(parent[last], op.value))
        throw new Error(`${op.path}: is ${JSON.stringify(parent[last])} now, not ${JSON.stringify(op.value)} as the check saw it`)
    } else parent[last] = structuredClone(op.value)
  }
  return out
}

/** JSON equality, key order aside. */
function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null || Array.isArray(a) !== Array.isArray(b)) return false
  const ka = Object.keys(a).filter((k) => (a as Record<string, unknown>)[k] !== undefined)
  const kb = Object.keys(b).filter((k) => (b as Record<string, unknown>)[k] !== undefined)
  return ka.length === kb.length && ka.every((k) => sameJson((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
}
