//! HTTP API under `/api/v1`, documented in `docs/collector-api.md`. One module per concern,
//! each exposing `router()`.

pub mod control;
pub mod health;
pub mod ingest;
pub mod metrics;
pub mod read;
pub mod register;

use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

use crate::app::AppState;
use crate::auth;
use crate::error::ApiError;

/// Every `/api/v1` route, with request bodies capped at `max_body_bytes` (the cap on the wire;
/// gzip bodies are capped again after decompression).
pub fn router(max_body_bytes: usize) -> Router<AppState> {
    Router::new()
        .merge(health::router())
        .merge(register::router())
        .merge(control::router())
        .merge(read::router())
        .merge(crate::ui::router())
        // Upload (POST) and raw export (GET) share a path.
        .route(
            "/api/v1/measurements",
            post(ingest::upload).get(read::measurements),
        )
        .layer(DefaultBodyLimit::max(max_body_bytes))
}

/// JSON 404 for unknown paths.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// 415 unless the request says `Content-Type: application/json`.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else if ct.is_empty() {
        Err(ApiError::UnsupportedMediaType(
            "missing Content-Type: expected application/json".into(),
        ))
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {mime:?} is not supported: expected application/json"
        )))
    }
}

/// Map a body-reading failure: too large is 413, anything else 400.
pub fn body_rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("request body too large".into())
    } else {
        ApiError::BadRequest(format!("cannot read request body: {}", r.body_text()))
    }
}

/// The probe id behind the request's bearer token: 401 when missing, unknown or revoked.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let token = auth::bearer(headers).ok_or(ApiError::Unauthorized(
        "missing bearer token: send Authorization: Bearer TOKEN",
    ))?;
    state
        .store
        .authenticate(&auth::hash_token(token))
        .await?
        .ok_or(ApiError::Unauthorized("invalid or revoked token"))
}
