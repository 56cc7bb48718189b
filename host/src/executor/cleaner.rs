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
use crate::metrics::Metrics;
use crate::store::{CleanReport, StoreError};

/// The pause between two batches of one cleaning round.
const BETWEEN_BATCHES: Duration = Duration::from_millis(10);

impl Host {
    pub(super) async fn cleaner(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = self.config.retention.interval;
        while !sleep_or_stop(every, &mut stop).await {
            if let Err(e) = self.clean_expired().await {
                Metrics::inc(&self.metrics.store_errors);
                tracing::error!("cleaner: {e}");
            }
        }
    }

    /// One cleaning round: batch after batch until nothing due is left.
    /// Returns what was deleted.
    pub async fn clean_expired(&self) -> Result<CleanReport, StoreError> {
        let batch = self.config.retention.batch;
        let mut total = CleanReport::default();
        loop {
            let req = self.config.retention.request(self.clock.now());
            let r = self.store.clean(req).await?;
            total.jobs += r.jobs;
            total.attempts += r.attempts;
            total.tombstones += r.tombstones;
            total.events += r.events;
            total.fires += r.fires;
            if !r.full(batch) {
                break;
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
        if total != CleanReport::default() {
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
