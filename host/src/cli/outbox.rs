//! `jobbox outbox ...`: list events and retry failed ones.

use clap::Subcommand;

use crate::config::Config;
use crate::outbox::EventState;
use crate::store::Store;
use crate::time::{Clock, SystemClock};

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List events and their delivery status, newest first.
    List {
        #[arg(long)]
        state: Option<EventState>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only events older than this id (the next page after it).
        #[arg(long)]
        before: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Send a failed event again (same body, same key).
    Retry { id: i64 },
}

pub async fn main(config: &Config, cmd: OutboxCommand) -> anyhow::Result<()> {
    let store = super::open_store(config)?;
    let result = run(store.as_ref(), cmd).await;
    store.close().await?;
    result
}

async fn run(store: &dyn Store, cmd: OutboxCommand) -> anyhow::Result<()> {
    match cmd {
        OutboxCommand::List {
            state,
            limit,
            before,
            json,
        } => {
            let events = store.list_events(state, before, limit).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&events)?)?;
                return Ok(());
            }
            outln!(
                "{:>6}  {:<9} {:>8}  {:<20} {:>6}  {:<24}  last error / note",
                "id",
                "state",
                "attempts",
                "topic",
                "job",
                "next attempt"
            )?;
            for e in &events {
                outln!(
                    "{:>6}  {:<9} {:>8}  {:<20} {:>6}  {:<24}  {}",
                    e.id,
                    e.state,
                    e.attempts,
                    e.topic,
                    e.job_id,
                    e.next_attempt_at.to_string(),
                    e.last_error.as_deref().or(e.note.as_deref()).unwrap_or("")
                )?;
            }
        }
        OutboxCommand::Retry { id } => {
            store.retry_event(id, SystemClock.now()).await?;
            outln!("event {id} is pending again")?;
        }
    }
    Ok(())
}
