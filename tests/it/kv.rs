//! kv state: buffered per attempt, committed only with a completion whose
//! claim is still current, and checked for conflicting writes.

use std::sync::Arc;
use std::time::Duration;

use jobbox::job::{AttemptOutcome, Effects, Fenced, Finish, JobState, Transition};
use jobbox::store::{ClaimRequest, Store};
use jobbox::time::{Clock, SystemClock};

use crate::support::{Harness, job, wait_until};

async fn kv(store: &dyn Store, ns: &str, key: &str) -> Option<String> {
    store
        .kv_get(ns.into(), key.into())
        .await
        .unwrap()
        .value
        .map(|v| String::from_utf8(v).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_writes_of_a_timed_out_attempt_never_appear() {
    let h = Harness::new(
        &["kv-stall"],
        "[plugins.kv-stall]\nkv = true\ntimeout = \"300ms\"\nmax_attempts = 1\n",
    );
    let running = h.start();
    let ids: Vec<_> = running
        .enqueue(vec![
            job(
                "kv-stall",
                r#"{"key":"spun","value":"x","ms":3000,"mode":"spin"}"#,
            ),
            job(
                "kv-stall",
                r#"{"key":"slept","value":"x","ms":3000,"mode":"sleep"}"#,
            ),
            job("kv-stall", r#"{"key":"fine","value":"y","ms":10}"#),
        ])
        .await;
    for id in &ids[..2] {
        let rec = h
            .wait_for_state(*id, JobState::Discarded, Duration::from_secs(10))
            .await;
        assert_eq!(rec.attempts[0].outcome, AttemptOutcome::Timeout);
    }
    h.wait_for_state(ids[2], JobState::Completed, Duration::from_secs(10))
        .await;
    running.stop().await;

    let store = h.store();
    assert_eq!(kv(store.as_ref(), "kv-stall", "spun").await, None);
    assert_eq!(kv(store.as_ref(), "kv-stall", "slept").await, None);
    assert_eq!(
        kv(store.as_ref(), "kv-stall", "fine").await.as_deref(),
        Some("y")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_writes_of_a_stale_attempt_never_appear_while_the_new_holders_do() {
    let h = Harness::new(
        &["kv-stall"],
        "[host]\nlease = \"900ms\"\n[plugins.kv-stall]\nkv = true\ntimeout = \"10s\"\n",
    );
    let running = h.start();
    let id = running
        .enqueue_one(job(
            "kv-stall",
            r#"{"key":"owner","value":"stale","ms":2500}"#,
        ))
        .await;
    h.wait_for_state(id, JobState::Running, Duration::from_secs(5))
        .await;

    // Another host, whose clock is an hour ahead, sees the lease as expired:
    // it rescues the job, claims it and completes it with its own write.
    let other = h.open_store();
    let later = SystemClock.now().plus(Duration::from_secs(3600));
    let expired = other.expired_leases(later, 10).await.unwrap();
    assert_eq!(expired.len(), 1);
    let retry = Transition::Retry {
        run_at: later,
        error: "lease expired".into(),
    };
    assert_eq!(
        other
            .rescue(expired[0].clone(), retry, later)
            .await
            .unwrap(),
        Fenced::Applied
    );
    let claimed = other
        .claim(ClaimRequest {
            now: later,
            limit: 1,
            exclude_kinds: vec![],
            lease: Duration::from_secs(60),
            worker: "other".into(),
            rates: Vec::new(),
        })
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(claimed.epoch, 2);
    let finish = Finish {
        fence: claimed.fence(),
        attempt: crate::support::completed(claimed.attempt, later, None),
        transition: Transition::Complete {
            output: r#"{"by":"other"}"#.into(),
        },
        effects: Effects {
            namespace: "kv-stall".into(),
            kv_writes: vec![("owner".into(), Some(b"new".to_vec()))],
            ..Effects::default()
        },
        on_conflict: None,
        breaker: None,
    };
    assert_eq!(other.finish(finish).await.unwrap().fenced, Fenced::Applied);

    // The first host's next renewal finds the job gone and abandons its
    // attempt; whatever the plugin does afterwards is not written.
    let host = Arc::clone(&running.host);
    wait_until(
        Duration::from_secs(5),
        "the stale attempt to be fenced out",
        || {
            let host = Arc::clone(&host);
            async move {
                (host.metrics().snapshot().fenced_out >= 1 && host.in_flight() == 0).then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    running.stop().await;

    assert_eq!(
        kv(other.as_ref(), "kv-stall", "owner").await.as_deref(),
        Some("new")
    );
    crate::support::assert_taken_over(h.store.as_ref(), id, r#"{"by":"other"}"#).await;
    other.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_modify_writes_never_lose_an_update() {
    let h = Harness::new(
        &["kv-counter"],
        r#"
        [host]
        concurrency = 8
        poll_interval = "5ms"
        [plugins.kv-counter]
        kv = true
        max_attempts = 1000
        backoff_base = "1ms"
        backoff_max = "20ms"
        backoff_jitter = 1.0
        "#,
    );
    let running = h.start();
    let n = 200;
    running
        .host
        .enqueue(vec![job("kv-counter", r#"{"key":"hits"}"#); n])
        .await
        .unwrap();
    let store = h.store();
    wait_until(Duration::from_secs(60), "every increment", || {
        let store = Arc::clone(&store);
        async move { (store.counts().await.unwrap().completed == n as u64).then_some(()) }
    })
    .await;
    let conflicts = running.host.metrics().snapshot().kv_conflicts;
    running.stop().await;
    assert_eq!(
        kv(store.as_ref(), "kv-counter", "hits").await.as_deref(),
        Some("200")
    );
    // With 8 attempts reading the same key at once, some completions found
    // it changed and were retried rather than committed.
    assert!(conflicts > 0, "expected kv conflicts under contention");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_is_denied_without_a_grant_and_namespaced_per_plugin() {
    let h = Harness::new(
        &["kv-counter", "kv-stall"],
        "[plugins.kv-counter]\nkv = true\n[plugins.kv-stall]\nmax_attempts = 1\n",
    );
    let running = h.start();
    let ids: Vec<_> = running
        .enqueue(vec![
            job("kv-counter", r#"{"key":"shared","by":5}"#),
            job("kv-stall", r#"{"key":"shared","value":"nope","ms":0}"#),
        ])
        .await;
    h.wait_for_state(ids[0], JobState::Completed, Duration::from_secs(10))
        .await;
    let denied = h
        .wait_for_state(ids[1], JobState::Discarded, Duration::from_secs(10))
        .await;
    running.stop().await;
    assert!(
        denied.error.as_deref().unwrap().contains("no kv grant"),
        "{:?}",
        denied.error
    );
    let store = h.store();
    assert_eq!(
        kv(store.as_ref(), "kv-counter", "shared").await.as_deref(),
        Some("5")
    );
    assert_eq!(kv(store.as_ref(), "kv-stall", "shared").await, None);
}
