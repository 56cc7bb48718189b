//! The cleaner: deletes finished jobs (with their attempts), kv tombstones,
//! delivered events and old fire records once retention no longer keeps
//! them.
//!
//! Each batch is one small write of its own (`retention.batch` rows of each
//! kind), with a pause between batches, so that the writer interleaves
//! claims and completions with it and never stalls them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Host, sleep_or_stop};
use crate::health::Loop;
use crate::metrics::Metrics;
use crate::store::{CleanReport, StoreError};

/// The pause between two batches of one cleaning round.
const BETWEEN_BATCHES: Duration = Duration::from_millis(10);

/// How often the sweep of completed jobs starts over from the first job,
/// rather than from where the last round found jobs too young.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Where the sweep of completed jobs goes on from.
#[derive(Debug, Default)]
pub(super) struct SweepCursor {
    /// The sweep looks at jobs after this id.
    next: crate::job::JobId,
    /// When it last started from the first job.
    last_full: Option<crate::time::Timestamp>,
}

impl Host {
    pub(super) async fn cleaner(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = self.config.retention.interval;
        while !sleep_or_stop(every, &mut stop).await {
            let started = std::time::Instant::now();
            match self.clean_expired().await {
                Ok(r) => {
                    let n = r.jobs + r.tombstones + r.events + r.fires;
                    self.report(Loop::Cleaner, started, Ok((n, 0)));
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.store_errors);
                    tracing::error!("cleaner: {e}");
                    self.report(Loop::Cleaner, started, Err(e.to_string()));
                }
            }
        }
    }

    /// One cleaning round: batch after batch until nothing due is left.
    /// Returns what was deleted.
    pub async fn clean_expired(&self) -> Result<CleanReport, StoreError> {
        let batch = self.config.retention.batch;
        let now = self.clock.now();
        let mut from = {
            let mut cursor = self.sweep.lock().unwrap_or_else(|p| p.into_inner());
            if cursor
                .last_full
                .is_none_or(|t| now.since(t) >= FULL_SWEEP_EVERY)
            {
                cursor.last_full = Some(now);
                cursor.next = 0;
            }
            cursor.next
        };
        let mut total = CleanReport::default();
        loop {
            let req = self.config.retention.request(self.clock.now(), from);
            let r = self.store.clean(req).await?;
            total.add(&r);
            from = match (r.swept_to, r.young_from) {
                (Some(to), _) => to,
                // Too young from here: the next round starts here.
                (None, Some(young)) => young - 1,
                // The end of the table: the next round starts over.
                (None, None) => 0,
            };
            if !r.more(batch) {
                break;
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
        self.sweep.lock().unwrap_or_else(|p| p.into_inner()).next = from;
        if total.jobs + total.tombstones + total.events + total.fires > 0 {
            self.metrics.add(&self.metrics.cleaned_jobs, total.jobs);
            tracing::info!(
                jobs = total.jobs,
                attempts = total.attempts,
                tombstones = total.tombstones,
                events = total.events,
                fires = total.fires,
                "cleaner deleted what retention no longer keeps"
            );
        }
        Ok(total)
    }
}
