//! Typed evidence: every fact a rule can cite, one variant each.
//!
//! A verdict's `evidence` is still a list of `key=value` lines in the JSON (the collector, the
//! status page and the tests parse those); [`Evidence`]'s `Display` is the only place those
//! lines are spelled, so a key cannot drift between the rule that pushes it and the docs.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::failure::Failure;
use crate::model::{AbKind, Step};

use super::compare::AbFinding;
use super::facts::{join_addrs, short_title};

/// Which resolver a DNS summary line describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsSource {
    /// The network's resolver (`dns.network`).
    Network,
    /// The control service's resolver (`dns.control`).
    ControlService,
    /// The probe's encrypted control resolver (`dns.control_resolver`).
    ControlResolver,
}

/// What a resolver gave for the target: some addresses, or a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsResult {
    /// This many distinct addresses.
    Addrs(usize),
    /// The failure's name without its `dns_` prefix (`nxdomain`, `timeout`, `no_answer`).
    Failed(String),
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        })
    }
}

/// How a decoy handshake (another SNI, same server) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecoyResult {
    /// It got as far as the certificate.
    Ok,
    /// It failed, with this failure's name.
    Failed(&'static str),
}

/// What the site's own HTTPS page (fetched as a witness for its cleartext page) showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpsWitnessResult {
    /// A page fetched over TLS verified for the site's own name, the same as the cleartext one.
    SamePage,
    /// A page fetched over TLS verified for the site's own name, not the cleartext one.
    DifferentPage {
        /// Its status.
        status: u16,
        /// Its body length.
        body_length: u64,
        /// Its title.
        title: Option<String>,
    },
    /// No verified page: the fetch failed with this failure at this step, or its certificate
    /// did not verify (`unverified`).
    Unavailable(&'static str, Option<Step>),
}

/// What the control's TLS handshakes showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlTlsEvidence {
    /// A handshake completed (`tls.control=ok`).
    Ok,
    /// A handshake completed with a verified chain (`tls.control=verified`).
    Verified,
    /// Handshakes completed, none verified (`tls.control=unverified`).
    Unverified,
    /// Every handshake failed (`tls.control=failed`).
    Failed,
}

/// Which throttling figure was out of line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThrottleFigure {
    /// The TLS handshake time, milliseconds (`throttle.handshake_ms`).
    HandshakeMs,
    /// The body throughput, bytes per second (`throttle.throughput_bps`).
    ThroughputBps,
}

/// Where the line's reference figures came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReferenceSource {
    /// The anchors' reference transfers (`connectivity.references`).
    Anchors,
    /// The other sites of the run that plainly loaded (the [`super::Baseline`]).
    Run,
    /// Both: the run's figure for one, the anchors' for the other.
    Both,
}

/// One fact a verdict rests on.
#[derive(Clone, Debug, PartialEq)]
pub enum Evidence {
    /// `control=unavailable`: no control answer to compare with.
    ControlUnavailable,
    /// `connectivity.anchors=OK/TRIED`.
    Anchors {
        /// Anchors reached.
        ok: u32,
        /// Anchors tried.
        tried: u32,
    },
    /// `failure=network_offline`: a step was skipped because the network was down.
    NetworkOffline,
    /// `connectivity.resolver=dead`: the network's resolver answered nothing in the run.
    ResolverDead,
    /// `dns.network=…`, `dns.control=…`, `dns.control_resolver=…`.
    Dns(DnsSource, DnsResult),
    /// `dns.control_resolver.failed=NAME@TRANSPORT:RESOLVER`: an encrypted control resolver
    /// of the chain failed the run's check from this network (a censor blocking encrypted DNS;
    /// the DNS comparison then rests on the next resolver, or on the control service alone).
    ControlResolverFailed {
        /// How it failed (`connection_reset`, `dns_timeout`, ...).
        failure: &'static str,
        /// The resolver as labelled: `doh:NAME@IP:PORT`.
        resolver: String,
    },
    /// `dns.injected=first:… late:… +Nms`: two different answers to one query.
    DnsInjected {
        /// The first answer, as text.
        first: String,
        /// The late answer, as text.
        late: String,
        /// How long after the first the late one came.
        after_ms: f64,
    },
    /// `dns.network.bogon=ADDRS`.
    DnsBogon(Vec<IpAddr>),
    /// `dns.control.bogon=all`: the control resolved the name to bogons too.
    DnsControlBogonAll,
    /// `dns.consistent=tls_verified@ADDR`.
    DnsConsistentByTls(SocketAddr),
    /// `dns.consistent=same_page`.
    DnsConsistentByPage,
    /// `dns.redirected=network:… control:…`: the network resolver's addresses differ from the
    /// control's, yet the verdict does not call it tampering (the same page came from both, or
    /// both failed alike); kept on record.
    DnsRedirected {
        /// The network resolver's addresses.
        network: Vec<IpAddr>,
        /// The control's addresses.
        control: Vec<IpAddr>,
    },
    /// `dns.control_address_page=same_page`, `=different_page status=N length=N title="…"` or
    /// `=NAME@STEP`: the page fetched from the encrypted resolver's addresses
    /// ([`crate::model::HttpRole::ControlAddress`]), against the one from the network's.
    DnsControlAddressPage(HttpsWitnessResult),
    /// `dns.inconsistent=network:… control:…`.
    DnsInconsistent {
        /// The network resolver's addresses.
        network: Vec<IpAddr>,
        /// The control's addresses.
        control: Vec<IpAddr>,
    },
    /// `tcp.ipv6=no_route`.
    TcpNoIpv6Route,
    /// `net.ipv6=broken`: no anchor answered over IPv6 while IPv4 works, so the verdict was
    /// judged over IPv4 alone.
    Ipv6Broken,
    /// `tcp.blocked_family=ipv4|ipv6`: every connect of this family failed here while the
    /// control connected over it, and the other family works.
    FamilyBlocked(Family),
    /// `dns.forged_family=ipv4|ipv6`: the network resolver's answers of this family share
    /// nothing with the control's and none connects, while the other family works.
    FamilyForged(Family),
    /// `tcp.failed_family=ipv4|ipv6`: every connect of this family failed here, the other
    /// family works, and the control did not connect over it (so no block is claimed).
    FamilyFailed(Family),
    /// `tcp.failure=NAME@ADDR`.
    TcpFailure(Failure, SocketAddr),
    /// `tcp.control=ok` / `tcp.control=failed`.
    TcpControl(bool),
    /// `tls.interception_ca=NAME`.
    InterceptionCa(String),
    /// `tls.verification=NAME@ADDR`.
    TlsVerification(&'static str, SocketAddr),
    /// `tls.leaf=SHA256`.
    TlsLeaf(String),
    /// `tls.issuer=DN`.
    TlsIssuer(String),
    /// `tls.control.leaf=SHA256`.
    TlsControlLeaf(String),
    /// `tls.control=ok|verified|unverified|failed`.
    TlsControl(ControlTlsEvidence),
    /// `tls.failure=NAME@ADDR`.
    TlsFailure(Failure, SocketAddr),
    /// `tls.decoy=ok@ADDR` or `tls.decoy=NAME@ADDR`.
    TlsDecoy(DecoyResult, SocketAddr),
    /// `ab.tls=FINDING@ADDR` or `ab.http=FINDING@ADDR`: what the A/B test at that address
    /// showed (`name_differs`, `certificate_differs`, `site_answered`, `site_refused`,
    /// `other_certificate`, `innocent_failed`, `incomplete`).
    Ab(AbKind, AbFinding, SocketAddr),
    /// `http.blockpage=NAME`.
    Blockpage(String),
    /// `http.blockpage.hop=N`.
    BlockpageHop(u32),
    /// `http.status=N` or `http.status=N control=M`.
    HttpStatus {
        /// The probe's final status.
        status: u16,
        /// The control's final status, when it had one.
        control: Option<u16>,
    },
    /// `server_side_refusal`: the site itself refused, over an authenticated connection.
    ServerSideRefusal,
    /// `http.hopN.failure=NAME@STEP`.
    HopFailure {
        /// The hop.
        hop: u32,
        /// How it failed.
        failure: Failure,
        /// At which step.
        step: Step,
    },
    /// `http.decoy_host=ok@ADDR` or `http.decoy_host=NAME@ADDR`: the same request to the same
    /// address with a neutral `Host:` (`blockpage` when it was answered with one).
    HttpDecoyHost(DecoyResult, SocketAddr),
    /// `http.https_witness=same_page`, `http.https_witness=different_page status=N length=N
    /// title="…"`, or `http.https_witness=NAME@STEP` / `=unverified`.
    HttpsWitness(HttpsWitnessResult),
    /// `http.control=ok`.
    HttpControlOk,
    /// `http.control=deadline_exceeded`: the control ran out of its deadline too.
    HttpControlDeadline,
    /// `http.control.failed_step=STEP`.
    HttpControlFailedStep(Step),
    /// `http.body_length=N control=M`.
    BodyLength {
        /// The probe's body length.
        probe: u64,
        /// The control's.
        control: u64,
    },
    /// `http.title="…" control="…"`.
    Titles {
        /// The probe's page title.
        probe: Option<String>,
        /// The control's.
        control: Option<String>,
    },
    /// `throttle.reference=anchors|run|anchors+run`: where the line's reference came from.
    ThrottleReference(ReferenceSource),
    /// `throttle.control_handshake_ms=N` or `throttle.control_throughput_bps=N`: the control's
    /// figure for the same site.
    ThrottleControl(ThrottleFigure, f64),
    /// `path.censor_hop=N` (with ` asn=ASN` when known): the censor at hop N, from the
    /// localisation (the triggering exchange repeated with increasing TTL).
    CensorAtHop {
        /// The first TTL at which the censor's action appears.
        hop: u8,
        /// The autonomous system of that hop, when known.
        asn: Option<u32>,
    },
    /// `throttle.handshake_ms=N baseline=M` or `throttle.throughput_bps=N baseline=M`.
    Throttle {
        /// Which figure.
        figure: ThrottleFigure,
        /// The target's value.
        value: f64,
        /// The reference it was compared with.
        baseline: f64,
    },
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Evidence::*;
        match self {
            ControlUnavailable => f.write_str("control=unavailable"),
            Anchors { ok, tried } => write!(f, "connectivity.anchors={ok}/{tried}"),
            NetworkOffline => f.write_str("failure=network_offline"),
            ResolverDead => f.write_str("connectivity.resolver=dead"),
            Dns(source, result) => {
                let key = match source {
                    DnsSource::Network => "dns.network",
                    DnsSource::ControlService => "dns.control",
                    DnsSource::ControlResolver => "dns.control_resolver",
                };
                match result {
                    DnsResult::Addrs(n) => write!(f, "{key}={n} addrs"),
                    DnsResult::Failed(name) => write!(f, "{key}={name}"),
                }
            }
            ControlResolverFailed { failure, resolver } => {
                write!(f, "dns.control_resolver.failed={failure}@{resolver}")
            }
            DnsInjected {
                first,
                late,
                after_ms,
            } => write!(f, "dns.injected=first:{first} late:{late} +{after_ms:.0}ms"),
            DnsBogon(addrs) => write!(f, "dns.network.bogon={}", join_addrs(addrs)),
            DnsControlBogonAll => f.write_str("dns.control.bogon=all"),
            DnsConsistentByTls(addr) => write!(f, "dns.consistent=tls_verified@{addr}"),
            DnsConsistentByPage => f.write_str("dns.consistent=same_page"),
            DnsInconsistent { network, control } => write!(
                f,
                "dns.inconsistent=network:{} control:{}",
                join_addrs(network),
                join_addrs(control)
            ),
            DnsRedirected { network, control } => write!(
                f,
                "dns.redirected=network:{} control:{}",
                join_addrs(network),
                join_addrs(control)
            ),
            DnsControlAddressPage(result) => {
                f.write_str("dns.control_address_page=")?;
                page_result(f, result)
            }
            TcpNoIpv6Route => f.write_str("tcp.ipv6=no_route"),
            Ipv6Broken => f.write_str("net.ipv6=broken"),
            FamilyBlocked(fam) => write!(f, "tcp.blocked_family={fam}"),
            FamilyFailed(fam) => write!(f, "tcp.failed_family={fam}"),
            FamilyForged(fam) => write!(f, "dns.forged_family={fam}"),
            TcpFailure(x, addr) => write!(f, "tcp.failure={}@{addr}", x.name()),
            TcpControl(true) => f.write_str("tcp.control=ok"),
            TcpControl(false) => f.write_str("tcp.control=failed"),
            InterceptionCa(ca) => write!(f, "tls.interception_ca={ca}"),
            TlsVerification(name, addr) => write!(f, "tls.verification={name}@{addr}"),
            TlsLeaf(sha) => write!(f, "tls.leaf={sha}"),
            TlsIssuer(dn) => write!(f, "tls.issuer={dn}"),
            TlsControlLeaf(sha) => write!(f, "tls.control.leaf={sha}"),
            TlsControl(c) => f.write_str(match c {
                ControlTlsEvidence::Ok => "tls.control=ok",
                ControlTlsEvidence::Verified => "tls.control=verified",
                ControlTlsEvidence::Unverified => "tls.control=unverified",
                ControlTlsEvidence::Failed => "tls.control=failed",
            }),
            TlsFailure(x, addr) => write!(f, "tls.failure={}@{addr}", x.name()),
            TlsDecoy(DecoyResult::Ok, addr) => write!(f, "tls.decoy=ok@{addr}"),
            TlsDecoy(DecoyResult::Failed(name), addr) => write!(f, "tls.decoy={name}@{addr}"),
            Ab(kind, finding, addr) => {
                let kind = match kind {
                    AbKind::Tls => "tls",
                    AbKind::Http => "http",
                };
                write!(f, "ab.{kind}={}@{addr}", finding.as_str())
            }
            Blockpage(name) => write!(f, "http.blockpage={name}"),
            BlockpageHop(hop) => write!(f, "http.blockpage.hop={hop}"),
            HttpStatus {
                status,
                control: Some(c),
            } => write!(f, "http.status={status} control={c}"),
            HttpStatus {
                status,
                control: None,
            } => write!(f, "http.status={status}"),
            ServerSideRefusal => f.write_str("server_side_refusal"),
            CensorAtHop { hop, asn: None } => write!(f, "path.censor_hop={hop}"),
            CensorAtHop {
                hop,
                asn: Some(asn),
            } => write!(f, "path.censor_hop={hop} asn={asn}"),
            HopFailure { hop, failure, step } => {
                write!(f, "http.hop{hop}.failure={}@{step}", failure.name())
            }
            HttpDecoyHost(DecoyResult::Ok, addr) => write!(f, "http.decoy_host=ok@{addr}"),
            HttpDecoyHost(DecoyResult::Failed(name), addr) => {
                write!(f, "http.decoy_host={name}@{addr}")
            }
            HttpsWitness(result) => {
                f.write_str("http.https_witness=")?;
                page_result(f, result)
            }
            HttpControlOk => f.write_str("http.control=ok"),
            HttpControlDeadline => f.write_str("http.control=deadline_exceeded"),
            HttpControlFailedStep(step) => write!(f, "http.control.failed_step={step}"),
            BodyLength { probe, control } => {
                write!(f, "http.body_length={probe} control={control}")
            }
            Titles { probe, control } => write!(
                f,
                "http.title=\"{}\" control=\"{}\"",
                short_title(probe.as_deref()),
                short_title(control.as_deref())
            ),
            ThrottleReference(source) => f.write_str(match source {
                ReferenceSource::Anchors => "throttle.reference=anchors",
                ReferenceSource::Run => "throttle.reference=run",
                ReferenceSource::Both => "throttle.reference=anchors+run",
            }),
            ThrottleControl(figure, value) => {
                let key = match figure {
                    ThrottleFigure::HandshakeMs => "throttle.control_handshake_ms",
                    ThrottleFigure::ThroughputBps => "throttle.control_throughput_bps",
                };
                write!(f, "{key}={value:.0}")
            }
            Throttle {
                figure,
                value,
                baseline,
            } => {
                let key = match figure {
                    ThrottleFigure::HandshakeMs => "throttle.handshake_ms",
                    ThrottleFigure::ThroughputBps => "throttle.throughput_bps",
                };
                write!(f, "{key}={value:.0} baseline={baseline:.0}")
            }
        }
    }
}

/// The value of a page comparison line: `same_page`, `different_page status=N length=N
/// title="…"`, `NAME@STEP` or `NAME`.
fn page_result(f: &mut fmt::Formatter<'_>, result: &HttpsWitnessResult) -> fmt::Result {
    match result {
        HttpsWitnessResult::SamePage => f.write_str("same_page"),
        HttpsWitnessResult::DifferentPage {
            status,
            body_length,
            title,
        } => write!(
            f,
            "different_page status={status} length={body_length} title=\"{}\"",
            short_title(title.as_deref())
        ),
        HttpsWitnessResult::Unavailable(name, Some(step)) => write!(f, "{name}@{step}"),
        HttpsWitnessResult::Unavailable(name, None) => f.write_str(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AbName;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The JSON spelling is a contract with the collector and the docs: pin every key.
    #[test]
    fn every_variant_keeps_its_json_spelling() {
        let a = sa("198.18.0.10:443");
        let ip: IpAddr = "10.10.34.34".parse().unwrap();
        let cases: Vec<(Evidence, &str)> = vec![
            (Evidence::ControlUnavailable, "control=unavailable"),
            (
                Evidence::Anchors { ok: 0, tried: 3 },
                "connectivity.anchors=0/3",
            ),
            (Evidence::NetworkOffline, "failure=network_offline"),
            (Evidence::ResolverDead, "connectivity.resolver=dead"),
            (
                Evidence::Dns(DnsSource::Network, DnsResult::Failed("nxdomain".into())),
                "dns.network=nxdomain",
            ),
            (
                Evidence::Dns(DnsSource::ControlService, DnsResult::Addrs(2)),
                "dns.control=2 addrs",
            ),
            (
                Evidence::Dns(DnsSource::ControlResolver, DnsResult::Addrs(1)),
                "dns.control_resolver=1 addrs",
            ),
            (
                Evidence::ControlResolverFailed {
                    failure: "connection_reset",
                    resolver: "doh:resolver.lab@198.18.100.54:443".into(),
                },
                "dns.control_resolver.failed=connection_reset@doh:resolver.lab@198.18.100.54:443",
            ),
            (
                Evidence::DnsInjected {
                    first: "10.0.0.1".into(),
                    late: "198.18.0.10".into(),
                    after_ms: 12.4,
                },
                "dns.injected=first:10.0.0.1 late:198.18.0.10 +12ms",
            ),
            (
                Evidence::DnsBogon(vec![ip]),
                "dns.network.bogon=10.10.34.34",
            ),
            (Evidence::DnsControlBogonAll, "dns.control.bogon=all"),
            (
                Evidence::DnsConsistentByTls(a),
                "dns.consistent=tls_verified@198.18.0.10:443",
            ),
            (Evidence::DnsConsistentByPage, "dns.consistent=same_page"),
            (
                Evidence::DnsInconsistent {
                    network: vec![ip],
                    control: vec![a.ip()],
                },
                "dns.inconsistent=network:10.10.34.34 control:198.18.0.10",
            ),
            (
                Evidence::DnsRedirected {
                    network: vec![ip],
                    control: vec![a.ip()],
                },
                "dns.redirected=network:10.10.34.34 control:198.18.0.10",
            ),
            (
                Evidence::DnsControlAddressPage(HttpsWitnessResult::SamePage),
                "dns.control_address_page=same_page",
            ),
            (
                Evidence::DnsControlAddressPage(HttpsWitnessResult::DifferentPage {
                    status: 200,
                    body_length: 900,
                    title: Some("Site news".into()),
                }),
                "dns.control_address_page=different_page status=200 length=900 \
                 title=\"Site news\"",
            ),
            (
                Evidence::DnsControlAddressPage(HttpsWitnessResult::Unavailable(
                    "generic_timeout",
                    Some(Step::Tls),
                )),
                "dns.control_address_page=generic_timeout@tls",
            ),
            (
                Evidence::Ab(AbKind::Tls, AbFinding::NameDiffers(AbName::None), a),
                "ab.tls=name_differs@198.18.0.10:443",
            ),
            (
                Evidence::Ab(AbKind::Http, AbFinding::InnocentFailed, a),
                "ab.http=innocent_failed@198.18.0.10:443",
            ),
            (Evidence::TcpNoIpv6Route, "tcp.ipv6=no_route"),
            (Evidence::Ipv6Broken, "net.ipv6=broken"),
            (
                Evidence::FamilyBlocked(Family::Ipv6),
                "tcp.blocked_family=ipv6",
            ),
            (
                Evidence::FamilyFailed(Family::Ipv4),
                "tcp.failed_family=ipv4",
            ),
            (
                Evidence::FamilyForged(Family::Ipv6),
                "dns.forged_family=ipv6",
            ),
            (
                Evidence::TcpFailure(Failure::GenericTimeout, a),
                "tcp.failure=generic_timeout@198.18.0.10:443",
            ),
            (Evidence::TcpControl(true), "tcp.control=ok"),
            (Evidence::TcpControl(false), "tcp.control=failed"),
            (
                Evidence::InterceptionCa("Qaznet".into()),
                "tls.interception_ca=Qaznet",
            ),
            (
                Evidence::TlsVerification("ssl_invalid_certificate", a),
                "tls.verification=ssl_invalid_certificate@198.18.0.10:443",
            ),
            (Evidence::TlsLeaf("f0".into()), "tls.leaf=f0"),
            (Evidence::TlsIssuer("CN=X".into()), "tls.issuer=CN=X"),
            (Evidence::TlsControlLeaf("a1".into()), "tls.control.leaf=a1"),
            (
                Evidence::TlsControl(ControlTlsEvidence::Ok),
                "tls.control=ok",
            ),
            (
                Evidence::TlsControl(ControlTlsEvidence::Verified),
                "tls.control=verified",
            ),
            (
                Evidence::TlsControl(ControlTlsEvidence::Unverified),
                "tls.control=unverified",
            ),
            (
                Evidence::TlsControl(ControlTlsEvidence::Failed),
                "tls.control=failed",
            ),
            (
                Evidence::TlsFailure(Failure::ConnectionReset, a),
                "tls.failure=connection_reset@198.18.0.10:443",
            ),
            (
                Evidence::TlsDecoy(DecoyResult::Ok, a),
                "tls.decoy=ok@198.18.0.10:443",
            ),
            (
                Evidence::TlsDecoy(DecoyResult::Failed("generic_timeout"), a),
                "tls.decoy=generic_timeout@198.18.0.10:443",
            ),
            (Evidence::Blockpage("kz".into()), "http.blockpage=kz"),
            (Evidence::BlockpageHop(1), "http.blockpage.hop=1"),
            (
                Evidence::HttpStatus {
                    status: 200,
                    control: Some(403),
                },
                "http.status=200 control=403",
            ),
            (
                Evidence::HttpStatus {
                    status: 200,
                    control: None,
                },
                "http.status=200",
            ),
            (Evidence::ServerSideRefusal, "server_side_refusal"),
            (
                Evidence::HopFailure {
                    hop: 0,
                    failure: Failure::ConnectionReset,
                    step: Step::Http,
                },
                "http.hop0.failure=connection_reset@http",
            ),
            (
                Evidence::HttpDecoyHost(DecoyResult::Ok, sa("198.18.0.10:80")),
                "http.decoy_host=ok@198.18.0.10:80",
            ),
            (
                Evidence::HttpDecoyHost(DecoyResult::Failed("connection_reset"), a),
                "http.decoy_host=connection_reset@198.18.0.10:443",
            ),
            (
                Evidence::HttpsWitness(HttpsWitnessResult::SamePage),
                "http.https_witness=same_page",
            ),
            (
                Evidence::HttpsWitness(HttpsWitnessResult::DifferentPage {
                    status: 200,
                    body_length: 5120,
                    title: Some("News".into()),
                }),
                "http.https_witness=different_page status=200 length=5120 title=\"News\"",
            ),
            (
                Evidence::HttpsWitness(HttpsWitnessResult::Unavailable(
                    "connection_refused",
                    Some(Step::Tcp),
                )),
                "http.https_witness=connection_refused@tcp",
            ),
            (
                Evidence::HttpsWitness(HttpsWitnessResult::Unavailable("unverified", None)),
                "http.https_witness=unverified",
            ),
            (Evidence::HttpControlOk, "http.control=ok"),
            (
                Evidence::HttpControlDeadline,
                "http.control=deadline_exceeded",
            ),
            (
                Evidence::HttpControlFailedStep(Step::Tcp),
                "http.control.failed_step=tcp",
            ),
            (
                Evidence::BodyLength {
                    probe: 10,
                    control: 20,
                },
                "http.body_length=10 control=20",
            ),
            (
                Evidence::Titles {
                    probe: Some("A \"b\"".into()),
                    control: None,
                },
                "http.title=\"A 'b'\" control=\"\"",
            ),
            (
                Evidence::Throttle {
                    figure: ThrottleFigure::HandshakeMs,
                    value: 4300.0,
                    baseline: 40.0,
                },
                "throttle.handshake_ms=4300 baseline=40",
            ),
            (
                Evidence::Throttle {
                    figure: ThrottleFigure::ThroughputBps,
                    value: 65536.4,
                    baseline: 3e6,
                },
                "throttle.throughput_bps=65536 baseline=3000000",
            ),
            (
                Evidence::ThrottleReference(ReferenceSource::Both),
                "throttle.reference=anchors+run",
            ),
            (
                Evidence::ThrottleReference(ReferenceSource::Anchors),
                "throttle.reference=anchors",
            ),
            (
                Evidence::ThrottleReference(ReferenceSource::Run),
                "throttle.reference=run",
            ),
            (
                Evidence::ThrottleControl(ThrottleFigure::ThroughputBps, 6.67e8),
                "throttle.control_throughput_bps=667000000",
            ),
            (
                Evidence::ThrottleControl(ThrottleFigure::HandshakeMs, 12.0),
                "throttle.control_handshake_ms=12",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want, "{e:?}");
        }
    }
}
