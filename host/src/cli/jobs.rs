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
}

pub async fn main(config: &Config, cmd: JobsCommand) -> anyhow::Result<()> {
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
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                println!(
                    "{:>8}  {:<10} {:<16} {:>7}  {:<24}  error",
                    "id", "state", "kind", "attempt", "run_at"
                );
                for j in &jobs {
                    println!(
                        "{:>8}  {:<10} {:<16} {:>3}/{:<3}  {:<24}  {}",
                        j.id,
                        j.state,
                        j.kind,
                        j.attempt,
                        j.max_attempts,
                        j.run_at.to_string(),
                        j.error.as_deref().unwrap_or("")
                    );
                }
            }
        }
        JobsCommand::Show { id, json } => {
            let job = store.job(id).await?.ok_or(StoreError::NotFound(id))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print_job(&job);
            }
        }
        JobsCommand::Retry { id } => {
            let state = store.retry_job(id, SystemClock.now()).await?;
            println!("job {id} is now {state}");
        }
        JobsCommand::Cancel { id } => {
            let state = store.cancel_job(id, SystemClock.now()).await?;
            println!("job {id} is now {state}");
        }
    }
    Ok(())
}

fn print_job(j: &JobRecord) {
    println!("job {} ({}) on queue {}", j.id, j.kind, j.queue);
    println!("  state:           {}", j.state);
    println!("  attempt:         {} of {}", j.attempt, j.max_attempts);
    println!("  epoch:           {}", j.epoch);
    println!("  idempotency key: {}", j.idempotency_key);
    println!("  priority:        {}", j.priority);
    if let Some(key) = &j.concurrency_key {
        println!(
            "  concurrency key: {key} (at most {} running)",
            j.concurrency_limit.unwrap_or(1)
        );
    }
    if j.conflicts > 0 {
        println!("  kv conflicts:    {} (attempts given back)", j.conflicts);
    }
    if let Some(s) = &j.schedule_id {
        println!("  schedule:        {s}");
    }
    println!("  created at:      {}", j.created_at);
    println!("  run at:          {}", j.run_at);
    if let Some(t) = j.finalized_at {
        println!("  finalized at:    {t}");
    }
    println!("  payload:         {}", j.payload);
    if let Some(o) = &j.output {
        println!("  output:          {o}");
    }
    if let Some(e) = &j.error {
        println!("  error:           {e}");
    }
    for a in &j.attempts {
        println!(
            "  attempt {} (epoch {}): {} in {} ms, fuel {}{}",
            a.attempt,
            a.epoch,
            a.outcome,
            a.duration_ms,
            a.fuel_used.map_or("-".to_owned(), |f| f.to_string()),
            a.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
}
