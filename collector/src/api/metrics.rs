//! `GET /metrics`: Prometheus text format.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// The route.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Refresh the state gauges from the store and render every metric.
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.metrics.control_cache_size(state.control_views.len());
    let text = state
        .metrics
        .render(state.store.as_ref(), &state.params, chrono::Utc::now())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text))
}
