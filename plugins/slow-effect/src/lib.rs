//! Test jobbox plugin `slow-effect`: busy-waits, then performs a visible side
//! effect.
//!
//! The payload `{"ms": N}` makes it spin for `N` milliseconds of monotonic
//! time, reading the clock (a quick host call) but never blocking in the
//! host. Then it logs, at warn level, exactly
//!
//! ```text
//! EFFECT job=<id> attempt=<attempt>
//! ```
//!
//! and returns `{"done": true}`. The log line stands for an external side
//! effect: the tests show that when the attempt's deadline is shorter than
//! `N` the line never appears, because the host stops the guest mid-loop.

use core::hint::black_box;
use std::time::{Duration, Instant};

use jobbox_sdk::{Guest, Job, JobError, Output, log};
use serde::Deserialize;
use serde_json::json;

/// The plugin.
struct SlowEffect;

/// The job's payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    /// How long to busy-wait before the effect, in milliseconds.
    ms: u64,
}

impl Guest for SlowEffect {
    fn run(job: Job) -> Result<Output, JobError> {
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::permanent(format!("invalid payload: {e}")))?;
        let wait = Duration::from_millis(payload.ms);
        let start = Instant::now();
        let mut spins: u64 = 0;
        while start.elapsed() < wait {
            spins = black_box(spins.wrapping_add(1));
        }
        log::warn(&format!("EFFECT job={} attempt={}", job.id, job.attempt));
        Ok(Output::json(&json!({ "done": true })))
    }
}

jobbox_sdk::export!(SlowEffect);
