//! Test jobbox plugin `http-call`: makes HTTP requests over `wasi:http` and
//! reports the responses.
//!
//! The payload
//!
//! ```json
//! {"url": "http://127.0.0.1:8080/x", "method": "POST", "body": "text", "times": 2}
//! ```
//!
//! sends `times` (default 1) identical requests one after the other:
//! `method` (default `GET`) to `url`, with `body` (default empty) as the
//! request body and no headers but the `content-length` of a non-empty body.
//! The output lists each response's status and body (as UTF-8, invalid
//! sequences replaced):
//!
//! ```json
//! {"statuses": [200, 200], "bodies": ["ok", "ok"]}
//! ```
//!
//! Any status is a response. A request that gets none (denied by the host's
//! `http_allow`, refused, timed out, ...) is a retryable error whose message
//! contains the `wasi:http` error code, such as
//! `request 1 of 2 failed: HttpRequestDenied`.

use jobbox_sdk::{Guest, Job, JobError, Output, http};
use serde::Deserialize;
use serde_json::json;

/// The plugin.
struct HttpCall;

/// The job's payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    url: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    body: String,
    #[serde(default = "one")]
    times: u32,
}

/// The default method.
fn get() -> String {
    "GET".to_owned()
}

/// The default number of requests.
fn one() -> u32 {
    1
}

impl Guest for HttpCall {
    fn run(job: Job) -> Result<Output, JobError> {
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::permanent(format!("invalid payload: {e}")))?;
        let mut statuses = Vec::new();
        let mut bodies = Vec::new();
        for i in 1..=payload.times {
            let response =
                http::request(&payload.method, &payload.url, &[], payload.body.as_bytes())
                    .map_err(|e| {
                        JobError::retryable(format!("request {i} of {} failed: {e}", payload.times))
                    })?;
            statuses.push(response.status);
            bodies.push(String::from_utf8_lossy(&response.body).into_owned());
        }
        Ok(Output::json(
            &json!({ "statuses": statuses, "bodies": bodies }),
        ))
    }
}

jobbox_sdk::export!(HttpCall);
