//! The application: shared state, routers and the server loop.
//!
//! [`serve`] takes its listener and its shutdown signal from the caller (as in mini-redis), so
//! tests bind port 0, pass a fresh store and drive the real server.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::aggregate::Params;
use crate::api;
use crate::asn::AsnDb;
use crate::config::Config;
use crate::control::{self, ControlServiceConfig, ControlViews, FairSlots, HourBudget};
use crate::events::{Evaluator, Guards};
use crate::listener::{self, ListenerLimits};
use crate::metrics::Metrics;
use crate::ratelimit::{ClientKeys, KeyedLimiter, RegistrationLimiter};
use crate::store::Store;
use crate::validate::Limits;
use crate::webhook::Notifier;

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

/// The API router; with `with_metrics`, `/metrics` too.
pub fn router(state: AppState, with_metrics: bool) -> Router {
    let mut r = api::router().layer(axum::middleware::from_fn_with_state(
        state.clone(),
        crate::readgate::gate,
    ));
    if with_metrics {
        r = r.merge(api::metrics::router());
    }
    r.fallback(api::not_found).with_state(state)
}

/// Serve the API (and `/metrics`) on `listener` until `shutdown` completes, with the webhook
/// notifier and the evaluation sweep running in the background.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(listener, None, state, shutdown).await
}

/// Like [`serve`], with `/metrics` on its own listener when one is given (and then not on the
/// API listener). Both listeners run the accept loop of [`listener`]: a connection cap and a
/// header-read timeout.
pub async fn serve_with(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut background = Vec::new();

    if !state.config.webhook.urls.is_empty() {
        let notifier = Notifier::new(
            state.store.clone(),
            state.config.webhook.clone(),
            state.config.public_url(),
            state.metrics.clone(),
            state.webhook_wake.clone(),
        )?;
        background.push(tokio::spawn(notifier.run(stop_rx.clone())));
    }
    let interval = state.config.aggregation.evaluate_interval.0;
    if !interval.is_zero() {
        background.push(tokio::spawn(sweep_loop(
            state.evaluator.clone(),
            interval,
            stop_rx.clone(),
        )));
    }
    let limits = ListenerLimits {
        max_connections: state.config.server.max_connections,
        header_read_timeout: state.config.server.header_read_timeout.0,
        // Behind a proxy every connection comes from the proxy: no per-address share.
        max_per_client: if api::proxy_header(&state.config.server).is_some() {
            0
        } else {
            state.config.server.max_connections_per_client
        },
    };
    let metrics_server = match metrics_listener {
        Some(l) => {
            let mut rx = stop_rx.clone();
            let metrics_only = Router::new()
                .merge(api::metrics::router())
                .fallback(api::not_found)
                .with_state(state.clone());
            Some(tokio::spawn(listener::serve(
                l,
                metrics_only,
                limits,
                async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                },
            )))
        }
        None => None,
    };
    let with_metrics = metrics_server.is_none();
    let app = router(state, with_metrics);
    let result = listener::serve(listener, app, limits, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    // If the server failed rather than being asked to stop, the sender is gone and the
    // background tasks stop too.
    drop(stop_rx);
    for task in background {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    if let Some(m) = metrics_server {
        let _ = tokio::time::timeout(Duration::from_secs(5), m).await;
    }
    result?;
    Ok(())
}

/// Re-evaluate recent data at start (catching up after a crash) and then every `every`.
async fn sweep_loop(evaluator: Evaluator, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        match evaluator.sweep(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(transitions = n, "evaluation sweep applied transitions"),
            Err(e) => tracing::warn!(error = %e, "evaluation sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
