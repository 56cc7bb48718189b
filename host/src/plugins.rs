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
}

/// `max_payload` when the configuration does not say: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

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

impl PluginRegistry {
    /// Loads every `*.wasm` file in `dir`, each with the settings
    /// `settings` gives for its kind.
    pub fn load(
        sandbox: &Sandbox,
        dir: &Path,
        settings: impl Fn(&str) -> PluginSettings,
    ) -> PluginRegistry {
        let mut registry = PluginRegistry::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot read plugins directory: {e}; no plugins loaded");
                return registry;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
            .collect();
        paths.sort();
        for path in paths {
            match load_one(sandbox, &settings, &path) {
                Ok((kind, loaded)) => {
                    tracing::info!(plugin = %kind, path = %path.display(), "plugin loaded");
                    registry.plugins.insert(kind, loaded);
                }
                Err(reason) => {
                    tracing::warn!(path = %path.display(), "plugin rejected: {reason}");
                    registry.rejected.push(Rejected { path, reason });
                }
            }
        }
        registry
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

fn load_one(
    sandbox: &Sandbox,
    settings: &impl Fn(&str) -> PluginSettings,
    path: &Path,
) -> Result<(String, LoadedPlugin), String> {
    let kind = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: file name is not valid UTF-8", path.display()))?
        .to_owned();
    validate_kind(&kind).map_err(|e| format!("{}: {e}", path.display()))?;
    let settings = settings(&kind);
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let content_hash = sha256_hex(&bytes);
    let plugin = sandbox
        .load_bytes(&kind, &bytes, settings.limits, settings.grants.clone())
        .map_err(|e| format!("{}: {e:#}", path.display()))?;
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

/// The SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
