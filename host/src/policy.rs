//! What applies to the jobs of one kind beyond the sandbox's limits: the
//! retry policy, the circuit breaker and the rate limit.
//!
//! These are plain values, parsed by `config` and carried into the store
//! with the commands that need them (a claim carries the rate limits, a
//! write-back its breaker policy). The store keeps only the *state* (a
//! breaker's streak, a rate limit's theoretical arrival time), so every host
//! sharing a database enforces the same limits from the same rows.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::job::{AttemptOutcome, BreakerCount, Fence, JobId};
use crate::time::{Timestamp, duration_ms};

/// Backoff between attempts: `min(max, base * 2^(attempt-1))` plus up to
/// `jitter` of that at random. A plugin's `retry-after` replaces the
/// exponential part (still capped at `max`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Attempts a job gets when enqueue does not say.
    pub max_attempts: u32,
    #[serde(serialize_with = "ser_duration")]
    pub base: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub max: Duration,
    /// Fraction of the delay added at random, in `[0, 1]`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            jitter: 0.1,
        }
    }
}

/// When a plugin's circuit breaker opens, and for how long.
///
/// Closed, it counts consecutive failed attempts (the `outcomes` listed);
/// a success resets the count, and so does a failure more than `window`
/// after the first of the streak. At `failures` it opens: the kind's jobs
/// are not claimed (they wait, no attempt is spent) until `cooldown` has
/// passed. Then one probe attempt is admitted (half-open): its success
/// closes the breaker, its failure opens it again for another cooldown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BreakerPolicy {
    pub failures: u32,
    #[serde(serialize_with = "ser_duration")]
    pub window: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub cooldown: Duration,
    /// The outcomes that count as failures.
    pub outcomes: Vec<AttemptOutcome>,
}

impl Default for BreakerPolicy {
    fn default() -> BreakerPolicy {
        BreakerPolicy {
            failures: 10,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
            outcomes: BreakerPolicy::DEFAULT_OUTCOMES.to_vec(),
        }
    }
}

impl BreakerPolicy {
    /// A plugin's failures: its own error, or a limit it ran into.
    pub const DEFAULT_OUTCOMES: [AttemptOutcome; 5] = [
        AttemptOutcome::Trap,
        AttemptOutcome::Timeout,
        AttemptOutcome::OutOfFuel,
        AttemptOutcome::MemoryLimit,
        AttemptOutcome::RetryableError,
    ];

    /// The outcomes a breaker may count: those that say something about the
    /// plugin. Contention, shutdown, lost leases and operators do not.
    pub const COUNTABLE: [AttemptOutcome; 7] = [
        AttemptOutcome::Trap,
        AttemptOutcome::Timeout,
        AttemptOutcome::OutOfFuel,
        AttemptOutcome::MemoryLimit,
        AttemptOutcome::RetryableError,
        AttemptOutcome::PermanentError,
        AttemptOutcome::OutputTooLarge,
    ];

    /// What `outcome` means to the breaker: `Some(true)` a failure,
    /// `Some(false)` a success, `None` neither (it is not counted).
    pub fn judge(&self, outcome: AttemptOutcome) -> Option<bool> {
        if outcome == AttemptOutcome::Completed {
            Some(false)
        } else if self.outcomes.contains(&outcome) {
            Some(true)
        } else {
            None
        }
    }
}

/// Where a breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Jobs are claimed; failures are being counted.
    Closed,
    /// No job of the kind is claimed until `retry_at`.
    Open,
    /// One probe attempt is (or may be) running; no other job is claimed.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BreakerState {
    type Err = String;

    fn from_str(s: &str) -> Result<BreakerState, String> {
        match s {
            "closed" => Ok(BreakerState::Closed),
            "open" => Ok(BreakerState::Open),
            "half_open" => Ok(BreakerState::HalfOpen),
            _ => Err(format!("unknown breaker state {s:?}")),
        }
    }
}

/// A breaker as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BreakerRecord {
    pub kind: String,
    pub state: BreakerState,
    /// Consecutive failures in the current streak.
    pub failures: u32,
    pub streak_started_at: Option<Timestamp>,
    pub opened_at: Option<Timestamp>,
    /// Open: when a probe may be admitted.
    pub retry_at: Option<Timestamp>,
    /// How many times it has opened.
    pub trips: u64,
    /// The error of the failure that last opened it.
    pub last_error: Option<String>,
    /// Half-open: the probe's claim (job id and epoch).
    pub probe: Option<(JobId, u64)>,
    pub updated_at: Timestamp,
}

impl BreakerRecord {
    /// The breaker after an attempt (`fence`) counted as `count`, and its
    /// change of state if any; `None` if nothing is to be written.
    ///
    /// Closed, a success clears the streak and a failure extends it (or
    /// starts a new one if the streak began more than `window` ago); the
    /// `threshold`-th failure opens it. Open, attempts that were already
    /// running when it opened change nothing. Half-open, only the probe
    /// counts: its success closes the breaker, its failure opens it again.
    pub fn step(
        current: Option<&BreakerRecord>,
        count: &BreakerCount,
        fence: Fence,
        now: Timestamp,
    ) -> Option<(BreakerRecord, Option<BreakerChange>)> {
        let is_probe = |b: &BreakerRecord| b.probe == Some((fence.id, fence.epoch));
        let change = |from, to: &BreakerRecord| BreakerChange {
            kind: count.kind.clone(),
            from,
            to: to.state,
            retry_at: to.retry_at,
        };
        let open = |mut b: BreakerRecord| {
            b.state = BreakerState::Open;
            b.opened_at = Some(now);
            b.retry_at = Some(now.plus(count.cooldown));
            b.trips += 1;
            b.probe = None;
            b.last_error = count.error.clone();
            b.updated_at = now;
            b
        };
        match (current, count.failed) {
            (None, false) => None,
            (None, true) => {
                let fresh = BreakerRecord {
                    kind: count.kind.clone(),
                    state: BreakerState::Closed,
                    failures: 1,
                    streak_started_at: Some(now),
                    opened_at: None,
                    retry_at: None,
                    trips: 0,
                    last_error: count.error.clone(),
                    probe: None,
                    updated_at: now,
                };
                if count.threshold <= 1 {
                    let opened = open(fresh);
                    let c = change(BreakerState::Closed, &opened);
                    Some((opened, Some(c)))
                } else {
                    Some((fresh, None))
                }
            }
            (Some(b), false) => match b.state {
                BreakerState::Closed if b.failures > 0 => Some((
                    BreakerRecord {
                        failures: 0,
                        streak_started_at: None,
                        updated_at: now,
                        ..b.clone()
                    },
                    None,
                )),
                BreakerState::HalfOpen if is_probe(b) => {
                    let closed = BreakerRecord {
                        state: BreakerState::Closed,
                        failures: 0,
                        streak_started_at: None,
                        retry_at: None,
                        probe: None,
                        updated_at: now,
                        ..b.clone()
                    };
                    let c = change(BreakerState::HalfOpen, &closed);
                    Some((closed, Some(c)))
                }
                _ => None,
            },
            (Some(b), true) => match b.state {
                BreakerState::Closed => {
                    let expired = b
                        .streak_started_at
                        .is_none_or(|s| now.since(s) > count.window);
                    let mut next = b.clone();
                    if expired {
                        next.failures = 1;
                        next.streak_started_at = Some(now);
                    } else {
                        next.failures += 1;
                    }
                    next.last_error = count.error.clone();
                    next.updated_at = now;
                    if next.failures >= count.threshold {
                        let opened = open(next);
                        let c = change(BreakerState::Closed, &opened);
                        Some((opened, Some(c)))
                    } else {
                        Some((next, None))
                    }
                }
                BreakerState::HalfOpen if is_probe(b) => {
                    let opened = open(b.clone());
                    let c = change(BreakerState::HalfOpen, &opened);
                    Some((opened, Some(c)))
                }
                _ => None,
            },
        }
    }
}

/// A change of a breaker's state, reported so that it can be logged and
/// counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerChange {
    pub kind: String,
    pub from: BreakerState,
    pub to: BreakerState,
    /// Open: when a probe may be admitted.
    pub retry_at: Option<Timestamp>,
}

/// A rate limit: `count` jobs per `period`, with bursts of up to `burst`.
///
/// Enforced in the claim as a GCRA (generic cell rate algorithm): the
/// store keeps one timestamp per kind, the theoretical arrival time
/// (`tat`) of the next job at the steady rate; a job may start while
/// `tat - now <= (burst - 1) * interval`, and each start pushes `tat` on by
/// one `interval`. Nothing is spent on a job held back: it simply waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub count: u32,
    #[serde(serialize_with = "ser_duration")]
    pub period: Duration,
    pub burst: u32,
}

impl RateLimit {
    /// The steady spacing between two jobs, in milliseconds (fractional).
    pub fn interval_ms(&self) -> f64 {
        duration_ms(self.period) as f64 / f64::from(self.count)
    }

    /// How many jobs may start at `now` given the stored `tat` (`None`:
    /// never used), and the `tat` after `n` of them start.
    pub fn allowance(&self, tat: Option<f64>, now: Timestamp) -> u32 {
        let t = self.interval_ms();
        let now = now.0 as f64;
        let base = tat.unwrap_or(now).max(now);
        let tolerance = t * f64::from(self.burst.saturating_sub(1));
        let slack = now + tolerance - base;
        if slack < 0.0 {
            0
        } else {
            // A float in [0, burst]: the truncation is the floor.
            ((slack / t).floor() as u32)
                .saturating_add(1)
                .min(self.burst)
        }
    }

    /// The `tat` after `n` jobs start at `now`.
    pub fn advance(&self, tat: Option<f64>, now: Timestamp, n: u32) -> f64 {
        let now = now.0 as f64;
        tat.unwrap_or(now).max(now) + self.interval_ms() * f64::from(n)
    }

    /// When the next job may start, given the stored `tat`.
    pub fn next_allowed(&self, tat: Option<f64>, now: Timestamp) -> Timestamp {
        let tolerance = self.interval_ms() * f64::from(self.burst.saturating_sub(1));
        let at = tat.unwrap_or(0.0) - tolerance;
        Timestamp((at.ceil() as i64).max(now.0))
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} (burst {})",
            self.count,
            humantime::format_duration(self.period),
            self.burst
        )
    }
}

/// Parses a rate such as `"100/s"`, `"10/min"`, `"5/h"` or `"3/30s"`.
pub fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let bad = || format!("invalid rate {s:?} (expected e.g. \"100/s\", \"10/min\", \"3/30s\")");
    let (count, per) = s.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    if count == 0 {
        return Err(format!("invalid rate {s:?}: the count must be at least 1"));
    }
    let period = match per.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => humantime::parse_duration(other).map_err(|_| bad())?,
    };
    if period < Duration::from_millis(1) {
        return Err(format!(
            "invalid rate {s:?}: the period must be at least 1ms"
        ));
    }
    Ok((count, period))
}

/// What an operator paused: a plugin kind or a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseScope {
    Kind,
    Queue,
}

impl PauseScope {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseScope::Kind => "kind",
            PauseScope::Queue => "queue",
        }
    }
}

impl FromStr for PauseScope {
    type Err = String;

    fn from_str(s: &str) -> Result<PauseScope, String> {
        match s {
            "kind" => Ok(PauseScope::Kind),
            "queue" => Ok(PauseScope::Queue),
            _ => Err(format!("unknown pause scope {s:?}")),
        }
    }
}

/// A pause as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PauseRecord {
    pub scope: PauseScope,
    pub name: String,
    pub note: String,
    pub paused_at: Timestamp,
}

pub(crate) fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_units_and_durations() {
        assert_eq!(parse_rate("100/s"), Ok((100, Duration::from_secs(1))));
        assert_eq!(parse_rate("10/min"), Ok((10, Duration::from_secs(60))));
        assert_eq!(parse_rate(" 3 / 30s "), Ok((3, Duration::from_secs(30))));
        assert!(parse_rate("0/s").unwrap_err().contains("at least 1"));
        assert!(parse_rate("ten/s").is_err());
        assert!(parse_rate("10").is_err());
        assert!(parse_rate("10/fortnight").is_err());
    }

    #[test]
    fn gcra_admits_the_burst_then_the_steady_rate() {
        let rate = RateLimit {
            count: 10,
            period: Duration::from_secs(1),
            burst: 3,
        };
        let t0 = Timestamp(1_000_000);
        // Fresh: the whole burst.
        assert_eq!(rate.allowance(None, t0), 3);
        let tat = rate.advance(None, t0, 3);
        assert_eq!(rate.allowance(Some(tat), t0), 0);
        assert_eq!(rate.next_allowed(Some(tat), t0), Timestamp(t0.0 + 100));
        // One interval later, one more.
        let t1 = Timestamp(t0.0 + 100);
        assert_eq!(rate.allowance(Some(tat), t1), 1);
        let tat = rate.advance(Some(tat), t1, 1);
        assert_eq!(rate.allowance(Some(tat), t1), 0);
        // Long idle: the burst again, never more.
        let t2 = Timestamp(t0.0 + 60_000);
        assert_eq!(rate.allowance(Some(tat), t2), 3);
        // Over a second from fresh, at most burst + count start.
        let mut tat = None;
        let mut started = 0;
        for ms in 0..1000 {
            let now = Timestamp(t0.0 + ms);
            let n = rate.allowance(tat, now);
            if n > 0 {
                tat = Some(rate.advance(tat, now, n));
                started += n;
            }
        }
        assert_eq!(started, 3 + 9, "the burst, then one per 100ms");
    }

    #[test]
    fn the_breaker_judges_only_outcomes_about_the_plugin() {
        let p = BreakerPolicy::default();
        assert_eq!(p.judge(AttemptOutcome::Completed), Some(false));
        assert_eq!(p.judge(AttemptOutcome::Trap), Some(true));
        assert_eq!(p.judge(AttemptOutcome::KvConflict), None);
        assert_eq!(p.judge(AttemptOutcome::HostShutdown), None);
        assert_eq!(p.judge(AttemptOutcome::PermanentError), None);
    }
}
