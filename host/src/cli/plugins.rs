//! `jobbox plugins ...`: list the plugins with their safeguards, pause and
//! resume a kind, reset its breaker, or run one in isolation.
//!
//! `plugins run` is the plugin author's test bench: it runs one attempt of a
//! plugin exactly as the host would (same limits, same grants, same
//! sandbox) but with no database: kv reads come from an optional JSON file,
//! and the kv writes and outbox events the attempt would have committed are
//! printed instead. Outbound HTTP follows the plugin's `http_allow` as
//! usual, so with no rule it makes no network call at all.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Config;
use crate::job::{ClaimedJob, canonical_json};
use crate::plugins::{PluginRegistry, validate_kind};
use crate::policy::{BreakerRecord, PauseRecord, PauseScope};
use crate::sandbox::{KvSource, MemoryKv, RunContext, Sandbox, SandboxConfig};
use crate::store::Store;
use crate::time::{Clock, SystemClock};

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Load every plugin and list them with their limits, breaker, rate
    /// limit and pause, and the rejected files with the reason.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check components before the host runs them: each loads as a plugin,
    /// and imports nothing its kind is not granted (e.g. `wasi:http`
    /// without `http_allow`). Exits non-zero if any does not.
    Check {
        /// Components or directories of them (default: the plugins
        /// directory).
        paths: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Run plugins' test files (`<kind>.tests.toml`) with no database and
    /// no network: a pass/fail table, a diff for each failure, and a
    /// non-zero exit if any case fails.
    Test {
        /// Test files, or directories of them (default: the plugins
        /// directory).
        paths: Vec<PathBuf>,
        /// The component to test (one test file only; default: the file's
        /// `component`, else `<kind>.wasm` beside it, else in the plugins
        /// directory).
        #[arg(long, value_name = "WASM")]
        component: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Create a plugin project: source, a build command and a test file
    /// that passes.
    New {
        /// The plugin's kind (also the project's directory name).
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: crate::scaffold::Lang,
        /// Where the project directory is made (default: here).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// The jobbox plugin SDK (Rust; default: the one this binary was
        /// built with).
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
    /// Stop claiming jobs of a kind (attempts already running finish).
    Pause {
        kind: String,
        /// Why, for whoever looks next.
        #[arg(long)]
        note: String,
    },
    /// Claim jobs of a paused kind again.
    Resume { kind: String },
    /// Manage a kind's circuit breaker.
    #[command(subcommand)]
    Breaker(BreakerCommand),
    /// Run one attempt of a plugin in isolation: no database, no network
    /// beyond its grants. Prints the outcome, output, and the kv writes and
    /// events it would commit.
    Run {
        /// The plugin kind (its settings and grants come from the config).
        kind: String,
        /// The job's payload, as JSON.
        #[arg(long)]
        payload: String,
        /// The component to run (default: `<plugins_dir>/<kind>.wasm`).
        #[arg(long)]
        file: Option<PathBuf>,
        /// A JSON object of the kv state to start from (string values).
        #[arg(long, value_name = "FILE")]
        kv: Option<PathBuf>,
        #[arg(long, default_value = "test-key")]
        idempotency_key: String,
        #[arg(long, default_value_t = 1)]
        attempt: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Close a kind's breaker and clear its failure streak.
    Reset { kind: String },
}

pub async fn main(config: &Config, cmd: PluginsCommand) -> anyhow::Result<()> {
    match cmd {
        PluginsCommand::List { json } => {
            let store = super::open_store(config)?;
            let result = plugins_list(config, store.as_ref(), json).await;
            store.close().await?;
            result
        }
        PluginsCommand::Check { paths, json } => plugins_check(config, paths, json),
        PluginsCommand::New {
            name,
            lang,
            dir,
            sdk,
        } => {
            let made = crate::scaffold::new_plugin(&name, lang, &dir, sdk.as_deref())?;
            outln!("created {}", made.dir.display())?;
            for f in &made.files {
                outln!("  {}", f.display())?;
            }
            outln!("build: {}", made.build)?;
            outln!("test:  {}", made.test)?;
            Ok(())
        }
        PluginsCommand::Test {
            paths,
            component,
            json,
        } => super::testing::plugins_test(config, paths, component, json).await,
        PluginsCommand::Pause { kind, note } => {
            validate_kind(&kind).map_err(anyhow::Error::msg)?;
            super::with_store(config, |store| async move {
                let fresh = store
                    .pause(PauseScope::Kind, kind.clone(), note, SystemClock.now())
                    .await?;
                if fresh {
                    outln!("kind {kind} paused: its jobs are not claimed until resumed")?;
                } else {
                    outln!("kind {kind} was already paused (note updated)")?;
                }
                Ok(())
            })
            .await
        }
        PluginsCommand::Resume { kind } => {
            validate_kind(&kind).map_err(anyhow::Error::msg)?;
            super::with_store(config, |store| async move {
                if store.resume(PauseScope::Kind, kind.clone()).await? {
                    outln!("kind {kind} resumed")?;
                } else {
                    outln!("kind {kind} was not paused")?;
                }
                Ok(())
            })
            .await
        }
        PluginsCommand::Breaker(BreakerCommand::Reset { kind }) => {
            validate_kind(&kind).map_err(anyhow::Error::msg)?;
            super::with_store(config, |store| async move {
                match store.reset_breaker(kind.clone(), SystemClock.now()).await? {
                    Some(before) => outln!("breaker of {kind} reset (was {before}); now closed")?,
                    None => outln!("kind {kind} has no breaker state: it is closed")?,
                }
                Ok(())
            })
            .await
        }
        PluginsCommand::Run {
            kind,
            payload,
            file,
            kv,
            idempotency_key,
            attempt,
            json,
        } => {
            validate_kind(&kind).map_err(anyhow::Error::msg)?;
            let payload =
                canonical_json(&payload).map_err(|e| anyhow::anyhow!("--payload: {e}"))?;
            let state = match kv {
                Some(path) => load_kv(&path)?,
                None => MemoryKv::default(),
            };
            let path = file.unwrap_or_else(|| config.host.plugins_dir.join(format!("{kind}.wasm")));
            run_isolated(
                config,
                &kind,
                &path,
                payload,
                state,
                idempotency_key,
                attempt,
                json,
            )
            .await
        }
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site, each argument a CLI flag"
)]
async fn run_isolated(
    config: &Config,
    kind: &str,
    path: &std::path::Path,
    payload: String,
    kv: MemoryKv,
    idempotency_key: String,
    attempt: u32,
    json: bool,
) -> anyhow::Result<()> {
    let settings = config.plugin(kind);
    let sandbox = Sandbox::new(&SandboxConfig {
        epoch_tick: config.host.epoch_tick,
        pooling: false,
        max_instances: 1,
        max_memory: settings.limits.memory,
        // A run in isolation writes nothing.
        cache_dir: None,
    })?;
    let plugin = sandbox
        .load_with_grants(kind, path, settings.limits, settings.grants.clone())
        .with_context(|| format!("loading {}", path.display()))?;
    let now = SystemClock.now();
    let job = ClaimedJob {
        attempt,
        max_attempts: settings.retry.max_attempts.max(attempt),
        epoch: u64::from(attempt),
        ..ClaimedJob::detached(kind, &payload, &idempotency_key, now)
    };
    let ctx = RunContext {
        kv: Some(Arc::new(kv) as Arc<dyn KvSource>),
        ..RunContext::default()
    };
    let report = plugin.run(&job, &ctx, std::future::pending()).await;
    let (outcome, _) = settings
        .retry
        .decide(attempt, job.max_attempts, &report.result, now);
    let text = |bytes: &Option<Vec<u8>>| {
        bytes
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let out = serde_json::json!({
        "outcome": outcome,
        "output": report.result.as_ref().ok().map(|o| serde_json::from_str::<serde_json::Value>(o).unwrap_or(serde_json::Value::String(o.clone()))),
        "error": report.result.as_ref().err().map(ToString::to_string),
        "fuel_used": report.fuel_used,
        "elapsed_ms": report.elapsed.as_secs_f64() * 1000.0,
        "kv_writes": report.effects.kv_writes.iter().map(|(k, v)| (k.clone(), text(v))).collect::<BTreeMap<_, _>>(),
        "events": report.effects.events.iter().map(|e| serde_json::json!({
            "topic": e.topic,
            "url": e.url,
            "idempotency_key": e.idempotency_key,
            "body": serde_json::from_slice::<serde_json::Value>(&e.body).unwrap_or_default(),
        })).collect::<Vec<_>>(),
    });
    if json {
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        outln!("outcome:  {outcome}")?;
        outln!("fuel:     {}", report.fuel_used)?;
        outln!("elapsed:  {:.2} ms", report.elapsed.as_secs_f64() * 1000.0)?;
        match &report.result {
            Ok(output) => outln!("output:   {output}")?,
            Err(e) => outln!("error:    {e}")?,
        }
        for (k, v) in &report.effects.kv_writes {
            outln!(
                "kv write: {k} = {}",
                text(v).unwrap_or_else(|| "(deleted)".into())
            )?;
        }
        for e in &report.effects.events {
            outln!(
                "event:    {} -> {} ({})",
                e.topic,
                e.url,
                String::from_utf8_lossy(&e.body)
            )?;
        }
    }
    if report.result.is_err() {
        anyhow::bail!("the attempt failed ({outcome})");
    }
    Ok(())
}

/// kv state from a JSON object of string values, each at version 1.
fn load_kv(path: &std::path::Path) -> anyhow::Result<MemoryKv> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let map: BTreeMap<String, String> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON object of string values",
            path.display()
        )
    })?;
    Ok(MemoryKv::from_values(
        map.into_iter().map(|(k, v)| (k, v.into_bytes())),
    ))
}

/// The files `paths` name (default: the plugins directory), in order; a
/// directory stands for its files whose name `wanted` accepts (not
/// recursively), and must hold at least one.
pub(super) fn files_named(
    config: &Config,
    paths: Vec<PathBuf>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let paths = if paths.is_empty() {
        vec![config.host.plugins_dir.clone()]
    } else {
        paths
    };
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(&wanted)
                })
                .collect();
            found.sort();
            if found.is_empty() {
                anyhow::bail!("{}: no {what} files", path.display());
            }
            files.extend(found);
        } else if path.is_file() {
            files.push(path);
        } else {
            anyhow::bail!("{}: no such file or directory", path.display());
        }
    }
    Ok(files)
}

fn plugins_check(config: &Config, paths: Vec<PathBuf>, json: bool) -> anyhow::Result<()> {
    let files = files_named(config, paths, "component (.wasm)", |name| {
        name.ends_with(".wasm")
    })?;
    let sandbox = Sandbox::new(&SandboxConfig {
        epoch_tick: Duration::from_millis(10),
        pooling: false,
        max_instances: 1,
        max_memory: config.max_memory(),
        // A check writes nothing.
        cache_dir: None,
    })?;
    let reports: Vec<_> = files
        .iter()
        .map(|f| crate::plugins::check(&sandbox, f, |kind| config.plugin(kind).clone()))
        .collect();
    let failed = reports.iter().filter(|r| !r.ok()).count();
    if json {
        outln!("{}", serde_json::to_string_pretty(&reports)?)?;
    } else {
        for r in &reports {
            let verdict = match (r.loads, r.ungranted.len()) {
                (false, _) => "does not load".to_owned(),
                (true, 0) => "ok".to_owned(),
                (true, n) => format!("{n} import(s) not granted"),
            };
            outln!(
                "{} ({}, {} KiB{}): {verdict}",
                r.kind.as_deref().unwrap_or("?"),
                r.path.display(),
                r.bytes / 1024,
                r.content_hash
                    .as_deref()
                    .map(|h| format!(", {}", crate::plugins::short(h)))
                    .unwrap_or_default()
            )?;
            if let Some(e) = &r.error {
                outln!("  error: {e}")?;
            }
            for u in &r.ungranted {
                outln!("  not granted: {u}")?;
            }
            for d in &r.denied {
                outln!("  always denied: {d}")?;
            }
            if !r.imports.is_empty() {
                outln!("  imports: {}", r.imports.join(", "))?;
            }
            let g = &r.grants;
            outln!(
                "  grants: kv {}, outbox topics [{}], http [{}]",
                if g.kv { "yes" } else { "no" },
                g.outbox_topics.join(", "),
                g.http_allow.join(", ")
            )?;
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} components failed the check", reports.len());
    }
    Ok(())
}

async fn plugins_list(config: &Config, store: &dyn Store, json: bool) -> anyhow::Result<()> {
    let sandbox = Sandbox::new(&SandboxConfig {
        epoch_tick: Duration::from_millis(10),
        pooling: false,
        max_instances: 1,
        max_memory: config.max_memory(),
        cache_dir: config.cache_dir(),
    })?;
    let registry = PluginRegistry::load(&sandbox, &config.host.plugins_dir, |kind| {
        config.plugin(kind).clone()
    });
    let breakers = store.breakers().await?;
    let pauses = store.pauses().await?;
    let breaker = |kind: &str| breakers.iter().find(|b| b.kind == kind);
    let paused = |kind: &str| {
        pauses
            .iter()
            .find(|p| p.scope == PauseScope::Kind && p.name == kind)
    };
    if json {
        let plugins: Vec<_> = registry
            .loaded()
            .map(|(kind, p)| {
                serde_json::json!({
                    "kind": kind,
                    "path": p.path,
                    "settings": p.settings,
                    "breaker": breaker(kind),
                    "paused": paused(kind),
                })
            })
            .collect();
        let out = serde_json::json!({
            "plugins_dir": config.host.plugins_dir,
            "plugins": plugins,
            "rejected": registry.rejected(),
            "breakers": breakers,
            "paused": pauses.iter().filter(|p| p.scope == PauseScope::Kind).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
        return Ok(());
    }
    outln!("plugins directory: {}", config.host.plugins_dir.display())?;
    for (kind, p) in registry.loaded() {
        let s = &p.settings;
        outln!(
            "  {kind:<16} fuel={} timeout={} memory={} concurrency={} max_attempts={} backoff={}..{}",
            s.limits.fuel,
            humantime::format_duration(s.limits.timeout),
            s.limits.memory,
            s.concurrency,
            s.retry.max_attempts,
            humantime::format_duration(s.retry.base),
            humantime::format_duration(s.retry.max),
        )?;
        outln!(
            "  {:<16} component {} ({})",
            "",
            crate::plugins::short(&p.content_hash),
            p.path.display()
        )?;
        outln!(
            "  {:<16} breaker: {}  rate: {}{}",
            "",
            breaker_text(s.breaker.is_some(), breaker(kind)),
            s.rate.map_or("unlimited".to_owned(), |r| r.to_string()),
            paused(kind).map(pause_text).unwrap_or_default()
        )?;
    }
    for r in registry.rejected() {
        outln!("  rejected: {}", r.reason)?;
    }
    if registry.loaded().next().is_none() && registry.rejected().is_empty() {
        outln!("  (no plugins)")?;
    }
    // Breakers and pauses of kinds with no plugin loaded here.
    for b in &breakers {
        if registry.get(&b.kind).is_none() {
            outln!(
                "  {:<16} (no plugin) breaker: {}",
                b.kind,
                breaker_text(true, Some(b))
            )?;
        }
    }
    for p in &pauses {
        if p.scope == PauseScope::Kind && registry.get(&p.name).is_none() {
            outln!("  {:<16} (no plugin){}", p.name, pause_text(p))?;
        }
    }
    Ok(())
}

fn breaker_text(enabled: bool, b: Option<&BreakerRecord>) -> String {
    match b {
        _ if !enabled && b.is_none() => "off".into(),
        None => "closed".into(),
        Some(b) => {
            let mut t = b.state.to_string();
            match b.state {
                crate::policy::BreakerState::Open => {
                    if let Some(at) = b.retry_at {
                        t.push_str(&format!(" until {at}"));
                    }
                }
                crate::policy::BreakerState::Closed if b.failures > 0 => {
                    t.push_str(&format!(" ({} failures in a row)", b.failures));
                }
                _ => {}
            }
            if b.trips > 0 {
                t.push_str(&format!(
                    ", opened {} time{}",
                    b.trips,
                    if b.trips == 1 { "" } else { "s" }
                ));
            }
            if let Some(e) = b
                .last_error
                .as_deref()
                .filter(|_| b.state != crate::policy::BreakerState::Closed)
            {
                t.push_str(&format!(", last error: {e}"));
            }
            t
        }
    }
}

fn pause_text(p: &PauseRecord) -> String {
    format!("  PAUSED since {}: {}", p.paused_at, p.note)
}
