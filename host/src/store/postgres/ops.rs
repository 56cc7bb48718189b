//! Operator actions and the other loops' writes: retry and cancel (one
//! job or every job matching a filter), the outbox relay's claims and
//! deliveries, breakers and pauses, heartbeats and the cleaner. Each runs
//! inside the writer's open transaction, like `store/sqlite/write.rs`,
//! whose behaviour it matches.

use std::time::Duration;

use super::Conn;
use super::write::Result;
use crate::job::{Fenced, JobFilter, JobId, JobState};
use crate::outbox::{ClaimedEvent, Delivery};
use crate::policy::{BreakerState, PauseScope};
use crate::store::{Bulk, CleanReport, CleanRequest, StoreError};
use crate::time::Timestamp;

fn todo<T>(what: &str) -> Result<T> {
    Err(StoreError::Backend(format!("postgres: {what} is not implemented yet")))
}

pub(super) fn retry_job(c: &mut Conn, id: JobId, now: Timestamp) -> Result<JobState> {
    let _ = (c, id, now);
    todo("retry_job")
}

pub(super) fn cancel_job(c: &mut Conn, id: JobId, now: Timestamp) -> Result<JobState> {
    let _ = (c, id, now);
    todo("cancel_job")
}

pub(super) fn bulk(
    c: &mut Conn,
    filter: &JobFilter,
    limit: u32,
    now: Timestamp,
    retry: bool,
) -> Result<Bulk> {
    let _ = (c, filter, limit, now, retry);
    todo("bulk")
}

pub(super) fn claim_events(
    c: &mut Conn,
    now: Timestamp,
    limit: u32,
    lease: Duration,
) -> Result<Vec<ClaimedEvent>> {
    let _ = (c, now, limit, lease);
    todo("claim_events")
}

pub(super) fn record_delivery(
    c: &mut Conn,
    id: i64,
    attempt: u32,
    delivery: &Delivery,
    now: Timestamp,
) -> Result<Fenced> {
    let _ = (c, id, attempt, delivery, now);
    todo("record_delivery")
}

pub(super) fn retry_event(c: &mut Conn, id: i64, now: Timestamp) -> Result<()> {
    let _ = (c, id, now);
    todo("retry_event")
}

pub(super) fn reset_breaker(c: &mut Conn, kind: &str, now: Timestamp) -> Result<Option<BreakerState>> {
    let _ = (c, kind, now);
    todo("reset_breaker")
}

pub(super) fn pause(
    c: &mut Conn,
    scope: PauseScope,
    name: &str,
    note: &str,
    now: Timestamp,
) -> Result<bool> {
    let _ = (c, scope, name, note, now);
    todo("pause")
}

pub(super) fn resume(c: &mut Conn, scope: PauseScope, name: &str) -> Result<bool> {
    let _ = (c, scope, name);
    todo("resume")
}

pub(super) fn heartbeat(
    c: &mut Conn,
    host: &crate::health::HostRecord,
    forget_before: Timestamp,
) -> Result<()> {
    let _ = (c, host, forget_before);
    todo("heartbeat")
}

pub(super) fn clean(c: &mut Conn, req: &CleanRequest) -> Result<CleanReport> {
    let _ = (c, req);
    todo("clean")
}
