//! One module per measurement step. Each records observations; none returns a network failure
//! as an `Err`: failures are data.

pub mod dns;
pub mod http;
pub mod tcp;
pub mod tls;

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use rustls_pki_types::CertificateDer;

use crate::bogon::BogonFilter;

/// Where the network resolver is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolverSpec {
    /// The first nameserver of the system configuration (`/etc/resolv.conf`).
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

/// Everything the measurement steps need to know; built from the layered configuration.
#[derive(Clone, Debug)]
pub struct MeasureConfig {
    /// The network's resolver.
    pub resolver: ResolverSpec,
    /// The encrypted control resolver, if any.
    pub control_resolver: Option<ControlResolverSpec>,
    /// Timeout of each step (DNS query, connect, handshake, HTTP exchange).
    pub timeout: Duration,
    /// How long to keep listening for a second, injected DNS response after the first.
    pub dns_linger: Duration,
    /// Most body bytes read per response.
    pub body_cap: usize,
    /// Most response header bytes accepted.
    pub max_header_bytes: usize,
    /// Most redirects followed.
    pub max_redirects: u32,
    /// Extra trusted CA certificates (DER), on top of the Mozilla roots.
    pub extra_cas: Vec<CertificateDer<'static>>,
    /// Bogon decisions, with lab ranges declared public.
    pub bogons: BogonFilter,
    /// Local address to bind outgoing sockets to, if any.
    pub source_address: Option<IpAddr>,
    /// SNI of the decoy handshake made after a failed one, to tell SNI filtering apart.
    pub decoy_sni: String,
    /// Whether to query AAAA records and measure IPv6 addresses.
    pub ipv6: bool,
}

impl Default for MeasureConfig {
    fn default() -> Self {
        MeasureConfig {
            resolver: ResolverSpec::System,
            control_resolver: None,
            timeout: Duration::from_secs(10),
            dns_linger: Duration::from_millis(300),
            body_cap: 512 * 1024,
            max_header_bytes: 64 * 1024,
            max_redirects: 10,
            extra_cas: Vec::new(),
            bogons: BogonFilter::default(),
            source_address: None,
            decoy_sni: "example.com".to_string(),
            ipv6: true,
        }
    }
}

impl MeasureConfig {
    /// Declare lab ranges public (see [`BogonFilter`]).
    pub fn with_lab_public(mut self, ranges: Vec<IpNet>) -> Self {
        self.bogons = BogonFilter::new(ranges);
        self
    }
}
