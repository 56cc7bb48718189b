//! The per-attempt host state stored in each wasmtime `Store`.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::jobbox::plugin::{log, types};
use super::effects::EffectsState;
use super::http::HttpPolicy;
use super::inputs::Capture;
use super::limits::MemoryLimiter;

/// Messages longer than this are cut (on a character boundary).
const MAX_LOG_MESSAGE: usize = 4096;
/// An attempt may log this many lines; the rest are dropped and counted.
const MAX_LOG_LINES: u32 = 1000;

/// Everything the host keeps for one attempt. Dropped with the store.
pub(crate) struct HostState {
    /// The WASI context: nothing granted (see `Sandbox` docs).
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) log: LogContext,
    pub(crate) effects: EffectsState,
    http: WasiHttpCtx,
    http_policy: HttpPolicy,
    pub(crate) capture: Arc<Capture>,
}

/// Who is logging, so the host can tag each line.
#[derive(Debug)]
pub(crate) struct LogContext {
    pub(crate) plugin: Arc<str>,
    pub(crate) job_id: i64,
    pub(crate) attempt: u32,
    pub(crate) lines: u32,
    pub(crate) dropped: u32,
}

impl HostState {
    pub(crate) fn new(
        limiter: MemoryLimiter,
        log: LogContext,
        effects: EffectsState,
        http_policy: HttpPolicy,
        wasi: WasiCtx,
        capture: Arc<Capture>,
    ) -> HostState {
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter,
            log,
            effects,
            http: WasiHttpCtx::new(),
            http_policy,
            capture,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_policy,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) {
        let ctx = &mut self.log;
        if ctx.lines >= MAX_LOG_LINES {
            ctx.dropped += 1;
            return;
        }
        ctx.lines += 1;
        let message = truncate(&message, MAX_LOG_MESSAGE);
        self.capture.log(level_name(level), message);
        let (plugin, job_id, attempt) = (&*ctx.plugin, ctx.job_id, ctx.attempt);
        match level {
            log::Level::Trace => {
                tracing::trace!(target: "jobbox::plugin", plugin, job_id, attempt, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "jobbox::plugin", plugin, job_id, attempt, "{message}")
            }
            log::Level::Info => {
                tracing::info!(target: "jobbox::plugin", plugin, job_id, attempt, "{message}")
            }
            log::Level::Warn => {
                tracing::warn!(target: "jobbox::plugin", plugin, job_id, attempt, "{message}")
            }
            log::Level::Error => {
                tracing::error!(target: "jobbox::plugin", plugin, job_id, attempt, "{message}")
            }
        }
    }
}

fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Trace => "trace",
        log::Level::Debug => "debug",
        log::Level::Info => "info",
        log::Level::Warn => "warn",
        log::Level::Error => "error",
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
