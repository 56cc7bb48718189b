//! Retention: the cleaner deletes what is due and only that, and keeps the
//! database bounded under a long run.

use std::sync::Arc;
use std::time::Duration;

use jobbox::job::{Finish, JobState, NewEvent, NewJob};
use jobbox::outbox::Delivery;
use jobbox::time::{ManualClock, Timestamp};

use crate::support::{Harness, Running, job};

const RETENTION: &str = "[retention]
completed = \"1h\"
discarded = \"2h\"
kv_tombstones = \"10m\"
delivered_events = \"1h\"
interval = \"1h\"
";

fn later(job: NewJob, at: Timestamp) -> NewJob {
    NewJob {
        run_at: Some(at),
        ..job
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleaner_deletes_only_what_is_due() {
    let h = Harness::new(&["echo", "fail"], RETENTION);
    let t0 = Timestamp(1_800_000_000_000);
    let clock = ManualClock::new(t0);
    let running = Running::start(h.host_with_clock(Arc::new(clock.clone())));
    let far = t0.plus(Duration::from_secs(10 * 3600));
    let ids = running
        .enqueue(vec![
            job("echo", "{}"),
            job("echo", "{}"),
            job("fail", r#"{"mode": "permanent"}"#),
            later(job("echo", r#"{"cancel": true}"#), far),
            later(job("echo", r#"{"waits": true}"#), far),
        ])
        .await;
    let (done, failed, cancelled, waiting) = (&ids[..2], ids[2], ids[3], ids[4]);
    for id in done {
        h.wait_for_state(*id, JobState::Completed, Duration::from_secs(10))
            .await;
    }
    h.wait_for_state(failed, JobState::Discarded, Duration::from_secs(10))
        .await;
    h.store.cancel_job(cancelled, t0).await.unwrap();
    let host = Arc::clone(&running.host);
    running.stop().await;

    let present = |id| {
        let store = h.store();
        async move { store.job(id).await.unwrap().is_some() }
    };
    // Not yet an hour: nothing goes.
    clock.set(t0.plus(Duration::from_secs(3599)));
    assert_eq!(host.clean_expired().await.unwrap().jobs, 0);
    // Past an hour: the completed jobs and their attempts, nothing else.
    clock.set(t0.plus(Duration::from_secs(3601)));
    let r = host.clean_expired().await.unwrap();
    assert_eq!((r.jobs, r.attempts), (2, 2));
    for id in done {
        assert!(!present(*id).await);
    }
    for id in [failed, cancelled, waiting] {
        assert!(present(id).await, "job {id} is not due");
    }
    // Past two hours: the discarded and cancelled ones; the waiting job
    // stays however old.
    clock.set(t0.plus(Duration::from_secs(7201)));
    let r = host.clean_expired().await.unwrap();
    assert_eq!(r.jobs, 2);
    assert!(!present(failed).await && !present(cancelled).await);
    assert!(present(waiting).await);
    // However late it gets, a job that has not finished is kept.
    clock.set(t0.plus(Duration::from_secs(30 * 3600)));
    assert_eq!(host.clean_expired().await.unwrap().jobs, 0);
    assert!(present(waiting).await);
}

#[tokio::test]
async fn the_cleaner_compacts_kv_tombstones_and_delivered_events() {
    let h = Harness::new(&[], RETENTION);
    let t0 = Timestamp(1_800_000_000_000);
    let clock = ManualClock::new(t0);
    let host = h.host_with_clock(Arc::new(clock.clone()));
    let store = h.store();
    store.enqueue(vec![job("k", "{}")], t0).await.unwrap();
    let claimed = store
        .claim(crate::support::claim_req(t0, 1, "t"))
        .await
        .unwrap()
        .jobs
        .remove(0);
    let mut f = Finish::completed(&claimed, "{}".into(), t0);
    f.effects.namespace = "k".into();
    f.effects.kv_writes = vec![("kept".into(), Some(b"1".to_vec())), ("gone".into(), None)];
    f.effects.events = (0..2)
        .map(|i| NewEvent {
            topic: "t".into(),
            url: "http://127.0.0.1:9/".into(),
            body: b"{}".to_vec(),
            idempotency_key: format!("e{i}"),
        })
        .collect();
    store.finish(f).await.unwrap();
    let events = store
        .claim_events(t0, 10, Duration::from_secs(10))
        .await
        .unwrap();
    store
        .record_delivery(
            events[0].id,
            events[0].attempt,
            Delivery::Delivered {
                status: 200,
                note: None,
            },
            t0,
        )
        .await
        .unwrap();

    clock.set(t0.plus(Duration::from_secs(601)));
    let r = host.clean_expired().await.unwrap();
    assert_eq!((r.tombstones, r.events), (1, 0));
    assert_eq!(
        store
            .kv_get("k".into(), "gone".into())
            .await
            .unwrap()
            .version,
        None
    );
    assert_eq!(
        store
            .kv_get("k".into(), "kept".into())
            .await
            .unwrap()
            .value
            .as_deref(),
        Some(&b"1"[..]),
        "live keys are never compacted"
    );
    clock.set(t0.plus(Duration::from_secs(3601)));
    let r = host.clean_expired().await.unwrap();
    assert_eq!(r.events, 1, "only the delivered event");
    let left = store.list_events(None, None, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, events[1].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_keeps_the_database_bounded() {
    let h = Harness::new(&["echo"], RETENTION);
    let t0 = Timestamp(1_800_000_000_000);
    let clock = ManualClock::new(t0);
    let running = Running::start(h.host_with_clock(Arc::new(clock.clone())));
    let per_round = 150u64;
    let mut most = 0;
    for round in 0..16 {
        running
            .enqueue((0..per_round).map(|_| job("echo", "{}")).collect())
            .await;
        let store = h.store();
        crate::support::wait_until(Duration::from_secs(30), "the round to finish", || {
            let store = Arc::clone(&store);
            async move {
                let c = store.counts().await.unwrap();
                (c.available + c.running + c.retryable == 0).then_some(())
            }
        })
        .await;
        // Half an hour per round; completed jobs are kept an hour.
        clock.advance(Duration::from_secs(1800));
        running.host.clean_expired().await.unwrap();
        let c = h.store.counts().await.unwrap();
        most = most.max(c.completed);
        assert!(
            c.completed <= 2 * per_round,
            "round {round}: {} completed jobs kept",
            c.completed
        );
    }
    running.stop().await;
    assert_eq!(most, 2 * per_round, "the window held two rounds at most");
}
