//! Record and replay.
//!
//! Every attempt captures what it read from the world (clock readings,
//! random bytes, kv entries, HTTP responses; see
//! [`crate::sandbox::Captured`]) within its plugin's `record_max`. When it
//! fails, or always for a plugin with `record = true`, the executor keeps
//! that as a [`Recording`] in the attempt's row, written in the same
//! transaction and deleted with it.
//!
//! A replay turns the recording into a plugin test case whose inputs are
//! the recorded ones and whose expectations are what the attempt did, and
//! runs it in the test harness: against the same build it reproduces the
//! attempt exactly (same outcome, output, effects, requests and fuel), and
//! against a new build it shows what changed. The same case, written to a
//! file, is a regression test for `jobbox plugins test`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::job::{ClaimedJob, JobId};
use crate::sandbox::{Captured, Grants, Limits, RunReport};
use crate::testing::{
    CaseGrants, CaseLimits, EventExpectation, Expect, Failure, Harness, HttpMock,
    RequestExpectation, Summary, TestCase, TestFile,
};
use crate::time::Timestamp;

/// The version of the recording format this binary writes.
pub const FORMAT: u32 = 1;

/// What one attempt consumed, and what it did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    pub format: u32,
    pub job: RecordedJob,
    /// The SHA-256 of the component it ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_hash: Option<String>,
    pub inputs: Captured,
    /// What it did (its HTTP exchanges are in `inputs`).
    pub result: Summary,
    /// The grants and limits it ran with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<CaseGrants>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CaseLimits>,
}

/// The job as the attempt was given it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedJob {
    pub id: JobId,
    pub kind: String,
    pub queue: String,
    pub payload: String,
    pub idempotency_key: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub fencing_token: u64,
    /// When the attempt started, in ms since the Unix epoch.
    pub started_ms: i64,
    pub deadline_ms: u64,
}

impl Recording {
    /// The recording of `job`'s attempt that ended with `report`, run with
    /// `grants` and `limits`.
    pub fn of(
        job: &ClaimedJob,
        report: &RunReport,
        component_hash: Option<&str>,
        grants: &Grants,
        limits: &Limits,
    ) -> Recording {
        let mut result = Summary::of(report);
        result.http.clear();
        Recording {
            format: FORMAT,
            job: RecordedJob {
                id: job.id,
                kind: job.kind.clone(),
                queue: job.queue.clone(),
                payload: job.payload.clone(),
                idempotency_key: job.idempotency_key.clone(),
                attempt: job.attempt,
                max_attempts: job.max_attempts,
                fencing_token: job.epoch,
                started_ms: job.attempted_at.0,
                deadline_ms: report.deadline_ms,
            },
            component_hash: component_hash.map(str::to_owned),
            inputs: report.captured.clone(),
            result,
            grants: Some(CaseGrants::from_grants(grants)),
            limits: Some(CaseLimits::from_limits(limits)),
        }
    }

    /// The grants and limits to replay with: those the attempt ran with,
    /// else (an older recording) `current`.
    pub fn settings_or(
        &self,
        grants: &Grants,
        limits: &Limits,
    ) -> anyhow::Result<(Grants, Limits)> {
        Ok((
            match &self.grants {
                Some(g) => g.clone().resolve()?,
                None => grants.clone(),
            },
            match &self.limits {
                Some(l) => l.clone().resolve()?,
                None => *limits,
            },
        ))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a recording serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Recording> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| anyhow::anyhow!("the recording is not JSON: {e}"))?;
        let format = value.get("format").and_then(serde_json::Value::as_u64);
        if format != Some(u64::from(FORMAT)) {
            anyhow::bail!(
                "the recording is in format {}, this binary reads format {FORMAT}",
                format.map_or("(none)".to_owned(), |f| f.to_string())
            );
        }
        serde_json::from_value(value)
            .map_err(|e| anyhow::anyhow!("the recording is malformed: {e}"))
    }

    /// The attempt as a test case: its job and recorded inputs, run with
    /// `grants` and `limits`, expecting exactly what it did.
    pub fn to_case(&self, name: &str, grants: &Grants, limits: &Limits) -> TestCase {
        let r = &self.result;
        let job = &self.job;
        let mut inputs = self.inputs.clone();
        // The HTTP answers become mocks, each answering once, in order.
        let exchanges = std::mem::take(&mut inputs.http);
        let http = exchanges
            .iter()
            .filter(|x| !x.denied_by_grants())
            .map(|x| HttpMock {
                once: true,
                fail: match x.status {
                    Some(_) => None,
                    None => Some(x.error.clone().unwrap_or_else(|| "no response".into())),
                },
                status: x.status.unwrap_or(200),
                headers: x.headers.iter().cloned().collect(),
                body: x.body.clone(),
                ..HttpMock::new(&x.method, &x.url, 200)
            })
            .collect();
        inputs.logs.clear();
        let kv_writes = r
            .kv_writes
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        let kv_deleted = r
            .kv_writes
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let output = r
            .output
            .as_ref()
            .map(|o| serde_json::from_str(o).unwrap_or(serde_json::Value::String(o.clone())));
        // TOML holds neither null nor integers past 64 bits: such JSON goes
        // as text.
        let (output, output_json) = match output {
            Some(v) if !toml_safe(&v) => (None, Some(v.to_string())),
            other => (other, None),
        };
        TestCase {
            payload: None,
            payload_json: Some(job.payload.clone()),
            key: job.idempotency_key.clone(),
            attempt: job.attempt,
            max_attempts: Some(job.max_attempts),
            fencing_token: Some(job.fencing_token),
            job_id: job.id,
            queue: job.queue.clone(),
            now: Some(Timestamp(job.started_ms).to_string()),
            deadline_ms: Some(job.deadline_ms),
            grants: Some(CaseGrants::from_grants(grants)),
            limits: Some(CaseLimits::from_limits(limits)),
            http,
            inputs: Some(inputs),
            expect: Expect {
                outcome: Some(r.outcome.clone()),
                error_contains: r.error.clone(),
                output,
                output_json,
                output_contains: None,
                kv_writes: Some(kv_writes),
                kv_deleted: Some(kv_deleted),
                events: Some(
                    r.events
                        .iter()
                        .map(|e| {
                            let safe = toml_safe(&e.payload);
                            EventExpectation {
                                topic: e.topic.clone(),
                                payload: safe.then(|| e.payload.clone()),
                                payload_json: (!safe).then(|| e.payload.to_string()),
                                idempotency_key: Some(e.idempotency_key.clone()),
                            }
                        })
                        .collect(),
                ),
                http_requests: Some(
                    exchanges
                        .iter()
                        .filter(|x| !x.denied_by_grants())
                        .map(|x| RequestExpectation {
                            method: x.method.clone(),
                            url: x.url.clone(),
                            idempotency_key: Some(x.idempotency_key.clone()),
                            body_json: None,
                        })
                        .collect(),
                ),
                logs: Vec::new(),
                max_fuel: None,
            },
            ..TestCase::new(name)
        }
    }

    /// The attempt as a test file of one case, for `plugins test`.
    pub fn to_test_file(&self, grants: &Grants, limits: &Limits) -> TestFile {
        let name = format!(
            "job {} attempt {} ({})",
            self.job.id, self.job.attempt, self.result.outcome
        );
        TestFile {
            kind: Some(self.job.kind.clone()),
            cases: vec![self.to_case(&name, grants, limits)],
            ..TestFile::default()
        }
    }
}

/// Whether TOML can hold `v`: no nulls, no integers past 64 bits.
fn toml_safe(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => false,
        Value::Number(n) => n.is_i64() || n.is_f64(),
        Value::Array(a) => a.iter().all(toml_safe),
        Value::Object(o) => o.values().all(toml_safe),
        Value::Bool(_) | Value::String(_) => true,
    }
}

/// How a replay compared with the recorded attempt.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    pub job_id: JobId,
    pub attempt: u32,
    pub kind: String,
    /// The component replayed on, and its SHA-256.
    pub component: PathBuf,
    pub component_hash: String,
    /// The build the attempt ran on.
    pub recorded_component_hash: Option<String>,
    /// What the attempt did, and what the replay did.
    pub recorded: Summary,
    pub replayed: Summary,
    /// Where the replay differs (empty: it did the same).
    pub differences: Vec<Failure>,
    pub same: bool,
    /// The recording hit its size cap: past its last value the replay
    /// goes on with deterministic stand-ins, and may differ for that.
    pub truncated: bool,
}

/// Replays `rec` on the component at `component` with `grants` and
/// `limits` (the plugin's current config).
pub async fn replay(
    harness: &Harness,
    rec: &Recording,
    component: &Path,
    grants: &Grants,
    limits: &Limits,
) -> anyhow::Result<ReplayReport> {
    let prepared = harness.prepare_file(component)?;
    let case = rec.to_case("replay", grants, limits);
    let run = harness.run(&rec.job.kind, &prepared, &case).await?;
    let differences = crate::testing::check(&case, &run.summary);
    let mut recorded = rec.result.clone();
    recorded.http = rec.inputs.http.clone();
    Ok(ReplayReport {
        job_id: rec.job.id,
        attempt: rec.job.attempt,
        kind: rec.job.kind.clone(),
        component: component.to_owned(),
        component_hash: prepared.content_hash().to_owned(),
        recorded_component_hash: rec.component_hash.clone(),
        same: differences.is_empty(),
        differences,
        recorded,
        replayed: run.summary,
        truncated: rec.inputs.truncated,
    })
}
