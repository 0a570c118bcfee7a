//! Loopback stand-ins for many sites on one listener, for the control service at scale (the
//! `control_fleet` suite and the fleet benchmark): every path is its own URL, so one server
//! is a whole list, and the server counts who fetched what, so a test can tell the control's
//! fetches (from 127.0.0.1) from the probe's ([`CENSORED_SOURCE`]).
//!
//! Paths: `/ok/...` serves a small page; `/bh/...` never answers [`CENSORED_SOURCE`] (an ISP's
//! blackhole) and serves the page to everyone else; `/down/...` closes at once for everyone;
//! `/slow/...` answers after [`SLOW_HOLD`]; `/dl/N` redirects to `/dl/N+1` with a 1 GiB body
//! (the downloader attack, issue #20 item 11) up to [`DL_HOPS`], then serves the page.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::http::read_request;
use crate::{CollectorProcess, CENSORED_SOURCE};

/// Start the real collector with the SHIPPED `collector/collector.example.toml`, changing only
/// what a lab must: the listen address (port 0), the database (in `dir`), registrations per
/// client (every test probe registers from 127.0.0.1), private targets allowed and
/// 127.0.0.0/8 public. `more` are further (from, to) replacements (the benchmark's).
pub fn shipped_collector(dir: &std::path::Path, more: &[(&str, String)]) -> CollectorProcess {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../collector/collector.example.toml");
    let mut text = std::fs::read_to_string(example).expect("reading the shipped config");
    let db = dir.join("collector.db");
    let lab = [
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:0\"".to_string(),
        ),
        (
            "url = \"sqlite://witness-collector.db\"",
            format!("url = \"sqlite://{}\"", db.display()),
        ),
        (
            "register_per_client_per_hour = 4",
            "register_per_client_per_hour = 1000".to_string(),
        ),
        ("allow_private = false", "allow_private = true".to_string()),
        (
            "lab_public_ranges = []",
            "lab_public_ranges = [\"127.0.0.0/8\"]".to_string(),
        ),
    ];
    for (from, to) in lab.iter().chain(more) {
        assert!(text.contains(from), "the shipped config lost {from}");
        text = text.replacen(from, to, 1);
    }
    let config = dir.join("collector.toml");
    std::fs::write(&config, text).expect("writing the collector config");
    CollectorProcess::start_with(&config, &db).expect("starting the collector")
}

/// How long a `/slow/` answer waits: under the control's shipped 10 s step timeout.
pub const SLOW_HOLD: Duration = Duration::from_secs(8);
/// Redirects of the `/dl/` chain.
pub const DL_HOPS: u32 = 22;
/// The body each `/dl/` redirect claims (and starts to send).
const DL_BODY: u64 = 1 << 30;
/// Longest a connection is kept (a blackhole, a slow answer, a body nobody reads).
const MAX_CONNECTION: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Counts {
    /// (peer, path) → requests.
    requests: Mutex<HashMap<(IpAddr, String), usize>>,
    slow_now: AtomicUsize,
    slow_peak: AtomicUsize,
    /// Body bytes the `/dl/` redirects managed to write.
    dl_written: AtomicU64,
}

/// The sites' server; stops when dropped (its tasks live on the caller's runtime).
pub struct Sites {
    addr: SocketAddr,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sites {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sites {
    /// Listen on `ip` (port 0) on the current runtime.
    pub async fn start(ip: IpAddr) -> std::io::Result<Sites> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let counts = shared.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(MAX_CONNECTION, serve(stream, peer.ip(), &counts))
                        .await;
                });
            }
        });
        Ok(Sites { addr, counts, task })
    }

    /// `http://IP:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests for `path` from `peer`.
    pub fn requests(&self, peer: IpAddr, path: &str) -> usize {
        let map = self
            .counts
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(&(peer, path.to_string())).copied().unwrap_or(0)
    }

    /// Requests from `peer` whose path starts with `prefix`, and the distinct paths among them.
    pub fn requests_under(&self, peer: IpAddr, prefix: &str) -> (usize, usize) {
        let map = self
            .counts
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let hits: Vec<usize> = map
            .iter()
            .filter(|((p, path), _)| *p == peer && path.starts_with(prefix))
            .map(|(_, n)| *n)
            .collect();
        (hits.iter().sum(), hits.len())
    }

    /// `/slow/` answers under way now, and at most so far.
    pub fn slow_in_flight(&self) -> (usize, usize) {
        (
            self.counts.slow_now.load(Ordering::Relaxed),
            self.counts.slow_peak.load(Ordering::Relaxed),
        )
    }

    /// Body bytes the `/dl/` redirects wrote before their client left.
    pub fn dl_written(&self) -> u64 {
        self.counts.dl_written.load(Ordering::Relaxed)
    }
}

const PAGE: &str = "<html><head><title>Site</title></head><body>A site of the fleet.</body></html>";

async fn page(stream: &mut TcpStream) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        PAGE.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(PAGE.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn hold(stream: &mut TcpStream) {
    // Read nothing more, answer nothing: the client's step timeout ends it.
    let mut buf = [0u8; 1024];
    use tokio::io::AsyncReadExt;
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn serve(mut stream: TcpStream, peer: IpAddr, counts: &Counts) {
    let Ok(req) = read_request(&mut stream).await else {
        return;
    };
    {
        let mut map = counts.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((peer, req.path.clone())).or_default() += 1;
    }
    let path = req.path.as_str();
    if path.starts_with("/bh/") && peer == CENSORED_SOURCE {
        hold(&mut stream).await;
    } else if path.starts_with("/down/") {
        // Closed without an answer.
    } else if path.starts_with("/slow/") {
        let now = counts.slow_now.fetch_add(1, Ordering::Relaxed) + 1;
        counts.slow_peak.fetch_max(now, Ordering::Relaxed);
        tokio::time::sleep(SLOW_HOLD).await;
        page(&mut stream).await;
        counts.slow_now.fetch_sub(1, Ordering::Relaxed);
    } else if let Some(n) = path.strip_prefix("/dl/") {
        let n: u32 = n.parse().unwrap_or(DL_HOPS);
        if n >= DL_HOPS {
            page(&mut stream).await;
            return;
        }
        let head = format!(
            "HTTP/1.1 302 Found\r\nLocation: /dl/{}\r\nContent-Length: {DL_BODY}\r\nConnection: close\r\n\r\n",
            n + 1
        );
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < DL_BODY {
            match tokio::time::timeout(Duration::from_secs(2), stream.write_all(&chunk)).await {
                Ok(Ok(())) => {
                    sent += chunk.len() as u64;
                    counts
                        .dl_written
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                _ => break,
            }
        }
    } else {
        page(&mut stream).await;
    }
}
