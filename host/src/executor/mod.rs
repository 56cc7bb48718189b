//! The host runtime: claims jobs, runs each attempt in the sandbox, writes
//! outcomes back through fenced transitions, and keeps leases alive.
//!
//! Roles, one each:
//! - the **producer** ([`Host::run`]) claims at most as many jobs as there
//!   are free slots (globally and per plugin), woken at once by an
//!   in-process enqueue or a freed slot, and by a poll timer for enqueues
//!   from other processes;
//! - an **attempt** task ([`attempt`]) runs one job in the sandbox and
//!   writes its outcome back, fenced on the claim epoch;
//! - the **lease keeper** ([`lease`]) renews the leases of attempts in
//!   flight, and cancels an attempt whose job was taken from it;
//! - the **rescuer** ([`rescuer`]) takes back jobs whose lease expired
//!   because their worker died or hung;
//! - the **relay** ([`relay`]) delivers committed outbox events;
//! - the **scheduler** ([`scheduler`]) makes schedules' fires, waking at
//!   the next fire time;
//! - the **cleaner** ([`cleaner`]) deletes what retention no longer keeps.

mod attempt;
mod cleaner;
mod heartbeat;
mod idle;
mod lease;
mod relay;
mod rescuer;
mod retry;
mod scheduler;
mod watcher;

pub use heartbeat::HEARTBEAT_EVERY;
pub use scheduler::SchedulerStep;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::health::{Freshness, Health, Iteration, Loop};
use crate::job::KvEntry;
use crate::job::{AttemptOutcome, ClaimedJob, Enqueued, Fence, JobEvent, JobId, JobState, NewJob};
use crate::metrics::Metrics;
use crate::outbox::Backlog;
use crate::plugins::{PluginRegistry, PluginSettings, ReloadReport};
use crate::policy::{BreakerChange, BreakerState};
use crate::sandbox::{KvFuture, KvSource, RunContext, Sandbox, SandboxConfig};
use crate::store::{ClaimRequest, Claimed, Store, StoreError};
use crate::time::Clock;

/// Why an attempt in flight is being cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// The host is shutting down and the grace period is over: the job is
    /// released without burning the attempt.
    Shutdown,
    /// The lease could not be renewed because the job is no longer ours
    /// (rescued, cancelled by an operator): nothing is written back.
    LeaseLost,
}

/// A running jobbox host.
pub struct Host {
    config: Config,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// The loaded plugins: a snapshot swapped whole by a reload, so that an
    /// attempt keeps the version it started with.
    registry: std::sync::RwLock<Arc<PluginRegistry>>,
    /// Serializes reloads (a std mutex: held while compiling, on a
    /// blocking thread).
    reloading: Mutex<()>,
    metrics: Metrics,
    /// Woken by in-process enqueues and by freed slots. `notify_one` keeps
    /// a permit, so a wake that lands while the producer is busy claiming
    /// is not lost.
    wake: Notify,
    /// Attempts in flight. A std mutex: held only for map updates, never
    /// across an await.
    inflight: Mutex<InFlight>,
    /// What attempts' kv and outbox imports reach.
    run_ctx: RunContext,
    /// Events awaiting delivery, against `outbox.max_pending`.
    backlog: Arc<Backlog>,
    /// The configured rate limits, sent with every claim.
    rates: Vec<(String, crate::policy::RateLimit)>,
    /// Woken when a completion commits events.
    relay_wake: Notify,
    /// When the producer's and the relay's timed looks may be skipped.
    producer_quiet: idle::Quiet,
    relay_quiet: idle::Quiet,
    /// Woken when a schedule changes through this host.
    scheduler_wake: Notify,
    /// The cleaner's place in its sweep of completed jobs. A std mutex:
    /// only the cleaner takes it, briefly.
    sweep: Mutex<cleaner::SweepCursor>,
    /// Each loop's last iterations and freshness: readiness.
    health: Health,
    /// When this host was built (for its heartbeat).
    started: crate::time::Timestamp,
    /// Job state changes this host makes or sees, for subscribers (the
    /// API's event stream). Sending with no subscriber costs nothing.
    events: tokio::sync::broadcast::Sender<JobEvent>,
    /// The `seq` of the next event. A std mutex, held while numbering and
    /// sending one event, so that events are sent in `seq` order.
    event_seq: Mutex<u64>,
    /// Keeps each job's events in the order of its transitions (see
    /// [`Host::ordering_events`]).
    event_order: tokio::sync::RwLock<()>,
    /// Declared last so that it drops after the plugins: it owns the
    /// epoch ticker.
    sandbox: Sandbox,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("worker", &self.config.host.worker_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct InFlight {
    attempts: HashMap<JobId, Running>,
    per_kind: HashMap<String, u32>,
}

impl InFlight {
    /// Adds a claimed job's attempt.
    fn add(&mut self, id: JobId, running: Running) {
        *self.per_kind.entry(running.kind.clone()).or_default() += 1;
        if let Some(previous) = self.attempts.insert(id, running) {
            // The job's previous attempt here wrote back (or was fenced
            // out) and its task has not ended yet: it holds no slot from
            // now on, and its own `remove` finds this epoch, not its own.
            self.release_kind(&previous.kind);
        }
    }

    /// Removes the attempt holding `fence`, if it is still the job's.
    fn remove(&mut self, fence: Fence) {
        if self
            .attempts
            .get(&fence.id)
            .is_some_and(|r| r.epoch == fence.epoch)
        {
            let running = self.attempts.remove(&fence.id).expect("checked above");
            self.release_kind(&running.kind);
        }
    }

    /// One attempt of `kind` fewer.
    fn release_kind(&mut self, kind: &str) {
        if let Some(n) = self.per_kind.get_mut(kind) {
            *n -= 1;
            if *n == 0 {
                self.per_kind.remove(kind);
            }
        }
    }
}

#[derive(Debug)]
struct Running {
    epoch: u64,
    kind: String,
    cancel: watch::Sender<Option<CancelReason>>,
    /// Set once the attempt has its result and is writing it back: from
    /// then on its own fenced write decides, and a lease renewal that finds
    /// the job already finished is not a lost lease.
    finishing: bool,
}

impl Host {
    /// Builds the sandbox and loads the plugins named by `config`.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Host> {
        let sandbox = Sandbox::new(&SandboxConfig {
            epoch_tick: config.host.epoch_tick,
            pooling: config.host.pooling,
            // Headroom over the concurrency: an instance is only freed once
            // its store is dropped, slightly after its slot is.
            max_instances: config.host.concurrency.saturating_mul(2).saturating_add(8),
            max_memory: config.max_memory(),
            cache_dir: config.cache_dir(),
        })
        .context("configuring the wasm engine")?;
        let registry = PluginRegistry::load(&sandbox, &config.host.plugins_dir, |kind| {
            config.plugin(kind).clone()
        });
        let backlog = Arc::new(Backlog::new(config.outbox.max_pending));
        let run_ctx = RunContext {
            kv: Some(Arc::new(StoreKv(Arc::clone(&store))) as Arc<dyn KvSource>),
            backlog: Some(Arc::clone(&backlog)),
            ..RunContext::default()
        };
        let started = clock.now();
        let health = Health::new(freshness(&config));
        let rates = config
            .plugins
            .iter()
            .filter_map(|(kind, s)| s.rate.map(|r| (kind.clone(), r)))
            .collect();
        Ok(Host {
            rates,
            config,
            store,
            clock,
            registry: std::sync::RwLock::new(Arc::new(registry)),
            reloading: Mutex::new(()),
            metrics: Metrics::default(),
            wake: Notify::new(),
            inflight: Mutex::new(InFlight::default()),
            run_ctx,
            backlog,
            relay_wake: Notify::new(),
            producer_quiet: idle::Quiet::default(),
            relay_quiet: idle::Quiet::default(),
            scheduler_wake: Notify::new(),
            sweep: Mutex::default(),
            health,
            started,
            events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
            event_seq: Mutex::new(1),
            event_order: tokio::sync::RwLock::new(()),
            sandbox,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The plugins loaded now.
    pub fn plugins(&self) -> Arc<PluginRegistry> {
        Arc::clone(&self.registry.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// When this host was built.
    pub fn started_at(&self) -> crate::time::Timestamp {
        self.started
    }

    /// Reports one iteration of `l` that began at `started` (a monotonic
    /// instant): `Ok((handled, failed))` or the error that failed it.
    fn report(&self, l: Loop, started: std::time::Instant, result: Result<(u64, u64), String>) {
        let it = Iteration {
            at: self.clock.now(),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            ..Iteration::default()
        };
        match result {
            Ok((handled, failed)) => self.health.success(
                l,
                Iteration {
                    handled,
                    failed,
                    ..it
                },
            ),
            Err(error) => self.health.failure(l, it, error),
        }
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// How many attempts are in flight.
    pub fn in_flight(&self) -> usize {
        self.lock_inflight().attempts.len()
    }

    /// Enqueues jobs and wakes the producer at once. Each job passes
    /// [`crate::enqueue::prepare`] against its kind's settings (a job
    /// without `max_attempts` takes its kind's); if one is refused, none is
    /// written.
    pub async fn enqueue(&self, mut jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, StoreError> {
        for job in &mut jobs {
            crate::enqueue::prepare(
                job,
                self.settings(&job.kind),
                &self.config.outbox.callback_allow,
            )
            .map_err(|e| StoreError::InvalidJob(e.to_string()))?;
        }
        self.enqueue_prepared(jobs).await
    }

    /// [`Host::enqueue`] for jobs that already passed
    /// [`crate::enqueue::prepare`] (as [`crate::enqueue::from_json`] leaves
    /// them): nothing is checked twice.
    pub async fn enqueue_prepared(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, StoreError> {
        let plugins = self.plugins();
        let mut warned = std::collections::BTreeSet::new();
        for job in &jobs {
            if plugins.get(&job.kind).is_none() && warned.insert(job.kind.as_str()) {
                tracing::warn!(kind = %job.kind, "enqueued a job of a kind with no plugin loaded");
            }
        }
        drop(warned);
        // Only with a subscriber: the kinds of the jobs for their events,
        // published before any claim of them is.
        let ordered = self.ordering_events().await;
        let kinds: Option<Vec<String>> = ordered
            .is_some()
            .then(|| jobs.iter().map(|j| j.kind.clone()).collect());
        let now = self.clock.now();
        for run_at in jobs.iter().filter_map(|j| j.run_at).filter(|t| *t > now) {
            self.producer_quiet.due_at(run_at);
        }
        let out = self.store.enqueue(jobs, now).await?;
        for (kind, e) in kinds.iter().flatten().zip(&out) {
            if e.created {
                self.publish(e.id, kind, JobState::Available, 0, 0, None);
            }
        }
        drop(ordered);
        self.wake.notify_one();
        Ok(out)
    }

    /// Held by whoever makes jobs claimable (an enqueue, a retry, a
    /// trigger) from before its write until it has published the jobs'
    /// events. The producer waits for every holder before it publishes its
    /// claims: the holder wrote first, or the producer could not have
    /// claimed the job, so a claim's `running` never reaches a subscriber
    /// ahead of the `available` before it. `None` with no subscriber:
    /// nothing is published, so there is nothing to order.
    pub async fn ordering_events(&self) -> Option<tokio::sync::RwLockReadGuard<'_, ()>> {
        if self.events.receiver_count() == 0 {
            return None;
        }
        Some(self.event_order.read().await)
    }

    /// Job state changes from now on: enqueues, claims and outcomes of
    /// this host, and operators' actions through it. A subscriber that
    /// falls more than a few thousand events behind misses some (the
    /// receiver says how many).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// Publishes a job's change of state to subscribers, if any.
    pub fn publish(
        &self,
        id: JobId,
        kind: &str,
        state: JobState,
        attempt: u32,
        epoch: u64,
        outcome: Option<AttemptOutcome>,
    ) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let event = JobEvent {
            seq: 0,
            id,
            kind: kind.to_owned(),
            state,
            attempt,
            epoch,
            outcome,
            at: self.clock.now(),
        };
        let mut seq = self.event_seq.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.events.send(JobEvent { seq: *seq, ..event });
        *seq += 1;
    }

    /// Wakes the producer, after jobs became claimable through this host
    /// (an operator's retry, say).
    pub fn wake_producer(&self) {
        self.wake.notify_one();
    }

    /// Wakes the outbox relay (an event was made due through this host).
    pub fn wake_relay(&self) {
        self.relay_wake.notify_one();
    }

    /// Wakes the scheduler, after a change to schedules made through this
    /// host (another process's change is seen within `scheduler.refresh`).
    pub fn wake_scheduler(&self) {
        self.scheduler_wake.notify_one();
    }

    /// `kind` as a metrics label: itself if a plugin is loaded or
    /// configured for it, else `other` (any client may enqueue any kind; a
    /// label per kind would not be bounded).
    pub fn plugin_label<'a>(&self, kind: &'a str) -> &'a str {
        if self.plugins().get(kind).is_some() || self.config.plugins.contains_key(kind) {
            kind
        } else {
            "other"
        }
    }

    /// The settings for `kind`: its plugin's, else the configured ones.
    pub fn settings(&self, kind: &str) -> &PluginSettings {
        // A loaded plugin's settings are the configured ones for its kind.
        self.config.plugin(kind)
    }

    /// Rescans the plugins directory (see [`PluginRegistry::reload`]):
    /// new attempts use what it loaded, attempts running finish on the
    /// version they started with. Compiles on a blocking thread; one
    /// reload at a time.
    pub async fn reload_plugins(self: &Arc<Self>) -> anyhow::Result<ReloadReport> {
        let host = Arc::clone(self);
        let report = tokio::task::spawn_blocking(move || {
            let _one = host.reloading.lock().unwrap_or_else(|p| p.into_inner());
            let current = host.plugins();
            let (next, report) =
                current.reload(&host.sandbox, &host.config.host.plugins_dir, |kind| {
                    host.config.plugin(kind).clone()
                });
            *host.registry.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
            report
        })
        .await
        .context("the reload task failed")?;
        if report.changed() {
            // A kind that came back may have jobs waiting.
            self.wake.notify_one();
        }
        Ok(report)
    }

    /// The compiled-plugin cache in use, and what it has done: components
    /// compiled and loaded compiled from it.
    pub fn compile_stats(&self) -> (Option<&std::path::Path>, u64, u64) {
        let (compiled, loaded) = self.sandbox.compile_stats();
        (self.sandbox.cache_dir(), compiled, loaded)
    }

    /// Runs the host until `shutdown` resolves, then shuts down gracefully:
    /// stops claiming, lets attempts in flight finish within the grace
    /// period, then cancels the rest and releases their jobs.
    pub async fn run(self: &Arc<Self>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let keeper = tokio::spawn(Arc::clone(self).lease_keeper(stop_rx.clone()));
        let rescuer = tokio::spawn(Arc::clone(self).rescuer(stop_rx.clone()));
        let relay = tokio::spawn(Arc::clone(self).relay(stop_rx.clone()));
        let scheduler = self
            .config
            .scheduler
            .enabled
            .then(|| tokio::spawn(Arc::clone(self).scheduler(stop_rx.clone())));
        let cleaner = tokio::spawn(Arc::clone(self).cleaner(stop_rx.clone()));
        let watcher = tokio::spawn(Arc::clone(self).watch_plugins(stop_rx.clone()));
        let outside = tokio::spawn(Arc::clone(self).hear_outside(stop_rx.clone()));
        let heartbeat = tokio::spawn(Arc::clone(self).heartbeat(stop_rx));
        tracing::info!(
            worker = %self.config.host.worker_id,
            plugins = self.plugins().loaded().count(),
            rejected = self.plugins().rejected().len(),
            concurrency = self.config.host.concurrency,
            "host started"
        );

        let mut tasks = JoinSet::new();
        let mut claiming = true;
        // Whether only the timer woke this iteration (not an enqueue, a
        // freed slot or a full claim): then it may be skipped.
        let mut timed = false;
        tokio::pin!(shutdown);
        loop {
            // Reap every finished attempt: a finished task keeps its future's
            // memory in the set until joined.
            while let Some(joined) = tasks.try_join_next() {
                report_panic(joined);
            }
            let limit = self.claim_limit();
            let mut full = false;
            let mut sleep = self.config.host.poll_interval;
            let started = std::time::Instant::now();
            // A host whose other loops are stale claims nothing it could
            // not see through (renew, rescue, deliver).
            let may_claim = self.health.may_claim();
            if may_claim != claiming {
                claiming = may_claim;
                if claiming {
                    tracing::info!("host ready again: claiming");
                } else {
                    let stale: Vec<String> = self
                        .health
                        .readiness()
                        .stale()
                        .map(|l| l.name.to_string())
                        .collect();
                    tracing::warn!(stale = ?stale, "host not ready: no new claims until it is");
                }
            }
            let now = self.clock.now();
            let mut version = None;
            let mut skip = false;
            if timed && limit.total > 0 && claiming {
                version = self.store.outside_version().await.ok().flatten();
                skip = self.producer_quiet.may_skip(now, version);
            }
            if limit.total > 0 && claiming && !skip {
                match self.claim(&limit).await {
                    Ok(claimed) => {
                        full = claimed.jobs.len() as u32 == limit.total;
                        self.producer_quiet.looked(
                            claimed.jobs.is_empty() && claimed.wake_at.is_none(),
                            version,
                            now,
                        );
                        // A rate limit or breaker holds jobs back until
                        // then: look again at that time, not a poll later.
                        if let Some(at) = claimed.wake_at {
                            sleep = sleep.min(at.since(self.clock.now()));
                        }
                        self.report(Loop::Producer, started, Ok((claimed.jobs.len() as u64, 0)));
                        let ordered = !claimed.jobs.is_empty() && self.events.receiver_count() > 0;
                        if ordered {
                            // Whoever made these jobs claimable publishes
                            // first (see `ordering_events`).
                            drop(self.event_order.write().await);
                        }
                        for job in claimed.jobs {
                            if ordered {
                                self.previous_attempt_published(job.id).await;
                            }
                            self.publish(
                                job.id,
                                &job.kind,
                                JobState::Running,
                                job.attempt,
                                job.epoch,
                                None,
                            );
                            let cancel = self.track(&job);
                            // Every line logged within the attempt carries
                            // its job (fields of the span).
                            let span = tracing::info_span!(
                                "attempt",
                                job_id = job.id,
                                kind = %job.kind,
                                attempt = job.attempt,
                                epoch = job.epoch
                            );
                            tasks.spawn(tracing::Instrument::instrument(
                                Arc::clone(self).run_attempt(job, cancel),
                                span,
                            ));
                        }
                    }
                    Err(e) => {
                        Metrics::inc(&self.metrics.store_errors);
                        tracing::error!("claim failed: {e}");
                        self.report(Loop::Producer, started, Err(format!("claim failed: {e}")));
                    }
                }
            } else {
                self.report(Loop::Producer, started, Ok((0, 0)));
            }
            timed = tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(joined) = tasks.join_next() => {
                    report_panic(joined);
                    false
                }
                // Every slot was filled: there may be more jobs waiting.
                () = std::future::ready(()), if full => false,
                () = self.wake.notified() => false,
                () = tokio::time::sleep(self.producer_quiet.interval(sleep, now)) => true,
            };
        }

        let grace = self.config.host.shutdown_grace;
        tracing::info!(in_flight = tasks.len(), grace = %humantime::format_duration(grace), "shutting down: no more claims");
        let drained = tokio::time::timeout(grace, async {
            while let Some(joined) = tasks.join_next().await {
                report_panic(joined);
            }
        })
        .await;
        if drained.is_err() {
            let n = self.cancel_all(CancelReason::Shutdown);
            tracing::warn!(
                cancelled = n,
                "grace period over: cancelling attempts in flight"
            );
            // Cancelled attempts only write their release; if the store
            // cannot take even that within another grace period, stop
            // waiting: their leases expire and the rescuer takes them back.
            let released = tokio::time::timeout(grace, async {
                while let Some(joined) = tasks.join_next().await {
                    report_panic(joined);
                }
            })
            .await;
            if released.is_err() {
                tracing::error!(
                    left = tasks.len(),
                    "attempts could not write their release in time; their leases will expire"
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
            }
        }
        let _ = stop_tx.send(true);
        let _ = keeper.await;
        let _ = rescuer.await;
        let _ = relay.await;
        if let Some(scheduler) = scheduler {
            let _ = scheduler.await;
        }
        let _ = cleaner.await;
        let _ = heartbeat.await;
        let _ = watcher.await;
        let _ = outside.await;
        tracing::info!("host stopped");
        Ok(())
    }

    /// Wakes the producer and the relay whenever the store hears that
    /// another process committed (PostgreSQL's NOTIFY): an idle host starts
    /// another host's enqueued job within milliseconds, not a poll later.
    /// Their timers stay the fallback for a notification that is lost.
    async fn hear_outside(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(mut changes) = self.store.outside_changes() else {
            return;
        };
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.wake.notify_one();
                    self.relay_wake.notify_one();
                }
            }
        }
    }

    /// How many jobs the producer may claim now, and which kinds are full.
    fn claim_limit(&self) -> ClaimLimit {
        let inflight = self.lock_inflight();
        let used = inflight.attempts.len() as u32;
        let mut total = self.config.host.concurrency.saturating_sub(used);
        let mut exclude = Vec::new();
        // Kinds with a tighter limit than the host's: a full one is skipped;
        // the others cap how many jobs one claim may return, since a claim
        // could return jobs of any kind not excluded.
        let defaults = &self.config.defaults;
        let mut capped = |kind: &str, limit: u32| {
            let busy = inflight.per_kind.get(kind).copied().unwrap_or(0);
            if busy >= limit {
                exclude.push(kind.to_owned());
            } else if limit < self.config.host.concurrency {
                total = total.min(limit - busy);
            }
        };
        let registry = self.plugins();
        for (kind, p) in registry.loaded() {
            capped(kind, p.settings.concurrency);
        }
        for (kind, s) in &self.config.plugins {
            if registry.get(kind).is_none() {
                capped(kind, s.concurrency);
            }
        }
        if defaults.concurrency < self.config.host.concurrency {
            // Any other kind may come back: no more than the default limit
            // less the busiest such kind's attempts.
            let busiest = inflight
                .per_kind
                .iter()
                .filter(|(k, _)| registry.get(k).is_none() && !self.config.plugins.contains_key(*k))
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(0);
            total = total.min(defaults.concurrency.saturating_sub(busiest));
        }
        ClaimLimit { total, exclude }
    }

    async fn claim(&self, limit: &ClaimLimit) -> Result<Claimed, StoreError> {
        let started = std::time::Instant::now();
        let claimed = self
            .store
            .claim(ClaimRequest {
                now: self.clock.now(),
                limit: limit.total,
                exclude_kinds: limit.exclude.clone(),
                lease: self.config.host.lease,
                worker: self.config.host.worker_id.clone(),
                rates: self.rates.clone(),
            })
            .await?;
        self.metrics
            .instruments
            .phase(crate::metrics::Phase::Claim, started.elapsed());
        self.metrics.claimed.fetch_add(
            claimed.jobs.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        for kind in &claimed.half_opened {
            self.breaker_changed(&BreakerChange {
                kind: kind.clone(),
                from: BreakerState::Open,
                to: BreakerState::HalfOpen,
                retry_at: None,
            });
        }
        Ok(claimed)
    }

    /// Registers a claimed job as in flight; returns its cancel signal.
    fn track(&self, job: &ClaimedJob) -> watch::Receiver<Option<CancelReason>> {
        let (tx, rx) = watch::channel(None);
        self.lock_inflight().add(
            job.id,
            Running {
                epoch: job.epoch,
                kind: job.kind.clone(),
                cancel: tx,
                finishing: false,
            },
        );
        rx
    }

    /// Waits until this host's previous attempt at job `id`, if it is
    /// writing back, has ended: its outcome (a retry due at once, say) made
    /// the job claimable again, and its event is published before the
    /// claim's. One still running its plugin was fenced out (its lease
    /// lost): it publishes nothing, and is not waited for.
    async fn previous_attempt_published(&self, id: JobId) {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while self
            .lock_inflight()
            .attempts
            .get(&id)
            .is_some_and(|r| r.finishing)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Removes a finished attempt and wakes the producer for its slot.
    fn untrack(&self, fence: Fence) {
        self.lock_inflight().remove(fence);
        self.wake.notify_one();
    }

    /// Cancels the attempt holding `fence` if it is still running its
    /// plugin; returns whether it was.
    fn cancel(&self, fence: Fence, reason: CancelReason) -> bool {
        let inflight = self.lock_inflight();
        match inflight.attempts.get(&fence.id) {
            Some(r) if r.epoch == fence.epoch && !r.finishing => {
                let _ = r.cancel.send(Some(reason));
                true
            }
            _ => false,
        }
    }

    /// Marks the attempt holding `fence` as writing its result back.
    fn mark_finishing(&self, fence: Fence) {
        if let Some(r) = self.lock_inflight().attempts.get_mut(&fence.id)
            && r.epoch == fence.epoch
        {
            r.finishing = true;
        }
    }

    fn cancel_all(&self, reason: CancelReason) -> usize {
        let inflight = self.lock_inflight();
        for r in inflight.attempts.values() {
            let _ = r.cancel.send(Some(reason));
        }
        inflight.attempts.len()
    }

    fn fences(&self) -> Vec<Fence> {
        self.lock_inflight()
            .attempts
            .iter()
            .map(|(id, r)| Fence {
                id: *id,
                epoch: r.epoch,
            })
            .collect()
    }

    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The store as the sandbox's kv source.
struct StoreKv(Arc<dyn Store>);

impl KvSource for StoreKv {
    fn get(&self, namespace: String, key: String) -> KvFuture<'_, KvEntry> {
        Box::pin(async move {
            self.0
                .kv_get(namespace, key)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn list(
        &self,
        namespace: String,
        prefix: String,
        limit: u32,
    ) -> KvFuture<'_, Vec<(String, KvEntry)>> {
        Box::pin(async move {
            self.0
                .kv_list(namespace, prefix, limit)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// A host running on a task of its own, for embedding and tests.
#[derive(Debug)]
pub struct HostTask {
    host: Arc<Host>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Host {
    /// Runs the host on a new task until [`HostTask::stop`].
    pub fn spawn(self: &Arc<Self>) -> HostTask {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let host = Arc::clone(self);
        let task = tokio::spawn(async move {
            host.run(async {
                let _ = stopped.await;
            })
            .await
        });
        HostTask {
            host: Arc::clone(self),
            stop: Some(stop),
            task,
        }
    }
}

impl HostTask {
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Whether the host stopped on its own (it only does on error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Shuts the host down gracefully and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

/// Events kept for subscribers that fall behind.
const EVENT_BUFFER: usize = 4096;

/// Each loop's freshness window, from how often it runs: a few periods,
/// plus what one iteration may take.
fn freshness(config: &Config) -> Freshness {
    let h = &config.host;
    let second = Duration::from_secs(1);
    let mut f = [None; 6];
    f[Loop::Producer as usize] = Some(h.poll_interval * 10 + second * 2);
    f[Loop::LeaseKeeper as usize] = Some(h.lease * 2 + second);
    f[Loop::Rescuer as usize] = Some(h.rescue_interval * 3 + second);
    f[Loop::Scheduler as usize] = config
        .scheduler
        .enabled
        .then(|| config.scheduler.refresh * 3 + second);
    f[Loop::Relay as usize] =
        Some((config.outbox.poll_interval * 3).max(second) + config.outbox.request_timeout);
    f[Loop::Cleaner as usize] = Some(config.retention.interval * 3);
    Freshness(f)
}

struct ClaimLimit {
    total: u32,
    exclude: Vec<String>,
}

fn report_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!("attempt task panicked: {e}");
    }
}

/// Sleeps `d` or until `stop` turns true; returns whether to stop.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        () = tokio::time::sleep(d) => None,
        _ = stop.wait_for(|s| *s) => Some(true),
    };
    stopped.unwrap_or_else(|| *stop.borrow())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(epoch: u64) -> Running {
        Running {
            epoch,
            kind: "echo".into(),
            cancel: watch::channel(None).0,
            finishing: true,
        }
    }

    /// A job claimed again before its previous attempt's task ended (a
    /// retry due at once) holds one slot of its kind, and both tasks'
    /// ends leave none: the count never leaks, whichever ends first.
    #[test]
    fn a_job_claimed_again_before_its_last_attempt_ended_holds_one_slot() {
        for newer_ends_first in [false, true] {
            let mut inflight = InFlight::default();
            inflight.add(7, running(1));
            inflight.add(7, running(2));
            assert_eq!(inflight.per_kind["echo"], 1);
            assert_eq!(inflight.attempts.len(), 1);
            let (first, second) = match newer_ends_first {
                false => (1, 2),
                true => (2, 1),
            };
            inflight.remove(Fence {
                id: 7,
                epoch: first,
            });
            inflight.remove(Fence {
                id: 7,
                epoch: second,
            });
            assert!(inflight.attempts.is_empty());
            assert!(inflight.per_kind.is_empty(), "{:?}", inflight.per_kind);
        }
    }
}
