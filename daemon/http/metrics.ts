/**
 * GET /metrics: Prometheus text format (prom-client), on a Registry of our own
 * (never the global default, so two daemons in one process — tests — don't mix).
 *
 * Gauges and the bus counters are read from the daemon's views at scrape time
 * (collect callbacks); the session counters count `session.ended` records as the
 * daemon commits them (from this process's start, as Prometheus counters do).
 * Every name starts with `outpost_`; the list is in README.md "Metrics".
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client'
import type { Daemon } from '../daemon.js'
import { OUTLET_STATES, PHASES, type JournalRecord, type OutletStatus } from '../../core/types.js'
import { oldestUnackedTs } from './views.js'
import { REJECT_REASONS } from '../command-gateway.js'
import type { NodeRedStatus } from '../nodered/status.js'

const STATES = OUTLET_STATES

export class Metrics {
  readonly registry = new Registry()
  private readonly onRecord: (r: JournalRecord) => void

  constructor(
    private readonly daemon: Daemon,
    readonly now: () => number,
  ) {
    const registers = [this.registry]
    const outlets = (): OutletStatus[] => daemon.outletStatuses()
    const buses = () => daemon.buses?.health() ?? []

    type Rows = [Record<string, string>, number][]
    // A metric whose samples are read from the daemon at scrape time: `rows` gives labels and value.
    const gauge = (name: string, help: string, labelNames: string[], rows: () => Rows): void => {
      new Gauge({
        name,
        help,
        labelNames,
        registers,
        collect() {
          this.reset()
          for (const [l, v] of rows()) this.set(l, v)
        },
      })
    }
    const counter = (name: string, help: string, labelNames: string[], rows: () => Rows): void => {
      new Counter({
        name,
        help,
        labelNames,
        registers,
        collect() {
          this.reset()
          for (const [l, v] of rows()) this.inc(l, v)
        },
      })
    }
    const perOutlet = (pick: (s: OutletStatus) => number) => (): Rows => outlets().map((s) => [{ outlet: s.outlet }, pick(s)])
    // Node-RED, while the daemon supervises one (none: no samples).
    const nodeRed = (pick: (s: NodeRedStatus) => number) => (): Rows => {
      const s = daemon.nodeRed?.status()
      return s ? [[{}, pick(s)]] : []
    }
    gauge(
      'outpost_node_red_up',
      'Node-RED runs and answers (1), or is starting, restarting or stopped (0).',
      [],
      nodeRed((s) => (s.state === 'running' ? 1 : 0)),
    )
    counter(
      'outpost_node_red_restarts_total',
      'Node-RED restarts after it exited or was killed for not answering.',
      [],
      nodeRed((s) => s.restarts),
    )
    counter(
      'outpost_node_red_commands_total',
      "Commands Node-RED's nodes sent over the channel.",
      [],
      nodeRed((s) => s.commands),
    )
    counter(
      'outpost_node_red_commands_rate_limited_total',
      'Commands from Node-RED refused rate-limited (over nodeRed.commandRate), never reaching the gateway.',
      [],
      nodeRed((s) => s.refused),
    )
    counter(
      'outpost_node_red_events_dropped_total',
      'Daemon events not sent to a Node-RED that stopped reading (more than 4 MiB waiting).',
      [],
      nodeRed((s) => s.droppedEvents),
    )
    gauge(
      'outpost_outlet_current_amperes',
      'Current drawn at the outlet (last reading).',
      ['outlet'],
      perOutlet((s) => s.currentA),
    )
    gauge(
      'outpost_outlet_power_watts',
      'Active power at the outlet (last reading).',
      ['outlet'],
      perOutlet((s) => s.powerW),
    )
    gauge(
      'outpost_outlet_session_energy_wh',
      'Energy of the open session so far (0 without one).',
      ['outlet'],
      perOutlet((s) => s.energyWh),
    )
    gauge(
      'outpost_outlet_session_cost_minor',
      'Cost of the open session so far, minor currency units (0 without one).',
      ['outlet'],
      perOutlet((s) => s.cost),
    )
    gauge('outpost_outlet_state', "The outlet's state: 1 for the state it is in, 0 for the others.", ['outlet', 'state'], () =>
      outlets().flatMap((s) => STATES.map((st): Rows[number] => [{ outlet: s.outlet, state: st }, s.state === st ? 1 : 0])),
    )

    const circuits = () => daemon.circuitStatuses()
    gauge(
      'outpost_circuit_current_amperes',
      "A circuit's current per phase: its feeder meter, else the sum of its switched-on outlets.",
      ['circuit', 'phase'],
      () => circuits().flatMap((c) => PHASES.map((ph, i): Rows[number] => [{ circuit: c.circuit, phase: ph }, c.currentA[i]!])),
    )
    gauge(
      'outpost_circuit_limit_amperes',
      "A circuit's limit per phase in force now (maxA, a set-circuit-limit, or the failsafe).",
      ['circuit'],
      () => circuits().map((c): Rows[number] => [{ circuit: c.circuit }, c.limitA]),
    )
    gauge('outpost_circuit_queue_length', 'Sessions waiting (queued) for room on the circuit.', ['circuit'], () =>
      circuits().map((c): Rows[number] => [{ circuit: c.circuit }, c.queue.length]),
    )
    const turns = new Counter({
      name: 'outpost_circuit_switchings_total',
      help: 'Relay switchings by the circuit rules since the process started: off (queued, by why) and on (resumed), per outlet.',
      labelNames: ['outlet', 'circuit', 'switch'],
      registers,
    })

    const sessions = new Counter({
      name: 'outpost_sessions_ended_total',
      help: 'Sessions ended (billed) since the process started, by reason.',
      labelNames: ['outlet', 'reason'],
      registers,
    })
    const energy = new Counter({
      name: 'outpost_energy_billed_wh_total',
      help: 'Energy billed in ended sessions since the process started.',
      labelNames: ['outlet'],
      registers,
    })
    const billed = new Counter({
      name: 'outpost_billed_minor_total',
      help: 'Session totals billed since the process started, minor currency units.',
      labelNames: ['currency'],
      registers,
    })
    this.onRecord = (r) => {
      if (r.type === 'session.queued') turns.inc({ outlet: r.outlet, circuit: r.circuit, switch: `off-${r.why}` })
      else if (r.type === 'session.resumed') turns.inc({ outlet: r.outlet, circuit: r.circuit, switch: 'on' })
      if (r.type !== 'session.ended') return
      sessions.inc({ outlet: r.outlet, reason: r.reason })
      energy.inc({ outlet: r.outlet }, r.energyWh)
      billed.inc({ currency: r.currency }, r.total)
    }
    daemon.on('record', this.onRecord)

    type Bus = ReturnType<typeof buses>[number]
    const perBus = (pick: (b: Bus) => number) => (): Rows => buses().map((b) => [{ bus: b.id }, pick(b)])
    // One counter per bus statistic, and whether the bus is open.
    const busCounters: [string, string, (b: Bus) => number][] = [
      ['outpost_bus_transactions_total', 'Modbus/serial transactions completed on the bus.', (b) => b.transactions],
      ['outpost_bus_timeouts_total', 'Requests on the bus that got no answer in time.', (b) => b.timeouts],
      ['outpost_bus_crc_errors_total', 'Frames with a bad CRC.', (b) => b.crcErrors],
      ['outpost_bus_exceptions_total', 'Modbus exception responses.', (b) => b.exceptions],
      ['outpost_bus_opens_total', 'Times the bus (port or TCP connection) was opened.', (b) => b.opens],
    ]
    for (const [name, help, pick] of busCounters) counter(name, help, ['bus'], perBus(pick))
    gauge(
      'outpost_bus_open',
      '1 while the bus is open, else 0.',
      ['bus'],
      perBus((b) => (b.state === 'open' ? 1 : 0)),
    )
    const perDevice = (pick: (d: Bus['devices'][number]) => number) => (): Rows =>
      buses().flatMap((b) => b.devices.map((d): Rows[number] => [{ bus: b.id, unit: String(d.unit) }, pick(d)]))
    counter(
      'outpost_device_transactions_total',
      'Transactions with one device (unit) on a bus.',
      ['bus', 'unit'],
      perDevice((d) => d.transactions),
    )
    counter(
      'outpost_device_failures_total',
      'Failed transactions with one device (timeouts, exceptions, bad frames).',
      ['bus', 'unit'],
      perDevice((d) => d.failures),
    )

    counter(
      'outpost_commands_rejected_total',
      'Commands refused with no id to answer to (too-large, not-json, no-id), since the process started.',
      ['reason'],
      () =>
        REJECT_REASONS.map((reason): Rows[number] => [{ reason }, (daemon.gateway as Daemon['gateway'] | undefined)?.rejectedCounts()[reason] ?? 0]),
    )

    const journal = () => daemon.records?.status()
    new Gauge({
      name: 'outpost_journal_head_seq',
      help: 'Last record seq journaled.',
      registers,
      collect() {
        this.set(journal()?.head ?? 0)
      },
    })
    new Gauge({
      name: 'outpost_journal_acked_seq',
      help: "The cloud's acknowledgement watermark.",
      registers,
      collect() {
        this.set(journal()?.acked ?? 0)
      },
    })
    new Gauge({
      name: 'outpost_journal_unacked_records',
      help: 'Records journaled, not yet acknowledged by the cloud.',
      registers,
      collect() {
        this.set(journal()?.unacked ?? 0)
      },
    })
    new Gauge({
      name: 'outpost_journal_fault',
      help: '1 once the journal refused a write (no charging until restart).',
      registers,
      collect() {
        this.set(journal()?.fault ? 1 : 0)
      },
    })

    const uplink = () => (daemon.records ? daemon.uplinkState() : undefined)
    new Gauge({
      name: 'outpost_uplink_online',
      help: '1 while connected to the broker, 0 offline or disabled.',
      registers,
      collect() {
        this.set(uplink()?.status === 'online' ? 1 : 0)
      },
    })
    new Gauge({
      name: 'outpost_uplink_enabled',
      help: '1 when an uplink is configured.',
      registers,
      collect() {
        this.set(daemon.config.uplink ? 1 : 0)
      },
    })
    new Gauge({
      name: 'outpost_uplink_backlog_records',
      help: "Records waiting for the cloud's acknowledgement.",
      registers,
      collect() {
        this.set(uplink()?.backlog ?? 0)
      },
    })
    new Gauge({
      name: 'outpost_uplink_oldest_unacked_age_seconds',
      help: 'Age of the oldest record not yet acknowledged (0 when none).',
      registers,
      async collect() {
        this.set(await oldestUnackedAgeS(daemon, now))
      },
    })

    new Gauge({
      name: 'outpost_ocpp_enabled',
      help: '1 when an OCPP central system is configured.',
      registers,
      collect() {
        this.set(daemon.config.ocpp ? 1 : 0)
      },
    })
    new Gauge({
      name: 'outpost_ocpp_online',
      help: '1 while connected to the OCPP central system with the boot accepted.',
      registers,
      collect() {
        const o = daemon.ocppState()
        this.set(o?.connected && o.accepted ? 1 : 0)
      },
    })
    new Gauge({
      name: 'outpost_ocpp_queued_messages',
      help: 'OCPP transaction messages waiting in the journal for the central system.',
      registers,
      collect() {
        this.set(daemon.ocppState()?.queued ?? 0)
      },
    })
    new Gauge({
      name: 'outpost_ocpp_held_messages',
      help: 'OCPP transaction messages the central system refused at every attempt: kept, sent again after the next reconnect.',
      registers,
      collect() {
        this.set(daemon.ocppState()?.held.length ?? 0)
      },
    })

    collectDefaultMetrics({ register: this.registry, prefix: 'outpost_' })
  }

  async text(): Promise<string> {
    return this.registry.metrics()
  }

  get contentType(): string {
    return this.registry.contentType
  }

  close(): void {
    this.daemon.off('record', this.onRecord)
    this.registry.clear()
  }
}

/** Seconds since the oldest record the cloud has not acknowledged was written (0 when none). */
export async function oldestUnackedAgeS(daemon: Daemon, now: () => number): Promise<number> {
  const ts = await oldestUnackedTs(daemon)
  return ts === null ? 0 : Math.max(0, (now() - Date.parse(ts)) / 1000)
}
