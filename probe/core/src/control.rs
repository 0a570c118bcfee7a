//! The control service API: the probe's client, and the server-side function the collector
//! calls to answer it with the probe's own measurement code.
//!
//! `POST {base}/api/v1/control` with a [`ControlRequest`] and `Authorization: Bearer TOKEN`
//! answers a [`ControlReply`]; `POST {base}/api/v1/control/batch` with a
//! [`ControlBatchRequest`] streams one [`ControlBatchLine`] per URL; `GET {base}/api/v1/health`
//! answers 200 when the service is up. See `docs/collector-api.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use crate::checks::MeasureConfig;
use crate::engine::Engine;
use std::net::IpAddr;

use crate::error::ControlError;
use crate::model::{
    AsnReply, AsnRequest, ControlBatchLine, ControlBatchRequest, ControlReply, ControlRequest,
    ControlResponse, Software, MAX_ASN_ADDRS, MAX_CONTROL_ADDRS, MAX_CONTROL_BATCH,
};

/// Largest control answer accepted: the control is trusted more than a random server, but a
/// compromised or misconfigured one must not exhaust the probe's memory.
const MAX_CONTROL_REPLY: usize = 4 * 1024 * 1024;

/// Batches a run keeps in flight: the default list's six at once, so a URL that holds the
/// control for a whole deadline delays no other batch; a longer list's next batch goes when
/// one ends, so its URLs do not all queue at the control at once.
const BATCH_WINDOW: usize = 8;

/// Longest one batch request may take, streaming included: its URLs are measured by the
/// control one after another as its share of slots allows.
const BATCH_TIMEOUT: Duration = Duration::from_secs(600);

/// Fresh measurements a run may ask for (see [`ControlClient::measure_fresh`]): each is one
/// request, counted in the control's request rate.
const FRESH_PER_RUN: usize = 40;

/// Where a prefetched URL's answer stands.
#[derive(Clone, Debug)]
enum Prefetch {
    /// Its batch is under way.
    Waiting,
    /// The batch answered for it: the reply, or (status, message).
    Ready(Box<Result<ControlReply, (u16, String)>>),
    /// The batch failed as a whole (an older collector, a broken connection): ask the
    /// single-URL endpoint instead.
    Fallback,
}

/// Client for a control service.
#[derive(Clone, Debug)]
pub struct ControlClient {
    base: url::Url,
    token: Option<String>,
    client: reqwest::Client,
    /// The current run's prefetched URLs (see [`ControlClient::prefetch`]).
    prefetched: Arc<Mutex<HashMap<String, watch::Receiver<Prefetch>>>>,
    /// Fresh measurements left to this run.
    fresh_left: Arc<AtomicUsize>,
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
            .dns_resolver(Arc::new(crate::sysresolver::HostResolver))
            .build()
            .map_err(ControlError::Client)?;
        Ok(ControlClient {
            base,
            token,
            client,
            prefetched: Arc::default(),
            fresh_left: Arc::new(AtomicUsize::new(FRESH_PER_RUN)),
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

    /// The control's view of `url`: from this run's batches when [`prefetch`](Self::prefetch)
    /// named it, otherwise (or when its batch failed as a whole) from the single-URL endpoint.
    pub async fn measure(&self, url: &str, addrs: &[IpAddr]) -> Result<ControlReply, ControlError> {
        let pending = self
            .prefetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(url);
        if let Some(mut rx) = pending {
            let answer = rx
                .wait_for(|p| !matches!(p, Prefetch::Waiting))
                .await
                .map(|p| p.clone());
            if let Ok(Prefetch::Ready(answer)) = answer {
                return match *answer {
                    Ok(reply) => Ok(reply),
                    Err((status, body)) => Err(ControlError::Status {
                        status,
                        body: Some(crate::scrub::scrub_ips(&body)),
                    }),
                };
            }
            // The batch failed, or the run stopped prefetching: ask for this one alone.
        }
        self.post(
            "api/v1/control",
            &ControlRequest {
                url: url.to_string(),
                addrs: addrs.iter().take(MAX_CONTROL_ADDRS).copied().collect(),
                fresh: false,
            },
        )
        .await
    }

    /// Ask for a fresh measurement of `url` rather than the shared view, for a site that failed
    /// here while the view says it worked. `None` once this run has asked
    /// [`FRESH_PER_RUN`] times; the collector grants one per URL per cache TTL and otherwise
    /// serves the shared view.
    pub async fn measure_fresh(&self, url: &str) -> Option<Result<ControlReply, ControlError>> {
        let took = self
            .fresh_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        took.ok()?;
        let req = ControlRequest {
            url: url.to_string(),
            addrs: Vec::new(),
            fresh: true,
        };
        Some(self.post("api/v1/control", &req).await)
    }

    /// Start a run: its URLs are asked of the control in batches of [`MAX_CONTROL_BATCH`]
    /// ([`BATCH_WINDOW`] in flight), and [`measure`](Self::measure) then waits for each URL's
    /// line. The URLs are registered at once; the batches are sent while the returned future
    /// is polled (poll it alongside the run; dropping it sends the waiting URLs to the
    /// single-URL endpoint).
    pub fn prefetch(&self, urls: &[String]) -> impl std::future::Future<Output = ()> + '_ {
        self.fresh_left.store(FRESH_PER_RUN, Ordering::Relaxed);
        let mut senders: HashMap<String, watch::Sender<Prefetch>> = HashMap::new();
        {
            let mut map = self.prefetched.lock().unwrap_or_else(|p| p.into_inner());
            map.clear();
            for u in urls {
                if !senders.contains_key(u) {
                    let (tx, rx) = watch::channel(Prefetch::Waiting);
                    senders.insert(u.clone(), tx);
                    map.insert(u.clone(), rx);
                }
            }
        }
        let mut unique: Vec<String> = Vec::with_capacity(senders.len());
        for u in urls {
            if senders.contains_key(u) && !unique.contains(u) {
                unique.push(u.clone());
            }
        }
        let chunks: Vec<Vec<String>> = unique
            .chunks(MAX_CONTROL_BATCH)
            .map(<[String]>::to_vec)
            .collect();
        async move {
            let senders = &senders;
            futures::stream::iter(chunks)
                .for_each_concurrent(BATCH_WINDOW, |chunk| async move {
                    if let Err(e) = self.batch(&chunk, senders).await {
                        tracing::info!(error = %e, "control batch failed; asking URL by URL");
                    }
                    // Whatever the batch left unanswered goes to the single-URL endpoint.
                    for u in &chunk {
                        if let Some(tx) = senders.get(u) {
                            tx.send_if_modified(|p| {
                                let waiting = matches!(p, Prefetch::Waiting);
                                if waiting {
                                    *p = Prefetch::Fallback;
                                }
                                waiting
                            });
                        }
                    }
                })
                .await;
        }
    }

    /// One batch: POST the URLs, and hand each streamed line to its URL's waiter.
    async fn batch(
        &self,
        urls: &[String],
        senders: &HashMap<String, watch::Sender<Prefetch>>,
    ) -> Result<(), ControlError> {
        let endpoint = self.endpoint("api/v1/control/batch")?;
        let body = ControlBatchRequest {
            urls: urls.to_vec(),
        };
        let mut req = self
            .client
            .post(endpoint)
            .json(&body)
            .timeout(BATCH_TIMEOUT);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let mut resp = req.send().await.map_err(|e| ControlError::request(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let mut text = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| ControlError::request(&e))? {
                text.extend_from_slice(&chunk);
                if text.len() > 4096 {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&text[..text.len().min(300)]).into_owned();
            // An older collector has no batch endpoint: those URLs fall back one by one.
            // Other refusals (rate, auth) hold for every URL of the batch.
            if !matches!(status.as_u16(), 404 | 405) {
                for u in urls {
                    if let Some(tx) = senders.get(u) {
                        let _ = tx.send(Prefetch::Ready(Box::new(Err((
                            status.as_u16(),
                            text.clone(),
                        )))));
                    }
                }
            }
            return Err(ControlError::Status {
                status: status.as_u16(),
                body: Some(crate::scrub::scrub_ips(&text)),
            });
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| ControlError::request(&e))? {
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                self.deliver(&line, senders);
            }
            if buf.len() > MAX_CONTROL_REPLY {
                return Err(ControlError::TooLarge(MAX_CONTROL_REPLY));
            }
        }
        if !buf.is_empty() {
            self.deliver(&buf, senders);
        }
        Ok(())
    }

    /// One line of a batch answer to its URL's waiter; a line that does not parse, or names
    /// a URL this run did not ask for, is skipped (its URL then falls back).
    fn deliver(&self, line: &[u8], senders: &HashMap<String, watch::Sender<Prefetch>>) {
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
        }
        let Ok(parsed) = serde_json::from_slice::<ControlBatchLine>(line) else {
            tracing::info!("a control batch line did not parse");
            return;
        };
        let Some(tx) = senders.get(&parsed.url) else {
            return;
        };
        let answer = match (parsed.reply, parsed.error) {
            (Some(reply), _) => Ok(reply),
            (None, e) => Err((
                parsed.status.unwrap_or(503),
                e.unwrap_or_else(|| "no reply".into()),
            )),
        };
        let _ = tx.send(Prefetch::Ready(Box::new(answer)));
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
    let mut engine =
        Engine::new(cfg.measure.clone(), None).map_err(ControlRefusal::Misconfigured)?;
    engine.allow_bogon_targets = cfg.allow_private;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A control on loopback that answers `batch_status` to batches (with one line per URL
    /// when 200) and a reply to single requests; returns its base URL and the paths asked.
    async fn control_server(batch_status: u16) -> (url::Url, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = url::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let reply = serde_json::json!({"control": {"software": Software::default(),
            "measured_at": "2026-12-07T00:00:00Z", "dns": [], "tcp": [], "tls": [], "http": [],
            "age_secs": 7}, "meta": {}});
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (log, reply) = (log.clone(), reply.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // The head, then the body by Content-Length.
                    let (head, body) = loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len: usize = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse().ok())?
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                break (head.to_string(), body.to_string());
                            }
                        }
                    };
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    log.lock().unwrap().push(path.clone());
                    let (status, out) = if path.ends_with("/control/batch") {
                        let req: ControlBatchRequest = serde_json::from_str(&body).unwrap();
                        let lines: String = req
                            .urls
                            .iter()
                            .map(|u| format!("{}\n", serde_json::json!({"url": u, "reply": reply})))
                            .collect();
                        (
                            batch_status,
                            if batch_status == 200 {
                                lines
                            } else {
                                "{}".into()
                            },
                        )
                    } else {
                        (200, reply.to_string())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
                        out.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        (base, asked)
    }

    async fn run(base: url::Url, urls: &[String]) -> Vec<Result<ControlReply, ControlError>> {
        let client = ControlClient::new(base, None, Duration::from_secs(5)).unwrap();
        let prefetch = client.prefetch(urls);
        let measures = futures::future::join_all(urls.iter().map(|u| client.measure(u, &[])));
        let (_, out) = tokio::join!(prefetch, measures);
        out
    }

    #[tokio::test]
    async fn a_run_asks_in_batches_and_every_target_gets_its_line() {
        let (base, asked) = control_server(200).await;
        let urls: Vec<String> = (0..150)
            .map(|i| format!("http://site{i}.example/"))
            .collect();
        let out = run(base, &urls).await;
        assert!(out
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.control.age_secs == Some(7))));
        let asked = asked.lock().unwrap().clone();
        assert_eq!(
            asked,
            vec!["/api/v1/control/batch"; 2],
            "two batches, no single"
        );
    }

    #[tokio::test]
    async fn an_older_collector_without_batches_is_asked_url_by_url() {
        let (base, asked) = control_server(404).await;
        let urls: Vec<String> = (0..3).map(|i| format!("http://site{i}.example/")).collect();
        let out = run(base, &urls).await;
        assert!(out.iter().all(Result::is_ok));
        let asked = asked.lock().unwrap().clone();
        assert_eq!(asked.iter().filter(|p| p.ends_with("/control")).count(), 3);
    }
}
