//! The admin HTTP API: every route's success and refusals, authentication,
//! read-only mode, readiness, metrics and the event stream.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use jobbox::api::{ApiConfig, ApiState, ROUTES, router};
use jobbox::executor::Host;
use jobbox::job::{JobId, JobState, NewJob};
use jobbox::store::Store;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::faulty::Faulty;
use crate::support::{Harness, Running, job, wait_until};

/// The routes the dashboard reads, and its pages.
mod overview;

const TOKEN: &str = "s3cret-token-for-tests";

/// The API of one host, called in process (`oneshot`), with or without the
/// token.
struct Api {
    router: axum::Router,
}

struct Reply {
    status: StatusCode,
    body: Value,
    text: String,
}

impl Api {
    fn new(host: Arc<Host>, config: ApiConfig) -> Api {
        Api {
            router: router(ApiState::new(host, config)),
        }
    }

    fn with_token(host: Arc<Host>) -> Api {
        Api::new(
            host,
            ApiConfig {
                token: Some(TOKEN.into()),
                ..ApiConfig::default()
            },
        )
    }

    async fn raw(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.raw(req).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None, Some(TOKEN)).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body), Some(TOKEN)).await
    }
}

/// A concrete path for a route pattern.
fn concrete(path: &str) -> String {
    path.replace("{id}", "1")
        .replace("{kind}", "echo")
        .replace("{queue}", "default")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_missing_or_wrong_token_and_changes_nothing() {
    let h = Harness::new(&["echo"], "");
    let api = Api::with_token(h.host());
    h.store
        .enqueue(vec![job("echo", "{}")], jobbox::time::Timestamp(1))
        .await
        .unwrap();
    let before = h.store.counts().await.unwrap();
    for (method, path, _) in ROUTES {
        let method: Method = method.parse().unwrap();
        let path = concrete(path);
        for token in [None, Some("wrong-token-0123456789")] {
            let body = (method != Method::GET).then(|| json!({"note": "x", "kind": "echo"}));
            let r = api.call(method.clone(), &path, body, token).await;
            if path == "/healthz" || path == "/readyz" {
                assert!(r.status.is_success(), "{method} {path}: {}", r.status);
                continue;
            }
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert_eq!(r.body["error"]["code"], "unauthorized", "{method} {path}");
        }
    }
    assert_eq!(
        h.store.counts().await.unwrap(),
        before,
        "nothing was touched"
    );
    assert!(h.store.schedules().await.unwrap().is_empty());
    assert!(h.store.pauses().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_refuses_every_mutating_route_and_answers_the_others() {
    let h = Harness::new(&["echo"], "");
    let api = Api::new(
        h.host(),
        ApiConfig {
            token: Some(TOKEN.into()),
            read_only: true,
            ..ApiConfig::default()
        },
    );
    for (method, path, mutating) in ROUTES {
        let method: Method = method.parse().unwrap();
        let path = concrete(path);
        if path == "/api/events" {
            continue; // a stream: checked below
        }
        let body = mutating.then(|| json!({"note": "x", "kind": "echo"}));
        let r = api.call(method.clone(), &path, body, Some(TOKEN)).await;
        if *mutating {
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path}");
            assert_eq!(r.body["error"]["code"], "read_only");
        } else {
            assert_ne!(r.status, StatusCode::FORBIDDEN, "{method} {path}");
            assert!(
                r.status.is_success() || r.status == StatusCode::NOT_FOUND,
                "{method} {path}: {} {}",
                r.status,
                r.text
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_enqueue_wait_list_show_retry_and_cancel() {
    let h = Harness::new(&["echo", "fail"], "[host]\npoll_interval = \"20ms\"\n");
    let running = h.start();
    let api = Api::with_token(Arc::clone(&running.host));

    // A synchronous call: the answer carries the output.
    let r = api
        .post(
            "/api/jobs?wait=10s",
            json!({"kind": "echo", "payload": {"n": 7}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["created"], true);
    assert_eq!(r.body["job"]["state"], "completed");
    assert_eq!(r.body["job"]["output"], json!({"n": 7}));

    // Idempotency as in the CLI.
    let one = json!({"kind": "echo", "payload": {"a": 1}, "idempotency_key": "order-1"});
    let first = api.post("/api/jobs", one.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = api.post("/api/jobs", one).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        (again.body["id"].clone(), again.body["created"].clone()),
        (first.body["id"].clone(), json!(false))
    );
    let clash = api
        .post(
            "/api/jobs",
            json!({"kind": "echo", "payload": {"a": 2}, "idempotency_key": "order-1"}),
        )
        .await;
    assert_eq!(clash.status, StatusCode::CONFLICT);
    assert_eq!(clash.body["error"]["code"], "idempotency_conflict");

    // Bad requests name what is wrong, and write nothing. (Jobs already
    // there may finish meanwhile: count them all, whatever their state.)
    let jobs = || async {
        let c = h.store.counts().await.unwrap();
        c.available + c.running + c.retryable + c.completed + c.discarded + c.cancelled
    };
    let before = jobs().await;
    for (body, part) in [
        (json!({"kind": "echo", "payloadd": {}}), "payloadd"),
        (json!([{"kind": "echo"}, {"kind": "bad kind"}]), "[1]."),
        (json!({"kind": "echo", "priority": "high"}), "priority"),
        (json!({"kind": "echo", "run_at": "yesterday"}), "run_at"),
        (
            json!({"kind": "echo", "callback_url": "ftp://x"}),
            "callback_url",
        ),
        (json!([]), "no jobs"),
        (json!(42), "expected a job object"),
    ] {
        let r = api.post("/api/jobs", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert!(r.text.contains(part), "{part:?} not in {}", r.text);
    }
    assert_eq!(jobs().await, before);
    let req = Request::post("/api/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(
        api.raw(req).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let big = json!({"kind": "echo", "payload": {"x": "y".repeat(9 << 20)}});
    let r = api.post("/api/jobs", big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.body["error"]["code"], "payload_too_large");

    // Many at once; then keyset pages, newest first.
    let batch: Vec<Value> = (0..7)
        .map(|i| json!({"kind": "echo", "payload": {"i": i}, "queue": "paged"}))
        .collect();
    let r = api.post("/api/jobs", Value::Array(batch)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_array().unwrap().len(), 7);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/jobs?queue=paged&limit=3&cursor={c}"),
            None => "/api/jobs?queue=paged&limit=3".to_owned(),
        };
        let page = api.get(&path).await;
        assert_eq!(page.status, StatusCode::OK);
        for j in page.body["jobs"].as_array().unwrap() {
            seen.push(j["id"].as_i64().unwrap());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seen:?}"
    );
    assert_eq!(
        api.get("/api/jobs?limit=0").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.get("/api/jobs?state=lost").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.get("/api/jobs?cursor=abc").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.get("/api/jobs?colour=red").await.status,
        StatusCode::BAD_REQUEST
    );

    // Show, retry, cancel.
    let id = first.body["id"].as_i64().unwrap();
    let shown = api.get(&format!("/api/jobs/{id}")).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.body["idempotency_key"], "order-1");
    assert_eq!(api.get("/api/jobs/0").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(api.get("/api/jobs/x").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        api.get("/api/jobs/99999").await.status,
        StatusCode::NOT_FOUND
    );
    let later = api
        .post("/api/jobs", json!({"kind": "echo", "delay": "1h"}))
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    let r = api
        .post(&format!("/api/jobs/{later}/cancel"), json!({}))
        .await;
    assert_eq!(
        (r.status, r.body["state"].clone()),
        (StatusCode::OK, json!("cancelled"))
    );
    let r = api
        .post(&format!("/api/jobs/{later}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = api
        .post(&format!("/api/jobs/{later}/retry"), json!({}))
        .await;
    assert_eq!(
        (r.status, r.body["state"].clone()),
        (StatusCode::OK, json!("available"))
    );
    h.wait_for_state(later, JobState::Completed, Duration::from_secs(10))
        .await;

    // Bulk: everything a filter matches, bounded, counted.
    let failing: Vec<Value> = (0..5)
        .map(|_| json!({"kind": "fail", "payload": {"mode": "permanent"}, "queue": "bulk"}))
        .collect();
    let ids: Vec<i64> = api
        .post("/api/jobs", Value::Array(failing))
        .await
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    for id in &ids {
        h.wait_for_state(*id, JobState::Discarded, Duration::from_secs(10))
            .await;
    }
    running.stop().await;
    let r = api
        .post(
            "/api/jobs/retry",
            json!({"queue": "bulk", "state": "discarded", "limit": 3}),
        )
        .await;
    assert_eq!(
        (r.body["count"].clone(), r.body["more"].clone()),
        (json!(3), json!(true)),
        "{}",
        r.text
    );
    let r = api.post("/api/jobs/retry", json!({"queue": "bulk"})).await;
    assert_eq!(
        (r.body["count"].clone(), r.body["more"].clone()),
        (json!(2), json!(false))
    );
    let r = api.post("/api/jobs/cancel", json!({"queue": "bulk"})).await;
    assert_eq!(r.body["count"], 5);
    assert_eq!(
        api.post("/api/jobs/cancel", json!({"queue": "bulk", "limit": 0}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.post("/api/jobs/cancel", json!({"queu": "bulk"}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_plugins_queues_outbox_and_hosts() {
    let h = Harness::new(&["echo"], "[plugins.echo]\nrate = \"100/s\"\n");
    let host = h.host();
    let api = Api::with_token(Arc::clone(&host));
    let put = |body: Value| {
        let req = Request::put("/api/schedules/nightly")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        api.raw(req)
    };
    let s = json!({"cron": "0 3 * * *", "timezone": "Europe/Berlin", "kind": "echo"});
    let r = put(s.clone()).await;
    assert_eq!(
        (r.status, r.body["result"].clone()),
        (StatusCode::CREATED, json!("created")),
        "{}",
        r.text
    );
    let r = put(s).await;
    assert_eq!(r.body["result"], "unchanged");
    let r = put(json!({"cron": "0 4 * * *", "kind": "echo"})).await;
    assert_eq!(
        (r.body["result"].clone(), r.body["cadence_changed"].clone()),
        (json!("updated"), json!(true))
    );
    let r = put(json!({"cron": "0 99 * * *", "kind": "echo"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text.contains("cron"), "{}", r.text);
    let r = put(json!({"id": "other", "every": "1h", "kind": "echo"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = api.get("/api/schedules/nightly?next=3").await;
    assert_eq!(r.body["upcoming"].as_array().unwrap().len(), 3);
    assert_eq!(r.body["spec"]["cron"], "0 4 * * *");
    assert_eq!(
        api.get("/api/schedules")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = api
        .post("/api/schedules/nightly/pause", json!({"note": "migrating"}))
        .await;
    assert_eq!(
        (r.body["paused"].clone(), r.body["changed"].clone()),
        (json!(true), json!(true))
    );
    let r = api.post("/api/schedules/nightly/pause", json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "the note is required");
    assert_eq!(
        api.post("/api/schedules/nightly/resume", json!({}))
            .await
            .body["changed"],
        true
    );
    let r = api.post("/api/schedules/nightly/trigger", json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["idempotency_key"], "schedule:nightly:trigger:1");
    assert_eq!(
        api.get("/api/schedules/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/api/schedules/bad%20id").await.status,
        StatusCode::BAD_REQUEST
    );
    let del = Request::delete("/api/schedules/nightly")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(api.raw(del).await.status, StatusCode::NO_CONTENT);

    // Plugins: settings, content hash, safeguards; pause and resume.
    let r = api.get("/api/plugins").await;
    let echo = &r.body["plugins"][0];
    assert_eq!(echo["kind"], "echo");
    assert_eq!(echo["content_hash"].as_str().unwrap().len(), 64);
    assert_eq!(echo["settings"]["rate"]["count"], 100);
    assert_eq!(echo["breaker"], Value::Null);
    let r = api
        .post("/api/plugins/echo/pause", json!({"note": "vendor down"}))
        .await;
    assert_eq!(r.body["changed"], true);
    assert_eq!(
        api.get("/api/plugins").await.body["plugins"][0]["paused"]["note"],
        "vendor down"
    );
    assert_eq!(
        api.post("/api/plugins/echo/resume", json!({})).await.body["changed"],
        true
    );
    assert_eq!(
        api.post("/api/plugins/bad%20kind/resume", json!({}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let r = api.post("/api/plugins/echo/breaker/reset", json!({})).await;
    assert_eq!(r.body["was"], Value::Null);
    // A rescan that finds the directory as it was.
    let r = api.post("/api/plugins/reload", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["unchanged"], json!(["echo"]));
    assert_eq!(r.body["replaced"], json!([]));

    // Queues.
    let r = api
        .post("/api/queues/reports/pause", json!({"note": "db migration"}))
        .await;
    assert_eq!(r.body["paused"], true);
    let r = api.get("/api/queues").await;
    let reports = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "reports")
        .unwrap()
        .clone();
    assert_eq!(reports["paused"]["note"], "db migration");
    assert_eq!(
        api.post("/api/queues/reports/resume", json!({})).await.body["changed"],
        true
    );

    // Outbox and hosts.
    assert_eq!(api.get("/api/outbox?state=failed").await.body, json!([]));
    assert_eq!(
        api.get("/api/outbox?state=lost").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.get("/api/outbox?before=1&limit=5").await.body,
        json!([])
    );
    let r = api.get("/api/outbox?before=soon").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("before"),
        "{}",
        r.body
    );
    assert_eq!(
        api.post("/api/outbox/7/retry", json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    host.beat(true).await.unwrap();
    let r = api.get("/api/hosts").await;
    assert_eq!(r.body[0]["id"], host.config().host.worker_id);
    assert_eq!(r.body[0]["ready"], true);

    // Unknown routes and methods answer JSON too.
    let r = api.get("/api/nothing").await;
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    let r = api
        .call(Method::DELETE, "/api/jobs", None, Some(TOKEN))
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_served_openapi_document_is_the_repos_and_names_every_route() {
    let h = Harness::new(&[], "");
    let api = Api::with_token(h.host());
    let r = api.get("/api/openapi.json").await;
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r.body, file, "the served document is docs/openapi.json");
    assert_eq!(file["openapi"], "3.1.0");
    let paths = file["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    documented.sort();
    let mut routes: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    routes.sort();
    assert_eq!(
        documented, routes,
        "the document and the router list the same routes"
    );
}

/// A host over `h`'s store behind a [`Faulty`] switchboard.
fn faulty_host(h: &Harness) -> (Arc<Faulty>, Arc<Host>) {
    let faulty = Faulty::new(h.store());
    let host = Host::new(
        h.config.clone(),
        Arc::clone(&faulty) as Arc<dyn Store>,
        Arc::new(jobbox::time::SystemClock),
    )
    .unwrap();
    (faulty, Arc::new(host))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_a_loop_fails_and_recovers_with_it() {
    let h = Harness::new(
        &["echo"],
        "[host]\npoll_interval = \"20ms\"\nlease = \"300ms\"\nrescue_interval = \"100ms\"\n",
    );
    let (faulty, host) = faulty_host(&h);
    let api = Api::with_token(Arc::clone(&host));
    let running = Running::start(Arc::clone(&host));
    let ready = || async { api.call(Method::GET, "/readyz", None, None).await };
    wait_until(Duration::from_secs(5), "ready", || async {
        (ready().await.status == StatusCode::OK).then_some(())
    })
    .await;

    // Claims fail: the producer goes stale; readiness names it with its
    // error, and recovers once claims work again.
    Faulty::set(&faulty.claims, true);
    let r = wait_until(
        Duration::from_secs(10),
        "the producer to go stale",
        || async {
            let r = ready().await;
            let producer = r.body["loops"]
                .as_array()
                .and_then(|l| l.iter().find(|l| l["name"] == "producer").cloned());
            producer
                .filter(|p| p["fresh"] == false)
                .map(|p| (r.status, p))
        },
    )
    .await;
    assert_eq!(r.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.1["last_error"].as_str().unwrap().contains("injected"),
        "{}",
        r.1
    );
    Faulty::set(&faulty.claims, false);
    wait_until(Duration::from_secs(10), "readiness to recover", || async {
        (ready().await.status == StatusCode::OK).then_some(())
    })
    .await;
    running.stop().await;
}

/// A relay that keeps running while every delivery fails is not making
/// progress: readiness names it (with the delivery error) between its
/// retries, and recovers with the first delivery that gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_every_delivery_fails_and_recovers() {
    use crate::server::{Reply as Answer, TestServer};
    use std::sync::atomic::{AtomicBool, Ordering};
    let refusing = Arc::new(AtomicBool::new(true));
    let server = {
        let refusing = Arc::clone(&refusing);
        TestServer::start(move |_, _| match refusing.load(Ordering::SeqCst) {
            true => Answer::Status(503),
            false => Answer::Status(200),
        })
        .await
    };
    let h = Harness::new(
        &["emit"],
        &format!(
            "[outbox]\npoll_interval = \"20ms\"\nrequest_timeout = \"300ms\"\nbackoff_base = \"50ms\"\nbackoff_max = \"300ms\"\nbackoff_jitter = 0.0\nmax_attempts = 1000\n[outbox.sinks.orders]\nurl = \"{}\"\n[plugins.emit]\noutbox_topics = [\"orders\"]\n",
            server.url("/hook")
        ),
    );
    let host = Arc::new(
        Host::new(
            h.config.clone(),
            h.store(),
            Arc::new(jobbox::time::SystemClock),
        )
        .unwrap(),
    );
    let api = Api::with_token(Arc::clone(&host));
    let running = Running::start(Arc::clone(&host));
    let relay = || async {
        let r = api.call(Method::GET, "/readyz", None, None).await;
        let relay = r.body["loops"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["name"] == "relay").cloned())
            .unwrap();
        (r.status, relay)
    };
    wait_until(Duration::from_secs(5), "ready", || async {
        (relay().await.0 == StatusCode::OK).then_some(())
    })
    .await;
    host.enqueue(vec![job(
        "emit",
        r#"{"events":[{"topic":"orders","payload":{"order":1}}]}"#,
    )])
    .await
    .unwrap();
    let (status, stale) = wait_until(Duration::from_secs(10), "the relay to go stale", || async {
        let (status, relay) = relay().await;
        (relay["fresh"] == false).then_some((status, relay))
    })
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        stale["last_error"].as_str().unwrap().contains("failed"),
        "{stale}"
    );
    let stats = api.get("/api/stats").await.body;
    assert!(
        stats["relay"]["failed"].as_u64().is_some_and(|n| n >= 1),
        "{stats}"
    );
    assert_eq!(stats["relay"]["delivered"], 0, "{stats}");
    // A receiver that refuses everything does not stop claims: the events
    // wait in the outbox, other work goes on.
    let other = host
        .enqueue(vec![job("emit", r#"{"events":[]}"#)])
        .await
        .unwrap()[0]
        .id;
    h.wait_for_state(other, JobState::Completed, Duration::from_secs(10))
        .await;

    refusing.store(false, Ordering::SeqCst);
    wait_until(Duration::from_secs(10), "readiness to recover", || async {
        (relay().await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let stats = api.get("/api/stats").await.body;
    assert_eq!(stats["relay"]["delivered"], 1, "{stats}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_a_stale_loop_claims_nothing_until_it_recovers() {
    let h = Harness::new(
        &["sleepy"],
        "[host]\npoll_interval = \"20ms\"\nlease = \"300ms\"\nrescue_interval = \"100ms\"\n",
    );
    let (faulty, host) = faulty_host(&h);
    let running = Running::start(Arc::clone(&host));
    // A long attempt in flight, whose lease renewals fail.
    let long = running.enqueue_one(job("sleepy", r#"{"ms": 4000}"#)).await;
    h.wait_for_state(long, JobState::Running, Duration::from_secs(5))
        .await;
    Faulty::set(&faulty.leases, true);
    wait_until(
        Duration::from_secs(10),
        "the lease keeper to go stale",
        || async { (!host.health().readiness().ready).then_some(()) },
    )
    .await;
    let waits = running.enqueue_one(job("sleepy", r#"{"ms": 1}"#)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.job(waits).await.state,
        JobState::Available,
        "a host that is not ready claims nothing"
    );
    Faulty::set(&faulty.leases, false);
    h.wait_for_state(waits, JobState::Completed, Duration::from_secs(15))
        .await;
    running.stop().await;
}

/// Checks the OpenMetrics text: every line a comment or a sample, `# EOF`
/// last. Returns the samples by name and labels.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE ") || rest.starts_with("UNIT "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.starts_with("jobbox_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name {name:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.push((series.to_owned(), v));
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_outcomes_per_plugin_and_parse_as_openmetrics() {
    let h = Harness::new(&["echo", "fail"], "[host]\npoll_interval = \"20ms\"\n");
    let running = h.start();
    let api = Api::with_token(Arc::clone(&running.host));
    let mut ids = running
        .enqueue((0..3).map(|_| job("echo", "{}")).collect())
        .await;
    ids.extend(
        running
            .enqueue(vec![
                job("fail", r#"{"mode": "permanent"}"#),
                // One attempt only: a retry would count twice.
                NewJob {
                    max_attempts: Some(1),
                    ..job("nowhere", "{}")
                },
            ])
            .await,
    );
    for id in &ids[..3] {
        h.wait_for_state(*id, JobState::Completed, Duration::from_secs(10))
            .await;
    }
    for id in &ids[3..] {
        h.wait_for_state(*id, JobState::Discarded, Duration::from_secs(10))
            .await;
    }
    // An attempt counts itself after its commit, before it frees its slot.
    wait_until(Duration::from_secs(10), "no attempt in flight", || async {
        (running.host.in_flight() == 0).then_some(())
    })
    .await;
    // The first scrape waits for the cached counts; a later one has them.
    api.get("/metrics").await;
    let r = api.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    let samples = parse_metrics(&r.text);
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no sample {series}: {}", r.text))
    };
    assert_eq!(
        value(r#"jobbox_attempts_total{plugin="echo",outcome="completed"}"#),
        3.0
    );
    assert_eq!(
        value(r#"jobbox_attempts_total{plugin="fail",outcome="permanent_error"}"#),
        1.0
    );
    // A kind with no plugin is labelled `other`: label sets stay bounded.
    assert_eq!(
        value(r#"jobbox_attempts_total{plugin="other",outcome="retryable_error"}"#),
        1.0
    );
    assert!(!r.text.contains("nowhere"));
    assert_eq!(value(r#"jobbox_run_seconds_count{plugin="echo"}"#), 3.0);
    assert_eq!(
        value(r#"jobbox_jobs{queue="default",state="completed"}"#),
        3.0
    );
    assert_eq!(value("jobbox_attempts_in_flight"), 0.0);
    assert!(value(r#"jobbox_phase_seconds_count{phase="claim"}"#) >= 1.0);
    assert!(
        samples
            .iter()
            .any(|(s, _)| s.starts_with("jobbox_loop_last_success_age_seconds{loop=\"producer\"}"))
    );
    let stats = api.get("/api/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    let echo = stats.body["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plugin"] == "echo")
        .unwrap()
        .clone();
    assert_eq!(echo["outcomes"]["completed"], 3);
    assert_eq!(echo["run_ms"]["count"], 3);
    running.stop().await;
}

/// The `event: job` frames of an open `/api/events` stream.
struct JobEvents {
    body: Body,
    buf: String,
    events: Vec<Value>,
}

impl JobEvents {
    async fn open(api: &Api) -> JobEvents {
        let req = Request::get("/api/events")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let res = api.router.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
        JobEvents {
            body: res.into_body(),
            buf: String::new(),
            events: Vec::new(),
        }
    }

    /// Reads events until `done` holds of all read so far (10 s at most).
    async fn until(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(&self.events) {
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("{what}: timed out; read {:?}", self.events))
                .unwrap()
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&data));
            }
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if !block.contains("event: job") {
                    continue;
                }
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap();
                self.events.push(serde_json::from_str(data).unwrap());
            }
        }
    }

    /// Job `id`'s states, in the order they arrived.
    fn states(&self, id: JobId) -> Vec<&str> {
        self.events
            .iter()
            .filter(|e| e["id"] == id)
            .map(|e| e["state"].as_str().unwrap())
            .collect()
    }

    /// How many events say job `id` reached `state`.
    fn count(events: &[Value], id: JobId, state: &str) -> usize {
        events
            .iter()
            .filter(|e| e["id"] == id && e["state"] == state)
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_delivers_state_changes_in_order() {
    let h = Harness::new(&["echo"], "[host]\npoll_interval = \"20ms\"\n");
    let running = h.start();
    let api = Api::with_token(Arc::clone(&running.host));
    let mut stream = JobEvents::open(&api).await;
    let ids = running
        .enqueue(vec![job("echo", r#"{"i": 1}"#), job("echo", r#"{"i": 2}"#)])
        .await;
    stream
        .until("both jobs completed", |events| {
            ids.iter()
                .all(|id| JobEvents::count(events, *id, "completed") == 1)
        })
        .await;
    running.stop().await;
    // Sequence numbers rise by one; each job goes available, running,
    // completed, in that order.
    let seqs: Vec<u64> = stream
        .events
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    for id in ids {
        assert_eq!(
            stream.states(id),
            ["available", "running", "completed"],
            "job {id}"
        );
    }
}

/// A claim's event never overtakes the event of the change that made the
/// job claimable, even when that change's commit is answered late: the
/// store holds the answer until the producer has claimed the job, and the
/// producer waits to publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_published_after_the_enqueue_or_retry_that_made_it_claimable() {
    let h = Harness::new(&["echo"], "[host]\npoll_interval = \"10ms\"\n");
    let (faulty, host) = faulty_host(&h);
    let api = Api::with_token(Arc::clone(&host));
    let running = Running::start(Arc::clone(&host));
    let mut stream = JobEvents::open(&api).await;

    // An enqueue answered late: the job is claimed (and done) before the
    // enqueue returns; its events still come in its order.
    Faulty::set(&faulty.slow_answers, true);
    let enqueued = running.enqueue_one(job("echo", r#"{"i": 1}"#)).await;
    assert_ne!(
        h.job(enqueued).await.state,
        JobState::Available,
        "claimed before the enqueue answered"
    );

    // A retry answered late, through the API.
    let mut later = job("echo", r#"{"i": 2}"#);
    later.run_at = Some(h.clock.now().plus(Duration::from_secs(3600)));
    let retried = running.enqueue_one(later).await;
    let r = api
        .post(&format!("/api/jobs/{retried}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    Faulty::set(&faulty.slow_answers, true);
    let r = api
        .post(&format!("/api/jobs/{retried}/retry"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_ne!(
        h.job(retried).await.state,
        JobState::Available,
        "claimed before the retry answered"
    );

    stream
        .until("both jobs completed", |events| {
            [enqueued, retried]
                .iter()
                .all(|id| JobEvents::count(events, *id, "completed") == 1)
        })
        .await;
    running.stop().await;
    assert_eq!(
        stream.states(enqueued),
        ["available", "running", "completed"]
    );
    assert_eq!(
        stream.states(retried),
        [
            "available",
            "cancelled",
            "available",
            "running",
            "completed"
        ]
    );
}

/// The same for a retry the attempt itself made due at once: the producer
/// claims the job again while the failed attempt's write-back is still
/// being answered, and publishes the claim after the attempt's `retryable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_due_at_once_is_published_before_the_claim_that_follows_it() {
    let h = Harness::new(
        &["fail"],
        "[host]\npoll_interval = \"10ms\"\n\
         [plugins.fail]\nbackoff_base = \"1ms\"\nbackoff_jitter = 0.0\n",
    );
    let (faulty, host) = faulty_host(&h);
    let api = Api::with_token(Arc::clone(&host));
    let running = Running::start(Arc::clone(&host));
    let mut stream = JobEvents::open(&api).await;
    Faulty::set(&faulty.slow_finishes, true);
    let id = running
        .enqueue_one(job("fail", r#"{"mode":"succeed-on","attempt":2}"#))
        .await;
    stream
        .until("the job completed", |events| {
            JobEvents::count(events, id, "completed") == 1
        })
        .await;
    running.stop().await;
    assert_eq!(
        stream.states(id),
        ["available", "running", "retryable", "running", "completed"]
    );
    let epochs: Vec<u64> = stream
        .events
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [0, 1, 1, 2, 2]);
    // The second claim came while the first attempt's answer was held,
    // not after the longest a slow answer waits.
    let rec = h.job(id).await;
    assert_eq!(rec.attempts.len(), 2);
    let gap = rec.attempts[1].started_at.0 - rec.attempts[0].ended_at.0;
    assert!(gap < 2000, "{gap} ms between the attempts");
}
