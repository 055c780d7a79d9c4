/** `outpost verify`: not built yet; arrives with issue 5. */
export async function main(_argv: string[]): Promise<number> {
  process.stderr.write('outpost verify: not available in this build yet (issue 5)\n')
  return 70
}
