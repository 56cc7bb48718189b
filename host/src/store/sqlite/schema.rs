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
