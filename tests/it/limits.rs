//! Sandbox limits: each one obeyed and violated, through the sandbox API
//! and through the host.

use std::time::Duration;

use jobbox::job::{AttemptOutcome, ClaimedJob, JobState};
use jobbox::sandbox::{Limits, Plugin, RunContext, RunError, Sandbox, SandboxConfig};
use jobbox::time::Timestamp;

use crate::support::{Harness, job};

fn sandbox() -> Sandbox {
    Sandbox::new(&SandboxConfig::default()).unwrap()
}

fn load(sandbox: &Sandbox, kind: &str, limits: Limits) -> Plugin {
    let path = jobbox_tests::plugin_artifacts().join(format!("{kind}.wasm"));
    sandbox.load(kind, &path, limits).unwrap()
}

fn claimed(kind: &str, payload: &str) -> ClaimedJob {
    ClaimedJob::detached(kind, payload, "k", Timestamp(0))
}

fn limits(fuel: u64, timeout_ms: u64, memory: usize) -> Limits {
    Limits {
        fuel,
        timeout: Duration::from_millis(timeout_ms),
        memory,
        ..Limits::default()
    }
}

/// Runs one attempt of `plugin` on `payload`, with no host services and
/// nothing to cancel it but its own limits.
async fn run(plugin: &Plugin, kind: &str, payload: &str) -> jobbox::sandbox::RunReport {
    plugin
        .run(
            &claimed(kind, payload),
            &RunContext::default(),
            std::future::pending(),
        )
        .await
}

const LOTS_OF_FUEL: u64 = u64::MAX / 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_loop_is_stopped_by_the_wall_clock_deadline() {
    let sb = sandbox();
    let spin = load(&sb, "spin", limits(LOTS_OF_FUEL, 300, 64 << 20));
    for _ in 0..3 {
        let report = run(&spin, "spin", "{}").await;
        assert_eq!(
            report.result,
            Err(RunError::Timeout(Duration::from_millis(300)))
        );
        let over = report.elapsed.saturating_sub(Duration::from_millis(300));
        assert!(
            report.elapsed >= Duration::from_millis(300) && over < Duration::from_millis(500),
            "stopped {over:?} after the deadline (elapsed {:?})",
            report.elapsed
        );
        assert!(report.fuel_used > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_loop_is_stopped_by_fuel_when_fuel_is_the_smaller_limit() {
    let sb = sandbox();
    let spin = load(&sb, "spin", limits(20_000_000, 30_000, 64 << 20));
    let report = run(&spin, "spin", "{}").await;
    assert_eq!(report.result, Err(RunError::OutOfFuel(20_000_000)));
    assert_eq!(report.fuel_used, 20_000_000);
    assert!(
        report.elapsed < Duration::from_secs(5),
        "took {:?}",
        report.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_parked_in_a_host_call_is_stopped_at_the_deadline() {
    let sb = sandbox();
    let sleepy = load(&sb, "sleepy", limits(LOTS_OF_FUEL, 200, 64 << 20));
    let report = run(&sleepy, "sleepy", r#"{"ms": 5000}"#).await;
    assert_eq!(
        report.result,
        Err(RunError::Timeout(Duration::from_millis(200)))
    );
    // Stopped at the deadline, far from the 5 s it asked for (the margin is
    // for a loaded machine, not the host: it overshoots by a tick).
    assert!(
        report.elapsed < Duration::from_millis(1000),
        "took {:?}",
        report.elapsed
    );

    // Within its deadline the same plugin completes.
    let report = run(&sleepy, "sleepy", r#"{"ms": 20}"#).await;
    assert_eq!(report.result.unwrap(), r#"{"slept":20}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_just_under_the_limit_works_and_over_it_fails() {
    let sb = sandbox();
    let limit = 16 << 20;
    let hog = load(&sb, "hog", limits(LOTS_OF_FUEL, 10_000, limit));
    let under = run(&hog, "hog", r#"{"bytes": 12582912}"#).await;
    assert_eq!(under.result.unwrap(), r#"{"allocated":12582912}"#);
    let over = run(&hog, "hog", r#"{"bytes": 20971520}"#).await;
    assert_eq!(over.result, Err(RunError::MemoryLimit(limit)));
    let unbounded = run(&hog, "hog", "{}").await;
    assert_eq!(unbounded.result, Err(RunError::MemoryLimit(limit)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_is_reported_in_one_line_that_names_it() {
    let sb = sandbox();
    let trap = load(&sb, "trap", limits(LOTS_OF_FUEL, 10_000, 64 << 20));
    for (payload, names) in [
        ("{}", &["unreachable executed", " at "][..]),
        (
            r#"{"trap": "panic", "message": "ledger is\nout of balance"}"#,
            &[
                "unreachable executed (panicked at ",
                "src/lib.rs",
                "ledger is out of balance)",
            ][..],
        ),
        (
            r#"{"trap": "stack-overflow"}"#,
            &["stack overflow", "trap::recurse"][..],
        ),
        (
            r#"{"trap": "divide-by-zero"}"#,
            &["attempt to divide by zero"][..],
        ),
        (
            r#"{"trap": "out-of-bounds"}"#,
            &["out-of-bounds memory access"][..],
        ),
    ] {
        let report = run(&trap, "trap", payload).await;
        let Err(RunError::Trap(msg)) = report.result else {
            panic!("{payload}: expected a trap, got {:?}", report.result);
        };
        assert!(!msg.contains('\n'), "{payload}: not one line: {msg}");
        assert!(msg.len() < 600, "{payload}: too long: {msg}");
        for name in names {
            assert!(msg.contains(name), "{payload}: {name:?} not in {msg:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_over_max_output_is_not_stored_and_discards_the_job() {
    let h = Harness::new(&["echo"], "[plugins.echo]\nmax_output = \"1KiB\"\n");
    let running = h.start();
    let small = running.enqueue_one(job("echo", r#"{"x": "small"}"#)).await;
    let big_payload = format!(r#"{{"x": "{}"}}"#, "y".repeat(2000));
    let big = running.enqueue_one(job("echo", &big_payload)).await;
    h.wait_for_state(small, JobState::Completed, Duration::from_secs(10))
        .await;
    let rec = h
        .wait_for_state(big, JobState::Discarded, Duration::from_secs(10))
        .await;
    running.stop().await;
    assert_eq!(rec.output, None, "the output is not stored");
    assert_eq!(rec.attempts.len(), 1, "a permanent failure: no retry");
    assert_eq!(rec.attempts[0].outcome, AttemptOutcome::OutputTooLarge);
    let error = rec.error.unwrap();
    assert!(
        error.contains("max_output") && error.contains("1024"),
        "{error}"
    );
}

#[tokio::test]
async fn a_payload_over_max_payload_is_refused_and_nothing_is_written() {
    let h = Harness::new(&["echo"], "[plugins.echo]\nmax_payload = \"1KiB\"\n");
    let host = h.host();
    let big = format!(r#"{{"x": "{}"}}"#, "y".repeat(2000));
    let err = host
        .enqueue(vec![job("echo", "{}"), job("echo", &big)])
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("payload") && msg.contains("max_payload"),
        "{msg}"
    );
    let counts = h.store.counts().await.unwrap();
    assert_eq!(counts.available, 0, "nothing of the batch was written");
    // Another kind has the default limit (1 MiB).
    let fine = format!(r#"{{"x": "{}"}}"#, "y".repeat(100_000));
    host.enqueue(vec![job("other", &fine)]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_stops_a_running_guest_at_once() {
    let sb = sandbox();
    let spin = load(&sb, "spin", limits(LOTS_OF_FUEL, 30_000, 64 << 20));
    let started = std::time::Instant::now();
    let report = spin
        .run(
            &claimed("spin", "{}"),
            &RunContext::default(),
            tokio::time::sleep(Duration::from_millis(100)),
        )
        .await;
    assert_eq!(report.result, Err(RunError::Cancelled));
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_records_each_limit_as_the_attempt_outcome() {
    let h = Harness::new(
        &["spin", "hog", "trap"],
        r#"
        [defaults]
        max_attempts = 1
        [plugins.spin]
        timeout = "250ms"
        [plugins.hog]
        memory = "8MiB"
        "#,
    );
    let running = h.start();
    let ids: Vec<_> = running
        .enqueue(vec![job("spin", "{}"), job("hog", "{}"), job("trap", "{}")])
        .await;
    let mut outcomes = Vec::new();
    for id in &ids {
        let rec = h
            .wait_for_state(*id, JobState::Discarded, Duration::from_secs(10))
            .await;
        assert_eq!(rec.attempts.len(), 1);
        outcomes.push(rec.attempts[0].outcome);
        assert!(rec.error.is_some());
    }
    running.stop().await;
    assert_eq!(
        outcomes,
        vec![
            AttemptOutcome::Timeout,
            AttemptOutcome::MemoryLimit,
            AttemptOutcome::Trap
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_texts_stored_per_attempt_are_capped() {
    let h = Harness::new(&["fail"], "");
    let running = h.start();
    let payload = serde_json::json!({"mode": "permanent", "message": "e".repeat(100_000)});
    let id = running.enqueue_one(job("fail", &payload.to_string())).await;
    let rec = h
        .wait_for_state(id, JobState::Discarded, Duration::from_secs(10))
        .await;
    running.stop().await;
    let stored = rec.attempts[0].error.as_deref().unwrap();
    assert!(
        stored.len() <= jobbox::job::MAX_ERROR_TEXT + 64,
        "{} bytes",
        stored.len()
    );
    assert!(stored.ends_with("more bytes]"), "says it was cut");
    assert!(rec.error.unwrap().len() <= jobbox::job::MAX_ERROR_TEXT + 64);
}
