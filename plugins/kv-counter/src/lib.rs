//! Test jobbox plugin `kv-counter`: increments a decimal counter in kv.
//!
//! The payload `{"key": "counter", "by": 1}` (`by` is optional, default 1)
//! reads the value at `key` as a decimal `u64` in ASCII (absent: 0), adds
//! `by`, writes the sum back with a plain `set` and returns `{"value": N}`,
//! the new value.
//!
//! It is a plain get-then-set on purpose: the host validates at commit that
//! the key read is unchanged, so concurrent jobs never lose an increment, and
//! the tests use it to show exactly that.
//!
//! A value that is not a decimal `u64`, or a sum that overflows, is a
//! permanent error; so are a denied grant and an oversized key (the SDK's
//! conversion of a `KvError`, whose message starts with `kv:`), while an
//! unavailable store is retryable.

use jobbox_sdk::{Guest, Job, JobError, Output, kv};
use serde::Deserialize;
use serde_json::json;

/// The plugin.
struct KvCounter;

/// The job's payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    /// The counter's key.
    key: String,
    /// How much to add.
    #[serde(default = "one")]
    by: u64,
}

/// The default increment.
fn one() -> u64 {
    1
}

impl Guest for KvCounter {
    fn run(job: Job) -> Result<Output, JobError> {
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::permanent(format!("invalid payload: {e}")))?;
        let current = match kv::get(&payload.key)? {
            None => 0,
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| {
                    JobError::permanent(format!(
                        "{}: the stored value {:?} is not a decimal u64",
                        payload.key,
                        String::from_utf8_lossy(&bytes)
                    ))
                })?,
        };
        let value = current.checked_add(payload.by).ok_or_else(|| {
            JobError::permanent(format!(
                "{}: {current} + {} overflows",
                payload.key, payload.by
            ))
        })?;
        kv::set(&payload.key, value.to_string().as_bytes())?;
        Ok(Output::json(&json!({ "value": value })))
    }
}

jobbox_sdk::export!(KvCounter);
