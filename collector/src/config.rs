//! Collector configuration: a TOML file over built-in defaults.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere) so a misspelt key fails loudly instead of
//! silently keeping a default. Every field documents its default; `collector.example.toml`
//! spells out the same defaults and a test checks that they agree.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors loading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type...).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the line, column and offending key.
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listeners, limits and registration.
    pub server: ServerConfig,
    /// Upload validation and per-probe limits.
    pub ingest: IngestConfig,
    /// Where measurements and events are stored.
    pub store: StoreConfig,
    /// How verdicts are aggregated into events.
    pub aggregation: AggregationConfig,
    /// Where events are sent.
    pub webhook: WebhookConfig,
    /// The control measurement service.
    pub control: ControlConfig,
    /// Bounds on the `/metrics` output.
    pub metrics: MetricsConfig,
    /// The IP → ASN table.
    pub asn: AsnConfig,
}

/// `[asn]`: where the collector learns which network an address belongs to (see
/// [`crate::asn`]). Without a table the collector answers "unknown": probes then need their
/// `asn` configured, and localisations name no router's network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsnConfig {
    /// An `ip2asn-combined.tsv` (or `.tsv.gz`) from iptoasn.com, read at start.
    pub database: Option<PathBuf>,
}

/// Who may register a probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Registration {
    /// Anyone may register (rate-limited); an invite is optional.
    #[default]
    Open,
    /// Registration needs an invite token made with `witness-collector token create`.
    Invite,
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the API listener. Default `127.0.0.1:8080` (put a TLS reverse proxy in front).
    pub listen: SocketAddr,
    /// Separate listener for `/metrics`; when set, the API listener does not serve `/metrics`.
    /// Default: none (metrics on the API listener).
    pub metrics_listen: Option<SocketAddr>,
    /// Largest upload body (`POST /api/v1/measurements`), before and after gzip
    /// decompression. Other routes have their own small fixed limits (register 4 KiB, control
    /// 16 KiB). Default 8 MiB.
    pub max_body_bytes: usize,
    /// Connections open at once on the API listener; further connections are closed at once.
    /// Default 1024.
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 /64), so one client cannot
    /// hold the whole `max_connections`; further connections from it are closed at once.
    /// Not applied behind a proxy (`client_address_header` or `trusted_proxies` set), where
    /// every connection comes from the proxy; a quarter of the cap by default so a proxy that
    /// is not declared still has room. 0: no limit. Default 256.
    pub max_connections_per_client: usize,
    /// Time a client has to send a request's headers, counted from the first read of the
    /// request (and between requests on a kept-alive connection). Default `10s`.
    pub header_read_timeout: HumanDuration,
    /// Time a client has to send a request's body, counted once it is authenticated.
    /// Default `60s`.
    pub body_read_timeout: HumanDuration,
    /// Read requests (`GET`, the health check aside) served at once; more wait up to 2 s,
    /// then get 503. Keep it below `[store] max_connections` so uploads always find a store
    /// connection while anonymous reads queue. Default 4.
    pub max_concurrent_reads: usize,
    /// Of those, read requests one client (address, or IPv6 /64) may have at once; more get
    /// 429. Default 2.
    pub max_reads_per_client: usize,
    /// `open` or `invite`. Default `open`.
    pub registration: Registration,
    /// Open registrations allowed per hour across all clients (token bucket refill).
    /// Default 60.
    pub register_per_hour: u32,
    /// Burst of open registrations. Default 10.
    pub register_burst: u32,
    /// Open registrations per hour from one client (its address, or its /64 for IPv6),
    /// checked before the global bucket so one client cannot spend it all. The buckets live in
    /// memory only, keyed by a salted hash. Default 4.
    pub register_per_client_per_hour: u32,
    /// Open registrations per hour from one network prefix (a /24 for IPv4, a /48 for IPv6),
    /// so the addresses of one network share a bucket. A prefix with no registration within
    /// its refill period may register even when the global bucket is empty, into a reserve
    /// of `register_burst`: a few networks cannot keep registration closed for everyone else
    /// (issue #20). Default 10.
    pub register_per_prefix_per_hour: u32,
    /// Failed invite attempts per hour from one client; when spent, invite registrations from
    /// it are refused without touching the store. Default 10.
    pub invite_failures_per_hour: u32,
    /// Request header holding the client's address when a reverse proxy sits in front
    /// (e.g. `X-Real-IP`, which the proxy sets). Used for the control service's
    /// `your_address` and, hashed, for the per-client buckets; never stored or logged. A list
    /// (`X-Forwarded-For`) is read from the right (see `trusted_proxies`), never the first
    /// entry, which the client writes. Default: none (the TCP peer address).
    pub client_address_header: Option<String>,
    /// Reverse proxies in front of the collector that append to `X-Forwarded-For` (or to
    /// `client_address_header`): the client is the entry this many places from the right.
    /// 0 with no header set: proxy headers are ignored and the TCP peer is the client (a
    /// client reaching the collector directly cannot pick its own address). Default 0.
    pub trusted_proxies: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            max_body_bytes: 8 * 1024 * 1024,
            max_connections: 1024,
            max_connections_per_client: 256,
            header_read_timeout: HumanDuration::from_secs(10),
            body_read_timeout: HumanDuration::from_secs(60),
            max_concurrent_reads: 4,
            max_reads_per_client: 2,
            registration: Registration::Open,
            register_per_hour: 60,
            register_burst: 10,
            register_per_client_per_hour: 4,
            register_per_prefix_per_hour: 10,
            invite_failures_per_hour: 10,
            client_address_header: None,
            trusted_proxies: 0,
        }
    }
}

/// `[ingest]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Most records in one upload. Default 1000.
    pub max_batch: usize,
    /// Largest single record (JSON bytes). Default 256 KiB.
    pub max_record_bytes: usize,
    /// Oldest `started_at` accepted. Default `30d`.
    pub max_age: HumanDuration,
    /// How far in the future `started_at` may be (probe clock skew). Default `10m`.
    pub max_clock_skew: HumanDuration,
    /// Uploads per probe per minute (token bucket refill). Default 30.
    pub uploads_per_minute: u32,
    /// Burst of uploads per probe. Default 10.
    pub upload_burst: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch: 1000,
            max_record_bytes: 256 * 1024,
            max_age: HumanDuration::from_secs(30 * 86_400),
            max_clock_skew: HumanDuration::from_secs(600),
            uploads_per_minute: 30,
            upload_burst: 10,
        }
    }
}

/// `[store]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` or a plain path (one collector), or `postgres://USER:PASSWORD@HOST/DB`
    /// (any number of collectors sharing one database; see `docs/scaling.md`). Default
    /// `sqlite://witness-collector.db` (relative to the working directory).
    pub url: String,
    /// Connection pool size. Default 8.
    pub max_connections: u32,
    /// Longest time one read may keep the database busy: SQLite counts the time spent
    /// executing (not waiting for a slow client), PostgreSQL's `statement_timeout` on the
    /// connections of reads. A read past it gets 503. Default `30s`.
    pub read_timeout: HumanDuration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://witness-collector.db".to_string(),
            max_connections: 8,
            read_timeout: HumanDuration::from_secs(30),
        }
    }
}

/// `[aggregation]`: the event rule, documented in `docs/collector-api.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregationConfig {
    /// Sliding window over the measurements' own `started_at`. Default `6h`.
    pub window: HumanDuration,
    /// Distinct probes that must agree to open or close an event. Default 2.
    pub min_probes: usize,
    /// Consecutive agreeing measurements needed when the network has a single probe.
    /// Default 3.
    pub min_measurements: usize,
    /// Share of probes (with an accessible or blocked latest verdict) that must see the block.
    /// Default 0.5. Lower it to catch blocks on only part of a network.
    pub min_share: f64,
    /// Period of the catch-up sweep that re-evaluates every recent site and network, first at
    /// start (covers a crash between commit and evaluation). `0s` disables it. Default `15m`.
    pub evaluate_interval: HumanDuration,
    /// A probe counts in the quorum (agreeing, disagreeing, or as a second probe of a site) only
    /// once its token is this old: a fake registered for an attack waits too. Default `3d`.
    pub probe_min_age: HumanDuration,
    /// ... and once it has uploaded in this many distinct hours (of arrival, the collector's
    /// clock). Default 24. `probe_min_age = "0s"` with `probe_min_hours = 0` counts every probe
    /// at once (a lab, or a test).
    pub probe_min_hours: u32,
    /// Records dated further back than this before now decide nothing, and no event starts
    /// earlier (they are stored and exported as usual). Default `24h`.
    pub max_backfill: HumanDuration,
    /// Hysteresis: an event is not closed before it has lasted this long (measurement time).
    /// Default `30m`.
    pub min_event: HumanDuration,
    /// Hysteresis: a key is not opened again before this long after it closed. Default `30m`.
    pub min_gap: HumanDuration,
    /// Most transitions (opens and closes) per key in an hour of the collector's clock; past it
    /// the key is flapping: further transitions are counted in
    /// `witness_event_transitions_suppressed_total` and logged, not raised, until the hour
    /// has passed. `0` disables the cap. Default 6.
    pub max_transitions_per_hour: u32,
}

impl Default for AggregationConfig {
    fn default() -> Self {
        AggregationConfig {
            window: HumanDuration::from_secs(6 * 3600),
            min_probes: 2,
            min_measurements: 3,
            min_share: 0.5,
            evaluate_interval: HumanDuration::from_secs(15 * 60),
            probe_min_age: HumanDuration::from_secs(3 * 86400),
            probe_min_hours: 24,
            max_backfill: HumanDuration::from_secs(24 * 3600),
            min_event: HumanDuration::from_secs(30 * 60),
            min_gap: HumanDuration::from_secs(30 * 60),
            max_transitions_per_hour: 6,
        }
    }
}

/// Payload shape of webhook notifications.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// Alertmanager's `POST /api/v2/alerts` body: a JSON array of alerts.
    #[default]
    Alertmanager,
    /// `{"transition": ..., "event": {...}}`.
    Generic,
}

/// `[webhook]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// URLs to POST events to. Default: none.
    pub urls: Vec<String>,
    /// `alertmanager` or `generic`. Default `alertmanager`.
    pub format: WebhookFormat,
    /// Timeout of one delivery attempt. Default `10s`.
    pub timeout: HumanDuration,
    /// Attempts before a notification is abandoned. Default 10.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled on every further failure. Default `5s`.
    pub initial_backoff: HumanDuration,
    /// Longest delay between retries. Default `1h`.
    pub max_backoff: HumanDuration,
    /// Alertmanager format only: re-send open events this often. Each open event is sent with
    /// `endsAt` three intervals ahead, so Alertmanager keeps it firing between re-sends
    /// whatever its `resolve_timeout`; an ended event is sent with its end, which resolves it
    /// at once. `0s` disables re-sending (open events are then sent without `endsAt`, and
    /// Alertmanager's `resolve_timeout` ends them). Default `30m`.
    pub resend_interval: HumanDuration,
    /// Base URL at which people reach this collector's pages (e.g. `https://witness.example/`):
    /// alerts pushed to Alertmanager link there (`generatorURL`: the site's page, or the status
    /// page for a shutdown). Default: `http://` + `[server] listen` + `/`.
    pub public_url: Option<String>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            urls: Vec::new(),
            format: WebhookFormat::Alertmanager,
            timeout: HumanDuration::from_secs(10),
            max_attempts: 10,
            initial_backoff: HumanDuration::from_secs(5),
            max_backoff: HumanDuration::from_secs(3600),
            resend_interval: HumanDuration::from_secs(30 * 60),
            public_url: None,
        }
    }
}

/// `[control]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Serve `POST /api/v1/control`. Default true.
    pub enabled: bool,
    /// Allow requests without a probe token (labs only). Default false.
    pub allow_anonymous: bool,
    /// Measure private and reserved targets (labs only). Default false.
    pub allow_private: bool,
    /// Reserved ranges treated as public (labs built in 198.18.0.0/15). Default: none.
    pub lab_public_ranges: Vec<IpNet>,
    /// Resolver of the control: `system` or `IP:PORT` (plain UDP). Default `system`.
    pub resolver: String,
    /// Extra trusted CA certificates (PEM files), on top of the Mozilla roots. Default: none.
    pub extra_ca_files: Vec<PathBuf>,
    /// Control measurements running at once, across all probes; more wait in the fair queue.
    /// Cache hits take none. Default 128.
    pub max_concurrency: usize,
    /// Control measurements one probe token may run at once; its further ones wait in the
    /// fair queue. Default 32, the probe's own default concurrency, so a probe alone is never
    /// slowed by its control.
    pub max_per_probe: usize,
    /// Control measurements one client address (an IPv6 /64) may run at once, all its tokens
    /// together: several tokens do not buy a larger share. Default 32.
    pub max_per_client: usize,
    /// Longest a URL waits in the fair queue for a measurement slot before it is answered
    /// 503 (its batch line says so). Default 60 seconds.
    pub queue_wait: HumanDuration,
    /// Ports the control connects to; URLs on other ports are refused. Default `[80, 443]`.
    pub allowed_ports: Vec<u16>,
    /// Limit on one control measurement, seconds. Default 60.
    pub timeout_secs: u64,
    /// Control requests (HTTP requests: a batch of URLs counts once) per probe per minute.
    /// Default 120.
    pub requests_per_minute: u32,
    /// Fresh control measurements (cache misses) one probe may cause per hour; views served
    /// from the cache are free. Default 6000: three runs an hour of a 2,000-site list with a
    /// cold cache.
    pub measurements_per_hour: u32,
    /// Bytes the control may read from sites for one probe per hour. Default 1 GiB: 2,000
    /// pages at the full 512 KiB body cap.
    pub bytes_per_hour: u64,
    /// Seconds of measurement (slot time) one probe may cause per hour. Default 36000: a
    /// 2,000-site list with a tenth of its sites hanging to the 30 s deadline takes ~8,000,
    /// so three cold runs fit; ten slots busy all hour.
    pub measure_seconds_per_hour: u64,
    /// How long one measurement of a URL is served to every probe asking for it. Default 10
    /// minutes: within the time a probe takes to notice a change, a sixth of the hourly run.
    pub cache_ttl: HumanDuration,
    /// Most URLs whose view is kept. Default 50000.
    pub cache_max_entries: usize,
    /// Most bytes of views kept (their JSON). Default 64 MiB.
    pub cache_max_bytes: usize,
    /// Most redirects one control measurement follows (a redirect's body is never read).
    /// Default 10.
    pub max_redirects: u32,
    /// Timeout of each step of a control measurement (DNS, connect, handshake, HTTP),
    /// seconds. Default 10, as the probe's.
    pub step_timeout_secs: f64,
    /// Bind the control's outgoing sockets to this local address. Default: any.
    pub source_address: Option<std::net::IpAddr>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            enabled: true,
            allow_anonymous: false,
            allow_private: false,
            lab_public_ranges: Vec::new(),
            resolver: "system".to_string(),
            extra_ca_files: Vec::new(),
            max_concurrency: 128,
            max_per_probe: 32,
            max_per_client: 32,
            queue_wait: HumanDuration::from_secs(60),
            allowed_ports: vec![80, 443],
            timeout_secs: 60,
            requests_per_minute: 120,
            measurements_per_hour: 6000,
            bytes_per_hour: 1 << 30,
            measure_seconds_per_hour: 36_000,
            cache_ttl: HumanDuration::from_secs(600),
            cache_max_entries: 50_000,
            cache_max_bytes: 64 << 20,
            max_redirects: 10,
            step_timeout_secs: 10.0,
            source_address: None,
        }
    }
}

/// `[metrics]`: bounds that keep label cardinality finite even if probes lie.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Distinct networks (ASN and country) with series of their own: on counters the first
    /// ones seen, on the per-network gauges those with the most probes; the rest are counted
    /// under `asn="other"` (their country is kept: it is from the closed ISO 3166 set).
    /// Default 2000.
    pub max_asn_labels: usize,
    /// Most `witness_site_blocked_ratio` series per scrape. Default 100000: a country's size
    /// (618 sites × 20 networks × 6 methods is ~75,000) fits, a flood of fake sites does not.
    pub max_site_series: usize,
    /// How often the in-memory read model behind `/metrics` is merged with the store's, so a
    /// replica's gauges include what other replicas sharing the database ingested (its own
    /// uploads count at once). The staleness bound of the gauges across replicas. `0s`: only
    /// once, before the first scrape. Default 15s.
    pub resync_interval: HumanDuration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_asn_labels: 2000,
            max_site_series: 100_000,
            resync_interval: HumanDuration::from_secs(15),
        }
    }
}

impl Config {
    /// Load a file, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parse TOML text and check the values.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    /// Range checks that serde cannot express.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        let a = &self.aggregation;
        if a.window.0.is_zero() {
            return bad("aggregation.window must be positive");
        }
        if a.min_probes == 0 || a.min_measurements == 0 {
            return bad("aggregation.min_probes and min_measurements must be at least 1");
        }
        if !(a.min_share > 0.0 && a.min_share <= 1.0) {
            return bad("aggregation.min_share must be in (0, 1]");
        }
        if a.max_backfill.0 < a.window.0 {
            return bad("aggregation.max_backfill must be at least the window");
        }
        if self.server.max_body_bytes < 1024 {
            return bad("server.max_body_bytes must be at least 1024");
        }
        if self.ingest.max_batch == 0 || self.ingest.max_record_bytes == 0 {
            return bad("ingest.max_batch and max_record_bytes must be positive");
        }
        if self.ingest.uploads_per_minute == 0 || self.ingest.upload_burst == 0 {
            return bad("ingest.uploads_per_minute and upload_burst must be positive");
        }
        if self.server.register_per_hour == 0 || self.server.register_burst == 0 {
            return bad("server.register_per_hour and register_burst must be positive");
        }
        if self.server.register_per_client_per_hour == 0
            || self.server.register_per_prefix_per_hour == 0
            || self.server.invite_failures_per_hour == 0
        {
            return bad(
                "server.register_per_client_per_hour, register_per_prefix_per_hour and \
                 invite_failures_per_hour must be positive",
            );
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections must be positive");
        }
        if self.server.max_concurrent_reads == 0 || self.server.max_reads_per_client == 0 {
            return bad("server.max_concurrent_reads and max_reads_per_client must be positive");
        }
        if self.store.read_timeout.0.is_zero() {
            return bad("store.read_timeout must be positive");
        }
        if self.server.trusted_proxies > 16 {
            return bad("server.trusted_proxies must be at most 16");
        }
        if self.server.header_read_timeout.0.is_zero() || self.server.body_read_timeout.0.is_zero()
        {
            return bad("server.header_read_timeout and body_read_timeout must be positive");
        }
        if self.control.allowed_ports.is_empty() {
            return bad("control.allowed_ports must list at least one port (default [80, 443])");
        }
        if self.control.max_per_probe == 0 || self.control.max_per_client == 0 {
            return bad("control.max_per_probe and max_per_client must be positive");
        }
        if self.control.measurements_per_hour == 0
            || self.control.bytes_per_hour == 0
            || self.control.measure_seconds_per_hour == 0
        {
            return bad(
                "control.measurements_per_hour, bytes_per_hour and measure_seconds_per_hour must be positive",
            );
        }
        if self.control.cache_max_entries == 0 || self.control.cache_max_bytes == 0 {
            return bad("control.cache_max_entries and cache_max_bytes must be positive");
        }
        if self.control.max_redirects > 20 {
            return bad("control.max_redirects must be at most 20");
        }
        if self.control.max_concurrency == 0 || self.control.timeout_secs == 0 {
            return bad("control.max_concurrency and timeout_secs must be positive");
        }
        if self.control.requests_per_minute == 0 {
            return bad("control.requests_per_minute must be positive");
        }
        if self.webhook.max_attempts == 0 {
            return bad("webhook.max_attempts must be at least 1");
        }
        for u in &self.webhook.urls {
            match url::Url::parse(u) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "webhook.urls: {u:?} is not an http(s) URL"
                    )))
                }
            }
        }
        if let Some(u) = &self.webhook.public_url {
            match url::Url::parse(u) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "webhook.public_url: {u:?} is not an http(s) URL"
                    )))
                }
            }
        }
        Ok(())
    }

    /// The base URL of this collector's pages, ending in `/`: `[webhook] public_url`, or the
    /// API listener's address.
    pub fn public_url(&self) -> String {
        let base = self
            .webhook
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}/", self.server.listen));
        if base.ends_with('/') {
            base
        } else {
            format!("{base}/")
        }
    }
}

/// A duration written as `90s`, `10m`, `6h`, `30d` (or `250ms`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }

    /// As a `chrono` delta, saturating at the largest representable value.
    pub fn to_chrono(self) -> chrono::TimeDelta {
        chrono::TimeDelta::from_std(self.0).unwrap_or(chrono::TimeDelta::MAX)
    }
}

/// Why a text is not a [`HumanDuration`]; each variant holds the (trimmed) text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// No leading whole number.
    #[error("invalid duration {0:?}: expected e.g. 90s, 10m, 6h, 30d")]
    Number(String),
    /// A unit other than ms, s, m, h, d.
    #[error("invalid duration unit in {0:?}: expected ms, s, m, h or d")]
    Unit(String),
    /// More milliseconds than a u64 holds.
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

impl FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, DurationError> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| DurationError::Number(s.to_string()))?;
        let mult_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(DurationError::Unit(s.to_string())),
        };
        n.checked_mul(mult_ms)
            .map(|ms| HumanDuration(Duration::from_millis(ms)))
            .ok_or_else(|| DurationError::TooLarge(s.to_string()))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms != 0 && ms % size == 0 {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        if ms == 0 {
            return f.write_str("0s");
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        let cases = [
            ("6h", 6 * 3_600_000),
            ("30d", 30 * 86_400_000),
            ("10m", 600_000),
            ("90s", 90_000),
            ("250ms", 250),
            ("0s", 0),
        ];
        for (text, ms) in cases {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.0.as_millis(), ms, "{text}");
            assert_eq!(d.to_string(), text);
        }
        for bad in ["", "6", "h", "6 hours", "-1s", "1.5h"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad}");
        }
        // The messages a config error shows.
        let err = |s: &str| s.parse::<HumanDuration>().unwrap_err().to_string();
        assert_eq!(
            err(" 6 hours"),
            r#"invalid duration unit in "6 hours": expected ms, s, m, h or d"#
        );
        assert_eq!(
            err("h"),
            r#"invalid duration "h": expected e.g. 90s, 10m, 6h, 30d"#
        );
        assert_eq!(
            err("99999999999999999999d"),
            r#"invalid duration "99999999999999999999d": expected e.g. 90s, 10m, 6h, 30d"#
        );
        assert_eq!(
            err("999999999999999d"),
            r#"duration "999999999999999d" is too large"#
        );
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn values_are_range_checked() {
        let err = Config::parse("[aggregation]\nmin_probes = 0\n").unwrap_err();
        assert!(err.to_string().contains("min_probes"), "{err}");
        // Back-dating bounded tighter than the window would cut every window short.
        let err = Config::parse("[aggregation]\nmax_backfill = \"1h\"\n").unwrap_err();
        assert!(err.to_string().contains("max_backfill"), "{err}");
        let err = Config::parse("[webhook]\nurls = [\"ftp://x\"]\n").unwrap_err();
        assert!(err.to_string().contains("webhook.urls"), "{err}");
    }
}
