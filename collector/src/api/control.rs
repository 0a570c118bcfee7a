//! `POST /api/v1/control`: measure a URL from the collector's vantage point for a probe.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Extension;
use axum::{Json, Router};
use witness_core::model::{ControlMeta, ControlReply, ControlRequest};

use super::{authenticate, client_address, require_json};
use crate::app::AppState;
use crate::control::{run_control, ControlRefusal};
use crate::error::ApiError;

/// The route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/control", post(control))
}

/// Run one control measurement.
pub async fn control(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ControlReply>, ApiError> {
    let cfg = &state.config.control;
    if !cfg.enabled {
        return Err(ApiError::NotFound);
    }
    let key = if cfg.allow_anonymous && crate::auth::bearer(&headers).is_none() {
        "anonymous".to_string()
    } else {
        authenticate(&state, &headers).await?
    };
    state
        .control_limiter
        .check(&key)
        .map_err(ApiError::RateLimited)?;
    require_json(&headers)?;
    let body = crate::body::read(
        body,
        &headers,
        crate::body::MAX_CONTROL_BODY,
        state.config.server.body_read_timeout.0,
    )
    .await?;
    let req: ControlRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid control request: {e}")))?;
    let wait = Duration::from_secs(cfg.timeout_secs);
    let _probe_slot = state
        .control_probe_slots
        .acquire(&key, wait)
        .await
        .ok_or(ApiError::RateLimited(wait))?;
    let _slot = state
        .control_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable("control service busy, retry later".into()))?;
    let limit = Duration::from_secs(cfg.timeout_secs);
    let control = match tokio::time::timeout(limit, run_control(&req, &state.control)).await {
        Err(_) => {
            return Err(ApiError::Unavailable(format!(
                "control measurement did not finish within {}s",
                cfg.timeout_secs
            )))
        }
        Ok(Err(ControlRefusal::Misconfigured(detail))) => {
            tracing::error!(error = %detail, "control service misconfigured");
            return Err(ApiError::Unavailable("control service unavailable".into()));
        }
        Ok(Err(refusal)) => return Err(ApiError::Unprocessable(refusal.to_string())),
        Ok(Ok(c)) => c,
    };
    Ok(Json(ControlReply {
        control,
        meta: ControlMeta {
            your_address: client_address(
                &state,
                &headers,
                peer.map(|Extension(ConnectInfo(addr))| addr),
            ),
            your_asn: None,
            your_country: None,
        },
    }))
}
