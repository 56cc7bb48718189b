//! Time as the rest of jobbox sees it: whole milliseconds since the Unix
//! epoch, read through an injectable [`Clock`].
//!
//! Every state transition takes `now` as a parameter instead of asking the
//! database or the OS, so tests can drive time by hand with [`ManualClock`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The latest time jobbox represents, 9999-12-31T23:59:59.999Z (RFC 3339
    /// has four-digit years): "never", for practical purposes.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// The timestamp `d` after this one, saturating at [`Timestamp::MAX`].
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_ms(d)).min(Self::MAX.0))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    /// Parses an RFC 3339 timestamp such as `2026-11-22T10:00:00Z` or
    /// `2026-11-22T11:00:00+01:00` (a time without an offset is UTC).
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
        if let Ok(t) = s.trim().parse::<jiff::Timestamp>() {
            if t.as_millisecond() < 0 {
                return Err(format!("timestamp {s:?} is before 1970"));
            }
            return Ok(Timestamp(t.as_millisecond()));
        }
        let t = humantime::parse_rfc3339_weak(s.trim())
            .map_err(|e| format!("invalid RFC 3339 timestamp {s:?}: {e}"))?;
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| format!("timestamp {s:?} is before 1970"))?
            .as_millis();
        match i64::try_from(ms) {
            Ok(ms) if ms <= Self::MAX.0 => Ok(Timestamp(ms)),
            _ => Err(format!("timestamp {s:?} is after the year 9999")),
        }
    }

    /// This timestamp as a `SystemTime` (within 1970 to [`Timestamp::MAX`]).
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.clamp(0, Self::MAX.0) as u64)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}

/// Parses a duration such as `"250ms"`, `"30s"`, `"1h 30m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Converts a duration to whole milliseconds, saturating at `i64::MAX`.
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(ms)
    }
}

/// A clock that only moves when told to; for tests of time-based logic.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock {
            now: Arc::new(AtomicI64::new(start.0)),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.now.fetch_add(duration_ms(d), Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.now.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_stay_within_four_digit_years() {
        let far = Timestamp(0).plus(Duration::from_secs(u64::MAX));
        assert_eq!(far, Timestamp::MAX);
        assert_eq!(far.to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(Timestamp(i64::MAX).to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(
            Timestamp::parse_rfc3339("9999-12-31T23:59:59.999Z"),
            Ok(Timestamp::MAX)
        );
        assert!(Timestamp::parse_rfc3339("1969-12-31T23:59:59Z").is_err());
    }
}
