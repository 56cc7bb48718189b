//! Every SQL statement the SQLite store runs, one per transition.
//!
//! Each statement that moves a job names the state it expects in its
//! `WHERE`; those that act for a claim also name the `epoch`. `now` and
//! every other time are parameters. Zero rows changed means "fenced out".

/// enqueue: (none) → available. A duplicate idempotency key inserts nothing
/// and returns no row; the caller then looks the existing job up.
pub const INSERT_JOB: &str = "
    INSERT INTO jobs (kind, queue, payload, idempotency_key, state, priority,
                      run_at, max_attempts, created_at)
    VALUES (?1, ?2, ?3, ?4, 'available', ?5, ?6, ?7, ?8)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id";

pub const SELECT_BY_KEY: &str = "
    SELECT id, kind, payload FROM jobs WHERE idempotency_key = ?1";

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
/// `now`, so that a lease renewed since it looked is not taken).
macro_rules! fenced {
    ($set:literal) => {
        concat!(
            "UPDATE jobs SET ",
            $set,
            ", lease_expires_at = NULL, leased_by = NULL
             WHERE id = ?1 AND epoch = ?2 AND state = 'running'
               AND lease_expires_at <= ?3"
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
    attempted_at, finalized_at, lease_expires_at";

pub const SELECT_ATTEMPTS: &str = "
    SELECT attempt, epoch, outcome, error, started_at, ended_at, duration_ms,
           fuel_used
    FROM attempts WHERE job_id = ?1 ORDER BY epoch";

pub const COUNT_BY_STATE: &str = "SELECT state, COUNT(*) FROM jobs GROUP BY state";
