//! The routes the web dashboard reads (`/api/info`, `/api/throughput`,
//! `/api/jobs/count`, `/api/jobs/{id}/effects`, text search and scan
//! windows in listings, the host of each attempt), and the dashboard's own
//! pages and assets as the API's router serves them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use jobbox::api::ApiConfig;
use jobbox::job::{Effects, Fenced, Finish, JobState, Transition};
use jobbox_tests::pg::Backend;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{Api, TOKEN};
use crate::server::{Reply as Answer, TestServer};
use crate::support::{Harness, backend, claim_req, job, wait_until};

/// The ids of the jobs of a page.
fn ids(page: &Value) -> Vec<i64> {
    page["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect()
}

/// The percent-encoding of a query value (enough for these tests' texts).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Enqueues `bodies` through the API; returns their ids.
async fn enqueue(api: &Api, bodies: Vec<Value>) -> Vec<i64> {
    let r = api.post("/api/jobs", Value::Array(bodies)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

/// Every page of a listing, from `path` (which has a query) on, following
/// `next_cursor` until it is null; returns the ids and the pages.
async fn every_page(api: &Api, path: &str) -> (Vec<i64>, Vec<Value>) {
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut next = path.to_owned();
    for _ in 0..50 {
        let r = api.get(&next).await;
        assert_eq!(r.status, StatusCode::OK, "{next}: {}", r.text);
        seen.extend(ids(&r.body));
        pages.push(r.body.clone());
        match r.body["next_cursor"].as_str() {
            None => return (seen, pages),
            Some(c) => {
                // The cursor replaces any cursor of the path.
                let base: Vec<&str> = path
                    .split(['?', '&'])
                    .skip(1)
                    .filter(|p| !p.starts_with("cursor="))
                    .collect();
                let route = path.split('?').next().unwrap();
                next = format!("{route}?{}&cursor={c}", base.join("&"));
            }
        }
    }
    panic!("{path}: more than 50 pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_names_the_host_its_store_and_the_apis_settings() {
    let h = Harness::new(&[], "");
    let host = h.host();
    let store = match backend() {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let worker = host.config().host.worker_id.clone();

    let api = Api::with_token(Arc::clone(&host));
    let r = api.get("/api/info").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body,
        json!({
            "host": worker,
            "version": env!("CARGO_PKG_VERSION"),
            "store": store,
            "read_only": false,
            "token_required": true,
        })
    );
    // Behind the token like every other /api route.
    let r = api.call(Method::GET, "/api/info", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"]["code"], "unauthorized");

    let open = Api::new(
        Arc::clone(&host),
        ApiConfig {
            read_only: true,
            ..ApiConfig::default()
        },
    );
    let r = open.call(Method::GET, "/api/info", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (
            r.body["read_only"].clone(),
            r.body["token_required"].clone(),
            r.body["store"].clone()
        ),
        (json!(true), json!(false), json!(store))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_search_matches_payloads_and_errors_literally_and_in_either_case() {
    let h = Harness::new(&["echo", "fail"], "[host]\npoll_interval = \"20ms\"\n");
    let running = h.start();
    let api = Api::with_token(Arc::clone(&running.host));

    // A job that fails: its error holds text its payload does not.
    let r = api
        .post(
            "/api/jobs?wait=10s",
            json!({"kind": "fail", "payload": {"mode": "permanent", "message": "Disk QUOTA exceeded"}, "max_attempts": 1}),
        )
        .await;
    assert_eq!(r.body["job"]["state"], "discarded", "{}", r.text);
    let failed = r.body["id"].as_i64().unwrap();
    running.stop().await;
    // These wait (the host is stopped).
    let hold = enqueue(
        &api,
        vec![
            json!({"kind": "echo", "payload": {"v": "a_b"}}),
            json!({"kind": "echo", "payload": {"v": "axb"}}),
            json!({"kind": "echo", "payload": {"v": "50%off"}}),
            json!({"kind": "echo", "payload": {"v": "Hello World"}}),
            json!({"kind": "echo", "payload": {"v": "back\\slash"}}),
            json!({"kind": "echo", "payload": {"v": "plain"}}),
        ],
    )
    .await;
    let [a_b, axb, pct, hello, backslash, _plain] = hold[..] else {
        unreachable!()
    };

    let search = |text: &str| {
        let path = format!("/api/jobs?text={}", encode(text));
        let api = &api;
        async move {
            let r = api.get(&path).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
            assert_eq!(r.body["next_cursor"], Value::Null, "{path}");
            assert_eq!(r.body["searched_to"], Value::Null, "{path}");
            let mut found = ids(&r.body);
            found.sort();
            found
        }
    };
    assert_eq!(search("a_b").await, vec![a_b], "`_` is not a wildcard");
    assert_eq!(search("A_B").await, vec![a_b], "either case");
    assert_eq!(
        search("a%b").await,
        Vec::<i64>::new(),
        "`%` is not a wildcard"
    );
    assert_eq!(search("a_c").await, Vec::<i64>::new());
    assert_eq!(search("%").await, vec![pct]);
    assert_eq!(search("_").await, vec![a_b]);
    assert_eq!(search("\\").await, vec![backslash]);
    assert_eq!(search("hello world").await, vec![hello]);
    assert_eq!(search("AXB").await, vec![axb]);
    // In the failed job's payload and its error: listed once.
    let shown = api.get(&format!("/api/jobs/{failed}")).await;
    let error = shown.body["error"].as_str().unwrap().to_owned();
    assert!(error.contains("Disk QUOTA exceeded"), "{error}");
    assert_eq!(search("quota EXCEEDED").await, vec![failed]);
    assert_eq!(search("nothing-like-this").await, Vec::<i64>::new());

    // With other filters, and with a state.
    let r = api.get("/api/jobs?text=QUOTA&kind=echo").await;
    assert_eq!(ids(&r.body), Vec::<i64>::new());
    let r = api.get("/api/jobs?text=quota&state=discarded").await;
    assert_eq!(ids(&r.body), vec![failed]);

    // Empty or too long: refused.
    for path in [
        "/api/jobs?text=".to_owned(),
        format!("/api/jobs?text={}", "x".repeat(201)),
    ] {
        let r = api.get(&path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text);
        assert!(r.text.contains("text"), "{}", r.text);
    }
    let r = api
        .get(&format!("/api/jobs?text={}", "x".repeat(200)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "200 bytes is allowed: {}", r.text);
    // A NUL: refused (PostgreSQL cannot take one; SQLite's LIKE stopped
    // at it and matched everything), in any filter.
    for path in [
        "/api/jobs?text=%00",
        "/api/jobs?text=a%00b",
        "/api/jobs?kind=%00",
        "/api/jobs?queue=q%00",
        "/api/jobs/count?text=%00",
        "/api/jobs/count?concurrency_key=%00",
    ] {
        let r = api.get(path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text);
        assert!(r.text.contains("NUL"), "{path}: {}", r.text);
    }
    let r = api.post("/api/jobs/cancel", json!({"text": "\u{0}"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(h.store.counts().await.unwrap().cancelled, 0);
}

/// A job whose error alone holds the text is found by it (the payload is
/// not all that is searched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_search_finds_a_job_by_its_error_alone() {
    let h = Harness::new(&["fail"], "[host]\npoll_interval = \"20ms\"\n");
    let running = h.start();
    let api = Api::with_token(Arc::clone(&running.host));
    // No message: the plugin's default one, which the payload lacks.
    let r = api
        .post(
            "/api/jobs?wait=10s",
            json!({"kind": "fail", "payload": {"mode": "permanent"}}),
        )
        .await;
    assert_eq!(r.body["job"]["state"], "discarded", "{}", r.text);
    let failed = r.body["id"].as_i64().unwrap();
    running.stop().await;
    let other = enqueue(
        &api,
        vec![json!({"kind": "fail", "payload": {"mode": "permanent"}})],
    )
    .await;
    let error = api.get(&format!("/api/jobs/{failed}")).await.body["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("failed as asked"), "{error}");
    let r = api.get("/api/jobs?text=FAILED%20AS%20ASKED").await;
    assert_eq!(ids(&r.body), vec![failed], "{}", r.text);
    // Both payloads hold "permanent".
    let r = api.get("/api/jobs?text=Permanent").await;
    assert_eq!(ids(&r.body), vec![other[0], failed]);
}

/// How many ids a listing with `filter` examines: what the first page
/// below a far cursor says it searched.
async fn window(api: &Api, filter: &str) -> i64 {
    const FAR: i64 = 1 << 50;
    let r = api.get(&format!("/api/jobs?{filter}&cursor={FAR}")).await;
    assert_eq!(ids(&r.body), Vec::<i64>::new(), "{}", r.text);
    let to = r.body["searched_to"]
        .as_i64()
        .unwrap_or_else(|| panic!("no window: {}", r.text));
    assert_eq!(r.body["next_cursor"], json!(to.to_string()));
    let w = FAR - to;
    assert!((1_000..=10_000_000).contains(&w), "window {w}");
    w
}

/// A listing that stops at its scan window says how far it looked and
/// where to go on: following `next_cursor` sees every match exactly once.
/// The window (100,000 ids, 50,000 with text) is far larger than the
/// test's database, so the walk starts from a cursor above the last id
/// that puts the window's floor among the jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_windows_are_continued_by_the_cursor_and_miss_nothing() {
    let h = Harness::new(&["echo"], "");
    let api = Api::with_token(h.host());
    let bodies: Vec<Value> = (0..12)
        .map(|i| {
            let kind = if i % 3 == 0 { "other" } else { "echo" };
            json!({"kind": kind, "payload": {"i": i, "tag": if i % 2 == 0 { "even" } else { "odd" }}})
        })
        .collect();
    // `other` is not a plugin here: it just waits.
    let all = enqueue(&api, bodies).await;
    let echo: Vec<i64> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, id)| *id)
        .rev()
        .collect();
    let even_echo: Vec<i64> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0 && i % 2 == 0)
        .map(|(_, id)| *id)
        .rev()
        .collect();

    // A small database: one call sees everything, no window.
    let r = api.get("/api/jobs?kind=echo").await;
    assert_eq!(ids(&r.body), echo);
    assert_eq!(r.body["searched_to"], Value::Null);
    assert_eq!(r.body["next_cursor"], Value::Null);
    // Unfiltered: no window either.
    let r = api.get("/api/jobs").await;
    assert_eq!(r.body["searched_to"], Value::Null);
    assert_eq!(ids(&r.body).len(), 12);

    let w = window(&api, "kind=echo").await;
    let tw = window(&api, "kind=echo&text=even").await;
    assert!(tw <= w, "a text search looks at fewer ids ({tw} > {w})");

    // A window whose floor is the 6th job: the first page holds the
    // matches at or above it and says so.
    let floor = all[5];
    let r = api
        .get(&format!("/api/jobs?kind=echo&cursor={}", floor + w))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let above: Vec<i64> = echo.iter().copied().filter(|id| *id >= floor).collect();
    assert_eq!(ids(&r.body), above, "{}", r.text);
    assert_eq!(r.body["searched_to"], json!(floor));
    assert_eq!(r.body["next_cursor"], json!(floor.to_string()));
    let (seen, pages) =
        every_page(&api, &format!("/api/jobs?kind=echo&cursor={}", floor + w)).await;
    assert_eq!(seen, echo, "every match once, newest first");
    assert_eq!(pages.last().unwrap()["searched_to"], Value::Null);

    // A window above every job: an empty page that is not the last.
    let r = api
        .get(&format!("/api/jobs?kind=echo&cursor={}", all[11] + 1 + w))
        .await;
    assert_eq!(ids(&r.body), Vec::<i64>::new());
    assert_eq!(r.body["searched_to"], json!(all[11] + 1));
    assert!(r.body["next_cursor"].is_string());

    // Text searches look at fewer ids per call; with a small limit, pages
    // also end at the limit (no `searched_to` then).
    // From two windows above the 10th job: an empty window, then one whose
    // floor is the 10th job (one match, the 11th), then the rest a page
    // at a time.
    let start = all[9] + 2 * tw;
    let (seen, pages) = every_page(
        &api,
        &format!("/api/jobs?text=even&kind=echo&limit=1&cursor={start}"),
    )
    .await;
    assert_eq!(seen, even_echo);
    let floors: Vec<Value> = pages.iter().map(|p| p["searched_to"].clone()).collect();
    assert!(
        floors.contains(&json!(start - tw)) && floors.contains(&json!(all[9])),
        "{floors:?}"
    );
    for p in &pages {
        if p["searched_to"].is_null() && !p["next_cursor"].is_null() {
            assert_eq!(
                ids(p).len(),
                1,
                "a page that ends at its limit is full: {p}"
            );
        }
    }
    assert_eq!(pages.last().unwrap()["next_cursor"], Value::Null);

    // Discarded and cancelled listings are served by an index: no window.
    let r = api
        .get(&format!("/api/jobs?state=cancelled&cursor={}", floor + w))
        .await;
    assert_eq!(r.body["searched_to"], Value::Null);
    assert_eq!(r.body["next_cursor"], Value::Null);
    // Another state is not.
    let r = api
        .get(&format!("/api/jobs?state=available&cursor={}", floor + w))
        .await;
    assert_eq!(r.body["searched_to"], json!(floor));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_and_bulk_actions_follow_the_filter_and_the_text() {
    let h = Harness::new(&["fail"], "[host]\npoll_interval = \"20ms\"\n");
    use JobState::{Available, Cancelled, Discarded};
    let running = h.start();
    let api = Api::with_token(Arc::clone(&running.host));
    let doomed = enqueue(
        &api,
        ["boom-red", "boom-blue", "boom-red"]
            .iter()
            .map(|m| json!({"kind": "fail", "payload": {"mode": "permanent", "message": m}}))
            .collect(),
    )
    .await;
    for id in &doomed {
        h.wait_for_state(*id, Discarded, Duration::from_secs(10))
            .await;
    }
    running.stop().await;
    let waiting = enqueue(
        &api,
        ["later-red", "later-blue"]
            .iter()
            .map(|m| json!({"kind": "fail", "payload": {"mode": "permanent", "message": m}}))
            .collect(),
    )
    .await;
    // And one of another kind, which no kind=fail count sees.
    enqueue(&api, vec![json!({"kind": "echo", "payload": {"m": "red"}})]).await;

    let count = |query: &str| {
        let path = format!("/api/jobs/count?{query}");
        let api = &api;
        async move {
            let r = api.get(&path).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
            assert_eq!(r.body.as_object().unwrap().len(), 1, "{}", r.text);
            r.body["count"].as_u64().unwrap()
        }
    };
    assert_eq!(count("kind=fail").await, 5);
    assert_eq!(count("").await, 6);
    assert_eq!(count("kind=fail&action=retry").await, 3);
    assert_eq!(count("kind=fail&action=cancel").await, 2);
    assert_eq!(count("state=discarded").await, 3);
    assert_eq!(count("state=discarded&action=cancel").await, 0);
    assert_eq!(count("state=available&kind=fail").await, 2);
    assert_eq!(count("text=RED").await, 4);
    assert_eq!(count("text=red&kind=fail").await, 3);
    assert_eq!(count("text=red&action=retry").await, 2);
    assert_eq!(count("text=red&action=cancel").await, 2);
    assert_eq!(count("text=boom_red").await, 0, "`_` is literal");
    assert_eq!(count("queue=nowhere").await, 0);
    for bad in [
        "action=delete",
        "action=",
        "state=lost",
        "text=",
        "colour=red",
        "limit=5",
    ] {
        let r = api.get(&format!("/api/jobs/count?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
        assert_eq!(
            r.body["error"]["code"], "invalid_request",
            "{bad}: {}",
            r.text
        );
    }

    // Bulk retry with text: only the red ones move.
    let r = api
        .post(
            "/api/jobs/retry",
            json!({"kind": "fail", "text": "BOOM-RED"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.body["count"].clone(), r.body["more"].clone()),
        (json!(2), json!(false))
    );
    let states = || async {
        let mut s = Vec::new();
        for id in doomed.iter().chain(&waiting) {
            s.push(h.job(*id).await.state);
        }
        s
    };
    assert_eq!(
        states().await,
        vec![Available, Discarded, Available, Available, Available]
    );
    // Bulk cancel with text: only the later red one.
    let r = api
        .post("/api/jobs/cancel", json!({"text": "later-red"}))
        .await;
    assert_eq!(r.body["count"], 1, "{}", r.text);
    assert_eq!(
        states().await,
        vec![Available, Discarded, Available, Cancelled, Available]
    );
    assert_eq!(count("text=red&action=retry").await, 1);
    // Bad text in a body.
    for body in [json!({"text": ""}), json!({"text": "y".repeat(201)})] {
        let r = api.post("/api/jobs/retry", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    }
    assert_eq!(
        states().await,
        vec![Available, Discarded, Available, Cancelled, Available],
        "refused bulk actions move nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_show_a_jobs_kv_writes_and_events_and_attempts_their_host() {
    let server = TestServer::start(|_, _| Answer::Status(200)).await;
    let h = Harness::new(
        &["ledger-credit"],
        &format!(
            "[host]\npoll_interval = \"20ms\"\n\
             [outbox.sinks.credited]\nurl = \"{}\"\n\
             [plugins.ledger-credit]\nkv = true\noutbox_topics = [\"credited\"]\n",
            server.url("/credited")
        ),
    );
    let running = h.start();
    let api = Api::with_token(Arc::clone(&running.host));
    let worker = running.host.config().host.worker_id.clone();
    async fn transfer(api: &Api, p: Value) -> i64 {
        let r = api
            .post(
                "/api/jobs?wait=10s",
                json!({"kind": "ledger-credit", "payload": p}),
            )
            .await;
        assert_eq!(r.body["job"]["state"], "completed", "{}", r.text);
        r.body["id"].as_i64().unwrap()
    }
    let first = transfer(
        &api,
        json!({"transfer_id": "t1", "account": "alice", "amount_cents": 500}),
    )
    .await;
    let second = transfer(
        &api,
        json!({"transfer_id": "t2", "account": "bob", "amount_cents": 200, "from": "alice"}),
    )
    .await;

    let shown = api.get(&format!("/api/jobs/{second}")).await;
    let attempts = shown.body["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{}", shown.text);
    assert_eq!(
        attempts[0]["host"],
        json!(worker),
        "the attempt names its host"
    );
    let epoch = attempts[0]["epoch"].clone();

    let r = api.get(&format!("/api/jobs/{second}/effects")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let write = |key: &str, version: i64| json!({"epoch": epoch, "namespace": "ledger-credit", "key": key, "version": version, "deleted": false});
    assert_eq!(
        r.body["kv_writes"],
        json!([
            write("balance/alice", 2),
            write("balance/bob", 1),
            write("transfer/t2", 1)
        ]),
        "{}",
        r.text
    );
    let events = r.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{}", r.text);
    assert_eq!(events[0]["job_id"], json!(second));
    assert_eq!(events[0]["topic"], "credited");
    assert_eq!(events[0]["url"], json!(server.url("/credited")));
    // The body sent: the event's envelope around the plugin's output.
    let body: Value = serde_json::from_str(events[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["job_id"], json!(second));
    assert_eq!(
        (
            body["data"]["transfer_id"].clone(),
            body["data"]["balance_after_cents"].clone()
        ),
        (json!("t2"), json!(200))
    );
    let r = api.get(&format!("/api/jobs/{first}/effects")).await;
    assert_eq!(
        r.body["kv_writes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (
                w["key"].as_str().unwrap().to_owned(),
                w["version"].as_i64().unwrap()
            ))
            .collect::<Vec<_>>(),
        vec![
            ("balance/alice".to_owned(), 1),
            ("transfer/t1".to_owned(), 1)
        ]
    );
    assert_eq!(r.body["events"].as_array().unwrap().len(), 1);
    running.stop().await;

    // A job that committed nothing (still waiting): empty, not 404.
    let waiting = enqueue(&api, vec![json!({"kind": "ledger-credit", "payload": {}})]).await[0];
    let r = api.get(&format!("/api/jobs/{waiting}/effects")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"kv_writes": [], "events": []}));
    // No such job, or no job id at all.
    let r = api
        .get(&format!("/api/jobs/{}/effects", waiting + 100))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "not_found");
    for bad in ["0", "x", "-1"] {
        let r = api.get(&format!("/api/jobs/{bad}/effects")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }
}

/// A completion that deletes a key shows the delete (the tombstone's
/// version), committed straight through the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_show_a_kv_delete() {
    let h = Harness::new(&[], "");
    let api = Api::with_token(h.host());
    let store = h.store();
    let commit = |writes: Vec<(&str, Option<&[u8]>)>| {
        let store = Arc::clone(&store);
        let writes: Vec<(String, Option<Vec<u8>>)> = writes
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec)))
            .collect();
        let clock = Arc::clone(&h.clock);
        async move {
            let now = clock.now();
            store.enqueue(vec![job("keeper", "{}")], now).await.unwrap();
            let claimed = store
                .claim(claim_req(now, 1, "keeper-host"))
                .await
                .unwrap()
                .jobs
                .remove(0);
            let finish = Finish {
                fence: claimed.fence(),
                attempt: crate::support::completed(1, now, Some("keeper-host")),
                transition: Transition::Complete {
                    output: "{}".into(),
                },
                effects: Effects {
                    namespace: "keeper".into(),
                    kv_writes: writes,
                    ..Effects::default()
                },
                on_conflict: None,
                breaker: None,
            };
            assert_eq!(store.finish(finish).await.unwrap().fenced, Fenced::Applied);
            (claimed.fence().id, claimed.fence().epoch)
        }
    };
    let (put, put_epoch) = commit(vec![("k", Some(b"1")), ("other", Some(b"x"))]).await;
    let (del, del_epoch) = commit(vec![("k", None)]).await;
    let r = api.get(&format!("/api/jobs/{put}/effects")).await;
    assert_eq!(
        r.body["kv_writes"],
        json!([
            {"epoch": put_epoch, "namespace": "keeper", "key": "k", "version": 1, "deleted": false},
            {"epoch": put_epoch, "namespace": "keeper", "key": "other", "version": 1, "deleted": false},
        ]),
        "{}",
        r.text
    );
    let r = api.get(&format!("/api/jobs/{del}/effects")).await;
    assert_eq!(
        r.body,
        json!({
            "kv_writes": [{"epoch": del_epoch, "namespace": "keeper", "key": "k", "version": 2, "deleted": true}],
            "events": [],
        }),
        "{}",
        r.text
    );
    // The attempt's host as the store wrote it.
    let r = api.get(&format!("/api/jobs/{del}")).await;
    assert_eq!(r.body["attempts"][0]["host"], "keeper-host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_counts_each_minutes_attempts_per_plugin() {
    let h = Harness::new(&["echo", "fail"], "[host]\npoll_interval = \"20ms\"\n");
    let running = h.start();
    let api = Api::with_token(Arc::clone(&running.host));
    let mut bodies: Vec<Value> = (0..3)
        .map(|i| json!({"kind": "echo", "payload": {"i": i}}))
        .collect();
    bodies.extend((0..2).map(|_| json!({"kind": "fail", "payload": {"mode": "permanent"}})));
    let r = api.post("/api/jobs?wait=10s", Value::Array(bodies)).await;
    assert_eq!(r.status, StatusCode::OK, "every job final: {}", r.text);

    // The heartbeat writes the minutes every second. Five minutes, so
    // that a minute's end during the test changes nothing.
    let t = wait_until(
        Duration::from_secs(10),
        "the attempts in /api/throughput",
        || async {
            let r = api.get("/api/throughput?minutes=5").await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            let minutes = r.body["minutes"].as_array().unwrap();
            let sum = |field: &str| {
                minutes
                    .iter()
                    .map(|m| m[field].as_u64().unwrap())
                    .sum::<u64>()
            };
            ((sum("succeeded"), sum("failed")) == (3, 2)).then_some(r.body)
        },
    )
    .await;
    assert_eq!(t["hosts"], 1, "{t}");
    let minutes = t["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 5);
    assert_eq!(t["from"], minutes[0]["at"]);
    let at = |v: &Value| {
        jobbox::time::Timestamp::parse_rfc3339(v.as_str().unwrap())
            .unwrap_or_else(|e| panic!("{v}: {e}"))
            .0
    };
    for w in minutes.windows(2) {
        assert_eq!(at(&w[1]["at"]) - at(&w[0]["at"]), 60_000, "{t}");
    }
    assert_eq!(at(&t["to"]) - at(&minutes[4]["at"]), 60_000);
    let now = h.clock.now().0;
    assert!(
        (at(&minutes[4]["at"])..at(&t["to"]) + 1_000).contains(&now),
        "the last minute is the current one: {t}"
    );
    let plugins = t["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 2, "{t}");
    let echo = &plugins[0];
    assert_eq!(
        (
            echo["plugin"].clone(),
            echo["succeeded"].clone(),
            echo["failed"].clone()
        ),
        (json!("echo"), json!(3), json!(0))
    );
    assert_eq!(echo["success_rate"].as_f64(), Some(1.0));
    let (p50, p99) = (
        echo["p50_ms"].as_f64().unwrap(),
        echo["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 10_000.0, "{echo}");
    let fail = &plugins[1];
    assert_eq!(
        (
            fail["plugin"].clone(),
            fail["succeeded"].clone(),
            fail["failed"].clone()
        ),
        (json!("fail"), json!(0), json!(2))
    );
    assert_eq!(fail["success_rate"].as_f64(), Some(0.0));
    assert!(fail["p99_ms"].as_f64().is_some(), "{fail}");

    // The default window is the hour.
    let r = api.get("/api/throughput").await;
    assert_eq!(r.body["minutes"].as_array().unwrap().len(), 60);
    assert_eq!(
        api.get("/api/throughput?minutes=1").await.body["minutes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    for bad in [
        "minutes=0",
        "minutes=61",
        "minutes=-1",
        "minutes=x",
        "hours=1",
    ] {
        let r = api.get(&format!("/api/throughput?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }
    running.stop().await;
}

/// A response's status, headers and body.
async fn fetch(
    api: &Api,
    path: &str,
    headers: &[(header::HeaderName, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::get(path);
    for (k, v) in headers {
        req = req.header(k, *v);
    }
    let res = api
        .router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_without_the_token_and_holds_no_data() {
    let h = Harness::new(&[], "");
    let api = Api::with_token(h.host());
    for page in ["/", "/jobs", "/jobs/123", "/schedules/nightly", "/hosts"] {
        let (status, headers, body) = fetch(&api, page, &[]).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let ct = headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(ct.starts_with("text/html"), "{page}: {ct}");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{page}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{page}: {csp}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(headers.get(header::SET_COOKIE).is_none(), "no cookie");
        assert!(body.to_lowercase().starts_with("<!doctype html"), "{page}");
        assert!(!body.contains(TOKEN));
    }
    // The API behind it still needs the token.
    let (status, _, _) = fetch(&api, "/api/info", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Assets: revalidated by their hash.
    let (status, headers, body) = fetch(&api, "/assets/app.js", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.is_empty());
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let etag = headers[header::ETAG].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "{etag}"
    );
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    let (status, headers, body) =
        fetch(&api, "/assets/app.js", &[(header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(headers[header::ETAG].to_str().unwrap(), etag);
    let (status, _, _) = fetch(
        &api,
        "/assets/app.js",
        &[(header::IF_NONE_MATCH, "\"stale\"")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, _) = fetch(&api, "/assets/app.css", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(
        headers[header::ETAG].to_str().unwrap(),
        etag,
        "a hash per asset"
    );
    let (status, headers, body) = fetch(&api, "/assets/nope.js", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    // Not a page of the app.
    let (status, _, _) = fetch(&api, "/nothing-here", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Without the dashboard: no pages, no assets; the API as before.
    let bare = Api::new(
        h.host(),
        ApiConfig {
            token: Some(TOKEN.into()),
            dashboard: false,
            ..ApiConfig::default()
        },
    );
    for path in ["/", "/jobs/123", "/assets/app.js"] {
        let (status, _, body) = fetch(&bare, path, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
    assert_eq!(bare.get("/api/info").await.status, StatusCode::OK);
}

/// What another host commits reaches this host's event stream as
/// `event: outside` (PostgreSQL's notifications), at most once a second,
/// so that a dashboard served by one host follows the others' work too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_hosts_commits_reach_the_event_stream_at_most_once_a_second() {
    if backend() != Backend::Postgres {
        crate::support::say_skipped(
            "PostgreSQL only (other hosts' commits are heard by LISTEN/NOTIFY): runs in the postgres pass",
        );
        return;
    }
    let h = Harness::new(&[], "");
    let a = h.store();
    let a_ref = &a;
    wait_until(Duration::from_secs(5), "store A to listen", || async move {
        a_ref.outside_version().await.unwrap()
    })
    .await;
    let api = Api::with_token(h.host());
    let req = Request::get("/api/events")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let mut body = api.router.clone().oneshot(req).await.unwrap().into_body();
    let other = h.open_store();
    // Another host commits ten times over about two seconds.
    let writer = tokio::spawn(async move {
        for i in 0..10 {
            other
                .enqueue(
                    vec![job("echo", &format!(r#"{{"i":{i}}}"#))],
                    jobbox::time::Timestamp(1),
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = tokio::time::Instant::now();
    let mut outside = Vec::new();
    let mut buf = String::new();
    let until = started + Duration::from_millis(3500);
    while let Ok(frame) = tokio::time::timeout_at(until, body.frame()).await {
        let Some(Ok(frame)) = frame else { break };
        if let Ok(data) = frame.into_data() {
            buf.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.contains("event: outside") {
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap();
                let v: Value = serde_json::from_str(data).unwrap();
                assert!(v["version"].as_u64().is_some(), "{block}");
                outside.push(started.elapsed());
            }
        }
    }
    writer.await.unwrap();
    assert!(
        !outside.is_empty(),
        "no outside event in 3.5 s of another host's commits"
    );
    // Ten commits, but at most one event a second.
    assert!(
        outside.len() <= 4,
        "{} outside events: {outside:?}",
        outside.len()
    );
    for w in outside.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(950),
            "outside events closer than a second: {outside:?}"
        );
    }
}
