//! The shared store: one PostgreSQL database, many hosts.
//!
//! Built like the SQLite store, so that the two behave alike: a writer
//! thread owns a connection and applies whatever commands have queued up
//! in one transaction (each in its own savepoint, so one command's error
//! undoes only that command), commits, and only then answers each caller.
//! Under load many fenced write-backs share one commit (and one WAL flush
//! with `synchronous_commit = on`). A store has [`WRITERS`] of them, each
//! given the next group when it is free, so that one group's commit does
//! not hold up the next. Reads use a small set of connections of their
//! own.
//!
//! Many hosts share the database. What keeps them apart is in the SQL:
//! claims take rows with `FOR UPDATE SKIP LOCKED`, every write-back is
//! fenced on id, state and epoch, and the claims that must count what other
//! hosts run (concurrency keys, rate limits, breaker probes) serialize on a
//! transaction-level advisory lock.
//!
//! Wake-ups: every write transaction that may have made work for someone
//! else is followed, once committed, by `pg_notify('jobbox', <this store's
//! id>)` (in a small transaction of its own: see [`Writer::group`]). A
//! listener
//! thread on a connection of its own counts the notifications of *other*
//! stores: that count is [`Store::outside_version`], and its changes wake
//! idle loops at once ([`Store::outside_changes`]). While the listener is
//! not connected the version is unknown (`None`), so loops keep polling.
//!
//! Time: hosts on different machines must agree on when a lease expires.
//! The store measures the offset of the database server's clock from this
//! machine's at connect time and every [`CLOCK_RESYNC`]; [`PgStore::clock`]
//! reads this machine's clock plus that offset, so every host reads (within
//! a round trip) the database's time.

mod ops;
mod read;
mod schedules;
mod schema;
#[cfg(test)]
mod scratch;
mod write;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use tokio::sync::{oneshot, watch};

use super::{
    Bulk, ClaimRequest, Claimed, CleanReport, CleanRequest, EventCounts, FinishOutcome, JobEffects,
    QueueStats, StateCounts, Store, StoreError, StoreFuture,
};
use crate::job::{
    Enqueued, ExpiredLease, Fence, Fenced, Finish, JobAction, JobFilter, JobId, JobRecord,
    JobState, KvEntry, NewJob, Transition,
};
use crate::outbox::{ClaimedEvent, Delivery, EventRecord, EventState};
use crate::policy::{BreakerRecord, BreakerState, PauseRecord, PauseScope};
use crate::schedule::{ApplyReport, FireOutcome, ScheduleFire, ScheduleRecord, ScheduleUpsert};
use crate::time::{Clock, SystemClock, Timestamp};

pub use schema::SCHEMA_VERSION;

/// The channel every store notifies on and listens to.
const CHANNEL: &str = "jobbox";

/// How often the offset to the database's clock is measured again.
pub const CLOCK_RESYNC: Duration = Duration::from_secs(30);

/// The most commands one write transaction takes.
const MAX_GROUP: usize = 512;

/// Write connections per store, each applying one group at a time: while
/// one group waits for its statements and its commit's WAL flush, the
/// next can be applied on another connection, so that a claim need not
/// queue behind a whole group of write-backs. (Each group is a
/// transaction of its own, fenced like another host's: nothing relies on
/// one writer.)
const WRITERS: usize = 2;

/// Settings for [`PgStore::open`] (`[store] url`, `url_env`, `pool`,
/// `connect_timeout`).
#[derive(Clone)]
pub struct PgOptions {
    /// A libpq-style URL or key-value string: `postgres://user@host/db`.
    pub url: String,
    /// Read connections (the writer and the listener have one each).
    pub pool: usize,
    /// How long connecting may take before start-up fails.
    pub connect_timeout: Duration,
    /// Whether to LISTEN for other hosts' commits (off behind a
    /// transaction-pooling proxy, which cannot hold a LISTEN; polling then
    /// finds their work).
    pub listen: bool,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact(&self.url))
            .field("pool", &self.pool)
            .field("connect_timeout", &self.connect_timeout)
            .field("listen", &self.listen)
            .finish()
    }
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            pool: 4,
            connect_timeout: Duration::from_secs(5),
            listen: true,
        }
    }

    /// Where the URL points, for messages: `host:port/database`, without
    /// user or password.
    pub fn target(&self) -> String {
        match self.url.parse::<postgres::Config>() {
            Ok(c) => describe(&c),
            Err(_) => redact(&self.url),
        }
    }
}

/// The URL with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    // postgres://user:password@host/...
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        && let Some(at) = rest.find('@')
        && let Some(colon) = rest[..at].find(':')
    {
        let scheme = &url[..url.len() - rest.len()];
        return format!("{scheme}{}:***{}", &rest[..colon], &rest[at..]);
    }
    url.to_string()
}

fn describe(c: &postgres::Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .zip(c.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, port)| match h {
            postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
            postgres::config::Host::Unix(p) => format!("{}:{port}", p.display()),
        })
        .collect();
    let host = if hosts.is_empty() {
        "localhost:5432".to_string()
    } else {
        hosts.join(",")
    };
    format!("{host}/{}", c.get_dbname().unwrap_or("(default database)"))
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> StoreError {
        match e.as_db_error() {
            Some(db) => StoreError::Backend(match db.detail() {
                Some(detail) => format!("{} ({detail})", db.message()),
                None => db.message().to_string(),
            }),
            None => StoreError::Backend(e.to_string()),
        }
    }
}

/// Opens a connection, with a start-up error that names the server.
fn connect(opts: &PgOptions) -> Result<Client, StoreError> {
    let mut config: postgres::Config = opts.url.parse().map_err(|e| {
        StoreError::Backend(format!(
            "invalid PostgreSQL URL {:?}: {e}",
            redact(&opts.url)
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(opts.connect_timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("jobbox");
    }
    // A dead peer on an idle connection is noticed by TCP keepalives.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    let timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(opts.connect_timeout);
    let target = describe(&config);
    // The client's own timeout covers the TCP connect only: a server (or a
    // proxy) that accepts and then never answers would hang start-up. So
    // the handshake runs on a thread of its own and is given up on after
    // the timeout (the thread ends when the socket does).
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("jobbox-pg-connect".into())
        .spawn(move || {
            let _ = tx.send(config.connect(NoTls));
        })
        .map_err(|e| StoreError::Backend(format!("spawning a connect thread: {e}")))?;
    match rx.recv_timeout(timeout + Duration::from_millis(100)) {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(StoreError::Backend(format!(
            "cannot connect to PostgreSQL at {target}: {}",
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| source_chain(&e))
        ))),
        Err(_) => Err(StoreError::Backend(format!(
            "cannot connect to PostgreSQL at {target}: no answer within {}",
            humantime::format_duration(timeout)
        ))),
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(next) = cur {
        let more = next.to_string();
        if !s.contains(&more) {
            s.push_str(": ");
            s.push_str(&more);
        }
        cur = next.source();
    }
    s
}

/// A connection with its prepared statements, by SQL text.
///
/// Statements are prepared once per connection (a named statement is
/// session state: behind a transaction-pooling proxy, PgBouncer 1.21 or
/// later with `max_prepared_statements` set keeps them working).
pub(super) struct Conn {
    client: Client,
    cache: HashMap<&'static str, Statement>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

/// A statement's parameters.
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl Conn {
    fn new(client: Client) -> Conn {
        Conn {
            client,
            cache: HashMap::new(),
        }
    }

    /// The prepared statement for `sql`, preparing it on first use.
    pub(super) fn prepared(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.cache.insert(sql, s.clone());
        Ok(s)
    }

    pub(super) fn query(
        &mut self,
        sql: &'static str,
        p: Params<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        let s = self.prepared(sql)?;
        Ok(self.client.query(&s, p)?)
    }

    pub(super) fn query_opt(
        &mut self,
        sql: &'static str,
        p: Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let s = self.prepared(sql)?;
        Ok(self.client.query_opt(&s, p)?)
    }

    pub(super) fn query_one(
        &mut self,
        sql: &'static str,
        p: Params<'_>,
    ) -> Result<Row, StoreError> {
        let s = self.prepared(sql)?;
        Ok(self.client.query_one(&s, p)?)
    }

    pub(super) fn execute(&mut self, sql: &'static str, p: Params<'_>) -> Result<u64, StoreError> {
        let s = self.prepared(sql)?;
        Ok(self.client.execute(&s, p)?)
    }

    /// The client itself, for SQL built at run time (filters), which is not
    /// cached.
    pub(super) fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// The offset of the database's clock from this machine's, and the clock
/// that applies it.
#[derive(Debug, Default)]
struct ClockOffset(AtomicI64);

/// This machine's clock, corrected to the database server's (see the
/// module documentation).
#[derive(Debug)]
pub struct DatabaseClock {
    offset: Arc<ClockOffset>,
}

impl DatabaseClock {
    /// The database's clock minus this machine's, in milliseconds, as last
    /// measured.
    pub fn offset_ms(&self) -> i64 {
        self.offset.0.load(Ordering::Relaxed)
    }
}

impl Clock for DatabaseClock {
    fn now(&self) -> Timestamp {
        Timestamp(SystemClock.now().0 + self.offset_ms())
    }
}

/// Measures the database clock's offset: its reading against the midpoint
/// of the local readings around the round trip, from the quickest of a few
/// round trips (the one whose midpoint is least uncertain).
fn measure_offset(client: &mut Client) -> Result<i64, StoreError> {
    let mut best: Option<(i64, i64)> = None;
    for _ in 0..5 {
        let before = SystemClock.now().0;
        let row = client.query_one(
            "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )?;
        let after = SystemClock.now().0;
        let db: i64 = row.get(0);
        let sample = (after - before, db - (before + after) / 2);
        if best.is_none_or(|b| sample.0 < b.0) {
            best = Some(sample);
        }
    }
    Ok(best.map_or(0, |b| b.1))
}

/// What the listener knows of other stores' commits.
#[derive(Debug)]
struct Outside {
    /// Notifications from other stores so far.
    version: AtomicU64,
    /// Whether the listener is connected and listening.
    live: AtomicBool,
    changes: watch::Sender<u64>,
    stop: AtomicBool,
}

/// A PostgreSQL-backed [`Store`].
#[derive(Debug)]
pub struct PgStore {
    writer: mpsc::Sender<Command>,
    readers: Arc<[Mutex<Option<Conn>>]>,
    opts: PgOptions,
    threads: Mutex<Vec<JoinHandle<()>>>,
    outside: Arc<Outside>,
    offset: Arc<ClockOffset>,
}

impl PgStore {
    /// Connects, applies any pending migrations and starts the writer (and
    /// the listener, if `opts.listen`).
    ///
    /// Blocks while it connects. It may be called from async code: the
    /// blocking client runs its own runtime, so the connecting is done on a
    /// thread of its own.
    pub fn open(opts: &PgOptions) -> Result<PgStore, StoreError> {
        std::thread::scope(|s| {
            s.spawn(|| PgStore::open_here(opts))
                .join()
                .unwrap_or_else(|_| Err(StoreError::Backend("opening the store panicked".into())))
        })
    }

    fn open_here(opts: &PgOptions) -> Result<PgStore, StoreError> {
        let mut client = connect(opts)?;
        schema::migrate(&mut client)?;
        let offset = Arc::new(ClockOffset(AtomicI64::new(measure_offset(&mut client)?)));
        let readers = (0..opts.pool.max(1))
            .map(|_| Ok(Mutex::new(Some(Conn::new(connect(opts)?)))))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let instance = format!("{:016x}", fastrand::u64(..));
        let (changes, _) = watch::channel(0);
        let outside = Arc::new(Outside {
            version: AtomicU64::new(0),
            live: AtomicBool::new(false),
            changes,
            stop: AtomicBool::new(false),
        });

        let mut threads = Vec::new();
        let (tx, rx) = mpsc::channel();
        // The first writer keeps the connection that migrated; the others
        // connect when first given a group.
        let mut conn = Some(Conn::new(client));
        let writers = (0..WRITERS)
            .map(|_| Writer {
                conn: conn.take(),
                opts: opts.clone(),
                instance: instance.clone(),
            })
            .collect();
        threads.push(
            std::thread::Builder::new()
                .name("jobbox-pg-groups".into())
                .spawn(move || dispatch(writers, rx))
                .map_err(|e| StoreError::Backend(format!("spawning writer thread: {e}")))?,
        );
        let listener = Listener {
            opts: opts.clone(),
            instance,
            outside: Arc::clone(&outside),
            offset: Arc::clone(&offset),
        };
        threads.push(
            std::thread::Builder::new()
                .name("jobbox-pg-listener".into())
                .spawn(move || listener.run())
                .map_err(|e| StoreError::Backend(format!("spawning listener thread: {e}")))?,
        );
        Ok(PgStore {
            writer: tx,
            readers: readers.into(),
            opts: opts.clone(),
            threads: Mutex::new(threads),
            outside,
            offset,
        })
    }

    /// `host:port/database`, for messages.
    pub fn target(&self) -> String {
        self.opts.target()
    }

    /// A clock that reads the database server's time (see the module
    /// documentation).
    pub fn clock(&self) -> Arc<DatabaseClock> {
        Arc::new(DatabaseClock {
            offset: Arc::clone(&self.offset),
        })
    }

    /// The schema version of the database at `opts.url`, without migrating.
    pub fn schema_version(opts: &PgOptions) -> Result<usize, StoreError> {
        std::thread::scope(|s| {
            s.spawn(|| schema::version(&mut connect(opts)?))
                .join()
                .unwrap_or_else(|_| Err(StoreError::Backend("reading the schema panicked".into())))
        })
    }

    /// Queues `f` for the writer, to run in the next group transaction;
    /// resolves once that transaction committed. With `notify`, the
    /// transaction tells other stores that it may have made work for them.
    fn write_with<T, F>(&self, notify: bool, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
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
        let sent = self.writer.send(Command::Write { op, notify });
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    /// Queues a write-back for the writer, which batches it with the
    /// group's others (see [`Writer::group`]); resolves once its
    /// transaction committed. Other hosts are notified.
    fn write_finish(&self, finish: Finish, lease_bound: i64) -> StoreFuture<'_, FinishOutcome> {
        let (reply, rx) = oneshot::channel();
        let sent = self.writer.send(Command::Finish(Box::new(FinishCmd {
            finish,
            lease_bound,
            reply,
        })));
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    /// A write that may make work for other hosts (they are notified).
    fn write<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_with(true, f)
    }

    /// A write nobody else needs to hear of (a claim, a lease extension, a
    /// heartbeat).
    fn write_quiet<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_with(false, f)
    }

    /// Runs `f` on a read connection off the async runtime, outside any
    /// transaction (each statement sees what is committed when it starts).
    fn read<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        let opts = self.opts.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut slot = readers
                    .iter()
                    .find_map(|r| r.try_lock().ok())
                    .unwrap_or_else(|| {
                        let any = fastrand::usize(..readers.len());
                        readers[any].lock().unwrap_or_else(|p| p.into_inner())
                    });
                // A connection the server closed (a restart, a failover) is
                // replaced on the next read.
                if slot.as_ref().is_none_or(Conn::is_closed) {
                    *slot = Some(Conn::new(connect(&opts)?));
                }
                let conn = slot.as_mut().expect("connected above");
                f(conn)
            })
            .await
            .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
        })
    }
}

impl Drop for PgStore {
    /// Closes the read connections on a thread of their own: the blocking
    /// client closes a connection by running its runtime, which may not
    /// happen on a thread that is running ours (a store is often dropped in
    /// async code). The writer and listener threads close theirs as they
    /// end.
    fn drop(&mut self) {
        let conns: Vec<Conn> = self
            .readers
            .iter()
            .filter_map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).take())
            .collect();
        self.outside.stop.store(true, Ordering::Release);
        if !conns.is_empty() {
            let _ = std::thread::Builder::new()
                .name("jobbox-pg-close".into())
                .spawn(move || drop(conns));
        }
    }
}

impl Store for PgStore {
    fn enqueue(&self, jobs: Vec<NewJob>, now: Timestamp) -> StoreFuture<'_, Vec<Enqueued>> {
        self.write(move |c| write::enqueue(c, &jobs, now))
    }

    fn claim(&self, req: ClaimRequest) -> StoreFuture<'_, Claimed> {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .writer
            .send(Command::Claim(Box::new(ClaimCmd { req, reply })));
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn finish(&self, f: Finish) -> StoreFuture<'_, FinishOutcome> {
        // A worker's write-back: no bound on the lease.
        self.write_finish(f, i64::MAX)
    }

    fn extend_leases(&self, fences: Vec<Fence>, until: Timestamp) -> StoreFuture<'_, Vec<Fenced>> {
        self.write_quiet(move |c| write::extend_leases(c, &fences, until))
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
        // Fenced on the lease still being expired at `now`.
        let done = self.write_finish(write::rescue_finish(&lease, transition, now), now.0);
        Box::pin(async move { Ok(done.await?.fenced) })
    }

    fn retry_job(&self, id: JobId, now: Timestamp) -> StoreFuture<'_, JobState> {
        self.write(move |c| ops::retry_job(c, id, now))
    }

    fn cancel_job(&self, id: JobId, now: Timestamp) -> StoreFuture<'_, JobState> {
        self.write(move |c| ops::cancel_job(c, id, now))
    }

    fn retry_jobs(&self, filter: JobFilter, limit: u32, now: Timestamp) -> StoreFuture<'_, Bulk> {
        self.write(move |c| ops::bulk(c, &filter, limit, now, true))
    }

    fn cancel_jobs(&self, filter: JobFilter, limit: u32, now: Timestamp) -> StoreFuture<'_, Bulk> {
        self.write(move |c| ops::bulk(c, &filter, limit, now, false))
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

    fn counts(&self) -> StoreFuture<'_, StateCounts> {
        self.read(read::counts)
    }

    fn recording(
        &self,
        id: JobId,
        attempt: Option<u32>,
    ) -> StoreFuture<'_, Option<(u32, Vec<u8>)>> {
        self.read(move |c| read::recording(c, id, attempt))
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
        self.write_quiet(move |c| ops::claim_events(c, now, limit, lease))
    }

    fn record_delivery(
        &self,
        id: i64,
        attempt: u32,
        delivery: Delivery,
        now: Timestamp,
    ) -> StoreFuture<'_, Fenced> {
        self.write(move |c| ops::record_delivery(c, id, attempt, &delivery, now))
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
        self.write(move |c| ops::retry_event(c, id, now))
    }

    fn pending_events(&self) -> StoreFuture<'_, u64> {
        self.read(read::pending_events)
    }

    fn event_counts(&self) -> StoreFuture<'_, EventCounts> {
        self.read(read::event_counts)
    }

    fn apply_schedules(
        &self,
        schedules: Vec<ScheduleUpsert>,
        prune: bool,
        now: Timestamp,
    ) -> StoreFuture<'_, ApplyReport> {
        self.write(move |c| schedules::apply_schedules(c, &schedules, prune, now))
    }

    fn schedules(&self) -> StoreFuture<'_, Vec<ScheduleRecord>> {
        self.read(schedules::schedules)
    }

    fn schedule(&self, id: String) -> StoreFuture<'_, Option<ScheduleRecord>> {
        self.read(move |c| schedules::schedule(c, &id))
    }

    fn due_schedules(&self, now: Timestamp, limit: u32) -> StoreFuture<'_, Vec<ScheduleRecord>> {
        self.read(move |c| schedules::due_schedules(c, now, limit))
    }

    fn next_schedule_wake(&self) -> StoreFuture<'_, (Option<Timestamp>, bool)> {
        self.read(schedules::next_schedule_wake)
    }

    fn fire_schedule(&self, fire: ScheduleFire) -> StoreFuture<'_, FireOutcome> {
        self.write(move |c| schedules::fire_schedule(c, &fire))
    }

    fn fire_buffered(
        &self,
        id: String,
        version: i64,
        nominal: Timestamp,
        job: NewJob,
        now: Timestamp,
    ) -> StoreFuture<'_, FireOutcome> {
        self.write(move |c| schedules::fire_buffered(c, &id, version, nominal, &job, now))
    }

    fn trigger_schedule(
        &self,
        id: String,
        job: NewJob,
        now: Timestamp,
    ) -> StoreFuture<'_, Enqueued> {
        self.write(move |c| schedules::trigger_schedule(c, &id, &job, now))
    }

    fn pause_schedule(&self, id: String, note: String, now: Timestamp) -> StoreFuture<'_, bool> {
        self.write(move |c| schedules::pause_schedule(c, &id, &note, now))
    }

    fn resume_schedule(
        &self,
        id: String,
        next_fire_at: Option<Timestamp>,
        next_run_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreFuture<'_, bool> {
        self.write(move |c| schedules::resume_schedule(c, &id, next_fire_at, next_run_at, now))
    }

    fn delete_schedule(&self, id: String) -> StoreFuture<'_, ()> {
        self.write(move |c| schedules::delete_schedule(c, &id))
    }

    fn breakers(&self) -> StoreFuture<'_, Vec<BreakerRecord>> {
        self.read(read::breakers)
    }

    fn reset_breaker(&self, kind: String, now: Timestamp) -> StoreFuture<'_, Option<BreakerState>> {
        self.write(move |c| ops::reset_breaker(c, &kind, now))
    }

    fn pause(
        &self,
        scope: PauseScope,
        name: String,
        note: String,
        now: Timestamp,
    ) -> StoreFuture<'_, bool> {
        self.write(move |c| ops::pause(c, scope, &name, &note, now))
    }

    fn resume(&self, scope: PauseScope, name: String) -> StoreFuture<'_, bool> {
        self.write(move |c| ops::resume(c, scope, &name))
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
        self.write_quiet(move |c| ops::heartbeat(c, &host, forget_before))
    }

    fn hosts(&self) -> StoreFuture<'_, Vec<crate::health::HostRecord>> {
        self.read(read::hosts)
    }

    fn outside_version(&self) -> StoreFuture<'_, Option<u64>> {
        let live = self.outside.live.load(Ordering::Acquire);
        let version = self.outside.version.load(Ordering::Acquire);
        Box::pin(async move { Ok(live.then_some(version)) })
    }

    fn outside_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.outside.changes.subscribe())
    }

    fn clean(&self, req: CleanRequest) -> StoreFuture<'_, CleanReport> {
        self.write_quiet(move |c| ops::clean(c, &req))
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writer.send(Command::Close(tx));
        self.outside.stop.store(true, Ordering::Release);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        Box::pin(async move {
            if sent.is_ok() {
                let _ = rx.await;
            }
            // The listener notices `stop` within a second.
            tokio::task::spawn_blocking(move || {
                for t in threads {
                    let _ = t.join();
                }
            })
            .await
            .map_err(|e| StoreError::Backend(format!("joining store threads: {e}")))?;
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
type WriteOp = Box<dyn FnOnce(Result<&mut Conn, &StoreError>) -> (bool, Reply) + Send>;

/// A claim: the writer runs it before the group's other commands.
struct ClaimCmd {
    req: ClaimRequest,
    reply: oneshot::Sender<Result<Claimed, StoreError>>,
}

/// A write-back: a worker's (`lease_bound` the maximum) or the rescuer's
/// (`lease_bound` its `now`). The writer batches the simple ones.
struct FinishCmd {
    finish: Finish,
    lease_bound: i64,
    reply: oneshot::Sender<Result<FinishOutcome, StoreError>>,
}

enum Command {
    Write {
        op: WriteOp,
        notify: bool,
    },
    Claim(Box<ClaimCmd>),
    Finish(Box<FinishCmd>),
    /// Finish what is queued, then stop.
    Close(oneshot::Sender<()>),
}

/// The commands of one write transaction, by kind.
#[derive(Default)]
struct Group {
    claims: Vec<ClaimCmd>,
    writes: Vec<WriteOp>,
    finishes: Vec<FinishCmd>,
    /// Whether to tell other stores that the transaction may have made
    /// work for them (every command but claims and quiet writes).
    notify: bool,
}

impl Group {
    fn len(&self) -> usize {
        self.claims.len() + self.writes.len() + self.finishes.len()
    }

    /// Answers every command with `err`, none having run.
    fn fail(self, err: &StoreError) {
        for c in self.claims {
            let _ = c.reply.send(Err(err.clone()));
        }
        for op in self.writes {
            let (_, reply) = op(Err(err));
            reply(None);
        }
        for f in self.finishes {
            let _ = f.reply.send(Err(err.clone()));
        }
    }
}

struct Writer {
    /// `None` after the connection broke, until it is replaced.
    conn: Option<Conn>,
    opts: PgOptions,
    /// This store's name in its notifications.
    instance: String,
}

/// Groups the queued commands and hands each group to an idle writer, on
/// a thread of its own: a group is formed when a writer is free to apply
/// it, so that what queued meanwhile joins it. The first idle writer is
/// preferred, so under a light load one connection does it all (the others
/// connect only when first needed). On `Close`, the writers finish their
/// groups before it is answered.
fn dispatch(writers: Vec<Writer>, rx: mpsc::Receiver<Command>) {
    let (idle_tx, idle_rx) = mpsc::channel::<usize>();
    let mut lanes = Vec::with_capacity(writers.len());
    for (i, mut writer) in writers.into_iter().enumerate() {
        let (tx, groups) = mpsc::channel::<Group>();
        let idle = idle_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("jobbox-pg-write{i}"))
            .spawn(move || {
                while let Ok(group) = groups.recv() {
                    writer.group(group);
                    if idle.send(i).is_err() {
                        break;
                    }
                }
                drop(writer.conn.take());
            });
        match spawned {
            Ok(handle) => lanes.push((tx, handle)),
            Err(e) => tracing::error!("spawning PostgreSQL writer thread {i}: {e}"),
        }
    }
    let mut idle = vec![true; lanes.len()];
    let mut closing = None;
    while closing.is_none() && !lanes.is_empty() {
        let Ok(first) = rx.recv() else { break };
        // A writer to apply it: the first idle one, waiting if none is.
        while let Ok(i) = idle_rx.try_recv() {
            idle[i] = true;
        }
        let lane = match idle.iter().position(|free| *free) {
            Some(i) => i,
            None => match idle_rx.recv() {
                Ok(i) => i,
                Err(_) => break,
            },
        };
        idle[lane] = false;
        let mut group = Group::default();
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Write { op, notify } => {
                    group.writes.push(op);
                    group.notify |= notify;
                }
                Command::Claim(c) => group.claims.push(*c),
                Command::Finish(f) => {
                    group.finishes.push(*f);
                    group.notify = true;
                }
                Command::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        if group.len() == 0 {
            idle[lane] = true;
        } else if let Err(mpsc::SendError(group)) = lanes[lane].0.send(group) {
            group.fail(&StoreError::Closed);
        }
    }
    for (tx, handle) in lanes {
        drop(tx);
        let _ = handle.join();
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

impl Writer {
    /// The writer's connection, reconnecting if it broke.
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        if self.conn.as_ref().is_none_or(Conn::is_closed) {
            self.conn = None;
            self.conn = Some(Conn::new(connect(&self.opts)?));
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Applies `g` in one transaction and answers every command once it
    /// committed (or failed): nothing is acknowledged before its commit.
    ///
    /// Inside the transaction, in this order: the advisory locks of the kv
    /// keys that the group's completions read or write (sorted), the
    /// claims (a guarded one takes the claim lock first), the other
    /// commands, the simple write-backs in one statement, the others one by
    /// one, and last the breakers they count ([`write::apply_breakers`]).
    /// Each command (and the batch) runs in a savepoint of its own, so an
    /// error undoes only that command; a failed batch is retried one
    /// write-back at a time. Advisory locks come before any row lock, so
    /// a transaction waiting for one holds no row another waits for: the
    /// advisory locks never close a cycle of waits between hosts. An error
    /// outside the savepoints (the breakers, the connection) rolls the
    /// whole group back and answers every command with it.
    ///
    /// The claims run with generic plans (`plan_cache_mode`, set for them
    /// alone): the planner's cost for a generic plan of [`write::claim`]'s
    /// statement with its `LIMIT $n` always looks worse than a custom one,
    /// so under `auto` it would be planned again on every claim.
    fn group(&mut self, g: Group) {
        let kv_keys = write::kv_lock_keys(g.finishes.iter().map(|f| &f.finish));
        let mut begin = String::from("BEGIN;");
        for k in &kv_keys {
            begin.push_str(&format!(" SELECT pg_advisory_xact_lock({k});"));
        }
        if !g.claims.is_empty() {
            begin.push_str(" SET LOCAL plan_cache_mode = force_generic_plan;");
        }
        begin.push_str(" SAVEPOINT cmd");
        let begun = self
            .conn()
            .and_then(|c| Ok(c.client.batch_execute(&begin)?));
        if let Err(err) = begun {
            if self.conn.as_ref().is_some_and(|c| !c.is_closed()) {
                let _ = self
                    .conn
                    .as_mut()
                    .map(|c| c.client.batch_execute("ROLLBACK"));
            }
            g.fail(&err);
            return;
        }
        let conn = self.conn.as_mut().expect("connected above");
        let Group {
            claims,
            writes,
            finishes,
            notify,
        } = g;
        let (reqs, claim_replies): (Vec<_>, Vec<_>) =
            claims.into_iter().map(|c| (c.req, c.reply)).unzip();
        let (items, finish_replies): (Vec<_>, Vec<_>) = finishes
            .into_iter()
            .map(|f| ((f.finish, f.lease_bound), f.reply))
            .unzip();
        let not_run = || StoreError::Backend("not run".into());
        let mut group = GroupRun {
            claimed: reqs.iter().map(|_| Err(not_run())).collect(),
            finished: items.iter().map(|_| Err(not_run())).collect(),
            replies: Vec::new(),
        };
        let mut writes = writes.into_iter();
        let fate = match group.apply(conn, &reqs, &mut writes, &items) {
            Ok(()) => {
                // COMMIT ends an open savepoint too.
                let fate = conn
                    .client
                    .batch_execute("COMMIT")
                    .err()
                    .map(StoreError::from);
                if fate.is_some() {
                    let _ = conn.client.batch_execute("ROLLBACK");
                }
                fate
            }
            Err(e) => {
                let _ = conn.client.batch_execute("ROLLBACK");
                Some(e)
            }
        };
        if let Some(e) = &fate {
            for op in writes {
                let (_, reply) = op(Err(e));
                reply(None);
            }
        }
        for reply in group.replies {
            reply(fate.as_ref());
        }
        for (tx, r) in claim_replies.into_iter().zip(group.claimed) {
            let _ = tx.send(answer(&fate, r));
        }
        for (tx, r) in finish_replies.into_iter().zip(group.finished) {
            let _ = tx.send(answer(&fate, r));
        }
        // The notification, once the callers have their answers, in a
        // transaction of its own: a transaction that notifies holds a
        // database-wide lock through its commit (WAL flush included), which
        // would make every host's group commits take turns. A notification
        // is not data (it only comes after the commit it announces, and a
        // lost one costs a poll), so it need not wait for a flush.
        if notify && fate.is_none() {
            let sql = format!(
                "BEGIN; SET LOCAL synchronous_commit = off; \
                 SELECT pg_notify('{CHANNEL}', '{}'); COMMIT",
                self.instance
            );
            if let Err(e) = conn.client.batch_execute(&sql) {
                tracing::debug!("notifying other stores failed: {e}");
                let _ = conn.client.batch_execute("ROLLBACK");
            }
        }
    }
}

/// A command's answer once its transaction's fate is known: the commit's
/// error if it failed.
fn answer<T>(fate: &Option<StoreError>, r: Result<T, StoreError>) -> Result<T, StoreError> {
    match fate {
        Some(e) => Err(e.clone()),
        None => r,
    }
}

/// The answers of a group's commands as they run.
struct GroupRun {
    claimed: Vec<Result<Claimed, StoreError>>,
    finished: Vec<Result<FinishOutcome, StoreError>>,
    /// Of the writes that ran.
    replies: Vec<Reply>,
}

impl GroupRun {
    /// Runs the group's commands in the open transaction (savepoint `cmd`
    /// open), in the order [`Writer::group`] describes. An `Err` abandons
    /// the whole transaction.
    fn apply(
        &mut self,
        conn: &mut Conn,
        reqs: &[ClaimRequest],
        writes: &mut std::vec::IntoIter<WriteOp>,
        items: &[(Finish, i64)],
    ) -> Result<(), StoreError> {
        // Write-backs: the simple ones in one statement, unless two of
        // the group's name one job (the later one is then fenced out, as
        // if one by one).
        let mut per_job: HashMap<JobId, usize> = HashMap::new();
        for (f, _) in items {
            *per_job.entry(f.fence.id).or_default() += 1;
        }
        let (mut simple, mut one_by_one): (Vec<usize>, Vec<usize>) = (0..items.len())
            .partition(|&i| write::is_simple(&items[i].0) && per_job[&items[i].0.fence.id] == 1);
        let batched = !simple.is_empty();
        let mut more = reqs.len() + writes.len() + usize::from(batched) + one_by_one.len();

        // Claims, each knowing the probes the ones before admitted; then
        // plans as usual again.
        let mut probes: Vec<(usize, write::Probe)> = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            let probing: HashSet<String> = probes.iter().map(|(_, p)| p.kind.clone()).collect();
            let r = write::claim(conn, req, &probing);
            more -= 1;
            let reset = i + 1 == reqs.len();
            next_savepoint(conn, r.is_err(), more > 0, reset)?;
            self.claimed[i] = r.map(|(claimed, admitted)| {
                probes.extend(admitted.into_iter().map(|p| (i, p)));
                claimed
            });
        }
        for op in writes.by_ref() {
            let (failed, reply) = op(Ok(conn));
            self.replies.push(reply);
            more -= 1;
            next_savepoint(conn, failed, more > 0, false)?;
        }

        let mut known = HashMap::new();
        if batched {
            let batch: Vec<write::FinishItem<'_>> =
                simple.iter().map(|&i| (&items[i].0, items[i].1)).collect();
            let r = write::finish_batch(conn, &batch);
            more -= 1;
            next_savepoint(conn, r.is_err(), more > 0 || r.is_err(), false)?;
            match r {
                Ok(done) => {
                    for (&i, o) in simple.iter().zip(done.outcomes) {
                        self.finished[i] = Ok(o);
                    }
                    known = done.breakers;
                }
                Err(e) => {
                    tracing::debug!("batched write-backs failed ({e}); applying them one by one");
                    more += simple.len();
                    one_by_one.append(&mut simple);
                    one_by_one.sort_unstable();
                }
            }
        }
        for i in one_by_one {
            let (f, bound) = &items[i];
            let r = write::finish_one(conn, f, *bound);
            more -= 1;
            next_savepoint(conn, r.is_err(), more > 0, false)?;
            self.finished[i] = r;
        }

        // Breakers: the claims' probes, then the applied write-backs'
        // counts, in command order.
        let mut counted = Vec::new();
        let mut tasks = Vec::new();
        for (i, (f, _)) in items.iter().enumerate() {
            if let (Ok(o), Some(count)) = (&self.finished[i], &f.breaker)
                && o.fenced == Fenced::Applied
                && o.conflict.is_none()
            {
                counted.push(i);
                tasks.push(write::BreakerTask {
                    count,
                    fence: f.fence,
                    now: f.attempt.ended_at,
                });
            }
        }
        let admitted: Vec<write::Probe> = probes.iter().map(|(_, p)| p.clone()).collect();
        let steps = write::apply_breakers(conn, &admitted, &tasks, &known)?;
        for ((claim, p), probed) in probes.iter().zip(steps.probed) {
            if !probed && let Ok(c) = &mut self.claimed[*claim] {
                c.half_opened.retain(|k| *k != p.kind);
            }
        }
        for (i, change) in counted.into_iter().zip(steps.changes) {
            if let Ok(o) = &mut self.finished[i] {
                o.breaker = change;
            }
        }
        Ok(())
    }
}

/// Ends the current command's savepoint (undoing it if it `failed`) and,
/// if `more` commands follow, opens the next one, in one round trip; with
/// `reset_plans`, the claims are over (see [`Writer::group`]). After the
/// last command, a savepoint that holds its changes is left open: the
/// commit ends it, and the round trip is saved.
fn next_savepoint(
    conn: &mut Conn,
    failed: bool,
    more: bool,
    reset_plans: bool,
) -> Result<(), StoreError> {
    let sql = match (failed, more, reset_plans) {
        (false, false, _) => return Ok(()),
        (true, false, _) => "ROLLBACK TO cmd; RELEASE cmd",
        (false, true, false) => "RELEASE cmd; SAVEPOINT cmd",
        (true, true, false) => "ROLLBACK TO cmd; RELEASE cmd; SAVEPOINT cmd",
        (false, true, true) => "RELEASE cmd; SET LOCAL plan_cache_mode = DEFAULT; SAVEPOINT cmd",
        (true, true, true) => {
            "ROLLBACK TO cmd; RELEASE cmd; SET LOCAL plan_cache_mode = DEFAULT; SAVEPOINT cmd"
        }
    };
    Ok(conn.client.batch_execute(sql)?)
}

/// LISTENs for other stores' commits and keeps the clock offset fresh.
struct Listener {
    opts: PgOptions,
    instance: String,
    outside: Arc<Outside>,
    offset: Arc<ClockOffset>,
}

impl Listener {
    fn run(self) {
        let mut backoff = Duration::from_millis(100);
        while !self.outside.stop.load(Ordering::Acquire) {
            match self.session() {
                Ok(()) => return,
                Err(e) => {
                    self.outside.live.store(false, Ordering::Release);
                    tracing::warn!(
                        "PostgreSQL listener lost ({e}); polling until it reconnects in {}",
                        humantime::format_duration(backoff)
                    );
                    let until = Instant::now() + backoff;
                    while Instant::now() < until && !self.outside.stop.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One connection's life: returns `Ok` when told to stop.
    fn session(&self) -> Result<(), StoreError> {
        let mut client = connect(&self.opts)?;
        if self.opts.listen {
            client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            // Whatever happened while nobody listened is unknown: count it
            // as a change, so that idle loops look.
            self.bump();
            self.outside.live.store(true, Ordering::Release);
        }
        let mut synced = Instant::now();
        while !self.outside.stop.load(Ordering::Acquire) {
            if synced.elapsed() >= CLOCK_RESYNC {
                self.offset
                    .0
                    .store(measure_offset(&mut client)?, Ordering::Relaxed);
                synced = Instant::now();
            }
            if !self.opts.listen {
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
            {
                let mut notifications = client.notifications();
                let mut iter = notifications.timeout_iter(Duration::from_millis(250));
                // Every notification of another store wakes the loops at
                // once; a busy channel still lets this loop see `stop`.
                for _ in 0..256 {
                    let Some(n) = iter.next()? else { break };
                    if n.payload() != self.instance {
                        self.bump();
                    }
                }
            }
            if client.is_closed() {
                return Err(StoreError::Backend("connection closed".into()));
            }
        }
        self.outside.live.store(false, Ordering::Release);
        Ok(())
    }

    fn bump(&self) {
        let v = self.outside.version.fetch_add(1, Ordering::AcqRel) + 1;
        self.outside.changes.send_replace(v);
    }
}
