//! Small async clients of a running collector's HTTP API, for suites that feed or attack it:
//! register, upload, read, and the raw-socket reads of the hostile suites (did the server close,
//! what status did it send). One copy, so every suite talks to the API the same way.
//!
//! Requests may leave from a chosen loopback address (`source`): 127.0.0.0/8 is all bindable,
//! which lets one test look like many clients and networks.

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::CollectorProcess;

/// An HTTP client with a 30 s timeout, bound to `source` when given.
pub fn client_from(source: Option<IpAddr>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(ip) = source {
        b = b.local_address(ip);
    }
    b.build().expect("a reqwest client with a timeout builds")
}

/// `POST /api/v1/register` from `source` with `body` (none: no body at all): the status and
/// the JSON answer (`null` when it is not JSON).
pub async fn register_from(
    c: &CollectorProcess,
    source: Option<IpAddr>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client_from(source).post(format!("{}api/v1/register", c.url));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("POST /api/v1/register");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A new probe's token; panics unless registration answers 200 with one.
pub async fn register(c: &CollectorProcess) -> String {
    let (status, v) = register_from(c, None, Some(json!({}))).await;
    assert_eq!(status, 200, "registration: {v}");
    v["token"]
        .as_str()
        .expect("a token in the registration answer")
        .to_string()
}

/// `POST /api/v1/measurements` of `records` (measurements or raw JSON values) with `token`:
/// the status and the JSON answer (`null` when it is not JSON).
pub async fn upload<T: Serialize>(
    c: &CollectorProcess,
    token: &str,
    records: &[T],
) -> (u16, Value) {
    let resp = client_from(None)
        .post(format!("{}api/v1/measurements", c.url))
        .bearer_auth(token)
        .json(&json!({ "measurements": records }))
        .send()
        .await
        .expect("POST /api/v1/measurements");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Like [`upload`], and asserts that every record was accepted.
pub async fn upload_all<T: Serialize>(c: &CollectorProcess, token: &str, records: &[T]) {
    let (status, body) = upload(c, token, records).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["accepted"].as_array().map(Vec::len),
        Some(records.len()),
        "rejected: {}",
        body["rejected"]
    );
}

/// `GET url`: the status and the body text.
pub async fn get(url: &str) -> reqwest::Result<(u16, String)> {
    let resp = client_from(None).get(url).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// Reads from `s` until EOF or an error, at most `within`: true when the server closed.
pub async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// The status code of the response head read from `s` within `within`, if any.
pub async fn status_within(s: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace().nth(1)?.parse().ok()
}
