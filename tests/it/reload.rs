//! Drop-in loading: a plugin replaced, added or removed takes effect for
//! new attempts without a restart (attempts running finish on the version
//! they started with); a broken replacement keeps the previous version
//! serving; every attempt records the component it ran on; compiled
//! components are cached, so a warm start compiles nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jobbox::job::JobState;
use jobbox::sandbox::sha256_hex;

use crate::support::{Harness, job, wait_until};

const PATIENCE: Duration = Duration::from_secs(15);

/// Installs `kind.wasm` the safe way: written beside, then renamed over.
fn install(dir: &Path, kind: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{kind}.wasm.part"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{kind}.wasm"))).unwrap();
}

fn built(kind: &str) -> Vec<u8> {
    std::fs::read(jobbox_tests::plugin_artifacts().join(format!("{kind}.wasm"))).unwrap()
}

/// A long attempt keeps running on the old component while the kind is
/// replaced; the next job runs the new one; each attempt records which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_plugin_serves_new_attempts_while_running_ones_finish_on_the_old() {
    let h = Harness::new(&["sleepy"], "");
    let old_hash = sha256_hex(&built("sleepy"));
    let running = h.start();
    let host = Arc::clone(&running.host);
    let long = running.enqueue_one(job("sleepy", r#"{"ms": 1500}"#)).await;
    h.wait_for_state(long, JobState::Running, PATIENCE).await;

    // `sleepy` becomes the echo component.
    let echo = built("echo");
    install(h.plugins.path(), "sleepy", &echo);
    let report = host.reload_plugins().await.unwrap();
    // (Unless the watcher got to it first.)
    assert!(
        report.replaced == ["sleepy".to_owned()] || !report.changed(),
        "{report:?}"
    );
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(
        host.plugins().get("sleepy").unwrap().content_hash,
        sha256_hex(&echo)
    );

    let next = running.enqueue_one(job("sleepy", r#"{"ms": 1500}"#)).await;
    let next = h.wait_for_state(next, JobState::Completed, PATIENCE).await;
    // Echo answers at once with its payload.
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(next.output.as_deref().unwrap()).unwrap(),
        serde_json::json!({"ms": 1500})
    );
    let long = h.wait_for_state(long, JobState::Completed, PATIENCE).await;
    assert_eq!(long.output.as_deref(), Some(r#"{"slept":1500}"#));
    assert_eq!(
        long.attempts[0].component_hash.as_deref(),
        Some(old_hash.as_str())
    );
    assert_eq!(
        next.attempts[0].component_hash.as_deref(),
        Some(sha256_hex(&echo).as_str())
    );
    assert_eq!(
        host.plugins().get("sleepy").unwrap().content_hash,
        sha256_hex(&echo)
    );
    running.stop().await;
}

/// A broken or half-written replacement is refused, naming the file, and
/// the previous version keeps serving; fixing the file loads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_replacement_keeps_the_previous_version_serving() {
    let h = Harness::new(&["echo"], "");
    let good = built("echo");
    let running = h.start();
    let host = Arc::clone(&running.host);

    for broken in [&good[..good.len() / 2], b"not wasm at all".as_slice()] {
        install(h.plugins.path(), "echo", broken);
        let report = host.reload_plugins().await.unwrap();
        assert!(report.replaced.is_empty(), "{report:?}");
        let [rejected] = &report.rejected[..] else {
            panic!("one rejection expected: {report:?}");
        };
        assert!(rejected.path.ends_with("echo.wasm"), "{rejected:?}");
        assert!(
            rejected.reason.contains("echo.wasm")
                && rejected
                    .reason
                    .contains("the previous version keeps serving"),
            "{rejected:?}"
        );
        let id = running.enqueue_one(job("echo", r#"{"n": 1}"#)).await;
        let done = h.wait_for_state(id, JobState::Completed, PATIENCE).await;
        assert_eq!(
            done.attempts[0].component_hash.as_deref(),
            Some(sha256_hex(&good).as_str())
        );
    }
    // The listing says what is wrong with the file on disk.
    assert_eq!(host.plugins().rejected().len(), 1);

    // Removing the file removes the kind; putting it back restores it.
    // (The watcher may get to a change first: then this reload finds it
    // done.)
    let echo = vec!["echo".to_owned()];
    std::fs::remove_file(h.plugins.path().join("echo.wasm")).unwrap();
    let report = host.reload_plugins().await.unwrap();
    assert!(host.plugins().get("echo").is_none(), "{report:?}");
    assert!(report.removed == echo || !report.changed(), "{report:?}");
    assert!(report.rejected.is_empty(), "{report:?}");
    install(h.plugins.path(), "echo", &good);
    let report = host.reload_plugins().await.unwrap();
    assert!(
        report.added == echo || report.unchanged == echo,
        "{report:?}"
    );
    assert!(host.plugins().get("echo").is_some());
    assert!(host.plugins().rejected().is_empty());
    running.stop().await;
}

/// The directory is watched: a plugin renamed into place is loaded with no
/// signal or API call, and one that changes nothing is not compiled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watched_directory_loads_a_plugin_dropped_into_it() {
    let h = Harness::new(&["echo"], "");
    let running = h.start();
    let host = Arc::clone(&running.host);
    // The watcher starts with the host's loops.
    tokio::time::sleep(Duration::from_millis(200)).await;
    install(h.plugins.path(), "fail", &built("fail"));
    wait_until(PATIENCE, "fail to be loaded", || async {
        host.plugins().get("fail").map(|_| ())
    })
    .await;
    let id = running
        .enqueue_one(job("fail", r#"{"mode":"permanent","message":"nope"}"#))
        .await;
    h.wait_for_state(id, JobState::Discarded, PATIENCE).await;

    let (_, compiled, _) = host.compile_stats();
    let report = host.reload_plugins().await.unwrap();
    assert_eq!(report.unchanged.len(), 2, "{report:?}");
    assert_eq!(host.compile_stats().1, compiled, "nothing compiled again");
    running.stop().await;
}

/// Compiled components are cached beside the database: a second host on
/// the same configuration compiles nothing, and loads what the first wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_start_compiles_nothing() {
    let h = Harness::new(&["echo", "sleepy", "fail"], "");
    let cold = h.host();
    let (dir, compiled, loaded) = cold.compile_stats();
    let dir = dir.expect("a cache by default").to_owned();
    assert_eq!((compiled, loaded), (3, 0));
    let entries = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(entries, 3, "one entry per component, no temporary left");
    drop(cold);

    let warm = h.host();
    let (_, compiled, loaded) = warm.compile_stats();
    assert_eq!((compiled, loaded), (0, 3));
    let running = crate::support::Running::start(warm);
    let id = running.enqueue_one(job("echo", r#"{"warm": true}"#)).await;
    h.wait_for_state(id, JobState::Completed, PATIENCE).await;
    running.stop().await;

    // Turned off, nothing is cached.
    let off = Harness::new(&["echo"], "[host]\ncompile_cache = false\n");
    let host = off.host();
    assert_eq!(host.compile_stats(), (None, 1, 0));
}
