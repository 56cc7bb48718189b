//! Polling that costs nothing while there is nothing to do.
//!
//! The producer and the relay wake on a short timer so that work written
//! by another process (a `jobbox enqueue`, another host) is picked up
//! quickly. Most of those wake-ups find nothing. A loop whose last look
//! found nothing skips its next timed look when all of these hold:
//!
//! - nobody else committed since that look (the store's
//!   [`outside_version`](crate::store::Store::outside_version) is
//!   unchanged; this process's own changes wake the loop directly);
//! - no time this process knows work becomes due at has come (a retry's
//!   backoff, a delayed job, an event's next delivery: [`Quiet::due_at`]);
//! - the look was less than [`RECHECK`] ago, so that anything else that
//!   becomes due with time alone (a job another process delayed, an
//!   expired lease of another host) waits at most that long.
//!
//! While a loop keeps skipping, its timer backs off (doubling, up to
//! [`IDLE_POLL`]), so that a host with nothing to do wakes a few times a
//! second, not dozens; a known due time still wakes it on time.
//!
//! Nothing here is state: forgetting it all would only cost a look.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::time::Timestamp;

/// The longest an idle loop goes without looking at the store.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The longest an idle loop's timer backs off to (never below the
/// configured interval): how late work another process writes may be
/// noticed by an idle host.
pub const IDLE_POLL: Duration = Duration::from_millis(500);

/// The most due times remembered; beyond, the latest are dropped (and
/// found by a recheck instead).
const MAX_DUE: usize = 4096;

/// One loop's idle bookkeeping.
#[derive(Debug, Default)]
pub struct Quiet {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The outside version at the last look, if that look found nothing.
    seen: Option<u64>,
    /// When that look was.
    looked: Option<Instant>,
    /// Times (ms) at which this process made work due.
    due: BTreeSet<i64>,
    /// Timed wake-ups that found nothing in a row (skipped, or looked at
    /// for nothing): how far the timer has backed off.
    quiet_for: u32,
}

impl Quiet {
    /// Work becomes due at `at`: the next timed look at or after it happens.
    pub fn due_at(&self, at: Timestamp) {
        let mut s = self.lock();
        s.due.insert(at.0);
        if s.due.len() > MAX_DUE {
            s.due.pop_last();
        }
    }

    /// Whether a timed wake-up may skip its look, given the store's
    /// outside version now. If it may not, that version is what
    /// [`Quiet::looked`] is to be given: read before the look, so that a
    /// commit during the look is not missed.
    pub fn may_skip(&self, now: Timestamp, version: Option<u64>) -> bool {
        let mut s = self.lock();
        let skip = version.is_some()
            && s.seen == version
            && s.looked.is_some_and(|t| t.elapsed() < RECHECK)
            && s.due.first().is_none_or(|&t| t > now.0);
        if skip {
            s.quiet_for = s.quiet_for.saturating_add(1);
        }
        skip
    }

    /// How long to sleep before the next timed wake-up, given the loop's
    /// configured interval: that, doubled for every wake-up in a row that
    /// found nothing (up to [`IDLE_POLL`]), and never past a known due
    /// time.
    pub fn interval(&self, base: Duration, now: Timestamp) -> Duration {
        let s = self.lock();
        if s.seen.is_none() || s.quiet_for == 0 {
            return base;
        }
        let backed_off = base
            .saturating_mul(1 << s.quiet_for.min(16))
            .min(IDLE_POLL.max(base));
        match s.due.first() {
            Some(&t) => backed_off.min(Timestamp(t).since(now)),
            None => backed_off,
        }
    }

    /// Records a look: whether it found nothing, and the outside version
    /// read before it (`None`: not read, or unknown). Due times that have
    /// come are forgotten.
    pub fn looked(&self, found_nothing: bool, version: Option<u64>, now: Timestamp) {
        let mut s = self.lock();
        s.seen = if found_nothing { version } else { None };
        s.looked = Some(Instant::now());
        // A recheck that finds nothing keeps the timer backed off.
        s.quiet_for = match found_nothing {
            true if s.quiet_for > 0 => s.quiet_for.saturating_add(1),
            _ => 0,
        };
        let later = s.due.split_off(&(now.0 + 1));
        s.due = later;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_skips_only_while_nothing_can_have_changed() {
        let q = Quiet::default();
        let now = Timestamp(1_000_000);
        let v = Some(7);

        assert!(!q.may_skip(now, v), "never looked");
        q.looked(true, v, now);
        assert!(q.may_skip(now, v), "nothing changed since an empty look");
        assert!(!q.may_skip(now, None), "a store that cannot tell");

        q.looked(false, v, now);
        assert!(!q.may_skip(now, v), "the last look found work");
        q.looked(true, v, now);

        assert!(!q.may_skip(now, Some(8)), "someone else committed");
        q.looked(true, Some(8), now);
        assert!(q.may_skip(now, Some(8)));

        q.due_at(Timestamp(now.0 + 50));
        q.due_at(Timestamp(now.0 + 90));
        assert!(q.may_skip(now, Some(8)), "not due yet");
        let later = Timestamp(now.0 + 50);
        assert!(!q.may_skip(later, Some(8)), "due now");
        q.looked(true, Some(8), later);
        assert!(q.may_skip(later, Some(8)), "forgotten once looked at");
        assert!(
            !q.may_skip(Timestamp(now.0 + 90), Some(8)),
            "the next one kept"
        );

        // The timer backs off while wake-ups are skipped, but not past a
        // due time.
        let base = Duration::from_millis(50);
        let q = Quiet::default();
        q.looked(true, v, now);
        assert_eq!(q.interval(base, now), base);
        assert!(q.may_skip(now, v));
        assert_eq!(q.interval(base, now), base * 2);
        for _ in 0..10 {
            assert!(q.may_skip(now, v));
        }
        assert_eq!(q.interval(base, now), IDLE_POLL);
        q.looked(true, v, now);
        assert_eq!(q.interval(base, now), IDLE_POLL, "a recheck for nothing");
        q.due_at(Timestamp(now.0 + 30));
        assert_eq!(q.interval(base, now), Duration::from_millis(30));
        q.looked(false, v, now);
        assert_eq!(q.interval(base, now), base, "work found: back to the base");

        let q = Quiet::default();
        q.looked(true, v, now);
        q.state.lock().unwrap().looked = Some(Instant::now() - RECHECK);
        assert!(!q.may_skip(now, v), "a recheck is due");
    }
}
