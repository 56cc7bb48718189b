//! `jobbox schedules ...`: apply a schedule file, list, show, pause,
//! resume, trigger and delete schedules.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::admin;
use crate::config::Config;
use crate::schedule::{Cadence, ScheduleDef, ScheduleRecord, parse_file, rfc3339};
use crate::store::Store;
use crate::time::{Clock, SystemClock, Timestamp};

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Create or update the schedules of a TOML or JSON file, by id. An
    /// invalid entry refuses the whole file.
    Apply {
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Delete the schedules that are not in the file.
        #[arg(long)]
        prune: bool,
        #[arg(long)]
        json: bool,
    },
    /// List schedules: next fire, last fire and its job, counters, pauses.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one schedule and its next fire times.
    Show {
        id: String,
        /// How many upcoming fire times to list.
        #[arg(long, default_value_t = 5)]
        next: usize,
        #[arg(long)]
        json: bool,
    },
    /// Stop making fires until resumed (fires while paused are not made).
    Pause {
        id: String,
        /// Why, for whoever looks next.
        #[arg(long)]
        note: String,
    },
    /// Resume a paused schedule from now.
    Resume { id: String },
    /// Fire now, outside the cadence, with a key of its own.
    Trigger { id: String },
    /// Delete a schedule (its jobs stay).
    Delete { id: String },
}

pub async fn main(config: &Config, cmd: SchedulesCommand) -> anyhow::Result<()> {
    // Read and check the file before touching the database.
    let defs = match &cmd {
        SchedulesCommand::Apply { file, .. } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            Some(parse_file(file, &text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?)
        }
        _ => None,
    };
    let store = super::open_store(config)?;
    let result = run(store.as_ref(), config, cmd, defs).await;
    store.close().await?;
    result
}

async fn run(
    store: &dyn Store,
    config: &Config,
    cmd: SchedulesCommand,
    defs: Option<Vec<ScheduleDef>>,
) -> anyhow::Result<()> {
    let now = SystemClock.now();
    match cmd {
        SchedulesCommand::Apply { prune, json, .. } => {
            let defs = defs.unwrap_or_default();
            let report = admin::apply_schedules(store, config, &defs, prune, now).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else if !report.changed() {
                outln!(
                    "no changes: {} schedule{} already as in the file",
                    report.unchanged.len(),
                    super::plural(report.unchanged.len())
                )?;
            } else {
                for id in &report.created {
                    outln!("created   {id}")?;
                }
                for (id, cadence) in &report.updated {
                    let what = if *cadence {
                        "cadence changed: next fire computed from now"
                    } else {
                        "template changed: next fire kept"
                    };
                    outln!("updated   {id} ({what})")?;
                }
                for id in &report.deleted {
                    outln!("deleted   {id}")?;
                }
                if !report.unchanged.is_empty() {
                    outln!("unchanged {}", report.unchanged.join(", "))?;
                }
            }
        }
        SchedulesCommand::List { json } => {
            let all = store.schedules().await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&all)?)?;
                return Ok(());
            }
            if all.is_empty() {
                outln!("no schedules (add some with `jobbox schedules apply --file F`)")?;
                return Ok(());
            }
            outln!(
                "{:<20} {:<28} {:<14} {:<22} {:<32} {:>6} {:>6} {:>7}",
                "id",
                "cadence",
                "kind",
                "next fire",
                "last fire",
                "fired",
                "missed",
                "skipped"
            )?;
            for rec in &all {
                let def = ScheduleDef::from_spec_json(&rec.spec).ok();
                outln!(
                    "{:<20} {:<28} {:<14} {:<22} {:<32} {:>6} {:>6} {:>7}{}",
                    rec.id,
                    def.as_ref().map(cadence_text).unwrap_or_default(),
                    def.as_ref().map(|d| d.job.kind.as_str()).unwrap_or("?"),
                    next_text(rec),
                    last_text(rec),
                    rec.fired,
                    rec.missed,
                    rec.skipped,
                    pause_text(rec),
                )?;
            }
        }
        SchedulesCommand::Show { id, next, json } => {
            let (rec, def) = admin::schedule(store, &id).await?;
            let upcoming: Vec<Timestamp> = match rec.next_fire_at {
                Some(first) if next > 0 => {
                    let mut v = vec![first];
                    v.extend(def.cadence_upcoming(first, next - 1));
                    v
                }
                _ => Vec::new(),
            };
            if json {
                let mut value = serde_json::to_value(&rec)?;
                value["upcoming"] = serde_json::json!(upcoming
                    .iter()
                    .map(|t| serde_json::json!({"nominal": rfc3339(*t), "run_at": rfc3339(def.run_at(*t))}))
                    .collect::<Vec<_>>());
                outln!("{}", serde_json::to_string_pretty(&value)?)?;
                return Ok(());
            }
            outln!("schedule {}", rec.id)?;
            outln!("  cadence:    {}", cadence_text(&def))?;
            outln!(
                "  job:        {} on queue {} (priority {}){}",
                def.job.kind,
                def.job.queue,
                def.job.priority,
                def.job
                    .concurrency_key
                    .as_ref()
                    .map(|k| format!(", concurrency key {k:?}"))
                    .unwrap_or_default()
            )?;
            outln!("  payload:    {}", def.job.payload)?;
            outln!(
                "  policies:   misfire {}{}, overlap {}{}",
                def.misfire,
                if def.misfire == crate::schedule::Misfire::All {
                    format!(" (up to {})", def.max_catch_up)
                } else {
                    String::new()
                },
                def.overlap,
                def.jitter
                    .map(|j| format!(", jitter {}", humantime::format_duration(j)))
                    .unwrap_or_default()
            )?;
            if rec.paused {
                outln!(
                    "  paused:     since {} ({})",
                    rec.paused_at.map(rfc3339).unwrap_or_default(),
                    rec.pause_note.as_deref().unwrap_or("")
                )?;
            }
            outln!("  last fire:  {}", last_text(&rec))?;
            outln!(
                "  counters:   {} fired, {} missed, {} skipped, {} triggered",
                rec.fired,
                rec.missed,
                rec.skipped,
                rec.triggers
            )?;
            if let Some(b) = rec.buffered_at {
                outln!(
                    "  buffered:   the fire of {} waits for the last job",
                    rfc3339(b)
                )?;
            }
            if rec.next_fire_at.is_none() {
                outln!("  next fires: none (past end_at)")?;
            } else if upcoming.is_empty() {
                outln!("  next fire:  {}", next_text(&rec))?;
            } else {
                outln!("  next fires:")?;
                for t in upcoming {
                    let run = def.run_at(t);
                    if run == t {
                        outln!("    {}", rfc3339(t))?;
                    } else {
                        outln!("    {} (runs at {}, jitter)", rfc3339(t), rfc3339(run))?;
                    }
                }
            }
        }
        SchedulesCommand::Pause { id, note } => {
            if store.pause_schedule(id.clone(), note, now).await? {
                outln!("schedule {id} paused")?;
            } else {
                outln!("schedule {id} was already paused (note updated)")?;
            }
        }
        SchedulesCommand::Resume { id } => {
            if admin::resume_schedule(store, &id, now).await? {
                let rec = store.schedule(id.clone()).await?;
                outln!(
                    "schedule {id} resumed; next fire {}",
                    rec.as_ref().map(next_text).unwrap_or_default()
                )?;
            } else {
                outln!("schedule {id} was not paused")?;
            }
        }
        SchedulesCommand::Trigger { id } => {
            let job = admin::trigger_schedule(store, config, &id, now).await?;
            outln!("schedule {id} fired: job {}", job.id)?;
        }
        SchedulesCommand::Delete { id } => {
            store.delete_schedule(id.clone()).await?;
            outln!("schedule {id} deleted")?;
        }
    }
    Ok(())
}

fn cadence_text(def: &ScheduleDef) -> String {
    match &def.cadence {
        Cadence::Cron { zone_name, .. } => format!(
            "cron {} {zone_name}",
            def.spec.cron.as_deref().unwrap_or_default()
        ),
        Cadence::Every { .. } => format!(
            "every {}{}",
            def.spec.every.as_deref().unwrap_or_default(),
            def.spec
                .phase
                .as_deref()
                .map(|p| format!(" + {p}"))
                .unwrap_or_default()
        ),
    }
}

fn next_text(rec: &ScheduleRecord) -> String {
    match rec.next_fire_at {
        Some(t) => rfc3339(t),
        None => "(none: ended)".into(),
    }
}

fn last_text(rec: &ScheduleRecord) -> String {
    match (rec.last_fire_at, rec.last_job_id) {
        (Some(t), Some(job)) => format!(
            "{} job {job} {}",
            rfc3339(t),
            rec.last_job_state
                .map(|s| s.to_string())
                .unwrap_or_else(|| "(deleted)".into())
        ),
        _ => "-".into(),
    }
}

fn pause_text(rec: &ScheduleRecord) -> String {
    if rec.paused {
        format!(
            "  paused: {}",
            rec.pause_note.as_deref().unwrap_or("(no note)")
        )
    } else {
        String::new()
    }
}
