//! Counters the host keeps about itself: what it claimed, how attempts
//! ended, how often it was fenced out. Cheap to update (relaxed atomics)
//! and read as a [`MetricsSnapshot`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::job::AttemptOutcome;
use crate::time::Timestamp;

#[derive(Debug, Default)]
pub struct Metrics {
    pub claimed: AtomicU64,
    /// Write-backs that matched no row: this host had lost the job.
    pub fenced_out: AtomicU64,
    /// Expired leases the rescuer took back.
    pub rescued: AtomicU64,
    /// Store calls that failed (and were retried or given up).
    pub store_errors: AtomicU64,
    /// Plugin log lines dropped over the per-attempt quota.
    pub logs_dropped: AtomicU64,
    outcomes: [AtomicU64; AttemptOutcome::ALL.len()],
    /// When an attempt last wrote its outcome (ms since epoch; 0 = never).
    last_progress: AtomicI64,
}

impl Metrics {
    pub fn record_outcome(&self, outcome: AttemptOutcome, now: Timestamp) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.last_progress.fetch_max(now.0, Ordering::Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn outcome(&self, outcome: AttemptOutcome) -> u64 {
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            claimed: load(&self.claimed),
            fenced_out: load(&self.fenced_out),
            rescued: load(&self.rescued),
            store_errors: load(&self.store_errors),
            logs_dropped: load(&self.logs_dropped),
            outcomes: AttemptOutcome::ALL
                .iter()
                .map(|o| (o.as_str(), self.outcome(*o)))
                .collect(),
            last_progress: match self.last_progress.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(Timestamp(ms)),
            },
        }
    }
}

/// A point-in-time copy of [`Metrics`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct MetricsSnapshot {
    pub claimed: u64,
    pub fenced_out: u64,
    pub rescued: u64,
    pub store_errors: u64,
    pub logs_dropped: u64,
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
    pub last_progress: Option<Timestamp>,
}
