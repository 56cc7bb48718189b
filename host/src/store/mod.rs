//! Durable job storage behind the [`Store`] trait.
//!
//! The executor talks only to this trait; it never sees SQL. Every method
//! that moves a job between states is one fenced transition: it names the
//! job, the state it expects and (for a claimed job) the claim epoch, and a
//! write that matches nothing reports [`Fenced::FencedOut`] rather than
//! failing. `now` is always passed in, never read by the store.
//!
//! [`sqlite::SqliteStore`] is the embedded default.

pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::job::{
    ClaimedJob, Enqueued, ExpiredLease, Fence, Fenced, Finish, JobFilter, JobId, JobRecord,
    JobState, KvEntry, NewJob, Transition,
};
use crate::outbox::{ClaimedEvent, Delivery, EventRecord, EventState};
use crate::time::Timestamp;

/// The boxed future every store method returns, so that `dyn Store` works.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What can go wrong in the store. Callers branch on the first three; the
/// rest are failures of the backend itself.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(JobId),
    /// An operator action that the job's current state does not allow.
    #[error("job {id} is {state}: {action} needs {expected}")]
    InvalidState {
        id: JobId,
        state: JobState,
        action: &'static str,
        expected: &'static str,
    },
    /// An idempotency key reused for a different job.
    #[error(
        "idempotency key {key:?} already belongs to job {existing} with a different kind, payload or callback"
    )]
    KeyConflict { key: String, existing: JobId },
    /// A key the attempt read changed before its completion committed:
    /// nothing of the completion was written.
    #[error("kv conflict: key {key:?} changed since the attempt read it")]
    KvConflict { key: String },
    #[error("outbox event {0} not found")]
    EventNotFound(i64),
    #[error("outbox event {id} is {state}: retry needs failed")]
    EventNotFailed { id: i64, state: EventState },
    /// A job the store was asked to enqueue is not valid.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error("the store is shut down")]
    Closed,
    #[error("database: {0}")]
    Backend(String),
}

/// A request to claim jobs.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    pub now: Timestamp,
    /// At most this many jobs are claimed (the caller's free slots).
    pub limit: u32,
    /// Kinds that have no free slot right now.
    pub exclude_kinds: Vec<String>,
    /// How long the claim holds before the rescuer may take it back.
    pub lease: Duration,
    /// Who claims (recorded for operators).
    pub worker: String,
}

/// Counts of jobs per state.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateCounts {
    pub available: u64,
    pub running: u64,
    pub retryable: u64,
    pub completed: u64,
    pub discarded: u64,
    pub cancelled: u64,
}

/// Durable storage of jobs and attempts.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Inserts jobs. A job whose idempotency key already exists is not
    /// inserted: the existing job's id comes back with `created: false`
    /// (or [`StoreError::KeyConflict`] if its kind or payload differ, and
    /// then nothing of the batch is written).
    fn enqueue(&self, jobs: Vec<NewJob>, now: Timestamp) -> StoreFuture<'_, Vec<Enqueued>>;

    /// available/retryable with `run_at <= now` → running, in
    /// `(priority, run_at, id)` order, at most `limit` of them, in one
    /// atomic step: `attempt` and `epoch` rise by one and a lease is set.
    /// Returned in claim order.
    fn claim(&self, req: ClaimRequest) -> StoreFuture<'_, Vec<ClaimedJob>>;

    /// Applies one attempt's write-back (attempt row + transition) if the job
    /// is still running under `finish.fence`. Callers may submit many at
    /// once; each is fenced on its own, and the result is only returned once
    /// it is durable. With a `Complete` transition the attempt's effects
    /// commit in the same transaction: every kv read is checked (a changed
    /// key fails the whole write-back with [`StoreError::KvConflict`]), kv
    /// writes and outbox events are stored. A job with a callback URL gets
    /// its callback event when it completes or is discarded.
    fn finish(&self, finish: Finish) -> StoreFuture<'_, Fenced>;

    /// Extends the leases of jobs still running under the given fences to
    /// `until`. Returns, in order, whether each one still holds.
    fn extend_leases(&self, fences: Vec<Fence>, until: Timestamp) -> StoreFuture<'_, Vec<Fenced>>;

    /// Running jobs whose lease expired at or before `now`, oldest first.
    fn expired_leases(&self, now: Timestamp, limit: u32) -> StoreFuture<'_, Vec<ExpiredLease>>;

    /// Takes back a job whose lease expired: records the attempt as
    /// `lease_expired` and applies `transition`, fenced on the epoch, on the
    /// job still running, and on its lease still being expired at `now`.
    fn rescue(
        &self,
        lease: ExpiredLease,
        transition: Transition,
        now: Timestamp,
    ) -> StoreFuture<'_, Fenced>;

    /// discarded/retryable/cancelled → available now (operator action).
    fn retry_job(&self, id: JobId, now: Timestamp) -> StoreFuture<'_, JobState>;

    /// available/retryable/running → cancelled (operator action). A running
    /// attempt is recorded as `cancelled` and its worker is fenced out.
    fn cancel_job(&self, id: JobId, now: Timestamp) -> StoreFuture<'_, JobState>;

    /// One job with its attempts, or `None`.
    fn job(&self, id: JobId) -> StoreFuture<'_, Option<JobRecord>>;

    /// Jobs matching `filter`, newest first, without their attempts.
    fn list_jobs(&self, filter: JobFilter) -> StoreFuture<'_, Vec<JobRecord>>;

    /// How many jobs are in each state.
    fn counts(&self) -> StoreFuture<'_, StateCounts>;

    /// A kv entry of `namespace`.
    fn kv_get(&self, namespace: String, key: String) -> StoreFuture<'_, KvEntry>;

    /// Live kv entries of `namespace` whose key starts with `prefix`, in key
    /// order, at most `limit`.
    fn kv_list(
        &self,
        namespace: String,
        prefix: String,
        limit: u32,
    ) -> StoreFuture<'_, Vec<(String, KvEntry)>>;

    /// Due pending events, at most `limit`, each leased to the caller until
    /// `now + lease` and with its attempt count raised.
    fn claim_events(
        &self,
        now: Timestamp,
        limit: u32,
        lease: Duration,
    ) -> StoreFuture<'_, Vec<ClaimedEvent>>;

    /// Records a delivery attempt's outcome, fenced on the event still being
    /// pending under the same attempt number.
    fn record_delivery(
        &self,
        id: i64,
        attempt: u32,
        delivery: Delivery,
        now: Timestamp,
    ) -> StoreFuture<'_, Fenced>;

    /// Events, newest first.
    fn list_events(
        &self,
        state: Option<EventState>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<EventRecord>>;

    /// failed → pending, due now (operator action).
    fn retry_event(&self, id: i64, now: Timestamp) -> StoreFuture<'_, ()>;

    /// How many events await delivery.
    fn pending_events(&self) -> StoreFuture<'_, u64>;

    /// Flushes pending writes and stops the store's background work.
    fn close(&self) -> StoreFuture<'_, ()>;
}
