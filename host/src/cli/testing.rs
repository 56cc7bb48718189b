//! `jobbox plugins test`: run plugins' test files with no database and no
//! network, print a pass/fail table with a diff for each failure.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::testing::{CaseReport, FileReport, Harness, TestFile, run_file};

/// Runs every test file in `paths` (files, or directories of
/// `*.tests.toml`; default: the plugins directory). Fails if any case
/// fails.
pub async fn plugins_test(
    config: &Config,
    paths: Vec<PathBuf>,
    component: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let files = super::plugins::files_named(config, paths, "test (*.tests.toml)", |name| {
        name.ends_with(".tests.toml")
    })?;
    if component.is_some() && files.len() != 1 {
        anyhow::bail!(
            "--component names one component: give exactly one test file (got {})",
            files.len()
        );
    }
    let harness = Harness::new(config.cache_dir())?;
    let mut reports = Vec::new();
    for path in &files {
        let report = match TestFile::read(path) {
            Err(e) => error_report(path, format!("{e:#}")),
            Ok(file) => match file.kind_for(path) {
                Err(e) => error_report(path, e),
                Ok(kind) => {
                    let wasm = component
                        .clone()
                        .unwrap_or_else(|| component_for(config, path, &file, &kind));
                    run_file(&harness, path, &file, &kind, &wasm).await
                }
            },
        };
        if !json {
            print_file(&report)?;
        }
        reports.push(report);
    }
    let cases: usize = reports.iter().map(|r| r.cases.len()).sum();
    let failed: usize = reports
        .iter()
        .map(|r| r.cases.iter().filter(|c| !c.passed).count())
        .sum();
    let broken = reports.iter().filter(|r| r.error.is_some()).count();
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "files": reports,
                "cases": cases,
                "passed": cases - failed,
                "failed": failed,
                "files_not_run": broken,
            }))?
        )?;
    } else {
        outln!(
            "{cases} case{} in {} file{}: {} passed, {failed} failed{}",
            super::plural(cases),
            reports.len(),
            super::plural(reports.len()),
            cases - failed,
            if broken > 0 {
                format!("; {broken} file{} could not run", super::plural(broken))
            } else {
                String::new()
            }
        )?;
    }
    if failed > 0 || broken > 0 {
        anyhow::bail!(
            "{failed} of {cases} cases failed{}",
            if broken > 0 {
                format!(", {broken} test files could not run")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn error_report(path: &Path, error: String) -> FileReport {
    FileReport {
        file: path.to_owned(),
        kind: String::new(),
        component: PathBuf::new(),
        component_hash: String::new(),
        error: Some(error),
        cases: Vec::new(),
    }
}

/// The component a test file tests: its `component` (relative to the
/// file), else `<kind>.wasm` beside it, else in the plugins directory.
fn component_for(config: &Config, path: &Path, file: &TestFile, kind: &str) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Some(c) = &file.component {
        return dir.join(c);
    }
    let beside = dir.join(format!("{kind}.wasm"));
    if beside.exists() {
        return beside;
    }
    config.host.plugins_dir.join(format!("{kind}.wasm"))
}

fn print_file(r: &FileReport) -> anyhow::Result<()> {
    if let Some(e) = &r.error {
        outln!("{}\n  ERROR {e}\n", r.file.display())?;
        return Ok(());
    }
    outln!(
        "{} ({}, {} {})",
        r.file.display(),
        r.kind,
        r.component.display(),
        crate::plugins::short(&r.component_hash)
    )?;
    let width = r.cases.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &r.cases {
        print_case(c, width)?;
    }
    outln!()?;
    Ok(())
}

/// One case's line, and for a failure each unmet expectation with its
/// diff.
pub fn print_case(c: &CaseReport, width: usize) -> anyhow::Result<()> {
    outln!(
        "  {}  {:width$}  {:<16} fuel {:>12}  {:>8.2} ms",
        if c.passed { "PASS" } else { "FAIL" },
        c.name,
        c.outcome,
        c.fuel_used,
        c.elapsed_ms,
    )?;
    for f in &c.failures {
        outln!("{f:8}")?;
    }
    Ok(())
}
