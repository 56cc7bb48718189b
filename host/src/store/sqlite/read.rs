//! The read side: queries for operators, on a connection of their own so
//! they never wait behind the writer (WAL lets readers run alongside it).

use rusqlite::{Connection, OptionalExtension, Row, params_from_iter, types::Value};

use super::sql;
use crate::job::{
    AttemptRow, JobAction, JobFilter, JobId, JobRecord, JobState, KvEntry,
    effective_idempotency_key,
};
use crate::outbox::{EventRecord, EventState};
use crate::policy::{BreakerRecord, PauseRecord};
use crate::schedule::ScheduleRecord;
use crate::store::{JobEffects, KvWriteRecord, QueueStats, StateCounts, StoreError};
use crate::time::Timestamp;

type Result<T> = std::result::Result<T, StoreError>;

pub(super) fn job(conn: &Connection, id: JobId) -> Result<Option<JobRecord>> {
    let q = format!("SELECT {} FROM jobs WHERE id = ?1", sql::JOB_COLUMNS);
    let Some(mut job) = conn
        .prepare_cached(&q)?
        .query_row([id], job_record)
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(sql::SELECT_ATTEMPTS)?;
    let rows = stmt.query_map([id], |r| {
        let outcome: String = r.get(2)?;
        Ok(AttemptRow {
            attempt: r.get(0)?,
            epoch: r.get(1)?,
            outcome: outcome.parse().map_err(|e: String| {
                rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
            })?,
            error: r.get(3)?,
            started_at: Timestamp(r.get(4)?),
            ended_at: Timestamp(r.get(5)?),
            duration_ms: r.get(6)?,
            fuel_used: r.get(7)?,
            component_hash: r.get(8)?,
            recording_bytes: r.get(9)?,
            host: r.get(10)?,
        })
    })?;
    job.attempts = rows.collect::<rusqlite::Result<_>>()?;
    Ok(Some(job))
}

pub(super) fn recording(
    conn: &Connection,
    id: JobId,
    attempt: Option<u32>,
) -> Result<Option<(u32, Vec<u8>)>> {
    Ok(conn
        .prepare_cached(sql::SELECT_RECORDING)?
        .query_row(rusqlite::params![id, attempt], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
}

pub(super) fn list_jobs(conn: &Connection, filter: &JobFilter) -> Result<Vec<JobRecord>> {
    let (cond, mut args) = filter_sql(filter);
    let q = format!(
        "SELECT {} FROM jobs WHERE {cond} ORDER BY id DESC LIMIT ?",
        sql::JOB_COLUMNS
    );
    args.push(Value::Integer(i64::from(filter.limit.unwrap_or(1000))));
    let mut stmt = conn.prepare_cached(&q)?;
    let rows = stmt.query_map(params_from_iter(args), job_record)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The `WHERE` condition of a job filter, with its arguments.
pub(super) fn filter_sql(filter: &JobFilter) -> (String, Vec<Value>) {
    let mut cond = String::from("1 = 1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(state) = filter.state {
        // A literal (one of six names), not a parameter: the planner can
        // then use the partial indexes whose condition names the state.
        cond.push_str(&format!(" AND state = '{}'", state.as_str()));
    }
    for (column, value) in [
        ("kind", &filter.kind),
        ("queue", &filter.queue),
        ("concurrency_key", &filter.concurrency_key),
    ] {
        if let Some(v) = value {
            cond.push_str(&format!(" AND {column} = ?"));
            args.push(Value::Text(v.clone()));
        }
    }
    if let Some(pattern) = filter.text_pattern() {
        cond.push_str(" AND (payload LIKE ? ESCAPE '\\' OR error LIKE ? ESCAPE '\\')");
        args.push(Value::Text(pattern.clone()));
        args.push(Value::Text(pattern));
    }
    if let Some(before) = filter.before {
        cond.push_str(" AND id < ?");
        args.push(Value::Integer(before));
    }
    if let Some(from) = filter.from {
        cond.push_str(" AND id >= ?");
        args.push(Value::Integer(from));
    }
    (cond, args)
}

pub(super) fn counts(conn: &Connection) -> Result<StateCounts> {
    let mut counts = StateCounts::default();
    let mut stmt = conn.prepare_cached(sql::COUNT_BY_STATE)?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let state: String = r.get(0)?;
        counts.set(&state, r.get(1)?)?;
    }
    Ok(counts)
}

impl StateCounts {
    fn set(&mut self, state: &str, n: u64) -> Result<()> {
        let state: JobState = state.parse().map_err(StoreError::Backend)?;
        *match state {
            JobState::Available => &mut self.available,
            JobState::Running => &mut self.running,
            JobState::Retryable => &mut self.retryable,
            JobState::Completed => &mut self.completed,
            JobState::Discarded => &mut self.discarded,
            JobState::Cancelled => &mut self.cancelled,
        } = n;
        Ok(())
    }
}

pub(super) fn queues(conn: &Connection, now: Timestamp) -> Result<Vec<QueueStats>> {
    let mut by_queue: std::collections::BTreeMap<String, QueueStats> = Default::default();
    let mut stmt = conn.prepare_cached(
        "SELECT queue, state, COUNT(*),
                MIN(CASE WHEN state IN ('available', 'retryable') AND run_at <= ?1
                         THEN run_at END)
         FROM jobs GROUP BY queue, state",
    )?;
    let mut rows = stmt.query([now.0])?;
    while let Some(r) = rows.next()? {
        let queue: String = r.get(0)?;
        let state: String = r.get(1)?;
        let oldest: Option<i64> = r.get(3)?;
        let q = by_queue.entry(queue.clone()).or_insert_with(|| QueueStats {
            queue,
            ..QueueStats::default()
        });
        q.counts.set(&state, r.get(2)?)?;
        if let Some(t) = oldest {
            q.oldest_due = Some(q.oldest_due.map_or(Timestamp(t), |o| o.min(Timestamp(t))));
        }
    }
    Ok(QueueStats::with_pauses(by_queue, pauses(conn)?))
}

pub(super) fn hosts(conn: &Connection) -> Result<Vec<crate::health::HostRecord>> {
    let mut stmt = conn.prepare_cached(sql::SELECT_HOSTS)?;
    let rows = stmt.query_map([], |r| {
        Ok(crate::health::HostRecord {
            id: r.get(0)?,
            version: r.get(1)?,
            started_at: Timestamp(r.get(2)?),
            last_seen: Timestamp(r.get(3)?),
            ready: r.get(4)?,
            in_flight: r.get(5)?,
            minutes: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn pauses(conn: &Connection) -> Result<Vec<PauseRecord>> {
    let mut stmt = conn.prepare_cached(sql::SELECT_PAUSES)?;
    let rows = stmt.query_map([], |r| {
        let scope: String = r.get(0)?;
        Ok(PauseRecord {
            scope: scope.parse().map_err(|e: String| conversion(0, e))?,
            name: r.get(1)?,
            note: r.get(2)?,
            paused_at: Timestamp(r.get(3)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn breakers(conn: &Connection) -> Result<Vec<BreakerRecord>> {
    let mut stmt = conn.prepare_cached(sql::SELECT_BREAKERS)?;
    let rows = stmt.query_map([], breaker_record)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Maps a row of `SELECT_BREAKER(S)`.
pub(super) fn breaker_record(r: &Row<'_>) -> rusqlite::Result<BreakerRecord> {
    let state: String = r.get(1)?;
    let ts = |i: usize| -> rusqlite::Result<Option<Timestamp>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(Timestamp))
    };
    let probe_job: Option<JobId> = r.get(6)?;
    let probe_epoch: Option<u64> = r.get(7)?;
    Ok(BreakerRecord {
        kind: r.get(0)?,
        state: state.parse().map_err(|e: String| conversion(1, e))?,
        failures: r.get(2)?,
        streak_started_at: ts(3)?,
        opened_at: ts(4)?,
        retry_at: ts(5)?,
        probe: probe_job.zip(probe_epoch),
        trips: r.get(8)?,
        last_error: r.get(9)?,
        updated_at: Timestamp(r.get(10)?),
    })
}

pub(super) fn schedules(conn: &Connection) -> Result<Vec<ScheduleRecord>> {
    let q = format!(
        "SELECT {} {} ORDER BY s.id",
        sql::SCHEDULE_COLUMNS,
        sql::SCHEDULES_FROM
    );
    let mut stmt = conn.prepare_cached(&q)?;
    let rows = stmt.query_map([], schedule_record)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn schedule(conn: &Connection, id: &str) -> Result<Option<ScheduleRecord>> {
    let q = format!(
        "SELECT {} {} WHERE s.id = ?1",
        sql::SCHEDULE_COLUMNS,
        sql::SCHEDULES_FROM
    );
    Ok(conn
        .prepare_cached(&q)?
        .query_row([id], schedule_record)
        .optional()?)
}

/// Unpaused schedules whose next run is due, or whose buffered fire's
/// predecessor has finished.
pub(super) fn due_schedules(
    conn: &Connection,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<ScheduleRecord>> {
    let q = format!(
        "SELECT {} {}
         WHERE s.paused = 0
           AND ((s.next_run_at IS NOT NULL AND s.next_run_at <= ?1)
                OR (s.buffered_at IS NOT NULL
                    AND (j.state IS NULL
                         OR j.state IN ('completed', 'discarded', 'cancelled'))))
         ORDER BY s.next_run_at
         LIMIT ?2",
        sql::SCHEDULE_COLUMNS,
        sql::SCHEDULES_FROM
    );
    let mut stmt = conn.prepare_cached(&q)?;
    let rows = stmt.query_map(rusqlite::params![now.0, limit], schedule_record)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn next_schedule_wake(conn: &Connection) -> Result<(Option<Timestamp>, bool)> {
    Ok(conn
        .prepare_cached(sql::NEXT_SCHEDULE_WAKE)?
        .query_row([], |r| {
            Ok((r.get::<_, Option<i64>>(0)?.map(Timestamp), r.get(1)?))
        })?)
}

/// Maps a row of [`sql::SCHEDULE_COLUMNS`].
fn schedule_record(r: &Row<'_>) -> rusqlite::Result<ScheduleRecord> {
    let ts = |i: usize| -> rusqlite::Result<Option<Timestamp>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(Timestamp))
    };
    let last_state: Option<String> = r.get(13)?;
    Ok(ScheduleRecord {
        id: r.get(0)?,
        spec: r.get(1)?,
        next_fire_at: ts(2)?,
        next_run_at: ts(3)?,
        paused: r.get(4)?,
        pause_note: r.get(5)?,
        paused_at: ts(6)?,
        fired: r.get(7)?,
        missed: r.get(8)?,
        skipped: r.get(9)?,
        triggers: r.get(10)?,
        last_fire_at: ts(11)?,
        last_job_id: r.get(12)?,
        last_job_state: last_state
            .map(|s| s.parse().map_err(|e: String| conversion(13, e)))
            .transpose()?,
        buffered_at: ts(14)?,
        version: r.get(15)?,
        created_at: Timestamp(r.get(16)?),
        updated_at: Timestamp(r.get(17)?),
    })
}

fn conversion(i: usize, e: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
}

pub(super) fn kv_get(conn: &Connection, ns: &str, key: &str) -> Result<KvEntry> {
    let row: Option<(Option<Vec<u8>>, i64)> = conn
        .prepare_cached(sql::KV_GET)?
        .query_row([ns, key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match row {
        Some((value, version)) => KvEntry {
            value,
            version: Some(version),
        },
        None => KvEntry::default(),
    })
}

pub(super) fn kv_list(
    conn: &Connection,
    ns: &str,
    prefix: &str,
    limit: u32,
) -> Result<Vec<(String, KvEntry)>> {
    let upper = crate::store::prefix_upper_bound(prefix);
    let mut stmt = conn.prepare_cached(sql::KV_LIST)?;
    let rows = stmt.query_map(rusqlite::params![ns, prefix, upper, limit], |r| {
        Ok((
            r.get::<_, String>(0)?,
            KvEntry {
                value: r.get(1)?,
                version: Some(r.get(2)?),
            },
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn list_events(
    conn: &Connection,
    state: Option<EventState>,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<EventRecord>> {
    // The id bound is a range on the rowid, walked downwards from it.
    let q = format!(
        "SELECT {} FROM outbox WHERE id < ?3 AND (?1 IS NULL OR state = ?1)
         ORDER BY id DESC LIMIT ?2",
        sql::EVENT_COLUMNS
    );
    let mut stmt = conn.prepare_cached(&q)?;
    let rows = stmt.query_map(
        rusqlite::params![
            state.map(EventState::as_str),
            limit,
            before.unwrap_or(i64::MAX)
        ],
        event_record,
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Maps a row of [`sql::EVENT_COLUMNS`].
fn event_record(r: &Row<'_>) -> rusqlite::Result<EventRecord> {
    let state: String = r.get(6)?;
    Ok(EventRecord {
        id: r.get(0)?,
        job_id: r.get(1)?,
        topic: r.get(2)?,
        url: r.get(3)?,
        body: r.get(4)?,
        idempotency_key: r.get(5)?,
        state: state.parse().map_err(|e: String| conversion(6, e))?,
        attempts: r.get(7)?,
        next_attempt_at: Timestamp(r.get(8)?),
        created_at: Timestamp(r.get(9)?),
        finalized_at: r.get::<_, Option<i64>>(10)?.map(Timestamp),
        last_status: r.get(11)?,
        last_error: r.get(12)?,
        note: r.get(13)?,
    })
}

/// What job `id` committed: its kv writes and its outbox events (`None`:
/// no such job).
pub(super) fn job_effects(conn: &Connection, id: JobId) -> Result<Option<JobEffects>> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
        .exists([id])?;
    if !exists {
        return Ok(None);
    }
    let kv_writes = conn
        .prepare_cached(sql::SELECT_KV_WRITES)?
        .query_map([id], |r| {
            Ok(KvWriteRecord {
                epoch: r.get(0)?,
                namespace: r.get(1)?,
                key: r.get(2)?,
                version: r.get(3)?,
                deleted: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let q = format!(
        "SELECT {} FROM outbox WHERE job_id = ?1 ORDER BY id",
        sql::EVENT_COLUMNS
    );
    let events = conn
        .prepare_cached(&q)?
        .query_map([id], event_record)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(JobEffects { kv_writes, events }))
}

/// How many jobs match `filter` (and, with `action`, could be moved by it).
pub(super) fn count_jobs(
    conn: &Connection,
    filter: &JobFilter,
    action: Option<JobAction>,
) -> Result<u64> {
    let (cond, args) = filter_sql(filter);
    let states = action.map_or(String::new(), |a| {
        format!(" AND state IN {}", a.from_states_sql())
    });
    let q = format!("SELECT COUNT(*) FROM jobs WHERE {cond}{states}");
    Ok(conn
        .prepare_cached(&q)?
        .query_row(params_from_iter(args), |r| r.get(0))?)
}

/// The highest job id (`None`: no jobs).
pub(super) fn last_job_id(conn: &Connection) -> Result<Option<JobId>> {
    Ok(conn
        .prepare_cached("SELECT MAX(id) FROM jobs")?
        .query_row([], |r| r.get(0))?)
}

pub(super) fn event_counts(conn: &Connection) -> Result<crate::store::EventCounts> {
    let mut counts = crate::store::EventCounts::default();
    let mut stmt = conn.prepare_cached("SELECT state, COUNT(*) FROM outbox GROUP BY state")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let state: String = r.get(0)?;
        let n: u64 = r.get(1)?;
        match state.as_str() {
            "pending" => counts.pending = n,
            "delivered" => counts.delivered = n,
            _ => counts.failed += n,
        }
    }
    Ok(counts)
}

pub(super) fn pending_events(conn: &Connection) -> Result<u64> {
    Ok(conn
        .prepare_cached(sql::COUNT_PENDING_EVENTS)?
        .query_row([], |r| r.get(0))?)
}

/// Maps a row of [`sql::JOB_COLUMNS`].
fn job_record(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let id: JobId = r.get(0)?;
    let state: String = r.get(3)?;
    let key: Option<String> = r.get(8)?;
    let ts = |i: usize| -> rusqlite::Result<Option<Timestamp>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(Timestamp))
    };
    Ok(JobRecord {
        id,
        kind: r.get(1)?,
        queue: r.get(2)?,
        state: state.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?,
        priority: r.get(4)?,
        attempt: r.get(5)?,
        max_attempts: r.get(6)?,
        epoch: r.get(7)?,
        idempotency_key: effective_idempotency_key(id, key.as_deref()),
        payload: r.get(9)?,
        output: r.get(10)?,
        error: r.get(11)?,
        created_at: Timestamp(r.get(12)?),
        run_at: Timestamp(r.get(13)?),
        attempted_at: ts(14)?,
        finalized_at: ts(15)?,
        lease_expires_at: ts(16)?,
        callback_url: r.get(17)?,
        concurrency_key: r.get(18)?,
        concurrency_limit: r.get(19)?,
        conflicts: r.get(20)?,
        schedule_id: r.get(21)?,
        attempts: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use crate::store::prefix_upper_bound;

    #[test]
    fn the_prefix_bound_is_the_next_string_after_every_match() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("balance/").as_deref(), Some("balance0"));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        let upper = prefix_upper_bound("k\u{D7FF}").unwrap();
        assert_eq!(upper, "k\u{E000}", "surrogates are skipped");
    }
}
