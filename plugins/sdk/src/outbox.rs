//! A transactional outbox.
//!
//! An event emitted during an attempt is committed with the job's
//! completion, and never if the attempt does not complete (it fails, times
//! out, traps or loses its job). The host then delivers it at least once to
//! the sink configured for its topic, with a body and an `Idempotency-Key`
//! that are identical on every delivery attempt, so a receiver can drop
//! duplicates.
//!
//! ```no_run
//! use jobbox_sdk::{JobError, outbox};
//!
//! fn announce(order: u64) -> Result<(), JobError> {
//!     outbox::emit("order-shipped", &format!(r#"{{"order":{order}}}"#))?;
//!     Ok(())
//! }
//! ```

use crate::JobError;
use crate::bindings::jobbox::plugin::outbox as raw;

/// Why an emit failed.
///
/// `Display` renders it as its debug form, such as
/// `EmitError::BacklogFull("...")`.
///
/// - `Denied`: the plugin may not emit on this topic, or no sink is
///   configured for it.
/// - `Invalid`: the payload is not JSON, or is too large.
/// - `BacklogFull`: too many events await delivery. The attempt then fails
///   (retryable) whatever the plugin returns, so that no event is lost.
pub use crate::bindings::jobbox::plugin::outbox::EmitError;

/// Emits `payload_json` (JSON text) on `topic`.
pub fn emit(topic: &str, payload_json: &str) -> Result<(), EmitError> {
    raw::emit(topic, payload_json)
}

/// Emits `payload`, serialised as compact JSON text, on `topic`.
#[cfg(feature = "json")]
pub fn emit_json(topic: &str, payload: &serde_json::Value) -> Result<(), EmitError> {
    emit(topic, &payload.to_string())
}

impl EmitError {
    /// Whether the failure is transient: only [`EmitError::BacklogFull`] is.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::BacklogFull(_))
    }
}

impl From<EmitError> for JobError {
    /// A retryable error for [`EmitError::BacklogFull`], a permanent one for
    /// [`EmitError::Denied`] and [`EmitError::Invalid`]; the message starts
    /// with `outbox:`.
    fn from(error: EmitError) -> Self {
        match error {
            EmitError::BacklogFull(message) => {
                Self::retryable(format!("outbox: backlog full: {message}"))
            }
            EmitError::Denied(message) => Self::permanent(format!("outbox: denied: {message}")),
            EmitError::Invalid(message) => Self::permanent(format!("outbox: invalid: {message}")),
        }
    }
}
