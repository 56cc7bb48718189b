//! Schedules: their definitions, fires, triggers and pauses (writes in the
//! writer's open transaction, reads on the read connections), like the
//! schedule parts of `store/sqlite/{write,read}.rs`, whose behaviour they
//! match.

use super::Conn;
use super::write::Result;
use crate::job::{Enqueued, NewJob};
use crate::schedule::{ApplyReport, FireOutcome, ScheduleFire, ScheduleRecord, ScheduleUpsert};
use crate::store::StoreError;
use crate::time::Timestamp;

fn todo<T>(what: &str) -> Result<T> {
    Err(StoreError::Backend(format!("postgres: {what} is not implemented yet")))
}

pub(super) fn apply_schedules(
    c: &mut Conn,
    schedules: &[ScheduleUpsert],
    prune: bool,
    now: Timestamp,
) -> Result<ApplyReport> {
    let _ = (c, schedules, prune, now);
    todo("apply_schedules")
}

pub(super) fn schedules(c: &mut Conn) -> Result<Vec<ScheduleRecord>> {
    let _ = c;
    todo("schedules")
}

pub(super) fn schedule(c: &mut Conn, id: &str) -> Result<Option<ScheduleRecord>> {
    let _ = (c, id);
    todo("schedule")
}

pub(super) fn due_schedules(c: &mut Conn, now: Timestamp, limit: u32) -> Result<Vec<ScheduleRecord>> {
    let _ = (c, now, limit);
    todo("due_schedules")
}

pub(super) fn next_schedule_wake(c: &mut Conn) -> Result<(Option<Timestamp>, bool)> {
    let _ = c;
    todo("next_schedule_wake")
}

pub(super) fn fire_schedule(c: &mut Conn, fire: &ScheduleFire) -> Result<FireOutcome> {
    let _ = (c, fire);
    todo("fire_schedule")
}

pub(super) fn fire_buffered(
    c: &mut Conn,
    id: &str,
    version: i64,
    nominal: Timestamp,
    job: &NewJob,
    now: Timestamp,
) -> Result<FireOutcome> {
    let _ = (c, id, version, nominal, job, now);
    todo("fire_buffered")
}

pub(super) fn trigger_schedule(c: &mut Conn, id: &str, job: &NewJob, now: Timestamp) -> Result<Enqueued> {
    let _ = (c, id, job, now);
    todo("trigger_schedule")
}

pub(super) fn pause_schedule(c: &mut Conn, id: &str, note: &str, now: Timestamp) -> Result<bool> {
    let _ = (c, id, note, now);
    todo("pause_schedule")
}

pub(super) fn resume_schedule(
    c: &mut Conn,
    id: &str,
    next_fire_at: Option<Timestamp>,
    next_run_at: Option<Timestamp>,
    now: Timestamp,
) -> Result<bool> {
    let _ = (c, id, next_fire_at, next_run_at, now);
    todo("resume_schedule")
}

pub(super) fn delete_schedule(c: &mut Conn, id: &str) -> Result<()> {
    let _ = (c, id);
    todo("delete_schedule")
}
