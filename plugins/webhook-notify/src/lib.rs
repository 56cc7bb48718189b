//! Example jobbox plugin `webhook-notify`: POSTs an event as JSON to a
//! webhook.
//!
//! The payload names the receiver and the event, which may be any JSON
//! value but `null`:
//!
//! ```json
//! {"url": "http://127.0.0.1:9000/hooks/orders", "event": {"order": 42, "state": "shipped"}}
//! ```
//!
//! The plugin sends `event`, serialised once as compact JSON, as the body of
//! a `POST` to `url` with `content-type: application/json`, over
//! `wasi:http/outgoing-handler`. The host allows only the destinations in the
//! plugin's `http_allow` config, and it adds the job's `Idempotency-Key`
//! header itself, the same on every attempt, so the receiver can recognise a
//! retry; the plugin need not.
//!
//! What the receiver answers decides the outcome:
//!
//! - 2xx, or 409 Conflict (the receiver already has this event): success,
//!   with the output `{"status": N}`;
//! - 408, 429 or 5xx: a retryable error; a `Retry-After` header in seconds
//!   asks the host to wait that long before the next attempt;
//! - any other status: a permanent error `receiver refused: HTTP <status>`
//!   (redirects are not followed);
//! - no answer at all (the host denied the request, the connection failed or
//!   timed out, ...): a retryable error whose message includes the
//!   `wasi:http` error code, such as `HttpRequestDenied`.
//!
//! Invalid input (malformed JSON, a missing `url` or `event`, a URL that is
//! not `http://` or `https://`, an unknown field) is a permanent error that
//! names the field.

use jobbox_sdk::{Guest, Job, JobError, Output, http, log};
use serde::Deserialize;
use serde_json::{Value, json};

/// The plugin; it holds no state, as every attempt runs in a fresh instance.
struct WebhookNotify;

/// The job's payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    /// The receiver.
    url: String,
    /// What to send it.
    event: Value,
}

impl Guest for WebhookNotify {
    fn run(job: Job) -> Result<Output, JobError> {
        let payload = parse(&job.payload)
            .map_err(|message| JobError::permanent(format!("invalid webhook: {message}")))?;
        let body = payload.event.to_string();
        let response = http::request(
            "POST",
            &payload.url,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .map_err(|e| JobError::retryable(format!("POST {} failed: {e}", payload.url)))?;
        log::info(&format!(
            "webhook-notify: POST {} answered HTTP {} (attempt {})",
            payload.url, response.status, job.attempt
        ));
        let status = outcome(response.status, response.header("retry-after"))?;
        Ok(Output::new(json!({ "status": status }).to_string()))
    }
}

jobbox_sdk::export!(WebhookNotify);

/// Parses and validates the payload, or says what is wrong with it, naming
/// the field.
fn parse(payload: &str) -> Result<Payload, String> {
    // Serde's messages name a missing or unknown field, and the line and
    // column of a mistyped one.
    let payload: Payload = serde_json::from_str(payload).map_err(|e| format!("payload: {e}"))?;
    let scheme_ok = ["http://", "https://"].iter().any(|scheme| {
        payload
            .url
            .get(..scheme.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(scheme))
    });
    if !scheme_ok {
        return Err(format!(
            "url: expected an http:// or https:// URL, got {:?}",
            payload.url
        ));
    }
    if payload.event.is_null() {
        return Err("event: must not be null".to_owned());
    }
    Ok(payload)
}

/// What the receiver's `status` (and `Retry-After` header, if any) means
/// for the job: the status on success, else the error to return.
fn outcome(status: u16, retry_after: Option<&[u8]>) -> Result<u16, JobError> {
    match status {
        200..=299 | 409 => Ok(status),
        408 | 429 | 500..=599 => {
            let message = format!("receiver unavailable: HTTP {status}");
            Err(match retry_after.and_then(retry_after_ms) {
                Some(ms) => JobError::retry_after(message, ms),
                None => JobError::retryable(message),
            })
        }
        _ => Err(JobError::permanent(format!(
            "receiver refused: HTTP {status}"
        ))),
    }
}

/// A `Retry-After` value in whole seconds, as milliseconds. The other form,
/// an HTTP date, is ignored: the host's backoff applies instead.
fn retry_after_ms(value: &[u8]) -> Option<u64> {
    let seconds: u64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    Some(seconds.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The retry-after of a retryable error, or `None` for any other result.
    fn retryable(result: Result<u16, JobError>) -> Option<Option<u64>> {
        match result {
            Err(JobError::Retryable(error)) => Some(error.retry_after_ms),
            _ => None,
        }
    }

    #[test]
    fn success_and_conflict_are_done() {
        for status in [200, 201, 204, 299, 409] {
            assert!(matches!(outcome(status, None), Ok(s) if s == status));
        }
    }

    #[test]
    fn overload_and_server_errors_are_retried_honouring_retry_after() {
        assert_eq!(retryable(outcome(503, None)), Some(None));
        assert_eq!(retryable(outcome(429, Some(b" 7 "))), Some(Some(7000)));
        assert_eq!(retryable(outcome(408, Some(b"soon"))), Some(None));
        assert_eq!(
            retryable(outcome(500, Some(b"Wed, 21 Oct 2015 07:28:00 GMT"))),
            Some(None)
        );
    }

    #[test]
    fn other_statuses_are_refusals() {
        for status in [301, 400, 401, 404, 410, 422] {
            match outcome(status, None) {
                Err(JobError::Permanent(message)) => {
                    assert_eq!(message, format!("receiver refused: HTTP {status}"));
                }
                other => panic!("HTTP {status}: {other:?}"),
            }
        }
    }

    #[test]
    fn validates_the_payload() {
        let ok = parse(r#"{"url":"HTTP://x/y","event":{"a":[1,2]}}"#).unwrap();
        assert_eq!(ok.event.to_string(), r#"{"a":[1,2]}"#);
        let cases = [
            (r#"{"url":"http://x"}"#, "missing field `event`"),
            (r#"{"event":1}"#, "missing field `url`"),
            (r#"{"url":"ftp://x","event":1}"#, "url: expected an http://"),
            (
                r#"{"url":"http://x","event":null}"#,
                "event: must not be null",
            ),
            (
                r#"{"url":"http://x","event":1,"extra":2}"#,
                "unknown field `extra`",
            ),
            ("nope", "payload:"),
        ];
        for (payload, expected) in cases {
            let error = parse(payload).err().unwrap_or_default();
            assert!(error.contains(expected), "{payload}: {error}");
        }
    }
}
