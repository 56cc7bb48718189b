//! The `kv` and `outbox` imports: an attempt's side effects, buffered in its
//! store and handed to the executor only when the attempt returns.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::bindings::jobbox::plugin::{kv, outbox};
use super::grants::Grants;
use super::host_state::HostState;
use crate::job::{Effects, KvEntry, NewEvent};
use crate::outbox::Backlog;

/// The boxed future a [`KvSource`] returns.
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Where kv reads that miss the attempt's buffer go: the host's store, or
/// an in-memory map when a plugin runs in isolation.
pub trait KvSource: Send + Sync + 'static {
    fn get(&self, namespace: String, key: String) -> KvFuture<'_, KvEntry>;
    fn list(
        &self,
        namespace: String,
        prefix: String,
        limit: u32,
    ) -> KvFuture<'_, Vec<(String, KvEntry)>>;
}

/// The longest key, in bytes.
const MAX_KEY: usize = 512;
/// The largest value, in bytes.
const MAX_VALUE: usize = 256 << 10;
/// The most bytes (keys and values) one attempt may buffer.
const MAX_WRITTEN: usize = 8 << 20;
/// The most entries one `list-prefix` returns.
const MAX_LIST: u32 = 1000;
/// The largest event payload, in bytes.
const MAX_EVENT: usize = 256 << 10;
/// The most events one attempt may emit.
const MAX_EVENTS: usize = 1000;

/// What the attempt has read and written so far.
pub(crate) struct EffectsState {
    plugin: Arc<str>,
    grants: Arc<Grants>,
    source: Option<Arc<dyn KvSource>>,
    backlog: Option<Arc<Backlog>>,
    job_id: i64,
    job_key: String,
    /// Each key read from the source, as first seen. Later reads of the key
    /// return this same entry, so the attempt sees one consistent value per
    /// key, and the commit checks that version is still current.
    reads: BTreeMap<String, KvEntry>,
    /// The latest buffered value of each key written (`None`: deleted).
    writes: BTreeMap<String, Option<Vec<u8>>>,
    written: usize,
    events: Vec<NewEvent>,
    /// An emit was refused because the backlog was full: the attempt must
    /// fail whatever the plugin returns.
    pub(crate) backlog_refused: Option<String>,
}

impl EffectsState {
    pub(crate) fn new(
        plugin: Arc<str>,
        grants: Arc<Grants>,
        source: Option<Arc<dyn KvSource>>,
        backlog: Option<Arc<Backlog>>,
        job_id: i64,
        job_key: String,
    ) -> EffectsState {
        EffectsState {
            plugin,
            grants,
            source,
            backlog,
            job_id,
            job_key,
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
            written: 0,
            events: Vec::new(),
            backlog_refused: None,
        }
    }

    /// The attempt's effects, to commit with its completion.
    pub(crate) fn take(&mut self) -> Effects {
        Effects {
            namespace: self.plugin.to_string(),
            kv_reads: std::mem::take(&mut self.reads)
                .into_iter()
                .map(|(key, entry)| (key, entry.version))
                .collect(),
            kv_writes: std::mem::take(&mut self.writes).into_iter().collect(),
            events: std::mem::take(&mut self.events),
        }
    }

    fn check_kv(&self, key: &str) -> Result<(), kv::KvError> {
        if !self.grants.kv {
            return Err(kv::KvError::Denied(format!(
                "plugin {} has no kv grant (set `kv = true` in [plugins.{}])",
                self.plugin, self.plugin
            )));
        }
        if key.len() > MAX_KEY {
            return Err(kv::KvError::TooLarge(format!(
                "key of {} bytes is over the {MAX_KEY}-byte limit",
                key.len()
            )));
        }
        Ok(())
    }

    fn source(&self) -> Result<Arc<dyn KvSource>, kv::KvError> {
        self.source
            .clone()
            .ok_or_else(|| kv::KvError::Unavailable("no kv store in this context".into()))
    }

    /// The current value of `key` for this attempt: its own buffered write,
    /// else the value it first read, else the store's (which is recorded).
    async fn current(&mut self, key: &str) -> Result<Option<Vec<u8>>, kv::KvError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        if let Some(entry) = self.reads.get(key) {
            return Ok(entry.value.clone());
        }
        let entry = self
            .source()?
            .get(self.plugin.to_string(), key.to_owned())
            .await
            .map_err(kv::KvError::Unavailable)?;
        let value = entry.value.clone();
        self.reads.insert(key.to_owned(), entry);
        Ok(value)
    }

    fn buffer(&mut self, key: String, value: Option<Vec<u8>>) -> Result<(), kv::KvError> {
        if let Some(v) = &value
            && v.len() > MAX_VALUE
        {
            return Err(kv::KvError::TooLarge(format!(
                "value of {} bytes is over the {MAX_VALUE}-byte limit",
                v.len()
            )));
        }
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        if self.written + size > MAX_WRITTEN {
            return Err(kv::KvError::TooLarge(format!(
                "the attempt's kv writes are over the {MAX_WRITTEN}-byte limit"
            )));
        }
        self.written += size;
        self.writes.insert(key, value);
        Ok(())
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        self.effects.check_kv(&key)?;
        self.effects.current(&key).await
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), kv::KvError> {
        self.effects.check_kv(&key)?;
        self.effects.buffer(key, Some(value))
    }

    async fn delete(&mut self, key: String) -> Result<(), kv::KvError> {
        self.effects.check_kv(&key)?;
        self.effects.buffer(key, None)
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, kv::KvError> {
        self.effects.check_kv(&key)?;
        if self.effects.current(&key).await? != expected {
            return Ok(false);
        }
        self.effects.buffer(key, new)?;
        Ok(true)
    }

    async fn list_prefix(
        &mut self,
        prefix: String,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, kv::KvError> {
        let fx = &mut self.effects;
        fx.check_kv(&prefix)?;
        let limit = limit.min(MAX_LIST);
        // Ask for enough that buffered deletes cannot leave the page short.
        let deleted = fx
            .writes
            .iter()
            .filter(|(k, v)| v.is_none() && k.starts_with(&prefix))
            .count();
        let stored = fx
            .source()?
            .list(
                fx.plugin.to_string(),
                prefix.clone(),
                limit.saturating_add(deleted as u32),
            )
            .await
            .map_err(kv::KvError::Unavailable)?;
        // Merge the store's entries (or the attempt's own earlier reads of
        // them) with its buffered writes, in key order.
        let mut merged: BTreeMap<String, (Option<Vec<u8>>, Option<KvEntry>)> = BTreeMap::new();
        for (key, entry) in stored {
            if fx.writes.contains_key(&key) {
                continue;
            }
            let seen = fx.reads.get(&key).cloned().unwrap_or(entry);
            merged.insert(key, (seen.value.clone(), Some(seen)));
        }
        for (key, value) in fx.writes.range(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            merged.insert(key.clone(), (value.clone(), None));
        }
        // Only what is returned counts as read.
        let mut page = Vec::new();
        for (key, (value, read)) in merged {
            let Some(value) = value else { continue };
            if page.len() == limit as usize {
                break;
            }
            if let Some(entry) = read {
                fx.reads.entry(key.clone()).or_insert(entry);
            }
            page.push((key, value));
        }
        Ok(page)
    }
}

impl outbox::Host for HostState {
    async fn emit(&mut self, topic: String, payload: String) -> Result<(), outbox::EmitError> {
        let fx = &mut self.effects;
        let Some(url) = fx.grants.outbox_topics.get(&topic).cloned() else {
            return Err(outbox::EmitError::Denied(format!(
                "plugin {} may not emit on topic {topic:?} (not in its outbox_topics)",
                fx.plugin
            )));
        };
        if payload.len() > MAX_EVENT {
            return Err(outbox::EmitError::Invalid(format!(
                "payload of {} bytes is over the {MAX_EVENT}-byte limit",
                payload.len()
            )));
        }
        let data: serde_json::Value = serde_json::from_str(&payload)
            .map_err(|e| outbox::EmitError::Invalid(format!("payload is not valid JSON: {e}")))?;
        if fx.events.len() >= MAX_EVENTS {
            return Err(outbox::EmitError::Invalid(format!(
                "an attempt may emit at most {MAX_EVENTS} events"
            )));
        }
        if let Some(backlog) = &fx.backlog
            && !backlog.admits(fx.events.len() as u64 + 1)
        {
            let msg = format!(
                "outbox backlog full: {} events await delivery (max_pending {})",
                backlog.pending(),
                backlog.max()
            );
            fx.backlog_refused = Some(msg.clone());
            return Err(outbox::EmitError::BacklogFull(msg));
        }
        // The event's key and body are fixed here, once: the n-th event of
        // a job has the same key on every attempt of the job.
        let seq = fx.events.len() + 1;
        let idempotency_key = format!("{}:event:{seq}", fx.job_key);
        let body = serde_json::json!({
            "topic": topic,
            "job_id": fx.job_id,
            "idempotency_key": idempotency_key,
            "data": data,
        });
        fx.events.push(NewEvent {
            topic,
            url,
            body: body.to_string().into_bytes(),
            idempotency_key,
        });
        Ok(())
    }
}
