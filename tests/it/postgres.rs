//! What only the PostgreSQL store does: hosts on one database claiming with
//! `SKIP LOCKED`, a clear and quick error for a server that is not there, a
//! database newer than the binary refused, and other hosts' commits heard
//! through LISTEN/NOTIFY.
//!
//! These run in the postgres pass (`JOBBOX_TEST_STORE=postgres`, as
//! `scripts/test` runs it); otherwise, or with the server unreachable, each
//! says it is skipped and why.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobbox::executor::Host;
use jobbox::job::{AttemptOutcome, JobState};
use jobbox::store::postgres::PgOptions;
use jobbox::store::{Store, StoreOptions};
use jobbox::time::Timestamp;
use jobbox_tests::pg::{self, Backend};
use tokio::sync::Barrier;

use crate::binary::{Env, error_line};
use crate::support::{Harness, Running, backend, claim_req, job, say_skipped, wait_until};

/// Whether to skip: not the postgres pass.
fn not_the_postgres_pass() -> bool {
    if backend() == Backend::Postgres {
        return false;
    }
    say_skipped("PostgreSQL only: runs in the postgres pass (JOBBOX_TEST_STORE=postgres)");
    true
}

/// Whether to skip: not the postgres pass, or the server is unreachable.
fn no_server() -> bool {
    if not_the_postgres_pass() {
        return true;
    }
    if let Err(e) = pg::reachable() {
        say_skipped(&format!("PostgreSQL only: {e}"));
        return true;
    }
    false
}

/// The error of opening `opts` (which must fail), and how long it took.
fn open_error(opts: PgOptions) -> (String, Duration) {
    pg::off_runtime(move || {
        let started = Instant::now();
        let err = jobbox::store::open(&StoreOptions::Postgres(opts))
            .expect_err("opening should have failed")
            .to_string();
        (err, started.elapsed())
    })
}

/// (a) Two hosts' stores claiming at once from one queue: `SKIP LOCKED`
/// hands each job to exactly one, and between them they take every job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_claiming_at_once_never_share_a_job_and_take_them_all() {
    if no_server() {
        return;
    }
    let h = Harness::new(&[], "");
    let n = 2000;
    let now = Timestamp(1);
    for _ in 0..n / 500 {
        h.store
            .enqueue(vec![job("echo", "{}"); 500], now)
            .await
            .unwrap();
    }
    let stores: [Arc<dyn Store>; 2] = [h.store(), h.open_store()];
    let start = Arc::new(Barrier::new(2));
    let mut tasks = Vec::new();
    for (w, store) in stores.into_iter().enumerate() {
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut mine = Vec::new();
            loop {
                let jobs = store
                    .claim(claim_req(now, 10, &format!("host-{w}")))
                    .await
                    .unwrap()
                    .jobs;
                if jobs.is_empty() {
                    break;
                }
                mine.extend(jobs.iter().map(|j| j.id));
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut per_store = Vec::new();
    for t in tasks {
        let mine = t.await.unwrap();
        per_store.push(mine.len());
        for id in mine {
            assert!(seen.insert(id), "job {id} was claimed twice");
        }
    }
    assert_eq!(seen.len(), n, "every job claimed exactly once");
    assert!(
        per_store.iter().all(|&c| c > 0),
        "both stores claimed some: {per_store:?}"
    );
    assert_eq!(h.store.counts().await.unwrap().running, n as u64);
}

/// (b) A server that is not there: opening fails at once, naming it (never
/// the password), from the library and from the binary.
#[test]
fn an_unreachable_server_fails_quickly_naming_it() {
    if not_the_postgres_pass() {
        return;
    }
    let mut opts = PgOptions::new("postgres://postgres:hunter2@127.0.0.1:1/x");
    opts.connect_timeout = Duration::from_secs(2);
    let (err, took) = open_error(opts);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(!err.contains("hunter2"), "the password is not shown: {err}");
    assert!(took < Duration::from_secs(3), "took {took:?}: {err}");

    // Not a URL jobbox can use.
    let (err, _) = open_error(PgOptions::new("postgres://127.0.0.1:notaport/x"));
    assert!(err.contains("invalid PostgreSQL URL"), "{err}");

    // The binary: one line naming the server, well within its timeout.
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_jobbox"))
        .args(["--db", "postgres://postgres@127.0.0.1:1/x", "jobs", "list"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let took = started.elapsed();
    let e = error_line("jobbox --db postgres://…127.0.0.1:1 jobs list", out);
    assert!(e.contains("127.0.0.1:1"), "{e}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {e}");
}

/// A server that accepts the connection but never answers (a stuck proxy,
/// a half-dead machine) fails start-up within the connect timeout too, not
/// never.
#[test]
fn a_server_that_never_answers_fails_within_the_connect_timeout() {
    if not_the_postgres_pass() {
        return;
    }
    // The kernel completes the TCP handshake; nobody ever reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let mut opts = PgOptions::new(format!("postgres://postgres@{addr}/x"));
    opts.connect_timeout = Duration::from_secs(1);
    let (tx, rx) = std::sync::mpsc::channel();
    // Not joined: if opening hangs, the thread is left behind (dropping the
    // listener at the end of the test then resets its connection).
    std::thread::spawn(move || {
        let started = Instant::now();
        let result = jobbox::store::open(&StoreOptions::Postgres(opts)).map(drop);
        let _ = tx.send((result, started.elapsed()));
    });
    let (result, took) = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| {
        panic!(
            "opening a store on a server that never answers ({addr}) had not failed after 5 s, \
             with a connect timeout of 1 s"
        )
    });
    let err = result.expect_err("nothing answered").to_string();
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(took < Duration::from_secs(4), "took {took:?}: {err}");
    drop(silent);
}

/// (c) A database migrated by a newer jobbox is refused, not written to.
#[test]
fn a_database_newer_than_the_binary_is_refused() {
    if no_server() {
        return;
    }
    let env = Env::new(&["echo"], "");
    let store = env.store();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(store.close()).unwrap();
    let db = env.db.pg().expect("the postgres pass");
    db.execute("UPDATE jobbox_schema SET version = 999")
        .unwrap();

    let options = env.db.options().clone();
    let err = pg::off_runtime(move || jobbox::store::open(&options))
        .expect_err("a newer database is refused")
        .to_string();
    assert!(err.contains("newer") && err.contains("999"), "{err}");

    let e = env.fails(&["jobs", "list"]);
    assert!(e.contains("newer"), "{e}");
    let db_arg = env.db_arg();
    let e = env.fails(&[
        "--db",
        db_arg.as_str(),
        "enqueue",
        "echo",
        "--payload",
        "{}",
    ]);
    assert!(e.contains("newer"), "{e}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM jobs").unwrap(),
        0,
        "nothing was written"
    );
    assert_eq!(
        db.query_i64("SELECT version::bigint FROM jobbox_schema")
            .unwrap(),
        999,
        "the version was left alone"
    );
}

/// (d) Another store's commit wakes this one at once (LISTEN/NOTIFY), and
/// its own commits do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_stores_commit_wakes_this_one() {
    if no_server() {
        return;
    }
    let h = Harness::new(&[], "");
    let a = h.store();
    let b = h.open_store();
    // Until the listener is connected the version is unknown.
    let a_ref = &a;
    wait_until(Duration::from_secs(5), "store A to listen", || async move {
        a_ref.outside_version().await.unwrap()
    })
    .await;
    let mut changes = a.outside_changes().expect("PostgreSQL hears of commits");

    // A's own commit: no change.
    a.enqueue(vec![job("echo", "{}")], Timestamp(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    changes.borrow_and_update();
    let before = a.outside_version().await.unwrap().expect("listening");

    // B's: a change heard (within a second, or a few on a loaded machine).
    let sent = Instant::now();
    b.enqueue(vec![job("echo", "{}")], Timestamp(1))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .unwrap_or_else(|_| {
            panic!("no change heard within 5 s of another store's commit (version {before})")
        })
        .unwrap();
    let after = a.outside_version().await.unwrap();
    assert!(
        after.is_some_and(|v| v != before),
        "outside version {before} -> {after:?} after {:?}",
        sent.elapsed()
    );

    // And A's own commits still change nothing.
    let now = a.outside_version().await.unwrap();
    changes.borrow_and_update();
    a.enqueue(vec![job("echo", "{}")], Timestamp(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.outside_version().await.unwrap(), now);
    assert!(!changes.has_changed().unwrap(), "A heard its own commit");
}

/// (e) Two hosts on one database run 300 jobs: each completes exactly once,
/// with one attempt, and both hosts take part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_complete_every_job_exactly_once() {
    if no_server() {
        return;
    }
    let h = Harness::new(&["echo"], "[host]\nconcurrency = 4\n");
    let other = h.open_store();
    let a = h.start();
    let b = Running::start(Arc::new(
        Host::new(h.config.clone(), Arc::clone(&other), Arc::clone(&h.clock)).unwrap(),
    ));
    let n = 300u64;
    let mut ids = Vec::new();
    for chunk in 0..3 {
        let runner = if chunk % 2 == 0 { &a } else { &b };
        ids.extend(
            runner
                .enqueue(
                    (0..n / 3)
                        .map(|i| job("echo", &format!("{{\"i\":{i}}}")))
                        .collect(),
                )
                .await,
        );
    }
    let store = h.store();
    let store = &store;
    wait_until(
        Duration::from_secs(60),
        "every job to complete",
        || async move {
            let c = store.counts().await.unwrap();
            (c.completed == n).then_some(())
        },
    )
    .await;
    let (claimed_a, claimed_b) = (
        a.host.metrics().snapshot().claimed,
        b.host.metrics().snapshot().claimed,
    );
    a.stop().await;
    b.stop().await;

    let c = h.store.counts().await.unwrap();
    assert_eq!(
        (
            c.completed,
            c.running,
            c.available,
            c.retryable,
            c.discarded
        ),
        (n, 0, 0, 0, 0)
    );
    for id in &ids {
        let rec = h.job(*id).await;
        assert_eq!(rec.state, JobState::Completed);
        let outcomes: Vec<_> = rec.attempts.iter().map(|a| a.outcome).collect();
        assert_eq!(outcomes, [AttemptOutcome::Completed], "job {id}");
    }
    let db = h.db.pg().expect("the postgres pass");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM attempts").unwrap(),
        n as i64,
        "one attempt row per job"
    );
    assert_eq!(claimed_a + claimed_b, n, "each job claimed once");
    assert!(
        claimed_a > 0 && claimed_b > 0,
        "both hosts ran jobs: {claimed_a} and {claimed_b}"
    );
}
