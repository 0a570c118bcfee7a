//! The one error type of the HTTP API. Client mistakes get a 4xx with a message saying what was
//! wrong; server failures are logged and answered with a bare 500.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::StoreError;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed request (the message says what).
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing, invalid or revoked token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403: refused (invite required or invalid).
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("not found")]
    NotFound,
    /// 408: the body did not arrive within `server.body_read_timeout`.
    #[error("{0}")]
    RequestTimeout(String),
    /// 413: body, decompressed body or batch too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: wrong content type or encoding.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: understood but refused (control target not allowed).
    #[error("{0}")]
    Unprocessable(String),
    /// 429: rate limited; retry after the given time.
    #[error("rate limited")]
    RateLimited(Duration),
    /// 503: temporarily unable (busy, timed out, unavailable).
    #[error("{0}")]
    Unavailable(String),
    /// 500: our fault. The detail is logged, never returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // A read stopped at `store.read_timeout`: SQLite's interrupt (code 9), PostgreSQL's
        // query_canceled (57014). The client can narrow its query.
        if let StoreError::Db(sqlx::Error::Database(d)) = &e {
            if matches!(d.code().as_deref(), Some("9" | "57014")) {
                return ApiError::Unavailable(
                    "the query took too long: ask for a shorter since/until span or a smaller \
                     limit"
                        .into(),
                );
            }
        }
        ApiError::Internal(e.to_string())
    }
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let mut resp = (status, Json(json!({ "error": message }))).into_response();
        match &self {
            ApiError::Unauthorized(_) => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited(wait) => {
                let secs = wait.as_secs().max(1);
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            _ => {}
        }
        resp
    }
}
