//! `jobbox queues ...`: jobs by queue and state, pause and resume a queue.

use clap::Subcommand;

use crate::config::Config;
use crate::job::validate_queue;
use crate::policy::PauseScope;
use crate::time::{Clock, SystemClock};

#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// Jobs per queue and state, the oldest due job's wait, and pauses.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop claiming the queue's jobs (attempts already running finish).
    Pause {
        queue: String,
        /// Why, for whoever looks next.
        #[arg(long)]
        note: String,
    },
    /// Claim the queue's jobs again.
    Resume { queue: String },
}

pub async fn main(config: &Config, cmd: QueuesCommand) -> anyhow::Result<()> {
    if let QueuesCommand::Pause { queue, .. } | QueuesCommand::Resume { queue } = &cmd {
        validate_queue(queue).map_err(anyhow::Error::msg)?;
    }
    super::with_store(config, |store| async move {
        let now = SystemClock.now();
        match cmd {
            QueuesCommand::List { json } => {
                let queues = store.queues(now).await?;
                if json {
                    outln!("{}", serde_json::to_string_pretty(&queues)?)?;
                    return Ok(());
                }
                if queues.is_empty() {
                    outln!("no queues yet (a queue appears with its first job)")?;
                    return Ok(());
                }
                outln!(
                    "{:<16} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9}  {:<12}",
                    "queue",
                    "available",
                    "running",
                    "retryable",
                    "completed",
                    "discarded",
                    "cancelled",
                    "oldest due"
                )?;
                for q in &queues {
                    let c = &q.counts;
                    outln!(
                        "{:<16} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9}  {:<12}{}",
                        q.queue,
                        c.available,
                        c.running,
                        c.retryable,
                        c.completed,
                        c.discarded,
                        c.cancelled,
                        q.oldest_due
                            .map(|t| format!(
                                "{} ago",
                                humantime::format_duration(std::time::Duration::from_secs(
                                    now.since(t).as_secs()
                                ))
                            ))
                            .unwrap_or_else(|| "-".into()),
                        q.paused
                            .as_ref()
                            .map(|p| format!("  PAUSED since {}: {}", p.paused_at, p.note))
                            .unwrap_or_default()
                    )?;
                }
            }
            QueuesCommand::Pause { queue, note } => {
                if store
                    .pause(PauseScope::Queue, queue.clone(), note, now)
                    .await?
                {
                    outln!("queue {queue} paused: its jobs are not claimed until resumed")?;
                } else {
                    outln!("queue {queue} was already paused (note updated)")?;
                }
            }
            QueuesCommand::Resume { queue } => {
                if store.resume(PauseScope::Queue, queue.clone()).await? {
                    outln!("queue {queue} resumed")?;
                } else {
                    outln!("queue {queue} was not paused")?;
                }
            }
        }
        Ok(())
    })
    .await
}
