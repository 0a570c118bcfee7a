//! The measurement format: what one probe observed for one target, step by step.
//!
//! This is the contract between the probe, the control service and the collector. Every step
//! (DNS, TCP, TLS, HTTP) is its own observation with a start time relative to the start of the
//! measurement, a duration and, on failure, a [`Failure`] from the closed taxonomy. The
//! [`Verdict`] is computed from these observations by [`crate::verdict`], a pure function.
//! `docs/measurement-format.md` documents every field.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::failure::Failure;

/// Version of this format. Bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// Name of the software, recorded in every measurement.
pub const SOFTWARE_NAME: &str = "witness";

/// Which software produced a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Software {
    /// Always `witness` for this implementation.
    pub name: String,
    /// The crate version.
    pub version: String,
}

impl Default for Software {
    fn default() -> Self {
        Software {
            name: SOFTWARE_NAME.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// The network the probe measured from. Never an IP address: only the ASN and country.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeNetwork {
    /// Autonomous system number, when known (configured, or told by the control service).
    pub asn: Option<u32>,
    /// ISO 3166-1 alpha-2 country code, when known.
    pub country: Option<String>,
}

/// One complete measurement of one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    /// Version of this format.
    pub schema_version: u32,
    /// Unique id (UUIDv7, so ids sort by time); the collector deduplicates uploads by it.
    pub id: Uuid,
    /// The software that measured.
    pub software: Software,
    /// The target URL exactly as given in the list or on the command line.
    pub url: String,
    /// The host name measured, in ASCII (IDNs as punycode).
    pub domain: String,
    /// Citizen Lab category code of the target, when it came from a list.
    pub category_code: Option<String>,
    /// When the measurement started (UTC).
    pub started_at: DateTime<Utc>,
    /// How long the whole measurement took, in milliseconds.
    pub runtime_ms: f64,
    /// The probe's network.
    pub probe: ProbeNetwork,
    /// Every DNS query made, network resolver and control resolver.
    pub dns: Vec<DnsObservation>,
    /// Every TCP connect.
    pub tcp: Vec<TcpObservation>,
    /// Every TLS handshake (https targets only).
    pub tls: Vec<TlsObservation>,
    /// Every HTTP request, one per redirect hop.
    pub http: Vec<HttpObservation>,
    /// What the control service saw for the same URL, if one was asked.
    pub control: Option<ControlResponse>,
    /// Why there is no control, when one was wanted but could not be had.
    pub control_failure: Option<String>,
    /// The run-level connectivity check this measurement belongs to.
    pub connectivity: ConnectivitySummary,
    /// Where on the network path the block happens: the triggering exchange repeated with
    /// increasing TTL. Only for blocked targets, made after the verdict, never changing it;
    /// absent when not attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathObservation>,
    /// The A/B test: the site's failed exchange repeated to the same address with an innocent
    /// name (and, for TLS, with none), to tell a middlebox acting on the name from a failing
    /// server. Only for targets that failed in a censor-like way; empty (and absent from the
    /// JSON) otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ab: Vec<AbObservation>,
    /// An app or tool test (a messaging app, Tor, a protocol reflector): its endpoints, each
    /// with its own outcome. Absent for a website; `url` is then `app:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppObservation>,
    /// The verdict computed from all of the above.
    pub verdict: Verdict,
}

impl Measurement {
    /// The URL an app test is recorded under: `app:NAME`, never a website's URL.
    pub fn app_url(name: &str) -> String {
        format!("app:{name}")
    }
}

/// What an app test measures (see `probe/core/src/apps/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    /// A messaging app, endpoint by endpoint as OONI's app tests.
    Messaging,
    /// Tor: directory authorities, default bridges, Snowflake.
    Tor,
    /// A VPN or proxy protocol against a Witness protocol reflector.
    Reflector,
}

/// How one endpoint is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointProbe {
    /// A TCP connect.
    Tcp,
    /// A TCP connect and a TLS handshake (verified, or Tor's self-signed OR port).
    Tls,
    /// A TLS handshake and `GET /`: any HTTP response counts.
    Https,
    /// A cleartext `GET` of Tor's consensus from a directory port.
    Dirport,
    /// A WireGuard handshake initiation (UDP), answered by the reflector's responder.
    Wireguard,
    /// OpenVPN `P_CONTROL_HARD_RESET_CLIENT_V2` over UDP.
    OpenvpnUdp,
    /// OpenVPN `P_CONTROL_HARD_RESET_CLIENT_V2` over TCP.
    OpenvpnTcp,
    /// A QUIC Initial with an unknown version, answered by version negotiation.
    Quic,
    /// A Shadowsocks-like fully random first packet (TCP), echoed.
    Shadowsocks,
    /// A STUN binding request (UDP).
    Stun,
}

/// One app test: every endpoint of one app or tool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppObservation {
    /// The app or tool, as the list names it (`telegram`, `tor`, `wireguard`, ...).
    pub name: String,
    /// What kind of test.
    pub kind: AppKind,
    /// The endpoint list: `embedded:apps.txt@DATE` or the file given with `--apps-list`.
    pub list: String,
    /// Every endpoint, in list order.
    pub endpoints: Vec<EndpointObservation>,
}

/// One endpoint of an app, measured. Its DNS queries, connects and handshakes are in the
/// measurement's `dns`, `tcp` and `tls` too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointObservation {
    /// The host (name or address) as listed.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The name connected to and sent as SNI when it differs from `host` (a domain-fronted
    /// endpoint: `host` goes in `Host:` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front: Option<String>,
    /// How it was probed.
    pub probe: EndpointProbe,
    /// The address reached (or tried), when the name resolved.
    pub addr: Option<SocketAddr>,
    /// Start, milliseconds since the start of the measurement.
    pub t_ms: f64,
    /// How long the endpoint took, milliseconds.
    pub duration_ms: f64,
    /// The step that failed, if any.
    pub failed_step: Option<Step>,
    /// Failure, if any.
    pub failure: Option<Failure>,
    /// The HTTP status, for `https` and `dirport`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Bytes sent in the protocol's first message (reflector protocols).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_bytes: Option<u32>,
    /// A same-size random payload sent to the same address and port after the real handshake
    /// failed: tells a blocked protocol from a blocked port (reflector protocols).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin: Option<TwinObservation>,
    /// This endpoint's own outcome (decided with the verdict).
    pub status: Status,
    /// How it is blocked; only with `blocked`.
    pub method: Option<Method>,
}

/// The random twin of a reflector handshake.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwinObservation {
    /// Bytes sent: the size of the real handshake.
    pub sent_bytes: u32,
    /// Whether the reflector's echo came back.
    pub answered: bool,
    /// Failure, if it did not.
    pub failure: Option<Failure>,
    /// How long it took, milliseconds.
    pub duration_ms: f64,
}

/// Which resolver a DNS observation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolverRole {
    /// The network's own resolver (system configuration or `--resolver`): what censors tamper with.
    Network,
    /// The encrypted control resolver (DoH/DoT), which a censor on the path cannot forge.
    Control,
}

/// DNS query type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QueryType {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    AAAA,
}

/// One address in a DNS answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsAnswer {
    /// The address.
    pub addr: IpAddr,
    /// Time to live, seconds.
    pub ttl: u32,
    /// True when the address is private, loopback, reserved or otherwise not routable on the
    /// internet: a classic sign of DNS tampering.
    pub bogon: bool,
}

/// One DNS query and what came back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsObservation {
    /// Network or control resolver.
    pub role: ResolverRole,
    /// Transport: `udp`, `tcp`, `doh`, `dot`, or `system` (the OS resolver).
    pub transport: String,
    /// The resolver's address (a resolver, never the probe's own address).
    pub resolver: String,
    /// The name queried.
    pub query: String,
    /// A or AAAA.
    pub query_type: QueryType,
    /// Start, milliseconds since the start of the measurement.
    pub t_ms: f64,
    /// Time to the first response (or to the failure), milliseconds.
    pub duration_ms: f64,
    /// Failure, if the query failed.
    pub failure: Option<Failure>,
    /// Response code (`NOERROR`, `NXDOMAIN`, `SERVFAIL`, ...), when a response arrived.
    pub rcode: Option<String>,
    /// Addresses in the (first) answer.
    pub answers: Vec<DnsAnswer>,
    /// CNAME chain in the answer, in order.
    pub cnames: Vec<String>,
    /// Further responses to the same query that arrived while we kept listening and differ
    /// from the first: a sign of an injected answer racing the real one.
    pub late_responses: Vec<LateDnsResponse>,
}

/// A second response to one DNS query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateDnsResponse {
    /// Milliseconds after the first response.
    pub after_ms: f64,
    /// Response code.
    pub rcode: String,
    /// Addresses in it.
    pub answers: Vec<IpAddr>,
}

/// One TCP connect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpObservation {
    /// The server address and port.
    pub addr: SocketAddr,
    /// Start, milliseconds since the start of the measurement.
    pub t_ms: f64,
    /// Connect time, milliseconds.
    pub duration_ms: f64,
    /// Failure, if the connect failed.
    pub failure: Option<Failure>,
}

/// One certificate of a chain as the server sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateInfo {
    /// Subject distinguished name, RFC 4514 style.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// SHA-256 of the DER certificate, hex.
    pub sha256: String,
    /// SHA-256 of the DER SubjectPublicKeyInfo, hex: identifies a key across re-issued certs.
    pub spki_sha256: String,
    /// Start of validity (RFC 3339), when parseable.
    pub not_before: Option<String>,
    /// End of validity (RFC 3339), when parseable.
    pub not_after: Option<String>,
    /// DNS names in the subjectAltName extension (first few).
    pub san: Vec<String>,
}

/// One TLS handshake.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsObservation {
    /// The server address and port.
    pub addr: SocketAddr,
    /// The SNI sent. Differs from the target's domain for a decoy handshake.
    pub server_name: String,
    /// True for the decoy handshake with another SNI, made after the real one failed, to tell
    /// SNI filtering from a dead server.
    pub decoy: bool,
    /// Start, milliseconds since the start of the measurement.
    pub t_ms: f64,
    /// Handshake time, milliseconds.
    pub duration_ms: f64,
    /// Handshake failure (reset, timeout, EOF, alert). `None` when the handshake completed.
    pub failure: Option<Failure>,
    /// Negotiated version, e.g. `TLSv1_3`.
    pub tls_version: Option<String>,
    /// Negotiated cipher suite.
    pub cipher_suite: Option<String>,
    /// The chain the server presented, leaf first, recorded even when it does not verify.
    pub peer_certificates: Vec<CertificateInfo>,
    /// Result of verifying the chain against the Mozilla roots plus any extra CAs:
    /// `None` when it verified, else the failure (`ssl_unknown_authority`, ...).
    pub verification_failure: Option<Failure>,
    /// Name of the known state interception CA the chain leads to, if any.
    pub interception_ca: Option<String>,
}

impl TlsObservation {
    /// Handshake completed and the chain verified.
    pub fn verified(&self) -> bool {
        self.failure.is_none() && self.verification_failure.is_none()
    }
}

/// Which step failed on an HTTP hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Resolving the hop's host.
    Dns,
    /// Connecting.
    Tcp,
    /// The TLS handshake or certificate.
    Tls,
    /// The HTTP exchange.
    Http,
    /// A protocol's own handshake (WireGuard, OpenVPN, QUIC, STUN, ...): the answer did not
    /// come, or was not the protocol's.
    Protocol,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Dns => "dns",
            Step::Tcp => "tcp",
            Step::Tls => "tls",
            Step::Http => "http",
            Step::Protocol => "protocol",
        })
    }
}

/// One HTTP request and response: one redirect hop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpObservation {
    /// 0 for the target URL, 1 for the first redirect, ...
    pub hop: u32,
    /// The URL requested.
    pub url: String,
    /// The server address the request was pinned to, if one was reached.
    pub addr: Option<SocketAddr>,
    /// Start, milliseconds since the start of the measurement.
    pub t_ms: f64,
    /// Total time of this hop, milliseconds.
    pub duration_ms: f64,
    /// The step that failed on this hop, if any (a redirect hop resolves, connects and
    /// handshakes itself).
    pub failed_step: Option<Step>,
    /// Failure, if any.
    pub failure: Option<Failure>,
    /// Status code.
    pub status: Option<u16>,
    /// Response headers (names lower-case, values scrubbed and bounded), in order.
    pub headers: Vec<(String, String)>,
    /// `<title>` of the body, scrubbed, if any.
    pub title: Option<String>,
    /// Bytes of body read (at most the cap).
    pub body_length: u64,
    /// True when the body was longer than the cap and reading stopped.
    pub body_truncated: bool,
    /// SHA-256 of the body bytes read, hex.
    pub body_sha256: Option<String>,
    /// Time to the response headers, milliseconds since the request was sent.
    pub ttfb_ms: Option<f64>,
    /// Time spent reading the body, milliseconds.
    pub body_ms: Option<f64>,
    /// Body bytes per second while reading it: the throughput used for throttling analysis.
    pub throughput_bps: Option<f64>,
    /// Name of the blockpage signature the response matched, if any.
    pub blockpage: Option<String>,
    /// The redirect target, for 3xx responses.
    pub location: Option<String>,
    /// Why this exchange was made: the page itself (the default, omitted from the JSON), or an
    /// extra exchange the probe made as local evidence about it.
    #[serde(default, skip_serializing_if = "HttpRole::is_page")]
    pub role: HttpRole,
}

/// Why an HTTP exchange was made. Only [`HttpRole::Page`] exchanges are the page the user would
/// see; the others are evidence the probe gathered about it, on the same network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpRole {
    /// The target URL and its redirect hops.
    #[default]
    Page,
    /// The same request to the same address with a neutral `Host:` (the decoy name), made when
    /// a cleartext request was cut: the HTTP twin of the decoy TLS handshake.
    DecoyHost,
    /// The same site fetched over HTTPS (same host and path), with its redirects, made when an
    /// `http://` page could not be confirmed by the control: a page that arrives over TLS
    /// verified for the site's own name comes from the site.
    HttpsWitness,
    /// The same URL fetched from the encrypted control resolver's addresses, made when the
    /// network resolver's addresses had none in common with them (and no verified handshake
    /// proved the network's addresses): the page the name really leads to, to compare with the
    /// page the network's answer led to. Its redirects carry the same role.
    ControlAddress,
}

impl HttpRole {
    /// Whether this is the page itself (the JSON omits the field then).
    pub fn is_page(&self) -> bool {
        *self == HttpRole::Page
    }
}

/// Which exchange the localisation repeats with increasing TTL: the one that triggered the
/// block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathTrigger {
    /// The TCP SYN (IP blocking).
    Syn,
    /// The TLS ClientHello after a normal handshake at full TTL (SNI filtering, interception).
    ClientHello,
    /// The HTTP request after a normal handshake at full TTL (`Host:` filtering, blockpages).
    Request,
    /// The DNS query for the site's name, over UDP to an address past the censor that is not
    /// a resolver (the site's own address): any answer is injected (DNS injection).
    Dns,
}

/// What the censor does to the triggering exchange, as the verdict saw it: what the
/// localisation looks for at each TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathAction {
    /// A TCP reset (or a refused connect).
    Reset,
    /// The connection closed without a reset (an injected FIN).
    Close,
    /// Nothing comes back: the packet is dropped, and no ICMP time-exceeded follows.
    Silence,
    /// The blockpage (the same page as the blocked exchange got).
    Blockpage,
    /// The forged certificate (the same leaf as the blocked handshake got).
    ForgedCertificate,
    /// A DNS answer where no resolver is: injected by something in the path.
    InjectedAnswer,
}

/// What came back for one TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HopReply {
    /// An ICMP time-exceeded: a router at this hop, before the censor.
    TimeExceeded,
    /// Another ICMP error (destination unreachable).
    Unreachable,
    /// A TCP reset.
    Reset,
    /// The connection closed without a reset.
    Close,
    /// Nothing within the probe timeout.
    Silence,
    /// The censor's own answer (its blockpage or forged certificate).
    Censor,
    /// A normal answer: the exchange got through at this TTL.
    Answered,
    /// Another local error.
    Error,
}

/// One hop of a localisation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathHop {
    /// The TTL (hop limit) the triggering exchange was sent with: 1 is the first router.
    pub ttl: u8,
    /// What came back for the triggering exchange.
    pub reply: HopReply,
    /// The router that answered a TCP SYN sent with this TTL (its ICMP time-exceeded), when it
    /// is public and past the private hops (see `docs/measurement-format.md`); else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
    /// The router's autonomous system, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
}

/// Why a localisation named no hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathUnlocated {
    /// The censor's action did not appear at any TTL probed.
    NoActionSeen,
    /// The exchange got through at a lower TTL than the censor's action: not a block on this
    /// path (or the path changed).
    AnsweredFirst,
    /// Routers still answered at the largest TTL probed.
    BeyondMaxTtl,
    /// Silence everywhere: no router sent an ICMP time-exceeded, so silence cannot be placed.
    NoIcmp,
    /// The exchange at full TTL could not be repeated (the connect failed).
    NotRepeatable,
    /// The localisation ran out of its time budget.
    Budget,
    /// Routers that sent no ICMP (or rate-limited it) hide the exact hop: `censor_range` says
    /// between which hops the censor is.
    SilentRouters,
    /// This platform gives an unprivileged program no routers' ICMP replies (Windows: no
    /// `IP_RECVERR`), so nothing was sent.
    PlatformUnsupported,
}

/// Where on the network path a block happens: the exchange that triggered it, repeated with
/// TTL 1, 2, … `max_ttl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathObservation {
    /// The exchange repeated.
    pub trigger: PathTrigger,
    /// The target address it was sent to.
    pub addr: SocketAddr,
    /// What was looked for.
    pub action: PathAction,
    /// The first TTL at which the censor's action appears ("censor at hop N"); `None` when no
    /// hop could be named (`unlocated` says why).
    pub censor_hop: Option<u8>,
    /// Why no hop was named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlocated: Option<PathUnlocated>,
    /// The hops up to the censor (all TTLs probed when none was named), in TTL order.
    pub hops: Vec<PathHop>,
    /// The largest TTL probed.
    pub max_ttl: u8,
    /// Packets-carrying exchanges made (connects and triggers).
    pub probes: u32,
    /// Start, milliseconds since the start of the measurement.
    pub t_ms: f64,
    /// How long the localisation took, milliseconds.
    pub duration_ms: f64,
    /// Set when this target was not localised itself: the id of the measurement of the same
    /// run whose localisation it shares (the same address, exchange and censor action, so the
    /// same censor); the fields above are that localisation's. Absent when localised itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_with: Option<Uuid>,
    /// Where the censor sits when routers that send no ICMP (or rate-limit it) hide its exact
    /// hop: `unlocated` is then `silent_routers`, and this says between which hops it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub censor_range: Option<HopRange>,
}

/// The hops a censor is known to sit between, both included ("between hop 3 and hop 5"); no
/// `to` when nothing past `from` answered (a drop past the last router that answered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HopRange {
    /// The first hop the censor may be at.
    pub from: u8,
    /// The last hop it may be at; absent: unbounded (anywhere from `from` on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u8>,
}

impl PathObservation {
    /// The censor's autonomous system, when known: that of the router of hop N−1, the one
    /// right before its hop. *Censor at hop N* means at the router of hop N−1 or between it
    /// and hop N, so hop N's own router (which answers when the censor filters only the
    /// trigger) may already be across a border: counting it would name the next network for
    /// some kinds of block and not for others. Nor is an earlier router taken when hop N−1's
    /// is unknown (a silent or rate-limited router): the border may be right there, and an
    /// earlier network would be named wrongly. A censor at hop 1 has no router before it.
    pub fn censor_asn(&self) -> Option<u32> {
        let n = self.censor_hop?;
        self.hops
            .iter()
            .find(|h| h.ttl.checked_add(1) == Some(n))
            .and_then(|h| h.asn)
    }
}

/// Which exchange an A/B test repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbKind {
    /// The TLS handshake: the name is the SNI.
    Tls,
    /// The cleartext HTTP request: the name is the `Host:` header.
    Http,
}

/// What the site's own exchange got, which made the probe run the A/B test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbTrigger {
    /// The connection was reset (or refused).
    Reset,
    /// The connection was closed without a reset.
    Close,
    /// Nothing came back within the step timeout.
    Timeout,
    /// A certificate that does not verify for the site's name.
    ForgedCertificate,
    /// A known blockpage.
    Blockpage,
}

/// Which name an A/B trial sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbName {
    /// The site's own name, sent again: a failure that does not repeat was not the name's.
    Site,
    /// The innocent name (`AbObservation::innocent`).
    Innocent,
    /// No name at all: a ClientHello without the SNI extension (TLS only).
    None,
}

/// One exchange of an A/B test, on a fresh connection to the same address and port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbTrial {
    /// The name sent.
    pub sent: AbName,
    /// Start, milliseconds since the start of the measurement.
    pub t_ms: f64,
    /// Connect plus exchange, milliseconds.
    pub duration_ms: f64,
    /// Why the exchange failed (the connect's failure included); `None` when the server
    /// answered: a completed handshake whatever its certificate, or any HTTP response.
    pub failure: Option<Failure>,
    /// TLS: SHA-256 of the leaf certificate presented, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_sha256: Option<String>,
    /// TLS: whether the chain presented verifies for the site's name (whatever name was sent):
    /// a server that proves the site's name to an innocent ClientHello holds the site's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_for_site: Option<bool>,
    /// TLS: the known state interception CA the chain leads to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interception_ca: Option<String>,
    /// HTTP: the response's status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// HTTP: the blockpage signature the response matched, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blockpage: Option<String>,
}

impl AbTrial {
    /// The server answered as a server would, not as the censor: a handshake that completed
    /// without a state CA, or an HTTP response that is not a known blockpage.
    pub fn answered(&self) -> bool {
        self.failure.is_none() && self.interception_ca.is_none() && self.blockpage.is_none()
    }
}

/// The A/B test of one target: its failed exchange repeated to the same server address and
/// port with an innocent name (OONI's `sni_blocking`/`tlsmiddlebox`, CenTrace's control
/// domain). A server serves every name it hosts alike; only something in between acts on the
/// name the site's exchange carried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbObservation {
    /// The exchange repeated.
    pub kind: AbKind,
    /// The server address and port, the site's own from this run's DNS.
    pub addr: SocketAddr,
    /// The site's name (the SNI or `Host:` of the failed exchange).
    pub name: String,
    /// The innocent name sent instead (`decoy_sni`, default `example.com`).
    pub innocent: String,
    /// What the site's own exchange got.
    pub trigger: AbTrigger,
    /// The exchanges, in the order they were started.
    pub trials: Vec<AbTrial>,
    /// Start, milliseconds since the start of the measurement.
    pub t_ms: f64,
    /// How long the whole test took, milliseconds.
    pub duration_ms: f64,
}

/// Run-level connectivity: can this probe reach anything at all?
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectivitySummary {
    /// True when nothing was reachable: every verdict of the run is then `offline`.
    pub offline: bool,
    /// Whether the network resolver answered anything.
    pub resolver_ok: Option<bool>,
    /// Whether the control service answered.
    pub control_ok: Option<bool>,
    /// Anchors (domestic and foreign hosts) reached, and tried.
    pub anchors_ok: u32,
    /// Anchors tried.
    pub anchors_tried: u32,
    /// Whether IPv6 works here, from the anchors' IPv6 addresses: `true` when one answered
    /// over IPv6; `false` when those tried over IPv6 all failed while IPv4 reached an anchor
    /// (this network's IPv6 is broken for everything, so verdicts are judged over IPv4 alone);
    /// absent when IPv6 was not measured or no anchor has an IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_ok: Option<bool>,
    /// Plain-language summary.
    pub summary: String,
    /// Reference transfers from the anchors, made during the run: this probe's own line
    /// speed, against which throttling is judged. Empty when no anchor serves HTTPS on 443.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<ReferenceTransfer>,
    /// The encrypted control resolvers (DoH, DoT) as checked at the start of the run, in the
    /// order of the fallback chain: which answered, and how the others failed. A resolver that
    /// fails on a network where the anchors answer is evidence about the network (a censor
    /// blocking encrypted DNS), not about any site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_resolvers: Vec<ResolverCheck>,
}

/// One reference transfer: `GET https://ANCHOR/` with the same steps as a target, reduced to
/// the two figures throttling changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceTransfer {
    /// The anchor, `HOST:PORT` as configured.
    pub anchor: String,
    /// Duration of the completed TLS handshake, milliseconds.
    pub handshake_ms: Option<f64>,
    /// Body bytes of the final response (read up to the body cap).
    pub body_bytes: u64,
    /// Body throughput of the final response, bytes per second.
    pub throughput_bps: Option<f64>,
    /// Why the transfer did not complete, if it did not.
    pub failure: Option<Failure>,
}

/// One encrypted control resolver as checked at the start of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverCheck {
    /// `doh`, `dot` or `udp`.
    pub transport: String,
    /// The resolver as configured: `NAME@IP:PORT` (never the probe's address).
    pub resolver: String,
    /// How long the check took, milliseconds.
    pub duration_ms: f64,
    /// Why it could not be used (`connection_reset`, `dns_timeout`, ...); `None` when it
    /// answered (any DNS answer counts, NXDOMAIN included: the transport works).
    pub failure: Option<Failure>,
}

impl ResolverCheck {
    /// `doh:NAME@IP:PORT`: how evidence and summaries name the resolver.
    pub fn label(&self) -> String {
        format!("{}:{}", self.transport, self.resolver)
    }
}

/// The per-target conclusion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Reachable, and it looks like the real site.
    Accessible,
    /// Blocked on this network; see the method.
    Blocked,
    /// Fails for the control too: the site is down, not censored.
    Down,
    /// The probe has no working network at all.
    Offline,
    /// Not enough evidence; the reason says why.
    Inconclusive,
}

/// How a site is blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// NXDOMAIN, no answer, bogon, forged or injected answers.
    Dns,
    /// Connect fails here and works for the control (IP blocking).
    Tcp,
    /// Reset, timeout or EOF during the handshake: SNI filtering.
    Tls,
    /// A certificate that does not verify where the control's does: interception.
    Mitm,
    /// Reset or timeout after the request, a blockpage, or a page unlike the control's.
    Http,
    /// Much slower than this probe's own baseline.
    Throttle,
    /// A protocol's handshake gets no answer where a same-size random payload to the same
    /// address and port does: blocked by content (app tests with a reflector).
    Protocol,
    /// Nothing at all passes to a UDP port where the same server answers on others.
    Udp,
}

macro_rules! snake_enum_str {
    ($ty:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $ty {
            /// The stable lower-case name, as in JSON and metric labels.
            pub fn as_str(&self) -> &'static str {
                match self { $(<$ty>::$v => $s),* }
            }
            /// Every value, in order.
            pub const ALL: &'static [$ty] = &[$(<$ty>::$v),*];
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $ty {
            type Err = crate::error::UnknownValue;
            fn from_str(s: &str) -> Result<Self, crate::error::UnknownValue> {
                match s {
                    $($s => Ok(<$ty>::$v),)*
                    other => Err(crate::error::UnknownValue {
                        value: other.to_string(),
                        expected: [$($s),*].join(", "),
                    }),
                }
            }
        }
    };
}

snake_enum_str!(Status {
    Accessible => "accessible",
    Blocked => "blocked",
    Down => "down",
    Offline => "offline",
    Inconclusive => "inconclusive",
});

snake_enum_str!(Method {
    Dns => "dns",
    Tcp => "tcp",
    Tls => "tls",
    Mitm => "mitm",
    Http => "http",
    Throttle => "throttle",
    Protocol => "protocol",
    Udp => "udp",
});

/// The verdict for one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// Accessible, blocked, down, offline or inconclusive.
    pub status: Status,
    /// How it is blocked; only with `blocked`.
    pub method: Option<Method>,
    /// One plain-language sentence.
    pub reason: String,
    /// The observations that decided it, short and machine-greppable.
    pub evidence: Vec<String>,
}

impl Verdict {
    /// A verdict without evidence lines.
    pub fn new(status: Status, method: Option<Method>, reason: impl Into<String>) -> Self {
        Verdict {
            status,
            method,
            reason: reason.into(),
            evidence: Vec::new(),
        }
    }
}

/// A request to the control service: measure this URL from your vantage point.
///
/// `POST /api/v1/control` with this JSON body and `Authorization: Bearer <probe token>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    /// The URL to measure, as the probe measures it.
    pub url: String,
    /// The addresses the probe's resolver gave (at most [`MAX_CONTROL_ADDRS`]). Checked and not
    /// used: the control's view is shared by every probe, so it is measured from the control's
    /// own resolution only (a probe's addresses must not shape what others are served).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<IpAddr>,
    /// Ask for a fresh measurement instead of the shared view: for a site that failed for the
    /// probe where the shared view says it worked. Granted once per URL per cache TTL (the
    /// collector decides); otherwise the shared view is served.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh: bool,
}

/// Most probe addresses a control request may carry.
pub const MAX_CONTROL_ADDRS: usize = 8;

/// Most URLs in one [`ControlBatchRequest`]: a 600-site run is six requests.
pub const MAX_CONTROL_BATCH: usize = 100;

/// `POST /api/v1/control/batch`: the control views of many URLs in one request. The answer is
/// streamed, one [`ControlBatchLine`] per URL and per line of JSON, in the order they complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlBatchRequest {
    /// The URLs, at most [`MAX_CONTROL_BATCH`].
    pub urls: Vec<String>,
}

/// One line of a batch answer: the URL as asked, and either its reply or why there is none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlBatchLine {
    /// The URL exactly as the request named it.
    pub url: String,
    /// The control's view, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ControlReply>,
    /// Why there is no reply (a refused URL, a spent budget, a busy service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The HTTP status the single-URL endpoint would have answered with this error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// The control service's answer: the same observations the probe makes, from an uncensored
/// vantage point, made by the same code. Bodies are never returned: only their length, hash
/// and title.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlResponse {
    /// The software of the control service.
    pub software: Software,
    /// When the control measured.
    pub measured_at: DateTime<Utc>,
    /// DNS queries of the control (its network resolver).
    pub dns: Vec<DnsObservation>,
    /// TCP connects to every address either side resolved.
    pub tcp: Vec<TcpObservation>,
    /// TLS handshakes.
    pub tls: Vec<TlsObservation>,
    /// HTTP hops.
    pub http: Vec<HttpObservation>,
    /// How old the control's view was when it was served, seconds: the control measures a URL
    /// once per cache TTL and serves that view to every probe asking within it. Absent from
    /// older controls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_secs: Option<u64>,
}

impl ControlResponse {
    /// The control's resolved addresses.
    pub fn addrs(&self) -> Vec<IpAddr> {
        resolved_addrs(&self.dns)
    }
}

/// Distinct addresses from successful DNS observations, in answer order.
pub fn resolved_addrs(dns: &[DnsObservation]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for obs in dns.iter().filter(|o| o.failure.is_none()) {
        for a in &obs.answers {
            if !out.contains(&a.addr) {
                out.push(a.addr);
            }
        }
    }
    out
}

/// The body of the control service's HTTP answer: the control observations, which the probe
/// stores, and facts about the probe itself, which it never stores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlReply {
    /// The control measurement.
    pub control: ControlResponse,
    /// What the control service saw of the probe.
    #[serde(default)]
    pub meta: ControlMeta,
}

/// What the control service saw of the asking probe. Used locally (to scrub the probe's public
/// address from records and to learn its network); the address is never stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlMeta {
    /// The probe's public address as the control saw it: used only to scrub it locally.
    pub your_address: Option<IpAddr>,
    /// The probe's ASN, if the control could derive it.
    pub your_asn: Option<u32>,
    /// The probe's country, if the control could derive it.
    pub your_country: Option<String>,
}

/// Most addresses in one [`AsnRequest`]: one localisation run's routers (two per TTL at most,
/// and `max_ttl` ≤ 64) deduplicated.
pub const MAX_ASN_ADDRS: usize = 64;

/// `POST /api/v1/asn`: which networks the routers a localisation met belong to. Asked once per
/// run, after localising; the collector answers from its ASN table and never stores or logs
/// the addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsnRequest {
    /// Router addresses, at most [`MAX_ASN_ADDRS`].
    pub addrs: Vec<IpAddr>,
}

/// The answer to an [`AsnRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsnReply {
    /// The network of each requested address, in request order; `null` when unknown.
    pub asns: Vec<Option<u32>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_method_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), *s);
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        for m in Method::ALL {
            assert_eq!(m.as_str().parse::<Method>().unwrap(), *m);
            assert_eq!(
                serde_json::to_string(m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
        }
        assert!("censored".parse::<Status>().is_err());
    }
}
