//! Recurring schedules: apply, fire exactly once, misfires, overlap,
//! daylight saving, and the CLI.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jobbox::admin;
use jobbox::executor::Host;
use jobbox::job::{Finish, JobFilter, JobRecord, JobState};
use jobbox::schedule::{ScheduleRecord, parse_file};
use jobbox::store::Store;
use jobbox::time::{Clock, ManualClock, Timestamp};
use serde_json::Value;

use crate::binary::{Env, signal};
use crate::support::{Harness, wait_until};

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

/// Applies the schedules of a TOML file text at `now`.
async fn apply(
    h: &Harness,
    text: &str,
    prune: bool,
    now: Timestamp,
) -> jobbox::schedule::ApplyReport {
    let defs = parse_file(Path::new("schedules.toml"), text).unwrap();
    admin::apply_schedules(h.store.as_ref(), &h.config, &defs, prune, now)
        .await
        .unwrap()
}

async fn record(store: &dyn Store, id: &str) -> ScheduleRecord {
    store
        .schedule(id.into())
        .await
        .unwrap()
        .expect("schedule exists")
}

/// The jobs a schedule has made, oldest first.
async fn jobs_of(store: &dyn Store, id: &str) -> Vec<JobRecord> {
    let mut jobs: Vec<JobRecord> = store
        .list_jobs(JobFilter {
            limit: Some(100_000),
            ..JobFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.schedule_id.as_deref() == Some(id))
        .collect();
    jobs.sort_by_key(|j| j.id);
    jobs
}

/// The idempotency keys of a schedule's jobs, oldest first.
async fn keys_of(store: &dyn Store, id: &str) -> Vec<String> {
    jobs_of(store, id)
        .await
        .into_iter()
        .map(|j| j.idempotency_key)
        .collect()
}

/// A host on the harness's store with a manual clock, not running: tests
/// drive its scheduler step by step.
fn manual_host(h: &Harness, at: &str) -> (Arc<Host>, ManualClock) {
    let clock = ManualClock::new(ts(at));
    (h.host_with_clock(Arc::new(clock.clone())), clock)
}

#[tokio::test]
async fn applying_twice_changes_nothing_and_a_new_cadence_leaves_no_stale_fire() {
    let h = Harness::new(&[], "");
    let (host, clock) = manual_host(&h, "2026-11-25T10:00:30Z");
    let file = "[[schedules]]\nid = 'report'\ncron = '0 * * * *'\nkind = 'echo'\n";
    let r = apply(&h, file, false, clock.now()).await;
    assert_eq!(r.created, ["report"]);
    let first = record(h.store.as_ref(), "report").await;
    assert_eq!(first.next_fire_at, Some(ts("2026-11-25T11:00:00Z")));

    // Same file, later: nothing changes, not even the version.
    clock.advance(Duration::from_secs(60));
    let r = apply(&h, file, false, clock.now()).await;
    assert!(!r.changed(), "{r:?}");
    assert_eq!(r.unchanged, ["report"]);
    assert_eq!(
        record(h.store.as_ref(), "report").await.version,
        first.version
    );

    // The same schedule written differently is the same schedule.
    let same = "[[schedules]]\nid = 'report'\ncron = '0  *  * * *'\ntimezone = 'UTC'\nmisfire = 'skip'\nkind = 'echo'\npayload = {}\n";
    assert!(!apply(&h, same, false, clock.now()).await.changed());

    // A new payload keeps the next fire.
    let payload =
        "[[schedules]]\nid = 'report'\ncron = '0 * * * *'\nkind = 'echo'\npayload = { v = 2 }\n";
    let r = apply(&h, payload, false, clock.now()).await;
    assert_eq!(r.updated, [("report".to_owned(), false)]);
    let rec = record(h.store.as_ref(), "report").await;
    assert_eq!(rec.next_fire_at, Some(ts("2026-11-25T11:00:00Z")));
    assert!(rec.version > first.version);

    // A new cadence moves the next fire, and the old one is gone: at the
    // old time nothing fires.
    let daily = "[[schedules]]\nid = 'report'\ncron = '0 3 * * *'\nkind = 'echo'\n";
    let r = apply(&h, daily, false, clock.now()).await;
    assert_eq!(r.updated, [("report".to_owned(), true)]);
    assert_eq!(
        record(h.store.as_ref(), "report").await.next_fire_at,
        Some(ts("2026-11-26T03:00:00Z"))
    );
    clock.set(ts("2026-11-25T11:00:00Z"));
    let step = host.fire_due_schedules().await.unwrap();
    assert_eq!(step.fired, 0);
    assert!(jobs_of(h.store.as_ref(), "report").await.is_empty());
    clock.set(ts("2026-11-26T03:00:00Z"));
    assert_eq!(host.fire_due_schedules().await.unwrap().fired, 1);
    assert_eq!(
        keys_of(h.store.as_ref(), "report").await,
        ["schedule:report:2026-11-26T03:00:00Z"]
    );

    // --prune deletes what the file does not name.
    let other = "[[schedules]]\nid = 'other'\nevery = '1h'\nkind = 'echo'\n";
    let r = apply(&h, other, true, clock.now()).await;
    assert_eq!(
        (r.created.as_slice(), r.deleted.as_slice()),
        (&["other".to_owned()][..], &["report".to_owned()][..])
    );
    assert!(h.store.schedule("report".into()).await.unwrap().is_none());
}

#[tokio::test]
async fn two_schedulers_make_each_fire_exactly_once() {
    let h = Harness::new(&[], "");
    // A second store on the same database: another process.
    let other = h.open_store();
    let clock = ManualClock::new(ts("2026-11-25T10:00:00.500Z"));
    let a = h.host_with_clock(Arc::new(clock.clone()));
    let b = Arc::new(
        Host::new(
            h.config.clone(),
            Arc::clone(&other),
            Arc::new(clock.clone()),
        )
        .unwrap(),
    );
    apply(
        &h,
        "[[schedules]]\nid = 'tick'\nevery = '1s'\nkind = 'echo'\n",
        false,
        clock.now(),
    )
    .await;

    let steps = 50;
    let mut applied = 0;
    for _ in 0..steps {
        clock.advance(Duration::from_secs(1));
        let (sa, sb) = tokio::join!(a.fire_due_schedules(), b.fire_due_schedules());
        let (sa, sb) = (sa.unwrap(), sb.unwrap());
        // Each fire is made by one of them; the other is fenced out or
        // finds nothing due.
        assert_eq!(sa.fired + sb.fired, 1, "{sa:?} {sb:?}");
        applied += sa.fired + sb.fired;
    }
    assert_eq!(applied, steps);
    let rec = record(h.store.as_ref(), "tick").await;
    assert_eq!(rec.fired, steps as u64, "one fire recorded per second");
    let keys = keys_of(h.store.as_ref(), "tick").await;
    assert_eq!(keys.len(), steps);
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), steps);
    assert_eq!(keys[0], "schedule:tick:2026-11-25T10:00:01Z");
    assert_eq!(keys[steps - 1], "schedule:tick:2026-11-25T10:00:50Z");
    other.close().await.unwrap();
}

#[tokio::test]
async fn misfire_policies_after_downtime() {
    let h = Harness::new(&[], "");
    let (host, clock) = manual_host(&h, "2026-11-25T10:00:30Z");
    let file = "
        [[schedules]]
        id = 'skip'
        cron = '0 * * * *'
        kind = 'echo'

        [[schedules]]
        id = 'all'
        cron = '0 * * * *'
        misfire = 'all'
        kind = 'echo'

        [[schedules]]
        id = 'capped'
        cron = '0 * * * *'
        misfire = 'all'
        max_catch_up = 2
        kind = 'echo'

        [[schedules]]
        id = 'none'
        cron = '0 * * * *'
        misfire = 'none'
        kind = 'echo'
    ";
    apply(&h, file, false, clock.now()).await;
    // Down from before 11:00 until 15:30: 11, 12, 13, 14 and 15 passed.
    clock.set(ts("2026-11-25T15:30:00Z"));
    let step = host.fire_due_schedules().await.unwrap();
    assert_eq!(step.due, 4);
    let at = |h: u32| format!("2026-11-25T{h}:00:00Z");
    let store = h.store.as_ref();

    assert_eq!(
        keys_of(store, "skip").await,
        [format!("schedule:skip:{}", at(15))]
    );
    let all: Vec<String> = (11..=15)
        .map(|h| format!("schedule:all:{}", at(h)))
        .collect();
    assert_eq!(keys_of(store, "all").await, all);
    assert_eq!(
        keys_of(store, "capped").await,
        [14, 15].map(|h| format!("schedule:capped:{}", at(h)))
    );
    assert!(keys_of(store, "none").await.is_empty());

    for (id, missed) in [("skip", 4), ("all", 0), ("capped", 3), ("none", 5)] {
        let rec = record(store, id).await;
        assert_eq!(rec.missed, missed, "{id}");
        assert_eq!(rec.next_fire_at, Some(ts(&at(16))), "{id}: then on cadence");
    }
    // The catch-up jobs are due now, not at their nominal times.
    for job in jobs_of(store, "all").await {
        assert_eq!(job.run_at, ts("2026-11-25T15:30:00Z"));
    }
    // Back on time: one fire each (none included).
    clock.set(ts(&at(16)));
    assert_eq!(host.fire_due_schedules().await.unwrap().fired, 4);
}

#[tokio::test]
async fn overlap_skip_and_buffer_one_wait_for_the_previous_job() {
    let h = Harness::new(&[], "");
    let (host, clock) = manual_host(&h, "2026-11-25T10:00:30Z");
    let file = "
        [[schedules]]
        id = 'allow'
        cron = '0 * * * *'
        kind = 'echo'

        [[schedules]]
        id = 'skip'
        cron = '0 * * * *'
        overlap = 'skip'
        kind = 'echo'

        [[schedules]]
        id = 'buffer'
        cron = '0 * * * *'
        overlap = 'buffer_one'
        kind = 'echo'
    ";
    apply(&h, file, false, clock.now()).await;
    let store = h.store.as_ref();
    // No host runs the jobs: each fire's job stays unfinished.
    for hour in ["11", "12", "13"] {
        clock.set(ts(&format!("2026-11-25T{hour}:00:00Z")));
        host.fire_due_schedules().await.unwrap();
    }
    assert_eq!(jobs_of(store, "allow").await.len(), 3);
    assert_eq!(jobs_of(store, "skip").await.len(), 1);
    assert_eq!(record(store, "skip").await.skipped, 2);
    let buffer = record(store, "buffer").await;
    assert_eq!(jobs_of(store, "buffer").await.len(), 1);
    assert_eq!(
        buffer.buffered_at,
        Some(ts("2026-11-25T12:00:00Z")),
        "12:00 waits"
    );
    assert_eq!(buffer.skipped, 1, "13:00 found one already waiting");

    // The first job finishes: the buffered fire's job is inserted at once.
    let first = jobs_of(store, "buffer").await.remove(0);
    let now = clock.now();
    let claimed = store
        .claim(crate::support::claim_req(now, 100, "t"))
        .await
        .unwrap()
        .jobs;
    let mine = claimed.iter().find(|j| j.id == first.id).unwrap();
    store
        .finish(Finish::completed(mine, "{}".into(), now))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(1));
    let step = host.fire_due_schedules().await.unwrap();
    assert_eq!(step.fired, 1);
    assert_eq!(
        keys_of(store, "buffer").await,
        [
            "schedule:buffer:2026-11-25T11:00:00Z",
            "schedule:buffer:2026-11-25T12:00:00Z"
        ]
    );
    assert_eq!(record(store, "buffer").await.buffered_at, None);
    // The skip schedule's job is running, still unfinished: 14:00 skips.
    clock.set(ts("2026-11-25T14:00:00Z"));
    host.fire_due_schedules().await.unwrap();
    assert_eq!(record(store, "skip").await.skipped, 3);
}

/// Steps the scheduler to each of the schedule's next `n` fires; returns
/// the nominal times of the jobs made, as keys.
async fn step_through(
    h: &Harness,
    host: &Host,
    clock: &ManualClock,
    id: &str,
    n: usize,
) -> Vec<String> {
    for _ in 0..n {
        let next = record(h.store.as_ref(), id).await.next_run_at.unwrap();
        clock.set(next);
        assert_eq!(host.fire_due_schedules().await.unwrap().fired, 1);
    }
    keys_of(h.store.as_ref(), id)
        .await
        .into_iter()
        .map(|k| k.trim_start_matches(&format!("schedule:{id}:")).to_owned())
        .collect()
}

#[tokio::test]
async fn daylight_saving_gap_fires_once_after_the_jump_and_fold_once_at_first() {
    let h = Harness::new(&[], "");
    // Europe/Berlin springs forward at 02:00 CET on 2026-03-29: 02:30 does
    // not exist that day.
    let (host, clock) = manual_host(&h, "2026-03-27T12:00:00Z");
    apply(
        &h,
        "[[schedules]]\nid = 'gap'\ncron = '30 2 * * *'\ntimezone = 'Europe/Berlin'\nkind = 'echo'\n",
        false,
        clock.now(),
    )
    .await;
    assert_eq!(
        step_through(&h, &host, &clock, "gap", 3).await,
        [
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // 03:00 CEST: right after the jump
            "2026-03-30T00:30:00Z", // 02:30 CEST
        ]
    );

    // America/New_York falls back at 02:00 EDT on 2026-11-01: 01:30 happens
    // twice and fires at the first. (Pruning the first schedule.)
    clock.set(ts("2026-10-31T12:00:00Z"));
    apply(
        &h,
        "[[schedules]]\nid = 'fold'\ncron = '30 1 * * *'\ntimezone = 'America/New_York'\nkind = 'echo'\n",
        true,
        clock.now(),
    )
    .await;
    assert_eq!(
        step_through(&h, &host, &clock, "fold", 1).await,
        ["2026-11-01T05:30:00Z"] // 01:30 EDT
    );
    // At the second 01:30 (EST), nothing.
    clock.set(ts("2026-11-01T06:30:00Z"));
    assert_eq!(host.fire_due_schedules().await.unwrap().fired, 0);
    assert_eq!(
        record(h.store.as_ref(), "fold").await.next_fire_at,
        Some(ts("2026-11-02T06:30:00Z"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_wakes_at_the_fire_time_not_on_a_poll() {
    // A refresh far longer than the cadence: a scheduler that polled would
    // be seconds late.
    let h = Harness::new(&["echo"], "[scheduler]\nrefresh = \"30s\"\n");
    let running = h.start();
    // Applied once the host runs (no fire falls in its start-up), through
    // this process, which wakes its scheduler.
    apply(
        &h,
        "[[schedules]]\nid = 'beat'\nevery = '1s'\nkind = 'echo'\n",
        false,
        jobbox::time::SystemClock.now(),
    )
    .await;
    running.host.wake_scheduler();
    let store = h.store();
    let done = wait_until(Duration::from_secs(20), "three fires to complete", || {
        let store = Arc::clone(&store);
        async move {
            let jobs = jobs_of(store.as_ref(), "beat").await;
            let done: Vec<_> = jobs
                .into_iter()
                .filter(|j| j.state == JobState::Completed)
                .collect();
            (done.len() >= 3).then_some(done)
        }
    })
    .await;
    running.stop().await;
    for job in done {
        let nominal = ts(job.idempotency_key.trim_start_matches("schedule:beat:"));
        let started = job.attempted_at.unwrap();
        let late = started.0 - nominal.0;
        // On an idle host this is a few milliseconds (`jobbox bench
        // --schedule`); the bound only has to tell a wake at the fire time
        // from a 30 s poll, on a busy test machine.
        assert!(
            (0..900).contains(&late),
            "job of {nominal} started {late} ms after its fire time"
        );
    }
}

#[test]
fn invalid_schedule_files_apply_nothing() {
    let env = Env::new(&["echo"], "");
    let file = env.dir.path().join("schedules.toml");
    let check = |text: &str, expected: &[&str]| {
        std::fs::write(&file, text).unwrap();
        let e = env.fails(&["schedules", "apply", "--file", file.to_str().unwrap()]);
        for part in expected {
            assert!(e.contains(part), "{part:?} not in {e}");
        }
        let list: Value = serde_json::from_str(&env.ok(&["schedules", "list", "--json"])).unwrap();
        assert_eq!(list, serde_json::json!([]), "nothing applied after: {e}");
    };
    let good = "[[schedules]]\nid = 'good'\nevery = '1h'\nkind = 'echo'\n\n";
    check(
        &format!("{good}[[schedules]]\nid = 'bad'\ncron = '61 * * * *'\nkind = 'echo'\n"),
        &["schedule \"bad\"", "cron"],
    );
    check(
        &format!(
            "{good}[[schedules]]\nid = 'zone'\ncron = '0 * * * *'\ntimezone = 'Mars/Olympus_Mons'\nkind = 'echo'\n"
        ),
        &["schedule \"zone\"", "timezone", "Mars/Olympus_Mons"],
    );
    check(
        &format!("{good}[[schedules]]\nid = 'typo'\nevery = '1h'\nkind = 'echo'\npriorty = 3\n"),
        &["schedule \"typo\"", "priorty"],
    );
    check(
        &format!(
            "{good}[[schedules]]\nid = 'big'\nevery = '1h'\nkind = 'echo'\npayload = {{ x = '{}' }}\n",
            "y".repeat(2 << 20)
        ),
        &["schedule \"big\"", "max_payload"],
    );
    std::fs::write(
        env.dir.path().join("s.json"),
        "[{\"id\": \"j\", \"every\": \"1h\"}]",
    )
    .unwrap();
    let e = env.fails(&[
        "schedules",
        "apply",
        "--file",
        env.dir.path().join("s.json").to_str().unwrap(),
    ]);
    assert!(e.contains("schedule \"j\"") && e.contains("kind"), "{e}");
}

#[test]
fn schedules_through_the_cli() {
    let env = Env::new(&["echo"], "");
    let file = env.dir.path().join("schedules.toml");
    std::fs::write(
        &file,
        "[[schedules]]\nid = 'nightly'\ncron = '0 3 * * *'\ntimezone = 'Europe/Berlin'\nkind = 'echo'\npayload = { report = 'daily' }\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    assert!(
        env.ok(&["schedules", "apply", "--file", f])
            .contains("created   nightly")
    );
    assert!(
        env.ok(&["schedules", "apply", "--file", f])
            .starts_with("no changes")
    );

    let shown: Value =
        serde_json::from_str(&env.ok(&["schedules", "show", "nightly", "--next", "3", "--json"]))
            .unwrap();
    let upcoming: Vec<Timestamp> = shown["upcoming"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| ts(u["nominal"].as_str().unwrap()))
        .collect();
    assert_eq!(upcoming.len(), 3);
    assert_eq!(upcoming[1].0 - upcoming[0].0, 86_400_000);

    // Trigger: a fire now, with a key of its own each time.
    for n in 1..=2 {
        let out = env.ok(&["schedules", "trigger", "nightly"]);
        let id: i64 = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
        let job = env.show(id);
        assert_eq!(
            job["idempotency_key"],
            format!("schedule:nightly:trigger:{n}")
        );
        assert_eq!(job["payload"], serde_json::json!({"report": "daily"}));
        assert_eq!(job["schedule_id"], "nightly");
    }

    env.ok(&[
        "schedules",
        "pause",
        "nightly",
        "--note",
        "migrating the reports DB",
    ]);
    let list: Value = serde_json::from_str(&env.ok(&["schedules", "list", "--json"])).unwrap();
    assert_eq!(list[0]["paused"], true);
    assert_eq!(list[0]["pause_note"], "migrating the reports DB");
    assert_eq!(list[0]["triggers"], 2);
    assert!(
        env.ok(&["schedules", "list"])
            .contains("paused: migrating the reports DB")
    );
    assert!(
        env.ok(&["schedules", "resume", "nightly"])
            .contains("resumed")
    );
    assert!(
        env.ok(&["schedules", "resume", "nightly"])
            .contains("was not paused")
    );

    env.ok(&["schedules", "delete", "nightly"]);
    let e = env.fails(&["schedules", "delete", "nightly"]);
    assert!(e.contains("schedule \"nightly\" not found"), "{e}");
    let e = env.fails(&["schedules", "trigger", "nope"]);
    assert!(e.contains("schedule \"nope\" not found"), "{e}");
}

#[test]
fn two_hosts_and_kill_9_neither_double_nor_lose_a_fire() {
    let env = Env::new(&["echo"], "[scheduler]\nrefresh = \"200ms\"\n");
    let file = env.dir.path().join("schedules.toml");
    std::fs::write(
        &file,
        "[[schedules]]\nid = 'beat'\nevery = '1s'\nmisfire = 'all'\nkind = 'echo'\n",
    )
    .unwrap();
    env.ok(&["schedules", "apply", "--file", file.to_str().unwrap()]);
    let mut a = env.spawn_host();
    let mut b = env.spawn_host();
    // Kill one host with SIGKILL at arbitrary moments and start it again,
    // while the other keeps going; then the other.
    for round in 0..6u64 {
        std::thread::sleep(Duration::from_millis(700 + 97 * round));
        let victim = if round % 2 == 0 { &mut a } else { &mut b };
        victim.kill().unwrap();
        victim.wait().unwrap();
        *victim = env.spawn_host();
    }
    std::thread::sleep(Duration::from_millis(1500));
    a.assert_alive();
    b.assert_alive();
    signal(&a, "-TERM");
    signal(&b, "-TERM");
    a.wait().unwrap();
    b.wait().unwrap();

    let store = env.store();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (jobs, rec) = rt.block_on(async {
        (
            jobs_of(&*store, "beat").await,
            record(&*store, "beat").await,
        )
    });
    let nominal: Vec<i64> = jobs
        .iter()
        .map(|j| ts(j.idempotency_key.trim_start_matches("schedule:beat:")).0)
        .collect();
    assert!(
        nominal.len() >= 6,
        "only {} fires in about 8s",
        nominal.len()
    );
    let distinct: BTreeSet<i64> = nominal.iter().copied().collect();
    assert_eq!(distinct.len(), nominal.len(), "a fire made twice");
    let (first, last) = (*distinct.first().unwrap(), *distinct.last().unwrap());
    assert_eq!(
        distinct.len() as i64,
        (last - first) / 1000 + 1,
        "a second between {first} and {last} has no fire"
    );
    assert_eq!(rec.fired, nominal.len() as u64);
    assert_eq!(rec.missed, 0, "misfire = all catches every fire up");
}
