//! The heartbeat: every second it writes this host's row in the `hosts`
//! table (id, version, start, last seen, readiness, attempts in flight, and
//! every few seconds its attempts per minute), so that every host and
//! operator on the database sees who is there and whether it is ready. A
//! host that is not ready (a loop gone stale) goes on writing its row,
//! saying so: an operator tells a live host that is not ready from one that
//! is gone by `last_seen`. One that stops gracefully says it is gone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Host, sleep_or_stop};
use crate::health::HostRecord;
use crate::metrics::Metrics;

/// How often a host writes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Hosts not seen for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(7 * 86_400);

impl Host {
    pub(super) async fn heartbeat(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let ready = self.health.readiness().ready;
            if let Err(e) = self.beat(ready).await {
                Metrics::inc(&self.metrics.store_errors);
                tracing::warn!("heartbeat: {e}");
            }
            if sleep_or_stop(HEARTBEAT_EVERY, &mut stop).await {
                break;
            }
        }
        // Gone: no longer ready, nothing in flight.
        let _ = self.beat(false).await;
    }

    /// Writes this host's heartbeat row now.
    pub async fn beat(&self, ready: bool) -> Result<(), crate::store::StoreError> {
        let now = self.clock.now();
        let minutes = self
            .metrics
            .minutes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_json(now);
        self.store
            .heartbeat(
                HostRecord {
                    id: self.config.host.worker_id.clone(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    started_at: self.started,
                    last_seen: now,
                    ready,
                    in_flight: self.in_flight() as u64,
                    minutes,
                },
                crate::time::Timestamp(now.0 - crate::time::duration_ms(FORGET_AFTER)),
            )
            .await
    }
}
