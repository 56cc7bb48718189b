//! The hot path: enqueue, claim, finish, leases and the rescuer. Each
//! function runs inside the writer's open transaction (in its own
//! savepoint), like `store/sqlite/write.rs`, whose behaviour it matches.
//!
//! Unlike SQLite's single writer, many hosts write at once, so:
//!
//! - Claims take rows with `FOR UPDATE SKIP LOCKED`: two hosts never claim
//!   one job, and a claim never waits for another host's claim.
//! - The guarded claim (pauses, breakers, rate limits, concurrency keys)
//!   counts what every host runs, so it first takes [`CLAIM_LOCK`], a
//!   transaction-level advisory lock: guarded claims run one at a time
//!   across hosts, and each sees the claims committed before it.
//! - A completion with kv effects first takes an advisory lock per key it
//!   read or writes ([`kv_lock_keys`], taken by the writer at the start of
//!   its transaction, in key order): its read check stays true until it
//!   commits.
//! - Breaker rows are written in one step at the end of the writer's
//!   transaction ([`apply_breakers`]), locked in kind order, and only when
//!   something changes (a success on a closed breaker locks nothing).
//!
//! The writer runs the claims first in its transaction, then the other
//! commands, then the write-backs (the simple ones in one statement,
//! [`finish_batch`]), then the breakers: advisory locks are always taken
//! before any row lock, so they never close a cycle of waits.

use std::collections::{BTreeSet, HashMap, HashSet};

use postgres::Row;

use super::Conn;
use crate::job::{
    AttemptOutcome, AttemptRecord, BreakerCount, ClaimedJob, ConflictRetry, DEFAULT_MAX_ATTEMPTS,
    Effects, Enqueued, ExpiredLease, Fence, Fenced, Finish, JobId, JobState, NewJob, Transition,
    conflict_concurrency_key, effective_idempotency_key,
};
use crate::outbox::CALLBACK_TOPIC;
use crate::policy::{BreakerChange, BreakerRecord, BreakerState, PauseScope};
use crate::store::{ClaimRequest, Claimed, FinishOutcome, StoreError};
use crate::time::{Timestamp, duration_ms};

pub(super) type Result<T> = std::result::Result<T, StoreError>;

pub(super) fn enqueue(c: &mut Conn, jobs: &[NewJob], now: Timestamp) -> Result<Vec<Enqueued>> {
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (id, same) = insert_job(c, job, now)?;
        if !same {
            return Err(StoreError::KeyConflict {
                key: job.idempotency_key.clone().unwrap_or_default(),
                existing: id.id,
            });
        }
        out.push(id);
    }
    Ok(out)
}

/// Inserts one job; with a key that exists, returns that job instead, and
/// whether it is the same job (kind, payload, callback and concurrency
/// key).
pub(super) fn insert_job(c: &mut Conn, job: &NewJob, now: Timestamp) -> Result<(Enqueued, bool)> {
    let run_at = job.run_at.unwrap_or(now).0;
    let max_attempts = job.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS) as i32;
    let limit = job
        .concurrency_key
        .as_ref()
        .map(|_| job.concurrency_limit.unwrap_or(1) as i32);
    let row = c.query_opt(
        INSERT_JOB,
        &[
            &job.kind,
            &job.queue,
            &job.payload,
            &job.idempotency_key,
            &job.priority,
            &run_at,
            &max_attempts,
            &now.0,
            &job.callback_url,
            &job.concurrency_key,
            &limit,
            &job.schedule_id,
        ],
    )?;
    if let Some(row) = row {
        return Ok((
            Enqueued {
                id: row.get(0),
                created: true,
            },
            true,
        ));
    }
    // Only a duplicate key makes the insert do nothing.
    let key = job.idempotency_key.as_deref().unwrap_or_default();
    let r = c.query_one(SELECT_BY_KEY, &[&key])?;
    let (id, kind, payload, callback, ckey): (
        JobId,
        String,
        String,
        Option<String>,
        Option<String>,
    ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    let same = kind == job.kind
        && payload == job.payload
        && callback == job.callback_url
        && (ckey == job.concurrency_key
            || ckey
                .as_deref()
                .is_some_and(|k| k.starts_with(crate::job::CONFLICT_KEY_PREFIX)));
    Ok((Enqueued { id, created: false }, same))
}

/// A database `INTEGER` for a count the store keeps as `u32`.
fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// A `u32` from a database `INTEGER` (never negative in these columns).
fn uint(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// An epoch or other `u64` as a database `BIGINT`.
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn ubig(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A probe a claim admitted for a kind whose breaker is open (or half-open
/// with its probe gone): the breaker becomes half-open with this probe in
/// the writer's breaker step ([`apply_breakers`]), which also says whether
/// it did (a reset in between closes the breaker instead).
#[derive(Clone, Debug)]
pub(super) struct Probe {
    pub kind: String,
    pub job: JobId,
    pub epoch: u64,
    pub now: Timestamp,
}

/// Claims jobs. `probing` names the kinds whose probe an earlier claim of
/// the same transaction admitted (its breaker is not yet written): their
/// probe counts as running. Returns the probes this claim admitted, for
/// [`apply_breakers`].
pub(super) fn claim(
    c: &mut Conn,
    req: &ClaimRequest,
    probing: &HashSet<String>,
) -> Result<(Claimed, Vec<Probe>)> {
    if req.limit == 0 {
        return Ok((Claimed::default(), Vec::new()));
    }
    if !req.rates.is_empty() {
        return claim_guarded(c, req, probing);
    }
    // The plain claim, unless a safeguard is in use or a job it would take
    // is keyed: one statement, which says which it was.
    let lease_expires_at = req.now.plus(req.lease);
    let rows = c.query(
        CLAIM,
        &[
            &req.now.0,
            &lease_expires_at.0,
            &req.worker,
            &req.exclude_kinds,
            &i64::from(req.limit),
        ],
    )?;
    let guarded = match rows.first() {
        Some(r) => r.try_get::<_, bool>(0)?,
        None => true,
    };
    if guarded {
        return claim_guarded(c, req, probing);
    }
    let jobs = claimed_jobs(&rows, 1, req.now, lease_expires_at)?;
    Ok((
        Claimed {
            jobs,
            ..Claimed::default()
        },
        Vec::new(),
    ))
}

/// Reads the claimed jobs from `rows`, whose columns from `first` on are
/// those of `RETURNING` in [`CLAIM_IDS`] (a row whose id is NULL is no
/// job), in claim order.
fn claimed_jobs(
    rows: &[Row],
    first: usize,
    now: Timestamp,
    lease_expires_at: Timestamp,
) -> Result<Vec<ClaimedJob>> {
    let mut jobs = Vec::with_capacity(rows.len());
    for r in rows {
        let Some(id) = r.try_get::<_, Option<JobId>>(first)? else {
            continue;
        };
        let key: Option<String> = r.try_get(first + 4)?;
        jobs.push(ClaimedJob {
            id,
            kind: r.try_get(first + 1)?,
            queue: r.try_get(first + 2)?,
            payload: r.try_get(first + 3)?,
            idempotency_key: effective_idempotency_key(id, key.as_deref()),
            priority: r.try_get(first + 5)?,
            attempt: uint(r.try_get(first + 6)?),
            max_attempts: uint(r.try_get(first + 7)?),
            epoch: ubig(r.try_get(first + 8)?),
            run_at: Timestamp(r.try_get(first + 9)?),
            attempted_at: now,
            lease_expires_at,
        });
    }
    // RETURNING gives no order guarantee; hand jobs out in claim order.
    jobs.sort_by_key(|j| (j.priority, j.run_at, j.id));
    Ok(jobs)
}

/// The claim with safeguards in use, under [`CLAIM_LOCK`]: pauses,
/// breakers (open: none; due for a probe: one), rate limits (at most the
/// GCRA's allowance per kind) and concurrency keys (at most
/// `limit - running` per key) decide which candidates are admitted, in
/// claim order; the admitted ones are claimed and the rate rows updated.
/// The breakers of the probes are written later ([`apply_breakers`]).
fn claim_guarded(
    c: &mut Conn,
    req: &ClaimRequest,
    probing: &HashSet<String>,
) -> Result<(Claimed, Vec<Probe>)> {
    let now = req.now;
    // Every host's guarded claims take turns: each sees what the others
    // claimed (they committed before it got the lock).
    c.execute(CLAIM_LOCK, &[])?;
    let mut wake_at: Option<Timestamp> = None;
    let wake = |wake_at: &mut Option<Timestamp>, t: Timestamp| {
        *wake_at = Some(wake_at.map_or(t, |w| w.min(t)));
    };
    let mut excluded: HashSet<String> = req.exclude_kinds.iter().cloned().collect();
    let mut paused_queues: Vec<String> = Vec::new();
    for r in c.query(SELECT_PAUSES, &[])? {
        let scope: String = r.try_get(0)?;
        let name: String = r.try_get(1)?;
        if scope == PauseScope::Queue.as_str() {
            paused_queues.push(name);
        } else {
            excluded.insert(name);
        }
    }
    // Per-kind budgets: how many jobs of the kind this claim may take.
    let mut budget: HashMap<String, u32> = HashMap::new();
    let mut probes: HashSet<String> = HashSet::new();
    for r in c.query(ACTIVE_BREAKERS, &[])? {
        let kind: String = r.try_get(0)?;
        let state: String = r.try_get(1)?;
        let retry_at: Option<i64> = r.try_get(2)?;
        let probe_running: bool = r.try_get(3)?;
        // A kind an earlier claim of this transaction is probing is half-open
        // with its probe running, whatever its row says yet.
        let probed = probing.contains(&kind);
        let due_for_probe = !probed
            && match state.as_str() {
                "open" => retry_at.is_none_or(|t| t <= now.0),
                _ => !probe_running,
            };
        if due_for_probe {
            budget.insert(kind.clone(), 1);
            probes.insert(kind);
        } else {
            if let Some(t) = retry_at.filter(|_| state == "open" && !probed) {
                wake(&mut wake_at, Timestamp(t));
            }
            excluded.insert(kind);
        }
    }
    let rate_kinds: Vec<&str> = req
        .rates
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !excluded.contains(*k))
        .collect();
    let mut tats: HashMap<String, f64> = HashMap::new();
    if !rate_kinds.is_empty() {
        for r in c.query(SELECT_TATS, &[&rate_kinds])? {
            tats.insert(r.try_get(0)?, r.try_get(1)?);
        }
    }
    let mut rates = HashMap::new();
    for (kind, rate) in &req.rates {
        if excluded.contains(kind) {
            continue;
        }
        let tat = tats.get(kind).copied();
        let allowance = rate.allowance(tat, now);
        if allowance == 0 {
            wake(&mut wake_at, rate.next_allowed(tat, now));
            excluded.insert(kind.clone());
            continue;
        }
        let b = budget.entry(kind.clone()).or_insert(u32::MAX);
        *b = (*b).min(allowance);
        rates.insert(kind.as_str(), (rate, tat));
    }
    // Concurrency keys: how many run, and which are saturated for every
    // job waiting on them.
    let mut running: HashMap<String, u32> = HashMap::new();
    for r in c.query(RUNNING_PER_KEY, &[])? {
        let n: i64 = r.try_get(1)?;
        running.insert(r.try_get(0)?, u32::try_from(n).unwrap_or(u32::MAX));
    }
    let mut saturated: HashSet<String> = HashSet::new();
    let keys: Vec<&str> = running.keys().map(String::as_str).collect();
    saturate(c, &keys, &running, &mut saturated)?;

    // The candidates, in claim order, a page at a time: each page leaves
    // out the kinds and keys the pages before found full (their jobs
    // would be passed over anyway), so a long run of jobs held back costs
    // few pages.
    let limit = req.limit as usize;
    let page = i64::from(req.limit).saturating_mul(2).clamp(64, 1024);
    let mut after: (i32, i64, i64) = (i32::MIN, i64::MIN, i64::MIN);
    let mut admitted: Vec<JobId> = Vec::with_capacity(limit);
    let mut taken: HashMap<String, u32> = HashMap::new();
    let mut held_back: HashSet<String> = HashSet::new();
    loop {
        let left_out: Vec<&str> = excluded
            .iter()
            .chain(held_back.iter())
            .map(String::as_str)
            .collect();
        let full_keys: Vec<&str> = saturated.iter().map(String::as_str).collect();
        let rows = c.query(
            CLAIM_CANDIDATES,
            &[
                &now.0,
                &left_out,
                &paused_queues,
                &full_keys,
                &after.0,
                &after.1,
                &after.2,
                &page,
            ],
        )?;
        let mut refused: Vec<String> = Vec::new();
        for r in &rows {
            if admitted.len() >= limit {
                break;
            }
            let id: JobId = r.try_get(0)?;
            let kind: String = r.try_get(1)?;
            let key: Option<String> = r.try_get(2)?;
            let key_limit: Option<i32> = r.try_get(3)?;
            after = (r.try_get(4)?, r.try_get(5)?, id);
            let used = taken.get(&kind).copied().unwrap_or(0);
            if budget.get(&kind).is_some_and(|b| used >= *b) {
                held_back.insert(kind);
                continue;
            }
            if let Some(key) = key {
                let n = running.entry(key.clone()).or_insert(0);
                if *n >= key_limit.map_or(1, uint) {
                    refused.push(key);
                    continue;
                }
                *n += 1;
            }
            *taken.entry(kind).or_insert(0) += 1;
            admitted.push(id);
        }
        if admitted.len() >= limit || (rows.len() as i64) < page {
            break;
        }
        refused.sort();
        refused.dedup();
        refused.retain(|k| !saturated.contains(k));
        let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
        saturate(c, &refused, &running, &mut saturated)?;
    }
    if admitted.is_empty() {
        for kind in &held_back {
            if let Some((rate, tat)) = rates.get(kind.as_str()) {
                wake(&mut wake_at, rate.next_allowed(*tat, now));
            }
        }
        return Ok((
            Claimed {
                jobs: Vec::new(),
                wake_at,
                half_opened: Vec::new(),
            },
            Vec::new(),
        ));
    }

    let lease_expires_at = now.plus(req.lease);
    let rows = c.query(
        CLAIM_IDS,
        &[&now.0, &lease_expires_at.0, &req.worker, &admitted],
    )?;
    let jobs = claimed_jobs(&rows, 0, now, lease_expires_at)?;
    // What was claimed: an admitted job another host is claiming right now
    // is skipped, not waited for.
    let mut claimed: HashMap<&str, u32> = HashMap::new();
    for job in &jobs {
        *claimed.entry(job.kind.as_str()).or_insert(0) += 1;
    }
    for (kind, (rate, tat)) in &rates {
        match claimed.get(kind).copied().unwrap_or(0) {
            0 => {
                if held_back.contains(*kind) {
                    wake(&mut wake_at, rate.next_allowed(*tat, now));
                }
            }
            n => {
                let next = rate.advance(*tat, now, n);
                c.execute(UPSERT_TAT, &[kind, &next])?;
                if held_back.contains(*kind) {
                    wake(&mut wake_at, rate.next_allowed(Some(next), now));
                }
            }
        }
    }
    let mut half_opened = Vec::new();
    let mut admitted_probes = Vec::new();
    for job in &jobs {
        if probes.remove(&job.kind) {
            admitted_probes.push(Probe {
                kind: job.kind.clone(),
                job: job.id,
                epoch: job.epoch,
                now,
            });
            half_opened.push(job.kind.clone());
        }
    }
    Ok((
        Claimed {
            jobs,
            wake_at,
            half_opened,
        },
        admitted_probes,
    ))
}

/// Adds to `saturated` those of `keys` that have, running, the largest
/// limit among the jobs waiting on them.
fn saturate(
    c: &mut Conn,
    keys: &[&str],
    running: &HashMap<String, u32>,
    saturated: &mut HashSet<String>,
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    for r in c.query(MAX_WAITING_LIMITS, &[&keys])? {
        let key: String = r.try_get(0)?;
        let max: Option<i32> = r.try_get(1)?;
        let n = running.get(&key).copied().unwrap_or(0);
        if max.is_some_and(|m| n >= uint(m)) {
            saturated.insert(key);
        }
    }
    Ok(())
}

/// Whether `f` can go through [`finish_batch`]: no kv reads to check and
/// no kv writes or events to store (only a completion has effects).
pub(super) fn is_simple(f: &Finish) -> bool {
    !matches!(f.transition, Transition::Complete { .. }) || f.effects.is_empty()
}

/// The advisory lock keys of the kv keys the completions among `finishes`
/// read or write, sorted and without duplicates: the writer takes them all
/// at the start of its transaction, in this order.
pub(super) fn kv_lock_keys<'a>(finishes: impl Iterator<Item = &'a Finish>) -> Vec<i64> {
    let mut keys = BTreeSet::new();
    for f in finishes {
        if is_simple(f) {
            continue;
        }
        let ns = &f.effects.namespace;
        for key in f.effects.kv_reads.iter().map(|(k, _)| k) {
            keys.insert(kv_lock_key(ns, key));
        }
        for key in f.effects.kv_writes.iter().map(|(k, _)| k) {
            keys.insert(kv_lock_key(ns, key));
        }
    }
    keys.into_iter().collect()
}

/// A kv key's advisory lock (64-bit FNV-1a of the namespace and the key):
/// every host computes the same. Two keys that collide merely take turns.
fn kv_lock_key(namespace: &str, key: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    // 0xff never occurs in UTF-8: it separates the two.
    for b in namespace.bytes().chain([0xff]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// A write-back of the writer's group, with its lease bound
/// (`i64::MAX` for a worker, `now` for the rescuer).
pub(super) type FinishItem<'a> = (&'a Finish, i64);

/// Applies simple write-backs ([`is_simple`]) in one statement: each
/// transition out of running is fenced on its own id, epoch, state and
/// lease bound, and each that applies gets its attempt row (and, ending
/// its job with a callback URL, its callback event). Returns each one's
/// outcome (without its breaker count), in order, and the breakers of the
/// kinds of the jobs that moved as the statement read them (`None`: no
/// row), which spares [`apply_breakers`] its first read. The jobs' ids
/// must be distinct.
pub(super) fn finish_batch(c: &mut Conn, items: &[FinishItem<'_>]) -> Result<Batched> {
    let n = items.len();
    // In id order, so that two transactions lock shared rows in one order.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| items[i].0.fence.id);
    let mut id = Vec::with_capacity(n);
    let mut epoch = Vec::with_capacity(n);
    let mut bound = Vec::with_capacity(n);
    let mut op = Vec::with_capacity(n);
    let mut output: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut error: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut run_at: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut now = Vec::with_capacity(n);
    let mut attempt = Vec::with_capacity(n);
    let mut outcome = Vec::with_capacity(n);
    let mut attempt_error: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut fuel: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut started = Vec::with_capacity(n);
    let mut duration = Vec::with_capacity(n);
    let mut hash: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut recording: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    let mut host: Vec<Option<&str>> = Vec::with_capacity(n);
    for &i in &order {
        let (f, b) = items[i];
        let a = &f.attempt;
        id.push(f.fence.id);
        epoch.push(big(f.fence.epoch));
        bound.push(b);
        let (o, out, err, at) = match &f.transition {
            Transition::Complete { output } => ("complete", Some(output.as_str()), None, None),
            Transition::Retry { run_at, error } => {
                ("retry", None, Some(error.as_str()), Some(run_at.0))
            }
            Transition::Discard { error } => ("discard", None, Some(error.as_str()), None),
            Transition::Release => ("release", None, None, None),
        };
        op.push(o);
        output.push(out);
        error.push(err);
        run_at.push(at);
        now.push(a.ended_at.0);
        attempt.push(int(a.attempt));
        outcome.push(a.outcome.as_str());
        attempt_error.push(a.error.as_deref());
        fuel.push(a.fuel_used.map(big));
        started.push(a.started_at.0);
        duration.push(duration_ms(a.ended_at.since(a.started_at)));
        hash.push(a.component_hash.as_deref());
        recording.push(a.recording.as_deref());
        host.push(a.host.as_deref());
    }
    let rows = c.query(
        FINISH_BATCH,
        &[
            &id,
            &epoch,
            &bound,
            &op,
            &output,
            &error,
            &run_at,
            &now,
            &attempt,
            &outcome,
            &attempt_error,
            &fuel,
            &started,
            &duration,
            &hash,
            &recording,
            &host,
        ],
    )?;
    let mut moved: HashMap<JobId, Moved> = HashMap::with_capacity(rows.len());
    let mut breakers: HashMap<String, Option<BreakerRecord>> = HashMap::new();
    for r in &rows {
        let m = Moved::read(r)?;
        if !breakers.contains_key(&m.kind) {
            let b = match r.try_get::<_, Option<String>>(MOVED_COLUMNS)? {
                Some(_) => Some(breaker_record(r, MOVED_COLUMNS)?),
                None => None,
            };
            breakers.insert(m.kind.clone(), b);
        }
        moved.insert(m.id, m);
    }
    let mut callbacks = Vec::new();
    let mut out = Vec::with_capacity(n);
    for (f, _) in items {
        let Some(m) = moved.get(&f.fence.id) else {
            out.push(fenced_out(f.attempt.outcome));
            continue;
        };
        if matches!(
            f.transition,
            Transition::Complete { .. } | Transition::Discard { .. }
        ) && let Some(event) = m.callback(f.attempt.ended_at)
        {
            callbacks.push(event);
        }
        out.push(FinishOutcome {
            fenced: Fenced::Applied,
            outcome: f.attempt.outcome,
            next: f.transition.target_state(),
            conflict: None,
            breaker: None,
        });
    }
    insert_callbacks(c, &callbacks)?;
    Ok(Batched {
        outcomes: out,
        breakers,
    })
}

/// What [`finish_batch`] did.
#[derive(Debug)]
pub(super) struct Batched {
    pub outcomes: Vec<FinishOutcome>,
    pub breakers: HashMap<String, Option<BreakerRecord>>,
}

/// Applies one write-back that is not simple: a completion with kv
/// effects, whose reads are checked (a changed key fails it with
/// [`StoreError::KvConflict`], or with `on_conflict` writes that retry
/// instead) and whose kv writes and events are stored with it. The
/// breaker count is left to [`apply_breakers`].
pub(super) fn finish_one(c: &mut Conn, f: &Finish, lease_bound: i64) -> Result<FinishOutcome> {
    let complete = matches!(f.transition, Transition::Complete { .. });
    let changed = if complete {
        changed_read(c, &f.effects)?
    } else {
        None
    };
    if let (true, Some(retry), Some(key)) = (complete, &f.on_conflict, &changed) {
        return finish_conflict(c, f, retry, key.clone(), lease_bound);
    }
    let applied = finish_batch(c, &[(f, lease_bound)])?
        .outcomes
        .pop()
        .ok_or_else(|| StoreError::Backend("write-back returned no outcome".into()))?;
    if applied.fenced == Fenced::FencedOut {
        return Ok(applied);
    }
    if complete {
        if let Some(key) = changed {
            return Err(StoreError::KvConflict { key });
        }
        apply_effects(c, f.fence, &f.effects, f.attempt.ended_at.0)?;
    }
    Ok(applied)
}

fn fenced_out(outcome: AttemptOutcome) -> FinishOutcome {
    FinishOutcome {
        fenced: Fenced::FencedOut,
        outcome,
        next: JobState::Running,
        conflict: None,
        breaker: None,
    }
}

/// How many columns [`Moved::read`] reads (the breaker's follow in
/// [`FINISH_BATCH`]).
const MOVED_COLUMNS: usize = 10;

/// A job row as a transition out of running left it: what its callback
/// event is built from.
struct Moved {
    id: JobId,
    callback_url: Option<String>,
    kind: String,
    state: String,
    attempt: i32,
    idempotency_key: Option<String>,
    epoch: i64,
    finalized_at: Option<i64>,
    /// Only read for a job with a callback URL.
    output: Option<String>,
    error: Option<String>,
}

impl Moved {
    /// Reads the columns of `RETURNING` in the transition statements.
    fn read(r: &Row) -> Result<Moved> {
        Ok(Moved {
            id: r.try_get(0)?,
            callback_url: r.try_get(1)?,
            kind: r.try_get(2)?,
            state: r.try_get(3)?,
            attempt: r.try_get(4)?,
            idempotency_key: r.try_get(5)?,
            epoch: r.try_get(6)?,
            finalized_at: r.try_get(7)?,
            output: r.try_get(8)?,
            error: r.try_get(9)?,
        })
    }

    /// The job's completion callback, if it has a callback URL: the body
    /// SQLite's `INSERT_CALLBACK` builds (an output that is JSON is
    /// embedded as JSON, any other as a string), and a key that names the
    /// claim epoch, so that a job retried by an operator after being
    /// discarded gets a callback of its own when it ends again.
    fn callback(&self, now: Timestamp) -> Option<CallbackEvent> {
        let url = self.callback_url.clone()?;
        let key = effective_idempotency_key(self.id, self.idempotency_key.as_deref());
        let string = |s: &str| serde_json::to_string(s).expect("strings serialize");
        let opt = |s: &Option<String>| s.as_deref().map_or_else(|| "null".to_owned(), string);
        let output = match self.output.as_deref() {
            Some(o) if serde_json::from_str::<serde::de::IgnoredAny>(o).is_ok() => minify(o),
            other => other.map_or_else(|| "null".to_owned(), string),
        };
        let body = format!(
            "{{\"job_id\":{},\"kind\":{},\"state\":{},\"attempt\":{},\"idempotency_key\":{},\
             \"output\":{},\"error\":{},\"finalized_at\":{}}}",
            self.id,
            string(&self.kind),
            string(&self.state),
            self.attempt,
            string(&key),
            output,
            opt(&self.error),
            self.finalized_at
                .map_or_else(|| "null".to_owned(), |t| t.to_string()),
        );
        Some(CallbackEvent {
            job_id: self.id,
            url,
            body: body.into_bytes(),
            key: format!("{key}:callback:{}", self.epoch),
            now: now.0,
        })
    }
}

/// Valid JSON text without the whitespace between its tokens (SQLite's
/// `json()` of it).
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for ch in json.chars() {
        if in_string {
            out.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
        } else if !matches!(ch, ' ' | '\t' | '\n' | '\r') {
            if ch == '"' {
                in_string = true;
            }
            out.push(ch);
        }
    }
    out
}

struct CallbackEvent {
    job_id: JobId,
    url: String,
    body: Vec<u8>,
    key: String,
    now: i64,
}

fn insert_callbacks(c: &mut Conn, events: &[CallbackEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let job: Vec<JobId> = events.iter().map(|e| e.job_id).collect();
    let url: Vec<&str> = events.iter().map(|e| e.url.as_str()).collect();
    let body: Vec<&[u8]> = events.iter().map(|e| e.body.as_slice()).collect();
    let key: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
    let now: Vec<i64> = events.iter().map(|e| e.now).collect();
    c.execute(
        INSERT_CALLBACKS,
        &[&CALLBACK_TOPIC, &job, &url, &body, &key, &now],
    )?;
    Ok(())
}

/// The first key the attempt read that has changed since, if any.
fn changed_read(c: &mut Conn, effects: &Effects) -> Result<Option<String>> {
    if effects.kv_reads.is_empty() {
        return Ok(None);
    }
    let keys: Vec<&str> = effects.kv_reads.iter().map(|(k, _)| k.as_str()).collect();
    let mut current: HashMap<String, i64> = HashMap::with_capacity(keys.len());
    for r in c.query(KV_VERSIONS, &[&effects.namespace, &keys])? {
        current.insert(r.try_get(0)?, r.try_get(1)?);
    }
    Ok(effects
        .kv_reads
        .iter()
        .find(|(key, seen)| current.get(key).copied() != *seen)
        .map(|(key, _)| key.clone()))
}

/// The write-back of a completion whose read of `key` was overtaken: the
/// attempt is given back while the conflict budget lasts, else spent.
fn finish_conflict(
    c: &mut Conn,
    f: &Finish,
    retry: &ConflictRetry,
    key: String,
    lease_bound: i64,
) -> Result<FinishOutcome> {
    let (id, epoch) = (f.fence.id, big(f.fence.epoch));
    let now = f.attempt.ended_at;
    let error = format!("kv conflict: key {key:?} changed during the attempt");
    let serialize = conflict_concurrency_key(&f.effects.namespace, &key);
    let given_back = c.query_opt(
        CONFLICT_RETRY,
        &[
            &id,
            &epoch,
            &lease_bound,
            &error,
            &retry.run_at.0,
            &serialize,
            &int(retry.max_conflicts),
        ],
    )?;
    let (next, error) = if given_back.is_some() {
        (JobState::Retryable, error)
    } else {
        // Fenced out, or past the budget: then the attempt counts.
        let error = format!(
            "{error} (conflict budget of {} used up)",
            retry.max_conflicts
        );
        let spent = match retry.fallback_run_at {
            Some(run_at) => c.query_opt(
                CONFLICT_RETRY_SPENT,
                &[&id, &epoch, &lease_bound, &error, &run_at.0],
            )?,
            None => c.query_opt(
                CONFLICT_DISCARD,
                &[&id, &epoch, &lease_bound, &error, &now.0],
            )?,
        };
        let Some(row) = spent else {
            return Ok(fenced_out(AttemptOutcome::KvConflict));
        };
        if retry.fallback_run_at.is_none()
            && let Some(event) = Moved::read(&row)?.callback(now)
        {
            insert_callbacks(c, &[event])?;
        }
        let next = if retry.fallback_run_at.is_some() {
            JobState::Retryable
        } else {
            JobState::Discarded
        };
        (next, error)
    };
    let record = AttemptRecord {
        outcome: AttemptOutcome::KvConflict,
        error: Some(error),
        ..f.attempt.clone()
    };
    insert_attempt(c, f.fence, &record)?;
    Ok(FinishOutcome {
        fenced: Fenced::Applied,
        outcome: AttemptOutcome::KvConflict,
        next,
        conflict: Some(key),
        breaker: None,
    })
}

/// Stores a completion's kv writes and events (its reads were checked
/// first, in the same transaction, under the keys' locks).
fn apply_effects(c: &mut Conn, fence: Fence, effects: &Effects, now: i64) -> Result<()> {
    let job_id = fence.id;
    let ns = &effects.namespace;
    let distinct: HashSet<&str> = effects.kv_writes.iter().map(|(k, _)| k.as_str()).collect();
    if distinct.len() == effects.kv_writes.len() {
        if !effects.kv_writes.is_empty() {
            let keys: Vec<&str> = effects.kv_writes.iter().map(|(k, _)| k.as_str()).collect();
            let values: Vec<Option<&[u8]>> = effects
                .kv_writes
                .iter()
                .map(|(_, v)| v.as_deref())
                .collect();
            c.execute(KV_PUT_MANY, &[ns, &keys, &values, &now])?;
        }
    } else {
        // One statement cannot change a row twice: a key written twice is
        // written twice, as SQLite does.
        for (key, value) in &effects.kv_writes {
            c.execute(KV_PUT, &[ns, key, value, &now])?;
        }
    }
    if !distinct.is_empty() {
        let keys: Vec<&str> = distinct.into_iter().collect();
        c.execute(LOG_KV_WRITES, &[&job_id, &big(fence.epoch), ns, &keys])?;
    }
    if !effects.events.is_empty() {
        let topic: Vec<&str> = effects.events.iter().map(|e| e.topic.as_str()).collect();
        let url: Vec<&str> = effects.events.iter().map(|e| e.url.as_str()).collect();
        let body: Vec<&[u8]> = effects.events.iter().map(|e| e.body.as_slice()).collect();
        let key: Vec<&str> = effects
            .events
            .iter()
            .map(|e| e.idempotency_key.as_str())
            .collect();
        c.execute(INSERT_EVENTS, &[&job_id, &now, &topic, &url, &body, &key])?;
    }
    Ok(())
}

fn insert_attempt(c: &mut Conn, fence: Fence, a: &AttemptRecord) -> Result<()> {
    c.execute(
        INSERT_ATTEMPT,
        &[
            &fence.id,
            &big(fence.epoch),
            &int(a.attempt),
            &a.outcome.as_str(),
            &a.error,
            &a.fuel_used.map(big),
            &a.started_at.0,
            &a.ended_at.0,
            &duration_ms(a.ended_at.since(a.started_at)),
            &a.component_hash,
            &a.recording,
            &a.host,
        ],
    )?;
    Ok(())
}

/// An applied write-back's count for its kind's breaker.
#[derive(Clone, Copy, Debug)]
pub(super) struct BreakerTask<'a> {
    pub count: &'a BreakerCount,
    pub fence: Fence,
    pub now: Timestamp,
}

/// What [`apply_breakers`] did: whether each probe made its breaker
/// half-open, and each count's change of state.
#[derive(Debug, Default)]
pub(super) struct BreakerSteps {
    pub probed: Vec<bool>,
    pub changes: Vec<Option<BreakerChange>>,
}

/// The breakers after a group's claims admitted `probes` and its
/// write-backs counted `tasks` (in that order, each list in its commands'
/// order): the same steps as SQLite's per-command ones, computed in
/// memory and written once per breaker.
///
/// A first read takes no lock: if no breaker changes (a success on a
/// closed breaker, the common case), nothing is locked or written. Else
/// the breakers that change are locked in kind order (a missing one is
/// inserted first), the steps are computed again from what is locked,
/// and the new rows written.
pub(super) fn apply_breakers(
    c: &mut Conn,
    probes: &[Probe],
    tasks: &[BreakerTask<'_>],
    known: &HashMap<String, Option<BreakerRecord>>,
) -> Result<BreakerSteps> {
    if probes.is_empty() && tasks.is_empty() {
        return Ok(BreakerSteps::default());
    }
    let kinds: BTreeSet<&str> = probes
        .iter()
        .map(|p| p.kind.as_str())
        .chain(tasks.iter().map(|t| t.count.kind.as_str()))
        .collect();
    let mut current: HashMap<String, BreakerRecord> = HashMap::new();
    let mut unknown: Vec<&str> = Vec::new();
    for kind in kinds {
        match known.get(kind) {
            Some(Some(b)) => {
                current.insert(kind.to_owned(), b.clone());
            }
            Some(None) => {}
            None => unknown.push(kind),
        }
    }
    if !unknown.is_empty() {
        for r in c.query(SELECT_BREAKERS_OF, &[&unknown])? {
            let b = breaker_record(&r, 0)?;
            current.insert(b.kind.clone(), b);
        }
    }
    let first = step_breakers(&current, probes, tasks);
    if first.dirty.is_empty() {
        return Ok(first.steps);
    }

    let dirty: Vec<&str> = first.dirty.iter().map(String::as_str).collect();
    let missing: Vec<&str> = dirty
        .iter()
        .copied()
        .filter(|k| !current.contains_key(*k))
        .collect();
    let mut placeholders: HashSet<String> = HashSet::new();
    if !missing.is_empty() {
        for r in c.query(INSERT_BREAKER_PLACEHOLDERS, &[&missing, &tasks_now(tasks)])? {
            placeholders.insert(r.try_get(0)?);
        }
    }
    for kind in &dirty {
        current.remove(*kind);
    }
    for r in c.query(LOCK_BREAKERS, &[&dirty])? {
        let b = breaker_record(&r, 0)?;
        // A row this transaction inserted stands for no row.
        if !placeholders.contains(&b.kind) {
            current.insert(b.kind.clone(), b);
        }
    }
    let locked = step_breakers(&current, probes, tasks);
    for kind in &dirty {
        match locked.next.get(*kind) {
            Some(b) if locked.dirty.contains(*kind) => write_breaker(c, b)?,
            None if placeholders.contains(*kind) => {
                c.execute(DELETE_BREAKER, &[kind])?;
            }
            _ => {}
        }
    }
    Ok(locked.steps)
}

/// Any `now` of the counts, for a placeholder row's `updated_at` (it is
/// overwritten in the same transaction).
fn tasks_now(tasks: &[BreakerTask<'_>]) -> i64 {
    tasks.first().map_or(0, |t| t.now.0)
}

/// The steps of [`apply_breakers`] from `current`.
struct Stepped {
    steps: BreakerSteps,
    /// Every breaker after the steps (absent: no row).
    next: HashMap<String, BreakerRecord>,
    /// The kinds whose row changes.
    dirty: BTreeSet<String>,
}

fn step_breakers(
    current: &HashMap<String, BreakerRecord>,
    probes: &[Probe],
    tasks: &[BreakerTask<'_>],
) -> Stepped {
    let mut next = current.clone();
    let mut dirty = BTreeSet::new();
    let mut steps = BreakerSteps::default();
    for p in probes {
        // SQLite's BREAKER_PROBE: only an open or half-open breaker.
        let applied = match next.get_mut(&p.kind) {
            Some(b) if matches!(b.state, BreakerState::Open | BreakerState::HalfOpen) => {
                b.state = BreakerState::HalfOpen;
                b.probe = Some((p.job, p.epoch));
                b.updated_at = p.now;
                dirty.insert(p.kind.clone());
                true
            }
            _ => false,
        };
        steps.probed.push(applied);
    }
    for t in tasks {
        let change = match BreakerRecord::step(next.get(&t.count.kind), t.count, t.fence, t.now) {
            Some((b, change)) => {
                dirty.insert(b.kind.clone());
                next.insert(b.kind.clone(), b);
                change
            }
            None => None,
        };
        steps.changes.push(change);
    }
    Stepped { steps, next, dirty }
}

/// Reads a breaker from the columns of `breaker_columns!` at `at`.
fn breaker_record(r: &Row, at: usize) -> Result<BreakerRecord> {
    let state: String = r.try_get(at + 1)?;
    let probe_job: Option<JobId> = r.try_get(at + 6)?;
    let probe_epoch: Option<i64> = r.try_get(at + 7)?;
    let trips: i32 = r.try_get(at + 8)?;
    Ok(BreakerRecord {
        kind: r.try_get(at)?,
        state: state.parse().map_err(StoreError::Backend)?,
        failures: uint(r.try_get(at + 2)?),
        streak_started_at: r.try_get::<_, Option<i64>>(at + 3)?.map(Timestamp),
        opened_at: r.try_get::<_, Option<i64>>(at + 4)?.map(Timestamp),
        retry_at: r.try_get::<_, Option<i64>>(at + 5)?.map(Timestamp),
        probe: probe_job.zip(probe_epoch.map(ubig)),
        trips: u64::from(uint(trips)),
        last_error: r.try_get(at + 9)?,
        updated_at: Timestamp(r.try_get(at + 10)?),
    })
}

fn write_breaker(c: &mut Conn, b: &BreakerRecord) -> Result<()> {
    c.execute(
        UPSERT_BREAKER,
        &[
            &b.kind,
            &b.state.as_str(),
            &int(b.failures),
            &b.streak_started_at.map(|t| t.0),
            &b.opened_at.map(|t| t.0),
            &b.retry_at.map(|t| t.0),
            &b.probe.map(|p| p.0),
            &b.probe.map(|p| big(p.1)),
            &i32::try_from(b.trips).unwrap_or(i32::MAX),
            &b.last_error,
            &b.updated_at.0,
        ],
    )?;
    Ok(())
}

pub(super) fn extend_leases(
    c: &mut Conn,
    fences: &[Fence],
    until: Timestamp,
) -> Result<Vec<Fenced>> {
    if fences.is_empty() {
        return Ok(Vec::new());
    }
    // In id order, so that two transactions lock shared rows in one order.
    let mut sorted: Vec<Fence> = fences.to_vec();
    sorted.sort_by_key(|f| f.id);
    let ids: Vec<JobId> = sorted.iter().map(|f| f.id).collect();
    let epochs: Vec<i64> = sorted.iter().map(|f| big(f.epoch)).collect();
    let mut held: HashSet<(JobId, i64)> = HashSet::with_capacity(fences.len());
    for r in c.query(EXTEND_LEASES, &[&ids, &epochs, &until.0])? {
        held.insert((r.try_get(0)?, r.try_get(1)?));
    }
    Ok(fences
        .iter()
        .map(|f| {
            if held.contains(&(f.id, big(f.epoch))) {
                Fenced::Applied
            } else {
                Fenced::FencedOut
            }
        })
        .collect())
}

pub(super) fn expired_leases(
    c: &mut Conn,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<ExpiredLease>> {
    let rows = c.query(EXPIRED_LEASES, &[&now.0, &i64::from(limit)])?;
    rows.iter()
        .map(|r| {
            Ok(ExpiredLease {
                fence: Fence {
                    id: r.try_get(0)?,
                    epoch: ubig(r.try_get(1)?),
                },
                kind: r.try_get(2)?,
                attempt: uint(r.try_get(3)?),
                max_attempts: uint(r.try_get(4)?),
                attempted_at: Timestamp(r.try_get::<_, Option<i64>>(5)?.unwrap_or(now.0)),
                leased_by: r.try_get(6)?,
            })
        })
        .collect()
}

/// The rescuer's write-back of a job whose lease expired: the attempt is
/// recorded as `lease_expired`; the writer applies it fenced on the lease
/// still being expired at `now` (its lease bound).
pub(super) fn rescue_finish(
    lease: &ExpiredLease,
    transition: Transition,
    now: Timestamp,
) -> Finish {
    Finish {
        fence: lease.fence,
        attempt: AttemptRecord {
            attempt: lease.attempt,
            outcome: AttemptOutcome::LeaseExpired,
            error: Some("lease expired: the worker stopped renewing it".to_owned()),
            fuel_used: None,
            started_at: lease.attempted_at,
            ended_at: now,
            component_hash: None,
            recording: None,
            host: lease.leased_by.clone(),
        },
        transition,
        effects: Effects::default(),
        on_conflict: None,
        breaker: None,
    }
}

/// enqueue: (none) → available. A duplicate idempotency key inserts nothing
/// and returns no row; the caller then looks the existing job up.
const INSERT_JOB: &str = "
    INSERT INTO jobs (kind, queue, payload, idempotency_key, state, priority,
                      run_at, max_attempts, created_at, callback_url,
                      concurrency_key, concurrency_limit, schedule_id)
    VALUES ($1, $2, $3, $4, 'available', $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id";

const SELECT_BY_KEY: &str = "
    SELECT id, kind, payload, callback_url, concurrency_key
    FROM jobs WHERE idempotency_key = $1";

/// The guarded claims' advisory lock (two-key form, a space apart from the
/// one-key locks of kv keys and of migrations): "jobb", 1.
const CLAIM_LOCK: &str = "SELECT pg_advisory_xact_lock(1785684578, 1)";

/// The columns a claim returns, in the order [`claimed_jobs`] reads them.
macro_rules! claimed_columns {
    ($t:literal) => {
        concat!(
            $t,
            "id, ",
            $t,
            "kind, ",
            $t,
            "queue, ",
            $t,
            "payload, ",
            $t,
            "idempotency_key, ",
            $t,
            "priority, ",
            $t,
            "attempt, ",
            $t,
            "max_attempts, ",
            $t,
            "epoch, ",
            $t,
            "run_at"
        )
    };
}

/// claim: available/retryable → running, in (priority, run_at, id) order:
/// the due jobs not of an excluded kind are taken (skipping those another
/// transaction holds), `attempt` and `epoch` rise by one and the lease is
/// set. Unless a safeguard is in use (a pause or a breaker that is not
/// closed), or a job it would take has a concurrency key: then the first
/// column says so and nothing is claimed (the guarded claim takes over; a
/// job it chose stays locked by this transaction, which the guarded claim
/// may then take). Which jobs it takes are the guarded claim's choice too
/// when none of them is keyed, so waiting keyed jobs elsewhere in the queue
/// need not be looked for (SQLite's `GUARDS_IN_USE` does; here that scan
/// would wade through the dead rows a drained backlog leaves). Always at
/// least one row; a row with a NULL id claimed nothing. $1 now, $2 lease
/// expiry, $3 worker, $4 excluded kinds, $5 limit.
///
/// The exclusions are written as `CASE … THEN FALSE ELSE TRUE END`, not
/// `kind <> ALL($4)`: in a generic plan the planner cannot see the array,
/// and with few distinct kinds it takes `<>` to match almost nothing and
/// sorts the whole queue instead of reading `jobs_claim` in order. A CASE
/// is estimated to keep half the rows. The rows chosen are updated by id
/// (`= ANY`), so that every plan reads them through the primary key; their
/// state was checked under the lock that `chosen` holds on them, and is
/// not checked again: a second `state IN (...)` lets a plan without
/// statistics read all of `jobs_claim` to intersect it with the ids.
const CLAIM: &str = concat!(
    "
    WITH guard AS MATERIALIZED (
        SELECT EXISTS (SELECT 1 FROM pauses)
            OR EXISTS (SELECT 1 FROM breakers WHERE state <> 'closed') AS guarded
    ),
    chosen AS MATERIALIZED (
        SELECT id, concurrency_key FROM jobs
        WHERE state IN ('available', 'retryable')
          AND run_at <= $1
          AND CASE WHEN kind = ANY($4::text[]) THEN FALSE ELSE TRUE END
          AND NOT (SELECT guarded FROM guard)
        ORDER BY priority, run_at, id
        LIMIT $5
        FOR UPDATE SKIP LOCKED
    ),
    keyed AS MATERIALIZED (
        SELECT EXISTS (SELECT 1 FROM chosen WHERE concurrency_key IS NOT NULL) AS keyed
    ),
    claimed AS (
        UPDATE jobs j
        SET state = 'running',
            attempt = j.attempt + 1,
            epoch = j.epoch + 1,
            attempted_at = $1,
            lease_expires_at = $2,
            leased_by = $3
        WHERE j.id = ANY (ARRAY(SELECT id FROM chosen))
          AND NOT (SELECT keyed FROM keyed)
        RETURNING ",
    claimed_columns!("j."),
    "
    )
    SELECT g.guarded OR k.keyed, ",
    claimed_columns!("c."),
    "
    FROM guard g CROSS JOIN keyed k LEFT JOIN claimed c ON TRUE"
);

/// The guarded claim's candidates, in claim order, one page: due, not of an
/// excluded kind ($2: full, paused, open breaker, no rate left), not on a
/// paused queue ($3), not of a saturated concurrency key ($4), after the
/// last one of the page before ($5, $6, $7: its priority, run_at and id),
/// at most $8. (The exclusions are a CASE for the reason given at
/// [`CLAIM`]; a NULL key matches no array, so keyless jobs stay.)
const CLAIM_CANDIDATES: &str = "
    SELECT id, kind, concurrency_key, concurrency_limit, priority, run_at
    FROM jobs
    WHERE state IN ('available', 'retryable')
      AND run_at <= $1
      AND CASE WHEN kind = ANY($2::text[]) OR queue = ANY($3::text[])
                    OR concurrency_key = ANY($4::text[])
               THEN FALSE ELSE TRUE END
      AND (priority, run_at, id) > ($5::integer, $6::bigint, $7::bigint)
    ORDER BY priority, run_at, id
    LIMIT $8";

/// The guarded claim itself: the admitted candidates ($4) → running, those
/// another transaction holds skipped (their state is checked under the
/// lock, as in [`CLAIM`]; as a CASE, which no plan can answer from
/// `jobs_claim`, so that the ids are found through the primary key alone).
/// $1 now, $2 lease expiry, $3 worker.
const CLAIM_IDS: &str = concat!(
    "
    UPDATE jobs
    SET state = 'running',
        attempt = attempt + 1,
        epoch = epoch + 1,
        attempted_at = $1,
        lease_expires_at = $2,
        leased_by = $3
    WHERE id = ANY (ARRAY(SELECT id FROM jobs
                          WHERE id = ANY($4::bigint[])
                            AND CASE WHEN state IN ('available', 'retryable')
                                     THEN TRUE ELSE FALSE END
                          FOR UPDATE SKIP LOCKED))
    RETURNING ",
    claimed_columns!("")
);

/// Running jobs per concurrency key.
const RUNNING_PER_KEY: &str = "
    SELECT concurrency_key, COUNT(*) FROM jobs
    WHERE concurrency_key IS NOT NULL AND state = 'running'
    GROUP BY concurrency_key";

/// The largest limit among each key's waiting jobs ($1: the keys; NULL:
/// none waits): a key is saturated for all of them once that many run.
/// One backward step of `jobs_keyed_waiting` per key, as SQLite's `MAX`
/// is, not an aggregate over every waiting job of the key.
const MAX_WAITING_LIMITS: &str = "
    SELECT k, (SELECT j.concurrency_limit FROM jobs j
               WHERE j.concurrency_key = k
                 AND j.state IN ('available', 'retryable')
                 AND j.concurrency_limit IS NOT NULL
               ORDER BY j.concurrency_limit DESC
               LIMIT 1)
    FROM unnest($1::text[]) AS k";

const SELECT_PAUSES: &str = "SELECT scope, name FROM pauses ORDER BY scope, name";

/// Breakers that hold jobs back, with whether their probe still runs.
const ACTIVE_BREAKERS: &str = "
    SELECT b.kind, b.state, b.retry_at,
           EXISTS (SELECT 1 FROM jobs j
                   WHERE j.id = b.probe_job AND j.epoch = b.probe_epoch
                     AND j.state = 'running')
    FROM breakers b WHERE b.state <> 'closed'";

const SELECT_TATS: &str = "SELECT kind, tat FROM rate_limits WHERE kind = ANY($1::text[])";

const UPSERT_TAT: &str = "
    INSERT INTO rate_limits (kind, tat) VALUES ($1, $2)
    ON CONFLICT (kind) DO UPDATE SET tat = excluded.tat";

/// The columns [`breaker_record`] reads, in order.
macro_rules! breaker_columns {
    ($t:literal) => {
        concat!(
            $t,
            "kind, ",
            $t,
            "state, ",
            $t,
            "failures, ",
            $t,
            "streak_started_at, ",
            $t,
            "opened_at, ",
            $t,
            "retry_at, ",
            $t,
            "probe_job, ",
            $t,
            "probe_epoch, ",
            $t,
            "trips, ",
            $t,
            "last_error, ",
            $t,
            "updated_at"
        )
    };
}

/// The columns of a job row after a transition out of running, in the
/// order [`Moved::read`] reads them (the output only with a callback URL).
macro_rules! moved_columns {
    ($t:literal) => {
        concat!(
            $t,
            "id, ",
            $t,
            "callback_url, ",
            $t,
            "kind, ",
            $t,
            "state, ",
            $t,
            "attempt, ",
            $t,
            "idempotency_key, ",
            $t,
            "epoch, ",
            $t,
            "finalized_at, CASE WHEN ",
            $t,
            "callback_url IS NOT NULL THEN ",
            $t,
            "output END, ",
            $t,
            "error"
        )
    };
}

/// The simple write-backs: each row of the arrays moves its job out of
/// running, fenced on id ($1), epoch ($2), state and the lease having
/// expired by $3 (the worker passes the maximum; the rescuer `now`, so that
/// a lease renewed since it looked is not taken), and the jobs that moved
/// get their attempt rows. $4 the transition (`complete`: → completed with
/// output $5; `retry`: → retryable with error $6 at $7; `discard`: →
/// discarded with error $6; `release`: → available now, the attempt given
/// back), $8 now (the attempt's end); the attempt's number $9, outcome
/// $10, error $11, fuel $12, start $13, duration $14, component $15 and
/// recording $16, host $17. Returns the jobs that moved, each with its kind's
/// breaker (NULLs: none). `j.id = ANY($1)` finds the jobs through the
/// primary key, and the state is fenced with a CASE, which no plan can
/// answer from `jobs_lease`: a plain `state = 'running'` lets plans read
/// all of that index (every job that ran leaves a dead entry there until
/// vacuumed) to intersect it with the ids.
const FINISH_BATCH: &str = concat!(
    "
    WITH f AS MATERIALIZED (
        SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[],
                             $5::text[], $6::text[], $7::bigint[], $8::bigint[],
                             $9::integer[], $10::text[], $11::text[], $12::bigint[],
                             $13::bigint[], $14::bigint[], $15::text[], $16::bytea[],
                             $17::text[])
            AS f(id, epoch, bound, op, output, error, run_at, now, attempt,
                 outcome, attempt_error, fuel_used, started_at, duration_ms,
                 component_hash, recording, host)
    ),
    moved AS (
        UPDATE jobs j
        SET state = CASE f.op WHEN 'complete' THEN 'completed'
                              WHEN 'retry' THEN 'retryable'
                              WHEN 'discard' THEN 'discarded'
                              ELSE 'available' END,
            output = CASE f.op WHEN 'complete' THEN f.output ELSE j.output END,
            error = CASE f.op WHEN 'complete' THEN NULL
                              WHEN 'release' THEN j.error
                              ELSE f.error END,
            finalized_at = CASE WHEN f.op IN ('complete', 'discard') THEN f.now
                                ELSE j.finalized_at END,
            run_at = CASE f.op WHEN 'retry' THEN f.run_at
                               WHEN 'release' THEN f.now
                               ELSE j.run_at END,
            attempt = CASE f.op WHEN 'release' THEN j.attempt - 1 ELSE j.attempt END,
            lease_expires_at = NULL,
            leased_by = NULL
        FROM f
        WHERE j.id = ANY($1::bigint[])
          AND j.id = f.id AND j.epoch = f.epoch
          AND CASE WHEN j.state = 'running' THEN TRUE ELSE FALSE END
          AND j.lease_expires_at <= f.bound
        RETURNING ",
    moved_columns!("j."),
    "
    ),
    recorded AS (
        INSERT INTO attempts (job_id, epoch, attempt, outcome, error, fuel_used,
                              started_at, ended_at, duration_ms, component_hash,
                              recording, host)
        SELECT f.id, f.epoch, f.attempt, f.outcome, f.attempt_error, f.fuel_used,
               f.started_at, f.now, f.duration_ms, f.component_hash, f.recording,
               f.host
        FROM f JOIN moved m ON m.id = f.id
    )
    SELECT m.*, ",
    breaker_columns!("b."),
    "
    FROM moved m LEFT JOIN breakers b ON b.kind = m.kind"
);

/// The fence shared by the conflict write-backs: $1 id, $2 epoch, $3 the
/// lease bound (see [`FINISH_BATCH`]).
macro_rules! fenced {
    ($set:literal) => {
        concat!(
            "UPDATE jobs SET ",
            $set,
            ", lease_expires_at = NULL, leased_by = NULL
             WHERE id = $1 AND epoch = $2 AND state = 'running'
               AND lease_expires_at <= $3
             RETURNING ",
            moved_columns!("")
        )
    };
}

/// running → retryable after a kv conflict, giving the attempt back, while
/// the job's conflict budget lasts ($7). A job without a concurrency key
/// gets $6, the conflicting kv key's, with limit 1: the losers on one key
/// run one at a time from then on. $4 error, $5 next run_at.
const CONFLICT_RETRY: &str = "
    UPDATE jobs
    SET state = 'retryable', error = $4, run_at = $5,
        attempt = attempt - 1, conflicts = conflicts + 1,
        concurrency_limit = CASE WHEN concurrency_key IS NULL THEN 1
                                 ELSE concurrency_limit END,
        concurrency_key = COALESCE(concurrency_key, $6),
        lease_expires_at = NULL, leased_by = NULL
    WHERE id = $1 AND epoch = $2 AND state = 'running'
      AND lease_expires_at <= $3 AND conflicts < $7
    RETURNING id";

/// running → retryable after a kv conflict past the budget: the attempt is
/// used up. $4 error, $5 next run_at.
const CONFLICT_RETRY_SPENT: &str =
    fenced!("state = 'retryable', error = $4, run_at = $5, conflicts = conflicts + 1");

/// running → discarded after a kv conflict on the last attempt, past the
/// budget. $4 error, $5 now.
const CONFLICT_DISCARD: &str =
    fenced!("state = 'discarded', error = $4, finalized_at = $5, conflicts = conflicts + 1");

/// The attempt row that goes with every transition out of running.
const INSERT_ATTEMPT: &str = "
    INSERT INTO attempts (job_id, epoch, attempt, outcome, error, fuel_used,
                          started_at, ended_at, duration_ms, component_hash,
                          recording, host)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// Completion callbacks, one per row of the arrays: $1 topic, $2 job,
/// $3 URL, $4 body, $5 key, $6 now.
const INSERT_CALLBACKS: &str = "
    INSERT INTO outbox (job_id, topic, url, body, idempotency_key, state,
                        next_attempt_at, created_at)
    SELECT e.job_id, $1, e.url, e.body, e.key, 'pending', e.now, e.now
    FROM unnest($2::bigint[], $3::text[], $4::bytea[], $5::text[], $6::bigint[])
        AS e(job_id, url, body, key, now)";

/// outbox: (none) → pending, committed with the job's completion, in emit
/// order. $1 job, $2 now, then per event $3 topic, $4 URL, $5 body, $6 key.
const INSERT_EVENTS: &str = "
    INSERT INTO outbox (job_id, topic, url, body, idempotency_key, state,
                        next_attempt_at, created_at)
    SELECT $1, e.topic, e.url, e.body, e.key, 'pending', $2, $2
    FROM unnest($3::text[], $4::text[], $5::bytea[], $6::text[])
        AS e(topic, url, body, key)";

/// The audit of a completion's kv writes: job $1, epoch $2, each key of
/// $4 in namespace $3 at the version the completion left it.
const LOG_KV_WRITES: &str = "
    INSERT INTO kv_writes (job_id, epoch, namespace, key, version, deleted)
    SELECT $1, $2, namespace, key, version, value IS NULL
    FROM kv WHERE namespace = $3 AND key = ANY($4::text[])";

/// The versions of the keys ($2) of namespace $1 that have a row.
const KV_VERSIONS: &str = "
    SELECT key, version FROM kv WHERE namespace = $1 AND key = ANY($2::text[])";

/// Commit of a completion's buffered kv writes (a NULL value deletes),
/// distinct keys: $1 namespace, $2 keys, $3 values, $4 now.
const KV_PUT_MANY: &str = "
    INSERT INTO kv (namespace, key, value, version, updated_at)
    SELECT $1, w.key, w.value, 1, $4
    FROM unnest($2::text[], $3::bytea[]) AS w(key, value)
    ON CONFLICT (namespace, key) DO UPDATE
    SET value = excluded.value, version = kv.version + 1,
        updated_at = excluded.updated_at";

/// One buffered kv write. $1 namespace, $2 key, $3 value, $4 now.
const KV_PUT: &str = "
    INSERT INTO kv (namespace, key, value, version, updated_at)
    VALUES ($1, $2, $3, 1, $4)
    ON CONFLICT (namespace, key) DO UPDATE
    SET value = excluded.value, version = kv.version + 1,
        updated_at = excluded.updated_at";

const SELECT_BREAKERS_OF: &str = concat!(
    "SELECT ",
    breaker_columns!(""),
    " FROM breakers WHERE kind = ANY($1::text[])"
);

/// The breakers about to change ($1), locked in kind order.
const LOCK_BREAKERS: &str = concat!(
    "SELECT ",
    breaker_columns!(""),
    " FROM breakers WHERE kind = ANY($1::text[]) ORDER BY kind FOR UPDATE"
);

/// Rows for breakers about to be written that have none ($1, in kind
/// order): returns those this transaction inserted (another's insert wins
/// a race, and is then locked and read instead). $2 now.
const INSERT_BREAKER_PLACEHOLDERS: &str = "
    INSERT INTO breakers (kind, state, updated_at)
    SELECT k, 'closed', $2 FROM unnest($1::text[]) AS k
    ON CONFLICT (kind) DO NOTHING
    RETURNING kind";

const DELETE_BREAKER: &str = "DELETE FROM breakers WHERE kind = $1";

/// A breaker's new state, written whole: computed from the row as locked
/// in the same transaction.
const UPSERT_BREAKER: &str = "
    INSERT INTO breakers (kind, state, failures, streak_started_at, opened_at,
                          retry_at, probe_job, probe_epoch, trips, last_error,
                          updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (kind) DO UPDATE SET
        state = excluded.state, failures = excluded.failures,
        streak_started_at = excluded.streak_started_at,
        opened_at = excluded.opened_at, retry_at = excluded.retry_at,
        probe_job = excluded.probe_job, probe_epoch = excluded.probe_epoch,
        trips = excluded.trips, last_error = excluded.last_error,
        updated_at = excluded.updated_at";

/// heartbeat: running → running with a later lease, for every fence in the
/// arrays ($1 ids, $2 epochs) still running; returns those. $3 new expiry.
/// (The state as a CASE for the reason given at [`FINISH_BATCH`].)
const EXTEND_LEASES: &str = "
    UPDATE jobs j SET lease_expires_at = $3
    FROM unnest($1::bigint[], $2::bigint[]) AS f(id, epoch)
    WHERE j.id = ANY($1::bigint[])
      AND j.id = f.id AND j.epoch = f.epoch
      AND CASE WHEN j.state = 'running' THEN TRUE ELSE FALSE END
    RETURNING j.id, j.epoch";

/// The rescuer's scan. $1 now, $2 limit.
const EXPIRED_LEASES: &str = "
    SELECT id, epoch, kind, attempt, max_attempts, attempted_at, leased_by FROM jobs
    WHERE state = 'running' AND lease_expires_at <= $1
    ORDER BY lease_expires_at
    LIMIT $2";

#[cfg(test)]
mod tests {
    //! The hot path against a PostgreSQL database of each test's own (on
    //! the server `JOBBOX_TEST_PG` names, default the local one); a test
    //! says why and passes if the server is unreachable.

    use std::sync::Arc;
    use std::time::Duration;

    use jobbox_tests::pg;

    use super::*;
    use crate::job::NewEvent;
    use crate::policy::RateLimit;
    use crate::store::Store;
    use crate::store::postgres::{PgOptions, PgStore};

    /// A store on a fresh database, and a runtime to drive it; closes the
    /// store and drops the database when dropped.
    struct Fixture {
        store: Arc<PgStore>,
        rt: tokio::runtime::Runtime,
        db: pg::Database,
    }

    impl Fixture {
        fn new() -> Option<Fixture> {
            if let Err(e) = pg::reachable() {
                eprintln!("skipped: {e}");
                return None;
            }
            let db = pg::Database::create();
            let store = Arc::new(PgStore::open(&PgOptions::new(db.url())).unwrap());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            Some(Fixture { store, rt, db })
        }

        /// Another store on the same database (another host).
        fn other(&self) -> Arc<PgStore> {
            Arc::new(PgStore::open(&PgOptions::new(self.db.url())).unwrap())
        }

        fn run<T>(&self, f: impl Future<Output = T>) -> T {
            self.rt.block_on(f)
        }

        fn claim(&self, req: ClaimRequest) -> Claimed {
            self.run(self.store.claim(req)).unwrap()
        }

        fn finish(&self, f: Finish) -> Result<FinishOutcome> {
            self.run(self.store.finish(f))
        }

        fn enqueue(&self, jobs: Vec<NewJob>) -> Vec<JobId> {
            self.run(self.store.enqueue(jobs, t0()))
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect()
        }

        fn count(&self, sql: &str) -> i64 {
            self.db.query_i64(sql).unwrap()
        }

        /// The first column of the first row of `sql`, as text.
        fn text(&self, sql: &str) -> Option<String> {
            let url = self.db.url().to_owned();
            pg::off_runtime(move || {
                pg::connect(&url)
                    .unwrap()
                    .query_one(sql, &[])
                    .unwrap()
                    .get::<_, Option<String>>(0)
            })
        }

        fn state(&self, id: JobId) -> String {
            self.text(&format!("SELECT state FROM jobs WHERE id = {id}"))
                .unwrap()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = self.rt.block_on(self.store.close());
        }
    }

    fn t0() -> Timestamp {
        Timestamp(1_700_000_000_000)
    }

    fn job(kind: &str, payload: &str) -> NewJob {
        NewJob::new(kind, payload).unwrap()
    }

    fn req(now: Timestamp, limit: u32) -> ClaimRequest {
        ClaimRequest {
            now,
            limit,
            exclude_kinds: Vec::new(),
            lease: Duration::from_secs(30),
            worker: "w".into(),
            rates: Vec::new(),
        }
    }

    fn ids(c: &Claimed) -> Vec<JobId> {
        c.jobs.iter().map(|j| j.id).collect()
    }

    fn failed(job: &ClaimedJob, now: Timestamp, count: Option<BreakerCount>) -> Finish {
        let mut f = Finish::completed(job, String::new(), now);
        f.attempt.outcome = AttemptOutcome::RetryableError;
        f.attempt.error = Some("boom".into());
        f.transition = Transition::Retry {
            run_at: now,
            error: "boom".into(),
        };
        f.breaker = count;
        f
    }

    fn count(kind: &str, failed: bool) -> BreakerCount {
        BreakerCount {
            kind: kind.into(),
            failed,
            threshold: 2,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(10),
            error: failed.then(|| "boom".to_owned()),
        }
    }

    #[test]
    fn claims_in_order_and_fences_every_write_back() {
        let Some(fx) = Fixture::new() else { return };
        let now = t0();
        let mut first = job("echo", r#"{"n":1}"#);
        first.priority = -1;
        let mut later = job("echo", r#"{"n":3}"#);
        later.run_at = Some(now.plus(Duration::from_secs(3600)));
        let id = fx.enqueue(vec![
            job("echo", r#"{"n":2}"#),
            first,
            later,
            job("skip", "{}"),
        ]);
        let mut r = req(now, 10);
        r.exclude_kinds = vec!["skip".into()];
        let claimed = fx.claim(r);
        assert_eq!(ids(&claimed), vec![id[1], id[0]]);
        assert!(claimed.jobs.iter().all(|j| j.epoch == 1 && j.attempt == 1));
        assert_eq!(
            claimed.jobs[0].idempotency_key,
            format!("jobbox-job-{}", id[1])
        );
        assert!(claimed.wake_at.is_none() && claimed.half_opened.is_empty());
        assert!(fx.claim(req(now, 10)).jobs.iter().all(|j| j.kind == "skip"));

        let (a, b) = (&claimed.jobs[0], &claimed.jobs[1]);
        let mut done = Finish::completed(a, r#"{"ok": true}"#.into(), now);
        done.attempt.component_hash = Some("abc".into());
        done.attempt.recording = Some(vec![1, 2, 3]);
        done.attempt.fuel_used = Some(7);
        let out = fx.finish(done.clone()).unwrap();
        assert_eq!(
            (out.fenced, out.next),
            (Fenced::Applied, JobState::Completed)
        );
        assert_eq!(fx.finish(done).unwrap().fenced, Fenced::FencedOut);
        assert_eq!(fx.state(a.id), "completed");
        assert_eq!(
            fx.text(&format!(
                "SELECT outcome || ' ' || component_hash || ' ' || length(recording) || ' ' \
                 || fuel_used FROM attempts WHERE job_id = {}",
                a.id
            ))
            .as_deref(),
            Some("completed abc 3 7")
        );
        // Releasing gives the attempt back.
        let mut release = Finish::completed(b, String::new(), now);
        release.attempt.outcome = AttemptOutcome::HostShutdown;
        release.transition = Transition::Release;
        assert_eq!(fx.finish(release).unwrap().next, JobState::Available);
        let again = fx.claim(req(now, 1));
        assert_eq!(ids(&again), vec![b.id]);
        assert_eq!((again.jobs[0].attempt, again.jobs[0].epoch), (1, 2));
        // An old epoch is fenced out.
        assert_eq!(
            fx.finish(Finish::completed(b, String::new(), now))
                .unwrap()
                .fenced,
            Fenced::FencedOut
        );
        assert_eq!(fx.count("SELECT count(*) FROM attempts"), 2);
    }

    #[test]
    fn write_backs_of_one_group_are_each_fenced() {
        let Some(fx) = Fixture::new() else { return };
        let now = t0();
        let n = 50;
        fx.enqueue(
            (0..n)
                .map(|i| job("echo", &format!("{{\"i\":{i}}}")))
                .collect(),
        );
        let claimed = fx.claim(req(now, n));
        assert_eq!(claimed.jobs.len(), n as usize);
        // All at once (one group, mostly), each twice, some with a stale
        // epoch: exactly one write-back per job applies.
        let mut all = Vec::new();
        for j in &claimed.jobs {
            let mut stale = j.clone();
            stale.epoch += 1;
            all.push(Finish::completed(j, "{}".into(), now));
            all.push(Finish::completed(&stale, "{}".into(), now));
            all.push(failed(j, now, None));
        }
        let outcomes = fx.run(futures_util::future::join_all(
            all.into_iter().map(|f| fx.store.finish(f)),
        ));
        let applied = outcomes
            .iter()
            .filter(|o| o.as_ref().unwrap().fenced == Fenced::Applied)
            .count();
        assert_eq!(applied, n as usize);
        assert_eq!(fx.count("SELECT count(*) FROM attempts"), i64::from(n));
        assert_eq!(
            fx.count("SELECT count(*) FROM jobs WHERE state = 'running'"),
            0
        );
    }

    #[test]
    fn leases_extend_and_expire_to_the_rescuer() {
        let Some(fx) = Fixture::new() else { return };
        let now = t0();
        let id = fx.enqueue(vec![job("echo", "{}"), job("echo", "{}")]);
        let claimed = fx.claim(req(now, 2));
        let (a, b) = (&claimed.jobs[0], &claimed.jobs[1]);
        let mut stale = b.fence();
        stale.epoch += 1;
        let later = now.plus(Duration::from_secs(60));
        let held = fx
            .run(fx.store.extend_leases(vec![a.fence(), stale], later))
            .unwrap();
        assert_eq!(held, vec![Fenced::Applied, Fenced::FencedOut]);
        let expired = fx
            .run(
                fx.store
                    .expired_leases(now.plus(Duration::from_secs(31)), 10),
            )
            .unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].fence, b.fence());
        assert_eq!((expired[0].attempt, expired[0].attempted_at), (1, now));
        let retry = Transition::Retry {
            run_at: now,
            error: "lease expired".into(),
        };
        // A rescue at a time the lease had not expired is fenced out.
        let early = fx
            .run(fx.store.rescue(expired[0].clone(), retry.clone(), now))
            .unwrap();
        assert_eq!(early, Fenced::FencedOut);
        let at = now.plus(Duration::from_secs(31));
        let rescued = fx
            .run(fx.store.rescue(expired[0].clone(), retry.clone(), at))
            .unwrap();
        assert_eq!(rescued, Fenced::Applied);
        assert_eq!(
            fx.run(fx.store.rescue(expired[0].clone(), retry, at))
                .unwrap(),
            Fenced::FencedOut
        );
        assert_eq!(fx.state(id[1]), "retryable");
        assert_eq!(
            fx.text("SELECT outcome FROM attempts").as_deref(),
            Some("lease_expired")
        );
        // The worker whose lease was taken is fenced out.
        assert_eq!(
            fx.finish(Finish::completed(b, "{}".into(), at))
                .unwrap()
                .fenced,
            Fenced::FencedOut
        );
    }

    #[test]
    fn concurrency_keys_pauses_and_rate_limits_hold_jobs_back() {
        let Some(fx) = Fixture::new() else { return };
        let now = t0();
        let keyed = |k: &str, limit: u32| {
            let mut j = job("echo", "{}");
            j.concurrency_key = Some(k.into());
            j.concurrency_limit = Some(limit);
            j
        };
        let id = fx.enqueue(vec![
            keyed("a", 1),
            keyed("a", 1),
            keyed("b", 2),
            keyed("b", 2),
            keyed("b", 2),
            job("echo", "{}"),
        ]);
        let claimed = fx.claim(req(now, 10));
        assert_eq!(ids(&claimed), vec![id[0], id[2], id[3], id[5]]);
        assert!(fx.claim(req(now, 10)).jobs.is_empty());
        fx.finish(Finish::completed(&claimed.jobs[0], "{}".into(), now))
            .unwrap();
        assert_eq!(ids(&fx.claim(req(now, 10))), vec![id[1]]);

        // Pauses.
        let id = fx.enqueue(vec![job("paused", "{}"), job("echo", "{}")]);
        fx.db
            .execute(
                "INSERT INTO pauses (scope, name, note, paused_at) VALUES ('kind', 'paused', '', 0)",
            )
            .unwrap();
        assert_eq!(ids(&fx.claim(req(now, 10))), vec![id[1]]);
        fx.db.execute("DELETE FROM pauses").unwrap();
        assert_eq!(ids(&fx.claim(req(now, 10))), vec![id[0]]);

        // Rate limits: a burst of 2, then one a minute.
        let id = fx.enqueue((0..4).map(|_| job("rated", "{}")).collect());
        let mut r = req(now, 10);
        r.rates = vec![(
            "rated".into(),
            RateLimit {
                count: 1,
                period: Duration::from_secs(60),
                burst: 2,
            },
        )];
        let first = fx.claim(r.clone());
        assert_eq!(ids(&first), vec![id[0], id[1]]);
        assert_eq!(first.wake_at, Some(now.plus(Duration::from_secs(60))));
        let none = fx.claim(r.clone());
        assert!(none.jobs.is_empty());
        assert_eq!(none.wake_at, Some(now.plus(Duration::from_secs(60))));
        r.now = now.plus(Duration::from_secs(60));
        assert_eq!(ids(&fx.claim(r)), vec![id[2]]);
    }

    #[test]
    fn jobs_held_back_over_many_pages_do_not_hide_the_rest() {
        let Some(fx) = Fixture::new() else { return };
        let now = t0();
        let mut jobs: Vec<NewJob> = (0..150).map(|_| job("rated", "{}")).collect();
        jobs.extend((0..150).map(|_| {
            let mut j = job("keyed", "{}");
            j.concurrency_key = Some("k".into());
            j
        }));
        jobs.push(job("echo", "{}"));
        let id = fx.enqueue(jobs);
        let mut r = req(now, 5);
        r.rates = vec![(
            "rated".into(),
            RateLimit {
                count: 1,
                period: Duration::from_secs(1),
                burst: 2,
            },
        )];
        let claimed = fx.claim(r);
        assert_eq!(ids(&claimed), vec![id[0], id[1], id[150], id[300]]);
        assert_eq!(claimed.wake_at, Some(now.plus(Duration::from_secs(1))));
    }

    #[test]
    fn claims_of_two_hosts_never_share_a_job_or_exceed_a_key() {
        let Some(fx) = Fixture::new() else { return };
        let other = fx.other();
        let now = t0();
        let mut jobs = Vec::new();
        for i in 0..60 {
            let mut j = job("echo", &format!("{{\"i\":{i}}}"));
            if i % 3 == 0 {
                j.concurrency_key = Some(format!("k{}", i % 2));
                j.concurrency_limit = Some(2);
            }
            jobs.push(j);
        }
        fx.enqueue(jobs);
        let stores = [Arc::clone(&fx.store), Arc::clone(&other)];
        // Many claims at once from both, nothing finishing: every job is
        // claimed once, and at most two of each key.
        let claimed: Vec<ClaimedJob> = fx.run(async {
            let claims = stores.iter().cycle().take(16).map(|s| s.claim(req(now, 7)));
            futures_util::future::join_all(claims)
                .await
                .into_iter()
                .flat_map(|c| c.unwrap().jobs)
                .collect()
        });
        let distinct: HashSet<JobId> = claimed.iter().map(|j| j.id).collect();
        assert_eq!(distinct.len(), claimed.len());
        // 40 unkeyed, and 2 of each of the two keys.
        assert_eq!(claimed.len(), 44);
        assert_eq!(
            fx.count(
                "SELECT max(n) FROM (SELECT count(*) AS n FROM jobs \
                 WHERE state = 'running' AND concurrency_key IS NOT NULL \
                 GROUP BY concurrency_key) r"
            ),
            2
        );
        let _ = fx.run(other.close());
    }

    /// Two hosts' claim and finish cycles on keyed jobs: what is running of
    /// a key, as committed, never exceeds its limit, watched throughout
    /// from a connection of its own.
    #[test]
    fn running_jobs_of_a_key_never_exceed_its_limit_across_two_hosts() {
        let Some(fx) = Fixture::new() else { return };
        let other = fx.other();
        let mut jobs = Vec::new();
        for i in 0..12 {
            let keyed = |key: &str, limit| {
                let mut j = job("echo", &format!("{{\"i\":{i}}}"));
                j.concurrency_key = Some(key.into());
                j.concurrency_limit = Some(limit);
                j
            };
            jobs.push(keyed("one", 1));
            jobs.push(keyed("two", 2));
            jobs.push(job("echo", &format!("{{\"free\":{i}}}")));
        }
        fx.enqueue(jobs);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let url = fx.db.url().to_owned();
        let watching = Arc::clone(&done);
        let watcher = std::thread::spawn(move || {
            let mut c = pg::connect(&url).unwrap();
            let mut worst = 0i64;
            let mut looks = 0;
            while !watching.load(std::sync::atomic::Ordering::Relaxed) {
                let over: i64 = c
                    .query_one(
                        "SELECT COALESCE(MAX(n - lim), -99) FROM (
                             SELECT count(*) AS n, MAX(concurrency_limit) AS lim
                             FROM jobs WHERE state = 'running'
                               AND concurrency_key IS NOT NULL
                             GROUP BY concurrency_key) r",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                worst = worst.max(over);
                looks += 1;
            }
            (worst, looks)
        });
        let stores = [Arc::clone(&fx.store), Arc::clone(&other)];
        fx.run(async {
            let mut hosts = Vec::new();
            for s in &stores {
                let s = Arc::clone(s);
                hosts.push(tokio::spawn(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    loop {
                        let free = 16 - tasks.len() as u32;
                        let now = crate::time::Clock::now(&crate::time::SystemClock);
                        let claimed = s.claim(req(now, free)).await.unwrap();
                        for j in claimed.jobs {
                            let s = Arc::clone(&s);
                            tasks.spawn(async move {
                                tokio::time::sleep(Duration::from_millis(40)).await;
                                let now = crate::time::Clock::now(&crate::time::SystemClock);
                                s.finish(Finish::completed(&j, "{}".into(), now))
                                    .await
                                    .unwrap();
                            });
                        }
                        if tasks.is_empty() {
                            let left = s.claim(req(now, 0)).await.unwrap();
                            assert!(left.jobs.is_empty());
                            break;
                        }
                        tasks.join_next().await.unwrap().unwrap();
                    }
                    while let Some(r) = tasks.join_next().await {
                        r.unwrap();
                    }
                }));
            }
            for h in hosts {
                h.await.unwrap();
            }
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (worst, looks) = watcher.join().unwrap();
        assert!(looks > 10, "the watcher looked {looks} times");
        assert!(worst <= 0, "a key ran {worst} over its limit");
        assert_eq!(
            fx.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
            36
        );
        let _ = fx.run(other.close());
    }

    #[test]
    fn a_breaker_opens_probes_and_closes() {
        let Some(fx) = Fixture::new() else { return };
        let now = t0();
        fx.enqueue((0..4).map(|_| job("flaky", "{}")).collect());
        let claimed = fx.claim(req(now, 2));
        let first = fx
            .finish(failed(&claimed.jobs[0], now, Some(count("flaky", true))))
            .unwrap();
        assert_eq!(first.breaker, None);
        let opened = fx
            .finish(failed(&claimed.jobs[1], now, Some(count("flaky", true))))
            .unwrap();
        let change = opened.breaker.unwrap();
        assert_eq!(
            (change.from, change.to),
            (BreakerState::Closed, BreakerState::Open)
        );
        let retry_at = now.plus(Duration::from_secs(10));
        assert_eq!(change.retry_at, Some(retry_at));

        let held = fx.claim(req(now, 10));
        assert!(held.jobs.is_empty());
        assert_eq!(held.wake_at, Some(retry_at));
        let probe = fx.claim(req(retry_at, 10));
        assert_eq!(probe.jobs.len(), 1);
        assert_eq!(probe.half_opened, vec!["flaky".to_owned()]);
        assert_eq!(
            fx.text("SELECT state FROM breakers").as_deref(),
            Some("half_open")
        );
        assert!(fx.claim(req(retry_at, 10)).jobs.is_empty());
        let mut ok = Finish::completed(&probe.jobs[0], "{}".into(), retry_at);
        ok.breaker = Some(count("flaky", false));
        let closed = fx.finish(ok).unwrap().breaker.unwrap();
        assert_eq!(
            (closed.from, closed.to),
            (BreakerState::HalfOpen, BreakerState::Closed)
        );
        assert_eq!(fx.claim(req(retry_at, 10)).jobs.len(), 3);
        // A success on a closed breaker writes nothing.
        let before = fx.text("SELECT updated_at::text FROM breakers");
        let claimed = fx.claim(req(retry_at, 10));
        assert!(claimed.jobs.is_empty());
        assert_eq!(fx.text("SELECT updated_at::text FROM breakers"), before);
    }

    #[test]
    fn completions_commit_kv_and_events_and_check_their_reads() {
        let Some(fx) = Fixture::new() else { return };
        let now = t0();
        fx.enqueue((0..4).map(|_| job("kv", "{}")).collect());
        let claimed = fx.claim(req(now, 4));
        let effects = |reads: Vec<(String, Option<i64>)>, value: &str| Effects {
            namespace: "kv".into(),
            kv_reads: reads,
            kv_writes: vec![
                ("x".into(), Some(value.as_bytes().to_vec())),
                ("gone".into(), None),
            ],
            events: vec![NewEvent {
                topic: "t".into(),
                url: "http://sink/".into(),
                body: value.as_bytes().to_vec(),
                idempotency_key: format!("ev-{value}"),
            }],
        };
        let with = |j: &ClaimedJob, e: Effects| {
            let mut f = Finish::completed(j, "{}".into(), now);
            f.effects = e;
            f
        };
        let jobs = &claimed.jobs;
        let out = fx
            .finish(with(&jobs[0], effects(vec![("x".into(), None)], "1")))
            .unwrap();
        assert_eq!(out.fenced, Fenced::Applied);
        assert_eq!(
            fx.text(
                "SELECT convert_from(value, 'UTF8') || ' v' || version FROM kv WHERE key = 'x'"
            )
            .as_deref(),
            Some("1 v1")
        );
        assert_eq!(fx.count("SELECT count(*) FROM kv WHERE value IS NULL"), 1);
        assert_eq!(fx.count("SELECT count(*) FROM outbox"), 1);
        // A stale read: refused, nothing written.
        let err = fx
            .finish(with(&jobs[1], effects(vec![("x".into(), None)], "2")))
            .unwrap_err();
        assert!(matches!(err, StoreError::KvConflict { ref key } if key == "x"));
        assert_eq!(fx.state(jobs[1].id), "running");
        assert_eq!(fx.count("SELECT count(*) FROM outbox"), 1);
        // With a conflict retry: given back and serialized on the key.
        let mut f = with(&jobs[1], effects(vec![("x".into(), None)], "2"));
        f.on_conflict = Some(ConflictRetry {
            run_at: now,
            max_conflicts: 1,
            fallback_run_at: None,
        });
        let out = fx.finish(f.clone()).unwrap();
        assert_eq!(
            (out.outcome, out.next, out.conflict.as_deref()),
            (AttemptOutcome::KvConflict, JobState::Retryable, Some("x"))
        );
        assert_eq!(
            fx.text(&format!(
                "SELECT concurrency_key || ' ' || attempt || ' ' || conflicts FROM jobs WHERE id = {}",
                jobs[1].id
            ))
            .as_deref(),
            Some("kv:kv:x 0 1")
        );
        // Past the budget on the last attempt: discarded.
        let mut f = with(&jobs[2], effects(vec![("x".into(), None)], "3"));
        f.on_conflict = Some(ConflictRetry {
            run_at: now,
            max_conflicts: 0,
            fallback_run_at: None,
        });
        let out = fx.finish(f).unwrap();
        assert_eq!(out.next, JobState::Discarded);
        // A current read commits.
        let out = fx
            .finish(with(&jobs[3], effects(vec![("x".into(), Some(1))], "4")))
            .unwrap();
        assert_eq!(out.fenced, Fenced::Applied);
        assert_eq!(
            fx.text("SELECT version::text FROM kv WHERE key = 'x'")
                .as_deref(),
            Some("2")
        );
        assert_eq!(fx.count("SELECT count(*) FROM outbox"), 2);
    }

    #[test]
    fn a_final_transition_enqueues_the_callback() {
        let Some(fx) = Fixture::new() else { return };
        let now = t0();
        let mut with_cb = job("echo", "{}");
        with_cb.callback_url = Some("http://cb/".into());
        let mut plain_text = with_cb.clone();
        plain_text.idempotency_key = Some("k1".into());
        let id = fx.enqueue(vec![with_cb, plain_text, job("echo", "{}")]);
        let claimed = fx.claim(req(now, 3));
        let jobs = &claimed.jobs;
        fx.finish(Finish::completed(
            &jobs[0],
            "{ \"a\" : [1, 2] }".into(),
            now,
        ))
        .unwrap();
        let mut discard = failed(&jobs[1], now, None);
        discard.transition = Transition::Discard {
            error: "no \"way\"".into(),
        };
        fx.finish(discard).unwrap();
        fx.finish(Finish::completed(&jobs[2], "{}".into(), now))
            .unwrap();
        let body = |id: JobId| -> serde_json::Value {
            let text = fx
                .text(&format!(
                    "SELECT convert_from(body, 'UTF8') FROM outbox WHERE job_id = {id}"
                ))
                .unwrap();
            serde_json::from_str(&text).unwrap()
        };
        let done = body(id[0]);
        assert_eq!(done["output"], serde_json::json!({"a": [1, 2]}));
        assert_eq!(done["state"], "completed");
        assert_eq!(done["finalized_at"], now.0);
        assert_eq!(done["error"], serde_json::Value::Null);
        let gone = body(id[1]);
        assert_eq!(gone["state"], "discarded");
        assert_eq!(gone["error"], "no \"way\"");
        assert_eq!(gone["idempotency_key"], "k1");
        assert_eq!(
            fx.text(&format!(
                "SELECT idempotency_key FROM outbox WHERE job_id = {}",
                id[0]
            )),
            Some(format!("jobbox-job-{}:callback:1", id[0]))
        );
        assert_eq!(fx.count("SELECT count(*) FROM outbox"), 2);
    }

    /// The batch statement itself (the writer would fall back to one by
    /// one if it failed, which the tests above would not notice).
    #[test]
    fn one_statement_applies_a_batch_each_fenced_on_its_own() {
        let Some(fx) = Fixture::new() else { return };
        let now = t0();
        let mut cb = job("echo", "{}");
        cb.callback_url = Some("http://cb/".into());
        fx.enqueue(vec![
            cb,
            job("echo", "{}"),
            job("echo", "{}"),
            job("echo", "{}"),
        ]);
        let claimed = fx.claim(req(now, 4));
        let j = &claimed.jobs;
        let mut stale = j[3].clone();
        stale.epoch += 1;
        let mut release = Finish::completed(&j[2], String::new(), now);
        release.transition = Transition::Release;
        let finishes = [
            Finish::completed(&j[0], "\"text\"".into(), now),
            failed(&j[1], now, None),
            release,
            Finish::completed(&stale, "{}".into(), now),
        ];
        let url = fx.db.url().to_owned();
        let outcomes = pg::off_runtime(move || {
            let mut c = Conn::new(pg::connect(&url).unwrap());
            c.client().batch_execute("BEGIN").unwrap();
            let items: Vec<FinishItem<'_>> = finishes.iter().map(|f| (f, i64::MAX)).collect();
            let out = finish_batch(&mut c, &items).unwrap().outcomes;
            c.client().batch_execute("COMMIT").unwrap();
            out
        });
        let fenced: Vec<Fenced> = outcomes.iter().map(|o| o.fenced).collect();
        assert_eq!(
            fenced,
            [
                Fenced::Applied,
                Fenced::Applied,
                Fenced::Applied,
                Fenced::FencedOut
            ]
        );
        let next: Vec<JobState> = outcomes.iter().map(|o| o.next).collect();
        assert_eq!(
            next,
            [
                JobState::Completed,
                JobState::Retryable,
                JobState::Available,
                JobState::Running
            ]
        );
        assert_eq!(fx.count("SELECT count(*) FROM attempts"), 3);
        assert_eq!(
            fx.text(&format!(
                "SELECT state || ' ' || attempt || ' ' || coalesce(error, '-') FROM jobs WHERE id = {}",
                j[2].id
            ))
            .as_deref(),
            Some("available 0 -")
        );
        assert_eq!(
            fx.text(&format!("SELECT error FROM jobs WHERE id = {}", j[1].id))
                .as_deref(),
            Some("boom")
        );
        assert_eq!(
            fx.text("SELECT convert_from(body, 'UTF8') FROM outbox")
                .unwrap(),
            format!(
                "{{\"job_id\":{},\"kind\":\"echo\",\"state\":\"completed\",\"attempt\":1,\
                 \"idempotency_key\":\"jobbox-job-{}\",\"output\":\"text\",\"error\":null,\
                 \"finalized_at\":{}}}",
                j[0].id, j[0].id, now.0
            )
        );
    }

    /// The store floor on PostgreSQL: `JOBBOX_BENCH_N` jobs (default
    /// 20,000) claimed and completed like the executor does (claims for the
    /// free slots of 64, each completion a write-back of its own with a
    /// breaker count). `cargo test --release -p jobbox --lib
    /// store_floor -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark"]
    fn store_floor() {
        let Some(fx) = Fixture::new() else { return };
        let n: usize = std::env::var("JOBBOX_BENCH_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let store = Arc::clone(&fx.store);
        let secs = fx.run(async move {
            let template = job("echo", r#"{"hello":"world"}"#);
            for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
                let jobs = chunk.iter().map(|_| template.clone()).collect();
                store.enqueue(jobs, t0()).await.unwrap();
            }
            let slots = Arc::new(tokio::sync::Semaphore::new(64));
            let started = std::time::Instant::now();
            let mut done = 0;
            let mut tasks = tokio::task::JoinSet::new();
            while done < n {
                let free = slots.available_permits() as u32;
                if free == 0 {
                    drop(slots.acquire().await.unwrap());
                    continue;
                }
                let jobs = store.claim(req(t0(), free)).await.unwrap().jobs;
                if jobs.is_empty() {
                    tasks.join_next().await.unwrap().unwrap();
                    continue;
                }
                done += jobs.len();
                for j in jobs {
                    let permit = Arc::clone(&slots).acquire_owned().await.unwrap();
                    let store = Arc::clone(&store);
                    tasks.spawn(async move {
                        let mut f = Finish::completed(&j, j.payload.clone(), t0());
                        f.breaker = Some(count("echo", false));
                        let out = store.finish(f).await.unwrap();
                        assert_eq!(out.fenced, Fenced::Applied);
                        drop(permit);
                    });
                }
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
            started.elapsed().as_secs_f64()
        });
        assert_eq!(
            fx.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
            n as i64
        );
        eprintln!(
            "store floor: {n} jobs in {secs:.2}s: {:.0} jobs/s",
            n as f64 / secs
        );
    }

    #[test]
    fn minify_keeps_strings() {
        assert_eq!(
            minify("{ \"a b\" : [ 1 ,\n 2 ], \"c\\\" d\": \" x \" }"),
            "{\"a b\":[1,2],\"c\\\" d\":\" x \"}"
        );
    }
}
