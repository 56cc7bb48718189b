//! When a schedule fires: a cron expression in a time zone, or a fixed
//! interval aligned to the Unix epoch.
//!
//! Cron patterns are parsed and matched by `croner`; time zones, their
//! offsets and transitions come from `jiff` with its bundled copy of the
//! tz database, so a schedule fires at the same instants on every machine.
//! What is ours is the daylight-saving policy, applied on top:
//!
//! - The pattern is matched against *wall-clock* (civil) times of the zone.
//! - A wall-clock time that does not exist (a spring-forward gap) fires
//!   once, at the instant of the jump. Several such times in one gap fire
//!   together, once.
//! - A wall-clock time that happens twice (a fall-back fold) fires once, at
//!   its first occurrence. The repeated hour does not fire again.
//!
//! For a fixed interval in real time whatever the clocks do, use `every`.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};

use crate::time::{Timestamp, duration_ms};

/// A validated cadence.
#[derive(Clone, Debug)]
pub enum Cadence {
    Cron {
        /// Boxed: a parsed pattern is large, an interval two integers.
        pattern: Box<Cron>,
        zone: TimeZone,
        /// The zone's IANA name, as given.
        zone_name: String,
    },
    Every {
        every_ms: i64,
        phase_ms: i64,
    },
}

/// The most matches one search looks at before giving up (a pattern that
/// only matches in a long fold, or never in the zone's remaining history).
const MAX_STEPS: usize = 100_000;

impl Cadence {
    /// A cron cadence: 5 fields (minute precision) or 6 (seconds first), in
    /// the IANA zone `timezone` (UTC if `None`). The error says which part
    /// is wrong and names the field: `cron` or `timezone`.
    pub fn cron(expr: &str, timezone: Option<&str>) -> Result<Cadence, (&'static str, String)> {
        let fields = expr.split_whitespace().count();
        if !(fields == 5 || fields == 6 || expr.trim_start().starts_with('@')) {
            return Err((
                "cron",
                format!(
                    "{expr:?} has {fields} fields; expected 5 (minute hour day month weekday) or 6 (seconds first)"
                ),
            ));
        }
        let pattern = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| ("cron", format!("invalid cron expression {expr:?}: {e}")))?;
        let zone_name = timezone.unwrap_or("UTC");
        let zone = TimeZone::get(zone_name)
            .map_err(|_| ("timezone", format!("unknown time zone {zone_name:?} (expected an IANA name such as \"Europe/Berlin\")")))?;
        let cadence = Cadence::Cron {
            pattern: Box::new(pattern),
            zone,
            zone_name: zone_name.to_owned(),
        };
        // A pattern such as "0 0 30 2 *" parses but never matches.
        if cadence.next_after(Timestamp(0)).is_none() {
            return Err(("cron", format!("{expr:?} never matches a date")));
        }
        Ok(cadence)
    }

    /// A fixed interval: fires at every `phase + k * every` since the Unix
    /// epoch. `every` is at least one second and `phase` less than `every`.
    pub fn every(
        every: Duration,
        phase: Option<Duration>,
    ) -> Result<Cadence, (&'static str, String)> {
        if every < Duration::from_secs(1) {
            return Err(("every", "must be at least 1s".to_owned()));
        }
        let phase = phase.unwrap_or_default();
        if phase >= every {
            return Err((
                "phase",
                format!(
                    "must be less than every ({})",
                    humantime::format_duration(every)
                ),
            ));
        }
        Ok(Cadence::Every {
            every_ms: duration_ms(every),
            phase_ms: duration_ms(phase),
        })
    }

    /// The first nominal fire time strictly after `after`, or `None` if
    /// there is none (a cron pattern with no match left before year 5000).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match self {
            Cadence::Every { every_ms, phase_ms } => {
                let k = (after.0 - phase_ms).div_euclid(*every_ms) + 1;
                k.checked_mul(*every_ms)?
                    .checked_add(*phase_ms)
                    .map(Timestamp)
                    .filter(|t| *t <= Timestamp::MAX)
            }
            Cadence::Cron { pattern, zone, .. } => {
                let after_ts = jiff::Timestamp::from_millisecond(after.0).ok()?;
                // Matches are searched in wall-clock time from the wall-clock
                // time of `after`; mapping a match back to an instant never
                // goes backwards, so the first whose instant lies after
                // `after` is the answer (matches in a fold's second pass and
                // repeats of a gap's jump are skipped here).
                let mut civil = after_ts.to_zoned(zone.clone()).datetime();
                let mut inclusive = true;
                for _ in 0..MAX_STEPS {
                    let m: DateTime = pattern.find_next_occurrence(&civil, inclusive).ok()?;
                    let instant = instant_of(zone, m)?;
                    if instant > after_ts {
                        return Some(Timestamp(instant.as_millisecond()));
                    }
                    civil = m;
                    inclusive = false;
                }
                None
            }
        }
    }

    /// Up to `n` nominal fire times after `after`.
    pub fn upcoming(&self, after: Timestamp, n: usize) -> Vec<Timestamp> {
        successive(after, n, |t| self.next_after(t))
    }
}

/// Up to `n` times, each `next` of the one before, starting after `after`.
pub(super) fn successive(
    after: Timestamp,
    n: usize,
    next: impl Fn(Timestamp) -> Option<Timestamp>,
) -> Vec<Timestamp> {
    let mut out = Vec::with_capacity(n.min(1024));
    let mut t = after;
    while out.len() < n {
        match next(t) {
            Some(n) => {
                out.push(n);
                t = n;
            }
            None => break,
        }
    }
    out
}

/// The instant a wall-clock time of `zone` fires at: its only instant; in a
/// fold, the first; in a gap, the instant of the jump.
fn instant_of(zone: &TimeZone, civil: DateTime) -> Option<jiff::Timestamp> {
    let ambiguous = zone.to_ambiguous_timestamp(civil);
    match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { .. } | AmbiguousOffset::Fold { .. } => {
            ambiguous.earlier().ok()
        }
        AmbiguousOffset::Gap { after, .. } => {
            // Read with the offset after the jump, the wall-clock time is an
            // instant before the jump; the next transition is the jump.
            let before_jump = after.to_timestamp(civil).ok()?;
            zone.following(before_jump)
                .next()
                .map(|transition| transition.timestamp())
        }
    }
}

/// A stable 64-bit FNV-1a hash: the same on every machine and in every
/// version, unlike the standard library's hasher.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separate the parts, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp(s.parse::<jiff::Timestamp>().unwrap().as_millisecond())
    }

    fn show(t: Timestamp, zone: &str) -> String {
        jiff::Timestamp::from_millisecond(t.0)
            .unwrap()
            .to_zoned(TimeZone::get(zone).unwrap())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string()
    }

    #[test]
    fn five_and_six_fields_in_utc() {
        let c = Cadence::cron("*/15 * * * *", None).unwrap();
        assert_eq!(
            c.next_after(ts("2026-11-25T10:07:00Z")),
            Some(ts("2026-11-25T10:15:00Z"))
        );
        assert_eq!(
            c.next_after(ts("2026-11-25T10:15:00Z")),
            Some(ts("2026-11-25T10:30:00Z")),
            "strictly after"
        );
        let s = Cadence::cron("30 * * * * *", None).unwrap();
        assert_eq!(
            s.next_after(ts("2026-11-25T10:07:30Z")),
            Some(ts("2026-11-25T10:08:30Z"))
        );
    }

    #[test]
    fn bad_patterns_and_zones_name_their_field() {
        assert_eq!(Cadence::cron("* * *", None).unwrap_err().0, "cron");
        assert_eq!(Cadence::cron("61 * * * *", None).unwrap_err().0, "cron");
        assert_eq!(
            Cadence::cron("* * * * * * 2030", None).unwrap_err().0,
            "cron"
        );
        assert_eq!(Cadence::cron("0 0 30 2 *", None).unwrap_err().0, "cron");
        assert_eq!(
            Cadence::cron("0 * * * *", Some("Mars/Olympus"))
                .unwrap_err()
                .0,
            "timezone"
        );
        assert_eq!(
            Cadence::every(Duration::from_millis(10), None)
                .unwrap_err()
                .0,
            "every"
        );
        assert_eq!(
            Cadence::every(Duration::from_secs(60), Some(Duration::from_secs(60)))
                .unwrap_err()
                .0,
            "phase"
        );
    }

    #[test]
    fn every_is_aligned_to_the_epoch_with_a_phase() {
        let c = Cadence::every(Duration::from_secs(3600), Some(Duration::from_secs(300))).unwrap();
        assert_eq!(
            c.next_after(ts("2026-11-25T10:07:00Z")),
            Some(ts("2026-11-25T11:05:00Z"))
        );
        assert_eq!(
            c.next_after(ts("2026-11-25T10:04:59Z")),
            Some(ts("2026-11-25T10:05:00Z"))
        );
        assert_eq!(
            c.next_after(ts("2026-11-25T10:05:00Z")),
            Some(ts("2026-11-25T11:05:00Z"))
        );
    }

    #[test]
    fn a_time_in_the_spring_forward_gap_fires_once_at_the_jump() {
        // Europe/Berlin jumps from 02:00 CET to 03:00 CEST on 2026-03-29.
        let c = Cadence::cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let fires = c.upcoming(ts("2026-03-27T12:00:00Z"), 4);
        let shown: Vec<_> = fires.iter().map(|t| show(*t, "Europe/Berlin")).collect();
        assert_eq!(
            shown,
            [
                "2026-03-28 02:30:00 CET",
                "2026-03-29 03:00:00 CEST",
                "2026-03-30 02:30:00 CEST",
                "2026-03-31 02:30:00 CEST",
            ]
        );
        // Every quarter hour: the four times in the gap fire once, at the
        // jump, which is also the 03:00 fire.
        let q = Cadence::cron("*/15 * * * *", Some("Europe/Berlin")).unwrap();
        let fires = q.upcoming(ts("2026-03-29T00:30:00Z"), 4);
        let shown: Vec<_> = fires.iter().map(|t| show(*t, "Europe/Berlin")).collect();
        assert_eq!(
            shown,
            [
                "2026-03-29 01:45:00 CET",
                "2026-03-29 03:00:00 CEST",
                "2026-03-29 03:15:00 CEST",
                "2026-03-29 03:30:00 CEST",
            ]
        );
    }

    #[test]
    fn a_time_in_the_fall_back_fold_fires_once_at_its_first_occurrence() {
        // America/New_York falls back from 02:00 EDT to 01:00 EST on
        // 2026-11-01: 01:00-01:59 happens twice.
        let c = Cadence::cron("30 1 * * *", Some("America/New_York")).unwrap();
        let fires = c.upcoming(ts("2026-10-31T12:00:00Z"), 3);
        let shown: Vec<_> = fires.iter().map(|t| show(*t, "America/New_York")).collect();
        assert_eq!(
            shown,
            [
                "2026-11-01 01:30:00 EDT",
                "2026-11-02 01:30:00 EST",
                "2026-11-03 01:30:00 EST",
            ]
        );
        // Searching from inside the second pass finds no repeat either.
        let inside = ts("2026-11-01T06:10:00Z"); // 01:10 EST
        assert_eq!(
            show(c.next_after(inside).unwrap(), "America/New_York"),
            "2026-11-02 01:30:00 EST"
        );
        // Every half hour: the repeated hour does not fire a second time.
        let h = Cadence::cron("*/30 * * * *", Some("America/New_York")).unwrap();
        let fires = h.upcoming(ts("2026-11-01T04:45:00Z"), 4); // 00:45 EDT
        let shown: Vec<_> = fires.iter().map(|t| show(*t, "America/New_York")).collect();
        assert_eq!(
            shown,
            [
                "2026-11-01 01:00:00 EDT",
                "2026-11-01 01:30:00 EDT",
                "2026-11-01 02:00:00 EST",
                "2026-11-01 02:30:00 EST",
            ]
        );
    }

    #[test]
    fn the_stable_hash_is_fixed() {
        assert_eq!(stable_hash(&[b""]), stable_hash(&[b""]));
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        // A change here would move every jittered fire: it must not.
        assert_eq!(
            stable_hash(&[b"nightly", &0i64.to_le_bytes()]),
            0x8fe3_6ead_94cb_20f0
        );
    }
}
