//! DNS: ask the network's resolver and the encrypted control resolver.
//!
//! The network resolver is queried with hand-built UDP messages rather than a stub resolver
//! library, because a stub stops at the first response: after the first answer we keep
//! listening for `dns_linger`, so that an injected answer racing the real one is seen (two
//! different responses to one query cannot both be honest). Semantic outcomes (NXDOMAIN, no
//! answer, SERVFAIL) are kept apart from transport failures (timeout, garbage).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::TokioResolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

// Re-exported for the engine, which imports it from here.
pub use super::ms_since;
use super::{ControlResolverSpec, MeasureConfig, ResolverSpec};
use crate::error::SetupError;
use crate::failure::Failure;
use crate::model::{
    DnsAnswer, DnsObservation, LateDnsResponse, QueryType, ResolverCheck, ResolverRole,
};

/// Largest DNS message we accept (UDP with EDNS, or one TCP message).
const MAX_DNS_MESSAGE: usize = 4096;
/// Most late responses recorded per query: an attacker flooding us must not bloat the record.
const MAX_LATE_RESPONSES: usize = 4;
/// Most addresses recorded per answer.
const MAX_ANSWERS: usize = 32;

/// The network resolver's address from `spec`; for `System`, looked up again on every call
/// (a laptop changes networks) by [`crate::sysresolver`]: `/etc/resolv.conf`, Termux's, Android's.
pub fn network_resolver_addr(spec: &ResolverSpec) -> Option<SocketAddr> {
    match spec {
        ResolverSpec::Udp(addr) => Some(*addr),
        ResolverSpec::System => crate::sysresolver::system_resolver().ok().map(|r| r.addr),
    }
}

/// The first `nameserver` line of a resolv.conf text.
pub fn system_nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "nameserver" {
            return None;
        }
        let ip: IpAddr = words.next()?.split('%').next()?.parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

/// Query the network resolver for `name` (A, and AAAA when IPv6 is on), lingering after the
/// first responses for injected ones.
pub async fn query_network(name: &str, cfg: &MeasureConfig, t0: Instant) -> Vec<DnsObservation> {
    let first = query_network_first(name, cfg, t0).await;
    futures::future::join_all(first.into_iter().map(FirstResponse::linger)).await
}

/// Query the network resolver for `name` up to the first response of each query type: the
/// caller can start connecting to those addresses while [`FirstResponse::linger`] keeps
/// listening for an injected second answer.
pub async fn query_network_first(
    name: &str,
    cfg: &MeasureConfig,
    t0: Instant,
) -> Vec<FirstResponse> {
    let types: &[QueryType] = if cfg.ipv6 {
        &[QueryType::A, QueryType::AAAA]
    } else {
        &[QueryType::A]
    };
    let Some(server) = network_resolver_addr(&cfg.resolver) else {
        return types
            .iter()
            .map(|qt| {
                let mut obs =
                    observation(ResolverRole::Network, "udp", "none".into(), name, *qt, t0);
                obs.failure = Some(Failure::NetworkOffline);
                FirstResponse::done(obs)
            })
            .collect();
    };
    let futs = types
        .iter()
        .map(|qt| query_udp_first(server, name, *qt, ResolverRole::Network, cfg, t0));
    futures::future::join_all(futs).await
}

/// One UDP query with lingering for injected responses, and TCP fallback on truncation.
pub async fn query_udp(
    server: SocketAddr,
    name: &str,
    qtype: QueryType,
    role: ResolverRole,
    cfg: &MeasureConfig,
    t0: Instant,
) -> DnsObservation {
    query_udp_first(server, name, qtype, role, cfg, t0)
        .await
        .linger()
        .await
}

/// A query whose first response (or failure) is known; it may still be listening for late,
/// differing responses until the linger ends.
#[derive(Debug)]
pub struct FirstResponse {
    obs: DnsObservation,
    linger: Option<Linger>,
}

/// What lingering needs: the socket, the question, the first answer to compare with.
#[derive(Debug)]
struct Linger {
    sock: UdpSocket,
    server: SocketAddr,
    id: u16,
    qtype: QueryType,
    first_at: Instant,
    first_rcode: ResponseCode,
    first_addrs: Vec<IpAddr>,
    until: Instant,
}

impl FirstResponse {
    fn done(obs: DnsObservation) -> Self {
        FirstResponse { obs, linger: None }
    }

    /// The observation as of the first response: answers, rcode, failure.
    pub fn observation(&self) -> &DnsObservation {
        &self.obs
    }

    /// Keep listening until the linger ends; the observation with the late responses that
    /// differ from the first. Returns at once when there is nothing to wait for.
    pub async fn linger(self) -> DnsObservation {
        let FirstResponse { mut obs, linger } = self;
        let Some(l) = linger else {
            return obs;
        };
        let mut buf = vec![0u8; MAX_DNS_MESSAGE];
        loop {
            let now = Instant::now();
            if now >= l.until {
                break;
            }
            let (n, from) =
                match tokio::time::timeout(l.until - now, l.sock.recv_from(&mut buf)).await {
                    Ok(Ok(x)) => x,
                    // The linger ended, or the socket failed after the first answer: done.
                    Err(_) | Ok(Err(_)) => break,
                };
            if from.ip() != l.server.ip() {
                continue;
            }
            let Some(parsed) = parse_response(&buf[..n], l.id, &obs.query, l.qtype) else {
                continue;
            };
            if obs.late_responses.len() < MAX_LATE_RESPONSES
                && (parsed.rcode != l.first_rcode || parsed.addrs() != l.first_addrs)
            {
                obs.late_responses.push(LateDnsResponse {
                    after_ms: ms_since(l.first_at),
                    rcode: rcode_name(parsed.rcode),
                    answers: parsed.addrs(),
                });
            }
        }
        obs
    }
}

/// Send one UDP query and wait for its first response (TCP on truncation), bounded by the
/// step timeout.
async fn query_udp_first(
    server: SocketAddr,
    name: &str,
    qtype: QueryType,
    role: ResolverRole,
    cfg: &MeasureConfig,
    t0: Instant,
) -> FirstResponse {
    let mut obs = observation(role, "udp", server.to_string(), name, qtype, t0);
    let start = Instant::now();
    let (id, wire) = match build_query(name, qtype) {
        Ok(q) => q,
        Err(f) => {
            obs.failure = Some(f);
            return FirstResponse::done(obs);
        }
    };
    let sock = match bind_udp(server, cfg.source_for(server.ip())).await {
        Ok(s) => s,
        Err(e) => {
            obs.failure = Some(Failure::from_io(&e));
            return FirstResponse::done(obs);
        }
    };
    if let Err(e) = sock.send_to(&wire, server).await {
        obs.failure = Some(Failure::from_io(&e));
        obs.duration_ms = ms_since(start);
        return FirstResponse::done(obs);
    }

    let mut buf = vec![0u8; MAX_DNS_MESSAGE];
    let deadline = start + cfg.timeout;
    let mut saw_garbage = false;
    let first = loop {
        let now = Instant::now();
        if now >= deadline {
            break None;
        }
        let recv = tokio::time::timeout(deadline - now, sock.recv_from(&mut buf)).await;
        let (n, from) = match recv {
            Err(_) => break None,
            Ok(Err(e)) => {
                // ICMP port unreachable surfaces as ECONNREFUSED on a connected/unconnected socket.
                obs.failure = Some(Failure::from_io(&e));
                obs.duration_ms = ms_since(start);
                return FirstResponse::done(obs);
            }
            Ok(Ok(x)) => x,
        };
        if from.ip() != server.ip() {
            continue;
        }
        let Some(parsed) = parse_response(&buf[..n], id, name, qtype) else {
            saw_garbage = true;
            continue;
        };
        if !parsed.truncated {
            break Some(parsed);
        }
        // Retry over TCP, bounded by the remaining time.
        let remaining = deadline.saturating_duration_since(Instant::now());
        obs.transport = "udp+tcp".into();
        match tokio::time::timeout(
            remaining,
            query_tcp(server, &wire, id, name, qtype, cfg.source_for(server.ip())),
        )
        .await
        {
            Ok(Ok(p)) => break Some(p),
            Ok(Err(f)) => {
                obs.failure = Some(f);
                obs.duration_ms = ms_since(start);
                return FirstResponse::done(obs);
            }
            Err(_) => break None,
        }
    };
    obs.duration_ms = ms_since(start);
    let Some(parsed) = first else {
        obs.failure = Some(if saw_garbage {
            Failure::DnsBadResponse
        } else {
            Failure::DnsTimeout
        });
        return FirstResponse::done(obs);
    };
    let first_at = Instant::now();
    let linger = Linger {
        sock,
        server,
        id,
        qtype,
        first_at,
        first_rcode: parsed.rcode,
        first_addrs: parsed.addrs(),
        until: first_at + cfg.dns_linger,
    };
    fill_from_parsed(&mut obs, parsed, cfg);
    FirstResponse {
        obs,
        linger: Some(linger),
    }
}

fn fill_from_parsed(obs: &mut DnsObservation, p: Parsed, cfg: &MeasureConfig) {
    obs.rcode = Some(rcode_name(p.rcode));
    obs.cnames = p.cnames;
    obs.answers = p
        .answers
        .into_iter()
        .take(MAX_ANSWERS)
        .map(|(addr, ttl)| DnsAnswer {
            addr,
            ttl,
            bogon: cfg.bogons.is_bogon(addr),
        })
        .collect();
    obs.failure = failure_for(p.rcode, obs.answers.is_empty());
}

fn failure_for(rcode: ResponseCode, no_answers: bool) -> Option<Failure> {
    match rcode {
        ResponseCode::NoError if no_answers => Some(Failure::DnsNoAnswer),
        ResponseCode::NoError => None,
        ResponseCode::NXDomain => Some(Failure::DnsNxdomain),
        ResponseCode::ServFail => Some(Failure::DnsServfail),
        ResponseCode::Refused => Some(Failure::DnsRefused),
        other => Some(Failure::unknown(format!("dns rcode {other}"))),
    }
}

fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

/// A decoded response, reduced to what we record.
#[derive(Debug)]
pub(crate) struct Parsed {
    rcode: ResponseCode,
    truncated: bool,
    answers: Vec<(IpAddr, u32)>,
    cnames: Vec<String>,
}

impl Parsed {
    fn addrs(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.answers.iter().map(|(a, _)| *a).collect();
        v.sort();
        v
    }
}

pub(crate) fn build_query(name: &str, qtype: QueryType) -> Result<(u16, Vec<u8>), Failure> {
    let mut fqdn =
        Name::from_ascii(name).map_err(|e| Failure::unknown(format!("bad name: {e}")))?;
    fqdn.set_fqdn(true);
    let rtype = match qtype {
        QueryType::A => RecordType::A,
        QueryType::AAAA => RecordType::AAAA,
    };
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(fqdn, rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(MAX_DNS_MESSAGE as u16);
    msg.set_edns(edns);
    let wire = msg
        .to_vec()
        .map_err(|e| Failure::unknown(format!("encode query: {e}")))?;
    Ok((msg.metadata.id, wire))
}

/// Decode `buf` as a response to an A query for `example.com` with the id it carries, as the
/// probe decodes every response: the entry point of the `dns_response` fuzz target. Returns
/// the response code name and the number of addresses.
#[doc(hidden)]
pub fn fuzz_parse_response(buf: &[u8]) -> Option<(String, usize)> {
    let id = u16::from_be_bytes([*buf.first()?, *buf.get(1)?]);
    let p = parse_response(buf, id, "example.com", QueryType::A)?;
    let _ = (p.truncated, &p.cnames);
    Some((rcode_name(p.rcode), p.addrs().len()))
}

/// Decode a response; `None` for garbage or a response to another question (which an
/// attacker or a confused server could send).
pub(crate) fn parse_response(buf: &[u8], id: u16, name: &str, qtype: QueryType) -> Option<Parsed> {
    let msg = Message::from_vec(buf).ok()?;
    if msg.metadata.id != id || msg.metadata.message_type != MessageType::Response {
        return None;
    }
    if let Some(q) = msg.queries.first() {
        let qn = q.name().to_ascii();
        if !qn
            .trim_end_matches('.')
            .eq_ignore_ascii_case(name.trim_end_matches('.'))
        {
            return None;
        }
    }
    let mut answers = Vec::new();
    let mut cnames = Vec::new();
    for rec in &msg.answers {
        match (&rec.data, qtype) {
            (RData::A(a), QueryType::A) => answers.push((IpAddr::V4(a.0), rec.ttl)),
            (RData::AAAA(a), QueryType::AAAA) => answers.push((IpAddr::V6(a.0), rec.ttl)),
            (RData::CNAME(c), _) => cnames.push(c.0.to_ascii()),
            _ => {}
        }
    }
    Some(Parsed {
        rcode: msg.metadata.response_code,
        truncated: msg.metadata.truncation,
        answers,
        cnames,
    })
}

async fn bind_udp(server: SocketAddr, source: Option<IpAddr>) -> std::io::Result<UdpSocket> {
    let local = match (source, server) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, SocketAddr::V4(_)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        (None, SocketAddr::V6(_)) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    UdpSocket::bind(local).await
}

async fn query_tcp(
    server: SocketAddr,
    wire: &[u8],
    id: u16,
    name: &str,
    qtype: QueryType,
    source: Option<IpAddr>,
) -> Result<Parsed, Failure> {
    let mut stream: TcpStream = super::tcp::connect_socket(server, source)
        .await
        .map_err(|e| Failure::from_io(&e))?;
    let len = u16::try_from(wire.len()).map_err(|_| Failure::unknown("query too long"))?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(wire);
    stream
        .write_all(&out)
        .await
        .map_err(|e| Failure::from_io(&e))?;
    let mut lenbuf = [0u8; 2];
    stream
        .read_exact(&mut lenbuf)
        .await
        .map_err(|e| Failure::from_io(&e))?;
    let n = usize::from(u16::from_be_bytes(lenbuf)).min(MAX_DNS_MESSAGE * 16);
    let mut buf = vec![0u8; n];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| Failure::from_io(&e))?;
    parse_response(&buf, id, name, qtype).ok_or(Failure::DnsBadResponse)
}

/// One encrypted control resolver, built once per run.
#[derive(Clone)]
pub struct ControlResolver {
    resolver: Arc<TokioResolver>,
    transport: &'static str,
    label: String,
    /// The name asked when checking that the resolver works at all.
    check_name: String,
    /// Address, TLS name and client config of a DoH/DoT resolver, to find out by our own
    /// connect and handshake how it fails when the resolver library only says "no
    /// connections available".
    endpoint: Option<(SocketAddr, String, Arc<rustls::ClientConfig>)>,
}

impl std::fmt::Debug for ControlResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlResolver({} {})", self.transport, self.label)
    }
}

impl ControlResolver {
    /// Build the resolver for `spec`, trusting the Mozilla roots plus the extra CAs.
    pub fn new(spec: &ControlResolverSpec, cfg: &MeasureConfig) -> Result<Self, SetupError> {
        let (ns, check_name) = match spec {
            ControlResolverSpec::Doh { addr, tls_name } => {
                let mut ns = NameServerConfig::https(addr.ip(), Arc::from(tls_name.as_str()), None);
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                (ns, tls_name.clone())
            }
            ControlResolverSpec::Dot { addr, tls_name } => {
                let mut ns = NameServerConfig::tls(addr.ip(), Arc::from(tls_name.as_str()));
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                (ns, tls_name.clone())
            }
            ControlResolverSpec::Udp(addr) => {
                let mut ns = NameServerConfig::udp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                (ns, "example.com".to_string())
            }
        };
        let transport = spec.transport();
        let endpoint = match spec {
            ControlResolverSpec::Doh { addr, tls_name }
            | ControlResolverSpec::Dot { addr, tls_name } => Some((
                *addr,
                tls_name.clone(),
                Arc::new(super::tls::verifying_client_config(cfg)?),
            )),
            ControlResolverSpec::Udp(_) => None,
        };
        let config = ResolverConfig::from_name_servers(vec![ns]);
        let mut opts = ResolverOpts::default();
        opts.timeout = cfg.timeout;
        opts.attempts = 1;
        opts.cache_size = 0;
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
                .with_options(opts);
        if transport != "udp" {
            builder = builder.with_tls_config(super::tls::verifying_client_config(cfg)?);
        }
        let resolver = builder.build().map_err(|e| SetupError::ControlResolver {
            resolver: spec.label(),
            message: e.to_string(),
        })?;
        Ok(ControlResolver {
            resolver: Arc::new(resolver),
            transport,
            label: spec.label(),
            check_name,
            endpoint,
        })
    }

    /// `doh`, `dot` or `udp`.
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// `NAME@IP:PORT`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Resolve `name` (A records) through this resolver.
    pub async fn query(&self, name: &str, cfg: &MeasureConfig, t0: Instant) -> DnsObservation {
        let mut obs = observation(
            ResolverRole::Control,
            self.transport,
            self.label.clone(),
            name,
            QueryType::A,
            t0,
        );
        let start = Instant::now();
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let res = tokio::time::timeout(
            cfg.timeout + Duration::from_secs(1),
            self.resolver.lookup(fqdn.as_str(), RecordType::A),
        )
        .await;
        obs.duration_ms = ms_since(start);
        match res {
            Err(_) => obs.failure = Some(Failure::DnsTimeout),
            Ok(Ok(lookup)) => {
                obs.rcode = Some("NOERROR".into());
                for rec in lookup.answers() {
                    match &rec.data {
                        RData::A(a) if obs.answers.len() < MAX_ANSWERS => {
                            let addr = IpAddr::V4(a.0);
                            obs.answers.push(DnsAnswer {
                                addr,
                                ttl: rec.ttl,
                                bogon: cfg.bogons.is_bogon(addr),
                            })
                        }
                        RData::CNAME(c) => obs.cnames.push(c.0.to_ascii()),
                        _ => {}
                    }
                }
                if obs.answers.is_empty() {
                    obs.failure = Some(Failure::DnsNoAnswer);
                }
            }
            Ok(Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords {
                response_code, ..
            })))) => {
                // An answer without addresses: NXDOMAIN, NOERROR with no A record, SERVFAIL.
                obs.rcode = Some(rcode_name(response_code));
                obs.failure = failure_for(response_code, true);
            }
            Ok(Err(e)) => {
                let failure = resolver_failure(&e);
                obs.failure = Some(match failure {
                    Failure::Unknown(_) => self.diagnose(cfg).await.unwrap_or(failure),
                    known => known,
                });
            }
        }
        obs
    }

    /// Connect and handshake with the resolver ourselves, to name a failure that the resolver
    /// library reports without its cause: a reset (SNI filtering), a timeout (a dropped port),
    /// a refused connection, a forged certificate. `None` when both work (the cause is
    /// elsewhere) or for a plain UDP resolver.
    async fn diagnose(&self, cfg: &MeasureConfig) -> Option<Failure> {
        let (addr, name, tls) = self.endpoint.as_ref()?;
        let stream = match tokio::time::timeout(
            cfg.timeout,
            super::tcp::connect_socket(*addr, cfg.source_for(addr.ip())),
        )
        .await
        {
            Err(_) => return Some(Failure::GenericTimeout),
            Ok(Err(e)) => return Some(Failure::from_io(&e)),
            Ok(Ok(s)) => s,
        };
        let server_name = rustls_pki_types::ServerName::try_from(name.clone()).ok()?;
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        match tokio::time::timeout(cfg.timeout, connector.connect(server_name, stream)).await {
            Err(_) => Some(Failure::GenericTimeout),
            Ok(Err(e)) => Some(Failure::from_io(&e)),
            Ok(Ok(_)) => None,
        }
    }

    /// Does this resolver answer at all from here? Any DNS answer counts (NXDOMAIN too): the
    /// transport works. The failure says how it could not be reached.
    pub async fn check(&self, cfg: &MeasureConfig) -> ResolverCheck {
        let obs = self.query(&self.check_name, cfg, Instant::now()).await;
        ResolverCheck {
            transport: self.transport.to_string(),
            resolver: self.label.clone(),
            duration_ms: obs.duration_ms,
            failure: match obs.rcode {
                Some(_) => None,
                None => Some(obs.failure.unwrap_or(Failure::DnsNoAnswer)),
            },
        }
    }
}

/// Classify a transport failure of an encrypted resolver in the closed taxonomy: the censor's
/// techniques (reset on the SNI, a dropped port, a forged certificate) must come out by name.
fn resolver_failure(e: &NetError) -> Failure {
    match e {
        NetError::Io(io) => Failure::from_io(io),
        NetError::Timeout => Failure::DnsTimeout,
        other => {
            let text = other.to_string();
            let lower = text.to_ascii_lowercase();
            if lower.contains("timed out") || lower.contains("timeout") {
                Failure::DnsTimeout
            } else if lower.contains("reset") {
                Failure::ConnectionReset
            } else if lower.contains("refused") {
                Failure::ConnectionRefused
            } else if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
                Failure::SslUnknownAuthority
            } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
                Failure::SslInvalidHostname
            } else if lower.contains("eof") || lower.contains("end of file") {
                Failure::Eof
            } else {
                Failure::unknown(text)
            }
        }
    }
}

/// The encrypted control resolvers as a fallback chain (DoH, then DoT): the run's check finds
/// the first that works, targets use it, and a resolver that stops working mid-run hands over
/// to the next. When none works, the control service's own DNS is the only control left.
#[derive(Clone, Debug)]
pub struct ControlResolvers {
    chain: Vec<ControlResolver>,
    /// Index of the first resolver believed to work (`chain.len()`: none).
    active: Arc<AtomicUsize>,
}

impl ControlResolvers {
    /// Build every resolver of the chain.
    pub fn new(specs: &[ControlResolverSpec], cfg: &MeasureConfig) -> Result<Self, SetupError> {
        let chain = specs
            .iter()
            .map(|s| ControlResolver::new(s, cfg))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ControlResolvers {
            chain,
            active: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// No encrypted resolver configured.
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }

    /// Check every resolver of the chain at once (so a blocked one costs one timeout, not one
    /// per resolver), and use the first that works from now on.
    pub async fn check(&self, cfg: &MeasureConfig) -> Vec<ResolverCheck> {
        let checks = futures::future::join_all(self.chain.iter().map(|r| r.check(cfg))).await;
        let first_ok = checks
            .iter()
            .position(|c| c.failure.is_none())
            .unwrap_or(self.chain.len());
        self.active.store(first_ok, Ordering::Relaxed);
        checks
    }

    /// Resolve `name` through the first working resolver; on a transport failure (no DNS
    /// answer at all), record it and try the next one. Every attempt is recorded.
    pub async fn query(&self, name: &str, cfg: &MeasureConfig, t0: Instant) -> Vec<DnsObservation> {
        let mut out = Vec::new();
        let mut i = self.active.load(Ordering::Relaxed);
        while let Some(r) = self.chain.get(i) {
            let obs = r.query(name, cfg, t0).await;
            let answered = obs.rcode.is_some();
            out.push(obs);
            if answered {
                break;
            }
            i += 1;
            // Later targets start with the next resolver.
            self.active.fetch_max(i, Ordering::Relaxed);
        }
        out
    }
}

/// A query observation before anything happened.
fn observation(
    role: ResolverRole,
    transport: &str,
    resolver: String,
    name: &str,
    query_type: QueryType,
    t0: Instant,
) -> DnsObservation {
    DnsObservation {
        role,
        transport: transport.into(),
        resolver,
        query: name.to_string(),
        query_type,
        t_ms: ms_since(t0),
        duration_ms: 0.0,
        failure: None,
        rcode: None,
        answers: vec![],
        cnames: vec![],
        late_responses: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_first_nameserver() {
        let text = "# comment\nsearch lan\nnameserver 192.168.1.1\nnameserver 8.8.8.8\n";
        assert_eq!(
            system_nameserver(text),
            Some("192.168.1.1:53".parse().unwrap())
        );
        assert_eq!(
            system_nameserver("nameserver fe80::1%eth0\n").map(|s| s.ip()),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(system_nameserver("options ndots:1\n"), None);
    }

    #[test]
    fn garbage_and_foreign_ids_are_not_responses() {
        assert!(parse_response(b"\x00\x01garbage", 1, "a.test", QueryType::A).is_none());
        let (id, wire) = build_query("a.test", QueryType::A).unwrap();
        // Our own query is not a response.
        assert!(parse_response(&wire, id, "a.test", QueryType::A).is_none());
    }
}
