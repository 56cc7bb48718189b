//! The retry policy, as the host applies it.

use std::time::Duration;

use jobbox::job::{AttemptOutcome, JobState};
use jobbox::policy::RetryPolicy;

use crate::support::{Harness, job};

#[test]
fn backoff_follows_the_formula_within_its_jitter() {
    let policy = RetryPolicy {
        max_attempts: 10,
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
        jitter: 0.25,
    };
    for attempt in 1..=8u32 {
        let expected =
            (Duration::from_millis(100) * 2u32.pow(attempt - 1)).min(Duration::from_secs(1));
        for _ in 0..200 {
            let d = policy.backoff(attempt, None);
            assert!(
                d >= expected && d <= expected.mul_f64(1.25),
                "attempt {attempt}: {d:?} not in [{expected:?}, {:?}]",
                expected.mul_f64(1.25)
            );
        }
    }
    // Huge attempt numbers saturate at the cap instead of overflowing.
    let no_jitter = RetryPolicy {
        jitter: 0.0,
        ..policy
    };
    assert_eq!(no_jitter.backoff(1000, None), Duration::from_secs(1));
    // retry-after is honoured, but not past the cap.
    assert_eq!(
        no_jitter.backoff(1, Some(Duration::from_millis(700))),
        Duration::from_millis(700)
    );
    assert_eq!(
        no_jitter.backoff(1, Some(Duration::from_secs(60))),
        Duration::from_secs(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_the_backoff_then_discard_when_attempts_are_used_up() {
    let h = Harness::new(
        &["fail"],
        r#"
        [host]
        poll_interval = "10ms"
        [plugins.fail]
        max_attempts = 4
        backoff_base = "100ms"
        backoff_max = "10s"
        backoff_jitter = 0.0
        "#,
    );
    let running = h.start();
    let id = running
        .enqueue_one(job("fail", r#"{"mode":"retryable","message":"try later"}"#))
        .await;
    let rec = h
        .wait_for_state(id, JobState::Discarded, Duration::from_secs(10))
        .await;
    running.stop().await;

    assert_eq!(rec.attempt, 4);
    assert_eq!(rec.attempts.len(), 4);
    assert!(
        rec.attempts
            .iter()
            .all(|a| a.outcome == AttemptOutcome::RetryableError)
    );
    assert!(rec.error.as_deref().unwrap().contains("try later"));
    // The gap between attempts is the backoff: 100ms, 200ms, 400ms (plus
    // a claim and scheduling, generous for a loaded machine, but short of
    // the idle poll a host that forgot the due time would wait for).
    for (i, pair) in rec.attempts.windows(2).enumerate() {
        let gap = pair[1].started_at.0 - pair[0].ended_at.0;
        let expected = 100 * 2i64.pow(i as u32);
        assert!(
            gap >= expected && gap < expected + 400,
            "gap {i} was {gap} ms, expected {expected} ms"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_discards_at_once() {
    let h = Harness::new(&["fail"], "[defaults]\nmax_attempts = 5\n");
    let running = h.start();
    let id = running
        .enqueue_one(job(
            "fail",
            r#"{"mode":"permanent","message":"bad account"}"#,
        ))
        .await;
    let rec = h
        .wait_for_state(id, JobState::Discarded, Duration::from_secs(10))
        .await;
    running.stop().await;
    assert_eq!(rec.attempt, 1);
    assert_eq!(rec.attempts.len(), 1);
    assert_eq!(rec.attempts[0].outcome, AttemptOutcome::PermanentError);
    assert_eq!(rec.error.as_deref(), Some("bad account"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_within_the_cap_and_a_later_attempt_succeeds() {
    let h = Harness::new(
        &["fail"],
        r#"
        [host]
        poll_interval = "10ms"
        [plugins.fail]
        backoff_base = "10ms"
        backoff_max = "300ms"
        backoff_jitter = 0.0
        "#,
    );
    let running = h.start();
    let asks_little = running
        .enqueue_one(job(
            "fail",
            r#"{"mode":"retryable","retry_after_ms":150,"message":"x"}"#,
        ))
        .await;
    let asks_lots = running
        .enqueue_one(job(
            "fail",
            r#"{"mode":"retryable","retry_after_ms":60000,"message":"y"}"#,
        ))
        .await;
    let third_time_lucky = running
        .enqueue_one(job("fail", r#"{"mode":"succeed-on","attempt":3}"#))
        .await;
    let lucky = h
        .wait_for_state(
            third_time_lucky,
            JobState::Completed,
            Duration::from_secs(10),
        )
        .await;
    let little = crate::support::wait_until(Duration::from_secs(5), "two attempts", || async {
        let rec = h.job(asks_little).await;
        (rec.attempts.len() >= 2).then_some(rec)
    })
    .await;
    let lots = crate::support::wait_until(Duration::from_secs(5), "two attempts", || async {
        let rec = h.job(asks_lots).await;
        (rec.attempts.len() >= 2).then_some(rec)
    })
    .await;
    running.stop().await;

    assert_eq!(lucky.attempt, 3);
    assert_eq!(lucky.output.as_deref(), Some(r#"{"attempt":3}"#));
    let gap =
        |rec: &jobbox::job::JobRecord| rec.attempts[1].started_at.0 - rec.attempts[0].ended_at.0;
    let g = gap(&little);
    assert!(
        (150..550).contains(&g),
        "retry-after 150ms gave a gap of {g} ms"
    );
    let g = gap(&lots);
    assert!(
        (300..700).contains(&g),
        "retry-after past the 300ms cap gave a gap of {g} ms"
    );
}
