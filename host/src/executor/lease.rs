//! The lease keeper: renews the leases of attempts in flight every
//! `lease / 3`, in one batched write, and cancels any attempt whose job is
//! no longer ours.

use std::sync::Arc;

use tokio::sync::watch;

use super::{CancelReason, Host, sleep_or_stop};
use crate::health::Loop;
use crate::job::Fenced;
use crate::metrics::Metrics;
use crate::store::StoreError;

impl Host {
    pub(super) async fn lease_keeper(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = self.config.host.lease / 3;
        while !sleep_or_stop(every, &mut stop).await {
            let started = std::time::Instant::now();
            let n = self.fences().len() as u64;
            let result = self.renew_leases().await;
            self.report(
                Loop::LeaseKeeper,
                started,
                result
                    .map(|lost| (n, lost as u64))
                    .map_err(|e| e.to_string()),
            );
        }
    }

    /// One round of renewals; returns how many attempts lost their job.
    pub async fn renew_leases(&self) -> Result<usize, StoreError> {
        let fences = self.fences();
        if fences.is_empty() {
            return Ok(0);
        }
        let until = self.clock.now().plus(self.config.host.lease);
        match self.store.extend_leases(fences.clone(), until).await {
            Ok(results) => {
                let mut lost = 0;
                for (fence, r) in fences.into_iter().zip(results) {
                    if r == Fenced::FencedOut && self.cancel(fence, CancelReason::LeaseLost) {
                        lost += 1;
                        tracing::warn!(
                            job_id = fence.id,
                            epoch = fence.epoch,
                            "lease lost: cancelling the attempt"
                        );
                    }
                }
                Ok(lost)
            }
            Err(e) => {
                Metrics::inc(&self.metrics.store_errors);
                tracing::error!("lease renewal failed: {e}");
                Err(e)
            }
        }
    }
}
