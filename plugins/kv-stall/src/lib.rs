//! Test jobbox plugin `kv-stall`: writes a kv key, then waits.
//!
//! The payload
//!
//! ```json
//! {"key": "k", "value": "v", "ms": 500, "mode": "sleep"}
//! ```
//!
//! sets `key` to the UTF-8 bytes of `value`, then waits `ms` milliseconds,
//! then returns `{"ok": true}`. `mode` says how it waits (default `sleep`):
//!
//! - `sleep`: `std::thread::sleep`, a blocking host call;
//! - `spin`: a busy loop that only reads the monotonic clock.
//!
//! The tests use it to show that the write of an attempt that times out, or
//! whose claim goes stale while it waits, never becomes visible. A kv error
//! becomes the SDK's `JobError` for it (its message starts with `kv:`).

use core::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use jobbox_sdk::{Guest, Job, JobError, Output, kv, log};
use serde::Deserialize;
use serde_json::json;

/// The plugin.
struct KvStall;

/// How to wait.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Blocked in a host call.
    #[default]
    Sleep,
    /// Running guest code.
    Spin,
}

/// The job's payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    key: String,
    value: String,
    /// How long to wait after the write, in milliseconds.
    ms: u64,
    #[serde(default)]
    mode: Mode,
}

impl Guest for KvStall {
    fn run(job: Job) -> Result<Output, JobError> {
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::permanent(format!("invalid payload: {e}")))?;
        kv::set(&payload.key, payload.value.as_bytes())?;
        log::info(&format!(
            "kv-stall: set {:?}, now waiting {} ms ({:?})",
            payload.key, payload.ms, payload.mode
        ));
        let wait = Duration::from_millis(payload.ms);
        match payload.mode {
            Mode::Sleep => thread::sleep(wait),
            Mode::Spin => {
                let start = Instant::now();
                let mut spins: u64 = 0;
                while start.elapsed() < wait {
                    spins = black_box(spins.wrapping_add(1));
                }
            }
        }
        Ok(Output::json(&json!({ "ok": true })))
    }
}

jobbox_sdk::export!(KvStall);
