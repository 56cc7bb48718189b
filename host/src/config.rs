//! Configuration: the TOML file as written ([`RawConfig`]) and the validated
//! [`Config`] with every default applied, built once at start-up.
//!
//! Unknown keys, bad durations and bad sizes are errors that name the key.
//! Relative paths in a config file are relative to the file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::api::ApiConfig; // a leaf: api/settings.rs
use crate::job::AttemptOutcome;
use crate::outbox::OutboxConfig;
use crate::plugins::PluginSettings;
use crate::policy::{BreakerPolicy, RateLimit, parse_rate};
use crate::retention::RetentionConfig;
use crate::sandbox::HttpRule;
use crate::schedule::SchedulerConfig;
use crate::store::StoreOptions;
use crate::store::postgres::PgOptions;
use crate::store::sqlite::{SqliteOptions, Synchronous};

pub use crate::time::parse_duration;

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub store: StoreOptions,
    pub host: HostConfig,
    /// Settings for plugins without a `[plugins.<kind>]` table.
    pub defaults: PluginSettings,
    /// Per-kind settings, defaults already applied.
    pub plugins: BTreeMap<String, PluginSettings>,
    /// The outbox relay and its sinks.
    pub outbox: OutboxConfig,
    /// The scheduler loop.
    pub scheduler: SchedulerConfig,
    /// How long finished jobs and compacted rows are kept.
    pub retention: RetentionConfig,
    /// The admin HTTP API.
    pub api: ApiConfig,
    /// The directory relative paths resolve against (the config file's).
    pub base: PathBuf,
}

/// Settings of the host process.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Where `<kind>.wasm` plugins are loaded from.
    pub plugins_dir: PathBuf,
    /// Jobs in flight at once, across all plugins.
    pub concurrency: u32,
    /// How often the producer looks for jobs enqueued by other processes
    /// (an in-process enqueue wakes it at once).
    pub poll_interval: Duration,
    /// How long a claim holds without renewal. Renewed every `lease / 3`.
    pub lease: Duration,
    /// How often the rescuer looks for expired leases.
    pub rescue_interval: Duration,
    /// On SIGINT/SIGTERM, how long in-flight attempts may run before they
    /// are cancelled and released.
    pub shutdown_grace: Duration,
    /// The epoch tick: granularity of wall-clock deadlines.
    pub epoch_tick: Duration,
    /// Use the pooling instance allocator.
    pub pooling: bool,
    /// This host's name in leases and logs.
    pub worker_id: String,
    /// Cache compiled plugins on disk.
    pub compile_cache: bool,
    /// Where; `None`: `jobbox-cache` beside the database.
    pub cache_dir: Option<PathBuf>,
}

impl Config {
    /// The embedded default: `./jobbox.db` and `./plugins`.
    pub fn default_in(dir: &Path) -> Config {
        Config::from_raw(RawConfig::default(), dir).expect("the defaults are valid")
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).with_context(|| format!("config {}", path.display()))
    }

    /// Parses and validates config text; relative paths resolve against
    /// `base`.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Config> {
        let de =
            toml::Deserializer::parse(text).map_err(|e| anyhow::anyhow!(one_line(&e, text)))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("{path}: {}", one_line(e.inner(), text))
        })?;
        Config::from_raw(raw, base)
    }

    fn from_raw(raw: RawConfig, base: &Path) -> anyhow::Result<Config> {
        let store_raw = raw.store.unwrap_or_default();
        let host_raw = raw.host.unwrap_or_default();
        let store = store_options(store_raw, base)?;

        let host = HostConfig {
            plugins_dir: base.join(
                host_raw
                    .plugins_dir
                    .as_deref()
                    .unwrap_or(Path::new("plugins")),
            ),
            concurrency: positive("host.concurrency", host_raw.concurrency.unwrap_or(64))?,
            poll_interval: opt_duration(
                "host.poll_interval",
                &host_raw.poll_interval,
                Duration::from_millis(50),
            )?,
            lease: opt_duration("host.lease", &host_raw.lease, Duration::from_secs(30))?,
            rescue_interval: opt_duration(
                "host.rescue_interval",
                &host_raw.rescue_interval,
                Duration::from_secs(5),
            )?,
            shutdown_grace: opt_duration(
                "host.shutdown_grace",
                &host_raw.shutdown_grace,
                Duration::from_secs(10),
            )?,
            epoch_tick: opt_duration(
                "host.epoch_tick",
                &host_raw.epoch_tick,
                Duration::from_millis(1),
            )?,
            pooling: host_raw.pooling.unwrap_or(true),
            worker_id: host_raw.worker_id.unwrap_or_else(default_worker_id),
            compile_cache: host_raw.compile_cache.unwrap_or(true),
            cache_dir: host_raw.cache_dir.as_deref().map(|d| base.join(d)),
        };
        for (key, d) in [
            ("host.poll_interval", host.poll_interval),
            ("host.lease", host.lease),
            ("host.rescue_interval", host.rescue_interval),
            ("host.epoch_tick", host.epoch_tick),
        ] {
            if d.is_zero() {
                bail!("{key}: must be greater than zero");
            }
        }
        if host.lease < Duration::from_millis(300) {
            bail!("host.lease: must be at least 300ms (it is renewed every lease/3)");
        }

        let outbox = outbox_config(raw.outbox.unwrap_or_default())?;
        let builtin = PluginSettings {
            concurrency: host.concurrency,
            ..PluginSettings::default()
        };
        let raw_defaults = raw.defaults.unwrap_or_default();
        if raw_defaults.kv.is_some()
            || raw_defaults.outbox_topics.is_some()
            || raw_defaults.http_allow.is_some()
        {
            bail!(
                "defaults: capabilities (kv, outbox_topics, http_allow) are granted per plugin, in [plugins.<kind>]"
            );
        }
        if raw_defaults.rate.is_some() || raw_defaults.burst.is_some() {
            bail!("defaults: a rate limit is set per plugin, in [plugins.<kind>]");
        }
        let defaults = overlay(
            "defaults",
            &builtin,
            raw_defaults,
            host.concurrency,
            &outbox,
        )?;
        let mut plugins = BTreeMap::new();
        for (kind, p) in raw.plugins.unwrap_or_default() {
            crate::plugins::validate_kind(&kind)
                .map_err(|e| anyhow::anyhow!("plugins.{kind}: {e}"))?;
            let prefix = format!("plugins.{kind}");
            let settings = overlay(&prefix, &defaults, p, host.concurrency, &outbox)?;
            plugins.insert(kind, settings);
        }
        let scheduler = scheduler_config(raw.scheduler.unwrap_or_default())?;
        let retention = retention_config(raw.retention.unwrap_or_default())?;
        let api = api_config(raw.api.unwrap_or_default())?;
        let config = Config {
            api,
            store,
            base: base.to_owned(),
            host,
            defaults,
            plugins,
            outbox,
            scheduler,
            retention,
        };
        if let Some(keep) = config.retention.kv_tombstones {
            // A tombstone must outlive every attempt that could have read
            // the key before it was deleted (see RetentionConfig).
            let longest = config.longest_attempt();
            if keep <= longest {
                bail!(
                    "retention.kv_tombstones: must be longer than the longest attempt ({}: the largest timeout plus two leases)",
                    humantime::format_duration(longest)
                );
            }
        }
        Ok(config)
    }

    /// The longest an attempt can take from its claim to its write-back:
    /// the largest timeout, plus a lease of write-back retries, plus a
    /// lease of slack.
    pub fn longest_attempt(&self) -> Duration {
        let timeout = self
            .plugins
            .values()
            .map(|p| p.limits.timeout)
            .chain([self.defaults.limits.timeout])
            .max()
            .unwrap_or_default();
        timeout + self.host.lease * 2
    }

    /// The settings for `kind`.
    pub fn plugin(&self, kind: &str) -> &PluginSettings {
        self.plugins.get(kind).unwrap_or(&self.defaults)
    }

    /// Where compiled plugins are cached, if they are: `host.cache_dir`,
    /// else `jobbox-cache` beside the database.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if !self.host.compile_cache {
            return None;
        }
        Some(self.host.cache_dir.clone().unwrap_or_else(|| {
            self.store
                .sqlite_path()
                .and_then(Path::parent)
                .unwrap_or(&self.base)
                .join("jobbox-cache")
        }))
    }

    /// The largest memory limit of any plugin (sizes the instance pool).
    pub fn max_memory(&self) -> usize {
        self.plugins
            .values()
            .map(|p| p.limits.memory)
            .chain([self.defaults.limits.memory])
            .max()
            .unwrap_or(0)
    }
}

fn outbox_config(raw: RawOutbox) -> anyhow::Result<OutboxConfig> {
    let mut o = OutboxConfig::default();
    if let Some(n) = raw.max_pending {
        o.max_pending = positive_u64("outbox.max_pending", n)?;
    }
    o.poll_interval = opt_duration("outbox.poll_interval", &raw.poll_interval, o.poll_interval)?;
    if o.poll_interval.is_zero() {
        bail!("outbox.poll_interval: must be greater than zero");
    }
    if let Some(n) = raw.batch {
        o.batch = positive("outbox.batch", n)?;
    }
    o.request_timeout = opt_duration(
        "outbox.request_timeout",
        &raw.request_timeout,
        o.request_timeout,
    )?;
    if o.request_timeout.is_zero() {
        bail!("outbox.request_timeout: must be greater than zero");
    }
    if let Some(n) = raw.max_attempts {
        o.retry.max_attempts = positive("outbox.max_attempts", n)?;
    }
    o.retry.base = opt_duration("outbox.backoff_base", &raw.backoff_base, o.retry.base)?;
    o.retry.max = opt_duration("outbox.backoff_max", &raw.backoff_max, o.retry.max)?;
    if o.retry.max < o.retry.base {
        bail!("outbox.backoff_max: must not be less than backoff_base");
    }
    if let Some(j) = raw.backoff_jitter {
        if !(0.0..=1.0).contains(&j) {
            bail!("outbox.backoff_jitter: must be between 0 and 1, got {j}");
        }
        o.retry.jitter = j;
    }
    for (i, rule) in raw.callback_allow.iter().flatten().enumerate() {
        let parsed = HttpRule::parse(&rule.url, rule.methods.clone())
            .map_err(|e| anyhow::anyhow!("outbox.callback_allow[{i}]: {e}"))?;
        o.callback_allow.push(parsed);
    }
    for (topic, sink) in raw.sinks.unwrap_or_default() {
        if topic == crate::outbox::CALLBACK_TOPIC {
            bail!("outbox.sinks.{topic}: the topic is reserved for completion callbacks");
        }
        let key = format!("outbox.sinks.{topic}.url");
        HttpRule::parse(&sink.url, None).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        o.sinks.insert(topic, sink.url);
    }
    Ok(o)
}

fn scheduler_config(raw: RawScheduler) -> anyhow::Result<SchedulerConfig> {
    let mut s = SchedulerConfig::default();
    if let Some(e) = raw.enabled {
        s.enabled = e;
    }
    s.refresh = opt_duration("scheduler.refresh", &raw.refresh, s.refresh)?;
    if s.refresh.is_zero() {
        bail!("scheduler.refresh: must be greater than zero");
    }
    if let Some(b) = raw.batch {
        s.batch = positive("scheduler.batch", b)?;
    }
    Ok(s)
}

fn api_config(raw: RawApi) -> anyhow::Result<ApiConfig> {
    let mut a = ApiConfig::default();
    if let Some(e) = raw.enabled {
        a.enabled = e;
    }
    if let Some(l) = &raw.listen {
        a.listen = l.parse().map_err(|_| {
            anyhow::anyhow!("api.listen: invalid address {l:?} (expected e.g. \"127.0.0.1:7070\")")
        })?;
    }
    a.token = match (raw.token, raw.token_env) {
        (Some(_), Some(_)) => bail!("api.token: give token or token_env, not both"),
        (Some(t), None) => Some(t),
        (None, Some(var)) => Some(std::env::var(&var).map_err(|_| {
            anyhow::anyhow!("api.token_env: the environment variable {var:?} is not set")
        })?),
        (None, None) => None,
    };
    if let Some(t) = &a.token
        && (t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        bail!("api.token: must be at least 16 characters, with no spaces");
    }
    if a.token.is_none() && !a.listen.ip().is_loopback() {
        bail!(
            "api.listen: {} is not a loopback address, and the API has no token: set api.token (or api.token_env), or listen on 127.0.0.1",
            a.listen
        );
    }
    if let Some(r) = raw.read_only {
        a.read_only = r;
    }
    if let Some(d) = raw.dashboard {
        a.dashboard = d;
    }
    if let Some(m) = &raw.max_body {
        a.max_body = m.bytes("api.max_body")?;
        if a.max_body == 0 {
            bail!("api.max_body: must be greater than zero");
        }
    }
    a.request_timeout = opt_duration(
        "api.request_timeout",
        &raw.request_timeout,
        a.request_timeout,
    )?;
    a.header_timeout = opt_duration("api.header_timeout", &raw.header_timeout, a.header_timeout)?;
    for (key, d) in [
        ("api.request_timeout", a.request_timeout),
        ("api.header_timeout", a.header_timeout),
    ] {
        if d.is_zero() {
            bail!("{key}: must be greater than zero");
        }
    }
    Ok(a)
}

fn retention_config(raw: RawRetention) -> anyhow::Result<RetentionConfig> {
    let mut r = RetentionConfig::default();
    let keep =
        |key: &str, v: &Option<String>, d: Option<Duration>| -> anyhow::Result<Option<Duration>> {
            match v.as_deref().map(str::trim) {
                None => Ok(d),
                Some("forever") => Ok(None),
                Some(text) => {
                    let d = duration(key, text)?;
                    if d.is_zero() {
                        bail!("{key}: must be greater than zero (or \"forever\")");
                    }
                    Ok(Some(d))
                }
            }
        };
    r.completed = keep("retention.completed", &raw.completed, r.completed)?;
    r.discarded = keep("retention.discarded", &raw.discarded, r.discarded)?;
    r.kv_tombstones = keep(
        "retention.kv_tombstones",
        &raw.kv_tombstones,
        r.kv_tombstones,
    )?;
    r.delivered_events = keep(
        "retention.delivered_events",
        &raw.delivered_events,
        r.delivered_events,
    )?;
    r.interval = opt_duration("retention.interval", &raw.interval, r.interval)?;
    if r.interval.is_zero() {
        bail!("retention.interval: must be greater than zero");
    }
    if let Some(b) = raw.batch {
        r.batch = positive("retention.batch", b)?;
    }
    Ok(r)
}

fn overlay(
    prefix: &str,
    base: &PluginSettings,
    raw: RawPlugin,
    host_concurrency: u32,
    outbox: &OutboxConfig,
) -> anyhow::Result<PluginSettings> {
    let mut s = base.clone();
    if let Some(kv) = raw.kv {
        s.grants.kv = kv;
    }
    for topic in raw.outbox_topics.iter().flatten() {
        let Some(url) = outbox.sinks.get(topic) else {
            bail!(
                "{prefix}.outbox_topics: no sink for topic {topic:?} (add [outbox.sinks.{topic}] with a url)"
            );
        };
        s.grants.outbox_topics.insert(topic.clone(), url.clone());
    }
    for (i, rule) in raw.http_allow.iter().flatten().enumerate() {
        let parsed = HttpRule::parse(&rule.url, rule.methods.clone())
            .map_err(|e| anyhow::anyhow!("{prefix}.http_allow[{i}]: {e}"))?;
        s.grants.http.push(parsed);
    }
    if let Some(m) = &raw.http_max_response {
        let key = format!("{prefix}.http_max_response");
        s.grants.http_max_response = m.bytes(&key)?;
        if s.grants.http_max_response == 0 {
            bail!("{key}: must be greater than zero");
        }
    }
    if let Some(fuel) = raw.fuel {
        s.limits.fuel = positive_u64(&format!("{prefix}.fuel"), fuel)?;
    }
    if let Some(t) = &raw.timeout {
        s.limits.timeout = duration(&format!("{prefix}.timeout"), t)?;
        if s.limits.timeout.is_zero() {
            bail!("{prefix}.timeout: must be greater than zero");
        }
    }
    if let Some(m) = &raw.memory {
        let key = format!("{prefix}.memory");
        s.limits.memory = m.bytes(&key)?;
        if s.limits.memory < 64 * 1024 {
            bail!("{key}: must be at least 64KiB (one wasm page)");
        }
    }
    if let Some(c) = raw.concurrency {
        s.concurrency = positive(&format!("{prefix}.concurrency"), c)?.min(host_concurrency);
    }
    if let Some(n) = raw.max_attempts {
        s.retry.max_attempts = positive(&format!("{prefix}.max_attempts"), n)?;
    }
    if let Some(d) = &raw.backoff_base {
        s.retry.base = duration(&format!("{prefix}.backoff_base"), d)?;
    }
    if let Some(d) = &raw.backoff_max {
        s.retry.max = duration(&format!("{prefix}.backoff_max"), d)?;
    }
    if s.retry.max < s.retry.base {
        bail!(
            "{prefix}.backoff_max: must not be less than backoff_base ({})",
            humantime::format_duration(s.retry.base)
        );
    }
    if let Some(j) = raw.backoff_jitter {
        if !(0.0..=1.0).contains(&j) {
            bail!("{prefix}.backoff_jitter: must be between 0 and 1, got {j}");
        }
        s.retry.jitter = j;
    }
    if let Some(m) = &raw.max_payload {
        let key = format!("{prefix}.max_payload");
        s.max_payload = m.bytes(&key)?;
        if s.max_payload == 0 {
            bail!("{key}: must be greater than zero");
        }
    }
    if let Some(m) = &raw.max_output {
        let key = format!("{prefix}.max_output");
        s.limits.max_output = m.bytes(&key)?;
        if s.limits.max_output == 0 {
            bail!("{key}: must be greater than zero");
        }
    }
    if let Some(n) = raw.max_conflicts {
        s.max_conflicts = n;
    }
    if let Some(r) = raw.record {
        s.record = r;
    }
    if let Some(m) = &raw.record_max {
        s.record_max = m.bytes(&format!("{prefix}.record_max"))?;
    }
    s.breaker = breaker_policy(prefix, s.breaker.take(), &raw)?;
    if let Some(rate) = &raw.rate {
        let (count, period) =
            parse_rate(rate).map_err(|e| anyhow::anyhow!("{prefix}.rate: {e}"))?;
        s.rate = Some(RateLimit {
            count,
            period,
            burst: 1,
        });
    }
    if let Some(burst) = raw.burst {
        let Some(rate) = &mut s.rate else {
            bail!("{prefix}.burst: needs a rate");
        };
        rate.burst = positive(&format!("{prefix}.burst"), burst)?;
    }
    Ok(s)
}

/// The breaker after the `breaker_*` keys of `raw`: `breaker_failures = 0`
/// turns it off.
fn breaker_policy(
    prefix: &str,
    base: Option<BreakerPolicy>,
    raw: &RawPlugin,
) -> anyhow::Result<Option<BreakerPolicy>> {
    if raw.breaker_failures == Some(0) {
        if raw.breaker_window.is_some()
            || raw.breaker_cooldown.is_some()
            || raw.breaker_outcomes.is_some()
        {
            bail!(
                "{prefix}.breaker_failures: is 0 (off), so the other breaker keys have no effect"
            );
        }
        return Ok(None);
    }
    let touched = raw.breaker_failures.is_some()
        || raw.breaker_window.is_some()
        || raw.breaker_cooldown.is_some()
        || raw.breaker_outcomes.is_some();
    let mut b = match base {
        Some(b) => b,
        None if touched => BreakerPolicy::default(),
        None => return Ok(None),
    };
    if let Some(n) = raw.breaker_failures {
        b.failures = n;
    }
    if let Some(w) = &raw.breaker_window {
        b.window = duration(&format!("{prefix}.breaker_window"), w)?;
        if b.window.is_zero() {
            bail!("{prefix}.breaker_window: must be greater than zero");
        }
    }
    if let Some(c) = &raw.breaker_cooldown {
        b.cooldown = duration(&format!("{prefix}.breaker_cooldown"), c)?;
        if b.cooldown.is_zero() {
            bail!("{prefix}.breaker_cooldown: must be greater than zero");
        }
    }
    if let Some(list) = &raw.breaker_outcomes {
        let key = format!("{prefix}.breaker_outcomes");
        if list.is_empty() {
            bail!("{key}: list at least one outcome (or set breaker_failures = 0 to turn it off)");
        }
        b.outcomes = list
            .iter()
            .map(|o| {
                let outcome: AttemptOutcome = o
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("{key}: {e}"))?;
                if !BreakerPolicy::COUNTABLE.contains(&outcome) {
                    bail!(
                        "{key}: {o:?} says nothing about the plugin (countable: {})",
                        BreakerPolicy::COUNTABLE
                            .map(AttemptOutcome::as_str)
                            .join(", ")
                    );
                }
                Ok(outcome)
            })
            .collect::<anyhow::Result<_>>()?;
    }
    Ok(Some(b))
}

/// The config file as written. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub store: Option<RawStore>,
    pub host: Option<RawHost>,
    pub defaults: Option<RawPlugin>,
    pub plugins: Option<BTreeMap<String, RawPlugin>>,
    pub outbox: Option<RawOutbox>,
    pub scheduler: Option<RawScheduler>,
    pub retention: Option<RawRetention>,
    pub api: Option<RawApi>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub read_only: Option<bool>,
    pub dashboard: Option<bool>,
    pub max_body: Option<RawSize>,
    pub request_timeout: Option<String>,
    pub header_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScheduler {
    pub enabled: Option<bool>,
    pub refresh: Option<String>,
    pub batch: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub completed: Option<String>,
    pub discarded: Option<String>,
    pub kv_tombstones: Option<String>,
    pub delivered_events: Option<String>,
    pub interval: Option<String>,
    pub batch: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    pub max_pending: Option<u64>,
    pub poll_interval: Option<String>,
    pub batch: Option<u32>,
    pub request_timeout: Option<String>,
    pub max_attempts: Option<u32>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    pub backoff_jitter: Option<f64>,
    pub sinks: Option<BTreeMap<String, RawSink>>,
    pub callback_allow: Option<Vec<RawHttpRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpRule {
    /// `scheme://host[:port]`; a path is ignored.
    pub url: String,
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub path: Option<PathBuf>,
    pub synchronous: Option<String>,
    pub busy_timeout: Option<String>,
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub pool: Option<usize>,
    pub connect_timeout: Option<String>,
    pub listen: Option<bool>,
}

/// `[store]`: a SQLite path (the default), or a PostgreSQL URL. The shared
/// database has no default: it is used only when a URL is given.
fn store_options(raw: RawStore, base: &Path) -> anyhow::Result<StoreOptions> {
    let url = match (raw.url, raw.url_env) {
        (Some(_), Some(_)) => bail!("store.url: give url or url_env, not both"),
        (Some(u), None) => Some(u),
        (None, Some(var)) => Some(std::env::var(&var).map_err(|_| {
            anyhow::anyhow!("store.url_env: the environment variable {var:?} is not set")
        })?),
        (None, None) => None,
    };
    let Some(url) = url else {
        for (set, name) in [
            (raw.pool.is_some(), "pool"),
            (raw.connect_timeout.is_some(), "connect_timeout"),
            (raw.listen.is_some(), "listen"),
        ] {
            if set {
                bail!("store.{name}: only applies to PostgreSQL (set store.url)");
            }
        }
        let mut o =
            SqliteOptions::new(base.join(raw.path.as_deref().unwrap_or(Path::new("jobbox.db"))));
        if let Some(s) = &raw.synchronous {
            o.synchronous = s
                .parse::<Synchronous>()
                .map_err(|e| anyhow::anyhow!("store.synchronous: {e}"))?;
        }
        if let Some(d) = &raw.busy_timeout {
            o.busy_timeout = duration("store.busy_timeout", d)?;
        }
        return Ok(StoreOptions::Sqlite(o));
    };
    for (set, name) in [
        (raw.path.is_some(), "path"),
        (raw.synchronous.is_some(), "synchronous"),
        (raw.busy_timeout.is_some(), "busy_timeout"),
    ] {
        if set {
            bail!("store.{name}: only applies to SQLite, but store.url names PostgreSQL");
        }
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!(
            "store.url: expected a postgres:// URL, got {:?}",
            crate::store::postgres::redact(&url)
        );
    }
    if let Err(e) = url.parse::<postgres::Config>() {
        bail!(
            "store.url: invalid PostgreSQL URL {:?}: {e}",
            crate::store::postgres::redact(&url)
        );
    }
    let mut o = PgOptions::new(url);
    if let Some(n) = raw.pool {
        if !(1..=64).contains(&n) {
            bail!("store.pool: must be 1 to 64 read connections, got {n}");
        }
        o.pool = n;
    }
    if let Some(d) = &raw.connect_timeout {
        o.connect_timeout = duration("store.connect_timeout", d)?;
    }
    if let Some(l) = raw.listen {
        o.listen = l;
    }
    Ok(StoreOptions::Postgres(o))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub plugins_dir: Option<PathBuf>,
    pub concurrency: Option<u32>,
    pub poll_interval: Option<String>,
    pub lease: Option<String>,
    pub rescue_interval: Option<String>,
    pub shutdown_grace: Option<String>,
    pub epoch_tick: Option<String>,
    pub pooling: Option<bool>,
    pub worker_id: Option<String>,
    pub compile_cache: Option<bool>,
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub fuel: Option<u64>,
    pub timeout: Option<String>,
    pub memory: Option<RawSize>,
    pub concurrency: Option<u32>,
    pub max_attempts: Option<u32>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    pub backoff_jitter: Option<f64>,
    pub kv: Option<bool>,
    pub outbox_topics: Option<Vec<String>>,
    pub http_allow: Option<Vec<RawHttpRule>>,
    pub http_max_response: Option<RawSize>,
    pub max_payload: Option<RawSize>,
    pub max_output: Option<RawSize>,
    pub max_conflicts: Option<u32>,
    pub breaker_failures: Option<u32>,
    pub breaker_window: Option<String>,
    pub breaker_cooldown: Option<String>,
    pub breaker_outcomes: Option<Vec<String>>,
    pub rate: Option<String>,
    pub burst: Option<u32>,
    pub record: Option<bool>,
    pub record_max: Option<RawSize>,
}

/// A size: bytes as an integer, or a string such as `"64MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

impl RawSize {
    fn bytes(&self, key: &str) -> anyhow::Result<usize> {
        match self {
            RawSize::Bytes(n) => usize::try_from(*n).with_context(|| format!("{key}: too large")),
            RawSize::Text(s) => parse_size(s).map_err(|e| anyhow::anyhow!("{key}: {e}")),
        }
    }
}

/// Parses sizes like `512`, `64KiB`, `16MiB`, `1GiB` (also `KB`, `MB`,
/// `GB` as powers of 1000).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (expected e.g. \"64MiB\")"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn duration(key: &str, s: &str) -> anyhow::Result<Duration> {
    parse_duration(s).map_err(|e| anyhow::anyhow!("{key}: {e}"))
}

fn opt_duration(key: &str, s: &Option<String>, default: Duration) -> anyhow::Result<Duration> {
    s.as_deref().map_or(Ok(default), |s| duration(key, s))
}

fn positive(key: &str, n: u32) -> anyhow::Result<u32> {
    if n == 0 {
        bail!("{key}: must be at least 1");
    }
    Ok(n)
}

fn positive_u64(key: &str, n: u64) -> anyhow::Result<u64> {
    if n == 0 {
        bail!("{key}: must be at least 1");
    }
    Ok(n)
}

/// A TOML error as one line: its message and, if known, its position.
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("{msg} (line {line})")
        }
        None => msg,
    }
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size(" 16MiB "), Ok(16 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert!(
            parse_size("12 bananas")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let err = Config::parse("[host]\nlease = \"5x\"\n", Path::new(".")).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("host.lease: invalid duration"),
            "{err:#}"
        );
        let err = Config::parse("[plugins.echo]\nfule = 1\n", Path::new(".")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with("plugins.echo.fule: unknown field `fule`"),
            "{msg}"
        );
        assert!(msg.contains("(line 2)"), "{msg}");
        let err = Config::parse("[plugins.\"bad kind\"]\n", Path::new(".")).unwrap_err();
        assert!(format!("{err:#}").contains("invalid kind"));
        let err = Config::parse("[defaults]\nkv = true\n", Path::new(".")).unwrap_err();
        assert!(format!("{err:#}").contains("granted per plugin"));
    }

    #[test]
    fn safeguard_and_retention_keys_are_checked() {
        let err = |text: &str| format!("{:#}", Config::parse(text, Path::new(".")).unwrap_err());
        assert!(err("[plugins.a]\nrate = \"fast\"\n").starts_with("plugins.a.rate: invalid rate"));
        assert!(err("[plugins.a]\nburst = 3\n").starts_with("plugins.a.burst: needs a rate"));
        assert!(err("[defaults]\nrate = \"1/s\"\n").contains("per plugin"));
        assert!(
            err("[plugins.a]\nbreaker_outcomes = [\"kv_conflict\"]\n")
                .contains("says nothing about the plugin")
        );
        assert!(
            err("[plugins.a]\nbreaker_failures = 0\nbreaker_window = \"1m\"\n")
                .contains("no effect")
        );
        assert!(
            err("[retention]\nkv_tombstones = \"1m\"\n")
                .starts_with("retention.kv_tombstones: must be longer than the longest attempt")
        );
        assert!(err("[retention]\ncompleted = \"0s\"\n").contains("forever"));
        assert!(err("[scheduler]\nrefesh = \"1s\"\n").contains("unknown field `refesh`"));
        let c = Config::parse(
            "[retention]\ncompleted = \"forever\"\n[plugins.a]\nrate = \"10/min\"\nburst = 4\nbreaker_failures = 0\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.retention.completed, None);
        let a = c.plugin("a");
        assert_eq!(a.breaker, None);
        let rate = a.rate.unwrap();
        assert_eq!(
            (rate.count, rate.period, rate.burst),
            (10, Duration::from_secs(60), 4)
        );
        assert!(c.plugin("b").breaker.is_some(), "on by default");
    }

    #[test]
    fn plugin_tables_overlay_the_defaults() {
        let config = Config::parse(
            "[defaults]\ntimeout = \"5s\"\nmax_attempts = 3\n[plugins.a]\nmemory = \"8MiB\"\n",
            Path::new("/etc/jobbox"),
        )
        .unwrap();
        let a = config.plugin("a");
        assert_eq!(a.limits.timeout, Duration::from_secs(5));
        assert_eq!(a.limits.memory, 8 << 20);
        assert_eq!(a.retry.max_attempts, 3);
        assert!(!a.grants.kv);
        assert_eq!(
            config.plugin("unknown").limits.memory,
            crate::sandbox::Limits::default().memory
        );
        assert_eq!(
            config.store.sqlite_path(),
            Some(Path::new("/etc/jobbox/jobbox.db"))
        );
    }
}
