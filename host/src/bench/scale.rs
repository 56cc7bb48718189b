//! `jobbox bench --store postgres://… --hosts 1,2,4`: N `jobbox run`
//! processes on one PostgreSQL database drain the same backlog.
//!
//! Each round gets a fresh database on the given server (created and
//! dropped by the bench), filled with `-n` jobs before any host starts.
//! The hosts are real processes of this binary, so they share nothing but
//! the database. The round reports:
//!
//! - jobs/s over the drain (first claim to last completion, from the
//!   jobs' own timestamps);
//! - the queue wait of the jobs (claim − due), which with a backlog filled
//!   up front measures how the backlog drains, and the pickup latency of
//!   single jobs enqueued into the idle hosts afterwards (what LISTEN/NOTIFY
//!   buys);
//! - the CPU the database server and the hosts used, as shares of the
//!   machine;
//! - with `--kill`, a last round on the most hosts in which one is killed
//!   with SIGKILL once a third of the jobs are done: its jobs come back
//!   after the lease; the round checks that every job completed exactly
//!   once (one `completed` attempt each).
//!
//! The SQL here only measures; it is not how jobbox works.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use super::{BenchArgs, Percentiles, fill_with};
use crate::config::Config;
use crate::job::NewJob;
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::{Store, StoreOptions};
use crate::time::{Clock, SystemClock};

/// The lease the hosts run with: short, so that a killed host's jobs come
/// back within the round.
const LEASE: &str = "3s";

#[derive(Debug, Serialize)]
pub struct ScaleReport {
    pub server: String,
    pub n: usize,
    pub plugin: String,
    pub concurrency: u32,
    pub cores: usize,
    pub synchronous_commit: String,
    pub rounds: Vec<ScaleRound>,
}

#[derive(Debug, Serialize)]
pub struct ScaleRound {
    pub hosts: usize,
    pub jobs_per_sec: f64,
    pub drain_secs: f64,
    pub queue_wait_ms: Percentiles,
    /// Enqueue → start of single jobs on the idle hosts after the drain.
    pub pickup_ms: Percentiles,
    /// CPU used by the database server's processes, as a share of the
    /// machine (all cores) over the drain.
    pub db_cpu_share: f64,
    /// The same for the host processes.
    pub hosts_cpu_share: f64,
    /// `--kill`: whether a host was killed, and how its jobs fared.
    pub killed: bool,
    pub rescued_attempts: u64,
    pub completed_jobs: u64,
    /// Jobs with more than one `completed` attempt (must be 0).
    pub completed_twice: u64,
}

pub async fn scale(
    config: &Config,
    args: &BenchArgs,
    url: &str,
    dir: &Path,
) -> anyhow::Result<ScaleReport> {
    let hosts = parse_hosts(&args.hosts)?;
    let admin = PgOptions::new(url);
    let server = admin.target();
    let exe = std::env::current_exe().context("finding the jobbox binary")?;
    let payload =
        crate::job::canonical_json(&args.payload).map_err(|e| anyhow::anyhow!("--payload: {e}"))?;
    let synchronous_commit = {
        let admin = admin.clone();
        blocking(move || {
            let mut c = connect(&admin)?;
            Ok(c.query_one("SHOW synchronous_commit", &[])?
                .get::<_, String>(0))
        })
        .await?
    };
    let mut rounds = Vec::new();
    // The throughput rounds, then (with --kill) a round on the most hosts
    // with one of them killed: its drain includes waiting out the lease,
    // so it is reported apart.
    let most = hosts.iter().copied().max().unwrap_or(1).max(2);
    let plan = hosts
        .iter()
        .map(|&h| (h, false))
        .chain(args.kill.then_some((most, true)));
    for (i, (n_hosts, kill)) in plan.enumerate() {
        let name = format!("jobbox_bench_{}_{i}", std::process::id());
        let db = Database::create(&admin, &name).await?;
        let setup = Setup {
            config,
            args,
            exe: &exe,
            payload: &payload,
            dir,
        };
        let round = round(&setup, &db, n_hosts, kill).await;
        db.drop_now().await?;
        rounds.push(round?);
    }
    Ok(ScaleReport {
        server,
        n: args.n,
        plugin: args.plugin.clone(),
        concurrency: args.concurrency,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        synchronous_commit,
        rounds,
    })
}

fn parse_hosts(s: &str) -> anyhow::Result<Vec<usize>> {
    let hosts = s
        .split(',')
        .map(|h| match h.trim().parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => Ok(n),
            _ => {
                bail!("--hosts: expected a list of host counts from 1 to 64 like 1,2,4, got {s:?}")
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(hosts)
}

async fn round(
    setup: &Setup<'_>,
    db: &Database,
    n_hosts: usize,
    kill: bool,
) -> anyhow::Result<ScaleRound> {
    let Setup {
        config,
        args,
        exe,
        payload,
        dir,
    } = *setup;
    let opts = db.options.clone();
    let store: Arc<dyn Store> = {
        let opts = opts.clone();
        Arc::new(blocking(move || Ok(PgStore::open(&opts)?)).await?)
    };
    let job = NewJob::new(&args.plugin, payload).map_err(anyhow::Error::msg)?;
    fill_with(store.as_ref(), args.n, |_| job.clone()).await?;

    let cfg = dir.join(format!("scale-{n_hosts}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[store]\nurl = {url:?}\n\n[host]\nplugins_dir = {plugins:?}\nconcurrency = {c}\nlease = {LEASE:?}\ncompile_cache = true\ncache_dir = {cache:?}\n\n[defaults]\nconcurrency = {c}\n\n[api]\nenabled = false\n",
            url = opts.url,
            plugins = std::path::absolute(&config.host.plugins_dir)?,
            cache = dir.join("cache"),
            c = args.concurrency,
        ),
    )?;
    let cpu = CpuSampler::start();
    let mut children = Hosts(
        (0..n_hosts)
            .map(|i| {
                let log = std::fs::File::create(dir.join(format!("host-{n_hosts}-{i}.log")))?;
                Command::new(exe)
                    .args(["--config"])
                    .arg(&cfg)
                    .arg("run")
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .context("starting a host process")
            })
            .collect::<anyhow::Result<_>>()?,
    );
    let children = &mut children.0;
    cpu.hosts(children.iter().map(Child::id).collect());

    let mut killed = false;
    // A round that stops making progress for a minute has failed (the
    // hosts' logs say why); it does not wait out a fixed deadline.
    let mut progress = (0, Instant::now());
    loop {
        let counts = store.counts().await?;
        if counts.completed as usize >= args.n {
            break;
        }
        if counts.completed != progress.0 {
            progress = (counts.completed, Instant::now());
        }
        if kill && !killed && counts.completed as usize >= args.n / 3 {
            children[0].kill()?;
            let _ = children[0].wait();
            killed = true;
        }
        for c in children.iter_mut().skip(usize::from(killed)) {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "a host exited early ({status}); see its log in {}",
                    dir.display()
                );
            }
        }
        if progress.1.elapsed() > Duration::from_secs(60) {
            let log = std::fs::read_to_string(dir.join(format!("host-{n_hosts}-0.log")))
                .unwrap_or_default();
            bail!(
                "no job completed for a minute ({counts:?}); the first host's log ends:\n{}",
                log.lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        // Not often: counting is a scan of the jobs table, which would
        // take the hosts' CPU (the figures come from the jobs' own times,
        // not from when this loop notices the end).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (db_cpu, hosts_cpu, wall) = cpu.stop();

    // Pickup: single jobs into the idle hosts, one at a time.
    let mut pickup = Vec::new();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..50 {
        let enq = store.enqueue(vec![job.clone()], SystemClock.now()).await?;
        let id = enq[0].id;
        let started = loop {
            let job = store.job(id).await?.context("the pickup job vanished")?;
            if let Some(at) = job.attempted_at {
                break at;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let job = store.job(id).await?.context("the pickup job vanished")?;
        pickup.push(started.since(job.created_at));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for c in children.iter_mut().skip(usize::from(killed)) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
    store.close().await?;

    let n = args.n;
    let stats = {
        let opts = opts.clone();
        blocking(move || drain_stats(&opts, n)).await?
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Ok(ScaleRound {
        hosts: n_hosts,
        jobs_per_sec: n as f64 / stats.drain_secs.max(1e-9),
        drain_secs: stats.drain_secs,
        queue_wait_ms: stats.queue_wait_ms,
        pickup_ms: Percentiles::of(pickup),
        db_cpu_share: db_cpu / (wall * cores),
        hosts_cpu_share: hosts_cpu / (wall * cores),
        killed,
        rescued_attempts: stats.rescued,
        completed_jobs: stats.completed,
        completed_twice: stats.twice,
    })
}

/// What every round shares.
struct Setup<'a> {
    config: &'a Config,
    args: &'a BenchArgs,
    exe: &'a Path,
    payload: &'a str,
    dir: &'a Path,
}

/// The host processes of a round, killed if the round ends early.
struct Hosts(Vec<Child>);

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

struct DrainStats {
    drain_secs: f64,
    queue_wait_ms: Percentiles,
    rescued: u64,
    completed: u64,
    twice: u64,
}

/// Reads the round's figures from the jobs and attempts of the backlog
/// (the first `n` jobs; the pickup jobs come after).
fn drain_stats(opts: &PgOptions, n: usize) -> anyhow::Result<DrainStats> {
    let mut c = connect(opts)?;
    let n = n as i64;
    let r = c.query_one(
        "SELECT (max(finalized_at) - min(attempted_at))::float8 / 1000,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY attempted_at - run_at),
                percentile_cont(0.9) WITHIN GROUP (ORDER BY attempted_at - run_at),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY attempted_at - run_at),
                max(attempted_at - run_at)::float8
         FROM (SELECT * FROM jobs ORDER BY id LIMIT $1) j",
        &[&n],
    )?;
    let queue_wait_ms = Percentiles {
        p50: r.get(1),
        p90: r.get(2),
        p99: r.get(3),
        max: r.get(4),
    };
    let drain_secs: f64 = r.get(0);
    let a = c.query_one(
        "SELECT count(*) FILTER (WHERE outcome = 'lease_expired'),
                count(DISTINCT job_id) FILTER (WHERE outcome = 'completed'),
                (SELECT count(*) FROM (SELECT job_id FROM attempts WHERE outcome = 'completed'
                                       GROUP BY job_id HAVING count(*) > 1) t)
         FROM attempts WHERE job_id <= (SELECT max(id) FROM (SELECT id FROM jobs ORDER BY id LIMIT $1) f)",
        &[&n],
    )?;
    Ok(DrainStats {
        drain_secs,
        queue_wait_ms,
        rescued: a.get::<_, i64>(0) as u64,
        completed: a.get::<_, i64>(1) as u64,
        twice: a.get::<_, i64>(2) as u64,
    })
}

/// A database the bench made, dropped at the end of its round.
struct Database {
    admin: PgOptions,
    name: String,
    options: PgOptions,
}

impl Database {
    async fn create(admin: &PgOptions, name: &str) -> anyhow::Result<Database> {
        let (a, n) = (admin.clone(), name.to_owned());
        blocking(move || {
            let mut c = connect(&a)?;
            // Two calls: a multi-statement string is one transaction, and
            // neither statement may run in one.
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))?;
            c.batch_execute(&format!("CREATE DATABASE {n}"))?;
            Ok(())
        })
        .await
        .with_context(|| format!("creating database {name} on {}", admin.target()))?;
        let mut options = admin.clone();
        options.url = with_database(&admin.url, name);
        Ok(Database {
            admin: admin.clone(),
            name: name.to_owned(),
            options,
        })
    }

    async fn drop_now(&self) -> anyhow::Result<()> {
        let (a, n) = (self.admin.clone(), self.name.clone());
        blocking(move || {
            connect(&a)?.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))?;
            Ok(())
        })
        .await
    }
}

/// The admin URL with its database replaced by `name`.
fn with_database(admin_url: &str, name: &str) -> String {
    // postgres://user@host:port/db?params: swap the path segment.
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

fn connect(opts: &PgOptions) -> anyhow::Result<postgres::Client> {
    let config: postgres::Config = opts.url.parse()?;
    config
        .connect(postgres::NoTls)
        .with_context(|| format!("connecting to PostgreSQL at {}", opts.target()))
}

/// Runs blocking client code off the runtime (the blocking client runs a
/// runtime of its own, which may not nest in ours).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(f)
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a bench thread panicked")))
    })
    .await?
}

/// Adds up the CPU time of the database server's processes and of the
/// hosts, sampling /proc every 100 ms (so that processes that come and go,
/// like a killed host's backends, are counted while they live).
struct CpuSampler {
    stop: Arc<AtomicBool>,
    hosts: Arc<std::sync::Mutex<Vec<u32>>>,
    thread: std::thread::JoinHandle<(f64, f64)>,
    started: Instant,
}

impl CpuSampler {
    fn start() -> CpuSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let hosts = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
        let (s, h) = (Arc::clone(&stop), Arc::clone(&hosts));
        let thread = std::thread::spawn(move || {
            let tick = 100.0; // USER_HZ on Linux
            let mut last: HashMap<u32, u64> = HashMap::new();
            let (mut db, mut host) = (0u64, 0u64);
            loop {
                let host_pids = h.lock().map(|v| v.clone()).unwrap_or_default();
                let mut now = HashMap::new();
                for (pid, comm, ticks) in processes() {
                    let is_host = host_pids.contains(&pid);
                    if comm != "postgres" && !is_host {
                        continue;
                    }
                    let delta = ticks.saturating_sub(last.get(&pid).copied().unwrap_or(ticks));
                    if is_host {
                        host += delta;
                    } else {
                        db += delta;
                    }
                    now.insert(pid, ticks);
                }
                last = now;
                if s.load(Ordering::Acquire) {
                    return (db as f64 / tick, host as f64 / tick);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        CpuSampler {
            stop,
            hosts,
            thread,
            started: Instant::now(),
        }
    }

    fn hosts(&self, pids: Vec<u32>) {
        if let Ok(mut h) = self.hosts.lock() {
            *h = pids;
        }
    }

    /// CPU seconds of the database and the hosts, and the wall seconds.
    fn stop(self) -> (f64, f64, f64) {
        self.stop.store(true, Ordering::Release);
        let wall = self.started.elapsed().as_secs_f64();
        let (db, hosts) = self.thread.join().unwrap_or((0.0, 0.0));
        (db, hosts, wall)
    }
}

/// (pid, command name, utime + stime in ticks) of every process.
fn processes() -> Vec<(u32, String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // Fields after the name start at 3 (state); utime is 14, stime 15.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((pid, comm, utime + stime))
    })
    .collect()
}

/// The text report.
pub fn text(r: &ScaleReport) -> String {
    let mut s = format!(
        "scale: {} jobs of {} on PostgreSQL {} (synchronous_commit={}), concurrency {} per host, {} cores shared with the database\n",
        r.n, r.plugin, r.server, r.synchronous_commit, r.concurrency, r.cores
    );
    for x in &r.rounds {
        s.push_str(&format!(
            "  {} host{}: {:.0} jobs/s ({:.1} s), queue wait p50 {:.0} ms p99 {:.0} ms, idle pickup p50 {:.1} ms p99 {:.1} ms, CPU: database {:.0}%, hosts {:.0}%{}\n",
            x.hosts,
            if x.hosts == 1 { "" } else { "s" },
            x.jobs_per_sec,
            x.drain_secs,
            x.queue_wait_ms.p50,
            x.queue_wait_ms.p99,
            x.pickup_ms.p50,
            x.pickup_ms.p99,
            x.db_cpu_share * 100.0,
            x.hosts_cpu_share * 100.0,
            if x.killed {
                format!(
                    "; one host killed (SIGKILL) a third of the way: {} attempts rescued after the lease, {} of {} jobs completed, {} completed twice",
                    x.rescued_attempts, x.completed_jobs, r.n, x.completed_twice
                )
            } else {
                format!("; {} of {} jobs completed once, {} twice", x.completed_jobs, r.n, x.completed_twice)
            }
        ));
    }
    s.trim_end().to_string()
}

/// Whether `opts` names PostgreSQL (the scale bench needs it).
pub fn postgres_url(store: &str) -> anyhow::Result<String> {
    match StoreOptions::from_arg(store) {
        StoreOptions::Postgres(o) => Ok(o.url),
        StoreOptions::Sqlite(_) => bail!("--store: expected a postgres:// URL, got {store:?}"),
    }
}
