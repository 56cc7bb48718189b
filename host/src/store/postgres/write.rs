//! The hot path: enqueue, claim, finish, leases and the rescuer. Each
//! function runs inside the writer's open transaction (in its own
//! savepoint), like `store/sqlite/write.rs`, whose behaviour it matches.

use super::Conn;
use crate::job::{
    DEFAULT_MAX_ATTEMPTS, Enqueued, ExpiredLease, Fence, Fenced, Finish, JobId, NewJob, Transition,
};
use crate::store::{ClaimRequest, Claimed, FinishOutcome, StoreError};
use crate::time::Timestamp;

pub(super) type Result<T> = std::result::Result<T, StoreError>;

fn todo<T>(what: &str) -> Result<T> {
    Err(StoreError::Backend(format!("postgres: {what} is not implemented yet")))
}

pub(super) fn enqueue(c: &mut Conn, jobs: &[NewJob], now: Timestamp) -> Result<Vec<Enqueued>> {
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (id, same) = insert_job(c, job, now)?;
        if !same {
            return Err(StoreError::KeyConflict {
                key: job.idempotency_key.clone().unwrap_or_default(),
                existing: id.id,
            });
        }
        out.push(id);
    }
    Ok(out)
}

/// Inserts one job; with a key that exists, returns that job instead, and
/// whether it is the same job (kind, payload, callback and concurrency
/// key).
pub(super) fn insert_job(c: &mut Conn, job: &NewJob, now: Timestamp) -> Result<(Enqueued, bool)> {
    let run_at = job.run_at.unwrap_or(now).0;
    let max_attempts = job.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS) as i32;
    let limit = job
        .concurrency_key
        .as_ref()
        .map(|_| job.concurrency_limit.unwrap_or(1) as i32);
    let row = c.query_opt(
        INSERT_JOB,
        &[
            &job.kind,
            &job.queue,
            &job.payload,
            &job.idempotency_key,
            &job.priority,
            &run_at,
            &max_attempts,
            &now.0,
            &job.callback_url,
            &job.concurrency_key,
            &limit,
            &job.schedule_id,
        ],
    )?;
    if let Some(row) = row {
        return Ok((
            Enqueued {
                id: row.get(0),
                created: true,
            },
            true,
        ));
    }
    // Only a duplicate key makes the insert do nothing.
    let key = job.idempotency_key.as_deref().unwrap_or_default();
    let r = c.query_one(SELECT_BY_KEY, &[&key])?;
    let (id, kind, payload, callback, ckey): (JobId, String, String, Option<String>, Option<String>) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    let same = kind == job.kind
        && payload == job.payload
        && callback == job.callback_url
        && (ckey == job.concurrency_key
            || ckey
                .as_deref()
                .is_some_and(|k| k.starts_with(crate::job::CONFLICT_KEY_PREFIX)));
    Ok((Enqueued { id, created: false }, same))
}

pub(super) fn claim(c: &mut Conn, req: &ClaimRequest) -> Result<Claimed> {
    let _ = (c, req);
    todo("claim")
}

pub(super) fn finish(c: &mut Conn, f: &Finish) -> Result<FinishOutcome> {
    let _ = (c, f);
    todo("finish")
}

pub(super) fn extend_leases(c: &mut Conn, fences: &[Fence], until: Timestamp) -> Result<Vec<Fenced>> {
    let _ = (c, fences, until);
    todo("extend_leases")
}

pub(super) fn expired_leases(c: &mut Conn, now: Timestamp, limit: u32) -> Result<Vec<ExpiredLease>> {
    let _ = (c, now, limit);
    todo("expired_leases")
}

pub(super) fn rescue(
    c: &mut Conn,
    lease: &ExpiredLease,
    transition: &Transition,
    now: Timestamp,
) -> Result<Fenced> {
    let _ = (c, lease, transition, now);
    todo("rescue")
}

/// enqueue: (none) → available. A duplicate idempotency key inserts nothing
/// and returns no row; the caller then looks the existing job up.
const INSERT_JOB: &str = "
    INSERT INTO jobs (kind, queue, payload, idempotency_key, state, priority,
                      run_at, max_attempts, created_at, callback_url,
                      concurrency_key, concurrency_limit, schedule_id)
    VALUES ($1, $2, $3, $4, 'available', $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id";

const SELECT_BY_KEY: &str = "
    SELECT id, kind, payload, callback_url, concurrency_key
    FROM jobs WHERE idempotency_key = $1";
