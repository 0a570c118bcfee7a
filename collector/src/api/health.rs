//! `GET /api/v1/health`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::state::AppState;

/// The route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/health", get(health))
}

/// `{"status":"ok","version":...}`, or 503 when the store does not answer.
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let version = env!("CARGO_PKG_VERSION");
    match state.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "version": version })),
        ),
        Err(e) => {
            tracing::error!(error = %e, "health check: store unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "version": version })),
            )
        }
    }
}
