//! HTTP: one GET over a connection the probe already measured (plain TCP or TLS).
//!
//! The request runs on the very stream whose connect and handshake were recorded, so the
//! client can never resolve or connect again behind our back. Bodies are read with a hard cap
//! and never decompressed (we ask for `identity`; a compression bomb stays a small opaque
//! blob). Headers are bounded by hyper's buffer limit.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{ms_since, MeasureConfig};
use crate::failure::Failure;
use crate::model::{HttpObservation, Step};
use crate::scrub::OwnAddresses;

/// A common browser User-Agent: the probe should look like any visitor, and carry nothing that
/// identifies the volunteer or even the software.
pub const USER_AGENT: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// Most headers recorded.
const MAX_HEADERS: usize = 64;
/// Longest header value recorded.
const MAX_HEADER_VALUE: usize = 512;
/// Longest title recorded.
const MAX_TITLE: usize = 200;

/// An HTTP exchange: the observation, plus the body bytes for comparison (never stored).
#[derive(Debug)]
pub struct Exchange {
    /// What is recorded.
    pub obs: HttpObservation,
    /// Body bytes read (at most the cap).
    pub body: Vec<u8>,
}

/// A fresh observation for hop `hop` of `url`, before anything happened.
pub fn empty_observation(
    hop: u32,
    url: &str,
    addr: Option<SocketAddr>,
    t0: Instant,
) -> HttpObservation {
    HttpObservation {
        hop,
        url: url.to_string(),
        addr,
        t_ms: ms_since(t0),
        duration_ms: 0.0,
        failed_step: None,
        failure: None,
        status: None,
        headers: vec![],
        title: None,
        body_length: 0,
        body_truncated: false,
        body_sha256: None,
        ttfb_ms: None,
        body_ms: None,
        throughput_bps: None,
        blockpage: None,
        location: None,
        role: Default::default(),
    }
}

/// GET `url` over `io`, which is already connected (and handshaken) to `addr`.
pub async fn get<S>(
    io: S,
    url: &url::Url,
    addr: SocketAddr,
    hop: u32,
    cfg: &MeasureConfig,
    own: &OwnAddresses,
    t0: Instant,
) -> Exchange
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    let mut obs = empty_observation(hop, url.as_str(), Some(addr), t0);
    let mut body = Vec::new();
    let fail = |mut obs: HttpObservation, f: Failure, body: Vec<u8>| {
        obs.failed_step = Some(Step::Http);
        obs.failure = Some(f);
        obs.duration_ms = ms_since(start);
        Exchange { obs, body }
    };

    let handshake = hyper::client::conn::http1::Builder::new()
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await;
    let (mut sender, conn) = match handshake {
        Ok(x) => x,
        Err(e) => return fail(obs, classify_hyper(&e), body),
    };
    // The connection task ends when the exchange does; abort it on every path.
    let conn_task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let _abort = AbortOnDrop(conn_task);

    let req = match build_request(url) {
        Ok(r) => r,
        Err(f) => return fail(obs, f, body),
    };
    let sent = Instant::now();
    let resp = match tokio::time::timeout(cfg.timeout, sender.send_request(req)).await {
        Err(_) => return fail(obs, Failure::GenericTimeout, body),
        Ok(Err(e)) => return fail(obs, classify_hyper(&e), body),
        Ok(Ok(r)) => r,
    };
    obs.ttfb_ms = Some(ms_since(sent));
    obs.status = Some(resp.status().as_u16());
    obs.headers = resp
        .headers()
        .iter()
        .take(MAX_HEADERS)
        .map(|(k, v)| {
            // Scrubbed before the cut, which could leave a part of an address.
            let mut val = own.scrub(&String::from_utf8_lossy(v.as_bytes()));
            truncate(&mut val, MAX_HEADER_VALUE);
            (k.as_str().to_ascii_lowercase(), val)
        })
        .collect();
    let mut cap = cfg.body_cap;
    if resp.status().is_redirection() {
        obs.location = resp.headers().get(http::header::LOCATION).map(|v| {
            let mut s = own.scrub(&String::from_utf8_lossy(v.as_bytes()));
            truncate(&mut s, 2048);
            s
        });
        cap = cfg.redirect_body_cap;
        if cap == 0 {
            // Not a byte of the body is read: the connection is closed with it unread.
            obs.duration_ms = ms_since(start);
            return Exchange { obs, body };
        }
    }

    let body_start = Instant::now();
    let read =
        tokio::time::timeout(cfg.timeout, read_capped(resp.into_body(), cap, &mut body)).await;
    let body_secs = body_start.elapsed().as_secs_f64();
    obs.body_ms = Some(body_secs * 1000.0);
    obs.body_length = body.len() as u64;
    if body_secs > 0.0 && !body.is_empty() {
        obs.throughput_bps = Some(body.len() as f64 / body_secs);
    }
    obs.body_sha256 = Some(hex::encode(Sha256::digest(&body)));
    obs.title = full_title(&body).map(|t| {
        let mut t = own.scrub(&t);
        truncate(&mut t, MAX_TITLE);
        t
    });
    obs.blockpage =
        crate::fingerprints::Fingerprints::bundled().match_response(&obs.headers, &body);
    match read {
        Err(_) => return fail(obs, Failure::GenericTimeout, body),
        Ok(Err(f)) => return fail(obs, f, body),
        Ok(Ok(truncated)) => obs.body_truncated = truncated,
    }
    obs.duration_ms = ms_since(start);
    Exchange { obs, body }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn build_request(url: &url::Url) -> Result<http::Request<Empty<Bytes>>, Failure> {
    let host = url
        .host_str()
        .ok_or_else(|| Failure::unknown("URL without host"))?;
    let host_header = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    http::Request::builder()
        .method("GET")
        .uri(path)
        .header(http::header::HOST, host_header)
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(
            http::header::ACCEPT,
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .header(http::header::ACCEPT_LANGUAGE, "en-US,en;q=0.9")
        .header(http::header::ACCEPT_ENCODING, "identity")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| Failure::unknown(format!("bad request: {e}")))
}

/// Read at most `cap` bytes into `out`; returns whether the body was longer.
async fn read_capped(mut body: Incoming, cap: usize, out: &mut Vec<u8>) -> Result<bool, Failure> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| classify_hyper(&e))?;
        if let Ok(data) = frame.into_data() {
            let room = cap.saturating_sub(out.len());
            if data.len() > room {
                out.extend_from_slice(&data[..room]);
                return Ok(true);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(false)
}

/// Map a hyper error to the taxonomy, looking through to the I/O cause.
fn classify_hyper(e: &hyper::Error) -> Failure {
    use std::error::Error as _;
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Failure::from_io(io);
        }
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return Failure::from_rustls(tls);
        }
        src = s.source();
    }
    if e.is_incomplete_message() {
        Failure::Eof
    } else if e.is_parse() || e.is_parse_status() {
        Failure::HttpInvalidResponse
    } else if e.is_timeout() {
        Failure::GenericTimeout
    } else if e.is_closed() || e.is_canceled() {
        Failure::Eof
    } else {
        Failure::unknown(e.to_string())
    }
}

/// The text of the first `<title>` in the first 64 KiB, whitespace collapsed and bounded.
pub fn extract_title(body: &[u8]) -> Option<String> {
    let mut title = full_title(body)?;
    truncate(&mut title, MAX_TITLE);
    Some(title)
}

/// [`extract_title`] before the bound: the probe's address is scrubbed first, so the cut
/// never leaves a part of it (`127.0.0.7` of `127.0.0.77`) that no longer matches.
fn full_title(body: &[u8]) -> Option<String> {
    let head = &body[..body.len().min(64 * 1024)];
    let text = String::from_utf8_lossy(head);
    let lower = text.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let raw = text.get(start..end)?;
    let title = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    (!title.is_empty()).then_some(title)
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles() {
        let cases: [(&[u8], Option<&str>); 5] = [
            (
                b"<html><head><TITLE>Hello\n  World</TITLE>",
                Some("Hello World"),
            ),
            (
                b"<title lang=\"kk\">\xd0\x91\xd0\xb5\xd1\x82</title>",
                Some("\u{411}\u{435}\u{442}"),
            ),
            (b"<title></title>", None),
            (b"<title>unterminated", None),
            (b"no title here", None),
        ];
        for (body, want) in cases {
            assert_eq!(extract_title(body).as_deref(), want);
        }
    }

    #[test]
    fn request_has_no_identifying_headers() {
        let url = url::Url::parse("https://example.com:8443/a?b=c").unwrap();
        let req = build_request(&url).unwrap();
        assert_eq!(req.uri(), "/a?b=c");
        assert_eq!(req.headers()["host"], "example.com:8443");
        let names: Vec<_> = req.headers().keys().map(|k| k.as_str()).collect();
        assert!(!names.contains(&"x-forwarded-for"));
        assert!(!req.headers()["user-agent"]
            .to_str()
            .unwrap()
            .contains("witness"));
    }
}
