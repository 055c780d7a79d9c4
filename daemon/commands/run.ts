/** `outpost run`: not built yet; arrives with issue 7. */
export async function main(_argv: string[]): Promise<number> {
  process.stderr.write('outpost run: not available in this build yet (issue 7)\n')
  return 70
}
