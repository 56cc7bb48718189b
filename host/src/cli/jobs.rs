//! `jobbox jobs ...`: list, show, retry and cancel jobs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Config;
use crate::job::{JobFilter, JobId, JobRecord, JobState};
use crate::replay::{Recording, ReplayReport, replay};
use crate::store::{Store, StoreError};
use crate::testing::Harness;
use crate::time::{Clock, SystemClock};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        #[arg(long)]
        state: Option<JobState>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long)]
        concurrency_key: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Show one job with its attempts.
    Show {
        id: JobId,
        #[arg(long)]
        json: bool,
    },
    /// Re-run a recorded attempt in isolation with exactly the inputs it
    /// had (clock, random bytes, kv reads, HTTP responses), on the
    /// installed component or a new build, and compare what it does with
    /// what the attempt did. Failed attempts are recorded, and every
    /// attempt of a plugin with `record = true`.
    Replay {
        id: JobId,
        /// The attempt (default: the latest recorded one).
        #[arg(long)]
        attempt: Option<u32>,
        /// The component to replay on (default: the installed
        /// `<plugins_dir>/<kind>.wasm`).
        #[arg(long, value_name = "WASM")]
        file: Option<PathBuf>,
        /// Write the attempt as a test case for `jobbox plugins test`
        /// instead of replaying it.
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Make a discarded, retryable or cancelled job available now.
    Retry { id: JobId },
    /// Cancel a job that has not finished (a running attempt is fenced out).
    Cancel { id: JobId },
    /// Follow job state changes on the running host as they happen (asks
    /// its API's event stream) until interrupted.
    Watch {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

pub async fn main(config: &Config, cmd: JobsCommand) -> anyhow::Result<()> {
    if let JobsCommand::Watch { json } = cmd {
        return super::remote::events(config, "/api/events", |name, data| {
            // Other hosts' commits, announced without their jobs: nothing
            // to show line by line.
            if name == "outside" {
                return Ok(());
            }
            if json {
                outln!("{data}")?;
            } else if name == "lagged" {
                outln!("... missed some events: {data}")?;
            } else {
                let e: serde_json::Value = serde_json::from_str(data)?;
                outln!(
                    "{}  job {:>8} {:<16} {:<10} attempt {} epoch {}{}",
                    e["at"].as_str().unwrap_or(""),
                    e["id"],
                    e["kind"].as_str().unwrap_or(""),
                    e["state"].as_str().unwrap_or(""),
                    e["attempt"],
                    e["epoch"],
                    e["outcome"]
                        .as_str()
                        .map(|o| format!("  ({o})"))
                        .unwrap_or_default()
                )?;
            }
            Ok(())
        })
        .await;
    }
    let store = super::open_store(config)?;
    let result = run(config, store.as_ref(), cmd).await;
    store.close().await?;
    result
}

async fn run(config: &Config, store: &dyn Store, cmd: JobsCommand) -> anyhow::Result<()> {
    match cmd {
        JobsCommand::List {
            state,
            kind,
            queue,
            concurrency_key,
            limit,
            json,
        } => {
            let jobs = store
                .list_jobs(JobFilter {
                    state,
                    kind,
                    queue,
                    concurrency_key,
                    limit: Some(limit),
                    ..JobFilter::default()
                })
                .await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&jobs)?)?;
            } else {
                outln!(
                    "{:>8}  {:<10} {:<16} {:>7}  {:<24}  error",
                    "id",
                    "state",
                    "kind",
                    "attempt",
                    "run_at"
                )?;
                for j in &jobs {
                    outln!(
                        "{:>8}  {:<10} {:<16} {:>3}/{:<3}  {:<24}  {}",
                        j.id,
                        j.state,
                        j.kind,
                        j.attempt,
                        j.max_attempts,
                        j.run_at.to_string(),
                        j.error.as_deref().unwrap_or("")
                    )?;
                }
            }
        }
        JobsCommand::Show { id, json } => {
            let job = store.job(id).await?.ok_or(StoreError::NotFound(id))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&job)?)?;
            } else {
                print_job(&job)?;
            }
        }
        JobsCommand::Replay {
            id,
            attempt,
            file,
            export,
            json,
        } => {
            let Some((number, bytes)) = store.recording(id, attempt).await? else {
                store.job(id).await?.ok_or(StoreError::NotFound(id))?;
                anyhow::bail!(match attempt {
                    Some(n) => format!(
                        "job {id} has no recording of attempt {n} (failed attempts are \
                         recorded, and all attempts of plugins with `record = true`)"
                    ),
                    None => format!(
                        "job {id} has no recorded attempt (failed attempts are recorded, \
                         and all attempts of plugins with `record = true`)"
                    ),
                });
            };
            let rec = Recording::from_bytes(&bytes)
                .with_context(|| format!("job {id} attempt {number}"))?;
            let settings = config.plugin(&rec.job.kind);
            // As the attempt ran: its recorded grants and limits.
            let (grants, limits) = rec.settings_or(&settings.grants, &settings.limits)?;
            if let Some(path) = export {
                let file = rec.to_test_file(&grants, &limits);
                let text = toml::to_string_pretty(&file).context("writing the case as TOML")?;
                write_atomically(&path, text.as_bytes())?;
                outln!(
                    "wrote job {id} attempt {number} ({}) as a test case to {}; run it with \
                     `jobbox plugins test {}`",
                    rec.result.outcome,
                    path.display(),
                    path.display()
                )?;
                return Ok(());
            }
            let component = file.unwrap_or_else(|| {
                config
                    .host
                    .plugins_dir
                    .join(format!("{}.wasm", rec.job.kind))
            });
            let harness = Harness::new(config.cache_dir())?;
            let report = replay(&harness, &rec, &component, &grants, &limits)
                .await
                .with_context(|| format!("replaying on {}", component.display()))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                print_replay(&report)?;
            }
        }
        JobsCommand::Retry { id } => {
            let state = store.retry_job(id, SystemClock.now()).await?;
            outln!("job {id} is now {state}")?;
        }
        JobsCommand::Watch { .. } => unreachable!("handled above"),
        JobsCommand::Cancel { id } => {
            let state = store.cancel_job(id, SystemClock.now()).await?;
            outln!("job {id} is now {state}")?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same
/// directory: a reader sees the old file or the whole new one.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

fn print_replay(r: &ReplayReport) -> anyhow::Result<()> {
    let build = match &r.recorded_component_hash {
        Some(h) if *h == r.component_hash => "the same build".to_owned(),
        Some(h) => format!(
            "a new build; the attempt ran on {}",
            crate::plugins::short(h)
        ),
        None => "build unknown".to_owned(),
    };
    outln!(
        "job {} attempt {} ({}) replayed on {} ({}, {build})",
        r.job_id,
        r.attempt,
        r.kind,
        r.component.display(),
        crate::plugins::short(&r.component_hash)
    )?;
    let line = |label: &str, s: &crate::testing::Summary| -> std::io::Result<()> {
        outln!(
            "  {label:<9} {}{}  fuel {}  kv writes {}  events {}  http requests {}",
            s.outcome,
            s.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default(),
            s.fuel_used,
            s.kv_writes.len(),
            s.events.len(),
            s.http.len()
        )?;
        if let Some(o) = &s.output {
            outln!("            output {o}")?;
        }
        Ok(())
    };
    line("recorded:", &r.recorded)?;
    line("replayed:", &r.replayed)?;
    if r.truncated {
        outln!(
            "  note: the recording hit its size cap (record_max); past it the replay used stand-in inputs"
        )?;
    }
    if r.same {
        outln!("same: the replay did exactly what the attempt did")?;
    } else {
        outln!(
            "differs: {} difference{}",
            r.differences.len(),
            super::plural(r.differences.len())
        )?;
        for f in &r.differences {
            outln!("{f:2}")?;
        }
    }
    Ok(())
}

fn print_job(j: &JobRecord) -> std::io::Result<()> {
    outln!("job {} ({}) on queue {}", j.id, j.kind, j.queue)?;
    outln!("  state:           {}", j.state)?;
    outln!("  attempt:         {} of {}", j.attempt, j.max_attempts)?;
    outln!("  epoch:           {}", j.epoch)?;
    outln!("  idempotency key: {}", j.idempotency_key)?;
    outln!("  priority:        {}", j.priority)?;
    if let Some(key) = &j.concurrency_key {
        outln!(
            "  concurrency key: {key} (at most {} running)",
            j.concurrency_limit.unwrap_or(1)
        )?;
    }
    if j.conflicts > 0 {
        outln!("  kv conflicts:    {} (attempts given back)", j.conflicts)?;
    }
    if let Some(s) = &j.schedule_id {
        outln!("  schedule:        {s}")?;
    }
    outln!("  created at:      {}", j.created_at)?;
    outln!("  run at:          {}", j.run_at)?;
    if let Some(t) = j.finalized_at {
        outln!("  finalized at:    {t}")?;
    }
    outln!("  payload:         {}", j.payload)?;
    if let Some(o) = &j.output {
        outln!("  output:          {o}")?;
    }
    if let Some(e) = &j.error {
        outln!("  error:           {e}")?;
    }
    for a in &j.attempts {
        outln!(
            "  attempt {} (epoch {}): {} in {} ms, fuel {}, component {}{}{}",
            a.attempt,
            a.epoch,
            a.outcome,
            a.duration_ms,
            a.fuel_used.map_or("-".to_owned(), |f| f.to_string()),
            a.component_hash
                .as_deref()
                .map_or("-", crate::plugins::short),
            if a.recording_bytes.is_some() {
                format!(
                    ", recorded (jobbox jobs replay {} --attempt {})",
                    j.id, a.attempt
                )
            } else {
                String::new()
            },
            a.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}
