//! `jobbox plugins new`: a new plugin project, in Rust or Python, with a
//! build command and a test file that passes.
//!
//! A Rust project depends on the SDK by path (the SDK is not published):
//! the one in this repository by default, or `--sdk`. It gets this
//! repository's plugin lockfile, so it builds with the versions jobbox is
//! tested with. A Python project carries its own copy of the WIT, so it
//! builds anywhere componentize-py is installed.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::plugins::validate_kind;

/// The language of a new plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
}

/// The SDK in the repository this binary was built from.
const REPO_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/sdk");

/// The world plugins implement, as this binary implements it.
const WIT: &str = include_str!("../../wit/plugin.wit");

/// The plugin workspace's lockfile: the versions jobbox is tested with.
const PLUGINS_LOCK: &str = include_str!("../../plugins/Cargo.lock");

/// What was made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scaffold {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// The commands that build the component and run its tests.
    pub build: String,
    pub test: String,
}

/// Creates `<parent>/<name>` with a plugin project. Nothing is written if
/// the directory exists (even empty), or the name is not a valid kind.
pub fn new_plugin(
    name: &str,
    lang: Lang,
    parent: &Path,
    sdk: Option<&Path>,
) -> anyhow::Result<Scaffold> {
    validate_kind(name).map_err(anyhow::Error::msg)?;
    if name.contains('.') {
        anyhow::bail!("invalid plugin name {name:?}: a project name cannot contain '.'");
    }
    let dir = parent.join(name);
    if dir.exists() {
        anyhow::bail!(
            "{} already exists: choose another name or --dir",
            dir.display()
        );
    }
    let files = match lang {
        Lang::Rust => rust_files(name, sdk)?,
        Lang::Python => python_files(name),
    };
    // Write into a temporary directory beside the target, then rename: a
    // failure leaves nothing half-made.
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .tempdir_in(parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    for (path, text) in &files {
        let full = tmp.path().join(path);
        if let Some(p) = full.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(&full, text).with_context(|| format!("writing {}", full.display()))?;
        if path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    let made = tmp.keep();
    std::fs::rename(&made, &dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&made);
        anyhow::anyhow!("cannot create {}: {e}", dir.display())
    })?;
    let (build, test) = match lang {
        Lang::Rust => (
            format!(
                "cd {} && cargo build --release --target wasm32-wasip2",
                dir.display()
            ),
            format!("jobbox plugins test {}/{name}.tests.toml", dir.display()),
        ),
        Lang::Python => (
            format!("cd {} && ./build.sh", dir.display()),
            format!("jobbox plugins test {}/{name}.tests.toml", dir.display()),
        ),
    };
    Ok(Scaffold {
        files: files.iter().map(|(p, _)| dir.join(p)).collect(),
        dir,
        build,
        test,
    })
}

fn rust_files(name: &str, sdk: Option<&Path>) -> anyhow::Result<Vec<(String, String)>> {
    let sdk = match sdk {
        Some(p) => p.to_owned(),
        None => PathBuf::from(REPO_SDK),
    };
    let sdk = std::fs::canonicalize(&sdk).map_err(|_| {
        anyhow::anyhow!(
            "the plugin SDK is not at {}: pass --sdk with the path of jobbox's plugins/sdk",
            sdk.display()
        )
    })?;
    if !sdk.join("Cargo.toml").exists() {
        anyhow::bail!("{} is not the plugin SDK (no Cargo.toml)", sdk.display());
    }
    let artifact = format!("{}.wasm", name.replace('-', "_"));
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
jobbox-sdk = {{ path = {sdk:?}, features = ["json"] }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

# A plugin is a workspace of its own.
[workspace]

[profile.release]
# The host compiles plugins at start-up (and caches them): keep them small.
opt-level = "s"
strip = "debuginfo"
panic = "abort"
"#,
        sdk = sdk.display().to_string()
    );
    let lib = format!(
        r#"//! jobbox plugin `{name}`: greets whoever the payload names.
//!
//! Payload: {{"name": "Ada"}}. Output: {{"greeting": "Hello, Ada!"}}. A
//! payload without `name` is a permanent error naming the field.

use jobbox_sdk::{{JobError, JobOf, Output, TypedGuest, log}};
use serde::Deserialize;
use serde_json::json;

struct Plugin;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {{
    name: String,
}}

impl TypedGuest for Plugin {{
    type Payload = Payload;

    fn run(job: JobOf<Payload>) -> Result<Output, JobError> {{
        log::info(&format!(
            "greeting {{}} (key {{}}, attempt {{}})",
            job.payload.name, job.idempotency_key, job.attempt
        ));
        Ok(Output::json(&json!({{ "greeting": format!("Hello, {{}}!", job.payload.name) }})))
    }}
}}

jobbox_sdk::export_typed!(Plugin);
"#
    );
    let tests = tests_file(
        name,
        "the build",
        &format!("target/wasm32-wasip2/release/{artifact}"),
    );
    let readme = format!(
        r#"# {name}

A jobbox plugin. Build the component, then run its tests:

    cargo build --release --target wasm32-wasip2
    jobbox plugins test {name}.tests.toml

Install it by copying `target/wasm32-wasip2/release/{artifact}` to
`<plugins_dir>/{name}.wasm` (write it beside, then rename: the host watches
the folder and loads it for new attempts).

To test from `cargo test` too, add `jobbox-testing` (the `testing` crate of
the jobbox repository) as a dev-dependency; see its documentation.
"#
    );
    Ok(vec![
        ("Cargo.toml".into(), cargo),
        ("Cargo.lock".into(), PLUGINS_LOCK.to_owned()),
        ("src/lib.rs".into(), lib),
        (format!("{name}.tests.toml"), tests),
        ("README.md".into(), readme),
        // `plugins test` caches compiled components beside its database.
        (".gitignore".into(), "/target\n/jobbox-cache\n".into()),
    ])
}

fn python_files(name: &str) -> Vec<(String, String)> {
    let app = format!(
        r#""""jobbox plugin `{name}`: greets whoever the payload names.

Payload: {{"name": "Ada"}}. Output: {{"greeting": "Hello, Ada!"}}. A payload
without `name` is a permanent error naming the field.
"""

import json

from componentize_py_types import Err
from wit_world import WitWorld
from wit_world.imports import log
from wit_world.imports.types import Job, JobError_Permanent, Output


class WitWorld(WitWorld):
    def run(self, job: Job) -> Output:
        try:
            payload = json.loads(job.payload)
        except ValueError as e:
            raise Err(JobError_Permanent(f"payload: {{e}}"))
        name = payload.get("name") if isinstance(payload, dict) else None
        if not isinstance(name, str):
            raise Err(JobError_Permanent("name: expected a string"))
        log.log(log.Level.INFO, f"greeting {{name}} (key {{job.idempotency_key}}, attempt {{job.attempt}})")
        return Output(json.dumps({{"greeting": f"Hello, {{name}}!"}}))
"#
    );
    let build = format!(
        r#"#!/usr/bin/env bash
# Builds {name}.wasm with componentize-py (pip install componentize-py==0.25.1).
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
here=$(pwd)
(cd "$work" && componentize-py -q -d "$here/wit" -w plugin componentize app -p "$here" -o "$work/{name}.wasm")
mv "$work/{name}.wasm" "{name}.wasm"
echo "built {name}.wasm"
"#
    );
    let tests = tests_file(name, "./build.sh", &format!("{name}.wasm"));
    let readme = format!(
        r#"# {name}

A jobbox plugin in Python, built with componentize-py against the WIT in
`wit/`:

    pip install componentize-py==0.25.1
    ./build.sh
    jobbox plugins test {name}.tests.toml

Install it by copying `{name}.wasm` to `<plugins_dir>/{name}.wasm` (write it
beside, then rename).
"#
    );
    vec![
        ("app.py".into(), app),
        ("build.sh".into(), build),
        ("wit/plugin.wit".into(), WIT.to_owned()),
        (format!("{name}.tests.toml"), tests),
        ("README.md".into(), readme),
        (
            ".gitignore".into(),
            format!("/{name}.wasm\n/jobbox-cache\n"),
        ),
    ]
}

/// The test file of a new project: the plugin greets by name, and refuses a
/// payload without one. Both languages' templates do the same.
fn tests_file(name: &str, after: &str, component: &str) -> String {
    format!(
        r#"# Tests for the {name} plugin, run in the host's sandbox with no database or
# network: `jobbox plugins test {name}.tests.toml` (after {after}).
component = "{component}"

[[case]]
name = "greets by name"
payload = {{ name = "Ada" }}
expect.output = {{ greeting = "Hello, Ada!" }}
expect.logs = ["greeting Ada"]

[[case]]
name = "a payload without a name is refused for good"
payload = {{ nom = "Ada" }}
expect.outcome = "permanent"
expect.error_contains = "name"
"#
    )
}
