//! Moving between databases: `jobbox store copy` from the embedded SQLite
//! file to PostgreSQL and back, and `jobbox migrate`.
//!
//! These run in the SQLite pass (the source is a SQLite file) and need the
//! PostgreSQL server of the postgres pass; without it they are skipped
//! with the reason printed.

use std::process::Command;
use std::time::Duration;

use jobbox::job::{
    AttemptOutcome, AttemptRecord, Effects, Finish, JobFilter, NewEvent, Transition,
};
use jobbox::policy::PauseScope;
use jobbox::store::postgres::PgOptions;
use jobbox::store::sqlite::SqliteOptions;
use jobbox::store::{ClaimRequest, Store, StoreOptions, copy};
use jobbox::time::{Clock, SystemClock};
use jobbox_tests::pg;

use crate::support::{self, job};

/// Skips (saying why) unless this is the SQLite pass with a reachable
/// PostgreSQL server.
fn skip() -> bool {
    if support::backend() != pg::Backend::Sqlite {
        support::say_skipped("copies from SQLite: runs in the SQLite pass only");
        return true;
    }
    if let Err(e) = pg::reachable() {
        support::say_skipped(&format!("store copy needs PostgreSQL: {e}"));
        return true;
    }
    false
}

fn open(opts: &StoreOptions) -> std::sync::Arc<dyn Store> {
    let opts = opts.clone();
    pg::off_runtime(move || jobbox::store::open(&opts))
        .expect("store opens")
        .store
}

/// Everything a store shows through the `Store` trait, as text: jobs with
/// their attempts, kv entries, events, schedules, breakers, pauses, counts.
async fn snapshot(store: &dyn Store) -> String {
    let mut out = String::new();
    let jobs = store
        .list_jobs(JobFilter {
            limit: Some(10_000),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    for j in jobs {
        let full = store.job(j.id).await.unwrap().unwrap();
        out.push_str(&format!("{full:?}\n"));
        for a in &full.attempts {
            let rec = store.recording(j.id, Some(a.attempt)).await.unwrap();
            out.push_str(&format!("  recording {}: {rec:?}\n", a.attempt));
        }
    }
    for (k, v) in store
        .kv_list("ledger".into(), String::new(), 100)
        .await
        .unwrap()
    {
        out.push_str(&format!("kv {k} {v:?}\n"));
    }
    for e in store.list_events(None, None, 100).await.unwrap() {
        out.push_str(&format!("{e:?}\n"));
    }
    for s in store.schedules().await.unwrap() {
        out.push_str(&format!("{s:?}\n"));
    }
    out.push_str(&format!("{:?}\n", store.breakers().await.unwrap()));
    out.push_str(&format!("{:?}\n", store.pauses().await.unwrap()));
    out.push_str(&format!("{:?}\n", store.counts().await.unwrap()));
    out.push_str(&format!("{:?}\n", store.event_counts().await.unwrap()));
    out
}

/// Fills a store with a bit of everything: completed jobs with kv writes,
/// an outbox event and a recording; a retryable and a waiting job; a
/// paused kind; a schedule.
async fn fill(store: &dyn Store) {
    let now = SystemClock.now();
    store
        .enqueue(
            (0..5)
                .map(|i| job("echo", &format!("{{\"n\":{i}}}")))
                .collect(),
            now,
        )
        .await
        .unwrap();
    let claimed = store
        .claim(ClaimRequest {
            now,
            limit: 3,
            exclude_kinds: vec![],
            lease: Duration::from_secs(30),
            worker: "copy-test".into(),
            rates: vec![],
        })
        .await
        .unwrap();
    for (i, c) in claimed.jobs.iter().enumerate() {
        let complete = i < 2;
        let finish = Finish {
            fence: c.fence(),
            attempt: AttemptRecord {
                attempt: c.attempt,
                outcome: if complete {
                    AttemptOutcome::Completed
                } else {
                    AttemptOutcome::RetryableError
                },
                error: (!complete).then(|| "boom".to_string()),
                fuel_used: Some(1234),
                started_at: now,
                ended_at: now,
                component_hash: Some("ab".repeat(32)),
                recording: Some(vec![1, 2, 3, i as u8]),
                host: Some("copied-host".to_owned()),
            },
            transition: if complete {
                Transition::Complete {
                    output: format!("{{\"done\":{i}}}"),
                }
            } else {
                Transition::Retry {
                    run_at: now.plus(Duration::from_secs(60)),
                    error: "boom".into(),
                }
            },
            effects: if complete {
                Effects {
                    namespace: "ledger".into(),
                    kv_reads: vec![],
                    kv_writes: vec![(format!("acct-{i}"), Some(vec![b'0' + i as u8]))],
                    events: vec![NewEvent {
                        topic: "orders".into(),
                        url: "http://127.0.0.1:9/orders".into(),
                        body: format!("{{\"event\":{i}}}").into_bytes(),
                        idempotency_key: format!("evt-{i}"),
                    }],
                }
            } else {
                Effects::default()
            },
            on_conflict: None,
            breaker: None,
        };
        store.finish(finish).await.unwrap();
    }
    store
        .pause(PauseScope::Kind, "echo".into(), "moving house".into(), now)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_moves_everything_to_postgres_and_back() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sqlite = StoreOptions::Sqlite(SqliteOptions::new(dir.path().join("jobbox.db")));
    let source = open(&sqlite);
    fill(source.as_ref()).await;
    let before = snapshot(source.as_ref()).await;
    source.close().await.unwrap();

    let db = pg::Database::create();
    let mut o = PgOptions::new(db.url());
    o.pool = 1;
    let postgres = StoreOptions::Postgres(o);

    // Through the binary, as an operator would.
    let out = Command::new(env!("CARGO_BIN_EXE_jobbox"))
        .args(["store", "copy", "--from"])
        .arg(dir.path().join("jobbox.db"))
        .args(["--to", db.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "store copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("jobs") && stdout.contains("copied"),
        "{stdout}"
    );

    let target = open(&postgres);
    assert_eq!(snapshot(target.as_ref()).await, before);
    // New ids continue after the copied ones.
    let next = target
        .enqueue(vec![job("echo", "{}")], SystemClock.now())
        .await
        .unwrap();
    assert_eq!(next[0].id, 6);
    target.close().await.unwrap();
    drop(target);

    // A second copy into the now non-empty target is refused, one line,
    // non-zero exit, and changes nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_jobbox"))
        .args(["store", "copy", "--from"])
        .arg(dir.path().join("jobbox.db"))
        .args(["--to", db.url()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not empty") && stderr.contains("--replace"),
        "{stderr}"
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM jobs").unwrap(), 6);

    // With --replace the target becomes the source again.
    copy::copy(&sqlite, &postgres, true).await.unwrap();
    assert_eq!(db.query_i64("SELECT count(*) FROM jobs").unwrap(), 5);

    // And back to a fresh SQLite file.
    let back = StoreOptions::Sqlite(SqliteOptions::new(dir.path().join("back.db")));
    let report = copy::copy(&postgres, &back, false).await.unwrap();
    assert_eq!(report.tables[0], ("jobs".to_string(), 5));
    let store = open(&back);
    assert_eq!(snapshot(store.as_ref()).await, before);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_reports_the_schema_and_a_bad_url_is_one_line() {
    if skip() {
        return;
    }
    let db = pg::Database::create();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_jobbox"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--db", db.url(), "migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("migrated from schema version 0"),
        "{stdout}"
    );
    let out = run(&["--db", db.url(), "migrate"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));

    let out = run(&["--db", "postgres://postgres@127.0.0.1:1/nowhere", "migrate"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
