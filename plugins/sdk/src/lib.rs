//! The guest-side SDK for jobbox plugins.
//!
//! A jobbox plugin is a WebAssembly component that serves the jobs of one
//! kind. The host loads `<kind>.wasm` from its plugins directory and calls the
//! plugin's `run` once per attempt, each time in a fresh instance, so nothing
//! survives between attempts inside the plugin. This crate wraps the bindings
//! of the `jobbox:plugin` WIT world (`wit/plugin.wit` in the jobbox
//! repository) with a few conveniences.
//!
//! To write a plugin, make a `cdylib` crate that depends on `jobbox-sdk`,
//! implement [`Guest`] for a type and export it with [`export!`]:
//!
//! ```no_run
//! use jobbox_sdk::{Guest, Job, JobError, Output, log};
//!
//! struct Greeter;
//!
//! impl Guest for Greeter {
//!     fn run(job: Job) -> Result<Output, JobError> {
//!         if job.payload.trim().is_empty() {
//!             return Err(JobError::permanent("payload: expected a JSON value"));
//!         }
//!         log::info(&format!("greeting on attempt {}", job.attempt));
//!         Ok(Output::new(format!(r#"{{"hello":{}}}"#, job.payload)))
//!     }
//! }
//!
//! jobbox_sdk::export!(Greeter);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` and copy
//! `target/wasm32-wasip2/release/<crate_name>.wasm` into the host's plugins
//! directory as `<kind>.wasm`. Return [`JobError::retryable`] (or
//! [`JobError::retry_after`]) for a failure worth retrying and
//! [`JobError::permanent`] for one that can never succeed. A panic aborts the
//! instance, which the host records as a trap with no message of the plugin's
//! choosing, so prefer returning errors. Anything that must happen at most
//! once should be keyed on
//! [`Job::idempotency_key`](Job#structfield.idempotency_key) and guarded with
//! the [`Job::fencing_token`](Job#structfield.fencing_token).
//!
//! # What the host offers
//!
//! - [`log`]: structured logging into the host's tracing.
//! - [`kv`]: key-value state in a namespace of the plugin's own, granted per
//!   plugin in the host's config. Writes are buffered and commit atomically
//!   with the job's completion, and only if every key the attempt read is
//!   unchanged, so a read-modify-write is never lost and a failed, timed-out
//!   or stale attempt leaves no trace.
//! - [`outbox`]: events that commit with the job's completion and that the
//!   host then delivers at least once to the sink configured for their topic.
//! - `http` (with the `http` feature): a blocking HTTP client over
//!   `wasi:http/outgoing-handler`. The host denies every request that the
//!   plugin's `http_allow` config does not allow.
//!
//! [`KvError`] and [`EmitError`] convert into a [`JobError`] with `?`: a
//! store that is unavailable or an outbox backlog that is full is retryable,
//! anything else (no grant, a value or payload the host refuses) permanent.
//! A plugin that wants another policy matches on the error itself.
//!
//! # Features
//!
//! - `json` adds `Output::json` and `outbox::emit_json`, which serialise a
//!   `serde_json::Value`.
//! - `http` adds the `http` module. A plugin imports `wasi:http` only if it
//!   makes requests: version 0.2.4, which a host providing any later 0.2.x
//!   accepts.

/// The bindings that `wit-bindgen` generates for the `plugin` world.
///
/// Plugin authors use the re-exports at the crate root instead; the module is
/// public only because the [`export!`] macro expands to paths inside it.
#[doc(hidden)]
#[allow(
    unused_qualifications,
    missing_debug_implementations,
    clippy::too_many_arguments
)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../wit",
        // Make `export!` usable from the plugin crates, and make it find the
        // generated types here rather than in the crate that invokes it.
        pub_export_macro: true,
        default_bindings_module: "jobbox_sdk::bindings",
    });
}

pub mod kv;
pub mod outbox;
#[cfg(feature = "json")]
mod typed;

#[cfg(feature = "json")]
pub use typed::{JobOf, TypedGuest, run_typed};

#[cfg(feature = "http")]
pub mod http;

pub use bindings::jobbox::plugin::types::RetryableError;
pub use bindings::{Guest, Job, JobError, Output};
pub use kv::KvError;
pub use outbox::EmitError;

/// Exports a type implementing [`Guest`] as the plugin's `run` function.
///
/// Invoke it once, at the root of the plugin crate:
/// `jobbox_sdk::export!(MyPlugin);`.
pub use bindings::export;

impl JobError {
    /// A transient failure: the host retries the job with its usual backoff
    /// until the job's attempts are used up.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable(RetryableError {
            message: message.into(),
            retry_after_ms: None,
        })
    }

    /// A transient failure after which the host waits at least
    /// `retry_after_ms` milliseconds (up to the plugin's maximum backoff)
    /// before the next attempt.
    pub fn retry_after(message: impl Into<String>, retry_after_ms: u64) -> Self {
        Self::Retryable(RetryableError {
            message: message.into(),
            retry_after_ms: Some(retry_after_ms),
        })
    }

    /// A failure that no retry can fix, such as invalid input: the host
    /// discards the job at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent(message.into())
    }
}

impl Output {
    /// An output whose payload is the given JSON text.
    ///
    /// The host stores the text with the job; it should be valid JSON.
    pub fn new(payload: impl Into<String>) -> Self {
        Self {
            payload: payload.into(),
        }
    }

    /// An output whose payload is `value` serialised as JSON text.
    #[cfg(feature = "json")]
    pub fn json(value: &serde_json::Value) -> Self {
        Self::new(value.to_string())
    }
}

/// Logging into the host's tracing.
///
/// The host tags each line with the job id, the attempt and the plugin name,
/// truncates long messages and drops the excess of an attempt that logs too
/// much.
pub mod log {
    pub use crate::bindings::jobbox::plugin::log::Level;

    /// Emits `message` at `level`.
    pub fn log(level: Level, message: &str) {
        crate::bindings::jobbox::plugin::log::log(level, message);
    }

    /// Emits `message` at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }

    /// Emits `message` at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    /// Emits `message` at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Emits `message` at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Emits `message` at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}
