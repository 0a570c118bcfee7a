//! HTTP API under `/api/v1`, documented in `docs/collector-api.md`. One module per concern,
//! each exposing `router()`.

pub mod control;
pub mod health;
pub mod ingest;
pub mod metrics;
pub mod read;
pub mod register;

use std::net::{IpAddr, SocketAddr};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap};
use axum::routing::post;
use axum::Router;

use crate::app::AppState;
use crate::auth;
use crate::error::ApiError;

/// Every `/api/v1` route. The routes that take a body (upload, register, control) read it
/// themselves after authentication, each with its own limit ([`crate::body`]); any other
/// extractor that reads a body gets axum's limit, set to the control's small one.
pub fn router() -> Router<AppState> {
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
        .layer(DefaultBodyLimit::max(crate::body::MAX_CONTROL_BODY))
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

/// The client's address as seen: the peer, or the configured proxy header. Used only for the
/// control's `your_address` and, salted and hashed, as an in-memory rate-limit key; never
/// stored, never logged.
pub fn client_address(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Option<IpAddr> {
    if let Some(name) = &state.config.server.client_address_header {
        let v = headers.get(name.as_str())?.to_str().ok()?;
        // X-Forwarded-For style lists: the first entry is the client.
        return v.split(',').next()?.trim().parse().ok();
    }
    peer.map(|p| p.ip())
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
