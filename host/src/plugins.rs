//! Plugin discovery: `<kind>.wasm` in the plugins directory serves jobs of
//! that kind.
//!
//! A file that is not a component, or does not implement the world, is
//! rejected with a reason naming the file and the mismatch; the others still
//! load. Files without the `.wasm` extension are ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, PluginSettings};
use crate::sandbox::{Plugin, Sandbox};

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
}

/// A file that did not load, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejected {
    pub path: PathBuf,
    pub reason: String,
}

impl PluginRegistry {
    /// Loads every `*.wasm` file in `config.host.plugins_dir`.
    pub fn load(sandbox: &Sandbox, config: &Config) -> PluginRegistry {
        let dir = &config.host.plugins_dir;
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
            match load_one(sandbox, config, &path) {
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
    config: &Config,
    path: &Path,
) -> Result<(String, LoadedPlugin), String> {
    let kind = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: file name is not valid UTF-8", path.display()))?
        .to_owned();
    validate_kind(&kind).map_err(|e| format!("{}: {e}", path.display()))?;
    let settings = config.plugin(&kind).clone();
    let plugin = sandbox
        .load_with_grants(&kind, path, settings.limits, settings.grants.clone())
        .map_err(|e| format!("{}: {e:#}", path.display()))?;
    Ok((
        kind,
        LoadedPlugin {
            plugin: Arc::new(plugin),
            path: path.to_owned(),
            settings,
        },
    ))
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
