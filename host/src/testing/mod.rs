//! Plugin tests in isolation: run a component on a test case (payload,
//! grants, kv fixture, HTTP mocks) with no database and no network, and
//! check what it did against the case's expectations.
//!
//! Every case is deterministic: the clocks start at the case's `now` and
//! advance 1 ms per read, random bytes come from the case's `seed`, and the
//! fencing token is the case's. The same case gives the same outcome,
//! output, effects and fuel on every run.
//!
//! `jobbox plugins test` reads cases from `<kind>.tests.toml` files
//! ([`TestFile`]); the `jobbox-testing` crate builds them in Rust. Both run
//! them through [`Harness`].

mod case;
mod check;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use case::{
    CaseGrants, CaseLimits, EventExpectation, Expect, HttpAllow, HttpMock, RequestExpectation,
    TestCase, TestFile, unmatched,
};
pub use check::{Failure, check, json_contains};

use crate::job::ClaimedJob;
use crate::sandbox::{
    Blob, HttpExchange, Inputs, LogLine, MemoryKv, Prepared, RunContext, RunReport, Sandbox,
    SandboxConfig, Script,
};
use crate::time::Timestamp;

/// What a run did, in the terms tests and replays compare.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// `ok`, or the kind of failure (see [`crate::sandbox::OUTCOME_KINDS`]).
    pub outcome: String,
    /// The output, as the JSON text the plugin returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Keys written (`None`: deleted). Only a successful run has effects.
    #[serde(default)]
    pub kv_writes: BTreeMap<String, Option<Blob>>,
    #[serde(default)]
    pub events: Vec<EventSummary>,
    /// HTTP requests made, with their answers.
    #[serde(default)]
    pub http: Vec<HttpExchange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogLine>,
    pub fuel_used: u64,
}

/// One outbox event as a plugin emitted it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventSummary {
    pub topic: String,
    pub idempotency_key: String,
    /// The payload the plugin gave (the `data` of the delivered body).
    pub payload: serde_json::Value,
}

impl Summary {
    /// The summary of a run's report.
    pub fn of(report: &RunReport) -> Summary {
        let events = report
            .effects
            .events
            .iter()
            .map(|e| {
                let body: serde_json::Value =
                    serde_json::from_slice(&e.body).unwrap_or(serde_json::Value::Null);
                EventSummary {
                    topic: e.topic.clone(),
                    idempotency_key: e.idempotency_key.clone(),
                    payload: body.get("data").cloned().unwrap_or(serde_json::Value::Null),
                }
            })
            .collect();
        Summary {
            outcome: match &report.result {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.kind().to_owned(),
            },
            output: report.result.as_ref().ok().cloned(),
            error: report.result.as_ref().err().map(ToString::to_string),
            kv_writes: report
                .effects
                .kv_writes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().map(Blob)))
                .collect(),
            events,
            http: report.captured.http.clone(),
            logs: report.captured.logs.clone(),
            fuel_used: report.fuel_used,
        }
    }
}

/// The wall clock a case starts at unless it says: 2025-01-01T00:00:00Z.
pub const DEFAULT_NOW: Timestamp = Timestamp(1_735_689_600_000);

/// The bytes of inputs a test run keeps (its HTTP exchanges and logs).
const TEST_CAPTURE: usize = 16 << 20;

/// Runs test cases on components in a sandbox of its own.
#[derive(Debug)]
pub struct Harness {
    sandbox: Sandbox,
}

/// One case's run.
#[derive(Debug)]
pub struct CaseRun {
    pub summary: Summary,
    pub elapsed: Duration,
}

impl Harness {
    /// A harness whose compiled components are cached in `cache_dir`, if
    /// given (a component compiled once is not compiled again).
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Harness> {
        let sandbox = Sandbox::new(&SandboxConfig {
            pooling: false,
            max_instances: 1,
            // Cases set their own memory limit; this bounds none of them.
            max_memory: 4 << 30,
            cache_dir,
            ..SandboxConfig::default()
        })?;
        Ok(Harness { sandbox })
    }

    /// Compiles a component once for many cases.
    pub fn prepare(&self, bytes: &[u8]) -> anyhow::Result<Prepared> {
        self.sandbox.prepare(bytes)
    }

    /// Compiles the component at `path`.
    pub fn prepare_file(&self, path: &Path) -> anyhow::Result<Prepared> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        self.prepare(&bytes)
    }

    /// Runs `case` on the component as plugin `kind`. An error means the
    /// case could not run (a bad setting, a component that does not
    /// implement the world), not that the plugin failed.
    pub async fn run(
        &self,
        kind: &str,
        component: &Prepared,
        case: &TestCase,
    ) -> anyhow::Result<CaseRun> {
        let grants = case.grants.clone().unwrap_or_default().resolve()?;
        let limits = case.limits.clone().unwrap_or_default().resolve()?;
        let plugin = self.sandbox.plugin(kind, component, limits, grants)?;
        let payload = case.payload_text()?;
        let now = case.now()?;
        let job = ClaimedJob {
            id: case.job_id,
            queue: case.queue.clone(),
            attempt: case.attempt,
            max_attempts: case.max_attempts.unwrap_or(case.attempt.max(3)),
            epoch: case.fencing_token.unwrap_or(u64::from(case.attempt)),
            ..ClaimedJob::detached(kind, &payload, &case.key, now)
        };
        let kv = match &case.inputs {
            // A recorded attempt reads what it read then.
            Some(recorded) if case.kv.is_empty() => MemoryKv::from_reads(&recorded.kv),
            _ => MemoryKv::from_values(case.kv.iter().map(|(k, v)| (k.clone(), v.0.clone()))),
        };
        let script = Script {
            wall_start_ns: u64::try_from(now.0).unwrap_or(0).saturating_mul(1_000_000),
            deadline_ms: case.deadline_ms,
            seed: case.seed,
            recorded: case.inputs.clone().unwrap_or_default(),
            http: Some(Arc::new(case::Mocks::new(case.http.clone()))),
        };
        let ctx = RunContext {
            kv: Some(Arc::new(kv)),
            backlog: None,
            inputs: Inputs::Scripted(Arc::new(script)),
            capture_budget: TEST_CAPTURE,
            keep_logs: true,
        };
        let report = plugin.run(&job, &ctx, std::future::pending()).await;
        Ok(CaseRun {
            summary: Summary::of(&report),
            elapsed: report.elapsed,
        })
    }
}

/// The result of one case.
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    pub name: String,
    pub passed: bool,
    pub failures: Vec<Failure>,
    pub outcome: String,
    pub fuel_used: u64,
    pub elapsed_ms: f64,
}

/// The results of one test file.
#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    pub file: PathBuf,
    pub kind: String,
    pub component: PathBuf,
    /// The component's SHA-256, hex (empty if it did not load).
    pub component_hash: String,
    /// Why no case ran, if none did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub cases: Vec<CaseReport>,
}

impl FileReport {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.cases.iter().all(|c| c.passed)
    }
}

/// Runs every case of `file` (already read) on the component at
/// `component`.
pub async fn run_file(
    harness: &Harness,
    path: &Path,
    file: &TestFile,
    kind: &str,
    component: &Path,
) -> FileReport {
    let mut report = FileReport {
        file: path.to_owned(),
        kind: kind.to_owned(),
        component: component.to_owned(),
        component_hash: String::new(),
        error: None,
        cases: Vec::new(),
    };
    let prepared = match harness.prepare_file(component) {
        Ok(p) => p,
        Err(e) => {
            report.error = Some(format!("{}: {e:#}", component.display()));
            return report;
        }
    };
    report.component_hash = prepared.content_hash().to_owned();
    for case in &file.cases {
        let case = file.with_defaults(case);
        let (failures, outcome, fuel, elapsed) = match harness.run(kind, &prepared, &case).await {
            Ok(run) => (
                check(&case, &run.summary),
                run.summary.outcome.clone(),
                run.summary.fuel_used,
                run.elapsed,
            ),
            Err(e) => (
                vec![Failure::new("setup", format!("{e:#}"))],
                String::new(),
                0,
                Duration::ZERO,
            ),
        };
        report.cases.push(CaseReport {
            name: case.name.clone(),
            passed: failures.is_empty(),
            failures,
            outcome,
            fuel_used: fuel,
            elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        });
    }
    report
}
