//! What a job must pass before it is enqueued, whoever enqueues it (the
//! library, `jobbox enqueue`, a schedule, the API): its own fields (key,
//! queue, concurrency key), its callback URL, and its kind's `max_payload`.
//! Nothing is written for a batch with any job refused.

use crate::job::{InvalidField, NewJob};
use crate::plugins::PluginSettings;
use crate::sandbox::HttpRule;

/// Checks `job` against `settings` (its kind's) and fills in what enqueue
/// left to the configuration (`max_attempts`). The error is one line.
pub fn prepare(job: &mut NewJob, settings: &PluginSettings) -> Result<(), InvalidField> {
    crate::plugins::validate_kind(&job.kind).map_err(|e| InvalidField::new("kind", e))?;
    job.validate()?;
    if let Some(url) = &job.callback_url {
        HttpRule::parse(url, None).map_err(|e| InvalidField::new("callback_url", e))?;
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
    fn payloads_over_the_limit_are_refused_with_both_sizes() {
        let settings = PluginSettings {
            max_payload: 1024,
            ..PluginSettings::default()
        };
        let mut ok = NewJob::new("echo", "{}").unwrap();
        prepare(&mut ok, &settings).unwrap();
        assert_eq!(ok.max_attempts, Some(settings.retry.max_attempts));
        let big = format!("{{\"x\": \"{}\"}}", "a".repeat(2000));
        let mut job = NewJob::new("echo", &big).unwrap();
        let err = prepare(&mut job, &settings).unwrap_err();
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
            prepare(&mut bad, &settings).unwrap_err().field,
            "callback_url"
        );
        let mut reserved = NewJob {
            idempotency_key: Some("schedule:x:1".into()),
            ..NewJob::new("echo", "{}").unwrap()
        };
        assert!(
            prepare(&mut reserved, &settings)
                .unwrap_err()
                .message
                .contains("reserved")
        );
    }
}
