//! Every SQL statement the SQLite store runs, one per transition.
//!
//! Each statement that moves a job names the state it expects in its
//! `WHERE`; those that act for a claim also name the `epoch`. `now` and
//! every other time are parameters. Zero rows changed means "fenced out".

/// enqueue: (none) → available. A duplicate idempotency key inserts nothing
/// and returns no row; the caller then looks the existing job up.
pub const INSERT_JOB: &str = "
    INSERT INTO jobs (kind, queue, payload, idempotency_key, state, priority,
                      run_at, max_attempts, created_at, callback_url)
    VALUES (?1, ?2, ?3, ?4, 'available', ?5, ?6, ?7, ?8, ?9)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id";

pub const SELECT_BY_KEY: &str = "
    SELECT id, kind, payload, callback_url FROM jobs WHERE idempotency_key = ?1";

/// claim: available/retryable → running, in (priority, run_at, id) order.
/// ?1 now, ?2 lease expiry, ?3 worker, ?4 JSON array of excluded kinds,
/// ?5 limit.
pub const CLAIM: &str = "
    UPDATE jobs
    SET state = 'running',
        attempt = attempt + 1,
        epoch = epoch + 1,
        attempted_at = ?1,
        lease_expires_at = ?2,
        leased_by = ?3
    WHERE state IN ('available', 'retryable')
      AND id IN (
        SELECT id FROM jobs
        WHERE state IN ('available', 'retryable')
          AND run_at <= ?1
          AND kind NOT IN (SELECT value FROM json_each(?4))
        ORDER BY priority, run_at, id
        LIMIT ?5)
    RETURNING id, kind, queue, payload, idempotency_key, priority, attempt,
              max_attempts, epoch, run_at";

/// The fence shared by the write-backs below: ?1 id, ?2 epoch, and ?3 a
/// bound on the lease (the worker passes the maximum; the rescuer passes
/// `now`, so that a lease renewed since it looked is not taken). A row
/// comes back if the transition applied, saying whether the job has a
/// completion callback to enqueue.
macro_rules! fenced {
    ($set:literal) => {
        concat!(
            "UPDATE jobs SET ",
            $set,
            ", lease_expires_at = NULL, leased_by = NULL
             WHERE id = ?1 AND epoch = ?2 AND state = 'running'
               AND lease_expires_at <= ?3
             RETURNING callback_url IS NOT NULL"
        )
    };
}

/// running → completed. ?4 output, ?5 now.
pub const COMPLETE: &str =
    fenced!("state = 'completed', output = ?4, error = NULL, finalized_at = ?5");

/// running → retryable. ?4 error, ?5 next run_at.
pub const RETRY: &str = fenced!("state = 'retryable', error = ?4, run_at = ?5");

/// running → discarded. ?4 error, ?5 now.
pub const DISCARD: &str = fenced!("state = 'discarded', error = ?4, finalized_at = ?5");

/// running → available, giving the attempt back (host shutdown). ?4 now.
pub const RELEASE: &str = fenced!("state = 'available', attempt = attempt - 1, run_at = ?4");

/// The attempt row that goes with every transition out of running.
pub const INSERT_ATTEMPT: &str = "
    INSERT INTO attempts (job_id, epoch, attempt, outcome, error, fuel_used,
                          started_at, ended_at, duration_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// heartbeat: running → running with a later lease. ?1 id, ?2 epoch,
/// ?3 new expiry.
pub const EXTEND_LEASE: &str = "
    UPDATE jobs SET lease_expires_at = ?3
    WHERE id = ?1 AND epoch = ?2 AND state = 'running'";

/// The rescuer's scan. ?1 now, ?2 limit.
pub const EXPIRED_LEASES: &str = "
    SELECT id, epoch, kind, attempt, max_attempts, attempted_at FROM jobs
    WHERE state = 'running' AND lease_expires_at <= ?1
    ORDER BY lease_expires_at
    LIMIT ?2";

/// jobs retry: discarded/retryable/cancelled → available now. A job whose
/// attempts were used up gets one more. ?1 id, ?2 now.
pub const RETRY_JOB: &str = "
    UPDATE jobs
    SET state = 'available', run_at = ?2, finalized_at = NULL,
        max_attempts = MAX(max_attempts, attempt + 1)
    WHERE id = ?1 AND state IN ('discarded', 'retryable', 'cancelled')";

/// jobs cancel, for a job not running: available/retryable → cancelled.
/// ?1 id, ?2 now.
pub const CANCEL_WAITING: &str = "
    UPDATE jobs SET state = 'cancelled', finalized_at = ?2
    WHERE id = ?1 AND state IN ('available', 'retryable')";

/// jobs cancel, for a running job: running → cancelled, fenced on the epoch
/// read in the same transaction. ?1 id, ?2 epoch, ?3 now.
pub const CANCEL_RUNNING: &str = "
    UPDATE jobs
    SET state = 'cancelled', finalized_at = ?3, error = 'cancelled by operator',
        lease_expires_at = NULL, leased_by = NULL
    WHERE id = ?1 AND epoch = ?2 AND state = 'running'";

pub const SELECT_STATE: &str = "
    SELECT state, epoch, attempt, attempted_at FROM jobs WHERE id = ?1";

/// The columns [`super::read::job_record`] reads, in order.
pub const JOB_COLUMNS: &str = "
    id, kind, queue, state, priority, attempt, max_attempts, epoch,
    idempotency_key, payload, output, error, created_at, run_at,
    attempted_at, finalized_at, lease_expires_at, callback_url";

pub const SELECT_ATTEMPTS: &str = "
    SELECT attempt, epoch, outcome, error, started_at, ended_at, duration_ms,
           fuel_used
    FROM attempts WHERE job_id = ?1 ORDER BY epoch";

pub const COUNT_BY_STATE: &str = "SELECT state, COUNT(*) FROM jobs GROUP BY state";

/// kv read: a key's value and version (a deleted key has a NULL value).
pub const KV_GET: &str = "
    SELECT value, version FROM kv WHERE namespace = ?1 AND key = ?2";

/// kv listing: live keys from ?2 (the prefix) up to ?3 (exclusive, or
/// NULL for no bound), in key order, at most ?4.
pub const KV_LIST: &str = "
    SELECT key, value, version FROM kv
    WHERE namespace = ?1 AND key >= ?2 AND (?3 IS NULL OR key < ?3)
      AND value IS NOT NULL
    ORDER BY key
    LIMIT ?4";

/// Commit of one buffered kv write (a NULL value deletes). ?1 namespace,
/// ?2 key, ?3 value, ?4 now.
pub const KV_PUT: &str = "
    INSERT INTO kv (namespace, key, value, version, updated_at)
    VALUES (?1, ?2, ?3, 1, ?4)
    ON CONFLICT (namespace, key) DO UPDATE
    SET value = excluded.value, version = version + 1,
        updated_at = excluded.updated_at";

/// outbox: (none) → pending, committed with the job's completion.
pub const INSERT_EVENT: &str = "
    INSERT INTO outbox (job_id, topic, url, body, idempotency_key, state,
                        next_attempt_at, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6)";

/// The completion callback, built from the job row in the same
/// transaction as its final transition. ?1 job id, ?2 now, ?3 topic. The
/// key names the claim epoch, so a job retried by an operator after being
/// discarded gets a callback of its own when it ends again.
pub const INSERT_CALLBACK: &str = "
    INSERT INTO outbox (job_id, topic, url, body, idempotency_key, state,
                        next_attempt_at, created_at)
    SELECT id, ?3, callback_url,
           CAST(json_object(
               'job_id', id,
               'kind', kind,
               'state', state,
               'attempt', attempt,
               'idempotency_key', COALESCE(idempotency_key, 'jobbox-job-' || id),
               'output', CASE WHEN json_valid(output) THEN json(output) ELSE output END,
               'error', error,
               'finalized_at', finalized_at) AS BLOB),
           COALESCE(idempotency_key, 'jobbox-job-' || id) || ':callback:' || epoch,
           'pending', ?2, ?2
    FROM jobs WHERE id = ?1 AND callback_url IS NOT NULL";

/// relay claim: due pending events get a delivery lease and one more
/// attempt. ?1 now, ?2 lease expiry, ?3 limit.
pub const CLAIM_EVENTS: &str = "
    UPDATE outbox
    SET attempts = attempts + 1, lease_expires_at = ?2
    WHERE state = 'pending'
      AND id IN (
        SELECT id FROM outbox
        WHERE state = 'pending' AND next_attempt_at <= ?1
          AND (lease_expires_at IS NULL OR lease_expires_at <= ?1)
        ORDER BY next_attempt_at, id
        LIMIT ?3)
    RETURNING id, job_id, topic, url, body, idempotency_key, attempts";

/// The fence shared by the delivery outcomes: ?1 id, ?2 the attempt
/// number the relay claimed.
macro_rules! delivery {
    ($set:literal) => {
        concat!(
            "UPDATE outbox SET ",
            $set,
            ", lease_expires_at = NULL
             WHERE id = ?1 AND attempts = ?2 AND state = 'pending'"
        )
    };
}

/// pending → delivered. ?3 status, ?4 note, ?5 now.
pub const EVENT_DELIVERED: &str = delivery!(
    "state = 'delivered', last_status = ?3, note = ?4, last_error = NULL, finalized_at = ?5"
);

/// pending → pending, later. ?3 status, ?4 error, ?5 next attempt.
pub const EVENT_RETRY: &str = delivery!("last_status = ?3, last_error = ?4, next_attempt_at = ?5");

/// pending → failed (permanent). ?3 status, ?4 error, ?5 now.
pub const EVENT_FAILED: &str =
    delivery!("state = 'failed', last_status = ?3, last_error = ?4, finalized_at = ?5");

/// outbox retry: failed → pending now. ?1 id, ?2 now.
pub const RETRY_EVENT: &str = "
    UPDATE outbox
    SET state = 'pending', next_attempt_at = ?2, finalized_at = NULL,
        lease_expires_at = NULL
    WHERE id = ?1 AND state = 'failed'";

pub const COUNT_PENDING_EVENTS: &str = "SELECT COUNT(*) FROM outbox WHERE state = 'pending'";

pub const EVENT_COLUMNS: &str = "
    id, job_id, topic, url, body, idempotency_key, state, attempts,
    next_attempt_at, created_at, finalized_at, last_status, last_error, note";
