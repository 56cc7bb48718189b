//! The lease keeper: renews the leases of attempts in flight every
//! `lease / 3`, in one batched write, and cancels any attempt whose job is
//! no longer ours.

use std::sync::Arc;

use tokio::sync::watch;

use super::{CancelReason, Host, sleep_or_stop};
use crate::job::Fenced;
use crate::metrics::Metrics;

impl Host {
    pub(super) async fn lease_keeper(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = self.config.host.lease / 3;
        while !sleep_or_stop(every, &mut stop).await {
            self.renew_leases().await;
        }
    }

    /// One round of renewals; returns how many attempts lost their job.
    pub async fn renew_leases(&self) -> usize {
        let fences = self.fences();
        if fences.is_empty() {
            return 0;
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
                lost
            }
            Err(e) => {
                Metrics::inc(&self.metrics.store_errors);
                tracing::error!("lease renewal failed: {e}");
                0
            }
        }
    }
}
