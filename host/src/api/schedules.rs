//! `/api/schedules`: list, show (with the next fire times), upsert, delete,
//! pause, resume and trigger.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiState};
use crate::admin;
use crate::job::{JobId, JobState};
use crate::schedule::{RawSchedule, ScheduleRecord, rfc3339, validate_id};

/// `GET /api/schedules`.
pub async fn list(
    State(state): State<Arc<ApiState>>,
) -> Result<Json<Vec<ScheduleRecord>>, ApiError> {
    Ok(Json(state.host.store().schedules().await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    /// How many upcoming fire times to list (default 5, at most 1000).
    next: Option<usize>,
}

/// A schedule with its upcoming fires.
#[derive(Debug, Serialize)]
pub struct ScheduleView {
    #[serde(flatten)]
    record: ScheduleRecord,
    upcoming: Vec<Upcoming>,
}

/// One upcoming fire.
#[derive(Debug, Serialize)]
pub struct Upcoming {
    /// Its nominal time (RFC 3339): its job's key names it.
    nominal: String,
    /// When its job is inserted (the nominal time plus jitter).
    run_at: String,
}

fn id_of(raw: &str) -> Result<String, ApiError> {
    validate_id(raw).map_err(ApiError::invalid)?;
    Ok(raw.to_owned())
}

/// `GET /api/schedules/{id}`.
pub async fn show(
    State(state): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ShowQuery>,
) -> Result<Json<ScheduleView>, ApiError> {
    let id = id_of(&id)?;
    let n = q.next.unwrap_or(5);
    if n > 1000 {
        return Err(ApiError::invalid("next: at most 1000"));
    }
    let (record, def) = admin::schedule(state.host.store().as_ref(), &id).await?;
    let mut times = Vec::new();
    if let Some(first) = record.next_fire_at.filter(|_| n > 0) {
        times.push(first);
        times.extend(def.cadence_upcoming(first, n - 1));
    }
    let upcoming = times
        .into_iter()
        .map(|t| Upcoming {
            nominal: rfc3339(t),
            run_at: rfc3339(def.run_at(t)),
        })
        .collect();
    Ok(Json(ScheduleView { record, upcoming }))
}

/// What an upsert did.
#[derive(Debug, Serialize)]
pub struct Upserted {
    id: String,
    /// `created`, `updated` or `unchanged`.
    result: &'static str,
    /// Whether the cadence changed (the next fire was computed afresh).
    cadence_changed: bool,
    schedule: Option<ScheduleRecord>,
}

/// `PUT /api/schedules/{id}`: creates or updates one schedule. The body is
/// a schedule as in a schedule file; its `id`, if given, must be the
/// path's. 201 if created, 200 otherwise.
pub async fn upsert(
    State(state): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let id = id_of(&id)?;
    let mut body = match body {
        serde_json::Value::Object(map) => map,
        _ => return Err(ApiError::invalid("expected a schedule object")),
    };
    match body.get("id") {
        None => {
            body.insert("id".into(), serde_json::Value::String(id.clone()));
        }
        Some(serde_json::Value::String(given)) if *given == id => {}
        Some(_) => return Err(ApiError::invalid("id: must be the path's id")),
    }
    let raw: RawSchedule =
        super::error::parse(serde_json::Value::Object(body).to_string().as_bytes())?;
    let def = raw
        .validate()
        .map_err(|e| ApiError::invalid(format!("{}: {}", e.field, e.message)))?;
    let host = &state.host;
    let report = admin::apply_schedules(
        host.store().as_ref(),
        host.config(),
        std::slice::from_ref(&def),
        false,
        host.clock().now(),
    )
    .await?;
    host.wake_scheduler();
    let (result, cadence_changed, status) = if !report.created.is_empty() {
        ("created", true, StatusCode::CREATED)
    } else if let Some((_, c)) = report.updated.first() {
        ("updated", *c, StatusCode::OK)
    } else {
        ("unchanged", false, StatusCode::OK)
    };
    let schedule = host.store().schedule(id.clone()).await?;
    Ok((
        status,
        Json(Upserted {
            id,
            result,
            cadence_changed,
            schedule,
        }),
    )
        .into_response())
}

/// `DELETE /api/schedules/{id}`: 204; the schedule's jobs stay.
pub async fn delete(
    State(state): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = id_of(&id)?;
    state.host.store().delete_schedule(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Why something is paused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    pub note: String,
}

/// A pause or resume's result.
#[derive(Debug, Serialize)]
pub struct Toggled {
    pub paused: bool,
    /// False if it already was as asked (a pause's note is replaced).
    pub changed: bool,
}

/// `POST /api/schedules/{id}/pause`.
pub async fn pause(
    State(state): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<PauseRequest>,
) -> Result<Json<Toggled>, ApiError> {
    let id = id_of(&id)?;
    let host = &state.host;
    let changed = host
        .store()
        .pause_schedule(id, req.note, host.clock().now())
        .await?;
    Ok(Json(Toggled {
        paused: true,
        changed,
    }))
}

/// `POST /api/schedules/{id}/resume`: the next fire is computed from now.
pub async fn resume(
    State(state): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Toggled>, ApiError> {
    let id = id_of(&id)?;
    let host = &state.host;
    let changed = admin::resume_schedule(host.store().as_ref(), &id, host.clock().now()).await?;
    host.wake_scheduler();
    Ok(Json(Toggled {
        paused: false,
        changed,
    }))
}

/// A trigger's job.
#[derive(Debug, Serialize)]
pub struct Triggered {
    job_id: JobId,
    idempotency_key: String,
}

/// `POST /api/schedules/{id}/trigger`: fires now, outside the cadence.
pub async fn trigger(
    State(state): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Triggered>), ApiError> {
    let id = id_of(&id)?;
    let host = &state.host;
    let ordered = host.ordering_events().await;
    let e = admin::trigger_schedule(
        host.store().as_ref(),
        host.config(),
        &id,
        host.clock().now(),
    )
    .await?;
    host.wake_producer();
    let job = host.store().job(e.id).await?;
    if let (Some(j), true) = (&job, e.created) {
        host.publish(j.id, &j.kind, JobState::Available, 0, 0, None);
    }
    drop(ordered);
    Ok((
        StatusCode::CREATED,
        Json(Triggered {
            job_id: e.id,
            idempotency_key: job.map(|j| j.idempotency_key).unwrap_or_default(),
        }),
    ))
}
