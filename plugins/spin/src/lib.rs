//! Test jobbox plugin `spin`: loops forever without ever calling the host.
//!
//! It proves that the host can stop a guest that never yields control: only
//! the host's own interruption (epoch deadline or fuel) ends the attempt.

use core::hint::black_box;

use jobbox_sdk::{Guest, Job, JobError, Output};

/// The plugin.
struct Spin;

impl Guest for Spin {
    fn run(_job: Job) -> Result<Output, JobError> {
        let mut iterations: u64 = 0;
        loop {
            // `black_box` hides the counter from the optimiser, so the loop
            // is real work that it can neither remove nor prove endless.
            iterations = black_box(iterations.wrapping_add(1));
        }
    }
}

jobbox_sdk::export!(Spin);
