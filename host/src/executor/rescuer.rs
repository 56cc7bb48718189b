//! The rescuer: takes back running jobs whose lease expired (their worker
//! crashed, hung, or lost the database), recording the attempt as
//! `lease_expired` and applying the retry policy.

use std::sync::Arc;

use tokio::sync::watch;

use super::{Host, sleep_or_stop};
use crate::health::Loop;
use crate::job::{Fenced, Transition};
use crate::metrics::Metrics;
use crate::store::StoreError;

/// The most expired leases one tick handles.
const RESCUE_BATCH: u32 = 1000;

impl Host {
    pub(super) async fn rescuer(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = self.config.host.rescue_interval;
        loop {
            let started = std::time::Instant::now();
            match self.rescue_expired().await {
                Ok(n) => self.report(Loop::Rescuer, started, Ok((n as u64, 0))),
                Err(e) => {
                    Metrics::inc(&self.metrics.store_errors);
                    tracing::error!("rescuer: {e}");
                    self.report(Loop::Rescuer, started, Err(e.to_string()));
                }
            }
            if sleep_or_stop(every, &mut stop).await {
                break;
            }
        }
    }

    /// One rescuer tick; returns how many jobs were taken back.
    pub async fn rescue_expired(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let expired = self.store.expired_leases(now, RESCUE_BATCH).await?;
        let mut rescued = 0;
        for lease in expired {
            let retry = self.settings(&lease.kind).retry;
            let transition = retry.after_failure(
                lease.attempt,
                lease.max_attempts,
                "lease expired: the worker stopped renewing it".to_owned(),
                None,
                now,
            );
            if let Transition::Retry { run_at, .. } = &transition {
                self.producer_quiet.due_at(*run_at);
            }
            let (id, epoch, next) = (lease.fence.id, lease.fence.epoch, transition.target_state());
            match self.store.rescue(lease, transition, now).await? {
                Fenced::Applied => {
                    rescued += 1;
                    Metrics::inc(&self.metrics.rescued);
                    tracing::warn!(job_id = id, epoch, next = %next, "rescued a job whose lease expired");
                }
                // Its worker renewed or finished in the meantime.
                Fenced::FencedOut => {
                    tracing::debug!(
                        job_id = id,
                        epoch,
                        "expired lease was renewed or finished before the rescue"
                    );
                }
            }
        }
        if rescued > 0 {
            self.wake.notify_one();
        }
        Ok(rescued)
    }
}
