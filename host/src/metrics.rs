//! Counters the host keeps about itself: what it claimed, how attempts
//! ended, how often it was fenced out. Cheap to update (relaxed atomics)
//! and read as a [`MetricsSnapshot`].
//!
//! [`Instruments`] are the Prometheus families behind `/metrics` that need
//! labels or buckets: attempts per plugin and outcome, histograms of run
//! time and queue wait per plugin, and of each phase (claim, run,
//! write-back, delivery). Their plugin label is a loaded or configured
//! kind, else `other`, so label sets stay bounded.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::job::{AttemptOutcome, JobId};
use crate::time::Timestamp;

/// A label set of one plugin.
pub type PluginLabel = [(&'static str, String); 1];
/// A label set of one plugin and one outcome.
pub type OutcomeLabels = [(&'static str, String); 2];
/// A label set of one phase.
pub type PhaseLabel = [(&'static str, &'static str); 1];

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The phases of a job whose durations are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// One claim statement.
    Claim,
    /// Instantiate and run the plugin.
    Run,
    /// The fenced write-back, to durable.
    WriteBack,
    /// One outbox delivery.
    Delivery,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Claim, Phase::Run, Phase::WriteBack, Phase::Delivery];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Claim => "claim",
            Phase::Run => "run",
            Phase::WriteBack => "write_back",
            Phase::Delivery => "delivery",
        }
    }
}

/// The Prometheus families with labels or buckets. Cloning shares them.
#[derive(Clone, Debug)]
pub struct Instruments {
    attempts: Family<OutcomeLabels, Counter>,
    run_seconds: Histograms<PluginLabel>,
    queue_wait_seconds: Histograms<PluginLabel>,
    phase_seconds: Histograms<PhaseLabel>,
    /// The latest durations of each phase, for `jobbox stats`. A std mutex:
    /// held for a push.
    phase_window: std::sync::Arc<Mutex<[std::collections::VecDeque<Duration>; 4]>>,
}

fn run_buckets() -> Histogram {
    // 50 µs to about 4 min.
    Histogram::new(exponential_buckets(0.000_05, 2.5, 18))
}

fn wait_buckets() -> Histogram {
    // 1 ms to about 12 days.
    Histogram::new(exponential_buckets(0.001, 4.0, 16))
}

impl Default for Instruments {
    fn default() -> Instruments {
        Instruments {
            attempts: Family::default(),
            run_seconds: Family::new_with_constructor(run_buckets),
            queue_wait_seconds: Family::new_with_constructor(wait_buckets),
            phase_seconds: Family::new_with_constructor(run_buckets),
            phase_window: Default::default(),
        }
    }
}

impl Instruments {
    /// Registers the families (names without the `jobbox_` prefix, which
    /// the registry adds).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "attempts",
            "Attempts whose outcome was recorded, by plugin and outcome",
            self.attempts.clone(),
        );
        registry.register(
            "run_seconds",
            "Time to instantiate and run the plugin, per attempt",
            self.run_seconds.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time from a job's run_at to its claim",
            self.queue_wait_seconds.clone(),
        );
        registry.register(
            "phase_seconds",
            "Duration of each phase: claim, run, write_back, delivery",
            self.phase_seconds.clone(),
        );
    }

    /// Records an attempt's outcome and timings.
    pub fn attempt(
        &self,
        plugin: &str,
        outcome: AttemptOutcome,
        run: Duration,
        queue_wait: Duration,
    ) {
        let p = plugin.to_owned();
        self.attempts
            .get_or_create(&[
                ("plugin", p.clone()),
                ("outcome", outcome.as_str().to_owned()),
            ])
            .inc();
        self.run_seconds
            .get_or_create(&[("plugin", p.clone())])
            .observe(run.as_secs_f64());
        self.queue_wait_seconds
            .get_or_create(&[("plugin", p)])
            .observe(queue_wait.as_secs_f64());
    }

    /// Records one phase's duration.
    pub fn phase(&self, phase: Phase, took: Duration) {
        self.phase_seconds
            .get_or_create(&[("phase", phase.as_str())])
            .observe(took.as_secs_f64());
        let mut w = self.phase_window.lock().unwrap_or_else(|p| p.into_inner());
        let ring = &mut w[phase as usize];
        if ring.len() == WINDOW {
            ring.pop_front();
        }
        ring.push_back(took);
    }

    /// The latest durations of `phase`.
    pub fn phase_window(&self, phase: Phase) -> Vec<Duration> {
        let w = self.phase_window.lock().unwrap_or_else(|p| p.into_inner());
        w[phase as usize].iter().copied().collect()
    }
}

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
    /// Deliveries sent but not answered in time (retried; the receiver may
    /// have them): counted apart from plain failures.
    pub events_unknown: AtomicU64,
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
    /// The labelled families behind `/metrics`.
    pub instruments: Instruments,
    /// Recent attempts per plugin, for `jobbox stats` percentiles.
    pub window: Mutex<std::collections::HashMap<String, PluginWindow>>,
    /// Attempts per minute and plugin, written with the heartbeat.
    pub minutes: Mutex<crate::throughput::Minutes>,
}

/// The most recent attempts of one plugin (outcome, run time, queue wait),
/// for percentiles over a sliding window.
#[derive(Debug, Default)]
pub struct PluginWindow {
    pub recent: std::collections::VecDeque<(Timestamp, AttemptOutcome, Duration, Duration)>,
}

/// Attempts kept per plugin in the stats window.
pub const WINDOW: usize = 1024;

/// What one relay iteration did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelaySummary {
    pub at: Timestamp,
    pub due: u32,
    pub delivered: u32,
    pub retried: u32,
    /// Sent, not answered in time (also counted in `retried` or `failed`).
    pub unknown: u32,
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

    /// Records an attempt of `plugin` (a bounded label: see [`Instruments`])
    /// in the Prometheus families and the stats window.
    pub fn record_attempt(
        &self,
        plugin: &str,
        outcome: AttemptOutcome,
        run: Duration,
        queue_wait: Duration,
        now: Timestamp,
    ) {
        self.instruments.attempt(plugin, outcome, run, queue_wait);
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let w = match window.get_mut(plugin) {
            Some(w) => w,
            None => window.entry(plugin.to_owned()).or_default(),
        };
        if w.recent.len() == WINDOW {
            w.recent.pop_front();
        }
        w.recent.push_back((now, outcome, run, queue_wait));
        drop(window);
        self.minutes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(plugin, outcome, run, now);
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
            events_unknown: load(&self.events_unknown),
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
    pub events_unknown: u64,
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
