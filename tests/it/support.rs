//! Shared test harness: a temporary database and plugins directory, a host
//! running in the background, and polling helpers.
//!
//! The database is a SQLite file in a temporary directory, or, with
//! `JOBBOX_TEST_STORE=postgres`, a PostgreSQL database of the test's own
//! (see [`jobbox_tests::pg`]): the same tests run against either backend.
//! A test that only makes sense on one says so and returns early
//! ([`skip_unless_sqlite`]).

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobbox::config::Config;
use jobbox::executor::{Host, HostTask};
use jobbox::job::{AttemptOutcome, AttemptRecord, JobId, JobRecord, JobState, NewJob};
use jobbox::store::postgres::PgOptions;
use jobbox::store::sqlite::SqliteOptions;
use jobbox::store::{ClaimRequest, Opened, Store, StoreOptions};
use jobbox::time::{Clock, Timestamp};
use jobbox_tests::pg::{self, Backend};
use tempfile::TempDir;

/// The store this run of the suite tests (`JOBBOX_TEST_STORE`).
pub fn backend() -> Backend {
    pg::backend()
}

/// Says on stderr, past the test harness's capture (so that it shows in
/// the run's output), that the running test is skipped, and why.
pub fn say_skipped(why: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// For a test that only makes sense on SQLite: in the postgres pass, says
/// why it is skipped and returns true (the test then returns).
pub fn skip_unless_sqlite(why: &str) -> bool {
    if backend() == Backend::Sqlite {
        return false;
    }
    say_skipped(&format!("SQLite only: {why}"));
    true
}

/// The database of one test: a SQLite file in the test's directory, or, in
/// the postgres pass, a PostgreSQL database of its own, dropped with it
/// (after closing every store opened on it with [`TestDb::open`]).
pub struct TestDb {
    options: StoreOptions,
    /// The PostgreSQL stores opened on it, closed before it is dropped.
    opened: Mutex<Vec<Arc<dyn Store>>>,
    pg: Option<pg::Database>,
}

impl TestDb {
    /// `jobbox.db` in `dir`, or a fresh PostgreSQL database.
    pub fn new(dir: &Path) -> TestDb {
        let (options, pg) = match backend() {
            Backend::Sqlite => (
                StoreOptions::Sqlite(SqliteOptions::new(dir.join("jobbox.db"))),
                None,
            ),
            Backend::Postgres => {
                let db = pg::Database::create();
                let mut o = PgOptions::new(db.url());
                // Tests run in parallel, each with one or two stores, on a
                // server with 100 connections.
                o.pool = 2;
                (StoreOptions::Postgres(o), Some(db))
            }
        };
        TestDb {
            options,
            opened: Mutex::new(Vec::new()),
            pg,
        }
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// The PostgreSQL database, in the postgres pass.
    pub fn pg(&self) -> Option<&pg::Database> {
        self.pg.as_ref()
    }

    /// Opens a store on the database (another one is another host).
    pub fn open(&self) -> Opened {
        let options = self.options.clone();
        let opened = pg::off_runtime(move || jobbox::store::open(&options))
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.options.describe()));
        if self.pg.is_some() {
            self.opened.lock().unwrap().push(Arc::clone(&opened.store));
        }
        opened
    }

    /// The binary's `--db`: the SQLite file's path or the database's URL.
    pub fn arg(&self) -> String {
        match &self.options {
            StoreOptions::Sqlite(o) => o.path.display().to_string(),
            StoreOptions::Postgres(o) => o.url.clone(),
        }
    }

    /// The lines of a config's `[store]` table that name this database
    /// (a SQLite path relative to the config's directory).
    pub fn toml(&self) -> String {
        match &self.options {
            StoreOptions::Sqlite(o) => {
                let file = o.path.file_name().expect("a file name");
                format!("path = {:?}\n", file.to_string_lossy())
            }
            StoreOptions::Postgres(o) => format!("url = {:?}\npool = {}\n", o.url, o.pool),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let stores = std::mem::take(&mut *self.opened.lock().unwrap_or_else(|p| p.into_inner()));
        if stores.is_empty() {
            return;
        }
        // A PostgreSQL store runs threads until it is closed (its listener
        // would go on reconnecting to the dropped database). This may run
        // on a runtime's thread: close them on a runtime of their own.
        pg::off_runtime(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            for store in stores {
                let _ = rt.block_on(store.close());
            }
        });
    }
}

/// A temporary database and plugins directory with a validated config.
pub struct Harness {
    /// Holds the SQLite database; deleted on drop.
    _dir: TempDir,
    pub plugins: TempDir,
    pub config: Config,
    pub store: Arc<dyn Store>,
    /// The clock of the store's hosts: this machine's for SQLite, the
    /// database server's for PostgreSQL.
    pub clock: Arc<dyn Clock>,
    /// Dropped last: closes the stores and drops a PostgreSQL database.
    /// (`db.arg()` is the binary's `--db` for it.)
    pub db: TestDb,
}

impl Harness {
    /// A harness whose plugins directory holds `kinds`, configured by
    /// `toml` (without `[store] path` or `[host] plugins_dir`, which the
    /// harness sets).
    pub fn new(kinds: &[&str], toml: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let plugins = jobbox_tests::plugin_dir_with(kinds);
        let mut config = Config::parse(toml, dir.path()).expect("test config is valid");
        let db = TestDb::new(dir.path());
        config.store = db.options().clone();
        config.host.plugins_dir = plugins.path().to_owned();
        let Opened { store, clock } = db.open();
        Harness {
            _dir: dir,
            plugins,
            config,
            store,
            clock,
            db,
        }
    }

    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Another store on the same database, as a second host (or a
    /// restarted one) would open. In the postgres pass it is closed when
    /// the harness drops, if the test has not closed it.
    pub fn open_store(&self) -> Arc<dyn Store> {
        self.db.open().store
    }

    /// A host on this harness's store (not yet running).
    pub fn host(&self) -> Arc<Host> {
        self.host_with_clock(Arc::clone(&self.clock))
    }

    pub fn host_with_clock(&self, clock: Arc<dyn Clock>) -> Arc<Host> {
        Arc::new(Host::new(self.config.clone(), self.store(), clock).unwrap())
    }

    /// Starts a host in the background.
    pub fn start(&self) -> Running {
        Running::start(self.host())
    }

    pub async fn job(&self, id: JobId) -> JobRecord {
        self.store.job(id).await.unwrap().expect("job exists")
    }

    /// Waits until job `id` is in `state`, or panics after `timeout`.
    pub async fn wait_for_state(&self, id: JobId, state: JobState, timeout: Duration) -> JobRecord {
        let store = &self.store;
        wait_until(timeout, &format!("job {id} to be {state}"), || async move {
            let job = store.job(id).await.unwrap().expect("job exists");
            (job.state == state).then_some(job)
        })
        .await
    }
}

/// A host running in a background task.
pub struct Running {
    pub host: Arc<Host>,
    task: HostTask,
}

impl Running {
    pub fn start(host: Arc<Host>) -> Running {
        Running {
            task: host.spawn(),
            host,
        }
    }

    /// Enqueues `jobs` in-process; returns their ids.
    pub async fn enqueue(&self, jobs: Vec<NewJob>) -> Vec<JobId> {
        let out = self.host.enqueue(jobs).await.unwrap();
        out.into_iter().map(|e| e.id).collect()
    }

    /// Enqueues one job; returns its id.
    pub async fn enqueue_one(&self, job: NewJob) -> JobId {
        self.enqueue(vec![job]).await[0]
    }

    /// Graceful shutdown; returns once the host has stopped.
    pub async fn stop(self) {
        self.task.stop().await.unwrap();
    }
}

/// Asserts that job `id` was taken over: its first claim's lease expired
/// and the second claim completed it with `output`.
pub async fn assert_taken_over(store: &dyn Store, id: JobId, output: &str) {
    let rec = store.job(id).await.unwrap().expect("job exists");
    assert_eq!(rec.state, JobState::Completed);
    assert_eq!(rec.output.as_deref(), Some(output));
    let outcomes: Vec<_> = rec.attempts.iter().map(|a| (a.epoch, a.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            (1, AttemptOutcome::LeaseExpired),
            (2, AttemptOutcome::Completed)
        ]
    );
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A completed attempt's record, as a host that ran it at `at` writes it.
pub fn completed(attempt: u32, at: Timestamp, host: Option<&str>) -> AttemptRecord {
    AttemptRecord {
        attempt,
        outcome: AttemptOutcome::Completed,
        error: None,
        fuel_used: None,
        started_at: at,
        ended_at: at,
        component_hash: None,
        recording: None,
        host: host.map(str::to_owned),
    }
}

pub fn job(kind: &str, payload: &str) -> NewJob {
    NewJob::new(kind, payload).unwrap()
}

/// A claim of up to `limit` jobs at `now` by `worker`, with a 30 s lease and
/// no rate limits.
pub fn claim_req(now: Timestamp, limit: u32, worker: &str) -> ClaimRequest {
    ClaimRequest {
        now,
        limit,
        exclude_kinds: Vec::new(),
        lease: Duration::from_secs(30),
        worker: worker.into(),
        rates: Vec::new(),
    }
}
