//! Checking a run against a case's expectations, with a readable diff for
//! each part that differs.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::case::unmatched;
use super::{Summary, TestCase};
use crate::sandbox::Blob;

/// One expectation a run did not meet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Which part: `outcome`, `output`, `kv_writes`, `http`, ...
    pub what: String,
    pub message: String,
    /// Expected against actual, line by line (`-` expected, `+` actual).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

impl Failure {
    pub fn new(what: &str, message: impl Into<String>) -> Failure {
        Failure {
            what: what.to_owned(),
            message: message.into(),
            diff: None,
        }
    }

    fn with_diff(
        what: &str,
        message: impl Into<String>,
        expected: &Value,
        actual: &Value,
    ) -> Failure {
        Failure {
            what: what.to_owned(),
            message: message.into(),
            diff: Some(diff(&pretty(expected), &pretty(actual))),
        }
    }
}

impl std::fmt::Display for Failure {
    /// `what: message`, then the diff's lines indented by two; the
    /// formatter's width indents the whole (`{:8}`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let indent = " ".repeat(f.width().unwrap_or(0));
        write!(f, "{indent}{}: {}", self.what, self.message)?;
        for line in self.diff.iter().flat_map(|d| d.lines()) {
            write!(f, "\n{indent}  {line}")?;
        }
        Ok(())
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A line diff of `expected` against `actual`: unchanged lines indented,
/// missing ones marked `-`, unexpected ones `+`.
pub fn diff(expected: &str, actual: &str) -> String {
    let d = similar::TextDiff::from_lines(expected, actual);
    let mut out = String::new();
    for change in d.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "- ",
            similar::ChangeTag::Insert => "+ ",
            similar::ChangeTag::Equal => "  ",
        };
        out.push_str(sign);
        out.push_str(change.value().trim_end_matches('\n'));
        out.push('\n');
    }
    out
}

/// True if `actual` has everything `expected` has: every key of an
/// expected object (recursively), every element of an expected array (same
/// length, element by element), and equal scalars.
pub fn json_contains(expected: &Value, actual: &Value) -> bool {
    first_difference(expected, actual, "$").is_none()
}

/// Where `actual` first lacks what `expected` has, as a JSON path and a
/// reason.
fn first_difference(expected: &Value, actual: &Value, path: &str) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().find_map(|(k, ev)| match a.get(k) {
            None => Some(format!("{path}.{k} is missing")),
            Some(av) => first_difference(ev, av, &format!("{path}.{k}")),
        }),
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Some(format!(
                    "{path} has {} elements, expected {}",
                    a.len(),
                    e.len()
                ));
            }
            e.iter()
                .zip(a)
                .enumerate()
                .find_map(|(i, (ev, av))| first_difference(ev, av, &format!("{path}[{i}]")))
        }
        // 5 and 5.0 are the same number to a test author.
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => None,
        (e, a) if e == a => None,
        (e, a) => Some(format!("{path} is {a}, expected {e}")),
    }
}

/// The output as JSON (a string if it is not JSON).
fn output_value(s: &Summary) -> Value {
    match &s.output {
        Some(text) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone())),
        None => Value::Null,
    }
}

fn blobs(map: &BTreeMap<String, Blob>) -> Value {
    serde_json::to_value(map).unwrap_or(Value::Null)
}

/// Every expectation of `case` that `run` did not meet (empty: passed).
pub fn check(case: &TestCase, run: &Summary) -> Vec<Failure> {
    let e = &case.expect;
    let mut failures = Vec::new();

    let want = e.outcome.as_deref().unwrap_or("ok");
    if run.outcome != want {
        let got = match &run.error {
            Some(err) => format!("{} ({err})", run.outcome),
            None => run.outcome.clone(),
        };
        failures.push(Failure::new(
            "outcome",
            format!("expected {want}, got {got}"),
        ));
    }
    if let Some(needle) = &e.error_contains {
        match &run.error {
            Some(err) if err.contains(needle.as_str()) => {}
            Some(err) => failures.push(Failure::new(
                "error",
                format!("expected an error containing {needle:?}, got {err:?}"),
            )),
            None => failures.push(Failure::new(
                "error",
                format!("expected an error containing {needle:?}, but the run succeeded"),
            )),
        }
    }

    let output = output_value(run);
    let exact = e.output.clone().or_else(|| {
        e.output_json
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
    });
    if let Some(want) = &exact
        && !(json_contains(want, &output) && json_contains(&output, want))
    {
        failures.push(Failure::with_diff(
            "output",
            "the output differs",
            want,
            &output,
        ));
    }
    if let Some(want) = &e.output_contains
        && let Some(why) = first_difference(want, &output, "$")
    {
        failures.push(Failure::with_diff(
            "output",
            format!("the output does not contain what was expected: {why}"),
            want,
            &output,
        ));
    }

    let written: BTreeMap<String, Blob> = run
        .kv_writes
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect();
    if let Some(want) = &e.kv_writes
        && *want != written
    {
        failures.push(Failure::with_diff(
            "kv_writes",
            "the kv writes differ",
            &blobs(want),
            &blobs(&written),
        ));
    }
    let deleted: Vec<String> = run
        .kv_writes
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k.clone())
        .collect();
    if let Some(want) = &e.kv_deleted {
        let mut want = want.clone();
        want.sort();
        if want != deleted {
            failures.push(Failure::with_diff(
                "kv_deleted",
                "the kv deletes differ",
                &serde_json::json!(want),
                &serde_json::json!(deleted),
            ));
        }
    }

    if let Some(want) = &e.events {
        let got: Vec<Value> = run
            .events
            .iter()
            .map(|ev| {
                serde_json::json!({
                    "topic": ev.topic,
                    "idempotency_key": ev.idempotency_key,
                    "payload": ev.payload,
                })
            })
            .collect();
        let expected: Vec<Value> = want
            .iter()
            .map(|ev| {
                let mut v = serde_json::json!({ "topic": ev.topic });
                if let Some(k) = &ev.idempotency_key {
                    v["idempotency_key"] = Value::String(k.clone());
                }
                let exact = ev
                    .payload_json
                    .as_deref()
                    .and_then(|t| serde_json::from_str(t).ok());
                if let Some(p) = exact.as_ref().or(ev.payload.as_ref()) {
                    v["payload"] = p.clone();
                }
                v
            })
            .collect();
        let (expected, got) = (Value::Array(expected), Value::Array(got));
        if let Some(why) = first_difference(&expected, &got, "events") {
            failures.push(Failure::with_diff("events", why, &expected, &got));
        }
    }

    for x in run.http.iter().filter(|x| unmatched(x)) {
        let why = x.error.as_deref().unwrap_or_default();
        failures.push(Failure::new("http", format!("a request was denied, {why}")));
    }
    if let Some(want) = &e.http_requests {
        // A request the grants denied never left the sandbox.
        let got: Vec<Value> = run
            .http
            .iter()
            .filter(|x| !x.denied_by_grants())
            .map(|x| {
                let body = x
                    .request_body
                    .as_ref()
                    .map(|b| {
                        serde_json::from_slice(&b.0).unwrap_or_else(|_| Value::String(b.lossy()))
                    })
                    .unwrap_or(Value::Null);
                serde_json::json!({
                    "method": x.method,
                    "url": x.url,
                    "idempotency_key": x.idempotency_key,
                    "body_json": body,
                })
            })
            .collect();
        let expected: Vec<Value> = want
            .iter()
            .map(|r| {
                let mut v = serde_json::json!({ "method": r.method.to_ascii_uppercase(), "url": super::case::normalize(&r.url) });
                if let Some(k) = &r.idempotency_key {
                    v["idempotency_key"] = Value::String(k.clone());
                }
                if let Some(b) = &r.body_json {
                    v["body_json"] = b.clone();
                }
                v
            })
            .collect();
        let (expected, got) = (Value::Array(expected), Value::Array(got));
        if let Some(why) = first_difference(&expected, &got, "http_requests") {
            failures.push(Failure::with_diff("http_requests", why, &expected, &got));
        }
    }

    for needle in &e.logs {
        if !run.logs.iter().any(|l| l.message.contains(needle.as_str())) {
            let lines: Vec<String> = run
                .logs
                .iter()
                .map(|l| format!("  [{}] {}", l.level, l.message))
                .collect();
            failures.push(Failure {
                what: "logs".into(),
                message: format!("no log line contains {needle:?}"),
                diff: Some(if lines.is_empty() {
                    "  (the plugin logged nothing)\n".into()
                } else {
                    lines.join("\n") + "\n"
                }),
            });
        }
    }

    if let Some(max) = e.max_fuel
        && run.fuel_used >= max
    {
        failures.push(Failure::new(
            "fuel",
            format!("used {} fuel, expected less than {max}", run.fuel_used),
        ));
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containment_is_recursive_and_names_the_path() {
        let actual = json!({"a": 1, "b": {"c": [1, 2], "d": "x"}});
        assert!(json_contains(&json!({"b": {"d": "x"}}), &actual));
        assert!(json_contains(&json!({"a": 1.0}), &actual));
        assert_eq!(
            first_difference(&json!({"b": {"c": [1, 3]}}), &actual, "$").unwrap(),
            "$.b.c[1] is 2, expected 3"
        );
        assert_eq!(
            first_difference(&json!({"z": 1}), &actual, "$").unwrap(),
            "$.z is missing"
        );
    }

    #[test]
    fn diffs_mark_expected_and_actual_lines() {
        let d = diff("a\nb\n", "a\nc\n");
        assert_eq!(d, "  a\n- b\n+ c\n");
    }
}
