//! The write side: each function applies one command inside the writer's
//! open transaction and returns its answer. The writer wraps each call in a
//! savepoint, so an error undoes exactly that command.

use rusqlite::{Connection, OptionalExtension, params};

use super::sql;
use crate::job::{
    AttemptOutcome, AttemptRecord, ClaimedJob, DEFAULT_MAX_ATTEMPTS, Effects, Enqueued,
    ExpiredLease, Fence, Fenced, JobId, JobState, NewJob, Transition, effective_idempotency_key,
};
use crate::outbox::{CALLBACK_TOPIC, ClaimedEvent, Delivery};
use crate::store::{ClaimRequest, StoreError};
use crate::time::{Timestamp, duration_ms};

pub(super) type Result<T> = std::result::Result<T, StoreError>;

pub(super) fn enqueue(conn: &Connection, jobs: &[NewJob], now: Timestamp) -> Result<Vec<Enqueued>> {
    let mut insert = conn.prepare_cached(sql::INSERT_JOB)?;
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let run_at = job.run_at.unwrap_or(now);
        let id: Option<JobId> = insert
            .query_row(
                params![
                    job.kind,
                    job.queue,
                    job.payload,
                    job.idempotency_key,
                    job.priority,
                    run_at.0,
                    job.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
                    now.0,
                    job.callback_url,
                ],
                |r| r.get(0),
            )
            .optional()?;
        match id {
            Some(id) => out.push(Enqueued { id, created: true }),
            None => {
                // Only a duplicate key makes the insert do nothing.
                let key = job.idempotency_key.as_deref().unwrap_or_default();
                let (id, kind, payload, callback): (JobId, String, String, Option<String>) = conn
                    .prepare_cached(sql::SELECT_BY_KEY)?
                    .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                if kind != job.kind || payload != job.payload || callback != job.callback_url {
                    return Err(StoreError::KeyConflict {
                        key: key.to_owned(),
                        existing: id,
                    });
                }
                out.push(Enqueued { id, created: false });
            }
        }
    }
    Ok(out)
}

pub(super) fn claim(conn: &Connection, req: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
    if req.limit == 0 {
        return Ok(Vec::new());
    }
    let lease_expires_at = req.now.plus(req.lease);
    let excluded = serde_json::to_string(&req.exclude_kinds).expect("strings serialize");
    let mut stmt = conn.prepare_cached(sql::CLAIM)?;
    let mut rows = stmt.query(params![
        req.now.0,
        lease_expires_at.0,
        req.worker,
        excluded,
        req.limit
    ])?;
    let mut jobs = Vec::with_capacity(req.limit as usize);
    while let Some(r) = rows.next()? {
        let id: JobId = r.get(0)?;
        let key: Option<String> = r.get(4)?;
        jobs.push(ClaimedJob {
            id,
            kind: r.get(1)?,
            queue: r.get(2)?,
            payload: r.get(3)?,
            idempotency_key: effective_idempotency_key(id, key.as_deref()),
            priority: r.get(5)?,
            attempt: r.get(6)?,
            max_attempts: r.get(7)?,
            epoch: r.get(8)?,
            run_at: Timestamp(r.get(9)?),
            attempted_at: req.now,
            lease_expires_at,
        });
    }
    // RETURNING gives no order guarantee; hand jobs out in claim order.
    jobs.sort_by_key(|j| (j.priority, j.run_at, j.id));
    Ok(jobs)
}

/// Applies a transition out of running plus its attempt row, fenced on
/// `fence` and on the lease having expired by `lease_bound`; with a
/// completion, its effects too; with a final transition, the job's
/// callback event.
pub(super) fn finish(
    conn: &Connection,
    fence: Fence,
    attempt: &AttemptRecord,
    transition: &Transition,
    effects: Option<&Effects>,
    lease_bound: i64,
) -> Result<Fenced> {
    let now = attempt.ended_at.0;
    let (id, epoch) = (fence.id, fence.epoch);
    let applied = match transition {
        Transition::Complete { output } => conn
            .prepare_cached(sql::COMPLETE)?
            .query_row(params![id, epoch, lease_bound, output, now], |r| r.get(0)),
        Transition::Retry { run_at, error } => conn
            .prepare_cached(sql::RETRY)?
            .query_row(params![id, epoch, lease_bound, error, run_at.0], |r| {
                r.get(0)
            }),
        Transition::Discard { error } => conn
            .prepare_cached(sql::DISCARD)?
            .query_row(params![id, epoch, lease_bound, error, now], |r| r.get(0)),
        Transition::Release => conn
            .prepare_cached(sql::RELEASE)?
            .query_row(params![id, epoch, lease_bound, now], |r| r.get(0)),
    };
    let Some(has_callback): Option<bool> = applied.optional()? else {
        return Ok(Fenced::FencedOut);
    };
    if let (Transition::Complete { .. }, Some(effects)) = (transition, effects) {
        apply_effects(conn, fence.id, effects, now)?;
    }
    insert_attempt(conn, fence, attempt)?;
    if has_callback
        && matches!(
            transition,
            Transition::Complete { .. } | Transition::Discard { .. }
        )
    {
        conn.prepare_cached(sql::INSERT_CALLBACK)?
            .execute(params![id, now, CALLBACK_TOPIC])?;
    }
    Ok(Fenced::Applied)
}

/// Checks the attempt's kv reads, then stores its kv writes and events.
/// A changed key fails the command, and the writer's savepoint undoes the
/// transition with it.
fn apply_effects(conn: &Connection, job_id: JobId, effects: &Effects, now: i64) -> Result<()> {
    let ns = &effects.namespace;
    let mut version = conn.prepare_cached(sql::KV_GET)?;
    for (key, seen) in &effects.kv_reads {
        let current: Option<i64> = version
            .query_row(params![ns, key], |r| r.get(1))
            .optional()?;
        if current != *seen {
            return Err(StoreError::KvConflict { key: key.clone() });
        }
    }
    let mut put = conn.prepare_cached(sql::KV_PUT)?;
    for (key, value) in &effects.kv_writes {
        put.execute(params![ns, key, value, now])?;
    }
    let mut insert = conn.prepare_cached(sql::INSERT_EVENT)?;
    for e in &effects.events {
        insert.execute(params![
            job_id,
            e.topic,
            e.url,
            e.body,
            e.idempotency_key,
            now
        ])?;
    }
    Ok(())
}

fn insert_attempt(conn: &Connection, fence: Fence, a: &AttemptRecord) -> Result<()> {
    conn.prepare_cached(sql::INSERT_ATTEMPT)?.execute(params![
        fence.id,
        fence.epoch,
        a.attempt,
        a.outcome.as_str(),
        a.error,
        a.fuel_used,
        a.started_at.0,
        a.ended_at.0,
        duration_ms(a.ended_at.since(a.started_at)),
    ])?;
    Ok(())
}

pub(super) fn extend_leases(
    conn: &Connection,
    fences: &[Fence],
    until: Timestamp,
) -> Result<Vec<Fenced>> {
    let mut stmt = conn.prepare_cached(sql::EXTEND_LEASE)?;
    let mut out = Vec::with_capacity(fences.len());
    for f in fences {
        let changed = stmt.execute(params![f.id, f.epoch, until.0])?;
        out.push(if changed == 1 {
            Fenced::Applied
        } else {
            Fenced::FencedOut
        });
    }
    Ok(out)
}

pub(super) fn expired_leases(
    conn: &Connection,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<ExpiredLease>> {
    let mut stmt = conn.prepare_cached(sql::EXPIRED_LEASES)?;
    let rows = stmt.query_map(params![now.0, limit], |r| {
        Ok(ExpiredLease {
            fence: Fence {
                id: r.get(0)?,
                epoch: r.get(1)?,
            },
            kind: r.get(2)?,
            attempt: r.get(3)?,
            max_attempts: r.get(4)?,
            attempted_at: Timestamp(r.get::<_, Option<i64>>(5)?.unwrap_or(now.0)),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn rescue(
    conn: &Connection,
    lease: &ExpiredLease,
    transition: &Transition,
    now: Timestamp,
) -> Result<Fenced> {
    let record = AttemptRecord {
        attempt: lease.attempt,
        outcome: AttemptOutcome::LeaseExpired,
        error: Some("lease expired: the worker stopped renewing it".to_owned()),
        fuel_used: None,
        started_at: lease.attempted_at,
        ended_at: now,
    };
    finish(conn, lease.fence, &record, transition, None, now.0)
}

pub(super) fn retry_job(conn: &Connection, id: JobId, now: Timestamp) -> Result<JobState> {
    if conn
        .prepare_cached(sql::RETRY_JOB)?
        .execute(params![id, now.0])?
        == 1
    {
        return Ok(JobState::Available);
    }
    let (state, ..) = current_state(conn, id)?;
    Err(StoreError::InvalidState {
        id,
        state,
        action: "retry",
        expected: "discarded, retryable or cancelled",
    })
}

pub(super) fn cancel_job(conn: &Connection, id: JobId, now: Timestamp) -> Result<JobState> {
    if conn
        .prepare_cached(sql::CANCEL_WAITING)?
        .execute(params![id, now.0])?
        == 1
    {
        return Ok(JobState::Cancelled);
    }
    let (state, epoch, attempt, attempted_at) = current_state(conn, id)?;
    if state != JobState::Running {
        return Err(StoreError::InvalidState {
            id,
            state,
            action: "cancel",
            expected: "available, retryable or running",
        });
    }
    // We hold the write lock, so the epoch just read is still current; the
    // fence is checked all the same.
    let changed = conn
        .prepare_cached(sql::CANCEL_RUNNING)?
        .execute(params![id, epoch, now.0])?;
    if changed == 0 {
        return Err(StoreError::Backend(format!(
            "job {id} changed while being cancelled; try again"
        )));
    }
    let record = AttemptRecord {
        attempt,
        outcome: AttemptOutcome::Cancelled,
        error: Some("cancelled by operator while running".to_owned()),
        fuel_used: None,
        started_at: attempted_at.unwrap_or(now),
        ended_at: now,
    };
    insert_attempt(conn, Fence { id, epoch }, &record)?;
    Ok(JobState::Cancelled)
}

fn current_state(conn: &Connection, id: JobId) -> Result<(JobState, u64, u32, Option<Timestamp>)> {
    let row: Option<(String, u64, u32, Option<i64>)> = conn
        .prepare_cached(sql::SELECT_STATE)?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let (state, epoch, attempt, attempted_at) = row.ok_or(StoreError::NotFound(id))?;
    let state = state.parse().map_err(StoreError::Backend)?;
    Ok((state, epoch, attempt, attempted_at.map(Timestamp)))
}

pub(super) fn claim_events(
    conn: &Connection,
    now: Timestamp,
    limit: u32,
    lease: std::time::Duration,
) -> Result<Vec<ClaimedEvent>> {
    let mut stmt = conn.prepare_cached(sql::CLAIM_EVENTS)?;
    let rows = stmt.query_map(params![now.0, now.plus(lease).0, limit], |r| {
        Ok(ClaimedEvent {
            id: r.get(0)?,
            job_id: r.get(1)?,
            topic: r.get(2)?,
            url: r.get(3)?,
            body: r.get(4)?,
            idempotency_key: r.get(5)?,
            attempt: r.get(6)?,
        })
    })?;
    let mut events: Vec<ClaimedEvent> = rows.collect::<rusqlite::Result<_>>()?;
    events.sort_by_key(|e| e.id);
    Ok(events)
}

pub(super) fn record_delivery(
    conn: &Connection,
    id: i64,
    attempt: u32,
    delivery: &Delivery,
    now: Timestamp,
) -> Result<Fenced> {
    let changed = match delivery {
        Delivery::Delivered { status, note } => conn
            .prepare_cached(sql::EVENT_DELIVERED)?
            .execute(params![id, attempt, status, note, now.0])?,
        Delivery::Retry {
            status,
            error,
            next_attempt_at,
        } => conn.prepare_cached(sql::EVENT_RETRY)?.execute(params![
            id,
            attempt,
            status,
            error,
            next_attempt_at.0
        ])?,
        Delivery::Failed { status, error } => conn
            .prepare_cached(sql::EVENT_FAILED)?
            .execute(params![id, attempt, status, error, now.0])?,
    };
    Ok(if changed == 1 {
        Fenced::Applied
    } else {
        Fenced::FencedOut
    })
}

pub(super) fn retry_event(conn: &Connection, id: i64, now: Timestamp) -> Result<()> {
    if conn
        .prepare_cached(sql::RETRY_EVENT)?
        .execute(params![id, now.0])?
        == 1
    {
        return Ok(());
    }
    let state: Option<String> = conn
        .query_row("SELECT state FROM outbox WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    match state {
        None => Err(StoreError::EventNotFound(id)),
        Some(s) => Err(StoreError::EventNotFailed {
            id,
            state: s.parse().map_err(StoreError::Backend)?,
        }),
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Backend(e.to_string())
    }
}
