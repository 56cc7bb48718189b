//! The admin API's costs, measured against a real host on a fresh
//! temporary database, over real HTTP on loopback:
//!
//! - `--http`: jobs durably accepted per second through `POST /api/jobs`
//!   in batches of 1,000 (no host loops running: acceptance alone), then
//!   submit → result of one `POST /api/jobs?wait=…` at a time on an idle
//!   host.
//! - `--overhead`: the end-to-end drain without the API, with it serving
//!   and `/metrics` and `/api/stats` scraped every second, and with
//!   `/api/events` read throughout as well (a dashboard open), in turn;
//!   the ratios of the medians.
//! - `--observe`: `/metrics` and `/api/stats` response times with many
//!   plugins and many jobs in the database.
//! - `--idle`: the CPU an idle host (with its API) uses.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;

use super::{BenchArgs, Percentiles, fill_with, host_on, plugin_copies, sqlite, sqlite_of};
use crate::api::ApiConfig;
use crate::api::client::Client;
use crate::config::Config;
use crate::executor::{Host, HostTask};
use crate::job::{AttemptOutcome, NewJob};
use crate::store::Store;
use crate::store::sqlite::SqliteStore;
use crate::time::{Clock, SystemClock};

/// Jobs per `POST /api/jobs` of the batch enqueue.
const BATCH: usize = 1000;

/// A host on its own database, with its API on an ephemeral loopback port.
pub(super) struct Served {
    host: Arc<Host>,
    store: Arc<SqliteStore>,
    pub(super) addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    runner: Option<HostTask>,
}

impl Served {
    /// Opens `config`'s store and serves the API; with `run`, the host's
    /// loops run too.
    pub(super) async fn start(config: &Config, run: bool) -> anyhow::Result<Served> {
        let store = Arc::new(SqliteStore::open(&sqlite_of(config))?);
        let host = host_on(config, &store)?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let api = ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: Some("bench-token-0123456789".into()),
            ..ApiConfig::default()
        };
        let (addr, server) = crate::api::start(&host, api, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await?;
        let runner = run.then(|| host.spawn());
        Ok(Served {
            host,
            store,
            addr,
            stop,
            server,
            runner,
        })
    }

    pub(super) async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(self.addr, Some("bench-token-0123456789")).await
    }

    pub(super) async fn stop(self) -> anyhow::Result<()> {
        if let Some(runner) = self.runner {
            runner.stop().await?;
        }
        let _ = self.stop.send(true);
        self.server.await??;
        drop(self.host);
        self.store.close().await?;
        Ok(())
    }
}

#[derive(Debug, Serialize)]
pub struct HttpReport {
    pub(super) plugin: String,
    /// Jobs accepted through `POST /api/jobs`, in batches of `batch`.
    pub(super) jobs: usize,
    pub(super) batch: usize,
    pub(super) connections: usize,
    /// Jobs durably accepted per second.
    pub(super) enqueue_jobs_per_sec: f64,
    /// Sequential `POST /api/jobs?wait=10s` of one job on an idle host.
    pub(super) waits: usize,
    pub(super) submit_to_result_ms: Percentiles,
}

/// `--http`.
pub async fn http(config: &Config, args: &BenchArgs, dir: &Path) -> anyhow::Result<HttpReport> {
    let mut config = config.clone();
    sqlite(&mut config).path = dir.join("http-enqueue.db");
    let served = Served::start(&config, false).await?;
    let job = serde_json::json!({"kind": args.plugin, "payload": {"hello": "world"}});
    let body = Bytes::from(serde_json::to_vec(&vec![job.clone(); BATCH])?);
    let batches = args.n.div_ceil(BATCH);
    let connections = 2;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (mut client, body, next) = (served.client().await?, body.clone(), Arc::clone(&next));
        senders.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < batches {
                let (status, answer) = client
                    .call(Method::POST, "/api/jobs", Some(body.clone()))
                    .await?;
                if status != StatusCode::OK {
                    return Err(crate::api::client::error_of(status, &answer));
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = senders.join_next().await {
        r??;
    }
    let elapsed = started.elapsed();
    let accepted: u64 = served
        .store
        .queues(SystemClock.now())
        .await?
        .iter()
        .map(|q| q.counts.available)
        .sum();
    let accepted = accepted as usize;
    if accepted != batches * BATCH {
        bail!("{accepted} jobs in the database, {} sent", batches * BATCH);
    }
    served.stop().await?;

    sqlite(&mut config).path = dir.join("http-wait.db");
    let served = Served::start(&config, true).await?;
    let mut client = served.client().await?;
    let one = Bytes::from(serde_json::to_vec(&job)?);
    let waits = args.n.min(1000);
    let mut times = Vec::with_capacity(waits);
    for _ in 0..waits {
        // Let the host go idle between jobs.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let t0 = Instant::now();
        let (status, answer) = client
            .call(Method::POST, "/api/jobs?wait=10s", Some(one.clone()))
            .await?;
        times.push(t0.elapsed());
        let v: serde_json::Value = serde_json::from_slice(&answer)?;
        if status != StatusCode::OK || v["job"]["state"] != "completed" {
            bail!("a waited job did not complete: {status} {v}");
        }
    }
    served.stop().await?;
    Ok(HttpReport {
        plugin: args.plugin.clone(),
        jobs: batches * BATCH,
        batch: BATCH,
        connections,
        enqueue_jobs_per_sec: (batches * BATCH) as f64 / elapsed.as_secs_f64(),
        waits,
        submit_to_result_ms: Percentiles::of(times),
    })
}

#[derive(Debug, Serialize)]
pub struct OverheadReport {
    pub(super) plugin: String,
    pub(super) n: usize,
    pub(super) rounds: u32,
    /// Jobs/s of each round without the API.
    pub(super) without_api: Vec<f64>,
    /// Jobs/s of each round with the API serving and a scrape of
    /// `/metrics` and `/api/stats` every second.
    pub(super) with_api_and_scrapes: Vec<f64>,
    pub(super) scrapes: u64,
    /// Median with / median without.
    pub(super) ratio: f64,
    /// Jobs/s of each round with the scrapes and `/api/events` read
    /// throughout, as by an open dashboard.
    pub(super) with_event_stream: Vec<f64>,
    /// Job events the stream carried in all rounds (two per job: running
    /// and completed), and how many it said its reader missed.
    pub(super) events: u64,
    pub(super) events_missed: u64,
    /// Median with the event stream / median without the API.
    pub(super) ratio_with_event_stream: f64,
}

/// What a drain runs beside the host.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Beside {
    Nothing,
    Scrapes,
    ScrapesAndEvents,
}

/// `--overhead`.
pub async fn overhead(
    config: &Config,
    args: &BenchArgs,
    dir: &Path,
    rounds: u32,
) -> anyhow::Result<OverheadReport> {
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut streamed = Vec::new();
    let mut scrapes = 0;
    let mut events = EventCount::default();
    for round in 0..rounds {
        for beside in [Beside::Nothing, Beside::Scrapes, Beside::ScrapesAndEvents] {
            let mut config = config.clone();
            sqlite(&mut config).path = dir.join(format!("overhead-{round}-{beside:?}.db"));
            let (rate, scraped, read) = drain(&config, args, beside).await?;
            scrapes += scraped;
            events.jobs += read.jobs;
            events.missed += read.missed;
            match beside {
                Beside::Nothing => &mut without,
                Beside::Scrapes => &mut with,
                Beside::ScrapesAndEvents => &mut streamed,
            }
            .push(rate);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(OverheadReport {
        plugin: args.plugin.clone(),
        n: args.n,
        rounds,
        ratio: median(&with) / median(&without),
        ratio_with_event_stream: median(&streamed) / median(&without),
        without_api: without,
        with_api_and_scrapes: with,
        with_event_stream: streamed,
        scrapes,
        events: events.jobs,
        events_missed: events.missed,
    })
}

/// What a reader of `/api/events` saw.
#[derive(Debug, Default)]
struct EventCount {
    jobs: u64,
    missed: u64,
}

/// Reads `/api/events` until the connection closes, counting its job
/// events and the events it says were missed.
async fn read_events(served: &Served) -> anyhow::Result<tokio::task::JoinHandle<EventCount>> {
    let mut client = served.client().await?;
    let res = client.send(Method::GET, "/api/events", None).await?;
    if !res.status().is_success() {
        bail!("/api/events answered {}", res.status());
    }
    Ok(tokio::spawn(async move {
        use http_body_util::BodyExt;
        let _client = client;
        let mut body = res.into_body();
        let mut count = EventCount::default();
        let mut buf = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            // Whole events only: up to the last blank line.
            let Some(end) = buf.windows(2).rposition(|w| w == b"\n\n") else {
                continue;
            };
            for event in buf[..end]
                .split(|&b| b == b'\n')
                .filter(|l| l.starts_with(b"event: "))
            {
                if event == b"event: job" {
                    count.jobs += 1;
                }
            }
            for line in buf[..end]
                .split(|&b| b == b'\n')
                .filter_map(|l| l.strip_prefix(b"data: {\"missed\":"))
            {
                let digits: Vec<u8> = line
                    .iter()
                    .copied()
                    .take_while(u8::is_ascii_digit)
                    .collect();
                count.missed += std::str::from_utf8(&digits)
                    .ok()
                    .and_then(|d| d.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            buf.drain(..end + 2);
        }
        count
    }))
}

/// Drains `args.n` jobs; returns jobs/s, how many scrapes were made and
/// what the event stream carried.
async fn drain(
    config: &Config,
    args: &BenchArgs,
    beside: Beside,
) -> anyhow::Result<(f64, u64, EventCount)> {
    let template = NewJob::new(&args.plugin, r#"{"hello":"world"}"#).map_err(anyhow::Error::msg)?;
    let store = Arc::new(SqliteStore::open(&sqlite_of(config))?);
    fill_with(store.as_ref(), args.n, |_| template.clone()).await?;
    store.close().await?;
    let served = Served::start(config, false).await?;
    let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let scraper = if beside != Beside::Nothing {
        let mut client = served.client().await?;
        let scrapes = Arc::clone(&scrapes);
        // The drain starts once the first scrape is done, so that even a
        // short run is scraped.
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut first = Some(first_tx);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                for path in ["/metrics", "/api/stats"] {
                    let (status, _) = client.call(Method::GET, path, None).await?;
                    if !status.is_success() {
                        bail!("{path} answered {status}");
                    }
                    scrapes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
        });
        if first_rx.await.is_err() {
            // The scraper ended before its first round: say why.
            let Err(e) = task.await?;
            return Err(e);
        }
        let events = match beside {
            Beside::ScrapesAndEvents => Some(read_events(&served).await?),
            _ => None,
        };
        Some((task, events))
    } else {
        let _ = served.stop.send(true);
        None
    };
    let started = Instant::now();
    let runner = served.host.spawn();
    let mut finished = 0;
    while finished < args.n as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let m = served.host.metrics();
        finished = AttemptOutcome::ALL.iter().map(|o| m.outcome(*o)).sum();
        if runner.is_finished() {
            bail!("the host stopped early");
        }
    }
    let rate = args.n as f64 / started.elapsed().as_secs_f64();
    runner.stop().await?;
    let mut reader = None;
    if let Some((task, events)) = scraper {
        if task.is_finished() {
            // It only ends with an error.
            task.await??;
        } else {
            task.abort();
        }
        reader = events;
    }
    let scrapes = scrapes.load(std::sync::atomic::Ordering::Relaxed);
    let completed = served.host.metrics().outcome(AttemptOutcome::Completed);
    // Stopping the server ends the event stream, and with it the reader.
    served.stop().await?;
    let events = match reader {
        Some(reader) => reader.await?,
        None => EventCount::default(),
    };
    if completed != args.n as u64 {
        bail!("only {completed} of {} jobs completed", args.n);
    }
    Ok((rate, scrapes, events))
}

#[derive(Debug, Serialize)]
pub struct ObserveReport {
    pub(super) plugins: usize,
    pub(super) jobs_in_database: usize,
    pub(super) requests: usize,
    pub(super) metrics_ms: Percentiles,
    pub(super) stats_ms: Percentiles,
    /// `GET /api/jobs?limit=50`, the newest page, meanwhile.
    pub(super) jobs_ms: Percentiles,
    /// One refresh of the cached counts (the table scans behind the queue
    /// depth gauges), which runs in the background about once a second
    /// while someone asks.
    pub(super) count_refresh_ms: Percentiles,
}

/// `--observe`.
pub async fn observe(
    config: &Config,
    args: &BenchArgs,
    dir: &Path,
    plugins: usize,
    rows: usize,
) -> anyhow::Result<ObserveReport> {
    let mut config = config.clone();
    let kinds: Vec<String> = (0..plugins)
        .map(|i| format!("{}-{i:02}", args.plugin))
        .collect();
    plugin_copies(&mut config, &args.plugin, dir, &kinds)?;
    sqlite(&mut config).path = dir.join("observe.db");

    // The jobs wait a day, in four queues, over every kind: the counts
    // behind the gauges scan them all, and no attempt runs meanwhile.
    let store = Arc::new(SqliteStore::open(&sqlite_of(&config))?);
    let later = SystemClock.now().plus(Duration::from_secs(86_400));
    fill_with(store.as_ref(), rows, |i| NewJob {
        queue: format!("queue-{}", i % 4),
        run_at: Some(later),
        ..NewJob::new(&kinds[i % kinds.len()], r#"{"hello":"world"}"#).expect("a valid job")
    })
    .await?;
    store.close().await?;

    let served = Served::start(&config, true).await?;
    let mut client = served.client().await?;
    let requests = 300;
    let paths = ["/metrics", "/api/stats", "/api/jobs?limit=50"];
    let mut times: [Vec<Duration>; 3] = Default::default();
    // The first request waits for the first refresh: not counted.
    client.call(Method::GET, paths[0], None).await?;
    // Interleaved, so that the listing also runs while a refresh scans.
    for _ in 0..requests {
        for (path, times) in paths.iter().zip(times.iter_mut()) {
            tokio::time::sleep(Duration::from_millis(3)).await;
            let t0 = Instant::now();
            let (status, body) = client.call(Method::GET, path, None).await?;
            times.push(t0.elapsed());
            if !status.is_success() || body.is_empty() {
                bail!("{path} answered {status}");
            }
        }
    }
    let [metrics, stats, jobs] = times;
    let mut refreshes = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        served.store.queues(SystemClock.now()).await?;
        served.store.event_counts().await?;
        served.store.schedules().await?;
        served.store.breakers().await?;
        refreshes.push(t0.elapsed());
    }
    served.stop().await?;
    Ok(ObserveReport {
        plugins,
        jobs_in_database: rows,
        requests,
        metrics_ms: Percentiles::of(metrics),
        stats_ms: Percentiles::of(stats),
        jobs_ms: Percentiles::of(jobs),
        count_refresh_ms: Percentiles::of(refreshes),
    })
}

#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub(super) seconds: f64,
    /// CPU time (user + system) over the window, in milliseconds.
    pub(super) cpu_ms: f64,
    /// That as a share of one core.
    pub(super) core_percent: f64,
}

/// `--idle`: a host with its API and no work, after a second to settle.
pub async fn idle(config: &Config, dir: &Path, window: Duration) -> anyhow::Result<IdleReport> {
    let mut config = config.clone();
    sqlite(&mut config).path = dir.join("idle.db");
    let served = Served::start(&config, true).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t0, cpu0) = (Instant::now(), cpu_time()?);
    tokio::time::sleep(window).await;
    let (elapsed, cpu) = (t0.elapsed(), cpu_time()? - cpu0);
    served.stop().await?;
    Ok(IdleReport {
        seconds: elapsed.as_secs_f64(),
        cpu_ms: cpu.as_secs_f64() * 1000.0,
        core_percent: 100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64(),
    })
}

/// This process's CPU time (user + system, every thread, exited ones
/// included), from `/proc/self/stat` in clock ticks of 10 ms (Linux's
/// `USER_HZ` is 100).
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // The command name may hold spaces: fields count from after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("parsing /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("parsing /proc/self/stat")
    };
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}
