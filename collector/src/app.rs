//! The application: every router, and the server loop. The shared state is in [`crate::state`].
//!
//! [`serve`] takes its listener and its shutdown signal from the caller (as in mini-redis), so
//! tests bind port 0, pass a fresh store and drive the real server.

use std::future::Future;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api;
use crate::events::Evaluator;
use crate::listener::{self, ListenerLimits};
pub use crate::state::AppState;
use crate::webhook::Notifier;

/// Every `/api/v1` route and the pages. The routes that take a body (upload, register,
/// control) read it themselves after authentication, each with its own limit
/// ([`crate::body`]); any other extractor that reads a body gets axum's limit, set to the
/// control's small one.
fn routes() -> Router<AppState> {
    Router::new()
        .merge(api::health::router())
        .merge(api::register::router())
        .merge(api::control::router())
        .merge(api::read::router())
        .merge(crate::ui::router())
        // Upload (POST) and raw export (GET) share a path.
        .route(
            "/api/v1/measurements",
            post(api::ingest::upload).get(api::read::measurements),
        )
        .layer(DefaultBodyLimit::max(crate::body::MAX_CONTROL_BODY))
}

/// The API router; with `with_metrics`, `/metrics` too.
pub fn router(state: AppState, with_metrics: bool) -> Router {
    let mut r = routes().layer(axum::middleware::from_fn_with_state(
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
    let resync = state.config.metrics.resync_interval.0;
    if !resync.is_zero() {
        background.push(tokio::spawn(resync_loop(
            state.clone(),
            resync,
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

/// Merge the store's read model into the in-memory one behind `/metrics` every `every`, so the
/// gauges include what other replicas ingested (a load at start, then on the interval).
async fn resync_loop(state: AppState, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        let t = std::time::Instant::now();
        match state
            .metrics
            .resync(state.store.as_ref(), &state.params, chrono::Utc::now())
            .await
        {
            Ok(rows) => tracing::debug!(rows, elapsed = ?t.elapsed(), "metrics read model merged"),
            Err(e) => tracing::warn!(error = %e, "metrics read model merge failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
