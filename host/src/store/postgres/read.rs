//! Reads for operators and the loops, on the read connections (outside any
//! transaction), like `store/sqlite/read.rs`, whose answers they match.
//!
//! Two things differ from SQLite and are handled here:
//!
//! - The postgres crate refuses to read a column as a Rust type of another
//!   width (an `INTEGER` as `i64`), and has no unsigned integers. Rows are
//!   read through [`int`] and friends, which take whichever integer type
//!   the column has and check the range, so bad data is an error, never a
//!   panic.
//! - Text order follows the database's collation, which may not be
//!   SQLite's byte order (`en_US` sorts `B` after `a`). Every `ORDER BY` or
//!   range on text that an answer depends on says `COLLATE "C"`: code
//!   point order, as in SQLite.

use postgres::Row;
use postgres::types::{FromSql, ToSql, Type};

use super::Conn;
use super::write::Result;
use crate::job::{
    AttemptRow, JobAction, JobFilter, JobId, JobRecord, JobState, KvEntry,
    effective_idempotency_key,
};
use crate::outbox::{EventRecord, EventState};
use crate::policy::{BreakerRecord, PauseRecord};
use crate::store::{EventCounts, JobEffects, KvWriteRecord, QueueStats, StateCounts, StoreError};
use crate::time::Timestamp;

/// The columns [`job_record`] reads, in order (a macro, so that the
/// statements that use it are `const` and prepared once per connection).
macro_rules! job_columns {
    () => {
        "id, kind, queue, state, priority, attempt, max_attempts, epoch,
         idempotency_key, payload, output, error, created_at, run_at,
         attempted_at, finalized_at, lease_expires_at, callback_url,
         concurrency_key, concurrency_limit, conflicts, schedule_id"
    };
}

const SELECT_JOB: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1");

const SELECT_ATTEMPTS: &str = "
    SELECT attempt, epoch, outcome, error, started_at, ended_at, duration_ms,
           fuel_used, component_hash, octet_length(recording), host
    FROM attempts WHERE job_id = $1 ORDER BY epoch";

/// An attempt's recording: attempt $2, or with $2 NULL the latest that has
/// one.
const SELECT_RECORDING: &str = "
    SELECT attempt, recording FROM attempts
    WHERE job_id = $1 AND recording IS NOT NULL
      AND ($2::integer IS NULL OR attempt = $2)
    ORDER BY epoch DESC LIMIT 1";

const COUNT_BY_STATE: &str = "SELECT state, COUNT(*) FROM jobs GROUP BY state";

/// Jobs per queue and state, with the oldest due run time. $1 now.
const QUEUE_STATS: &str = "
    SELECT queue, state, COUNT(*),
           MIN(CASE WHEN state IN ('available', 'retryable') AND run_at <= $1
                    THEN run_at END)
    FROM jobs GROUP BY queue, state";

/// kv read: a key's value and version (a deleted key has a NULL value).
const KV_GET: &str = "
    SELECT value, version FROM kv WHERE namespace = $1 AND key = $2";

/// kv listing: live keys from $2 (the prefix) up to $3 (exclusive, or
/// NULL for no bound), in code point order, at most $4.
const KV_LIST: &str = r#"
    SELECT key, value, version FROM kv
    WHERE namespace = $1 AND key COLLATE "C" >= $2
      AND ($3::text IS NULL OR key COLLATE "C" < $3)
      AND value IS NOT NULL
    ORDER BY key COLLATE "C"
    LIMIT $4"#;

/// The columns [`event_record`] reads, in order.
macro_rules! event_columns {
    () => {
        "id, job_id, topic, url, body, idempotency_key, state, attempts,
         next_attempt_at, created_at, finalized_at, last_status, last_error, note"
    };
}

/// Events, newest first, in state $1 (NULL: any), at most $2.
const LIST_EVENTS: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM outbox WHERE id < $3 AND ($1::text IS NULL OR state = $1)",
    " ORDER BY id DESC LIMIT $2"
);

const COUNT_PENDING_EVENTS: &str = "SELECT COUNT(*) FROM outbox WHERE state = 'pending'";

const COUNT_EVENTS_BY_STATE: &str = "SELECT state, COUNT(*) FROM outbox GROUP BY state";

/// The columns [`breaker_record`] reads, in order.
macro_rules! breaker_columns {
    () => {
        "kind, state, failures, streak_started_at, opened_at, retry_at,
         probe_job, probe_epoch, trips, last_error, updated_at"
    };
}

const SELECT_BREAKERS: &str = concat!(
    "SELECT ",
    breaker_columns!(),
    r#" FROM breakers ORDER BY kind COLLATE "C""#
);

const SELECT_PAUSES: &str = r#"
    SELECT scope, name, note, paused_at FROM pauses
    ORDER BY scope COLLATE "C", name COLLATE "C""#;

const SELECT_HOSTS: &str = r#"
    SELECT id, version, started_at, last_seen, ready, in_flight, minutes
    FROM hosts ORDER BY last_seen DESC, id COLLATE "C""#;

const SELECT_KV_WRITES: &str = "
    SELECT epoch, namespace, key, version, deleted FROM kv_writes
    WHERE job_id = $1 ORDER BY epoch, namespace COLLATE \"C\", key COLLATE \"C\", version";

const SELECT_JOB_EVENTS: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM outbox WHERE job_id = $1 ORDER BY id"
);

pub(super) fn job(c: &mut Conn, id: JobId) -> Result<Option<JobRecord>> {
    let Some(row) = c.query_opt(SELECT_JOB, &[&id])? else {
        return Ok(None);
    };
    let mut job = job_record(&row)?;
    job.attempts = c
        .query(SELECT_ATTEMPTS, &[&id])?
        .iter()
        .map(|r| {
            let outcome: String = col(r, 2)?;
            Ok(AttemptRow {
                attempt: int(r, 0)?,
                epoch: int(r, 1)?,
                outcome: outcome.parse().map_err(StoreError::Backend)?,
                error: col(r, 3)?,
                started_at: ts(r, 4)?,
                ended_at: ts(r, 5)?,
                duration_ms: int(r, 6)?,
                fuel_used: opt_int(r, 7)?,
                component_hash: col(r, 8)?,
                recording_bytes: opt_int(r, 9)?,
                host: col(r, 10)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Some(job))
}

pub(super) fn list_jobs(c: &mut Conn, filter: &JobFilter) -> Result<Vec<JobRecord>> {
    let (cond, mut args) = filter_sql(filter);
    args.push(Box::new(i64::from(filter.limit.unwrap_or(1000))));
    let q = format!(
        "SELECT {} FROM jobs WHERE {cond} ORDER BY id DESC LIMIT ${}",
        job_columns!(),
        args.len()
    );
    c.client()
        .query(&q, &params(&args))?
        .iter()
        .map(job_record)
        .collect()
}

/// Arguments of SQL built at run time.
pub(super) type Args = Vec<Box<dyn ToSql + Sync + Send>>;

/// `args` as a statement's parameters.
pub(super) fn params(args: &Args) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// The `WHERE` condition of a job filter, with its arguments as `$1`,
/// `$2`...; the caller's own arguments follow from `$(args.len() + 1)`.
pub(super) fn filter_sql(filter: &JobFilter) -> (String, Args) {
    let mut cond = String::from("TRUE");
    let mut args: Args = Vec::new();
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
            args.push(Box::new(v.clone()));
            cond.push_str(&format!(" AND {column} = ${}", args.len()));
        }
    }
    if let Some(pattern) = filter.text_pattern() {
        args.push(Box::new(pattern));
        let n = args.len();
        cond.push_str(&format!(
            " AND (payload ILIKE ${n} ESCAPE '\\' OR error ILIKE ${n} ESCAPE '\\')"
        ));
    }
    if let Some(before) = filter.before {
        args.push(Box::new(before));
        cond.push_str(&format!(" AND id < ${}", args.len()));
    }
    if let Some(from) = filter.from {
        args.push(Box::new(from));
        cond.push_str(&format!(" AND id >= ${}", args.len()));
    }
    (cond, args)
}

pub(super) fn counts(c: &mut Conn) -> Result<StateCounts> {
    let mut counts = StateCounts::default();
    for r in c.query(COUNT_BY_STATE, &[])? {
        let state: String = col(&r, 0)?;
        set_count(&mut counts, &state, int(&r, 1)?)?;
    }
    Ok(counts)
}

/// Sets the count of jobs in `state`.
fn set_count(counts: &mut StateCounts, state: &str, n: u64) -> Result<()> {
    let state: JobState = state.parse().map_err(StoreError::Backend)?;
    *match state {
        JobState::Available => &mut counts.available,
        JobState::Running => &mut counts.running,
        JobState::Retryable => &mut counts.retryable,
        JobState::Completed => &mut counts.completed,
        JobState::Discarded => &mut counts.discarded,
        JobState::Cancelled => &mut counts.cancelled,
    } = n;
    Ok(())
}

pub(super) fn recording(
    c: &mut Conn,
    id: JobId,
    attempt: Option<u32>,
) -> Result<Option<(u32, Vec<u8>)>> {
    let attempt = match attempt.map(i32::try_from) {
        None => None,
        Some(Ok(a)) => Some(a),
        // No attempt has a number that large.
        Some(Err(_)) => return Ok(None),
    };
    c.query_opt(SELECT_RECORDING, &[&id, &attempt])?
        .map(|r| Ok((int(&r, 0)?, col(&r, 1)?)))
        .transpose()
}

pub(super) fn kv_get(c: &mut Conn, ns: &str, key: &str) -> Result<KvEntry> {
    Ok(match c.query_opt(KV_GET, &[&ns, &key])? {
        Some(r) => KvEntry {
            value: col(&r, 0)?,
            version: Some(col(&r, 1)?),
        },
        None => KvEntry::default(),
    })
}

pub(super) fn kv_list(
    c: &mut Conn,
    ns: &str,
    prefix: &str,
    limit: u32,
) -> Result<Vec<(String, KvEntry)>> {
    let upper = crate::store::prefix_upper_bound(prefix);
    c.query(KV_LIST, &[&ns, &prefix, &upper, &i64::from(limit)])?
        .iter()
        .map(|r| {
            Ok((
                col(r, 0)?,
                KvEntry {
                    value: col(r, 1)?,
                    version: Some(col(r, 2)?),
                },
            ))
        })
        .collect()
}

pub(super) fn list_events(
    c: &mut Conn,
    state: Option<EventState>,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<EventRecord>> {
    let state = state.map(EventState::as_str);
    let before = before.unwrap_or(i64::MAX);
    c.query(LIST_EVENTS, &[&state, &i64::from(limit), &before])?
        .iter()
        .map(event_record)
        .collect()
}

/// What job `id` committed: its kv writes and its outbox events (`None`:
/// no such job).
pub(super) fn job_effects(c: &mut Conn, id: JobId) -> Result<Option<JobEffects>> {
    if c.query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&id])?
        .is_none()
    {
        return Ok(None);
    }
    let kv_writes = c
        .query(SELECT_KV_WRITES, &[&id])?
        .iter()
        .map(|r| {
            Ok(KvWriteRecord {
                epoch: int(r, 0)?,
                namespace: col(r, 1)?,
                key: col(r, 2)?,
                version: col(r, 3)?,
                deleted: col(r, 4)?,
            })
        })
        .collect::<Result<_>>()?;
    let events = c
        .query(SELECT_JOB_EVENTS, &[&id])?
        .iter()
        .map(event_record)
        .collect::<Result<_>>()?;
    Ok(Some(JobEffects { kv_writes, events }))
}

/// How many jobs match `filter` (and, with `action`, could be moved by it).
pub(super) fn count_jobs(
    c: &mut Conn,
    filter: &JobFilter,
    action: Option<JobAction>,
) -> Result<u64> {
    let (cond, args) = filter_sql(filter);
    let states = action.map_or(String::new(), |a| {
        format!(" AND state IN {}", a.from_states_sql())
    });
    let q = format!("SELECT COUNT(*) FROM jobs WHERE {cond}{states}");
    let n: i64 = col(&c.client().query_one(&q, &params(&args))?, 0)?;
    Ok(n as u64)
}

/// The highest job id (`None`: no jobs).
pub(super) fn last_job_id(c: &mut Conn) -> Result<Option<JobId>> {
    col(&c.query_one("SELECT MAX(id) FROM jobs", &[])?, 0)
}

/// Maps a row of `event_columns!()`.
fn event_record(r: &Row) -> Result<EventRecord> {
    let state: String = col(r, 6)?;
    Ok(EventRecord {
        id: col(r, 0)?,
        job_id: col(r, 1)?,
        topic: col(r, 2)?,
        url: col(r, 3)?,
        body: col(r, 4)?,
        idempotency_key: col(r, 5)?,
        state: state.parse().map_err(StoreError::Backend)?,
        attempts: int(r, 7)?,
        next_attempt_at: ts(r, 8)?,
        created_at: ts(r, 9)?,
        finalized_at: opt_ts(r, 10)?,
        last_status: opt_int(r, 11)?,
        last_error: col(r, 12)?,
        note: col(r, 13)?,
    })
}

pub(super) fn pending_events(c: &mut Conn) -> Result<u64> {
    int(&c.query_one(COUNT_PENDING_EVENTS, &[])?, 0)
}

pub(super) fn event_counts(c: &mut Conn) -> Result<EventCounts> {
    let mut counts = EventCounts::default();
    for r in c.query(COUNT_EVENTS_BY_STATE, &[])? {
        let state: String = col(&r, 0)?;
        let n: u64 = int(&r, 1)?;
        match state.as_str() {
            "pending" => counts.pending = n,
            "delivered" => counts.delivered = n,
            _ => counts.failed += n,
        }
    }
    Ok(counts)
}

pub(super) fn breakers(c: &mut Conn) -> Result<Vec<BreakerRecord>> {
    c.query(SELECT_BREAKERS, &[])?
        .iter()
        .map(breaker_record)
        .collect()
}

/// Maps a row of `breaker_columns!()`: `kind, state, failures,
/// streak_started_at, opened_at, retry_at, probe_job, probe_epoch, trips,
/// last_error, updated_at`.
pub(super) fn breaker_record(r: &Row) -> Result<BreakerRecord> {
    let state: String = col(r, 1)?;
    let probe_job: Option<JobId> = col(r, 6)?;
    let probe_epoch: Option<u64> = opt_int(r, 7)?;
    Ok(BreakerRecord {
        kind: col(r, 0)?,
        state: state.parse().map_err(StoreError::Backend)?,
        failures: int(r, 2)?,
        streak_started_at: opt_ts(r, 3)?,
        opened_at: opt_ts(r, 4)?,
        retry_at: opt_ts(r, 5)?,
        probe: probe_job.zip(probe_epoch),
        trips: int(r, 8)?,
        last_error: col(r, 9)?,
        updated_at: ts(r, 10)?,
    })
}

pub(super) fn pauses(c: &mut Conn) -> Result<Vec<PauseRecord>> {
    c.query(SELECT_PAUSES, &[])?
        .iter()
        .map(|r| {
            let scope: String = col(r, 0)?;
            Ok(PauseRecord {
                scope: scope.parse().map_err(StoreError::Backend)?,
                name: col(r, 1)?,
                note: col(r, 2)?,
                paused_at: ts(r, 3)?,
            })
        })
        .collect()
}

pub(super) fn queues(c: &mut Conn, now: Timestamp) -> Result<Vec<QueueStats>> {
    let mut by_queue: std::collections::BTreeMap<String, QueueStats> = Default::default();
    for r in c.query(QUEUE_STATS, &[&now.0])? {
        let queue: String = col(&r, 0)?;
        let state: String = col(&r, 1)?;
        let oldest: Option<i64> = col(&r, 3)?;
        let q = by_queue.entry(queue.clone()).or_insert_with(|| QueueStats {
            queue,
            ..QueueStats::default()
        });
        set_count(&mut q.counts, &state, int(&r, 2)?)?;
        if let Some(t) = oldest {
            q.oldest_due = Some(q.oldest_due.map_or(Timestamp(t), |o| o.min(Timestamp(t))));
        }
    }
    Ok(QueueStats::with_pauses(by_queue, pauses(c)?))
}

pub(super) fn hosts(c: &mut Conn) -> Result<Vec<crate::health::HostRecord>> {
    c.query(SELECT_HOSTS, &[])?
        .iter()
        .map(|r| {
            Ok(crate::health::HostRecord {
                id: col(r, 0)?,
                version: col(r, 1)?,
                started_at: ts(r, 2)?,
                last_seen: ts(r, 3)?,
                ready: col(r, 4)?,
                in_flight: int(r, 5)?,
                minutes: col(r, 6)?,
            })
        })
        .collect()
}

/// Maps a row of `job_columns!()`; the attempts are left empty.
pub(super) fn job_record(r: &Row) -> Result<JobRecord> {
    let id: JobId = col(r, 0)?;
    let state: String = col(r, 3)?;
    let key: Option<String> = col(r, 8)?;
    Ok(JobRecord {
        id,
        kind: col(r, 1)?,
        queue: col(r, 2)?,
        state: state.parse().map_err(StoreError::Backend)?,
        priority: int(r, 4)?,
        attempt: int(r, 5)?,
        max_attempts: int(r, 6)?,
        epoch: int(r, 7)?,
        idempotency_key: effective_idempotency_key(id, key.as_deref()),
        payload: col(r, 9)?,
        output: col(r, 10)?,
        error: col(r, 11)?,
        created_at: ts(r, 12)?,
        run_at: ts(r, 13)?,
        attempted_at: opt_ts(r, 14)?,
        finalized_at: opt_ts(r, 15)?,
        lease_expires_at: opt_ts(r, 16)?,
        callback_url: col(r, 17)?,
        concurrency_key: col(r, 18)?,
        concurrency_limit: opt_int(r, 19)?,
        conflicts: int(r, 20)?,
        schedule_id: col(r, 21)?,
        attempts: Vec::new(),
    })
}

/// Column `i` of `r` as `T` (an error, not a panic, if it is not one).
pub(super) fn col<'a, T: FromSql<'a>>(r: &'a Row, i: usize) -> Result<T> {
    Ok(r.try_get(i)?)
}

/// Column `i` of `r`, of any of PostgreSQL's integer types, as the integer
/// type `T`: an error if it is NULL or out of `T`'s range.
pub(super) fn int<T: TryFrom<i64>>(r: &Row, i: usize) -> Result<T> {
    opt_int(r, i)?
        .ok_or_else(|| StoreError::Backend(format!("column {} is NULL", column_name(r, i))))
}

/// Like [`int`], for a column that may be NULL.
pub(super) fn opt_int<T: TryFrom<i64>>(r: &Row, i: usize) -> Result<Option<T>> {
    let v: Option<i64> = match r.columns().get(i).map(|c| c.type_()) {
        Some(&Type::INT2) => r.try_get::<_, Option<i16>>(i)?.map(i64::from),
        Some(&Type::INT4) => r.try_get::<_, Option<i32>>(i)?.map(i64::from),
        _ => r.try_get::<_, Option<i64>>(i)?,
    };
    v.map(|v| {
        T::try_from(v).map_err(|_| {
            StoreError::Backend(format!("column {}: {v} is out of range", column_name(r, i)))
        })
    })
    .transpose()
}

/// Column `i` of `r` (`BIGINT` milliseconds) as a time.
pub(super) fn ts(r: &Row, i: usize) -> Result<Timestamp> {
    Ok(Timestamp(col(r, i)?))
}

/// Like [`ts`], for a column that may be NULL.
pub(super) fn opt_ts(r: &Row, i: usize) -> Result<Option<Timestamp>> {
    Ok(col::<Option<i64>>(r, i)?.map(Timestamp))
}

fn column_name(r: &Row, i: usize) -> String {
    r.columns()
        .get(i)
        .map_or_else(|| i.to_string(), |c| c.name().to_owned())
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
    }
}
