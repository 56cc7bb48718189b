//! Shared test harness: a temporary database and plugins directory, a host
//! running in the background, and polling helpers.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobbox::config::Config;
use jobbox::executor::{Host, HostTask};
use jobbox::job::{JobId, JobRecord, JobState, NewJob};
use jobbox::store::sqlite::SqliteStore;
use jobbox::store::{ClaimRequest, Store};
use jobbox::time::{Clock, SystemClock, Timestamp};
use tempfile::TempDir;

/// A temporary database and plugins directory with a validated config.
pub struct Harness {
    /// Holds the database; deleted on drop.
    _dir: TempDir,
    pub plugins: TempDir,
    pub config: Config,
    pub store: Arc<SqliteStore>,
}

impl Harness {
    /// A harness whose plugins directory holds `kinds`, configured by
    /// `toml` (without `[store] path` or `[host] plugins_dir`, which the
    /// harness sets).
    pub fn new(kinds: &[&str], toml: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let plugins = jobbox_tests::plugin_dir_with(kinds);
        let mut config = Config::parse(toml, dir.path()).expect("test config is valid");
        config.store.path = dir.path().join("jobbox.db");
        config.host.plugins_dir = plugins.path().to_owned();
        let store = Arc::new(SqliteStore::open(&config.store).unwrap());
        Harness {
            _dir: dir,
            plugins,
            config,
            store,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.config.store.path.clone()
    }

    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store) as Arc<dyn Store>
    }

    /// A host on this harness's store (not yet running).
    pub fn host(&self) -> Arc<Host> {
        self.host_with_clock(Arc::new(SystemClock))
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
            (1, jobbox::job::AttemptOutcome::LeaseExpired),
            (2, jobbox::job::AttemptOutcome::Completed)
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
