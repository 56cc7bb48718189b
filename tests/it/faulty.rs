//! A store that fails on demand: the test's store (SQLite or PostgreSQL),
//! with switches that make chosen operations fail as a broken database
//! would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use jobbox::health::HostRecord;
use jobbox::job::{
    Enqueued, ExpiredLease, Fence, Fenced, Finish, JobAction, JobFilter, JobId, JobRecord,
    JobState, KvEntry, NewJob, Transition,
};
use jobbox::outbox::{ClaimedEvent, Delivery, EventRecord, EventState};
use jobbox::policy::{BreakerRecord, BreakerState, PauseRecord, PauseScope};
use jobbox::schedule::{ApplyReport, FireOutcome, ScheduleFire, ScheduleRecord, ScheduleUpsert};
use jobbox::store::{
    Bulk, ClaimRequest, Claimed, CleanReport, CleanRequest, EventCounts, FinishOutcome, JobEffects,
    QueueStats, StateCounts, Store, StoreError, StoreFuture,
};
use jobbox::time::Timestamp;

/// The test's store behind switches.
#[derive(Debug)]
pub struct Faulty {
    inner: Arc<dyn Store>,
    /// Claims fail.
    pub claims: AtomicBool,
    /// Lease renewals fail.
    pub leases: AtomicBool,
    /// The next enqueue or retry answers late, as over a slow network:
    /// once a claim took a job after it committed (or after
    /// [`SLOW_ANSWER`]).
    pub slow_answers: AtomicBool,
    /// The same for the next attempt's write-back.
    pub slow_finishes: AtomicBool,
    /// Jobs claims have taken.
    claimed: AtomicU64,
}

/// The latest a slow answer comes.
pub const SLOW_ANSWER: Duration = Duration::from_secs(5);

impl Faulty {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            claims: AtomicBool::new(false),
            leases: AtomicBool::new(false),
            slow_answers: AtomicBool::new(false),
            slow_finishes: AtomicBool::new(false),
            claimed: AtomicU64::new(0),
        })
    }

    pub fn set(flag: &AtomicBool, on: bool) {
        flag.store(on, Ordering::SeqCst);
    }

    /// `op`'s answer, late if `slow` is set (which it clears).
    fn answer<'a, T: Send + 'a>(
        &'a self,
        slow: &'a AtomicBool,
        op: StoreFuture<'a, T>,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move {
            let before = self.claimed.load(Ordering::SeqCst);
            let out = op.await;
            if slow.swap(false, Ordering::SeqCst) {
                let deadline = tokio::time::Instant::now() + SLOW_ANSWER;
                while self.claimed.load(Ordering::SeqCst) == before
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            out
        })
    }
}

fn broken<T: Send + 'static>() -> StoreFuture<'static, T> {
    Box::pin(async { Err(StoreError::Backend("disk I/O error (injected)".into())) })
}

#[allow(unused_variables, reason = "generated delegation")]
impl Store for Faulty {
    fn enqueue(&self, jobs: Vec<NewJob>, now: Timestamp) -> StoreFuture<'_, Vec<Enqueued>> {
        self.answer(&self.slow_answers, self.inner.enqueue(jobs, now))
    }

    fn claim(&self, req: ClaimRequest) -> StoreFuture<'_, Claimed> {
        if self.claims.load(Ordering::SeqCst) {
            return broken();
        }
        Box::pin(async move {
            let claimed = self.inner.claim(req).await?;
            self.claimed
                .fetch_add(claimed.jobs.len() as u64, Ordering::SeqCst);
            Ok(claimed)
        })
    }

    fn finish(&self, finish: Finish) -> StoreFuture<'_, FinishOutcome> {
        self.answer(&self.slow_finishes, self.inner.finish(finish))
    }

    fn extend_leases(&self, fences: Vec<Fence>, until: Timestamp) -> StoreFuture<'_, Vec<Fenced>> {
        if self.leases.load(Ordering::SeqCst) {
            return broken();
        }
        self.inner.extend_leases(fences, until)
    }

    fn expired_leases(&self, now: Timestamp, limit: u32) -> StoreFuture<'_, Vec<ExpiredLease>> {
        self.inner.expired_leases(now, limit)
    }

    fn rescue(
        &self,
        lease: ExpiredLease,
        transition: Transition,
        now: Timestamp,
    ) -> StoreFuture<'_, Fenced> {
        self.inner.rescue(lease, transition, now)
    }

    fn retry_job(&self, id: JobId, now: Timestamp) -> StoreFuture<'_, JobState> {
        self.answer(&self.slow_answers, self.inner.retry_job(id, now))
    }

    fn cancel_job(&self, id: JobId, now: Timestamp) -> StoreFuture<'_, JobState> {
        self.inner.cancel_job(id, now)
    }

    fn retry_jobs(&self, filter: JobFilter, limit: u32, now: Timestamp) -> StoreFuture<'_, Bulk> {
        self.answer(
            &self.slow_answers,
            self.inner.retry_jobs(filter, limit, now),
        )
    }

    fn cancel_jobs(&self, filter: JobFilter, limit: u32, now: Timestamp) -> StoreFuture<'_, Bulk> {
        self.inner.cancel_jobs(filter, limit, now)
    }

    fn job(&self, id: JobId) -> StoreFuture<'_, Option<JobRecord>> {
        self.inner.job(id)
    }

    fn list_jobs(&self, filter: JobFilter) -> StoreFuture<'_, Vec<JobRecord>> {
        self.inner.list_jobs(filter)
    }

    fn count_jobs(&self, filter: JobFilter, action: Option<JobAction>) -> StoreFuture<'_, u64> {
        self.inner.count_jobs(filter, action)
    }

    fn last_job_id(&self) -> StoreFuture<'_, Option<JobId>> {
        self.inner.last_job_id()
    }

    fn job_effects(&self, id: JobId) -> StoreFuture<'_, Option<JobEffects>> {
        self.inner.job_effects(id)
    }

    fn counts(&self) -> StoreFuture<'_, StateCounts> {
        self.inner.counts()
    }

    fn recording(
        &self,
        id: JobId,
        attempt: Option<u32>,
    ) -> StoreFuture<'_, Option<(u32, Vec<u8>)>> {
        self.inner.recording(id, attempt)
    }

    fn kv_get(&self, namespace: String, key: String) -> StoreFuture<'_, KvEntry> {
        self.inner.kv_get(namespace, key)
    }

    fn kv_list(
        &self,
        namespace: String,
        prefix: String,
        limit: u32,
    ) -> StoreFuture<'_, Vec<(String, KvEntry)>> {
        self.inner.kv_list(namespace, prefix, limit)
    }

    fn claim_events(
        &self,
        now: Timestamp,
        limit: u32,
        lease: Duration,
    ) -> StoreFuture<'_, Vec<ClaimedEvent>> {
        self.inner.claim_events(now, limit, lease)
    }

    fn record_delivery(
        &self,
        id: i64,
        attempt: u32,
        delivery: Delivery,
        now: Timestamp,
    ) -> StoreFuture<'_, Fenced> {
        self.inner.record_delivery(id, attempt, delivery, now)
    }

    fn list_events(
        &self,
        state: Option<EventState>,
        before: Option<i64>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<EventRecord>> {
        self.inner.list_events(state, before, limit)
    }

    fn retry_event(&self, id: i64, now: Timestamp) -> StoreFuture<'_, ()> {
        self.inner.retry_event(id, now)
    }

    fn pending_events(&self) -> StoreFuture<'_, u64> {
        self.inner.pending_events()
    }

    fn event_counts(&self) -> StoreFuture<'_, EventCounts> {
        self.inner.event_counts()
    }

    fn apply_schedules(
        &self,
        schedules: Vec<ScheduleUpsert>,
        prune: bool,
        now: Timestamp,
    ) -> StoreFuture<'_, ApplyReport> {
        self.inner.apply_schedules(schedules, prune, now)
    }

    fn schedules(&self) -> StoreFuture<'_, Vec<ScheduleRecord>> {
        self.inner.schedules()
    }

    fn schedule(&self, id: String) -> StoreFuture<'_, Option<ScheduleRecord>> {
        self.inner.schedule(id)
    }

    fn due_schedules(&self, now: Timestamp, limit: u32) -> StoreFuture<'_, Vec<ScheduleRecord>> {
        self.inner.due_schedules(now, limit)
    }

    fn next_schedule_wake(&self) -> StoreFuture<'_, (Option<Timestamp>, bool)> {
        self.inner.next_schedule_wake()
    }

    fn fire_schedule(&self, fire: ScheduleFire) -> StoreFuture<'_, FireOutcome> {
        self.inner.fire_schedule(fire)
    }

    fn fire_buffered(
        &self,
        id: String,
        version: i64,
        nominal: Timestamp,
        job: NewJob,
        now: Timestamp,
    ) -> StoreFuture<'_, FireOutcome> {
        self.inner.fire_buffered(id, version, nominal, job, now)
    }

    fn trigger_schedule(
        &self,
        id: String,
        job: NewJob,
        now: Timestamp,
    ) -> StoreFuture<'_, Enqueued> {
        self.inner.trigger_schedule(id, job, now)
    }

    fn pause_schedule(&self, id: String, note: String, now: Timestamp) -> StoreFuture<'_, bool> {
        self.inner.pause_schedule(id, note, now)
    }

    fn resume_schedule(
        &self,
        id: String,
        next_fire_at: Option<Timestamp>,
        next_run_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreFuture<'_, bool> {
        self.inner
            .resume_schedule(id, next_fire_at, next_run_at, now)
    }

    fn delete_schedule(&self, id: String) -> StoreFuture<'_, ()> {
        self.inner.delete_schedule(id)
    }

    fn breakers(&self) -> StoreFuture<'_, Vec<BreakerRecord>> {
        self.inner.breakers()
    }

    fn reset_breaker(&self, kind: String, now: Timestamp) -> StoreFuture<'_, Option<BreakerState>> {
        self.inner.reset_breaker(kind, now)
    }

    fn pause(
        &self,
        scope: PauseScope,
        name: String,
        note: String,
        now: Timestamp,
    ) -> StoreFuture<'_, bool> {
        self.inner.pause(scope, name, note, now)
    }

    fn resume(&self, scope: PauseScope, name: String) -> StoreFuture<'_, bool> {
        self.inner.resume(scope, name)
    }

    fn pauses(&self) -> StoreFuture<'_, Vec<PauseRecord>> {
        self.inner.pauses()
    }

    fn queues(&self, now: Timestamp) -> StoreFuture<'_, Vec<QueueStats>> {
        self.inner.queues(now)
    }

    fn heartbeat(&self, host: HostRecord, forget_before: Timestamp) -> StoreFuture<'_, ()> {
        self.inner.heartbeat(host, forget_before)
    }

    fn hosts(&self) -> StoreFuture<'_, Vec<HostRecord>> {
        self.inner.hosts()
    }

    fn clean(&self, req: CleanRequest) -> StoreFuture<'_, CleanReport> {
        self.inner.clean(req)
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        self.inner.close()
    }
}
