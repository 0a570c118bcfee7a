//! `lab-origin`: the censorship lab's servers and helpers, run inside one network namespace each
//! (`ip netns exec NS lab-origin ...`), because a process lives in one namespace.
//!
//! - `serve CONFIG.json`: origins (the fixtures' [`Origin`]: pages, redirects, 403, expired
//!   certificates), blockpage hosts, and the censor's userspace boxes: a transparent HTTP proxy
//!   (relays, or answers a blockpage for chosen Hosts) and a TLS interception proxy (terminates
//!   chosen SNIs with the fixtures' forged state-CA chain, splices the others). Prints `ready`
//!   once everything listens.
//! - `guard -- CMD ARGS...`: runs CMD and kills it when this process's stdin closes, so a
//!   daemon (dnsmasq, the collector) dies with the test that started it, even on a panic or a
//!   kill of the test process.
//! - `get URL`: one cleartext HTTP GET, body on stdout (the host has no route into the lab).
//! - `dns SERVER NAME`: one DNS query, answers on stdout (readiness checks).
//!
//! `serve` also exits when its stdin closes. See `docs/lab.md`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::pki_types::ServerName;
use rustls::ServerConfig;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::LazyConfigAcceptor;
use witness_tests::client::{danger_accept_any_connector, dns_query, http_get};
use witness_tests::world::DEFAULT_BLOCKPAGE;
use witness_tests::{Behaviour, LabPki, Origin, OriginConfig, Page, Rule, SiteConfig, Transport};

/// Bound on reading a ClientHello or a request head from a client.
const STEP: Duration = Duration::from_secs(10);
/// Bound on one proxied connection.
const CONNECTION: Duration = Duration::from_secs(60);
/// Largest request head or ClientHello the proxies buffer.
const MAX_HEAD: usize = 64 * 1024;

/// Everything one `serve` process runs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServeConfig {
    /// Write this process's lab CA here (PEM): the CA that signs the origins' certificates.
    ca_out: Option<PathBuf>,
    /// Write certificates and keys signed by that CA here (PEM), for servers that are not
    /// `lab-origin` (the encrypted resolver).
    certs_out: Vec<CertOut>,
    /// Web servers.
    origins: Vec<OriginSpec>,
    /// Transparent HTTP proxies.
    http_proxies: Vec<HttpProxySpec>,
    /// TLS interception proxies.
    mitm_proxies: Vec<MitmProxySpec>,
    /// Relays that hold the server's first answer (throttling by handshake latency).
    delay_proxies: Vec<DelayProxySpec>,
}

/// A relay in front of one redirected address that holds the server's first bytes (the
/// ServerHello) for `delay_ms`, then relays freely: the handshake takes that much longer, the
/// transfer does not (Kazakhstan's 2022-23 throttling by SNI showed as multi-second
/// handshakes). With `rate_bps`, everything the server sends is paced to that many bytes per
/// second instead (each connection on its own): a slow line, or a throttled site on one (htb
/// on the lab's veth pairs shapes 64 KiB GSO packets too coarsely to be trusted).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayProxySpec {
    listen: SocketAddr,
    upstream: SocketAddr,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    rate_bps: Option<u64>,
}

/// Bytes one paced write carries: a twentieth of a second's worth.
const PACE_SLICES_PER_SEC: u64 = 20;

/// Copies `from` to `to` at no more than `rate` bytes per second on average: after each slice,
/// waits until the bytes sent so far are due.
async fn paced_copy<R, W>(from: &mut R, to: &mut W, rate: u64) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let rate = rate.max(1);
    let slice = usize::try_from(rate / PACE_SLICES_PER_SEC)
        .unwrap_or(1)
        .clamp(1, 64 * 1024);
    let mut buf = vec![0u8; slice];
    let start = tokio::time::Instant::now();
    let mut sent: u64 = 0;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(sent);
        }
        to.write_all(&buf[..n]).await?;
        sent += n as u64;
        let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
    }
}

/// A certificate for `names`, written as PEM files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertOut {
    names: Vec<String>,
    cert: PathBuf,
    key: PathBuf,
}

/// One address serving sites over HTTPS (443) and/or HTTP (80).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginSpec {
    ip: IpAddr,
    #[serde(default = "default_https_port")]
    https_port: u16,
    #[serde(default = "default_http_port")]
    http_port: u16,
    sites: Vec<SiteSpec>,
}

fn default_https_port() -> u16 {
    443
}

fn default_http_port() -> u16 {
    80
}

/// One site (virtual host) of an origin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteSpec {
    /// Host names; the first is the certificate's subject.
    names: Vec<String>,
    /// Page title (default: "Welcome to NAME").
    #[serde(default)]
    title: Option<String>,
    /// Pad the page with spaces to this many bytes (large pages, throughput).
    #[serde(default)]
    size: usize,
    /// Served over HTTPS, and with what behaviour (`None`: not served).
    #[serde(default)]
    https: Option<BehaviourSpec>,
    /// Served over HTTP, and with what behaviour.
    #[serde(default)]
    http: Option<BehaviourSpec>,
}

/// What the site itself does (censorship is the kernel's and the proxies' job, never the
/// origin's: every behaviour here applies to every client, the control included).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum BehaviourSpec {
    /// The normal page.
    Page,
    /// A redirect to `location`.
    Redirect { status: u16, location: String },
    /// A 403 from the site itself.
    Forbidden,
    /// The site's own certificate expired.
    ExpiredCert,
    /// The Kazakh/Russian blockpage (an ISP's blockpage host).
    Blockpage,
}

impl BehaviourSpec {
    fn rule(&self) -> Option<Rule> {
        let behaviour = match self {
            BehaviourSpec::Page => return None,
            BehaviourSpec::Redirect { status, location } => Behaviour::Redirect {
                status: *status,
                location: location.clone(),
            },
            BehaviourSpec::Forbidden => Behaviour::Forbidden,
            BehaviourSpec::ExpiredCert => Behaviour::ExpiredCert,
            BehaviourSpec::Blockpage => Behaviour::Blockpage {
                status: 200,
                body: DEFAULT_BLOCKPAGE.to_owned(),
            },
        };
        Some(Rule::everyone(behaviour))
    }
}

/// A transparent HTTP proxy, the censor's box: the kernel redirects a site's port 80 to it
/// (`redirect to :PORT`), or a lying resolver sends clients to it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpProxySpec {
    listen: SocketAddr,
    /// Where to relay: a fixed upstream (the redirected site) ...
    #[serde(default)]
    upstream: Option<SocketAddr>,
    /// ... or by Host (DNS hijacking sends every name to one address).
    #[serde(default)]
    hosts: BTreeMap<String, SocketAddr>,
    /// Hosts that get the blockpage instead of the site.
    #[serde(default)]
    block_hosts: Vec<String>,
    /// Hosts whose page is replaced by a censor's notice that no blockpage signature knows: a
    /// 200 of its own, only the page itself differs.
    #[serde(default)]
    notice_hosts: Vec<String>,
}

/// The censor's unsigned notice (see [`HttpProxySpec::notice_hosts`]).
const NOTICE_TITLE: &str = "Service notice";

/// A TLS interception proxy in front of one redirected address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MitmProxySpec {
    listen: SocketAddr,
    upstream: SocketAddr,
    /// SNIs intercepted with a forged certificate; any other SNI is spliced to the upstream.
    names: Vec<String>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") if args.len() == 2 => serve(&args[1]),
        Some("guard") if args.len() > 2 && args[1] == "--" => return guard(&args[2..]),
        Some("get") if args.len() == 2 => get(&args[1]),
        Some("dns") if args.len() == 3 => dns(&args[1], &args[2]),
        _ => Err(anyhow::anyhow!(
            "usage: lab-origin serve CONFIG.json | guard -- CMD [ARGS] | get URL | dns IP:PORT NAME"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-origin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Blocks until stdin reaches end of file (the test closed it, or died).
fn wait_for_stdin_eof() {
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
}

fn guard(command: &[String]) -> ExitCode {
    let mut child = match Command::new(&command[0]).args(&command[1..]).spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("lab-origin guard: cannot start {}: {e}", command[0]);
            return ExitCode::FAILURE;
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        wait_for_stdin_eof();
        let _ = tx.send(());
    });
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                eprintln!("lab-origin guard: {} exited: {status}", command[0]);
                return ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8);
            }
            Ok(None) => {}
            Err(_) => return ExitCode::FAILURE,
        }
        if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
            let _ = child.kill();
            let _ = child.wait();
            return ExitCode::SUCCESS;
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn get(url: &str) -> Result<()> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("{authority} is not IP:PORT"))?;
    let response = runtime()?.block_on(async {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await?;
            http_get(&mut stream, authority, path, 16 * 1024 * 1024).await
        };
        timeout(Duration::from_secs(20), exchange)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    })?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no response head")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let body = &response[split + 4..];
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    print!("{}", String::from_utf8_lossy(&body));
    if !(200..300).contains(&status) {
        bail!("HTTP {status}");
    }
    Ok(())
}

/// The body of a `Transfer-Encoding: chunked` response (the collector streams its exports).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line without CRLF")?;
        let line = String::from_utf8_lossy(&rest[..eol]);
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).context("truncated chunk")?;
        body.extend_from_slice(chunk);
        rest = rest
            .get(size + 2..)
            .context("chunk without trailing CRLF")?;
    }
}

fn dns(server: &str, name: &str) -> Result<()> {
    let server: SocketAddr = server.parse().context("server is not IP:PORT")?;
    let responses = runtime()?.block_on(dns_query(
        IpAddr::from([0, 0, 0, 0]),
        server,
        name,
        hickory_proto::rr::RecordType::A,
        1,
        Duration::from_secs(2),
    ))?;
    let Some(first) = responses.first() else {
        bail!("no answer from {server}");
    };
    let message = hickory_proto::op::Message::from_vec(first)?;
    println!("{:?}", message.metadata.response_code);
    for answer in &message.answers {
        println!("{}", answer.data);
    }
    Ok(())
}

fn serve(path: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let config: ServeConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {path}"))?;
    let rt = runtime()?;
    // The servers live as long as this binding; stdin's end of file ends the process.
    let _servers = rt.block_on(start(config))?;
    println!("ready");
    wait_for_stdin_eof();
    rt.shutdown_background();
    Ok(())
}

/// Everything started, kept alive by the caller.
struct Servers {
    _origins: Vec<Origin>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn start(config: ServeConfig) -> Result<Servers> {
    let pki = LabPki::new()?;
    if let Some(path) = &config.ca_out {
        pki.write_ca_pem(path)?;
    }
    for out in &config.certs_out {
        let names: Vec<&str> = out.names.iter().map(String::as_str).collect();
        let (cert, key) = pki.leaf_pem(&names)?;
        std::fs::write(&out.cert, cert).with_context(|| format!("writing {:?}", out.cert))?;
        std::fs::write(&out.key, key).with_context(|| format!("writing {:?}", out.key))?;
    }
    let mut origins = Vec::new();
    for spec in &config.origins {
        let site = |s: &SiteSpec, behaviour: &BehaviourSpec| {
            let title = s
                .title
                .clone()
                .unwrap_or_else(|| format!("Welcome to {}", s.names[0]));
            let mut page = Page::html(&title, &format!("This is {}.", s.names[0]));
            if page.body.len() < s.size {
                page.body.resize(s.size, b' ');
            }
            SiteConfig {
                names: s.names.clone(),
                page,
                rule: behaviour.rule(),
            }
        };
        let tls_sites: Vec<SiteConfig> = spec
            .sites
            .iter()
            .filter_map(|s| s.https.as_ref().map(|b| site(s, b)))
            .collect();
        let http_sites: Vec<SiteConfig> = spec
            .sites
            .iter()
            .filter_map(|s| s.http.as_ref().map(|b| site(s, b)))
            .collect();
        if !tls_sites.is_empty() {
            let transport = Transport::tls(&pki, &tls_sites)?;
            let addr = SocketAddr::new(spec.ip, spec.https_port);
            origins.push(
                Origin::start(OriginConfig::new(addr, transport, tls_sites))
                    .await
                    .with_context(|| format!("HTTPS origin on {addr}"))?,
            );
        }
        if !http_sites.is_empty() {
            let addr = SocketAddr::new(spec.ip, spec.http_port);
            origins.push(
                Origin::start(OriginConfig::new(addr, Transport::Cleartext, http_sites))
                    .await
                    .with_context(|| format!("HTTP origin on {addr}"))?,
            );
        }
    }
    let mut tasks = Vec::new();
    for spec in config.http_proxies {
        let listener = TcpListener::bind(spec.listen)
            .await
            .with_context(|| format!("HTTP proxy on {}", spec.listen))?;
        let spec = Arc::new(spec);
        tasks.push(tokio::spawn(accept_loop(listener, move |stream| {
            http_proxy(stream, spec.clone())
        })));
    }
    for spec in config.mitm_proxies {
        let listener = TcpListener::bind(spec.listen)
            .await
            .with_context(|| format!("MITM proxy on {}", spec.listen))?;
        let forged = pki.tls_configs(std::slice::from_ref(&spec.names))?.forged;
        let spec = Arc::new(spec);
        tasks.push(tokio::spawn(accept_loop(listener, move |stream| {
            mitm_proxy(stream, spec.clone(), forged.clone())
        })));
    }
    for spec in config.delay_proxies {
        let listener = TcpListener::bind(spec.listen)
            .await
            .with_context(|| format!("delay proxy on {}", spec.listen))?;
        let spec = Arc::new(spec);
        tasks.push(tokio::spawn(accept_loop(listener, move |stream| {
            delay_proxy(stream, spec.clone())
        })));
    }
    Ok(Servers {
        _origins: origins,
        _tasks: tasks,
    })
}

/// Accepts forever, one bounded task per connection.
async fn accept_loop<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let connection = handle(stream);
        tokio::spawn(async move {
            let _ = timeout(CONNECTION, connection).await;
        });
    }
}

/// Relays to the upstream, holding the server's first bytes for the configured delay.
async fn delay_proxy(client: TcpStream, spec: Arc<DelayProxySpec>) -> Result<()> {
    let server = timeout(STEP, TcpStream::connect(spec.upstream)).await??;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let delay = Duration::from_millis(spec.delay_ms);
    let upstream = tokio::io::copy(&mut client_read, &mut server_write);
    let downstream = async {
        if let Some(rate) = spec.rate_bps {
            return paced_copy(&mut server_read, &mut client_write, rate).await;
        }
        let mut first = [0u8; 16 * 1024];
        let n = server_read.read(&mut first).await?;
        tokio::time::sleep(delay).await;
        client_write.write_all(&first[..n]).await?;
        tokio::io::copy(&mut server_read, &mut client_write).await
    };
    let _ = tokio::try_join!(upstream, downstream);
    Ok(())
}

/// Reads a request head (through the blank line) and whatever came with it.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = timeout(STEP, stream.read(&mut chunk)).await??;
        if n == 0 {
            bail!("closed before a full request head");
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            bail!("request head too large");
        }
    }
}

/// The Host header's name, lower case, without the port.
fn host_of(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let value = text
        .split("\r\n")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.trim().to_ascii_lowercase())?;
    Some(match value.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_owned(),
        _ => value,
    })
}

async fn http_proxy(mut client: TcpStream, spec: Arc<HttpProxySpec>) -> Result<()> {
    let head = read_head(&mut client).await?;
    let host = host_of(&head).unwrap_or_default();
    if spec
        .block_hosts
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&host))
    {
        witness_tests::http::write_response(
            &mut client,
            200,
            &[],
            DEFAULT_BLOCKPAGE.as_bytes(),
            false,
        )
        .await?;
        let _ = client.shutdown().await;
        return Ok(());
    }
    if spec
        .notice_hosts
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&host))
    {
        let page = Page::html(
            NOTICE_TITLE,
            "This page is temporarily unavailable on this network.",
        );
        witness_tests::http::write_response(&mut client, 200, &[], &page.body, false).await?;
        let _ = client.shutdown().await;
        return Ok(());
    }
    let Some(upstream) = spec.upstream.or_else(|| spec.hosts.get(&host).copied()) else {
        let page = Page::with_status(502, "Bad Gateway", "Unknown host.");
        witness_tests::http::write_response(&mut client, 502, &[], &page.body, false).await?;
        return Ok(());
    };
    let mut server = timeout(STEP, TcpStream::connect(upstream)).await??;
    server.write_all(&head).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

async fn mitm_proxy(
    client: TcpStream,
    spec: Arc<MitmProxySpec>,
    forged: Arc<ServerConfig>,
) -> Result<()> {
    let acceptor =
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), Recorder::new(client));
    let start = timeout(STEP, acceptor).await??;
    let sni = start
        .client_hello()
        .server_name()
        .map(str::to_ascii_lowercase);
    let intercept = sni
        .as_deref()
        .is_some_and(|s| spec.names.iter().any(|n| n.eq_ignore_ascii_case(s)));
    let mut server = timeout(STEP, TcpStream::connect(spec.upstream)).await??;
    if !intercept {
        // Not on the list: replay the ClientHello and splice, the client talks to the site.
        let Recorder { inner, recorded } = start.io;
        let mut client = inner;
        server.write_all(&recorded).await?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        return Ok(());
    }
    let sni = sni.unwrap_or_default();
    let mut client_tls = timeout(STEP, start.into_stream(forged)).await??;
    let name = ServerName::try_from(sni)?;
    let mut server_tls =
        timeout(STEP, danger_accept_any_connector().connect(name, server)).await??;
    tokio::io::copy_bidirectional(&mut client_tls, &mut server_tls).await?;
    Ok(())
}

/// A stream that remembers the first bytes read from it (the ClientHello), so a proxy that
/// decides not to intercept can replay them to the real server.
struct Recorder {
    inner: TcpStream,
    recorded: Vec<u8>,
}

impl Recorder {
    fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            recorded: Vec::new(),
        }
    }
}

impl AsyncRead for Recorder {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if poll.is_ready() && this.recorded.len() < MAX_HEAD {
            this.recorded.extend_from_slice(&buf.filled()[before..]);
        }
        poll
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
