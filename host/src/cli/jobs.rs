//! `jobbox jobs ...`: list, show, retry and cancel jobs.

use clap::Subcommand;

use crate::config::Config;
use crate::job::{JobFilter, JobId, JobRecord, JobState};
use crate::store::{Store, StoreError};
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
    let result = run(store.as_ref(), cmd).await;
    store.close().await?;
    result
}

async fn run(store: &dyn Store, cmd: JobsCommand) -> anyhow::Result<()> {
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
                    before: None,
                    limit: Some(limit),
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
            "  attempt {} (epoch {}): {} in {} ms, fuel {}, component {}{}",
            a.attempt,
            a.epoch,
            a.outcome,
            a.duration_ms,
            a.fuel_used.map_or("-".to_owned(), |f| f.to_string()),
            a.component_hash
                .as_deref()
                .map_or("-", crate::plugins::short),
            a.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}
