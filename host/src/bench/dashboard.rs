//! `--dashboard`: the dashboard's API calls on a big database.
//!
//! Fills a fresh SQLite database with `--rows` jobs over eight kinds and
//! four queues in the states a busy system leaves (most completed, some
//! discarded with errors, cancelled, retryable, waiting), each finished job
//! with its attempt row, then serves it with a running host (which also
//! runs a few thousand jobs, so the throughput chart has data) and times
//! every call each page makes: alone, and each page's calls at once, as the
//! page makes them. With Chromium and playwright-core available
//! (`JOBBOX_CHROMIUM`, `JOBBOX_BROWSER_NODE_MODULES`, as `scripts/test`
//! installs them), it also loads each page in headless Chromium and times
//! it from navigation to its data drawn.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::Method;
use serde::Serialize;

use super::api::Served;
use super::{BenchArgs, Percentiles, fill_with, sqlite, sqlite_of};
use crate::api::client::Client;
use crate::config::Config;
use crate::job::NewJob;
use crate::store::Store;
use crate::store::sqlite::SqliteStore;
use crate::time::{Clock, SystemClock};

/// Timed rounds of each page.
const ROUNDS: usize = 40;

/// Jobs run live while the bench measures.
const LIVE_JOBS: usize = 3000;

#[derive(Debug, Serialize)]
pub struct DashboardReport {
    pub jobs_in_database: usize,
    pub rounds: usize,
    /// Each API call alone.
    pub calls: Vec<CallTimes>,
    /// Each page's calls made at once, until the last answers.
    pub pages: Vec<CallTimes>,
    /// Each page in headless Chromium, navigation to data drawn (empty if
    /// no browser was available; `browser_skipped` says why).
    pub browser: Vec<CallTimes>,
    pub browser_skipped: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CallTimes {
    pub name: String,
    pub ms: Percentiles,
}

/// A page and the calls it makes when it loads.
struct Page {
    name: &'static str,
    url: String,
    calls: Vec<String>,
}

pub async fn dashboard(
    config: &Config,
    args: &BenchArgs,
    dir: &Path,
    rows: usize,
) -> anyhow::Result<DashboardReport> {
    let mut config = config.clone();
    let kinds: Vec<String> = (0..8).map(|i| format!("{}-{i}", args.plugin)).collect();
    super::plugin_copies(&mut config, &args.plugin, dir, &kinds)?;
    let db = dir.join("dashboard.db");
    sqlite(&mut config).path = db.clone();

    let t0 = Instant::now();
    let store = std::sync::Arc::new(SqliteStore::open(&sqlite_of(&config))?);
    let later = SystemClock.now().plus(Duration::from_secs(86_400));
    fill_with(store.as_ref(), rows, |i| NewJob {
        queue: format!("queue-{}", i % 4),
        run_at: Some(later),
        concurrency_key: (i % 10 == 0).then(|| format!("account-{}", i % 1000)),
        concurrency_limit: (i % 10 == 0).then_some(1),
        ..NewJob::new(
            &kinds[i % kinds.len()],
            &format!(
                r#"{{"order":"ord-{i}","customer":"cust-{}","cents":{}}}"#,
                i % 5000,
                i % 997
            ),
        )
        .expect("a valid job")
    })
    .await?;
    store.close().await?;
    finish_most(&db)?;
    eprintln!(
        "bench: {rows} jobs written in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let served = Served::start(&config, true).await?;
    let mut client = served.client().await?;
    // Live work: the chart's minutes, the hosts' in-flight counts.
    let live: Vec<serde_json::Value> = (0..LIVE_JOBS)
        .map(|i| serde_json::json!({"kind": kinds[i % kinds.len()], "payload": {"live": i}}))
        .collect();
    let (status, body) = client
        .call(
            Method::POST,
            "/api/jobs",
            Some(serde_json::to_vec(&live)?.into()),
        )
        .await?;
    if !status.is_success() {
        bail!(
            "enqueueing the live jobs: {}",
            crate::api::client::error_of(status, &body)
        );
    }

    let discarded = first_id(&mut client, "/api/jobs?state=discarded&limit=1").await?;
    let pages = pages(discarded, &kinds[3]);
    let mut clients = Vec::new();
    for _ in 0..pages.iter().map(|p| p.calls.len()).max().unwrap_or(1) {
        clients.push(served.client().await?);
    }
    // Warm-up (the first stats call waits for the counts' first scan).
    for page in &pages {
        for call in &page.calls {
            get(&mut client, call).await?;
        }
    }
    let mut call_times: Vec<(String, Vec<Duration>)> = Vec::new();
    let mut page_times: Vec<Vec<Duration>> = vec![Vec::new(); pages.len()];
    for _ in 0..ROUNDS {
        for (p, page) in pages.iter().enumerate() {
            for call in &page.calls {
                let t = Instant::now();
                get(&mut client, call).await?;
                let d = t.elapsed();
                match call_times.iter_mut().find(|(c, _)| c == call) {
                    Some((_, v)) => v.push(d),
                    None => call_times.push((call.clone(), vec![d])),
                }
            }
            let t = Instant::now();
            let all = clients
                .iter_mut()
                .zip(&page.calls)
                .map(|(c, call)| get(c, call));
            for r in futures_util::future::join_all(all).await {
                r?;
            }
            page_times[p].push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The bulk action's confirmation counts every match.
    let mut counts = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        get(&mut client, "/api/jobs/count?state=discarded&action=retry").await?;
        counts.push(t.elapsed());
    }
    call_times.push((
        "/api/jobs/count?state=discarded&action=retry (bulk confirmation)".into(),
        counts,
    ));
    let (browser, browser_skipped) = match browser_times(served.addr, &pages).await {
        Ok(b) => (b, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    served.stop().await?;
    Ok(DashboardReport {
        jobs_in_database: rows,
        rounds: ROUNDS,
        calls: call_times
            .into_iter()
            .map(|(name, v)| CallTimes {
                name,
                ms: Percentiles::of(v),
            })
            .collect(),
        pages: pages
            .iter()
            .zip(page_times)
            .map(|(p, v)| CallTimes {
                name: p.name.to_owned(),
                ms: Percentiles::of(v),
            })
            .collect(),
        browser,
        browser_skipped,
    })
}

/// What each page asks for when it loads (as `app.js` does), with the
/// filters operators use most.
fn pages(job: i64, kind: &str) -> Vec<Page> {
    let page = |name, url: &str, calls: &[&str]| Page {
        name,
        url: url.to_owned(),
        calls: calls.iter().map(|c| (*c).to_owned()).collect(),
    };
    vec![
        page(
            "overview",
            "/",
            &[
                "/api/stats",
                "/api/throughput?minutes=60",
                "/api/hosts",
                "/api/plugins",
            ],
        ),
        page("jobs", "/jobs", &["/api/jobs?limit=50"]),
        page(
            "jobs: state=discarded",
            "/jobs?state=discarded",
            &["/api/jobs?state=discarded&limit=50"],
        ),
        page(
            "jobs: state=retryable",
            "/jobs?state=retryable",
            &["/api/jobs?state=retryable&limit=50"],
        ),
        page(
            "jobs: kind + queue",
            &format!("/jobs?kind={kind}&queue=queue-1"),
            &[&format!("/api/jobs?kind={kind}&queue=queue-1&limit=50")],
        ),
        page(
            "jobs: text",
            "/jobs?text=cust-4242",
            &["/api/jobs?text=cust-4242&limit=50"],
        ),
        page(
            "job detail",
            &format!("/jobs/{job}"),
            &[
                &format!("/api/jobs/{job}"),
                &format!("/api/jobs/{job}/effects"),
            ],
        ),
        page("schedules", "/schedules", &["/api/schedules"]),
        page("plugins", "/plugins", &["/api/plugins"]),
        page("queues", "/queues", &["/api/queues"]),
        page("outbox", "/outbox", &["/api/outbox?limit=50"]),
        page("hosts", "/hosts", &["/api/hosts"]),
    ]
}

async fn get(client: &mut Client, path: &str) -> anyhow::Result<()> {
    let (status, body) = client.call(Method::GET, path, None).await?;
    if !status.is_success() {
        return Err(crate::api::client::error_of(status, &body));
    }
    Ok(())
}

async fn first_id(client: &mut Client, path: &str) -> anyhow::Result<i64> {
    let page = client.get_json(path).await?;
    page["jobs"][0]["id"]
        .as_i64()
        .with_context(|| format!("{path}: no job"))
}

/// Moves the seeded jobs to the states a busy system leaves, each finished
/// one with its attempt: by id, 90% completed, 3% discarded (with an
/// error), 1% cancelled, 2% retryable, the rest waiting. Written straight
/// into the file (one transaction), as no host has run yet.
fn finish_most(db: &Path) -> anyhow::Result<()> {
    let mut conn = rusqlite::Connection::open(db)?;
    let tx = conn.transaction()?;
    tx.execute_batch(
        "
        UPDATE jobs SET
            state = CASE
                WHEN id % 100 < 90 THEN 'completed'
                WHEN id % 100 < 93 THEN 'discarded'
                WHEN id % 100 < 94 THEN 'cancelled'
                WHEN id % 100 < 96 THEN 'retryable'
                ELSE 'available' END,
            attempt = CASE WHEN id % 100 < 96 THEN 1 ELSE 0 END,
            epoch = CASE WHEN id % 100 < 96 THEN 1 ELSE 0 END,
            attempted_at = CASE WHEN id % 100 < 96 THEN created_at END,
            finalized_at = CASE WHEN id % 100 < 94 THEN created_at + 5 END,
            output = CASE WHEN id % 100 < 90 THEN '{\"ok\":true}' END,
            error = CASE WHEN id % 100 >= 90 AND id % 100 < 96
                         THEN 'upstream answered 503 for order ' || id END;
        INSERT INTO attempts (job_id, epoch, attempt, outcome, error, fuel_used,
                              started_at, ended_at, duration_ms, host)
        SELECT id, 1, 1,
               CASE WHEN state = 'completed' THEN 'completed'
                    WHEN state = 'cancelled' THEN 'cancelled'
                    ELSE 'retryable_error' END,
               error, 12345, created_at, created_at + 5, 5, 'bench-seed'
        FROM jobs WHERE epoch = 1;
        ",
    )?;
    tx.commit()?;
    Ok(())
}

/// Each page loaded in headless Chromium by `tests/browser/timing.mjs`,
/// navigation to data drawn.
async fn browser_times(
    addr: std::net::SocketAddr,
    pages: &[Page],
) -> anyhow::Result<Vec<CallTimes>> {
    let chromium = std::env::var("JOBBOX_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        bail!("no Chromium at {chromium} (set JOBBOX_CHROMIUM)");
    }
    let modules = std::env::var("JOBBOX_BROWSER_NODE_MODULES")
        .context("JOBBOX_BROWSER_NODE_MODULES is not set (scripts/test installs playwright-core and sets it)")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser/timing.mjs");
    let urls: Vec<String> = pages.iter().map(|p| p.url.clone()).collect();
    let mut command = std::process::Command::new("node");
    command
        .arg(&script)
        .arg(format!("http://{addr}"))
        .arg("bench-token-0123456789")
        .arg(ROUNDS.min(10).to_string())
        .args(&urls)
        .env("JOBBOX_CHROMIUM", &chromium)
        .env("NODE_PATH", &modules);
    // The host serves from this runtime: wait on a thread of its own.
    let out = tokio::task::spawn_blocking(move || command.output())
        .await?
        .context("running node (is Node.js installed?)")?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // One line per page: its URL, then its times in ms.
    let text = String::from_utf8(out.stdout)?;
    let mut times = Vec::new();
    for (page, line) in pages.iter().zip(text.lines()) {
        let v: Vec<Duration> = line
            .split_whitespace()
            .skip(1)
            .map(|ms| {
                ms.parse::<f64>()
                    .map(|ms| Duration::from_secs_f64(ms / 1000.0))
            })
            .collect::<Result<_, _>>()
            .context("reading the browser's timings")?;
        times.push(CallTimes {
            name: page.name.to_owned(),
            ms: Percentiles::of(v),
        });
    }
    Ok(times)
}
