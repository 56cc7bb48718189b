//! The `jobbox` command line. `main.rs` parses nothing itself: it calls
//! [`main`], which returns an error to print as one line.

/// `println!` that returns the write's error instead of panicking (a
/// closed pipe, as with `jobbox jobs list | head -1`, ends the command
/// quietly: see `main`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// "s" unless `n` is 1, for counts in messages.
fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

mod jobs;
mod outbox;
mod plugins;
mod queues;
mod remote;
mod schedules;
mod store;
mod testing;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, parse_duration};
use crate::executor::Host;
use crate::job::{NewJob, canonical_json};
use crate::plugins::validate_kind;
use crate::store::Store;
use crate::time::{Clock, SystemClock, Timestamp};

/// A durable job executor that runs each job's side effect in a sandboxed
/// WebAssembly component.
#[derive(Debug, Parser)]
#[command(name = "jobbox", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The TOML config file (default: built-in defaults, ./jobbox.db and
    /// ./plugins).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The database: a SQLite file, or a postgres:// URL (overrides the
    /// config's [store]).
    #[arg(long, global = true, value_name = "PATH|URL")]
    pub db: Option<PathBuf>,
    /// How logs are written to stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "JOBBOX_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// The format of the logs on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal only).
    Text,
    /// One JSON object per line, for log aggregation.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host: claim jobs and run them until SIGINT/SIGTERM.
    Run,
    /// Enqueue a job and print its id.
    Enqueue(EnqueueArgs),
    /// Inspect and manage jobs.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Inspect plugins.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// Inspect outbox events and their delivery.
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// Manage recurring schedules.
    #[command(subcommand)]
    Schedules(schedules::SchedulesCommand),
    /// Inspect queues; pause and resume them.
    #[command(subcommand)]
    Queues(queues::QueuesCommand),
    /// Every host using this database, by its heartbeat.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// The running host's statistics: loops, plugins, queues, latencies
    /// (asks its API).
    Stats {
        #[arg(long)]
        json: bool,
        /// Refresh every 2 seconds until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Measure throughput and latency on a fresh temporary database.
    Bench(crate::bench::BenchArgs),
    /// Apply the schema migrations this binary has to the configured
    /// database (hosts also apply them as they start).
    Migrate,
    /// The database itself: copy it to another.
    #[command(subcommand)]
    Store(store::StoreCommand),
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Hosts with their version, start, last heartbeat, readiness and
    /// attempts in flight.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The job kind (the plugin `<kind>.wasm` runs it).
    #[arg(required_unless_present = "batch")]
    pub kind: Option<String>,
    /// The job's input, as JSON; `-` reads it from stdin.
    #[arg(long, conflicts_with_all = ["payload_file", "batch"])]
    pub payload: Option<String>,
    /// Read the job's input from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "batch")]
    pub payload_file: Option<PathBuf>,
    /// Enqueue every job of a JSON Lines file (`-`: stdin), one job object
    /// per line as the API takes them (`{"kind": ..., "payload": ...}`), in
    /// one transaction: all or nothing.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["kind", "queue", "priority", "idempotency_key", "delay", "run_at", "callback", "concurrency_key", "concurrency_limit", "max_attempts"])]
    pub batch: Option<PathBuf>,
    /// A key stable across retries; enqueueing the same key again returns
    /// the existing job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[arg(long, default_value = crate::job::DEFAULT_QUEUE)]
    pub queue: String,
    /// Lower runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Run no earlier than this long from now (e.g. 30s, 5m).
    #[arg(long, conflicts_with = "run_at")]
    pub delay: Option<String>,
    /// Run no earlier than this time (RFC 3339).
    #[arg(long)]
    pub run_at: Option<String>,
    /// Attempts before the job is discarded (default: the kind's config).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// POST the job's result here when it completes or is discarded.
    #[arg(long, value_name = "URL")]
    pub callback: Option<String>,
    /// At most --concurrency-limit jobs with this key run at once, across
    /// every host on the database (e.g. one credit per account at a time).
    #[arg(long, value_name = "KEY")]
    pub concurrency_key: Option<String>,
    /// How many jobs with the key may run at once (default 1).
    #[arg(long, value_name = "N")]
    pub concurrency_limit: Option<u32>,
    /// Print `{"id": ..., "created": ...}`.
    #[arg(long)]
    pub json: bool,
}

async fn hosts_list(config: &Config, json: bool) -> anyhow::Result<()> {
    with_store(config, |store| async move {
        let hosts = store.hosts().await?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&hosts)?)?;
            return Ok(());
        }
        if hosts.is_empty() {
            outln!("no host has run on this database yet (or none for a week)")?;
            return Ok(());
        }
        let now = SystemClock.now();
        outln!(
            "{:<32} {:<8} {:<24} {:>14} {:<9} {:>9}",
            "host",
            "version",
            "started",
            "last seen",
            "ready",
            "in flight"
        )?;
        for h in &hosts {
            let ago = now.since(h.last_seen);
            outln!(
                "{:<32} {:<8} {:<24} {:>10.1}s ago {:<9} {:>9}",
                h.id,
                h.version,
                h.started_at.to_string(),
                ago.as_secs_f64(),
                if !h.ready {
                    "no"
                } else if ago > crate::executor::HEARTBEAT_EVERY * 5 {
                    "gone?"
                } else {
                    "yes"
                },
                h.in_flight
            )?;
        }
        Ok(())
    })
    .await
}

async fn stats(config: &Config, json: bool, watch: bool) -> anyhow::Result<()> {
    loop {
        let s = remote::get_json(config, "/api/stats").await?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&s)?)?;
        } else {
            print_stats(&s)?;
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        outln!()?;
    }
}

fn print_stats(s: &serde_json::Value) -> std::io::Result<()> {
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    outln!(
        "host {} at {}: {}, {} attempts in flight",
        s["host"].as_str().unwrap_or("?"),
        s["at"].as_str().unwrap_or("?"),
        if s["ready"] == true {
            "ready"
        } else {
            "NOT READY"
        },
        s["in_flight"]
    )?;
    outln!("loops:")?;
    for l in s["loops"].as_array().into_iter().flatten() {
        let its = l["iterations"].as_array().cloned().unwrap_or_default();
        let handled: f64 = its.iter().map(|i| num(&i["handled"])).sum();
        let failed = its.iter().filter(|i| i["error"].is_string()).count();
        outln!(
            "  {:<13} {:<6} last success {:<26} last {} iterations: {handled:.0} handled, {failed} failed{}",
            l["name"].as_str().unwrap_or("?"),
            if l["fresh"] == true { "fresh" } else { "STALE" },
            l["last_success"].as_str().unwrap_or("never"),
            its.len(),
            l["last_error"]
                .as_str()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        )?;
    }
    outln!("plugins (latest attempts):")?;
    for p in s["plugins"].as_array().into_iter().flatten() {
        outln!(
            "  {:<16} {}  run p50 {:.2} p90 {:.2} p99 {:.2} ms  queue wait p50 {:.1} p99 {:.1} ms",
            p["plugin"].as_str().unwrap_or("?"),
            p["outcomes"],
            num(&p["run_ms"]["p50"]),
            num(&p["run_ms"]["p90"]),
            num(&p["run_ms"]["p99"]),
            num(&p["queue_wait_ms"]["p50"]),
            num(&p["queue_wait_ms"]["p99"])
        )?;
    }
    outln!("queues:")?;
    for q in s["queues"].as_array().into_iter().flatten() {
        outln!(
            "  {:<16} {}",
            q["queue"].as_str().unwrap_or("?"),
            q["counts"]
        )?;
    }
    outln!(
        "oldest due job: {}; schedules: {}; outbox: {}",
        s["oldest_due_ms"]
            .as_u64()
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "none".into()),
        s["schedules"],
        s["outbox"]
    )?;
    outln!("relay: {}", s["relay"])?;
    outln!("phases (ms):")?;
    for (name, p) in s["phases"].as_object().into_iter().flatten() {
        outln!(
            "  {name:<11} n={:<5} p50 {:.2} p90 {:.2} p99 {:.2}",
            p["count"],
            num(&p["p50"]),
            num(&p["p90"]),
            num(&p["p99"])
        )?;
    }
    Ok(())
}

/// Warns if no plugin file serves `kind` (its jobs fail until one does).
fn warn_without_plugin(config: &Config, kind: &str) {
    let plugin_file = config.host.plugins_dir.join(format!("{kind}.wasm"));
    if !plugin_file.is_file() {
        eprintln!(
            "warning: no plugin file {} for kind {kind:?}; its jobs will fail until one is added",
            plugin_file.display()
        );
    }
}

/// `jobbox enqueue --batch FILE.jsonl`: every line a job, all in one
/// transaction, or none if any line is wrong.
async fn enqueue_batch(config: &Config, path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let text = if path == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("--batch -: reading stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("--batch: reading {}", path.display()))?
    };
    let now = SystemClock.now();
    let mut jobs = Vec::new();
    let mut lines = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = |e: &dyn std::fmt::Display| anyhow::anyhow!("--batch: line {}: {e}", i + 1);
        let job = crate::enqueue::from_json(
            &mut serde_json::Deserializer::from_str(line),
            now,
            |kind| config.plugin(kind),
            &config.outbox.callback_allow,
        )
        .map_err(|e| at(&e))?;
        kinds.insert(job.kind.clone());
        jobs.push(job);
        lines.push(i + 1);
    }
    if jobs.is_empty() {
        anyhow::bail!("--batch: {} has no jobs", path.display());
    }
    if let Some((a, b)) = crate::enqueue::key_clash(&jobs) {
        anyhow::bail!(
            "--batch: line {}: idempotency_key: the same key as line {}, for a different job",
            lines[b],
            lines[a]
        );
    }
    for kind in &kinds {
        warn_without_plugin(config, kind);
    }
    let n = jobs.len();
    let store = open_store(config)?;
    let result = store.enqueue(jobs, now).await;
    store.close().await?;
    let out = result?;
    let created = out.iter().filter(|e| e.created).count();
    if json {
        outln!("{}", serde_json::to_string(&out)?)?;
    } else {
        outln!(
            "enqueued {n} jobs ({created} new, {} already there by idempotency key): ids {}..{}",
            n - created,
            out.first().map_or(0, |e| e.id),
            out.last().map_or(0, |e| e.id)
        )?;
    }
    Ok(())
}

/// Whether `e` is a write to a pipe whose reader has gone.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs the command line.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(&cli.global)?;
    match cli.command {
        Command::Run => run(config).await,
        Command::Enqueue(args) => enqueue(&config, args).await,
        Command::Jobs(cmd) => jobs::main(&config, cmd).await,
        Command::Plugins(cmd) => plugins::main(&config, cmd).await,
        Command::Outbox(cmd) => outbox::main(&config, cmd).await,
        Command::Schedules(cmd) => schedules::main(&config, cmd).await,
        Command::Queues(cmd) => queues::main(&config, cmd).await,
        Command::Migrate => store::migrate(&config).await,
        Command::Store(cmd) => store::main(&config, cmd).await,
        Command::Hosts(HostsCommand::List { json }) => hosts_list(&config, json).await,
        Command::Stats { json, watch } => stats(&config, json, watch).await,
        Command::Bench(args) => crate::bench::main(&config, args).await,
    }
}

/// The config file if given (else the defaults), with `--db` applied.
pub fn load_config(global: &GlobalArgs) -> anyhow::Result<Config> {
    let mut config = match &global.config {
        Some(path) => Config::load(path)?,
        None => Config::default_in(std::path::Path::new(".")),
    };
    if let Some(db) = &global.db {
        config.store = crate::store::StoreOptions::from_arg(&db.to_string_lossy());
    }
    Ok(config)
}

/// Opens the configured store.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(open_store_clocked(config)?.store)
}

/// Opens the configured store with the clock its hosts read.
pub fn open_store_clocked(config: &Config) -> anyhow::Result<crate::store::Opened> {
    crate::store::open(&config.store)
        .with_context(|| format!("opening database {}", config.store.describe()))
}

/// Runs `f` with the configured store, closing it after.
pub async fn with_store<F, Fut>(config: &Config, f: F) -> anyhow::Result<()>
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let store = open_store(config)?;
    let result = f(Arc::clone(&store)).await;
    store.close().await?;
    result
}

async fn run(config: Config) -> anyhow::Result<()> {
    let crate::store::Opened { store, clock } = open_store_clocked(&config)?;
    let api_config = config.api.clone();
    let host = Arc::new(Host::new(config, Arc::clone(&store), clock)?);
    let (stop_api, mut api_stopped) = tokio::sync::watch::channel(false);
    let api = match api_config.enabled {
        true => Some(
            crate::api::start(&host, api_config, async move {
                let _ = api_stopped.wait_for(|s| *s).await;
            })
            .await?
            .1,
        ),
        false => None,
    };
    let reloader = tokio::spawn(reload_on_sighup(Arc::clone(&host)));
    let result = host.run(shutdown_signal()).await;
    reloader.abort();
    let _ = stop_api.send(true);
    if let Some(api) = api {
        api.await
            .context("the API task failed")?
            .context("serving the API")?;
    }
    store.close().await.context("closing the database")?;
    result
}

/// Reloads the plugins on every SIGHUP.
async fn reload_on_sighup(host: Arc<Host>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP ({e}): reload plugins through the API");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading plugins");
        match host.reload_plugins().await {
            Ok(r) => tracing::info!(
                added = r.added.len(),
                replaced = r.replaced.len(),
                removed = r.removed.len(),
                rejected = r.rejected.len(),
                "plugins reloaded"
            ),
            Err(e) => tracing::error!("reloading plugins: {e:#}"),
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

async fn enqueue(config: &Config, args: EnqueueArgs) -> anyhow::Result<()> {
    if let Some(batch) = &args.batch {
        return enqueue_batch(config, batch, args.json).await;
    }
    let kind = args.kind.clone().context("KIND is required")?;
    validate_kind(&kind).map_err(anyhow::Error::msg)?;
    let text = match (&args.payload, &args.payload_file) {
        (Some(p), _) if p == "-" => {
            std::io::read_to_string(std::io::stdin()).context("--payload -: reading stdin")?
        }
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("--payload-file: reading {}", f.display()))?,
        (None, None) => {
            anyhow::bail!("give the payload: --payload JSON, --payload - or --payload-file FILE")
        }
    };
    let payload = canonical_json(&text).map_err(|e| anyhow::anyhow!("--payload: {e}"))?;
    let now = SystemClock.now();
    let run_at = match (&args.delay, &args.run_at) {
        (Some(d), _) => {
            Some(now.plus(parse_duration(d).map_err(|e| anyhow::anyhow!("--delay: {e}"))?))
        }
        (_, Some(t)) => {
            Some(Timestamp::parse_rfc3339(t).map_err(|e| anyhow::anyhow!("--run-at: {e}"))?)
        }
        _ => None,
    };
    let mut job = NewJob {
        kind: kind.clone(),
        queue: args.queue,
        payload,
        idempotency_key: args.idempotency_key,
        priority: args.priority,
        run_at,
        max_attempts: args.max_attempts,
        callback_url: args.callback,
        concurrency_key: args.concurrency_key,
        concurrency_limit: args.concurrency_limit,
        schedule_id: None,
    };
    crate::enqueue::prepare(
        &mut job,
        config.plugin(&kind),
        &config.outbox.callback_allow,
    )
    .map_err(|e| {
        let flag = match e.field {
            "callback_url" => "--callback".to_owned(),
            "kind" => "KIND".to_owned(),
            field => format!("--{}", field.replace('_', "-")),
        };
        anyhow::anyhow!("{flag}: {}", e.message)
    })?;
    warn_without_plugin(config, &kind);
    let store = open_store(config)?;
    let result = store.enqueue(vec![job], now).await;
    store.close().await?;
    let enqueued = result?.pop().context("the store returned no id")?;
    if args.json {
        outln!("{}", serde_json::to_string(&enqueued)?)?;
    } else if enqueued.created {
        outln!("{}", enqueued.id)?;
    } else {
        eprintln!(
            "note: idempotency key already used: returning existing job {}",
            enqueued.id
        );
        outln!("{}", enqueued.id)?;
    }
    Ok(())
}
