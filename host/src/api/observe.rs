//! What monitoring reads: `/healthz`, `/readyz`, `/metrics` (Prometheus),
//! `/api/stats`, the event stream and the OpenAPI document.
//!
//! Counts that need a table scan (jobs by queue and state, outbox events by
//! state, schedule counters) are cached and refreshed at most once a second,
//! in the background, so a scrape stays cheap on a large database: a scrape
//! answers from the cache and, if it is older than a second, starts a
//! refresh for the next one. On a database so large that a refresh takes
//! longer than a tenth of a second, refreshes are spaced ten times their
//! cost apart: scrapes never keep more than a tenth of a core scanning.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::{ApiError, ApiState};
use crate::executor::Host;
use crate::health::{Iteration, LoopStatus};
use crate::metrics::Phase;
use crate::policy::BreakerState;
use crate::store::{EventCounts, QueueStats};
use crate::time::Timestamp;

/// The OpenAPI 3.1 document of every route, as it lives in the repo.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// The most queues given a label of their own; the rest are summed as
/// `other`.
const MAX_QUEUE_LABELS: usize = 200;

/// How stale the cached counts may be (at least).
const CACHE_FOR: Duration = Duration::from_secs(1);

/// Refreshes are at least this many times their own cost apart.
const REFRESH_SPACING: u32 = 10;

/// Counts read from the store, cached.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cached {
    pub at: Option<Timestamp>,
    pub queues: Vec<QueueStats>,
    pub events: EventCounts,
    pub schedule_fires: u64,
    pub schedule_missed: u64,
    pub schedule_skipped: u64,
    pub breakers: Vec<(String, BreakerState)>,
}

/// The `/metrics` registry and the cache it reads.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
    cache: Arc<Mutex<CacheState>>,
    /// Counts finished refreshes (successful or not): callers that come
    /// before the first success wait for the next one to finish rather
    /// than answer zeros.
    refreshes: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct CacheState {
    value: Cached,
    refreshed: Option<Instant>,
    refreshing: bool,
    /// How long the last refresh took.
    cost: Duration,
}

impl Exporter {
    pub fn new(host: &Arc<Host>) -> Exporter {
        let mut registry = Registry::with_prefix("jobbox");
        host.metrics().instruments.register(&mut registry);
        let cache: Arc<Mutex<CacheState>> = Arc::default();
        registry.register_collector(Box::new(HostCollector {
            host: Arc::clone(host),
            cache: Arc::clone(&cache),
        }));
        Exporter {
            registry,
            cache,
            refreshes: tokio::sync::watch::channel(0).0,
        }
    }

    /// The cached counts, refreshing them in the background if stale.
    /// Before the first refresh has succeeded, waits for the next one to
    /// finish (if it fails, answers what the cache holds: zeros).
    pub async fn cached(&self, host: &Arc<Host>) -> Cached {
        // Before looking: a refresh that ends after the look is seen.
        let mut finished = self.refreshes.subscribe();
        let (value, start, first) = {
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let keep = CACHE_FOR.max(c.cost * REFRESH_SPACING);
            let stale = c.refreshed.is_none_or(|t| t.elapsed() >= keep);
            let start = stale && !c.refreshing;
            if start {
                c.refreshing = true;
            }
            (c.value.clone(), start, c.refreshed.is_none())
        };
        if start {
            let cache = Arc::clone(&self.cache);
            let host = Arc::clone(host);
            let refreshes = self.refreshes.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let fresh = read_counts(&host).await;
                let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
                c.refreshing = false;
                c.cost = started.elapsed();
                if let Ok(v) = fresh {
                    c.value = v;
                    c.refreshed = Some(Instant::now());
                }
                drop(c);
                refreshes.send_modify(|n| *n += 1);
            });
        }
        if !first {
            return value;
        }
        if finished.changed().await.is_err() {
            return value;
        }
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .value
            .clone()
    }
}

async fn read_counts(host: &Host) -> Result<Cached, crate::store::StoreError> {
    let store = host.store();
    let now = host.clock().now();
    let queues = store.queues(now).await?;
    let events = store.event_counts().await?;
    let schedules = store.schedules().await?;
    let breakers = store
        .breakers()
        .await?
        .into_iter()
        .map(|b| (b.kind, b.state))
        .collect();
    Ok(Cached {
        at: Some(now),
        queues,
        events,
        schedule_fires: schedules.iter().map(|s| s.fired).sum(),
        schedule_missed: schedules.iter().map(|s| s.missed).sum(),
        schedule_skipped: schedules.iter().map(|s| s.skipped).sum(),
        breakers,
    })
}

/// Encodes, at each scrape, what is not a labelled family: the host's
/// counters, readiness, and the cached counts.
#[derive(Debug)]
struct HostCollector {
    host: Arc<Host>,
    cache: Arc<Mutex<CacheState>>,
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A counter family with one label.
fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(0u64);
    let mut m = e.encode_descriptor(name, help, None, c.metric_type())?;
    for (value, n) in values {
        ConstCounter::new(*n).encode(m.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

/// A gauge family: one value per label set.
fn gauges<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Vec<(&'a str, String)>, f64)>,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(0.0);
    let mut m = e.encode_descriptor(name, help, None, g.metric_type())?;
    for (labels, v) in values {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for HostCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let host = &self.host;
        let m = host.metrics().snapshot();
        let e = &mut e;
        counter(e, "claimed", "Jobs claimed by this host", m.claimed)?;
        counter(
            e,
            "fenced_out",
            "Write-backs and delivery outcomes that found the job or event taken over",
            m.fenced_out,
        )?;
        counter(
            e,
            "rescued",
            "Jobs whose lease expired, taken back by this host's rescuer",
            m.rescued,
        )?;
        counter(e, "store_errors", "Store calls that failed", m.store_errors)?;
        counter(
            e,
            "kv_conflicts",
            "Completions refused because a kv key they read had changed",
            m.kv_conflicts,
        )?;
        counter(
            e,
            "logs_dropped",
            "Plugin log lines dropped over the per-attempt quota",
            m.logs_dropped,
        )?;
        counter(
            e,
            "schedule_fires",
            "Jobs inserted by this host's scheduler",
            m.schedule_fires,
        )?;
        counter(
            e,
            "schedule_missed",
            "Fires this host's scheduler found missed during downtime",
            m.schedule_missed,
        )?;
        counter(
            e,
            "schedule_skipped",
            "Fires this host's scheduler skipped for overlap",
            m.schedule_skipped,
        )?;
        counter(
            e,
            "cleaned_jobs",
            "Jobs deleted by this host's cleaner",
            m.cleaned_jobs,
        )?;
        counters(
            e,
            "relay_iterations",
            "Relay iterations with events due, by result (ok, partial, failed)",
            "result",
            &[
                (
                    "ok",
                    m.relay_iterations - m.relay_partial_iterations - m.relay_failed_iterations,
                ),
                ("partial", m.relay_partial_iterations),
                ("failed", m.relay_failed_iterations),
            ],
        )?;
        counters(
            e,
            "outbox_deliveries",
            "Outbox delivery attempts, by result (delivered, retried, failed; unknown: sent, no answer in time, also counted as retried or failed)",
            "result",
            &[
                ("delivered", m.events_delivered),
                ("retried", m.events_retried),
                ("unknown", m.events_unknown),
                ("failed", m.events_failed),
            ],
        )?;
        counters(
            e,
            "breaker_transitions",
            "Circuit breaker changes of state made by this host, by new state",
            "to",
            &[
                ("open", m.breaker_opened),
                ("half_open", m.breaker_half_opened),
                ("closed", m.breaker_closed),
            ],
        )?;

        gauge(
            e,
            "attempts_in_flight",
            "Attempts running on this host",
            host.in_flight() as f64,
        )?;
        let now = host.clock().now();
        let readiness = host.health().readiness();
        gauge(
            e,
            "ready",
            "1 if every critical loop is fresh",
            f64::from(u8::from(readiness.ready)),
        )?;
        gauges(
            e,
            "loop_last_success_age_seconds",
            "Seconds since each loop's last successful iteration (since start if none)",
            readiness.loops.iter().map(|l: &LoopStatus| {
                let since = l.last_success.unwrap_or(host.started_at());
                (
                    vec![("loop", l.name.to_string())],
                    now.since(since).as_secs_f64(),
                )
            }),
        )?;

        let cache = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .value
            .clone();
        let mut by_state: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        let mut oldest: BTreeMap<String, f64> = BTreeMap::new();
        for (i, q) in cache.queues.iter().enumerate() {
            let name = if i < MAX_QUEUE_LABELS {
                q.queue.clone()
            } else {
                "other".to_owned()
            };
            let c = &q.counts;
            for (state, n) in [
                ("available", c.available),
                ("running", c.running),
                ("retryable", c.retryable),
                ("completed", c.completed),
                ("discarded", c.discarded),
                ("cancelled", c.cancelled),
            ] {
                *by_state.entry((name.clone(), state)).or_default() += n;
            }
            if let Some(t) = q.oldest_due {
                let age = now.since(t).as_secs_f64();
                let o = oldest.entry(name).or_default();
                *o = o.max(age);
            }
        }
        gauges(
            e,
            "jobs",
            "Jobs by queue and state (cached, refreshed at most once a second)",
            by_state.into_iter().map(|((queue, state), n)| {
                (
                    vec![("queue", queue), ("state", state.to_owned())],
                    n as f64,
                )
            }),
        )?;
        gauges(
            e,
            "queue_oldest_due_seconds",
            "Age of each queue's oldest due job that waits (cached)",
            oldest.into_iter().map(|(q, age)| (vec![("queue", q)], age)),
        )?;
        gauges(
            e,
            "outbox_events",
            "Outbox events by state (cached)",
            [
                ("pending", cache.events.pending),
                ("delivered", cache.events.delivered),
                ("failed", cache.events.failed),
            ]
            .map(|(s, n)| (vec![("state", s.to_owned())], n as f64)),
        )?;
        gauges(
            e,
            "breaker_state",
            "Each plugin's circuit breaker: 0 closed, 1 half-open, 2 open (cached)",
            cache
                .breakers
                .iter()
                .filter(|(kind, _)| host.plugin_label(kind) != "other")
                .map(|(kind, s)| {
                    let v = match s {
                        BreakerState::Closed => 0.0,
                        BreakerState::HalfOpen => 1.0,
                        BreakerState::Open => 2.0,
                    };
                    (vec![("plugin", kind.clone())], v)
                }),
        )?;
        Ok(())
    }
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 if every critical loop is fresh, else 503 naming
/// each stale loop with its last success and last error.
pub async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    let host = &state.host;
    let r = host.health().readiness();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r)).into_response()
}

/// `GET /metrics`: the Prometheus (OpenMetrics) text format.
pub async fn metrics(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    state.metrics.cached(&state.host).await;
    let mut body = String::with_capacity(16 << 10);
    prometheus_client::encoding::text::encode(&mut body, &state.metrics.registry).map_err(
        |_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "encoding the metrics failed",
            )
        },
    )?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// `GET /api/openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThroughputQuery {
    /// How many minutes up to now (default 60, at most 60).
    minutes: Option<u32>,
}

/// `GET /api/throughput`: attempts per minute (succeeded, failed) and per
/// plugin (success rate, run-time percentiles) over the last minutes, on
/// every host of the database.
pub async fn throughput(
    State(state): State<Arc<ApiState>>,
    super::ApiQuery(q): super::ApiQuery<ThroughputQuery>,
) -> Result<Json<crate::throughput::Throughput>, ApiError> {
    let minutes = q.minutes.unwrap_or(60);
    if !(1..=60).contains(&minutes) {
        return Err(ApiError::invalid("minutes: must be between 1 and 60"));
    }
    let host = &state.host;
    let hosts = host.store().hosts().await?;
    Ok(Json(crate::throughput::summarize(
        hosts.iter().filter_map(|h| h.minutes.as_deref()),
        host.clock().now(),
        minutes,
    )))
}

/// `GET /api/info`: who answers, and what the caller may do.
#[derive(Debug, Serialize)]
pub struct Info {
    /// This host's worker id.
    host: String,
    version: &'static str,
    /// `sqlite` or `postgres`.
    store: &'static str,
    /// Mutating routes answer 403.
    read_only: bool,
    /// Whether the API asks for a token.
    token_required: bool,
}

/// `GET /api/info`.
pub async fn info(State(state): State<Arc<ApiState>>) -> Json<Info> {
    let config = state.host.config();
    Json(Info {
        host: config.host.worker_id.clone(),
        version: env!("CARGO_PKG_VERSION"),
        store: match config.store {
            crate::store::StoreOptions::Sqlite(_) => "sqlite",
            crate::store::StoreOptions::Postgres(_) => "postgres",
        },
        read_only: state.config.read_only,
        token_required: state.config.token.is_some(),
    })
}

/// Percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Millis {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

fn millis(mut v: Vec<Duration>) -> Millis {
    v.sort_unstable();
    let at = |q: f64| {
        if v.is_empty() {
            0.0
        } else {
            v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
        }
    };
    Millis {
        count: v.len(),
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

/// One loop in the stats.
#[derive(Debug, Serialize)]
pub struct LoopStats {
    #[serde(flatten)]
    status: LoopStatus,
    iterations: Vec<Iteration>,
}

/// One plugin in the stats, over its latest attempts.
#[derive(Debug, Serialize)]
pub struct PluginStats {
    plugin: String,
    outcomes: BTreeMap<&'static str, u64>,
    run_ms: Millis,
    queue_wait_ms: Millis,
}

/// `GET /api/stats`.
#[derive(Debug, Serialize)]
pub struct Stats {
    at: Timestamp,
    host: String,
    ready: bool,
    in_flight: usize,
    loops: Vec<LoopStats>,
    plugins: Vec<PluginStats>,
    /// Jobs by queue and state (cached, at most a second old).
    queues: Vec<QueueStats>,
    /// The age of the oldest due job that waits, across queues.
    oldest_due_ms: Option<u64>,
    schedules: ScheduleStats,
    outbox: EventCounts,
    /// This host's relay since it started.
    relay: RelayStats,
    /// Latency of each phase over its latest occurrences.
    phases: BTreeMap<&'static str, Millis>,
    counts_at: Option<Timestamp>,
}

/// The relay's iterations that had events due, by result, and its
/// deliveries by outcome.
#[derive(Debug, Serialize)]
pub struct RelayStats {
    /// Every due delivery succeeded.
    ok: u64,
    /// Some failed.
    partial: u64,
    /// All failed (a failed iteration, for readiness).
    failed: u64,
    delivered: u64,
    /// Sent, but no answer before the timeout: tried again.
    unknown: u64,
    /// To be tried again after an error answer or a failed connection.
    retried: u64,
    /// Given up on.
    gave_up: u64,
}

#[derive(Debug, Serialize)]
pub struct ScheduleStats {
    fired: u64,
    missed: u64,
    skipped: u64,
}

/// Everything `jobbox stats` shows.
pub async fn collect_stats(state: &ApiState) -> Stats {
    let host = &state.host;
    let cached = state.metrics.cached(host).await;
    let now = host.clock().now();
    let readiness = host.health().readiness();
    let loops = readiness
        .loops
        .iter()
        .cloned()
        .map(|status| LoopStats {
            iterations: host.health().iterations(status.name),
            status,
        })
        .collect();
    let plugins = {
        let window = host
            .metrics()
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<PluginStats> = window
            .iter()
            .map(|(plugin, w)| {
                let mut outcomes = BTreeMap::new();
                for (_, o, _, _) in &w.recent {
                    *outcomes.entry(o.as_str()).or_insert(0) += 1;
                }
                PluginStats {
                    plugin: plugin.clone(),
                    outcomes,
                    run_ms: millis(w.recent.iter().map(|r| r.2).collect()),
                    queue_wait_ms: millis(w.recent.iter().map(|r| r.3).collect()),
                }
            })
            .collect();
        v.sort_by(|a, b| a.plugin.cmp(&b.plugin));
        v
    };
    let oldest_due_ms = cached
        .queues
        .iter()
        .filter_map(|q| q.oldest_due)
        .min()
        .map(|t| now.since(t).as_millis() as u64);
    let phases = Phase::ALL
        .into_iter()
        .map(|p| {
            (
                p.as_str(),
                millis(host.metrics().instruments.phase_window(p)),
            )
        })
        .collect();
    Stats {
        at: now,
        host: host.config().host.worker_id.clone(),
        ready: readiness.ready,
        in_flight: host.in_flight(),
        loops,
        plugins,
        queues: cached.queues,
        oldest_due_ms,
        schedules: ScheduleStats {
            fired: cached.schedule_fires,
            missed: cached.schedule_missed,
            skipped: cached.schedule_skipped,
        },
        outbox: cached.events,
        relay: {
            let m = host.metrics().snapshot();
            RelayStats {
                ok: m.relay_iterations - m.relay_partial_iterations - m.relay_failed_iterations,
                partial: m.relay_partial_iterations,
                failed: m.relay_failed_iterations,
                delivered: m.events_delivered,
                unknown: m.events_unknown,
                retried: m.events_retried,
                gave_up: m.events_failed,
            }
        },
        phases,
        counts_at: cached.at,
    }
}

/// `GET /api/stats`.
pub async fn stats(State(state): State<Arc<ApiState>>) -> Json<Stats> {
    Json(collect_stats(&state).await)
}

/// `GET /api/events`: server-sent events of job state changes on this host
/// (`event: job`, its `id` the event's `seq`); `event: lagged` says how
/// many events a slow reader missed; `event: outside` (at most one a
/// second) says that other hosts or processes sharing the database
/// committed changes this host did not announce (PostgreSQL only; data
/// `{"version": n}`), so a reader refreshes what it shows. Ends when the
/// server shuts down.
pub async fn events(
    State(state): State<Arc<ApiState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    struct Follow {
        rx: tokio::sync::broadcast::Receiver<crate::job::JobEvent>,
        closing: tokio::sync::watch::Receiver<bool>,
        outside: Option<tokio::sync::watch::Receiver<u64>>,
        /// When the next `outside` event may go (one is waiting).
        outside_due: Option<tokio::time::Instant>,
        outside_sent: Option<tokio::time::Instant>,
    }
    let follow = Follow {
        rx: state.host.subscribe(),
        closing: state.closing.subscribe(),
        outside: state.host.store().outside_changes(),
        outside_due: None,
        outside_sent: None,
    };
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    fn job_event(ev: &crate::job::JobEvent) -> Event {
        Event::default()
            .event("job")
            .id(ev.seq.to_string())
            .json_data(ev)
            .unwrap_or_else(|_| Event::default().comment("unencodable event"))
    }
    fn lagged(n: u64) -> Event {
        Event::default()
            .event("lagged")
            .data(format!("{{\"missed\":{n}}}"))
    }
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        loop {
            if *f.closing.borrow() {
                // Shutting down: what was published before goes out, then
                // the stream ends.
                let event = match f.rx.try_recv() {
                    Ok(ev) => job_event(&ev),
                    Err(TryRecvError::Lagged(n)) => lagged(n),
                    Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
                };
                return Some((Ok(event), f));
            }
            let event = tokio::select! {
                r = f.rx.recv() => match r {
                    Ok(ev) => job_event(&ev),
                    Err(RecvError::Lagged(n)) => lagged(n),
                    Err(RecvError::Closed) => return None,
                },
                _ = f.closing.wait_for(|c| *c) => continue,
                changed = async {
                    match f.outside.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                }, if f.outside_due.is_none() => {
                    if changed.is_err() {
                        f.outside = None;
                    } else {
                        let now = tokio::time::Instant::now();
                        let next = f.outside_sent.map_or(now, |t| t + OUTSIDE_EVERY);
                        f.outside_due = Some(next.max(now));
                    }
                    continue;
                }
                () = async {
                    match f.outside_due {
                        Some(due) => tokio::time::sleep_until(due).await,
                        None => std::future::pending().await,
                    }
                } => {
                    f.outside_due = None;
                    f.outside_sent = Some(tokio::time::Instant::now());
                    let version = f.outside.as_mut().map_or(0, |rx| *rx.borrow_and_update());
                    Event::default()
                        .event("outside")
                        .data(format!("{{\"version\":{version}}}"))
                }
            };
            return Some((Ok(event), f));
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The least time between two `outside` events of one stream.
const OUTSIDE_EVERY: Duration = Duration::from_secs(1);
