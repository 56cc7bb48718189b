//! Plugins that take a typed payload: the SDK deserializes the job's JSON
//! into the plugin's `Payload` type before calling it, and a payload that
//! does not fit becomes a permanent error that names the field, never a
//! trap.
//!
//! ```no_run
//! use jobbox_sdk::{JobError, JobOf, Output, TypedGuest};
//!
//! #[derive(serde::Deserialize)]
//! struct Greeting {
//!     name: String,
//! }
//!
//! struct Greeter;
//!
//! impl TypedGuest for Greeter {
//!     type Payload = Greeting;
//!
//!     fn run(job: JobOf<Greeting>) -> Result<Output, JobError> {
//!         Ok(Output::new(format!("{{\"hello\":{:?}}}", job.payload.name)))
//!     }
//! }
//!
//! jobbox_sdk::export_typed!(Greeter);
//! # fn main() {}
//! ```

use serde::de::DeserializeOwned;

use crate::{Job, JobError, Output};

/// A plugin whose payload the SDK deserializes for it. Export it with
/// [`export_typed!`](crate::export_typed).
pub trait TypedGuest {
    /// What the job's payload must deserialize into.
    type Payload: DeserializeOwned;

    /// Runs one attempt.
    fn run(job: JobOf<Self::Payload>) -> Result<Output, JobError>;
}

/// A [`Job`] with its payload deserialized.
#[derive(Debug, Clone)]
pub struct JobOf<P> {
    pub id: u64,
    pub kind: String,
    pub queue: String,
    pub payload: P,
    /// Stable across every attempt of this job: pass it to any external
    /// system so that a retry is recognised as the same request.
    pub idempotency_key: String,
    /// 1 for the first attempt, 2 for the first retry, and so on.
    pub attempt: u32,
    pub max_attempts: u32,
    /// Strictly increases with every claim of the job.
    pub fencing_token: u64,
    /// This attempt's deadline, in milliseconds since the Unix epoch.
    pub deadline_ms: u64,
}

/// Deserializes `job`'s payload for `T` and runs it. A payload that does not
/// deserialize is a permanent error naming where it went wrong, e.g.
/// `payload.items[2].amount: invalid type: string "x", expected u64`.
pub fn run_typed<T: TypedGuest>(job: Job) -> Result<Output, JobError> {
    let de = &mut serde_json::Deserializer::from_str(&job.payload);
    let payload = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        JobError::permanent(if path == "." {
            format!("payload: {inner}")
        } else {
            format!("payload.{path}: {inner}")
        })
    })?;
    T::run(JobOf {
        id: job.id,
        kind: job.kind,
        queue: job.queue,
        payload,
        idempotency_key: job.idempotency_key,
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        fencing_token: job.fencing_token,
        deadline_ms: job.deadline_ms,
    })
}

/// Exports a type implementing [`TypedGuest`] as the plugin's `run`
/// function: `jobbox_sdk::export_typed!(MyPlugin);`, once, at the crate
/// root.
#[macro_export]
macro_rules! export_typed {
    ($plugin:ty) => {
        #[doc(hidden)]
        struct __JobboxTypedExport;

        impl $crate::Guest for __JobboxTypedExport {
            fn run(job: $crate::Job) -> Result<$crate::Output, $crate::JobError> {
                $crate::run_typed::<$plugin>(job)
            }
        }

        $crate::export!(__JobboxTypedExport);
    };
}
