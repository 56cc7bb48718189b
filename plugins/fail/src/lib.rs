//! Test jobbox plugin `fail`: fails the way its payload asks.
//!
//! - `{"mode": "permanent", "message": "..."}` returns a permanent error.
//! - `{"mode": "retryable", "message": "...", "retry_after_ms": 1234}`
//!   returns a retryable error; `retry_after_ms` is optional.
//! - `{"mode": "succeed-on", "attempt": 3}` returns a retryable error until
//!   the job's attempt number reaches 3, then succeeds with
//!   `{"attempt": <the attempt>}`.
//!
//! `message` is optional; a payload that matches none of these is itself a
//! permanent error.

use jobbox_sdk::{Guest, Job, JobError, Output};
use serde::Deserialize;
use serde_json::json;

/// The plugin.
struct Fail;

/// The job's payload.
#[derive(Debug, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
enum Payload {
    Permanent {
        #[serde(default = "default_message")]
        message: String,
    },
    Retryable {
        #[serde(default = "default_message")]
        message: String,
        #[serde(default)]
        retry_after_ms: Option<u64>,
    },
    SucceedOn {
        attempt: u32,
    },
}

/// The message of an error whose payload gave none.
fn default_message() -> String {
    "the fail plugin failed as asked".to_owned()
}

impl Guest for Fail {
    fn run(job: Job) -> Result<Output, JobError> {
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::permanent(format!("invalid payload: {e}")))?;
        match payload {
            Payload::Permanent { message } => Err(JobError::permanent(message)),
            Payload::Retryable {
                message,
                retry_after_ms: None,
            } => Err(JobError::retryable(message)),
            Payload::Retryable {
                message,
                retry_after_ms: Some(ms),
            } => Err(JobError::retry_after(message, ms)),
            Payload::SucceedOn { attempt } if job.attempt >= attempt => {
                Ok(Output::json(&json!({ "attempt": job.attempt })))
            }
            Payload::SucceedOn { attempt } => Err(JobError::retryable(format!(
                "attempt {} fails; this job succeeds on attempt {attempt}",
                job.attempt
            ))),
        }
    }
}

jobbox_sdk::export!(Fail);
