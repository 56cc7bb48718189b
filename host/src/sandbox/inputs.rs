//! What an attempt reads from the world besides its job: the clocks, random
//! numbers, kv entries and HTTP responses.
//!
//! Live, these come from the system, and each value is also captured (up to
//! a byte budget) so that a failed attempt can be replayed with exactly the
//! inputs it had. Scripted (plugin tests, replay), they come from a
//! [`Script`]: the recorded values first, in the order they were read, then
//! a deterministic continuation (clocks advance 1 ms per read, random bytes
//! come from a seeded generator), so the same case gives the same answer on
//! every run.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::effects::{KvFuture, KvSource};
use crate::job::KvEntry;

/// How far a scripted clock advances on each read past its recorded values.
const SCRIPTED_STEP_NS: u64 = 1_000_000;

/// Bytes counted for each captured clock reading.
const CLOCK_READING_SIZE: usize = 8;

/// Bytes of text or binary data: serialized as a string when it is UTF-8,
/// else as `{ hex = "…" }`, so test files and recordings stay readable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum BlobRepr {
    Text(String),
    Hex { hex: String },
}

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => BlobRepr::Text(text.to_owned()).serialize(s),
            Err(_) => BlobRepr::Hex {
                hex: to_hex(&self.0),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        match BlobRepr::deserialize(d)? {
            BlobRepr::Text(text) => Ok(Blob(text.into_bytes())),
            BlobRepr::Hex { hex } => from_hex(&hex).map(Blob).map_err(serde::de::Error::custom),
        }
    }
}

impl Blob {
    /// The bytes as text, with invalid UTF-8 replaced.
    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// `bytes` as lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The bytes a hex string spells.
pub fn from_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("hex text has an odd number of digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16)
                .map_err(|_| format!("invalid hex digits {:?}", &hex[i..i + 2]))
        })
        .collect()
}

/// Random bytes, serialized as one hex string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

impl Serialize for HexBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HexBytes, D::Error> {
        let text = String::deserialize(d)?;
        from_hex(&text)
            .map(HexBytes)
            .map_err(serde::de::Error::custom)
    }
}

/// One kv entry the attempt got from the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRead {
    pub key: String,
    /// `None`: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Blob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

/// One outbound HTTP request and what came back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpExchange {
    pub method: String,
    pub url: String,
    /// The `Idempotency-Key` the host put on the request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub idempotency_key: String,
    /// Request headers and body: kept when scripted (tests), not live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<Blob>,
    /// The response, if one came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Blob>,
    /// Why there was no response (denied, unmatched, network error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How the error of a request the plugin's grants refused starts: such a
/// request never left the sandbox.
pub(crate) const DENIED: &str = "denied: ";

impl HttpExchange {
    /// Whether the plugin's grants refused the request (so it was never
    /// sent, nor answered by a mock or a recording).
    pub fn denied_by_grants(&self) -> bool {
        self.error.as_deref().is_some_and(|e| e.starts_with(DENIED))
    }
}

/// One line the plugin logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

/// Everything an attempt read from the world, in the order it read it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    #[serde(default)]
    pub wall_clock_ns: Vec<u64>,
    #[serde(default)]
    pub monotonic_ns: Vec<u64>,
    #[serde(default)]
    pub random: HexBytes,
    #[serde(default)]
    pub insecure_random: HexBytes,
    /// `wasi:random/insecure-seed`, as hex (TOML has no 128-bit integers).
    #[serde(default)]
    pub insecure_seed: HexBytes,
    #[serde(default)]
    pub kv: Vec<KvRead>,
    #[serde(default)]
    pub http: Vec<HttpExchange>,
    /// Log lines (kept only when the run asks for them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogLine>,
    /// The budget ran out: some values were not kept, and a replay goes on
    /// from the last one kept.
    #[serde(default)]
    pub truncated: bool,
}

/// The shared, budgeted record of one attempt's inputs.
#[derive(Debug)]
pub(crate) struct Capture {
    inner: Mutex<CaptureInner>,
    keep_logs: bool,
}

#[derive(Debug)]
struct CaptureInner {
    captured: Captured,
    left: usize,
}

impl Capture {
    pub(crate) fn new(budget: usize, keep_logs: bool) -> Arc<Capture> {
        Arc::new(Capture {
            inner: Mutex::new(CaptureInner {
                captured: Captured::default(),
                left: budget,
            }),
            keep_logs,
        })
    }

    /// Runs `f` on the record if `size` more bytes fit the budget; marks it
    /// truncated otherwise.
    fn with(&self, size: usize, f: impl FnOnce(&mut Captured)) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.left < size {
            inner.captured.truncated = true;
            inner.left = 0;
            return;
        }
        inner.left -= size;
        f(&mut inner.captured);
    }

    pub(crate) fn take(&self) -> Captured {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut inner.captured)
    }

    fn kv(&self, key: &str, entry: &KvEntry) {
        let size = key.len() + entry.value.as_ref().map_or(0, Vec::len) + 16;
        self.with(size, |c| {
            // A key is recorded once, as first seen.
            if !c.kv.iter().any(|r| r.key == key) {
                c.kv.push(KvRead {
                    key: key.to_owned(),
                    value: entry.value.clone().map(Blob),
                    version: entry.version,
                });
            }
        });
    }

    /// Records a request; returns its index for the response to follow.
    pub(crate) fn http_request(&self, exchange: HttpExchange) -> Option<usize> {
        let size = exchange.method.len()
            + exchange.url.len()
            + exchange.idempotency_key.len()
            + exchange.request_body.as_ref().map_or(0, |b| b.0.len());
        let mut index = None;
        self.with(size, |c| {
            index = Some(c.http.len());
            c.http.push(exchange);
        });
        index
    }

    pub(crate) fn http_response(&self, index: usize, status: u16, headers: Vec<(String, String)>) {
        let size = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.with(size, |c| {
            if let Some(x) = c.http.get_mut(index) {
                x.status = Some(status);
                x.headers = headers;
                x.body.get_or_insert_with(Blob::default);
            }
        });
    }

    pub(crate) fn http_body(&self, index: usize, data: &[u8]) {
        self.with(data.len(), |c| {
            if let Some(x) = c.http.get_mut(index) {
                x.body
                    .get_or_insert_with(Blob::default)
                    .0
                    .extend_from_slice(data);
            }
        });
    }

    pub(crate) fn http_error(&self, index: usize, error: String) {
        self.with(error.len(), |c| {
            if let Some(x) = c.http.get_mut(index) {
                x.error = Some(error);
            }
        });
    }

    pub(crate) fn log(&self, level: &str, message: &str) {
        if self.keep_logs {
            self.with(message.len(), |c| {
                c.logs.push(LogLine {
                    level: level.to_owned(),
                    message: message.to_owned(),
                })
            });
        }
    }
}

/// A canned HTTP response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CannedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Fail the request instead, with the `wasi:http` error code of this
    /// name (e.g. `ConnectionRefused`, `HttpResponseTimeout`).
    pub fail: Option<String>,
}

/// Answers a scripted attempt's HTTP requests (after its grants allowed
/// them) without the network. An `Err` denies the request, saying why.
pub trait HttpResponder: Send + Sync + 'static {
    fn respond(&self, seq: u32, request: &HttpExchange) -> Result<CannedResponse, String>;
}

/// The inputs of a scripted attempt.
#[derive(Clone)]
pub struct Script {
    /// The wall clock's first reading past the recorded ones, in ns since
    /// the Unix epoch.
    pub wall_start_ns: u64,
    /// The attempt's deadline as the plugin is told it, in ms since the
    /// Unix epoch (`None`: the wall start plus the timeout).
    pub deadline_ms: Option<u64>,
    /// Seeds the random bytes past the recorded ones.
    pub seed: u64,
    /// Recorded values to give first.
    pub recorded: Captured,
    /// Answers HTTP requests (`None`: every request is denied).
    pub http: Option<Arc<dyn HttpResponder>>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("wall_start_ns", &self.wall_start_ns)
            .field("seed", &self.seed)
            .field("http", &self.http.is_some())
            .finish_non_exhaustive()
    }
}

/// Where an attempt's world comes from.
#[derive(Clone, Debug, Default)]
pub enum Inputs {
    /// The system's clocks and randomness, the network.
    #[default]
    Live,
    /// A fixed script: deterministic.
    Scripted(Arc<Script>),
}

/// A stream of recorded `u64` readings, then a deterministic continuation.
struct Readings {
    recorded: Vec<u64>,
    next: Cell<usize>,
    last: Cell<u64>,
}

impl Readings {
    fn new(recorded: Vec<u64>, start: u64) -> Readings {
        Readings {
            recorded,
            next: Cell::new(0),
            last: Cell::new(start.saturating_sub(SCRIPTED_STEP_NS)),
        }
    }

    fn read(&self) -> u64 {
        let i = self.next.get();
        self.next.set(i + 1);
        let value = match self.recorded.get(i) {
            Some(v) => *v,
            None => self.last.get().saturating_add(SCRIPTED_STEP_NS),
        };
        self.last.set(value);
        value
    }
}

/// `wasi:clocks/wall-clock` for one attempt.
pub(crate) struct WallClock {
    capture: Arc<Capture>,
    script: Option<Readings>,
}

/// `wasi:clocks/monotonic-clock` for one attempt.
pub(crate) struct MonotonicClock {
    capture: Arc<Capture>,
    script: Option<Readings>,
}

/// The zero of live monotonic readings: one per process.
fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl wasmtime_wasi::HostWallClock for WallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        let ns = match &self.script {
            Some(r) => r.read(),
            None => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        };
        self.capture
            .with(CLOCK_READING_SIZE, |c| c.wall_clock_ns.push(ns));
        Duration::from_nanos(ns)
    }
}

impl wasmtime_wasi::HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        let ns = match &self.script {
            Some(r) => r.read(),
            None => process_start().elapsed().as_nanos() as u64,
        };
        self.capture
            .with(CLOCK_READING_SIZE, |c| c.monotonic_ns.push(ns));
        ns
    }
}

/// Which random stream a generator feeds.
#[derive(Clone, Copy)]
enum Stream {
    Secure,
    Insecure,
}

/// `wasi:random` for one attempt.
pub(crate) struct Random {
    stream: Stream,
    capture: Arc<Capture>,
    source: RandomSource,
}

enum RandomSource {
    /// The thread's generator (a CSPRNG reseeded from the OS), asked only
    /// when the plugin reads random bytes: most never do, and then an
    /// attempt seeds nothing.
    Live,
    Scripted {
        recorded: Vec<u8>,
        next: usize,
        rng: fastrand::Rng,
    },
}

impl rand_core::TryRng for Random {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        match &mut self.source {
            RandomSource::Live => rand::Rng::fill_bytes(&mut rand::rng(), dst),
            RandomSource::Scripted {
                recorded,
                next,
                rng,
            } => {
                let from_record = recorded.len().saturating_sub(*next).min(dst.len());
                dst[..from_record].copy_from_slice(&recorded[*next..*next + from_record]);
                *next += from_record;
                rng.fill(&mut dst[from_record..]);
            }
        }
        let stream = self.stream;
        self.capture.with(dst.len(), |c| match stream {
            Stream::Secure => c.random.0.extend_from_slice(dst),
            Stream::Insecure => c.insecure_random.0.extend_from_slice(dst),
        });
        Ok(())
    }
}

/// The WASI context of one attempt: nothing granted, its clocks and
/// randomness from `inputs`, captured into `capture`.
pub(crate) fn wasi_ctx(
    inputs: &Inputs,
    capture: &Arc<Capture>,
    stderr: super::trap::StderrTail,
) -> wasmtime_wasi::WasiCtx {
    let mut b = wasmtime_wasi::WasiCtx::builder();
    // Deny by default: no preopened directories, no environment, no
    // arguments, no network; stdin is empty and stdout is discarded. The
    // tail of stderr is kept, to explain a trap (a Rust guest prints its
    // panic there).
    b.stderr(stderr);
    let script = match inputs {
        Inputs::Live => None,
        Inputs::Scripted(s) => Some(s),
    };
    let wall = script.map(|s| Readings::new(s.recorded.wall_clock_ns.clone(), s.wall_start_ns));
    let mono = script.map(|s| Readings::new(s.recorded.monotonic_ns.clone(), 0));
    b.wall_clock(WallClock {
        capture: Arc::clone(capture),
        script: wall,
    });
    b.monotonic_clock(MonotonicClock {
        capture: Arc::clone(capture),
        script: mono,
    });
    let random = |stream: Stream| {
        let source = match script {
            None => RandomSource::Live,
            Some(s) => RandomSource::Scripted {
                recorded: match stream {
                    Stream::Secure => s.recorded.random.0.clone(),
                    Stream::Insecure => s.recorded.insecure_random.0.clone(),
                },
                next: 0,
                rng: fastrand::Rng::with_seed(match stream {
                    Stream::Secure => s.seed,
                    Stream::Insecure => s.seed ^ 0x9e37_79b9_7f4a_7c15,
                }),
            },
        };
        Random {
            stream,
            capture: Arc::clone(capture),
            source,
        }
    };
    b.secure_random(random(Stream::Secure));
    b.insecure_random(random(Stream::Insecure));
    let seed = match script {
        Some(s) if s.recorded.insecure_seed.0.len() == 16 => {
            let mut b = [0; 16];
            b.copy_from_slice(&s.recorded.insecure_seed.0);
            u128::from_le_bytes(b)
        }
        Some(s) => u128::from(s.seed) << 64 | u128::from(s.seed.rotate_left(17)),
        None => fastrand::u128(..),
    };
    b.insecure_random_seed(seed);
    capture.with(16, |c| {
        c.insecure_seed = HexBytes(seed.to_le_bytes().to_vec())
    });
    b.build()
}

/// A [`KvSource`] that records every entry its inner source returns.
pub(crate) struct RecordingKv {
    pub(crate) inner: Arc<dyn KvSource>,
    pub(crate) capture: Arc<Capture>,
}

impl KvSource for RecordingKv {
    fn get(&self, namespace: String, key: String) -> KvFuture<'_, KvEntry> {
        Box::pin(async move {
            let entry = self.inner.get(namespace, key.clone()).await?;
            self.capture.kv(&key, &entry);
            Ok(entry)
        })
    }

    fn list(
        &self,
        namespace: String,
        prefix: String,
        limit: u32,
    ) -> KvFuture<'_, Vec<(String, KvEntry)>> {
        Box::pin(async move {
            let entries = self.inner.list(namespace, prefix, limit).await?;
            for (key, entry) in &entries {
                self.capture.kv(key, entry);
            }
            Ok(entries)
        })
    }
}

/// kv state held in memory: a test case's fixture, or a recording's reads
/// for a replay. Nothing is ever written to it.
#[derive(Clone, Debug, Default)]
pub struct MemoryKv(pub BTreeMap<String, KvEntry>);

impl MemoryKv {
    /// Entries with these values, each at version 1.
    pub fn from_values(values: impl IntoIterator<Item = (String, Vec<u8>)>) -> MemoryKv {
        MemoryKv(
            values
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        KvEntry {
                            value: Some(v),
                            version: Some(1),
                        },
                    )
                })
                .collect(),
        )
    }

    /// The entries a recorded attempt read, as it read them.
    pub fn from_reads(reads: &[KvRead]) -> MemoryKv {
        MemoryKv(
            reads
                .iter()
                .map(|r| {
                    (
                        r.key.clone(),
                        KvEntry {
                            value: r.value.clone().map(|b| b.0),
                            version: r.version,
                        },
                    )
                })
                .collect(),
        )
    }
}

impl KvSource for MemoryKv {
    fn get(&self, _namespace: String, key: String) -> KvFuture<'_, KvEntry> {
        let entry = self.0.get(&key).cloned().unwrap_or_default();
        Box::pin(async move { Ok(entry) })
    }

    fn list(
        &self,
        _namespace: String,
        prefix: String,
        limit: u32,
    ) -> KvFuture<'_, Vec<(String, KvEntry)>> {
        let entries = self
            .0
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, e)| e.value.is_some())
            .take(limit as usize)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        Box::pin(async move { Ok(entries) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_text_when_they_can_be() {
        let text = serde_json::to_string(&Blob(b"hi".to_vec())).unwrap();
        assert_eq!(text, "\"hi\"");
        let bin = serde_json::to_string(&Blob(vec![0xff, 0])).unwrap();
        assert_eq!(bin, r#"{"hex":"ff00"}"#);
        for s in [text, bin] {
            let b: Blob = serde_json::from_str(&s).unwrap();
            assert_eq!(serde_json::to_string(&b).unwrap(), s);
        }
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
    }

    #[test]
    fn scripted_readings_replay_then_advance() {
        let r = Readings::new(vec![5, 7], 100);
        assert_eq!(
            [r.read(), r.read(), r.read(), r.read()],
            [5, 7, 7 + SCRIPTED_STEP_NS, 7 + 2 * SCRIPTED_STEP_NS]
        );
        let fresh = Readings::new(Vec::new(), 100 * SCRIPTED_STEP_NS);
        assert_eq!(fresh.read(), 100 * SCRIPTED_STEP_NS);
    }

    #[test]
    fn the_budget_truncates_and_says_so() {
        let c = Capture::new(20, false);
        c.with(8, |c| c.wall_clock_ns.push(1));
        c.with(8, |c| c.wall_clock_ns.push(2));
        c.with(8, |c| c.wall_clock_ns.push(3));
        let got = c.take();
        assert_eq!(got.wall_clock_ns, vec![1, 2]);
        assert!(got.truncated);
    }
}
