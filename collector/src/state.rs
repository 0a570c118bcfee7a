//! The state every handler and background task shares: configuration, store, metrics, limiters.
//!
//! Its own module so that the routers in [`crate::api`] and [`crate::ui`] depend on the state
//! and [`crate::app`] depends on them, never the other way round.

use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::aggregate::Params;
use crate::asn::AsnDb;
use crate::config::Config;
use crate::control::{self, ControlServiceConfig, ControlViews, FairSlots, HourBudget};
use crate::events::{Evaluator, Guards};
use crate::metrics::Metrics;
use crate::ratelimit::{ClientKeys, KeyedLimiter, RegistrationLimiter};
use crate::store::Store;
use crate::validate::Limits;

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

/// What [`AppState`] shares between handlers and background tasks, behind one `Arc`.
pub struct SharedState {
    /// The configuration.
    pub config: Config,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event evaluation.
    pub evaluator: Evaluator,
    /// Wakes the webhook notifier when an event changes.
    pub webhook_wake: Arc<Notify>,
    /// Thresholds of the event rule.
    pub params: Params,
    /// Record limits.
    pub limits: Limits,
    /// Uploads per probe.
    pub upload_limiter: KeyedLimiter,
    /// Open registrations: per client, per network prefix and globally.
    pub register_limiter: RegistrationLimiter,
    /// Failed invite attempts per client.
    pub invite_failure_limiter: KeyedLimiter,
    /// Slots for anonymous reads, so they cannot take every store connection.
    pub read_gate: crate::readgate::ReadGate,
    /// Salted client keys for the per-client buckets.
    pub client_keys: ClientKeys,
    /// Control requests per probe.
    pub control_limiter: KeyedLimiter,
    /// Control measurements in flight, queued fairly per probe and per client address.
    pub control_slots: Arc<FairSlots>,
    /// The shared control views (one measurement per URL per TTL).
    pub control_views: Arc<ControlViews>,
    /// Fresh control measurements per probe per hour.
    pub control_measure_limiter: KeyedLimiter,
    /// Bytes the control reads per probe per hour.
    pub control_bytes: HourBudget,
    /// Milliseconds of measurement per probe per hour.
    pub control_time: HourBudget,
    /// How the control measures.
    pub control: ControlServiceConfig,
    /// The IP → ASN table, when `[asn] database` names one.
    pub asn: Option<Arc<AsnDb>>,
}

impl Deref for AppState {
    type Target = SharedState;
    fn deref(&self) -> &SharedState {
        &self.0
    }
}

impl AppState {
    /// The network of `ip` in the ASN table; `None` without a table or for an address it does
    /// not hold.
    pub fn network_of(&self, ip: std::net::IpAddr) -> Option<crate::asn::AsnInfo> {
        self.asn.as_ref()?.lookup(ip)
    }

    /// State for `config` over `store`.
    pub fn new(config: Config, store: Arc<dyn Store>) -> anyhow::Result<AppState> {
        config.check()?;
        let metrics = Arc::new(Metrics::new(config.metrics.clone())?);
        let wake = Arc::new(Notify::new());
        let params = Params {
            window: config.aggregation.window.to_chrono(),
            min_probes: config.aggregation.min_probes,
            min_measurements: config.aggregation.min_measurements,
            min_share: config.aggregation.min_share,
            min_event: config.aggregation.min_event.to_chrono(),
            min_gap: config.aggregation.min_gap.to_chrono(),
        };
        let evaluator = Evaluator::new(
            store.clone(),
            params.clone(),
            config.webhook.urls.clone(),
            metrics.clone(),
            wake.clone(),
        )
        .with_guards(Guards::of(&config.aggregation));
        let control = control::service_config(&config.control)?;
        let asn = match &config.asn.database {
            Some(path) => {
                let db = AsnDb::load(path)?;
                let (v4, v6) = db.len();
                tracing::info!(v4, v6, "ASN table loaded");
                Some(Arc::new(db))
            }
            None => None,
        };
        let limits = Limits {
            max_record_bytes: config.ingest.max_record_bytes,
            max_age: config.ingest.max_age.to_chrono(),
            max_clock_skew: config.ingest.max_clock_skew.to_chrono(),
        };
        Ok(AppState(Arc::new(SharedState {
            upload_limiter: KeyedLimiter::per_minute(
                config.ingest.uploads_per_minute,
                config.ingest.upload_burst,
            ),
            register_limiter: RegistrationLimiter::per_hour(
                config.server.register_per_client_per_hour,
                config.server.register_per_prefix_per_hour,
                config.server.register_per_hour,
                config.server.register_burst,
            ),
            control_limiter: KeyedLimiter::per_minute(
                config.control.requests_per_minute,
                config.control.requests_per_minute.clamp(1, 60),
            ),
            invite_failure_limiter: KeyedLimiter::per_hour(
                config.server.invite_failures_per_hour,
                config.server.invite_failures_per_hour,
            ),
            client_keys: ClientKeys::default(),
            read_gate: crate::readgate::ReadGate::new(
                config.server.max_concurrent_reads,
                config.server.max_reads_per_client,
            ),
            control_slots: Arc::new(FairSlots::new(
                config.control.max_concurrency,
                config.control.max_per_probe,
                config.control.max_per_client,
            )),
            control_views: Arc::new(ControlViews::new(
                config.control.cache_ttl.0,
                config.control.cache_max_entries,
                config.control.cache_max_bytes,
                metrics.control_view_counters(),
            )),
            control_measure_limiter: KeyedLimiter::per_hour(
                config.control.measurements_per_hour,
                config.control.measurements_per_hour,
            ),
            control_bytes: HourBudget::new(config.control.bytes_per_hour),
            control_time: HourBudget::new(
                config.control.measure_seconds_per_hour.saturating_mul(1000),
            ),
            config,
            store,
            metrics,
            evaluator,
            webhook_wake: wake,
            params,
            limits,
            control,
            asn,
        })))
    }
}
