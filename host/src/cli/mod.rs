//! The `jobbox` command line. `main.rs` parses nothing itself: it calls
//! [`main`], which returns an error to print as one line.

mod jobs;
mod outbox;
mod plugins;
mod queues;
mod schedules;

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
use crate::store::sqlite::SqliteStore;
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
    /// The SQLite database (overrides the config's store.path).
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,
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
    /// Measure throughput and latency on a fresh temporary database.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The job kind (the plugin `<kind>.wasm` runs it).
    pub kind: String,
    /// The job's input, as JSON.
    #[arg(long)]
    pub payload: String,
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
        config.store.path = db.clone();
    }
    Ok(config)
}

/// Opens the configured store.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<SqliteStore>> {
    let store = SqliteStore::open(&config.store)
        .with_context(|| format!("opening database {}", config.store.path.display()))?;
    Ok(Arc::new(store))
}

/// Runs `f` with the configured store, closing it after.
pub async fn with_store<F, Fut>(config: &Config, f: F) -> anyhow::Result<()>
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let store = open_store(config)?;
    let result = f(Arc::clone(&store) as Arc<dyn Store>).await;
    store.close().await?;
    result
}

async fn run(config: Config) -> anyhow::Result<()> {
    let store = open_store(&config)?;
    let api_config = config.api.clone();
    let host = Arc::new(Host::new(
        config,
        Arc::clone(&store) as Arc<dyn Store>,
        Arc::new(SystemClock),
    )?);
    let (stop_api, api_stopped) = tokio::sync::watch::channel(false);
    let api = match api_config.enabled {
        true => Some(start_api(&host, api_config, api_stopped).await?),
        false => None,
    };
    let result = host.run(shutdown_signal()).await;
    let _ = stop_api.send(true);
    if let Some(api) = api {
        api.await
            .context("the API task failed")?
            .context("serving the API")?;
    }
    store.close().await.context("closing the database")?;
    result
}

/// Binds the API's listener and serves it on a task of its own until
/// `stop` turns true.
async fn start_api(
    host: &Arc<Host>,
    config: crate::api::ApiConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(config.listen)
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
    let state = crate::api::ApiState::new(Arc::clone(host), config);
    Ok(tokio::spawn(crate::api::serve(
        listener,
        state,
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    )))
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
    validate_kind(&args.kind).map_err(anyhow::Error::msg)?;
    let payload = canonical_json(&args.payload).map_err(|e| anyhow::anyhow!("--payload: {e}"))?;
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
        kind: args.kind.clone(),
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
    crate::enqueue::prepare(&mut job, config.plugin(&args.kind)).map_err(|e| {
        let flag = match e.field {
            "callback_url" => "--callback".to_owned(),
            "kind" => "KIND".to_owned(),
            field => format!("--{}", field.replace('_', "-")),
        };
        anyhow::anyhow!("{flag}: {}", e.message)
    })?;
    let plugin_file = config.host.plugins_dir.join(format!("{}.wasm", args.kind));
    if !plugin_file.is_file() {
        eprintln!(
            "warning: no plugin file {} for kind {:?}; the job will fail until one is added",
            plugin_file.display(),
            args.kind
        );
    }
    let store = open_store(config)?;
    let result = store.enqueue(vec![job], now).await;
    store.close().await?;
    let enqueued = result?.pop().context("the store returned no id")?;
    if args.json {
        println!("{}", serde_json::to_string(&enqueued)?);
    } else if enqueued.created {
        println!("{}", enqueued.id);
    } else {
        eprintln!(
            "note: idempotency key already used: returning existing job {}",
            enqueued.id
        );
        println!("{}", enqueued.id);
    }
    Ok(())
}
