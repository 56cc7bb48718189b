//! Plugins, queues, the outbox and hosts: what an operator looks at and
//! steers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::schedules::{PauseRequest, Toggled};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiState};
use crate::health::HostRecord;
use crate::outbox::{EventRecord, EventState};
use crate::plugins::{PluginSettings, Rejected, ReloadReport, validate_kind};
use crate::policy::{BreakerRecord, BreakerState, PauseRecord, PauseScope};
use crate::store::QueueStats;

/// A loaded plugin with its safeguards.
#[derive(Debug, Serialize)]
pub struct PluginView {
    kind: String,
    path: String,
    /// SHA-256 of the component, hex.
    content_hash: String,
    settings: PluginSettings,
    /// Its breaker's state (`null`: it never failed).
    breaker: Option<BreakerRecord>,
    /// Its pause (`null`: not paused).
    paused: Option<PauseRecord>,
}

/// The plugins this host loaded, and the files it rejected.
#[derive(Debug, Serialize)]
pub struct Plugins {
    plugins: Vec<PluginView>,
    rejected: Vec<Rejected>,
    /// Breakers and pauses of kinds this host has no plugin for.
    other_breakers: Vec<BreakerRecord>,
    other_pauses: Vec<PauseRecord>,
}

/// `GET /api/plugins`.
pub async fn plugins(State(state): State<Arc<ApiState>>) -> Result<Json<Plugins>, ApiError> {
    let host = &state.host;
    let mut breakers = host.store().breakers().await?;
    let mut pauses: Vec<PauseRecord> = host
        .store()
        .pauses()
        .await?
        .into_iter()
        .filter(|p| p.scope == PauseScope::Kind)
        .collect();
    let mut take = |kind: &str| {
        let b = breakers
            .iter()
            .position(|b| b.kind == kind)
            .map(|i| breakers.remove(i));
        let p = pauses
            .iter()
            .position(|p| p.name == kind)
            .map(|i| pauses.remove(i));
        (b, p)
    };
    let plugins = host
        .plugins()
        .loaded()
        .map(|(kind, p)| {
            let (breaker, paused) = take(kind);
            PluginView {
                kind: kind.to_owned(),
                path: p.path.display().to_string(),
                content_hash: p.content_hash.clone(),
                settings: p.settings.clone(),
                breaker,
                paused,
            }
        })
        .collect();
    Ok(Json(Plugins {
        plugins,
        rejected: host.plugins().rejected().to_vec(),
        other_breakers: breakers,
        other_pauses: pauses,
    }))
}

fn kind_of(raw: &str) -> Result<String, ApiError> {
    validate_kind(raw).map_err(ApiError::invalid)?;
    Ok(raw.to_owned())
}

fn queue_of(raw: &str) -> Result<String, ApiError> {
    crate::job::validate_queue(raw).map_err(ApiError::invalid)?;
    Ok(raw.to_owned())
}

async fn set_pause(
    state: &ApiState,
    scope: PauseScope,
    name: String,
    note: Option<String>,
) -> Result<Json<Toggled>, ApiError> {
    let host = &state.host;
    let (paused, changed) = match note {
        Some(note) => (
            true,
            host.store()
                .pause(scope, name, note, host.clock().now())
                .await?,
        ),
        None => {
            let changed = host.store().resume(scope, name).await?;
            host.wake_producer();
            (false, changed)
        }
    };
    Ok(Json(Toggled { paused, changed }))
}

/// `POST /api/plugins/{kind}/pause`.
pub async fn pause_kind(
    State(state): State<Arc<ApiState>>,
    ApiPath(kind): ApiPath<String>,
    ApiJson(req): ApiJson<PauseRequest>,
) -> Result<Json<Toggled>, ApiError> {
    set_pause(&state, PauseScope::Kind, kind_of(&kind)?, Some(req.note)).await
}

/// `POST /api/plugins/{kind}/resume`.
pub async fn resume_kind(
    State(state): State<Arc<ApiState>>,
    ApiPath(kind): ApiPath<String>,
) -> Result<Json<Toggled>, ApiError> {
    set_pause(&state, PauseScope::Kind, kind_of(&kind)?, None).await
}

/// A breaker reset's result.
#[derive(Debug, Serialize)]
pub struct Reset {
    kind: String,
    /// Its state before (`null`: it had none, so it was closed).
    was: Option<BreakerState>,
}

/// `POST /api/plugins/reload`: rescans the plugins directory now, as a
/// change to it or SIGHUP does.
pub async fn reload(State(state): State<Arc<ApiState>>) -> Result<Json<ReloadReport>, ApiError> {
    let report = state.host.reload_plugins().await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reload_failed",
            format!("{e:#}"),
        )
    })?;
    Ok(Json(report))
}

/// `POST /api/plugins/{kind}/breaker/reset`.
pub async fn reset_breaker(
    State(state): State<Arc<ApiState>>,
    ApiPath(kind): ApiPath<String>,
) -> Result<Json<Reset>, ApiError> {
    let kind = kind_of(&kind)?;
    let host = &state.host;
    let was = host
        .store()
        .reset_breaker(kind.clone(), host.clock().now())
        .await?;
    host.wake_producer();
    Ok(Json(Reset { kind, was }))
}

/// `GET /api/queues`: jobs by queue and state and each queue's oldest due
/// job (cached, as in `/api/stats`: at most a second old on a small
/// database), and each queue's pause (read now).
pub async fn queues(State(state): State<Arc<ApiState>>) -> Result<Json<Vec<QueueStats>>, ApiError> {
    let host = &state.host;
    let cached = state.metrics.cached(host).await;
    let pauses = host.store().pauses().await?;
    let by_queue = cached
        .queues
        .into_iter()
        .map(|q| (q.queue.clone(), q))
        .collect();
    Ok(Json(QueueStats::with_pauses(by_queue, pauses)))
}

/// `POST /api/queues/{queue}/pause`.
pub async fn pause_queue(
    State(state): State<Arc<ApiState>>,
    ApiPath(queue): ApiPath<String>,
    ApiJson(req): ApiJson<PauseRequest>,
) -> Result<Json<Toggled>, ApiError> {
    set_pause(&state, PauseScope::Queue, queue_of(&queue)?, Some(req.note)).await
}

/// `POST /api/queues/{queue}/resume`.
pub async fn resume_queue(
    State(state): State<Arc<ApiState>>,
    ApiPath(queue): ApiPath<String>,
) -> Result<Json<Toggled>, ApiError> {
    set_pause(&state, PauseScope::Queue, queue_of(&queue)?, None).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxQuery {
    state: Option<String>,
    /// Only events with a lower id: the next page after the last one seen.
    before: Option<i64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
}

/// `GET /api/outbox`: events, newest first.
pub async fn outbox(
    State(state): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<OutboxQuery>,
) -> Result<Json<Vec<EventRecord>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit: must be between 1 and 1000"));
    }
    let filter: Option<EventState> = q
        .state
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| ApiError::invalid(format!("state: {e}")))?;
    Ok(Json(
        state
            .host
            .store()
            .list_events(filter, q.before, limit)
            .await?,
    ))
}

/// An event retried.
#[derive(Debug, Serialize)]
pub struct EventRetried {
    id: i64,
    state: EventState,
}

/// `POST /api/outbox/{id}/retry`: failed → pending, the same body and key.
pub async fn retry_event(
    State(state): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EventRetried>, ApiError> {
    let id = id.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::invalid(format!(
            "invalid event id {id:?}: expected a positive integer"
        ))
    })?;
    let host = &state.host;
    host.store().retry_event(id, host.clock().now()).await?;
    host.wake_relay();
    Ok(Json(EventRetried {
        id,
        state: EventState::Pending,
    }))
}

/// `GET /api/hosts`: every host using this database, by its heartbeat.
pub async fn hosts(State(state): State<Arc<ApiState>>) -> Result<Json<Vec<HostRecord>>, ApiError> {
    Ok(Json(state.host.store().hosts().await?))
}
