//! A multi-connection origin web server that plays both the site and the censor in front of it.
//!
//! One listener is one address and port, serving either TLS or cleartext HTTP/1.1. It hosts
//! sites chosen by SNI (TLS) or `Host` (cleartext); each site has a normal page and optionally
//! a [`Rule`]: a [`Behaviour`] for everyone, or only for peers the [`Policy`] calls censored
//! (everyone else gets the normal page). Every connection runs in its own task, every wait is
//! bounded, and hostile input ends the connection, never the server.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::LazyConfigAcceptor;

use crate::http::{self, Request, RequestError};
use crate::pki::{LabPki, TlsConfigs};
use crate::tasks::Tasks;
use crate::throttle::Throttled;

/// Source address of "the censored probe".
pub const CENSORED_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Source address of the uncensored control.
pub const CONTROL_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// Bound on each step a client drives (ClientHello, handshake, request head).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on a whole connection (endless bodies, held connections).
pub const DEFAULT_MAX_CONNECTION_TIME: Duration = Duration::from_secs(60);
/// Bytes of random garbage sent instead of a ServerHello.
const GARBAGE_LEN: usize = 1024;

/// Which peers count as censored: the in-process censor decides by source address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Peers that get the behaviours meant for censored peers.
    pub censored_peers: Vec<IpAddr>,
}

impl Default for Policy {
    /// Only [`CENSORED_SOURCE`] is censored.
    fn default() -> Self {
        Self {
            censored_peers: vec![CENSORED_SOURCE],
        }
    }
}

impl Policy {
    /// Whether `peer` is behind the censor.
    pub fn is_censored(&self, peer: IpAddr) -> bool {
        self.censored_peers.contains(&peer)
    }
}

/// A complete HTTP response the origin can serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// Status code.
    pub status: u16,
    /// Extra headers (a `Content-Type: text/html` is added when absent).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Page {
    /// A 200 HTML page with `<title>{title}</title>` and a paragraph of `text`.
    pub fn html(title: &str, text: &str) -> Self {
        Self::with_status(200, title, text)
    }

    /// An HTML page with the given status.
    pub fn with_status(status: u16, title: &str, text: &str) -> Self {
        let body = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
             <body><h1>{title}</h1><p>{text}</p></body></html>\n"
        );
        Self {
            status,
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }
}

/// What the origin (or the censor in front of it) does with a connection.
///
/// On a cleartext listener there is no ClientHello: the TLS-only behaviours then act on the
/// request instead (`ResetAfterClientHello` resets after the request head, like a Host-based
/// reset; `DropAfterClientHello` holds after it; `GarbageInsteadOfTls` answers garbage), and
/// `ExpiredCert`/`Mitm` serve the normal page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Serve this page instead of the site's own (e.g. a censor rewriting content).
    Serve(Page),
    /// Redirect to `location`.
    Redirect {
        /// 301, 302, 307...
        status: u16,
        /// The `Location` header.
        location: String,
    },
    /// Read the ClientHello, then close with SO_LINGER 0: the client gets a RST.
    ResetAfterClientHello,
    /// Read the ClientHello, then stay silent until the client gives up (Kazakhstan's SNI
    /// blocking since 2021).
    DropAfterClientHello,
    /// Complete the TLS handshake and read the request head, then RST.
    ResetAfterRequest,
    /// Answer a blockpage.
    Blockpage {
        /// Usually 200 or 403.
        status: u16,
        /// The blockpage HTML.
        body: String,
    },
    /// A 403 from the site itself, over valid TLS (geoblocking, not censorship).
    Forbidden,
    /// Pace everything sent, handshake included, at `bytes_per_sec`; the body is the page
    /// padded to `body_len` bytes.
    Slow {
        /// Rate limit of the server's writes.
        bytes_per_sec: u64,
        /// Body length (the page, padded with spaces).
        body_len: usize,
    },
    /// A chunked body that never ends (until the client leaves or the connection time limit).
    EndlessBody,
    /// About 1 MiB of response headers.
    HugeHeaders,
    /// `/` redirects to `/loop`, which redirects back to `/`.
    RedirectLoop,
    /// `/` redirects to `/hop/1`, which redirects to `/hop/2`, ... up to `/hop/{hops}`, which
    /// serves the page: a chain of `hops` redirects, every answer (the page too) sent after
    /// `delay_ms` (a hostile server that keeps each hop just under the step timeout).
    RedirectChain {
        /// How many redirects before the page.
        hops: u32,
        /// How long each answer waits, milliseconds.
        delay_ms: u64,
    },
    /// `Content-Encoding: gzip`, ~256 KiB on the wire, 256 MiB inflated.
    GzipBomb,
    /// Answer the ClientHello with random bytes.
    GarbageInsteadOfTls,
    /// Complete TLS with the site's expired certificate, then serve the page.
    ExpiredCert,
    /// Complete TLS with the forged state-CA chain for the SNI, then serve the real page.
    Mitm,
}

/// Who a [`Rule`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Every peer.
    Everyone,
    /// Only peers in [`Policy::censored_peers`]; the others get the normal page.
    Censored,
}

/// A behaviour and who gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// What happens.
    pub behaviour: Behaviour,
    /// To whom.
    pub audience: Audience,
}

impl Rule {
    /// `behaviour` for every peer.
    pub fn everyone(behaviour: Behaviour) -> Self {
        Self {
            behaviour,
            audience: Audience::Everyone,
        }
    }

    /// `behaviour` for censored peers only.
    pub fn censored(behaviour: Behaviour) -> Self {
        Self {
            behaviour,
            audience: Audience::Censored,
        }
    }
}

/// One site hosted by an origin listener.
#[derive(Clone, Debug)]
pub struct SiteConfig {
    /// Host names; the first is the canonical one (certificate CN). The first site of a
    /// listener is its default for unknown or missing SNI/Host.
    pub names: Vec<String>,
    /// The normal page, served at every path.
    pub page: Page,
    /// The special behaviour, if any.
    pub rule: Option<Rule>,
}

impl SiteConfig {
    /// A site called `name` serving a page titled after it, with no rule.
    pub fn new(name: &str) -> Self {
        Self {
            names: vec![name.to_owned()],
            page: Page::html(&format!("Welcome to {name}"), &format!("This is {name}.")),
            rule: None,
        }
    }

    /// The same site with `rule`.
    pub fn with_rule(mut self, rule: Rule) -> Self {
        self.rule = Some(rule);
        self
    }
}

/// Whether a listener speaks TLS or cleartext HTTP.
#[derive(Clone, Debug)]
pub enum Transport {
    /// TLS, with the certificates of every hosted site.
    Tls(TlsConfigs),
    /// Plain HTTP/1.1.
    Cleartext,
}

impl Transport {
    /// TLS with certificates from `pki` for all of `sites`.
    pub fn tls(pki: &LabPki, sites: &[SiteConfig]) -> anyhow::Result<Self> {
        let names: Vec<Vec<String>> = sites.iter().map(|s| s.names.clone()).collect();
        Ok(Self::Tls(pki.tls_configs(&names)?))
    }
}

/// Everything needed to start an origin listener.
#[derive(Clone, Debug)]
pub struct OriginConfig {
    /// Where to listen; port 0 picks a free port.
    pub addr: SocketAddr,
    /// TLS or cleartext.
    pub transport: Transport,
    /// Hosted sites (at least one).
    pub sites: Vec<SiteConfig>,
    /// Who is censored.
    pub policy: Policy,
    /// Bound on a whole connection.
    pub max_connection_time: Duration,
}

impl OriginConfig {
    /// A config with the default policy and connection time limit.
    pub fn new(addr: SocketAddr, transport: Transport, sites: Vec<SiteConfig>) -> Self {
        Self {
            addr,
            transport,
            sites,
            policy: Policy::default(),
            max_connection_time: DEFAULT_MAX_CONNECTION_TIME,
        }
    }
}

/// A running origin listener; dropping it aborts the listener and every connection.
#[derive(Debug)]
pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Tasks,
}

#[derive(Debug)]
struct Shared {
    transport: Transport,
    policy: Policy,
    max_connection_time: Duration,
    /// Sites in order; the first is the default.
    sites: RwLock<Vec<SiteConfig>>,
    /// Name (lowercase) → index into `sites`.
    index: HashMap<String, usize>,
    connections: AtomicUsize,
}

/// What one connection gets.
struct Decision {
    page: Page,
    /// `None`: serve the page normally.
    behaviour: Option<Behaviour>,
}

impl Shared {
    fn decide(&self, name: Option<&str>, peer: IpAddr) -> Decision {
        let matched = name
            .and_then(|n| self.index.get(&n.to_ascii_lowercase()))
            .copied();
        let index = matched.unwrap_or(0);
        let sites = self.sites.read().unwrap_or_else(|p| p.into_inner());
        let Some(site) = sites.get(index) else {
            return Decision {
                page: Page::with_status(404, "Not Found", "No such site."),
                behaviour: None,
            };
        };
        let behaviour = site.rule.as_ref().and_then(|rule| match rule.audience {
            Audience::Everyone => Some(rule.behaviour.clone()),
            // A censor keys on the blocked name: another SNI or Host (a decoy) passes, as it
            // does through real DPI, even to the same address.
            Audience::Censored if matched.is_some() && self.policy.is_censored(peer) => {
                Some(rule.behaviour.clone())
            }
            Audience::Censored => None,
        });
        Decision {
            page: site.page.clone(),
            behaviour,
        }
    }
}

impl Origin {
    /// Binds `config.addr` and serves until dropped. Must be called inside a tokio runtime.
    pub async fn start(config: OriginConfig) -> io::Result<Self> {
        if config.sites.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an origin needs a site",
            ));
        }
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let mut index = HashMap::new();
        for (i, site) in config.sites.iter().enumerate() {
            for name in &site.names {
                index.entry(name.to_ascii_lowercase()).or_insert(i);
            }
        }
        let shared = Arc::new(Shared {
            transport: config.transport,
            policy: config.policy,
            max_connection_time: config.max_connection_time,
            sites: RwLock::new(config.sites),
            index,
            connections: AtomicUsize::new(0),
        });
        let mut tasks = Tasks::default();
        tasks.spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            tasks,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Replaces the rule of the site called `name` while running (e.g. a block starting
    /// mid-test). Returns false if no hosted site has that name.
    pub fn set_rule(&self, name: &str, rule: Option<Rule>) -> bool {
        let Some(&index) = self.shared.index.get(&name.to_ascii_lowercase()) else {
            return false;
        };
        let mut sites = self.shared.sites.write().unwrap_or_else(|p| p.into_inner());
        sites[index].rule = rule;
        true
    }

    /// Stops listening and aborts every connection now (dropping does the same).
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: back off instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        connections.spawn(async move {
            let limit = shared.max_connection_time;
            let io = Throttled::new(stream);
            let _ = match &shared.transport {
                Transport::Tls(configs) => {
                    timeout(limit, serve_tls(io, peer.ip(), &shared, configs)).await
                }
                Transport::Cleartext => {
                    timeout(limit, serve_cleartext(io, peer.ip(), &shared)).await
                }
            };
        });
    }
}

type Io = Throttled<TcpStream>;

async fn serve_tls(io: Io, peer: IpAddr, shared: &Shared, configs: &TlsConfigs) {
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let Ok(Ok(mut start)) = timeout(STEP_TIMEOUT, acceptor).await else {
        return;
    };
    let sni = start.client_hello().server_name().map(str::to_owned);
    let decision = shared.decide(sni.as_deref(), peer);
    let config = match &decision.behaviour {
        Some(Behaviour::ResetAfterClientHello) => return reset(start.io),
        Some(Behaviour::DropAfterClientHello) => return hold(start.io).await,
        Some(Behaviour::GarbageInsteadOfTls) => return garbage(start.io).await,
        Some(Behaviour::ExpiredCert) => configs.expired.clone(),
        Some(Behaviour::Mitm) => configs.forged.clone(),
        Some(Behaviour::Slow { bytes_per_sec, .. }) => {
            start.io.set_rate(Some(*bytes_per_sec));
            configs.valid.clone()
        }
        _ => configs.valid.clone(),
    };
    let Ok(Ok(mut tls)) = timeout(STEP_TIMEOUT, start.into_stream(config)).await else {
        return;
    };
    let request = match timeout(STEP_TIMEOUT, http::read_request(&mut tls)).await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => return bad_request(&mut tls, error).await,
        Err(_) => return,
    };
    if decision.behaviour == Some(Behaviour::ResetAfterRequest) {
        return reset(tls.into_inner().0);
    }
    let _ = respond(&mut tls, &decision, &request).await;
    let _ = timeout(Duration::from_secs(2), tls.shutdown()).await;
}

async fn serve_cleartext(mut io: Io, peer: IpAddr, shared: &Shared) {
    let request = match timeout(STEP_TIMEOUT, http::read_request(&mut io)).await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => return bad_request(&mut io, error).await,
        Err(_) => return,
    };
    let decision = shared.decide(request.host.as_deref(), peer);
    match &decision.behaviour {
        Some(Behaviour::ResetAfterClientHello | Behaviour::ResetAfterRequest) => return reset(io),
        Some(Behaviour::DropAfterClientHello) => return hold(io).await,
        Some(Behaviour::GarbageInsteadOfTls) => return garbage(io).await,
        Some(Behaviour::Slow { bytes_per_sec, .. }) => io.set_rate(Some(*bytes_per_sec)),
        _ => {}
    }
    let _ = respond(&mut io, &decision, &request).await;
    let _ = timeout(Duration::from_secs(2), io.shutdown()).await;
}

/// Closes with SO_LINGER 0, so the kernel sends a RST instead of a FIN.
fn reset(io: Io) {
    let stream = io.into_inner();
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Reads and discards until the client gives up (bounded by the connection time limit).
async fn hold(mut io: Io) {
    let mut sink = [0u8; 4096];
    while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Sends random bytes that cannot be mistaken for a TLS record, then closes.
async fn garbage(mut io: Io) {
    let mut bytes = vec![0u8; GARBAGE_LEN];
    rand::fill(&mut bytes[..]);
    // 0x14..=0x18 are TLS content types; keep the first byte out of that range.
    if (0x14..=0x18).contains(&bytes[0]) {
        bytes[0] = 0;
    }
    let _ = io.write_all(&bytes).await;
    let _ = timeout(Duration::from_secs(2), io.shutdown()).await;
}

async fn bad_request<S: AsyncWrite + Unpin>(stream: &mut S, error: RequestError) {
    let status = match error {
        RequestError::Io(_) => return,
        RequestError::TooLarge => 431,
        RequestError::Malformed => 400,
    };
    let page = Page::with_status(status, http::reason(status), "The lab could not read that.");
    let _ = http::write_response(stream, status, &page.headers, &page.body, false).await;
    let _ = timeout(Duration::from_secs(2), stream.shutdown()).await;
}

async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    decision: &Decision,
    request: &Request,
) -> io::Result<()> {
    let head_only = request.method.eq_ignore_ascii_case("HEAD");
    let page = &decision.page;
    let serve = |page: &Page| (page.status, page.headers.clone(), page.body.clone());
    let (status, headers, body) = match &decision.behaviour {
        None
        | Some(Behaviour::ExpiredCert | Behaviour::Mitm)
        // Handled before the request; unreachable here, served normally to be safe.
        | Some(
            Behaviour::ResetAfterClientHello
            | Behaviour::DropAfterClientHello
            | Behaviour::ResetAfterRequest
            | Behaviour::GarbageInsteadOfTls,
        ) => serve(page),
        Some(Behaviour::Serve(other)) => serve(other),
        Some(Behaviour::Redirect { status, location }) => redirect(*status, location),
        Some(Behaviour::RedirectLoop) => {
            let next = if request.path == "/" { "/loop" } else { "/" };
            redirect(302, next)
        }
        Some(Behaviour::RedirectChain { hops, delay_ms }) => {
            tokio::time::sleep(Duration::from_millis(*delay_ms)).await;
            let at: u32 = request
                .path
                .strip_prefix("/hop/")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if at >= *hops {
                serve(page)
            } else {
                redirect(302, &format!("/hop/{}", at + 1))
            }
        }
        Some(Behaviour::Blockpage { status, body }) => {
            (*status, Vec::new(), body.clone().into_bytes())
        }
        Some(Behaviour::Forbidden) => serve(&Page::with_status(
            403,
            "403 Forbidden",
            "You don't have permission to access this resource.",
        )),
        Some(Behaviour::Slow { body_len, .. }) => {
            let mut body = page.body.clone();
            if body.len() < *body_len {
                body.resize(*body_len, b' ');
            }
            (page.status, page.headers.clone(), body)
        }
        Some(Behaviour::HugeHeaders) => {
            let mut headers = http::huge_headers();
            headers.extend(page.headers.iter().cloned());
            (page.status, headers, page.body.clone())
        }
        Some(Behaviour::GzipBomb) => {
            let headers = vec![("Content-Encoding".to_owned(), "gzip".to_owned())];
            (200, headers, http::gzip_bomb().to_vec())
        }
        Some(Behaviour::EndlessBody) => return endless_body(stream, page, head_only).await,
    };
    http::write_response(stream, status, &headers, &body, head_only).await
}

fn redirect(status: u16, location: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let body = format!("<html><body><a href=\"{location}\">Moved</a></body></html>\n");
    (
        status,
        vec![("Location".to_owned(), location.to_owned())],
        body.into_bytes(),
    )
}

/// The page, then filler chunks forever.
async fn endless_body<S: AsyncWrite + Unpin>(
    stream: &mut S,
    page: &Page,
    head_only: bool,
) -> io::Result<()> {
    let mut headers = page.headers.clone();
    headers.push(("Transfer-Encoding".to_owned(), "chunked".to_owned()));
    stream.write_all(&http::head(page.status, &headers)).await?;
    if head_only {
        return stream.flush().await;
    }
    // A zero-length chunk would end the body: only send the page if it has content.
    if !page.body.is_empty() {
        let mut chunk = format!("{:x}\r\n", page.body.len()).into_bytes();
        chunk.extend_from_slice(&page.body);
        chunk.extend_from_slice(b"\r\n");
        stream.write_all(&chunk).await?;
    }
    let filler = [b' '; 16 * 1024];
    let mut chunk = format!("{:x}\r\n", filler.len()).into_bytes();
    chunk.extend_from_slice(&filler);
    chunk.extend_from_slice(b"\r\n");
    loop {
        stream.write_all(&chunk).await?;
    }
}
