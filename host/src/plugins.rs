//! Plugin discovery: `<kind>.wasm` in the plugins directory serves jobs of
//! that kind.
//!
//! A file that is not a component, or does not implement the world, is
//! rejected with a reason naming the file and the mismatch; the others still
//! load. Files without the `.wasm` extension are ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::policy::{BreakerPolicy, RateLimit, RetryPolicy};
use crate::sandbox::{Grants, Limits, Plugin, Sandbox};

/// What applies to one plugin kind: its sandbox limits and grants, how its
/// jobs are retried, its safeguards and the size of what goes in.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PluginSettings {
    #[serde(flatten)]
    pub limits: Limits,
    /// Attempts of this kind in flight at once (never more than the host's).
    pub concurrency: u32,
    pub retry: RetryPolicy,
    /// Capabilities beyond plain WASI; none by default.
    pub grants: Grants,
    /// The largest payload an enqueue of this kind may carry, in bytes.
    pub max_payload: usize,
    /// kv conflicts a job may have with its attempt given back; past it, a
    /// conflict uses up the attempt.
    pub max_conflicts: u32,
    /// The circuit breaker; `None` if disabled.
    pub breaker: Option<BreakerPolicy>,
    /// The rate limit; `None`: unlimited.
    pub rate: Option<RateLimit>,
    /// Record the inputs of every attempt (else only of failed ones), so
    /// that any can be replayed.
    pub record: bool,
    /// The most bytes of inputs recorded per attempt (0: record nothing).
    pub record_max: usize,
}

/// `max_payload` when the configuration does not say: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// `record_max` when the configuration does not say: 256 KiB.
pub const DEFAULT_RECORD_MAX: usize = 256 << 10;

/// `max_conflicts` when the configuration does not say.
pub const DEFAULT_MAX_CONFLICTS: u32 = 100;

impl Default for PluginSettings {
    fn default() -> PluginSettings {
        PluginSettings {
            limits: Limits::default(),
            concurrency: u32::MAX,
            retry: RetryPolicy::default(),
            grants: Grants {
                http_max_response: crate::sandbox::DEFAULT_HTTP_MAX_RESPONSE,
                ..Grants::default()
            },
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_conflicts: DEFAULT_MAX_CONFLICTS,
            breaker: Some(BreakerPolicy::default()),
            rate: None,
            record: false,
            record_max: DEFAULT_RECORD_MAX,
        }
    }
}

/// The loaded plugins by kind, and what was rejected.
#[derive(Debug, Default)]
pub struct PluginRegistry {
    plugins: BTreeMap<String, LoadedPlugin>,
    rejected: Vec<Rejected>,
}

/// One plugin that loaded.
#[derive(Debug, Clone)]
pub struct LoadedPlugin {
    pub plugin: Arc<Plugin>,
    pub path: PathBuf,
    pub settings: PluginSettings,
    /// The SHA-256 of the component's bytes, hex: which build runs.
    pub content_hash: String,
}

/// A file that did not load, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejected {
    pub path: PathBuf,
    pub reason: String,
}

/// What a rescan of the plugins directory changed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    /// Kinds that were not loaded before.
    pub added: Vec<String>,
    /// Kinds whose component changed: new attempts run the new one.
    pub replaced: Vec<String>,
    /// Kinds whose file is gone.
    pub removed: Vec<String>,
    /// Kinds whose component is the same (not compiled again).
    pub unchanged: Vec<String>,
    /// Files that did not load. A kind that was loaded before keeps its
    /// previous version.
    pub rejected: Vec<Rejected>,
}

impl ReloadReport {
    pub fn changed(&self) -> bool {
        !(self.added.is_empty() && self.replaced.is_empty() && self.removed.is_empty())
    }
}

impl PluginRegistry {
    /// Loads every `*.wasm` file in `dir`, each with the settings
    /// `settings` gives for its kind.
    pub fn load(
        sandbox: &Sandbox,
        dir: &Path,
        settings: impl Fn(&str) -> PluginSettings,
    ) -> PluginRegistry {
        PluginRegistry::default().reload(sandbox, dir, settings).0
    }

    /// Rescans `dir`: the registry it now makes, and what changed against
    /// this one. A component whose content is unchanged is kept as it is
    /// (not compiled again); one that does not load (broken, half-written)
    /// is rejected with a reason naming the file, and a kind that was
    /// loaded keeps its previous version. A directory that cannot be read
    /// changes nothing.
    pub fn reload(
        &self,
        sandbox: &Sandbox,
        dir: &Path,
        settings: impl Fn(&str) -> PluginSettings,
    ) -> (PluginRegistry, ReloadReport) {
        let mut next = PluginRegistry::default();
        let mut report = ReloadReport::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot read plugins directory: {e}; plugins unchanged");
                next.plugins = self.plugins.clone();
                report.unchanged = self.plugins.keys().cloned().collect();
                return (next, report);
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
            .collect();
        paths.sort();
        for path in paths {
            let kind = kind_of(&path);
            let previous = kind.as_ref().ok().and_then(|k| self.plugins.get(k));
            match load_one(sandbox, &settings, &path, previous) {
                Ok((kind, loaded)) => {
                    match previous {
                        None => {
                            tracing::info!(plugin = %kind, path = %path.display(), hash = %short(&loaded.content_hash), "plugin loaded");
                            report.added.push(kind.clone());
                        }
                        Some(p) if p.content_hash == loaded.content_hash => {
                            report.unchanged.push(kind.clone());
                        }
                        Some(p) => {
                            tracing::info!(plugin = %kind, path = %path.display(), from = %short(&p.content_hash), to = %short(&loaded.content_hash), "plugin replaced");
                            report.replaced.push(kind.clone());
                        }
                    }
                    next.plugins.insert(kind, loaded);
                }
                Err(reason) => {
                    let reason = match previous {
                        Some(p) => {
                            next.plugins
                                .insert(kind.clone().unwrap_or_default(), p.clone());
                            format!("{reason}; the previous version keeps serving")
                        }
                        None => reason,
                    };
                    tracing::warn!(path = %path.display(), "plugin rejected: {reason}");
                    next.rejected.push(Rejected {
                        path: path.clone(),
                        reason: reason.clone(),
                    });
                    report.rejected.push(Rejected { path, reason });
                }
            }
        }
        for kind in self.plugins.keys() {
            if !next.plugins.contains_key(kind) {
                tracing::info!(plugin = %kind, "plugin removed");
                report.removed.push(kind.clone());
            }
        }
        (next, report)
    }

    pub fn get(&self, kind: &str) -> Option<&LoadedPlugin> {
        self.plugins.get(kind)
    }

    pub fn loaded(&self) -> impl Iterator<Item = (&str, &LoadedPlugin)> {
        self.plugins.iter().map(|(k, p)| (k.as_str(), p))
    }

    pub fn rejected(&self) -> &[Rejected] {
        &self.rejected
    }
}

/// The kind a plugin file serves: its name without `.wasm`.
fn kind_of(path: &Path) -> Result<String, String> {
    let kind = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: file name is not valid UTF-8", path.display()))?
        .to_owned();
    validate_kind(&kind).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(kind)
}

/// Loads the plugin at `path`, or keeps `previous` if its content is the
/// same.
fn load_one(
    sandbox: &Sandbox,
    settings: &impl Fn(&str) -> PluginSettings,
    path: &Path,
    previous: Option<&LoadedPlugin>,
) -> Result<(String, LoadedPlugin), String> {
    let kind = kind_of(path)?;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(p) = previous
        && p.content_hash == crate::sandbox::sha256_hex(&bytes)
    {
        return Ok((kind, p.clone()));
    }
    let settings = settings(&kind);
    let plugin = sandbox
        .load_bytes(&kind, &bytes, settings.limits, settings.grants.clone())
        .map_err(|e| format!("{}: {e:#}", path.display()))?;
    let content_hash = plugin.content_hash().to_owned();
    Ok((
        kind,
        LoadedPlugin {
            plugin: Arc::new(plugin),
            path: path.to_owned(),
            settings,
            content_hash,
        },
    ))
}

/// The first 12 hex digits of a content hash, for logs.
pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// Kinds are short names of letters, digits, `-` and `_`.
pub fn validate_kind(kind: &str) -> Result<(), String> {
    let ok = !kind.is_empty()
        && kind.len() <= 64
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid kind {kind:?}: use 1 to 64 letters, digits, '-' or '_'"
        ))
    }
}

/// What `jobbox plugins check` finds in one component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    pub kind: Option<String>,
    pub path: PathBuf,
    pub content_hash: Option<String>,
    pub bytes: u64,
    /// Whether the host would load it (`error` says why not).
    pub loads: bool,
    pub error: Option<String>,
    /// The interfaces it imports.
    pub imports: Vec<String>,
    /// What the configuration grants its kind.
    pub grants: GrantSummary,
    /// Imports the configuration does not grant: each would be denied at
    /// run time.
    pub ungranted: Vec<String>,
    /// Imports no configuration can grant (sockets, files): each call
    /// finds nothing or is refused.
    pub denied: Vec<String>,
}

/// A kind's grants, as `plugins check` reports them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GrantSummary {
    pub kv: bool,
    pub outbox_topics: Vec<String>,
    pub http_allow: Vec<String>,
}

impl CheckReport {
    /// Whether the component loads and uses nothing it is not granted.
    pub fn ok(&self) -> bool {
        self.loads && self.ungranted.is_empty()
    }
}

/// Checks the component at `path` against the world and against what the
/// configuration (`settings`, for its kind) grants.
pub fn check(
    sandbox: &Sandbox,
    path: &Path,
    settings: impl Fn(&str) -> PluginSettings,
) -> CheckReport {
    let mut report = CheckReport {
        kind: None,
        path: path.to_owned(),
        content_hash: None,
        bytes: 0,
        loads: false,
        error: None,
        imports: Vec::new(),
        grants: GrantSummary::default(),
        ungranted: Vec::new(),
        denied: Vec::new(),
    };
    let kind = match kind_of(path) {
        Ok(kind) => kind,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    let settings = settings(&kind);
    report.kind = Some(kind.clone());
    let g = &settings.grants;
    report.grants = GrantSummary {
        kv: g.kv,
        outbox_topics: g.outbox_topics.keys().cloned().collect(),
        http_allow: g
            .http
            .iter()
            .map(|r| format!("{}://{}:{}", r.scheme, r.host, r.port))
            .collect(),
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            report.error = Some(format!("{}: {e}", path.display()));
            return report;
        }
    };
    report.bytes = bytes.len() as u64;
    report.content_hash = Some(crate::sandbox::sha256_hex(&bytes));
    let (imports, loads) = sandbox.inspect(&bytes);
    report.loads = loads.is_ok();
    report.error = loads.err();
    for import in &imports {
        let interface = import.split('@').next().unwrap_or(import);
        let missing = match interface {
            "jobbox:plugin/kv" if !g.kv => Some(format!(
                "{import}: plugins.{kind}.kv is not granted, so every kv call is denied"
            )),
            "jobbox:plugin/outbox" if g.outbox_topics.is_empty() => Some(format!(
                "{import}: plugins.{kind}.outbox_topics grants no topic, so every emit is denied"
            )),
            "wasi:http/outgoing-handler" if g.http.is_empty() => Some(format!(
                "{import}: plugins.{kind}.http_allow names no destination, so every request is denied"
            )),
            _ => None,
        };
        report.ungranted.extend(missing);
        if interface.starts_with("wasi:sockets/") {
            report
                .denied
                .push(format!("{import}: sockets are denied to every plugin"));
        } else if interface == "wasi:filesystem/preopens" {
            report.denied.push(format!(
                "{import}: no directory is preopened for any plugin"
            ));
        }
    }
    report.imports = imports;
    report
}
