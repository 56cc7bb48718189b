//! `/api/jobs`: enqueue (optionally waiting for the result), list with
//! keyset pagination, show, retry and cancel, one job or every job a
//! filter matches.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiState};
use crate::job::{JobAction, JobFilter, JobId, JobRecord, JobState};
use crate::store::{JobEffects, StoreError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueQuery {
    /// Answer once the job is final, or after this long (e.g. "5s", at most
    /// 5 minutes), with the job.
    wait: Option<String>,
}

/// What an enqueue did, for one job.
#[derive(Debug, Serialize)]
pub struct Enqueued {
    id: JobId,
    /// False when the idempotency key named an existing job, returned
    /// instead.
    created: bool,
    /// With `?wait`: the job as it is when the call answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<JobRecord>,
}

/// The longest `?wait`.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// `POST /api/jobs`: one job (an object) or many (an array), all or
/// nothing. 201 if one new job was created, 200 otherwise; with `?wait`,
/// 200 once every job is final, 202 if the wait ran out first.
pub async fn enqueue(
    State(state): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<EnqueueQuery>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let wait = q
        .wait
        .as_deref()
        .map(|w| {
            crate::time::parse_duration(w)
                .map_err(|e| ApiError::invalid(format!("wait: {e}")))
                .map(|d| d.min(MAX_WAIT))
        })
        .transpose()?;
    let (specs, single) = match body {
        serde_json::Value::Array(items) => (items, false),
        obj @ serde_json::Value::Object(_) => (vec![obj], true),
        _ => {
            return Err(ApiError::invalid(
                "expected a job object or an array of them",
            ));
        }
    };
    if specs.is_empty() {
        return Err(ApiError::invalid("the array has no jobs"));
    }
    let host = &state.host;
    let now = host.clock().now();
    let mut jobs = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let prefix = if single {
            String::new()
        } else {
            format!("[{i}].")
        };
        let job = crate::enqueue::from_json(
            &spec,
            now,
            |kind| host.settings(kind),
            &host.config().outbox.callback_allow,
        )
        .map_err(|e| ApiError::invalid(format!("{prefix}{e}")))?;
        jobs.push(job);
    }
    if let Some((a, b)) = crate::enqueue::key_clash(&jobs) {
        return Err(ApiError::invalid(format!(
            "[{b}].idempotency_key: the same key as [{a}], for a different job"
        )));
    }
    // Subscribe before enqueueing, so that no outcome is missed.
    let mut events = wait.map(|_| host.subscribe());
    let out = host.enqueue_prepared(jobs).await?;
    let mut all_final = true;
    let mut answers: Vec<Enqueued> = out
        .iter()
        .map(|e| Enqueued {
            id: e.id,
            created: e.created,
            job: None,
        })
        .collect();
    if let (Some(wait), Some(events)) = (wait, events.as_mut()) {
        let deadline = tokio::time::Instant::now() + wait;
        let store = host.store();
        for a in &mut answers {
            let mut job = store.job(a.id).await?;
            while !job.as_ref().is_some_and(|j| j.state.is_final()) {
                // Wait for this job's next change, then look again (an
                // event may also have been missed: the store decides).
                let id = a.id;
                let changed = tokio::time::timeout_at(deadline, async {
                    loop {
                        match events.recv().await {
                            Ok(ev) if ev.id == id => break,
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                std::future::pending::<()>().await
                            }
                        }
                    }
                })
                .await;
                job = store.job(a.id).await?;
                if changed.is_err() {
                    break;
                }
            }
            all_final &= job.as_ref().is_some_and(|j| j.state.is_final());
            a.job = job;
        }
    }
    let status = if wait.is_some() {
        if all_final {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        }
    } else if single && answers[0].created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(if single {
        let one = answers.pop().expect("one job");
        (status, Json(one)).into_response()
    } else {
        (status, Json(answers)).into_response()
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    kind: Option<String>,
    queue: Option<String>,
    concurrency_key: Option<String>,
    /// Text the payload or error contains.
    text: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize)]
pub struct JobPage {
    jobs: Vec<JobRecord>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
    /// Set when the answer stopped at its scan window rather than at
    /// `limit`: the lowest job id examined. Older jobs may match too: ask
    /// again with `next_cursor`.
    searched_to: Option<JobId>,
}

/// How many job ids one listing examines when no index serves its filter
/// (text, kind, queue, key, or a state other than discarded or
/// cancelled), so that every page answers quickly on any database; the
/// caller continues from `next_cursor`.
const SCAN_WINDOW: i64 = 100_000;
/// The same for a text search (a substring match costs more per row).
const TEXT_SCAN_WINDOW: i64 = 50_000;

/// The filter of a listing, count or bulk action, from its query or body.
fn job_filter(
    state: Option<&str>,
    kind: Option<String>,
    queue: Option<String>,
    concurrency_key: Option<String>,
    text: Option<String>,
) -> Result<JobFilter, ApiError> {
    let state = state
        .map(str::parse::<JobState>)
        .transpose()
        .map_err(|e| ApiError::invalid(format!("state: {e}")))?;
    if let Some(t) = &text {
        if t.is_empty() {
            return Err(ApiError::invalid("text: must not be empty"));
        }
        if t.len() > 200 {
            return Err(ApiError::invalid("text: at most 200 bytes"));
        }
    }
    // A NUL is refused: PostgreSQL refuses one in a parameter (which
    // answered 500), and SQLite's LIKE stops at it (`%\0%` matched every
    // job). No kind, queue, key or JSON payload holds one.
    for (name, value) in [
        ("kind", &kind),
        ("queue", &queue),
        ("concurrency_key", &concurrency_key),
        ("text", &text),
    ] {
        if value.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(ApiError::invalid(format!(
                "{name}: must not contain a NUL character"
            )));
        }
    }
    Ok(JobFilter {
        state,
        kind,
        queue,
        concurrency_key,
        text,
        ..JobFilter::default()
    })
}

/// `GET /api/jobs`.
pub async fn list(
    State(state): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit: must be between 1 and 1000"));
    }
    let mut filter = job_filter(
        q.state.as_deref(),
        q.kind,
        q.queue,
        q.concurrency_key,
        q.text,
    )?;
    filter.before = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<JobId>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| ApiError::invalid(format!("cursor: invalid cursor {c:?}")))
        })
        .transpose()?;
    // One more than asked: whether there is a next page.
    filter.limit = Some(limit + 1);
    let store = state.host.store();
    let indexed = filter.kind.is_none()
        && filter.queue.is_none()
        && filter.concurrency_key.is_none()
        && filter.text.is_none()
        && matches!(
            filter.state,
            None | Some(JobState::Discarded | JobState::Cancelled)
        );
    if !indexed {
        let window = if filter.text.is_some() {
            TEXT_SCAN_WINDOW
        } else {
            SCAN_WINDOW
        };
        let upper = match filter.before {
            Some(b) => b,
            None => store.last_job_id().await?.unwrap_or(0) + 1,
        };
        let from = upper - window;
        if from > 1 {
            filter.from = Some(from);
        }
    }
    let from = filter.from;
    let mut jobs = store.list_jobs(filter).await?;
    let more = jobs.len() > limit as usize;
    jobs.truncate(limit as usize);
    let (next_cursor, searched_to) = match from {
        Some(from) if !more => (Some(from.to_string()), Some(from)),
        _ => (
            more.then(|| jobs.last().map(|j| j.id.to_string()))
                .flatten(),
            None,
        ),
    };
    Ok(Json(JobPage {
        jobs,
        next_cursor,
        searched_to,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountQuery {
    state: Option<String>,
    kind: Option<String>,
    queue: Option<String>,
    concurrency_key: Option<String>,
    text: Option<String>,
    /// Count only the jobs this action would move (`retry` or `cancel`).
    action: Option<String>,
}

/// How many jobs a filter matches.
#[derive(Debug, Serialize)]
pub struct JobCount {
    count: u64,
}

/// `GET /api/jobs/count`: how many jobs match a filter (every one, not a
/// page), and with `action`, how many a bulk action would move.
pub async fn count(
    State(state): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<CountQuery>,
) -> Result<Json<JobCount>, ApiError> {
    let filter = job_filter(
        q.state.as_deref(),
        q.kind,
        q.queue,
        q.concurrency_key,
        q.text,
    )?;
    let action = q
        .action
        .as_deref()
        .map(str::parse::<JobAction>)
        .transpose()
        .map_err(|e| ApiError::invalid(format!("action: {e}")))?;
    let count = state.host.store().count_jobs(filter, action).await?;
    Ok(Json(JobCount { count }))
}

/// Parses a job id from the path.
fn job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse::<JobId>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "invalid job id {raw:?}: expected a positive integer"
            ))
        })
}

/// `GET /api/jobs/{id}`: the job with its attempts.
pub async fn show(
    State(state): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobRecord>, ApiError> {
    let id = job_id(&id)?;
    state
        .host
        .store()
        .job(id)
        .await?
        .map(Json)
        .ok_or_else(|| StoreError::NotFound(id).into())
}

/// `GET /api/jobs/{id}/effects`: the kv writes and outbox events the job
/// committed.
pub async fn effects(
    State(state): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobEffects>, ApiError> {
    let id = job_id(&id)?;
    state
        .host
        .store()
        .job_effects(id)
        .await?
        .map(Json)
        .ok_or_else(|| StoreError::NotFound(id).into())
}

/// A job's new state after an operator's action.
#[derive(Debug, Serialize)]
pub struct Moved {
    id: JobId,
    state: JobState,
}

/// `POST /api/jobs/{id}/retry`.
pub async fn retry(
    State(state): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Moved>, ApiError> {
    let id = job_id(&id)?;
    let host = &state.host;
    let ordered = host.ordering_events().await;
    let new = host.store().retry_job(id, host.clock().now()).await?;
    host.wake_producer();
    announce(&state, id, new).await;
    drop(ordered);
    Ok(Json(Moved { id, state: new }))
}

/// `POST /api/jobs/{id}/cancel`.
pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Moved>, ApiError> {
    let id = job_id(&id)?;
    let host = &state.host;
    let new = host.store().cancel_job(id, host.clock().now()).await?;
    announce(&state, id, new).await;
    Ok(Json(Moved { id, state: new }))
}

/// Publishes a job's new state after an operator's action. The job is
/// read again for its kind; if it moved on since (a retried job claimed),
/// the claim publishes that, and this event carries no attempt.
async fn announce(state: &ApiState, id: JobId, new: JobState) {
    if let Ok(Some(j)) = state.host.store().job(id).await {
        let (attempt, epoch) = if j.state == new {
            (j.attempt, j.epoch)
        } else {
            (0, 0)
        };
        state.host.publish(j.id, &j.kind, new, attempt, epoch, None);
    }
}

/// The filter of a bulk action, and how many jobs it may act on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    state: Option<JobState>,
    kind: Option<String>,
    queue: Option<String>,
    concurrency_key: Option<String>,
    /// Text the payload or error contains.
    text: Option<String>,
    /// At most this many (default 1000, at most 10000).
    limit: Option<u32>,
}

/// What a bulk action did.
#[derive(Debug, Serialize)]
pub struct BulkResult {
    /// How many jobs it moved.
    count: usize,
    /// Whether more jobs match than it was allowed to act on: call again.
    more: bool,
}

/// `POST /api/jobs/retry`: retries every matching job that can be.
pub async fn retry_many(
    State(state): State<Arc<ApiState>>,
    ApiJson(req): ApiJson<BulkRequest>,
) -> Result<Json<BulkResult>, ApiError> {
    bulk(&state, req, true).await
}

/// `POST /api/jobs/cancel`: cancels every matching job that can be.
pub async fn cancel_many(
    State(state): State<Arc<ApiState>>,
    ApiJson(req): ApiJson<BulkRequest>,
) -> Result<Json<BulkResult>, ApiError> {
    bulk(&state, req, false).await
}

async fn bulk(
    state: &ApiState,
    req: BulkRequest,
    retry: bool,
) -> Result<Json<BulkResult>, ApiError> {
    let limit = req.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid("limit: must be between 1 and 10000"));
    }
    let mut filter = job_filter(None, req.kind, req.queue, req.concurrency_key, req.text)?;
    filter.state = req.state;
    let host = &state.host;
    let now = host.clock().now();
    let ordered = host.ordering_events().await;
    let done = if retry {
        host.store().retry_jobs(filter, limit, now).await?
    } else {
        host.store().cancel_jobs(filter, limit, now).await?
    };
    for (id, kind, new) in &done.changed {
        host.publish(*id, kind, *new, 0, 0, None);
    }
    drop(ordered);
    if retry && !done.changed.is_empty() {
        host.wake_producer();
    }
    Ok(Json(BulkResult {
        count: done.changed.len(),
        more: done.more,
    }))
}
