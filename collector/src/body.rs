//! Request bodies, read by the handlers themselves after authentication, each route with its
//! own limit and every read under a deadline.
//!
//! axum's `Bytes` extractor reads the whole body (up to one router-wide limit) before the
//! handler runs, so a client without a token could make the collector hold 8 MiB per
//! connection. Handlers here take the raw [`Body`], check the token and the rate limits, and
//! only then call [`read`]: a declared `Content-Length` over the limit is refused before a byte
//! is read, and a chunked body is refused as soon as it crosses the limit.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::ApiError;

/// Largest register body (`{"invite": TOKEN}`).
pub const MAX_REGISTER_BODY: usize = 4 * 1024;

/// Largest control request body (a URL and at most eight addresses).
pub const MAX_CONTROL_BODY: usize = 16 * 1024;

/// Read `body` whole: at most `limit` bytes, within `timeout`.
pub async fn read(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::PayloadTooLarge(format!("request body larger than {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    match collected {
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "request body not received within {}s",
            timeout.as_secs()
        ))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::BadRequest(format!(
            "cannot read request body: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_and_declared_lengths() {
        let t = Duration::from_secs(5);
        let h = HeaderMap::new();
        let ok = read(Body::from("hello"), &h, 5, t).await.unwrap();
        assert_eq!(&ok[..], b"hello");
        let err = read(Body::from("hello!"), &h, 5, t).await.unwrap_err();
        assert!(matches!(err, ApiError::PayloadTooLarge(_)), "{err:?}");
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, "1000000".parse().unwrap());
        let err = read(Body::empty(), &declared, 5, t).await.unwrap_err();
        assert!(matches!(err, ApiError::PayloadTooLarge(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_body_that_never_ends_times_out() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let body = Body::from_stream(stream);
        let err = read(body, &HeaderMap::new(), 100, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::RequestTimeout(_)), "{err:?}");
    }
}
