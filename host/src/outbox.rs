//! The outbox: events committed with a job's completion and delivered at
//! least once to HTTP webhooks by the relay ([`crate::executor`]).
//!
//! Everything that goes on the wire is fixed when the event is committed:
//! the body bytes and the `Idempotency-Key`. A delivery attempt sends them
//! as stored, so every retry of an event is byte-identical.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::job::JobId;
use crate::time::Timestamp;

/// The topic of completion callbacks.
pub const CALLBACK_TOPIC: &str = "jobbox.callback";

/// Where an event is in its delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    /// Awaiting (re)delivery at `next_attempt_at`.
    Pending,
    /// The receiver accepted it (2xx) or already had it (409).
    Delivered,
    /// The receiver refused it for good (a 4xx other than 408/409/429), or
    /// its attempts were used up. `jobbox outbox retry` sends it again.
    Failed,
}

impl EventState {
    pub const ALL: [EventState; 3] = [
        EventState::Pending,
        EventState::Delivered,
        EventState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Pending => "pending",
            EventState::Delivered => "delivered",
            EventState::Failed => "failed",
        }
    }
}

impl fmt::Display for EventState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventState {
    type Err = String;

    fn from_str(s: &str) -> Result<EventState, String> {
        EventState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown event state {s:?} (expected pending, delivered or failed)")
            })
    }
}

/// An event claimed by the relay for one delivery attempt.
#[derive(Clone, Debug)]
pub struct ClaimedEvent {
    pub id: i64,
    pub job_id: JobId,
    pub topic: String,
    pub url: String,
    pub body: Vec<u8>,
    pub idempotency_key: String,
    /// This delivery attempt's number (the fence of its outcome).
    pub attempt: u32,
}

/// How one delivery attempt ended, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered {
        status: u16,
        note: Option<String>,
    },
    Retry {
        status: Option<u16>,
        error: String,
        next_attempt_at: Timestamp,
    },
    Failed {
        status: Option<u16>,
        error: String,
    },
}

/// An event as `jobbox outbox list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct EventRecord {
    pub id: i64,
    pub job_id: JobId,
    pub topic: String,
    pub url: String,
    #[serde(serialize_with = "body_as_text")]
    pub body: Vec<u8>,
    pub idempotency_key: String,
    pub state: EventState,
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    pub created_at: Timestamp,
    pub finalized_at: Option<Timestamp>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub note: Option<String>,
}

fn body_as_text<S: Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(body))
}

/// What the receiver's answer means for the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered {
        note: Option<String>,
    },
    /// Worth trying again later.
    Transient(String),
    /// Sent, but no answer came before the timeout: the receiver may or may
    /// not have it. Tried again (the same bytes and key), and counted
    /// apart from plain failures.
    Unknown(String),
    /// Will never be accepted: record it and stop.
    Permanent(String),
}

/// Classifies an HTTP status: 2xx delivered; 409 the receiver already has
/// it (delivered); 408, 429 and 5xx transient; anything else permanent.
pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered { note: None },
        409 => Verdict::Delivered {
            note: Some("409 Conflict: the receiver already had it".to_owned()),
        },
        408 | 429 | 500..=599 => Verdict::Transient(format!("HTTP {status}")),
        _ => Verdict::Permanent(format!("HTTP {status}: refused by the receiver")),
    }
}

/// Relay settings.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxConfig {
    /// Pending events beyond which emits are refused.
    pub max_pending: u64,
    /// How often the relay looks for due events (committing events wakes it
    /// at once).
    pub poll_interval: Duration,
    /// Events one relay iteration claims and sends concurrently.
    pub batch: u32,
    /// Timeout of one delivery request, connect included.
    pub request_timeout: Duration,
    /// Retries: the same formula as jobs.
    pub retry: crate::policy::RetryPolicy,
    /// Topic → webhook URL.
    pub sinks: std::collections::BTreeMap<String, String>,
    /// Where completion callbacks may go. Callback URLs come from whoever
    /// enqueues (an API client, say): with rules, only the destinations
    /// they name; without, any destination but an internal one (loopback,
    /// private, link-local), so that no client can make the host POST into
    /// its own network.
    pub callback_allow: Vec<crate::sandbox::HttpRule>,
}

impl Default for OutboxConfig {
    fn default() -> OutboxConfig {
        OutboxConfig {
            max_pending: 10_000,
            poll_interval: Duration::from_millis(100),
            batch: 32,
            request_timeout: Duration::from_secs(10),
            retry: crate::policy::RetryPolicy {
                max_attempts: 20,
                base: Duration::from_secs(1),
                max: Duration::from_secs(600),
                jitter: 0.1,
            },
            sinks: Default::default(),
            callback_allow: Vec::new(),
        }
    }
}

/// How many events await delivery, against the cap beyond which emits are
/// refused. The relay sets the count from the store on every iteration;
/// completions add what they commit in between.
#[derive(Debug)]
pub struct Backlog {
    pending: std::sync::atomic::AtomicU64,
    max: u64,
}

/// Whether a completion callback may go to `url`: a rule of
/// `callback_allow` names it, or there is no rule and its host is not an
/// internal address. (A name is checked again when it is resolved, at
/// delivery: see [`callback_may_reach_internal`].)
pub fn check_callback(url: &str, allow: &[crate::sandbox::HttpRule]) -> Result<(), String> {
    let target = crate::sandbox::HttpRule::parse(url, None)?;
    if allow
        .iter()
        .any(|r| r.allows(&target.scheme, &target.host, target.port, "POST"))
    {
        return Ok(());
    }
    if !allow.is_empty() {
        return Err(format!("{url:?} is not allowed by outbox.callback_allow"));
    }
    let internal = target.host == "localhost"
        || target.host.ends_with(".localhost")
        || target
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(crate::sandbox::internal_address);
    if internal {
        return Err(format!(
            "{url:?} is an internal address (loopback, private or link-local): refused unless outbox.callback_allow names it"
        ));
    }
    Ok(())
}

/// Whether a callback to `url` may reach an internal address: only if a
/// `callback_allow` rule names it.
pub fn callback_may_reach_internal(url: &str, allow: &[crate::sandbox::HttpRule]) -> bool {
    crate::sandbox::HttpRule::parse(url, None).is_ok_and(|t| {
        allow
            .iter()
            .any(|r| r.allows(&t.scheme, &t.host, t.port, "POST"))
    })
}

impl Backlog {
    pub fn new(max: u64) -> Backlog {
        Backlog {
            pending: std::sync::atomic::AtomicU64::new(0),
            max,
        }
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn set(&self, n: u64) {
        self.pending.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.pending
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `more` events (beyond those pending) fit.
    pub fn admits(&self, more: u64) -> bool {
        self.pending().saturating_add(more) <= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_documented() {
        assert_eq!(classify(200), Verdict::Delivered { note: None });
        assert_eq!(classify(204), Verdict::Delivered { note: None });
        assert!(matches!(
            classify(409),
            Verdict::Delivered { note: Some(_) }
        ));
        for transient in [408, 429, 500, 502, 503, 599] {
            assert!(
                matches!(classify(transient), Verdict::Transient(_)),
                "{transient}"
            );
        }
        for permanent in [301, 400, 401, 403, 404, 410, 422] {
            assert!(
                matches!(classify(permanent), Verdict::Permanent(_)),
                "{permanent}"
            );
        }
    }

    #[test]
    fn the_backlog_admits_up_to_its_max() {
        let b = Backlog::new(3);
        b.set(2);
        assert!(b.admits(1));
        assert!(!b.admits(2));
        b.add(1);
        assert!(!b.admits(1));
    }
}
