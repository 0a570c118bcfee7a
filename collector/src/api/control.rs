//! `POST /api/v1/control`: measure a URL from the collector's vantage point for a probe.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Extension;
use axum::{Json, Router};
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

/// Who may ask: a probe token, or anyone when `control.allow_anonymous`; the key its requests
/// are counted under.
async fn caller(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    if state.config.control.allow_anonymous && crate::auth::bearer(headers).is_none() {
        Ok("anonymous".to_string())
    } else {
        authenticate(state, headers).await
    }
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
    if !state.config.control.enabled {
        return Err(ApiError::NotFound);
    }
    let key = caller(&state, &headers).await?;
    state
        .control_limiter
        .check(&key)
        .map_err(ApiError::RateLimited)?;
    require_json(&headers)?;
    let body = crate::body::read(
        body,
        &headers,
        MAX_ASN_BODY,
        state.config.server.body_read_timeout.0,
    )
    .await?;
    let req: AsnRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid ASN request: {e}")))?;
    if req.addrs.len() > MAX_ASN_ADDRS {
        return Err(ApiError::Unprocessable(format!(
            "at most {MAX_ASN_ADDRS} addresses per request, not {}",
            req.addrs.len()
        )));
    }
    let asns = req
        .addrs
        .iter()
        .map(|a| state.asn.as_ref()?.lookup(*a).map(|i| i.asn))
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
    if !cfg.enabled {
        return Err(ApiError::NotFound);
    }
    let key = caller(&state, &headers).await?;
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
    let your_address = client_address(
        &state,
        &headers,
        peer.map(|Extension(ConnectInfo(addr))| addr),
    );
    let network = your_address.and_then(|a| state.asn.as_ref()?.lookup(a));
    Ok(Json(ControlReply {
        control,
        meta: ControlMeta {
            your_address,
            your_asn: network.map(|n| n.asn),
            your_country: network.and_then(|n| n.country_str()),
        },
    }))
}
