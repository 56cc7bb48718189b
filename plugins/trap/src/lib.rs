//! Test jobbox plugin `trap`: traps the way its payload asks.
//!
//! - `{}` or `{"trap": "unreachable"}` executes a WebAssembly
//!   `unreachable` instruction.
//! - `{"trap": "panic", "message": "..."}` panics with the message (a Rust
//!   panic prints it to stderr, then traps with `unreachable`).
//! - `{"trap": "stack-overflow"}` recurses without end.
//! - `{"trap": "divide-by-zero"}` divides an integer by zero (Rust checks
//!   the divisor first, so this is a panic with the message
//!   "attempt to divide by zero").
//! - `{"trap": "out-of-bounds"}` loads from past the end of linear memory.
//!
//! It proves that the host turns a guest trap into a failed attempt rather
//! than crashing, records it as a trap, and reports it in one line that
//! names it.

use jobbox_sdk::{Guest, Job, JobError, Output};
use serde::Deserialize;

/// The plugin.
struct Trap;

/// The job's payload.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    /// Which trap (default `unreachable`).
    #[serde(default)]
    trap: Option<String>,
    /// The panic message.
    #[serde(default)]
    message: Option<String>,
}

impl Guest for Trap {
    fn run(job: Job) -> Result<Output, JobError> {
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::permanent(format!("invalid payload: {e}")))?;
        match payload.trap.as_deref().unwrap_or("unreachable") {
            "unreachable" => unreachable_instruction(),
            "panic" => panic!("{}", payload.message.unwrap_or_else(|| "boom".into())),
            "stack-overflow" => {
                let depth = recurse(core::hint::black_box(1));
                Err(JobError::permanent(format!("returned from depth {depth}")))
            }
            "divide-by-zero" => {
                let zero = core::hint::black_box(0u32);
                let n = core::hint::black_box(7u32) / zero;
                Err(JobError::permanent(format!("divided: {n}")))
            }
            "out-of-bounds" => out_of_bounds(),
            other => Err(JobError::permanent(format!("unknown trap {other:?}"))),
        }
    }
}

/// Executes `unreachable`.
fn unreachable_instruction() -> ! {
    // The plugins are built for `wasm32-wasip2`; the fallback only lets the
    // crate compile for the host too (as `cargo test` does).
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

/// Calls itself until the call stack runs out (its frame lives in wasm
/// locals, not in the shadow stack in linear memory, so it is the engine's
/// stack that overflows).
#[inline(never)]
fn recurse(n: u64) -> u64 {
    if core::hint::black_box(n) == u64::MAX {
        return 0;
    }
    recurse(core::hint::black_box(n + 1)).wrapping_add(n)
}

/// Loads from an address past the end of linear memory.
fn out_of_bounds() -> Result<Output, JobError> {
    #[cfg(target_arch = "wasm32")]
    {
        let end = core::arch::wasm32::memory_size(0) * 65536;
        let ptr = core::hint::black_box(end + 16) as *const u8;
        // SAFETY: none: the load is meant to trap, which is what the host
        // must report.
        #[allow(unsafe_code, reason = "the point of this plugin is to trap")]
        let byte = unsafe { core::ptr::read_volatile(ptr) };
        Err(JobError::permanent(format!("read {byte}")))
    }
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

jobbox_sdk::export!(Trap);
