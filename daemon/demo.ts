/**
 * `npm start`: the demonstration site (simulator + daemon over loopback Modbus TCP).
 * The daemon that it runs (`outpost run`, issue 7) is not assembled yet; until
 * then this says so plainly instead of pretending.
 */
process.stdout.write(
  'The Outpost demo (simulator + daemon) arrives with the daemon issue (#7).\n' +
    'What works today: `npx outpost check-config config/example.json` and the test suite (`npm test`).\n',
)
