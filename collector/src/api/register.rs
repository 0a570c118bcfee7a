//! `POST /api/v1/register`: a probe gets an id and a token.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Extension, Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{client_address, require_json};
use crate::auth;
use crate::config::Registration;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::NewProbe;

/// The route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/register", post(register))
}

/// Request body (may be empty).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Invite token, required when `server.registration = "invite"`.
    #[serde(default)]
    pub invite: Option<String>,
}

/// Response body. The token is shown once and stored only as a hash.
#[derive(Debug, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The probe's id.
    pub probe_id: String,
    /// The probe's bearer token.
    pub token: String,
}

/// Register a probe.
///
/// Limits, all in memory: open registrations per client, per network prefix and globally
/// ([`crate::ratelimit::RegistrationLimiter`]: a few networks can neither spend the global
/// bucket for everyone nor keep it empty); failed invites per client, checked before the store
/// is touched (a failed invite would otherwise cost a write transaction each).
pub async fn register(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<RegisterResponse>, ApiError> {
    let address = client_address(
        &state,
        &headers,
        peer.map(|Extension(ConnectInfo(addr))| addr),
    );
    // No address (a proxy header missing): all such clients share one bucket.
    let (client, prefix) = match address {
        Some(ip) => (state.client_keys.key(ip), state.client_keys.prefix_key(ip)),
        None => ("unknown".to_string(), "unknown".to_string()),
    };
    // Before the body: a client whose invite failures are spent is refused at once.
    state
        .invite_failure_limiter
        .peek(&client)
        .map_err(ApiError::RateLimited)?;
    let body = crate::body::read(
        body,
        &headers,
        crate::body::MAX_REGISTER_BODY,
        state.config.server.body_read_timeout.0,
    )
    .await?;
    let req: RegisterRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RegisterRequest::default()
    } else {
        require_json(&headers)?;
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid register body: {e}")))?
    };
    let invite = req.invite.filter(|s| !s.trim().is_empty());
    match (state.config.server.registration, &invite) {
        (Registration::Invite, None) => {
            return Err(ApiError::Forbidden(
                "this collector registers probes by invite only: send {\"invite\": TOKEN}".into(),
            ))
        }
        (Registration::Open, None) => state
            .register_limiter
            .check(&client, &prefix)
            .map_err(ApiError::RateLimited)?,
        _ => {}
    }
    let now = Utc::now();
    let token = auth::new_token();
    let probe = NewProbe {
        id: uuid::Uuid::new_v4().to_string(),
        token_hash: auth::hash_token(&token),
        created_at: now,
    };
    let invite_hash = invite.as_deref().map(|i| auth::hash_token(i.trim()));
    if !state
        .store
        .register_probe(&probe, invite_hash.as_deref(), now)
        .await?
    {
        // Charge the failure; the next attempt past the budget is refused before the store.
        let _ = state.invite_failure_limiter.check(&client);
        return Err(ApiError::Forbidden(
            "invite token is unknown, revoked, expired or used up".into(),
        ));
    }
    tracing::info!(with_invite = invite.is_some(), "probe registered");
    Ok(Json(RegisterResponse {
        probe_id: probe.id,
        token,
    }))
}
