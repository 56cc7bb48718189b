//! Example jobbox plugin `echo`: returns its payload (any JSON) as its
//! output. It logs, at info level, the values a plugin with side effects
//! would hand to an external system: the idempotency key (stable across
//! retries), the attempt number and the fencing token (which grows with
//! every claim).

use jobbox_sdk::{JobError, JobOf, Output, TypedGuest, log};
use serde_json::Value;

struct Echo;

impl TypedGuest for Echo {
    type Payload = Value;

    fn run(job: JobOf<Value>) -> Result<Output, JobError> {
        log::info(&format!(
            "echo: idempotency_key={} attempt={} fencing_token={}",
            job.idempotency_key, job.attempt, job.fencing_token
        ));
        Ok(Output::json(&job.payload))
    }
}

jobbox_sdk::export_typed!(Echo);
