//! Schedules: their definitions, fires, triggers and pauses (writes in the
//! writer's open transaction, reads on the read connections), like the
//! schedule parts of `store/sqlite/{write,read}.rs`, whose behaviour they
//! match.
//!
//! Many hosts run the scheduler against one database, so what SQLite gets
//! from its single writer comes here from row locks: a fire is an `UPDATE`
//! fenced on the schedule's version and next fire, and a second host making
//! the same fire waits on the first one's row lock, then finds (PostgreSQL
//! re-checks the `WHERE` on the row as committed) that the schedule has
//! moved on, and answers "fenced out" like SQLite does. The fire's job key
//! and the `schedule_fires` key stay as second fences.

use std::collections::HashSet;

use postgres::Row;

use super::Conn;
use super::write::{Result, insert_job};
use crate::job::{Enqueued, JobId, NewJob};
use crate::schedule::{
    ApplyReport, FireOutcome, Overlap, ScheduleFire, ScheduleRecord, ScheduleUpsert, trigger_key,
};
use crate::store::StoreError;
use crate::time::Timestamp;

pub(super) fn apply_schedules(
    c: &mut Conn,
    upserts: &[ScheduleUpsert],
    prune: bool,
    now: Timestamp,
) -> Result<ApplyReport> {
    let mut report = ApplyReport::default();
    for u in upserts {
        apply_one(c, u, now, &mut report)?;
    }
    if prune {
        let keep: HashSet<&str> = upserts.iter().map(|u| u.id.as_str()).collect();
        let ids: Vec<String> = c
            .query(SCHEDULE_IDS, &[])?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        for id in ids {
            // Another host applying the same files may have deleted it
            // first: only this apply's deletions are reported.
            if !keep.contains(id.as_str()) && c.execute(DELETE_SCHEDULE, &[&id])? == 1 {
                report.deleted.push(id);
            }
        }
    }
    Ok(report)
}

/// Applies one schedule's definition. The row is locked while it is
/// compared, and a new one inserted only if no other host's apply inserted
/// it first (then it is compared as an existing one), so that hosts
/// applying the same files at once neither fail nor bump the version (which
/// would fence out a fire in flight) of an unchanged schedule.
fn apply_one(
    c: &mut Conn,
    u: &ScheduleUpsert,
    now: Timestamp,
    report: &mut ApplyReport,
) -> Result<()> {
    // Two rounds: a conflicting insert waits for the other transaction, so
    // the second round sees its row (unless it was deleted since; a third
    // round would then be one more race, reported as an error).
    for _ in 0..3 {
        let existing = c.query_opt(SELECT_SCHEDULE_SPEC, &[&u.id])?;
        if let Some(row) = existing {
            let (spec, cadence): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            if spec == u.spec {
                report.unchanged.push(u.id.clone());
            } else if cadence == u.cadence {
                c.execute(UPDATE_SCHEDULE_SPEC, &[&u.id, &u.spec, &now.0])?;
                report.updated.push((u.id.clone(), false));
            } else {
                c.execute(
                    UPDATE_SCHEDULE_CADENCE,
                    &[
                        &u.id,
                        &u.spec,
                        &u.cadence,
                        &u.next_fire_at.map(|t| t.0),
                        &u.next_run_at.map(|t| t.0),
                        &now.0,
                    ],
                )?;
                report.updated.push((u.id.clone(), true));
            }
            return Ok(());
        }
        let inserted = c.query_opt(
            INSERT_SCHEDULE,
            &[
                &u.id,
                &u.spec,
                &u.cadence,
                &u.next_fire_at.map(|t| t.0),
                &u.next_run_at.map(|t| t.0),
                &now.0,
            ],
        )?;
        if inserted.is_some() {
            report.created.push(u.id.clone());
            return Ok(());
        }
    }
    Err(StoreError::Backend(format!(
        "schedule {:?}: created and deleted by other hosts while this apply ran",
        u.id
    )))
}

pub(super) fn schedules(c: &mut Conn) -> Result<Vec<ScheduleRecord>> {
    c.query(SCHEDULES, &[])?
        .iter()
        .map(schedule_record)
        .collect()
}

pub(super) fn schedule(c: &mut Conn, id: &str) -> Result<Option<ScheduleRecord>> {
    c.query_opt(SCHEDULE, &[&id])?
        .as_ref()
        .map(schedule_record)
        .transpose()
}

/// Unpaused schedules whose next run is due, or whose buffered fire's
/// predecessor has finished.
pub(super) fn due_schedules(
    c: &mut Conn,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<ScheduleRecord>> {
    c.query(DUE_SCHEDULES, &[&now.0, &i64::from(limit)])?
        .iter()
        .map(schedule_record)
        .collect()
}

pub(super) fn next_schedule_wake(c: &mut Conn) -> Result<(Option<Timestamp>, bool)> {
    let r = c.query_one(NEXT_SCHEDULE_WAKE, &[])?;
    let next: Option<i64> = r.try_get(0)?;
    Ok((next.map(Timestamp), r.try_get(1)?))
}

pub(super) fn fire_schedule(c: &mut Conn, fire: &ScheduleFire) -> Result<FireOutcome> {
    let missed = count_param(fire.missed)?;
    let advanced = c.query_opt(
        ADVANCE_SCHEDULE,
        &[
            &fire.id,
            &fire.version,
            &fire.expected_next.0,
            &fire.next_fire_at.map(|t| t.0),
            &fire.next_run_at.map(|t| t.0),
            &missed,
            &fire.now.0,
        ],
    )?;
    // No row: another scheduler made this fire (its commit moved the next
    // fire on), or the schedule was changed, paused or deleted.
    let Some(row) = advanced else {
        return Ok(FireOutcome::default());
    };
    let mut last_job: Option<JobId> = row.try_get(0)?;
    let mut buffered: Option<i64> = row.try_get(1)?;
    let mut out = FireOutcome {
        applied: true,
        ..FireOutcome::default()
    };
    let mut last_fire = None;
    for (nominal, job) in &fire.fires {
        // The previous fire's job as this transaction sees it: one made
        // earlier in this loop is available, so it is busy.
        let busy = match (fire.overlap, last_job) {
            (Overlap::Allow, _) | (_, None) => false,
            (_, Some(prev)) => match c.query_opt(JOB_UNFINISHED, &[&prev])? {
                Some(r) => r.try_get(0)?,
                // Deleted by retention: finished long ago.
                None => false,
            },
        };
        if busy {
            if fire.overlap == Overlap::BufferOne && buffered.is_none() {
                buffered = Some(nominal.0);
                out.buffered = true;
            } else {
                out.skipped += 1;
            }
            continue;
        }
        let id = insert_fire(c, &fire.id, *nominal, 0, job, fire.now)?;
        out.jobs.push(id);
        last_job = Some(id);
        last_fire = Some(nominal.0);
    }
    c.execute(
        RECORD_FIRES,
        &[
            &fire.id,
            &count_param(out.jobs.len() as u64)?,
            &count_param(out.skipped)?,
            &last_fire,
            &out.jobs.last().copied(),
            &buffered,
        ],
    )?;
    Ok(out)
}

/// Records a fire and inserts its job (or finds the job its key already
/// names: the fire was made before under the same key).
fn insert_fire(
    c: &mut Conn,
    schedule: &str,
    nominal: Timestamp,
    trigger: i64,
    job: &NewJob,
    now: Timestamp,
) -> Result<JobId> {
    let (enqueued, _) = insert_job(c, job, now)?;
    c.execute(
        INSERT_FIRE,
        &[&schedule, &nominal.0, &trigger, &enqueued.id, &now.0],
    )?;
    Ok(enqueued.id)
}

pub(super) fn fire_buffered(
    c: &mut Conn,
    id: &str,
    version: i64,
    nominal: Timestamp,
    job: &NewJob,
    now: Timestamp,
) -> Result<FireOutcome> {
    // Fenced like a fire: a second host releasing the same buffered fire
    // waits on the first one's row lock, then finds it released.
    if c.query_opt(RELEASE_BUFFERED, &[&id, &version, &nominal.0, &now.0])?
        .is_none()
    {
        return Ok(FireOutcome::default());
    }
    let job_id = insert_fire(c, id, nominal, 0, job, now)?;
    c.execute(
        RECORD_FIRES,
        &[
            &id,
            &1_i64,
            &0_i64,
            &Some(nominal.0),
            &Some(job_id),
            &Option::<i64>::None,
        ],
    )?;
    Ok(FireOutcome {
        applied: true,
        jobs: vec![job_id],
        skipped: 0,
        buffered: false,
    })
}

pub(super) fn trigger_schedule(
    c: &mut Conn,
    id: &str,
    job: &NewJob,
    now: Timestamp,
) -> Result<Enqueued> {
    // A schedule deleted and made again counts its triggers from zero, but
    // the jobs of the old one's triggers may still hold their keys: a
    // trigger always makes a job of its own, so a taken key is skipped.
    // Taking the number locks the schedule's row, so triggers on other
    // hosts take the numbers after it.
    for _ in 0..MAX_TRIGGER_TRIES {
        let n: i64 = c
            .query_opt(NEXT_TRIGGER, &[&id, &now.0])?
            .ok_or_else(|| StoreError::ScheduleNotFound(id.to_owned()))?
            .try_get(0)?;
        let job = NewJob {
            idempotency_key: Some(trigger_key(id, count(id, "triggers", n)?)),
            run_at: Some(now),
            schedule_id: Some(id.to_owned()),
            ..job.clone()
        };
        let (enqueued, _) = insert_job(c, &job, now)?;
        if !enqueued.created {
            continue;
        }
        c.execute(INSERT_FIRE, &[&id, &now.0, &n, &enqueued.id, &now.0])?;
        c.execute(RECORD_TRIGGER, &[&id, &now.0, &enqueued.id])?;
        return Ok(enqueued);
    }
    Err(StoreError::Backend(format!(
        "schedule {id:?}: no free trigger key in {MAX_TRIGGER_TRIES} tries"
    )))
}

/// How many taken trigger keys a trigger skips before it gives up.
const MAX_TRIGGER_TRIES: u32 = 10_000;

pub(super) fn pause_schedule(c: &mut Conn, id: &str, note: &str, now: Timestamp) -> Result<bool> {
    // Locked, so that of two hosts pausing at once only one answers that
    // it paused the schedule.
    let was: bool = c
        .query_opt(SCHEDULE_PAUSED, &[&id])?
        .ok_or_else(|| StoreError::ScheduleNotFound(id.to_owned()))?
        .try_get(0)?;
    c.execute(PAUSE_SCHEDULE, &[&id, &note, &now.0])?;
    Ok(!was)
}

pub(super) fn resume_schedule(
    c: &mut Conn,
    id: &str,
    next_fire_at: Option<Timestamp>,
    next_run_at: Option<Timestamp>,
    now: Timestamp,
) -> Result<bool> {
    let changed = c.execute(
        RESUME_SCHEDULE,
        &[
            &id,
            &next_fire_at.map(|t| t.0),
            &next_run_at.map(|t| t.0),
            &now.0,
        ],
    )?;
    if changed == 1 {
        return Ok(true);
    }
    match c.query_opt(SCHEDULE_EXISTS, &[&id])? {
        Some(_) => Ok(false),
        None => Err(StoreError::ScheduleNotFound(id.to_owned())),
    }
}

pub(super) fn delete_schedule(c: &mut Conn, id: &str) -> Result<()> {
    if c.execute(DELETE_SCHEDULE, &[&id])? == 0 {
        return Err(StoreError::ScheduleNotFound(id.to_owned()));
    }
    Ok(())
}

/// Maps a row of `schedule_select!`'s columns. `try_get` throughout: a
/// column of an unexpected type is an error, not a panic.
fn schedule_record(r: &Row) -> Result<ScheduleRecord> {
    let ts = |i: usize| -> Result<Option<Timestamp>> {
        Ok(r.try_get::<_, Option<i64>>(i)?.map(Timestamp))
    };
    let id: String = r.try_get(0)?;
    let counter = |i: usize, name: &str| -> Result<u64> { count(&id, name, r.try_get(i)?) };
    let last_state: Option<String> = r.try_get(13)?;
    Ok(ScheduleRecord {
        spec: r.try_get(1)?,
        next_fire_at: ts(2)?,
        next_run_at: ts(3)?,
        paused: r.try_get(4)?,
        pause_note: r.try_get(5)?,
        paused_at: ts(6)?,
        fired: counter(7, "fired")?,
        missed: counter(8, "missed")?,
        skipped: counter(9, "skipped")?,
        triggers: counter(10, "triggers")?,
        last_fire_at: ts(11)?,
        last_job_id: r.try_get(12)?,
        last_job_state: last_state
            .map(|s| s.parse().map_err(StoreError::Backend))
            .transpose()?,
        buffered_at: ts(14)?,
        version: r.try_get(15)?,
        created_at: Timestamp(r.try_get(16)?),
        updated_at: Timestamp(r.try_get(17)?),
        id,
    })
}

/// A counter as read (`BIGINT`, never negative as written).
fn count(id: &str, name: &str, v: i64) -> Result<u64> {
    u64::try_from(v)
        .map_err(|_| StoreError::Backend(format!("schedule {id:?}: {name} is negative ({v})")))
}

/// A count as a `BIGINT` parameter.
fn count_param(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| StoreError::Backend(format!("count {n} is out of range")))
}

/// `SELECT` of the columns [`schedule_record`] reads, in order, from the
/// schedules with their last job's state, followed by the rest of the
/// statement (a literal, so that each statement is one `&'static str`).
macro_rules! schedule_select {
    ($rest:literal) => {
        concat!(
            "SELECT s.id, s.spec, s.next_fire_at, s.next_run_at, s.paused, s.pause_note,
                    s.paused_at, s.fired, s.missed, s.skipped, s.triggers, s.last_fire_at,
                    s.last_job_id, j.state, s.buffered_at, s.version, s.created_at,
                    s.updated_at
             FROM schedules s LEFT JOIN jobs j ON j.id = s.last_job_id",
            $rest
        )
    };
}

const SCHEDULES: &str = schedule_select!(" ORDER BY s.id");

const SCHEDULE: &str = schedule_select!(" WHERE s.id = $1");

/// SQLite sorts a missing next run (a schedule past its end holding a
/// buffered fire) first; so does this. $1 now, $2 limit.
const DUE_SCHEDULES: &str = schedule_select!(
    "
    WHERE NOT s.paused
      AND ((s.next_run_at IS NOT NULL AND s.next_run_at <= $1)
           OR (s.buffered_at IS NOT NULL
               AND (j.state IS NULL
                    OR j.state IN ('completed', 'discarded', 'cancelled'))))
    ORDER BY s.next_run_at NULLS FIRST, s.id
    LIMIT $2"
);

/// apply: the schedule's definition, locked until the apply commits.
const SELECT_SCHEDULE_SPEC: &str = "
    SELECT spec, cadence FROM schedules WHERE id = $1 FOR UPDATE";

const SCHEDULE_EXISTS: &str = "SELECT 1 FROM schedules WHERE id = $1";

/// apply, a new schedule: nothing if another host's apply made it first.
/// $1 id, $2 spec, $3 cadence, $4 next fire, $5 next run, $6 now.
const INSERT_SCHEDULE: &str = "
    INSERT INTO schedules (id, spec, cadence, next_fire_at, next_run_at,
                           created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $6)
    ON CONFLICT (id) DO NOTHING
    RETURNING id";

/// apply, a new cadence: the definition and the next fire computed from
/// now, dropping a buffered fire of the old cadence. Parameters as
/// [`INSERT_SCHEDULE`].
const UPDATE_SCHEDULE_CADENCE: &str = "
    UPDATE schedules
    SET spec = $2, cadence = $3, next_fire_at = $4, next_run_at = $5,
        buffered_at = NULL, version = version + 1, updated_at = $6
    WHERE id = $1";

/// apply, same cadence: the template changes, the next fire stays.
/// $1 id, $2 spec, $3 now.
const UPDATE_SCHEDULE_SPEC: &str = "
    UPDATE schedules SET spec = $2, version = version + 1, updated_at = $3
    WHERE id = $1";

const DELETE_SCHEDULE: &str = "DELETE FROM schedules WHERE id = $1";

const SCHEDULE_IDS: &str = "SELECT id FROM schedules ORDER BY id";

/// A scheduler's fire, fenced on the version and next fire it planned
/// from and on the schedule being unpaused: advances the schedule.
/// $1 id, $2 version, $3 expected next fire, $4 new next fire, $5 new next
/// run, $6 missed, $7 now.
const ADVANCE_SCHEDULE: &str = "
    UPDATE schedules
    SET next_fire_at = $4, next_run_at = $5, missed = missed + $6,
        updated_at = $7
    WHERE id = $1 AND version = $2 AND next_fire_at = $3 AND NOT paused
    RETURNING last_job_id, buffered_at";

/// Whether a job is unfinished (for `overlap`).
const JOB_UNFINISHED: &str = "
    SELECT state IN ('available', 'running', 'retryable') FROM jobs WHERE id = $1";

/// The fire record. $1 schedule, $2 nominal, $3 trigger (0: cadence),
/// $4 job, $5 now.
const INSERT_FIRE: &str = "
    INSERT INTO schedule_fires (schedule_id, nominal_at, trigger, job_id, fired_at)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT DO NOTHING";

/// The schedule after its fires: $1 id, $2 fires made, $3 skipped,
/// $4 last fire (NULL: unchanged), $5 last job (NULL: unchanged),
/// $6 buffered nominal (NULL: none).
const RECORD_FIRES: &str = "
    UPDATE schedules
    SET fired = fired + $2, skipped = skipped + $3,
        last_fire_at = COALESCE($4::BIGINT, last_fire_at),
        last_job_id = COALESCE($5::BIGINT, last_job_id),
        buffered_at = $6
    WHERE id = $1";

/// A manual trigger's job is the schedule's last. $1 id, $2 now, $3 job.
const RECORD_TRIGGER: &str = "
    UPDATE schedules SET fired = fired + 1, last_fire_at = $2, last_job_id = $3
    WHERE id = $1";

/// A buffered fire released, fenced on the version and on that fire being
/// the one buffered. $1 id, $2 version, $3 nominal, $4 now.
const RELEASE_BUFFERED: &str = "
    UPDATE schedules SET buffered_at = NULL, updated_at = $4
    WHERE id = $1 AND version = $2 AND buffered_at = $3 AND NOT paused
    RETURNING 1";

/// A manual trigger's number. $1 id, $2 now.
const NEXT_TRIGGER: &str = "
    UPDATE schedules SET triggers = triggers + 1, updated_at = $2
    WHERE id = $1 RETURNING triggers";

/// pause: the note is replaced, the time kept if it already was.
/// $1 id, $2 note, $3 now.
const PAUSE_SCHEDULE: &str = "
    UPDATE schedules
    SET paused = TRUE, pause_note = $2, updated_at = $3,
        paused_at = CASE WHEN paused THEN paused_at ELSE $3 END
    WHERE id = $1";

/// Whether the schedule already was paused, locking it until the pause
/// commits.
const SCHEDULE_PAUSED: &str = "SELECT paused FROM schedules WHERE id = $1 FOR UPDATE";

/// resume: the next fire is computed from now (fires while paused are not
/// made). $1 id, $2 next fire, $3 next run, $4 now.
const RESUME_SCHEDULE: &str = "
    UPDATE schedules
    SET paused = FALSE, pause_note = NULL, paused_at = NULL, next_fire_at = $2,
        next_run_at = $3, buffered_at = NULL, version = version + 1,
        updated_at = $4
    WHERE id = $1 AND paused";

/// The earliest next run of an unpaused schedule, and whether any holds a
/// buffered fire.
const NEXT_SCHEDULE_WAKE: &str = "
    SELECT (SELECT MIN(next_run_at) FROM schedules
            WHERE NOT paused AND next_run_at IS NOT NULL),
           EXISTS (SELECT 1 FROM schedules
                   WHERE NOT paused AND buffered_at IS NOT NULL)";

#[cfg(test)]
mod tests {
    //! Against a scratch database on the PostgreSQL at
    //! `JOBBOX_TEST_PG_URL` (default: the local server, user `postgres`),
    //! skipped with a message when none is reachable.

    use std::sync::Arc;

    use postgres::Client;

    use crate::job::{JobId, NewJob};
    use crate::schedule::{
        ApplyReport, FireOutcome, Overlap, ScheduleFire, ScheduleRecord, ScheduleUpsert, fire_key,
        trigger_key,
    };
    use crate::store::postgres::scratch::{Scratch, rt};
    use crate::store::{Store, StoreError};
    use crate::time::Timestamp;

    const MIN: i64 = 60_000;

    fn upsert(id: &str, spec: &str, cadence: &str, next: i64) -> ScheduleUpsert {
        ScheduleUpsert {
            id: id.into(),
            spec: spec.into(),
            cadence: cadence.into(),
            next_fire_at: Some(Timestamp(next)),
            next_run_at: Some(Timestamp(next)),
        }
    }

    fn fire_job(id: &str, nominal: i64) -> NewJob {
        NewJob {
            idempotency_key: Some(fire_key(id, Timestamp(nominal))),
            run_at: Some(Timestamp(nominal)),
            schedule_id: Some(id.into()),
            ..NewJob::new("tick", "{}").unwrap()
        }
    }

    /// The fire a scheduler plans from `rec`: its due fire, the next one a
    /// minute later.
    fn plan(rec: &ScheduleRecord, overlap: Overlap, now: i64) -> ScheduleFire {
        let due = rec.next_fire_at.unwrap().0;
        ScheduleFire {
            id: rec.id.clone(),
            version: rec.version,
            expected_next: Timestamp(due),
            fires: vec![(Timestamp(due), fire_job(&rec.id, due))],
            missed: 0,
            overlap,
            next_fire_at: Some(Timestamp(due + MIN)),
            next_run_at: Some(Timestamp(due + MIN)),
            now: Timestamp(now),
        }
    }

    fn finish_job(db: &mut Client, id: JobId) {
        db.execute(
            "UPDATE jobs SET state = 'completed', finalized_at = 0 WHERE id = $1",
            &[&id],
        )
        .unwrap();
    }

    fn jobs_of(db: &mut Client, schedule: &str) -> i64 {
        db.query_one(
            "SELECT COUNT(*) FROM jobs WHERE schedule_id = $1",
            &[&schedule],
        )
        .unwrap()
        .get(0)
    }

    #[test]
    fn schedules_apply_fire_trigger_pause_and_resume_like_sqlite() {
        let Some(scratch) = Scratch::new("schedules") else {
            return;
        };
        let store = scratch.open();
        let mut db = scratch.client();
        let rt = rt();
        let t0 = 1_700_000_000_000;

        // apply: created, unchanged, updated (template), updated (cadence),
        // pruned.
        let report = rt
            .block_on(store.apply_schedules(
                vec![upsert("a", "s1", "c1", t0), upsert("b", "s1", "c1", t0)],
                false,
                Timestamp(t0),
            ))
            .unwrap();
        assert_eq!(report.created, ["a", "b"]);
        let report = rt
            .block_on(store.apply_schedules(
                vec![
                    upsert("a", "s1", "c1", t0 + 5),
                    upsert("b", "s2", "c1", t0 + 5),
                ],
                false,
                Timestamp(t0),
            ))
            .unwrap();
        assert_eq!(report.unchanged, ["a"]);
        assert_eq!(report.updated, [("b".to_string(), false)]);
        let b = rt.block_on(store.schedule("b".into())).unwrap().unwrap();
        assert_eq!((b.version, b.next_fire_at), (2, Some(Timestamp(t0))));
        let report = rt
            .block_on(store.apply_schedules(
                vec![upsert("a", "s3", "c2", t0 + 7)],
                true,
                Timestamp(t0 + 1),
            ))
            .unwrap();
        assert_eq!(
            report,
            ApplyReport {
                updated: vec![("a".into(), true)],
                deleted: vec!["b".into()],
                ..ApplyReport::default()
            }
        );
        let a = rt.block_on(store.schedule("a".into())).unwrap().unwrap();
        assert_eq!(a.spec, "s3");
        assert_eq!(a.version, 2);
        assert_eq!(a.next_fire_at, Some(Timestamp(t0 + 7)));
        assert_eq!(
            (a.created_at, a.updated_at),
            (Timestamp(t0), Timestamp(t0 + 1))
        );
        assert!(!a.paused && a.last_job_id.is_none() && a.last_job_state.is_none());
        assert_eq!(rt.block_on(store.schedules()).unwrap().len(), 1);
        assert!(rt.block_on(store.schedule("b".into())).unwrap().is_none());

        // due and wake.
        assert!(
            rt.block_on(store.due_schedules(Timestamp(t0), 10))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            rt.block_on(store.next_schedule_wake()).unwrap(),
            (Some(Timestamp(t0 + 7)), false)
        );
        let due = rt
            .block_on(store.due_schedules(Timestamp(t0 + 7), 10))
            .unwrap();
        assert_eq!(due.len(), 1);

        // A fire, then a stale one (same plan again) is fenced out.
        let first = plan(&due[0], Overlap::BufferOne, t0 + 7);
        let out = rt.block_on(store.fire_schedule(first.clone())).unwrap();
        assert!(out.applied && out.jobs.len() == 1 && !out.buffered);
        let job1 = out.jobs[0];
        assert_eq!(
            rt.block_on(store.fire_schedule(first)).unwrap(),
            FireOutcome::default()
        );
        let a = rt.block_on(store.schedule("a".into())).unwrap().unwrap();
        assert_eq!(a.fired, 1);
        assert_eq!(a.last_job_id, Some(job1));
        assert_eq!(a.last_job_state, Some(crate::job::JobState::Available));
        assert_eq!(a.last_fire_at, Some(Timestamp(t0 + 7)));
        assert_eq!(a.next_fire_at, Some(Timestamp(t0 + 7 + MIN)));

        // buffer_one: the previous job is unfinished, so the fire is held
        // back; the one after is skipped.
        let out = rt
            .block_on(store.fire_schedule(plan(&a, Overlap::BufferOne, t0 + MIN)))
            .unwrap();
        assert!(out.applied && out.jobs.is_empty() && out.buffered && out.skipped == 0);
        let a = rt.block_on(store.schedule("a".into())).unwrap().unwrap();
        let held = a.buffered_at.unwrap();
        assert_eq!(held, Timestamp(t0 + 7 + MIN));
        assert!(rt.block_on(store.next_schedule_wake()).unwrap().1);
        // Not due: its next run is ahead and its predecessor still runs.
        assert!(
            rt.block_on(store.due_schedules(Timestamp(t0 + MIN + 8), 10))
                .unwrap()
                .is_empty()
        );
        let mut skip = plan(&a, Overlap::BufferOne, t0 + 2 * MIN);
        skip.missed = 2;
        let out = rt.block_on(store.fire_schedule(skip)).unwrap();
        assert!(out.applied && out.jobs.is_empty() && !out.buffered && out.skipped == 1);
        let a = rt.block_on(store.schedule("a".into())).unwrap().unwrap();
        assert_eq!((a.skipped, a.missed, a.buffered_at), (1, 2, Some(held)));

        // The predecessor finishes: the buffered fire is due, released once.
        finish_job(&mut db, job1);
        let due = rt
            .block_on(store.due_schedules(Timestamp(t0 + 2 * MIN), 10))
            .unwrap();
        assert_eq!(due.len(), 1);
        let release = |version| {
            store.fire_buffered(
                "a".into(),
                version,
                held,
                fire_job("a", held.0),
                Timestamp(t0 + 2 * MIN + 1),
            )
        };
        assert_eq!(
            rt.block_on(release(a.version + 1)).unwrap(),
            FireOutcome::default()
        );
        let out = rt.block_on(release(a.version)).unwrap();
        assert!(out.applied && out.jobs.len() == 1);
        assert_eq!(
            rt.block_on(release(a.version)).unwrap(),
            FireOutcome::default()
        );
        let a = rt.block_on(store.schedule("a".into())).unwrap().unwrap();
        assert_eq!((a.fired, a.buffered_at), (2, None));
        assert_eq!(
            (a.last_job_id, a.last_fire_at),
            (Some(out.jobs[0]), Some(held))
        );

        // skip with the previous job finished fires; allow always fires.
        finish_job(&mut db, out.jobs[0]);
        let out = rt
            .block_on(store.fire_schedule(plan(&a, Overlap::Skip, t0 + 3 * MIN)))
            .unwrap();
        assert_eq!(out.jobs.len(), 1);
        let a = rt.block_on(store.schedule("a".into())).unwrap().unwrap();
        let mut two = plan(&a, Overlap::Allow, t0 + 5 * MIN);
        let due = a.next_fire_at.unwrap().0;
        two.fires
            .push((Timestamp(due + MIN), fire_job("a", due + MIN)));
        two.next_fire_at = Some(Timestamp(due + 2 * MIN));
        two.next_run_at = two.next_fire_at;
        let out = rt.block_on(store.fire_schedule(two)).unwrap();
        assert_eq!(out.jobs.len(), 2);
        // Skip against a fire made earlier in the same command.
        let a = rt.block_on(store.schedule("a".into())).unwrap().unwrap();
        finish_job(&mut db, a.last_job_id.unwrap());
        let mut two = plan(&a, Overlap::Skip, t0 + 7 * MIN);
        let due = a.next_fire_at.unwrap().0;
        two.fires
            .push((Timestamp(due + MIN), fire_job("a", due + MIN)));
        two.next_fire_at = Some(Timestamp(due + 2 * MIN));
        two.next_run_at = two.next_fire_at;
        let out = rt.block_on(store.fire_schedule(two)).unwrap();
        assert_eq!((out.jobs.len(), out.skipped), (1, 1));

        // Triggers: numbered keys, a taken key skipped, and each recorded.
        let taken = NewJob {
            idempotency_key: Some(trigger_key("a", 1)),
            ..NewJob::new("other", "{}").unwrap()
        };
        let taken = rt.block_on(store.enqueue(vec![taken], Timestamp(t0)));
        let trig = rt
            .block_on(store.trigger_schedule(
                "a".into(),
                NewJob::new("tick", "{}").unwrap(),
                Timestamp(t0 + 9 * MIN),
            ))
            .unwrap();
        assert!(trig.created);
        let key: Option<String> = db
            .query_one(
                "SELECT idempotency_key FROM jobs WHERE id = $1",
                &[&trig.id],
            )
            .unwrap()
            .get(0);
        // Whether enqueue works yet is another module's business: with the
        // first key taken, the trigger takes the second.
        let n = if taken.is_ok() { 2 } else { 1 };
        assert_eq!(key, Some(trigger_key("a", n)));
        let a = rt.block_on(store.schedule("a".into())).unwrap().unwrap();
        assert_eq!(a.triggers, n);
        assert_eq!(a.last_job_id, Some(trig.id));
        let fires: i64 = db
            .query_one(
                "SELECT COUNT(*) FROM schedule_fires WHERE schedule_id = 'a' AND trigger = $1",
                &[&(n as i64)],
            )
            .unwrap()
            .get(0);
        assert_eq!(fires, 1);
        let missing = rt.block_on(store.trigger_schedule(
            "nope".into(),
            NewJob::new("tick", "{}").unwrap(),
            Timestamp(t0),
        ));
        assert!(matches!(missing, Err(StoreError::ScheduleNotFound(_))));

        // Pause: the note replaced, the time kept; fires fenced out.
        let now = Timestamp(t0 + 10 * MIN);
        assert!(
            rt.block_on(store.pause_schedule("a".into(), "one".into(), now))
                .unwrap()
        );
        let later = Timestamp(now.0 + 1);
        assert!(
            !rt.block_on(store.pause_schedule("a".into(), "two".into(), later))
                .unwrap()
        );
        let a = rt.block_on(store.schedule("a".into())).unwrap().unwrap();
        assert!(a.paused);
        assert_eq!(
            (a.pause_note.as_deref(), a.paused_at),
            (Some("two"), Some(now))
        );
        assert_eq!(
            rt.block_on(store.fire_schedule(plan(&a, Overlap::Allow, later.0)))
                .unwrap(),
            FireOutcome::default()
        );
        assert_eq!(
            rt.block_on(store.next_schedule_wake()).unwrap(),
            (None, false)
        );
        assert!(
            rt.block_on(store.due_schedules(Timestamp(i64::MAX), 10))
                .unwrap()
                .is_empty()
        );
        let resumed = |id: &str| {
            store.resume_schedule(
                id.into(),
                Some(Timestamp(t0 + 20 * MIN)),
                Some(Timestamp(t0 + 20 * MIN)),
                later,
            )
        };
        assert!(rt.block_on(resumed("a")).unwrap());
        assert!(!rt.block_on(resumed("a")).unwrap());
        assert!(matches!(
            rt.block_on(resumed("nope")),
            Err(StoreError::ScheduleNotFound(_))
        ));
        let a2 = rt.block_on(store.schedule("a".into())).unwrap().unwrap();
        assert!(!a2.paused && a2.pause_note.is_none() && a2.paused_at.is_none());
        assert_eq!(a2.version, a.version + 1);
        assert_eq!(a2.next_fire_at, Some(Timestamp(t0 + 20 * MIN)));
        assert!(matches!(
            rt.block_on(store.pause_schedule("nope".into(), "x".into(), now)),
            Err(StoreError::ScheduleNotFound(_))
        ));

        // Delete.
        rt.block_on(store.delete_schedule("a".into())).unwrap();
        assert!(matches!(
            rt.block_on(store.delete_schedule("a".into())),
            Err(StoreError::ScheduleNotFound(_))
        ));
        rt.block_on(store.close()).unwrap();
    }

    #[test]
    fn two_stores_racing_for_the_same_fire_make_one_job() {
        let Some(scratch) = Scratch::new("schedules") else {
            return;
        };
        let stores = [Arc::new(scratch.open()), Arc::new(scratch.open())];
        let mut db = scratch.client();
        let rt = rt();
        let t0 = 1_700_000_000_000;
        rt.block_on(stores[0].apply_schedules(
            vec![upsert("r", "s", "c", t0)],
            false,
            Timestamp(t0),
        ))
        .unwrap();
        let rounds = 30;
        for round in 0..rounds {
            let rec = rt
                .block_on(stores[0].schedule("r".into()))
                .unwrap()
                .unwrap();
            let fire = plan(&rec, Overlap::Allow, t0 + round * MIN);
            let (x, y) = rt.block_on(async {
                tokio::join!(
                    stores[0].fire_schedule(fire.clone()),
                    stores[1].fire_schedule(fire)
                )
            });
            let (x, y) = (x.unwrap(), y.unwrap());
            assert!(x.applied != y.applied, "round {round}: {x:?} {y:?}");
            let lost = if x.applied { y } else { x };
            assert_eq!(lost, FireOutcome::default());
        }
        assert_eq!(jobs_of(&mut db, "r"), rounds);
        let rec = rt
            .block_on(stores[1].schedule("r".into()))
            .unwrap()
            .unwrap();
        assert_eq!(rec.fired, rounds as u64);

        // Both stores apply the same file at once: one creates the
        // schedule, the other finds it unchanged.
        let apply = || (vec![upsert("n", "s", "c", t0)], false, Timestamp(t0));
        let both = rt.block_on(async {
            let (a, b) = (apply(), apply());
            tokio::join!(
                stores[0].apply_schedules(a.0, a.1, a.2),
                stores[1].apply_schedules(b.0, b.1, b.2)
            )
        });
        let (x, y) = (both.0.unwrap(), both.1.unwrap());
        assert_eq!(x.created.len() + y.created.len(), 1, "{x:?} {y:?}");
        assert_eq!(x.unchanged.len() + y.unchanged.len(), 1, "{x:?} {y:?}");
        let n = rt
            .block_on(stores[0].schedule("n".into()))
            .unwrap()
            .unwrap();
        assert_eq!(n.version, 1);
        for s in &stores {
            rt.block_on(s.close()).unwrap();
        }
    }
}
