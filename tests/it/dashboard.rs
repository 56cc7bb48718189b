//! The web dashboard in a real browser: each test starts `jobbox run` (its
//! API and the dashboard, behind a token, on a fresh database) and runs a
//! scenario of `tests/browser/dashboard.mjs` against it: Node with
//! playwright-core, driving the system's Chromium.
//!
//! `scripts/test` installs them (playwright-core from
//! `tests/browser/package-lock.json` into `<target>/browser`, Chromium with
//! apt-get if it is missing) and exports where they are; if it cannot, it
//! sets `JOBBOX_SKIP_BROWSER` to why, and these tests say they are skipped.
//! Run on their own with `cargo test --release -p jobbox --test it --
//! dashboard::` (they find `node` and `chromium` on the PATH and
//! playwright-core in `<target>/browser` or `tests/browser`).
//!
//! Screenshots of every page go to `<target>/browser-artifacts/
//! <scenario>-<page>.png` (and `<scenario>-failure.png` when one fails);
//! with `JOBBOX_UPDATE_SCREENSHOT=1`, the `pages` scenario also writes the
//! README's `docs/dashboard.png`.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::binary::{Env, Process, wait};
use crate::support::say_skipped;

/// The API's token (the dashboard's login).
const TOKEN: &str = "dashboard-e2e-token-0123456789";

/// The plugins every dashboard host runs.
const KINDS: &[&str] = &["echo", "invoice", "ledger-credit", "fail"];

/// How long one scenario may take (the script gives up after 150 s).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(200);

/// The schedules every host starts with (the scenarios pause
/// `nightly-report`).
const SCHEDULES: &str = r#"
[[schedules]]
id = "nightly-report"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
kind = "invoice"
payload = { currency = "EUR", lines = [{ sku = "REPORT", qty = 1, unit_price_cents = 100, tax_rate_bps = 0 }] }

[[schedules]]
id = "hourly-sync"
every = "1h"
kind = "echo"
payload = { sync = "crm" }
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host package is in the repository")
        .to_owned()
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `target/`).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is <target>/tmp")
        .to_owned()
}

/// What runs the scenarios.
struct Browser {
    node: PathBuf,
    chromium: PathBuf,
    /// The `node_modules` that holds playwright-core.
    node_modules: PathBuf,
}

/// The program `var` names, else the first of `names` on the PATH; or why
/// there is none (`missing` says what to do).
fn program(var: &str, names: &[&str], missing: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{var}={} does not exist", p.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{} is not on the PATH: {missing}", names[0]))
}

impl Browser {
    /// Node, Chromium and playwright-core, or why the tests cannot run.
    fn find() -> Result<Browser, String> {
        if let Some(why) = std::env::var_os("JOBBOX_SKIP_BROWSER").filter(|w| !w.is_empty()) {
            return Err(why.to_string_lossy().into_owned());
        }
        let node = program(
            "JOBBOX_NODE",
            &["node", "nodejs"],
            "install Node.js 20 or later",
        )?;
        let chromium = program(
            "JOBBOX_CHROMIUM",
            &["chromium", "chromium-browser"],
            "`apt-get install chromium` (scripts/test tries)",
        )?;
        let candidates = [
            std::env::var_os("JOBBOX_BROWSER_NODE_MODULES")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            Some(target_dir().join("browser").join("node_modules")),
            Some(repo().join("tests").join("browser").join("node_modules")),
        ];
        let node_modules = candidates
            .into_iter()
            .flatten()
            .find(|d| d.join("playwright-core").join("package.json").is_file())
            .ok_or(
                "playwright-core is not installed: scripts/test installs it into \
                 <target>/browser (or run `npm ci --prefix tests/browser`)",
            )?;
        Ok(Browser {
            node,
            chromium,
            node_modules,
        })
    }
}

/// A running `jobbox run` with the dashboard, behind [`TOKEN`].
struct Dashboard {
    env: Env,
    host: Process,
    addr: SocketAddr,
}

impl Dashboard {
    /// Starts a host (read-only or not) after `seed` has run against its
    /// database (through the CLI: a read-only API takes no writes).
    fn start(read_only: bool, seed: impl FnOnce(&Env)) -> Dashboard {
        let (env, addr) = Env::with_api(KINDS, "");
        let config = format!(
            r#"[store]
{store}
[api]
listen = "{addr}"
token = "{TOKEN}"
read_only = {read_only}

[host]
plugins_dir = {plugins:?}
poll_interval = "20ms"
worker_id = "jobbox-1"

[outbox]
backoff_base = "100ms"
max_attempts = 2

# Nothing listens there: the events fail, as a dead webhook's would.
[outbox.sinks.credited]
url = "http://127.0.0.1:9/"

[plugins.fail]
backoff_base = "200ms"
backoff_max = "1s"

[plugins.ledger-credit]
kv = true
outbox_topics = ["credited"]
"#,
            store = env.db.toml(),
            plugins = env.plugins_dir(),
        );
        std::fs::write(env.config(), config).unwrap();
        let file = env.dir.path().join("schedules.toml");
        std::fs::write(&file, SCHEDULES).unwrap();
        env.ok(&["schedules", "apply", "--file", file.to_str().unwrap()]);
        seed(&env);
        let mut host = env.spawn_host();
        wait(Duration::from_secs(60), "the host's API", || {
            host.assert_alive();
            TcpStream::connect(addr).is_ok()
        });
        Dashboard { env, host, addr }
    }

    /// Runs `scenario`; panics with its output (and the host's log) if it
    /// fails.
    fn run(&mut self, browser: &Browser, scenario: &str) {
        let artifacts = target_dir().join("browser-artifacts");
        let log = self.env.dir.path().join(format!("browser-{scenario}.log"));
        let out = File::create(&log).unwrap();
        let mut child = Command::new(&browser.node)
            .arg(repo().join("tests").join("browser").join("dashboard.mjs"))
            .arg(scenario)
            .arg(format!("http://{}", self.addr))
            .arg(TOKEN)
            .arg(&artifacts)
            .env("JOBBOX_CHROMIUM", &browser.chromium)
            .env("JOBBOX_BROWSER_NODE_MODULES", &browser.node_modules)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", browser.node.display()));
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > SCENARIO_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut output = String::new();
        File::open(&log)
            .unwrap()
            .read_to_string(&mut output)
            .unwrap();
        println!("{output}");
        let failed = match status {
            Some(s) if s.success() => return,
            Some(s) => format!("exited with {s}"),
            None => format!("was still running after {SCENARIO_TIMEOUT:?}"),
        };
        self.host.assert_alive();
        let host_log = std::fs::read_to_string(&self.host.log).unwrap_or_default();
        let tail: Vec<&str> = host_log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "the browser scenario `{scenario}` {failed} (screenshots in {}):\n{output}\n\
             the host's log, last lines:\n{}",
            artifacts.display(),
            tail.join("\n")
        );
    }
}

/// Runs `scenario` on a fresh host, or says why it cannot.
fn scenario(scenario: &str, read_only: bool, seed: impl FnOnce(&Env)) {
    let browser = match Browser::find() {
        Ok(b) => b,
        Err(why) => {
            say_skipped(&format!("the dashboard's browser tests: {why}"));
            return;
        }
    };
    Dashboard::start(read_only, seed).run(&browser, scenario);
}

/// Without a token the page asks for one; with it, the overview is drawn.
#[test]
fn the_page_loads() {
    scenario("smoke", false, |_| {});
}

/// Jobs enqueued while the page is open appear and complete on the
/// Overview's counts and in the Jobs table, with no reload.
#[test]
fn jobs_complete_live() {
    scenario("live", false, |_| {});
}

/// A discarded job retried from its page runs again (a second attempt) and
/// completes.
#[test]
fn a_discarded_job_is_retried_from_its_page() {
    scenario("retry", false, |_| {});
}

/// A schedule is paused from the Schedules page, with a note, then resumed.
#[test]
fn a_schedule_is_paused_and_resumed() {
    scenario("schedules", false, |_| {});
}

/// "Select all matching" and a bulk cancel move every job of the filter,
/// not just the page shown, after a dialog that states how many.
#[test]
fn a_bulk_cancel_moves_every_matching_job() {
    scenario("bulk", false, |_| {});
}

/// A read-only host: no action buttons, a read-only badge, and the page's
/// own mutations answer 403.
#[test]
fn read_only_shows_no_actions_and_refuses_mutations() {
    scenario("read-only", true, |env| {
        env.enqueue("echo", r#"{"seeded": 1}"#);
        env.enqueue("echo", r#"{"seeded": 2}"#);
        env.ok(&[
            "enqueue",
            "fail",
            "--payload",
            r#"{"mode": "permanent", "message": "seeded failure"}"#,
            "--max-attempts",
            "1",
        ]);
    });
}

/// The login form refuses a wrong token with a message and takes the right
/// one, kept in the tab's sessionStorage, never in a cookie.
#[test]
fn login_keeps_the_token_in_the_session_only() {
    scenario("login", false, |_| {});
}

/// Every page, with jobs of several kinds, failures, schedules and outbox
/// events, free of console errors and failed requests; screenshots of each.
#[test]
fn every_page_renders_cleanly() {
    scenario("pages", false, |_| {});
}
