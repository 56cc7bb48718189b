//! The built component, run in the host's sandbox by `jobbox-testing`: kv
//! state before, the writes and the event it would commit after.

use jobbox_testing::{Plugin, json};

fn plugin() -> Plugin {
    Plugin::build(env!("CARGO_MANIFEST_DIR")).expect("the plugin builds and loads")
}

#[test]
fn a_transfer_moves_money_and_announces_it_once() {
    let report = plugin()
        .job(json!({"transfer_id": "t9", "account": "bob", "amount_cents": 250, "from": "alice"}))
        .key("transfer-t9")
        .grant_kv()
        .grant_topic("credited")
        .kv("balance/alice", "1000")
        .run();
    report.assert_ok();
    assert_eq!(report.output()["balance_after_cents"], 250);
    assert_eq!(report.kv_write("balance/alice"), Some("750"));
    assert_eq!(report.kv_write("balance/bob"), Some("250"));
    let events = report.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].topic, "credited");
    assert_eq!(events[0].idempotency_key, "transfer-t9:event:1");
    assert_eq!(events[0].payload["account"], "bob");
}

#[test]
fn overdrawing_is_refused_for_good_and_writes_nothing() {
    let report = plugin()
        .job(json!({"transfer_id": "t10", "account": "bob", "amount_cents": 5000, "from": "alice"}))
        .grant_kv()
        .grant_topic("credited")
        .kv("balance/alice", "10")
        .run();
    assert_eq!(report.outcome(), "permanent");
    assert!(
        report
            .error()
            .unwrap()
            .contains("insufficient funds in alice")
    );
    assert!(report.kv_keys().is_empty());
    assert!(report.events().is_empty());
}

#[test]
fn the_declarative_tests_pass_too() {
    plugin().assert_test_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/ledger-credit.tests.toml"
    ));
}
