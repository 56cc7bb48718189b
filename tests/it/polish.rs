//! The command line's polish: a closed pipe ends a command quietly;
//! `enqueue --batch`, `--payload -` and `--payload-file`; the commands that
//! look at running hosts (`hosts list`, `stats`, `jobs watch`); and the
//! host's log format (JSON lines with the attempt's span fields, no colour
//! codes in a redirected log).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::binary::{Env, error_line, signal, stderr_of, wait};

const PATIENCE: Duration = Duration::from_secs(30);

/// Writes `text` to `name` in the env's directory; returns its path.
fn write(env: &Env, name: &str, text: &str) -> PathBuf {
    let path = env.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Every job, newest first.
fn jobs(env: &Env) -> Vec<Value> {
    let out = env.ok(&["jobs", "list", "--limit", "100000", "--json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Runs `jobbox <args>` with `input` on its stdin.
fn run_with_stdin(env: &Env, args: &[&str], input: &str) -> Output {
    let mut child = env
        .cmd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The ids of `jobbox enqueue --batch <file> --json`, and whether each was
/// created.
fn enqueue_batch(env: &Env, file: &std::path::Path) -> Vec<(i64, bool)> {
    let out = env.ok(&["enqueue", "--batch", file.to_str().unwrap(), "--json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_i64().unwrap(), e["created"].as_bool().unwrap()))
        .collect()
}

/// Waits until the host's API accepts connections at `addr`.
fn wait_for_api(host: &mut crate::binary::Process, addr: SocketAddr) {
    wait(PATIENCE, "the host's API", || {
        host.assert_alive();
        TcpStream::connect(addr).is_ok()
    });
}

/// `POST /api/jobs` with `body` on the host's API (no token: loopback);
/// returns the answer's body.
fn post_job(addr: SocketAddr, body: &Value) -> Value {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "POST /api/jobs HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 201") || head.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    serde_json::from_str(body).unwrap()
}

// ---------------------------------------------------------------------------
// A closed pipe

/// `jobbox <args> | head -1`: reads the first line of the output, closes
/// the pipe, and returns the command's status, stderr and that line.
fn head_one(env: &Env, args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = env
        .cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    drop(stdout);
    // Waits on a thread of its own, so that a command that hangs fails
    // the test instead of stalling it.
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    let out = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("jobbox {args:?} did not exit once its reader was gone")
    });
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        first,
    )
}

/// `jobbox jobs list | head -1` used to panic with a broken-pipe
/// backtrace and exit 101; a reader that goes away now ends the command
/// quietly, with success (`main.rs` treats a broken pipe as the end).
#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let env = Env::new(&["echo"], "");
    let n = 5000;
    let lines: String = (0..n)
        .map(|i| format!("{{\"kind\": \"echo\", \"payload\": {{\"i\": {i}}}}}\n"))
        .collect();
    let batch = write(&env, "many.jsonl", &lines);
    assert_eq!(enqueue_batch(&env, &batch).len(), n);

    let limit = n.to_string();
    for (args, first_line) in [
        (vec!["jobs", "list", "--limit", &limit], "id"),
        (vec!["jobs", "list", "--limit", &limit, "--json"], "["),
    ] {
        // Far more output than a pipe holds (64 KiB by default): the
        // command is still writing when its reader goes away.
        let whole = env.ok(&args);
        assert!(whole.len() > 256 << 10, "{} bytes", whole.len());

        let (status, stderr, first) = head_one(&env, &args);
        assert!(first.trim_start().starts_with(first_line), "{first:?}");
        assert_ne!(status.code(), Some(101), "a panic: {stderr}");
        assert_eq!(status.code(), Some(0), "{args:?}: {status}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
        assert_eq!(stderr.trim(), "", "{args:?} ends without a word");
    }
}

// ---------------------------------------------------------------------------
// enqueue --batch

#[test]
fn enqueue_batch_enqueues_every_line_and_dedupes_by_key() {
    let env = Env::new(&["echo"], "");
    let file = write(
        &env,
        "jobs.jsonl",
        r#"{"kind": "echo", "payload": {"n": 1}, "idempotency_key": "batch-1"}
{"kind": "echo", "payload": {"n": 2}, "queue": "bulk", "priority": 5}

{"kind": "echo", "idempotency_key": "batch-3", "max_attempts": 7}
"#,
    );
    let first = enqueue_batch(&env, &file);
    assert_eq!(first.len(), 3, "a blank line is no job: {first:?}");
    assert!(first.iter().all(|(_, created)| *created), "{first:?}");
    let ids: Vec<i64> = first.iter().map(|(id, _)| *id).collect();
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "in line order: {ids:?}");

    let (one, two, three) = (env.show(ids[0]), env.show(ids[1]), env.show(ids[2]));
    assert_eq!(one["payload"], json!({"n": 1}));
    assert_eq!(one["idempotency_key"], "batch-1");
    assert_eq!(one["state"], "available");
    assert_eq!(two["payload"], json!({"n": 2}));
    assert_eq!(two["queue"], "bulk");
    assert_eq!(two["priority"], 5);
    assert_eq!(three["payload"], json!({}), "no payload is {{}}");
    assert_eq!(three["max_attempts"], 7);
    assert_eq!(jobs(&env).len(), 3);

    // Again: the keyed lines find their jobs; the unkeyed one is new.
    let text = env.ok(&["enqueue", "--batch", file.to_str().unwrap()]);
    assert!(
        text.contains("enqueued 3 jobs (1 new, 2 already there by idempotency key)"),
        "{text}"
    );
    let third = enqueue_batch(&env, &file);
    assert_eq!(third[0], (ids[0], false));
    assert!(third[1].1 && third[1].0 > ids[2], "{third:?}");
    assert_eq!(third[2], (ids[2], false));
    assert_eq!(jobs(&env).len(), 5);

    // The same job twice under one key in a batch: one job, one id.
    let twice = write(
        &env,
        "twice.jsonl",
        "{\"kind\": \"echo\", \"payload\": {\"t\": 1}, \"idempotency_key\": \"twice\"}\n\
         {\"kind\": \"echo\", \"payload\": {\"t\": 1}, \"idempotency_key\": \"twice\"}\n",
    );
    let out = enqueue_batch(&env, &twice);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].0, out[1].0, "{out:?}");
    assert_eq!(jobs(&env).len(), 6);

    // `--batch -` reads stdin.
    let out = run_with_stdin(
        &env,
        &["enqueue", "--batch", "-", "--json"],
        "{\"kind\": \"echo\", \"payload\": {\"from\": \"stdin\"}}\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = out[0]["id"].as_i64().unwrap();
    assert_eq!(env.show(id)["payload"], json!({"from": "stdin"}));
}

#[test]
fn enqueue_batch_refuses_a_bad_line_and_writes_nothing() {
    let env = Env::new(&["echo"], "");
    let good = "{\"kind\": \"echo\", \"payload\": {}}\n";
    let batch = |name: &str, lines: &[&str]| -> String {
        let file = write(&env, name, &lines.concat());
        env.fails(&["enqueue", "--batch", file.to_str().unwrap()])
    };

    let e = batch(
        "type.jsonl",
        &[
            good,
            good,
            "{\"kind\": \"echo\", \"priority\": \"high\"}\n",
            good,
        ],
    );
    assert!(
        e.contains("line 3") && e.contains("priority") && e.contains("invalid type"),
        "{e}"
    );
    // Per-job flags belong in the lines: with --batch they are refused,
    // not silently ignored.
    let file = write(&env, "flags.jsonl", good);
    for flag in [["--queue", "bulk"], ["--priority", "9"]] {
        let e = env.fails(&[
            "enqueue",
            "--batch",
            file.to_str().unwrap(),
            flag[0],
            flag[1],
        ]);
        assert!(e.contains("cannot be used with"), "{e}");
    }
    let e = batch("syntax.jsonl", &[good, good, "{not json\n"]);
    assert!(e.contains("line 3"), "{e}");
    let e = batch("kind.jsonl", &[good, "{\"kind\": \"bad kind!\"}\n"]);
    assert!(e.contains("line 2") && e.contains("invalid kind"), "{e}");
    let e = batch(
        "unknown.jsonl",
        &[good, "{\"kind\": \"echo\", \"payloda\": {\"a\": 1}}\n"],
    );
    assert!(
        e.contains("line 2") && e.contains("unknown field") && e.contains("payloda"),
        "{e}"
    );
    let e = batch("empty.jsonl", &[]);
    assert!(e.contains("has no jobs"), "{e}");
    let e = batch("blank.jsonl", &["\n", "  \n", "\n"]);
    assert!(e.contains("has no jobs"), "{e}");
    let e = batch(
        "clash.jsonl",
        &[
            good,
            "{\"kind\": \"echo\", \"payload\": {\"a\": 1}, \"idempotency_key\": \"same\"}\n",
            good,
            "{\"kind\": \"echo\", \"payload\": {\"a\": 2}, \"idempotency_key\": \"same\"}\n",
        ],
    );
    assert!(
        e.contains("line 4") && e.contains("line 2") && e.contains("idempotency_key"),
        "{e}"
    );
    let e = env.fails(&["enqueue", "--batch", "no-such-file.jsonl"]);
    assert!(e.contains("--batch") && e.contains("no-such-file"), "{e}");

    assert_eq!(
        jobs(&env),
        Vec::<Value>::new(),
        "no line of any was written"
    );
}

// ---------------------------------------------------------------------------
// --payload - and --payload-file

#[test]
fn payload_from_stdin_or_a_file() {
    let env = Env::new(&["echo"], "");
    let out = run_with_stdin(
        &env,
        &["enqueue", "echo", "--payload", "-", "--json"],
        "{\"from\": \"stdin\",\n \"n\": [1, 2]}\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        env.show(id)["payload"],
        json!({"from": "stdin", "n": [1, 2]})
    );

    let file = write(&env, "payload.json", "{\n  \"from\": \"a file\"\n}\n");
    let out = env.ok(&[
        "enqueue",
        "echo",
        "--payload-file",
        file.to_str().unwrap(),
        "--json",
    ]);
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(env.show(id)["payload"], json!({"from": "a file"}));
    assert_eq!(jobs(&env).len(), 2);

    // Invalid JSON, from either: one line, nothing written.
    let e = error_line(
        "enqueue --payload - with invalid JSON",
        run_with_stdin(&env, &["enqueue", "echo", "--payload", "-"], "{oops\n"),
    );
    assert!(
        e.contains("--payload") && e.contains("not valid JSON"),
        "{e}"
    );
    let e = error_line(
        "enqueue --payload - with nothing",
        run_with_stdin(&env, &["enqueue", "echo", "--payload", "-"], ""),
    );
    assert!(e.contains("not valid JSON"), "{e}");
    let bad = write(&env, "bad.json", "{\"unterminated\": \n");
    let e = env.fails(&["enqueue", "echo", "--payload-file", bad.to_str().unwrap()]);
    assert!(
        e.contains("--payload") && e.contains("not valid JSON"),
        "{e}"
    );
    let e = env.fails(&["enqueue", "echo", "--payload-file", "no-such.json"]);
    assert!(
        e.contains("--payload-file") && e.contains("no-such.json"),
        "{e}"
    );

    // Both, or neither.
    let e = env.fails(&[
        "enqueue",
        "echo",
        "--payload",
        "{}",
        "--payload-file",
        file.to_str().unwrap(),
    ]);
    assert!(
        e.contains("--payload") && e.contains("--payload-file") && e.contains("cannot be used"),
        "{e}"
    );
    let e = env.fails(&["enqueue", "echo"]);
    assert!(e.contains("--payload"), "{e}");

    assert_eq!(jobs(&env).len(), 2, "no refused command wrote a job");
}

// ---------------------------------------------------------------------------
// Looking at running hosts

/// `jobbox hosts list` shows each host by its heartbeat: version,
/// readiness, attempts in flight; and one that stopped as not ready.
#[test]
fn hosts_list_shows_a_running_host() {
    let env = Env::new(&["sleepy"], "worker_id = \"polish-host\"\n");
    let text = env.ok(&["hosts", "list"]);
    assert!(text.contains("no host has run on this database"), "{text}");
    assert_eq!(env.ok(&["hosts", "list", "--json"]).trim(), "[]");

    let hosts = || -> Vec<Value> {
        serde_json::from_str::<Value>(&env.ok(&["hosts", "list", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let job = env.enqueue("sleepy", r#"{"ms": 3000}"#);
    let mut host = env.spawn_host();
    wait(PATIENCE, "a heartbeat with the attempt in flight", || {
        host.assert_alive();
        hosts().first().is_some_and(|h| h["in_flight"] == 1)
    });
    let h = hosts();
    assert_eq!(h.len(), 1, "{h:?}");
    let h = &h[0];
    assert_eq!(h["id"], "polish-host");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["ready"], true);
    assert!(
        h["started_at"].is_string() && h["last_seen"].is_string(),
        "{h}"
    );
    assert!(
        h["started_at"].as_str().unwrap() <= h["last_seen"].as_str().unwrap(),
        "{h}"
    );

    let text = env.ok(&["hosts", "list"]);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    for column in [
        "host",
        "version",
        "started",
        "last seen",
        "ready",
        "in flight",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("polish-host")
            && row.contains(env!("CARGO_PKG_VERSION"))
            && row.contains("ago")
            && row.contains(" yes "),
        "{row}"
    );

    wait(PATIENCE, "the job to complete", || {
        env.show(job)["state"] == "completed"
    });
    signal(&host, "-TERM");
    let (status, log) = stderr_of(host);
    assert!(status.success(), "{log}");
    let h = &hosts()[0];
    assert_eq!(h["ready"], false, "a stopped host says it is gone: {h}");
    assert_eq!(h["in_flight"], 0, "{h}");
    let text = env.ok(&["hosts", "list"]);
    assert!(text.lines().nth(1).unwrap().contains(" no "), "{text}");
}

/// `jobbox stats` asks the running host's API; its figures follow the
/// jobs run. Without a host, one line says the API cannot be reached.
#[test]
fn stats_asks_the_running_host() {
    let (env, addr) = Env::with_api(&["echo"], "worker_id = \"stats-host\"\n");
    for args in [&["stats"][..], &["stats", "--json"]] {
        let e = env.fails(args);
        assert!(
            e.contains("cannot reach the host's API") && e.contains(&addr.to_string()),
            "{e}"
        );
    }

    let n = 7;
    let lines: String = (0..n)
        .map(|i| format!("{{\"kind\": \"echo\", \"payload\": {{\"i\": {i}}}}}\n"))
        .collect();
    let ids = enqueue_batch(&env, &write(&env, "echo.jsonl", &lines));
    let mut host = env.spawn_host();
    wait_for_api(&mut host, addr);
    wait(PATIENCE, "the jobs to complete", || {
        host.assert_alive();
        ids.iter()
            .all(|(id, _)| env.show(*id)["state"] == "completed")
    });

    let stats = || -> Value { serde_json::from_str(&env.ok(&["stats", "--json"])).unwrap() };
    // Queue counts are cached for about a second.
    wait(PATIENCE, "the stats to count the completed jobs", || {
        stats()["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["queue"] == "default" && q["counts"]["completed"] == n)
    });
    let s = stats();
    assert_eq!(s["host"], "stats-host");
    assert_eq!(s["ready"], true, "{s:#}");
    assert_eq!(s["in_flight"], 0);
    assert!(s["at"].is_string(), "{s:#}");

    let loops = s["loops"].as_array().unwrap();
    let names: Vec<&str> = loops.iter().map(|l| l["name"].as_str().unwrap()).collect();
    for name in ["producer", "lease_keeper", "rescuer", "cleaner"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let producer = loops.iter().find(|l| l["name"] == "producer").unwrap();
    assert_eq!(producer["fresh"], true);
    let its = producer["iterations"].as_array().unwrap();
    assert!(!its.is_empty(), "{producer}");
    assert!(
        its.iter()
            .all(|i| i["at"].is_string() && i["handled"].is_u64())
    );

    let plugins = s["plugins"].as_array().unwrap();
    let echo = plugins.iter().find(|p| p["plugin"] == "echo").unwrap();
    assert_eq!(echo["outcomes"], json!({"completed": n}), "{echo}");
    assert_eq!(echo["run_ms"]["count"], n);
    let run = &echo["run_ms"];
    assert!(
        run["p50"].as_f64().unwrap() <= run["p90"].as_f64().unwrap()
            && run["p90"].as_f64().unwrap() <= run["p99"].as_f64().unwrap(),
        "{run}"
    );
    assert_eq!(echo["queue_wait_ms"]["count"], n);

    for phase in ["claim", "run", "write_back", "delivery"] {
        assert!(s["phases"][phase]["count"].is_u64(), "{phase} in {s:#}");
    }
    assert_eq!(s["phases"]["run"]["count"], n);
    assert_eq!(
        s["schedules"],
        json!({"fired": 0, "missed": 0, "skipped": 0})
    );
    assert_eq!(s["outbox"]["pending"], 0);
    assert_eq!(s["oldest_due_ms"], Value::Null, "nothing waits");

    let text = env.ok(&["stats"]);
    for part in [
        "host stats-host",
        "ready",
        "loops:",
        "producer",
        "echo",
        "queues:",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }

    signal(&host, "-TERM");
    let (status, log) = stderr_of(host);
    assert!(status.success(), "{log}");
    let e = env.fails(&["stats"]);
    assert!(e.contains("cannot reach the host's API"), "{e}");
}

/// `jobbox jobs watch --json` follows the host's event stream: a job
/// enqueued through the API is seen available, running, then completed,
/// with no event missed; the watch ends when the host stops.
#[test]
fn jobs_watch_follows_a_job_to_completion() {
    let (env, addr) = Env::with_api(&["echo"], "");
    let e = env.fails(&["jobs", "watch"]);
    assert!(e.contains("cannot reach the host's API"), "{e}");

    let mut host = env.spawn_host();
    wait_for_api(&mut host, addr);
    let watch_log = env.dir.path().join("watch.log");
    let mut watcher = env
        .cmd()
        .args(["jobs", "watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&watch_log).unwrap())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    let stdout = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let event = |line: String| -> Value {
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };

    // The watcher prints nothing until an event comes: run jobs until it
    // does, and it is surely subscribed.
    let mut seen = Vec::new();
    let started = Instant::now();
    while seen.is_empty() {
        assert!(
            started.elapsed() < PATIENCE,
            "the watcher saw nothing: {}",
            std::fs::read_to_string(&watch_log).unwrap()
        );
        env.enqueue("echo", r#"{"warm": "up"}"#);
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            seen.push(event(line));
        }
    }

    let answer = post_job(addr, &json!({"kind": "echo", "payload": {"watched": true}}));
    let id = answer["id"].as_i64().unwrap_or_else(|| panic!("{answer}"));
    let deadline = Instant::now() + PATIENCE;
    while !seen
        .iter()
        .any(|e| e["id"] == id && e["state"] == "completed")
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("job {id} never completed in the watch: {seen:?}"));
        seen.push(event(line));
    }

    let ours: Vec<&Value> = seen.iter().filter(|e| e["id"] == id).collect();
    let states: Vec<&str> = ours.iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["available", "running", "completed"], "{ours:?}");
    for e in &ours {
        assert_eq!(e["kind"], "echo");
        assert!(e["at"].is_string(), "{e}");
    }
    assert_eq!(
        (&ours[0]["attempt"], &ours[0]["outcome"]),
        (&json!(0), &Value::Null)
    );
    assert_eq!(
        (&ours[1]["attempt"], &ours[1]["epoch"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(ours[1]["outcome"], Value::Null);
    assert_eq!(
        (&ours[2]["attempt"], &ours[2]["epoch"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(ours[2]["outcome"], "completed");
    // One subscriber saw every event of the host since it came: the
    // sequence numbers rise by one, without a gap.
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // The stream ends with the host; so does the watch.
    signal(&host, "-TERM");
    let (status, log) = stderr_of(host);
    assert!(status.success(), "{log}");
    let ended = Instant::now();
    let status = loop {
        if let Some(status) = watcher.try_wait().unwrap() {
            break Some(status);
        }
        if ended.elapsed() > PATIENCE {
            watcher.kill().unwrap();
            watcher.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let watch_err = std::fs::read_to_string(&watch_log).unwrap();
    let status = status.unwrap_or_else(|| panic!("the watch outlived the host: {watch_err}"));
    assert!(status.success(), "{status}: {watch_err}");
}

// ---------------------------------------------------------------------------
// Logs

/// Runs a host with `configure` applied until an echo job and a failing
/// job are final, then stops it; returns its log and the two jobs' ids.
fn log_of_two_jobs(env: &Env, configure: impl FnOnce(&mut Command)) -> (String, i64, i64) {
    let echo = env.enqueue("echo", r#"{"log": "me"}"#);
    let fail = env.enqueue("fail", r#"{"mode": "permanent", "message": "nope"}"#);
    let mut host = env.spawn_host_with(|cmd| {
        // The defaults, whatever the environment of the tests says.
        cmd.env_remove("JOBBOX_LOG").env_remove("JOBBOX_LOG_FORMAT");
        configure(cmd);
    });
    wait(PATIENCE, "both jobs to be final", || {
        host.assert_alive();
        env.show(echo)["state"] == "completed" && env.show(fail)["state"] == "discarded"
    });
    signal(&host, "-TERM");
    let (status, log) = stderr_of(host);
    assert!(status.success(), "{log}");
    (log, echo, fail)
}

/// Every line of `log` is a JSON object; the attempts of both jobs are
/// logged with the attempt's span fields.
fn assert_json_log(log: &str, echo: i64, fail: i64) {
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l:?}")))
        .collect();
    assert!(lines.iter().all(Value::is_object), "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string()),
        "{log}"
    );
    let finished = |id: i64| -> &Value {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == "attempt finished" && l["span"]["job_id"] == id)
            .unwrap_or_else(|| panic!("no line about job {id}'s attempt in its span: {log}"))
    };
    let line = finished(echo);
    assert_eq!(
        line["span"],
        json!({"name": "attempt", "job_id": echo, "kind": "echo", "attempt": 1, "epoch": 1}),
        "{line}"
    );
    assert_eq!(line["fields"]["outcome"], "completed", "{line}");
    let line = finished(fail);
    assert_eq!(
        line["span"],
        json!({"name": "attempt", "job_id": fail, "kind": "fail", "attempt": 1, "epoch": 1}),
        "{line}"
    );
    assert_eq!(line["fields"]["outcome"], "permanent_error", "{line}");
    assert!(
        line["fields"]["error"].as_str().unwrap().contains("nope"),
        "{line}"
    );
}

#[test]
fn log_format_json_writes_json_lines_with_the_attempt_span() {
    let env = Env::new(&["echo", "fail"], "");
    let (log, echo, fail) = log_of_two_jobs(&env, |cmd| {
        cmd.args(["--log-format", "json"]);
    });
    assert_json_log(&log, echo, fail);

    // The same, from the environment.
    let (log, echo, fail) = log_of_two_jobs(&env, |cmd| {
        cmd.env("JOBBOX_LOG_FORMAT", "json");
    });
    assert_json_log(&log, echo, fail);

    let e = env.fails(&["--log-format", "xml", "jobs", "list"]);
    assert!(e.contains("xml"), "{e}");
}

#[test]
fn a_redirected_text_log_has_no_colour_codes() {
    let env = Env::new(&["echo", "fail"], "");
    let (log, echo, fail) = log_of_two_jobs(&env, |_| {});
    assert!(!log.contains('\x1b'), "an escape code in: {log:?}");
    for id in [echo, fail] {
        assert!(
            log.lines()
                .any(|l| l.contains("attempt finished") && l.contains(&format!("job_id={id}"))),
            "{log}"
        );
    }
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "text, not JSON: {log}"
    );
}

/// An idle host skips most of its timed looks at the database, but still
/// picks up what another process writes: a job enqueued now (seen through
/// the database's change counter), and one enqueued with a delay (found by
/// the once-a-second recheck, since no notification says when it is due).
#[test]
fn an_idle_host_still_sees_what_other_processes_enqueue() {
    let env = Env::new(&["echo"], "");
    let mut host = env.spawn_host();
    // Long enough for both loops to back off fully.
    std::thread::sleep(Duration::from_secs(2));
    host.assert_alive();
    let now = env.enqueue("echo", "{\"n\": 1}");
    let delayed: Value = serde_json::from_str(&env.ok(&[
        "enqueue",
        "echo",
        "--payload",
        "{\"n\": 2}",
        "--delay",
        "1500ms",
        "--json",
    ]))
    .unwrap();
    let delayed = delayed["id"].as_i64().unwrap();
    let started = Instant::now();
    wait(PATIENCE, "the jobs to complete", || {
        [now, delayed]
            .iter()
            .all(|id| env.show(*id)["state"] == "completed")
    });
    // Both were picked up within the idle poll and the recheck (0.5 s and
    // 1 s), not after some long back-off; generous for a busy machine.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let shown = env.show(delayed);
    let attempts = shown["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{shown}");
    signal(&host, "-TERM");
    let (status, _) = stderr_of(host);
    assert!(status.success());
}
