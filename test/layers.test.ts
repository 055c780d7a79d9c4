/**
 * The layers point one way, checked over the sources' import graph: core/ imports
 * nothing of the project, drivers/ only core/, the session engine only core/ and
 * nothing that does I/O, no folder imports a folder that imports it back, no module
 * imports a module that imports it back (type imports too), no module
 * imports the `outpost` executable (bin/outpost.ts) or the gateway's (daemon/cli.ts),
 * and the untyped error class is taken only by the errors.ts files that type it.
 *
 * The two sides: the gateway (core/, drivers/, daemon/) never imports the cloud side
 * (cloud/) nor PostgreSQL; the cloud side imports only core/ and the shared modules
 * named in CLOUD_MAY_LOAD, never the daemon's runtime. Only the bin names both, and it
 * loads each side's command lazily.
 */
import t from 'tap'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, normalize } from 'node:path'
import { packageRoot } from '../core/paths.js'

/** Each file's project imports (root-relative .ts paths; `lazy` those loaded with import()) and package imports. */
type Graph = Map<string, { local: string[]; packages: string[]; lazy?: string[] }>

/** Every .ts file under `tops` with its project imports (as root-relative .ts paths) and package imports. */
function importGraph(tops: string[]): Graph {
  const graph: Graph = new Map()
  const walk = (dir: string): void => {
    for (const e of readdirSync(join(packageRoot, dir), { withFileTypes: true })) {
      const path = join(dir, e.name)
      if (e.isDirectory()) walk(path)
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) {
        const source = readFileSync(join(packageRoot, path), 'utf8')
        const local: string[] = []
        const lazy: string[] = []
        const packages: string[] = []
        // `import … from 'x'`, `export … from 'x'`, `import('x')`, and a bare `import 'x'` (loaded for its effects).
        for (const m of source.matchAll(
          /(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s*['"]([^'"]+)['"]|import\s*\(\s*['"]([^'"]+)['"]\s*\)|(?:^|\n)\s*import\s*['"]([^'"]+)['"]/g,
        )) {
          const spec = (m[1] ?? m[2] ?? m[3])!
          if (spec.startsWith('.')) {
            const dep = normalize(join(dirname(path), spec)).replace(/\.js$/, '.ts')
            local.push(dep)
            if (m[2] !== undefined) lazy.push(dep)
          } else packages.push(spec)
        }
        graph.set(path, { local, packages, lazy })
      }
    }
  }
  for (const top of tops) walk(top)
  return graph
}

/** The folder a file belongs to for layering: daemon/engine is a layer of its own, other folders are their top folder. */
function folderOf(file: string): string {
  return file.startsWith('daemon/engine/') ? 'daemon/engine' : file.split('/')[0]!
}

/** Pairs of folders that import each other, directly or through others (each pair once). */
function folderCycles(graph: Graph, folder: (file: string) => string): string[] {
  const edges = new Map<string, Set<string>>()
  for (const [file, { local }] of graph) {
    for (const dep of local) {
      const a = folder(file)
      const b = folder(dep)
      if (a !== b) edges.set(a, (edges.get(a) ?? new Set()).add(b))
    }
  }
  const reaches = (from: string, to: string): boolean => {
    const seen = new Set<string>()
    const pending = [from]
    while (pending.length) {
      const f = pending.pop()!
      if (f === to) return true
      if (seen.has(f)) continue
      seen.add(f)
      pending.push(...(edges.get(f) ?? []))
    }
    return false
  }
  const folders = [...new Set([...edges.keys(), ...[...edges.values()].flatMap((s) => [...s])])].sort()
  const out: string[] = []
  for (const a of folders) for (const b of folders) if (a < b && reaches(a, b) && reaches(b, a)) out.push(`${a} <-> ${b}`)
  return out
}

/** Modules that load themselves through their imports (each cycle named by its first file, once). */
function moduleCycles(graph: Graph): string[] {
  const out: string[] = []
  const inCycle = new Set<string>()
  for (const file of [...graph.keys()].sort()) {
    if (inCycle.has(file)) continue
    const back = (graph.get(file)?.local ?? []).filter((dep) => dep !== file && closure(graph, dep).includes(file))
    if (back.length === 0) continue
    for (const dep of back) for (const f of closure(graph, dep)) if (closure(graph, f).includes(file)) inCycle.add(f)
    out.push(`${file} <-> ${back.sort().join(', ')}`)
  }
  return out
}

/** Every file `start` loads, itself included (`eager`: only those loaded before any import() runs). */
function closure(graph: Graph, start: string, eager = false): string[] {
  const seen = new Set<string>()
  const pending = [start]
  while (pending.length) {
    const f = pending.pop()!
    if (seen.has(f)) continue
    seen.add(f)
    const { local = [], lazy = [] } = graph.get(f) ?? {}
    pending.push(...(eager ? local.filter((d) => !lazy.includes(d)) : local))
  }
  return [...seen].sort()
}

/** Every import from a file `from` accepts to a file or package `allowed` refuses, as "file -> import". */
function forbiddenImports(graph: Graph, from: (file: string) => boolean, allowed: (dep: string) => boolean): string[] {
  const out: string[] = []
  for (const [file, { local, packages }] of [...graph].sort(([a], [b]) => (a < b ? -1 : 1)))
    if (from(file)) for (const dep of [...local, ...packages]) if (!allowed(dep)) out.push(`${file} -> ${dep}`)
  return out
}

/**
 * What the cloud side may load of the gateway's folders, and why: the contract's shared
 * code (the chain and OCMF verification, the broker options, the command-line plumbing,
 * the error catalog with the code lists it gathers). None of it is the daemon's runtime:
 * no journal store, engine, driver, uplink or daemon. Each of these may load only core/
 * and the others, so a runtime import added to one of them fails here.
 */
const CLOUD_MAY_LOAD: Record<string, string> = {
  'daemon/journal/chain.ts': 'the record hash and chain rules: one definition for the journal that writes and every checker',
  'daemon/uplink/chain.ts': "a run of records checked against a known point: the cloud's view of the chain rules",
  'daemon/ocmf.ts': "the OCMF a session.ended carries: its payload, parsing and the signature's check",
  'daemon/uplink/connection.ts': 'broker credentials and TLS files as mqtt.js options, for every MQTT client of either side',
  'daemon/cli-common.ts': 'exit statuses, the argument parser, the version',
  'daemon/errors.ts': 'the error catalog: every code either side throws, one list (docs/errors.md)',
  'daemon/engine/errors.ts': "the engine's code lists, which the catalog gathers",
  'drivers/errors.ts': "the drivers' code lists, which the catalog gathers",
}

/** The gateway: any file of these folders. */
const onGateway = (f: string): boolean => f.startsWith('core/') || f.startsWith('drivers/') || f.startsWith('daemon/')
/** The cloud side's and the gateway's rules as import checks (the packages named are the ones each side may not load). */
const sideRules = (shared: Record<string, string>) => [
  {
    rule: 'the gateway never imports the cloud side, the bin, nor PostgreSQL',
    from: onGateway,
    allowed: (d: string) => !d.startsWith('cloud/') && !d.startsWith('bin/') && d !== 'pg',
  },
  {
    rule: "the cloud side and what it shares load only the cloud side, core/ and the shared modules, never the daemon's runtime",
    from: (f: string) => f.startsWith('cloud/') || f in shared,
    allowed: (d: string) => !onGateway(d) || d.startsWith('core/') || d in shared || !d.endsWith('.ts'),
  },
]

const graph = importGraph(['bin', 'cloud', 'core', 'drivers', 'daemon'])

t.test('the checker finds a folder cycle, direct or through a third folder', async (t) => {
  const g: Graph = new Map([
    ['a/x.ts', { local: ['b/y.ts'], packages: [] }],
    ['b/y.ts', { local: ['c/z.ts'], packages: [] }],
    ['c/z.ts', { local: ['a/w.ts'], packages: [] }],
    ['a/w.ts', { local: [], packages: [] }],
  ])
  t.same(
    folderCycles(g, (f) => f.split('/')[0]!),
    ['a <-> b', 'a <-> c', 'b <-> c'],
  )
  g.set('c/z.ts', { local: [], packages: [] })
  t.same(
    folderCycles(g, (f) => f.split('/')[0]!),
    [],
  )
})

t.test('the graph was read: the composition root reaches the drivers, the engine and the journal', async (t) => {
  const all = closure(graph, 'daemon/daemon.ts')
  for (const f of ['drivers/site.ts', 'daemon/engine/80-step.ts', 'daemon/journal/journal.ts', 'core/types.ts']) t.ok(all.includes(f), f)
})

t.test('no folder imports a folder that imports it back', async (t) => {
  t.same(folderCycles(graph, folderOf), [])
})

t.test('the checker finds a module cycle, direct or through a third module', async (t) => {
  const g: Graph = new Map([
    ['a.ts', { local: ['b.ts'], packages: [] }],
    ['b.ts', { local: ['c.ts'], packages: [] }],
    ['c.ts', { local: ['a.ts'], packages: [] }],
    ['d.ts', { local: ['a.ts'], packages: [] }],
  ])
  t.same(moduleCycles(g), ['a.ts <-> b.ts'])
  g.set('c.ts', { local: [], packages: [] })
  t.same(moduleCycles(g), [])
})

t.test('no module imports a module that imports it back, types included', async (t) => {
  // daemon/'s subfolders use the daemon's shared modules (errors.ts, log.ts, config.ts) that its
  // composition root sits beside; what must never happen is a module loading itself back.
  t.same(moduleCycles(graph), [])
})

t.test('core/ imports nothing of the project; drivers/ only core/', async (t) => {
  for (const [file, { local }] of graph) {
    if (file.startsWith('core/'))
      t.same(
        local.filter((d) => !d.startsWith('core/')),
        [],
        file,
      )
    if (file.startsWith('drivers/'))
      t.same(
        local.filter((d) => !d.startsWith('core/') && !d.startsWith('drivers/')),
        [],
        file,
      )
  }
})

t.test('the session engine loads only itself and core/, and nothing that does I/O', async (t) => {
  const files = closure(graph, 'daemon/engine/index.ts')
  t.same(
    files.filter((f) => !f.startsWith('daemon/engine/') && !f.startsWith('core/')),
    [],
    'no file outside the engine and core/',
  )
  t.notOk(files.includes('core/paths.ts'), 'not the package paths (they probe the file system)')
  const packages = [...new Set(files.flatMap((f) => graph.get(f)!.packages))].sort()
  t.same(packages, ['luxon'], 'no node: built-in (fs, net, ...) and no package but luxon')
})

t.test("nothing imports the outpost executable, and only it the gateway's; the commands share daemon/cli-common.ts", async (t) => {
  for (const [file, { local }] of graph) {
    t.notOk(local.includes('bin/outpost.ts'), `${file} does not import bin/outpost.ts`)
    if (file !== 'bin/outpost.ts') t.notOk(local.includes('daemon/cli.ts'), `${file} does not import daemon/cli.ts`)
  }
  t.ok(graph.get('daemon/commands/run.ts')!.local.includes('daemon/cli-common.ts'))
  t.ok(graph.get('cloud/cli.ts')!.local.includes('daemon/cli-common.ts'))
})

t.test('the untyped error class is taken only by the errors.ts that type it', async (t) => {
  const takers = [...graph]
    .filter(([, { local }]) => local.includes('core/errors.ts'))
    .map(([f]) => f)
    .sort()
  t.same(takers, ['daemon/engine/errors.ts', 'daemon/errors.ts', 'drivers/errors.ts'])
})

t.test('the side checker finds a gateway file importing the cloud side, and a cloud file or a shared module loading the runtime', async (t) => {
  const g: Graph = new Map([
    ['daemon/a.ts', { local: ['cloud/x.ts', 'core/t.ts'], packages: ['pg', 'mqtt'] }],
    ['cloud/x.ts', { local: ['daemon/shared.ts', 'daemon/runtime.ts', 'core/t.ts', 'cloud/y.ts'], packages: ['pg'] }],
    ['daemon/shared.ts', { local: ['daemon/runtime.ts', 'core/t.ts'], packages: ['node:crypto'] }],
    ['daemon/runtime.ts', { local: [], packages: [] }],
    ['core/t.ts', { local: [], packages: [] }],
    ['cloud/y.ts', { local: [], packages: [] }],
  ])
  const [gateway, cloud] = sideRules({ 'daemon/shared.ts': 'shared' })
  t.same(forbiddenImports(g, gateway!.from, gateway!.allowed), ['daemon/a.ts -> cloud/x.ts', 'daemon/a.ts -> pg'])
  t.same(forbiddenImports(g, cloud!.from, cloud!.allowed), ['cloud/x.ts -> daemon/runtime.ts', 'daemon/shared.ts -> daemon/runtime.ts'])
  g.set('daemon/a.ts', { local: ['core/t.ts'], packages: ['mqtt'] })
  g.set('cloud/x.ts', { local: ['daemon/shared.ts', 'core/t.ts', 'cloud/y.ts'], packages: ['pg'] })
  g.set('daemon/shared.ts', { local: ['core/t.ts'], packages: ['node:crypto'] })
  for (const r of [gateway!, cloud!]) t.same(forbiddenImports(g, r.from, r.allowed), [], r.rule)
})

t.test('the gateway and the cloud side apart: each imports only what its rule allows', async (t) => {
  t.ok(
    [...graph.keys()].some((f) => f.startsWith('cloud/')),
    'the graph holds the cloud side',
  )
  for (const f of Object.keys(CLOUD_MAY_LOAD)) t.ok(graph.has(f), `${f} (shared with the cloud side) exists`)
  for (const r of sideRules(CLOUD_MAY_LOAD)) t.same(forbiddenImports(graph, r.from, r.allowed), [], r.rule)
  for (const root of ['daemon/daemon.ts', 'daemon/commands/run.ts', 'daemon/cli.ts']) {
    t.notOk(
      closure(graph, root).some((f) => graph.get(f)!.packages.includes('pg')),
      `${root} loads no PostgreSQL client`,
    )
  }
})

t.test('the bin names both sides and loads each command only when its word is given', async (t) => {
  const bin = graph.get('bin/outpost.ts')!
  t.same(
    bin.local.filter((d) => d.startsWith('cloud/')),
    ['cloud/cli.ts'],
    "the cloud side's entry",
  )
  t.ok(bin.lazy?.includes('cloud/cli.ts'), 'loaded by import(), when `ingest` is given')
  const eager = closure(graph, 'bin/outpost.ts', true)
  t.same(
    eager.filter((f) => f.startsWith('cloud/') || f.startsWith('daemon/commands/')),
    [],
    'no command of either side loads before its word',
  )
  t.notOk(
    eager.some((f) => graph.get(f)!.packages.includes('pg')),
    'nor PostgreSQL',
  )
})

t.test('the cloud side checks chains with the chain code and hashes nothing itself', async (t) => {
  t.ok(graph.get('cloud/store.ts')!.local.includes('daemon/uplink/chain.ts'), "the ingest checks chains with the uplink's chain code")
  t.notOk(
    [...graph.keys()].filter((f) => f.startsWith('cloud/')).some((f) => graph.get(f)!.packages.includes('node:crypto') && f !== 'cloud/worker.ts'),
    'and hashes nothing itself',
  )
})
