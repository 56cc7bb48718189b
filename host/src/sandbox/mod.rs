//! The sandbox: compiles plugin components once and runs each attempt in a
//! fresh, limited instance.
//!
//! The engine is configured once per process: fuel metering and epoch
//! interruption on, the pooling allocator (optional) sized for the host's
//! concurrency. A ticker thread advances the epoch every `epoch_tick`; each
//! attempt's store yields to tokio on every tick and traps once its deadline
//! has passed. One `Store` per attempt, dropped when the attempt ends for
//! any reason: nothing a cancelled attempt did can take effect afterwards.
//!
//! Nothing here knows about SQL or job states; it takes a
//! [`ClaimedJob`](crate::job::ClaimedJob) and reports how the run ended.

mod bindings;
mod cache;
mod effects;
mod grants;
mod host_state;
mod http;
mod inputs;
mod limits;
mod trap;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use crate::job::{ClaimedJob, Effects};
use crate::outbox::Backlog;
use bindings::PluginPre;
use effects::EffectsState;
pub use effects::{KvFuture, KvSource};
pub use grants::{DEFAULT_HTTP_MAX_RESPONSE, Grants, HttpRule};
use host_state::{HostState, LogContext};
use http::HttpPolicy;
pub(crate) use http::pin_to_vetted_address;
pub use http::{IDEMPOTENCY_KEY, forbidden as forbidden_address, internal_address};
pub use inputs::{
    Blob, CannedResponse, Captured, HexBytes, HttpExchange, HttpResponder, Inputs, KvRead, LogLine,
    MemoryKv, Script,
};
use inputs::{Capture, RecordingKv};
pub use limits::Limits;
use limits::MemoryLimiter;

/// The version of the `jobbox:plugin` WIT package this host implements.
pub const WIT_VERSION: &str = "0.2.0";

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// How often the epoch advances: the granularity of wall-clock deadlines
    /// and of yields to the async runtime.
    pub epoch_tick: Duration,
    /// Use the pooling instance allocator (fast instantiation; reserves
    /// virtual memory up front for `max_instances`).
    pub pooling: bool,
    /// How many instances may exist at once (pooling only).
    pub max_instances: u32,
    /// The largest single linear memory any plugin may have (pooling only).
    pub max_memory: usize,
    /// Where compiled plugins are cached (`None`: compile every time).
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> SandboxConfig {
        SandboxConfig {
            epoch_tick: Duration::from_millis(1),
            pooling: true,
            max_instances: 64,
            max_memory: Limits::default().memory,
            cache_dir: None,
        }
    }
}

/// Bytes of each pooled memory, table and stack that are reset with a
/// memset on reuse rather than decommitted.
const KEEP_RESIDENT: usize = 2 << 20;

/// Decommits queued before one batch of `madvise` calls.
const DECOMMIT_BATCH: usize = 32;

/// The configured engine, its linker, and the epoch ticker.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    ticker: Ticker,
    cache: cache::CompileCache,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").finish_non_exhaustive()
    }
}

/// A compiled plugin, ready to instantiate.
pub struct Plugin {
    name: Arc<str>,
    /// The SHA-256 of the component's bytes, hex: which build this is.
    content_hash: Arc<str>,
    pre: PluginPre<HostState>,
    limits: Limits,
    grants: Arc<Grants>,
    /// Keeps the epoch ticking while an attempt runs.
    ticker: Arc<TickerShared>,
}

/// The host services an attempt's imports reach, and where its world comes
/// from. The services are optional: a plugin run in isolation (a benchmark
/// floor, a plugin test) may have neither, and then kv calls answer
/// `unavailable` and emits are not capped.
#[derive(Clone, Default)]
pub struct RunContext {
    pub kv: Option<Arc<dyn KvSource>>,
    pub backlog: Option<Arc<Backlog>>,
    /// The clocks, randomness and HTTP: live, or scripted.
    pub inputs: Inputs,
    /// Bytes of the attempt's inputs to capture for a replay (0: none).
    pub capture_budget: usize,
    /// Keep the plugin's log lines in the report.
    pub keep_logs: bool,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("kv", &self.kv.is_some())
            .field("backlog", &self.backlog)
            .field("inputs", &self.inputs)
            .field("capture_budget", &self.capture_budget)
            .finish()
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Why an attempt did not produce an output.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{0}")]
    Permanent(String),
    #[error("trap: {0}")]
    Trap(String),
    #[error("fuel budget of {0} exhausted")]
    OutOfFuel(u64),
    #[error("deadline of {} exceeded", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("memory limit of {0} bytes exceeded")]
    MemoryLimit(usize),
    #[error("output of {size} bytes is over the limit of {limit} bytes (max_output); not stored")]
    OutputTooLarge { size: usize, limit: usize },
    #[error("cancelled")]
    Cancelled,
}

impl RunError {
    /// The kind of failure, as plugin tests and replays name it.
    pub fn kind(&self) -> &'static str {
        match self {
            RunError::Retryable { .. } => "retryable",
            RunError::Permanent(_) => "permanent",
            RunError::Trap(_) => "trap",
            RunError::OutOfFuel(_) => "out_of_fuel",
            RunError::Timeout(_) => "timeout",
            RunError::MemoryLimit(_) => "memory_limit",
            RunError::OutputTooLarge { .. } => "output_too_large",
            RunError::Cancelled => "cancelled",
        }
    }
}

/// Every outcome kind a run can have: `ok` and each [`RunError::kind`].
pub const OUTCOME_KINDS: &[&str] = &[
    "ok",
    "retryable",
    "permanent",
    "trap",
    "out_of_fuel",
    "timeout",
    "memory_limit",
    "output_too_large",
    "cancelled",
];

/// How one run went.
#[derive(Debug)]
pub struct RunReport {
    /// The output (JSON text) or why there is none.
    pub result: Result<String, RunError>,
    pub fuel_used: u64,
    pub elapsed: Duration,
    /// Log lines the plugin emitted past its quota.
    pub logs_dropped: u32,
    /// The attempt's buffered side effects (empty unless it returned an
    /// output).
    pub effects: Effects,
    /// What it read from the world, within the capture budget.
    pub captured: Captured,
    /// The deadline the plugin was told, in ms since the Unix epoch.
    pub deadline_ms: u64,
}

impl Sandbox {
    pub fn new(config: &SandboxConfig) -> anyhow::Result<Sandbox> {
        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true);
        if config.pooling {
            let n = config.max_instances.max(1);
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(n)
                .total_core_instances(n.saturating_mul(8))
                .total_memories(n.saturating_mul(2))
                .total_tables(n.saturating_mul(8))
                .total_stacks(n)
                .max_memory_size(config.max_memory)
                // Reset small memories, tables and stacks in place on reuse
                // instead of unmapping them: every unmap in a threaded
                // process is a TLB shootdown across all cores, which at
                // thousands of instances a second costs more than the
                // memset.
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(KEEP_RESIDENT)
                .async_stack_keep_resident(KEEP_RESIDENT)
                .decommit_batch_size(DECOMMIT_BATCH)
                .pagemap_scan(wasmtime::Enabled::Auto);
            cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&cfg).map_err(wasmtime_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wasmtime_error)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(wasmtime_error)?;
        bindings::Plugin::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(wasmtime_error)?;
        let cache = match cache::CompileCache::new(&engine, config.cache_dir.as_deref()) {
            Ok(cache) => cache,
            Err(e) => {
                tracing::warn!("compiled plugin cache not used: {e:#}");
                cache::CompileCache::new(&engine, None)?
            }
        };
        let ticker = Ticker::start(engine.clone(), config.epoch_tick);
        Ok(Sandbox {
            engine,
            linker,
            ticker,
            cache,
        })
    }

    /// Compiles the component at `path` and checks that it implements the
    /// `jobbox:plugin/plugin` world. The error names what is wrong.
    pub fn load(&self, name: &str, path: &Path, limits: Limits) -> anyhow::Result<Plugin> {
        let bytes = std::fs::read(path)?;
        self.load_bytes(name, &bytes, limits, Grants::default())
    }

    /// Like [`Sandbox::load`], with capabilities granted.
    pub fn load_with_grants(
        &self,
        name: &str,
        path: &Path,
        limits: Limits,
        grants: Grants,
    ) -> anyhow::Result<Plugin> {
        let bytes = std::fs::read(path)?;
        self.load_bytes(name, &bytes, limits, grants)
    }

    /// Like [`Sandbox::load`], from the component's bytes.
    pub fn load_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        limits: Limits,
        grants: Grants,
    ) -> anyhow::Result<Plugin> {
        let (component, content_hash) = self.compile(bytes)?;
        self.plugin_from(name, &component, content_hash, limits, grants)
    }

    /// The component in `bytes` (from the cache, or compiled), with its
    /// content hash.
    fn compile(&self, bytes: &[u8]) -> anyhow::Result<(Component, String)> {
        if !wasmparser_is_component(bytes) {
            anyhow::bail!("not a WebAssembly component (a core module or another file)");
        }
        let content_hash = sha256_hex(bytes);
        let component = self
            .cache
            .component(&self.engine, bytes, &content_hash)
            .map_err(wasmtime_error)?;
        Ok((component, content_hash))
    }

    /// `component` as a plugin, if it implements the world.
    fn plugin_from(
        &self,
        name: &str,
        component: &Component,
        content_hash: String,
        limits: Limits,
        grants: Grants,
    ) -> anyhow::Result<Plugin> {
        // Name a version mismatch plainly rather than as a missing import.
        for (name, _) in component.component_type().imports(&self.engine) {
            if let Some((_, version)) = name
                .strip_prefix("jobbox:plugin/")
                .and_then(|rest| rest.split_once('@'))
                && version != WIT_VERSION
            {
                anyhow::bail!(
                    "built against jobbox:plugin@{version}, but this host implements \
                     jobbox:plugin@{WIT_VERSION}: rebuild it with the current SDK"
                );
            }
        }
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(wasmtime_error)?;
        let pre = PluginPre::new(instance_pre)
            .map_err(|e| anyhow::anyhow!("does not implement world jobbox:plugin/plugin: {e:#}"))?;
        Ok(Plugin {
            name: name.into(),
            content_hash: content_hash.into(),
            pre,
            limits,
            grants: Arc::new(grants),
            ticker: Arc::clone(&self.ticker.shared),
        })
    }

    /// Compiles `bytes` once, to make plugins of it with different limits
    /// and grants (plugin tests run many cases of one component).
    pub fn prepare(&self, bytes: &[u8]) -> anyhow::Result<Prepared> {
        let (component, content_hash) = self.compile(bytes)?;
        Ok(Prepared {
            component,
            content_hash,
        })
    }

    /// A plugin of a prepared component.
    pub fn plugin(
        &self,
        name: &str,
        prepared: &Prepared,
        limits: Limits,
        grants: Grants,
    ) -> anyhow::Result<Plugin> {
        self.plugin_from(
            name,
            &prepared.component,
            prepared.content_hash.clone(),
            limits,
            grants,
        )
    }

    /// The epoch tick in force.
    pub fn epoch_tick(&self) -> Duration {
        self.ticker.tick
    }

    /// What the component in `bytes` imports (interface names, sorted),
    /// and whether it loads as a plugin (the error, as `load_bytes` would
    /// give it, if not). Nothing is instantiated.
    pub fn inspect(&self, bytes: &[u8]) -> (Vec<String>, Result<(), String>) {
        let (component, content_hash) = match self.compile(bytes) {
            Ok(c) => c,
            Err(e) => return (Vec::new(), Err(format!("{e:#}"))),
        };
        let mut imports: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        imports.sort();
        let loads = self
            .plugin_from(
                "check",
                &component,
                content_hash,
                Limits::default(),
                Grants::default(),
            )
            .map(drop)
            .map_err(|e| format!("{e:#}"));
        (imports, loads)
    }

    /// Components compiled, and loaded compiled from the cache, since this
    /// sandbox was made.
    pub fn compile_stats(&self) -> (u64, u64) {
        self.cache.stats()
    }

    /// The compiled-plugin cache's directory, if one is in use.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache.dir()
    }
}

/// A compiled component, not yet checked against the world.
#[derive(Clone)]
pub struct Prepared {
    component: Component,
    content_hash: String,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("content_hash", &self.content_hash)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }
}

/// The SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Carries a wasmtime error, with its chain of causes, into `anyhow`.
fn wasmtime_error(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

/// True if `bytes` start with the component-model preamble.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    // "\0asm", then version 0x0d and layer 1 for components (core modules
    // have version 1, layer 0).
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SHA-256 of the component's bytes, hex.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Runs one attempt of `job` in a fresh instance. Returns when the guest
    /// returns, traps, exhausts a limit, or `cancel` resolves; in every case
    /// the instance and its store are gone by then.
    pub async fn run(
        &self,
        job: &ClaimedJob,
        ctx: &RunContext,
        cancel: impl Future<Output = ()>,
    ) -> RunReport {
        // The epoch only ticks while attempts run: an idle host costs
        // nothing.
        let _ticking = self.ticker.activate();
        let started = Instant::now();
        let deadline = started + self.limits.timeout;
        let deadline_ms = crate::time::Clock::now(&crate::time::SystemClock)
            .plus(self.limits.timeout)
            .0
            .max(0) as u64;

        let stderr = trap::StderrTail::default();
        let capture = Capture::new(ctx.capture_budget, ctx.keep_logs);
        let (deadline_ms, scripted) = match &ctx.inputs {
            Inputs::Live => (deadline_ms, None),
            Inputs::Scripted(s) => (
                s.deadline_ms.unwrap_or_else(|| {
                    (s.wall_start_ns / 1_000_000)
                        .saturating_add(self.limits.timeout.as_millis() as u64)
                }),
                Some(s.http.clone()),
            ),
        };
        let kv = ctx.kv.clone().map(|inner| {
            Arc::new(RecordingKv {
                inner,
                capture: Arc::clone(&capture),
            }) as Arc<dyn KvSource>
        });
        let wasi = inputs::wasi_ctx(&ctx.inputs, &capture, stderr.clone());
        let state = HostState::new(
            MemoryLimiter::new(self.limits.memory),
            LogContext {
                plugin: Arc::clone(&self.name),
                job_id: job.id,
                attempt: job.attempt,
                lines: 0,
                dropped: 0,
            },
            EffectsState::new(
                Arc::clone(&self.name),
                Arc::clone(&self.grants),
                kv,
                ctx.backlog.clone(),
                job.id,
                job.idempotency_key.clone(),
            ),
            HttpPolicy::new(
                Arc::clone(&self.name),
                Arc::clone(&self.grants),
                job.idempotency_key.clone(),
                Arc::clone(&capture),
                scripted,
            ),
            wasi,
            capture,
        );
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(self.limits.fuel)
            .expect("fuel is enabled on the engine");
        // Check the deadline on every epoch tick: yield to tokio while time
        // remains (so timers and other tasks run even during a tight guest
        // loop), trap once it has passed.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });

        let input = bindings::jobbox::plugin::types::Job {
            id: job.id as u64,
            kind: job.kind.clone(),
            queue: job.queue.clone(),
            payload: job.payload.clone(),
            idempotency_key: job.idempotency_key.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            fencing_token: job.epoch,
            deadline_ms,
        };

        let outcome = {
            let call = async {
                let instance = self.pre.instantiate_async(&mut store).await?;
                instance.call_run(&mut store, &input).await
            };
            tokio::select! {
                r = call => Some(r),
                // A guest parked in a host call never reaches an epoch
                // check; this timer covers it. Dropping `call` drops the
                // in-flight host call with it.
                () = tokio::time::sleep_until(deadline.into()) => None,
                () = cancel => {
                    return self.report(store, started, Err(RunError::Cancelled), deadline_ms);
                }
            }
        };

        let result = match outcome {
            None => Err(RunError::Timeout(self.limits.timeout)),
            Some(Ok(Ok(output))) if output.payload.len() > self.limits.max_output => {
                Err(RunError::OutputTooLarge {
                    size: output.payload.len(),
                    limit: self.limits.max_output,
                })
            }
            Some(Ok(Ok(output))) => Ok(output.payload),
            Some(Ok(Err(e))) => Err(guest_error(e)),
            Some(Err(e)) => Err(self.classify(&store, e, &stderr)),
        };
        self.report(store, started, result, deadline_ms)
    }

    fn classify(
        &self,
        store: &Store<HostState>,
        e: wasmtime::Error,
        stderr: &trap::StderrTail,
    ) -> RunError {
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => RunError::OutOfFuel(self.limits.fuel),
            Some(Trap::Interrupt) => RunError::Timeout(self.limits.timeout),
            _ if store.data().limiter.hit => RunError::MemoryLimit(self.limits.memory),
            _ => RunError::Trap(trap::describe(&e, &stderr.contents())),
        }
    }

    fn report(
        &self,
        mut store: Store<HostState>,
        started: Instant,
        mut result: Result<String, RunError>,
        deadline_ms: u64,
    ) -> RunReport {
        let fuel_left = store.get_fuel().unwrap_or(0);
        let state = store.data_mut();
        let logs_dropped = state.log.dropped;
        // An emit refused for a full backlog fails the attempt whatever the
        // plugin made of it, so that no event is silently lost.
        if result.is_ok()
            && let Some(msg) = state.effects.backlog_refused.take()
        {
            result = Err(RunError::Retryable {
                message: msg,
                retry_after: None,
            });
        }
        // Effects leave the sandbox only with an output to commit them with.
        let effects = if result.is_ok() {
            state.effects.take()
        } else {
            Effects::default()
        };
        let captured = state.capture.take();
        drop(store);
        RunReport {
            result,
            fuel_used: self.limits.fuel.saturating_sub(fuel_left),
            elapsed: started.elapsed(),
            logs_dropped,
            effects,
            captured,
            deadline_ms,
        }
    }
}

fn guest_error(e: bindings::jobbox::plugin::types::JobError) -> RunError {
    use bindings::jobbox::plugin::types::JobError;
    match e {
        JobError::Retryable(r) => RunError::Retryable {
            message: r.message,
            retry_after: r.retry_after_ms.map(Duration::from_millis),
        },
        JobError::Permanent(message) => RunError::Permanent(message),
    }
}

/// Advances the engine's epoch every `tick` on a thread of its own, while
/// any attempt runs; parked otherwise. Stops when dropped.
struct Ticker {
    tick: Duration,
    shared: Arc<TickerShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the ticker thread and the attempts share.
#[derive(Debug)]
struct TickerShared {
    stop: AtomicBool,
    /// Attempts running now.
    active: AtomicUsize,
    /// The ticker thread, to unpark when the first attempt starts.
    thread: std::sync::OnceLock<std::thread::Thread>,
}

/// Keeps the epoch ticking until dropped.
struct Ticking<'a>(&'a TickerShared);

impl TickerShared {
    fn activate(&self) -> Ticking<'_> {
        if self.active.fetch_add(1, Ordering::SeqCst) == 0
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
        Ticking(self)
    }
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    fn start(engine: Engine, tick: Duration) -> Ticker {
        let shared = Arc::new(TickerShared {
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            thread: std::sync::OnceLock::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("jobbox-epoch".into())
            .spawn(move || {
                while !s.stop.load(Ordering::Relaxed) {
                    if s.active.load(Ordering::SeqCst) == 0 {
                        // An `unpark` between the check and the park makes
                        // the park return at once: no start is missed.
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        let _ = shared.thread.set(thread.thread().clone());
        Ticker {
            tick,
            shared,
            thread: Some(thread),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
