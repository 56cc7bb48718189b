//! The plugins directory, watched: adding, replacing or removing a
//! `<kind>.wasm` reloads the plugins once the directory has been quiet for
//! [`DEBOUNCE`] (so a file written in pieces, or written then renamed into
//! place, is loaded once, whole). SIGHUP and `POST /api/plugins/reload`
//! reload too, and are the way where the directory cannot be watched.

use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, new_debouncer};
use tokio::sync::watch;

use super::Host;

/// How long the directory must be quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

impl Host {
    pub(super) async fn watch_plugins(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let dir = self.config.host.plugins_dir.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watching = new_debouncer(DEBOUNCE, move |events: DebounceEventResult| {
            let _ = tx.send(events);
        })
        .and_then(|mut d| {
            d.watcher().watch(&dir, RecursiveMode::NonRecursive)?;
            Ok(d)
        });
        // Dropping the debouncer stops the watching: it lives as long as
        // this loop.
        let _debouncer = match watching {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(
                    dir = %dir.display(),
                    "plugins directory not watched ({e}): reload with SIGHUP or POST /api/plugins/reload"
                );
                let _ = stop.wait_for(|s| *s).await;
                return;
            }
        };
        // A plugin dropped in between loading and watching made no event:
        // look once now that nothing more is missed.
        if let Err(e) = self.reload_plugins().await {
            tracing::error!("reloading plugins: {e:#}");
        }
        loop {
            let events = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                events = rx.recv() => match events {
                    Some(events) => events,
                    None => break,
                },
            };
            match events {
                Ok(events) => {
                    let wasm = events
                        .iter()
                        .any(|e| e.path.extension().is_some_and(|x| x == "wasm"));
                    if !wasm {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!("watching the plugins directory: {e}; reloading to be sure");
                }
            }
            if let Err(e) = self.reload_plugins().await {
                tracing::error!("reloading plugins: {e:#}");
            }
        }
    }
}
