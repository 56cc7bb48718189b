//! Outbound HTTP from plugins: deny by default, an allowlist, stable
//! idempotency keys, and requests that die with their attempt.

use std::time::{Duration, Instant};

use jobbox::job::{AttemptOutcome, JobState};

use crate::server::{Reply, TestServer};
use crate::support::{Harness, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_allowlist_are_refused() {
    let server = TestServer::start(|_, _| Reply::Status(200)).await;
    let other_port = server.addr.port().wrapping_add(1).max(1024);
    let h = Harness::new(
        &["http-call"],
        &format!(
            r#"
            [plugins.http-call]
            max_attempts = 1
            http_allow = [
                {{ url = "http://127.0.0.1:{other_port}" }},
                {{ url = "http://127.0.0.1:{}", methods = ["POST"] }},
                {{ url = "http://169.254.169.254" }},
            ]
            "#,
            server.addr.port()
        ),
    );
    let running = h.start();
    let ids: Vec<_> = running
        .enqueue(vec![
            // Not allowed at all: no plugin ever had this plugin's grant.
            job(
                "http-call",
                &format!(r#"{{"url":"{}"}}"#, server.url("/get")),
            ),
            // Allowed host and port, but not this method.
            job(
                "http-call",
                &format!(r#"{{"url":"{}","method":"PUT"}}"#, server.url("/put")),
            ),
            // Allowed by a rule, but a metadata address is never reachable.
            job(
                "http-call",
                r#"{"url":"http://169.254.169.254/latest/meta-data"}"#,
            ),
            // Allowed.
            job(
                "http-call",
                &format!(
                    r#"{{"url":"{}","method":"POST","body":"hi"}}"#,
                    server.url("/post")
                ),
            ),
        ])
        .await;
    let mut errors = Vec::new();
    for id in &ids[..3] {
        let rec = h
            .wait_for_state(*id, JobState::Discarded, Duration::from_secs(10))
            .await;
        errors.push(rec.error.unwrap());
    }
    let ok = h
        .wait_for_state(ids[3], JobState::Completed, Duration::from_secs(10))
        .await;
    running.stop().await;

    assert!(errors[0].contains("HttpRequestDenied"), "{}", errors[0]);
    assert!(errors[1].contains("HttpRequestDenied"), "{}", errors[1]);
    assert!(
        errors[2].contains("DestinationIpProhibited"),
        "{}",
        errors[2]
    );
    let out: serde_json::Value = serde_json::from_str(ok.output.as_deref().unwrap()).unwrap();
    assert_eq!(out["statuses"], serde_json::json!([200]));
    let requests = server.requests();
    assert_eq!(
        requests.len(),
        1,
        "refused requests never reached the server"
    );
    assert_eq!(requests[0].path, "/post");
    assert_eq!(requests[0].body, b"hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_carries_a_key_stable_across_retries() {
    // The first request hangs until the attempt's deadline kills it; every
    // later one is answered.
    let server = TestServer::start(|_, n| {
        if n == 0 {
            Reply::Hang
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let h = Harness::new(
        &["http-call"],
        &format!(
            r#"
            [plugins.http-call]
            timeout = "400ms"
            backoff_base = "10ms"
            http_allow = [{{ url = "http://127.0.0.1:{}" }}]
            "#,
            server.addr.port()
        ),
    );
    let running = h.start();
    let id = running
        .enqueue_one(job(
            "http-call",
            &format!(r#"{{"url":"{}","times":2}}"#, server.url("/x")),
        ))
        .await;
    let rec = h
        .wait_for_state(id, JobState::Completed, Duration::from_secs(10))
        .await;
    running.stop().await;

    assert_eq!(rec.attempts[0].outcome, AttemptOutcome::Timeout);
    assert_eq!(rec.attempts[1].outcome, AttemptOutcome::Completed);
    let keys: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_owned())
        .collect();
    let k = format!("jobbox-job-{id}:http");
    // Attempt 1: request 1 (hung). Attempt 2: requests 1 and 2.
    assert_eq!(
        keys,
        vec![format!("{k}:1"), format!("{k}:1"), format!("{k}:2")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_is_aborted_at_the_deadline() {
    let server = TestServer::start(|_, _| Reply::Hang).await;
    let h = Harness::new(
        &["http-call"],
        &format!(
            "[plugins.http-call]\ntimeout = \"300ms\"\nmax_attempts = 1\nhttp_allow = [{{ url = \"http://127.0.0.1:{}\" }}]\n",
            server.addr.port()
        ),
    );
    let running = h.start();
    let started = Instant::now();
    let id = running
        .enqueue_one(job(
            "http-call",
            &format!(r#"{{"url":"{}"}}"#, server.url("/slow")),
        ))
        .await;
    let rec = h
        .wait_for_state(id, JobState::Discarded, Duration::from_secs(10))
        .await;
    assert_eq!(rec.attempts[0].outcome, AttemptOutcome::Timeout);
    // The server sees the client close the connection, at the deadline.
    let closed = crate::support::wait_until(
        Duration::from_secs(2),
        "the connection to close",
        || async { server.closed().first().copied() },
    )
    .await;
    running.stop().await;
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let held = closed.duration_since(requests[0].at);
    // At the 300 ms deadline (the margin is for a loaded machine), not
    // when the server would have answered: it never does.
    assert!(
        held < Duration::from_millis(1500),
        "the request was held {held:?}"
    );
    assert!(closed.duration_since(started) < Duration::from_secs(3));
}
