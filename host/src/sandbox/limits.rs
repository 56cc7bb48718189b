//! The limits one attempt runs under, and the memory limiter that enforces
//! the memory part of them.

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// What one attempt of a plugin may consume. Each is enforced by the
/// sandbox, not requested of the guest:
///
/// - `fuel`: wasmtime fuel (roughly one unit per wasm instruction). Running
///   out traps the guest with `out_of_fuel`.
/// - `timeout`: wall-clock time from the start of the attempt (just before
///   instantiation). Enforced by epoch
///   interruption (so a guest spinning with no host calls stops) and by an
///   outer timer (so a guest parked in a host call stops); the outcome is
///   `timeout`.
/// - `memory`: total linear memory across all of the instance's memories.
///   A grow past it fails; if the guest then traps (as a Rust guest's
///   allocator does), the attempt's outcome is `memory_limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    pub fuel: u64,
    #[serde(with = "humantime_serde_ms")]
    pub timeout: Duration,
    pub memory: usize,
    /// The largest output, in bytes; a larger one fails the attempt for
    /// good (`output_too_large`) and is not stored.
    pub max_output: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            fuel: 10_000_000_000,
            timeout: Duration::from_secs(30),
            memory: 64 << 20,
            max_output: 1 << 20,
        }
    }
}

/// Serializes a duration as whole milliseconds (`timeout_ms` style).
mod humantime_serde_ms {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// Caps the total linear memory of one store, and remembers whether the cap
/// was hit so that the trap that follows (a guest allocator aborting) is
/// reported as `memory_limit` rather than a generic trap.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: usize,
    used: usize,
    pub(crate) hit: bool,
}

/// Tables may hold at most this many elements (function references).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl MemoryLimiter {
    pub(crate) fn new(limit: usize) -> MemoryLimiter {
        MemoryLimiter {
            limit,
            used: 0,
            hit: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called for every memory, including each one's initial allocation
        // (from 0), so summing the growth gives the store's total.
        let growth = desired.saturating_sub(current);
        match self.used.checked_add(growth) {
            Some(total) if total <= self.limit => {
                self.used = total;
                Ok(true)
            }
            _ => {
                self.hit = true;
                Ok(false)
            }
        }
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
