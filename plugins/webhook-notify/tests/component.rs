//! The built component against mocked receivers, by `jobbox-testing`: no
//! network, the requests it makes and the keys the host puts on them.

use jobbox_testing::{HttpMock, Plugin, json};

const URL: &str = "https://hooks.example.com/orders";

fn plugin() -> Plugin {
    Plugin::build(env!("CARGO_MANIFEST_DIR")).expect("the plugin builds and loads")
}

#[test]
fn a_retry_sends_the_same_body_under_the_same_key() {
    let plugin = plugin();
    let run = |attempt, status| {
        plugin
            .job(json!({"url": URL, "event": {"order": 7}}))
            .key("order-7")
            .attempt(attempt)
            .allow_http("https://hooks.example.com")
            .mock(HttpMock::new("POST", URL, status))
            .run()
    };
    let first = run(1, 503);
    assert_eq!(first.outcome(), "retryable");
    let second = run(2, 200);
    second.assert_ok();
    assert_eq!(second.output(), json!({"status": 200}));
    let (a, b) = (first.requests()[0], second.requests()[0]);
    assert_eq!(a.idempotency_key, "order-7:http:1");
    assert_eq!(a.idempotency_key, b.idempotency_key);
    assert_eq!(a.request_body, b.request_body);
}

#[test]
fn a_request_no_mock_answers_is_denied_and_reported() {
    let report = plugin()
        .job(json!({"url": URL, "event": 1}))
        .allow_http("https://hooks.example.com")
        .run();
    assert_eq!(report.outcome(), "retryable");
    assert_eq!(report.unmatched().len(), 1);
    assert_eq!(report.unmatched()[0].url, URL);
}

#[test]
fn the_declarative_tests_pass_too() {
    plugin().assert_test_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/webhook-notify.tests.toml"
    ));
}
