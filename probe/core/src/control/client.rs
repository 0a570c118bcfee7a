//! The probe's side of the control protocol, below the engine: asks the collector's control
//! service for its view of each URL (in batches, prefetched for a whole run) and for the
//! networks of the routers a localisation found. The engine calls it; it knows nothing of the
//! engine.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use crate::error::ControlError;
use crate::model::{
    AsnReply, AsnRequest, ControlBatchLine, ControlBatchRequest, ControlReply, ControlRequest,
    MAX_ASN_ADDRS, MAX_CONTROL_ADDRS, MAX_CONTROL_BATCH,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Software;
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
