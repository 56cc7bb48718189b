//! Builds the guest plugins that the integration tests load.
//!
//! The plugins live in their own cargo workspace (`plugins/`) and are built
//! for `wasm32-wasip2` by a nested `cargo build`. The nested build gets a
//! target directory of its own, `guest/` inside the outer one: two cargo
//! processes on the same target directory would wait on each other's lock
//! forever, as the outer one holds it while this script runs. Every artifact
//! is then copied to `$OUT_DIR/plugins/<kind>.wasm`, and the tests find that
//! directory through the `JOBBOX_TEST_PLUGINS` environment variable, which
//! this script sets at compile time.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The WebAssembly target that the plugins are built for.
const GUEST_TARGET: &str = "wasm32-wasip2";

/// Each plugin's job kind and the file name that its crate builds.
///
/// A `cdylib`'s file name has the crate name with underscores for hyphens,
/// while a binary's keeps the hyphens.
const ARTIFACTS: &[(&str, &str)] = &[
    ("echo", "echo.wasm"),
    ("invoice", "invoice.wasm"),
    ("ledger-credit", "ledger_credit.wasm"),
    ("webhook-notify", "webhook_notify.wasm"),
    ("spin", "spin.wasm"),
    ("hog", "hog.wasm"),
    ("trap", "trap.wasm"),
    ("fail", "fail.wasm"),
    ("slow-effect", "slow_effect.wasm"),
    ("sleepy", "sleepy.wasm"),
    ("not-a-plugin", "not-a-plugin.wasm"),
    ("kv-counter", "kv_counter.wasm"),
    ("kv-stall", "kv_stall.wasm"),
    ("emit", "emit.wasm"),
    ("http-call", "http_call.wasm"),
    ("entropy", "entropy.wasm"),
];

fn main() {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR"));
    let repo = manifest_dir
        .parent()
        .expect("the tests package lives in a subdirectory of the repository")
        .to_path_buf();
    let plugins = repo.join("plugins");

    watch_sources(&repo, &plugins);

    let target_dir = guest_target_dir(&repo);
    build_plugins(&plugins, &target_dir);

    let built = target_dir.join(GUEST_TARGET).join("release");
    let out = PathBuf::from(env_var("OUT_DIR")).join("plugins");
    fs::create_dir_all(&out).unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
    for (kind, file) in ARTIFACTS {
        let from = built.join(file);
        let to = out.join(format!("{kind}.wasm"));
        fs::copy(&from, &to).unwrap_or_else(|e| {
            panic!(
                "cannot copy plugin `{kind}` from {} to {}: {e}",
                from.display(),
                to.display()
            )
        });
    }
    println!("cargo:rustc-env=JOBBOX_TEST_PLUGINS={}", out.display());
    println!(
        "cargo:rustc-env=JOBBOX_GUEST_TARGET={}",
        target_dir.display()
    );
}

/// Reads an environment variable that cargo always sets for build scripts.
fn env_var(name: &str) -> OsString {
    env::var_os(name).unwrap_or_else(|| panic!("cargo did not set {name}"))
}

/// Asks cargo to rerun this script when a plugin's sources, the plugins
/// workspace or the WIT interface change.
///
/// The plugins directory itself is not watched as a whole: `scripts/demo`
/// copies built plugins into it, which must not trigger a rebuild.
fn watch_sources(repo: &Path, plugins: &Path) {
    let watch = |path: &Path| println!("cargo:rerun-if-changed={}", path.display());
    watch(&repo.join("wit"));
    watch(&plugins.join("Cargo.toml"));
    watch(&plugins.join("Cargo.lock"));
    // A new member crate also changes `plugins/Cargo.toml`, so listing the
    // crates that exist now is enough.
    let mut crates: Vec<PathBuf> = fs::read_dir(plugins)
        .and_then(|entries| entries.map(|entry| entry.map(|e| e.path())).collect())
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", plugins.display()));
    crates.retain(|dir| dir.join("Cargo.toml").is_file());
    crates.sort();
    for crate_dir in crates {
        watch(&crate_dir.join("Cargo.toml"));
        watch(&crate_dir.join("src"));
    }
}

/// The nested build's target directory: `guest/` inside the outer build's
/// target directory when `CARGO_TARGET_DIR` names it, else inside the
/// repository's default `target/`.
///
/// A relative `CARGO_TARGET_DIR` is taken relative to the repository root,
/// from where cargo is normally run (this script runs in `tests/`).
fn guest_target_dir(repo: &Path) -> PathBuf {
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => repo.join(dir).join("guest"),
        _ => repo.join("target").join("guest"),
    }
}

/// Whether the outer build's environment variable `name` must be kept away
/// from the nested build.
///
/// Cargo hands a build script the settings of the outer build (its target,
/// profile, flags, features and cfgs) and the wrappers of tools such as
/// clippy, whose driver must not compile the guests. The jobserver
/// (`CARGO_MAKEFLAGS`) is kept, so that the nested build shares the outer
/// build's job slots instead of oversubscribing the machine.
fn leaks_outer_build(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_BUILD_DIR",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    ];
    const PREFIXES: &[&str] = &["CARGO_PROFILE_", "CARGO_CFG_", "CARGO_FEATURE_", "__CARGO"];
    EXACT.contains(&name) || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// Runs the nested release build of the plugins workspace into `target_dir`,
/// and panics with its output if it fails.
fn build_plugins(plugins: &Path, target_dir: &Path) {
    let cargo = env_var("CARGO");
    let mut command = Command::new(&cargo);
    command
        .args([
            "build",
            "--release",
            "--target",
            GUEST_TARGET,
            "--manifest-path",
        ])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        // Cargo looks for configuration from the working directory up.
        .current_dir(plugins);
    for (name, _) in env::vars_os() {
        if name.to_str().is_some_and(leaks_outer_build) {
            command.env_remove(&name);
        }
    }

    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&cargo).display()));
    if !output.status.success() {
        panic!(
            "building the test plugins failed ({status}):\n{stderr}\n{stdout}\n\
             hint: the plugins need the {GUEST_TARGET} target; install it with \
             `rustup target add {GUEST_TARGET}`",
            status = output.status,
            stderr = String::from_utf8_lossy(&output.stderr),
            stdout = String::from_utf8_lossy(&output.stdout),
        );
    }
}
