//! The `jobbox` binary: commands, bad input, crashes and shutdown.

use std::time::{Duration, Instant};

use jobbox::job::{AttemptOutcome, JobState};
use serde_json::{Value, json};

use crate::binary::{Env, signal, stderr_of, wait};

#[test]
fn enqueue_run_show_list_through_the_binary() {
    let env = Env::new(&["echo"], "");
    let id = env.enqueue("echo", r#"{"to": "ops@example.com"}"#);
    let again = env.ok(&[
        "enqueue",
        "echo",
        "--payload",
        "{}",
        "--idempotency-key",
        "k-1",
        "--json",
    ]);
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["created"], true);
    let dup: Value = serde_json::from_str(&env.ok(&[
        "enqueue",
        "echo",
        "--payload",
        "{}",
        "--idempotency-key",
        "k-1",
        "--json",
    ]))
    .unwrap();
    assert_eq!(dup["id"], again["id"]);
    assert_eq!(dup["created"], false);

    let host = env.spawn_host();
    wait(Duration::from_secs(20), "job to complete", || {
        env.show(id)["state"] == "completed"
    });
    signal(&host, "-TERM");
    let (status, _) = stderr_of(host);
    assert!(status.success());

    let job = env.show(id);
    assert_eq!(job["kind"], "echo");
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["epoch"], 1);
    assert_eq!(job["idempotency_key"], format!("jobbox-job-{id}"));
    assert_eq!(job["output"], serde_json::json!({"to": "ops@example.com"}));
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["attempts"][0]["outcome"], "completed");
    assert!(job["attempts"][0]["fuel_used"].as_u64().unwrap() > 0);
    assert!(job["attempts"][0]["duration_ms"].is_number());

    let list: Value =
        serde_json::from_str(&env.ok(&["jobs", "list", "--state", "completed", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let text = env.ok(&["jobs", "list"]);
    assert!(text.contains("completed") && text.contains("echo"));
}

#[test]
fn bad_input_gets_one_line_errors_and_writes_nothing() {
    let env = Env::new(&["echo"], "");
    let e = env.fails(&["enqueue", "echo", "--payload", "{not json"]);
    assert!(e.contains("payload is not valid JSON"), "{e}");
    let e = env.fails(&["enqueue", "echo", "--payload", "{}", "--delay", "5 parsecs"]);
    assert!(
        e.contains("--delay") && e.contains("invalid duration"),
        "{e}"
    );
    let e = env.enqueue_fails(&["--run-at", "yesterday"]);
    assert!(e.contains("--run-at"), "{e}");
    let e = env.fails(&["enqueue", "bad kind!", "--payload", "{}"]);
    assert!(e.contains("invalid kind"), "{e}");
    let e = env.enqueue_fails(&["--idempotency-key", "jobbox-job-7"]);
    assert!(e.contains("reserved"), "{e}");
    let e = env.fails(&["jobs", "show", "4242"]);
    assert!(e.contains("job 4242 not found"), "{e}");
    let e = env.fails(&["jobs", "retry", "4242"]);
    assert!(e.contains("job 4242 not found"), "{e}");
    let list: Value = serde_json::from_str(&env.ok(&["jobs", "list", "--json"])).unwrap();
    assert_eq!(list, serde_json::json!([]), "nothing was half-written");

    // An unknown kind is allowed, with a warning.
    let out = env.run(&["enqueue", "nobody", "--payload", "{}"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: no plugin file"));

    // Config errors name the key.
    let e = env.config_error("[host]\nconcurency = 3\n");
    assert!(
        e.contains("host.concurency") && e.contains("unknown field"),
        "{e}"
    );
    let e = env.config_error("[plugins.echo]\ntimeout = \"10 fortnights\"\n");
    assert!(
        e.contains("plugins.echo.timeout") && e.contains("invalid duration"),
        "{e}"
    );
    let e = env.config_error("[defaults]\nmemory = \"12 bananas\"\n");
    assert!(
        e.contains("defaults.memory") && e.contains("invalid size"),
        "{e}"
    );
}

#[test]
fn plugins_list_shows_limits_and_rejections() {
    let env = Env::new(
        &["echo", "not-a-plugin"],
        "[plugins.echo]\ntimeout = \"7s\"\nmemory = \"32MiB\"\n",
    );
    let out: Value = serde_json::from_str(&env.ok(&["plugins", "list", "--json"])).unwrap();
    let plugins = out["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 1);
    assert_eq!(plugins[0]["kind"], "echo");
    assert_eq!(plugins[0]["settings"]["timeout"], "7s");
    assert_eq!(plugins[0]["settings"]["memory"], 32 << 20);
    let rejected = out["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("does not implement world")
    );
}

/// `plugins check` says, before any host runs them, which components do
/// not load and which import a capability their kind is not granted.
#[test]
fn plugins_check_flags_what_would_be_denied() {
    let env = Env::new(
        &["echo", "ledger-credit", "webhook-notify", "not-a-plugin"],
        "",
    );
    let out = env.run(&["plugins", "check", "--json"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("3 of 4 components failed the check"),
        "{stderr}"
    );
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_kind = |kind: &str| {
        reports
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == kind)
            .unwrap()
            .clone()
    };
    let echo = by_kind("echo");
    assert_eq!(
        (&echo["loads"], &echo["ungranted"]),
        (&json!(true), &json!([]))
    );
    assert_eq!(echo["content_hash"].as_str().unwrap().len(), 64);
    let ledger = by_kind("ledger-credit");
    let ungranted = ledger["ungranted"].to_string();
    assert!(
        ungranted.contains("jobbox:plugin/kv") && ungranted.contains("jobbox:plugin/outbox"),
        "{ledger}"
    );
    let hook = by_kind("webhook-notify");
    assert!(
        hook["ungranted"]
            .to_string()
            .contains("wasi:http/outgoing-handler"),
        "{hook}"
    );
    let bad = by_kind("not-a-plugin");
    assert_eq!(bad["loads"], false);
    assert!(
        bad["error"].as_str().unwrap().contains("no export `run`"),
        "{bad}"
    );

    // Granted in the config, the same component passes; one file at a time.
    let granted = Env::new(
        &["webhook-notify"],
        "[plugins.webhook-notify]\nhttp_allow = [{ url = \"https://hooks.example.com\" }]\n",
    );
    let plugins = granted.ok(&["plugins", "list", "--json"]);
    let path: Value = serde_json::from_str(&plugins).unwrap();
    let file = path["plugins"][0]["path"].as_str().unwrap().to_owned();
    let text = granted.ok(&["plugins", "check", &file]);
    assert!(
        text.contains("webhook-notify") && text.contains(": ok"),
        "{text}"
    );
    assert!(
        text.contains("http [https://hooks.example.com:443]"),
        "{text}"
    );
    let e = granted.fails(&["plugins", "check", "/nonexistent/x.wasm"]);
    assert!(e.contains("no such file or directory"), "{e}");
}

/// Kill -9 mid-run, restart: every job completes exactly once, none lost.
#[test]
fn kill_9_then_restart_loses_nothing() {
    let env = Env::new(
        &["sleepy"],
        "concurrency = 8\nlease = \"1s\"\nrescue_interval = \"100ms\"\n[plugins.sleepy]\nbackoff_base = \"10ms\"\nmax_attempts = 10\n",
    );
    let n = 120;
    let store = env.store();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let jobs = vec![jobbox::job::NewJob::new("sleepy", r#"{"ms": 40}"#).unwrap(); n];
    rt.block_on(store.enqueue(jobs, jobbox::time::Timestamp(0)))
        .unwrap();
    let counts = || rt.block_on(store.counts()).unwrap();

    let mut host = env.spawn_host();
    wait(Duration::from_secs(20), "some progress", || {
        host.assert_alive();
        counts().completed >= 20
    });
    host.kill().unwrap(); // SIGKILL
    host.wait().unwrap();
    let at_kill = counts();
    assert!(
        at_kill.completed < n as u64,
        "the kill landed before the end"
    );
    assert!(
        at_kill.running > 0,
        "the kill left jobs running: {at_kill:?}"
    );

    let host = env.spawn_host();
    wait(Duration::from_secs(60), "every job to complete", || {
        counts().completed == n as u64
    });
    signal(&host, "-TERM");
    let (status, _) = stderr_of(host);
    assert!(status.success());

    let c = counts();
    assert_eq!(
        (
            c.completed,
            c.running,
            c.available,
            c.retryable,
            c.discarded
        ),
        (n as u64, 0, 0, 0, 0)
    );
    let mut rescued = 0;
    for id in 1..=n as i64 {
        let job = rt.block_on(store.job(id)).unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed);
        let completed = job
            .attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Completed)
            .count();
        assert_eq!(completed, 1, "job {id} completed once");
        rescued += job
            .attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::LeaseExpired)
            .count();
    }
    assert!(rescued >= 1, "the jobs the crash left running were rescued");
    rt.block_on(store.close()).unwrap();
}

/// SIGTERM: attempts that fit in the grace period finish; the rest are
/// released without burning an attempt; nothing stays running.
#[test]
fn graceful_shutdown_leaves_nothing_running() {
    let env = Env::new(&["sleepy"], "shutdown_grace = \"700ms\"\n");
    let quick = env.enqueue("sleepy", r#"{"ms": 200}"#);
    let slow: Vec<_> = (0..3)
        .map(|_| env.enqueue("sleepy", r#"{"ms": 20000}"#))
        .collect();
    let host = env.spawn_host();
    wait(Duration::from_secs(20), "all four to start", || {
        env.show(quick)["attempt"] == 1 && slow.iter().all(|id| env.show(*id)["state"] == "running")
    });
    let stopping = Instant::now();
    signal(&host, "-TERM");
    let (status, stderr) = stderr_of(host);
    assert!(status.success(), "{stderr}");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        stopping.elapsed()
    );

    assert_eq!(env.show(quick)["state"], "completed");
    for id in &slow {
        let job = env.show(*id);
        assert_eq!(job["state"], "available", "{job}");
        assert_eq!(job["attempt"], 0, "the attempt was given back");
        assert_eq!(job["epoch"], 1);
        assert_eq!(job["attempts"][0]["outcome"], "host_shutdown");
    }
    let running: Value =
        serde_json::from_str(&env.ok(&["jobs", "list", "--state", "running", "--json"])).unwrap();
    assert_eq!(running, serde_json::json!([]));
    assert!(stderr.contains(&format!("EFFECT job={quick} ")), "{stderr}");
    for id in &slow {
        assert!(
            !stderr.contains(&format!("EFFECT job={id} ")),
            "a cancelled attempt took effect: {stderr}"
        );
    }
}

/// An attempt stopped at its deadline never produces its effect, even
/// after the deadline; one within its deadline does.
#[test]
fn an_effect_after_the_deadline_never_lands() {
    let env = Env::new(
        &["slow-effect"],
        "[plugins.slow-effect]\ntimeout = \"300ms\"\nmax_attempts = 1\n",
    );
    let late = env.enqueue("slow-effect", r#"{"ms": 1200}"#);
    let on_time = env.enqueue("slow-effect", r#"{"ms": 50}"#);
    let host = env.spawn_host();
    wait(Duration::from_secs(20), "both to finish", || {
        env.show(late)["state"] == "discarded" && env.show(on_time)["state"] == "completed"
    });
    // Give the late attempt time to have produced its effect, had it run on.
    std::thread::sleep(Duration::from_millis(1500));
    signal(&host, "-TERM");
    let (_, stderr) = stderr_of(host);
    assert_eq!(env.show(late)["attempts"][0]["outcome"], "timeout");
    assert!(
        stderr.contains(&format!("EFFECT job={on_time} attempt=1")),
        "{stderr}"
    );
    assert!(!stderr.contains(&format!("EFFECT job={late}")), "{stderr}");
}

#[test]
fn bench_smoke_reports_sane_fields() {
    if crate::support::skip_unless_sqlite(
        "`jobbox bench` measures a SQLite store of its own, whatever the config names",
    ) {
        return;
    }
    let env = Env::new(&["echo"], "");
    let out = env.ok(&["bench", "-n", "2000", "--concurrency", "16", "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    for field in [
        "jobs_per_sec",
        "store_floor_jobs_per_sec",
        "sandbox_floor_jobs_per_sec",
        "ratio_to_lower_floor",
        "enqueue_per_sec",
    ] {
        assert!(r[field].as_f64().unwrap() > 0.0, "{field} in {r}");
    }
    for field in ["queue_wait_ms", "run_ms"] {
        let p = &r[field];
        let (p50, p90, p99) = (
            p["p50"].as_f64().unwrap(),
            p["p90"].as_f64().unwrap(),
            p["p99"].as_f64().unwrap(),
        );
        assert!(0.0 <= p50 && p50 <= p90 && p90 <= p99, "{field}: {p}");
    }
    assert_eq!(r["n"], 2000);
    let out = env.ok(&["bench", "-n", "50", "--latency", "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(r["enqueue_to_start_ms"]["p50"].as_f64().unwrap() > 0.0);
}

/// The admin API's figures: batch enqueue and `?wait` over HTTP, the
/// overhead of serving and scraping, `/metrics` and `/api/stats` with many
/// plugins and jobs, and an idle host's CPU. (Small sizes: the figures
/// themselves come from the README's commands.)
#[test]
fn bench_measures_the_api() {
    if crate::support::skip_unless_sqlite(
        "`jobbox bench` measures a SQLite store of its own, whatever the config names",
    ) {
        return;
    }
    let env = Env::new(&["echo"], "");
    let json = |args: &[&str]| -> Value {
        let mut all = vec!["bench", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&env.ok(&all)).unwrap()
    };
    let r = json(&["--http", "-n", "3000"]);
    assert_eq!(r["jobs"], 3000, "{r}");
    assert!(r["enqueue_jobs_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    let p = &r["submit_to_result_ms"];
    assert!(p["p50"].as_f64().unwrap() > 0.0 && p["p50"].as_f64() <= p["p99"].as_f64());

    let r = json(&["--overhead", "-n", "500", "--rounds", "1"]);
    assert!(r["ratio"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["ratio_with_event_stream"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        r["scrapes"].as_u64().unwrap() >= 4,
        "scraped at least once in each round with the API: {r}"
    );
    // The stream carried each job's running and completed, or said what
    // it missed.
    assert_eq!(
        r["events"].as_u64().unwrap() + r["events_missed"].as_u64().unwrap(),
        1000,
        "{r}"
    );

    let r = json(&["--observe", "--plugins", "3", "--rows", "5000"]);
    assert_eq!(
        (r["plugins"].as_u64(), r["jobs_in_database"].as_u64()),
        (Some(3), Some(5000))
    );
    for field in ["metrics_ms", "stats_ms", "jobs_ms", "count_refresh_ms"] {
        assert!(r[field]["p50"].as_f64().unwrap() > 0.0, "{field} in {r}");
    }

    let r = json(&["--idle", "1"]);
    let share = r["core_percent"].as_f64().unwrap();
    assert!((0.0..100.0).contains(&share), "{r}");

    // Start-up: distinct builds compile cold, and load from the cache warm.
    let r = json(&["--startup", "3"]);
    assert_eq!(
        (&r["cold_compiled"], &r["warm_compiled"], &r["warm_cached"]),
        (&json!(3), &json!(0), &json!(3)),
        "{r}"
    );

    let e = env.fails(&["bench", "--http", "--idle", "1"]);
    assert!(e.contains("cannot be used with"), "{e}");
}

/// Kill -9 in the middle of 1000 kv-counter jobs, restart: the counter
/// equals the number of jobs exactly (no increment lost or doubled).
#[test]
fn kill_9_mid_run_leaves_a_kv_counter_exact() {
    let env = Env::new(
        &["kv-counter"],
        "concurrency = 4\nlease = \"1s\"\nrescue_interval = \"100ms\"\n\
         [plugins.kv-counter]\nkv = true\nmax_attempts = 10000\nbackoff_base = \"1ms\"\nbackoff_max = \"10ms\"\nbackoff_jitter = 1.0\n",
    );
    let n = 1000u64;
    let store = env.store();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut one = jobbox::job::NewJob::new("kv-counter", r#"{"key":"counter"}"#).unwrap();
    one.max_attempts = Some(10_000);
    let jobs = vec![one; n as usize];
    rt.block_on(store.enqueue(jobs, jobbox::time::Timestamp(0)))
        .unwrap();
    let counts = || rt.block_on(store.counts()).unwrap();
    let counter = || {
        rt.block_on(store.kv_get("kv-counter".into(), "counter".into()))
            .unwrap()
            .value
            .map(|v| String::from_utf8(v).unwrap().parse::<u64>().unwrap())
            .unwrap_or(0)
    };

    let mut host = env.spawn_host();
    wait(Duration::from_secs(60), "some progress", || {
        host.assert_alive();
        counts().completed >= 200
    });
    host.kill().unwrap();
    host.wait().unwrap();
    let at_kill = counts();
    assert!(at_kill.completed < n, "the kill landed before the end");
    assert_eq!(
        counter(),
        at_kill.completed,
        "the counter matches the completed jobs at the kill"
    );

    let mut host = env.spawn_host();
    wait(Duration::from_secs(120), "every job to complete", || {
        host.assert_alive();
        counts().completed == n
    });
    signal(&host, "-TERM");
    let (status, _) = stderr_of(host);
    assert!(status.success());
    assert_eq!(counter(), n);
    rt.block_on(store.close()).unwrap();
}

#[test]
fn outbox_commands_and_callback_validation() {
    let env = Env::new(&["echo"], "");
    let out: Value = serde_json::from_str(&env.ok(&["outbox", "list", "--json"])).unwrap();
    assert_eq!(out, serde_json::json!([]));
    let e = env.fails(&["outbox", "retry", "99"]);
    assert!(e.contains("outbox event 99 not found"), "{e}");
    let e = env.fails(&["outbox", "list", "--state", "lost"]);
    assert!(e.contains("lost"), "{e}");
    let out: Value =
        serde_json::from_str(&env.ok(&["outbox", "list", "--before", "5", "--json"])).unwrap();
    assert_eq!(out, serde_json::json!([]));
    let e = env.fails(&["outbox", "list", "--before", "soon"]);
    assert!(e.contains("--before"), "{e}");
    let e = env.enqueue_fails(&["--callback", "ftp://example.com/x"]);
    assert!(
        e.contains("--callback") && e.contains("not http or https"),
        "{e}"
    );
    // Callback URLs come from whoever enqueues: an internal address is
    // refused unless `[outbox] callback_allow` names it.
    for internal in [
        "http://127.0.0.1:9/cb",
        "http://localhost/cb",
        "http://10.1.2.3/cb",
        "http://169.254.169.254/latest",
        "http://[::1]:80/cb",
    ] {
        let e = env.enqueue_fails(&["--callback", internal]);
        assert!(e.contains("internal address"), "{internal}: {e}");
    }
    let id = env.ok(&[
        "enqueue",
        "echo",
        "--payload",
        "{}",
        "--callback",
        "https://hooks.example.com/cb",
        "--json",
    ]);
    assert!(id.contains("\"created\":true"));
    let allowed = Env::new(
        &["echo"],
        "[outbox]\ncallback_allow = [{ url = \"http://127.0.0.1:9\" }]\n",
    );
    let id = allowed.ok(&[
        "enqueue",
        "echo",
        "--payload",
        "{}",
        "--callback",
        "http://127.0.0.1:9/cb",
        "--json",
    ]);
    assert!(id.contains("\"created\":true"));
    // With rules, only what they name.
    let e = allowed.enqueue_fails(&["--callback", "https://hooks.example.com/cb"]);
    assert!(e.contains("not allowed by outbox.callback_allow"), "{e}");
    // A capability for a topic without a sink is a config error naming it.
    let e = env.config_error("[plugins.echo]\noutbox_topics = [\"nowhere\"]\n");
    assert!(
        e.contains("plugins.echo.outbox_topics") && e.contains("nowhere"),
        "{e}"
    );
    let e = env.config_error("[plugins.echo]\nhttp_allow = [{ url = \"gopher://x\" }]\n");
    assert!(e.contains("plugins.echo.http_allow[0]"), "{e}");
    let e =
        env.config_error("[plugins.echo]\nhttp_allow = [{ url = \"http://a\", methods = [] }]\n");
    assert!(e.contains("methods is empty"), "{e}");
    let e = env.config_error("[outbox]\nrequest_timeout = \"0s\"\n");
    assert!(e.contains("outbox.request_timeout"), "{e}");
    let e = env.config_error("[outbox.sinks.\"jobbox.callback\"]\nurl = \"http://a\"\n");
    assert!(e.contains("reserved"), "{e}");
}

/// A plugin runs in isolation: no database is created, kv starts from a
/// file, and the effects it would commit are printed, not applied.
#[test]
fn plugins_run_tests_a_plugin_in_isolation() {
    let env = Env::new(
        &["ledger-credit"],
        "[outbox.sinks.credited]\nurl = \"http://127.0.0.1:9/credited\"\n\
         [plugins.ledger-credit]\nkv = true\noutbox_topics = [\"credited\"]\n",
    );
    let kv = env.dir.path().join("kv.json");
    std::fs::write(&kv, r#"{"balance/alice": "700"}"#).unwrap();
    let run = |payload: &str| {
        env.run(&[
            "plugins",
            "run",
            "ledger-credit",
            "--payload",
            payload,
            "--kv",
            kv.to_str().unwrap(),
            "--idempotency-key",
            "order-1",
            "--json",
        ])
    };
    let out = run(r#"{"transfer_id":"t-9","account":"bob","amount_cents":250,"from":"alice"}"#);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["outcome"], "completed");
    assert_eq!(r["output"]["balance_after_cents"], 250);
    assert_eq!(r["kv_writes"]["balance/alice"], "450");
    assert_eq!(r["kv_writes"]["balance/bob"], "250");
    assert_eq!(r["events"][0]["topic"], "credited");
    assert_eq!(r["events"][0]["idempotency_key"], "order-1:event:1");
    assert!(
        !env.dir.path().join("jobbox.db").exists(),
        "no database was touched"
    );
    if let Some(db) = env.db.pg() {
        let tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'";
        assert_eq!(db.query_i64(tables).unwrap(), 0, "no database was touched");
    }

    let out = run(r#"{"transfer_id":"t-9","account":"bob","amount_cents":2500,"from":"alice"}"#);
    assert!(!out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["outcome"], "permanent_error");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("insufficient funds in alice")
    );
    assert_eq!(r["kv_writes"], serde_json::json!({}));
}

#[test]
fn safeguards_through_the_cli() {
    let env = Env::new(
        &["echo", "trap"],
        "[plugins.echo]\nrate = \"10/s\"\nburst = 5\n[plugins.trap]\nbreaker_failures = 2\nmax_attempts = 1\n",
    );
    // Pause and resume a kind and a queue, with notes.
    assert!(
        env.ok(&["plugins", "pause", "echo", "--note", "vendor outage"])
            .contains("paused")
    );
    assert!(
        env.ok(&["plugins", "pause", "echo", "--note", "still out"])
            .contains("already paused")
    );
    let list = env.ok(&["plugins", "list"]);
    assert!(
        list.contains("PAUSED") && list.contains("still out"),
        "{list}"
    );
    assert!(list.contains("rate: 10/1s (burst 5)"), "{list}");
    let json: Value = serde_json::from_str(&env.ok(&["plugins", "list", "--json"])).unwrap();
    let echo = json["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "echo")
        .unwrap();
    assert_eq!(echo["paused"]["note"], "still out");
    assert!(env.ok(&["plugins", "resume", "echo"]).contains("resumed"));
    assert!(
        env.ok(&["plugins", "resume", "echo"])
            .contains("was not paused")
    );

    env.ok(&["queues", "pause", "reports", "--note", "migration"]);
    let id = env.ok(&[
        "enqueue",
        "echo",
        "--payload",
        "{}",
        "--queue",
        "reports",
        "--concurrency-key",
        "account-7",
        "--json",
    ]);
    let id = serde_json::from_str::<Value>(&id).unwrap()["id"]
        .as_i64()
        .unwrap();
    let queues: Value = serde_json::from_str(&env.ok(&["queues", "list", "--json"])).unwrap();
    assert_eq!(queues[0]["queue"], "reports");
    assert_eq!(queues[0]["counts"]["available"], 1);
    assert_eq!(queues[0]["paused"]["note"], "migration");
    assert!(env.ok(&["queues", "list"]).contains("PAUSED"));
    let job = env.show(id);
    assert_eq!(job["concurrency_key"], "account-7");
    assert_eq!(job["concurrency_limit"], 1);
    let shown = env.ok(&["jobs", "show", &id.to_string()]);
    assert!(
        shown.contains("concurrency key: account-7 (at most 1 running)"),
        "{shown}"
    );
    let listed: Value = serde_json::from_str(&env.ok(&[
        "jobs",
        "list",
        "--concurrency-key",
        "account-7",
        "--json",
    ]))
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // The paused queue's job waits while the host runs; the trap plugin
    // opens its breaker after two failures.
    let t1 = env.enqueue("trap", "{}");
    let t2 = env.enqueue("trap", "{}");
    let host = env.spawn_host();
    wait(
        Duration::from_secs(20),
        "both traps to be discarded",
        || env.show(t1)["state"] == "discarded" && env.show(t2)["state"] == "discarded",
    );
    wait(
        Duration::from_secs(5),
        "the breaker to show as open",
        || env.ok(&["plugins", "list"]).contains("breaker: open until"),
    );
    assert_eq!(env.show(id)["state"], "available");
    env.ok(&["queues", "resume", "reports"]);
    wait(
        Duration::from_secs(10),
        "the queue's job to complete",
        || env.show(id)["state"] == "completed",
    );
    let reset = env.ok(&["plugins", "breaker", "reset", "trap"]);
    assert!(reset.contains("was open"), "{reset}");
    assert!(env.ok(&["plugins", "list"]).contains("breaker: closed"));
    signal(&host, "-TERM");
    let (status, log) = stderr_of(host);
    assert!(status.success());
    assert!(log.contains("circuit breaker opened"), "{log}");

    // Bad input: one line, non-zero exit, nothing written.
    let e = env.fails(&["queues", "pause", "bad queue!", "--note", "x"]);
    assert!(e.contains("invalid queue"), "{e}");
    let e = env.enqueue_fails(&["--concurrency-limit", "2"]);
    assert!(
        e.contains("--concurrency-limit: needs a concurrency key"),
        "{e}"
    );
    let e = env.enqueue_fails(&["--concurrency-key", "k", "--concurrency-limit", "0"]);
    assert!(e.contains("--concurrency-limit"), "{e}");
    let e = env.enqueue_fails(&["--idempotency-key", "schedule:x:1"]);
    assert!(
        e.contains("--idempotency-key") && e.contains("reserved"),
        "{e}"
    );
}
