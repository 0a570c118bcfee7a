//! `POST /api/v1/control` and `POST /api/v1/control/batch`: the control's view of URLs, from
//! the collector's vantage point, for probes. Both serve the shared views (one measurement per
//! URL per `control.cache_ttl`); the batch streams one line per URL as each completes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Extension;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use witness_core::model::{
    AsnReply, AsnRequest, ControlBatchRequest, ControlMeta, ControlRequest, MAX_ASN_ADDRS,
    MAX_CONTROL_BATCH,
};

use super::{authenticate, client_address, require_json};
use crate::control::{
    bytes_read, check_target, measure_target, ControlRefusal, ControlTarget, Lookup, NoSlot, View,
};
use crate::error::ApiError;
use crate::state::AppState;

/// Largest batch body: [`MAX_CONTROL_BATCH`] URLs of at most 2 KiB each.
const MAX_BATCH_BODY: usize = (MAX_CONTROL_BATCH + 1) * 2200;

/// The routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/control", post(control))
        .route("/api/v1/control/batch", post(batch))
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

/// Who is asking: the probe's key (its id, or `anonymous`) and its client address's key (a
/// salted hash, see [`crate::ratelimit::ClientKeys`]; never the address).
#[derive(Clone)]
struct Caller {
    probe: String,
    client: String,
}

fn caller(state: &AppState, probe: String, address: Option<std::net::IpAddr>) -> Caller {
    let client = address.map_or_else(|| "unknown".to_string(), |ip| state.client_keys.key(ip));
    Caller { probe, client }
}

/// What the control saw of the asking probe, as JSON (the same for every URL of a request).
fn meta_json(state: &AppState, address: Option<std::net::IpAddr>) -> String {
    let network = address.and_then(|a| state.network_of(a));
    let meta = ControlMeta {
        your_address: address,
        your_asn: network.map(|n| n.asn),
        your_country: network.and_then(|n| n.country_str()),
    };
    serde_json::to_string(&meta).unwrap_or_else(|_| "{}".into())
}

/// The view of one checked URL: from the shared views when one is within its TTL or under way,
/// otherwise measured for this caller, who is charged for it (a fresh measurement from its
/// hourly budget, the bytes read from its byte budget, a slot in the fair queue). Only the
/// control's own measurements enter the views.
async fn view_of(
    state: &AppState,
    who: &Caller,
    target: &ControlTarget,
    fresh: bool,
) -> Result<Arc<View>, ApiError> {
    let cfg = &state.config.control;
    let wait = cfg.queue_wait.0 + Duration::from_secs(cfg.timeout_secs);
    // A waiter whose leader gave up (its budget spent, its client gone) looks again; a few
    // rounds at most.
    for _ in 0..4 {
        let leader = match state.control_views.lookup(&target.key, fresh) {
            Lookup::Hit(v) => return Ok(v),
            Lookup::Wait(mut rx) => {
                let got = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
                match got {
                    Ok(Ok(v)) => match v.clone() {
                        Some(v) => return Ok(v),
                        None => continue,
                    },
                    Ok(Err(_)) => continue,
                    Err(_) => {
                        return Err(ApiError::Unavailable(
                            "the control measurement of this URL did not finish in time".into(),
                        ))
                    }
                }
            }
            Lookup::Lead(l) => l,
        };
        state
            .control_bytes
            .check(&who.probe)
            .map_err(ApiError::RateLimited)?;
        state
            .control_time
            .check(&who.probe)
            .map_err(ApiError::RateLimited)?;
        state
            .control_measure_limiter
            .check(&who.probe)
            .map_err(ApiError::RateLimited)?;
        let _slot = state
            .control_slots
            .acquire(&who.probe, &who.client, cfg.queue_wait.0)
            .await
            .map_err(|e| match e {
                NoSlot::Timeout => {
                    ApiError::Unavailable("control service busy, retry later".into())
                }
                NoSlot::QueueFull => ApiError::RateLimited(Duration::from_secs(10)),
            })?;
        let limit = Duration::from_secs(cfg.timeout_secs);
        let started = std::time::Instant::now();
        let measured = tokio::time::timeout(limit, measure_target(target, &state.control)).await;
        let held = started.elapsed().as_millis();
        state
            .control_time
            .charge(&who.probe, u64::try_from(held).unwrap_or(u64::MAX));
        let response = match measured {
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
        state
            .control_bytes
            .charge(&who.probe, bytes_read(&response));
        return Ok(leader.finish(View::new(&response)));
    }
    Err(ApiError::Unavailable(
        "the control measurement of this URL did not finish; retry later".into(),
    ))
}

/// A reply's JSON from a view and the caller's meta.
fn reply_json(view: &View, meta: &str) -> String {
    format!("{{\"control\":{},\"meta\":{meta}}}", view.served_json())
}

/// The control's view of one URL (the endpoint of older probes). The probe's `addrs` are
/// checked and otherwise unused: the view is the control's own (docs/collector-api.md).
pub async fn control(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (key, req): (_, ControlRequest) = admit(
        &state,
        &headers,
        body,
        crate::body::MAX_CONTROL_BODY,
        "control request",
    )
    .await?;
    let refused = |r: ControlRefusal| ApiError::Unprocessable(r.to_string());
    let target = check_target(&req.url, &state.control).map_err(refused)?;
    witness_core::control::check_addrs(&req).map_err(refused)?;
    let address = client_address(
        &state,
        &headers,
        peer.map(|Extension(ConnectInfo(addr))| addr),
    );
    let who = caller(&state, key, address);
    let view = view_of(&state, &who, &target, req.fresh).await?;
    let body = reply_json(&view, &meta_json(&state, address));
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// The control's views of up to [`MAX_CONTROL_BATCH`] URLs, streamed as JSON lines
/// (`ControlBatchLine`) in the order they complete. Admission is the single endpoint's (the
/// request counts once against `requests_per_minute`); each URL then costs what it costs
/// there. A URL's refusal or failure is its own line, never the whole answer's.
pub async fn batch(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (key, req): (_, ControlBatchRequest) =
        admit(&state, &headers, body, MAX_BATCH_BODY, "control batch").await?;
    if req.urls.len() > MAX_CONTROL_BATCH {
        return Err(ApiError::Unprocessable(format!(
            "at most {MAX_CONTROL_BATCH} URLs per batch, not {}",
            req.urls.len()
        )));
    }
    let address = client_address(
        &state,
        &headers,
        peer.map(|Extension(ConnectInfo(addr))| addr),
    );
    let who = caller(&state, key, address);
    let meta: Arc<str> = meta_json(&state, address).into();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(MAX_CONTROL_BATCH);
    for url in req.urls {
        let (state, who, meta, tx) = (state.clone(), who.clone(), meta.clone(), tx.clone());
        tokio::spawn(async move {
            let answer = match check_target(&url, &state.control) {
                Err(r) => Err(ApiError::Unprocessable(r.to_string())),
                Ok(target) => {
                    // A caller gone before its URL's turn costs nothing more.
                    tokio::select! {
                        v = view_of(&state, &who, &target, false) => v,
                        () = tx.closed() => return,
                    }
                }
            };
            let url_json = serde_json::to_string(&url).unwrap_or_else(|_| "\"\"".into());
            let line = match answer {
                Ok(view) => format!(
                    "{{\"url\":{url_json},\"reply\":{}}}\n",
                    reply_json(&view, &meta)
                ),
                Err(e) => {
                    let error =
                        serde_json::to_string(&e.to_string()).unwrap_or_else(|_| "\"\"".into());
                    format!(
                        "{{\"url\":{url_json},\"error\":{error},\"status\":{}}}\n",
                        e.status().as_u16()
                    )
                }
            };
            let _ = tx.send(Bytes::from(line)).await;
        });
    }
    drop(tx);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        Body::from_stream(stream),
    )
        .into_response())
}
