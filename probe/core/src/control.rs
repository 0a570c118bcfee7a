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
use crate::model::{
    AsnReply, AsnRequest, ControlReply, ControlRequest, ControlResponse, Software, MAX_ASN_ADDRS,
    MAX_CONTROL_ADDRS,
};

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
        self.post(
            "api/v1/control",
            &ControlRequest {
                url: url.to_string(),
                addrs: addrs.iter().take(MAX_CONTROL_ADDRS).copied().collect(),
            },
        )
        .await
    }

    /// Ask the collector which networks `addrs` (routers a localisation met, at most
    /// [`MAX_ASN_ADDRS`]) belong to: one answer per address, `None` where unknown.
    pub async fn asns(&self, addrs: &[IpAddr]) -> Result<Vec<Option<u32>>, ControlError> {
        let addrs: Vec<IpAddr> = addrs.iter().take(MAX_ASN_ADDRS).copied().collect();
        let asked = addrs.len();
        let reply: AsnReply = self.post("api/v1/asn", &AsnRequest { addrs }).await?;
        if reply.asns.len() != asked {
            return Err(ControlError::Status {
                status: 200,
                body: Some(format!(
                    "{} networks for {asked} addresses",
                    reply.asns.len()
                )),
            });
        }
        Ok(reply.asns)
    }

    /// POST `body` as JSON to `path`; the answer, bounded and parsed.
    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ControlError> {
        let endpoint = self.endpoint(path)?;
        let mut req = self.client.post(endpoint).json(body);
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
    /// Ports the control connects to (the URL's port, explicit or the scheme's default).
    /// The collector's default is 80 and 443: anything else turns the control into a port
    /// scanner for whoever holds a token.
    pub allowed_ports: Vec<u16>,
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
    /// The URL's port is not one the control connects to.
    #[error("port {0} is not measured by this control service (allowed: {1})")]
    Port(u16, String),
    /// The engine could not be built (configuration problem on the server side).
    #[error("control service misconfigured: {0}")]
    Misconfigured(#[from] crate::error::SetupError),
}

/// Answer a control request by measuring the URL with the probe's own code.
///
/// What a caller cannot make the control do, unless `allow_private` (labs):
/// - connect to a port outside `allowed_ports`;
/// - connect to a private or reserved address, whether named in the URL, resolved, or among
///   the probe's addresses;
/// - connect anywhere for a name that does not resolve from the control: the probe's
///   addresses are measured only next to the control's own, so a made-up name cannot point
///   the control at an address of the caller's choosing (the reply then carries only the DNS
///   observations: the name's failure is the evidence);
/// - learn internal addresses: private and reserved addresses are removed from the reply
///   (DNS answers, connects, handshakes, HTTP hops).
pub async fn serve_control(
    req: &ControlRequest,
    cfg: &ControlServiceConfig,
) -> Result<ControlResponse, ControlRefusal> {
    if req.url.len() > 2048 {
        return Err(ControlRefusal::BadUrl("URL longer than 2048 bytes".into()));
    }
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
    let port = url.port_or_known_default().unwrap_or(80);
    if !cfg.allow_private && !cfg.allowed_ports.is_empty() && !cfg.allowed_ports.contains(&port) {
        let allowed: Vec<String> = cfg.allowed_ports.iter().map(u16::to_string).collect();
        return Err(ControlRefusal::Port(port, allowed.join(", ")));
    }
    let literal = host.parse::<IpAddr>().ok();
    if let Some(ip) = literal {
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
    let public = |ip: &IpAddr| cfg.allow_private || !cfg.measure.bogons.is_bogon(*ip);

    let t0 = std::time::Instant::now();
    let measured_at = chrono::Utc::now();
    let (dns, resolved) = engine.resolve(&url, t0).await;
    let mut addrs: Vec<IpAddr> = resolved.into_iter().filter(public).collect();
    if !addrs.is_empty() {
        for ip in req.addrs.iter().filter(|ip| public(ip)) {
            if !addrs.contains(ip) {
                addrs.push(*ip);
            }
        }
    }
    let obs = if addrs.is_empty() {
        crate::engine::Observations::default()
    } else {
        let deadline = tokio::time::Instant::from_std(t0) + cfg.measure.target_deadline;
        engine.fetch(&url, &addrs, t0, deadline).await
    };
    let mut response = ControlResponse {
        software: Software::default(),
        measured_at,
        dns,
        tcp: obs.tcp,
        tls: obs.tls,
        http: obs.http,
    };
    if !cfg.allow_private {
        drop_internal_addresses(&mut response, &public);
    }
    Ok(response)
}

/// Remove every private or reserved address from a reply: the control must not tell a caller
/// what its own network's names resolve to, nor which internal addresses it refused.
fn drop_internal_addresses(r: &mut ControlResponse, public: &impl Fn(&IpAddr) -> bool) {
    for d in &mut r.dns {
        d.answers.retain(|a| public(&a.addr));
        for late in &mut d.late_responses {
            late.answers.retain(public);
        }
    }
    r.tcp.retain(|t| public(&t.addr.ip()));
    r.tls.retain(|t| public(&t.addr.ip()));
    for h in &mut r.http {
        if h.addr.is_some_and(|a| !public(&a.ip())) {
            h.addr = None;
        }
    }
}
