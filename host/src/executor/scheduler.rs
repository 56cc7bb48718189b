//! The scheduler: makes schedules' fires when they come due.
//!
//! It sleeps until the earliest next fire of any schedule (read from the
//! store), or until `scheduler.refresh` has passed (to see schedules that
//! another process applied), or until woken by a change made through this
//! host. Each fire is a fenced transition in the store, so any number of
//! hosts may run a scheduler on one database: each fire is made exactly
//! once, whichever wins, and a host killed at any moment leaves either the
//! whole fire or nothing.

use std::sync::Arc;

use tokio::sync::watch;

use super::Host;
use crate::health::Loop;
use crate::metrics::Metrics;
use crate::schedule::{self, ScheduleDef, ScheduleFire, ScheduleRecord};
use crate::store::StoreError;

/// What one scheduler step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStep {
    /// Schedules that were due.
    pub due: usize,
    /// Jobs inserted.
    pub fired: usize,
    /// Fires that passed during downtime and were not made.
    pub missed: u64,
    /// Fires not made because the previous fire's job was unfinished.
    pub skipped: u64,
    /// Fires another scheduler had made first (or whose schedule changed
    /// meanwhile): nothing was written.
    pub fenced_out: usize,
}

impl Host {
    pub(super) async fn scheduler(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let refresh = self.config.scheduler.refresh;
        loop {
            let started = std::time::Instant::now();
            let full = match self.fire_due_schedules().await {
                Ok(step) => {
                    self.report(Loop::Scheduler, started, Ok((step.fired as u64, 0)));
                    step.due >= self.config.scheduler.batch as usize
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.store_errors);
                    tracing::error!("scheduler: {e}");
                    self.report(Loop::Scheduler, started, Err(e.to_string()));
                    false
                }
            };
            if *stop.borrow() {
                break;
            }
            if full {
                continue;
            }
            let sleep = match self.store.next_schedule_wake().await {
                Ok((next, buffered)) => {
                    let mut sleep = refresh;
                    // A buffered fire waits for a job to finish, which no
                    // timer announces: look often while one waits.
                    if buffered {
                        sleep = sleep.min(self.config.host.poll_interval);
                    }
                    if let Some(next) = next {
                        sleep = sleep.min(next.since(self.clock.now()));
                    }
                    sleep
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.store_errors);
                    tracing::error!("scheduler: {e}");
                    refresh
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                () = self.scheduler_wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// One scheduler step: makes the fires of every due schedule (up to
    /// `scheduler.batch`), each in its own fenced transaction.
    pub async fn fire_due_schedules(&self) -> Result<SchedulerStep, StoreError> {
        let now = self.clock.now();
        let due = self
            .store
            .due_schedules(now, self.config.scheduler.batch)
            .await?;
        let mut step = SchedulerStep {
            due: due.len(),
            ..SchedulerStep::default()
        };
        for rec in due {
            let def = match ScheduleDef::from_spec_json(&rec.spec) {
                Ok(def) => def,
                Err(e) => {
                    tracing::error!(schedule = %rec.id, "schedule cannot be read, skipping it: {e}");
                    continue;
                }
            };
            self.release_buffered(&rec, &def, &mut step).await?;
            self.fire_one(&rec, &def, &mut step).await?;
        }
        if step.fired > 0 {
            self.wake.notify_one();
        }
        Ok(step)
    }

    /// Inserts the job of a buffered fire whose predecessor has finished.
    async fn release_buffered(
        &self,
        rec: &ScheduleRecord,
        def: &ScheduleDef,
        step: &mut SchedulerStep,
    ) -> Result<(), StoreError> {
        let Some(nominal) = rec.buffered_at else {
            return Ok(());
        };
        if rec.last_job_state.is_some_and(|s| !s.is_final()) {
            return Ok(());
        }
        let now = self.clock.now();
        let job = self.with_defaults(def.job_for(nominal, now));
        let out = self
            .store
            .fire_buffered(rec.id.clone(), rec.version, nominal, job, now)
            .await?;
        if out.applied {
            step.fired += out.jobs.len();
            self.metrics
                .add(&self.metrics.schedule_fires, out.jobs.len() as u64);
            tracing::info!(schedule = %rec.id, nominal = %schedule::rfc3339(nominal), job_id = ?out.jobs.first(), "buffered fire released");
        } else {
            step.fenced_out += 1;
        }
        Ok(())
    }

    /// Makes the due fire of one schedule as its plan says.
    async fn fire_one(
        &self,
        rec: &ScheduleRecord,
        def: &ScheduleDef,
        step: &mut SchedulerStep,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        let (Some(next_fire), Some(next_run)) = (rec.next_fire_at, rec.next_run_at) else {
            return Ok(());
        };
        if next_run > now {
            return Ok(());
        }
        let plan = schedule::plan(def, next_fire, now);
        let fires = plan
            .fires
            .iter()
            .map(|f| {
                (
                    f.nominal,
                    self.with_defaults(def.job_for(f.nominal, f.run_at)),
                )
            })
            .collect();
        let out = self
            .store
            .fire_schedule(ScheduleFire {
                id: rec.id.clone(),
                version: rec.version,
                expected_next: next_fire,
                fires,
                missed: plan.missed,
                overlap: def.overlap,
                next_fire_at: plan.next_fire_at,
                next_run_at: plan.next_run_at,
                now,
            })
            .await?;
        if !out.applied {
            step.fenced_out += 1;
            tracing::debug!(schedule = %rec.id, "fire already made by another scheduler, or the schedule changed");
            return Ok(());
        }
        step.fired += out.jobs.len();
        step.missed += plan.missed;
        step.skipped += out.skipped;
        self.metrics
            .add(&self.metrics.schedule_fires, out.jobs.len() as u64);
        self.metrics.add(&self.metrics.schedule_missed, plan.missed);
        self.metrics
            .add(&self.metrics.schedule_skipped, out.skipped);
        let next = plan.next_fire_at.map(schedule::rfc3339);
        if plan.missed > 0 {
            tracing::warn!(
                schedule = %rec.id, missed = plan.missed, at_least = plan.missed_at_least,
                misfire = %def.misfire, fired = out.jobs.len(), next = ?next,
                "schedule missed fires while no scheduler ran"
            );
        } else if plan.late && !out.jobs.is_empty() {
            tracing::warn!(schedule = %rec.id, misfire = %def.misfire, "late fire made now");
        }
        if out.skipped > 0 {
            tracing::warn!(
                schedule = %rec.id, skipped = out.skipped, overlap = %def.overlap,
                "fire skipped: the previous fire's job is unfinished"
            );
        }
        if out.buffered {
            tracing::info!(schedule = %rec.id, "fire buffered until the previous fire's job finishes");
        }
        for (job_id, fire) in out.jobs.iter().zip(&plan.fires) {
            tracing::info!(
                schedule = %rec.id, job_id, nominal = %schedule::rfc3339(fire.nominal),
                next = ?next, "schedule fired"
            );
        }
        Ok(())
    }

    /// A schedule's job with its kind's defaults (`max_attempts`).
    fn with_defaults(&self, mut job: crate::job::NewJob) -> crate::job::NewJob {
        job.max_attempts
            .get_or_insert(self.settings(&job.kind).retry.max_attempts);
        job
    }
}
