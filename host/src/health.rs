//! Whether a host makes progress, loop by loop.
//!
//! Every critical loop of the host (the producer, the lease keeper, the
//! rescuer, the scheduler, the outbox relay and the cleaner) reports each
//! iteration here: a success, or a failure with its error. A loop is
//! *fresh* while its last success is more recent than its freshness
//! window (measured in monotonic time, as the loops sleep; the timestamps
//! shown come from the host's clock); the host is *ready* while every enabled loop is fresh. A loop
//! that keeps running but keeps failing (the store unwritable, every
//! delivery failing) goes stale like one that stopped, and a success makes
//! it fresh again.
//!
//! The last iterations of each loop are kept for `jobbox stats`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::time::Timestamp;

/// The host's critical loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Loop {
    Producer,
    LeaseKeeper,
    Rescuer,
    Scheduler,
    Relay,
    Cleaner,
}

impl Loop {
    pub const ALL: [Loop; 6] = [
        Loop::Producer,
        Loop::LeaseKeeper,
        Loop::Rescuer,
        Loop::Scheduler,
        Loop::Relay,
        Loop::Cleaner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Loop::Producer => "producer",
            Loop::LeaseKeeper => "lease_keeper",
            Loop::Rescuer => "rescuer",
            Loop::Scheduler => "scheduler",
            Loop::Relay => "relay",
            Loop::Cleaner => "cleaner",
        }
    }
}

impl fmt::Display for Loop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One iteration of a loop, as `jobbox stats` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Iteration {
    pub at: Timestamp,
    pub duration_ms: f64,
    /// What the iteration handled (jobs claimed, leases renewed, jobs
    /// rescued, fires made, events due, rows deleted).
    pub handled: u64,
    /// What it failed to handle.
    pub failed: u64,
    /// Why it failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A host using the database, as its heartbeat row says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostRecord {
    /// The host's `worker_id`.
    pub id: String,
    /// The jobbox version it runs.
    pub version: String,
    pub started_at: Timestamp,
    /// Its last heartbeat. A host writes one every second while it is
    /// ready; one whose last heartbeat is old is gone, or not ready.
    pub last_seen: Timestamp,
    pub ready: bool,
    /// Attempts it had in flight at its last heartbeat.
    pub in_flight: u64,
    /// Its attempts per minute and plugin over the last hour, as JSON
    /// ([`crate::metrics::Minutes`]); written every few heartbeats (`None`
    /// keeps what was written last).
    #[serde(skip)]
    pub minutes: Option<String>,
}

/// How many iterations of each loop are kept.
pub const KEPT_ITERATIONS: usize = 20;

/// Each loop's freshness window: how long it may go without a successful
/// iteration before the host is not ready. `None` for a loop this host
/// does not run.
#[derive(Clone, Copy, Debug)]
pub struct Freshness(pub [Option<Duration>; 6]);

/// The readiness of every loop.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    loops: [LoopHealth; 6],
}

#[derive(Debug)]
struct LoopHealth {
    freshness: Option<Duration>,
    /// A std mutex: held for a few field updates, never across an await.
    state: Mutex<LoopState>,
}

#[derive(Debug, Default)]
struct LoopState {
    /// When, in monotonic time: what freshness is judged by.
    succeeded: Option<Instant>,
    last_success: Option<Timestamp>,
    last_failure: Option<Timestamp>,
    last_error: Option<String>,
    recent: VecDeque<Iteration>,
}

/// A loop's status, as `/readyz` and `jobbox stats` show it.
#[derive(Clone, Debug, Serialize)]
pub struct LoopStatus {
    pub name: Loop,
    pub fresh: bool,
    pub freshness_ms: u64,
    pub last_success: Option<Timestamp>,
    pub last_failure: Option<Timestamp>,
    pub last_error: Option<String>,
}

/// The host's readiness: ready if every loop it runs is fresh.
#[derive(Clone, Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub loops: Vec<LoopStatus>,
}

impl Readiness {
    /// The loops that are not fresh.
    pub fn stale(&self) -> impl Iterator<Item = &LoopStatus> {
        self.loops.iter().filter(|l| !l.fresh)
    }
}

impl Health {
    /// Loops are fresh from now for their window: one that has not run
    /// yet is not held against the host until then.
    pub fn new(freshness: Freshness) -> Health {
        Health {
            started: Instant::now(),
            loops: freshness.0.map(|freshness| LoopHealth {
                freshness,
                state: Mutex::default(),
            }),
        }
    }

    fn state(&self, l: Loop) -> std::sync::MutexGuard<'_, LoopState> {
        self.loops[l as usize]
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Records a successful iteration.
    pub fn success(&self, l: Loop, it: Iteration) {
        self.success_at(l, it, Instant::now());
    }

    fn success_at(&self, l: Loop, it: Iteration, when: Instant) {
        let mut s = self.state(l);
        s.last_success = Some(it.at);
        s.succeeded = Some(when);
        push(&mut s.recent, it);
    }

    /// Records a failed iteration.
    pub fn failure(&self, l: Loop, mut it: Iteration, error: String) {
        let mut s = self.state(l);
        s.last_failure = Some(it.at);
        s.last_error = Some(error.clone());
        it.error = Some(error);
        push(&mut s.recent, it);
    }

    /// The last iterations of a loop, oldest first.
    pub fn iterations(&self, l: Loop) -> Vec<Iteration> {
        self.state(l).recent.iter().cloned().collect()
    }

    /// Every loop's status now.
    pub fn readiness(&self) -> Readiness {
        self.readiness_at(Instant::now())
    }

    fn readiness_at(&self, now: Instant) -> Readiness {
        let loops: Vec<LoopStatus> = Loop::ALL
            .into_iter()
            .filter_map(|l| {
                let window = self.loops[l as usize].freshness?;
                let s = self.state(l);
                let since = s.succeeded.unwrap_or(self.started);
                Some(LoopStatus {
                    name: l,
                    fresh: now.saturating_duration_since(since) <= window,
                    freshness_ms: window.as_millis() as u64,
                    last_success: s.last_success,
                    last_failure: s.last_failure,
                    last_error: s.last_error.clone(),
                })
            })
            .collect();
        Readiness {
            ready: loops.iter().all(|l| l.fresh),
            loops,
        }
    }

    /// Whether the host may claim: every loop it needs to see a claim
    /// through is fresh. The producer's own staleness does not stop claims
    /// (its claims are how it recovers), nor does the relay's: events wait
    /// durably in the outbox, so a receiver that refuses every delivery
    /// must not stop the jobs of every other kind.
    pub fn may_claim(&self) -> bool {
        self.readiness()
            .stale()
            .all(|l| matches!(l.name, Loop::Producer | Loop::Relay))
    }

    /// How long since each loop's last success (since start if none).
    pub fn ages(&self) -> Vec<(Loop, Duration)> {
        Loop::ALL
            .into_iter()
            .filter(|l| self.loops[*l as usize].freshness.is_some())
            .map(|l| {
                let since = self.state(l).succeeded.unwrap_or(self.started);
                (l, since.elapsed())
            })
            .collect()
    }
}

fn push(recent: &mut VecDeque<Iteration>, it: Iteration) {
    if recent.len() == KEPT_ITERATIONS {
        recent.pop_front();
    }
    recent.push_back(it);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        let mut f = [Some(Duration::from_secs(10)); 6];
        f[Loop::Scheduler as usize] = None;
        Health::new(Freshness(f))
    }

    fn ok(h: &Health, l: Loop) {
        h.success(l, Iteration::default());
    }

    fn at(h: &Health, secs: u64) -> Instant {
        h.started + Duration::from_secs(secs)
    }

    #[test]
    fn a_failing_loop_goes_stale_and_a_success_brings_it_back() {
        let h = health();
        assert!(h.readiness_at(at(&h, 5)).ready, "fresh from the start");
        assert!(
            !h.readiness_at(at(&h, 11)).ready,
            "no iteration for too long"
        );
        for l in Loop::ALL {
            ok(&h, l);
        }
        let later = Instant::now() + Duration::from_secs(11);
        // The relay keeps running but every iteration fails; the others
        // succeed.
        h.failure(
            Loop::Relay,
            Iteration::default(),
            "every delivery failed".into(),
        );
        let r = h.readiness_at(later);
        assert!(!r.ready);
        let stale: Vec<_> = r.stale().map(|l| l.name).collect();
        assert!(stale.contains(&Loop::Relay));
        let relay = r.loops.iter().find(|l| l.name == Loop::Relay).unwrap();
        assert_eq!(relay.last_error.as_deref(), Some("every delivery failed"));
        assert!(h.readiness_at(Instant::now()).ready, "within the window");
        ok(&h, Loop::Relay);
        assert!(
            r.loops.iter().all(|l| l.name != Loop::Scheduler),
            "not run, not judged"
        );
        assert_eq!(h.iterations(Loop::Relay).len(), 3);
    }

    #[test]
    fn a_stale_producer_alone_does_not_stop_claims() {
        let h = health();
        for l in Loop::ALL {
            if l != Loop::Producer {
                h.success_at(l, Iteration::default(), at(&h, 10));
            }
        }
        let r = h.readiness_at(at(&h, 11));
        let stale: Vec<_> = r.stale().map(|l| l.name).collect();
        assert_eq!(stale, [Loop::Producer]);
    }
}
