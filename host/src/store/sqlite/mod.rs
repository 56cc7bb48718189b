//! The embedded default store: one SQLite file in WAL mode.
//!
//! All writes go through a single writer thread that owns the write
//! connection. It takes whatever commands have queued up, applies them in
//! one transaction (each inside its own savepoint, so one command's error
//! undoes only that command), commits, and only then answers each caller.
//! That is group commit: under load, many fenced write-backs share one
//! fsync, and no outcome is acknowledged before it is durable. Reads use
//! connections of their own ([`READERS`] of them), so operators' queries
//! never queue behind writes, and a long scan (the counts behind the
//! metrics, on a large database) does not hold up the other reads.

mod read;
mod schema;
mod sql;
mod write;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::{
    Bulk, ClaimRequest, Claimed, CleanReport, CleanRequest, FinishOutcome, JobEffects, QueueStats,
    StateCounts, Store, StoreError, StoreFuture,
};
use crate::job::{
    Enqueued, ExpiredLease, Fence, Fenced, Finish, JobAction, JobFilter, JobId, JobRecord,
    JobState, KvEntry, NewJob, Transition,
};
use crate::outbox::{ClaimedEvent, Delivery, EventRecord, EventState};
use crate::policy::{BreakerRecord, BreakerState, PauseRecord, PauseScope};
use crate::schedule::{ApplyReport, FireOutcome, ScheduleFire, ScheduleRecord, ScheduleUpsert};
use crate::time::Timestamp;

pub use schema::SCHEMA_VERSION;

/// How hard SQLite works to make each commit durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync the WAL on every commit: a committed outcome survives power
    /// loss. The default.
    #[default]
    Full,
    /// fsync only at checkpoints: a commit survives a crash of jobbox but
    /// the last commits may be lost on power loss.
    Normal,
}

impl std::str::FromStr for Synchronous {
    type Err = String;

    fn from_str(s: &str) -> Result<Synchronous, String> {
        match s {
            "full" => Ok(Synchronous::Full),
            "normal" => Ok(Synchronous::Normal),
            _ => Err(format!("expected \"full\" or \"normal\", got {s:?}")),
        }
    }
}

/// Settings for [`SqliteStore::open`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// How long a statement waits for another process's write lock.
    pub busy_timeout: Duration,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> SqliteOptions {
        SqliteOptions {
            path: path.into(),
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// Runs `f` until it does not fail with "busy" or "locked", for at most
/// `timeout`.
fn retry_busy<T>(
    timeout: Duration,
    mut f: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Read connections: one long scan leaves the others free.
const READERS: usize = 3;

/// The most commands one write transaction takes.
const MAX_GROUP: usize = 512;

/// A SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    /// Commands for the writer thread. `std::sync::mpsc` because the
    /// receiving side is a plain thread that blocks on it.
    writer: mpsc::Sender<Command>,
    /// The read connections. Std mutexes are enough: each is only locked
    /// inside `spawn_blocking`, for the length of one query.
    readers: Arc<[Mutex<Connection>]>,
    /// Joined by `close`, so that the write connection is closed (and the
    /// WAL checkpointed) before `close` returns.
    thread: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `opts.path` and applies
    /// any pending migrations.
    pub fn open(opts: &SqliteOptions) -> Result<SqliteStore, StoreError> {
        let mut conn = connect(opts)?;
        // Switching a new database to WAL can answer "locked" without
        // waiting on the busy handler while another process creates or
        // migrates it (a CLI command run as the host starts): wait here.
        retry_busy(opts.busy_timeout, || {
            conn.pragma_update(None, "journal_mode", "WAL")
        })?;
        retry_busy(opts.busy_timeout, || schema::migrate(&mut conn))?;
        let readers = (0..READERS)
            .map(|_| connect(opts).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;

        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("jobbox-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Backend(format!("spawning writer thread: {e}")))?;
        Ok(SqliteStore {
            writer: tx,
            readers: readers.into(),
            thread: Mutex::new(Some(thread)),
            path: opts.path.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `f` for the writer; resolves once its transaction committed.
    fn write<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op: WriteOp = Box::new(move |conn| {
            let result = match conn {
                Ok(conn) => f(conn),
                Err(e) => Err(e.clone()),
            };
            let failed = result.is_err();
            let reply: Reply = Box::new(move |commit| {
                let _ = tx.send(match commit {
                    Some(e) => Err(e.clone()),
                    None => result,
                });
            });
            (failed, reply)
        });
        let sent = self.writer.send(Command::Write(op));
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    /// Runs `f` on the read connection off the async runtime.
    fn read<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // The first free connection; if none is, wait for one.
                let conn = readers
                    .iter()
                    .find_map(|r| r.try_lock().ok())
                    .unwrap_or_else(|| {
                        let any = fastrand::usize(..readers.len());
                        readers[any].lock().unwrap_or_else(|p| p.into_inner())
                    });
                f(&conn)
            })
            .await
            .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
        })
    }
}

impl Store for SqliteStore {
    fn enqueue(&self, jobs: Vec<NewJob>, now: Timestamp) -> StoreFuture<'_, Vec<Enqueued>> {
        self.write(move |c| write::enqueue(c, &jobs, now))
    }

    fn claim(&self, req: ClaimRequest) -> StoreFuture<'_, Claimed> {
        self.write(move |c| write::claim(c, &req))
    }

    fn finish(&self, f: Finish) -> StoreFuture<'_, FinishOutcome> {
        self.write(move |c| write::finish(c, &f, i64::MAX))
    }

    fn extend_leases(&self, fences: Vec<Fence>, until: Timestamp) -> StoreFuture<'_, Vec<Fenced>> {
        self.write(move |c| write::extend_leases(c, &fences, until))
    }

    fn expired_leases(&self, now: Timestamp, limit: u32) -> StoreFuture<'_, Vec<ExpiredLease>> {
        self.read(move |c| write::expired_leases(c, now, limit))
    }

    fn rescue(
        &self,
        lease: ExpiredLease,
        transition: Transition,
        now: Timestamp,
    ) -> StoreFuture<'_, Fenced> {
        self.write(move |c| write::rescue(c, &lease, &transition, now))
    }

    fn retry_job(&self, id: JobId, now: Timestamp) -> StoreFuture<'_, JobState> {
        self.write(move |c| write::retry_job(c, id, now))
    }

    fn cancel_job(&self, id: JobId, now: Timestamp) -> StoreFuture<'_, JobState> {
        self.write(move |c| write::cancel_job(c, id, now))
    }

    fn retry_jobs(&self, filter: JobFilter, limit: u32, now: Timestamp) -> StoreFuture<'_, Bulk> {
        self.write(move |c| write::bulk(c, &filter, limit, now, true))
    }

    fn cancel_jobs(&self, filter: JobFilter, limit: u32, now: Timestamp) -> StoreFuture<'_, Bulk> {
        self.write(move |c| write::bulk(c, &filter, limit, now, false))
    }

    fn job(&self, id: JobId) -> StoreFuture<'_, Option<JobRecord>> {
        self.read(move |c| read::job(c, id))
    }

    fn list_jobs(&self, filter: JobFilter) -> StoreFuture<'_, Vec<JobRecord>> {
        self.read(move |c| read::list_jobs(c, &filter))
    }

    fn count_jobs(&self, filter: JobFilter, action: Option<JobAction>) -> StoreFuture<'_, u64> {
        self.read(move |c| read::count_jobs(c, &filter, action))
    }

    fn last_job_id(&self) -> StoreFuture<'_, Option<JobId>> {
        self.read(read::last_job_id)
    }

    fn job_effects(&self, id: JobId) -> StoreFuture<'_, Option<JobEffects>> {
        self.read(move |c| read::job_effects(c, id))
    }

    fn recording(
        &self,
        id: JobId,
        attempt: Option<u32>,
    ) -> StoreFuture<'_, Option<(u32, Vec<u8>)>> {
        self.read(move |c| read::recording(c, id, attempt))
    }

    fn counts(&self) -> StoreFuture<'_, StateCounts> {
        self.read(read::counts)
    }

    fn kv_get(&self, namespace: String, key: String) -> StoreFuture<'_, KvEntry> {
        self.read(move |c| read::kv_get(c, &namespace, &key))
    }

    fn kv_list(
        &self,
        namespace: String,
        prefix: String,
        limit: u32,
    ) -> StoreFuture<'_, Vec<(String, KvEntry)>> {
        self.read(move |c| read::kv_list(c, &namespace, &prefix, limit))
    }

    fn claim_events(
        &self,
        now: Timestamp,
        limit: u32,
        lease: Duration,
    ) -> StoreFuture<'_, Vec<ClaimedEvent>> {
        self.write(move |c| write::claim_events(c, now, limit, lease))
    }

    fn record_delivery(
        &self,
        id: i64,
        attempt: u32,
        delivery: Delivery,
        now: Timestamp,
    ) -> StoreFuture<'_, Fenced> {
        self.write(move |c| write::record_delivery(c, id, attempt, &delivery, now))
    }

    fn list_events(
        &self,
        state: Option<EventState>,
        before: Option<i64>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<EventRecord>> {
        self.read(move |c| read::list_events(c, state, before, limit))
    }

    fn retry_event(&self, id: i64, now: Timestamp) -> StoreFuture<'_, ()> {
        self.write(move |c| write::retry_event(c, id, now))
    }

    fn pending_events(&self) -> StoreFuture<'_, u64> {
        self.read(read::pending_events)
    }

    fn event_counts(&self) -> StoreFuture<'_, super::EventCounts> {
        self.read(read::event_counts)
    }

    fn apply_schedules(
        &self,
        schedules: Vec<ScheduleUpsert>,
        prune: bool,
        now: Timestamp,
    ) -> StoreFuture<'_, ApplyReport> {
        self.write(move |c| write::apply_schedules(c, &schedules, prune, now))
    }

    fn schedules(&self) -> StoreFuture<'_, Vec<ScheduleRecord>> {
        self.read(read::schedules)
    }

    fn schedule(&self, id: String) -> StoreFuture<'_, Option<ScheduleRecord>> {
        self.read(move |c| read::schedule(c, &id))
    }

    fn due_schedules(&self, now: Timestamp, limit: u32) -> StoreFuture<'_, Vec<ScheduleRecord>> {
        self.read(move |c| read::due_schedules(c, now, limit))
    }

    fn next_schedule_wake(&self) -> StoreFuture<'_, (Option<Timestamp>, bool)> {
        self.read(read::next_schedule_wake)
    }

    fn fire_schedule(&self, fire: ScheduleFire) -> StoreFuture<'_, FireOutcome> {
        self.write(move |c| write::fire_schedule(c, &fire))
    }

    fn fire_buffered(
        &self,
        id: String,
        version: i64,
        nominal: Timestamp,
        job: NewJob,
        now: Timestamp,
    ) -> StoreFuture<'_, FireOutcome> {
        self.write(move |c| write::fire_buffered(c, &id, version, nominal, &job, now))
    }

    fn trigger_schedule(
        &self,
        id: String,
        job: NewJob,
        now: Timestamp,
    ) -> StoreFuture<'_, Enqueued> {
        self.write(move |c| write::trigger_schedule(c, &id, &job, now))
    }

    fn pause_schedule(&self, id: String, note: String, now: Timestamp) -> StoreFuture<'_, bool> {
        self.write(move |c| write::pause_schedule(c, &id, &note, now))
    }

    fn resume_schedule(
        &self,
        id: String,
        next_fire_at: Option<Timestamp>,
        next_run_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreFuture<'_, bool> {
        self.write(move |c| write::resume_schedule(c, &id, next_fire_at, next_run_at, now))
    }

    fn delete_schedule(&self, id: String) -> StoreFuture<'_, ()> {
        self.write(move |c| write::delete_schedule(c, &id))
    }

    fn breakers(&self) -> StoreFuture<'_, Vec<BreakerRecord>> {
        self.read(read::breakers)
    }

    fn reset_breaker(&self, kind: String, now: Timestamp) -> StoreFuture<'_, Option<BreakerState>> {
        self.write(move |c| write::reset_breaker(c, &kind, now))
    }

    fn pause(
        &self,
        scope: PauseScope,
        name: String,
        note: String,
        now: Timestamp,
    ) -> StoreFuture<'_, bool> {
        self.write(move |c| write::pause(c, scope, &name, &note, now))
    }

    fn resume(&self, scope: PauseScope, name: String) -> StoreFuture<'_, bool> {
        self.write(move |c| write::resume(c, scope, &name))
    }

    fn pauses(&self) -> StoreFuture<'_, Vec<PauseRecord>> {
        self.read(read::pauses)
    }

    fn queues(&self, now: Timestamp) -> StoreFuture<'_, Vec<QueueStats>> {
        self.read(move |c| read::queues(c, now))
    }

    fn heartbeat(
        &self,
        host: crate::health::HostRecord,
        forget_before: Timestamp,
    ) -> StoreFuture<'_, ()> {
        self.write(move |c| write::heartbeat(c, &host, forget_before))
    }

    fn hosts(&self) -> StoreFuture<'_, Vec<crate::health::HostRecord>> {
        self.read(read::hosts)
    }

    /// SQLite's `PRAGMA data_version` on the write connection: it moves
    /// with every commit but that connection's own (and the read
    /// connection never commits).
    fn outside_version(&self) -> StoreFuture<'_, Option<u64>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writer.send(Command::Peek(Box::new(move |conn| {
            let version = conn
                .prepare_cached("PRAGMA data_version")
                .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
                .map(|v| Some(v as u64))
                .map_err(StoreError::from);
            let _ = tx.send(version);
        })));
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn clean(&self, req: CleanRequest) -> StoreFuture<'_, CleanReport> {
        self.write(move |c| write::clean(c, &req))
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writer.send(Command::Close(tx));
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        Box::pin(async move {
            if sent.is_ok() {
                let _ = rx.await;
            }
            if let Some(t) = thread {
                tokio::task::spawn_blocking(move || t.join())
                    .await
                    .map_err(|e| StoreError::Backend(e.to_string()))?
                    .map_err(|_| StoreError::Backend("writer thread panicked".into()))?;
            }
            Ok(())
        })
    }
}

/// Answers one command once its transaction's fate is known: `Some(error)`
/// if the commit failed.
type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// One command: runs inside the open transaction and says whether it
/// failed (its savepoint is then rolled back) and how to answer. Given an
/// error instead of a connection, it does not run and answers that error.
type WriteOp = Box<dyn FnOnce(Result<&Connection, &StoreError>) -> (bool, Reply) + Send>;

enum Command {
    Write(WriteOp),
    /// A read on the write connection, outside any transaction (after the
    /// group it arrived with has committed).
    Peek(Box<dyn FnOnce(&Connection) + Send>),
    /// Finish what is queued, then stop.
    Close(oneshot::Sender<()>),
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Command>) {
    let mut batch = Vec::with_capacity(MAX_GROUP);
    let mut peeks = Vec::new();
    let mut closing = None;
    while closing.is_none() {
        let Ok(first) = rx.recv() else { break };
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Write(op) => batch.push(op),
                Command::Peek(peek) => peeks.push(peek),
                Command::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if batch.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            run_group(&conn, &mut batch);
        }
        for peek in peeks.drain(..) {
            peek(&conn);
        }
    }
    drop(conn);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Applies `batch` in one transaction and answers every command.
fn run_group(conn: &Connection, batch: &mut Vec<WriteOp>) {
    if let Err(e) = exec_cached(conn, "BEGIN IMMEDIATE") {
        let err = StoreError::from(e);
        for op in batch.drain(..) {
            let (_, reply) = op(Err(&err));
            reply(None);
        }
        return;
    }
    let mut replies = Vec::with_capacity(batch.len());
    let mut ops = batch.drain(..);
    for op in ops.by_ref() {
        // A command runs only inside its savepoint, so that its failure can
        // be undone exactly; if the savepoint machinery itself fails, the
        // whole group is abandoned.
        if let Err(e) = exec_cached(conn, "SAVEPOINT cmd") {
            let err = StoreError::from(e);
            let (_, reply) = op(Err(&err));
            replies.push(reply);
            return abandon(conn, replies, ops, err);
        }
        let (failed, reply) = op(Ok(conn));
        replies.push(reply);
        let undo = if failed {
            exec_cached(conn, "ROLLBACK TO cmd").and_then(|()| exec_cached(conn, "RELEASE cmd"))
        } else {
            exec_cached(conn, "RELEASE cmd")
        };
        if let Err(e) = undo {
            return abandon(conn, replies, ops, StoreError::from(e));
        }
    }
    let commit = exec_cached(conn, "COMMIT").err().map(StoreError::from);
    if commit.is_some() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for reply in replies {
        reply(commit.as_ref());
    }
}

/// Runs a statement without parameters through the statement cache (these
/// run for every command, so parsing them each time would show).
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Rolls the open transaction back and answers every command of the group
/// (those that ran and those that did not) with `err`.
fn abandon(
    conn: &Connection,
    replies: Vec<Reply>,
    rest: impl Iterator<Item = WriteOp>,
    err: StoreError,
) {
    let _ = conn.execute_batch("ROLLBACK");
    for reply in replies {
        reply(Some(&err));
    }
    for op in rest {
        let (_, reply) = op(Err(&err));
        reply(None);
    }
}

fn connect(opts: &SqliteOptions) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&opts.path, flags)
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", opts.path.display())))?;
    conn.busy_timeout(opts.busy_timeout)?;
    let sync = match opts.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}
