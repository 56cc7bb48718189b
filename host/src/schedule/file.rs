//! Schedule files: TOML (`[[schedules]]` tables) or JSON (an array of
//! schedules, `{"schedules": [...]}`, or one schedule object).
//!
//! Each entry is read on its own, so an error names the schedule it is in
//! (by id, else by position) and the field. A file with any invalid entry,
//! or two entries with the same id, is refused as a whole.

use std::collections::BTreeSet;
use std::path::Path;

use super::{RawSchedule, ScheduleDef};

/// Why a schedule file was refused. The message is one line.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ScheduleFileError {
    pub message: String,
}

fn fail(message: impl Into<String>) -> ScheduleFileError {
    ScheduleFileError {
        message: message.into(),
    }
}

/// Parses and validates every schedule in `text`. `path` decides the
/// format by its extension (`.toml` or `.json`; anything else is tried as
/// JSON, then TOML).
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<ScheduleDef>, ScheduleFileError> {
    let entries = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => toml_entries(text)?,
        Some("json") => json_entries(text)?,
        _ => match json_entries(text) {
            Ok(entries) => entries,
            Err(json_err) => toml_entries(text).map_err(|toml_err| {
                fail(format!("neither JSON ({json_err}) nor TOML ({toml_err})"))
            })?,
        },
    };
    let mut defs = Vec::with_capacity(entries.len());
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let name = entry
            .get("id")
            .and_then(|v| v.as_str())
            .map(|id| format!("schedule {id:?}"))
            .unwrap_or_else(|| format!("schedule #{} (no id)", i + 1));
        let raw: RawSchedule = match serde_path_to_error::deserialize(&entry) {
            Ok(raw) => raw,
            Err(e) => {
                errors.push(format!("{name}: {}", crate::job::field_error(e)));
                continue;
            }
        };
        if !seen.insert(raw.id.clone()) {
            errors.push(format!("{name}: id: appears more than once in the file"));
            continue;
        }
        match raw.validate() {
            Ok(def) => defs.push(def),
            Err(e) => errors.push(e.to_string()),
        }
    }
    match errors.len() {
        0 => Ok(defs),
        1 => Err(fail(errors.remove(0))),
        n => Err(fail(format!(
            "{} (and {} more invalid schedule{})",
            errors[0],
            n - 1,
            if n == 2 { "" } else { "s" }
        ))),
    }
}

fn json_entries(text: &str) -> Result<Vec<serde_json::Value>, ScheduleFileError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| fail(format!("invalid JSON: {e}")))?;
    match value {
        serde_json::Value::Array(items) => Ok(items),
        serde_json::Value::Object(mut map) if map.contains_key("schedules") => {
            if map.len() > 1 {
                let other = map
                    .keys()
                    .find(|k| *k != "schedules")
                    .cloned()
                    .unwrap_or_default();
                return Err(fail(format!(
                    "unknown top-level field {other:?} (expected only \"schedules\")"
                )));
            }
            match map.remove("schedules") {
                Some(serde_json::Value::Array(items)) => Ok(items),
                _ => Err(fail("\"schedules\" must be an array")),
            }
        }
        obj @ serde_json::Value::Object(_) => Ok(vec![obj]),
        _ => Err(fail("expected a schedule object or an array of them")),
    }
}

fn toml_entries(text: &str) -> Result<Vec<serde_json::Value>, ScheduleFileError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        fail(format!(
            "invalid TOML: {}",
            e.message().trim().replace('\n', " ")
        ))
    })?;
    if let Some(other) = table.keys().find(|k| *k != "schedules") {
        return Err(fail(format!(
            "unknown top-level key {other:?} (expected [[schedules]] tables)"
        )));
    }
    let Some(list) = table.get("schedules") else {
        return Ok(Vec::new());
    };
    let toml::Value::Array(items) = list else {
        return Err(fail("schedules must be an array of tables ([[schedules]])"));
    };
    items
        .iter()
        .map(|item| serde_json::to_value(item).map_err(|e| fail(e.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_give_the_same_schedules() {
        let toml_text = r#"
            [[schedules]]
            id = "nightly"
            cron = "0 3 * * *"
            timezone = "Europe/Berlin"
            kind = "echo"
            payload = { report = "daily" }

            [[schedules]]
            id = "heartbeat"
            every = "30s"
            kind = "echo"
        "#;
        let json_text = r#"{"schedules": [
            {"id": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
             "kind": "echo", "payload": {"report": "daily"}},
            {"id": "heartbeat", "every": "30s", "kind": "echo"}
        ]}"#;
        let a = parse_file(Path::new("s.toml"), toml_text).unwrap();
        let b = parse_file(Path::new("s.json"), json_text).unwrap();
        let specs = |d: &[ScheduleDef]| d.iter().map(ScheduleDef::spec_json).collect::<Vec<_>>();
        assert_eq!(specs(&a), specs(&b));
        let one = parse_file(
            Path::new("s"),
            r#"{"id": "x", "every": "1m", "kind": "echo"}"#,
        )
        .unwrap();
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn errors_name_the_schedule_and_the_field() {
        let e = parse_file(
            Path::new("s.toml"),
            "[[schedules]]\nid = 'a'\nevery = '1m'\nkind = 'echo'\ncronn = 'x'\n",
        )
        .unwrap_err();
        assert!(e.message.starts_with("schedule \"a\": "), "{e}");
        assert!(e.message.contains("cronn"), "{e}");
        let e = parse_file(
            Path::new("s.json"),
            r#"[{"id": "ok", "every": "1m", "kind": "echo"},
                {"id": "bad", "cron": "99 * * * *", "kind": "echo"},
                {"id": "zone", "cron": "0 * * * *", "timezone": "Atlantis/Capital", "kind": "echo"}]"#,
        )
        .unwrap_err();
        assert!(e.message.starts_with("schedule \"bad\": cron: "), "{e}");
        assert!(e.message.ends_with("(and 1 more invalid schedule)"), "{e}");
        let e = parse_file(
            Path::new("s.json"),
            r#"[{"id": "a", "every": "1m", "kind": "echo"}, {"id": "a", "every": "2m", "kind": "echo"}]"#,
        )
        .unwrap_err();
        assert!(e.message.contains("more than once"), "{e}");
        let e = parse_file(Path::new("s.toml"), "[[schedule]]\nid = 'a'\n").unwrap_err();
        assert!(
            e.message.contains("unknown top-level key \"schedule\""),
            "{e}"
        );
    }
}
