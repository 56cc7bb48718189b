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

use crate::outbox::OutboxConfig;
use crate::sandbox::{DEFAULT_HTTP_MAX_RESPONSE, Grants, HttpRule, Limits};
use crate::store::sqlite::{SqliteOptions, Synchronous};

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub store: SqliteOptions,
    pub host: HostConfig,
    /// Settings for plugins without a `[plugins.<kind>]` table.
    pub defaults: PluginSettings,
    /// Per-kind settings, defaults already applied.
    pub plugins: BTreeMap<String, PluginSettings>,
    /// The outbox relay and its sinks.
    pub outbox: OutboxConfig,
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
}

/// What applies to one plugin kind.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PluginSettings {
    #[serde(flatten)]
    pub limits: Limits,
    /// Attempts of this kind in flight at once (never more than the host's).
    pub concurrency: u32,
    pub retry: RetryPolicy,
    /// Capabilities beyond plain WASI; none by default.
    pub grants: Grants,
}

/// Backoff between attempts: `min(max, base * 2^(attempt-1))` plus up to
/// `jitter` of that at random. A plugin's `retry-after` replaces the
/// exponential part (still capped at `max`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct RetryPolicy {
    /// Attempts a job gets when enqueue does not say.
    pub max_attempts: u32,
    #[serde(serialize_with = "ser_duration")]
    pub base: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub max: Duration,
    /// Fraction of the delay added at random, in `[0, 1]`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            jitter: 0.1,
        }
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
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
        let mut store = SqliteOptions::new(
            base.join(store_raw.path.as_deref().unwrap_or(Path::new("jobbox.db"))),
        );
        if let Some(s) = &store_raw.synchronous {
            store.synchronous = s
                .parse::<Synchronous>()
                .map_err(|e| anyhow::anyhow!("store.synchronous: {e}"))?;
        }
        if let Some(d) = &store_raw.busy_timeout {
            store.busy_timeout = duration("store.busy_timeout", d)?;
        }

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
            limits: Limits::default(),
            concurrency: host.concurrency,
            retry: RetryPolicy::default(),
            grants: Grants {
                http_max_response: DEFAULT_HTTP_MAX_RESPONSE,
                ..Grants::default()
            },
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
        Ok(Config {
            store,
            host,
            defaults,
            plugins,
            outbox,
        })
    }

    /// The settings for `kind`.
    pub fn plugin(&self, kind: &str) -> &PluginSettings {
        self.plugins.get(kind).unwrap_or(&self.defaults)
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
    for topic in raw.outbox_topics.unwrap_or_default() {
        let Some(url) = outbox.sinks.get(&topic) else {
            bail!(
                "{prefix}.outbox_topics: no sink for topic {topic:?} (add [outbox.sinks.{topic}] with a url)"
            );
        };
        s.grants.outbox_topics.insert(topic, url.clone());
    }
    for (i, rule) in raw.http_allow.unwrap_or_default().into_iter().enumerate() {
        let parsed = HttpRule::parse(&rule.url, rule.methods)
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
    Ok(s)
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

/// Parses a duration such as `"250ms"`, `"30s"`, `"1h 30m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
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
            Limits::default().memory
        );
        assert_eq!(config.store.path, Path::new("/etc/jobbox/jobbox.db"));
    }
}
