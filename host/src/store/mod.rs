//! Durable job storage behind the [`Store`] trait.
//!
//! The executor talks only to this trait; it never sees SQL. Every method
//! that moves a job between states is one fenced transition: it names the
//! job, the state it expects and (for a claimed job) the claim epoch, and a
//! write that matches nothing reports [`Fenced::FencedOut`] rather than
//! failing. `now` is always passed in, never read by the store.
//!
//! [`sqlite::SqliteStore`] is the embedded default;
//! [`postgres::PgStore`] is the shared database of many hosts. [`open`]
//! opens whichever [`StoreOptions`] names.

pub mod copy;
pub mod postgres;
pub mod sqlite;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::job::{
    AttemptOutcome, ClaimedJob, Enqueued, ExpiredLease, Fence, Fenced, Finish, JobAction,
    JobFilter, JobId, JobRecord, JobState, KvEntry, NewJob, Transition,
};
use crate::outbox::{ClaimedEvent, Delivery, EventRecord, EventState};
use crate::policy::{
    BreakerChange, BreakerRecord, BreakerState, PauseRecord, PauseScope, RateLimit,
};
use crate::schedule::{ApplyReport, FireOutcome, ScheduleFire, ScheduleRecord, ScheduleUpsert};
use crate::time::{Clock, SystemClock, Timestamp};

/// Which database, and its settings (`[store]` in the config).
#[derive(Clone, Debug)]
pub enum StoreOptions {
    /// `[store] path`: one SQLite file (the default, `jobbox.db`).
    Sqlite(sqlite::SqliteOptions),
    /// `[store] url` or `url_env`: a PostgreSQL database shared by hosts.
    Postgres(postgres::PgOptions),
}

impl StoreOptions {
    /// The SQLite file, if the store is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            StoreOptions::Sqlite(o) => Some(&o.path),
            StoreOptions::Postgres(_) => None,
        }
    }

    /// Where the data lives, for messages: a path, or `host:port/database`.
    pub fn describe(&self) -> String {
        match self {
            StoreOptions::Sqlite(o) => o.path.display().to_string(),
            StoreOptions::Postgres(o) => format!("postgres {}", o.target()),
        }
    }

    /// Parses `--db`: a PostgreSQL URL, else a SQLite path.
    pub fn from_arg(arg: &str) -> StoreOptions {
        if arg.starts_with("postgres://") || arg.starts_with("postgresql://") {
            StoreOptions::Postgres(postgres::PgOptions::new(arg))
        } else {
            StoreOptions::Sqlite(sqlite::SqliteOptions::new(arg))
        }
    }
}

/// An open store with the clock its hosts should read.
#[derive(Debug, Clone)]
pub struct Opened {
    pub store: Arc<dyn Store>,
    /// This machine's clock for SQLite; the database server's time for
    /// PostgreSQL, so that hosts on many machines agree on leases.
    pub clock: Arc<dyn Clock>,
}

/// Opens (creating or migrating as needed) the store `opts` names.
pub fn open(opts: &StoreOptions) -> Result<Opened, StoreError> {
    Ok(match opts {
        StoreOptions::Sqlite(o) => Opened {
            store: Arc::new(sqlite::SqliteStore::open(o)?),
            clock: Arc::new(SystemClock),
        },
        StoreOptions::Postgres(o) => {
            let store = postgres::PgStore::open(o)?;
            let clock = store.clock();
            Opened {
                store: Arc::new(store),
                clock,
            }
        }
    })
}

/// The smallest string greater than every string starting with `prefix`,
/// or `None` if there is none (the empty prefix).
pub(crate) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

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
    #[error("schedule {0:?} not found")]
    ScheduleNotFound(String),
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
    /// The rate limits of this host's configuration, by kind. The state
    /// (when each kind may next start a job) is in the store, shared by
    /// every host.
    pub rates: Vec<(String, RateLimit)>,
}

/// What a claim took, and when to try again for what it held back.
#[derive(Clone, Debug, Default)]
pub struct Claimed {
    /// In claim order.
    pub jobs: Vec<ClaimedJob>,
    /// The earliest time a job held back by a rate limit or an open
    /// breaker may be claimed (`None`: nothing was held back for a time).
    pub wake_at: Option<Timestamp>,
    /// Kinds whose breaker went from open to half-open with this claim
    /// (their probe is among `jobs`).
    pub half_opened: Vec<String>,
}

/// What a write-back did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishOutcome {
    /// `FencedOut`: the job was no longer running under the fence; nothing
    /// was written.
    pub fenced: Fenced,
    /// The outcome recorded: the one asked for, or `kv_conflict` when the
    /// completion's reads had changed.
    pub outcome: AttemptOutcome,
    /// The state the job moved to.
    pub next: JobState,
    /// The kv key whose change refused the completion.
    pub conflict: Option<String>,
    /// The breaker's change of state, if this attempt caused one.
    pub breaker: Option<BreakerChange>,
}

/// A kv write a job's completion committed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KvWriteRecord {
    /// The claim the completion ran under.
    pub epoch: u64,
    pub namespace: String,
    pub key: String,
    /// The version the write made.
    pub version: i64,
    /// It deleted the key.
    pub deleted: bool,
}

/// What a job committed besides its own row.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct JobEffects {
    pub kv_writes: Vec<KvWriteRecord>,
    pub events: Vec<EventRecord>,
}

/// Outbox events by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EventCounts {
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// What an operator's bulk action did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bulk {
    /// The jobs it moved, with their kind and new state.
    pub changed: Vec<(JobId, String, JobState)>,
    /// Whether more jobs match than it was allowed to act on.
    pub more: bool,
}

/// Jobs and attempts by queue, for operators.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    pub queue: String,
    pub counts: StateCounts,
    /// When the oldest due available or retryable job became due.
    pub oldest_due: Option<Timestamp>,
    pub paused: Option<PauseRecord>,
}

impl QueueStats {
    /// The queues of `by_queue` with the queue pauses among `pauses` (and
    /// a row for each paused queue that has no jobs), in name order.
    pub fn with_pauses(
        mut by_queue: std::collections::BTreeMap<String, QueueStats>,
        pauses: Vec<PauseRecord>,
    ) -> Vec<QueueStats> {
        for q in by_queue.values_mut() {
            q.paused = None;
        }
        for p in pauses.into_iter().filter(|p| p.scope == PauseScope::Queue) {
            let name = p.name.clone();
            by_queue
                .entry(name.clone())
                .or_insert_with(|| QueueStats {
                    queue: name,
                    ..QueueStats::default()
                })
                .paused = Some(p);
        }
        by_queue.into_values().collect()
    }
}

/// What the cleaner may delete: everything finished (or compacted) before
/// the given times, at most `batch` rows of each kind per call.
///
/// Completed jobs are found by a sweep in id order (no index serves them:
/// one would cost every completion a write): each call looks at the
/// `batch` jobs after `sweep_from`.
#[derive(Clone, Debug)]
pub struct CleanRequest {
    pub completed_before: Option<Timestamp>,
    pub sweep_from: JobId,
    /// Discarded and cancelled jobs.
    pub failed_before: Option<Timestamp>,
    pub tombstones_before: Option<Timestamp>,
    pub delivered_before: Option<Timestamp>,
    pub fires_before: Option<Timestamp>,
    pub batch: u32,
}

/// What one cleaner batch deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CleanReport {
    pub jobs: u64,
    pub attempts: u64,
    pub tombstones: u64,
    pub events: u64,
    pub fires: u64,
    /// Where the sweep of completed jobs got to: `Some(id)` to go on after
    /// `id`; `None` if it reached the end of the table or jobs too young to
    /// be due (then the next round starts over).
    #[serde(skip)]
    pub swept_to: Option<JobId>,
    /// The first job the sweep found too young to be due, if it did.
    #[serde(skip)]
    pub young_from: Option<JobId>,
}

impl CleanReport {
    /// Whether there may be more to delete right away: a kind hit the
    /// batch size, or the sweep has further to go.
    pub fn more(&self, batch: u32) -> bool {
        let b = u64::from(batch);
        self.swept_to.is_some()
            || self.tombstones >= b
            || self.events >= b
            || self.fires >= b
            || self.jobs >= b
    }

    /// Adds another batch's counts.
    pub fn add(&mut self, other: &CleanReport) {
        self.jobs += other.jobs;
        self.attempts += other.attempts;
        self.tombstones += other.tombstones;
        self.events += other.events;
        self.fires += other.fires;
    }
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
    /// Returned in claim order. Jobs of paused kinds and queues, of kinds
    /// whose breaker is open (or half-open with its probe running), over
    /// their kind's rate limit, or whose concurrency key has its limit of
    /// jobs running, are not claimed; the claim order holds among the
    /// others.
    fn claim(&self, req: ClaimRequest) -> StoreFuture<'_, Claimed>;

    /// Applies one attempt's write-back (attempt row + transition) if the job
    /// is still running under `finish.fence`. Callers may submit many at
    /// once; each is fenced on its own, and the result is only returned once
    /// it is durable. With a `Complete` transition the attempt's effects
    /// commit in the same transaction: every kv read is checked (a changed
    /// key fails the whole write-back with [`StoreError::KvConflict`]), kv
    /// writes and outbox events are stored. A job with a callback URL gets
    /// its callback event when it completes or is discarded.
    ///
    /// A completion whose kv reads changed writes `finish.on_conflict`
    /// instead, if given (else it fails with [`StoreError::KvConflict`]);
    /// `finish.breaker` updates the kind's breaker in the same transaction.
    fn finish(&self, finish: Finish) -> StoreFuture<'_, FinishOutcome>;

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

    /// Retries every job matching `filter` that can be (discarded,
    /// retryable or cancelled), at most `limit` of them.
    fn retry_jobs(&self, filter: JobFilter, limit: u32, now: Timestamp) -> StoreFuture<'_, Bulk>;

    /// Cancels every job matching `filter` that can be (available,
    /// retryable or running), at most `limit` of them.
    fn cancel_jobs(&self, filter: JobFilter, limit: u32, now: Timestamp) -> StoreFuture<'_, Bulk>;

    /// One job with its attempts, or `None`.
    fn job(&self, id: JobId) -> StoreFuture<'_, Option<JobRecord>>;

    /// Jobs matching `filter`, newest first, without their attempts.
    fn list_jobs(&self, filter: JobFilter) -> StoreFuture<'_, Vec<JobRecord>>;

    /// How many jobs match `filter` (its `limit` ignored), and with
    /// `action`, how many of them the action would move.
    fn count_jobs(&self, filter: JobFilter, action: Option<JobAction>) -> StoreFuture<'_, u64>;

    /// The highest job id, if there are jobs.
    fn last_job_id(&self) -> StoreFuture<'_, Option<JobId>>;

    /// The kv writes and outbox events job `id` committed (`None`: no such
    /// job).
    fn job_effects(&self, id: JobId) -> StoreFuture<'_, Option<JobEffects>>;

    /// How many jobs are in each state.
    fn counts(&self) -> StoreFuture<'_, StateCounts>;

    /// The recorded inputs of attempt `attempt` of job `id` (`None`: its
    /// latest recorded attempt), with the attempt's number.
    fn recording(&self, id: JobId, attempt: Option<u32>)
    -> StoreFuture<'_, Option<(u32, Vec<u8>)>>;

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

    /// Events, newest first: with `before`, only those whose id is lower
    /// (the next page after the last id seen).
    fn list_events(
        &self,
        state: Option<EventState>,
        before: Option<i64>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<EventRecord>>;

    /// failed → pending, due now (operator action).
    fn retry_event(&self, id: i64, now: Timestamp) -> StoreFuture<'_, ()>;

    /// How many events await delivery.
    fn pending_events(&self) -> StoreFuture<'_, u64>;

    /// Events by state (a scan: callers cache it).
    fn event_counts(&self) -> StoreFuture<'_, EventCounts>;

    /// Upserts schedules by id in one transaction (and with `prune`,
    /// deletes those not given). An unchanged spec changes nothing; a
    /// changed cadence takes the upsert's next fire, dropping any pending
    /// or buffered fire of the old one.
    fn apply_schedules(
        &self,
        schedules: Vec<ScheduleUpsert>,
        prune: bool,
        now: Timestamp,
    ) -> StoreFuture<'_, ApplyReport>;

    /// Every schedule, by id, with its last job's state.
    fn schedules(&self) -> StoreFuture<'_, Vec<ScheduleRecord>>;

    fn schedule(&self, id: String) -> StoreFuture<'_, Option<ScheduleRecord>>;

    /// Unpaused schedules whose next fire is due at `now`, or whose
    /// buffered fire's predecessor has finished; at most `limit`.
    fn due_schedules(&self, now: Timestamp, limit: u32) -> StoreFuture<'_, Vec<ScheduleRecord>>;

    /// The earliest `next_run_at` of an unpaused schedule, and whether any
    /// schedule holds a buffered fire.
    fn next_schedule_wake(&self) -> StoreFuture<'_, (Option<Timestamp>, bool)>;

    /// Makes a planned fire, fenced on the schedule's version and next fire
    /// time: advances the schedule, records each fire and inserts its job,
    /// in one transaction, applying `overlap` against the previous fire's
    /// job as it is in that transaction.
    fn fire_schedule(&self, fire: ScheduleFire) -> StoreFuture<'_, FireOutcome>;

    /// Inserts the job of a buffered fire, fenced on the schedule's version
    /// and on `nominal` still being buffered.
    fn fire_buffered(
        &self,
        id: String,
        version: i64,
        nominal: Timestamp,
        job: NewJob,
        now: Timestamp,
    ) -> StoreFuture<'_, FireOutcome>;

    /// A fire outside the cadence: inserts `job` (which must have no key)
    /// with the key of the schedule's next manual trigger.
    fn trigger_schedule(
        &self,
        id: String,
        job: NewJob,
        now: Timestamp,
    ) -> StoreFuture<'_, Enqueued>;

    /// Pauses a schedule; returns false if it already was (the note is
    /// replaced).
    fn pause_schedule(&self, id: String, note: String, now: Timestamp) -> StoreFuture<'_, bool>;

    /// Resumes a paused schedule with its next fire computed from now;
    /// returns false if it was not paused (nothing changes).
    fn resume_schedule(
        &self,
        id: String,
        next_fire_at: Option<Timestamp>,
        next_run_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreFuture<'_, bool>;

    fn delete_schedule(&self, id: String) -> StoreFuture<'_, ()>;

    /// Every breaker that has a row (kinds that never failed have none).
    fn breakers(&self) -> StoreFuture<'_, Vec<BreakerRecord>>;

    /// Closes a kind's breaker and clears its streak; returns its state
    /// before (`None`: it had none).
    fn reset_breaker(&self, kind: String, now: Timestamp) -> StoreFuture<'_, Option<BreakerState>>;

    /// Pauses a kind or a queue: its jobs are not claimed. Returns false if
    /// it already was (the note is replaced).
    fn pause(
        &self,
        scope: PauseScope,
        name: String,
        note: String,
        now: Timestamp,
    ) -> StoreFuture<'_, bool>;

    /// Returns false if it was not paused.
    fn resume(&self, scope: PauseScope, name: String) -> StoreFuture<'_, bool>;

    fn pauses(&self) -> StoreFuture<'_, Vec<PauseRecord>>;

    /// Jobs by queue and state, with each queue's oldest due job and pause.
    fn queues(&self, now: Timestamp) -> StoreFuture<'_, Vec<QueueStats>>;

    /// Writes a host's heartbeat row, and forgets hosts not seen since
    /// `forget_before`.
    fn heartbeat(
        &self,
        host: crate::health::HostRecord,
        forget_before: Timestamp,
    ) -> StoreFuture<'_, ()>;

    /// Every host using the database, most recently seen first.
    fn hosts(&self) -> StoreFuture<'_, Vec<crate::health::HostRecord>>;

    /// A number that changes whenever someone else (another process, or
    /// another store on the same database) commits, but not when this
    /// store does. Idle loops compare it to skip a look at the database
    /// when nothing they were not told about can have changed. `None`:
    /// this backend cannot tell, and loops never skip.
    fn outside_version(&self) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async { Ok(None) })
    }

    /// Changes of [`Store::outside_version`] as they happen, for a backend
    /// that hears of other processes' commits (PostgreSQL's LISTEN): idle
    /// loops wake on them instead of waiting for their timer. `None`: this
    /// backend cannot tell; loops poll.
    fn outside_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Deletes one batch of what retention allows.
    fn clean(&self, req: CleanRequest) -> StoreFuture<'_, CleanReport>;

    /// Flushes pending writes and stops the store's background work.
    fn close(&self) -> StoreFuture<'_, ()>;
}
