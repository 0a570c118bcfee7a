//! Uploading spooled measurements to a collector, and registering with one.
//!
//! `POST {base}/api/v1/measurements` with `{"measurements": [...]}` gzip-compressed and a
//! bearer token; the collector answers which ids it accepted, already had, or rejected. A
//! record leaves the spool only when the collector acknowledged it (accepted or duplicate); a
//! rejected record is moved aside with the reason; anything else stays for the next try.

use std::io::Write;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};

use crate::spool::{Spool, SpoolError};

/// Records per request: small enough for any collector's body limit, large enough to be quick.
pub const BATCH: usize = 200;
/// Largest collector answer read.
const MAX_REPLY: usize = 4 * 1024 * 1024;

/// The collector's answer to an upload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadReply {
    /// Ids stored now.
    #[serde(default)]
    pub accepted: Vec<String>,
    /// Ids it already had (a retry).
    #[serde(default)]
    pub duplicates: Vec<String>,
    /// Records it refused, with why.
    #[serde(default)]
    pub rejected: Vec<Rejected>,
    /// The address the collector saw the upload come from (kept locally, to scrub records).
    #[serde(default)]
    pub your_address: Option<std::net::IpAddr>,
}

/// One refused record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Position in the batch.
    pub index: usize,
    /// Its id, if it could be read.
    #[serde(default)]
    pub id: Option<String>,
    /// Why.
    pub reason: String,
}

/// The answer to registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The probe's id at that collector.
    pub probe_id: String,
    /// The secret token: keep it; it is shown once.
    pub token: String,
}

/// What an upload pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadSummary {
    /// Records acknowledged (accepted or duplicates) and removed from the spool.
    pub acknowledged: usize,
    /// Records refused and moved aside.
    pub rejected: usize,
    /// Records still waiting.
    pub remaining: usize,
    /// Records held back until the probe learns its public address (see [`crate::address`]).
    pub held: usize,
}

/// An upload problem (the records stay in the spool).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The collector could not be reached or did not answer in time.
    #[error("cannot reach the collector at {collector}: {cause}")]
    Unreachable {
        /// The collector's base URL, as configured (normalised with [`collector_base`]).
        collector: String,
        /// Why, in words: connection refused, the name does not resolve, timed out, ...
        cause: String,
    },
    /// The collector refused the request as a whole.
    #[error("the collector at {collector} answered HTTP {status}: {message}")]
    Refused {
        /// The collector's base URL.
        collector: String,
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The request could not even be built (a local problem, not the collector's).
    #[error("cannot prepare the upload: {0}")]
    Local(String),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl UploadError {
    /// Worth retrying later (outage, overload), as opposed to a configuration problem.
    pub fn is_transient(&self) -> bool {
        match self {
            UploadError::Unreachable { .. } => true,
            UploadError::Refused { status, .. } => *status == 429 || *status >= 500,
            UploadError::Spool(_) | UploadError::Local(_) => false,
        }
    }
}

/// A collector client.
#[derive(Clone, Debug)]
pub struct Uploader {
    base: url::Url,
    token: Option<String>,
    client: reqwest::Client,
}

impl Uploader {
    /// A client for the collector at `base` (normalised with [`collector_base`], so
    /// `https://c.example` and `https://c.example/` are the same collector).
    pub fn new(base: url::Url, token: Option<String>) -> Result<Self, String> {
        let base = normalize_base(base);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("witness/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(std::sync::Arc::new(witness_core::sysresolver::HostResolver))
            .build()
            .map_err(|e| format!("cannot build the upload client: {e}"))?;
        Ok(Uploader {
            base,
            token,
            client,
        })
    }

    fn endpoint(&self, path: &str) -> Result<url::Url, UploadError> {
        self.base
            .join(path)
            .map_err(|e| UploadError::Local(format!("bad collector URL {}: {e}", self.base)))
    }

    /// The collector's base URL, normalised.
    pub fn base(&self) -> &url::Url {
        &self.base
    }

    /// Register this probe; `invite` for collectors that require one.
    pub async fn register(&self, invite: Option<&str>) -> Result<Registration, UploadError> {
        let body = serde_json::json!({ "invite": invite });
        let req = self
            .client
            .post(self.endpoint("api/v1/register")?)
            .json(&body);
        exchange(&self.base, req).await
    }

    /// Send one batch of raw JSON records.
    pub async fn send_batch(&self, records: &[&str]) -> Result<UploadReply, UploadError> {
        let mut json = String::from("{\"measurements\":[");
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(r);
        }
        json.push_str("]}");
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(json.as_bytes())
            .map_err(|e| UploadError::Local(format!("compress: {e}")))?;
        let body = gz
            .finish()
            .map_err(|e| UploadError::Local(format!("compress: {e}")))?;
        let mut req = self
            .client
            .post(self.endpoint("api/v1/measurements")?)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONTENT_ENCODING, "gzip")
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        exchange(&self.base, req).await
    }

    /// Upload everything waiting in `spool`, batch by batch, oldest first, after releasing the
    /// held records that can be (see [`crate::address::release`]). Stops at the first
    /// transport failure (the rest stays for later).
    pub async fn drain(&self, spool: &Spool) -> Result<UploadSummary, UploadError> {
        // Held records join the queue, scrubbed again, once the address is known; when some
        // are still held, an empty batch asks the collector which address it sees.
        let mut held = crate::address::release(spool)?.held;
        if held > 0 {
            // An unreachable collector is an upload failure, held records or not.
            if let Some(ip) = self.send_batch(&[]).await?.your_address {
                let known = crate::address::KnownAddresses::of(spool);
                if let Err(e) = known.remember(ip, chrono::Utc::now()) {
                    tracing::warn!(error = %e, "cannot remember the probe's public address");
                }
                held = crate::address::release(spool)?.held;
            }
        }
        let mut summary = UploadSummary {
            held,
            ..UploadSummary::default()
        };
        loop {
            let batch = spool.oldest(BATCH)?;
            if batch.is_empty() {
                break;
            }
            let records: Vec<&str> = batch.iter().map(|p| p.json.as_str()).collect();
            let reply = self.send_batch(&records).await?;
            let mut handled = 0;
            for id in reply.accepted.iter().chain(reply.duplicates.iter()) {
                if batch.iter().any(|p| &p.id == id) {
                    spool.remove(id)?;
                    summary.acknowledged += 1;
                    handled += 1;
                }
            }
            for r in &reply.rejected {
                if let Some(p) = batch.get(r.index) {
                    spool.reject(&p.id, &r.reason)?;
                    summary.rejected += 1;
                    handled += 1;
                    tracing::warn!(id = %p.id, reason = %r.reason, "collector rejected a measurement; kept aside in the spool's rejected/ folder");
                }
            }
            if handled == 0 {
                // The collector acknowledged nothing of this batch: do not loop forever.
                break;
            }
        }
        summary.remaining = spool.len()?;
        Ok(summary)
    }

    /// [`Self::drain`] with retries and exponential backoff on transient failures.
    pub async fn drain_with_retries(
        &self,
        spool: &Spool,
        attempts: u32,
        first_backoff: Duration,
    ) -> Result<UploadSummary, UploadError> {
        let mut backoff = first_backoff;
        let mut total = UploadSummary::default();
        for attempt in 1..=attempts.max(1) {
            match self.drain(spool).await {
                Ok(s) => {
                    total.acknowledged += s.acknowledged;
                    total.rejected += s.rejected;
                    total.remaining = s.remaining;
                    total.held = s.held;
                    return Ok(total);
                }
                Err(e) if e.is_transient() && attempt < attempts => {
                    tracing::info!(attempt, error = %e, "upload failed; retrying in {:?}", backoff);
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
}

/// Up to ±20% jitter so many probes do not retry in lockstep after an outage.
pub fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.8..1.2);
    d.mul_f64(f)
}

/// Send `req`, read the answer with a bound, and parse a 2xx answer as `T`.
async fn exchange<T: serde::de::DeserializeOwned>(
    base: &url::Url,
    req: reqwest::RequestBuilder,
) -> Result<T, UploadError> {
    let resp = req.send().await.map_err(|e| unreachable(base, &e))?;
    let (status, bytes) = read_capped(base, resp).await?;
    if !(200..300).contains(&status) {
        return Err(refused(base, status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| UploadError::Refused {
        collector: base.to_string(),
        status,
        message: format!("unexpected answer: {e}"),
    })
}

async fn read_capped(
    base: &url::Url,
    mut resp: reqwest::Response,
) -> Result<(u16, Vec<u8>), UploadError> {
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(base, &e))? {
        if body.len() + chunk.len() > MAX_REPLY {
            return Err(UploadError::Refused {
                collector: base.to_string(),
                status,
                message: "answer too large".into(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

fn refused(base: &url::Url, status: u16, body: &[u8]) -> UploadError {
    let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
    let message = match status {
        401 | 403 => format!(
            "{}; the token is missing or not valid for this collector (register with \
             `witness register --collector {base}`)",
            text.trim()
        ),
        _ => text,
    };
    UploadError::Refused {
        collector: base.to_string(),
        status,
        message,
    }
}

/// An unreachable collector, named as configured, with the cause in words. The cause is taken
/// from the error chain (refused, DNS, timeout, TLS) and scrubbed of IP addresses, so the
/// probe's own address never appears; the collector's URL is the one the volunteer typed.
fn unreachable(base: &url::Url, e: &reqwest::Error) -> UploadError {
    UploadError::Unreachable {
        collector: base.to_string(),
        cause: cause_of(base, e),
    }
}

fn cause_of(base: &url::Url, e: &reqwest::Error) -> String {
    let host = base.host_str().unwrap_or("the collector");
    let mut chain: Vec<String> = Vec::new();
    let mut io_kind = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        chain.push(err.to_string());
        source = err.source();
    }
    let all = chain.join(": ").to_ascii_lowercase();
    if e.is_timeout() || io_kind == Some(std::io::ErrorKind::TimedOut) {
        return "timed out (no answer; the network or the collector may be down)".into();
    }
    if io_kind == Some(std::io::ErrorKind::ConnectionRefused) || all.contains("connection refused")
    {
        return "connection refused (nothing listens at that address and port; check the URL, \
                or the collector is down)"
            .into();
    }
    if all.contains("dns error")
        || all.contains("failed to lookup address")
        || all.contains("name or service not known")
        || all.contains("no address associated")
    {
        return format!("the name {host} does not resolve (check the URL, or your DNS)");
    }
    if all.contains("certificate") || all.contains("tls") || all.contains("handshake") {
        let last = chain.last().cloned().unwrap_or_default();
        return format!(
            "the TLS handshake failed ({}); is it the right URL, http:// or https://?",
            witness_core::scrub::scrub_ips(&last)
        );
    }
    if io_kind == Some(std::io::ErrorKind::ConnectionReset) || all.contains("reset") {
        return "the connection was reset".into();
    }
    // The innermost cause, without IP addresses.
    witness_core::scrub::scrub_ips(chain.last().map(String::as_str).unwrap_or("unknown error"))
}

/// Normalises a collector base URL: a trailing slash on the path (so that `api/v1/...` joins
/// under it), no query or fragment. The same function is used wherever a collector URL is read
/// (register, run, upload, daemon, control), so the saved registration always matches.
pub fn normalize_base(mut base: url::Url) -> url::Url {
    if !base.path().ends_with('/') {
        let p = format!("{}/", base.path());
        base.set_path(&p);
    }
    base.set_query(None);
    base.set_fragment(None);
    base
}

/// Parses and normalises a collector (or control) base URL typed by a volunteer; the error says
/// what is wrong with it. `what` names the setting, e.g. `--collector`.
pub fn collector_base(text: &str, what: &str) -> Result<url::Url, String> {
    let text = text.trim();
    let parsed = url::Url::parse(text).map_err(|e| {
        format!(
            "{what} {text:?} is not a URL ({e}); write it in full, e.g. https://collector.example/"
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{what} {text:?} must start with https:// (or http:// on a test network)"
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{what} {text:?} has no host name"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "{what} {text:?} contains a user name or password; use --token instead"
        ));
    }
    Ok(normalize_base(parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_urls_normalise_to_one_form() {
        let forms = [
            "https://c.example",
            "https://c.example/",
            " https://C.Example:443/ ",
            "https://c.example/?x=1#frag",
        ];
        for f in forms {
            assert_eq!(
                collector_base(f, "--collector").unwrap().as_str(),
                "https://c.example/",
                "{f}"
            );
        }
        assert_eq!(
            collector_base("http://c.example:8080/witness", "x")
                .unwrap()
                .as_str(),
            "http://c.example:8080/witness/"
        );
        for bad in ["c.example", "ftp://c.example/", "https://u:p@c.example/"] {
            let e = collector_base(bad, "--collector").unwrap_err();
            assert!(e.contains("--collector") && e.contains(bad), "{e}");
        }
    }
}
