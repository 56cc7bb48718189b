//! The outbox: events committed with completions, delivered at least once
//! by the relay, byte-identical on every retry; completion callbacks.

use std::sync::Arc;
use std::time::Duration;

use jobbox::job::{AttemptOutcome, Effects, Fenced, Finish, JobState, NewEvent, Transition};
use jobbox::outbox::EventState;
use jobbox::store::{ClaimRequest, Store};
use jobbox::time::{Clock, SystemClock};

use crate::server::{Reply, TestServer};
use crate::support::{Harness, job, wait_until};

const FAST_RELAY: &str = r#"
[outbox]
poll_interval = "20ms"
backoff_base = "30ms"
backoff_max = "1s"
backoff_jitter = 0.0
"#;

async fn wait_event_state(
    store: &Arc<dyn Store>,
    state: EventState,
    n: usize,
) -> Vec<jobbox::outbox::EventRecord> {
    let store = Arc::clone(store);
    wait_until(
        Duration::from_secs(15),
        &format!("{n} event(s) {state}"),
        || {
            let store = Arc::clone(&store);
            async move {
                let events = store.list_events(Some(state), None, 100).await.unwrap();
                (events.len() >= n).then_some(events)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_retry_of_an_event_is_byte_identical() {
    let server = TestServer::start(|_, n| {
        if n < 2 {
            Reply::Status(503)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let h = Harness::new(
        &["emit"],
        &format!(
            "{FAST_RELAY}[outbox.sinks.orders]\nurl = \"{}\"\n[plugins.emit]\noutbox_topics = [\"orders\"]\n",
            server.url("/hook")
        ),
    );
    let running = h.start();
    let id = running
        .enqueue_one(job(
            "emit",
            r#"{"events":[{"topic":"orders","payload":{"order":7,"total":1250}}]}"#,
        ))
        .await;
    h.wait_for_state(id, JobState::Completed, Duration::from_secs(10))
        .await;
    let delivered = wait_event_state(&h.store(), EventState::Delivered, 1).await;
    running.stop().await;

    let requests = server.requests();
    assert_eq!(requests.len(), 3, "two 503s, then delivered");
    let key = format!("jobbox-job-{id}:event:1");
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook");
        assert_eq!(
            r.body, requests[0].body,
            "the body is byte-identical on every retry"
        );
        assert_eq!(r.header("idempotency-key"), Some(key.as_str()));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["data"], serde_json::json!({"order": 7, "total": 1250}));
    assert_eq!(body["topic"], "orders");
    assert_eq!(body["job_id"], id);
    assert_eq!(delivered[0].attempts, 3);
    assert_eq!(delivered[0].last_status, Some(200));
    assert_eq!(delivered[0].body, requests[0].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_counts_as_delivered_and_bad_request_fails_without_retrying() {
    let server = TestServer::start(|r, _| match r.path.as_str() {
        "/dupe" => Reply::Status(409),
        _ => Reply::Status(400),
    })
    .await;
    let h = Harness::new(
        &["emit"],
        &format!(
            "{FAST_RELAY}[outbox.sinks.dupe]\nurl = \"{}\"\n[outbox.sinks.bad]\nurl = \"{}\"\n[plugins.emit]\noutbox_topics = [\"dupe\", \"bad\"]\n",
            server.url("/dupe"),
            server.url("/bad")
        ),
    );
    let running = h.start();
    running
        .host
        .enqueue(vec![job(
            "emit",
            r#"{"events":[{"topic":"dupe","payload":{"a":1}},{"topic":"bad","payload":{"b":2}}]}"#,
        )])
        .await
        .unwrap();
    let store = h.store();
    let delivered = wait_event_state(&store, EventState::Delivered, 1).await;
    let failed = wait_event_state(&store, EventState::Failed, 1).await;
    // Well past several backoffs: the 400 is not retried.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let snapshot = running.host.metrics().snapshot();
    running.stop().await;

    assert_eq!(delivered[0].topic, "dupe");
    assert_eq!(delivered[0].last_status, Some(409));
    assert!(
        delivered[0]
            .note
            .as_deref()
            .unwrap()
            .contains("already had it")
    );
    assert_eq!(failed[0].topic, "bad");
    assert_eq!(failed[0].attempts, 1);
    assert_eq!(failed[0].last_status, Some(400));
    let bad_requests = server
        .requests()
        .iter()
        .filter(|r| r.path == "/bad")
        .count();
    assert_eq!(bad_requests, 1, "no retry storm");
    assert_eq!(snapshot.events_failed, 1);
    assert_eq!(snapshot.events_delivered, 1);
}

/// Commits one completed job with `events` straight through the store.
async fn commit_events(h: &Harness, events: Vec<(&str, String)>) {
    let store = h.store();
    let now = SystemClock.now();
    store.enqueue(vec![job("emit", "{}")], now).await.unwrap();
    let claimed = store
        .claim(ClaimRequest {
            now,
            limit: 1,
            exclude_kinds: vec![],
            lease: Duration::from_secs(60),
            worker: "t".into(),
            rates: Vec::new(),
        })
        .await
        .unwrap()
        .jobs
        .remove(0);
    let events = events
        .into_iter()
        .enumerate()
        .map(|(i, (topic, url))| NewEvent {
            topic: topic.into(),
            url,
            body: format!(r#"{{"n":{i}}}"#).into_bytes(),
            idempotency_key: format!("{}:event:{}", claimed.idempotency_key, i + 1),
        })
        .collect();
    let finish = Finish {
        fence: claimed.fence(),
        attempt: crate::support::completed(1, now, None),
        transition: Transition::Complete {
            output: "{}".into(),
        },
        effects: Effects {
            namespace: "emit".into(),
            events,
            ..Effects::default()
        },
        on_conflict: None,
        breaker: None,
    };
    assert_eq!(store.finish(finish).await.unwrap().fenced, Fenced::Applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_iterations_report_all_partial_and_no_failures() {
    let server = TestServer::start(|r, _| match r.path.as_str() {
        "/ok" => Reply::Status(204),
        _ => Reply::Status(500),
    })
    .await;
    let (ok, down) = (server.url("/ok"), server.url("/down"));
    let h = Harness::new(
        &[],
        "[outbox]\nbackoff_base = \"1h\"\nbackoff_max = \"2h\"\n",
    );
    let host = h.host();

    commit_events(&h, vec![("a", ok.clone()), ("b", ok.clone())]).await;
    let all_ok = host.relay_once().await.unwrap();
    assert_eq!((all_ok.due, all_ok.delivered, all_ok.outcome), (2, 2, "ok"));

    commit_events(&h, vec![("a", ok.clone()), ("b", down.clone())]).await;
    let partial = host.relay_once().await.unwrap();
    assert_eq!(
        (
            partial.due,
            partial.delivered,
            partial.retried,
            partial.outcome
        ),
        (2, 1, 1, "partial")
    );

    commit_events(&h, vec![("a", down.clone()), ("b", down.clone())]).await;
    let all_failed = host.relay_once().await.unwrap();
    assert_eq!(
        (
            all_failed.due,
            all_failed.delivered,
            all_failed.retried,
            all_failed.outcome
        ),
        (2, 0, 2, "failed")
    );

    let m = host.metrics().snapshot();
    assert_eq!(m.relay_iterations, 3);
    assert_eq!(m.relay_partial_iterations, 1);
    assert_eq!(m.relay_failed_iterations, 1);
    assert_eq!(m.last_relay.unwrap().outcome, "failed");
    // Delivered rows keep their state; the failed ones wait for their retry.
    let store = h.store();
    assert_eq!(
        store
            .list_events(Some(EventState::Delivered), None, 100)
            .await
            .unwrap()
            .len(),
        3
    );
    let pending = store
        .list_events(Some(EventState::Pending), None, 100)
        .await
        .unwrap();
    assert_eq!(pending.len(), 3);
    assert!(
        pending
            .iter()
            .all(|e| e.last_status == Some(500) && e.attempts == 1)
    );
    // Nothing is due yet (backoff 1h): an empty iteration is not a failure.
    let idle = host.relay_once().await.unwrap();
    assert_eq!(idle.due, 0);
    assert_eq!(host.metrics().snapshot().relay_iterations, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_events_survive_a_restart_and_are_delivered_when_the_receiver_is_back() {
    // Reserve a port, then leave it closed: the receiver is down.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/back");
    let h = Harness::new(
        &[],
        "[outbox]\nbackoff_base = \"10ms\"\nbackoff_jitter = 0.0\n",
    );
    {
        let host = h.host();
        commit_events(&h, vec![("a", url.clone())]).await;
        let down = host.relay_once().await.unwrap();
        assert_eq!(down.outcome, "failed");
        // A graceful stop leaves the event pending.
        let running = crate::support::Running::start(host);
        running.stop().await;
    }
    let store = h.store();
    let pending = store
        .list_events(Some(EventState::Pending), None, 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert!(pending[0].last_error.is_some());

    // A new host on the same database, once the receiver is back.
    let server = TestServer::start_on(addr, |_, _| Reply::Status(200)).await;
    let running = h.start();
    let delivered = wait_event_state(&store, EventState::Delivered, 1).await;
    running.stop().await;
    assert_eq!(server.requests().len(), 1);
    assert_eq!(server.requests()[0].body, br#"{"n":0}"#);
    assert!(delivered[0].attempts >= 2, "{}", delivered[0].attempts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_refuses_emits_and_fails_the_attempt() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::new(
        &["emit"],
        &format!(
            "[outbox]\nmax_pending = 1\n[outbox.sinks.t]\nurl = \"http://{addr}/\"\n[plugins.emit]\noutbox_topics = [\"t\"]\nmax_attempts = 1\n"
        ),
    );
    let running = h.start();
    let id = running
        .enqueue_one(job(
            "emit",
            r#"{"events":[{"topic":"t","payload":1},{"topic":"t","payload":2}]}"#,
        ))
        .await;
    let rec = h
        .wait_for_state(id, JobState::Discarded, Duration::from_secs(10))
        .await;
    running.stop().await;
    assert_eq!(rec.attempts[0].outcome, AttemptOutcome::RetryableError);
    assert!(
        rec.error.as_deref().unwrap().contains("backlog full"),
        "{:?}",
        rec.error
    );
    assert!(
        h.store()
            .list_events(None, None, 10)
            .await
            .unwrap()
            .is_empty(),
        "no event of the failed attempt was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_topic_is_denied() {
    let h = Harness::new(
        &["emit"],
        "[outbox.sinks.allowed]\nurl = \"http://127.0.0.1:9/\"\n[plugins.emit]\nmax_attempts = 1\n",
    );
    let running = h.start();
    let id = running
        .enqueue_one(job(
            "emit",
            r#"{"events":[{"topic":"allowed","payload":1}]}"#,
        ))
        .await;
    let rec = h
        .wait_for_state(id, JobState::Discarded, Duration::from_secs(10))
        .await;
    running.stop().await;
    assert!(
        rec.error
            .as_deref()
            .unwrap()
            .contains("may not emit on topic"),
        "{:?}",
        rec.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_callbacks_carry_the_result_with_a_stable_key() {
    let server = TestServer::start(|_, n| {
        if n == 0 {
            Reply::Status(502)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let h = Harness::new(
        &["echo", "fail"],
        &format!(
            "{FAST_RELAY}callback_allow = [{{ url = \"{}\" }}]\n[plugins.fail]\nmax_attempts = 1\n",
            server.url("")
        ),
    );
    let running = h.start();
    let mut ok = job("echo", r#"{"hello":"callback"}"#);
    ok.callback_url = Some(server.url("/done"));
    let mut bad = job("fail", r#"{"mode":"permanent","message":"nope"}"#);
    bad.callback_url = Some(server.url("/done"));
    let ids: Vec<_> = running.enqueue(vec![ok, bad]).await;
    wait_event_state(&h.store(), EventState::Delivered, 2).await;
    running.stop().await;

    let requests = server.requests();
    assert_eq!(requests.len(), 3, "one retry after the 502");
    let for_job = |id: i64| -> Vec<serde_json::Value> {
        requests
            .iter()
            .filter(|r| {
                r.header("idempotency-key") == Some(format!("jobbox-job-{id}:callback:1").as_str())
            })
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    };
    let completed = for_job(ids[0]);
    assert!(!completed.is_empty());
    assert!(completed.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(completed[0]["state"], "completed");
    assert_eq!(
        completed[0]["output"],
        serde_json::json!({"hello": "callback"})
    );
    let discarded = for_job(ids[1]);
    assert_eq!(discarded[0]["state"], "discarded");
    assert_eq!(discarded[0]["error"], "nope");
}

/// The ledger-credit example end to end: balances in kv, exactly once per
/// transfer, a `credited` event per applied transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_example_moves_money_exactly_once_and_announces_it() {
    let server = TestServer::start(|_, _| Reply::Status(200)).await;
    let h = Harness::new(
        &["ledger-credit"],
        &format!(
            "{FAST_RELAY}[outbox.sinks.credited]\nurl = \"{}\"\n\
             [plugins.ledger-credit]\nkv = true\noutbox_topics = [\"credited\"]\nmax_attempts = 20\nbackoff_base = \"5ms\"\n",
            server.url("/credited")
        ),
    );
    let running = h.start();
    let transfer = |id: &str, account: &str, amount: u64, from: Option<&str>| {
        let mut p =
            serde_json::json!({"transfer_id": id, "account": account, "amount_cents": amount});
        if let Some(from) = from {
            p["from"] = from.into();
        }
        job("ledger-credit", &p.to_string())
    };
    let funded = running
        .enqueue_one(transfer("t1", "alice", 500, None))
        .await;
    h.wait_for_state(funded, JobState::Completed, Duration::from_secs(10))
        .await;
    // Two transfers out of alice race each other; then one she cannot afford,
    // and a replay of the first under a new job.
    let ids = running
        .enqueue(vec![
            transfer("t2", "bob", 200, Some("alice")),
            transfer("t3", "carol", 100, Some("alice")),
            transfer("t4", "bob", 1000, Some("alice")),
            transfer("t1", "alice", 500, None),
        ])
        .await;
    for id in &ids[..2] {
        h.wait_for_state(*id, JobState::Completed, Duration::from_secs(10))
            .await;
    }
    let broke = h
        .wait_for_state(ids[2], JobState::Discarded, Duration::from_secs(10))
        .await;
    let replay = h
        .wait_for_state(ids[3], JobState::Completed, Duration::from_secs(10))
        .await;
    wait_event_state(&h.store(), EventState::Delivered, 3).await;
    running.stop().await;

    assert!(
        broke
            .error
            .as_deref()
            .unwrap()
            .contains("insufficient funds in alice"),
        "{:?}",
        broke.error
    );
    let replayed: serde_json::Value =
        serde_json::from_str(replay.output.as_deref().unwrap()).unwrap();
    assert_eq!(
        replayed["balance_after_cents"], 500,
        "the replay returned the recorded result"
    );
    let store = h.store();
    let balance = |account: &'static str| {
        let store = Arc::clone(&store);
        async move {
            let v = store
                .kv_get("ledger-credit".into(), format!("balance/{account}"))
                .await
                .unwrap()
                .value
                .unwrap();
            String::from_utf8(v).unwrap()
        }
    };
    assert_eq!(balance("alice").await, "200");
    assert_eq!(balance("bob").await, "200");
    assert_eq!(balance("carol").await, "100");
    // One event per applied transfer: t1, t2, t3 (not the replay, not t4).
    let mut credited: Vec<String> = server
        .requests()
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            body["data"]["transfer_id"].as_str().unwrap().to_owned()
        })
        .collect();
    credited.sort();
    credited.dedup();
    assert_eq!(credited, vec!["t1", "t2", "t3"]);
}

/// The outbox pages newest first: each page starts below the last id of
/// the one before, every event appears once, and a state filter pages the
/// same way.
#[tokio::test]
async fn events_page_newest_first_below_the_last_id_seen() {
    let h = Harness::new(&[], "");
    let url = "http://127.0.0.1:9/unused".to_owned();
    commit_events(&h, (0..7).map(|_| ("t", url.clone())).collect()).await;
    let store = h.store();
    let all: Vec<i64> = store
        .list_events(None, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    for state in [None, Some(EventState::Pending)] {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store.list_events(state, before, 3).await.unwrap();
            assert!(page.len() <= 3);
            seen.extend(page.iter().map(|e| e.id));
            match page.last() {
                Some(last) if page.len() == 3 => before = Some(last.id),
                _ => break,
            }
        }
        assert_eq!(seen, all, "state {state:?}");
    }
    assert!(
        store
            .list_events(Some(EventState::Failed), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_events(None, Some(all[6]), 10)
            .await
            .unwrap()
            .is_empty()
    );
}
