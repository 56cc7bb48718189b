//! Test jobbox plugin `trap`: executes a WebAssembly `unreachable`
//! instruction, which traps at once.
//!
//! It proves that the host turns a guest trap into a failed attempt rather
//! than crashing, and records it as a trap.

use jobbox_sdk::{Guest, Job, JobError, Output};

/// The plugin.
struct Trap;

impl Guest for Trap {
    fn run(_job: Job) -> Result<Output, JobError> {
        // The plugins are built for `wasm32-wasip2`; the fallback only lets
        // the crate compile for the host too (as `cargo test` does).
        #[cfg(target_arch = "wasm32")]
        core::arch::wasm32::unreachable();
        #[cfg(not(target_arch = "wasm32"))]
        std::process::abort();
    }
}

jobbox_sdk::export!(Trap);
