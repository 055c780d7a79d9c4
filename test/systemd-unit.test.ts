/**
 * The systemd unit and the udev rule in systemd/: the unit is rated by the real
 * `systemd-analyze security --offline=true` (exposure <= 2.0) and checked by
 * `systemd-analyze verify`; the directives the daemon needs to keep working (serial
 * devices, dialout, the address families, the state and config directories, notify,
 * restart policy) are asserted one by one. udevadm is not on every test machine, so the
 * udev rule is linted here (well-formed KEY op "value" pairs, known keys, operators that
 * suit the key, GOTO targets that exist), and checked for what it must do.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { packagePath } from '../core/paths.js'
import { EXIT_CONFIG, DEFAULT_CONFIG } from '../daemon/cli-common.js'
import { binNodeFlags } from '../bench/lib.js'
import { DEFAULT_NODE_RED_USER } from '../daemon/nodered/index.js'
import { CHANNEL_CREDENTIAL, CHANNEL_SOCKET } from '../daemon/nodered/wire.js'

const UNIT_FILE = packagePath('systemd', 'outpost.service')
const RULE_FILE = packagePath('systemd', '99-outpost-rs485.rules')

type Unit = Map<string, Map<string, string[]>>

/** systemd's unit syntax: [Section], Key=Value, repeated keys accumulate, # and ; comments. */
function parseUnit(text: string): Unit {
  const unit: Unit = new Map()
  let section: Map<string, string[]> | undefined
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim()
    if (line === '' || line.startsWith('#') || line.startsWith(';')) return
    const head = /^\[(\w+)\]$/.exec(line)
    if (head) {
      section = new Map()
      unit.set(head[1]!, section)
      return
    }
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line)
    if (!kv || !section) throw new Error(`${UNIT_FILE}:${i + 1}: not a Key=Value line in a section: ${raw}`)
    section.set(kv[1]!, [...(section.get(kv[1]!) ?? []), kv[2]!])
  })
  return unit
}

function exposure(file: string): { value: number; output: string } {
  const r = spawnSync('systemd-analyze', ['security', '--offline=true', '--no-pager', file], { encoding: 'utf8' })
  const output = r.stdout + r.stderr
  const m = /Overall exposure level for [\w.-]+: (\d+\.\d)/.exec(output)
  if (!m) throw new Error(`systemd-analyze security printed no overall exposure (exit ${r.status}):\n${output}`)
  return { value: Number(m[1]), output }
}

const unit = parseUnit(readFileSync(UNIT_FILE, 'utf8'))
const service = unit.get('Service') ?? new Map<string, string[]>()
const one = (key: string): string | undefined => service.get(key)?.at(-1)
const words = (key: string): string[] => (service.get(key) ?? []).flatMap((v) => v.split(/\s+/).filter(Boolean))

t.test('systemd-analyze security --offline rates the unit 2.0 or better', async (t) => {
  const { value, output } = exposure(UNIT_FILE)
  t.ok(value <= 2.0, `overall exposure ${value} <= 2.0`)
  t.comment(`exposure ${value}`)
  t.notMatch(output, /Failed to|Unknown (key|lvalue)/, 'every directive is understood')

  // The same measurement on the unit without its hardening must come out exposed,
  // or the figure above would prove nothing.
  const dir = mkdtempSync(join(tmpdir(), 'outpost-unit-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const bare = join(dir, 'outpost.service')
  writeFileSync(bare, `[Service]\nType=notify\nUser=outpost\nExecStart=${one('ExecStart')}\n`)
  t.ok(exposure(bare).value > 8, 'the bare unit is rated exposed (> 8)')
})

t.test('systemd-analyze verify accepts the unit', async (t) => {
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', UNIT_FILE], { encoding: 'utf8' })
  t.equal(r.status, 0, `systemd-analyze verify: ${r.stderr}`)
  t.notMatch(r.stderr, /outpost\.service/, 'no warning about the unit')
})

t.test('the unit keeps what the daemon needs', async (t) => {
  t.equal(one('Type'), 'notify', 'Type=notify: the daemon sends READY=1')
  t.equal(one('NotifyAccess'), 'all', 'NotifyAccess=all: READY/WATCHDOG come from the systemd-notify child')
  t.ok(Number(one('WatchdogSec')) >= 10, 'a watchdog the daemon feeds at half the period')
  t.equal(
    one('ExecStart'),
    `/usr/bin/node ${binNodeFlags(packagePath('bin', 'outpost.ts')).join(' ')} /opt/outpost/dist/daemon/cli.js run --config ${DEFAULT_CONFIG}`,
    'runs the installed CLI on the default config, with the node flags of the outpost bin',
  )
  t.equal(one('Restart'), 'always')
  t.ok(words('RestartPreventExitStatus').includes(String(EXIT_CONFIG)), `an invalid config (exit ${EXIT_CONFIG}) does not restart-loop`)
  t.ok(Number(one('TimeoutStopSec')) > 15, "TimeoutStopSec above the daemon's own 15 s stop bound")

  t.equal(one('User'), 'outpost')
  t.ok(words('SupplementaryGroups').includes('dialout') || one('Group') === 'dialout', 'in dialout for the serial ports')
  t.equal(one('StateDirectory'), 'outpost', 'StateDirectory=outpost (/var/lib/outpost, owned by the service user)')
  t.ok(words('ReadWritePaths').includes('/var/lib/outpost'), 'the journal directory is writable under ProtectSystem=strict')
  t.ok(words('ReadWritePaths').includes('/etc/outpost'), 'the config directory too: the setup page and the config API save site.json there')
  t.equal(one('ConfigurationDirectoryMode'), '0770', 'group outpost may write it')
  t.equal(one('ProtectSystem'), 'strict')
  t.equal(one('ConfigurationDirectory'), 'outpost', 'ConfigurationDirectory=outpost (/etc/outpost)')

  t.equal(one('DevicePolicy'), 'closed')
  const allowed = (service.get('DeviceAllow') ?? []).map((v) => v.split(/\s+/))
  for (const major of ['char-ttyUSB', 'char-ttyACM', 'char-ttyAMA', 'char-ttyS']) {
    t.ok(
      allowed.some(([dev, mode]) => dev === major && mode === 'rw'),
      `DeviceAllow=${major} rw`,
    )
  }
  t.not(one('PrivateDevices'), 'yes', 'PrivateDevices would hide /dev/ttyUSB* and /dev/serial/by-id')

  const families = words('RestrictAddressFamilies')
  for (const f of ['AF_UNIX', 'AF_INET', 'AF_INET6']) t.ok(families.includes(f), `RestrictAddressFamilies has ${f}`)
  t.notOk(
    families.some((f) => f.startsWith('~')),
    'an allow list, not a deny list',
  )
  t.not(one('PrivateNetwork'), 'yes', 'the network stays reachable')
  t.not(one('MemoryDenyWriteExecute'), 'yes', "V8's JIT needs writable executable memory")
  t.not(one('IPAddressDeny'), 'any', 'no IP deny list: the broker and Modbus TCP gateways can be anywhere')

  t.same(unit.get('Install')?.get('WantedBy'), ['multi-user.target'])
  const docs = (unit.get('Unit')?.get('Documentation') ?? []).flatMap((v) => v.split(/\s+/))
  t.ok(docs.length > 0, 'Documentation= is set')
  for (const d of docs) {
    const installed = /^file:\/opt\/outpost\/(.+)$/.exec(d)?.[1]
    t.ok(installed !== undefined && existsSync(packagePath(installed)), `${d} is a file of the package`)
  }
})

// ---------------------------------------------------------------- Node-RED's unit

const NR_UNIT_FILE = packagePath('systemd', 'outpost-node-red.service')
const nrUnit = parseUnit(readFileSync(NR_UNIT_FILE, 'utf8'))
const nrService = nrUnit.get('Service') ?? new Map<string, string[]>()
const nrOne = (key: string): string | undefined => nrService.get(key)?.at(-1)
const nrWords = (key: string): string[] => (nrService.get(key) ?? []).flatMap((v) => v.split(/\s+/).filter(Boolean))

t.test("Node-RED's unit: rated at least as strict as the daemon's, verified", async (t) => {
  const { value, output } = exposure(NR_UNIT_FILE)
  const daemon = exposure(UNIT_FILE).value
  t.ok(value <= daemon && value <= 2.0, `overall exposure ${value} <= the daemon's ${daemon} (and 2.0)`)
  t.comment(`exposure ${value}`)
  t.notMatch(output, /Failed to|Unknown (key|lvalue)/, 'every directive is understood')
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', NR_UNIT_FILE], { encoding: 'utf8' })
  t.equal(r.status, 0, `systemd-analyze verify: ${r.stderr}`)
})

t.test("Node-RED's unit: its own user, nothing of the daemon's, the channel", async (t) => {
  t.equal(nrOne('User'), DEFAULT_NODE_RED_USER)
  t.equal(nrOne('Group'), DEFAULT_NODE_RED_USER)
  t.same(nrWords('SupplementaryGroups'), [], 'no supplementary group (no dialout, no outpost)')
  t.equal(
    nrOne('StateDirectory'),
    'outpost-node-red',
    'its own state directory, /var/lib/outpost-node-red (nodeRed.userDir default: <storage.dir>-node-red)',
  )
  for (const p of ['/var/lib/outpost', '/etc/outpost'])
    t.ok(
      nrWords('InaccessiblePaths').some((w) => w.replace(/^-/, '') === p),
      `${p} is inaccessible`,
    )
  t.equal(nrOne('PrivateDevices'), 'yes', 'no devices')
  t.equal(nrOne('ProtectSystem'), 'strict')
  t.equal(nrOne('NoNewPrivileges'), 'yes')
  t.equal(nrOne('CapabilityBoundingSet'), '')
  t.equal(nrOne('Restart'), 'always', 'systemd restarts it')
  t.ok(Number(nrOne('WatchdogSec')) > 0, 'a Node-RED that stops feeding its watchdog (a busy loop) is killed and restarted')
  t.match(nrOne('MemoryMax') ?? '', /^\d+M$/, 'a memory bound')
  t.equal(nrOne('PartOf'), undefined, 'PartOf is in [Unit]')
  t.equal(nrUnit.get('Unit')?.get('PartOf')?.at(-1), 'outpost.service', 'stopped and restarted with the daemon')
  const exec = nrOne('ExecStart') ?? ''
  t.equal(
    exec.replace(/ --max-old-space-size=\d+ /, ' '),
    `/usr/bin/node ${binNodeFlags(packagePath('bin', 'outpost.ts')).join(' ')} /opt/outpost/dist/daemon/nodered/child.js --connect /run/outpost/node-red.sock`,
    "the bin's node flags (as the daemon's unit), the installed entry point, the daemon's socket",
  )
  t.match(exec, / --max-old-space-size=\d+ /, 'and a heap bound')
  t.ok(existsSync(packagePath('dist/daemon/nodered/child.js')), 'the entry point is built')
  // The socket it connects to is the daemon's: RuntimeDirectory=outpost, named as the daemon names it.
  t.equal(one('RuntimeDirectory'), 'outpost')
  t.equal(exec.split(' ').at(-1), `/run/${one('RuntimeDirectory')}/${CHANNEL_SOCKET}`)
  const cred = `${CHANNEL_CREDENTIAL}:/etc/outpost/node-red-channel.token`
  t.equal(nrOne('LoadCredential'), cred, 'the channel credential')
  t.equal(one('LoadCredential'), cred, 'the same one in the daemon’s unit')
})

// ---------------------------------------------------------------- the udev rule

const MATCH_KEYS = new Set([
  'ACTION',
  'DEVPATH',
  'KERNEL',
  'KERNELS',
  'SUBSYSTEM',
  'SUBSYSTEMS',
  'DRIVER',
  'DRIVERS',
  'TAGS',
  'TEST',
  'PROGRAM',
  'RESULT',
  'CONST',
])
const ASSIGN_KEYS = new Set(['NAME', 'SYMLINK', 'OWNER', 'GROUP', 'MODE', 'SECLABEL', 'RUN', 'LABEL', 'GOTO', 'IMPORT', 'OPTIONS'])
const BOTH_KEYS = new Set(['ATTR', 'ATTRS', 'ENV', 'TAG', 'SYSCTL'])
/** Keys that always name something in braces (ATTR{latency_timer}), and keys that may. */
const NEEDS_NAME = new Set(['ATTR', 'ATTRS', 'ENV', 'SYSCTL', 'CONST', 'IMPORT', 'SECLABEL'])
const MAY_NAME = new Set(['RUN', 'TEST'])

interface Pair {
  key: string
  attr?: string
  op: string
  value: string
}

/** udev rules syntax, as udev(7) describes it; returns the rules and every problem with its line. */
function lintUdevRules(text: string): { rules: Pair[][]; problems: string[] } {
  const rules: Pair[][] = []
  const problems: string[] = []
  const labels = new Set<string>()
  const gotos: { label: string; line: number }[] = []
  text.split('\n').forEach((raw, i) => {
    const n = i + 1
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) return
    if (raw.endsWith('\\')) problems.push(`line ${n}: continuation lines are not used here`)
    const pairs: Pair[] = []
    let rest = line
    while (rest.length > 0) {
      const m = /^([A-Z_]+)(?:\{([^}]+)\})?\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"(\s*,\s*|\s+|$)/.exec(rest)
      if (!m) {
        problems.push(`line ${n}: malformed at: ${rest}`)
        break
      }
      const [whole, key, attr, op, value, sep] = m as unknown as [string, string, string | undefined, string, string, string]
      const isMatch = op === '==' || op === '!='
      if (!MATCH_KEYS.has(key) && !ASSIGN_KEYS.has(key) && !BOTH_KEYS.has(key)) problems.push(`line ${n}: unknown key ${key}`)
      else if (isMatch && ASSIGN_KEYS.has(key)) problems.push(`line ${n}: ${key} cannot be matched (${op})`)
      else if (!isMatch && MATCH_KEYS.has(key)) problems.push(`line ${n}: ${key} cannot be assigned (${op})`)
      if (NEEDS_NAME.has(key) && attr === undefined) problems.push(`line ${n}: ${key} needs {name}`)
      if (!NEEDS_NAME.has(key) && !MAY_NAME.has(key) && attr !== undefined) problems.push(`line ${n}: ${key} takes no {name}`)
      if (key === 'MODE' && !/^0[0-7]{3}$/.test(value)) problems.push(`line ${n}: MODE "${value}" is not an octal mode`)
      if (key === 'LABEL') labels.add(value)
      if (key === 'GOTO') gotos.push({ label: value, line: n })
      for (const sub of value.matchAll(/\$(\w+)(\{[^}]*\})?/g)) {
        if (
          ![
            'env',
            'attr',
            'kernel',
            'number',
            'devpath',
            'id',
            'driver',
            'major',
            'minor',
            'result',
            'parent',
            'name',
            'links',
            'root',
            'sys',
            'devnode',
            'tempnode',
          ].includes(sub[1]!)
        )
          problems.push(`line ${n}: unknown substitution $${sub[1]}`)
      }
      pairs.push({ key, attr, op, value })
      rest = rest.slice(whole.length)
      if (!sep.includes(',') && rest.length > 0) problems.push(`line ${n}: missing comma before ${rest}`)
    }
    if (pairs.length > 0) rules.push(pairs)
  })
  for (const g of gotos) if (!labels.has(g.label)) problems.push(`line ${g.line}: GOTO "${g.label}" has no LABEL`)
  return { rules, problems }
}

t.test('the udev rule lints clean (udevadm is not on every test machine)', async (t) => {
  const { rules, problems } = lintUdevRules(readFileSync(RULE_FILE, 'utf8'))
  t.same(problems, [], 'no syntax problems')
  t.ok(rules.length >= 6, `${rules.length} rules parsed`)

  // The linter must catch what it claims to catch.
  const bad = lintUdevRules(
    [
      'SUBSYSTEM="tty", GROUP=="dialout"',
      'ATTRS{idVendor}=="0403" MODE="660"',
      'FOO=="x"',
      'ENV{X}=="1", GOTO="nowhere"',
      'SYMLINK+="x-$envv{ID_SERIAL}"',
      'ATTR="1"',
    ].join('\n'),
  ).problems
  t.match(bad, [
    /line 1: SUBSYSTEM cannot be assigned/,
    /line 1: GROUP cannot be matched/,
    /line 2: missing comma/,
    /line 2: MODE "660" is not an octal mode/,
    /line 3: unknown key FOO/,
    /line 5: unknown substitution \$envv/,
    /line 6: ATTR needs \{name\}/,
    /line 4: GOTO "nowhere" has no LABEL/,
  ])
})

t.test('the udev rule does its job for every supported adapter', async (t) => {
  const { rules } = lintUdevRules(readFileSync(RULE_FILE, 'utf8'))
  const has = (r: Pair[], key: string, op: string, value: string | RegExp, attr?: string) =>
    r.some(
      (p) =>
        p.key === key &&
        p.op === op &&
        (attr === undefined || p.attr === attr) &&
        (typeof value === 'string' ? p.value === value : value.test(p.value)),
    )

  const latency = rules.find((r) => has(r, 'ATTR', '=', '1', 'latency_timer'))
  t.ok(latency, 'an FTDI latency_timer of 1 ms')
  t.ok(
    latency && has(latency, 'SUBSYSTEM', '==', 'usb-serial') && has(latency, 'DRIVER', '==', 'ftdi_sio'),
    'set on the ftdi_sio usb-serial device, where the attribute lives',
  )

  const adapters: Record<string, string[]> = { '0403': ['6001', '6010', '6011', '6014', '6015'], '1a86': ['7523'], '10c4': ['ea60'] }
  for (const [vid, pids] of Object.entries(adapters)) {
    const r = rules.find((r) => has(r, 'ATTRS', '==', vid, 'idVendor'))
    const listed = r?.find((p) => p.key === 'ATTRS' && p.attr === 'idProduct')?.value.split('|') ?? []
    t.same(listed.sort(), [...pids].sort(), `${vid}: products ${pids.join(', ')}`)
  }
  // The tty gets dialout 0660 and the stable symlink, once one of the adapters matched.
  const all = rules.flat()
  t.ok(
    all.some((p) => p.key === 'GROUP' && p.value === 'dialout'),
    'GROUP="dialout"',
  )
  t.ok(
    all.some((p) => p.key === 'MODE' && p.value === '0660'),
    'MODE="0660"',
  )
  t.ok(
    all.some((p) => p.key === 'SYMLINK' && p.op === '+=' && p.value.startsWith('outpost/rs485-$env{ID_SERIAL_SHORT}')),
    'a /dev/outpost/rs485-<serial> symlink',
  )
  t.ok(
    all.some((p) => p.key === 'ENV' && p.attr === 'ID_MM_DEVICE_IGNORE' && p.value === '1'),
    'ModemManager keeps off the bus',
  )
  t.ok(rules[0] && has(rules[0], 'ACTION', '==', 'remove') && has(rules[0], 'GOTO', '=', /./), 'nothing runs on remove')

  // Where udevadm verify exists (systemd 254 and later), it must agree.
  const v = spawnSync('udevadm', ['verify', RULE_FILE], { encoding: 'utf8' })
  if (v.error === undefined && !/Unknown command|invalid/i.test(v.stderr)) t.equal(v.status, 0, `udevadm verify: ${v.stdout}${v.stderr}`)
})
