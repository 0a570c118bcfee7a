//! HTTP API under `/api/v1`, documented in `docs/collector-api.md`. One module per concern,
//! each exposing `router()`, which
//! [`crate::app`] puts together.

pub mod control;
pub mod health;
pub mod ingest;
pub mod metrics;
pub mod read;
pub mod register;

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap};

use crate::auth;
use crate::error::ApiError;
use crate::state::AppState;

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
    let server = &state.config.server;
    match proxy_header(server) {
        Some(name) => from_proxy_header(headers, name, server.trusted_proxies),
        None => peer.map(|p| p.ip()),
    }
}

/// The header naming the client, when a proxy is configured: `client_address_header`, or
/// `X-Forwarded-For` when only `trusted_proxies` is set.
pub fn proxy_header(server: &crate::config::ServerConfig) -> Option<&str> {
    match (&server.client_address_header, server.trusted_proxies) {
        (Some(name), _) => Some(name.as_str()),
        (None, 0) => None,
        (None, _) => Some("X-Forwarded-For"),
    }
}

/// The client's address in a proxy header. The entries of a list (`X-Forwarded-For`, over
/// every line of the header) are appended hop by hop, so only the last ones were written by
/// proxies of ours: with `trusted` proxies in front, the client is the `trusted`-th entry from
/// the right, and anything left of it is whatever the client sent. (The first entry, which
/// this used to take, is the client's own writing: it chose its rate-limit bucket, issue #20.)
/// A single-value header (`X-Real-IP`, set by one proxy) is its one entry; with `trusted` = 0
/// and a list, the right-most entry, the one the nearest proxy wrote. No entry there, or not an
/// address: `None` (all such clients share one bucket).
pub fn from_proxy_header(headers: &HeaderMap, name: &str, trusted: u32) -> Option<IpAddr> {
    let mut entries: Vec<&str> = Vec::new();
    for v in headers.get_all(name) {
        entries.extend(v.to_str().ok()?.split(','));
        // A client may send a long list; only the last few are ever read.
        if entries.len() > 64 {
            let keep = entries.len() - 32;
            entries.drain(..keep);
        }
    }
    let from_right = usize::try_from(trusted.max(1)).ok()?;
    let entry = entries.len().checked_sub(from_right).map(|i| entries[i])?;
    let entry = entry.trim();
    // `[v6]:port`, `v4:port` and bare addresses.
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn h(lines: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for l in lines {
            m.append("x-forwarded-for", l.parse().unwrap());
        }
        m
    }

    #[test]
    fn the_client_cannot_choose_its_address_in_x_forwarded_for() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // One proxy appended the real peer; the client wrote the rest.
        let spoofed = h(&["1.2.3.4, 5.6.7.8, 192.0.2.7"]);
        assert_eq!(
            from_proxy_header(&spoofed, "X-Forwarded-For", 1),
            ip("192.0.2.7")
        );
        // Two proxies: the second-from-right entry.
        assert_eq!(
            from_proxy_header(&spoofed, "X-Forwarded-For", 2),
            ip("5.6.7.8")
        );
        // Over several header lines, in order.
        let lines = h(&["1.2.3.4", "198.51.100.1, 192.0.2.8"]);
        assert_eq!(
            from_proxy_header(&lines, "X-Forwarded-For", 1),
            ip("192.0.2.8")
        );
        assert_eq!(
            from_proxy_header(&lines, "X-Forwarded-For", 3),
            ip("1.2.3.4")
        );
        // Fewer entries than trusted proxies, or garbage: no address.
        assert_eq!(from_proxy_header(&lines, "X-Forwarded-For", 4), None);
        assert_eq!(
            from_proxy_header(&h(&["nonsense"]), "X-Forwarded-For", 1),
            None
        );
        assert_eq!(
            from_proxy_header(&HeaderMap::new(), "X-Forwarded-For", 1),
            None
        );
        // Ports and brackets.
        assert_eq!(
            from_proxy_header(&h(&["[2001:db8::1]:443"]), "X-Forwarded-For", 1),
            ip("2001:db8::1")
        );
        // A single-value header (X-Real-IP) with trusted_proxies = 0: its value.
        let mut real = HeaderMap::new();
        real.insert("x-real-ip", "203.0.113.9".parse().unwrap());
        assert_eq!(from_proxy_header(&real, "X-Real-IP", 0), ip("203.0.113.9"));
        // A list there: the right-most entry, never the first.
        assert_eq!(
            from_proxy_header(&spoofed, "X-Forwarded-For", 0),
            ip("192.0.2.7")
        );
        // A long list is cut from the left, never from the right.
        let long = format!("{}192.0.2.9", "10.0.0.1, ".repeat(500));
        assert_eq!(
            from_proxy_header(&h(&[&long]), "X-Forwarded-For", 1),
            ip("192.0.2.9")
        );
    }
}
