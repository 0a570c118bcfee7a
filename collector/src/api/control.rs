//! `POST /api/v1/control`: measure a URL from the collector's vantage point for a probe.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Extension;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use witness_core::model::{
    AsnReply, AsnRequest, ControlMeta, ControlReply, ControlRequest, MAX_ASN_ADDRS,
};

use super::{authenticate, client_address, require_json};
use crate::app::AppState;
use crate::control::{run_control, ControlRefusal};
use crate::error::ApiError;

/// The route.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/control", post(control))
        .route("/api/v1/asn", post(asn))
}

/// What both control routes do before any work, in this order: 404 when the control is
/// disabled; the caller (a probe token, or anyone when `control.allow_anonymous`) and its
/// rate limit, before a byte of the body is read; then the body, at most `limit` bytes, parsed
/// as `T` (400 naming `what` when it is not). Returns the key the caller is counted under.
async fn admit<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    what: &str,
) -> Result<(String, T), ApiError> {
    if !state.config.control.enabled {
        return Err(ApiError::NotFound);
    }
    let key = if state.config.control.allow_anonymous && crate::auth::bearer(headers).is_none() {
        "anonymous".to_string()
    } else {
        authenticate(state, headers).await?
    };
    state
        .control_limiter
        .check(&key)
        .map_err(ApiError::RateLimited)?;
    require_json(headers)?;
    let body = crate::body::read(
        body,
        headers,
        limit,
        state.config.server.body_read_timeout.0,
    )
    .await?;
    let req = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid {what}: {e}")))?;
    Ok((key, req))
}

/// Largest `POST /api/v1/asn` body: 64 IPv6 addresses in JSON are under 3 KiB.
const MAX_ASN_BODY: usize = 4096;

/// The networks of the routers a probe's localisation met, from the ASN table. Counted with
/// the control's requests; the addresses are neither stored nor logged.
pub async fn asn(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<AsnReply>, ApiError> {
    let (_, req): (_, AsnRequest) =
        admit(&state, &headers, body, MAX_ASN_BODY, "ASN request").await?;
    if req.addrs.len() > MAX_ASN_ADDRS {
        return Err(ApiError::Unprocessable(format!(
            "at most {MAX_ASN_ADDRS} addresses per request, not {}",
            req.addrs.len()
        )));
    }
    let asns = req
        .addrs
        .iter()
        .map(|a| state.network_of(*a).map(|i| i.asn))
        .collect();
    Ok(Json(AsnReply { asns }))
}

/// Run one control measurement.
pub async fn control(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ControlReply>, ApiError> {
    let cfg = &state.config.control;
    let (key, req): (_, ControlRequest) = admit(
        &state,
        &headers,
        body,
        crate::body::MAX_CONTROL_BODY,
        "control request",
    )
    .await?;
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
    let your_address = client_address(
        &state,
        &headers,
        peer.map(|Extension(ConnectInfo(addr))| addr),
    );
    let network = your_address.and_then(|a| state.network_of(a));
    Ok(Json(ControlReply {
        control,
        meta: ControlMeta {
            your_address,
            your_asn: network.map(|n| n.asn),
            your_country: network.and_then(|n| n.country_str()),
        },
    }))
}
