/**
 * The ingest's PostgreSQL schema as an ordered list of migrations, and applying
 * them at start. Each migration runs once, in its own transaction, recorded in
 * `outpost_migrations`; several workers starting together take an advisory lock so
 * exactly one applies them.
 *
 * Owns: the table definitions (the contract's `records` with its month partitions and `record_keys`, `sessions`, `sites`,
 * `meter_reconciliations`, `salvages`, `lost_ranges`, `resolutions`, `record_history`, plus
 * `forks`, `rejects` and `pull_leases`) and their
 * order of creation.
 * Must never: change a migration that has shipped (a later one alters instead), or
 * drop a table whose records are not held elsewhere (a migration moves them first, in its transaction).
 */
import type pg from 'pg'

/** Key of the advisory lock that serializes migrations and partition changes across workers. */
const MIGRATION_LOCK = 7_140_001

/**
 * A record's `ts` as the contract writes it (ISO 8601 UTC, `Z`, at most microseconds), in a syntax both
 * JavaScript and PostgreSQL's regular expressions read alike. A `ts` that does not match, or names no
 * calendar day (31 April), puts the record in `records_default` with `ts` `-infinity`: it is stored all the same.
 */
const RECORD_TS_PATTERN = String.raw`^(?!0000)\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?Z$`
const RECORD_TS = new RegExp(RECORD_TS_PATTERN)

/** The partition key of a record: its `ts` when that is a real UTC time as the contract writes it, else `-infinity`. */
export function recordTime(ts: unknown): string {
  if (typeof ts !== 'string' || !RECORD_TS.test(ts)) return '-infinity'
  const d = new Date(0)
  const day = Number(ts.slice(8, 10))
  d.setUTCFullYear(Number(ts.slice(0, 4)), Number(ts.slice(5, 7)) - 1, day)
  return d.getUTCDate() === day ? ts : '-infinity'
}

/** Months of `records` made ahead of the current one (at start and daily), so that no month's records wait in the default partition. */
export const PARTITION_MONTHS_AHEAD = 2

/** The partition of `records` holding the UTC month that `at` falls in: its name and bounds. */
export function monthPartition(at: Date): { name: string; from: string; to: string } {
  const y = at.getUTCFullYear()
  const m = at.getUTCMonth()
  const iso = (yy: number, mm: number) => new Date(Date.UTC(yy, mm, 1)).toISOString().replace('.000Z', 'Z')
  return { name: `records_${y}_${String(m + 1).padStart(2, '0')}`, from: iso(y, m), to: iso(y, m + 1) }
}

/**
 * Makes the month partitions of `records` from the month of `at` to PARTITION_MONTHS_AHEAD after it, those
 * missing; returns the names made. A month whose records the default partition already holds (it had no
 * partition when they came) takes them with it: the move, the default partition locked against writes,
 * and the attach are one transaction. Any number of workers may call it at once (the advisory lock).
 */
export async function ensurePartitions(client: pg.ClientBase, at: Date, ahead = PARTITION_MONTHS_AHEAD): Promise<string[]> {
  const made: string[] = []
  for (let i = 0; i <= ahead; i++) {
    const p = monthPartition(new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth() + i, 1)))
    // pg_class read with the statement's snapshot (to_regclass would answer from a cache not yet told of another worker's commit).
    const exists = async () =>
      ((await client.query('SELECT 1 FROM pg_class WHERE relname = $1 AND relnamespace = current_schema()::regnamespace', [p.name])).rowCount ?? 0) >
      0
    if (await exists()) continue
    await client.query('BEGIN')
    try {
      await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK])
      if (!(await exists())) {
        await client.query('LOCK TABLE records_default IN EXCLUSIVE MODE')
        await client.query(`CREATE TABLE ${p.name} (LIKE records INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`)
        await client.query(
          `WITH moved AS (DELETE FROM records_default WHERE ts >= $1 AND ts < $2 RETURNING *) INSERT INTO ${p.name} SELECT * FROM moved`,
          [p.from, p.to],
        )
        await client.query(`ALTER TABLE records ATTACH PARTITION ${p.name} FOR VALUES FROM ('${p.from}') TO ('${p.to}')`)
        made.push(p.name)
      }
      await client.query('COMMIT')
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined)
      throw err
    }
  }
  return made
}

/** Migrations in order; the index + 1 is the version. Append only. */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE records (
    site_id     text        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq >= 1),
    type        text        NOT NULL,
    hash        text        NOT NULL,
    prev        text        NOT NULL,
    body        jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, seq)
  );
  CREATE TABLE forks (
    site_id     text        NOT NULL,
    seq         bigint      NOT NULL,
    hash        text        NOT NULL,
    prev        text        NOT NULL,
    stored_hash text        NOT NULL,
    body        jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, seq, hash)
  );
  CREATE TABLE rejects (
    id          bigserial   PRIMARY KEY,
    site_id     text        NOT NULL,
    seq         bigint,
    reason      text        NOT NULL,
    body        jsonb,
    received_at timestamptz NOT NULL DEFAULT now()
  );
  CREATE TABLE sites (
    site_id        text        PRIMARY KEY,
    head           bigint      NOT NULL DEFAULT 0,
    acked          bigint      NOT NULL DEFAULT 0,
    acked_hash     text        NOT NULL DEFAULT '${'0'.repeat(64)}',
    last_seen      timestamptz,
    online         boolean     NOT NULL DEFAULT false,
    progress_at    timestamptz NOT NULL DEFAULT now(),
    chain_break    jsonb,
    compacted_before bigint,
    forks          integer     NOT NULL DEFAULT 0,
    public_key     text
  );
  CREATE TABLE sessions (
    site_id     text        NOT NULL,
    session_id  text        NOT NULL,
    seq         bigint      NOT NULL,
    outlet      text        NOT NULL,
    user_id     text        NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL,
    energy_wh   double precision NOT NULL,
    currency    text        NOT NULL,
    total       bigint      NOT NULL,
    body        jsonb       NOT NULL,
    PRIMARY KEY (site_id, session_id)
  );
  CREATE INDEX sessions_ended_at ON sessions (ended_at);
  CREATE TABLE meter_reconciliations (
    site_id       text        NOT NULL,
    seq           bigint      NOT NULL,
    outlet        text        NOT NULL,
    from_ts       timestamptz NOT NULL,
    to_ts         timestamptz NOT NULL,
    meter_start_wh double precision NOT NULL,
    meter_end_wh  double precision NOT NULL,
    billed_wh     double precision NOT NULL,
    unbilled_wh   double precision NOT NULL,
    body          jsonb       NOT NULL,
    PRIMARY KEY (site_id, seq)
  );
  CREATE TABLE pull_leases (
    site_id   text        PRIMARY KEY,
    worker    text        NOT NULL,
    until     timestamptz NOT NULL
  );
  `,
  // Salvaged gateways, resolutions, and refusals kept aside whole: keyed site-first like the rest.
  `
  CREATE TABLE salvages (
    site_id     text        NOT NULL,
    seq         bigint      NOT NULL,
    hash        text        NOT NULL,
    last_seq    bigint,
    last_hash   text,
    lost        jsonb       NOT NULL,
    signature   text        NOT NULL,
    public_key  text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, seq)
  );
  CREATE UNIQUE INDEX salvages_signature ON salvages (site_id, signature);
  CREATE TABLE lost_ranges (
    site_id        text        NOT NULL,
    announced_from bigint      NOT NULL,
    announced_to   bigint      NOT NULL,
    salvage_seq    bigint      NOT NULL,
    from_seq       bigint      NOT NULL,
    to_seq         bigint      NOT NULL,
    marked_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, announced_from)
  );
  CREATE TABLE resolutions (
    site_id      text        NOT NULL,
    seq          bigint      NOT NULL,
    kept_hash    text        NOT NULL,
    moved_hash   text        NOT NULL,
    by_whom      text        NOT NULL,
    why          text        NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, seq, moved_hash)
  );
  CREATE TABLE record_history (
    site_id     text        NOT NULL,
    seq         bigint      NOT NULL,
    hash        text        NOT NULL,
    prev        text        NOT NULL,
    body        jsonb       NOT NULL,
    received_at timestamptz NOT NULL,
    moved_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, seq, hash)
  );
  ALTER TABLE rejects ADD COLUMN topic text;
  -- Every table keyed site-first (no cross-site constraint), so that it distributes by site_id (Citus) as it is.
  ALTER TABLE rejects DROP CONSTRAINT rejects_pkey;
  ALTER TABLE rejects ADD PRIMARY KEY (site_id, id);
  `,
  // `records` partitioned by month of the record's own time (`ts`), so that old months can be detached and
  // archived. A partitioned table's unique keys must hold the partition key, so (site_id, seq) is kept unique by
  // `record_keys`, one narrow row per stored record in one table: the idempotent insert and fork detection go
  // through it, exactly as strict as before, across every month (and after a month is archived). The rows a
  // database of the previous schema holds are moved in this migration's transaction (docs/ingest.md).
  `
  CREATE FUNCTION outpost_record_ts(s text) RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE AS $f$
  BEGIN
    IF s ~ '${RECORD_TS_PATTERN}' THEN RETURN s::timestamptz; END IF;
    RETURN '-infinity';
  EXCEPTION WHEN others THEN RETURN '-infinity';
  END $f$;
  ALTER TABLE records RENAME TO records_v1;
  ALTER TABLE records_v1 RENAME CONSTRAINT records_pkey TO records_v1_pkey;
  CREATE TABLE records (
    LIKE records_v1 INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    ts          timestamptz NOT NULL,
    PRIMARY KEY (site_id, seq, ts)
  ) PARTITION BY RANGE (ts);
  CREATE TABLE records_default PARTITION OF records DEFAULT;
  CREATE TABLE record_keys (
    site_id     text        NOT NULL,
    seq         bigint      NOT NULL,
    hash        text        NOT NULL,
    ts          timestamptz NOT NULL,
    PRIMARY KEY (site_id, seq)
  );
  DO $m$
  DECLARE m timestamp;
  BEGIN
    FOR m IN SELECT DISTINCT date_trunc('month', outpost_record_ts(body->>'ts') AT TIME ZONE 'UTC') FROM records_v1
             WHERE outpost_record_ts(body->>'ts') > '-infinity' LOOP
      EXECUTE format('CREATE TABLE %I PARTITION OF records FOR VALUES FROM (%L) TO (%L)', 'records_' || to_char(m, 'YYYY_MM'),
                     to_char(m, 'YYYY-MM-DD"T00:00:00Z"'), to_char(m + interval '1 month', 'YYYY-MM-DD"T00:00:00Z"'));
    END LOOP;
  END $m$;
  INSERT INTO records (site_id, seq, type, hash, prev, body, received_at, ts)
    SELECT site_id, seq, type, hash, prev, body, received_at, outpost_record_ts(body->>'ts') FROM records_v1;
  INSERT INTO record_keys (site_id, seq, hash, ts) SELECT site_id, seq, hash, ts FROM records;
  DROP TABLE records_v1;
  DROP FUNCTION outpost_record_ts(text);
  `,
]

/** Applies every migration not yet applied (up to `target`: a test builds an older schema); returns the schema version now in force. */
/** The version the database's schema is at (0: never migrated). */
export async function schemaVersion(client: pg.ClientBase): Promise<number> {
  const t = await client.query<{ t: string | null }>("SELECT to_regclass('outpost_migrations')::text AS t")
  if (t.rows[0]?.t == null) return 0
  const { rows } = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM outpost_migrations')
  return Number(rows[0]?.v ?? 0)
}

export async function migrate(client: pg.ClientBase, target = MIGRATIONS.length): Promise<number> {
  await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK])
  try {
    await client.query('CREATE TABLE IF NOT EXISTS outpost_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())')
    const { rows } = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM outpost_migrations')
    const have = rows[0]?.v ?? 0
    if (have > MIGRATIONS.length)
      throw new Error(`the database's schema is version ${have}, newer than this build's ${MIGRATIONS.length}: upgrade outpost`)
    for (let v = have + 1; v <= target; v++) {
      await client.query('BEGIN')
      try {
        await client.query(MIGRATIONS[v - 1]!)
        await client.query('INSERT INTO outpost_migrations (version) VALUES ($1)', [v])
        await client.query('COMMIT')
      } catch (err) {
        await client.query('ROLLBACK')
        throw err
      }
    }
    return Math.max(have, target)
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK])
  }
}
