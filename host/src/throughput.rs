//! Attempts per minute and plugin over the last hour: what the dashboard's
//! overview charts, for every host on the database.
//!
//! Each host counts its own attempts in memory ([`Minutes`]) and writes
//! them with its heartbeat (a JSON column of its `hosts` row, every few
//! seconds), so that any host's API can sum every host's minutes without a
//! scan of the attempts and without a write per attempt. Run times are
//! kept as a histogram with four buckets per doubling (each bucket's upper
//! bound is 19% above its lower one), so percentiles merge across hosts
//! and minutes; a percentile is reported as its bucket's upper bound.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::job::AttemptOutcome;
use crate::time::Timestamp;

/// How long minutes are kept.
pub const KEEP: Duration = Duration::from_secs(3600);

const MINUTE_MS: i64 = 60_000;

/// The smallest run time with a bucket of its own (shorter ones share
/// bucket 0).
const FLOOR_US: f64 = 100.0;

/// Buckets per doubling of the run time.
const PER_OCTAVE: f64 = 4.0;

/// The last bucket holds everything longer (about 100 s and up).
const BUCKETS: usize = 81;

/// One plugin's attempts in one minute on one host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteRow {
    /// The minute's start (ms since the Unix epoch).
    pub minute: i64,
    pub plugin: String,
    /// Attempts that completed their job.
    pub ok: u64,
    /// Attempts that failed (errors, traps, limits, expired leases…).
    pub failed: u64,
    /// Run times: (bucket, attempts) for each non-empty bucket.
    pub hist: Vec<(u8, u64)>,
}

/// This host's counts, by minute and plugin.
#[derive(Debug, Default)]
pub struct Minutes {
    rows: BTreeMap<(i64, String), MinuteRow>,
    changed: bool,
}

impl Minutes {
    /// Counts one written attempt.
    pub fn record(&mut self, plugin: &str, outcome: AttemptOutcome, run: Duration, now: Timestamp) {
        let failed = match outcome {
            AttemptOutcome::Completed => false,
            // Not the plugin's failure, nor finished.
            AttemptOutcome::HostShutdown
            | AttemptOutcome::FencedOut
            | AttemptOutcome::KvConflict
            | AttemptOutcome::Cancelled => return,
            _ => true,
        };
        let minute = now.0.div_euclid(MINUTE_MS) * MINUTE_MS;
        let row = self
            .rows
            .entry((minute, plugin.to_owned()))
            .or_insert_with(|| MinuteRow {
                minute,
                plugin: plugin.to_owned(),
                ..MinuteRow::default()
            });
        if failed {
            row.failed += 1;
        } else {
            row.ok += 1;
        }
        let b = bucket(run);
        match row.hist.binary_search_by_key(&b, |(i, _)| *i) {
            Ok(i) => row.hist[i].1 += 1,
            Err(i) => row.hist.insert(i, (b, 1)),
        }
        self.changed = true;
    }

    /// The rows of the last hour as JSON, if anything changed since the
    /// last call (older rows are dropped).
    pub fn take_json(&mut self, now: Timestamp) -> Option<String> {
        let oldest = now.0 - KEEP.as_millis() as i64 - MINUTE_MS;
        self.rows.retain(|(minute, _), _| *minute >= oldest);
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        let rows: Vec<&MinuteRow> = self.rows.values().collect();
        serde_json::to_string(&rows).ok()
    }
}

/// The bucket of a run time.
fn bucket(run: Duration) -> u8 {
    let us = run.as_secs_f64() * 1e6;
    if us < FLOOR_US {
        return 0;
    }
    let i = ((us / FLOOR_US).log2() * PER_OCTAVE).floor() as usize + 1;
    i.min(BUCKETS - 1) as u8
}

/// A bucket's upper bound in milliseconds (the last one's lower bound).
fn bucket_upper_ms(b: u8) -> f64 {
    let b = usize::from(b).min(BUCKETS - 1);
    let exp = if b == BUCKETS - 1 { b - 1 } else { b };
    FLOOR_US * 2f64.powf(exp as f64 / PER_OCTAVE) / 1000.0
}

/// The dashboard's chart: every host's minutes, summed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Throughput {
    pub from: Timestamp,
    pub to: Timestamp,
    /// One entry per minute of the window, oldest first (zeros included).
    pub minutes: Vec<MinuteTotal>,
    /// Per plugin over the whole window.
    pub plugins: Vec<PluginTotal>,
    /// Hosts whose minutes were counted.
    pub hosts: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MinuteTotal {
    pub at: Timestamp,
    pub succeeded: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PluginTotal {
    pub plugin: String,
    pub succeeded: u64,
    pub failed: u64,
    /// The share of attempts that succeeded (`null` without attempts).
    pub success_rate: Option<f64>,
    /// Run-time percentiles (bucket upper bounds, see the module docs).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Sums the hosts' minutes (each host's JSON column) over the `minutes`
/// minutes up to `now`. A host's unreadable column is skipped.
pub fn summarize<'a>(
    hosts: impl IntoIterator<Item = &'a str>,
    now: Timestamp,
    minutes: u32,
) -> Throughput {
    let minutes = i64::from(minutes.max(1));
    let last = now.0.div_euclid(MINUTE_MS) * MINUTE_MS;
    let first = last - (minutes - 1) * MINUTE_MS;
    let mut per_minute: Vec<MinuteTotal> = (0..minutes)
        .map(|i| MinuteTotal {
            at: Timestamp(first + i * MINUTE_MS),
            ..MinuteTotal::default()
        })
        .collect();
    let mut per_plugin: BTreeMap<String, (u64, u64, Vec<u64>)> = BTreeMap::new();
    let mut counted = 0;
    for json in hosts {
        let Ok(rows) = serde_json::from_str::<Vec<MinuteRow>>(json) else {
            continue;
        };
        counted += 1;
        for r in rows {
            if r.minute < first || r.minute > last {
                continue;
            }
            let m = &mut per_minute[((r.minute - first) / MINUTE_MS) as usize];
            m.succeeded += r.ok;
            m.failed += r.failed;
            let p = per_plugin
                .entry(r.plugin)
                .or_insert_with(|| (0, 0, vec![0; BUCKETS]));
            p.0 += r.ok;
            p.1 += r.failed;
            for (b, n) in r.hist {
                p.2[usize::from(b).min(BUCKETS - 1)] += n;
            }
        }
    }
    let plugins = per_plugin
        .into_iter()
        .map(|(plugin, (ok, failed, hist))| {
            let total = ok + failed;
            PluginTotal {
                plugin,
                succeeded: ok,
                failed,
                success_rate: (total > 0).then(|| ok as f64 / total as f64),
                p50_ms: percentile(&hist, 0.50),
                p99_ms: percentile(&hist, 0.99),
            }
        })
        .collect();
    Throughput {
        from: Timestamp(first),
        to: Timestamp(last + MINUTE_MS),
        minutes: per_minute,
        plugins,
        hosts: counted,
    }
}

/// The upper bound of the bucket holding the `q` quantile.
fn percentile(hist: &[u64], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (b, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_upper_ms(b as u8));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_by_a_fourth_of_a_doubling() {
        assert_eq!(bucket(Duration::from_micros(50)), 0);
        assert_eq!(bucket(Duration::from_micros(100)), 1);
        assert_eq!(bucket(Duration::from_micros(200)), 5);
        assert_eq!(bucket(Duration::from_secs(10_000)), (BUCKETS - 1) as u8);
        // A run time is never above its bucket's upper bound.
        for us in [100u64, 150, 999, 12_345, 2_000_000] {
            let d = Duration::from_micros(us);
            let upper = bucket_upper_ms(bucket(d));
            assert!(upper * 1000.0 >= us as f64, "{us}µs above {upper}ms");
            assert!(
                upper * 1000.0 <= us as f64 * 1.19 + 1.0,
                "{us}µs: {upper}ms"
            );
        }
    }

    #[test]
    fn hosts_minutes_sum_and_old_ones_drop() {
        let now = Timestamp(10 * MINUTE_MS + 5_000);
        let mut a = Minutes::default();
        let mut b = Minutes::default();
        for _ in 0..98 {
            a.record(
                "echo",
                AttemptOutcome::Completed,
                Duration::from_millis(2),
                now,
            );
        }
        a.record(
            "echo",
            AttemptOutcome::Trap,
            Duration::from_millis(900),
            now,
        );
        a.record("echo", AttemptOutcome::HostShutdown, Duration::ZERO, now);
        b.record("echo", AttemptOutcome::Timeout, Duration::from_secs(5), now);
        b.record(
            "mail",
            AttemptOutcome::Completed,
            Duration::from_millis(1),
            Timestamp(now.0 - MINUTE_MS),
        );
        // Two hours back: outside the window.
        b.record(
            "mail",
            AttemptOutcome::Completed,
            Duration::from_millis(1),
            Timestamp(now.0 - 120 * MINUTE_MS),
        );
        let (ja, jb) = (a.take_json(now).unwrap(), b.take_json(now).unwrap());
        assert!(a.take_json(now).is_none(), "unchanged: nothing to write");
        let t = summarize([ja.as_str(), jb.as_str(), "not json"], now, 60);
        assert_eq!(t.hosts, 2);
        assert_eq!(t.minutes.len(), 60);
        let last = t.minutes.last().unwrap();
        assert_eq!((last.succeeded, last.failed), (98, 2));
        assert_eq!(t.minutes[58].succeeded, 1);
        let echo = &t.plugins[0];
        assert_eq!(
            (echo.plugin.as_str(), echo.succeeded, echo.failed),
            ("echo", 98, 2)
        );
        assert!((echo.success_rate.unwrap() - 0.98).abs() < 1e-9);
        let p50 = echo.p50_ms.unwrap();
        assert!((2.0..2.4).contains(&p50), "p50 {p50}");
        let p99 = echo.p99_ms.unwrap();
        assert!((900.0..1100.0).contains(&p99), "p99 {p99}");
        assert_eq!(
            t.plugins[1].succeeded, 1,
            "the 2-hour-old minute is not counted"
        );
    }
}
