//! Recurring schedules: their definitions, when they fire, and what one
//! scheduler step does with a schedule that is due.
//!
//! A schedule has a stable id chosen by the operator, a job template and a
//! [`Cadence`]. Its state lives in the store: the nominal time of its next
//! fire, counters, the last fire and its job. Firing is a fenced
//! transition ([`crate::store::Store::fire_schedule`]): the same
//! transaction advances the next fire time, records the fire under a unique
//! `(schedule id, nominal time)` and inserts the job with the idempotency
//! key [`fire_key`]. Any number of schedulers may race for a fire; exactly
//! one wins and the others change nothing. No leader is needed.
//!
//! This module knows no SQL: [`plan`] is a pure function of a definition,
//! the stored next fire time and `now`.

mod cadence;
mod file;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::job::{JobId, JobState, NewJob};
use crate::time::{Timestamp, duration_ms};

pub use cadence::{Cadence, stable_hash};
pub use file::{ScheduleFileError, parse_file};

/// What happens to fires that passed while no scheduler ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Fire once now (for the latest missed time), then on cadence.
    #[default]
    Skip,
    /// Fire every missed time (the latest `max_catch_up` of them), now.
    All,
    /// Fire none of them; carry on with the cadence.
    None,
}

/// What happens when a fire comes while the previous fire's job has not
/// finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Fire anyway.
    #[default]
    Allow,
    /// Do not fire; count it as skipped.
    Skip,
    /// Keep one fire waiting and insert its job once the previous job has
    /// finished; fires beyond that one are skipped.
    BufferOne,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
            Overlap::BufferOne => "buffer_one",
        }
    }
}

impl Misfire {
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::Skip => "skip",
            Misfire::All => "all",
            Misfire::None => "none",
        }
    }
}

impl FromStr for Misfire {
    type Err = String;
    fn from_str(s: &str) -> Result<Misfire, String> {
        match s {
            "skip" => Ok(Misfire::Skip),
            "all" => Ok(Misfire::All),
            "none" => Ok(Misfire::None),
            _ => Err(format!(
                "unknown misfire policy {s:?} (expected skip, all or none)"
            )),
        }
    }
}

impl FromStr for Overlap {
    type Err = String;
    fn from_str(s: &str) -> Result<Overlap, String> {
        match s {
            "allow" => Ok(Overlap::Allow),
            "skip" => Ok(Overlap::Skip),
            "buffer_one" => Ok(Overlap::BufferOne),
            _ => Err(format!(
                "unknown overlap policy {s:?} (expected allow, skip or buffer_one)"
            )),
        }
    }
}

/// Settings of the scheduler loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Whether this host fires schedules. Any number of hosts may: each
    /// fire is made once whichever wins.
    pub enabled: bool,
    /// The longest the scheduler sleeps without looking at the store: how
    /// soon it sees a schedule applied by another process.
    pub refresh: Duration,
    /// Due schedules one step handles.
    pub batch: u32,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            enabled: true,
            refresh: Duration::from_secs(1),
            batch: 100,
        }
    }
}

/// `max_catch_up` when `misfire = "all"` does not say.
pub const DEFAULT_MAX_CATCH_UP: u32 = 100;
/// The most fires one catch-up may make.
pub const MAX_CATCH_UP: u32 = 10_000;
/// How late a fire may be and still count as on time.
pub const DEFAULT_MISFIRE_GRACE: Duration = Duration::from_secs(60);

/// A schedule as written in a schedule file or sent to the API: every
/// field but `id`, a cadence and `kind` is optional. Unknown fields are
/// refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_catch_up: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire_grace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<String>,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
}

/// A validated schedule definition.
#[derive(Clone, Debug)]
pub struct ScheduleDef {
    pub id: String,
    pub cadence: Cadence,
    pub start_at: Option<Timestamp>,
    pub end_at: Option<Timestamp>,
    pub jitter: Option<Duration>,
    pub misfire: Misfire,
    pub max_catch_up: u32,
    pub misfire_grace: Duration,
    pub overlap: Overlap,
    pub job: JobTemplate,
    /// The definition in canonical form (every default explicit): two
    /// definitions that mean the same have the same spec.
    pub spec: RawSchedule,
}

/// What each fire enqueues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobTemplate {
    pub kind: String,
    /// Canonical JSON.
    pub payload: String,
    pub queue: String,
    pub priority: i32,
    pub max_attempts: Option<u32>,
    pub concurrency_key: Option<String>,
    pub concurrency_limit: Option<u32>,
}

/// A field of a schedule that is wrong, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("schedule {id:?}: {field}: {message}")]
pub struct ScheduleError {
    pub id: String,
    pub field: &'static str,
    pub message: String,
}

/// Checks a schedule id: 1 to 128 letters, digits, `-`, `_` or `.`.
pub fn validate_id(id: &str) -> Result<(), String> {
    crate::job::validate_name("schedule id", id, 128)
}

impl RawSchedule {
    /// Validates every field. The first error names the schedule and the
    /// field.
    pub fn validate(&self) -> Result<ScheduleDef, ScheduleError> {
        let err = |field: &'static str, message: String| ScheduleError {
            id: self.id.clone(),
            field,
            message,
        };
        validate_id(&self.id).map_err(|m| err("id", m))?;
        let duration =
            |field: &'static str, v: &Option<String>| -> Result<Option<Duration>, ScheduleError> {
                v.as_deref()
                    .map(|s| crate::time::parse_duration(s).map_err(|m| err(field, m)))
                    .transpose()
            };
        let cadence = match (&self.cron, &self.every) {
            (Some(expr), None) => {
                if self.phase.is_some() {
                    return Err(err("phase", "only applies to `every`".into()));
                }
                Cadence::cron(expr, self.timezone.as_deref()).map_err(|(f, m)| err(f, m))?
            }
            (None, Some(_)) => {
                if self.timezone.is_some() {
                    return Err(err(
                        "timezone",
                        "only applies to `cron` (`every` is aligned to the Unix epoch)".into(),
                    ));
                }
                let every = duration("every", &self.every)?.expect("checked above");
                Cadence::every(every, duration("phase", &self.phase)?)
                    .map_err(|(f, m)| err(f, m))?
            }
            (Some(_), Some(_)) => {
                return Err(err(
                    "cron",
                    "give either `cron` or `every`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(err(
                    "cron",
                    "missing: give a `cron` expression or an `every` interval".into(),
                ));
            }
        };
        let time =
            |field: &'static str, v: &Option<String>| -> Result<Option<Timestamp>, ScheduleError> {
                v.as_deref()
                    .map(|s| Timestamp::parse_rfc3339(s).map_err(|m| err(field, m)))
                    .transpose()
            };
        let start_at = time("start_at", &self.start_at)?;
        let end_at = time("end_at", &self.end_at)?;
        if let (Some(s), Some(e)) = (start_at, end_at)
            && e <= s
        {
            return Err(err("end_at", "must be after start_at".into()));
        }
        let jitter = duration("jitter", &self.jitter)?.filter(|j| !j.is_zero());
        let misfire: Misfire = self
            .misfire
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|m| err("misfire", m))?
            .unwrap_or_default();
        if self.max_catch_up.is_some() && misfire != Misfire::All {
            return Err(err(
                "max_catch_up",
                "only applies to misfire = \"all\"".into(),
            ));
        }
        let max_catch_up = self.max_catch_up.unwrap_or(DEFAULT_MAX_CATCH_UP);
        if !(1..=MAX_CATCH_UP).contains(&max_catch_up) {
            return Err(err(
                "max_catch_up",
                format!("must be between 1 and {MAX_CATCH_UP}"),
            ));
        }
        let misfire_grace =
            duration("misfire_grace", &self.misfire_grace)?.unwrap_or(DEFAULT_MISFIRE_GRACE);
        let overlap: Overlap = self
            .overlap
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|m| err("overlap", m))?
            .unwrap_or_default();

        crate::plugins::validate_kind(&self.kind).map_err(|m| err("kind", m))?;
        let payload = self
            .payload
            .clone()
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        let queue = self
            .queue
            .clone()
            .unwrap_or_else(|| crate::job::DEFAULT_QUEUE.to_owned());
        crate::job::validate_queue(&queue).map_err(|m| err("queue", m))?;
        if self.max_attempts == Some(0) {
            return Err(err("max_attempts", "must be at least 1".into()));
        }
        if let Some(key) = &self.concurrency_key {
            crate::job::validate_concurrency_key(key).map_err(|m| err("concurrency_key", m))?;
        }
        if let Some(limit) = self.concurrency_limit {
            if self.concurrency_key.is_none() {
                return Err(err("concurrency_limit", "needs a concurrency_key".into()));
            }
            if limit == 0 {
                return Err(err("concurrency_limit", "must be at least 1".into()));
            }
        }
        let job = JobTemplate {
            kind: self.kind.clone(),
            payload: payload.to_string(),
            queue,
            priority: self.priority.unwrap_or(0),
            max_attempts: self.max_attempts,
            concurrency_key: self.concurrency_key.clone(),
            concurrency_limit: self
                .concurrency_key
                .as_ref()
                .map(|_| self.concurrency_limit.unwrap_or(1)),
        };
        let fmt_d = |d: Duration| humantime::format_duration(d).to_string();
        let spec = RawSchedule {
            id: self.id.clone(),
            cron: self
                .cron
                .as_ref()
                .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" ")),
            timezone: match &cadence {
                Cadence::Cron { zone_name, .. } => Some(zone_name.clone()),
                Cadence::Every { .. } => None,
            },
            every: match &cadence {
                Cadence::Every { every_ms, .. } => {
                    Some(fmt_d(Duration::from_millis(*every_ms as u64)))
                }
                Cadence::Cron { .. } => None,
            },
            phase: match &cadence {
                Cadence::Every { phase_ms, .. } if *phase_ms > 0 => {
                    Some(fmt_d(Duration::from_millis(*phase_ms as u64)))
                }
                _ => None,
            },
            start_at: start_at.map(rfc3339),
            end_at: end_at.map(rfc3339),
            jitter: jitter.map(fmt_d),
            misfire: Some(misfire.as_str().to_owned()),
            max_catch_up: (misfire == Misfire::All).then_some(max_catch_up),
            misfire_grace: Some(fmt_d(misfire_grace)),
            overlap: Some(overlap.as_str().to_owned()),
            kind: job.kind.clone(),
            payload: Some(payload),
            queue: Some(job.queue.clone()),
            priority: Some(job.priority),
            max_attempts: job.max_attempts,
            concurrency_key: job.concurrency_key.clone(),
            concurrency_limit: job.concurrency_limit,
        };
        Ok(ScheduleDef {
            id: self.id.clone(),
            cadence,
            start_at,
            end_at,
            jitter,
            misfire,
            max_catch_up,
            misfire_grace,
            overlap,
            job,
            spec,
        })
    }
}

impl ScheduleDef {
    /// Parses a stored spec (written by [`ScheduleDef::spec_json`]).
    pub fn from_spec_json(text: &str) -> Result<ScheduleDef, String> {
        let raw: RawSchedule =
            serde_json::from_str(text).map_err(|e| format!("stored schedule spec: {e}"))?;
        raw.validate().map_err(|e| e.to_string())
    }

    /// The canonical spec as JSON: equal for equal definitions.
    pub fn spec_json(&self) -> String {
        serde_json::to_string(&self.spec).expect("a spec serializes")
    }

    /// The part of the spec that decides the fire times, as JSON: when it
    /// changes, the next fire is computed afresh.
    pub fn cadence_json(&self) -> String {
        let s = &self.spec;
        serde_json::json!([
            s.cron, s.timezone, s.every, s.phase, s.start_at, s.end_at, s.jitter
        ])
        .to_string()
    }

    /// The first nominal fire strictly after `after`, within `start_at` and
    /// `end_at`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let after = match self.start_at {
            Some(start) if after.0 < start.0 => Timestamp(start.0 - 1),
            _ => after,
        };
        let next = self.cadence.next_after(after)?;
        match self.end_at {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }

    /// Up to `n` nominal fires after `after`, within `start_at` and
    /// `end_at`.
    pub fn cadence_upcoming(&self, after: Timestamp, n: usize) -> Vec<Timestamp> {
        cadence::successive(after, n, |t| self.next_after(t))
    }

    /// When the fire at `nominal` runs: `nominal` plus its jitter, a
    /// deterministic offset (a hash of the id and the nominal time) that
    /// always lands before the next fire.
    pub fn run_at(&self, nominal: Timestamp) -> Timestamp {
        let Some(jitter) = self.jitter else {
            return nominal;
        };
        let mut window = duration_ms(jitter);
        if let Some(next) = self.next_after(nominal) {
            window = window.min(next.0 - nominal.0);
        }
        if window <= 1 {
            return nominal;
        }
        let h = stable_hash(&[self.id.as_bytes(), &nominal.0.to_le_bytes()]);
        Timestamp(nominal.0 + (h % window as u64) as i64)
    }

    /// The next fire at or after `now` for a new schedule, or one whose
    /// cadence changed: `(nominal, run_at)`.
    pub fn first_fire(&self, now: Timestamp) -> Option<(Timestamp, Timestamp)> {
        // A fire due exactly now still counts.
        let nominal = self.next_after(Timestamp(now.0 - 1))?;
        Some((nominal, self.run_at(nominal)))
    }

    /// The job of the fire at `nominal`.
    pub fn job_for(&self, nominal: Timestamp, run_at: Timestamp) -> NewJob {
        NewJob {
            idempotency_key: Some(fire_key(&self.id, nominal)),
            run_at: Some(run_at),
            schedule_id: Some(self.id.clone()),
            ..self.template_job()
        }
    }

    /// The template as a job, without key or time.
    pub fn template_job(&self) -> NewJob {
        let t = &self.job;
        NewJob {
            kind: t.kind.clone(),
            queue: t.queue.clone(),
            payload: t.payload.clone(),
            idempotency_key: None,
            priority: t.priority,
            run_at: None,
            max_attempts: t.max_attempts,
            callback_url: None,
            concurrency_key: t.concurrency_key.clone(),
            concurrency_limit: t.concurrency_limit,
            schedule_id: Some(self.id.clone()),
        }
    }
}

/// The idempotency key of a schedule's fire: `schedule:<id>:<nominal time,
/// RFC 3339>`.
pub fn fire_key(id: &str, nominal: Timestamp) -> String {
    format!("{KEY_PREFIX}{id}:{}", rfc3339(nominal))
}

/// The idempotency key of the `n`-th manual trigger of a schedule.
pub fn trigger_key(id: &str, n: u64) -> String {
    format!("{KEY_PREFIX}{id}:trigger:{n}")
}

pub use crate::job::SCHEDULE_KEY_PREFIX as KEY_PREFIX;

/// RFC 3339 in UTC, with fractional seconds only when there are some.
pub fn rfc3339(t: Timestamp) -> String {
    match jiff::Timestamp::from_millisecond(t.0) {
        Ok(ts) => ts.to_string(),
        Err(_) => t.to_string(),
    }
}

/// One fire to make now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedFire {
    pub nominal: Timestamp,
    /// When its job becomes claimable: its jittered time if on time, now if
    /// it is a catch-up.
    pub run_at: Timestamp,
}

/// What a scheduler step does with a due schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirePlan {
    pub fires: Vec<PlannedFire>,
    /// Fires that passed and will never be made (misfire policy).
    pub missed: u64,
    /// Whether `missed` is only a lower bound (too many to count).
    pub missed_at_least: bool,
    /// True if the due fire was late (after downtime): the misfire policy
    /// applied.
    pub late: bool,
    pub next_fire_at: Option<Timestamp>,
    pub next_run_at: Option<Timestamp>,
}

/// The most missed fires a step counts one by one.
const MAX_COUNTED: u64 = 100_000;

/// Plans one step for a schedule whose next fire, `due` (nominal), has come
/// (its run time is at or before `now`).
pub fn plan(def: &ScheduleDef, due: Timestamp, now: Timestamp) -> FirePlan {
    // Every nominal time from `due` up to `now`, keeping the latest
    // `keep` of them and counting the rest.
    let keep = match def.misfire {
        Misfire::All => def.max_catch_up as usize,
        _ => 1,
    };
    let mut kept = std::collections::VecDeque::with_capacity(keep.min(1024));
    kept.push_back(due);
    let mut total: u64 = 1;
    let mut at_least = false;
    let mut t = due;
    while let Some(n) = def.next_after(t) {
        if n > now {
            break;
        }
        if total >= MAX_COUNTED {
            at_least = true;
            break;
        }
        total += 1;
        kept.push_back(n);
        if kept.len() > keep {
            kept.pop_front();
        }
        t = n;
    }
    if at_least {
        // Too many to walk one by one: start again a few fires' worth
        // before `now` (the walk so far gives the spacing), so that the
        // fires kept are the latest ones.
        let spacing = ((t.0 - due.0) / (total as i64 - 1).max(1)).max(1);
        let back = spacing.saturating_mul(keep as i64 + 2).saturating_mul(4);
        let mut u = Timestamp(now.0.saturating_sub(back).max(t.0));
        let mut latest = std::collections::VecDeque::with_capacity(keep.min(1024));
        while let Some(n) = def.next_after(u).filter(|n| *n <= now) {
            latest.push_back(n);
            if latest.len() > keep {
                latest.pop_front();
            }
            u = n;
        }
        if let Some(last) = latest.back() {
            t = *last;
            kept = latest;
        }
    }
    let on_time = total == 1 && now.since(def.run_at(due)) <= def.misfire_grace;
    let (fires, missed, next_from) = if on_time {
        (
            vec![PlannedFire {
                nominal: due,
                run_at: def.run_at(due),
            }],
            0,
            due,
        )
    } else {
        let fires: Vec<PlannedFire> = match def.misfire {
            Misfire::None => Vec::new(),
            Misfire::Skip | Misfire::All => kept
                .iter()
                .map(|&nominal| PlannedFire {
                    nominal,
                    run_at: now,
                })
                .collect(),
        };
        let missed = total - fires.len() as u64;
        (fires, missed, now)
    };
    let next_fire_at = def.next_after(next_from.max(t));
    FirePlan {
        fires,
        missed,
        missed_at_least: at_least,
        late: !on_time,
        next_fire_at,
        next_run_at: next_fire_at.map(|n| def.run_at(n)),
    }
}

/// A schedule as the store holds it.
#[derive(Clone, Debug, Serialize)]
pub struct ScheduleRecord {
    pub id: String,
    /// The canonical definition, as JSON text.
    #[serde(serialize_with = "spec_as_json")]
    pub spec: String,
    /// The nominal time of the next fire; `None` once past `end_at`.
    pub next_fire_at: Option<Timestamp>,
    /// When the next fire's job is inserted (nominal plus jitter).
    pub next_run_at: Option<Timestamp>,
    pub paused: bool,
    pub pause_note: Option<String>,
    pub paused_at: Option<Timestamp>,
    /// Fires made.
    pub fired: u64,
    /// Fires that passed during downtime and were not made.
    pub missed: u64,
    /// Fires not made because the previous fire's job was unfinished.
    pub skipped: u64,
    /// Manual triggers so far.
    pub triggers: u64,
    pub last_fire_at: Option<Timestamp>,
    pub last_job_id: Option<JobId>,
    /// The last fire's job's state (`None`: no fire yet, or the job was
    /// deleted by retention).
    pub last_job_state: Option<JobState>,
    /// A fire held back by `overlap = "buffer_one"` (its nominal time).
    pub buffered_at: Option<Timestamp>,
    /// Rises on every change of the definition; fences the scheduler.
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

fn spec_as_json<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => v.serialize(s),
        Err(_) => s.serialize_str(text),
    }
}

/// One schedule of an apply: its definition and, in case it is new or its
/// cadence changed, its first fire from now.
#[derive(Clone, Debug)]
pub struct ScheduleUpsert {
    pub id: String,
    pub spec: String,
    pub cadence: String,
    pub next_fire_at: Option<Timestamp>,
    pub next_run_at: Option<Timestamp>,
}

impl ScheduleUpsert {
    pub fn new(def: &ScheduleDef, now: Timestamp) -> ScheduleUpsert {
        let first = def.first_fire(now);
        ScheduleUpsert {
            id: def.id.clone(),
            spec: def.spec_json(),
            cadence: def.cadence_json(),
            next_fire_at: first.map(|f| f.0),
            next_run_at: first.map(|f| f.1),
        }
    }
}

/// What an apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub created: Vec<String>,
    /// Updated schedules; `true` where the cadence changed (the next fire
    /// was computed afresh).
    pub updated: Vec<(String, bool)>,
    pub unchanged: Vec<String>,
    pub deleted: Vec<String>,
}

impl ApplyReport {
    pub fn changed(&self) -> bool {
        !(self.created.is_empty() && self.updated.is_empty() && self.deleted.is_empty())
    }
}

/// A scheduler's fenced fire: the expected state it planned from, and what
/// to write.
#[derive(Clone, Debug)]
pub struct ScheduleFire {
    pub id: String,
    /// The definition version the plan was made from.
    pub version: i64,
    /// The nominal next fire the plan was made from.
    pub expected_next: Timestamp,
    /// The jobs to insert, one per fire, in nominal order.
    pub fires: Vec<(Timestamp, NewJob)>,
    pub missed: u64,
    pub overlap: Overlap,
    pub next_fire_at: Option<Timestamp>,
    pub next_run_at: Option<Timestamp>,
    pub now: Timestamp,
}

/// What a fire did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FireOutcome {
    /// False: the schedule had moved on (another scheduler fired, or it was
    /// changed, paused or deleted); nothing was written.
    pub applied: bool,
    /// Jobs inserted, in fire order.
    pub jobs: Vec<JobId>,
    /// Fires not made because of `overlap`.
    pub skipped: u64,
    /// A fire was held back (`buffer_one`).
    pub buffered: bool,
}

impl fmt::Display for Misfire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(toml_text: &str) -> ScheduleDef {
        let raw: RawSchedule = toml::from_str(toml_text).unwrap();
        raw.validate().unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn equal_definitions_have_equal_specs() {
        let a = def("id = 'a'\nevery = '15m'\nkind = 'echo'\npayload = { x = 1, y = 2 }\n");
        let b = def(
            "id = 'a'\nevery = '900s'\nkind = 'echo'\nmisfire = 'skip'\npayload = { y = 2, x = 1 }\n",
        );
        assert_eq!(a.spec_json(), b.spec_json());
        let c = def("id = 'a'\nevery = '15m'\nkind = 'echo'\npayload = { x = 1, y = 3 }\n");
        assert_ne!(a.spec_json(), c.spec_json());
        assert_eq!(
            a.cadence_json(),
            c.cadence_json(),
            "the payload is not the cadence"
        );
        // The stored spec reads back as the same definition.
        let again = ScheduleDef::from_spec_json(&a.spec_json()).unwrap();
        assert_eq!(again.spec_json(), a.spec_json());
    }

    #[test]
    fn errors_name_the_schedule_and_the_field() {
        let check = |text: &str, field: &str| {
            let raw: RawSchedule = toml::from_str(text).unwrap();
            let e = raw.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().starts_with("schedule \"s\": "), "{e}");
        };
        check("id = 's'\ncron = '* * *'\nkind = 'echo'", "cron");
        check(
            "id = 's'\ncron = '0 * * * *'\ntimezone = 'Nowhere/City'\nkind = 'echo'",
            "timezone",
        );
        check("id = 's'\nkind = 'echo'", "cron");
        check("id = 's'\nevery = '1m'\nkind = 'bad kind'", "kind");
        check("id = 's'\nevery = 'soon'\nkind = 'echo'", "every");
        check(
            "id = 's'\nevery = '1m'\nmisfire = 'later'\nkind = 'echo'",
            "misfire",
        );
        check(
            "id = 's'\nevery = '1m'\noverlap = 'queue'\nkind = 'echo'",
            "overlap",
        );
        check(
            "id = 's'\nevery = '1m'\nmax_catch_up = 5\nkind = 'echo'",
            "max_catch_up",
        );
        check(
            "id = 's'\nevery = '1m'\nstart_at = '2026-01-02T00:00:00Z'\nend_at = '2026-01-01T00:00:00Z'\nkind = 'echo'",
            "end_at",
        );
    }

    #[test]
    fn jitter_is_deterministic_and_lands_before_the_next_fire() {
        let d = def("id = 'j'\nevery = '1m'\njitter = '5m'\nkind = 'echo'");
        let mut offsets = std::collections::HashSet::new();
        let mut t = ts("2026-11-25T00:00:00Z");
        for _ in 0..500 {
            let n = d.next_after(t).unwrap();
            let run = d.run_at(n);
            assert!(run >= n && run.0 < n.0 + 60_000, "{run:?} for {n:?}");
            assert_eq!(run, d.run_at(n), "the same every time");
            offsets.insert(run.0 - n.0);
            t = n;
        }
        assert!(offsets.len() > 400, "offsets spread over the window");
    }

    #[test]
    fn on_time_fires_once_and_moves_to_the_next() {
        let d = def("id = 'h'\ncron = '0 * * * *'\nkind = 'echo'");
        let due = ts("2026-11-25T10:00:00Z");
        let p = plan(&d, due, ts("2026-11-25T10:00:00.004Z"));
        assert_eq!(
            p.fires,
            vec![PlannedFire {
                nominal: due,
                run_at: due
            }]
        );
        assert_eq!((p.missed, p.late), (0, false));
        assert_eq!(p.next_fire_at, Some(ts("2026-11-25T11:00:00Z")));
    }

    #[test]
    fn misfire_policies_after_downtime() {
        let now = ts("2026-11-25T15:30:00Z");
        let due = ts("2026-11-25T10:00:00Z");
        // Due at 10, 11, 12, 13, 14, 15: six fires passed.
        let skip = plan(
            &def("id = 'h'\ncron = '0 * * * *'\nkind = 'echo'"),
            due,
            now,
        );
        assert_eq!(
            skip.fires,
            vec![PlannedFire {
                nominal: ts("2026-11-25T15:00:00Z"),
                run_at: now
            }]
        );
        assert_eq!(skip.missed, 5);
        assert_eq!(skip.next_fire_at, Some(ts("2026-11-25T16:00:00Z")));

        let all = plan(
            &def("id = 'h'\ncron = '0 * * * *'\nmisfire = 'all'\nmax_catch_up = 4\nkind = 'echo'"),
            due,
            now,
        );
        let nominal: Vec<_> = all.fires.iter().map(|f| f.nominal).collect();
        assert_eq!(
            nominal,
            ["12", "13", "14", "15"].map(|h| ts(&format!("2026-11-25T{h}:00:00Z")))
        );
        assert_eq!(all.missed, 2);

        let none = plan(
            &def("id = 'h'\ncron = '0 * * * *'\nmisfire = 'none'\nkind = 'echo'"),
            due,
            now,
        );
        assert!(none.fires.is_empty());
        assert_eq!(none.missed, 6);
        assert_eq!(none.next_fire_at, Some(ts("2026-11-25T16:00:00Z")));

        // One fire, but an hour late: a misfire too.
        let late = plan(
            &def("id = 'd'\ncron = '0 3 * * *'\nmisfire = 'none'\nkind = 'echo'"),
            ts("2026-11-25T03:00:00Z"),
            ts("2026-11-25T04:00:00Z"),
        );
        assert!(late.late && late.fires.is_empty() && late.missed == 1);
    }

    #[test]
    fn a_very_long_downtime_still_fires_the_latest_times() {
        let d = def("id = 's'\nevery = '1s'\nmisfire = 'all'\nmax_catch_up = 3\nkind = 'echo'");
        let due = ts("2026-11-20T00:00:00Z");
        let now = ts("2026-11-25T00:00:00.500Z");
        let p = plan(&d, due, now);
        let nominal: Vec<_> = p.fires.iter().map(|f| f.nominal).collect();
        assert_eq!(
            nominal,
            [
                "2026-11-24T23:59:58Z",
                "2026-11-24T23:59:59Z",
                "2026-11-25T00:00:00Z"
            ]
            .map(ts)
        );
        assert!(p.missed_at_least && p.missed >= 100_000 - 3);
        assert_eq!(p.next_fire_at, Some(ts("2026-11-25T00:00:01Z")));
    }

    #[test]
    fn start_and_end_bound_the_fires() {
        let d = def(
            "id = 'b'\nevery = '1h'\nstart_at = '2026-11-25T10:30:00Z'\nend_at = '2026-11-25T12:00:00Z'\nkind = 'echo'",
        );
        assert_eq!(
            d.first_fire(ts("2026-11-25T00:00:00Z")).map(|f| f.0),
            Some(ts("2026-11-25T11:00:00Z"))
        );
        assert_eq!(
            d.next_after(ts("2026-11-25T11:00:00Z")),
            Some(ts("2026-11-25T12:00:00Z"))
        );
        assert_eq!(d.next_after(ts("2026-11-25T12:00:00Z")), None);
    }

    #[test]
    fn keys_name_the_nominal_time() {
        assert_eq!(
            fire_key("nightly", ts("2026-11-25T03:00:00Z")),
            "schedule:nightly:2026-11-25T03:00:00Z"
        );
        assert_eq!(trigger_key("nightly", 3), "schedule:nightly:trigger:3");
    }
}
