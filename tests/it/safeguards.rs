//! Safeguards that live in the store: circuit breakers, rate limits,
//! pauses, concurrency keys, and kv conflicts that never dead-letter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jobbox::executor::Host;
use jobbox::job::{
    AttemptOutcome, BreakerCount, ClaimedJob, Finish, JobFilter, JobId, JobRecord, JobState, NewJob,
};
use jobbox::policy::{BreakerState, PauseScope, RateLimit};
use jobbox::store::{ClaimRequest, Claimed, Store};
use jobbox::time::{Clock, ManualClock, Timestamp};

use crate::support::{Harness, Running, job, wait_until};

fn req(now: Timestamp, limit: u32) -> ClaimRequest {
    crate::support::claim_req(now, limit, "t")
}

async fn claim(store: &dyn Store, now: Timestamp, limit: u32) -> Claimed {
    store.claim(req(now, limit)).await.unwrap()
}

/// A write-back of `job` counted for its kind's breaker (3 failures open
/// it, for 10 s).
fn counted(job: &ClaimedJob, failed: bool, now: Timestamp) -> Finish {
    let mut f = Finish::completed(job, "{}".into(), now);
    if failed {
        f.attempt.outcome = AttemptOutcome::Trap;
        f.transition = jobbox::job::Transition::Discard {
            error: "trap".into(),
        };
    }
    f.breaker = Some(BreakerCount {
        kind: job.kind.clone(),
        failed,
        threshold: 3,
        window: Duration::from_secs(60),
        cooldown: Duration::from_secs(10),
        error: failed.then(|| "trap: unreachable".to_owned()),
    });
    f
}

async fn all_jobs(store: &dyn Store) -> Vec<JobRecord> {
    store
        .list_jobs(JobFilter {
            limit: Some(100_000),
            ..JobFilter::default()
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_holds_across_a_restart_and_admits_one_probe() {
    let h = Harness::new(
        &["trap"],
        "[plugins.trap]\nbreaker_failures = 3\nbreaker_cooldown = \"10s\"\nmax_attempts = 1\n",
    );
    let clock = ManualClock::new(Timestamp(1_800_000_000_000));
    let running = Running::start(h.host_with_clock(Arc::new(clock.clone())));
    // Three attempts trap: the breaker opens.
    let ids = running
        .enqueue(vec![
            job("trap", "{}"),
            job("trap", "{}"),
            job("trap", "{}"),
        ])
        .await;
    for id in &ids {
        h.wait_for_state(*id, JobState::Discarded, Duration::from_secs(10))
            .await;
    }
    let breakers = h.store.breakers().await.unwrap();
    assert_eq!(breakers.len(), 1);
    assert_eq!(breakers[0].state, BreakerState::Open);
    assert_eq!(breakers[0].trips, 1);
    assert_eq!(
        breakers[0].retry_at,
        Some(clock.now().plus(Duration::from_secs(10)))
    );
    // The attempt counts the change after its commit.
    let host = Arc::clone(&running.host);
    wait_until(Duration::from_secs(5), "the breaker's count", || async {
        (host.metrics().snapshot().breaker_opened == 1).then_some(())
    })
    .await;
    // While open, the kind's jobs wait and spend no attempt.
    let waiting = running.enqueue_one(job("trap", "{}")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;
    let rec = h.job(waiting).await;
    assert_eq!((rec.state, rec.attempt), (JobState::Available, 0));

    // Another store on the database (a restarted or second host) sees it
    // open.
    let other = h.open_store();
    assert_eq!(other.breakers().await.unwrap()[0].state, BreakerState::Open);
    let now = clock.now();
    assert!(claim(other.as_ref(), now, 10).await.jobs.is_empty());
    let claimed = claim(other.as_ref(), now, 10).await;
    assert_eq!(claimed.wake_at, Some(now.plus(Duration::from_secs(10))));

    // After the cooldown: exactly one probe, however many ask.
    let more = other
        .enqueue(vec![job("trap", "{}"), job("trap", "{}")], now)
        .await
        .unwrap();
    assert_eq!(more.len(), 2);
    let later = now.plus(Duration::from_secs(10));
    let first = claim(other.as_ref(), later, 10).await;
    assert_eq!(first.jobs.len(), 1, "one probe");
    assert_eq!(first.half_opened, ["trap"]);
    assert!(
        claim(h.store.as_ref(), later, 10).await.jobs.is_empty(),
        "the probe runs"
    );
    // The probe fails: open again, for another cooldown.
    let probe = &first.jobs[0];
    let out = other.finish(counted(probe, true, later)).await.unwrap();
    assert_eq!(out.breaker.unwrap().to, BreakerState::Open);
    assert!(claim(other.as_ref(), later, 10).await.jobs.is_empty());
    // Next probe succeeds: closed, and the rest run.
    let again = later.plus(Duration::from_secs(10));
    let second = claim(other.as_ref(), again, 10).await;
    assert_eq!(second.jobs.len(), 1);
    let out = other
        .finish(counted(&second.jobs[0], false, again))
        .await
        .unwrap();
    assert_eq!(out.breaker.unwrap().to, BreakerState::Closed);
    // Of the three that waited, two were probes: the last runs now.
    assert_eq!(claim(other.as_ref(), again, 10).await.jobs.len(), 1);
    let b = &other.breakers().await.unwrap()[0];
    assert_eq!((b.state, b.failures, b.trips), (BreakerState::Closed, 0, 2));

    // An operator can reset an open breaker.
    for _ in 0..3 {
        other.enqueue(vec![job("trap", "{}")], again).await.unwrap();
        let c = claim(other.as_ref(), again, 1).await;
        other
            .finish(counted(&c.jobs[0], true, again))
            .await
            .unwrap();
    }
    assert_eq!(other.breakers().await.unwrap()[0].state, BreakerState::Open);
    assert_eq!(
        other.reset_breaker("trap".into(), again).await.unwrap(),
        Some(BreakerState::Open)
    );
    assert_eq!(
        other.breakers().await.unwrap()[0].state,
        BreakerState::Closed
    );
    other.close().await.unwrap();
}

#[tokio::test]
async fn a_success_resets_the_streak_and_an_old_streak_starts_over() {
    let h = Harness::new(&[], "");
    let store = h.store();
    let t = Timestamp(1_000_000);
    let run = |failed: bool, at: Timestamp| {
        let store = Arc::clone(&store);
        async move {
            store.enqueue(vec![job("k", "{}")], at).await.unwrap();
            let c = claim(store.as_ref(), at, 1).await;
            store.finish(counted(&c.jobs[0], failed, at)).await.unwrap();
        }
    };
    run(true, t).await;
    run(true, t).await;
    run(false, t).await;
    run(true, t).await;
    run(true, t).await;
    let b = &h.store.breakers().await.unwrap()[0];
    assert_eq!(
        (b.state, b.failures),
        (BreakerState::Closed, 2),
        "the success broke the streak"
    );
    // Two more failures, but the streak began over a minute ago.
    let late = t.plus(Duration::from_secs(61));
    run(true, late).await;
    let b = &h.store.breakers().await.unwrap()[0];
    assert_eq!((b.state, b.failures), (BreakerState::Closed, 1));
}

#[tokio::test]
async fn a_rate_limit_holds_across_two_hosts_sharing_the_database() {
    let h = Harness::new(&[], "");
    let a = h.store();
    let b = h.open_store();
    let t0 = Timestamp(1_000_000);
    let jobs: Vec<NewJob> = (0..100).map(|_| job("limited", "{}")).collect();
    a.enqueue(jobs, t0).await.unwrap();
    let rate = RateLimit {
        count: 5,
        period: Duration::from_secs(1),
        burst: 2,
    };
    // Both hosts ask every 50 ms for two seconds, as much as they can take.
    let mut started = Vec::new();
    for step in 0..=40 {
        let now = t0.plus(Duration::from_millis(50 * step));
        for store in [&a, &b] {
            let c = store
                .claim(ClaimRequest {
                    rates: vec![("limited".into(), rate)],
                    ..req(now, 100)
                })
                .await
                .unwrap();
            if c.jobs.is_empty() {
                assert!(
                    c.wake_at.is_some_and(|w| w > now),
                    "told when to look again"
                );
            }
            started.extend(c.jobs.iter().map(|_| now));
        }
    }
    // Together: the burst, then one per 200 ms (at 0.2 .. 2.0 s).
    assert_eq!(started.len(), 2 + 10, "{started:?}");
    for w in started.windows(2).skip(2) {
        assert!(w[1].0 - w[0].0 >= 200, "{started:?}");
    }
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_host_starts_each_job_when_allowed() {
    let h = Harness::new(&["echo"], "[plugins.echo]\nrate = \"20/s\"\n");
    let running = h.start();
    let ids = running
        .enqueue((0..10).map(|_| job("echo", "{}")).collect())
        .await;
    for id in &ids {
        h.wait_for_state(*id, JobState::Completed, Duration::from_secs(10))
            .await;
    }
    running.stop().await;
    let mut starts: Vec<i64> = Vec::new();
    for id in ids {
        starts.push(h.job(id).await.attempted_at.unwrap().0);
    }
    starts.sort();
    for w in starts.windows(2) {
        assert!(
            w[1] - w[0] >= 45,
            "started {} ms apart: {starts:?}",
            w[1] - w[0]
        );
    }
    // Woken when allowed, not on a later poll: all ten in about half a
    // second (a host that waited for idle polls would take over 4 s).
    assert!(starts[9] - starts[0] < 3500, "{starts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_kinds_and_queues_wait_and_running_attempts_finish() {
    let h = Harness::new(&["echo", "sleepy"], "");
    let store = h.store();
    let now = jobbox::time::SystemClock.now();
    let running = h.start();
    // A running attempt is not stopped by a pause of its kind.
    let slow = running.enqueue_one(job("sleepy", r#"{"ms": 400}"#)).await;
    h.wait_for_state(slow, JobState::Running, Duration::from_secs(5))
        .await;
    assert!(
        store
            .pause(PauseScope::Kind, "sleepy".into(), "deploying".into(), now)
            .await
            .unwrap()
    );
    assert!(
        store
            .pause(
                PauseScope::Queue,
                "reports".into(),
                "db migration".into(),
                now
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .pause(PauseScope::Queue, "reports".into(), "longer".into(), now)
            .await
            .unwrap(),
        "already paused"
    );
    h.wait_for_state(slow, JobState::Completed, Duration::from_secs(5))
        .await;

    let waits = running.enqueue_one(job("sleepy", r#"{"ms": 1}"#)).await;
    let queued = running
        .enqueue_one(NewJob {
            queue: "reports".into(),
            ..job("echo", "{}")
        })
        .await;
    let free = running.enqueue_one(job("echo", "{}")).await;
    h.wait_for_state(free, JobState::Completed, Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.job(waits).await.state, JobState::Available);
    assert_eq!(h.job(queued).await.state, JobState::Available);

    // Pauses are rows: another store sees them, with their notes.
    let other = h.open_store();
    let pauses = other.pauses().await.unwrap();
    assert_eq!(pauses.len(), 2);
    assert_eq!(pauses[1].note, "longer");
    other.close().await.unwrap();

    assert!(
        store
            .resume(PauseScope::Kind, "sleepy".into())
            .await
            .unwrap()
    );
    assert!(
        store
            .resume(PauseScope::Queue, "reports".into())
            .await
            .unwrap()
    );
    assert!(
        !store
            .resume(PauseScope::Queue, "reports".into())
            .await
            .unwrap()
    );
    h.wait_for_state(waits, JobState::Completed, Duration::from_secs(5))
        .await;
    h.wait_for_state(queued, JobState::Completed, Duration::from_secs(5))
        .await;
    running.stop().await;
}

/// The most jobs of `jobs` whose attempts overlapped in time.
fn max_overlap(jobs: &[JobRecord]) -> usize {
    let mut edges: Vec<(i64, i32)> = Vec::new();
    for j in jobs {
        for a in &j.attempts {
            edges.push((a.started_at.0, 1));
            edges.push((a.ended_at.0, -1));
        }
    }
    // Ends before starts at the same millisecond.
    edges.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_key_limits_running_jobs_across_two_hosts() {
    let h = Harness::new(&["sleepy"], "[host]\nconcurrency = 16\n");
    let other = h.open_store();
    let a = h.start();
    // Both hosts read one clock, so that the attempts' times (from which
    // the overlaps are measured) are on one time base: two clocks a
    // millisecond apart would show overlaps that never happened.
    let b = Running::start(Arc::new(
        Host::new(h.config.clone(), Arc::clone(&other), Arc::clone(&h.clock)).unwrap(),
    ));
    let keyed = |key: &str, limit: Option<u32>| NewJob {
        concurrency_key: Some(key.into()),
        concurrency_limit: limit,
        ..job("sleepy", r#"{"ms": 40}"#)
    };
    let mut jobs = Vec::new();
    for _ in 0..8 {
        jobs.push(keyed("account-1", None));
        jobs.push(keyed("account-2", Some(2)));
        jobs.push(job("sleepy", r#"{"ms": 40}"#));
    }
    let ids = a.enqueue(jobs).await;
    for id in &ids {
        h.wait_for_state(*id, JobState::Completed, Duration::from_secs(30))
            .await;
    }
    a.stop().await;
    b.stop().await;
    other.close().await.unwrap();
    let all = all_jobs(h.store.as_ref()).await;
    let mut by_key: HashMap<Option<String>, Vec<JobRecord>> = HashMap::new();
    for j in all {
        let full = h.job(j.id).await;
        by_key
            .entry(full.concurrency_key.clone())
            .or_default()
            .push(full);
    }
    assert_eq!(max_overlap(&by_key[&Some("account-1".into())]), 1);
    assert!(max_overlap(&by_key[&Some("account-2".into())]) <= 2);
    assert!(
        max_overlap(&by_key[&None]) > 2,
        "jobs without a key ran side by side"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_conflicts_never_dead_letter_at_default_settings() {
    // The run the issue describes: 3,000 kv-counter jobs over 3 keys,
    // default max_attempts and concurrency.
    let h = Harness::new(&["kv-counter"], "[plugins.kv-counter]\nkv = true\n");
    let running = h.start();
    let n = 3000;
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| job("kv-counter", &format!(r#"{{"key": "k{}"}}"#, i % 3)))
        .collect();
    running.enqueue(jobs).await;
    let store = h.store();
    wait_until(Duration::from_secs(120), "every job to finish", || {
        let store = Arc::clone(&store);
        async move {
            let c = store.counts().await.unwrap();
            (c.completed + c.discarded == n).then_some(())
        }
    })
    .await;
    let metrics = running.host.metrics().snapshot();
    running.stop().await;
    let counts = h.store.counts().await.unwrap();
    assert_eq!(counts.discarded, 0);
    assert_eq!(counts.completed, n);
    let mut total = 0;
    for k in 0..3 {
        let v = h
            .store
            .kv_get("kv-counter".into(), format!("k{k}"))
            .await
            .unwrap();
        total += String::from_utf8(v.value.unwrap())
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    assert_eq!(total, n, "every increment landed once");
    assert!(metrics.kv_conflicts > 0, "the run did contend");
    // A conflict gives its attempt back: no completed job used more than
    // one attempt, whatever its conflicts.
    let mut conflicted = 0;
    for j in all_jobs(h.store.as_ref()).await {
        assert_eq!(j.attempt, 1, "job {} spent {} attempts", j.id, j.attempt);
        if j.conflicts > 0 {
            conflicted += 1;
            let full = h.job(j.id).await;
            let outcomes: Vec<_> = full.attempts.iter().map(|a| a.outcome).collect();
            assert_eq!(outcomes.last(), Some(&AttemptOutcome::Completed));
            assert!(
                outcomes[..outcomes.len() - 1]
                    .iter()
                    .all(|o| *o == AttemptOutcome::KvConflict)
            );
            assert_eq!(full.conflicts as usize, outcomes.len() - 1);
        }
    }
    assert!(conflicted > 0);
}

#[tokio::test]
async fn past_the_conflict_budget_a_conflict_spends_the_attempt() {
    let h = Harness::new(&[], "");
    let store = h.store();
    let t = Timestamp(5_000);
    let id: JobId = store.enqueue(vec![job("k", "{}")], t).await.unwrap()[0].id;
    // Each round: the job read `key` as absent; a rival writes it first;
    // the job's completion conflicts.
    for round in 1..=3u32 {
        let c = claim(store.as_ref(), t, 1).await;
        let mine = &c.jobs[0];
        assert_eq!(mine.id, id);
        // A rival completion writes the key.
        store.enqueue(vec![job("rival", "{}")], t).await.unwrap();
        let rival = claim(store.as_ref(), t, 1).await.jobs.remove(0);
        let mut w = Finish::completed(&rival, "{}".into(), t);
        w.effects.namespace = "k".into();
        w.effects.kv_writes = vec![("key".into(), Some(b"x".to_vec()))];
        store.finish(w).await.unwrap();
        let mut f = Finish::completed(mine, "{}".into(), t);
        f.effects.namespace = "k".into();
        f.effects.kv_reads = vec![("key".into(), None)];
        f.on_conflict = Some(jobbox::job::ConflictRetry {
            run_at: t,
            max_conflicts: 2,
            fallback_run_at: Some(t),
        });
        let out = store.finish(f).await.unwrap();
        assert_eq!(out.outcome, AttemptOutcome::KvConflict);
        assert_eq!(out.conflict.as_deref(), Some("key"));
        let rec = h.job(id).await;
        assert_eq!(rec.conflicts, round);
        // Two conflicts are given back; the third spends the attempt.
        assert_eq!(rec.attempt, if round <= 2 { 0 } else { 1 }, "round {round}");
        // The loser is serialized on the key it lost.
        assert_eq!(rec.concurrency_key.as_deref(), Some("kv:k:key"));
    }
}
