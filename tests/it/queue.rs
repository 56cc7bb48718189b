//! The durable queue: enqueue, claim order, fencing, idempotency.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jobbox::job::{AttemptOutcome, ClaimedJob, Fenced, Finish, JobState, NewJob, Transition};
use jobbox::store::{Store, StoreError};
use jobbox::time::{Clock, ManualClock, Timestamp};

use crate::support::{Harness, claim_req, job};

fn complete(job: &ClaimedJob, output: &str, now: Timestamp) -> Finish {
    Finish::completed(job, output.into(), now)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_run_complete_with_plugin_output() {
    let h = Harness::new(&["echo", "invoice"], "");
    let running = h.start();
    let ids = running
        .host
        .enqueue(vec![
            job("echo", r#"{"greeting": "hi", "n": 1}"#),
            job(
                "invoice",
                r#"{"currency":"EUR","lines":[{"sku":"A","qty":2,"unit_price_cents":1000,"tax_rate_bps":1900}]}"#,
            ),
        ])
        .await
        .unwrap();
    let echo = h
        .wait_for_state(ids[0].id, JobState::Completed, Duration::from_secs(10))
        .await;
    let invoice = h
        .wait_for_state(ids[1].id, JobState::Completed, Duration::from_secs(10))
        .await;
    running.stop().await;

    let out: serde_json::Value = serde_json::from_str(echo.output.as_deref().unwrap()).unwrap();
    assert_eq!(out, serde_json::json!({"greeting": "hi", "n": 1}));
    assert_eq!(echo.attempt, 1);
    assert_eq!(echo.epoch, 1);
    assert_eq!(echo.attempts.len(), 1);
    assert_eq!(echo.attempts[0].outcome, AttemptOutcome::Completed);
    assert!(echo.attempts[0].fuel_used.unwrap() > 0);

    let inv: serde_json::Value = serde_json::from_str(invoice.output.as_deref().unwrap()).unwrap();
    assert_eq!(inv["subtotal_cents"], 2000);
    assert_eq!(inv["tax_cents"], 380);
    assert_eq!(inv["total_cents"], 2380);
}

#[tokio::test]
async fn idempotent_enqueue_returns_the_existing_job() {
    let h = Harness::new(&[], "");
    let store = h.store();
    let now = Timestamp(1_000);
    let mut a = job("echo", r#"{"a": 1, "b": 2}"#);
    a.idempotency_key = Some("order-7".into());
    let first = store.enqueue(vec![a.clone()], now).await.unwrap()[0];
    assert!(first.created);

    // Same key, same payload (keys in another order): the same job back.
    let mut again = job("echo", r#"{ "b": 2, "a": 1 }"#);
    again.idempotency_key = Some("order-7".into());
    let second = store.enqueue(vec![again], now).await.unwrap()[0];
    assert_eq!(second.id, first.id);
    assert!(!second.created);
    assert_eq!(store.counts().await.unwrap().available, 1);

    // Same key, different payload: refused, nothing written.
    let mut other = job("echo", r#"{"a": 2}"#);
    other.idempotency_key = Some("order-7".into());
    let fresh = job("echo", "{}");
    let err = store.enqueue(vec![fresh, other], now).await.unwrap_err();
    assert!(matches!(err, StoreError::KeyConflict { existing, .. } if existing == first.id));
    assert_eq!(
        store.counts().await.unwrap().available,
        1,
        "the batch was not half-written"
    );

    // Without a key, each job derives a stable one from its id.
    let plain = store.enqueue(vec![job("echo", "{}")], now).await.unwrap()[0];
    let rec = h.job(plain.id).await;
    assert_eq!(rec.idempotency_key, format!("jobbox-job-{}", plain.id));
    assert_eq!(h.job(first.id).await.idempotency_key, "order-7");
}

#[tokio::test]
async fn claim_order_is_priority_then_run_at_then_id() {
    let h = Harness::new(&[], "");
    let store = h.store();
    let t = Timestamp(10_000);
    let mk = |priority: i32, run_at: i64| NewJob {
        priority,
        run_at: Some(Timestamp(run_at)),
        ..job("echo", "{}")
    };
    // Ties on priority and run_at: id decides.
    let specs = [
        (1, 500),
        (0, 900),
        (1, 500),
        (0, 100),
        (1, 100),
        (0, 900),
        (2, 0),
    ];
    let ids: Vec<_> = store
        .enqueue(specs.iter().map(|(p, r)| mk(*p, *r)).collect(), t)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    // A job scheduled in the future is not claimed.
    store.enqueue(vec![mk(-5, 20_000)], t).await.unwrap();

    let mut order = Vec::new();
    loop {
        let got = store.claim(claim_req(t, 1, "w")).await.unwrap().jobs;
        let Some(j) = got.first() else { break };
        order.push(j.id);
    }
    let mut expected: Vec<_> = specs
        .iter()
        .zip(&ids)
        .map(|((p, r), id)| (*p, *r, *id))
        .collect();
    expected.sort();
    assert_eq!(order, expected.iter().map(|e| e.2).collect::<Vec<_>>());

    // A batch claim returns the same order.
    let h2 = Harness::new(&[], "");
    let s2 = h2.store();
    s2.enqueue(specs.iter().map(|(p, r)| mk(*p, *r)).collect(), t)
        .await
        .unwrap();
    let batch: Vec<_> = s2
        .claim(claim_req(t, 100, "w"))
        .await
        .unwrap()
        .jobs
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(batch, order);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_claimers_never_hold_the_same_job() {
    let h = Harness::new(&[], "");
    let n = 3000;
    let now = Timestamp(1);
    for chunk in 0..(n / 500) {
        let _ = chunk;
        h.store()
            .enqueue(vec![job("echo", "{}"); 500], now)
            .await
            .unwrap();
    }
    // Two stores on the same database: two writers, as two processes
    // would be.
    let other = h.open_store();
    let stores: [Arc<dyn Store>; 2] = [h.store(), other.clone()];
    let mut tasks = Vec::new();
    for (w, store) in stores.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let jobs = store
                    .claim(claim_req(now, 7, &format!("w{w}")))
                    .await
                    .unwrap()
                    .jobs;
                if jobs.is_empty() {
                    break;
                }
                for j in &jobs {
                    assert_eq!(
                        store.finish(complete(j, "{}", now)).await.unwrap().fenced,
                        Fenced::Applied
                    );
                    mine.push(j.id);
                }
                // Let the other claimer in between rounds.
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut per_worker = Vec::new();
    for t in tasks {
        let mine = t.await.unwrap();
        per_worker.push(mine.len());
        for id in mine {
            assert!(seen.insert(id), "job {id} was claimed twice");
        }
    }
    assert_eq!(seen.len(), n, "every job claimed exactly once");
    assert!(
        per_worker.iter().all(|&c| c > 0),
        "both claimers got work: {per_worker:?}"
    );
    let counts = h.store.counts().await.unwrap();
    assert_eq!(counts.completed, n as u64);
    other.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_worker_is_fenced_out_and_the_new_holder_wins() {
    let h = Harness::new(
        &[],
        "[defaults]\nbackoff_base = \"1s\"\nbackoff_jitter = 0.0\n",
    );
    let clock = Arc::new(ManualClock::new(Timestamp(1_000_000)));
    let host = h.host_with_clock(clock.clone());
    let store = h.store();
    let id = host.enqueue(vec![job("echo", "{}")]).await.unwrap()[0].id;

    let mut req = claim_req(clock.now(), 1, "stale");
    req.lease = Duration::from_secs(5);
    let stale = store.claim(req).await.unwrap().jobs.remove(0);
    assert_eq!((stale.attempt, stale.epoch), (1, 1));

    // The stale worker stops renewing; its lease runs out and the rescuer
    // takes the job back.
    clock.advance(Duration::from_secs(6));
    assert_eq!(host.rescue_expired().await.unwrap(), 1);
    assert_eq!(host.metrics().snapshot().rescued, 1);
    assert_eq!(h.job(id).await.state, JobState::Retryable);

    // A new worker claims it after the backoff.
    clock.advance(Duration::from_secs(2));
    let fresh = store
        .claim(claim_req(clock.now(), 1, "fresh"))
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!((fresh.id, fresh.attempt, fresh.epoch), (id, 2, 2));

    // The stale worker wakes up and writes back: fenced out, nothing kept.
    let stale_done = complete(&stale, r#"{"by":"stale"}"#, clock.now());
    assert_eq!(
        store.finish(stale_done).await.unwrap().fenced,
        Fenced::FencedOut
    );
    // Nor can it renew its lease.
    let renew = store.extend_leases(
        vec![stale.fence()],
        clock.now().plus(Duration::from_secs(30)),
    );
    assert_eq!(renew.await.unwrap(), vec![Fenced::FencedOut]);

    let fresh_done = complete(&fresh, r#"{"by":"fresh"}"#, clock.now());
    assert_eq!(
        store.finish(fresh_done.clone()).await.unwrap().fenced,
        Fenced::Applied
    );
    // A second write-back of the same claim is fenced too.
    assert_eq!(
        store.finish(fresh_done).await.unwrap().fenced,
        Fenced::FencedOut
    );

    crate::support::assert_taken_over(h.store.as_ref(), id, r#"{"by":"fresh"}"#).await;
}

#[tokio::test]
async fn rescuer_does_not_take_a_lease_renewed_since_it_looked() {
    let h = Harness::new(&[], "");
    let clock = ManualClock::new(Timestamp(1_000_000));
    let store = h.store();
    store
        .enqueue(vec![job("echo", "{}")], clock.now())
        .await
        .unwrap();
    let mut req = claim_req(clock.now(), 1, "w");
    req.lease = Duration::from_secs(5);
    let claimed = store.claim(req).await.unwrap().jobs.remove(0);
    clock.advance(Duration::from_secs(6));
    let expired = store.expired_leases(clock.now(), 10).await.unwrap();
    assert_eq!(expired.len(), 1);
    // The worker's late heartbeat lands between the scan and the rescue.
    let until = clock.now().plus(Duration::from_secs(30));
    assert_eq!(
        store
            .extend_leases(vec![claimed.fence()], until)
            .await
            .unwrap(),
        vec![Fenced::Applied]
    );
    let retry = Transition::Retry {
        run_at: clock.now(),
        error: "lease expired".into(),
    };
    let rescued = store
        .rescue(expired[0].clone(), retry, clock.now())
        .await
        .unwrap();
    assert_eq!(rescued, Fenced::FencedOut);
    assert_eq!(store.counts().await.unwrap().running, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_fences_out_its_attempt() {
    let h = Harness::new(&["sleepy"], "[host]\nlease = \"600ms\"\n");
    let running = h.start();
    let id = running.enqueue_one(job("sleepy", r#"{"ms": 3000}"#)).await;
    h.wait_for_state(id, JobState::Running, Duration::from_secs(5))
        .await;
    assert_eq!(
        h.store
            .cancel_job(id, jobbox::time::SystemClock.now())
            .await
            .unwrap(),
        JobState::Cancelled
    );

    // The next lease renewal (every 200ms) finds the job gone and abandons
    // the attempt well before the plugin would have finished.
    let host = Arc::clone(&running.host);
    crate::support::wait_until(
        Duration::from_secs(2),
        "the attempt to be fenced out",
        || {
            let host = Arc::clone(&host);
            async move {
                (host.metrics().snapshot().fenced_out == 1 && host.in_flight() == 0).then_some(())
            }
        },
    )
    .await;
    running.stop().await;

    let rec = h.job(id).await;
    assert_eq!(rec.state, JobState::Cancelled);
    assert_eq!(rec.attempts.len(), 1);
    assert_eq!(rec.attempts[0].outcome, AttemptOutcome::Cancelled);
    // The attempt names the host that was running it.
    assert_eq!(
        rec.attempts[0].host.as_deref(),
        Some(h.config.host.worker_id.as_str())
    );
    // Cancelling again is refused with a clear error.
    let err = h.store.cancel_job(id, Timestamp(0)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("job {id} is cancelled: cancel needs available, retryable or running")
    );
}

#[tokio::test]
async fn operator_retry_and_cancel_follow_the_state_machine() {
    let h = Harness::new(&[], "");
    let store = h.store();
    let now = Timestamp(5_000);
    let mut one_shot = job("echo", "{}");
    one_shot.max_attempts = Some(1);
    let id = store.enqueue(vec![one_shot], now).await.unwrap()[0].id;
    let claimed = store
        .claim(claim_req(now, 1, "w"))
        .await
        .unwrap()
        .jobs
        .remove(0);
    let discard = Finish {
        transition: Transition::Discard {
            error: "boom".into(),
        },
        ..complete(&claimed, "", now)
    };
    assert_eq!(store.finish(discard).await.unwrap().fenced, Fenced::Applied);
    assert_eq!(h.job(id).await.state, JobState::Discarded);

    // retry: discarded → available, with one more attempt allowed.
    assert_eq!(store.retry_job(id, now).await.unwrap(), JobState::Available);
    let rec = h.job(id).await;
    assert_eq!(
        (rec.state, rec.attempt, rec.max_attempts),
        (JobState::Available, 1, 2)
    );
    // retry of an available job is refused; unknown ids are not found.
    assert!(matches!(
        store.retry_job(id, now).await,
        Err(StoreError::InvalidState { .. })
    ));
    assert!(matches!(
        store.retry_job(999, now).await,
        Err(StoreError::NotFound(999))
    ));
    // cancel: available → cancelled.
    assert_eq!(
        store.cancel_job(id, now).await.unwrap(),
        JobState::Cancelled
    );
    assert!(matches!(
        store.cancel_job(id, now).await,
        Err(StoreError::InvalidState { .. })
    ));
}
