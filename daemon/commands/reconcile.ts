/** `outpost reconcile`: not built yet; arrives with issue 6. */
export async function main(_argv: string[]): Promise<number> {
  process.stderr.write('outpost reconcile: not available in this build yet (issue 6)\n')
  return 70
}
