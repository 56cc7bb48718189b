//! What a job must pass before it is enqueued, whoever enqueues it (the
//! library, `jobbox enqueue`, a schedule, the API): its own fields (key,
//! queue, concurrency key), its callback URL, and its kind's `max_payload`.
//! Nothing is written for a batch with any job refused.

use serde::Deserialize;

use crate::job::{InvalidField, NewJob, canonical_json};
use crate::plugins::PluginSettings;
use crate::sandbox::HttpRule;
use crate::time::Timestamp;

/// A job as a client submits it: a JSON object of the API's `POST
/// /api/jobs`, or a line of `jobbox enqueue --batch`. Unknown fields are
/// refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    kind: String,
    /// Any JSON; `{}` if left out.
    #[serde(default)]
    payload: Option<serde_json::Value>,
    queue: Option<String>,
    priority: Option<i32>,
    idempotency_key: Option<String>,
    /// Not before this time (RFC 3339).
    run_at: Option<String>,
    /// Not before this long from now (e.g. "30s").
    delay: Option<String>,
    max_attempts: Option<u32>,
    callback_url: Option<String>,
    concurrency_key: Option<String>,
    concurrency_limit: Option<u32>,
}

impl JobSpec {
    /// The job, `run_at` and `delay` resolved against `now`.
    pub fn into_job(self, now: Timestamp) -> Result<NewJob, String> {
        let payload = self
            .payload
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        let run_at = match (&self.run_at, &self.delay) {
            (Some(_), Some(_)) => return Err("give either run_at or delay, not both".into()),
            (Some(t), None) => {
                Some(Timestamp::parse_rfc3339(t).map_err(|e| format!("run_at: {e}"))?)
            }
            (None, Some(d)) => {
                Some(now.plus(crate::time::parse_duration(d).map_err(|e| format!("delay: {e}"))?))
            }
            (None, None) => None,
        };
        Ok(NewJob {
            kind: self.kind,
            queue: self
                .queue
                .unwrap_or_else(|| crate::job::DEFAULT_QUEUE.to_owned()),
            payload: canonical_json(&payload.to_string())?,
            idempotency_key: self.idempotency_key,
            priority: self.priority.unwrap_or(0),
            run_at,
            max_attempts: self.max_attempts,
            callback_url: self.callback_url,
            concurrency_key: self.concurrency_key,
            concurrency_limit: self.concurrency_limit,
            schedule_id: None,
        })
    }
}

/// A job as a client wrote it in JSON (an item of `POST /api/jobs`, a line
/// of `jobbox enqueue --batch`): deserialized strictly, resolved against
/// `now` and [`prepare`]d with its kind's settings. The error is one line
/// that names the field.
pub fn from_json<'de, 'a, D: serde::Deserializer<'de>>(
    de: D,
    now: Timestamp,
    settings: impl Fn(&str) -> &'a PluginSettings,
    callback_allow: &[HttpRule],
) -> Result<NewJob, String> {
    let spec: JobSpec = serde_path_to_error::deserialize(de).map_err(crate::job::field_error)?;
    let mut job = spec.into_job(now)?;
    let settings = settings(&job.kind);
    prepare(&mut job, settings, callback_allow).map_err(|e| e.to_string())?;
    Ok(job)
}

/// The first job of a batch that reuses an earlier job's idempotency key
/// for a different job, as `(earlier, later)` indexes. (The same job twice
/// under one key is fine: both get the one id.) Without this, the store
/// would refuse the later one as a conflict with a job that the refusal
/// itself rolls back.
pub fn key_clash(jobs: &[NewJob]) -> Option<(usize, usize)> {
    let mut seen = std::collections::HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        let Some(key) = job.idempotency_key.as_deref() else {
            continue;
        };
        if let Some(&first) = seen.get(key) {
            let a: &NewJob = &jobs[first];
            let same = a.kind == job.kind
                && a.payload == job.payload
                && a.callback_url == job.callback_url
                && a.concurrency_key == job.concurrency_key;
            if !same {
                return Some((first, i));
            }
        } else {
            seen.insert(key, i);
        }
    }
    None
}

/// Checks `job` against `settings` (its kind's) and fills in what enqueue
/// left to the configuration (`max_attempts`). The error is one line.
pub fn prepare(
    job: &mut NewJob,
    settings: &PluginSettings,
    callback_allow: &[HttpRule],
) -> Result<(), InvalidField> {
    crate::plugins::validate_kind(&job.kind).map_err(|e| InvalidField::new("kind", e))?;
    job.validate()?;
    if let Some(url) = &job.callback_url {
        crate::outbox::check_callback(url, callback_allow)
            .map_err(|e| InvalidField::new("callback_url", e))?;
    }
    check_payload(&job.kind, &job.payload, settings)
        .map_err(|e| InvalidField::new("payload", e))?;
    job.max_attempts.get_or_insert(settings.retry.max_attempts);
    Ok(())
}

/// Refuses a payload larger than the kind's `max_payload`.
pub fn check_payload(kind: &str, payload: &str, settings: &PluginSettings) -> Result<(), String> {
    if payload.len() > settings.max_payload {
        return Err(format!(
            "payload of {} is over the limit of {} for kind {kind:?} (max_payload)",
            size(payload.len()),
            size(settings.max_payload)
        ));
    }
    Ok(())
}

/// A byte count for people: `512 B`, `1.5 KiB`, `2.0 MiB`.
pub fn size(bytes: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reused_in_one_batch_for_a_different_job_is_named() {
        let keyed = |payload: &str, key: &str| NewJob {
            idempotency_key: Some(key.into()),
            ..NewJob::new("echo", payload).unwrap()
        };
        let same = [keyed("{}", "a"), keyed("{}", "b"), keyed("{}", "a")];
        assert_eq!(key_clash(&same), None);
        let clash = [
            keyed("{}", "a"),
            NewJob::new("echo", "{}").unwrap(),
            keyed("{\"x\":1}", "a"),
        ];
        assert_eq!(key_clash(&clash), Some((0, 2)));
    }

    #[test]
    fn payloads_over_the_limit_are_refused_with_both_sizes() {
        let settings = PluginSettings {
            max_payload: 1024,
            ..PluginSettings::default()
        };
        let mut ok = NewJob::new("echo", "{}").unwrap();
        prepare(&mut ok, &settings, &[]).unwrap();
        assert_eq!(ok.max_attempts, Some(settings.retry.max_attempts));
        let big = format!("{{\"x\": \"{}\"}}", "a".repeat(2000));
        let mut job = NewJob::new("echo", &big).unwrap();
        let err = prepare(&mut job, &settings, &[]).unwrap_err();
        assert_eq!(err.field, "payload");
        assert_eq!(
            err.message,
            "payload of 2.0 KiB is over the limit of 1.0 KiB for kind \"echo\" (max_payload)"
        );
        let mut bad = NewJob {
            callback_url: Some("ftp://x".into()),
            ..NewJob::new("echo", "{}").unwrap()
        };
        assert_eq!(
            prepare(&mut bad, &settings, &[]).unwrap_err().field,
            "callback_url"
        );
        let mut reserved = NewJob {
            idempotency_key: Some("schedule:x:1".into()),
            ..NewJob::new("echo", "{}").unwrap()
        };
        assert!(
            prepare(&mut reserved, &settings, &[])
                .unwrap_err()
                .message
                .contains("reserved")
        );
    }
}
