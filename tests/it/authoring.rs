//! Plugin authors' tools: `plugins test` files, determinism, and record and
//! replay of failed attempts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jobbox::testing::{CaseGrants, Harness, HttpMock, TestCase};
use serde_json::Value;

use crate::binary::Env;
use crate::server::{Reply, TestServer};

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The example plugins, each with a test file in its crate.
const EXAMPLES: &[&str] = &["echo", "invoice", "ledger-credit", "webhook-notify"];

#[test]
fn every_example_plugin_passes_its_test_file() {
    let env = Env::new(EXAMPLES, "");
    let files: Vec<String> = EXAMPLES
        .iter()
        .map(|k| {
            repo()
                .join(format!("plugins/{k}/{k}.tests.toml"))
                .display()
                .to_string()
        })
        .collect();
    let mut args = vec!["plugins", "test", "--json"];
    args.extend(files.iter().map(String::as_str));
    let report: Value = serde_json::from_str(&env.ok(&args)).unwrap();
    assert_eq!(report["failed"], 0, "{report:#}");
    assert_eq!(report["files"].as_array().unwrap().len(), EXAMPLES.len());
    for file in report["files"].as_array().unwrap() {
        assert!(
            file["cases"].as_array().unwrap().len() >= 4,
            "{}: too few cases",
            file["file"]
        );
    }
    // Text mode: a table of passes.
    let mut args = vec!["plugins", "test"];
    args.extend(files.iter().map(String::as_str));
    let text = env.ok(&args);
    assert!(
        text.contains("  PASS  returns its payload as output"),
        "{text}"
    );
    assert!(text.contains(" passed, 0 failed"), "{text}");
}

#[test]
fn a_wrong_expectation_fails_with_a_diff_and_an_unmatched_request_fails_the_case() {
    let env = Env::new(&["echo", "webhook-notify"], "");
    let dir = tempfile::tempdir().unwrap();
    let echo = dir.path().join("echo.tests.toml");
    std::fs::write(
        &echo,
        r#"
[[case]]
name = "right"
payload = { a = 1 }
expect.output = { a = 1 }

[[case]]
name = "wrong output"
payload = { a = 1, b = [1, 2] }
expect.output = { a = 2, b = [1, 2] }
expect.logs = ["no such line"]
"#,
    )
    .unwrap();
    let hook = dir.path().join("webhook-notify.tests.toml");
    std::fs::write(
        &hook,
        r#"
[grants]
http_allow = [{ url = "https://hooks.example.com" }]

[[case]]
name = "no mock for the request"
payload = { url = "https://hooks.example.com/orders", event = 1 }
[[case.http]]
url = "https://hooks.example.com/other"
status = 200
"#,
    )
    .unwrap();
    let out = env.run(&[
        "plugins",
        "test",
        echo.to_str().unwrap(),
        hook.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("  PASS  right"), "{text}");
    assert!(text.contains("  FAIL  wrong output"), "{text}");
    assert!(text.contains("output: the output differs"), "{text}");
    assert!(text.contains("-   \"a\": 2,"), "{text}");
    assert!(text.contains("+   \"a\": 1,"), "{text}");
    assert!(
        text.contains("logs: no log line contains \"no such line\""),
        "{text}"
    );
    assert!(
        text.contains("unmatched: no mock answers POST https://hooks.example.com/orders"),
        "{text}"
    );
    assert!(
        text.contains("3 cases in 2 files: 1 passed, 2 failed"),
        "{text}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 of 3 cases failed"), "{err}");

    // A malformed file is named with its line; nothing runs.
    std::fs::write(&echo, "[[case]]\nname = \"x\"\nexpect.outcome = \"fine\"\n").unwrap();
    let out = env.run(&["plugins", "test", echo.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("expect.outcome \"fine\" is not one of ok, retryable"),
        "{text}"
    );
}

/// The entropy plugin reads both clocks, both random sources and kv.
fn entropy_case(seed: u64) -> TestCase {
    TestCase {
        seed,
        grants: Some(CaseGrants {
            kv: true,
            ..CaseGrants::default()
        }),
        now: Some("2030-01-02T03:04:05Z".into()),
        fencing_token: Some(9),
        kv: [("seen".to_owned(), jobbox::sandbox::Blob(b"yes".to_vec()))].into(),
        ..TestCase::new("entropy")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_gives_the_same_answer_on_every_run() {
    let harness = Harness::new(None).unwrap();
    let component = harness
        .prepare_file(&jobbox_tests::plugin_artifacts().join("entropy.wasm"))
        .unwrap();
    let first = harness
        .run("entropy", &component, &entropy_case(1))
        .await
        .unwrap()
        .summary;
    let again = harness
        .run("entropy", &component, &entropy_case(1))
        .await
        .unwrap()
        .summary;
    assert_eq!(first.outcome, "ok", "{first:?}");
    assert_eq!(
        first, again,
        "the same case twice must give the same result"
    );
    let read: Value = serde_json::from_str(first.output.as_deref().unwrap()).unwrap();
    // The clock starts at the case's `now`; the token and kv are the case's.
    let now_s = jiff::Timestamp::from_second(read["wall_s"].as_i64().unwrap()).unwrap();
    assert_eq!(now_s.to_string(), "2030-01-02T03:04:05Z");
    assert_eq!(read["fencing_token"], 9);
    assert_eq!(read["seen"], "yes");
    // Another seed, other random numbers; the rest is the same.
    let other = harness
        .run("entropy", &component, &entropy_case(2))
        .await
        .unwrap()
        .summary;
    let read2: Value = serde_json::from_str(other.output.as_deref().unwrap()).unwrap();
    assert_ne!(read["random"], read2["random"]);
    assert_ne!(read["insecure"], read2["insecure"]);
    assert_eq!(read["wall_s"], read2["wall_s"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mocks_answer_in_order_and_requests_carry_the_jobs_key() {
    let harness = Harness::new(None).unwrap();
    let component = harness
        .prepare_file(&jobbox_tests::plugin_artifacts().join("webhook-notify.wasm"))
        .unwrap();
    let url = "https://hooks.example.com/orders";
    let case = TestCase {
        payload: Some(serde_json::json!({ "url": url, "event": { "n": 1 } })),
        key: "order-1".into(),
        grants: Some(CaseGrants {
            http_allow: vec![jobbox::testing::HttpAllow {
                url: "https://hooks.example.com".into(),
                methods: None,
            }],
            ..CaseGrants::default()
        }),
        http: vec![
            HttpMock {
                once: true,
                ..HttpMock::new("POST", url, 503)
            },
            HttpMock::new("POST", url, 201),
        ],
        ..TestCase::new("order")
    };
    let first = harness
        .run("webhook-notify", &component, &case)
        .await
        .unwrap();
    assert_eq!(first.summary.outcome, "retryable");
    assert_eq!(first.summary.http.len(), 1);
    assert_eq!(first.summary.http[0].idempotency_key, "order-1:http:1");
    assert_eq!(first.summary.http[0].status, Some(503));
    assert_eq!(
        first.summary.http[0].request_body.as_ref().unwrap().lossy(),
        r#"{"n":1}"#
    );
}

/// Polls `jobbox jobs show` until the job is in `state`.
fn wait_state(env: &Env, id: i64, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = env.show(id);
        if job["state"] == state {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never {state}: {job:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_replays_exactly_and_becomes_a_passing_test_case() {
    let server = TestServer::start(|_, _| Reply::Status(503)).await;
    let env = Env::new(
        &["entropy", "echo", "webhook-notify"],
        &format!(
            r#"
[plugins.entropy]
kv = true
[plugins.echo]
record = true
[plugins.webhook-notify]
max_attempts = 1
http_allow = [{{ url = "http://127.0.0.1:{}" }}]
"#,
            server.addr.port()
        ),
    );
    let host = env.spawn_host();
    let failed = env.enqueue("entropy", r#"{"fail":true}"#);
    let hook = env.enqueue(
        "webhook-notify",
        &format!(r#"{{"url":"{}","event":{{"n":1}}}}"#, server.url("/hook")),
    );
    let echoed = env.enqueue("echo", r#"{"a":1}"#);
    let job = wait_state(&env, failed, "discarded");
    wait_state(&env, hook, "discarded");
    let done = wait_state(&env, echoed, "completed");
    drop(host);
    // The receiver is gone: a replay needs no network.
    drop(server);

    let attempt = &job["attempts"][0];
    assert!(attempt["recording_bytes"].as_u64().unwrap() > 0, "{job:#}");
    // Successes are recorded only where the plugin asks for it.
    assert!(done["attempts"][0]["recording_bytes"].as_u64().unwrap() > 0);
    let text = env.ok(&["jobs", "show", &failed.to_string()]);
    assert!(
        text.contains(&format!(
            "recorded (jobbox jobs replay {failed} --attempt 1)"
        )),
        "{text}"
    );
    // A replay runs with the grants the attempt had, whatever the config
    // says now (here: entropy's kv grant is gone).
    let config = std::fs::read_to_string(env.config()).unwrap();
    std::fs::write(
        env.config(),
        config.replace("[plugins.entropy]\nkv = true\n", ""),
    )
    .unwrap();
    assert!(
        !std::fs::read_to_string(env.config())
            .unwrap()
            .contains("[plugins.entropy]")
    );

    // The error text holds every value the attempt read (clock, random,
    // fencing token): the replay reproduces it exactly, fuel included.
    let replay: Value =
        serde_json::from_str(&env.ok(&["jobs", "replay", &failed.to_string(), "--json"])).unwrap();
    assert_eq!(replay["same"], true, "{replay:#}");
    assert_eq!(replay["replayed"]["error"], job["error"]);
    assert_eq!(replay["replayed"]["fuel_used"], attempt["fuel_used"]);
    assert_eq!(replay["component_hash"], attempt["component_hash"]);

    // The HTTP answer comes from the recording.
    let replay: Value =
        serde_json::from_str(&env.ok(&["jobs", "replay", &hook.to_string(), "--json"])).unwrap();
    assert_eq!(replay["same"], true, "{replay:#}");
    assert_eq!(replay["replayed"]["http"][0]["status"], 503);
    assert_eq!(
        replay["replayed"]["error"],
        "receiver unavailable: HTTP 503"
    );

    // On another build the replay shows the difference.
    let other = jobbox_tests::plugin_artifacts().join("echo.wasm");
    let out = env.ok(&[
        "jobs",
        "replay",
        &failed.to_string(),
        "--file",
        other.to_str().unwrap(),
    ]);
    assert!(out.contains("a new build; the attempt ran on"), "{out}");
    assert!(out.contains("outcome: expected permanent, got ok"), "{out}");

    // Exported, it is a regression test that passes as recorded.
    let dir = tempfile::tempdir().unwrap();
    for id in [failed, hook] {
        let file = dir.path().join(format!("job-{id}.tests.toml"));
        let out = env.ok(&[
            "jobs",
            "replay",
            &id.to_string(),
            "--export",
            file.to_str().unwrap(),
        ]);
        assert!(out.contains("as a test case"), "{out}");
        let report: Value =
            serde_json::from_str(&env.ok(&["plugins", "test", "--json", file.to_str().unwrap()]))
                .unwrap();
        assert_eq!(report["passed"], 1, "{report:#}");
    }

    // No recording: a clear one-line error.
    let err = env.fails(&["jobs", "replay", &failed.to_string(), "--attempt", "7"]);
    assert!(err.contains("has no recording of attempt 7"), "{err}");
    let err = env.fails(&["jobs", "replay", "999"]);
    assert!(err.contains("999"), "{err}");
}

/// The Python plugin's component: built by scripts/test (which says why if
/// it cannot be), or here if componentize-py is on PATH. `None`: skipped.
fn python_plugin(dir: &Path) -> Option<PathBuf> {
    if let Ok(reason) = std::env::var("JOBBOX_SKIP_PYTHON") {
        eprintln!("skipped: {reason}");
        return None;
    }
    if let Ok(path) = std::env::var("JOBBOX_PYTHON_PLUGIN") {
        return Some(PathBuf::from(path));
    }
    let out = std::process::Command::new(repo().join("scripts/build-python-plugin"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Python plugin did not build ({}); run scripts/test, which installs \
         componentize-py, or set JOBBOX_SKIP_PYTHON to the reason to skip it",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Some(dir.join("py-stats.wasm"))
}

#[test]
fn the_python_plugin_passes_its_tests_and_runs_jobs() {
    let built = tempfile::tempdir().unwrap();
    let Some(wasm) = python_plugin(built.path()) else {
        return;
    };
    let env = Env::new(&[], "[plugins.py-stats]\nkv = true\n");
    std::fs::copy(&wasm, env.plugins_dir().join("py-stats.wasm")).unwrap();
    let file = repo().join("plugins/py-stats/py-stats.tests.toml");
    let report: Value =
        serde_json::from_str(&env.ok(&["plugins", "test", "--json", file.to_str().unwrap()]))
            .unwrap();
    assert_eq!(report["failed"], 0, "{report:#}");
    assert_eq!(report["passed"], 5, "{report:#}");

    // And through the host: the running count commits with the job.
    let host = env.spawn_host();
    let id = env.enqueue("py-stats", r#"{"series":"s","values":[2,4]}"#);
    let job = wait_state(&env, id, "completed");
    drop(host);
    let output = match &job["output"] {
        Value::String(text) => serde_json::from_str(text).unwrap(),
        other => other.clone(),
    };
    assert_eq!(output["mean"], 3.0);
    assert_eq!(output["seen"], 2);
}

#[test]
fn a_new_plugin_project_builds_and_passes_its_tests() {
    let env = Env::new(&[], "");
    let dir = tempfile::tempdir().unwrap();
    let out = env.ok(&[
        "plugins",
        "new",
        "greeter",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.contains("build: cd "), "{out}");
    let project = dir.path().join("greeter");
    for f in [
        "Cargo.toml",
        "src/lib.rs",
        "greeter.tests.toml",
        "README.md",
    ] {
        assert!(project.join(f).exists(), "{f} missing");
    }
    // Built as the plugins are (the shared guest target directory keeps it
    // quick), then tested as its README says.
    let target = jobbox_tests::guest_target_dir();
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(project.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target)
        .status()
        .unwrap();
    assert!(status.success());
    let wasm = target.join("wasm32-wasip2/release/greeter.wasm");
    let tests = project.join("greeter.tests.toml");
    let report: Value = serde_json::from_str(&env.ok(&[
        "plugins",
        "test",
        "--json",
        tests.to_str().unwrap(),
        "--component",
        wasm.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(report["passed"], 2, "{report:#}");

    // Never over an existing directory; a bad name is refused.
    let err = env.fails(&[
        "plugins",
        "new",
        "greeter",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(err.contains("already exists"), "{err}");
    let err = env.fails(&[
        "plugins",
        "new",
        "no/slash",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(err.contains("invalid kind"), "{err}");

    // Python: built with its own script, if componentize-py is here.
    if python_plugin(dir.path()).is_none() {
        return;
    }
    env.ok(&[
        "plugins",
        "new",
        "py-greeter",
        "--lang",
        "python",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    let project = dir.path().join("py-greeter");
    let status = std::process::Command::new(project.join("build.sh"))
        .status()
        .unwrap();
    assert!(status.success());
    let report: Value = serde_json::from_str(&env.ok(&[
        "plugins",
        "test",
        "--json",
        project.join("py-greeter.tests.toml").to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(report["passed"], 2, "{report:#}");
}
