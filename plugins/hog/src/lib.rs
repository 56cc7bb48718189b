//! Test jobbox plugin `hog`: allocates memory.
//!
//! - `{"bytes": N}` allocates `N` bytes, writes to every 4 KiB page of them
//!   so that the memory is really committed, and returns `{"allocated": N}`.
//! - `{"bytes": null}` or `{}` allocates 1 MiB chunks without end, keeping
//!   every one: it only stops when the host's memory limit stops it.
//!
//! A request the guest cannot satisfy (over the memory limit, or beyond the
//! 4 GiB of a 32-bit address space) aborts the instance with a trap, as a
//! failed allocation does in Rust.

use core::hint::black_box;

use jobbox_sdk::{Guest, Job, JobError, Output};
use serde::Deserialize;
use serde_json::json;

/// The plugin.
struct Hog;

/// The job's payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    /// How many bytes to allocate; absent or null means without end.
    #[serde(default)]
    bytes: Option<u64>,
}

/// The size of a WebAssembly page is 64 KiB, but a write every 4 KiB touches
/// every page whatever the host's page size is.
const STRIDE: usize = 4096;

/// The size of each allocation when allocating without end.
const CHUNK: usize = 1 << 20;

impl Guest for Hog {
    fn run(job: Job) -> Result<Output, JobError> {
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::permanent(format!("invalid payload: {e}")))?;
        match payload.bytes {
            Some(bytes) => {
                // On wasm32 a `usize` is 32 bits: a larger request can never
                // be met, which is as fatal as any other failed allocation.
                let len = usize::try_from(bytes).unwrap_or(usize::MAX);
                black_box(allocate(len));
                Ok(Output::json(&json!({ "allocated": bytes })))
            }
            None => {
                let mut kept = Vec::new();
                loop {
                    kept.push(allocate(CHUNK));
                    black_box(&kept);
                }
            }
        }
    }
}

/// Allocates `len` bytes and writes to every page of them.
fn allocate(len: usize) -> Vec<u8> {
    let mut buffer = vec![0u8; len];
    for i in (0..len).step_by(STRIDE) {
        buffer[i] = 1;
    }
    buffer
}

jobbox_sdk::export!(Hog);
