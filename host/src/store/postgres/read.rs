//! Reads for operators and the loops, on the read connections (outside any
//! transaction), like `store/sqlite/read.rs`, whose answers they match.

use super::Conn;
use super::write::Result;
use crate::job::{JobFilter, JobId, JobRecord, KvEntry};
use crate::outbox::{EventRecord, EventState};
use crate::policy::{BreakerRecord, PauseRecord};
use crate::store::{EventCounts, QueueStats, StateCounts, StoreError};
use crate::time::Timestamp;

fn todo<T>(what: &str) -> Result<T> {
    Err(StoreError::Backend(format!("postgres: {what} is not implemented yet")))
}

pub(super) fn job(c: &mut Conn, id: JobId) -> Result<Option<JobRecord>> {
    let _ = (c, id);
    todo("job")
}

pub(super) fn list_jobs(c: &mut Conn, filter: &JobFilter) -> Result<Vec<JobRecord>> {
    let _ = (c, filter);
    todo("list_jobs")
}

pub(super) fn counts(c: &mut Conn) -> Result<StateCounts> {
    let _ = c;
    todo("counts")
}

pub(super) fn recording(c: &mut Conn, id: JobId, attempt: Option<u32>) -> Result<Option<(u32, Vec<u8>)>> {
    let _ = (c, id, attempt);
    todo("recording")
}

pub(super) fn kv_get(c: &mut Conn, ns: &str, key: &str) -> Result<KvEntry> {
    let _ = (c, ns, key);
    todo("kv_get")
}

pub(super) fn kv_list(c: &mut Conn, ns: &str, prefix: &str, limit: u32) -> Result<Vec<(String, KvEntry)>> {
    let _ = (c, ns, prefix, limit);
    todo("kv_list")
}

pub(super) fn list_events(c: &mut Conn, state: Option<EventState>, limit: u32) -> Result<Vec<EventRecord>> {
    let _ = (c, state, limit);
    todo("list_events")
}

pub(super) fn pending_events(c: &mut Conn) -> Result<u64> {
    let _ = c;
    todo("pending_events")
}

pub(super) fn event_counts(c: &mut Conn) -> Result<EventCounts> {
    let _ = c;
    todo("event_counts")
}

pub(super) fn breakers(c: &mut Conn) -> Result<Vec<BreakerRecord>> {
    let _ = c;
    todo("breakers")
}

pub(super) fn pauses(c: &mut Conn) -> Result<Vec<PauseRecord>> {
    let _ = c;
    todo("pauses")
}

pub(super) fn queues(c: &mut Conn, now: Timestamp) -> Result<Vec<QueueStats>> {
    let _ = (c, now);
    todo("queues")
}

pub(super) fn hosts(c: &mut Conn) -> Result<Vec<crate::health::HostRecord>> {
    let _ = c;
    todo("hosts")
}
