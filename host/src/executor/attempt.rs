//! One attempt: run the job in the sandbox, decide, write back fenced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{CancelReason, Host};
use crate::job::{AttemptOutcome, AttemptRecord, ClaimedJob, Fenced, Finish, Transition};
use crate::metrics::{AttemptSample, Metrics};
use crate::sandbox::{RunError, RunReport};
use crate::store::StoreError;

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
        let report = match self.registry.get(&job.kind) {
            Some(p) => p.plugin.run(&job, &self.run_ctx, cancelled).await,
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
            Err(e) => Some(e.to_string()),
        };
        let mut finish = Finish {
            fence: job.fence(),
            attempt: AttemptRecord {
                attempt: job.attempt,
                outcome,
                error,
                fuel_used: Some(report.fuel_used),
                started_at: job.attempted_at,
                ended_at: now,
            },
            transition,
            effects: report.effects,
        };
        let events = finish.effects.events.len() as u64;
        let mut written = self.write_back(finish.clone()).await;
        let mut outcome = outcome;
        if let Err(StoreError::KvConflict { key }) = &written {
            // Another job changed a key this attempt read: nothing of the
            // completion was written. Retry the job, without its effects.
            Metrics::inc(&self.metrics.kv_conflicts);
            let error = format!("kv conflict: key {key:?} changed during the attempt");
            tracing::debug!(job_id = job.id, epoch = job.epoch, "{error}; retrying");
            outcome = AttemptOutcome::RetryableError;
            finish.attempt.outcome = outcome;
            finish.attempt.error = Some(error.clone());
            finish.transition = self.settings(&job.kind).retry.after_failure(
                job.attempt,
                job.max_attempts,
                error,
                None,
                now,
            );
            finish.effects = Default::default();
            written = self.write_back(finish.clone()).await;
        } else if matches!(written, Ok(Fenced::Applied)) && events > 0 {
            self.backlog.add(events);
            self.relay_wake.notify_one();
        }
        let next = finish.transition.target_state();
        match written {
            Ok(Fenced::Applied) => {
                self.metrics.record_outcome(outcome, now);
                self.metrics.record_sample(|| AttemptSample {
                    job_id: job.id,
                    started,
                    queue_wait,
                    run: report.elapsed,
                    durable: Instant::now(),
                });
                tracing::info!(
                    job_id = job.id, kind = %job.kind, attempt = job.attempt, epoch = job.epoch,
                    outcome = %outcome, next = %next,
                    run_ms = report.elapsed.as_millis() as u64,
                    queue_wait_ms = queue_wait.as_millis() as u64,
                    fuel = report.fuel_used,
                    error = report.result.as_ref().err().map(|e| e.to_string()),
                    "attempt finished"
                );
            }
            Ok(Fenced::FencedOut) => {
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

    /// Writes `finish`, retrying store failures until it is applied or
    /// fenced out, or until the lease would have run out anyway (then the
    /// rescuer takes over).
    async fn write_back(&self, finish: Finish) -> Result<Fenced, StoreError> {
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
