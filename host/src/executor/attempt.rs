//! One attempt: run the job in the sandbox, decide, write back fenced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{CancelReason, Host};
use crate::job::{
    AttemptOutcome, AttemptRecord, BreakerCount, ClaimedJob, ConflictRetry, Fenced, Finish,
    MAX_ERROR_TEXT, Transition, cap_text,
};
use crate::metrics::{AttemptSample, Metrics, Phase};
use crate::policy::{BreakerChange, BreakerState};
use crate::replay::Recording;
use crate::sandbox::{RunContext, RunError, RunReport};
use crate::store::{FinishOutcome, StoreError};

/// How long a job that lost a kv conflict waits before its next attempt:
/// a few milliseconds, growing a little with the attempt number, with
/// jitter so that the losers do not all come back at once.
fn conflict_delay(attempt: u32) -> Duration {
    let base = 5u64 << attempt.min(4);
    Duration::from_millis(base + fastrand::u64(0..=base * 2))
}

/// Removes the attempt from the in-flight set however the task ends, even
/// by panic, so a slot is never leaked.
struct SlotGuard<'a> {
    host: &'a Host,
    fence: crate::job::Fence,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.host.untrack(self.fence);
    }
}

impl Host {
    pub(super) async fn run_attempt(
        self: Arc<Self>,
        job: ClaimedJob,
        cancel: watch::Receiver<Option<CancelReason>>,
    ) {
        let _slot = SlotGuard {
            host: &self,
            fence: job.fence(),
        };
        let started = Instant::now();
        // When the attempt began, as recorded on its row: now, not the
        // claim's `now`, which was read before the claim waited its turn
        // (on PostgreSQL, for other hosts' claims): an attempt never looks
        // as if it began before the claim that let it run took effect.
        let began = self.clock.now().max(job.attempted_at);
        let queue_wait = job.attempted_at.since(job.run_at);
        tracing::debug!(
            job_id = job.id, kind = %job.kind, attempt = job.attempt, epoch = job.epoch,
            queue_wait_ms = queue_wait.as_millis() as u64,
            "attempt started"
        );

        let mut watcher = cancel.clone();
        let cancelled = async move {
            if watcher.wait_for(|r| r.is_some()).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        // This attempt runs on the version loaded now, whatever a reload
        // does meanwhile.
        let loaded = self.plugins().get(&job.kind).map(|p| {
            (
                Arc::clone(&p.plugin),
                p.content_hash.clone(),
                p.settings.record,
                p.settings.record_max,
            )
        });
        let component_hash = loaded.as_ref().map(|(_, h, _, _)| h.clone());
        let record_all = loaded.as_ref().is_some_and(|(_, _, all, _)| *all);
        let record_none = loaded.as_ref().is_none_or(|(_, _, _, max)| *max == 0);
        let report = match loaded {
            Some((plugin, _, _, record_max)) => {
                let ctx = RunContext {
                    capture_budget: record_max,
                    ..self.run_ctx.clone()
                };
                plugin.run(&job, &ctx, cancelled).await
            }
            None => RunReport {
                result: Err(RunError::Retryable {
                    message: format!(
                        "no plugin for kind {:?} (expected {}/{}.wasm)",
                        job.kind,
                        self.config.host.plugins_dir.display(),
                        job.kind
                    ),
                    retry_after: None,
                }),
                fuel_used: 0,
                elapsed: Duration::ZERO,
                logs_dropped: 0,
                effects: Default::default(),
                captured: Default::default(),
                deadline_ms: 0,
            },
        };
        if report.logs_dropped > 0 {
            self.metrics.logs_dropped.fetch_add(
                u64::from(report.logs_dropped),
                std::sync::atomic::Ordering::Relaxed,
            );
            tracing::warn!(
                job_id = job.id,
                dropped = report.logs_dropped,
                "plugin log lines over quota were dropped"
            );
        }

        // From here on the fenced write-back decides; a cancel that comes
        // later changes nothing.
        self.mark_finishing(job.fence());
        let now = self.clock.now();
        let reason = *cancel.borrow();
        let (outcome, transition) = match (&report.result, reason) {
            // The job is no longer ours: whatever the attempt produced, it
            // must not be written.
            (_, Some(CancelReason::LeaseLost)) => {
                Metrics::inc(&self.metrics.fenced_out);
                tracing::warn!(
                    job_id = job.id, kind = %job.kind, attempt = job.attempt, epoch = job.epoch,
                    outcome = %AttemptOutcome::FencedOut,
                    "attempt abandoned: the job was taken from this worker"
                );
                return;
            }
            (Err(RunError::Cancelled), _) => (AttemptOutcome::HostShutdown, Transition::Release),
            (result, _) => {
                let settings = self.settings(&job.kind);
                settings
                    .retry
                    .decide(job.attempt, job.max_attempts, result, now)
            }
        };

        let error = match &report.result {
            Ok(_) => None,
            Err(RunError::Cancelled) => Some("host shut down during the attempt".to_owned()),
            Err(e) => Some(cap_text(e.to_string(), MAX_ERROR_TEXT)),
        };
        let transition = match transition {
            Transition::Retry { run_at, error } => Transition::Retry {
                run_at,
                error: cap_text(error, MAX_ERROR_TEXT),
            },
            Transition::Discard { error } => Transition::Discard {
                error: cap_text(error, MAX_ERROR_TEXT),
            },
            other => other,
        };
        let settings = self.settings(&job.kind);
        // A completion that read kv may find a key changed at commit: then
        // the store writes this retry instead, in the same transaction.
        let on_conflict = (matches!(transition, Transition::Complete { .. })
            && !report.effects.kv_reads.is_empty())
        .then(|| ConflictRetry {
            run_at: now.plus(conflict_delay(job.attempt)),
            max_conflicts: settings.max_conflicts,
            fallback_run_at: match settings.retry.after_failure(
                job.attempt,
                job.max_attempts,
                String::new(),
                None,
                now,
            ) {
                Transition::Retry { run_at, .. } => Some(run_at),
                _ => None,
            },
        });
        let breaker = match &settings.breaker {
            Some(policy) => policy.judge(outcome).map(|failed| BreakerCount {
                kind: job.kind.clone(),
                failed,
                threshold: policy.failures,
                window: policy.window,
                cooldown: policy.cooldown,
                error: error.clone(),
            }),
            // Off: only successes count, so that a breaker left open or
            // half-open from when it was on still closes with its probe.
            None => (outcome == AttemptOutcome::Completed).then(|| {
                let policy = crate::policy::BreakerPolicy::default();
                BreakerCount {
                    kind: job.kind.clone(),
                    failed: false,
                    threshold: policy.failures,
                    window: policy.window,
                    cooldown: policy.cooldown,
                    error: None,
                }
            }),
        };
        // What the attempt read, kept for a replay: for every failure a
        // plugin ran for (a shutdown is not one), and for every attempt of a
        // plugin that records all.
        let recorded = !record_none
            && !matches!(report.result, Err(RunError::Cancelled))
            && (record_all || report.result.is_err());
        let recording = recorded.then(|| {
            Recording::of(
                &job,
                &report,
                component_hash.as_deref(),
                &settings.grants,
                &settings.limits,
            )
            .to_bytes()
        });
        let finish = Finish {
            fence: job.fence(),
            attempt: AttemptRecord {
                attempt: job.attempt,
                outcome,
                error,
                fuel_used: Some(report.fuel_used),
                started_at: began,
                ended_at: now,
                component_hash,
                recording,
                host: Some(self.config.host.worker_id.clone()),
            },
            transition,
            effects: report.effects,
            on_conflict,
            breaker,
        };
        // The times this write-back may make the job due again at: the
        // producer looks then (see `idle`).
        let due = [
            match &finish.transition {
                Transition::Retry { run_at, .. } => Some(*run_at),
                _ => None,
            },
            finish.on_conflict.as_ref().map(|c| c.run_at),
            finish.on_conflict.as_ref().and_then(|c| c.fallback_run_at),
        ];
        for at in due.into_iter().flatten() {
            self.producer_quiet.due_at(at);
        }
        let events = finish.effects.events.len() as u64;
        let writing = Instant::now();
        let written = self.write_back(finish).await;
        self.metrics
            .instruments
            .phase(Phase::WriteBack, writing.elapsed());
        self.metrics.instruments.phase(Phase::Run, report.elapsed);
        match written {
            Ok(written) if written.fenced == Fenced::Applied => {
                if let Some(key) = &written.conflict {
                    // Another job changed a key this attempt read: nothing
                    // of the completion was written.
                    Metrics::inc(&self.metrics.kv_conflicts);
                    tracing::debug!(
                        job_id = job.id, epoch = job.epoch, key = %key, next = %written.next,
                        "kv conflict: retrying without the attempt's effects"
                    );
                } else if events > 0 {
                    self.backlog.add(events);
                    self.relay_wake.notify_one();
                }
                if let Some(change) = &written.breaker {
                    self.breaker_changed(change);
                }
                self.publish(
                    job.id,
                    &job.kind,
                    written.next,
                    job.attempt,
                    job.epoch,
                    Some(written.outcome),
                );
                self.metrics.record_outcome(written.outcome, now);
                self.metrics.record_attempt(
                    self.plugin_label(&job.kind),
                    written.outcome,
                    report.elapsed,
                    queue_wait,
                    now,
                );
                self.metrics.record_sample(|| AttemptSample {
                    job_id: job.id,
                    started,
                    queue_wait,
                    run: report.elapsed,
                    durable: Instant::now(),
                });
                tracing::info!(
                    job_id = job.id, kind = %job.kind, attempt = job.attempt, epoch = job.epoch,
                    outcome = %written.outcome, next = %written.next,
                    run_ms = report.elapsed.as_millis() as u64,
                    queue_wait_ms = queue_wait.as_millis() as u64,
                    fuel = report.fuel_used,
                    error = report.result.as_ref().err().map(|e| e.to_string()),
                    "attempt finished"
                );
            }
            Ok(_) => {
                Metrics::inc(&self.metrics.fenced_out);
                tracing::warn!(
                    job_id = job.id, kind = %job.kind, attempt = job.attempt, epoch = job.epoch,
                    outcome = %AttemptOutcome::FencedOut, would_have_been = %outcome,
                    "write-back fenced out: the job was taken from this worker; nothing recorded"
                );
            }
            Err(e) => {
                tracing::error!(
                    job_id = job.id, epoch = job.epoch, outcome = %outcome,
                    "write-back failed, leaving the job to the rescuer: {e}"
                );
            }
        }
    }

    /// Logs and counts a breaker's change of state.
    pub(super) fn breaker_changed(&self, change: &BreakerChange) {
        match change.to {
            BreakerState::Open => {
                Metrics::inc(&self.metrics.breaker_opened);
                tracing::warn!(
                    kind = %change.kind, from = %change.from,
                    retry_at = change.retry_at.map(|t| t.to_string()),
                    "circuit breaker opened: the kind's jobs wait until the cooldown ends"
                );
            }
            BreakerState::HalfOpen => {
                Metrics::inc(&self.metrics.breaker_half_opened);
                tracing::info!(kind = %change.kind, "circuit breaker half-open: one probe admitted");
            }
            BreakerState::Closed => {
                Metrics::inc(&self.metrics.breaker_closed);
                tracing::info!(kind = %change.kind, from = %change.from, "circuit breaker closed");
            }
        }
    }

    /// Writes `finish`, retrying store failures until it is applied or
    /// fenced out, or until the lease would have run out anyway (then the
    /// rescuer takes over).
    async fn write_back(&self, finish: Finish) -> Result<FinishOutcome, StoreError> {
        let give_up = tokio::time::Instant::now() + self.config.host.lease;
        let mut delay = Duration::from_millis(20);
        loop {
            match self.store.finish(finish.clone()).await {
                Ok(r) => return Ok(r),
                Err(e @ StoreError::Backend(_)) => {
                    Metrics::inc(&self.metrics.store_errors);
                    if tokio::time::Instant::now() + delay > give_up {
                        return Err(e);
                    }
                    tracing::warn!(job_id = finish.fence.id, "write-back failed, retrying: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                // Closed, or an answer about the write itself (a conflict):
                // trying again would not change it.
                Err(e) => return Err(e),
            }
        }
    }
}
