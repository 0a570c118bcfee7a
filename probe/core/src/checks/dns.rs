//! DNS: ask the network's resolver and the encrypted control resolver.
//!
//! The network resolver is queried with hand-built UDP messages rather than a stub resolver
//! library, because a stub stops at the first response: after the first answer we keep
//! listening for `dns_linger`, so that an injected answer racing the real one is seen (two
//! different responses to one query cannot both be honest). Semantic outcomes (NXDOMAIN, no
//! answer, SERVFAIL) are kept apart from transport failures (timeout, garbage).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{ControlResolverSpec, MeasureConfig, ResolverSpec};
use crate::error::SetupError;
use crate::failure::Failure;
use crate::model::{DnsAnswer, DnsObservation, LateDnsResponse, QueryType, ResolverRole};

/// Largest DNS message we accept (UDP with EDNS, or one TCP message).
const MAX_DNS_MESSAGE: usize = 4096;
/// Most late responses recorded per query: an attacker flooding us must not bloat the record.
const MAX_LATE_RESPONSES: usize = 4;
/// Most addresses recorded per answer.
const MAX_ANSWERS: usize = 32;

/// The network resolver's address from `spec`, reading `/etc/resolv.conf` for `System`.
pub fn network_resolver_addr(spec: &ResolverSpec) -> Option<SocketAddr> {
    match spec {
        ResolverSpec::Udp(addr) => Some(*addr),
        ResolverSpec::System => {
            let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
            system_nameserver(&text)
        }
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

/// Query the network resolver for `name` (A, and AAAA when IPv6 is on).
pub async fn query_network(name: &str, cfg: &MeasureConfig, t0: Instant) -> Vec<DnsObservation> {
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
                obs
            })
            .collect();
    };
    let futs = types
        .iter()
        .map(|qt| query_udp(server, name, *qt, ResolverRole::Network, cfg, t0));
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
    let mut obs = observation(role, "udp", server.to_string(), name, qtype, t0);
    let start = Instant::now();
    let (id, wire) = match build_query(name, qtype) {
        Ok(q) => q,
        Err(f) => {
            obs.failure = Some(f);
            return obs;
        }
    };
    let sock = match bind_udp(server, cfg.source_address).await {
        Ok(s) => s,
        Err(e) => {
            obs.failure = Some(Failure::from_io(&e));
            return obs;
        }
    };
    if let Err(e) = sock.send_to(&wire, server).await {
        obs.failure = Some(Failure::from_io(&e));
        obs.duration_ms = ms_since(start);
        return obs;
    }

    let mut buf = vec![0u8; MAX_DNS_MESSAGE];
    let deadline = start + cfg.timeout;
    let mut first: Option<(Instant, Parsed)> = None;
    let mut saw_garbage = false;
    loop {
        let until = match &first {
            Some((t, _)) => *t + cfg.dns_linger,
            None => deadline,
        };
        let now = Instant::now();
        if now >= until {
            break;
        }
        let recv = tokio::time::timeout(until - now, sock.recv_from(&mut buf)).await;
        let (n, from) = match recv {
            Err(_) => break,
            Ok(Err(e)) => {
                // ICMP port unreachable surfaces as ECONNREFUSED on a connected/unconnected socket.
                if first.is_none() {
                    obs.failure = Some(Failure::from_io(&e));
                    obs.duration_ms = ms_since(start);
                    return obs;
                }
                break;
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
        match &first {
            None => {
                if parsed.truncated {
                    // Retry over TCP, bounded by the remaining time.
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    obs.transport = "udp+tcp".into();
                    match tokio::time::timeout(
                        remaining,
                        query_tcp(server, &wire, id, name, qtype, cfg.source_address),
                    )
                    .await
                    {
                        Ok(Ok(p)) => first = Some((Instant::now(), p)),
                        Ok(Err(f)) => {
                            obs.failure = Some(f);
                            obs.duration_ms = ms_since(start);
                            return obs;
                        }
                        Err(_) => break,
                    }
                } else {
                    first = Some((Instant::now(), parsed));
                }
                obs.duration_ms = ms_since(start);
            }
            Some((t, p)) => {
                if obs.late_responses.len() < MAX_LATE_RESPONSES
                    && (parsed.rcode != p.rcode || parsed.addrs() != p.addrs())
                {
                    obs.late_responses.push(LateDnsResponse {
                        after_ms: ms_since(*t),
                        rcode: rcode_name(parsed.rcode),
                        answers: parsed.addrs(),
                    });
                }
            }
        }
    }

    match first {
        None => {
            obs.duration_ms = ms_since(start);
            obs.failure = Some(if saw_garbage {
                Failure::DnsBadResponse
            } else {
                Failure::DnsTimeout
            });
        }
        Some((_, p)) => fill_from_parsed(&mut obs, p, cfg),
    }
    obs
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
struct Parsed {
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

fn build_query(name: &str, qtype: QueryType) -> Result<(u16, Vec<u8>), Failure> {
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
fn parse_response(buf: &[u8], id: u16, name: &str, qtype: QueryType) -> Option<Parsed> {
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

/// The encrypted control resolver, built once per run.
#[derive(Clone)]
pub struct ControlResolver {
    resolver: Arc<TokioResolver>,
    transport: &'static str,
    label: String,
}

impl std::fmt::Debug for ControlResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlResolver({} {})", self.transport, self.label)
    }
}

impl ControlResolver {
    /// Build the resolver for `spec`, trusting the Mozilla roots plus the extra CAs.
    pub fn new(spec: &ControlResolverSpec, cfg: &MeasureConfig) -> Result<Self, SetupError> {
        let (ns, transport, label) = match spec {
            ControlResolverSpec::Doh { addr, tls_name } => {
                let mut ns = NameServerConfig::https(addr.ip(), Arc::from(tls_name.as_str()), None);
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                (ns, "doh", format!("{tls_name}@{addr}"))
            }
            ControlResolverSpec::Dot { addr, tls_name } => {
                let mut ns = NameServerConfig::tls(addr.ip(), Arc::from(tls_name.as_str()));
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                (ns, "dot", format!("{tls_name}@{addr}"))
            }
            ControlResolverSpec::Udp(addr) => {
                let mut ns = NameServerConfig::udp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                (ns, "udp", addr.to_string())
            }
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
            resolver: label.clone(),
            message: e.to_string(),
        })?;
        Ok(ControlResolver {
            resolver: Arc::new(resolver),
            transport,
            label,
        })
    }

    /// Resolve `name` (A records) through the control resolver.
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
            Ok(Err(e)) => {
                if e.is_nx_domain() {
                    obs.rcode = Some("NXDOMAIN".into());
                    obs.failure = Some(Failure::DnsNxdomain);
                } else if e.is_no_records_found() {
                    obs.rcode = Some("NOERROR".into());
                    obs.failure = Some(Failure::DnsNoAnswer);
                } else {
                    let text = e.to_string();
                    obs.failure = Some(if text.contains("timed out") || text.contains("timeout") {
                        Failure::DnsTimeout
                    } else {
                        Failure::unknown(text)
                    });
                }
            }
        }
        obs
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

/// Milliseconds since `t`, as a float for sub-millisecond precision.
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
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
