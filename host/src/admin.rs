//! Operators' actions on schedules, as library calls: the CLI and the API
//! are thin layers over these, so both check and answer alike.

use crate::config::Config;
use crate::job::Enqueued;
use crate::schedule::{ApplyReport, ScheduleDef, ScheduleRecord, ScheduleUpsert};
use crate::store::{Store, StoreError};
use crate::time::Timestamp;

/// Why an operator's action was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The input is wrong; nothing was written.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Upserts `defs` by id in one transaction (with `prune`, deleting every
/// schedule not among them). Each template must pass what an enqueue of its
/// kind passes; if one does not, nothing is applied.
pub async fn apply_schedules(
    store: &dyn Store,
    config: &Config,
    defs: &[ScheduleDef],
    prune: bool,
    now: Timestamp,
) -> Result<ApplyReport, AdminError> {
    for def in defs {
        let mut job = def.template_job();
        crate::enqueue::prepare(
            &mut job,
            config.plugin(&def.job.kind),
            &config.outbox.callback_allow,
        )
        .map_err(|e| AdminError::Invalid(format!("schedule {:?}: {e}", def.id)))?;
    }
    let upserts = defs.iter().map(|d| ScheduleUpsert::new(d, now)).collect();
    Ok(store.apply_schedules(upserts, prune, now).await?)
}

/// A stored schedule with its definition read back.
pub async fn schedule(
    store: &dyn Store,
    id: &str,
) -> Result<(ScheduleRecord, ScheduleDef), AdminError> {
    let rec = store
        .schedule(id.to_owned())
        .await?
        .ok_or_else(|| StoreError::ScheduleNotFound(id.to_owned()))?;
    let def = ScheduleDef::from_spec_json(&rec.spec).map_err(AdminError::Invalid)?;
    Ok((rec, def))
}

/// Resumes a paused schedule, its next fire computed from now: fires that
/// fell while it was paused are not made. Returns false if it was not
/// paused.
pub async fn resume_schedule(
    store: &dyn Store,
    id: &str,
    now: Timestamp,
) -> Result<bool, AdminError> {
    let (_, def) = schedule(store, id).await?;
    let first = def.first_fire(now);
    Ok(store
        .resume_schedule(id.to_owned(), first.map(|f| f.0), first.map(|f| f.1), now)
        .await?)
}

/// Fires a schedule now, outside its cadence, with a key of its own
/// (`schedule:<id>:trigger:<n>`).
pub async fn trigger_schedule(
    store: &dyn Store,
    config: &Config,
    id: &str,
    now: Timestamp,
) -> Result<Enqueued, AdminError> {
    let (_, def) = schedule(store, id).await?;
    let mut job = def.template_job();
    crate::enqueue::prepare(
        &mut job,
        config.plugin(&def.job.kind),
        &config.outbox.callback_allow,
    )
    .map_err(|e| AdminError::Invalid(e.to_string()))?;
    Ok(store.trigger_schedule(id.to_owned(), job, now).await?)
}
