//! Test jobbox plugin `emit`: emits outbox events, then finishes the way its
//! payload asks.
//!
//! The payload
//!
//! ```json
//! {"events": [{"topic": "t", "payload": {"n": 1}}], "then": "ok"}
//! ```
//!
//! emits each event in order, its `payload` (any JSON value) serialised as
//! compact JSON text. If an emit fails, the attempt stops there with a
//! retryable error whose message contains the `EmitError` as text, such as
//! `emit 1 on topic "t" failed: EmitError::Denied("...")`. Otherwise `then`
//! (default `ok`) decides:
//!
//! - `ok`: returns `{"emitted": N}`, the number of events;
//! - `fail`: returns the retryable error `failing after emit`;
//! - `spin`: loops forever, until the host stops it.
//!
//! The tests use it to show that events commit with the job's completion and
//! never without it.

use core::hint::black_box;

use jobbox_sdk::{Guest, Job, JobError, Output, outbox};
use serde::Deserialize;
use serde_json::{Value, json};

/// The plugin.
struct Emit;

/// What to do after emitting.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Then {
    #[default]
    Ok,
    Fail,
    Spin,
}

/// One event to emit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    topic: String,
    payload: Value,
}

/// The job's payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    events: Vec<Event>,
    #[serde(default)]
    then: Then,
}

impl Guest for Emit {
    fn run(job: Job) -> Result<Output, JobError> {
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::permanent(format!("invalid payload: {e}")))?;
        for (i, event) in payload.events.iter().enumerate() {
            outbox::emit_json(&event.topic, &event.payload).map_err(|e| {
                JobError::retryable(format!("emit {i} on topic {:?} failed: {e}", event.topic))
            })?;
        }
        match payload.then {
            Then::Ok => Ok(Output::json(&json!({ "emitted": payload.events.len() }))),
            Then::Fail => Err(JobError::retryable("failing after emit")),
            Then::Spin => {
                let mut iterations: u64 = 0;
                loop {
                    iterations = black_box(iterations.wrapping_add(1));
                }
            }
        }
    }
}

jobbox_sdk::export!(Emit);
