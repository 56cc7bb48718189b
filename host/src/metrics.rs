//! Counters the host keeps about itself: what it claimed, how attempts
//! ended, how often it was fenced out. Cheap to update (relaxed atomics)
//! and read as a [`MetricsSnapshot`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::job::{AttemptOutcome, JobId};
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
    /// Completions refused because a key they read had changed.
    pub kv_conflicts: AtomicU64,
    /// Relay iterations that had events to deliver.
    pub relay_iterations: AtomicU64,
    /// Iterations in which every due event failed.
    pub relay_failed_iterations: AtomicU64,
    /// Iterations in which some, not all, due events failed.
    pub relay_partial_iterations: AtomicU64,
    pub events_delivered: AtomicU64,
    pub events_retried: AtomicU64,
    /// Events that failed for good (refused, or attempts used up).
    pub events_failed: AtomicU64,
    /// Jobs inserted by schedules' fires.
    pub schedule_fires: AtomicU64,
    /// Fires that passed during downtime and were not made.
    pub schedule_missed: AtomicU64,
    /// Fires not made because the previous fire's job was unfinished.
    pub schedule_skipped: AtomicU64,
    /// Circuit breakers' changes of state.
    pub breaker_opened: AtomicU64,
    pub breaker_half_opened: AtomicU64,
    pub breaker_closed: AtomicU64,
    /// Jobs deleted by the cleaner.
    pub cleaned_jobs: AtomicU64,
    /// The most recent relay iteration with events, for health checks.
    last_relay: Mutex<Option<RelaySummary>>,
    outcomes: [AtomicU64; AttemptOutcome::ALL.len()],
    /// When an attempt last wrote its outcome (ms since epoch; 0 = never).
    last_progress: AtomicI64,
    /// Per-attempt timings, kept only when a benchmark asks for them.
    samples: Mutex<Option<Vec<AttemptSample>>>,
}

/// What one relay iteration did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelaySummary {
    pub at: Timestamp,
    pub due: u32,
    pub delivered: u32,
    pub retried: u32,
    pub failed: u32,
    /// `ok`, `partial` (some failed) or `failed` (all failed).
    pub outcome: &'static str,
}

/// Timings of one attempt whose outcome was written.
#[derive(Clone, Copy, Debug)]
pub struct AttemptSample {
    pub job_id: JobId,
    /// When the attempt task started (just after the claim).
    pub started: Instant,
    /// From the job's `run_at` to its claim (millisecond resolution).
    pub queue_wait: Duration,
    /// Instantiate and run in the sandbox.
    pub run: Duration,
    /// When the outcome was durable.
    pub durable: Instant,
}

impl Metrics {
    pub fn record_outcome(&self, outcome: AttemptOutcome, now: Timestamp) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.last_progress.fetch_max(now.0, Ordering::Relaxed);
    }

    /// Starts keeping an [`AttemptSample`] per attempt.
    pub fn keep_samples(&self) {
        *self.samples.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    /// Takes the samples kept so far.
    pub fn take_samples(&self) -> Vec<AttemptSample> {
        let mut guard = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub fn record_sample(&self, sample: impl FnOnce() -> AttemptSample) {
        let mut guard = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(samples) = guard.as_mut() {
            samples.push(sample());
        }
    }

    pub fn record_relay(&self, summary: RelaySummary) {
        *self.last_relay.lock().unwrap_or_else(|p| p.into_inner()) = Some(summary);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
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
            kv_conflicts: load(&self.kv_conflicts),
            relay_iterations: load(&self.relay_iterations),
            relay_failed_iterations: load(&self.relay_failed_iterations),
            relay_partial_iterations: load(&self.relay_partial_iterations),
            events_delivered: load(&self.events_delivered),
            events_retried: load(&self.events_retried),
            events_failed: load(&self.events_failed),
            schedule_fires: load(&self.schedule_fires),
            schedule_missed: load(&self.schedule_missed),
            schedule_skipped: load(&self.schedule_skipped),
            breaker_opened: load(&self.breaker_opened),
            breaker_half_opened: load(&self.breaker_half_opened),
            breaker_closed: load(&self.breaker_closed),
            cleaned_jobs: load(&self.cleaned_jobs),
            last_relay: self
                .last_relay
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
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
    pub kv_conflicts: u64,
    pub relay_iterations: u64,
    pub relay_failed_iterations: u64,
    pub relay_partial_iterations: u64,
    pub events_delivered: u64,
    pub events_retried: u64,
    pub events_failed: u64,
    pub schedule_fires: u64,
    pub schedule_missed: u64,
    pub schedule_skipped: u64,
    pub breaker_opened: u64,
    pub breaker_half_opened: u64,
    pub breaker_closed: u64,
    pub cleaned_jobs: u64,
    pub last_relay: Option<RelaySummary>,
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
    pub last_progress: Option<Timestamp>,
}
