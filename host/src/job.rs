//! The job lifecycle and the records that cross the store boundary.
//!
//! These types are shared by the store (which persists them) and the
//! executor (which acts on them); neither SQL nor wasmtime appears here.
//! `docs/state-machine.md` draws the same machine as [`JobState`].

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::time::Timestamp;

/// A job's id: assigned by the store at enqueue, never reused.
pub type JobId = i64;

/// Where a job is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting to run at `run_at` (which may be in the future: a scheduled
    /// job). Entered at enqueue, by `jobs retry`, and when a host shuts down
    /// mid-attempt (without burning the attempt). Left when a producer claims
    /// it, or by `jobs cancel`.
    Available,
    /// Claimed by one worker, which holds a lease until `lease_expires_at`
    /// and the claim `epoch`. Left only through a write-back fenced on that
    /// epoch (by the worker), by the rescuer once the lease has expired, or
    /// by `jobs cancel`.
    Running,
    /// An attempt failed and attempts remain; claimable again once `run_at`
    /// (now + backoff) passes. Entered by the worker or the rescuer.
    Retryable,
    /// Final: the plugin succeeded and its output is stored.
    Completed,
    /// Final (dead letter): a permanent error, or the attempts were used up.
    /// `jobs retry` makes it available again.
    Discarded,
    /// Final: cancelled by an operator. A running attempt is fenced out.
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Available,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Discarded,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Discarded => "discarded",
            JobState::Cancelled => "cancelled",
        }
    }

    /// True for states no worker will ever move the job out of.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Discarded | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<JobState, String> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown job state {s:?} (expected one of: {})",
                    JobState::ALL.map(JobState::as_str).join(", ")
                )
            })
    }
}

/// How one attempt ended. Stored in the attempts table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The plugin returned an output.
    Completed,
    /// The plugin returned a retryable error, or the host could not run it
    /// (no plugin for the kind).
    RetryableError,
    /// The plugin returned a permanent error.
    PermanentError,
    /// The guest trapped (panic, `unreachable`, out-of-bounds access).
    Trap,
    /// The fuel budget ran out.
    OutOfFuel,
    /// The wall-clock deadline passed.
    Timeout,
    /// The guest tried to grow its memory past the limit.
    MemoryLimit,
    /// The worker's write-back matched no row: another claim or an operator
    /// had moved the job on. Never stored (a fenced-out worker writes
    /// nothing); logged and counted.
    FencedOut,
    /// An operator cancelled the job while this attempt ran.
    Cancelled,
    /// The host shut down before the attempt finished; the attempt is not
    /// counted against the job's `max_attempts`.
    HostShutdown,
    /// The worker stopped renewing its lease (it crashed or hung) and the
    /// rescuer took the job back.
    LeaseExpired,
    /// The plugin returned an output, but a kv key it read had changed by
    /// the time it committed: nothing of it was written. Not the plugin's
    /// failure: within the job's conflict budget the attempt is given back.
    KvConflict,
    /// The plugin returned an output larger than its `max_output`: it is
    /// not stored, and the job is discarded.
    OutputTooLarge,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 13] = [
        AttemptOutcome::Completed,
        AttemptOutcome::RetryableError,
        AttemptOutcome::PermanentError,
        AttemptOutcome::Trap,
        AttemptOutcome::OutOfFuel,
        AttemptOutcome::Timeout,
        AttemptOutcome::MemoryLimit,
        AttemptOutcome::FencedOut,
        AttemptOutcome::Cancelled,
        AttemptOutcome::HostShutdown,
        AttemptOutcome::LeaseExpired,
        AttemptOutcome::KvConflict,
        AttemptOutcome::OutputTooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::RetryableError => "retryable_error",
            AttemptOutcome::PermanentError => "permanent_error",
            AttemptOutcome::Trap => "trap",
            AttemptOutcome::OutOfFuel => "out_of_fuel",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::MemoryLimit => "memory_limit",
            AttemptOutcome::FencedOut => "fenced_out",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::HostShutdown => "host_shutdown",
            AttemptOutcome::LeaseExpired => "lease_expired",
            AttemptOutcome::KvConflict => "kv_conflict",
            AttemptOutcome::OutputTooLarge => "output_too_large",
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AttemptOutcome {
    type Err = String;

    fn from_str(s: &str) -> Result<AttemptOutcome, String> {
        AttemptOutcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown attempt outcome {s:?}"))
    }
}

/// The idempotency key a job presents to plugins and external systems: the
/// key given at enqueue, else one derived from the job id. It never depends
/// on the attempt or the epoch, so every retry presents the same key.
pub fn effective_idempotency_key(id: JobId, given: Option<&str>) -> String {
    match given {
        Some(k) => k.to_owned(),
        None => format!("{DERIVED_KEY_PREFIX}{id}"),
    }
}

/// Derived keys start with this; given keys may not, so the two never
/// collide.
pub const DERIVED_KEY_PREFIX: &str = "jobbox-job-";

/// Keys of schedules' jobs (`schedule:<id>:<nominal time>`) start with
/// this; given keys may not.
pub const SCHEDULE_KEY_PREFIX: &str = "schedule:";

impl NewJob {
    /// Checks what the store cannot: the idempotency key, the queue and the
    /// concurrency key. (The callback URL and the payload's size are
    /// checked against the configuration by [`crate::enqueue`].)
    pub fn validate(&self) -> Result<(), InvalidField> {
        if let Some(key) = &self.idempotency_key {
            if key.is_empty() || key.len() > 256 {
                return Err(InvalidField::new(
                    "idempotency_key",
                    "must be 1 to 256 bytes",
                ));
            }
            for reserved in [DERIVED_KEY_PREFIX, SCHEDULE_KEY_PREFIX] {
                if key.starts_with(reserved) {
                    return Err(InvalidField::new(
                        "idempotency_key",
                        format!("keys starting with {reserved:?} are reserved for jobbox's own"),
                    ));
                }
            }
        }
        validate_queue(&self.queue).map_err(|e| InvalidField::new("queue", e))?;
        match (&self.concurrency_key, self.concurrency_limit) {
            (Some(key), limit) => {
                validate_concurrency_key(key)
                    .map_err(|e| InvalidField::new("concurrency_key", e))?;
                if limit == Some(0) {
                    return Err(InvalidField::new("concurrency_limit", "must be at least 1"));
                }
            }
            (None, Some(_)) => {
                return Err(InvalidField::new(
                    "concurrency_limit",
                    "needs a concurrency key",
                ));
            }
            (None, None) => {}
        }
        if self.max_attempts == Some(0) {
            return Err(InvalidField::new("max_attempts", "must be at least 1"));
        }
        Ok(())
    }
}

/// A field of a job (or request) that is wrong, and why. The field is
/// named as in the API's JSON; the CLI names its flag instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: &'static str,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: &'static str, message: impl Into<String>) -> InvalidField {
        InvalidField {
            field,
            message: message.into(),
        }
    }
}

/// Queue names: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn validate_queue(queue: &str) -> Result<(), String> {
    validate_name("queue", queue, 64)
}

/// Checks the name of a `what` (a queue, a schedule): 1 to `max` letters,
/// digits, `-`, `_` or `.`.
pub fn validate_name(what: &str, name: &str, max: usize) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} {name:?}: use 1 to {max} letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Concurrency keys: 1 to 256 bytes of printable text.
pub fn validate_concurrency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
        return Err(format!(
            "invalid concurrency key {key:?}: use 1 to 256 bytes, no control characters"
        ));
    }
    if key.starts_with(CONFLICT_KEY_PREFIX) {
        return Err(format!(
            "concurrency keys starting with {CONFLICT_KEY_PREFIX:?} are reserved for jobbox's own"
        ));
    }
    Ok(())
}

/// The concurrency key jobbox gives a job that lost a kv conflict on
/// `key` of `namespace`, if it had none: the jobs that lost on the same
/// key then run one at a time, instead of conflicting again.
pub fn conflict_concurrency_key(namespace: &str, key: &str) -> String {
    format!("{CONFLICT_KEY_PREFIX}{namespace}:{key}")
}

/// The prefix of [`conflict_concurrency_key`].
pub const CONFLICT_KEY_PREFIX: &str = "kv:";

/// A job to enqueue.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub kind: String,
    pub queue: String,
    /// Canonical JSON text (see [`canonical_json`]).
    pub payload: String,
    pub idempotency_key: Option<String>,
    /// Lower runs first.
    pub priority: i32,
    /// When the job becomes claimable; `None` means at enqueue time.
    pub run_at: Option<Timestamp>,
    /// `None` takes the kind's configured `max_attempts`.
    pub max_attempts: Option<u32>,
    /// Where to deliver the job's result when it ends (completed or
    /// discarded), through the outbox.
    pub callback_url: Option<String>,
    /// At most `concurrency_limit` (default 1) jobs with this key run at
    /// once, across every host on the database.
    pub concurrency_key: Option<String>,
    pub concurrency_limit: Option<u32>,
    /// The schedule whose fire enqueued it.
    pub schedule_id: Option<String>,
}

/// `max_attempts` when neither the job nor the configuration says.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// The queue a job lands on when none is given.
pub const DEFAULT_QUEUE: &str = "default";

impl NewJob {
    /// A job with defaults for everything but kind and payload. The payload
    /// must be valid JSON; it is stored in canonical form.
    pub fn new(kind: &str, payload: &str) -> Result<NewJob, String> {
        Ok(NewJob {
            kind: kind.to_owned(),
            queue: DEFAULT_QUEUE.to_owned(),
            payload: canonical_json(payload)?,
            idempotency_key: None,
            priority: 0,
            run_at: None,
            max_attempts: None,
            callback_url: None,
            concurrency_key: None,
            concurrency_limit: None,
            schedule_id: None,
        })
    }
}

/// Parses `text` as JSON and re-serializes it compactly with sorted object
/// keys, so that two payloads that mean the same compare equal as text.
pub fn canonical_json(text: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("payload is not valid JSON: {e}"))?;
    Ok(value.to_string())
}

/// What enqueue did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    pub id: JobId,
    /// False when a job with the same idempotency key already existed and
    /// was returned instead.
    pub created: bool,
}

/// A job as claimed by a worker: everything one attempt needs.
#[derive(Clone, Debug)]
pub struct ClaimedJob {
    pub id: JobId,
    pub kind: String,
    pub queue: String,
    pub payload: String,
    /// The effective key (see [`effective_idempotency_key`]).
    pub idempotency_key: String,
    pub priority: i32,
    /// This attempt's number, starting at 1.
    pub attempt: u32,
    pub max_attempts: u32,
    /// The claim epoch: the fencing token of this attempt.
    pub epoch: u64,
    /// When the job became claimable; `attempted_at - run_at` is queue wait.
    pub run_at: Timestamp,
    pub attempted_at: Timestamp,
    pub lease_expires_at: Timestamp,
}

impl ClaimedJob {
    /// A first attempt of a job that no store handed out: for running a
    /// plugin on its own (a benchmark floor, `plugins run`, sandbox tests).
    pub fn detached(
        kind: &str,
        payload: &str,
        idempotency_key: &str,
        now: Timestamp,
    ) -> ClaimedJob {
        ClaimedJob {
            id: 1,
            kind: kind.to_owned(),
            queue: DEFAULT_QUEUE.to_owned(),
            payload: payload.to_owned(),
            idempotency_key: idempotency_key.to_owned(),
            priority: 0,
            attempt: 1,
            max_attempts: 1,
            epoch: 1,
            run_at: now,
            attempted_at: now,
            lease_expires_at: now,
        }
    }

    pub fn fence(&self) -> Fence {
        Fence {
            id: self.id,
            epoch: self.epoch,
        }
    }
}

/// The identity of one claim. Every write-back names it, and matches only
/// while the job is still running under that epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    pub id: JobId,
    pub epoch: u64,
}

/// The record of one finished attempt.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    /// The attempt number this record closes.
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    pub fuel_used: Option<u64>,
    pub started_at: Timestamp,
    pub ended_at: Timestamp,
    /// The SHA-256 of the component it ran on, if a plugin ran.
    pub component_hash: Option<String>,
    /// What the attempt read from the world, for a replay (serialized by
    /// the executor; stored as given).
    pub recording: Option<Vec<u8>>,
    /// The worker id of the host that ran it.
    pub host: Option<String>,
}

/// Where a finished attempt moves its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// running → completed, storing the output.
    Complete { output: String },
    /// running → retryable, claimable again at `run_at`.
    Retry { run_at: Timestamp, error: String },
    /// running → discarded.
    Discard { error: String },
    /// running → available at once, giving the attempt back (host shutdown).
    Release,
}

impl Transition {
    pub fn target_state(&self) -> JobState {
        match self {
            Transition::Complete { .. } => JobState::Completed,
            Transition::Retry { .. } => JobState::Retryable,
            Transition::Discard { .. } => JobState::Discarded,
            Transition::Release => JobState::Available,
        }
    }
}

/// A fenced write-back: the attempt row and the state transition, applied
/// together or not at all.
#[derive(Clone, Debug)]
pub struct Finish {
    pub fence: Fence,
    pub attempt: AttemptRecord,
    pub transition: Transition,
    /// The attempt's side effects, committed with a `Complete` transition
    /// and only then. Empty for every other transition.
    pub effects: Effects,
    /// What to write instead of a `Complete` whose kv reads changed.
    pub on_conflict: Option<ConflictRetry>,
    /// How the attempt counts for its plugin's circuit breaker, if at all.
    pub breaker: Option<BreakerCount>,
}

/// The write-back of a completion whose kv reads were overtaken: the job is
/// retried at `run_at` with the attempt given back, as outcome
/// `kv_conflict`, and serialized with the other losers on the same key
/// ([`conflict_concurrency_key`]) unless it has a concurrency key of its
/// own. Once the job has had `max_conflicts` conflicts, a conflict uses up
/// the attempt like a failure: retried at `fallback_run_at`, or discarded
/// if that is `None` (it was the last attempt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictRetry {
    pub run_at: Timestamp,
    pub max_conflicts: u32,
    pub fallback_run_at: Option<Timestamp>,
}

/// An attempt's count for its plugin's circuit breaker: the policy's
/// parameters travel with it, the breaker's state is in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerCount {
    pub kind: String,
    /// A failure (else a success).
    pub failed: bool,
    /// Consecutive failures that open the breaker.
    pub threshold: u32,
    /// A streak older than this starts over.
    pub window: std::time::Duration,
    /// How long it stays open before a probe.
    pub cooldown: std::time::Duration,
    pub error: Option<String>,
}

impl Finish {
    /// The write-back of a successful attempt of `job` with no effects.
    pub fn completed(job: &ClaimedJob, output: String, now: Timestamp) -> Finish {
        Finish {
            fence: job.fence(),
            attempt: AttemptRecord {
                attempt: job.attempt,
                outcome: AttemptOutcome::Completed,
                error: None,
                fuel_used: None,
                started_at: job.attempted_at,
                ended_at: now,
                component_hash: None,
                recording: None,
                host: None,
            },
            transition: Transition::Complete { output },
            effects: Effects::default(),
            on_conflict: None,
            breaker: None,
        }
    }
}

/// The buffered side effects of one attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// The kv namespace (the plugin's kind).
    pub namespace: String,
    /// Every key the attempt read from the store, with the version it saw
    /// (`None`: no row). At commit each must still be at that version, or
    /// nothing commits ([`crate::store::StoreError::KvConflict`]).
    pub kv_reads: Vec<(String, Option<i64>)>,
    /// The final buffered value of every key written (`None`: deleted).
    pub kv_writes: Vec<(String, Option<Vec<u8>>)>,
    /// Outbox events, in emit order.
    pub events: Vec<NewEvent>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.kv_reads.is_empty() && self.kv_writes.is_empty() && self.events.is_empty()
    }
}

/// An outbox event as committed: everything about its delivery is fixed
/// here, so every delivery attempt sends the same bytes under the same key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub topic: String,
    pub url: String,
    pub body: Vec<u8>,
    pub idempotency_key: String,
}

/// A kv entry as the store holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvEntry {
    /// `None`: absent (never written, or deleted).
    pub value: Option<Vec<u8>>,
    /// Rises on every write, deletes included; `None`: never written.
    pub version: Option<i64>,
}

/// Whether a fenced write was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fenced {
    Applied,
    /// Zero rows matched: the job was no longer running under this epoch.
    /// Nothing was written.
    FencedOut,
}

/// A running job whose lease has expired, as the rescuer sees it.
#[derive(Clone, Debug)]
pub struct ExpiredLease {
    pub fence: Fence,
    pub kind: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub attempted_at: Timestamp,
    /// The host that held the lease.
    pub leased_by: Option<String>,
}

/// A job as `jobs show` presents it.
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    pub id: JobId,
    pub kind: String,
    pub queue: String,
    pub state: JobState,
    pub priority: i32,
    pub attempt: u32,
    pub max_attempts: u32,
    pub epoch: u64,
    pub idempotency_key: String,
    /// Where the job's result is POSTed when it ends, if anywhere.
    pub callback_url: Option<String>,
    pub concurrency_key: Option<String>,
    pub concurrency_limit: Option<u32>,
    /// kv conflicts so far (attempts given back).
    pub conflicts: u32,
    /// The schedule whose fire enqueued it.
    pub schedule_id: Option<String>,
    #[serde(serialize_with = "as_json_value")]
    pub payload: String,
    #[serde(serialize_with = "as_opt_json_value")]
    pub output: Option<String>,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub run_at: Timestamp,
    pub attempted_at: Option<Timestamp>,
    pub finalized_at: Option<Timestamp>,
    pub lease_expires_at: Option<Timestamp>,
    pub attempts: Vec<AttemptRow>,
}

/// One row of the attempts table.
#[derive(Clone, Debug, Serialize)]
pub struct AttemptRow {
    pub attempt: u32,
    pub epoch: u64,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    pub started_at: Timestamp,
    pub ended_at: Timestamp,
    pub duration_ms: i64,
    pub fuel_used: Option<u64>,
    /// The SHA-256 of the component it ran on (none where no plugin ran).
    pub component_hash: Option<String>,
    /// The size of its recorded inputs, if they were recorded (a replay
    /// needs them).
    pub recording_bytes: Option<u64>,
    /// The worker id of the host that ran it (`null` for attempts recorded
    /// before jobbox kept it).
    pub host: Option<String>,
}

/// Filters for listing jobs (and for operators' bulk actions).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub concurrency_key: Option<String>,
    /// Text the payload or the error contains (ASCII case-insensitive).
    pub text: Option<String>,
    /// Only jobs with a lower id (keyset pagination: the last id of the
    /// previous page).
    #[serde(skip)]
    pub before: Option<JobId>,
    /// Only jobs with this id or a higher one (a scan window's floor).
    #[serde(skip)]
    pub from: Option<JobId>,
    pub limit: Option<u32>,
}

impl JobFilter {
    /// `text` as a `LIKE` pattern that matches it anywhere, with `\` as
    /// the escape character.
    pub fn text_pattern(&self) -> Option<String> {
        self.text.as_deref().map(|t| {
            let mut p = String::with_capacity(t.len() + 2);
            p.push('%');
            for c in t.chars() {
                if matches!(c, '%' | '_' | '\\') {
                    p.push('\\');
                }
                p.push(c);
            }
            p.push('%');
            p
        })
    }
}

/// An operator's action on many jobs at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobAction {
    /// discarded, retryable or cancelled → available.
    Retry,
    /// available, retryable or running → cancelled.
    Cancel,
}

impl JobAction {
    /// The states the action moves a job from, as an SQL list.
    pub fn from_states_sql(self) -> &'static str {
        match self {
            JobAction::Retry => "('discarded', 'retryable', 'cancelled')",
            JobAction::Cancel => "('available', 'retryable', 'running')",
        }
    }
}

impl FromStr for JobAction {
    type Err = String;
    fn from_str(s: &str) -> Result<JobAction, String> {
        match s {
            "retry" => Ok(JobAction::Retry),
            "cancel" => Ok(JobAction::Cancel),
            _ => Err(format!("unknown action {s:?} (expected retry or cancel)")),
        }
    }
}

/// A change of a job's state, as the API's event stream tells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobEvent {
    /// Rises by one per event of this host: a gap means events were missed.
    pub seq: u64,
    pub id: JobId,
    pub kind: String,
    pub state: JobState,
    pub attempt: u32,
    pub epoch: u64,
    /// How the attempt that caused it ended, if one did.
    pub outcome: Option<AttemptOutcome>,
    pub at: Timestamp,
}

/// The most bytes of error text stored per attempt (and on the job).
pub const MAX_ERROR_TEXT: usize = 2048;

/// `text` cut to at most `max` bytes on a character boundary, saying how
/// much was cut.
pub fn cap_text(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [... {} more bytes]", &text[..end], text.len() - end)
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn as_json_value<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => v.serialize(s),
        Err(_) => s.serialize_str(text),
    }
}

fn as_opt_json_value<S: Serializer>(text: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match text {
        Some(t) => as_json_value(t, s),
        None => s.serialize_none(),
    }
}

/// A strict deserializer's error in one line: `field.path: what`, or just
/// `what` when it concerns the whole value.
pub fn field_error<E: fmt::Display>(e: serde_path_to_error::Error<E>) -> String {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if path == "." {
        inner.to_string()
    } else {
        format!("{path}: {inner}")
    }
}
