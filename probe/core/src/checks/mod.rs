//! One module per measurement step. Each records observations; none returns a network failure
//! as an `Err`: failures are data.

pub mod ab;
pub mod dns;
pub mod http;
pub mod path;
pub mod tcp;
pub mod tls;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rustls_pki_types::CertificateDer;

use crate::bogon::BogonFilter;

/// Where the network resolver is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolverSpec {
    /// The first nameserver of the system configuration: `/etc/resolv.conf`, else Termux's
    /// (see [`crate::sysresolver`]).
    System,
    /// A plain DNS server over UDP (with TCP fallback on truncation).
    Udp(std::net::SocketAddr),
}

/// Where the encrypted control resolver is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlResolverSpec {
    /// DNS over HTTPS: server address, TLS name, and path (e.g. `/dns-query`).
    Doh {
        /// Server address.
        addr: std::net::SocketAddr,
        /// Name the certificate must be valid for.
        tls_name: String,
    },
    /// DNS over TLS.
    Dot {
        /// Server address.
        addr: std::net::SocketAddr,
        /// Name the certificate must be valid for.
        tls_name: String,
    },
    /// Plain UDP, for labs only: a censor on the path can forge it.
    Udp(std::net::SocketAddr),
}

/// Redirects followed by default: as many as Chromium and Firefox follow.
pub const MAX_REDIRECTS: u32 = 20;

/// Default total deadline per target: room for a step timeout on each of DNS, TCP, the TLS
/// handshake, the decoy handshake after it and HTTP at the default 10 s would be 50 s; a target
/// cut by a censor is decided by its first failing step well within 30 s, and a legitimate
/// redirect chain takes a few seconds.
pub const DEFAULT_TARGET_DEADLINE: Duration = Duration::from_secs(30);

/// How long past the target's deadline the probe still waits for the control's answer (the
/// control measures the site too, from further away).
pub const CONTROL_GRACE: Duration = Duration::from_secs(5);

impl ControlResolverSpec {
    /// `doh`, `dot` or `udp`.
    pub fn transport(&self) -> &'static str {
        match self {
            ControlResolverSpec::Doh { .. } => "doh",
            ControlResolverSpec::Dot { .. } => "dot",
            ControlResolverSpec::Udp(_) => "udp",
        }
    }

    /// `NAME@IP:PORT` (or `IP:PORT` for UDP): how records name the resolver.
    pub fn label(&self) -> String {
        match self {
            ControlResolverSpec::Doh { addr, tls_name }
            | ControlResolverSpec::Dot { addr, tls_name } => format!("{tls_name}@{addr}"),
            ControlResolverSpec::Udp(addr) => addr.to_string(),
        }
    }
}

/// Everything the measurement steps need to know; built from the layered configuration.
#[derive(Clone, Debug)]
pub struct MeasureConfig {
    /// The network's resolver.
    pub resolver: ResolverSpec,
    /// The encrypted control resolvers, a fallback chain in order (DoH, then DoT): the first
    /// that works is used; none means no encrypted resolver.
    pub control_resolvers: Vec<ControlResolverSpec>,
    /// Timeout of each step (DNS query, connect, handshake, HTTP exchange).
    pub timeout: Duration,
    /// How long to keep listening for a second, injected DNS response after the first.
    pub dns_linger: Duration,
    /// Most body bytes read per response.
    pub body_cap: usize,
    /// Most body bytes read from a redirect (3xx) response; 0 reads none. The probe reads them
    /// (a censor's redirect may carry its notice); the control reads none, so a hostile site's
    /// redirect chain cannot make it download (issue #20, item 11).
    pub redirect_body_cap: usize,
    /// Most response header bytes accepted.
    pub max_header_bytes: usize,
    /// Most redirects followed (a browser follows 20).
    pub max_redirects: u32,
    /// Total time one target may take, DNS to the last redirect hop: a hostile server that
    /// answers each hop just under the step timeout cannot keep a target busy longer. The
    /// control's answer is awaited at most [`CONTROL_GRACE`] beyond it.
    pub target_deadline: Duration,
    /// Extra trusted CA certificates (DER), on top of the Mozilla roots.
    pub extra_cas: Vec<CertificateDer<'static>>,
    /// Bogon decisions, with lab ranges declared public.
    pub bogons: BogonFilter,
    /// Local address to bind outgoing sockets to, if any.
    pub source_address: Option<IpAddr>,
    /// SNI of the decoy handshake made after a failed one, and the innocent name of the A/B
    /// test (see [`ab`]), to tell name filtering apart.
    pub decoy_sni: String,
    /// Whether to query AAAA records and measure IPv6 addresses.
    pub ipv6: bool,
    /// Localising blocks to a network hop (see [`path`]).
    pub path: path::PathConfig,
}

impl Default for MeasureConfig {
    fn default() -> Self {
        MeasureConfig {
            resolver: ResolverSpec::System,
            control_resolvers: Vec::new(),
            timeout: Duration::from_secs(10),
            dns_linger: Duration::from_millis(300),
            body_cap: 512 * 1024,
            redirect_body_cap: 512 * 1024,
            max_header_bytes: 64 * 1024,
            max_redirects: MAX_REDIRECTS,
            target_deadline: DEFAULT_TARGET_DEADLINE,
            extra_cas: Vec::new(),
            bogons: BogonFilter::default(),
            source_address: None,
            decoy_sni: "example.com".to_string(),
            ipv6: true,
            path: path::PathConfig::default(),
        }
    }
}

/// Whether this host has a global IPv6 address with a route to the IPv6 internet: the source
/// address the kernel picks for a public IPv6 destination (a UDP "connect", which sends
/// nothing) is public. `bogons` decides what is public, so a lab's documentation prefix
/// declared public counts. On by default where this holds: a home without IPv6 is never
/// measured over it.
pub fn has_global_ipv6(bogons: &BogonFilter, source: Option<IpAddr>) -> bool {
    use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
    let bind = match source {
        Some(ip @ IpAddr::V6(_)) => SocketAddr::new(ip, 0),
        _ => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    // A well-known public resolver's address: only the route to it matters.
    let public = SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888)),
        53,
    );
    let Ok(sock) = UdpSocket::bind(bind) else {
        return false;
    };
    if sock.connect(public).is_err() {
        return false;
    }
    sock.local_addr()
        .is_ok_and(|a| !a.ip().is_unspecified() && !bogons.is_bogon(a.ip()))
}

impl MeasureConfig {
    /// The source address for a socket towards `dest`: [`source_address`](Self::source_address)
    /// when it is of `dest`'s family, else none (the system's choice). A probe bound to an IPv4
    /// address still measures IPv6 addresses, from the system's IPv6 source.
    pub fn source_for(&self, dest: IpAddr) -> Option<IpAddr> {
        self.source_address
            .filter(|s| s.is_ipv4() == dest.is_ipv4())
    }

    /// Declare lab ranges public (see [`BogonFilter`]).
    pub fn with_lab_public(mut self, ranges: Vec<IpNet>) -> Self {
        self.bogons = BogonFilter::new(ranges);
        self
    }
}

/// Milliseconds since `t`, as a float for sub-millisecond precision: how every step records
/// its times.
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
