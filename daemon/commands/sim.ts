/** `outpost sim`: not built yet; arrives with issue 4. */
export async function main(_argv: string[]): Promise<number> {
  process.stderr.write('outpost sim: not available in this build yet (issue 4)\n')
  return 70
}
