//! Key-value state, in a namespace of the plugin's own (its kind).
//!
//! Keys are strings and values are bytes; what the bytes mean is the
//! plugin's business (a decimal number, JSON text, ...). The host grants kv
//! access per plugin in its config; without the grant every call returns
//! [`KvError::Denied`].
//!
//! An attempt's writes are buffered and committed in the same transaction as
//! the job's completion, and only if the attempt's claim is still current: an
//! attempt that fails, times out, traps or loses its job leaves no trace.
//! Reads see the attempt's own buffered writes. Every key an attempt reads is
//! checked again at commit; if another job changed it meanwhile, nothing
//! commits and the attempt is retried. So a plain [`get`] then [`set`] is a
//! safe read-modify-write, and [`compare_and_swap`] makes the intent explicit.
//! Reads are repeatable: the first read of a key is the value the attempt
//! sees for it from then on.
//!
//! ```no_run
//! use jobbox_sdk::{JobError, kv};
//!
//! fn bump(key: &str) -> Result<u64, JobError> {
//!     let current = match kv::get(key)? {
//!         Some(bytes) => std::str::from_utf8(&bytes)
//!             .ok()
//!             .and_then(|text| text.parse::<u64>().ok())
//!             .ok_or_else(|| JobError::permanent(format!("{key}: not a number")))?,
//!         None => 0,
//!     };
//!     kv::set(key, (current + 1).to_string().as_bytes())?;
//!     Ok(current + 1)
//! }
//! ```

use crate::JobError;
use crate::bindings::jobbox::plugin::kv as raw;

/// Why a kv call failed.
///
/// `Display` renders it as its debug form, such as
/// `KvError::Denied("...")`.
///
/// - `Denied`: the plugin was not granted kv access.
/// - `TooLarge`: a key, a value or the attempt's writes are over the host's
///   limits.
/// - `Unavailable`: the host's store failed; the attempt may be retried.
pub use crate::bindings::jobbox::plugin::kv::KvError;

/// The value of `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    raw::get(key)
}

/// Sets `key` to `value`.
pub fn set(key: &str, value: &[u8]) -> Result<(), KvError> {
    raw::set(key, value)
}

/// Removes `key`; removing an absent key is not an error.
pub fn delete(key: &str) -> Result<(), KvError> {
    raw::delete(key)
}

/// If the value of `key` is `expected` (`None`: the key is absent), sets it
/// to `new` (`None`: deletes it) and returns `true`; else changes nothing
/// and returns `false`.
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    new: Option<&[u8]>,
) -> Result<bool, KvError> {
    raw::compare_and_swap(key, expected, new)
}

/// The entries whose key starts with `prefix`, in key order, at most
/// `limit` of them.
pub fn list_prefix(prefix: &str, limit: u32) -> Result<Vec<(String, Vec<u8>)>, KvError> {
    raw::list_prefix(prefix, limit)
}

/// The value of `key` as UTF-8 text, if any. A value that is not UTF-8 is
/// returned with its invalid sequences replaced by U+FFFD.
pub fn get_string(key: &str) -> Result<Option<String>, KvError> {
    Ok(get(key)?.map(|bytes| match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }))
}

/// Sets `key` to the UTF-8 bytes of `value`.
pub fn set_string(key: &str, value: &str) -> Result<(), KvError> {
    set(key, value.as_bytes())
}

impl KvError {
    /// Whether the failure is transient: only [`KvError::Unavailable`] is.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<KvError> for JobError {
    /// A retryable error for [`KvError::Unavailable`], a permanent one for
    /// [`KvError::Denied`] and [`KvError::TooLarge`]; the message starts
    /// with `kv:`.
    fn from(error: KvError) -> Self {
        match error {
            KvError::Unavailable(message) => Self::retryable(format!("kv: unavailable: {message}")),
            KvError::Denied(message) => Self::permanent(format!("kv: denied: {message}")),
            KvError::TooLarge(message) => Self::permanent(format!("kv: too large: {message}")),
        }
    }
}
