//! Test a jobbox plugin component from its crate's own `cargo test`.
//!
//! The harness is the one `jobbox plugins test` runs: the component runs in
//! the host's sandbox, with the grants, limits, kv state and HTTP mocks the
//! test gives, and no database or network. Every run is deterministic: the
//! clocks start at a fixed time and advance 1 ms per read, random bytes
//! come from a seed, and the fencing token is fixed, so a test gives the
//! same answer every time.
//!
//! The pattern, in a plugin crate's `tests/component.rs` (the crate itself
//! is a `cdylib` for `wasm32-wasip2`; its tests run natively):
//!
//! ```no_run
//! use jobbox_testing::{Plugin, json};
//!
//! #[test]
//! fn credits_an_account() {
//!     // Builds this crate for wasm32-wasip2 (once per test binary), then
//!     // loads the component.
//!     let plugin = Plugin::build(env!("CARGO_MANIFEST_DIR")).unwrap();
//!     let report = plugin
//!         .job(json!({"transfer_id": "t1", "account": "alice", "amount_cents": 5}))
//!         .grant_kv()
//!         .grant_topic("credited")
//!         .kv("balance/alice", "10")
//!         .run();
//!     report.assert_ok();
//!     assert_eq!(report.kv_write("balance/alice"), Some("15"));
//! }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use jobbox::sandbox::{Blob, Prepared};
use jobbox::testing::{
    CaseGrants, CaseLimits, Harness, HttpAllow, Summary, TestCase, TestFile, run_file,
};

pub use jobbox::sandbox::HttpExchange;
pub use jobbox::testing::{EventSummary, HttpMock};
pub use serde_json::{Value, json};

/// A compiled plugin component, ready to run jobs.
#[derive(Debug)]
pub struct Plugin {
    kind: String,
    path: PathBuf,
    harness: Harness,
    component: Prepared,
}

/// The built components, by manifest: `cargo test` runs tests on several
/// threads, and each builds at most once.
static BUILT: OnceLock<Mutex<Vec<(PathBuf, PathBuf)>>> = OnceLock::new();

impl Plugin {
    /// Builds the plugin crate at `manifest_dir` for `wasm32-wasip2` in
    /// release mode and loads the component. Its kind is the package name.
    ///
    /// The build goes to a target directory of its own beside the test's
    /// (`<target>/jobbox-testing`), so it never waits on the `cargo test`
    /// that runs it.
    pub fn build(manifest_dir: impl AsRef<Path>) -> anyhow::Result<Plugin> {
        let dir = manifest_dir.as_ref();
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", manifest.display()))?;
        let parsed: toml::Value =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
        let name = parsed
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(toml::Value::as_str)
            .ok_or_else(|| anyhow::anyhow!("{}: no package name", manifest.display()))?
            .to_owned();
        let built = BUILT.get_or_init(Mutex::default);
        let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
        let path = match built.iter().find(|(m, _)| *m == manifest) {
            Some((_, path)) => path.clone(),
            None => {
                let path = cargo_build(&manifest, &name)?;
                built.push((manifest.clone(), path.clone()));
                path
            }
        };
        drop(built);
        Plugin::load(&name, &path)
    }

    /// Loads the component at `path` as plugin `kind`.
    pub fn load(kind: &str, path: impl AsRef<Path>) -> anyhow::Result<Plugin> {
        let path = path.as_ref().to_owned();
        let harness = Harness::new(None)?;
        let component = harness.prepare_file(&path)?;
        Ok(Plugin {
            kind: kind.to_owned(),
            path,
            harness,
            component,
        })
    }

    /// The component's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A job for this plugin with `payload`; set it up, then [`Run::run`].
    pub fn job(&self, payload: Value) -> Run<'_> {
        Run {
            plugin: self,
            case: TestCase {
                payload: Some(payload),
                ..TestCase::new("job")
            },
        }
    }

    /// Runs a `<kind>.tests.toml` file on this component and panics with
    /// the failures, if any, so a crate's `cargo test` can run its
    /// declarative tests too.
    pub fn assert_test_file(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let file = TestFile::read(path).unwrap_or_else(|e| panic!("{e:#}"));
        let report =
            runtime().block_on(run_file(&self.harness, path, &file, &self.kind, &self.path));
        if let Some(e) = &report.error {
            panic!("{}: {e}", path.display());
        }
        let failed: Vec<String> = report
            .cases
            .iter()
            .filter(|c| !c.passed)
            .map(|c| {
                let mut text = format!("case {:?}:", c.name);
                for f in &c.failures {
                    text.push_str(&format!("\n{f:2}"));
                }
                text
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} cases in {} failed:\n{}",
            failed.len(),
            report.cases.len(),
            path.display(),
            failed.join("\n")
        );
    }
}

/// `cargo build` of the crate for `wasm32-wasip2`; the component's path.
fn cargo_build(manifest: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let target_dir = own_target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run cargo: {e}"))?;
    if !status.success() {
        anyhow::bail!(
            "building {} for wasm32-wasip2 failed ({status}); is the target installed \
             (`rustup target add wasm32-wasip2`)?",
            manifest.display()
        );
    }
    let path = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    if !path.exists() {
        anyhow::bail!(
            "{} built, but {} is missing: is the crate a cdylib?",
            manifest.display(),
            path.display()
        );
    }
    Ok(path)
}

/// `<target>/jobbox-testing`, where `<target>` holds the running test
/// binary (`<target>/<profile>/deps/<test>`).
fn own_target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe
        .ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf);
    target.join("jobbox-testing")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// One job to run: the job's details, what it is granted and the world it
/// sees.
#[derive(Debug)]
pub struct Run<'a> {
    plugin: &'a Plugin,
    case: TestCase,
}

impl Run<'_> {
    /// The idempotency key (default `test-key`).
    pub fn key(mut self, key: &str) -> Self {
        self.case.key = key.to_owned();
        self
    }

    /// The attempt number (default 1).
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.case.attempt = attempt;
        self
    }

    /// The fencing token (default: the attempt number).
    pub fn fencing_token(mut self, token: u64) -> Self {
        self.case.fencing_token = Some(token);
        self
    }

    /// The wall clock at the start, RFC 3339 (default
    /// 2025-01-01T00:00:00Z).
    pub fn now(mut self, rfc3339: &str) -> Self {
        self.case.now = Some(rfc3339.to_owned());
        self
    }

    /// Seeds the random bytes the plugin reads (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.case.seed = seed;
        self
    }

    fn grants(&mut self) -> &mut CaseGrants {
        self.case.grants.get_or_insert_with(CaseGrants::default)
    }

    /// Grants kv in the plugin's namespace.
    pub fn grant_kv(mut self) -> Self {
        self.grants().kv = true;
        self
    }

    /// Grants emitting on `topic`.
    pub fn grant_topic(mut self, topic: &str) -> Self {
        self.grants().outbox_topics.push(topic.to_owned());
        self
    }

    /// Allows HTTP requests to `scheme://host[:port]` (any method).
    pub fn allow_http(mut self, url: &str) -> Self {
        self.grants().http_allow.push(HttpAllow {
            url: url.to_owned(),
            methods: None,
        });
        self
    }

    /// Sets kv `key` to `value` before the run.
    pub fn kv(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.case
            .kv
            .insert(key.to_owned(), Blob(value.as_ref().to_vec()));
        self
    }

    /// Answers matching HTTP requests; a request no mock matches is denied
    /// (and shows in [`Report::unmatched`]).
    pub fn mock(mut self, mock: HttpMock) -> Self {
        self.case.http.push(mock);
        self
    }

    /// The fuel budget.
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.case
            .limits
            .get_or_insert_with(CaseLimits::default)
            .fuel = Some(fuel);
        self
    }

    /// Runs the job; panics if it cannot run at all (a bad setting, a
    /// component that does not implement the world).
    pub fn run(self) -> Report {
        let plugin = self.plugin;
        let run = runtime()
            .block_on(
                plugin
                    .harness
                    .run(&plugin.kind, &plugin.component, &self.case),
            )
            .unwrap_or_else(|e| panic!("the job could not run: {e:#}"));
        Report {
            summary: run.summary,
            elapsed: run.elapsed,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub summary: Summary,
    pub elapsed: std::time::Duration,
}

impl Report {
    /// `ok`, `retryable`, `permanent`, `trap`, `out_of_fuel`, `timeout`,
    /// `memory_limit` or `output_too_large`.
    pub fn outcome(&self) -> &str {
        &self.summary.outcome
    }

    /// Panics, saying why, unless the run succeeded.
    pub fn assert_ok(&self) -> &Self {
        assert!(
            self.summary.outcome == "ok",
            "expected success, got {}: {}",
            self.summary.outcome,
            self.summary.error.as_deref().unwrap_or("")
        );
        self
    }

    /// The output, parsed as JSON (`Null` if there is none).
    pub fn output(&self) -> Value {
        self.summary
            .output
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok())
            .unwrap_or(Value::Null)
    }

    /// The error message, if the run failed.
    pub fn error(&self) -> Option<&str> {
        self.summary.error.as_deref()
    }

    /// The value `key` was set to, as text (`None`: not written, or
    /// deleted).
    pub fn kv_write(&self, key: &str) -> Option<&str> {
        self.summary
            .kv_writes
            .get(key)?
            .as_ref()
            .and_then(|b| std::str::from_utf8(&b.0).ok())
    }

    /// Every key written or deleted.
    pub fn kv_keys(&self) -> Vec<&str> {
        self.summary.kv_writes.keys().map(String::as_str).collect()
    }

    /// The events emitted, in order.
    pub fn events(&self) -> &[EventSummary] {
        &self.summary.events
    }

    /// The HTTP requests the grants let out, in order, with their answers.
    pub fn requests(&self) -> Vec<&HttpExchange> {
        self.summary
            .http
            .iter()
            .filter(|x| !x.denied_by_grants())
            .collect()
    }

    /// Requests no mock answered.
    pub fn unmatched(&self) -> Vec<&HttpExchange> {
        self.summary
            .http
            .iter()
            .filter(|x| jobbox::testing::unmatched(x))
            .collect()
    }

    /// Whether some log line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.summary.logs.iter().any(|l| l.message.contains(text))
    }

    pub fn fuel_used(&self) -> u64 {
        self.summary.fuel_used
    }
}
