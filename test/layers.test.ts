/**
 * The layers point one way, checked over the sources' import graph: core/ imports
 * nothing of the project, drivers/ only core/, the session engine only core/ and
 * nothing that does I/O, no folder imports a folder that imports it back, no module
 * imports a module that imports it back (type imports too), no module
 * imports the `outpost` executable (cli.ts), and the untyped error class is taken
 * only by the errors.ts files that type it.
 */
import t from 'tap'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, normalize } from 'node:path'
import { packageRoot } from '../core/paths.js'

type Graph = Map<string, { local: string[]; packages: string[] }>

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
        const packages: string[] = []
        for (const m of source.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s*['"]([^'"]+)['"]|import\s*\(\s*['"]([^'"]+)['"]\s*\)/g)) {
          const spec = (m[1] ?? m[2])!
          if (spec.startsWith('.')) local.push(normalize(join(dirname(path), spec)).replace(/\.js$/, '.ts'))
          else packages.push(spec)
        }
        graph.set(path, { local, packages })
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

/** Every file `start` loads, itself included. */
function closure(graph: Graph, start: string): string[] {
  const seen = new Set<string>()
  const pending = [start]
  while (pending.length) {
    const f = pending.pop()!
    if (seen.has(f)) continue
    seen.add(f)
    pending.push(...(graph.get(f)?.local ?? []))
  }
  return [...seen].sort()
}

const graph = importGraph(['core', 'drivers', 'daemon'])

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

t.test('nothing imports the outpost executable; the commands share daemon/cli-common.ts', async (t) => {
  for (const [file, { local }] of graph) t.notOk(local.includes('daemon/cli.ts'), `${file} does not import daemon/cli.ts`)
  t.ok(graph.get('daemon/commands/run.ts')!.local.includes('daemon/cli-common.ts'))
})

t.test('the untyped error class is taken only by the errors.ts that type it', async (t) => {
  const takers = [...graph]
    .filter(([, { local }]) => local.includes('core/errors.ts'))
    .map(([f]) => f)
    .sort()
  t.same(takers, ['daemon/engine/errors.ts', 'daemon/errors.ts', 'drivers/errors.ts'])
})

t.test('the gateway never loads the cloud-side ingest, nor PostgreSQL; the ingest reuses the chain code', async (t) => {
  for (const root of ['daemon/daemon.ts', 'daemon/commands/run.ts']) {
    const files = closure(graph, root)
    t.same(
      files.filter((f) => f.startsWith('daemon/ingest/')),
      [],
      `${root} loads nothing of daemon/ingest/`,
    )
    t.notOk(
      files.some((f) => graph.get(f)!.packages.includes('pg')),
      `${root} loads no PostgreSQL client`,
    )
  }
  t.ok(graph.get('daemon/ingest/store.ts')!.local.includes('daemon/uplink/chain.ts'), "the ingest checks chains with the uplink's chain code")
  t.notOk(
    [...graph.keys()]
      .filter((f) => f.startsWith('daemon/ingest/'))
      .some((f) => graph.get(f)!.packages.includes('node:crypto') && f !== 'daemon/ingest/worker.ts'),
    'and hashes nothing itself',
  )
})
