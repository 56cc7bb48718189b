//! Every SQL statement the SQLite store runs, one per transition.
//!
//! Each statement that moves a job names the state it expects in its
//! `WHERE`; those that act for a claim also name the `epoch`. `now` and
//! every other time are parameters. Zero rows changed means "fenced out".

/// enqueue: (none) → available. A duplicate idempotency key inserts nothing
/// and returns no row; the caller then looks the existing job up.
pub const INSERT_JOB: &str = "
    INSERT INTO jobs (kind, queue, payload, idempotency_key, state, priority,
                      run_at, max_attempts, created_at, callback_url,
                      concurrency_key, concurrency_limit, schedule_id)
    VALUES (?1, ?2, ?3, ?4, 'available', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id";

pub const SELECT_BY_KEY: &str = "
    SELECT id, kind, payload, callback_url, concurrency_key, concurrency_limit
    FROM jobs WHERE idempotency_key = ?1";

/// Whether the claim must look at safeguards: a pause, a breaker that is
/// not closed, or a keyed job waiting. Each part is one seek; when all are
/// false the plain `CLAIM` applies.
pub const GUARDS_IN_USE: &str = "
    SELECT EXISTS (SELECT 1 FROM pauses)
        OR EXISTS (SELECT 1 FROM breakers WHERE state <> 'closed')
        OR EXISTS (SELECT 1 FROM jobs
                   WHERE concurrency_key IS NOT NULL
                     AND state IN ('available', 'retryable'))";

/// The claim shared by `CLAIM` and `CLAIM_IDS`: the jobs chosen by the
/// `WHERE` → running, fenced on their state; `attempt` and `epoch` rise by
/// one and the lease is set. ?1 now, ?2 lease expiry, ?3 worker.
macro_rules! claim {
    ($chosen:literal) => {
        concat!(
            "UPDATE jobs
             SET state = 'running',
                 attempt = attempt + 1,
                 epoch = epoch + 1,
                 attempted_at = ?1,
                 lease_expires_at = ?2,
                 leased_by = ?3
             WHERE state IN ('available', 'retryable') AND id IN (",
            $chosen,
            ")
             RETURNING id, kind, queue, payload, idempotency_key, priority,
                       attempt, max_attempts, epoch, run_at"
        )
    };
}

/// claim: available/retryable → running, in (priority, run_at, id) order.
/// ?4 JSON array of excluded kinds, ?5 limit.
pub const CLAIM: &str = claim!(
    "SELECT id FROM jobs
     WHERE state IN ('available', 'retryable')
       AND run_at <= ?1
       AND kind NOT IN (SELECT value FROM json_each(?4))
     ORDER BY priority, run_at, id
     LIMIT ?5"
);

/// The guarded claim's candidates, in claim order: due, not of an excluded
/// kind (?2, JSON array: full, paused, open breaker, no rate left), not on a
/// paused queue (?3), not of a saturated concurrency key (?4). The caller
/// reads them one by one, admitting each within its kind's and key's
/// budget, and stops once it has enough.
pub const CLAIM_CANDIDATES: &str = "
    SELECT id, kind, concurrency_key, concurrency_limit FROM jobs
    WHERE state IN ('available', 'retryable')
      AND run_at <= ?1
      AND kind NOT IN (SELECT value FROM json_each(?2))
      AND queue NOT IN (SELECT value FROM json_each(?3))
      AND (concurrency_key IS NULL
           OR concurrency_key NOT IN (SELECT value FROM json_each(?4)))
    ORDER BY priority, run_at, id";

/// The guarded claim itself: the admitted candidates (?4, JSON array of
/// ids) → running.
pub const CLAIM_IDS: &str = claim!("SELECT value FROM json_each(?4)");

/// Running jobs per concurrency key.
pub const RUNNING_PER_KEY: &str = "
    SELECT concurrency_key, COUNT(*) FROM jobs
    WHERE concurrency_key IS NOT NULL AND state = 'running'
    GROUP BY concurrency_key";

/// The largest limit among a key's waiting jobs: the key is saturated for
/// all of them once that many run.
pub const MAX_WAITING_LIMIT: &str = "
    SELECT MAX(concurrency_limit) FROM jobs
    WHERE concurrency_key = ?1 AND state IN ('available', 'retryable')";

pub const SELECT_PAUSES: &str = "
    SELECT scope, name, note, paused_at FROM pauses ORDER BY scope, name";

/// Breakers that hold jobs back, with whether their probe still runs.
pub const ACTIVE_BREAKERS: &str = "
    SELECT b.kind, b.state, b.retry_at,
           EXISTS (SELECT 1 FROM jobs j
                   WHERE j.id = b.probe_job AND j.epoch = b.probe_epoch
                     AND j.state = 'running')
    FROM breakers b WHERE b.state <> 'closed'";

/// A probe was claimed: open → half-open (or a half-open breaker whose
/// probe ended without a verdict gets a new one). ?1 kind, ?2 job,
/// ?3 epoch, ?4 now.
pub const BREAKER_PROBE: &str = "
    UPDATE breakers
    SET state = 'half_open', probe_job = ?2, probe_epoch = ?3, updated_at = ?4
    WHERE kind = ?1 AND state IN ('open', 'half_open')";

pub const SELECT_TAT: &str = "SELECT tat FROM rate_limits WHERE kind = ?1";

pub const UPSERT_TAT: &str = "
    INSERT INTO rate_limits (kind, tat) VALUES (?1, ?2)
    ON CONFLICT (kind) DO UPDATE SET tat = excluded.tat";

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

/// running → retryable after a kv conflict, giving the attempt back, while
/// the job's conflict budget lasts (?7). A job without a concurrency key
/// gets ?6, the conflicting kv key's, with limit 1: the losers on one key
/// run one at a time from then on. ?4 error, ?5 next run_at.
pub const CONFLICT_RETRY: &str = "
    UPDATE jobs
    SET state = 'retryable', error = ?4, run_at = ?5,
        attempt = attempt - 1, conflicts = conflicts + 1,
        concurrency_limit = CASE WHEN concurrency_key IS NULL THEN 1
                                 ELSE concurrency_limit END,
        concurrency_key = COALESCE(concurrency_key, ?6),
        lease_expires_at = NULL, leased_by = NULL
    WHERE id = ?1 AND epoch = ?2 AND state = 'running'
      AND lease_expires_at <= ?3 AND conflicts < ?7
    RETURNING callback_url IS NOT NULL";

/// running → retryable after a kv conflict past the budget: the attempt is
/// used up. ?4 error, ?5 next run_at.
pub const CONFLICT_RETRY_SPENT: &str =
    fenced!("state = 'retryable', error = ?4, run_at = ?5, conflicts = conflicts + 1");

/// running → discarded after a kv conflict on the last attempt, past the
/// budget. ?4 error, ?5 now.
pub const CONFLICT_DISCARD: &str =
    fenced!("state = 'discarded', error = ?4, finalized_at = ?5, conflicts = conflicts + 1");

pub const SELECT_BREAKER: &str = "
    SELECT kind, state, failures, streak_started_at, opened_at, retry_at,
           probe_job, probe_epoch, trips, last_error, updated_at
    FROM breakers WHERE kind = ?1";

pub const SELECT_BREAKERS: &str = "
    SELECT kind, state, failures, streak_started_at, opened_at, retry_at,
           probe_job, probe_epoch, trips, last_error, updated_at
    FROM breakers ORDER BY kind";

/// A breaker's new state, written whole: the write-back that computed it
/// runs in the same transaction as the read.
pub const UPSERT_BREAKER: &str = "
    INSERT INTO breakers (kind, state, failures, streak_started_at, opened_at,
                          retry_at, probe_job, probe_epoch, trips, last_error,
                          updated_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
    ON CONFLICT (kind) DO UPDATE SET
        state = excluded.state, failures = excluded.failures,
        streak_started_at = excluded.streak_started_at,
        opened_at = excluded.opened_at, retry_at = excluded.retry_at,
        probe_job = excluded.probe_job, probe_epoch = excluded.probe_epoch,
        trips = excluded.trips, last_error = excluded.last_error,
        updated_at = excluded.updated_at";

/// plugins breaker reset: any → closed, streak cleared. ?1 kind, ?2 now.
pub const RESET_BREAKER: &str = "
    UPDATE breakers
    SET state = 'closed', failures = 0, streak_started_at = NULL,
        retry_at = NULL, probe_job = NULL, probe_epoch = NULL, updated_at = ?2
    WHERE kind = ?1";

pub const IS_PAUSED: &str = "SELECT 1 FROM pauses WHERE scope = ?1 AND name = ?2";

pub const INSERT_PAUSE: &str = "
    INSERT INTO pauses (scope, name, note, paused_at) VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT (scope, name) DO UPDATE SET note = excluded.note";

pub const DELETE_PAUSE: &str = "DELETE FROM pauses WHERE scope = ?1 AND name = ?2";

/// The attempt row that goes with every transition out of running.
pub const INSERT_ATTEMPT: &str = "
    INSERT INTO attempts (job_id, epoch, attempt, outcome, error, fuel_used,
                          started_at, ended_at, duration_ms, component_hash,
                          recording, host)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

/// heartbeat: running → running with a later lease. ?1 id, ?2 epoch,
/// ?3 new expiry.
pub const EXTEND_LEASE: &str = "
    UPDATE jobs SET lease_expires_at = ?3
    WHERE id = ?1 AND epoch = ?2 AND state = 'running'";

/// The rescuer's scan. ?1 now, ?2 limit.
pub const EXPIRED_LEASES: &str = "
    SELECT id, epoch, kind, attempt, max_attempts, attempted_at, leased_by FROM jobs
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

/// The columns [`super::read::schedule_record`] reads, in order.
pub const SCHEDULE_COLUMNS: &str = "
    s.id, s.spec, s.next_fire_at, s.next_run_at, s.paused, s.pause_note,
    s.paused_at, s.fired, s.missed, s.skipped, s.triggers, s.last_fire_at,
    s.last_job_id, j.state, s.buffered_at, s.version, s.created_at,
    s.updated_at";

/// Schedules with their last job's state.
pub const SCHEDULES_FROM: &str = "FROM schedules s LEFT JOIN jobs j ON j.id = s.last_job_id";

pub const SELECT_SCHEDULE_SPEC: &str = "
    SELECT spec, cadence FROM schedules WHERE id = ?1";

/// apply, a new schedule or a new cadence: the definition and the next fire
/// computed from now, dropping a buffered fire of the old cadence.
/// ?1 id, ?2 spec, ?3 cadence, ?4 next fire, ?5 next run, ?6 now.
pub const UPSERT_SCHEDULE: &str = "
    INSERT INTO schedules (id, spec, cadence, next_fire_at, next_run_at,
                           created_at, updated_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
    ON CONFLICT (id) DO UPDATE SET
        spec = excluded.spec, cadence = excluded.cadence,
        next_fire_at = excluded.next_fire_at,
        next_run_at = excluded.next_run_at, buffered_at = NULL,
        version = version + 1, updated_at = excluded.updated_at";

/// apply, same cadence: the template changes, the next fire stays.
/// ?1 id, ?2 spec, ?3 now.
pub const UPDATE_SCHEDULE_SPEC: &str = "
    UPDATE schedules SET spec = ?2, version = version + 1, updated_at = ?3
    WHERE id = ?1";

pub const DELETE_SCHEDULE: &str = "DELETE FROM schedules WHERE id = ?1";

pub const SCHEDULE_IDS: &str = "SELECT id FROM schedules ORDER BY id";

/// A scheduler's fire, fenced on the version and next fire it planned
/// from and on the schedule being unpaused: advances the schedule.
/// ?1 id, ?2 version, ?3 expected next fire, ?4 new next fire, ?5 new next
/// run, ?6 missed, ?7 now.
pub const ADVANCE_SCHEDULE: &str = "
    UPDATE schedules
    SET next_fire_at = ?4, next_run_at = ?5, missed = missed + ?6,
        updated_at = ?7
    WHERE id = ?1 AND version = ?2 AND next_fire_at = ?3 AND paused = 0
    RETURNING last_job_id, buffered_at";

/// Whether a job is unfinished (for `overlap`).
pub const JOB_UNFINISHED: &str = "
    SELECT state IN ('available', 'running', 'retryable') FROM jobs WHERE id = ?1";

/// The fire record. ?1 schedule, ?2 nominal, ?3 trigger (0: cadence),
/// ?4 job, ?5 now.
pub const INSERT_FIRE: &str = "
    INSERT INTO schedule_fires (schedule_id, nominal_at, trigger, job_id, fired_at)
    VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT DO NOTHING";

/// The schedule after its fires: ?1 id, ?2 fires made, ?3 skipped,
/// ?4 last fire (NULL: unchanged), ?5 last job (NULL: unchanged),
/// ?6 buffered nominal (NULL: none).
pub const RECORD_FIRES: &str = "
    UPDATE schedules
    SET fired = fired + ?2, skipped = skipped + ?3,
        last_fire_at = COALESCE(?4, last_fire_at),
        last_job_id = COALESCE(?5, last_job_id),
        buffered_at = ?6
    WHERE id = ?1";

/// A manual trigger's job is the schedule's last. ?1 id, ?2 now, ?3 job.
pub const RECORD_TRIGGER: &str = "
    UPDATE schedules SET fired = fired + 1, last_fire_at = ?2, last_job_id = ?3
    WHERE id = ?1";

/// A buffered fire released, fenced on the version and on that fire being
/// the one buffered. ?1 id, ?2 version, ?3 nominal, ?4 now.
pub const RELEASE_BUFFERED: &str = "
    UPDATE schedules SET buffered_at = NULL, updated_at = ?4
    WHERE id = ?1 AND version = ?2 AND buffered_at = ?3 AND paused = 0
    RETURNING 1";

/// A manual trigger's number. ?1 id, ?2 now.
pub const NEXT_TRIGGER: &str = "
    UPDATE schedules SET triggers = triggers + 1, updated_at = ?2
    WHERE id = ?1 RETURNING triggers";

/// pause: the note is replaced, the time kept if it already was. Returns
/// whether it already was. ?1 id, ?2 note, ?3 now.
pub const PAUSE_SCHEDULE: &str = "
    UPDATE schedules
    SET paused = 1, pause_note = ?2, updated_at = ?3,
        paused_at = CASE WHEN paused = 1 THEN paused_at ELSE ?3 END
    WHERE id = ?1";

pub const SCHEDULE_PAUSED: &str = "SELECT paused FROM schedules WHERE id = ?1";

/// resume: the next fire is computed from now (fires while paused are not
/// made). ?1 id, ?2 next fire, ?3 next run, ?4 now.
pub const RESUME_SCHEDULE: &str = "
    UPDATE schedules
    SET paused = 0, pause_note = NULL, paused_at = NULL, next_fire_at = ?2,
        next_run_at = ?3, buffered_at = NULL, version = version + 1,
        updated_at = ?4
    WHERE id = ?1 AND paused = 1";

/// The earliest next run of an unpaused schedule, and whether any holds a
/// buffered fire.
pub const NEXT_SCHEDULE_WAKE: &str = "
    SELECT (SELECT MIN(next_run_at) FROM schedules
            WHERE paused = 0 AND next_run_at IS NOT NULL),
           EXISTS (SELECT 1 FROM schedules
                   WHERE paused = 0 AND buffered_at IS NOT NULL)";

/// Retention: a batch of discarded and cancelled jobs finalized before ?1
/// (`jobs_failed`). ?2 limit.
pub const FAILED_BEFORE: &str = "
    SELECT id FROM jobs
    WHERE state IN ('discarded', 'cancelled') AND finalized_at < ?1
    ORDER BY finalized_at
    LIMIT ?2";

/// Retention's sweep of completed jobs, in id order from ?1, at most ?2
/// rows (whatever their state): the caller picks the due ones and notes
/// where the rows become too young to be due.
pub const SWEEP: &str = "
    SELECT id, state = 'completed', finalized_at, created_at FROM jobs
    WHERE id > ?1 ORDER BY id LIMIT ?2";

pub const DELETE_ATTEMPTS_OF: &str = "
    DELETE FROM attempts WHERE job_id IN (SELECT value FROM json_each(?1))";

pub const DELETE_KV_WRITES_OF: &str = "
    DELETE FROM kv_writes WHERE job_id IN (SELECT value FROM json_each(?1))";

/// Deletes the jobs (fenced on their still being finished: an operator
/// may have retried one since the batch was chosen).
pub const DELETE_JOBS: &str = "
    DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?1))
      AND state IN ('completed', 'discarded', 'cancelled')";

/// kv tombstones older than ?1 (see `docs/state-machine.md` on why they are
/// kept that long; this is the only statement that removes kv rows). ?2
/// limit.
pub const DELETE_TOMBSTONES: &str = "
    DELETE FROM kv WHERE (namespace, key) IN (
        SELECT namespace, key FROM kv WHERE value IS NULL AND updated_at < ?1
        ORDER BY updated_at LIMIT ?2)";

pub const DELETE_DELIVERED: &str = "
    DELETE FROM outbox WHERE id IN (
        SELECT id FROM outbox WHERE state = 'delivered' AND finalized_at < ?1
        ORDER BY finalized_at LIMIT ?2)";

pub const DELETE_FIRES: &str = "
    DELETE FROM schedule_fires WHERE (schedule_id, nominal_at, trigger) IN (
        SELECT schedule_id, nominal_at, trigger FROM schedule_fires
        WHERE fired_at < ?1 ORDER BY fired_at LIMIT ?2)";

pub const SELECT_STATE: &str = "
    SELECT state, epoch, attempt, attempted_at, leased_by FROM jobs WHERE id = ?1";

/// The columns [`super::read::job_record`] reads, in order.
pub const JOB_COLUMNS: &str = "
    id, kind, queue, state, priority, attempt, max_attempts, epoch,
    idempotency_key, payload, output, error, created_at, run_at,
    attempted_at, finalized_at, lease_expires_at, callback_url,
    concurrency_key, concurrency_limit, conflicts, schedule_id";

pub const SELECT_ATTEMPTS: &str = "
    SELECT attempt, epoch, outcome, error, started_at, ended_at, duration_ms,
           fuel_used, component_hash, length(recording), host
    FROM attempts WHERE job_id = ?1 ORDER BY epoch";

/// An attempt's recording: attempt ?2, or with ?2 NULL the latest that has
/// one.
pub const SELECT_RECORDING: &str = "
    SELECT attempt, recording FROM attempts
    WHERE job_id = ?1 AND recording IS NOT NULL AND (?2 IS NULL OR attempt = ?2)
    ORDER BY epoch DESC LIMIT 1";

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

/// The audit of one kv write of a completion: job ?1, epoch ?2, key ?4 of
/// namespace ?3 at the version the completion left it (a key written
/// twice is logged once).
pub const LOG_KV_WRITE: &str = "
    INSERT OR IGNORE INTO kv_writes (job_id, epoch, namespace, key, version, deleted)
    SELECT ?1, ?2, namespace, key, version, value IS NULL
    FROM kv WHERE namespace = ?3 AND key = ?4";

/// The kv writes job ?1 committed.
pub const SELECT_KV_WRITES: &str = "
    SELECT epoch, namespace, key, version, deleted FROM kv_writes
    WHERE job_id = ?1 ORDER BY epoch, namespace, key, version";

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

/// A host's heartbeat. ?1 id, ?2 version, ?3 started, ?4 now, ?5 ready,
/// ?6 in flight.
pub const HEARTBEAT: &str = "
    INSERT INTO hosts (id, version, started_at, last_seen, ready, in_flight, minutes)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT (id) DO UPDATE SET
        version = excluded.version, started_at = excluded.started_at,
        last_seen = excluded.last_seen, ready = excluded.ready,
        in_flight = excluded.in_flight,
        minutes = COALESCE(excluded.minutes, hosts.minutes)";

/// Hosts not seen since ?1 are forgotten.
pub const FORGET_HOSTS: &str = "DELETE FROM hosts WHERE last_seen < ?1";

pub const SELECT_HOSTS: &str = "
    SELECT id, version, started_at, last_seen, ready, in_flight, minutes
    FROM hosts ORDER BY last_seen DESC, id";
