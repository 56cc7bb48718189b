//! Support for the jobbox integration tests.
//!
//! The build script of this package builds the guest plugins in `plugins/`
//! for `wasm32-wasip2` and collects them as `<kind>.wasm` in one directory,
//! [`plugin_artifacts`]. A test that needs plugins makes a plugins directory
//! of its own with [`plugin_dir_with`], holding just the kinds it names, and
//! points the host at it:
//!
//! ```no_run
//! let plugins = jobbox_tests::plugin_dir_with(&["echo", "fail"]);
//! // ... configure the host with `plugins.path()` as its plugins directory.
//! ```
//!
//! The kinds built are the examples `echo`, `invoice`, `ledger-credit` (kv
//! and outbox) and `webhook-notify` (`wasi:http`), and the test plugins
//! `spin`, `hog`, `trap`, `fail`, `slow-effect`, `sleepy`, `not-a-plugin` (a
//! WASI command that is not a plugin), `kv-counter`, `kv-stall` (kv), `emit`
//! (outbox), `http-call` (`wasi:http`) and `entropy` (clocks, random
//! numbers and kv, for determinism and replay). Each crate's documentation in
//! `plugins/` says what its plugin does and what its payload is.
//!
//! [`pg`] chooses the store the tests run against (`JOBBOX_TEST_STORE`) and
//! makes each test a PostgreSQL database of its own in the postgres pass.

pub mod pg;

use std::fs;
use std::path::Path;

use tempfile::TempDir;

/// The directory holding every built plugin as `<kind>.wasm`.
pub fn plugin_artifacts() -> &'static Path {
    Path::new(env!("JOBBOX_TEST_PLUGINS"))
}

/// The target directory the plugins are built in (for a test that builds
/// another guest crate: it reuses their compiled dependencies).
pub fn guest_target_dir() -> &'static Path {
    Path::new(env!("JOBBOX_GUEST_TARGET"))
}

/// Makes a temporary plugins directory holding a copy of `<kind>.wasm` for
/// each of `kinds`. The directory is deleted when the returned value drops.
///
/// # Panics
///
/// If a kind has no built plugin, or the copy fails.
pub fn plugin_dir_with(kinds: &[&str]) -> TempDir {
    let dir = tempfile::tempdir().expect("cannot create a temporary plugins directory");
    for kind in kinds {
        let file = format!("{kind}.wasm");
        let from = plugin_artifacts().join(&file);
        assert!(
            from.is_file(),
            "no plugin of kind `{kind}`: {} does not exist (the plugins built are the crates in \
             plugins/, listed in tests/build.rs)",
            from.display()
        );
        fs::copy(&from, dir.path().join(&file)).unwrap_or_else(|e| {
            panic!(
                "cannot copy {} into {}: {e}",
                from.display(),
                dir.path().display()
            )
        });
    }
    dir
}
