//! The admin HTTP API, served by `jobbox run`: JSON in and out, over the
//! same library calls as the CLI.
//!
//! Safe by default: without a token the API only listens on loopback (a
//! non-loopback `listen` without a token is a config error), and with one
//! every route but `/healthz` and `/readyz` needs `Authorization: Bearer
//! <token>`, compared in constant time. `read_only` refuses every mutating
//! route with 403. Bodies are size-limited (413), unknown fields refused
//! (400 naming the field), slow clients timed out.
//!
//! Every route is declared in [`router`]; [`ROUTES`] lists them for tests
//! and the OpenAPI document (`docs/openapi.json`, served at
//! `/api/openapi.json`).

pub mod client;
mod error;
mod jobs;
mod observe;
mod operate;
mod schedules;
mod settings;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::executor::Host;

pub use error::{ApiError, ApiJson, ApiPath, ApiQuery};
pub use settings::ApiConfig;

/// What every handler reaches.
#[derive(Debug)]
pub struct ApiState {
    pub host: Arc<Host>,
    pub config: ApiConfig,
    /// The SHA-256 of the token, compared in constant time with that of the
    /// one presented (so neither length nor content leaks through timing).
    token_hash: Option<[u8; 32]>,
    pub metrics: observe::Exporter,
    /// Turns true when the server shuts down: event streams end.
    closing: tokio::sync::watch::Sender<bool>,
}

impl ApiState {
    pub fn new(host: Arc<Host>, config: ApiConfig) -> Arc<ApiState> {
        let token_hash = config.token.as_deref().map(sha256);
        let metrics = observe::Exporter::new(&host);
        Arc::new(ApiState {
            host,
            config,
            token_hash,
            metrics,
            closing: tokio::sync::watch::channel(false).0,
        })
    }
}

fn sha256(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

/// Every route: method, path (as in the OpenAPI document) and whether it
/// changes anything.
pub const ROUTES: &[(&str, &str, bool)] = &[
    ("GET", "/healthz", false),
    ("GET", "/readyz", false),
    ("GET", "/metrics", false),
    ("GET", "/api/openapi.json", false),
    ("GET", "/api/info", false),
    ("GET", "/api/stats", false),
    ("GET", "/api/throughput", false),
    ("GET", "/api/events", false),
    ("POST", "/api/jobs", true),
    ("GET", "/api/jobs", false),
    ("GET", "/api/jobs/count", false),
    ("POST", "/api/jobs/retry", true),
    ("POST", "/api/jobs/cancel", true),
    ("GET", "/api/jobs/{id}", false),
    ("GET", "/api/jobs/{id}/effects", false),
    ("POST", "/api/jobs/{id}/retry", true),
    ("POST", "/api/jobs/{id}/cancel", true),
    ("GET", "/api/schedules", false),
    ("GET", "/api/schedules/{id}", false),
    ("PUT", "/api/schedules/{id}", true),
    ("DELETE", "/api/schedules/{id}", true),
    ("POST", "/api/schedules/{id}/pause", true),
    ("POST", "/api/schedules/{id}/resume", true),
    ("POST", "/api/schedules/{id}/trigger", true),
    ("GET", "/api/plugins", false),
    ("POST", "/api/plugins/reload", true),
    ("POST", "/api/plugins/{kind}/pause", true),
    ("POST", "/api/plugins/{kind}/resume", true),
    ("POST", "/api/plugins/{kind}/breaker/reset", true),
    ("GET", "/api/queues", false),
    ("POST", "/api/queues/{queue}/pause", true),
    ("POST", "/api/queues/{queue}/resume", true),
    ("GET", "/api/outbox", false),
    ("POST", "/api/outbox/{id}/retry", true),
    ("GET", "/api/hosts", false),
];

/// The API's routes, behind its authentication and limits.
pub fn router(state: Arc<ApiState>) -> Router {
    let api = Router::new()
        .route("/metrics", get(observe::metrics))
        .route("/api/openapi.json", get(observe::openapi))
        .route("/api/info", get(observe::info))
        .route("/api/stats", get(observe::stats))
        .route("/api/throughput", get(observe::throughput))
        .route("/api/events", get(observe::events))
        .route("/api/jobs", post(jobs::enqueue).get(jobs::list))
        .route("/api/jobs/retry", post(jobs::retry_many))
        .route("/api/jobs/cancel", post(jobs::cancel_many))
        .route("/api/jobs/count", get(jobs::count))
        .route("/api/jobs/{id}", get(jobs::show))
        .route("/api/jobs/{id}/effects", get(jobs::effects))
        .route("/api/jobs/{id}/retry", post(jobs::retry))
        .route("/api/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/schedules", get(schedules::list))
        .route(
            "/api/schedules/{id}",
            get(schedules::show)
                .put(schedules::upsert)
                .delete(schedules::delete),
        )
        .route("/api/schedules/{id}/pause", post(schedules::pause))
        .route("/api/schedules/{id}/resume", post(schedules::resume))
        .route("/api/schedules/{id}/trigger", post(schedules::trigger))
        .route("/api/plugins", get(operate::plugins))
        .route("/api/plugins/reload", post(operate::reload))
        .route("/api/plugins/{kind}/pause", post(operate::pause_kind))
        .route("/api/plugins/{kind}/resume", post(operate::resume_kind))
        .route(
            "/api/plugins/{kind}/breaker/reset",
            post(operate::reset_breaker),
        )
        .route("/api/queues", get(operate::queues))
        .route("/api/queues/{queue}/pause", post(operate::pause_queue))
        .route("/api/queues/{queue}/resume", post(operate::resume_queue))
        .route("/api/outbox", get(operate::outbox))
        .route("/api/outbox/{id}/retry", post(operate::retry_event))
        .route("/api/hosts", get(operate::hosts))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard));
    let mut app = Router::new()
        .route("/healthz", get(observe::healthz))
        .route("/readyz", get(observe::readyz))
        .merge(api);
    if state.config.dashboard {
        app = app.merge(crate::dashboard::routes());
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// Authentication, read-only mode and the request timeout, for every
/// route but the health checks.
async fn guard(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    if let Some(expected) = &state.token_hash {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .map(sha256);
        let ok = presented.is_some_and(|p| {
            use subtle::ConstantTimeEq;
            bool::from(p.ct_eq(expected))
        });
        if !ok {
            return axum::response::IntoResponse::into_response(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer <api.token>)",
            ));
        }
    }
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if state.config.read_only && mutating {
        return axum::response::IntoResponse::into_response(ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            "the API is read-only (api.read_only = true)",
        ));
    }
    // Long polls answer when they are done: their own wait bounds them.
    let path = req.uri().path();
    let long = path == "/api/events"
        || (path == "/api/jobs"
            && req.method() == Method::POST
            && req.uri().query().is_some_and(|q| q.contains("wait=")));
    if long {
        return next.run(req).await;
    }
    match tokio::time::timeout(state.config.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => axum::response::IntoResponse::into_response(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took longer than api.request_timeout",
        )),
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, as HTTP's are).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Binds the API's listener and serves it on a task of its own until `stop`
/// resolves; returns the address it listens on and the task.
pub async fn start(
    host: &Arc<Host>,
    config: ApiConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    use anyhow::Context;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("api.listen: cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    if config.token.is_none() {
        tracing::warn!(
            "admin API on http://{addr} has no token: it listens on loopback only (set api.token to listen elsewhere)"
        );
    } else {
        tracing::info!(read_only = config.read_only, "admin API on http://{addr}");
    }
    let state = ApiState::new(Arc::clone(host), config);
    Ok((addr, tokio::spawn(serve(listener, state, stop))))
}

/// Serves the API on `listener` until `shutdown` resolves, then lets the
/// requests in progress finish (the event streams end at once).
pub async fn serve(
    listener: TcpListener,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let app = router(Arc::clone(&state));
    let header_timeout = state.config.header_timeout;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off.
                    tracing::warn!("api: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let stopping = tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("api connection: {e}");
                    }
                    false
                }
                () = async {
                    let _ = stop.wait_for(|s| *s).await;
                } => true,
            };
            if stopping {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        });
    }
    let _ = stop_tx.send(true);
    state.closing.send_replace(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        connections.abort_all();
    }
    Ok(())
}
