//! The PostgreSQL schema, as versioned migrations embedded in the binary.
//!
//! The same tables, columns and partial indexes as the SQLite schema (see
//! `store/sqlite/schema.rs` for what each column means), in PostgreSQL's
//! types: ids are `BIGSERIAL`, times are `BIGINT` milliseconds since the
//! Unix epoch, payloads and outputs are `TEXT` (never `JSONB`: the bytes a
//! job was enqueued with are the bytes its plugin sees, on every retry).
//!
//! `jobbox_schema` holds how many migrations have been applied. Migrating
//! takes a transaction-level advisory lock, so hosts starting together
//! apply each migration once.

use postgres::Client;

use crate::store::StoreError;

/// Migrations in order. Never edit a released one; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite migrations 1 to 6.
    r#"
    CREATE TABLE jobs (
        id                BIGSERIAL PRIMARY KEY,
        kind              TEXT    NOT NULL,
        queue             TEXT    NOT NULL,
        payload           TEXT    NOT NULL,
        idempotency_key   TEXT    UNIQUE,
        state             TEXT    NOT NULL CHECK (state IN
                            ('available', 'running', 'retryable',
                             'completed', 'discarded', 'cancelled')),
        priority          INTEGER NOT NULL,
        run_at            BIGINT  NOT NULL,
        attempt           INTEGER NOT NULL DEFAULT 0,
        max_attempts      INTEGER NOT NULL CHECK (max_attempts >= 1),
        epoch             BIGINT  NOT NULL DEFAULT 0,
        lease_expires_at  BIGINT,
        leased_by         TEXT,
        attempted_at      BIGINT,
        created_at        BIGINT  NOT NULL,
        finalized_at      BIGINT,
        output            TEXT,
        error             TEXT,
        callback_url      TEXT,
        concurrency_key   TEXT,
        concurrency_limit INTEGER,
        conflicts         INTEGER NOT NULL DEFAULT 0,
        schedule_id       TEXT
    );

    CREATE INDEX jobs_claim ON jobs (priority, run_at, id)
        WHERE state IN ('available', 'retryable');
    CREATE INDEX jobs_lease ON jobs (lease_expires_at)
        WHERE state = 'running';
    CREATE INDEX jobs_keyed_running ON jobs (concurrency_key)
        WHERE concurrency_key IS NOT NULL AND state = 'running';
    CREATE INDEX jobs_keyed_waiting ON jobs (concurrency_key, concurrency_limit)
        WHERE concurrency_key IS NOT NULL AND state IN ('available', 'retryable');
    CREATE INDEX jobs_failed ON jobs (finalized_at)
        WHERE state IN ('discarded', 'cancelled');

    CREATE TABLE attempts (
        job_id         BIGINT  NOT NULL REFERENCES jobs (id),
        epoch          BIGINT  NOT NULL,
        attempt        INTEGER NOT NULL,
        outcome        TEXT    NOT NULL,
        error          TEXT,
        fuel_used      BIGINT,
        started_at     BIGINT  NOT NULL,
        ended_at       BIGINT  NOT NULL,
        duration_ms    BIGINT  NOT NULL,
        component_hash TEXT,
        recording      BYTEA,
        PRIMARY KEY (job_id, epoch)
    );

    CREATE TABLE kv (
        namespace  TEXT   NOT NULL,
        -- Byte order, as in SQLite: prefix listings are a range of the
        -- primary key whatever the database's collation.
        key        TEXT   COLLATE "C" NOT NULL,
        value      BYTEA,
        version    BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (namespace, key)
    );
    CREATE INDEX kv_tombstones ON kv (updated_at) WHERE value IS NULL;

    CREATE TABLE outbox (
        id               BIGSERIAL PRIMARY KEY,
        job_id           BIGINT  NOT NULL,
        topic            TEXT    NOT NULL,
        url              TEXT    NOT NULL,
        body             BYTEA   NOT NULL,
        idempotency_key  TEXT    NOT NULL UNIQUE,
        state            TEXT    NOT NULL CHECK (state IN
                           ('pending', 'delivered', 'failed')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  BIGINT  NOT NULL,
        lease_expires_at BIGINT,
        created_at       BIGINT  NOT NULL,
        finalized_at     BIGINT,
        last_status      INTEGER,
        last_error       TEXT,
        note             TEXT
    );
    CREATE INDEX outbox_due ON outbox (next_attempt_at, id)
        WHERE state = 'pending';
    CREATE INDEX outbox_delivered ON outbox (finalized_at)
        WHERE state = 'delivered';

    CREATE TABLE schedules (
        id            TEXT    PRIMARY KEY,
        spec          TEXT    NOT NULL,
        cadence       TEXT    NOT NULL,
        version       BIGINT  NOT NULL DEFAULT 1,
        next_fire_at  BIGINT,
        next_run_at   BIGINT,
        paused        BOOLEAN NOT NULL DEFAULT FALSE,
        pause_note    TEXT,
        paused_at     BIGINT,
        fired         BIGINT  NOT NULL DEFAULT 0,
        missed        BIGINT  NOT NULL DEFAULT 0,
        skipped       BIGINT  NOT NULL DEFAULT 0,
        triggers      BIGINT  NOT NULL DEFAULT 0,
        last_fire_at  BIGINT,
        last_job_id   BIGINT,
        buffered_at   BIGINT,
        created_at    BIGINT  NOT NULL,
        updated_at    BIGINT  NOT NULL
    );
    CREATE INDEX schedules_due ON schedules (next_run_at)
        WHERE NOT paused AND next_run_at IS NOT NULL;

    CREATE TABLE schedule_fires (
        schedule_id TEXT   NOT NULL,
        nominal_at  BIGINT NOT NULL,
        trigger     BIGINT NOT NULL,
        job_id      BIGINT NOT NULL,
        fired_at    BIGINT NOT NULL,
        PRIMARY KEY (schedule_id, nominal_at, trigger)
    );
    CREATE INDEX schedule_fires_age ON schedule_fires (fired_at);

    CREATE TABLE breakers (
        kind              TEXT    PRIMARY KEY,
        state             TEXT    NOT NULL CHECK (state IN
                            ('closed', 'open', 'half_open')),
        failures          INTEGER NOT NULL DEFAULT 0,
        streak_started_at BIGINT,
        opened_at         BIGINT,
        retry_at          BIGINT,
        probe_job         BIGINT,
        probe_epoch       BIGINT,
        trips             INTEGER NOT NULL DEFAULT 0,
        last_error        TEXT,
        updated_at        BIGINT  NOT NULL
    );

    CREATE TABLE rate_limits (
        kind TEXT PRIMARY KEY,
        tat  DOUBLE PRECISION NOT NULL
    );

    CREATE TABLE pauses (
        scope     TEXT   NOT NULL CHECK (scope IN ('kind', 'queue')),
        name      TEXT   NOT NULL,
        note      TEXT   NOT NULL,
        paused_at BIGINT NOT NULL,
        PRIMARY KEY (scope, name)
    );

    CREATE TABLE hosts (
        id         TEXT    PRIMARY KEY,
        version    TEXT    NOT NULL,
        started_at BIGINT  NOT NULL,
        last_seen  BIGINT  NOT NULL,
        ready      BOOLEAN NOT NULL,
        in_flight  BIGINT  NOT NULL
    );
    "#,
    // 2: SQLite migration 7.
    r#"
    ALTER TABLE attempts ADD COLUMN host TEXT;

    CREATE TABLE kv_writes (
        job_id    BIGINT  NOT NULL,
        epoch     BIGINT  NOT NULL,
        namespace TEXT    NOT NULL,
        key       TEXT    NOT NULL,
        version   BIGINT  NOT NULL,
        deleted   BOOLEAN NOT NULL,
        PRIMARY KEY (job_id, epoch, namespace, key, version)
    );

    CREATE INDEX outbox_job ON outbox (job_id);
    CREATE INDEX jobs_discarded ON jobs (id) WHERE state = 'discarded';
    CREATE INDEX jobs_cancelled ON jobs (id) WHERE state = 'cancelled';

    ALTER TABLE hosts ADD COLUMN minutes TEXT;
    "#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// The advisory lock key migrations hold ("jobbox" in ASCII).
const MIGRATION_LOCK: i64 = 0x6a6f_6262_6f78;

/// Applies the migrations the database has not seen yet, each in its own
/// transaction; refuses a database newer than this binary.
pub fn migrate(client: &mut Client) -> Result<(), StoreError> {
    loop {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute(
            "SET LOCAL client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS jobbox_schema (
                 one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
                 version INTEGER NOT NULL
             );
             INSERT INTO jobbox_schema (version) VALUES (0) ON CONFLICT DO NOTHING;",
        )?;
        let current: i32 = tx
            .query_one("SELECT version FROM jobbox_schema", &[])?
            .get(0);
        let current = current as usize;
        if current > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "database schema version {current} is newer than this binary's \
                 {SCHEMA_VERSION}: upgrade jobbox"
            )));
        }
        let Some(sql) = MIGRATIONS.get(current) else {
            return Ok(());
        };
        tx.batch_execute(sql)?;
        tx.execute(
            "UPDATE jobbox_schema SET version = $1",
            &[&((current + 1) as i32)],
        )?;
        tx.commit()?;
    }
}

/// The schema version of the database `client` is connected to (0: none).
pub fn version(client: &mut Client) -> Result<usize, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('jobbox_schema') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: i32 = client
        .query_one("SELECT version FROM jobbox_schema", &[])?
        .get(0);
    Ok(v as usize)
}
