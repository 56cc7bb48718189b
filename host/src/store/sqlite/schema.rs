//! The SQLite schema, as versioned migrations embedded in the binary.
//!
//! `PRAGMA user_version` records how many migrations have been applied;
//! opening a database applies the rest, each in its own transaction.
//! Timestamps are integer milliseconds since the Unix epoch.

use rusqlite::Connection;

/// Migrations in order. Never edit a released one; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: jobs and their attempts.
    r#"
    CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY,
        kind             TEXT    NOT NULL,
        queue            TEXT    NOT NULL,
        payload          TEXT    NOT NULL,
        -- The key given at enqueue; NULL means "derived from the id".
        idempotency_key  TEXT    UNIQUE,
        state            TEXT    NOT NULL CHECK (state IN
                           ('available', 'running', 'retryable',
                            'completed', 'discarded', 'cancelled')),
        priority         INTEGER NOT NULL,
        run_at           INTEGER NOT NULL,
        attempt          INTEGER NOT NULL DEFAULT 0,
        max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
        -- The fencing token: rises by one on every claim, never falls.
        epoch            INTEGER NOT NULL DEFAULT 0,
        lease_expires_at INTEGER,
        leased_by        TEXT,
        attempted_at     INTEGER,
        created_at       INTEGER NOT NULL,
        finalized_at     INTEGER,
        output           TEXT,
        error            TEXT
    );

    -- The claim order. Partial, so finished jobs cost the claimer nothing.
    CREATE INDEX jobs_claim ON jobs (priority, run_at, id)
        WHERE state IN ('available', 'retryable');

    -- The rescuer's scan for expired leases.
    CREATE INDEX jobs_lease ON jobs (lease_expires_at)
        WHERE state = 'running';

    CREATE TABLE attempts (
        job_id      INTEGER NOT NULL REFERENCES jobs (id),
        -- The claim this attempt ran under; unique per job.
        epoch       INTEGER NOT NULL,
        attempt     INTEGER NOT NULL,
        outcome     TEXT    NOT NULL,
        error       TEXT,
        fuel_used   INTEGER,
        started_at  INTEGER NOT NULL,
        ended_at    INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        PRIMARY KEY (job_id, epoch)
    ) WITHOUT ROWID;
    "#,
    // 2: side effects: kv state, the outbox, completion callbacks.
    r#"
    ALTER TABLE jobs ADD COLUMN callback_url TEXT;

    CREATE TABLE kv (
        namespace  TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        -- NULL is a deleted key: rows are never removed, so a version
        -- never repeats and commit-time read checks cannot be fooled by a
        -- delete and re-create.
        value      BLOB,
        version    INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, key)
    ) WITHOUT ROWID;

    CREATE TABLE outbox (
        id               INTEGER PRIMARY KEY,
        job_id           INTEGER NOT NULL,
        topic            TEXT    NOT NULL,
        url              TEXT    NOT NULL,
        -- The exact request body, fixed at commit and sent as stored.
        body             BLOB    NOT NULL,
        idempotency_key  TEXT    NOT NULL UNIQUE,
        state            TEXT    NOT NULL CHECK (state IN
                           ('pending', 'delivered', 'failed')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  INTEGER NOT NULL,
        lease_expires_at INTEGER,
        created_at       INTEGER NOT NULL,
        finalized_at     INTEGER,
        last_status      INTEGER,
        last_error       TEXT,
        note             TEXT
    );

    -- The relay's scan for due events.
    CREATE INDEX outbox_due ON outbox (next_attempt_at, id)
        WHERE state = 'pending';
    "#,
    // 3: schedules, safeguards, contention, retention.
    r#"
    ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
    -- At most this many running jobs with the key; NULL without a key.
    ALTER TABLE jobs ADD COLUMN concurrency_limit INTEGER;
    -- kv conflicts so far: each gave its attempt back.
    ALTER TABLE jobs ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN schedule_id TEXT;

    -- Keyed jobs: the claim counts the running ones per key, and checks
    -- cheaply whether any keyed job waits at all (if none, the claim takes
    -- its fast path). Waiting jobs are indexed with their limit, so that a
    -- key's largest limit is one seek.
    CREATE INDEX jobs_keyed_running ON jobs (concurrency_key)
        WHERE concurrency_key IS NOT NULL AND state = 'running';
    CREATE INDEX jobs_keyed_waiting ON jobs (concurrency_key, concurrency_limit)
        WHERE concurrency_key IS NOT NULL AND state IN ('available', 'retryable');

    -- The cleaner's scan for discarded and cancelled jobs past their
    -- retention. Completed jobs are not indexed (an index entry per
    -- completion costs the hot path dearly): the cleaner sweeps them in id
    -- order instead.
    CREATE INDEX jobs_failed ON jobs (finalized_at)
        WHERE state IN ('discarded', 'cancelled');

    CREATE TABLE schedules (
        id            TEXT    PRIMARY KEY,
        -- The canonical definition (JSON) and the part of it that decides
        -- the fire times.
        spec          TEXT    NOT NULL,
        cadence       TEXT    NOT NULL,
        -- Rises on every change of the definition: a scheduler that
        -- planned from an older one is fenced out.
        version       INTEGER NOT NULL DEFAULT 1,
        -- The nominal time of the next fire (NULL: no more, past end_at),
        -- and when it is made (nominal + jitter).
        next_fire_at  INTEGER,
        next_run_at   INTEGER,
        paused        INTEGER NOT NULL DEFAULT 0,
        pause_note    TEXT,
        paused_at     INTEGER,
        fired         INTEGER NOT NULL DEFAULT 0,
        missed        INTEGER NOT NULL DEFAULT 0,
        skipped       INTEGER NOT NULL DEFAULT 0,
        triggers      INTEGER NOT NULL DEFAULT 0,
        last_fire_at  INTEGER,
        last_job_id   INTEGER,
        -- overlap = buffer_one: the nominal time of the fire held back.
        buffered_at   INTEGER,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL
    );

    CREATE INDEX schedules_due ON schedules (next_run_at)
        WHERE paused = 0 AND next_run_at IS NOT NULL;

    -- Every fire made, once: a second scheduler racing for the same fire
    -- cannot insert it again. `trigger` is 0 for the cadence's fires and n
    -- for the n-th manual trigger.
    CREATE TABLE schedule_fires (
        schedule_id TEXT    NOT NULL,
        nominal_at  INTEGER NOT NULL,
        trigger     INTEGER NOT NULL,
        job_id      INTEGER NOT NULL,
        fired_at    INTEGER NOT NULL,
        PRIMARY KEY (schedule_id, nominal_at, trigger)
    ) WITHOUT ROWID;

    CREATE INDEX schedule_fires_age ON schedule_fires (fired_at);

    -- One circuit breaker per plugin kind that has failed.
    CREATE TABLE breakers (
        kind              TEXT    PRIMARY KEY,
        state             TEXT    NOT NULL CHECK (state IN
                            ('closed', 'open', 'half_open')),
        failures          INTEGER NOT NULL DEFAULT 0,
        streak_started_at INTEGER,
        opened_at         INTEGER,
        retry_at          INTEGER,
        -- half_open: the probe's claim (job id and epoch).
        probe_job         INTEGER,
        probe_epoch       INTEGER,
        trips             INTEGER NOT NULL DEFAULT 0,
        last_error        TEXT,
        updated_at        INTEGER NOT NULL
    ) WITHOUT ROWID;

    -- GCRA state per rate-limited kind: the theoretical arrival time (ms,
    -- fractional) of its next job.
    CREATE TABLE rate_limits (
        kind TEXT PRIMARY KEY,
        tat  REAL NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE pauses (
        scope     TEXT    NOT NULL CHECK (scope IN ('kind', 'queue')),
        name      TEXT    NOT NULL,
        note      TEXT    NOT NULL,
        paused_at INTEGER NOT NULL,
        PRIMARY KEY (scope, name)
    ) WITHOUT ROWID;

    -- The cleaner's scans for kv tombstones and delivered events.
    CREATE INDEX kv_tombstones ON kv (updated_at) WHERE value IS NULL;
    CREATE INDEX outbox_delivered ON outbox (finalized_at)
        WHERE state = 'delivered';
    "#,
    // 4: every host using the database, by its heartbeat.
    r#"
    CREATE TABLE hosts (
        id         TEXT    PRIMARY KEY,
        version    TEXT    NOT NULL,
        started_at INTEGER NOT NULL,
        last_seen  INTEGER NOT NULL,
        ready      INTEGER NOT NULL,
        in_flight  INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 5: which build of its plugin each attempt ran (the component's
    // SHA-256; NULL where no plugin ran, as for a rescued lease).
    r#"
    ALTER TABLE attempts ADD COLUMN component_hash TEXT;
    "#,
    // 6: what an attempt read from the world (clocks, random bytes, kv
    // entries, HTTP responses), kept for failed attempts and for plugins
    // with `record = true`, so that the attempt can be replayed. Deleted
    // with its attempt row, hence with its job.
    r#"
    ALTER TABLE attempts ADD COLUMN recording BLOB;
    "#,
    // 7: what operators look at: the host that ran each attempt, the kv
    // writes each completion committed (deleted with its job), the events
    // of a job, failed jobs by id, and each host's recent throughput.
    r#"
    ALTER TABLE attempts ADD COLUMN host TEXT;

    CREATE TABLE kv_writes (
        job_id    INTEGER NOT NULL,
        epoch     INTEGER NOT NULL,
        namespace TEXT    NOT NULL,
        key       TEXT    NOT NULL,
        -- The version the write made; a delete leaves a tombstone.
        version   INTEGER NOT NULL,
        deleted   INTEGER NOT NULL,
        PRIMARY KEY (job_id, epoch, namespace, key, version)
    ) WITHOUT ROWID;

    CREATE INDEX outbox_job ON outbox (job_id);

    -- Listing and counting failed jobs (the operators' most common
    -- filters). One index per state: a query naming one state can use an
    -- index whose condition is that state, not one naming several.
    CREATE INDEX jobs_discarded ON jobs (id) WHERE state = 'discarded';
    CREATE INDEX jobs_cancelled ON jobs (id) WHERE state = 'cancelled';

    -- The host's attempts per minute and plugin over the last hour (JSON),
    -- written with its heartbeat.
    ALTER TABLE hosts ADD COLUMN minutes TEXT;
    "#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Applies the migrations `conn` has not seen yet.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
            Some(format!(
                "database schema version {current} is newer than this binary's {SCHEMA_VERSION}"
            )),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Re-check under the write lock: another process may have migrated.
        let now: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now > i {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}
