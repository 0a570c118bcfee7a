//! The control service's server side, above the engine: checks a probe's request, measures
//! the URL with the probe's own [`Engine`] from the collector's vantage point, and strips
//! internal addresses from the reply. The collector's control service calls it.

use std::net::IpAddr;

use crate::checks::MeasureConfig;
use crate::engine::Engine;
use crate::model::{ControlRequest, ControlResponse, Software, MAX_CONTROL_ADDRS};

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

/// A URL the control will measure: checked, normalised, and the key of its shared view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlTarget {
    /// The URL measured: parsed (host in lower case, default port left out, path
    /// normalised), without its fragment.
    pub url: url::Url,
    /// `scheme://host:port/path?query`: every spelling of one URL shares one view.
    pub key: String,
}

/// Check `url` against the control's rules (length, scheme, port, a private literal) and
/// normalise it. Cheap: no network, so a refusal costs nothing and never reaches the cache.
pub fn check_target(
    url: &str,
    cfg: &ControlServiceConfig,
) -> Result<ControlTarget, ControlRefusal> {
    if url.len() > 2048 {
        return Err(ControlRefusal::BadUrl("URL longer than 2048 bytes".into()));
    }
    let mut url = url::Url::parse(url).map_err(|e| ControlRefusal::BadUrl(e.to_string()))?;
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
    if let Ok(ip) = host.parse::<IpAddr>() {
        if !cfg.allow_private && cfg.measure.bogons.is_bogon(ip) {
            return Err(ControlRefusal::PrivateTarget(host));
        }
    }
    url.set_fragment(None);
    let key = format!(
        "{}://{}:{port}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        &url[url::Position::BeforePath..]
    );
    Ok(ControlTarget { url, key })
}

/// Answer a control request by measuring the URL with the probe's own code: [`check_target`],
/// then [`measure_target`]. The probe's addresses are checked for count and otherwise not
/// used: the control measures from its own resolution (see [`measure_target`]).
pub async fn serve_control(
    req: &ControlRequest,
    cfg: &ControlServiceConfig,
) -> Result<ControlResponse, ControlRefusal> {
    let target = check_target(&req.url, cfg)?;
    check_addrs(req)?;
    measure_target(&target, cfg).await
}

/// At most [`MAX_CONTROL_ADDRS`] probe addresses per request.
pub fn check_addrs(req: &ControlRequest) -> Result<(), ControlRefusal> {
    if req.addrs.len() > MAX_CONTROL_ADDRS {
        return Err(ControlRefusal::BadUrl(format!(
            "at most {MAX_CONTROL_ADDRS} addresses per request"
        )));
    }
    Ok(())
}

/// Measure a checked URL from the control's vantage point, from its own resolution only: the
/// one view that every probe asking within the cache TTL is served. Nothing a probe sends
/// besides the URL shapes it, so no probe can plant a view that others are served.
///
/// What a caller cannot make the control do, unless `allow_private` (labs):
/// - connect to a port outside `allowed_ports`;
/// - connect to a private or reserved address, whether named in the URL or resolved;
/// - connect to an address of the caller's choosing other than the URL's literal;
/// - read a redirect's body (`redirect_body_cap` 0), or follow more redirects than
///   `max_redirects`;
/// - learn internal addresses: private and reserved addresses are removed from the reply
///   (DNS answers, connects, handshakes, HTTP hops).
pub async fn measure_target(
    target: &ControlTarget,
    cfg: &ControlServiceConfig,
) -> Result<ControlResponse, ControlRefusal> {
    let url = &target.url;
    // Bogon targets only in a lab (`allow_private`): otherwise the control is a door inward.
    let engine = Engine::builder(cfg.measure.clone())
        .danger_allow_bogon_targets(cfg.allow_private)
        .build()
        .map_err(ControlRefusal::Misconfigured)?;
    let public = |ip: &IpAddr| cfg.allow_private || !cfg.measure.bogons.is_bogon(*ip);

    let t0 = std::time::Instant::now();
    let measured_at = chrono::Utc::now();
    let (dns, resolved) = engine.resolve(url, t0).await;
    let addrs: Vec<IpAddr> = resolved.into_iter().filter(public).collect();
    let obs = if addrs.is_empty() {
        crate::engine::Observations::default()
    } else {
        let deadline = tokio::time::Instant::from_std(t0) + cfg.measure.target_deadline;
        engine.fetch(url, &addrs, t0, deadline).await
    };
    let mut response = ControlResponse {
        software: Software::default(),
        measured_at,
        dns,
        tcp: obs.tcp,
        tls: obs.tls,
        http: obs.http,
        age_secs: None,
    };
    if !cfg.allow_private {
        drop_internal_addresses(&mut response, &public);
    }
    Ok(response)
}

/// Bytes a control measurement read from the sites: bodies, and the headers it kept. What the
/// collector's per-probe byte budget counts.
pub fn bytes_read(r: &ControlResponse) -> u64 {
    r.http
        .iter()
        .map(|h| {
            let headers: usize = h.headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
            h.body_length + headers as u64
        })
        .sum()
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
