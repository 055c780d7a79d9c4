/**
 * Where the package's own files are, whether running from core/*.ts (tests,
 * ts-node) or from dist/core/*.js (the built CLI).
 */
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

function findRoot(start: string): string {
  let dir = start
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'config'))) return dir
    const up = dirname(dir)
    if (up === dir) throw new Error(`cannot find the outpost package root above ${start}`)
    dir = up
  }
}

/** The package root (holds package.json, config/, drivers/, flows/). */
export const packageRoot = findRoot(dirname(fileURLToPath(import.meta.url)))
export const packagePath = (...parts: string[]): string => join(packageRoot, ...parts)
