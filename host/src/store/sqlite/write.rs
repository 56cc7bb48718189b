//! The write side: each function applies one command inside the writer's
//! open transaction and returns its answer. The writer wraps each call in a
//! savepoint, so an error undoes exactly that command.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::sql;
use crate::job::{
    AttemptOutcome, AttemptRecord, ClaimedJob, DEFAULT_MAX_ATTEMPTS, Effects, Enqueued,
    ExpiredLease, Fence, Fenced, Finish, JobId, JobState, NewJob, Transition,
    conflict_concurrency_key, effective_idempotency_key,
};
use crate::outbox::{CALLBACK_TOPIC, ClaimedEvent, Delivery};
use crate::policy::{BreakerChange, BreakerRecord, BreakerState, PauseScope};
use crate::schedule::{
    ApplyReport, FireOutcome, Overlap, ScheduleFire, ScheduleUpsert, trigger_key,
};
use crate::store::{
    Bulk, ClaimRequest, Claimed, CleanReport, CleanRequest, FinishOutcome, StoreError,
};
use crate::time::{Timestamp, duration_ms};

pub(super) type Result<T> = std::result::Result<T, StoreError>;

pub(super) fn enqueue(conn: &Connection, jobs: &[NewJob], now: Timestamp) -> Result<Vec<Enqueued>> {
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (id, same) = insert_job(conn, job, now)?;
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
fn insert_job(conn: &Connection, job: &NewJob, now: Timestamp) -> Result<(Enqueued, bool)> {
    let run_at = job.run_at.unwrap_or(now);
    let id: Option<JobId> = conn
        .prepare_cached(sql::INSERT_JOB)?
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
                job.concurrency_key,
                job.concurrency_key
                    .as_ref()
                    .map(|_| job.concurrency_limit.unwrap_or(1)),
                job.schedule_id,
            ],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = id {
        return Ok((Enqueued { id, created: true }, true));
    }
    // Only a duplicate key makes the insert do nothing.
    let key = job.idempotency_key.as_deref().unwrap_or_default();
    type Existing = (JobId, String, String, Option<String>, Option<String>);
    let (id, kind, payload, callback, ckey): Existing = conn
        .prepare_cached(sql::SELECT_BY_KEY)?
        .query_row([key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
    let same = kind == job.kind
        && payload == job.payload
        && callback == job.callback_url
        && (ckey == job.concurrency_key
            || ckey
                .as_deref()
                .is_some_and(|k| k.starts_with(crate::job::CONFLICT_KEY_PREFIX)));
    Ok((Enqueued { id, created: false }, same))
}

pub(super) fn claim(conn: &Connection, req: &ClaimRequest) -> Result<Claimed> {
    if req.limit == 0 {
        return Ok(Claimed::default());
    }
    // With no safeguard in use, the plain claim: one statement.
    let guarded = !req.rates.is_empty()
        || conn
            .prepare_cached(sql::GUARDS_IN_USE)?
            .query_row([], |r| r.get::<_, bool>(0))?;
    if guarded {
        return claim_guarded(conn, req);
    }
    let lease_expires_at = req.now.plus(req.lease);
    let excluded = serde_json::to_string(&req.exclude_kinds).expect("strings serialize");
    let mut stmt = conn.prepare_cached(sql::CLAIM)?;
    let rows = stmt.query(params![
        req.now.0,
        lease_expires_at.0,
        req.worker,
        excluded,
        req.limit
    ])?;
    Ok(Claimed {
        jobs: claimed_jobs(rows, req.now, lease_expires_at, req.limit)?,
        ..Claimed::default()
    })
}

/// Reads the rows of `CLAIM` or `CLAIM_IDS`, in claim order.
fn claimed_jobs(
    mut rows: rusqlite::Rows<'_>,
    now: Timestamp,
    lease_expires_at: Timestamp,
    limit: u32,
) -> Result<Vec<ClaimedJob>> {
    let mut jobs = Vec::with_capacity(limit as usize);
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
            attempted_at: now,
            lease_expires_at,
        });
    }
    // RETURNING gives no order guarantee; hand jobs out in claim order.
    jobs.sort_by_key(|j| (j.priority, j.run_at, j.id));
    Ok(jobs)
}

/// The claim with safeguards in use, in one transaction: pauses, breakers
/// (open: none; due for a probe: one), rate limits (at most the GCRA's
/// allowance per kind) and concurrency keys (at most `limit - running`
/// per key) decide which candidates are admitted, in claim order; the
/// admitted ones are claimed, and the rate and breaker rows updated.
fn claim_guarded(conn: &Connection, req: &ClaimRequest) -> Result<Claimed> {
    let now = req.now;
    let mut wake_at: Option<Timestamp> = None;
    let wake = |wake_at: &mut Option<Timestamp>, t: Timestamp| {
        *wake_at = Some(wake_at.map_or(t, |w| w.min(t)));
    };
    let mut excluded: HashSet<String> = req.exclude_kinds.iter().cloned().collect();
    let mut paused_queues = Vec::new();
    {
        let mut stmt = conn.prepare_cached(sql::SELECT_PAUSES)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let scope: String = r.get(0)?;
            let name: String = r.get(1)?;
            if scope == PauseScope::Queue.as_str() {
                paused_queues.push(name);
            } else {
                excluded.insert(name);
            }
        }
    }
    // Per-kind budgets: how many jobs of the kind this claim may take.
    let mut budget: HashMap<String, u32> = HashMap::new();
    let mut probes: HashSet<String> = HashSet::new();
    {
        let mut stmt = conn.prepare_cached(sql::ACTIVE_BREAKERS)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let kind: String = r.get(0)?;
            let state: String = r.get(1)?;
            let retry_at: Option<i64> = r.get(2)?;
            let probe_running: bool = r.get(3)?;
            let due_for_probe = match state.as_str() {
                "open" => retry_at.is_none_or(|t| t <= now.0),
                _ => !probe_running,
            };
            if due_for_probe {
                budget.insert(kind.clone(), 1);
                probes.insert(kind);
            } else {
                if let Some(t) = retry_at.filter(|_| state == "open") {
                    wake(&mut wake_at, Timestamp(t));
                }
                excluded.insert(kind);
            }
        }
    }
    let mut rates = HashMap::new();
    for (kind, rate) in &req.rates {
        if excluded.contains(kind) {
            continue;
        }
        let tat: Option<f64> = conn
            .prepare_cached(sql::SELECT_TAT)?
            .query_row([kind], |r| r.get(0))
            .optional()?;
        let allowance = rate.allowance(tat, now);
        if allowance == 0 {
            wake(&mut wake_at, rate.next_allowed(tat, now));
            excluded.insert(kind.clone());
            continue;
        }
        let b = budget.entry(kind.clone()).or_insert(u32::MAX);
        *b = (*b).min(allowance);
        rates.insert(kind.as_str(), (rate, tat));
    }
    // Concurrency keys: how many run, and which are saturated for every
    // job waiting on them.
    let mut running: HashMap<String, u32> = HashMap::new();
    {
        let mut stmt = conn.prepare_cached(sql::RUNNING_PER_KEY)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            running.insert(r.get(0)?, r.get(1)?);
        }
    }
    let mut saturated = Vec::new();
    for (key, n) in &running {
        let max: Option<u32> = conn
            .prepare_cached(sql::MAX_WAITING_LIMIT)?
            .query_row([key], |r| r.get(0))?;
        if max.is_some_and(|m| *n >= m) {
            saturated.push(key.clone());
        }
    }

    let excluded_json =
        serde_json::to_string(&excluded.iter().collect::<Vec<_>>()).expect("strings serialize");
    let queues_json = serde_json::to_string(&paused_queues).expect("strings serialize");
    let saturated_json = serde_json::to_string(&saturated).expect("strings serialize");
    let mut admitted: Vec<JobId> = Vec::with_capacity(req.limit as usize);
    let mut taken: HashMap<String, u32> = HashMap::new();
    let mut held_back: HashSet<String> = HashSet::new();
    {
        let mut stmt = conn.prepare_cached(sql::CLAIM_CANDIDATES)?;
        let mut rows = stmt.query(params![now.0, excluded_json, queues_json, saturated_json])?;
        while admitted.len() < req.limit as usize
            && let Some(r) = rows.next()?
        {
            let id: JobId = r.get(0)?;
            let kind: String = r.get(1)?;
            let key: Option<String> = r.get(2)?;
            let limit: Option<u32> = r.get(3)?;
            let used = taken.get(&kind).copied().unwrap_or(0);
            if budget.get(&kind).is_some_and(|b| used >= *b) {
                held_back.insert(kind);
                continue;
            }
            if let Some(key) = key {
                let n = running.entry(key).or_insert(0);
                if *n >= limit.unwrap_or(1) {
                    continue;
                }
                *n += 1;
            }
            *taken.entry(kind).or_insert(0) += 1;
            admitted.push(id);
        }
    }
    if admitted.is_empty() {
        for kind in &held_back {
            if let Some((rate, tat)) = rates.get(kind.as_str()) {
                wake(&mut wake_at, rate.next_allowed(*tat, now));
            }
        }
        return Ok(Claimed {
            jobs: Vec::new(),
            wake_at,
            half_opened: Vec::new(),
        });
    }

    let lease_expires_at = now.plus(req.lease);
    let ids = serde_json::to_string(&admitted).expect("ids serialize");
    let jobs = {
        let mut stmt = conn.prepare_cached(sql::CLAIM_IDS)?;
        let rows = stmt.query(params![now.0, lease_expires_at.0, req.worker, ids])?;
        claimed_jobs(rows, now, lease_expires_at, req.limit)?
    };
    for (kind, n) in &taken {
        if let Some((rate, tat)) = rates.get(kind.as_str()) {
            let next = rate.advance(*tat, now, *n);
            conn.prepare_cached(sql::UPSERT_TAT)?
                .execute(params![kind, next])?;
            if held_back.contains(kind) {
                wake(&mut wake_at, rate.next_allowed(Some(next), now));
            }
        }
    }
    let mut half_opened = Vec::new();
    for job in &jobs {
        if probes.remove(&job.kind) {
            conn.prepare_cached(sql::BREAKER_PROBE)?
                .execute(params![job.kind, job.id, job.epoch, now.0])?;
            half_opened.push(job.kind.clone());
        }
    }
    Ok(Claimed {
        jobs,
        wake_at,
        half_opened,
    })
}

/// Applies a write-back: the transition out of running plus its attempt
/// row, fenced on `fence` and on the lease having expired by
/// `lease_bound`; with a completion, its effects too (or, if a key it read
/// has changed, its `on_conflict` retry instead); with a final transition,
/// the job's callback event; and the breaker's count.
pub(super) fn finish(conn: &Connection, f: &Finish, lease_bound: i64) -> Result<FinishOutcome> {
    let now = f.attempt.ended_at;
    if let (Transition::Complete { .. }, Some(retry)) = (&f.transition, &f.on_conflict)
        && let Some(key) = changed_read(conn, &f.effects)?
    {
        return finish_conflict(conn, f, retry, key, lease_bound);
    }
    let applied = transition(conn, f.fence, &f.transition, lease_bound, now)?;
    let Some(has_callback) = applied else {
        return Ok(fenced_out(f.attempt.outcome));
    };
    if let Transition::Complete { .. } = f.transition {
        apply_effects(conn, f.fence, &f.effects, now.0)?;
    }
    insert_attempt(conn, f.fence, &f.attempt)?;
    if has_callback
        && matches!(
            f.transition,
            Transition::Complete { .. } | Transition::Discard { .. }
        )
    {
        insert_callback(conn, f.fence.id, now)?;
    }
    let breaker = match &f.breaker {
        Some(count) => count_breaker(conn, count, f.fence, now)?,
        None => None,
    };
    Ok(FinishOutcome {
        fenced: Fenced::Applied,
        outcome: f.attempt.outcome,
        next: f.transition.target_state(),
        conflict: None,
        breaker,
    })
}

fn fenced_out(outcome: AttemptOutcome) -> FinishOutcome {
    FinishOutcome {
        fenced: Fenced::FencedOut,
        outcome,
        next: JobState::Running,
        conflict: None,
        breaker: None,
    }
}

/// One fenced transition out of running; `Some(has_callback)` if it
/// applied.
fn transition(
    conn: &Connection,
    fence: Fence,
    transition: &Transition,
    lease_bound: i64,
    now: Timestamp,
) -> Result<Option<bool>> {
    let (id, epoch, now) = (fence.id, fence.epoch, now.0);
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
    Ok(applied.optional()?)
}

fn insert_callback(conn: &Connection, id: JobId, now: Timestamp) -> Result<()> {
    conn.prepare_cached(sql::INSERT_CALLBACK)?
        .execute(params![id, now.0, CALLBACK_TOPIC])?;
    Ok(())
}

/// The first key the attempt read that has changed since, if any.
fn changed_read(conn: &Connection, effects: &Effects) -> Result<Option<String>> {
    let mut version = conn.prepare_cached(sql::KV_GET)?;
    for (key, seen) in &effects.kv_reads {
        let current: Option<i64> = version
            .query_row(params![effects.namespace, key], |r| r.get(1))
            .optional()?;
        if current != *seen {
            return Ok(Some(key.clone()));
        }
    }
    Ok(None)
}

/// The write-back of a completion whose read of `key` was overtaken: the
/// attempt is given back while the conflict budget lasts, else spent.
fn finish_conflict(
    conn: &Connection,
    f: &Finish,
    retry: &crate::job::ConflictRetry,
    key: String,
    lease_bound: i64,
) -> Result<FinishOutcome> {
    let (id, epoch) = (f.fence.id, f.fence.epoch);
    let now = f.attempt.ended_at;
    let error = format!("kv conflict: key {key:?} changed during the attempt");
    let serialize = conflict_concurrency_key(&f.effects.namespace, &key);
    let given_back: Option<bool> = conn
        .prepare_cached(sql::CONFLICT_RETRY)?
        .query_row(
            params![
                id,
                epoch,
                lease_bound,
                error,
                retry.run_at.0,
                serialize,
                retry.max_conflicts
            ],
            |r| r.get(0),
        )
        .optional()?;
    let (next, error) = if given_back.is_some() {
        (JobState::Retryable, error)
    } else {
        // Fenced out, or past the budget: then the attempt counts.
        let error = format!(
            "{error} (conflict budget of {} used up)",
            retry.max_conflicts
        );
        let spent: Option<bool> = match retry.fallback_run_at {
            Some(run_at) => conn
                .prepare_cached(sql::CONFLICT_RETRY_SPENT)?
                .query_row(params![id, epoch, lease_bound, error, run_at.0], |r| {
                    r.get(0)
                }),
            None => conn
                .prepare_cached(sql::CONFLICT_DISCARD)?
                .query_row(params![id, epoch, lease_bound, error, now.0], |r| r.get(0)),
        }
        .optional()?;
        let Some(has_callback) = spent else {
            return Ok(fenced_out(AttemptOutcome::KvConflict));
        };
        if retry.fallback_run_at.is_none() && has_callback {
            insert_callback(conn, id, now)?;
        }
        let next = if retry.fallback_run_at.is_some() {
            JobState::Retryable
        } else {
            JobState::Discarded
        };
        (next, error)
    };
    let record = AttemptRecord {
        outcome: AttemptOutcome::KvConflict,
        error: Some(error),
        ..f.attempt.clone()
    };
    insert_attempt(conn, f.fence, &record)?;
    Ok(FinishOutcome {
        fenced: Fenced::Applied,
        outcome: AttemptOutcome::KvConflict,
        next,
        conflict: Some(key),
        breaker: None,
    })
}

/// Counts an attempt for its kind's breaker; returns the change of state.
fn count_breaker(
    conn: &Connection,
    count: &crate::job::BreakerCount,
    fence: Fence,
    now: Timestamp,
) -> Result<Option<BreakerChange>> {
    let current = conn
        .prepare_cached(sql::SELECT_BREAKER)?
        .query_row([&count.kind], super::read::breaker_record)
        .optional()?;
    let Some((next, change)) = BreakerRecord::step(current.as_ref(), count, fence, now) else {
        return Ok(None);
    };
    conn.prepare_cached(sql::UPSERT_BREAKER)?.execute(params![
        next.kind,
        next.state.as_str(),
        next.failures,
        next.streak_started_at.map(|t| t.0),
        next.opened_at.map(|t| t.0),
        next.retry_at.map(|t| t.0),
        next.probe.map(|p| p.0),
        next.probe.map(|p| p.1),
        next.trips,
        next.last_error,
        next.updated_at.0,
    ])?;
    Ok(change)
}

/// Stores a completion's kv writes and events. Its reads were checked
/// first, in the same transaction.
fn apply_effects(conn: &Connection, fence: Fence, effects: &Effects, now: i64) -> Result<()> {
    if let Some(key) = changed_read(conn, effects)? {
        return Err(StoreError::KvConflict { key });
    }
    let job_id = fence.id;
    let ns = &effects.namespace;
    let mut put = conn.prepare_cached(sql::KV_PUT)?;
    for (key, value) in &effects.kv_writes {
        put.execute(params![ns, key, value, now])?;
    }
    if !effects.kv_writes.is_empty() {
        let mut log = conn.prepare_cached(sql::LOG_KV_WRITE)?;
        for (key, _) in &effects.kv_writes {
            log.execute(params![job_id, fence.epoch, ns, key])?;
        }
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
        a.component_hash,
        a.recording,
        a.host,
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
            leased_by: r.get(6)?,
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
    let finish_cmd = Finish {
        fence: lease.fence,
        attempt: AttemptRecord {
            attempt: lease.attempt,
            outcome: AttemptOutcome::LeaseExpired,
            error: Some("lease expired: the worker stopped renewing it".to_owned()),
            fuel_used: None,
            started_at: lease.attempted_at,
            ended_at: now,
            component_hash: None,
            recording: None,
            host: lease.leased_by.clone(),
        },
        transition: transition.clone(),
        effects: Effects::default(),
        on_conflict: None,
        breaker: None,
    };
    Ok(finish(conn, &finish_cmd, now.0)?.fenced)
}

pub(super) fn retry_job(conn: &Connection, id: JobId, now: Timestamp) -> Result<JobState> {
    if conn
        .prepare_cached(sql::RETRY_JOB)?
        .execute(params![id, now.0])?
        == 1
    {
        return Ok(JobState::Available);
    }
    let state = current_state(conn, id)?.state;
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
    let job = current_state(conn, id)?;
    if job.state != JobState::Running {
        return Err(StoreError::InvalidState {
            id,
            state: job.state,
            action: "cancel",
            expected: "available, retryable or running",
        });
    }
    // We hold the write lock, so the epoch just read is still current; the
    // fence is checked all the same.
    let changed = conn
        .prepare_cached(sql::CANCEL_RUNNING)?
        .execute(params![id, job.epoch, now.0])?;
    if changed == 0 {
        return Err(StoreError::Backend(format!(
            "job {id} changed while being cancelled; try again"
        )));
    }
    let record = AttemptRecord {
        attempt: job.attempt,
        outcome: AttemptOutcome::Cancelled,
        error: Some("cancelled by operator while running".to_owned()),
        fuel_used: None,
        started_at: job.attempted_at.unwrap_or(now),
        ended_at: now,
        component_hash: None,
        recording: None,
        host: job.leased_by,
    };
    let fence = Fence {
        id,
        epoch: job.epoch,
    };
    insert_attempt(conn, fence, &record)?;
    Ok(JobState::Cancelled)
}

/// What an operator's action reads of a job before acting on it.
struct Current {
    state: JobState,
    epoch: u64,
    attempt: u32,
    attempted_at: Option<Timestamp>,
    /// The worker holding its lease, if running.
    leased_by: Option<String>,
}

fn current_state(conn: &Connection, id: JobId) -> Result<Current> {
    let row = conn
        .prepare_cached(sql::SELECT_STATE)?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get(4)?,
            ))
        })
        .optional()?;
    let (state, epoch, attempt, attempted_at, leased_by) = row.ok_or(StoreError::NotFound(id))?;
    Ok(Current {
        state: state.parse().map_err(StoreError::Backend)?,
        epoch,
        attempt,
        attempted_at: attempted_at.map(Timestamp),
        leased_by,
    })
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

pub(super) fn apply_schedules(
    conn: &Connection,
    upserts: &[ScheduleUpsert],
    prune: bool,
    now: Timestamp,
) -> Result<ApplyReport> {
    let mut report = ApplyReport::default();
    for u in upserts {
        let existing: Option<(String, String)> = conn
            .prepare_cached(sql::SELECT_SCHEDULE_SPEC)?
            .query_row([&u.id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let outcome = match existing {
            Some((spec, _)) if spec == u.spec => {
                report.unchanged.push(u.id.clone());
                continue;
            }
            Some((_, cadence)) if cadence == u.cadence => {
                conn.prepare_cached(sql::UPDATE_SCHEDULE_SPEC)?
                    .execute(params![u.id, u.spec, now.0])?;
                report.updated.push((u.id.clone(), false));
                continue;
            }
            Some(_) => Some(true),
            None => None,
        };
        conn.prepare_cached(sql::UPSERT_SCHEDULE)?.execute(params![
            u.id,
            u.spec,
            u.cadence,
            u.next_fire_at.map(|t| t.0),
            u.next_run_at.map(|t| t.0),
            now.0
        ])?;
        match outcome {
            Some(cadence) => report.updated.push((u.id.clone(), cadence)),
            None => report.created.push(u.id.clone()),
        }
    }
    if prune {
        let keep: HashSet<&str> = upserts.iter().map(|u| u.id.as_str()).collect();
        let ids: Vec<String> = conn
            .prepare_cached(sql::SCHEDULE_IDS)?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for id in ids {
            if !keep.contains(id.as_str()) {
                conn.prepare_cached(sql::DELETE_SCHEDULE)?.execute([&id])?;
                report.deleted.push(id);
            }
        }
    }
    Ok(report)
}

pub(super) fn fire_schedule(conn: &Connection, fire: &ScheduleFire) -> Result<FireOutcome> {
    let advanced: Option<(Option<JobId>, Option<i64>)> = conn
        .prepare_cached(sql::ADVANCE_SCHEDULE)?
        .query_row(
            params![
                fire.id,
                fire.version,
                fire.expected_next.0,
                fire.next_fire_at.map(|t| t.0),
                fire.next_run_at.map(|t| t.0),
                fire.missed,
                fire.now.0
            ],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((mut last_job, mut buffered)) = advanced else {
        return Ok(FireOutcome::default());
    };
    let mut out = FireOutcome {
        applied: true,
        ..FireOutcome::default()
    };
    let mut last_fire = None;
    for (nominal, job) in &fire.fires {
        let busy = match (fire.overlap, last_job) {
            (Overlap::Allow, _) | (_, None) => false,
            (_, Some(prev)) => conn
                .prepare_cached(sql::JOB_UNFINISHED)?
                .query_row([prev], |r| r.get::<_, bool>(0))
                .optional()?
                .unwrap_or(false),
        };
        if busy {
            if fire.overlap == Overlap::BufferOne && buffered.is_none() {
                buffered = Some(nominal.0);
                out.buffered = true;
            } else {
                out.skipped += 1;
            }
            continue;
        }
        let id = insert_fire(conn, &fire.id, *nominal, 0, job, fire.now)?;
        out.jobs.push(id);
        last_job = Some(id);
        last_fire = Some(nominal.0);
    }
    conn.prepare_cached(sql::RECORD_FIRES)?.execute(params![
        fire.id,
        out.jobs.len() as u64,
        out.skipped,
        last_fire,
        out.jobs.last(),
        buffered
    ])?;
    Ok(out)
}

/// Records a fire and inserts its job (or finds the job its key already
/// names: the fire was made before under the same key).
fn insert_fire(
    conn: &Connection,
    schedule: &str,
    nominal: Timestamp,
    trigger: u64,
    job: &NewJob,
    now: Timestamp,
) -> Result<JobId> {
    let (enqueued, _) = insert_job(conn, job, now)?;
    conn.prepare_cached(sql::INSERT_FIRE)?.execute(params![
        schedule,
        nominal.0,
        trigger,
        enqueued.id,
        now.0
    ])?;
    Ok(enqueued.id)
}

pub(super) fn fire_buffered(
    conn: &Connection,
    id: &str,
    version: i64,
    nominal: Timestamp,
    job: &NewJob,
    now: Timestamp,
) -> Result<FireOutcome> {
    let released: Option<i64> = conn
        .prepare_cached(sql::RELEASE_BUFFERED)?
        .query_row(params![id, version, nominal.0, now.0], |r| r.get(0))
        .optional()?;
    if released.is_none() {
        return Ok(FireOutcome::default());
    }
    let job_id = insert_fire(conn, id, nominal, 0, job, now)?;
    conn.prepare_cached(sql::RECORD_FIRES)?.execute(params![
        id,
        1,
        0,
        nominal.0,
        job_id,
        Option::<i64>::None
    ])?;
    Ok(FireOutcome {
        applied: true,
        jobs: vec![job_id],
        skipped: 0,
        buffered: false,
    })
}

pub(super) fn trigger_schedule(
    conn: &Connection,
    id: &str,
    job: &NewJob,
    now: Timestamp,
) -> Result<Enqueued> {
    // A schedule deleted and made again counts its triggers from zero, but
    // the jobs of the old one's triggers may still hold their keys: a
    // trigger always makes a job of its own, so a taken key is skipped.
    for _ in 0..MAX_TRIGGER_TRIES {
        let n: u64 = conn
            .prepare_cached(sql::NEXT_TRIGGER)?
            .query_row(params![id, now.0], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::ScheduleNotFound(id.to_owned()))?;
        let job = NewJob {
            idempotency_key: Some(trigger_key(id, n)),
            run_at: Some(now),
            schedule_id: Some(id.to_owned()),
            ..job.clone()
        };
        let (enqueued, _) = insert_job(conn, &job, now)?;
        if !enqueued.created {
            continue;
        }
        conn.prepare_cached(sql::INSERT_FIRE)?.execute(params![
            id,
            now.0,
            n,
            enqueued.id,
            now.0
        ])?;
        conn.prepare_cached(sql::RECORD_TRIGGER)?
            .execute(params![id, now.0, enqueued.id])?;
        return Ok(enqueued);
    }
    Err(StoreError::Backend(format!(
        "schedule {id:?}: no free trigger key in {MAX_TRIGGER_TRIES} tries"
    )))
}

/// How many taken trigger keys a trigger skips before it gives up.
const MAX_TRIGGER_TRIES: u32 = 10_000;

pub(super) fn pause_schedule(
    conn: &Connection,
    id: &str,
    note: &str,
    now: Timestamp,
) -> Result<bool> {
    let was: bool = conn
        .prepare_cached(sql::SCHEDULE_PAUSED)?
        .query_row([id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::ScheduleNotFound(id.to_owned()))?;
    conn.prepare_cached(sql::PAUSE_SCHEDULE)?
        .execute(params![id, note, now.0])?;
    Ok(!was)
}

pub(super) fn resume_schedule(
    conn: &Connection,
    id: &str,
    next_fire_at: Option<Timestamp>,
    next_run_at: Option<Timestamp>,
    now: Timestamp,
) -> Result<bool> {
    let changed = conn.prepare_cached(sql::RESUME_SCHEDULE)?.execute(params![
        id,
        next_fire_at.map(|t| t.0),
        next_run_at.map(|t| t.0),
        now.0
    ])?;
    if changed == 1 {
        return Ok(true);
    }
    let exists: Option<String> = conn
        .prepare_cached(sql::SELECT_SCHEDULE_SPEC)?
        .query_row([id], |r| r.get(0))
        .optional()?;
    match exists {
        Some(_) => Ok(false),
        None => Err(StoreError::ScheduleNotFound(id.to_owned())),
    }
}

pub(super) fn delete_schedule(conn: &Connection, id: &str) -> Result<()> {
    if conn.prepare_cached(sql::DELETE_SCHEDULE)?.execute([id])? == 0 {
        return Err(StoreError::ScheduleNotFound(id.to_owned()));
    }
    Ok(())
}

pub(super) fn reset_breaker(
    conn: &Connection,
    kind: &str,
    now: Timestamp,
) -> Result<Option<BreakerState>> {
    let before = conn
        .prepare_cached(sql::SELECT_BREAKER)?
        .query_row([kind], super::read::breaker_record)
        .optional()?;
    conn.prepare_cached(sql::RESET_BREAKER)?
        .execute(params![kind, now.0])?;
    Ok(before.map(|b| b.state))
}

pub(super) fn pause(
    conn: &Connection,
    scope: PauseScope,
    name: &str,
    note: &str,
    now: Timestamp,
) -> Result<bool> {
    let was = conn
        .prepare_cached(sql::IS_PAUSED)?
        .query_row(params![scope.as_str(), name], |_| Ok(()))
        .optional()?
        .is_some();
    conn.prepare_cached(sql::INSERT_PAUSE)?
        .execute(params![scope.as_str(), name, note, now.0])?;
    Ok(!was)
}

pub(super) fn resume(conn: &Connection, scope: PauseScope, name: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(sql::DELETE_PAUSE)?
        .execute(params![scope.as_str(), name])?
        == 1)
}

/// One batch of each kind of deletion retention allows.
pub(super) fn clean(conn: &Connection, req: &CleanRequest) -> Result<CleanReport> {
    let mut report = CleanReport::default();
    let batch = req.batch;
    let mut doomed: Vec<JobId> = Vec::new();
    if let Some(before) = req.failed_before {
        let mut stmt = conn.prepare_cached(sql::FAILED_BEFORE)?;
        let ids = stmt.query_map(params![before.0, batch], |r| r.get(0))?;
        for id in ids {
            doomed.push(id?);
        }
    }
    if let Some(before) = req.completed_before {
        let mut stmt = conn.prepare_cached(sql::SWEEP)?;
        let mut rows = stmt.query(params![req.sweep_from, batch])?;
        let mut seen = 0;
        let mut last = req.sweep_from;
        while let Some(r) = rows.next()? {
            seen += 1;
            let id: JobId = r.get(0)?;
            let completed: bool = r.get(1)?;
            let finalized_at: Option<i64> = r.get(2)?;
            let created_at: i64 = r.get(3)?;
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
        if report.young_from.is_none() && seen == batch {
            report.swept_to = Some(last);
        }
    }
    if !doomed.is_empty() {
        let ids = serde_json::to_string(&doomed).expect("ids serialize");
        report.attempts += conn
            .prepare_cached(sql::DELETE_ATTEMPTS_OF)?
            .execute([&ids])? as u64;
        conn.prepare_cached(sql::DELETE_KV_WRITES_OF)?
            .execute([&ids])?;
        report.jobs += conn.prepare_cached(sql::DELETE_JOBS)?.execute([&ids])? as u64;
    }
    if let Some(before) = req.tombstones_before {
        report.tombstones = conn
            .prepare_cached(sql::DELETE_TOMBSTONES)?
            .execute(params![before.0, batch])? as u64;
    }
    if let Some(before) = req.delivered_before {
        report.events = conn
            .prepare_cached(sql::DELETE_DELIVERED)?
            .execute(params![before.0, batch])? as u64;
    }
    if let Some(before) = req.fires_before {
        report.fires = conn
            .prepare_cached(sql::DELETE_FIRES)?
            .execute(params![before.0, batch])? as u64;
    }
    Ok(report)
}

/// An operator's action on every job matching `filter`, at most `limit`
/// of them: retry (discarded, retryable or cancelled → available) or
/// cancel (available, retryable or running → cancelled). Each job is moved
/// by the same fenced statement as a single retry or cancel.
pub(super) fn bulk(
    conn: &Connection,
    filter: &crate::job::JobFilter,
    limit: u32,
    now: Timestamp,
    retry: bool,
) -> Result<Bulk> {
    let (cond, mut args) = super::read::filter_sql(filter);
    let states = if retry {
        crate::job::JobAction::Retry
    } else {
        crate::job::JobAction::Cancel
    }
    .from_states_sql();
    let q =
        format!("SELECT id, kind FROM jobs WHERE {cond} AND state IN {states} ORDER BY id LIMIT ?");
    args.push(rusqlite::types::Value::Integer(i64::from(limit) + 1));
    let mut ids: Vec<(JobId, String)> = conn
        .prepare_cached(&q)?
        .query_map(rusqlite::params_from_iter(args), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let more = ids.len() > limit as usize;
    ids.truncate(limit as usize);
    let mut changed = Vec::with_capacity(ids.len());
    for (id, kind) in ids {
        let r = if retry {
            retry_job(conn, id, now)
        } else {
            cancel_job(conn, id, now)
        };
        match r {
            Ok(state) => changed.push((id, kind, state)),
            Err(StoreError::InvalidState { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Bulk { changed, more })
}

pub(super) fn heartbeat(
    conn: &Connection,
    host: &crate::health::HostRecord,
    forget_before: Timestamp,
) -> Result<()> {
    conn.prepare_cached(sql::HEARTBEAT)?.execute(params![
        host.id,
        host.version,
        host.started_at.0,
        host.last_seen.0,
        host.ready,
        host.in_flight,
        host.minutes,
    ])?;
    conn.prepare_cached(sql::FORGET_HOSTS)?
        .execute([forget_before.0])?;
    Ok(())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Backend(e.to_string())
    }
}
