//! The test-case format: `<kind>.tests.toml`.
//!
//! ```toml
//! kind = "ledger-credit"          # default: the file name before .tests.toml
//! component = "ledger-credit.wasm" # default: beside the file, else the plugins dir
//!
//! [grants]                        # for every case that sets none
//! kv = true
//!
//! [[case]]
//! name = "credits an account"
//! payload = { account = "alice", amount = 5 }
//! key = "credit-1"
//! kv = { "balance:alice" = "10" }
//! expect.kv_writes = { "balance:alice" = "15" }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::sandbox::{
    Blob, CannedResponse, Captured, DEFAULT_HTTP_MAX_RESPONSE, Grants, HttpExchange, HttpResponder,
    HttpRule, Limits,
};
use crate::time::Timestamp;

/// A file of test cases for one plugin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The plugin kind (default: the file name up to `.tests.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The component, relative to this file (default: `<kind>.wasm` beside
    /// it, else in the plugins directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Grants for every case that does not set its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<CaseGrants>,
    /// Limits for every case that does not set its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CaseLimits>,
    #[serde(rename = "case", default)]
    pub cases: Vec<TestCase>,
}

/// One test case: a job, the world it sees, and what it must do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    /// The payload, as a TOML value (turned into JSON; default `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// The payload as JSON text, exactly (instead of `payload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_json: Option<String>,
    /// The idempotency key.
    #[serde(default = "default_key")]
    pub key: String,
    #[serde(default = "one")]
    pub attempt: u32,
    /// Default: the larger of `attempt` and 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Default: the attempt number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<u64>,
    #[serde(default = "first_job")]
    pub job_id: i64,
    #[serde(default = "default_queue")]
    pub queue: String,
    /// The wall clock at the start (RFC 3339; default
    /// 2025-01-01T00:00:00Z). It advances 1 ms per read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<String>,
    /// The deadline the plugin is told, in ms since the Unix epoch
    /// (default: `now` plus the timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Seeds the random bytes the plugin reads.
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<CaseGrants>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CaseLimits>,
    /// kv state before the run (the plugin's own namespace).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kv: BTreeMap<String, Blob>,
    /// Answers to HTTP requests; a request none matches is denied and
    /// fails the case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpMock>,
    /// Recorded inputs to give first (a replayed attempt's clock readings,
    /// random bytes and kv reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Captured>,
    #[serde(default)]
    pub expect: Expect,
}

fn default_key() -> String {
    "test-key".to_owned()
}
fn one() -> u32 {
    1
}
fn first_job() -> i64 {
    1
}
fn default_queue() -> String {
    crate::job::DEFAULT_QUEUE.to_owned()
}

impl TestCase {
    /// A case with every default: an empty payload, expected to succeed.
    pub fn new(name: impl Into<String>) -> TestCase {
        TestCase {
            name: name.into(),
            payload: None,
            payload_json: None,
            key: default_key(),
            attempt: 1,
            max_attempts: None,
            fencing_token: None,
            job_id: 1,
            queue: default_queue(),
            now: None,
            deadline_ms: None,
            seed: 0,
            grants: None,
            limits: None,
            kv: BTreeMap::new(),
            http: Vec::new(),
            inputs: None,
            expect: Expect::default(),
        }
    }

    /// The payload as canonical JSON text.
    pub fn payload_text(&self) -> anyhow::Result<String> {
        match (&self.payload_json, &self.payload) {
            (Some(_), Some(_)) => anyhow::bail!("give payload or payload_json, not both"),
            (Some(text), None) => {
                crate::job::canonical_json(text).map_err(|e| anyhow::anyhow!("payload_json: {e}"))
            }
            (None, Some(v)) => Ok(v.to_string()),
            (None, None) => Ok("{}".to_owned()),
        }
    }

    /// The wall clock at the start.
    pub fn now(&self) -> anyhow::Result<Timestamp> {
        match &self.now {
            None => Ok(super::DEFAULT_NOW),
            Some(text) => {
                let t: jiff::Timestamp = text
                    .parse()
                    .map_err(|e| anyhow::anyhow!("now: {text:?} is not an RFC 3339 time ({e})"))?;
                Ok(Timestamp(t.as_millisecond()))
            }
        }
    }
}

impl TestFile {
    /// Reads and parses a test file.
    pub fn read(path: &Path) -> anyhow::Result<TestFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        TestFile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses a test file's text; the error names the line and field.
    pub fn parse(text: &str) -> Result<TestFile, String> {
        let file: TestFile = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_owned();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!("line {line}: {msg}")
                }
                None => msg,
            }
        })?;
        file.validate()?;
        Ok(file)
    }

    /// Checks what serde cannot: cases, names, outcomes, JSON texts.
    pub fn validate(&self) -> Result<(), String> {
        let file = self;
        if file.cases.is_empty() {
            return Err("no [[case]] in the file".into());
        }
        let mut names = std::collections::HashSet::new();
        for case in &file.cases {
            if !names.insert(case.name.as_str()) {
                return Err(format!("two cases are named {:?}", case.name));
            }
            if let Some(outcome) = &case.expect.outcome
                && !crate::sandbox::OUTCOME_KINDS.contains(&outcome.as_str())
            {
                return Err(format!(
                    "case {:?}: expect.outcome {outcome:?} is not one of {}",
                    case.name,
                    crate::sandbox::OUTCOME_KINDS.join(", ")
                ));
            }
            let texts = [
                ("payload_json", case.payload_json.as_ref()),
                ("expect.output_json", case.expect.output_json.as_ref()),
            ];
            let events = case.expect.events.iter().flatten();
            for (field, text) in texts
                .into_iter()
                .chain(events.map(|e| ("expect.events.payload_json", e.payload_json.as_ref())))
            {
                if let Some(t) = text
                    && let Err(e) = serde_json::from_str::<serde_json::Value>(t)
                {
                    return Err(format!("case {:?}: {field} is not JSON: {e}", case.name));
                }
            }
            if case.payload.is_some() && case.payload_json.is_some() {
                return Err(format!(
                    "case {:?}: give payload or payload_json, not both",
                    case.name
                ));
            }
        }
        Ok(())
    }

    /// The kind the file tests: `kind`, else its name before `.tests.toml`.
    pub fn kind_for(&self, path: &Path) -> Result<String, String> {
        if let Some(kind) = &self.kind {
            return Ok(kind.clone());
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.strip_suffix(".tests.toml")
            .map(str::to_owned)
            .ok_or_else(|| {
                format!(
                    "{}: name the kind (`kind = \"...\"`) or call the file <kind>.tests.toml",
                    path.display()
                )
            })
    }

    /// `case` with the file's grants and limits where it has none.
    pub fn with_defaults(&self, case: &TestCase) -> TestCase {
        let mut case = case.clone();
        if case.grants.is_none() {
            case.grants = self.grants.clone();
        }
        if case.limits.is_none() {
            case.limits = self.limits.clone();
        }
        case
    }
}

/// What a case grants its plugin. Nothing by default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseGrants {
    #[serde(default)]
    pub kv: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox_topics: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_allow: Vec<HttpAllow>,
    /// The largest HTTP response body (bytes; default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_response: Option<usize>,
}

/// One `http_allow` rule, as in the host's config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAllow {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
}

impl CaseGrants {
    pub fn resolve(self) -> anyhow::Result<Grants> {
        let http = self
            .http_allow
            .into_iter()
            .map(|r| {
                HttpRule::parse(&r.url, r.methods)
                    .map_err(|e| anyhow::anyhow!("grants.http_allow: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Grants {
            kv: self.kv,
            // The sink does not matter in a test: nothing is delivered.
            outbox_topics: self
                .outbox_topics
                .into_iter()
                .map(|t| {
                    let url = format!("test://{t}");
                    (t, url)
                })
                .collect(),
            http,
            http_max_response: self.http_max_response.unwrap_or(DEFAULT_HTTP_MAX_RESPONSE),
        })
    }

    /// The grants a host config gives, as a case states them.
    pub fn from_grants(g: &Grants) -> CaseGrants {
        CaseGrants {
            kv: g.kv,
            outbox_topics: g.outbox_topics.keys().cloned().collect(),
            http_allow: g
                .http
                .iter()
                .map(|r| HttpAllow {
                    url: format!("{}://{}:{}", r.scheme, r.host, r.port),
                    methods: r.methods.clone(),
                })
                .collect(),
            http_max_response: (g.http_max_response != DEFAULT_HTTP_MAX_RESPONSE)
                .then_some(g.http_max_response),
        }
    }
}

/// Limits of a case; each defaults to the host's default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// A duration such as `"2s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Bytes of linear memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output: Option<usize>,
}

impl CaseLimits {
    pub fn resolve(self) -> anyhow::Result<Limits> {
        let d = Limits::default();
        Ok(Limits {
            fuel: self.fuel.unwrap_or(d.fuel),
            timeout: match &self.timeout {
                Some(t) => humantime::parse_duration(t)
                    .map_err(|e| anyhow::anyhow!("limits.timeout: {t:?}: {e}"))?,
                None => d.timeout,
            },
            memory: self.memory.unwrap_or(d.memory),
            max_output: self.max_output.unwrap_or(d.max_output),
        })
    }

    /// The limits a host config gives, as a case states them.
    pub fn from_limits(l: &Limits) -> CaseLimits {
        CaseLimits {
            fuel: Some(l.fuel),
            timeout: Some(humantime::format_duration(l.timeout).to_string()),
            memory: Some(l.memory),
            max_output: Some(l.max_output),
        }
    }
}

/// A canned answer to matching HTTP requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMock {
    /// Matches any method if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The full URL, matched exactly.
    pub url: String,
    /// Headers the request must carry, with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_headers: BTreeMap<String, String>,
    /// The request body, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_body: Option<String>,
    /// JSON the request body must contain (a subset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_json: Option<serde_json::Value>,
    #[serde(default = "ok_status")]
    pub status: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The response body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Blob>,
    /// The response body as JSON (sets `content-type: application/json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
    /// Answer one request only; later ones go to the next matching mock
    /// (so repeated requests can get different answers, in order).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub once: bool,
    /// Fail the request instead of answering, with this `wasi:http` error
    /// code (e.g. `ConnectionRefused`, `HttpResponseTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<String>,
}

fn ok_status() -> u16 {
    200
}

impl HttpMock {
    /// A mock answering `method url` with `status` and an empty body.
    pub fn new(method: &str, url: &str, status: u16) -> HttpMock {
        HttpMock {
            method: Some(method.to_owned()),
            url: url.to_owned(),
            match_headers: BTreeMap::new(),
            match_body: None,
            match_json: None,
            status,
            headers: BTreeMap::new(),
            body: None,
            json: None,
            once: false,
            fail: None,
        }
    }

    fn matches(&self, req: &HttpExchange) -> bool {
        if let Some(m) = &self.method
            && !m.eq_ignore_ascii_case(&req.method)
        {
            return false;
        }
        if normalize(&self.url) != normalize(&req.url) {
            return false;
        }
        for (name, value) in &self.match_headers {
            let found = req
                .request_headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value);
            if !found {
                return false;
            }
        }
        let body = req.request_body.clone().unwrap_or_default().0;
        if let Some(want) = &self.match_body
            && want.as_bytes() != body.as_slice()
        {
            return false;
        }
        if let Some(want) = &self.match_json {
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(got) if super::json_contains(want, &got) => {}
                _ => return false,
            }
        }
        true
    }

    fn response(&self) -> CannedResponse {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let body = match (&self.json, &self.body) {
            (Some(json), _) => {
                if !headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                {
                    headers.push(("content-type".into(), "application/json".into()));
                }
                json.to_string().into_bytes()
            }
            (None, Some(b)) => b.0.clone(),
            (None, None) => Vec::new(),
        };
        CannedResponse {
            status: self.status,
            headers,
            body,
            fail: self.fail.clone(),
        }
    }
}

/// A URL as `http::Uri` prints it (so `https://x` and `https://x/` match).
pub(crate) fn normalize(url: &str) -> String {
    url.parse::<http::Uri>()
        .map_or_else(|_| url.to_owned(), |u| u.to_string())
}

/// The text that marks a request no mock answered.
const UNMATCHED: &str = "unmatched: no mock answers";

/// Whether no mock answered `x` (which fails a case).
pub fn unmatched(x: &HttpExchange) -> bool {
    x.error.as_deref().is_some_and(|e| e.starts_with(UNMATCHED))
}

/// A case's mocks, as the sandbox's responder.
pub(crate) struct Mocks {
    mocks: Vec<HttpMock>,
    /// Which `once` mocks have answered.
    used: std::sync::Mutex<Vec<bool>>,
}

impl Mocks {
    pub(crate) fn new(mocks: Vec<HttpMock>) -> Mocks {
        let used = std::sync::Mutex::new(vec![false; mocks.len()]);
        Mocks { mocks, used }
    }
}

impl HttpResponder for Mocks {
    fn respond(&self, _seq: u32, req: &HttpExchange) -> Result<CannedResponse, String> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let found = self
            .mocks
            .iter()
            .enumerate()
            .find(|(i, m)| !used[*i] && m.matches(req));
        let Some((i, mock)) = found else {
            return Err(format!("{UNMATCHED} {} {}", req.method, req.url));
        };
        if mock.once {
            used[i] = true;
        }
        Ok(mock.response())
    }
}

/// What a case expects. Every part left out is not checked, except the
/// outcome, which is `ok` unless given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `ok`, `retryable`, `permanent`, `trap`, `out_of_fuel`, `timeout`,
    /// `memory_limit` or `output_too_large`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Text the error message must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_contains: Option<String>,
    /// The output, exactly (as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// The output, exactly, as JSON text (for what TOML cannot hold:
    /// `null`, integers past 64 bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_json: Option<String>,
    /// JSON the output must contain (a subset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_contains: Option<serde_json::Value>,
    /// Exactly the keys set, with their values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_writes: Option<BTreeMap<String, Blob>>,
    /// Exactly the keys deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_deleted: Option<Vec<String>>,
    /// Exactly these events, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventExpectation>>,
    /// Exactly these HTTP requests, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_requests: Option<Vec<RequestExpectation>>,
    /// Each must be contained in some log line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    /// The run must use less fuel than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fuel: Option<u64>,
}

/// An expected outbox event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventExpectation {
    pub topic: String,
    /// JSON the payload must contain (a subset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// The payload exactly, as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_json: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// An expected HTTP request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestExpectation {
    pub method: String,
    pub url: String,
    /// The `Idempotency-Key` the host put on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// JSON the body must contain (a subset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_json: Option<serde_json::Value>,
}
