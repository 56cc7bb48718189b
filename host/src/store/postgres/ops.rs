//! Operator actions and the other loops' writes: retry and cancel (one
//! job or every job matching a filter), the outbox relay's claims and
//! deliveries, breakers and pauses, heartbeats and the cleaner. Each runs
//! inside the writer's open transaction, like `store/sqlite/write.rs`,
//! whose behaviour it matches.
//!
//! Unlike SQLite's writer, this one does not hold the only write lock:
//! other hosts write at the same time. What SQLite gets from its lock,
//! these get from row locks: an operator's action locks the job's row
//! (`FOR UPDATE`) before reading the state it decides on, so that state
//! stays current until the commit; the relay's claim and the cleaner take
//! their rows with `FOR UPDATE SKIP LOCKED`, so two hosts never take the
//! same row and never wait for each other. Every transition still names
//! the state (and epoch) it expects in its `WHERE`, as in SQLite.

use std::time::Duration;

use super::Conn;
use super::read::{self, col, int};
use super::write::Result;
use crate::job::{AttemptOutcome, Fenced, JobAction, JobFilter, JobId, JobState};
use crate::outbox::{ClaimedEvent, Delivery};
use crate::policy::{BreakerState, PauseScope};
use crate::store::{Bulk, CleanReport, CleanRequest, StoreError};
use crate::time::{Timestamp, duration_ms};

/// A job's state and claim, its row locked until the transaction ends.
const LOCK_JOB: &str = "
    SELECT state, epoch, attempt, attempted_at, leased_by FROM jobs WHERE id = $1
    FOR UPDATE";

/// jobs retry: discarded/retryable/cancelled → available now. A job whose
/// attempts were used up gets one more. $1 id, $2 now.
const RETRY_JOB: &str = "
    UPDATE jobs
    SET state = 'available', run_at = $2, finalized_at = NULL,
        max_attempts = GREATEST(max_attempts, attempt + 1)
    WHERE id = $1 AND state IN ('discarded', 'retryable', 'cancelled')";

/// jobs cancel, for a job not running: available/retryable → cancelled.
/// $1 id, $2 now.
const CANCEL_WAITING: &str = "
    UPDATE jobs SET state = 'cancelled', finalized_at = $2
    WHERE id = $1 AND state IN ('available', 'retryable')";

/// jobs cancel, for a running job: running → cancelled, fenced on the epoch
/// read (and locked) in the same transaction. $1 id, $2 epoch, $3 now.
const CANCEL_RUNNING: &str = "
    UPDATE jobs
    SET state = 'cancelled', finalized_at = $3, error = 'cancelled by operator',
        lease_expires_at = NULL, leased_by = NULL
    WHERE id = $1 AND epoch = $2 AND state = 'running'";

/// The attempt a cancel cut short. $1 job, $2 epoch, $3 attempt,
/// $4 outcome, $5 error, $6 started, $7 ended, $8 duration, $9 host.
const INSERT_CANCELLED_ATTEMPT: &str = "
    INSERT INTO attempts (job_id, epoch, attempt, outcome, error, started_at,
                          ended_at, duration_ms, host)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// relay claim: due pending events get a delivery lease and one more
/// attempt. The candidates are locked and those another relay holds are
/// skipped, so no event is claimed twice. $1 now, $2 lease expiry,
/// $3 limit.
const CLAIM_EVENTS: &str = "
    UPDATE outbox
    SET attempts = attempts + 1, lease_expires_at = $2
    WHERE state = 'pending'
      AND id IN (
        SELECT id FROM outbox
        WHERE state = 'pending' AND next_attempt_at <= $1
          AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
        ORDER BY next_attempt_at, id
        LIMIT $3
        FOR UPDATE SKIP LOCKED)
    RETURNING id, job_id, topic, url, body, idempotency_key, attempts";

/// The fence shared by the delivery outcomes: $1 id, $2 the attempt
/// number the relay claimed.
macro_rules! delivery {
    ($set:literal) => {
        concat!(
            "UPDATE outbox SET ",
            $set,
            ", lease_expires_at = NULL
             WHERE id = $1 AND attempts = $2 AND state = 'pending'"
        )
    };
}

/// pending → delivered. $3 status, $4 note, $5 now.
const EVENT_DELIVERED: &str = delivery!(
    "state = 'delivered', last_status = $3, note = $4, last_error = NULL, finalized_at = $5"
);

/// pending → pending, later. $3 status, $4 error, $5 next attempt.
const EVENT_RETRY: &str = delivery!("last_status = $3, last_error = $4, next_attempt_at = $5");

/// pending → failed (permanent). $3 status, $4 error, $5 now.
const EVENT_FAILED: &str =
    delivery!("state = 'failed', last_status = $3, last_error = $4, finalized_at = $5");

/// outbox retry: failed → pending now. $1 id, $2 now.
const RETRY_EVENT: &str = "
    UPDATE outbox
    SET state = 'pending', next_attempt_at = $2, finalized_at = NULL,
        lease_expires_at = NULL
    WHERE id = $1 AND state = 'failed'";

const EVENT_STATE: &str = "SELECT state FROM outbox WHERE id = $1";

/// A breaker's state before a reset, its row locked. $1 kind.
const LOCK_BREAKER: &str = "SELECT state FROM breakers WHERE kind = $1 FOR UPDATE";

/// plugins breaker reset: any → closed, streak cleared. $1 kind, $2 now.
const RESET_BREAKER: &str = "
    UPDATE breakers
    SET state = 'closed', failures = 0, streak_started_at = NULL,
        retry_at = NULL, probe_job = NULL, probe_epoch = NULL, updated_at = $2
    WHERE kind = $1";

const IS_PAUSED: &str = "SELECT 1 FROM pauses WHERE scope = $1 AND name = $2";

const INSERT_PAUSE: &str = "
    INSERT INTO pauses (scope, name, note, paused_at) VALUES ($1, $2, $3, $4)
    ON CONFLICT (scope, name) DO UPDATE SET note = excluded.note";

const DELETE_PAUSE: &str = "DELETE FROM pauses WHERE scope = $1 AND name = $2";

/// A host's heartbeat. $1 id, $2 version, $3 started, $4 now, $5 ready,
/// $6 in flight.
const HEARTBEAT: &str = "
    INSERT INTO hosts (id, version, started_at, last_seen, ready, in_flight, minutes)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (id) DO UPDATE SET
        version = excluded.version, started_at = excluded.started_at,
        last_seen = excluded.last_seen, ready = excluded.ready,
        in_flight = excluded.in_flight,
        minutes = COALESCE(excluded.minutes, hosts.minutes)";

/// Hosts not seen since $1 are forgotten.
const FORGET_HOSTS: &str = "DELETE FROM hosts WHERE last_seen < $1";

/// Retention: a batch of discarded and cancelled jobs finalized before $1
/// (`jobs_failed`), locked; those another cleaner holds are skipped.
/// $2 limit.
const FAILED_BEFORE: &str = "
    SELECT id FROM jobs
    WHERE state IN ('discarded', 'cancelled') AND finalized_at < $1
    ORDER BY finalized_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED";

/// Retention's sweep of completed jobs, in id order from $1, at most $2
/// rows (whatever their state): the caller picks the due ones and notes
/// where the rows become too young to be due. Nothing is locked here (the
/// sweep passes running jobs too).
const SWEEP: &str = "
    SELECT id, state = 'completed', finalized_at, created_at FROM jobs
    WHERE id > $1 ORDER BY id LIMIT $2";

/// The jobs chosen for deletion that are still finished, locked (skipping
/// those another cleaner holds): only these are deleted.
const LOCK_DOOMED: &str = "
    SELECT id FROM jobs
    WHERE id = ANY($1::bigint[])
      AND state IN ('completed', 'discarded', 'cancelled')
    ORDER BY id
    FOR UPDATE SKIP LOCKED";

const DELETE_ATTEMPTS_OF: &str = "DELETE FROM attempts WHERE job_id = ANY($1::bigint[])";

const DELETE_KV_WRITES_OF: &str = "DELETE FROM kv_writes WHERE job_id = ANY($1::bigint[])";

/// Deletes the jobs (fenced on their still being finished).
const DELETE_JOBS: &str = "
    DELETE FROM jobs WHERE id = ANY($1::bigint[])
      AND state IN ('completed', 'discarded', 'cancelled')";

/// kv tombstones older than $1 (see `docs/state-machine.md` on why they are
/// kept that long; this is the only statement that removes kv rows). $2
/// limit. The condition is repeated outside the subquery: a row rewritten
/// by a concurrent commit is checked again in its new version.
const DELETE_TOMBSTONES: &str = "
    DELETE FROM kv
    WHERE value IS NULL AND updated_at < $1
      AND (namespace, key) IN (
        SELECT namespace, key FROM kv WHERE value IS NULL AND updated_at < $1
        ORDER BY updated_at LIMIT $2
        FOR UPDATE SKIP LOCKED)";

const DELETE_DELIVERED: &str = "
    DELETE FROM outbox
    WHERE state = 'delivered' AND finalized_at < $1
      AND id IN (
        SELECT id FROM outbox WHERE state = 'delivered' AND finalized_at < $1
        ORDER BY finalized_at LIMIT $2
        FOR UPDATE SKIP LOCKED)";

const DELETE_FIRES: &str = "
    DELETE FROM schedule_fires WHERE (schedule_id, nominal_at, trigger) IN (
        SELECT schedule_id, nominal_at, trigger FROM schedule_fires
        WHERE fired_at < $1 ORDER BY fired_at LIMIT $2
        FOR UPDATE SKIP LOCKED)";

/// A job's state as read (and locked) by [`lock_job`].
struct Locked {
    state: JobState,
    /// As stored, to fence on.
    epoch: i64,
    attempt: i32,
    attempted_at: Option<Timestamp>,
    /// The worker holding its lease, if running.
    leased_by: Option<String>,
}

/// Locks job `id`'s row for the rest of the transaction and reads its
/// state: until the commit, no other host's write-back, claim or operator
/// moves it, so the state read is the state the caller's update meets.
fn lock_job(c: &mut Conn, id: JobId) -> Result<Locked> {
    let r = c
        .query_opt(LOCK_JOB, &[&id])?
        .ok_or(StoreError::NotFound(id))?;
    let state: String = col(&r, 0)?;
    Ok(Locked {
        state: state.parse().map_err(StoreError::Backend)?,
        epoch: col(&r, 1)?,
        attempt: col(&r, 2)?,
        attempted_at: read::opt_ts(&r, 3)?,
        leased_by: col(&r, 4)?,
    })
}

/// The error for a fenced update that matched nothing although the row was
/// locked in the state it expects (which should not happen).
fn changed_under_lock(id: JobId, action: &str) -> StoreError {
    StoreError::Backend(format!("job {id} changed while being {action}; try again"))
}

pub(super) fn retry_job(c: &mut Conn, id: JobId, now: Timestamp) -> Result<JobState> {
    let job = lock_job(c, id)?;
    if !matches!(
        job.state,
        JobState::Discarded | JobState::Retryable | JobState::Cancelled
    ) {
        return Err(StoreError::InvalidState {
            id,
            state: job.state,
            action: "retry",
            expected: "discarded, retryable or cancelled",
        });
    }
    if c.execute(RETRY_JOB, &[&id, &now.0])? != 1 {
        return Err(changed_under_lock(id, "retried"));
    }
    Ok(JobState::Available)
}

pub(super) fn cancel_job(c: &mut Conn, id: JobId, now: Timestamp) -> Result<JobState> {
    let job = lock_job(c, id)?;
    match job.state {
        JobState::Available | JobState::Retryable => {
            if c.execute(CANCEL_WAITING, &[&id, &now.0])? != 1 {
                return Err(changed_under_lock(id, "cancelled"));
            }
            // A cancelled job gets no callback event.
            Ok(JobState::Cancelled)
        }
        JobState::Running => {
            // The worker's write-back is fenced on this epoch and on the
            // job running: once this commits, it matches nothing.
            if c.execute(CANCEL_RUNNING, &[&id, &job.epoch, &now.0])? != 1 {
                return Err(changed_under_lock(id, "cancelled"));
            }
            let started_at = job.attempted_at.unwrap_or(now);
            c.execute(
                INSERT_CANCELLED_ATTEMPT,
                &[
                    &id,
                    &job.epoch,
                    &job.attempt,
                    &AttemptOutcome::Cancelled.as_str(),
                    &"cancelled by operator while running",
                    &started_at.0,
                    &now.0,
                    &duration_ms(now.since(started_at)),
                    &job.leased_by,
                ],
            )?;
            Ok(JobState::Cancelled)
        }
        state => Err(StoreError::InvalidState {
            id,
            state,
            action: "cancel",
            expected: "available, retryable or running",
        }),
    }
}

/// An operator's action on every job matching `filter`, at most `limit`
/// of them: retry (discarded, retryable or cancelled → available) or
/// cancel (available, retryable or running → cancelled). Each job is moved
/// by the same locked, fenced statements as a single retry or cancel; a
/// job another host moved or deleted since the listing is skipped.
pub(super) fn bulk(
    c: &mut Conn,
    filter: &JobFilter,
    limit: u32,
    now: Timestamp,
    retry: bool,
) -> Result<Bulk> {
    let (cond, mut args) = read::filter_sql(filter);
    let states = if retry {
        JobAction::Retry
    } else {
        JobAction::Cancel
    }
    .from_states_sql();
    args.push(Box::new(i64::from(limit) + 1));
    let q = format!(
        "SELECT id, kind FROM jobs WHERE {cond} AND state IN {states} ORDER BY id LIMIT ${}",
        args.len()
    );
    let rows = c.client().query(&q, &read::params(&args))?;
    let mut ids = rows
        .iter()
        .map(|r| Ok((col::<JobId>(r, 0)?, col::<String>(r, 1)?)))
        .collect::<Result<Vec<_>>>()?;
    let more = ids.len() > limit as usize;
    ids.truncate(limit as usize);
    let mut changed = Vec::with_capacity(ids.len());
    for (id, kind) in ids {
        let r = if retry {
            retry_job(c, id, now)
        } else {
            cancel_job(c, id, now)
        };
        match r {
            Ok(state) => changed.push((id, kind, state)),
            Err(StoreError::InvalidState { .. } | StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Bulk { changed, more })
}

pub(super) fn claim_events(
    c: &mut Conn,
    now: Timestamp,
    limit: u32,
    lease: Duration,
) -> Result<Vec<ClaimedEvent>> {
    let rows = c.query(
        CLAIM_EVENTS,
        &[&now.0, &now.plus(lease).0, &i64::from(limit)],
    )?;
    let mut events = rows
        .iter()
        .map(|r| {
            Ok(ClaimedEvent {
                id: col(r, 0)?,
                job_id: col(r, 1)?,
                topic: col(r, 2)?,
                url: col(r, 3)?,
                body: col(r, 4)?,
                idempotency_key: col(r, 5)?,
                attempt: int(r, 6)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    events.sort_by_key(|e| e.id);
    Ok(events)
}

pub(super) fn record_delivery(
    c: &mut Conn,
    id: i64,
    attempt: u32,
    delivery: &Delivery,
    now: Timestamp,
) -> Result<Fenced> {
    // No claim has an attempt number past `INTEGER`'s range.
    let Ok(attempt) = i32::try_from(attempt) else {
        return Ok(Fenced::FencedOut);
    };
    let status = |s: Option<u16>| s.map(i32::from);
    let changed = match delivery {
        Delivery::Delivered { status: s, note } => c.execute(
            EVENT_DELIVERED,
            &[&id, &attempt, &i32::from(*s), note, &now.0],
        )?,
        Delivery::Retry {
            status: s,
            error,
            next_attempt_at,
        } => c.execute(
            EVENT_RETRY,
            &[&id, &attempt, &status(*s), error, &next_attempt_at.0],
        )?,
        Delivery::Failed { status: s, error } => {
            c.execute(EVENT_FAILED, &[&id, &attempt, &status(*s), error, &now.0])?
        }
    };
    Ok(if changed == 1 {
        Fenced::Applied
    } else {
        Fenced::FencedOut
    })
}

pub(super) fn retry_event(c: &mut Conn, id: i64, now: Timestamp) -> Result<()> {
    if c.execute(RETRY_EVENT, &[&id, &now.0])? == 1 {
        return Ok(());
    }
    match c.query_opt(EVENT_STATE, &[&id])? {
        None => Err(StoreError::EventNotFound(id)),
        Some(r) => Err(StoreError::EventNotFailed {
            id,
            state: col::<String>(&r, 0)?.parse().map_err(StoreError::Backend)?,
        }),
    }
}

pub(super) fn reset_breaker(
    c: &mut Conn,
    kind: &str,
    now: Timestamp,
) -> Result<Option<BreakerState>> {
    let before: Option<BreakerState> = match c.query_opt(LOCK_BREAKER, &[&kind])? {
        Some(r) => Some(col::<String>(&r, 0)?.parse().map_err(StoreError::Backend)?),
        None => None,
    };
    c.execute(RESET_BREAKER, &[&kind, &now.0])?;
    Ok(before)
}

pub(super) fn pause(
    c: &mut Conn,
    scope: PauseScope,
    name: &str,
    note: &str,
    now: Timestamp,
) -> Result<bool> {
    let was = c.query_opt(IS_PAUSED, &[&scope.as_str(), &name])?.is_some();
    c.execute(INSERT_PAUSE, &[&scope.as_str(), &name, &note, &now.0])?;
    Ok(!was)
}

pub(super) fn resume(c: &mut Conn, scope: PauseScope, name: &str) -> Result<bool> {
    Ok(c.execute(DELETE_PAUSE, &[&scope.as_str(), &name])? == 1)
}

pub(super) fn heartbeat(
    c: &mut Conn,
    host: &crate::health::HostRecord,
    forget_before: Timestamp,
) -> Result<()> {
    let in_flight = i64::try_from(host.in_flight).unwrap_or(i64::MAX);
    c.execute(
        HEARTBEAT,
        &[
            &host.id,
            &host.version,
            &host.started_at.0,
            &host.last_seen.0,
            &host.ready,
            &in_flight,
            &host.minutes,
        ],
    )?;
    c.execute(FORGET_HOSTS, &[&forget_before.0])?;
    Ok(())
}

/// One batch of each kind of deletion retention allows. Safe while other
/// hosts clean too: each takes its rows with `SKIP LOCKED`, so two
/// cleaners delete different rows (and each counts only its own).
pub(super) fn clean(c: &mut Conn, req: &CleanRequest) -> Result<CleanReport> {
    let mut report = CleanReport::default();
    let batch = i64::from(req.batch);
    let mut doomed: Vec<JobId> = Vec::new();
    if let Some(before) = req.failed_before {
        for r in c.query(FAILED_BEFORE, &[&before.0, &batch])? {
            doomed.push(col(&r, 0)?);
        }
    }
    if let Some(before) = req.completed_before {
        let rows = c.query(SWEEP, &[&req.sweep_from, &batch])?;
        let mut seen: u32 = 0;
        let mut last = req.sweep_from;
        for r in &rows {
            seen += 1;
            let id: JobId = col(r, 0)?;
            let completed: bool = col(r, 1)?;
            let finalized_at: Option<i64> = col(r, 2)?;
            let created_at: i64 = col(r, 3)?;
            last = id;
            if completed && finalized_at.is_some_and(|t| t < before.0) {
                doomed.push(id);
            } else if created_at >= before.0 {
                // Created after the cut-off: this job and (near enough)
                // every later one cannot be due yet.
                report.young_from = Some(id);
                break;
            }
        }
        if report.young_from.is_none() && seen == req.batch {
            report.swept_to = Some(last);
        }
    }
    if !doomed.is_empty() {
        let locked: Vec<JobId> = c
            .query(LOCK_DOOMED, &[&doomed])?
            .iter()
            .map(|r| col(r, 0))
            .collect::<Result<_>>()?;
        if !locked.is_empty() {
            report.attempts += c.execute(DELETE_ATTEMPTS_OF, &[&locked])?;
            c.execute(DELETE_KV_WRITES_OF, &[&locked])?;
            report.jobs += c.execute(DELETE_JOBS, &[&locked])?;
        }
    }
    if let Some(before) = req.tombstones_before {
        report.tombstones = c.execute(DELETE_TOMBSTONES, &[&before.0, &batch])?;
    }
    if let Some(before) = req.delivered_before {
        report.events = c.execute(DELETE_DELIVERED, &[&before.0, &batch])?;
    }
    if let Some(before) = req.fires_before {
        report.fires = c.execute(DELETE_FIRES, &[&before.0, &batch])?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    //! Against a scratch database on the PostgreSQL at
    //! `JOBBOX_TEST_PG_URL` (default: the local server, user `postgres`),
    //! skipped with a message when none is reachable. Jobs are put in the
    //! states under test with SQL, so these do not depend on the claim.

    use std::time::Duration;

    use postgres::Client;
    use postgres::types::ToSql;

    use crate::job::{AttemptOutcome, Fenced, JobFilter, JobId, JobState, NewJob};
    use crate::outbox::{Delivery, EventState};
    use crate::policy::{BreakerState, PauseScope};
    use crate::store::postgres::PgStore;
    use crate::store::postgres::scratch::{Scratch, rt};
    use crate::store::{CleanRequest, Store, StoreError};
    use crate::time::Timestamp;

    /// A connection of the test's own. The blocking client cannot run on
    /// a runtime's thread, so each call runs on a thread of its own.
    struct Db(Client);

    impl Db {
        fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> u64 {
            let client = &mut self.0;
            std::thread::scope(|s| {
                s.spawn(|| client.execute(sql, params).unwrap())
                    .join()
                    .unwrap()
            })
        }

        fn batch(&mut self, sql: &str) {
            let client = &mut self.0;
            std::thread::scope(|s| {
                s.spawn(|| client.batch_execute(sql).unwrap())
                    .join()
                    .unwrap()
            })
        }
    }

    /// A connection of the test's own to the scratch database.
    fn client(s: &Scratch) -> Db {
        Db(Scratch::client(s))
    }

    fn job(kind: &str) -> NewJob {
        NewJob::new(kind, "{}").unwrap()
    }

    async fn enqueue(store: &PgStore, jobs: Vec<NewJob>, now: i64) -> Vec<JobId> {
        store
            .enqueue(jobs, Timestamp(now))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    /// Puts job `id` in `state` as a claim (attempt 1, epoch 1) or a
    /// final transition would.
    fn set_state(db: &mut Db, id: JobId, state: &str, at: i64) {
        db.execute(
            "UPDATE jobs SET state = $2::text, attempt = 1, epoch = 1, attempted_at = $3::bigint,
                    lease_expires_at = CASE WHEN $2 = 'running' THEN $3 + 60000 END,
                    finalized_at = CASE WHEN $2 IN ('completed', 'discarded', 'cancelled')
                                        THEN $3 END
             WHERE id = $1",
            &[&id, &state, &at],
        );
    }

    #[test]
    fn operator_actions_follow_the_state_machine_and_fence_the_worker() {
        let Some(scratch) = Scratch::new("ops") else {
            return;
        };
        let mut db = client(&scratch);
        let store = scratch.open();
        rt().block_on(async {
            let mut one_shot = job("echo");
            one_shot.max_attempts = Some(1);
            let ids = enqueue(&store, vec![one_shot, job("echo"), job("sleepy")], 1_000).await;
            let (discarded, waiting, running) = (ids[0], ids[1], ids[2]);
            set_state(&mut db, discarded, "discarded", 2_000);
            set_state(&mut db, running, "running", 2_000);

            // retry: discarded → available, with one more attempt allowed.
            let now = Timestamp(5_000);
            assert_eq!(
                store.retry_job(discarded, now).await.unwrap(),
                JobState::Available
            );
            let rec = store.job(discarded).await.unwrap().unwrap();
            assert_eq!(
                (
                    rec.state,
                    rec.attempt,
                    rec.max_attempts,
                    rec.run_at,
                    rec.finalized_at
                ),
                (JobState::Available, 1, 2, now, None)
            );
            let err = store.retry_job(discarded, now).await.unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "job {discarded} is available: retry needs discarded, retryable or cancelled"
                )
            );
            assert!(matches!(
                store.retry_job(999, now).await,
                Err(StoreError::NotFound(999))
            ));
            assert!(matches!(
                store.cancel_job(999, now).await,
                Err(StoreError::NotFound(999))
            ));

            // cancel: available → cancelled, and not twice.
            assert_eq!(
                store.cancel_job(waiting, now).await.unwrap(),
                JobState::Cancelled
            );
            assert!(matches!(
                store.cancel_job(waiting, now).await,
                Err(StoreError::InvalidState {
                    state: JobState::Cancelled,
                    ..
                })
            ));

            // cancel: running → cancelled, the attempt recorded; the
            // worker's write-back (fenced on epoch 1 and running) misses.
            assert_eq!(
                store.cancel_job(running, now).await.unwrap(),
                JobState::Cancelled
            );
            let rec = store.job(running).await.unwrap().unwrap();
            assert_eq!(rec.state, JobState::Cancelled);
            assert_eq!(rec.error.as_deref(), Some("cancelled by operator"));
            assert_eq!(rec.lease_expires_at, None);
            assert_eq!(rec.attempts.len(), 1);
            let a = &rec.attempts[0];
            assert_eq!(
                (a.attempt, a.epoch, a.outcome, a.duration_ms),
                (1, 1, AttemptOutcome::Cancelled, 3_000)
            );
            let worker = db.execute(
                "UPDATE jobs SET state = 'completed'
                     WHERE id = $1 AND epoch = 1 AND state = 'running'",
                &[&running],
            );
            assert_eq!(worker, 0);
            // A cancelled job gets no callback event.
            assert_eq!(store.event_counts().await.unwrap().pending, 0);

            // bulk: at most `limit`, in id order, saying there is more.
            let more = enqueue(&store, (0..3).map(|_| job("bulk")).collect(), 6_000).await;
            let filter = JobFilter {
                kind: Some("bulk".into()),
                ..JobFilter::default()
            };
            let b = store.cancel_jobs(filter.clone(), 2, now).await.unwrap();
            assert!(b.more);
            assert_eq!(
                b.changed,
                vec![
                    (more[0], "bulk".to_string(), JobState::Cancelled),
                    (more[1], "bulk".to_string(), JobState::Cancelled)
                ]
            );
            let b = store.retry_jobs(filter.clone(), 10, now).await.unwrap();
            assert!(!b.more);
            assert_eq!(b.changed.len(), 2);
            let listed = store
                .list_jobs(JobFilter {
                    state: Some(JobState::Available),
                    before: Some(more[2]),
                    limit: Some(1),
                    ..filter
                })
                .await
                .unwrap();
            assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), [more[1]]);

            let counts = store.counts().await.unwrap();
            assert_eq!(
                (counts.available, counts.cancelled, counts.running),
                (4, 2, 0)
            );
            let queues = store.queues(Timestamp(5_500)).await.unwrap();
            assert_eq!(queues.len(), 1);
            assert_eq!(queues[0].counts, counts);
            assert_eq!(queues[0].oldest_due, Some(Timestamp(5_000)));
            store.close().await.unwrap();
        });
    }

    #[test]
    fn the_relay_claims_each_event_once_and_fences_its_outcome() {
        let Some(scratch) = Scratch::new("ops") else {
            return;
        };
        let mut db = client(&scratch);
        let mut other = client(&scratch);
        let store = scratch.open();
        rt().block_on(async {
            for i in 1..=3 {
                db.execute(
                    "INSERT INTO outbox (job_id, topic, url, body, idempotency_key,
                                         state, next_attempt_at, created_at)
                     VALUES ($1, 't', 'http://x', 'body'::bytea, $2, 'pending', $3, 0)",
                    &[&i64::from(i), &format!("k{i}"), &i64::from(i * 100)],
                );
            }
            // Another relay holds event 1.
            other.batch("BEGIN; SELECT id FROM outbox WHERE id = 1 FOR UPDATE");
            let lease = Duration::from_secs(10);
            let claimed = store
                .claim_events(Timestamp(1_000), 10, lease)
                .await
                .unwrap();
            assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), [2, 3]);
            assert_eq!(claimed[0].attempt, 1);
            assert_eq!(claimed[0].body, b"body");
            other.batch("ROLLBACK");
            // Leased: not claimed again until the lease ends.
            let claimed = store
                .claim_events(Timestamp(1_000), 10, lease)
                .await
                .unwrap();
            assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), [1]);

            let delivered = Delivery::Delivered {
                status: 200,
                note: None,
            };
            let t = Timestamp(2_000);
            assert_eq!(
                store
                    .record_delivery(2, 2, delivered.clone(), t)
                    .await
                    .unwrap(),
                Fenced::FencedOut
            );
            assert_eq!(
                store.record_delivery(2, 1, delivered, t).await.unwrap(),
                Fenced::Applied
            );
            let failed = Delivery::Failed {
                status: Some(410),
                error: "gone".into(),
            };
            assert_eq!(
                store.record_delivery(3, 1, failed, t).await.unwrap(),
                Fenced::Applied
            );
            assert!(matches!(
                store.retry_event(2, t).await,
                Err(StoreError::EventNotFailed {
                    id: 2,
                    state: EventState::Delivered
                })
            ));
            assert!(matches!(
                store.retry_event(9, t).await,
                Err(StoreError::EventNotFound(9))
            ));
            let counts = store.event_counts().await.unwrap();
            assert_eq!((counts.pending, counts.delivered, counts.failed), (1, 1, 1));
            let failed = store
                .list_events(Some(EventState::Failed), None, 10)
                .await
                .unwrap();
            assert_eq!(failed.len(), 1);
            assert_eq!(
                (failed[0].last_status, failed[0].last_error.as_deref()),
                (Some(410), Some("gone"))
            );
            store.retry_event(3, t).await.unwrap();
            assert_eq!(store.pending_events().await.unwrap(), 2);
            let all = store.list_events(None, None, 10).await.unwrap();
            assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 2, 1]);
            store.close().await.unwrap();
        });
    }

    #[test]
    fn kv_breakers_pauses_and_hosts_read_back_in_sqlite_order() {
        let Some(scratch) = Scratch::new("ops") else {
            return;
        };
        let mut db = client(&scratch);
        let store = scratch.open();
        rt().block_on(async {
            for (key, value) in [
                ("balance/b", Some(&b"2"[..])),
                ("balance/B", Some(&b"1"[..])),
                ("balance/gone", None),
                ("balance0", Some(&b"x"[..])),
                ("balancE/a", Some(&b"y"[..])),
            ] {
                db.execute(
                    "INSERT INTO kv (namespace, key, value, version, updated_at)
                     VALUES ('ns', $1, $2, 3, 0)",
                    &[&key, &value],
                );
            }
            let listed = store
                .kv_list("ns".into(), "balance/".into(), 10)
                .await
                .unwrap();
            let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["balance/B", "balance/b"]);
            let all = store.kv_list("ns".into(), String::new(), 2).await.unwrap();
            let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["balancE/a", "balance/B"]);
            let gone = store
                .kv_get("ns".into(), "balance/gone".into())
                .await
                .unwrap();
            assert_eq!((gone.value, gone.version), (None, Some(3)));
            let never = store.kv_get("ns".into(), "nope".into()).await.unwrap();
            assert_eq!((never.value, never.version), (None, None));

            db.execute(
                "INSERT INTO breakers (kind, state, failures, opened_at, retry_at,
                                       probe_job, probe_epoch, trips, updated_at)
                 VALUES ('b', 'half_open', 5, 10, 20, 7, 2, 1, 30),
                        ('a', 'closed', 0, NULL, NULL, NULL, NULL, 0, 1)",
                &[],
            );
            let breakers = store.breakers().await.unwrap();
            assert_eq!(breakers[0].kind, "a");
            assert_eq!(breakers[1].probe, Some((7, 2)));
            assert_eq!(
                store
                    .reset_breaker("b".into(), Timestamp(40))
                    .await
                    .unwrap(),
                Some(BreakerState::HalfOpen)
            );
            assert_eq!(
                store
                    .reset_breaker("none".into(), Timestamp(40))
                    .await
                    .unwrap(),
                None
            );
            let b = &store.breakers().await.unwrap()[1];
            assert_eq!(
                (b.state, b.failures, b.probe, b.trips, b.updated_at),
                (BreakerState::Closed, 0, None, 1, Timestamp(40))
            );

            let paused =
                |s, n: &str, note: &str| store.pause(s, n.into(), note.into(), Timestamp(50));
            assert!(paused(PauseScope::Queue, "q", "one").await.unwrap());
            assert!(!paused(PauseScope::Queue, "q", "two").await.unwrap());
            assert!(paused(PauseScope::Kind, "k", "").await.unwrap());
            let pauses = store.pauses().await.unwrap();
            assert_eq!(pauses.len(), 2);
            assert_eq!(
                (pauses[0].scope, pauses[1].note.as_str()),
                (PauseScope::Kind, "two")
            );
            let queues = store.queues(Timestamp(50)).await.unwrap();
            assert_eq!(queues.len(), 1);
            assert_eq!(
                queues[0].paused.as_ref().map(|p| p.name.as_str()),
                Some("q")
            );
            assert!(store.resume(PauseScope::Queue, "q".into()).await.unwrap());
            assert!(!store.resume(PauseScope::Queue, "q".into()).await.unwrap());

            let host = |id: &str, seen| crate::health::HostRecord {
                id: id.into(),
                version: "1".into(),
                started_at: Timestamp(1),
                last_seen: Timestamp(seen),
                ready: true,
                in_flight: 3,
                minutes: (seen == 100).then(|| format!("[\"{id}\"]")),
            };
            store
                .heartbeat(host("old", 10), Timestamp(0))
                .await
                .unwrap();
            store.heartbeat(host("b", 100), Timestamp(0)).await.unwrap();
            store
                .heartbeat(host("a", 100), Timestamp(50))
                .await
                .unwrap();
            let hosts = store.hosts().await.unwrap();
            let ids: Vec<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
            assert_eq!(ids, ["a", "b"]);
            assert_eq!((hosts[0].ready, hosts[0].in_flight), (true, 3));
            assert_eq!(hosts[0].minutes.as_deref(), Some(r#"["a"]"#));
            // A beat without minutes keeps the ones written last.
            store
                .heartbeat(host("a", 120), Timestamp(50))
                .await
                .unwrap();
            let hosts = store.hosts().await.unwrap();
            assert_eq!(hosts[0].minutes.as_deref(), Some(r#"["a"]"#));
            store.close().await.unwrap();
        });
    }

    #[test]
    fn the_cleaner_deletes_what_retention_allows_and_reports_its_sweep() {
        let Some(scratch) = Scratch::new("ops") else {
            return;
        };
        let mut db = client(&scratch);
        let store = scratch.open();
        rt().block_on(async {
            // 1, 2 completed long ago; 3 discarded long ago; 4 running;
            // 5 completed recently; 6 created after the cut-off.
            let ids = enqueue(&store, (0..5).map(|_| job("echo")).collect(), 100).await;
            let young = enqueue(&store, vec![job("echo")], 10_000).await[0];
            for (id, state, at) in [
                (ids[0], "completed", 200),
                (ids[1], "completed", 300),
                (ids[2], "discarded", 300),
                (ids[3], "running", 300),
                (ids[4], "completed", 9_000),
            ] {
                set_state(&mut db, id, state, at);
            }
            db.execute(
                "INSERT INTO attempts (job_id, epoch, attempt, outcome, started_at,
                                       ended_at, duration_ms, recording)
                 VALUES ($1, 1, 1, 'completed', 100, 200, 100, '\\x0102'::bytea)",
                &[&ids[0]],
            );
            let rec = store.recording(ids[0], None).await.unwrap();
            assert_eq!(rec, Some((1, vec![1, 2])));
            assert_eq!(store.recording(ids[0], Some(2)).await.unwrap(), None);
            let shown = store.job(ids[0]).await.unwrap().unwrap();
            assert_eq!(shown.attempts[0].recording_bytes, Some(2));
            db.batch(
                "INSERT INTO kv VALUES ('ns', 'dead', NULL, 2, 100), ('ns', 'live', 'v', 1, 100);
                 INSERT INTO outbox (job_id, topic, url, body, idempotency_key, state,
                                     next_attempt_at, created_at, finalized_at)
                 VALUES (1, 't', 'u', ''::bytea, 'd', 'delivered', 0, 0, 100);
                 INSERT INTO schedule_fires VALUES ('s', 0, 0, 1, 100), ('s', 1, 0, 1, 5000);",
            );
            let cut = Some(Timestamp(1_000));
            let req = CleanRequest {
                completed_before: cut,
                sweep_from: 0,
                failed_before: cut,
                tombstones_before: cut,
                delivered_before: cut,
                fires_before: cut,
                batch: 2,
            };
            let r = store.clean(req.clone()).await.unwrap();
            // The discarded job and the first completed one (the batch of
            // two swept ids 1 and 2... both completed and due).
            assert_eq!(
                (r.jobs, r.attempts, r.tombstones, r.events, r.fires),
                (3, 1, 1, 1, 1)
            );
            assert_eq!((r.swept_to, r.young_from), (Some(ids[1]), None));
            let r = store
                .clean(CleanRequest {
                    sweep_from: ids[1],
                    batch: 10,
                    ..req.clone()
                })
                .await
                .unwrap();
            assert_eq!((r.jobs, r.swept_to, r.young_from), (0, None, Some(young)));
            let left: Vec<JobId> = store
                .list_jobs(JobFilter::default())
                .await
                .unwrap()
                .iter()
                .map(|j| j.id)
                .collect();
            assert_eq!(left, [young, ids[4], ids[3]]);
            assert_eq!(
                store
                    .kv_get("ns".into(), "live".into())
                    .await
                    .unwrap()
                    .version,
                Some(1)
            );
            store.close().await.unwrap();
        });
    }
}
