//! Example jobbox plugin `echo`: returns its payload unchanged as its output.
//!
//! It logs, at info level, the values a plugin with side effects would hand
//! to an external system: the idempotency key (stable across retries), the
//! attempt number and the fencing token (which grows with every claim).

use jobbox_sdk::{Guest, Job, JobError, Output, log};

/// The plugin; it holds no state, as every attempt runs in a fresh instance.
struct Echo;

impl Guest for Echo {
    fn run(job: Job) -> Result<Output, JobError> {
        log::info(&format!(
            "echo: idempotency_key={} attempt={} fencing_token={}",
            job.idempotency_key, job.attempt, job.fencing_token
        ));
        Ok(Output::new(job.payload))
    }
}

jobbox_sdk::export!(Echo);
