//! The control service API: the probe's client, and the server-side function the collector
//! calls to answer it with the probe's own measurement code.
//!
//! `POST {base}/api/v1/control` with a [`ControlRequest`] and `Authorization: Bearer TOKEN`
//! answers a [`ControlReply`]; `GET {base}/api/v1/health` answers 200 when the service is up.
//! See `docs/measurement-format.md`.

use std::time::Duration;

use crate::checks::MeasureConfig;
use crate::engine::Engine;
use std::net::IpAddr;

use crate::error::ControlError;
use crate::model::{ControlReply, ControlRequest, ControlResponse, MAX_CONTROL_ADDRS};

/// Largest control answer accepted: the control is trusted more than a random server, but a
/// compromised or misconfigured one must not exhaust the probe's memory.
const MAX_CONTROL_REPLY: usize = 4 * 1024 * 1024;

/// Client for a control service.
#[derive(Clone, Debug)]
pub struct ControlClient {
    base: url::Url,
    token: Option<String>,
    client: reqwest::Client,
}

impl ControlClient {
    /// A client for the service at `base` (e.g. `https://collector.example/`), authenticated
    /// with `token` when given. `timeout` bounds each whole request: the control measures the
    /// site itself, so give it a few step timeouts.
    pub fn new(
        base: url::Url,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ControlError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("witness/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ControlError::Client)?;
        Ok(ControlClient {
            base,
            token,
            client,
        })
    }

    fn endpoint(&self, path: &str) -> Result<url::Url, ControlError> {
        Ok(self.base.join(path)?)
    }

    /// Is the service up?
    pub async fn health(&self) -> Result<(), ControlError> {
        let url = self.endpoint("api/v1/health")?;
        let resp = self
            .client
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| ControlError::request(&e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(ControlError::Status {
                status: resp.status().as_u16(),
                body: None,
            })
        }
    }

    /// Ask the control to measure `url`.
    pub async fn measure(&self, url: &str, addrs: &[IpAddr]) -> Result<ControlReply, ControlError> {
        let endpoint = self.endpoint("api/v1/control")?;
        let mut req = self.client.post(endpoint).json(&ControlRequest {
            url: url.to_string(),
            addrs: addrs.iter().take(MAX_CONTROL_ADDRS).copied().collect(),
        });
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let mut resp = req.send().await.map_err(|e| ControlError::request(&e))?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| ControlError::request(&e))? {
            if body.len() + chunk.len() > MAX_CONTROL_REPLY {
                return Err(ControlError::TooLarge(MAX_CONTROL_REPLY));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
            return Err(ControlError::Status {
                status: status.as_u16(),
                body: Some(crate::scrub::scrub_ips(&text)),
            });
        }
        serde_json::from_slice(&body).map_err(ControlError::Invalid)
    }
}

/// How the control service measures.
#[derive(Clone, Debug)]
pub struct ControlServiceConfig {
    /// Step configuration (its own resolver, timeouts, extra CAs, lab ranges).
    pub measure: MeasureConfig,
    /// Allow private, loopback and other bogon targets (labs only). Off by default: the control
    /// service is an open door to the network by design and must not reach inside its own.
    pub allow_private: bool,
}

/// Why the control service refused a request.
#[derive(Debug, thiserror::Error)]
pub enum ControlRefusal {
    /// The URL could not be parsed or is not http(s).
    #[error("bad URL: {0}")]
    BadUrl(String),
    /// The target is a private or reserved address.
    #[error(
        "target {0} is a private or reserved address; the control service does not measure those"
    )]
    PrivateTarget(String),
    /// The engine could not be built (configuration problem on the server side).
    #[error("control service misconfigured: {0}")]
    Misconfigured(#[from] crate::error::SetupError),
}

/// Answer a control request by measuring the URL with the probe's own code.
pub async fn serve_control(
    req: &ControlRequest,
    cfg: &ControlServiceConfig,
) -> Result<ControlResponse, ControlRefusal> {
    let url = url::Url::parse(&req.url).map_err(|e| ControlRefusal::BadUrl(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ControlRefusal::BadUrl(format!(
            "scheme {} is not http or https",
            url.scheme()
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ControlRefusal::BadUrl("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if req.url.len() > 2048 {
        return Err(ControlRefusal::BadUrl("URL longer than 2048 bytes".into()));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        if !cfg.allow_private && cfg.measure.bogons.is_bogon(ip) {
            return Err(ControlRefusal::PrivateTarget(host));
        }
    }
    if req.addrs.len() > MAX_CONTROL_ADDRS {
        return Err(ControlRefusal::BadUrl(format!(
            "at most {MAX_CONTROL_ADDRS} addresses per request"
        )));
    }
    let mut engine =
        Engine::new(cfg.measure.clone(), None).map_err(ControlRefusal::Misconfigured)?;
    engine.allow_bogon_targets = cfg.allow_private;
    // Bogon addresses among the probe's are skipped (and recorded so) by the engine's policy.
    Ok(engine.control_measure(&url, &req.addrs).await)
}
