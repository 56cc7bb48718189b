//! How long finished work is kept, and what the cleaner may delete.
//!
//! The cleaner ([`crate::executor`]) deletes, in small batches that never
//! hold the database for long: completed jobs, discarded and cancelled jobs
//! (each with their attempts) past their retention; kv tombstones (deleted
//! keys) past theirs; delivered outbox events; and the fire records of
//! schedules, kept as long as the longer of the two job retentions.
//!
//! Discarded and cancelled jobs are found through an index. Completed ones
//! are not indexed, since an index entry per completion would cost the hot
//! path a write: the cleaner sweeps the jobs in id order instead (ids rise
//! with creation), stopping where they become too young to be due and
//! going on from there next time; once an hour it sweeps from the start,
//! for the few jobs that finished long after they were created.
//!
//! Tombstones are kept because a kv key's version must never repeat while
//! an attempt that read it could still commit: an attempt that read a key
//! as absent, before it was written and deleted, would otherwise find it
//! absent again and commit over the change. So a tombstone must outlive the
//! longest attempt, which the configuration checks.

use std::time::Duration;

use crate::store::CleanRequest;
use crate::time::Timestamp;

/// Retention settings; `None` keeps forever.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionConfig {
    pub completed: Option<Duration>,
    /// Discarded and cancelled jobs.
    pub discarded: Option<Duration>,
    pub kv_tombstones: Option<Duration>,
    pub delivered_events: Option<Duration>,
    /// How often the cleaner runs.
    pub interval: Duration,
    /// Rows of each kind one batch deletes.
    pub batch: u32,
}

const DAY: Duration = Duration::from_secs(86_400);

impl Default for RetentionConfig {
    fn default() -> RetentionConfig {
        RetentionConfig {
            completed: Some(7 * DAY),
            discarded: Some(30 * DAY),
            kv_tombstones: Some(DAY),
            delivered_events: Some(7 * DAY),
            interval: Duration::from_secs(60),
            batch: 500,
        }
    }
}

impl RetentionConfig {
    /// What is due for deletion at `now`, the sweep of completed jobs
    /// going on after job `sweep_from`.
    pub fn request(&self, now: Timestamp, sweep_from: crate::job::JobId) -> CleanRequest {
        let before =
            |keep: Option<Duration>| keep.map(|k| Timestamp(now.0 - crate::time::duration_ms(k)));
        let fires = match (self.completed, self.discarded) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        CleanRequest {
            completed_before: before(self.completed),
            sweep_from,
            failed_before: before(self.discarded),
            tombstones_before: before(self.kv_tombstones),
            delivered_before: before(self.delivered_events),
            fires_before: before(fires),
            batch: self.batch,
        }
    }
}
