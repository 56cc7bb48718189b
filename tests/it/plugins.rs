//! Plugin discovery: what loads, what is rejected, and jobs with no plugin.

use std::time::Duration;

use jobbox::job::{AttemptOutcome, JobState};

use crate::support::{Harness, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_world_component_is_rejected_and_the_others_still_serve() {
    let h = Harness::new(&["echo", "not-a-plugin"], "");
    std::fs::write(
        h.plugins.path().join("garbage.wasm"),
        b"definitely not wasm",
    )
    .unwrap();
    // A core module (not a component) is rejected too.
    std::fs::write(h.plugins.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(h.plugins.path().join("README.txt"), b"ignored").unwrap();
    let running = h.start();

    let registry = running.host.plugins();
    let loaded: Vec<_> = registry.loaded().map(|(k, _)| k.to_owned()).collect();
    assert_eq!(loaded, vec!["echo"]);
    let mut rejected: Vec<_> = registry
        .rejected()
        .iter()
        .map(|r| r.reason.clone())
        .collect();
    rejected.sort();
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert!(
        rejected[0].contains("core.wasm") && rejected[0].contains("not a WebAssembly component")
    );
    assert!(
        rejected[1].contains("garbage.wasm") && rejected[1].contains("not a WebAssembly component")
    );
    assert!(
        rejected[2].contains("not-a-plugin.wasm")
            && rejected[2].contains("does not implement world"),
        "{}",
        rejected[2]
    );

    let id = running.enqueue_one(job("echo", "[1,2,3]")).await;
    let rec = h
        .wait_for_state(id, JobState::Completed, Duration::from_secs(10))
        .await;
    assert_eq!(rec.output.as_deref(), Some("[1,2,3]"));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_no_plugin_fails_with_a_clear_error_and_is_never_dropped() {
    let h = Harness::new(
        &[],
        "[defaults]\nmax_attempts = 2\nbackoff_base = \"50ms\"\n",
    );
    let running = h.start();
    let id = running.enqueue_one(job("ghost", "{}")).await;
    let rec = h
        .wait_for_state(id, JobState::Discarded, Duration::from_secs(10))
        .await;
    running.stop().await;
    assert_eq!(rec.attempts.len(), 2);
    for a in &rec.attempts {
        assert_eq!(a.outcome, AttemptOutcome::RetryableError);
        assert!(
            a.error
                .as_deref()
                .unwrap()
                .contains("no plugin for kind \"ghost\"")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_plugin_concurrency_is_respected() {
    let h = Harness::new(
        &["sleepy", "echo"],
        "[host]\nconcurrency = 8\n[plugins.sleepy]\nconcurrency = 2\n",
    );
    let running = h.start();
    let sleepers = running
        .host
        .enqueue(vec![job("sleepy", r#"{"ms": 300}"#); 6])
        .await
        .unwrap();
    let echo = running.enqueue_one(job("echo", "1")).await;
    // echo is not held up behind the sleepers.
    h.wait_for_state(echo, JobState::Completed, Duration::from_secs(5))
        .await;
    let mut max_running = 0;
    for _ in 0..60 {
        let c = h.store.counts().await.unwrap();
        max_running = max_running.max(c.running);
        assert!(c.running <= 2, "{} sleepy jobs running at once", c.running);
        if c.completed == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(max_running, 2);
    for e in sleepers {
        h.wait_for_state(e.id, JobState::Completed, Duration::from_secs(10))
            .await;
    }
    running.stop().await;
}

/// A plugin with a typed payload (`TypedGuest`): a payload that does not
/// deserialize is a permanent error naming the field, never a trap, and
/// the job is discarded at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_payload_that_does_not_fit_names_the_field() {
    let h = Harness::new(&["sleepy"], "");
    let running = h.start();
    let bad = running
        .enqueue_one(job("sleepy", r#"{"ms": "soon"}"#))
        .await;
    let unknown = running
        .enqueue_one(job("sleepy", r#"{"ms": 1, "extra": true}"#))
        .await;
    let bad = h
        .wait_for_state(bad, JobState::Discarded, Duration::from_secs(10))
        .await;
    assert_eq!(bad.attempts.len(), 1, "no retry of a permanent error");
    assert_eq!(bad.attempts[0].outcome, AttemptOutcome::PermanentError);
    let error = bad.error.unwrap();
    assert!(
        error.contains("payload.ms: invalid type: string \"soon\""),
        "{error}"
    );
    let unknown = h
        .wait_for_state(unknown, JobState::Discarded, Duration::from_secs(10))
        .await;
    assert!(
        unknown
            .error
            .as_deref()
            .unwrap()
            .contains("unknown field `extra`"),
        "{:?}",
        unknown.error
    );
    running.stop().await;
}
