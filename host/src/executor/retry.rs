//! The retry decision: where a finished attempt moves its job.

use std::time::Duration;

use crate::job::{AttemptOutcome, Transition};
use crate::policy::RetryPolicy;
use crate::sandbox::RunError;
use crate::time::Timestamp;

impl RetryPolicy {
    /// The delay before the attempt after `attempt` (1-based):
    /// `min(max, base * 2^(attempt-1))` plus up to `jitter` of it at random.
    /// A plugin's `retry_after` replaces the exponential part, still capped
    /// at `max`, and gets no jitter (the plugin asked for that time).
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max);
        }
        let delay = 2u32
            .checked_pow(attempt.saturating_sub(1))
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max, |d| d.min(self.max));
        delay + delay.mul_f64(self.jitter * fastrand::f64())
    }

    /// The transition for a failed attempt: retry with backoff while
    /// attempts remain, else discard.
    pub fn after_failure(
        &self,
        attempt: u32,
        max_attempts: u32,
        error: String,
        retry_after: Option<Duration>,
        now: Timestamp,
    ) -> Transition {
        if attempt >= max_attempts {
            Transition::Discard {
                error: format!("{error} (attempt {attempt} of {max_attempts}; giving up)"),
            }
        } else {
            Transition::Retry {
                run_at: now.plus(self.backoff(attempt, retry_after)),
                error,
            }
        }
    }

    /// The outcome and transition for a run's result. `Cancelled` is not
    /// decided here: it depends on why the attempt was cancelled.
    pub fn decide(
        &self,
        attempt: u32,
        max_attempts: u32,
        result: &Result<String, RunError>,
        now: Timestamp,
    ) -> (AttemptOutcome, Transition) {
        let err = match result {
            Ok(output) => {
                return (
                    AttemptOutcome::Completed,
                    Transition::Complete {
                        output: output.clone(),
                    },
                );
            }
            Err(e) => e,
        };
        let outcome = match err {
            RunError::Permanent(msg) => {
                return (
                    AttemptOutcome::PermanentError,
                    Transition::Discard { error: msg.clone() },
                );
            }
            RunError::OutputTooLarge { .. } => {
                return (
                    AttemptOutcome::OutputTooLarge,
                    Transition::Discard {
                        error: err.to_string(),
                    },
                );
            }
            RunError::Retryable { .. } => AttemptOutcome::RetryableError,
            RunError::Trap(_) => AttemptOutcome::Trap,
            RunError::OutOfFuel(_) => AttemptOutcome::OutOfFuel,
            RunError::Timeout(_) => AttemptOutcome::Timeout,
            RunError::MemoryLimit(_) => AttemptOutcome::MemoryLimit,
            RunError::Cancelled => AttemptOutcome::Cancelled,
        };
        let retry_after = match err {
            RunError::Retryable { retry_after, .. } => *retry_after,
            _ => None,
        };
        let transition =
            self.after_failure(attempt, max_attempts, err.to_string(), retry_after, now);
        (outcome, transition)
    }
}
