//! `jobbox bench`: throughput and latency of the full path on a fresh
//! temporary database, next to the two floors this machine allows.
//!
//! - **end to end**: N jobs are batch-inserted, then a [`Host`] drains them:
//!   claim → instantiate → run the real plugin → fenced completion,
//!   committed durably.
//! - **store floor**: the same N jobs claimed and completed through the same
//!   store with the same concurrency, no Wasm.
//! - **sandbox floor**: the same plugin instantiated and called N times at
//!   the same concurrency, no store.
//! - `--latency`: jobs enqueued one at a time into an idle host; reports
//!   enqueue → start.
//! - `--keys K` / `--rate R`: the end-to-end run with every job under one
//!   of K concurrency keys, or with the plugin rate-limited, to show what
//!   the claim's safeguards cost when in use.
//! - `--contention K`: `kv-counter` jobs over K kv keys at default
//!   settings, then again with the key as the jobs' concurrency key:
//!   throughput, wasted attempts, discarded jobs, and the counters checked.

mod api;
mod dashboard;
mod scale;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::executor::Host;
use crate::job::{AttemptOutcome, ClaimedJob, Finish, NewJob, canonical_json};
use crate::sandbox::{Limits, Plugin, RunContext, Sandbox, SandboxConfig};
use crate::store::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use crate::store::{ClaimRequest, Store, StoreOptions};
use crate::time::{Clock, SystemClock};

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("mode")
        .multiple(false)
        .args(["latency", "runaway", "schedule", "contention", "http", "overhead", "observe", "dashboard", "idle", "startup"])
))]
pub struct BenchArgs {
    /// Jobs to run.
    #[arg(short = 'n', long = "jobs", default_value_t = 100_000)]
    pub n: usize,
    /// The plugin kind to run (from the configured plugins directory).
    #[arg(long, default_value = "echo")]
    pub plugin: String,
    /// Every job's payload (JSON).
    #[arg(long, default_value = r#"{"hello":"world"}"#)]
    pub payload: String,
    /// Jobs in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// SQLite synchronous mode.
    #[arg(long, default_value = "full")]
    pub sync: Synchronous,
    /// Measure enqueue → start latency on an idle host instead.
    #[arg(long, conflicts_with = "runaway")]
    pub latency: bool,
    /// Measure how long after its deadline a runaway plugin (one that never
    /// returns, e.g. `spin`) is stopped, with this deadline (e.g. 100ms).
    #[arg(long, value_name = "DEADLINE")]
    pub runaway: Option<String>,
    /// Give every job one of K concurrency keys (limit 1 each).
    #[arg(long, value_name = "K", conflicts_with_all = ["latency", "runaway", "contention"])]
    pub keys: Option<u32>,
    /// Rate-limit the plugin, e.g. "1000000/s" (with a burst of the same).
    #[arg(long, value_name = "RATE", conflicts_with_all = ["latency", "runaway", "contention"])]
    pub rate: Option<String>,
    /// Measure how soon after their fire time the jobs of an `every 1s`
    /// schedule start on an idle host, over this many fires (seconds).
    #[arg(long, value_name = "FIRES", conflicts_with_all = ["latency", "runaway", "contention", "keys", "rate"])]
    pub schedule: Option<u32>,
    /// Run kv-counter jobs over K kv keys, without and with a concurrency
    /// key (-n defaults to 3000 here).
    #[arg(long, value_name = "K", conflicts_with_all = ["latency", "runaway"])]
    pub contention: Option<u32>,
    /// The admin API: jobs/s accepted by `POST /api/jobs` in batches of
    /// 1,000, then submit → result of `POST /api/jobs?wait` on an idle host.
    #[arg(long)]
    pub http: bool,
    /// End-to-end throughput with the API serving and scraped every second
    /// against the same run without it (alternating rounds).
    #[arg(long)]
    pub overhead: bool,
    /// Rounds of each variant of `--overhead`.
    #[arg(long, default_value_t = 3, requires = "overhead")]
    pub rounds: u32,
    /// `/metrics` and `/api/stats` response times with `--plugins` plugins
    /// and `--rows` jobs in the database.
    #[arg(long)]
    pub observe: bool,
    /// Plugins loaded for `--observe` (copies of `--plugin`).
    #[arg(long, default_value_t = 50, requires = "observe")]
    pub plugins: usize,
    /// Jobs in the database for `--observe` and `--dashboard`.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// The dashboard's API calls, page by page, with `--rows` jobs in the
    /// database (and each page in headless Chromium, if available).
    #[arg(long)]
    pub dashboard: bool,
    /// The CPU an idle host with its API uses, over this many seconds.
    #[arg(long, value_name = "SECS")]
    pub idle: Option<u64>,
    /// Start-up of a host with this many plugins (distinct builds of
    /// `--plugin`), with an empty compile cache and then a warm one.
    #[arg(long, value_name = "PLUGINS")]
    pub startup: Option<usize>,
    /// Scale-out on PostgreSQL: `--hosts` host processes on fresh
    /// databases made on this server drain `-n` jobs (needs a postgres://
    /// URL of a database the bench may connect to and create databases
    /// from).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Host processes per round of `--store`, e.g. 1,2,4.
    #[arg(long, default_value = "1,2,4", requires = "store")]
    pub hosts: String,
    /// After the `--store` rounds, one more on the most hosts (at least
    /// two) in which one is killed with SIGKILL a third of the way: its
    /// jobs must be rescued after the lease, none completed twice.
    #[arg(long, requires = "store")]
    pub kill: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Percentiles of a distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(mut values: Vec<Duration>) -> Percentiles {
        values.sort_unstable();
        let at = |q: f64| -> f64 {
            if values.is_empty() {
                return 0.0;
            }
            let i = ((values.len() as f64 - 1.0) * q).round() as usize;
            values[i].as_secs_f64() * 1000.0
        };
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

#[derive(Debug, Serialize)]
struct ThroughputReport {
    n: usize,
    plugin: String,
    /// Concurrency keys in use (`--keys`).
    keys: Option<u32>,
    /// The plugin's rate limit (`--rate`).
    rate: Option<String>,
    concurrency: u32,
    sync: Synchronous,
    cores: usize,
    enqueue_per_sec: f64,
    jobs_per_sec: f64,
    store_floor_jobs_per_sec: f64,
    sandbox_floor_jobs_per_sec: f64,
    ratio_to_lower_floor: f64,
    queue_wait_ms: Percentiles,
    run_ms: Percentiles,
    /// From the attempt's start to its outcome being durable.
    attempt_ms: Percentiles,
    /// The process's peak resident set size (VmHWM), in MiB.
    peak_rss_mib: Option<f64>,
}

#[derive(Debug, Serialize)]
struct RunawayReport {
    n: usize,
    plugin: String,
    deadline_ms: f64,
    /// How long after the deadline the plugin was stopped.
    overshoot_ms: Percentiles,
}

#[derive(Debug, Serialize)]
struct LatencyReport {
    n: usize,
    plugin: String,
    sync: Synchronous,
    enqueue_to_start_ms: Percentiles,
    enqueue_to_durable_ms: Percentiles,
}

pub async fn main(config: &Config, args: BenchArgs) -> anyhow::Result<()> {
    if args.n == 0 {
        bail!("-n must be at least 1");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let plugin_path = config
        .host
        .plugins_dir
        .join(format!("{}.wasm", args.plugin));
    if !plugin_path.is_file() {
        bail!(
            "no plugin {} to benchmark (build the plugins first, or pass --config with a plugins_dir)",
            plugin_path.display()
        );
    }
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let mut config = config.clone();
    config.host.concurrency = args.concurrency;
    sqlite(&mut config).synchronous = args.sync;
    config.defaults.concurrency = args.concurrency;
    for p in config.plugins.values_mut() {
        p.concurrency = p.concurrency.min(args.concurrency);
    }
    let payload = canonical_json(&args.payload).map_err(|e| anyhow::anyhow!("--payload: {e}"))?;
    let payload = payload.as_str();

    if let Some(store) = &args.store {
        let url = scale::postgres_url(store)?;
        let r = scale::scale(&config, &args, &url, tmp.path()).await?;
        return print(&r, args.json, || scale::text(&r));
    }
    if args.http {
        let r = api::http(&config, &args, tmp.path()).await?;
        return print(&r, args.json, || {
            let p = &r.submit_to_result_ms;
            format!(
                "http ({plugin}): POST /api/jobs in batches of {batch} over {c} connections: {rate:.0} jobs/s durably accepted ({jobs} jobs)\n\
                 POST /api/jobs?wait=10s, one {plugin} job on an idle host ({n} calls): submit → result p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                p.p50,
                p.p90,
                p.p99,
                p.max,
                plugin = r.plugin,
                batch = r.batch,
                c = r.connections,
                rate = r.enqueue_jobs_per_sec,
                jobs = r.jobs,
                n = r.waits,
            )
        });
    }
    if args.overhead {
        let r = api::overhead(&config, &args, tmp.path(), args.rounds).await?;
        return print(&r, args.json, || {
            let list = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "overhead ({} jobs of {}, {} rounds): without the API {} jobs/s; with the API and a scrape every second ({} scrapes) {} jobs/s, ratio of medians {:.3}; with the event stream read too ({} job events, {} missed) {} jobs/s, ratio {:.3}",
                r.n,
                r.plugin,
                r.rounds,
                list(&r.without_api),
                r.scrapes,
                list(&r.with_api_and_scrapes),
                r.ratio,
                r.events,
                r.events_missed,
                list(&r.with_event_stream),
                r.ratio_with_event_stream
            )
        });
    }
    if args.observe {
        let r = api::observe(&config, &args, tmp.path(), args.plugins, args.rows).await?;
        return print(&r, args.json, || {
            let line = |name: &str, p: &Percentiles| {
                format!(
                    "  {name:<11} p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
                    p.p50, p.p90, p.p99, p.max
                )
            };
            format!(
                "observe ({} plugins, {} jobs in the database, {} requests each):\n{}\n{}\n{}\n{}",
                r.plugins,
                r.jobs_in_database,
                r.requests,
                line("/metrics", &r.metrics_ms),
                line("/api/stats", &r.stats_ms),
                line("/api/jobs", &r.jobs_ms),
                line("refresh", &r.count_refresh_ms),
            )
        });
    }
    if args.dashboard {
        let r = dashboard::dashboard(&config, &args, tmp.path(), args.rows).await?;
        return print(&r, args.json, || {
            let line = |c: &dashboard::CallTimes| {
                format!(
                    "  {:<58} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
                    c.name, c.ms.p50, c.ms.p99, c.ms.max
                )
            };
            let block =
                |v: &[dashboard::CallTimes]| v.iter().map(line).collect::<Vec<_>>().join("\n");
            format!(
                "dashboard ({} jobs in the database, {} rounds)\neach API call alone:\n{}\neach page's calls at once:\n{}\neach page in headless Chromium, navigation to data drawn:\n{}",
                r.jobs_in_database,
                r.rounds,
                block(&r.calls),
                block(&r.pages),
                match &r.browser_skipped {
                    Some(why) => format!("  skipped: {why}"),
                    None => block(&r.browser),
                }
            )
        });
    }
    if let Some(n) = args.startup {
        let r = startup(&config, &args, tmp.path(), n)?;
        return print(&r, args.json, || {
            format!(
                "startup ({} plugins of {} KiB, distinct builds of {}): cold {:.0} ms ({} compiled), warm {:.0} ms ({} compiled, {} from the cache)",
                r.plugins,
                r.component_kib,
                r.plugin,
                r.cold_ms,
                r.cold_compiled,
                r.warm_ms,
                r.warm_compiled,
                r.warm_cached
            )
        });
    }
    if let Some(secs) = args.idle {
        if secs == 0 {
            bail!("--idle must be at least 1 second");
        }
        let r = api::idle(&config, tmp.path(), Duration::from_secs(secs)).await?;
        return print(&r, args.json, || {
            format!(
                "idle (a host with its API and no work, {:.0} s): {:.0} ms of CPU, {:.3}% of a core",
                r.seconds, r.cpu_ms, r.core_percent
            )
        });
    }

    if let Some(fires) = args.schedule {
        sqlite(&mut config).path = tmp.path().join("schedule.db");
        let report = schedule_latency(&config, &args, fires).await?;
        return print(&report, args.json, || {
            let p = &report.fire_to_start_ms;
            format!(
                "schedule ({} fires of an every-1s schedule, {}): fire time → job start p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                report.fires, report.plugin, p.p50, p.p90, p.p99, p.max
            )
        });
    }

    if let Some(keys) = args.contention {
        let report = contention(&config, &args, keys, tmp.path()).await?;
        return print(&report, args.json, || {
            let mut text = format!(
                "contention: {} kv-counter jobs over {} keys, concurrency {}, synchronous={:?}",
                report.n, report.keys, report.concurrency, report.sync
            );
            for r in [&report.without_key, &report.with_key] {
                text.push_str(&format!(
                    "\n  {:<24} {:>8.0} jobs/s  {:>6.2} wasted attempts per job ({} kv conflicts)  {} discarded",
                    r.variant, r.jobs_per_sec, r.wasted_per_job, r.kv_conflicts, r.discarded
                ));
            }
            text
        });
    }

    if let Some(deadline) = &args.runaway {
        let deadline = crate::config::parse_duration(deadline).map_err(anyhow::Error::msg)?;
        let report = runaway(&config, &args, deadline).await?;
        return print(&report, args.json, || {
            let p = &report.overshoot_ms;
            format!(
                "runaway ({} runs of {}, deadline {} ms): stopped after the deadline by p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                report.n, report.plugin, report.deadline_ms, p.p50, p.p90, p.p99, p.max
            )
        });
    }

    if args.latency {
        sqlite(&mut config).path = tmp.path().join("latency.db");
        let report = latency(&config, &args, payload).await?;
        return print(&report, args.json, || {
            let (p, d) = (&report.enqueue_to_start_ms, &report.enqueue_to_durable_ms);
            format!(
                "latency ({} jobs, {}, sync={:?}): enqueue → start p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n\
                 {:16}enqueue → durable completion p50 {:.2} ms, p99 {:.2} ms",
                report.n, report.plugin, report.sync, p.p50, p.p90, p.p99, p.max, "", d.p50, d.p99
            )
        });
    }

    // End to end.
    if let Some(rate) = &args.rate {
        let (count, period) =
            crate::policy::parse_rate(rate).map_err(|e| anyhow::anyhow!("--rate: {e}"))?;
        let mut settings = config.plugin(&args.plugin).clone();
        settings.rate = Some(crate::policy::RateLimit {
            count,
            period,
            burst: count,
        });
        config.plugins.insert(args.plugin.clone(), settings);
    }
    sqlite(&mut config).path = tmp.path().join("e2e.db");
    let store = Arc::new(SqliteStore::open(&sqlite_of(&config))?);
    let enqueue_secs = fill(store.as_ref(), &args, payload).await?;
    let host = host_on(&config, &store)?;
    if host.plugins().get(&args.plugin).is_none() {
        bail!(
            "plugin {} did not load: {:?}",
            args.plugin,
            host.plugins().rejected()
        );
    }
    host.metrics().keep_samples();
    let started = Instant::now();
    let runner = host.spawn();
    let mut finished = 0;
    while finished < args.n as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let m = host.metrics();
        finished = AttemptOutcome::ALL.iter().map(|o| m.outcome(*o)).sum();
        if runner.is_finished() {
            bail!("the host stopped early");
        }
    }
    let e2e = started.elapsed();
    runner.stop().await?;
    let completed = host.metrics().outcome(AttemptOutcome::Completed);
    if completed != args.n as u64 {
        bail!(
            "only {completed} of {} jobs completed: {:?}",
            args.n,
            host.metrics().snapshot().outcomes
        );
    }
    let samples = host.metrics().take_samples();
    drop(host);
    store.close().await?;

    let store_floor = store_floor(&config, &args, payload, tmp.path()).await?;
    let sandbox_floor = sandbox_floor(&config, &args, payload).await?;

    let jobs_per_sec = args.n as f64 / e2e.as_secs_f64();
    let report = ThroughputReport {
        n: args.n,
        plugin: args.plugin.clone(),
        keys: args.keys,
        rate: args.rate.clone(),
        concurrency: args.concurrency,
        sync: args.sync,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        enqueue_per_sec: args.n as f64 / enqueue_secs,
        jobs_per_sec,
        store_floor_jobs_per_sec: store_floor,
        sandbox_floor_jobs_per_sec: sandbox_floor,
        ratio_to_lower_floor: jobs_per_sec / store_floor.min(sandbox_floor),
        queue_wait_ms: Percentiles::of(samples.iter().map(|s| s.queue_wait).collect()),
        run_ms: Percentiles::of(samples.iter().map(|s| s.run).collect()),
        attempt_ms: Percentiles::of(samples.iter().map(|s| s.durable - s.started).collect()),
        peak_rss_mib: peak_rss_mib(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_throughput(&report);
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct StartupReport {
    plugin: String,
    plugins: usize,
    component_kib: usize,
    /// `Host::new` (engine, plugins loaded) with an empty cache.
    cold_ms: f64,
    cold_compiled: u64,
    /// The same again, the cache filled.
    warm_ms: f64,
    warm_compiled: u64,
    warm_cached: u64,
}

/// Makes `n` distinct builds of `--plugin` (the same code, each with a
/// custom section of its own, so each has its own content hash) and times
/// a host's start twice: cold, then warm.
fn startup(
    config: &Config,
    args: &BenchArgs,
    dir: &std::path::Path,
    n: usize,
) -> anyhow::Result<StartupReport> {
    if n == 0 {
        bail!("--startup must be at least 1");
    }
    let source = config
        .host
        .plugins_dir
        .join(format!("{}.wasm", args.plugin));
    let bytes = std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
    let mut config = config.clone();
    config.host.plugins_dir = dir.join("startup-plugins");
    sqlite(&mut config).path = dir.join("startup.db");
    config.host.compile_cache = true;
    config.host.cache_dir = Some(dir.join("startup-cache"));
    std::fs::create_dir_all(&config.host.plugins_dir)?;
    for i in 0..n {
        let mut variant = bytes.clone();
        variant.extend(custom_section("jobbox-bench", format!("{i}").as_bytes()));
        let path = config
            .host
            .plugins_dir
            .join(format!("{}-{i:02}.wasm", args.plugin));
        std::fs::write(path, variant)?;
    }
    let store = Arc::new(SqliteStore::open(&sqlite_of(&config))?);
    let time = || -> anyhow::Result<(f64, u64, u64)> {
        let t0 = Instant::now();
        let host = host_on(&config, &store)?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let loaded = host.plugins().loaded().count();
        if loaded != n {
            bail!(
                "{loaded} of {n} plugins loaded: {:?}",
                host.plugins().rejected()
            );
        }
        let (_, compiled, cached) = host.compile_stats();
        Ok((ms, compiled, cached))
    };
    let (cold_ms, cold_compiled, _) = time()?;
    let (warm_ms, warm_compiled, warm_cached) = time()?;
    Ok(StartupReport {
        plugin: args.plugin.clone(),
        plugins: n,
        component_kib: bytes.len() / 1024,
        cold_ms,
        cold_compiled,
        warm_ms,
        warm_compiled,
        warm_cached,
    })
}

/// A custom section (id 0): its name and contents, length-prefixed.
fn custom_section(name: &str, contents: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(contents);
    let mut section = vec![0];
    leb128(body.len(), &mut section);
    section.extend(body);
    section
}

/// A host on `store`, with the system clock.
fn host_on(config: &Config, store: &Arc<SqliteStore>) -> anyhow::Result<Arc<Host>> {
    Ok(Arc::new(Host::new(
        config.clone(),
        Arc::clone(store) as Arc<dyn Store>,
        Arc::new(SystemClock),
    )?))
}

/// Prints a report as JSON or as the text `text` makes.
fn print<R: Serialize>(
    report: &R,
    json: bool,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}

fn print_throughput(r: &ThroughputReport) {
    println!(
        "jobbox bench: {} jobs of {}, concurrency {}, synchronous={:?}, {} cores{}{}",
        r.n,
        r.plugin,
        r.concurrency,
        r.sync,
        r.cores,
        r.keys
            .map(|k| format!(", {k} concurrency keys"))
            .unwrap_or_default(),
        r.rate
            .as_ref()
            .map(|k| format!(", rate {k}"))
            .unwrap_or_default()
    );
    println!(
        "  enqueue (batched):     {:>10.0} jobs/s",
        r.enqueue_per_sec
    );
    println!("  end to end:            {:>10.0} jobs/s", r.jobs_per_sec);
    println!(
        "  store floor (no wasm): {:>10.0} jobs/s",
        r.store_floor_jobs_per_sec
    );
    println!(
        "  sandbox floor (no db): {:>10.0} jobs/s",
        r.sandbox_floor_jobs_per_sec
    );
    println!("  ratio to lower floor:  {:>10.2}", r.ratio_to_lower_floor);
    if let Some(rss) = r.peak_rss_mib {
        println!("  peak RSS:              {rss:>10.1} MiB");
    }
    for (name, p) in [
        ("queue wait", &r.queue_wait_ms),
        ("run", &r.run_ms),
        ("attempt", &r.attempt_ms),
    ] {
        println!(
            "  {name:<11} ms: p50 {:>8.2}  p90 {:>8.2}  p99 {:>8.2}  max {:>8.2}",
            p.p50, p.p90, p.p99, p.max
        );
    }
}

/// The peak resident set size of this process, from `/proc`.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Runs a plugin that never returns `n` times (at the configured
/// concurrency) with `deadline`, and measures how late each was stopped.
async fn runaway(
    config: &Config,
    args: &BenchArgs,
    deadline: Duration,
) -> anyhow::Result<RunawayReport> {
    let plugin_name = if args.plugin == "echo" {
        "spin"
    } else {
        args.plugin.as_str()
    };
    let mut limits = config.plugin(plugin_name).limits;
    limits.timeout = deadline;
    limits.fuel = u64::MAX / 2;
    let (_sandbox, plugin) = load_alone(config, args, plugin_name, limits)?;
    let plugin = Arc::new(plugin);
    let n = args.n.min(1000);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..args.concurrency.min(n as u32) {
        let (plugin, next, job) = (
            Arc::clone(&plugin),
            Arc::clone(&next),
            bench_job(plugin_name, "{}"),
        );
        tasks.spawn(async move {
            let mut overshoots = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let report = plugin
                    .run(&job, &RunContext::default(), std::future::pending())
                    .await;
                if !matches!(report.result, Err(crate::sandbox::RunError::Timeout(_))) {
                    bail!("runaway: expected a timeout, got {:?}", report.result);
                }
                overshoots.push(report.elapsed.saturating_sub(deadline));
            }
            anyhow::Ok(overshoots)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok(RunawayReport {
        n,
        plugin: plugin_name.to_owned(),
        deadline_ms: deadline.as_secs_f64() * 1000.0,
        overshoot_ms: Percentiles::of(all),
    })
}

/// Inserts `args.n` jobs in batches (each under one of `--keys` keys, if
/// given); returns the seconds it took.
async fn fill(store: &dyn Store, args: &BenchArgs, payload: &str) -> anyhow::Result<f64> {
    let template = NewJob::new(&args.plugin, payload).map_err(anyhow::Error::msg)?;
    let keys = args.keys;
    fill_with(store, args.n, |i| NewJob {
        concurrency_key: keys.map(|k| format!("key-{}", i % k as usize)),
        ..template.clone()
    })
    .await
}

/// Inserts `n` jobs made by `make(i)` in batches; returns the seconds it
/// took.
/// Installs `plugin` (from the configured plugins directory) under each
/// of `kinds` in `dir/plugins`, and points `config` there.
fn plugin_copies(
    config: &mut Config,
    plugin: &str,
    dir: &std::path::Path,
    kinds: &[String],
) -> anyhow::Result<()> {
    let source = config.host.plugins_dir.join(format!("{plugin}.wasm"));
    let plugin_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir)?;
    for kind in kinds {
        std::fs::copy(&source, plugin_dir.join(format!("{kind}.wasm")))
            .with_context(|| format!("copying {}", source.display()))?;
    }
    config.host.plugins_dir = plugin_dir;
    Ok(())
}

async fn fill_with(
    store: &dyn Store,
    n: usize,
    make: impl Fn(usize) -> NewJob,
) -> anyhow::Result<f64> {
    const BATCH: usize = 1000;
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(BATCH);
        let batch = (i..i + k).map(&make).collect();
        store.enqueue(batch, SystemClock.now()).await?;
        i += k;
    }
    Ok(started.elapsed().as_secs_f64())
}

#[derive(Debug, Serialize)]
struct ScheduleReport {
    fires: u32,
    plugin: String,
    /// From a fire's nominal time to its job's claim (millisecond
    /// timestamps).
    fire_to_start_ms: Percentiles,
}

/// Runs an idle host with one `every 1s` schedule for `fires` fires.
async fn schedule_latency(
    config: &Config,
    args: &BenchArgs,
    fires: u32,
) -> anyhow::Result<ScheduleReport> {
    if fires == 0 {
        bail!("--schedule must be at least 1");
    }
    let store = Arc::new(SqliteStore::open(&sqlite_of(config))?);
    let text = format!(
        "[[schedules]]\nid = \"bench\"\nevery = \"1s\"\nkind = {:?}\npayload = {{ hello = \"world\" }}\n",
        args.plugin
    );
    let defs = crate::schedule::parse_file(std::path::Path::new("bench.toml"), &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let host = host_on(config, &store)?;
    let runner = host.spawn();
    // Applied once the host runs, so that no fire falls in its start-up.
    crate::admin::apply_schedules(store.as_ref(), config, &defs, false, SystemClock.now()).await?;
    host.wake_scheduler();
    let filter = crate::job::JobFilter {
        limit: Some(fires + 10),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(u64::from(fires) + 10);
    let jobs = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let jobs: Vec<_> = store
            .list_jobs(filter.clone())
            .await?
            .into_iter()
            .filter(|j| j.attempted_at.is_some())
            .collect();
        if jobs.len() >= fires as usize {
            break jobs;
        }
        if Instant::now() > deadline || runner.is_finished() {
            bail!("only {} of {fires} fires started", jobs.len());
        }
    };
    runner.stop().await?;
    drop(host);
    store.close().await?;
    let mut late = Vec::new();
    for j in jobs.iter().take(fires as usize) {
        let nominal = j
            .idempotency_key
            .strip_prefix("schedule:bench:")
            .and_then(|t| crate::time::Timestamp::parse_rfc3339(t).ok())
            .context("a schedule job's key names its fire time")?;
        let started = j.attempted_at.expect("filtered above");
        late.push(started.since(nominal));
    }
    Ok(ScheduleReport {
        fires,
        plugin: args.plugin.clone(),
        fire_to_start_ms: Percentiles::of(late),
    })
}

#[derive(Debug, Serialize)]
struct ContentionReport {
    n: usize,
    keys: u32,
    concurrency: u32,
    sync: Synchronous,
    without_key: ContentionRun,
    with_key: ContentionRun,
}

#[derive(Debug, Serialize)]
struct ContentionRun {
    variant: &'static str,
    jobs_per_sec: f64,
    /// Attempts beyond the one that completed each job.
    wasted_per_job: f64,
    kv_conflicts: u64,
    discarded: u64,
}

/// `kv-counter` jobs over `keys` kv keys, at the configured (default)
/// settings, without and then with the key as concurrency key.
async fn contention(
    config: &Config,
    args: &BenchArgs,
    keys: u32,
    dir: &std::path::Path,
) -> anyhow::Result<ContentionReport> {
    if keys == 0 {
        bail!("--contention must be at least 1");
    }
    let kind = "kv-counter";
    if !config.host.plugins_dir.join("kv-counter.wasm").is_file() {
        bail!(
            "no plugin {} to benchmark contention with",
            config.host.plugins_dir.join("kv-counter.wasm").display()
        );
    }
    // -n's default is the throughput run's; contention runs are smaller.
    let n = if args.n == 100_000 { 3000 } else { args.n };
    let mut config = config.clone();
    let mut settings = config.plugin(kind).clone();
    settings.grants.kv = true;
    config.plugins.insert(kind.to_owned(), settings);
    let mut runs = Vec::new();
    for (variant, keyed) in [
        ("without a concurrency key", false),
        ("with a concurrency key", true),
    ] {
        let mut config = config.clone();
        sqlite(&mut config).path = dir.join(format!("contention-{keyed}.db"));
        let store = Arc::new(SqliteStore::open(&sqlite_of(&config))?);
        fill_with(store.as_ref(), n, |i| {
            let key = format!("counter-{}", i % keys as usize);
            NewJob {
                concurrency_key: keyed.then(|| key.clone()),
                ..NewJob::new(kind, &format!("{{\"key\":\"{key}\"}}")).expect("valid JSON")
            }
        })
        .await?;
        let host = host_on(&config, &store)?;
        if host.plugins().get(kind).is_none() {
            bail!(
                "plugin {kind} did not load: {:?}",
                host.plugins().rejected()
            );
        }
        let started = Instant::now();
        let runner = host.spawn();
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let c = store.counts().await?;
            if c.completed + c.discarded + c.cancelled == n as u64 {
                break;
            }
            if runner.is_finished() {
                bail!("the host stopped early");
            }
        }
        let secs = started.elapsed().as_secs_f64();
        runner.stop().await?;
        let m = host.metrics().snapshot();
        let attempts: u64 = m.outcomes.values().sum();
        let counts = store.counts().await?;
        // Every increment must have landed exactly once.
        let mut total = 0u64;
        for k in 0..keys {
            let entry = store
                .kv_get(kind.to_owned(), format!("counter-{k}"))
                .await?;
            total += entry
                .value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if total != counts.completed {
            bail!(
                "{variant}: the counters sum to {total}, but {} jobs completed",
                counts.completed
            );
        }
        drop(host);
        store.close().await?;
        runs.push(ContentionRun {
            variant,
            jobs_per_sec: n as f64 / secs,
            wasted_per_job: attempts.saturating_sub(counts.completed) as f64 / n as f64,
            kv_conflicts: m.kv_conflicts,
            discarded: counts.discarded,
        });
    }
    let with_key = runs.pop().expect("two runs");
    let without_key = runs.pop().expect("two runs");
    Ok(ContentionReport {
        n,
        keys,
        concurrency: args.concurrency,
        sync: args.sync,
        without_key,
        with_key,
    })
}

/// Claim + complete through the store alone, with the host's concurrency.
async fn store_floor(
    config: &Config,
    args: &BenchArgs,
    payload: &str,
    dir: &std::path::Path,
) -> anyhow::Result<f64> {
    let mut opts = sqlite_of(config);
    opts.path = dir.join("store-floor.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&opts)?);
    fill(store.as_ref(), args, payload).await?;
    let slots = Arc::new(Semaphore::new(args.concurrency as usize));
    let started = Instant::now();
    let mut done = 0usize;
    let mut tasks = JoinSet::new();
    while done < args.n {
        let free = slots.available_permits() as u32;
        if free == 0 {
            drop(slots.acquire().await?);
            continue;
        }
        let now = SystemClock.now();
        let jobs = store
            .claim(ClaimRequest {
                now,
                limit: free,
                exclude_kinds: Vec::new(),
                lease: config.host.lease,
                worker: "bench".into(),
                rates: Vec::new(),
            })
            .await?
            .jobs;
        if jobs.is_empty() {
            match tasks.join_next().await {
                Some(r) => r??,
                None => bail!("store floor: ran out of jobs after {done}"),
            }
            continue;
        }
        done += jobs.len();
        for job in jobs {
            let permit = Arc::clone(&slots).acquire_owned().await?;
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                let now = SystemClock.now();
                store
                    .finish(Finish::completed(&job, job.payload.clone(), now))
                    .await?;
                drop(permit);
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = started.elapsed().as_secs_f64();
    let counts = store.counts().await?;
    store.close().await?;
    if counts.completed != args.n as u64 {
        bail!("store floor: {} of {} completed", counts.completed, args.n);
    }
    Ok(args.n as f64 / secs)
}

/// Instantiate + call the plugin N times, with the host's concurrency.
async fn sandbox_floor(config: &Config, args: &BenchArgs, payload: &str) -> anyhow::Result<f64> {
    let limits = config.plugin(&args.plugin).limits;
    let (_sandbox, plugin) = load_alone(config, args, &args.plugin, limits)?;
    let plugin = Arc::new(plugin);
    let next = Arc::new(AtomicUsize::new(0));
    let job = bench_job(&args.plugin, payload);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..args.concurrency {
        let (plugin, next, mut job, n) =
            (Arc::clone(&plugin), Arc::clone(&next), job.clone(), args.n);
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                job.id += 1;
                let report = plugin
                    .run(&job, &RunContext::default(), std::future::pending())
                    .await;
                if let Err(e) = report.result {
                    bail!("sandbox floor: plugin failed: {e}");
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(args.n as f64 / started.elapsed().as_secs_f64())
}

/// A sandbox of its own and `kind` loaded in it, as the host would.
fn load_alone(
    config: &Config,
    args: &BenchArgs,
    kind: &str,
    limits: Limits,
) -> anyhow::Result<(Sandbox, Plugin)> {
    let sandbox = Sandbox::new(&SandboxConfig {
        epoch_tick: config.host.epoch_tick,
        pooling: config.host.pooling,
        max_instances: args.concurrency.saturating_mul(2).saturating_add(8),
        max_memory: config.max_memory(),
        // The host's own cache: a big plugin is compiled once, not per
        // run of the bench.
        cache_dir: config.cache_dir(),
    })?;
    let path = config.host.plugins_dir.join(format!("{kind}.wasm"));
    let plugin = sandbox
        .load(kind, &path, limits)
        .with_context(|| format!("loading {}", path.display()))?;
    Ok((sandbox, plugin))
}

/// A claimed job for runs that bypass the store.
fn bench_job(kind: &str, payload: &str) -> ClaimedJob {
    ClaimedJob::detached(kind, payload, "bench", SystemClock.now())
}

/// Enqueue one job at a time into an idle host; enqueue → start.
async fn latency(
    config: &Config,
    args: &BenchArgs,
    payload: &str,
) -> anyhow::Result<LatencyReport> {
    let store = Arc::new(SqliteStore::open(&sqlite_of(config))?);
    let host = host_on(config, &store)?;
    host.metrics().keep_samples();
    let runner = host.spawn();
    let n = args.n.min(2000);
    let template = NewJob::new(&args.plugin, payload).map_err(anyhow::Error::msg)?;
    let mut starts = Vec::with_capacity(n);
    let mut durables = Vec::with_capacity(n);
    for i in 0..n {
        // Let the host go idle between jobs.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let t0 = Instant::now();
        let id = host.enqueue(vec![template.clone()]).await?[0].id;
        let sample = loop {
            if let Some(s) = host.metrics().take_samples().pop() {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("job {id} ({i} of {n}) did not complete within 10s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        if sample.job_id != id {
            bail!(
                "unexpected sample for job {} while waiting for {id}",
                sample.job_id
            );
        }
        starts.push(sample.started.saturating_duration_since(t0));
        durables.push(sample.durable.saturating_duration_since(t0));
    }
    runner.stop().await?;
    drop(host);
    store.close().await?;
    Ok(LatencyReport {
        n,
        plugin: args.plugin.clone(),
        sync: args.sync,
        enqueue_to_start_ms: Percentiles::of(starts),
        enqueue_to_durable_ms: Percentiles::of(durables),
    })
}

/// The SQLite settings the bench runs with, made the config's store: the
/// config's own if it names SQLite, else the defaults.
pub(crate) fn sqlite(config: &mut Config) -> &mut SqliteOptions {
    if !matches!(config.store, StoreOptions::Sqlite(_)) {
        config.store = StoreOptions::Sqlite(SqliteOptions::new(config.base.join("jobbox.db")));
    }
    match &mut config.store {
        StoreOptions::Sqlite(o) => o,
        StoreOptions::Postgres(_) => unreachable!("made SQLite above"),
    }
}

/// The config's SQLite settings (the defaults if it names PostgreSQL).
pub(crate) fn sqlite_of(config: &Config) -> SqliteOptions {
    let mut config = config.clone();
    sqlite(&mut config).clone()
}
