//! Test jobbox plugin `sleepy`: sleeps in a host call, then performs a
//! visible side effect.
//!
//! The payload `{"ms": N}` makes it sleep `N` milliseconds with
//! `std::thread::sleep`, which on `wasm32-wasip2` is a blocking host call (a
//! WASI monotonic-clock subscription polled to completion): the guest is
//! parked inside the host rather than running. Then it logs, at warn level,
//! exactly
//!
//! ```text
//! EFFECT job=<id> attempt=<attempt>
//! ```
//!
//! and returns `{"slept": N}`. The tests use it to show that the host's
//! deadline also stops a guest that is blocked in a host call.

use std::thread;
use std::time::Duration;

use jobbox_sdk::{JobError, JobOf, Output, TypedGuest, log};
use serde::Deserialize;
use serde_json::json;

/// The plugin.
struct Sleepy;

/// The job's payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    /// How long to sleep before the effect, in milliseconds.
    ms: u64,
}

impl TypedGuest for Sleepy {
    type Payload = Payload;

    fn run(job: JobOf<Payload>) -> Result<Output, JobError> {
        let payload = job.payload;
        thread::sleep(Duration::from_millis(payload.ms));
        log::warn(&format!("EFFECT job={} attempt={}", job.id, job.attempt));
        Ok(Output::json(&json!({ "slept": payload.ms })))
    }
}

jobbox_sdk::export_typed!(Sleepy);
