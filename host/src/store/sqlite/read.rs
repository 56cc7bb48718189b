//! The read side: queries for operators, on a connection of their own so
//! they never wait behind the writer (WAL lets readers run alongside it).

use rusqlite::{Connection, OptionalExtension, Row, params_from_iter, types::Value};

use super::sql;
use crate::job::{AttemptRow, JobFilter, JobId, JobRecord, KvEntry, effective_idempotency_key};
use crate::outbox::{EventRecord, EventState};
use crate::store::{StateCounts, StoreError};
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
        })
    })?;
    job.attempts = rows.collect::<rusqlite::Result<_>>()?;
    Ok(Some(job))
}

pub(super) fn list_jobs(conn: &Connection, filter: &JobFilter) -> Result<Vec<JobRecord>> {
    let mut q = format!("SELECT {} FROM jobs WHERE 1 = 1", sql::JOB_COLUMNS);
    let mut args: Vec<Value> = Vec::new();
    if let Some(state) = filter.state {
        q.push_str(" AND state = ?");
        args.push(Value::Text(state.as_str().to_owned()));
    }
    if let Some(kind) = &filter.kind {
        q.push_str(" AND kind = ?");
        args.push(Value::Text(kind.clone()));
    }
    q.push_str(" ORDER BY id DESC LIMIT ?");
    args.push(Value::Integer(i64::from(filter.limit.unwrap_or(1000))));
    let mut stmt = conn.prepare_cached(&q)?;
    let rows = stmt.query_map(params_from_iter(args), job_record)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn counts(conn: &Connection) -> Result<StateCounts> {
    let mut counts = StateCounts::default();
    let mut stmt = conn.prepare_cached(sql::COUNT_BY_STATE)?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let state: String = r.get(0)?;
        let n: u64 = r.get(1)?;
        match state.as_str() {
            "available" => counts.available = n,
            "running" => counts.running = n,
            "retryable" => counts.retryable = n,
            "completed" => counts.completed = n,
            "discarded" => counts.discarded = n,
            "cancelled" => counts.cancelled = n,
            other => return Err(StoreError::Backend(format!("unknown state {other:?}"))),
        }
    }
    Ok(counts)
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
    let upper = prefix_upper_bound(prefix);
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

/// The smallest string greater than every string starting with `prefix`,
/// or `None` if there is none (the empty prefix).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

pub(super) fn list_events(
    conn: &Connection,
    state: Option<EventState>,
    limit: u32,
) -> Result<Vec<EventRecord>> {
    let q = format!(
        "SELECT {} FROM outbox WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2",
        sql::EVENT_COLUMNS
    );
    let mut stmt = conn.prepare_cached(&q)?;
    let rows = stmt.query_map(
        rusqlite::params![state.map(EventState::as_str), limit],
        |r| {
            let state: String = r.get(6)?;
            Ok(EventRecord {
                id: r.get(0)?,
                job_id: r.get(1)?,
                topic: r.get(2)?,
                url: r.get(3)?,
                body: r.get(4)?,
                idempotency_key: r.get(5)?,
                state: state.parse().map_err(|e: String| {
                    rusqlite::Error::FromSqlConversionFailure(
                        6,
                        rusqlite::types::Type::Text,
                        e.into(),
                    )
                })?,
                attempts: r.get(7)?,
                next_attempt_at: Timestamp(r.get(8)?),
                created_at: Timestamp(r.get(9)?),
                finalized_at: r.get::<_, Option<i64>>(10)?.map(Timestamp),
                last_status: r.get(11)?,
                last_error: r.get(12)?,
                note: r.get(13)?,
            })
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
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
        attempts: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::prefix_upper_bound;

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
