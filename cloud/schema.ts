/**
 * The ingest's PostgreSQL schema as an ordered list of migrations, and applying
 * them at start. Each migration runs once, in its own transaction, recorded in
 * `outpost_migrations`; several workers starting together take an advisory lock so
 * exactly one applies them.
 *
 * Owns: the table definitions (the contract's `records`, `sessions`, `sites`,
 * `meter_reconciliations`, `salvages`, `lost_ranges`, `resolutions`, `record_history`, plus
 * `forks`, `rejects` and `pull_leases`) and their
 * order of creation.
 * Must never: change a migration that has shipped (a later one alters instead), or
 * drop a table that holds records.
 */
import type pg from 'pg'

/** Key of the advisory lock that serializes migrations across workers. */
const MIGRATION_LOCK = 7_140_001

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
]

/** Applies every migration not yet applied; returns the schema version now in force. */
export async function migrate(client: pg.ClientBase): Promise<number> {
  await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK])
  try {
    await client.query('CREATE TABLE IF NOT EXISTS outpost_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())')
    const { rows } = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM outpost_migrations')
    const have = rows[0]?.v ?? 0
    if (have > MIGRATIONS.length)
      throw new Error(`the database's schema is version ${have}, newer than this build's ${MIGRATIONS.length}: upgrade outpost`)
    for (let v = have + 1; v <= MIGRATIONS.length; v++) {
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
    return MIGRATIONS.length
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK])
  }
}
