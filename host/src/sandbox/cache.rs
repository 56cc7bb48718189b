//! Compiled plugins cached on disk, so that a restart compiles nothing.
//!
//! An entry is the engine's native code for one component, keyed by the
//! component's content hash and the engine's compatibility hash (which
//! changes with the wasmtime version and every setting that affects code
//! generation): `<sha256 of the component>-<engine hash>.cwasm`.
//!
//! Loading native code runs it, so the cache only ever reads files this host
//! wrote: its directory is created private (0700) and refused if anyone
//! else owns it or may write to it; entries are written to a temporary file
//! in that directory and renamed into place, so a reader never sees half an
//! entry. An entry that fails to load (a crash mid-write that left a
//! complete but bad file is not possible; a wasmtime that disagrees is) is
//! removed and compiled again.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are kept, and what they cost.
#[derive(Debug)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    /// The engine's compatibility hash, hex.
    engine_hash: String,
    stats: CacheStats,
}

/// Compilations and cache hits since the sandbox was made.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub compiled: AtomicU64,
    pub loaded: AtomicU64,
}

impl CompileCache {
    /// A cache in `dir` (created if missing), or none. A directory that is
    /// not private to this user is not used: the error says why.
    pub fn new(engine: &Engine, dir: Option<&Path>) -> anyhow::Result<CompileCache> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = format!("{:016x}", hasher.finish());
        let dir = match dir {
            Some(dir) => Some(private_dir(dir)?),
            None => None,
        };
        Ok(CompileCache {
            dir,
            engine_hash,
            stats: CacheStats::default(),
        })
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn stats(&self) -> (u64, u64) {
        (
            self.stats.compiled.load(Ordering::Relaxed),
            self.stats.loaded.load(Ordering::Relaxed),
        )
    }

    /// The component for `bytes` (whose SHA-256 is `content_hash`): from
    /// the cache if it holds it, else compiled (and then cached).
    #[allow(unsafe_code)] // Loading native code: see the SAFETY notes.
    pub fn component(
        &self,
        engine: &Engine,
        bytes: &[u8],
        content_hash: &str,
    ) -> wasmtime::Result<Component> {
        let Some(dir) = &self.dir else {
            self.stats.compiled.fetch_add(1, Ordering::Relaxed);
            return Component::new(engine, bytes);
        };
        let entry = dir.join(format!("{content_hash}-{}.cwasm", self.engine_hash));
        if entry.is_file() {
            // SAFETY: the entry is a file this host wrote (atomically, in a
            // directory only this user may write to) from
            // `Engine::precompile_component` with an engine of the same
            // compatibility hash; wasmtime checks the rest of its header.
            match unsafe { Component::deserialize_file(engine, &entry) } {
                Ok(component) => {
                    self.stats.loaded.fetch_add(1, Ordering::Relaxed);
                    return Ok(component);
                }
                Err(e) => {
                    tracing::warn!(entry = %entry.display(), "compiled plugin cache: entry refused, compiling again: {e:#}");
                    let _ = std::fs::remove_file(&entry);
                }
            }
        }
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        let native = engine.precompile_component(bytes)?;
        if let Err(e) = write_atomically(dir, &entry, &native) {
            tracing::warn!(entry = %entry.display(), "compiled plugin cache: cannot write the entry: {e}");
        }
        // SAFETY: `native` was made just now by this engine.
        unsafe { Component::deserialize(engine, &native) }
    }
}

/// Creates `dir` private to this user if missing; refuses one that someone
/// else owns or may write to.
fn private_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.display()))?;
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    if me.is_some_and(|uid| uid != meta.uid()) {
        anyhow::bail!(
            "{} belongs to another user (uid {}): compiled code is only loaded from the host's own directory",
            dir.display(),
            meta.uid()
        );
    }
    if meta.permissions().mode() & 0o022 != 0 {
        anyhow::bail!(
            "{} may be written by others (mode {:o}): make it private (chmod 700)",
            dir.display(),
            meta.permissions().mode() & 0o777
        );
    }
    Ok(dir.to_owned())
}

/// Writes `bytes` to `path` through a temporary file in `dir`, synced and
/// renamed into place.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".entry-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_directory_others_may_write_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("cache");
        let engine = Engine::default();
        let cache = CompileCache::new(&engine, Some(&dir)).unwrap();
        assert_eq!(cache.dir(), Some(dir.as_path()));
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "created private");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = CompileCache::new(&engine, Some(&dir)).unwrap_err();
        assert!(e.to_string().contains("written by others"), "{e}");
    }
}
