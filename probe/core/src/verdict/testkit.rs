//! Builders for the verdict's table tests: one measurement per scenario, shared by the
//! stages' tests (a redirect into a TLS-blocked site is built on the accessible one).
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

use uuid::Uuid;

use super::facts::url_host;
use super::*;
use crate::failure::Failure;
use crate::model::{AbKind, AbName, AbObservation, AbTrial, AbTrigger};
use crate::model::{CertificateInfo, ConnectivitySummary, DnsAnswer, ProbeNetwork, Software};
use crate::model::{
    ControlResponse, DnsObservation, HttpObservation, HttpRole, LateDnsResponse, Method, QueryType,
    ResolverRole, Step, TcpObservation, TlsObservation,
};
use chrono::DateTime;
use ResolverRole::{Control, Network};

pub(super) const SITE: &str = "site.kz";
/// The site's real address (lab range, declared public, so not a bogon).
pub(super) const IP: &str = "198.18.0.10";
/// Another CDN address, handed only to the probe's network.
pub(super) const CDN_IP: &str = "198.18.5.5";
/// A censor's box: proxy, blockpage server or sinkhole.
pub(super) const BOX_IP: &str = "198.18.9.9";
/// A second site that the target redirects to.
pub(super) const OTHER_IP: &str = "198.18.7.7";
pub(super) const STATE_CA: &str = "Qaznet Trust Network";

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn sa(s: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(s), port)
}

pub(super) fn blank(url: &str) -> Measurement {
    Measurement {
        schema_version: 1,
        id: Uuid::from_u128(1),
        software: Software::default(),
        url: url.into(),
        domain: url_host(url).unwrap(),
        category_code: None,
        started_at: DateTime::from_timestamp(0, 0).unwrap(),
        runtime_ms: 0.0,
        probe: ProbeNetwork::default(),
        dns: vec![],
        tcp: vec![],
        tls: vec![],
        http: vec![],
        control: None,
        control_failure: None,
        path: None,
        ab: vec![],
        app: None,
        connectivity: ConnectivitySummary::default(),
        verdict: Verdict::new(Status::Inconclusive, None, "not analysed yet"),
    }
}

pub(super) fn dns_ok(role: ResolverRole, name: &str, ips: &[&str]) -> DnsObservation {
    DnsObservation {
        role,
        transport: if role == Network { "udp" } else { "doh" }.into(),
        resolver: "198.18.0.53:53".into(),
        query: name.into(),
        query_type: QueryType::A,
        t_ms: 0.0,
        duration_ms: 5.0,
        failure: None,
        rcode: Some("NOERROR".into()),
        answers: ips
            .iter()
            .map(|s| DnsAnswer {
                addr: ip(s),
                ttl: 60,
                bogon: false,
            })
            .collect(),
        cnames: vec![],
        late_responses: vec![],
    }
}

pub(super) fn dns_fail(role: ResolverRole, name: &str, failure: Failure) -> DnsObservation {
    let rcode = match failure {
        Failure::DnsNxdomain => Some("NXDOMAIN".into()),
        Failure::DnsNoAnswer => Some("NOERROR".into()),
        Failure::DnsServfail => Some("SERVFAIL".into()),
        _ => None,
    };
    DnsObservation {
        failure: Some(failure),
        rcode,
        answers: vec![],
        ..dns_ok(role, name, &[])
    }
}

pub(super) fn tcp(addr: SocketAddr, failure: Option<Failure>) -> TcpObservation {
    TcpObservation {
        addr,
        t_ms: 5.0,
        duration_ms: 20.0,
        failure,
    }
}

pub(super) fn cert(subject: &str, issuer: &str, sha: &str) -> CertificateInfo {
    CertificateInfo {
        subject: subject.into(),
        issuer: issuer.into(),
        sha256: sha.repeat(64 / sha.len()),
        spki_sha256: "ab".repeat(32),
        not_before: None,
        not_after: None,
        san: vec![SITE.into()],
    }
}

pub(super) fn tls_ok(addr: SocketAddr, ms: f64) -> TlsObservation {
    TlsObservation {
        addr,
        server_name: SITE.into(),
        decoy: false,
        t_ms: 25.0,
        duration_ms: ms,
        failure: None,
        tls_version: Some("TLSv1_3".into()),
        cipher_suite: Some("TLS13_AES_128_GCM_SHA256".into()),
        peer_certificates: vec![cert("CN=site.kz", "CN=R11, O=Let's Encrypt", "a1")],
        verification_failure: None,
        interception_ca: None,
    }
}

pub(super) fn tls_fail(addr: SocketAddr, failure: Failure) -> TlsObservation {
    TlsObservation {
        failure: Some(failure),
        tls_version: None,
        cipher_suite: None,
        peer_certificates: vec![],
        duration_ms: 10_000.0,
        ..tls_ok(addr, 0.0)
    }
}

/// A completed handshake whose chain does not verify; `ca` names a state interception CA.
pub(super) fn tls_unverified(addr: SocketAddr, why: Failure, ca: Option<&str>) -> TlsObservation {
    let issuer = match ca {
        Some(_) => "C=KZ, CN=Security Certificate",
        None => "CN=Some Other CA",
    };
    TlsObservation {
        peer_certificates: vec![cert("CN=site.kz", issuer, "f0")],
        verification_failure: Some(why),
        interception_ca: ca.map(str::to_string),
        ..tls_ok(addr, 45.0)
    }
}

pub(super) fn decoy(addr: SocketAddr, ok: bool) -> TlsObservation {
    let base = if ok {
        TlsObservation {
            verification_failure: Some(Failure::SslInvalidHostname),
            ..tls_ok(addr, 40.0)
        }
    } else {
        tls_fail(addr, Failure::GenericTimeout)
    };
    TlsObservation {
        server_name: "example.com".into(),
        decoy: true,
        ..base
    }
}

pub(super) fn page(
    hop: u32,
    url: &str,
    addr: SocketAddr,
    status: u16,
    len: u64,
    title: &str,
) -> HttpObservation {
    HttpObservation {
        hop,
        url: url.into(),
        addr: Some(addr),
        t_ms: 70.0,
        duration_ms: 100.0,
        failed_step: None,
        failure: None,
        status: Some(status),
        headers: vec![],
        title: (!title.is_empty()).then(|| title.to_string()),
        body_length: len,
        body_truncated: false,
        body_sha256: None,
        ttfb_ms: Some(50.0),
        body_ms: Some(20.0),
        throughput_bps: Some(len as f64 / 0.02),
        blockpage: None,
        location: None,
        role: Default::default(),
    }
}

pub(super) fn redirect(hop: u32, url: &str, addr: SocketAddr, to: &str) -> HttpObservation {
    HttpObservation {
        location: Some(to.into()),
        ..page(hop, url, addr, 301, 0, "")
    }
}

pub(super) fn hop_fail(
    hop: u32,
    url: &str,
    addr: Option<SocketAddr>,
    step: Step,
    failure: Failure,
) -> HttpObservation {
    HttpObservation {
        addr,
        failed_step: Some(step),
        failure: Some(failure),
        status: None,
        title: None,
        body_ms: None,
        throughput_bps: None,
        ttfb_ms: None,
        ..page(hop, url, sa(IP, 80), 0, 0, "")
    }
}

pub(super) fn control(
    dns: Vec<DnsObservation>,
    tcp: Vec<TcpObservation>,
    tls: Vec<TlsObservation>,
    http: Vec<HttpObservation>,
) -> ControlResponse {
    ControlResponse {
        software: Software::default(),
        measured_at: DateTime::from_timestamp(0, 0).unwrap(),
        dns,
        tcp,
        tls,
        http,
        age_secs: None,
    }
}

pub(super) fn no_control(m: &mut Measurement) {
    m.control = None;
    m.control_failure = Some("control service timed out".into());
}

pub(super) const HTTPS: &str = "https://site.kz/";
pub(super) const HTTP: &str = "http://site.kz/";

// ---- scenarios: one builder each --------------------------------------------------------

/// The real site over https, the same from the probe and the control.
pub(super) fn accessible_https() -> Measurement {
    let mut m = blank(HTTPS);
    m.dns = vec![dns_ok(Network, SITE, &[IP]), dns_ok(Control, SITE, &[IP])];
    m.tcp = vec![tcp(sa(IP, 443), None)];
    m.tls = vec![tls_ok(sa(IP, 443), 40.0)];
    m.http = vec![page(0, HTTPS, sa(IP, 443), 200, 50_000, "Site news")];
    m.control = Some(control(
        vec![dns_ok(Network, SITE, &[IP])],
        vec![tcp(sa(IP, 443), None)],
        vec![tls_ok(sa(IP, 443), 30.0)],
        vec![page(0, HTTPS, sa(IP, 443), 200, 52_000, "Site news")],
    ));
    m
}

/// The real site over cleartext http.
pub(super) fn accessible_http() -> Measurement {
    let mut m = blank(HTTP);
    m.dns = vec![dns_ok(Network, SITE, &[IP]), dns_ok(Control, SITE, &[IP])];
    m.tcp = vec![tcp(sa(IP, 80), None)];
    m.http = vec![page(0, HTTP, sa(IP, 80), 200, 50_000, "Site news")];
    m.control = Some(control(
        vec![dns_ok(Network, SITE, &[IP])],
        vec![tcp(sa(IP, 80), None)],
        vec![],
        vec![page(0, HTTP, sa(IP, 80), 200, 47_000, "Site news")],
    ));
    m
}

/// The engine stops after DNS when the network resolver gives nothing.
pub(super) fn without_steps_after_dns(mut m: Measurement) -> Measurement {
    m.tcp.clear();
    m.tls.clear();
    m.http.clear();
    m
}

pub(super) fn dns_nxdomain_with_control() -> Measurement {
    let mut m = without_steps_after_dns(accessible_https());
    m.dns = vec![
        dns_fail(Network, SITE, Failure::DnsNxdomain),
        dns_ok(Control, SITE, &[IP]),
    ];
    m
}

pub(super) fn dns_nxdomain_everywhere() -> Measurement {
    let mut m = without_steps_after_dns(accessible_https());
    m.dns = vec![
        dns_fail(Network, SITE, Failure::DnsNxdomain),
        dns_fail(Control, SITE, Failure::DnsNxdomain),
    ];
    m.control = Some(control(
        vec![dns_fail(Network, SITE, Failure::DnsNxdomain)],
        vec![],
        vec![],
        vec![],
    ));
    m
}

pub(super) fn dns_nxdomain_no_control() -> Measurement {
    let mut m = without_steps_after_dns(accessible_https());
    m.dns = vec![dns_fail(Network, SITE, Failure::DnsNxdomain)];
    no_control(&mut m);
    m
}

/// The network's resolver is dead for every name in the run: not a targeted block.
pub(super) fn dns_timeout_resolver_dead() -> Measurement {
    let mut m = dns_nxdomain_with_control();
    m.dns[0] = dns_fail(Network, SITE, Failure::DnsTimeout);
    m.connectivity.resolver_ok = Some(false);
    m
}

pub(super) fn dns_bogon() -> Measurement {
    let mut m = accessible_https();
    let mut obs = dns_ok(Network, SITE, &["10.10.34.34"]);
    obs.answers[0].bogon = true;
    m.dns[0] = obs;
    m.tcp = vec![tcp(sa("10.10.34.34", 443), Some(Failure::GenericTimeout))];
    m.tls.clear();
    m.http.clear();
    m
}

/// The site's own DNS points at a private address, for everyone.
pub(super) fn dns_bogon_everywhere() -> Measurement {
    let mut m = dns_bogon();
    m.dns.truncate(1);
    let mut c = dns_ok(Network, SITE, &["127.0.0.2"]);
    c.answers[0].bogon = true;
    m.control = Some(control(vec![c], vec![], vec![], vec![]));
    m
}

/// An injected answer raced the real one; the rest works, as the real answer won.
pub(super) fn dns_injected() -> Measurement {
    let mut m = accessible_https();
    m.dns[0].late_responses = vec![LateDnsResponse {
        after_ms: 12.0,
        rcode: "NOERROR".into(),
        answers: vec![ip(BOX_IP)],
    }];
    m
}

/// A CDN answers differently per vantage point; a verified handshake proves the address.
pub(super) fn dns_inconsistent_cdn_verified() -> Measurement {
    let mut m = accessible_https();
    m.dns[0] = dns_ok(Network, SITE, &[CDN_IP]);
    m.tcp = vec![tcp(sa(CDN_IP, 443), None)];
    m.tls = vec![tls_ok(sa(CDN_IP, 443), 35.0)];
    m.http = vec![page(0, HTTPS, sa(CDN_IP, 443), 200, 49_000, "Site news")];
    m
}

/// The network resolver points at a box that refuses connections.
pub(super) fn dns_inconsistent_failing() -> Measurement {
    let mut m = accessible_https();
    m.dns[0] = dns_ok(Network, SITE, &[BOX_IP]);
    m.tcp = vec![tcp(sa(BOX_IP, 443), Some(Failure::ConnectionRefused))];
    m.tls.clear();
    m.http.clear();
    m
}

/// The network resolver points an https site at a blockpage server with its own certificate.
pub(super) fn dns_inconsistent_blockpage() -> Measurement {
    let mut m = accessible_https();
    m.dns[0] = dns_ok(Network, SITE, &[BOX_IP]);
    m.tcp = vec![tcp(sa(BOX_IP, 443), None)];
    m.tls = vec![tls_unverified(
        sa(BOX_IP, 443),
        Failure::SslInvalidHostname,
        None,
    )];
    let mut bp = page(0, HTTPS, sa(BOX_IP, 443), 200, 900, "Доступ ограничен");
    bp.blockpage = Some("d_corp_kz_ps".into());
    m.http = vec![bp];
    m
}

/// DNS hijacked to a transparent proxy that relays the real page (cleartext).
pub(super) fn dns_hijack_transparent_proxy() -> Measurement {
    let mut m = accessible_http();
    m.dns[0] = dns_ok(Network, SITE, &[BOX_IP]);
    m.tcp = vec![tcp(sa(BOX_IP, 80), None)];
    m.http = vec![page(0, HTTP, sa(BOX_IP, 80), 200, 49_500, "Site news")];
    m
}

pub(super) fn tcp_blocked() -> Measurement {
    let mut m = accessible_https();
    m.tcp = vec![tcp(sa(IP, 443), Some(Failure::GenericTimeout))];
    m.tls.clear();
    m.http.clear();
    m
}

pub(super) fn tcp_down_everywhere() -> Measurement {
    let mut m = tcp_blocked();
    let c = m.control.as_mut().unwrap();
    c.tcp = vec![tcp(sa(IP, 443), Some(Failure::ConnectionRefused))];
    c.tls.clear();
    c.http.clear();
    m
}

pub(super) fn tcp_failure_control_unavailable() -> Measurement {
    let mut m = tcp_blocked();
    no_control(&mut m);
    m
}

/// An IPv6-only site, and a probe without an IPv6 route.
pub(super) fn tcp_ipv6_no_route() -> Measurement {
    let mut m = tcp_blocked();
    let v6 = "2001:67c:1234::10";
    let mut obs = dns_ok(Network, SITE, &[v6]);
    obs.query_type = QueryType::AAAA;
    m.dns = vec![dns_fail(Network, SITE, Failure::DnsNoAnswer), obs];
    m.tcp = vec![tcp(sa(v6, 443), Some(Failure::NetworkUnreachable))];
    let c = m.control.as_mut().unwrap();
    let mut cobs = dns_ok(Network, SITE, &[v6]);
    cobs.query_type = QueryType::AAAA;
    c.dns = vec![cobs];
    c.tcp = vec![tcp(sa(v6, 443), None)];
    m
}

pub(super) fn tls_reset_with_control() -> Measurement {
    let mut m = accessible_https();
    m.tls = vec![tls_fail(sa(IP, 443), Failure::ConnectionReset)];
    m.http.clear();
    m
}

pub(super) fn tls_timeout_no_control_decoy_ok() -> Measurement {
    let mut m = accessible_https();
    m.tls = vec![
        tls_fail(sa(IP, 443), Failure::GenericTimeout),
        decoy(sa(IP, 443), true),
    ];
    m.tcp.push(tcp(sa(IP, 443), None));
    m.http.clear();
    no_control(&mut m);
    m
}

/// The server answers the site's name with a TLS alert (`unrecognized_name`: it no longer
/// hosts it) and the decoy name with its default certificate: the server's doing.
pub(super) fn tls_alert_no_control_decoy_ok() -> Measurement {
    let mut m = tls_timeout_no_control_decoy_ok();
    m.tls[0].failure = Some(Failure::SslFailedHandshake);
    m
}

pub(super) fn tls_timeout_no_control_no_decoy() -> Measurement {
    let mut m = tls_timeout_no_control_decoy_ok();
    m.tls[1] = decoy(sa(IP, 443), false);
    m
}

pub(super) fn tls_timeout_everywhere() -> Measurement {
    let mut m = accessible_https();
    m.tls = vec![tls_fail(sa(IP, 443), Failure::GenericTimeout)];
    m.http.clear();
    let c = m.control.as_mut().unwrap();
    c.tls = vec![tls_fail(sa(IP, 443), Failure::GenericTimeout)];
    c.http.clear();
    m
}

/// The state CA intercepts; the engine still fetches the page over the intercepted link.
pub(super) fn mitm_state_ca_with_control() -> Measurement {
    let mut m = accessible_https();
    m.tls = vec![tls_unverified(
        sa(IP, 443),
        Failure::SslUnknownAuthority,
        Some(STATE_CA),
    )];
    m
}

pub(super) fn mitm_state_ca_no_control() -> Measurement {
    let mut m = mitm_state_ca_with_control();
    no_control(&mut m);
    m
}

/// One address verifies, another is intercepted by the state CA.
pub(super) fn mitm_state_ca_on_one_address() -> Measurement {
    let mut m = mitm_state_ca_with_control();
    m.dns[0] = dns_ok(Network, SITE, &[IP, CDN_IP]);
    m.tcp.push(tcp(sa(CDN_IP, 443), None));
    m.tls.push(tls_ok(sa(CDN_IP, 443), 40.0));
    m
}

pub(super) fn mitm_unverified_vs_control_verified() -> Measurement {
    let mut m = accessible_https();
    m.tls = vec![tls_unverified(
        sa(IP, 443),
        Failure::SslUnknownAuthority,
        None,
    )];
    m
}

pub(super) fn expired_cert_everywhere() -> Measurement {
    let mut m = accessible_https();
    m.tls = vec![tls_unverified(
        sa(IP, 443),
        Failure::SslInvalidCertificate,
        None,
    )];
    let c = m.control.as_mut().unwrap();
    c.tls = vec![tls_unverified(
        sa(IP, 443),
        Failure::SslInvalidCertificate,
        None,
    )];
    m
}

pub(super) fn http_reset_after_request() -> Measurement {
    let mut m = accessible_http();
    m.http = vec![hop_fail(
        0,
        HTTP,
        Some(sa(IP, 80)),
        Step::Http,
        Failure::ConnectionReset,
    )];
    m
}

pub(super) fn http_blockpage() -> Measurement {
    let mut m = accessible_http();
    let mut bp = page(0, HTTP, sa(IP, 80), 200, 1_200, "Ресурс заблокирован");
    bp.blockpage = Some("d_corp_kz_ps".into());
    m.http = vec![bp];
    m
}

/// A cleartext hop redirects to a blockpage host served over (valid) https.
pub(super) fn http_redirect_to_blockpage_server() -> Measurement {
    let mut m = accessible_http();
    let to = "https://blocked.example.kz/";
    let mut bp = page(1, to, sa(BOX_IP, 443), 200, 1_500, "Blocked");
    bp.blockpage = Some("d_corp_kz_ps".into());
    m.http = vec![redirect(0, HTTP, sa(IP, 80), to), bp];
    m
}

pub(super) fn http_page_differs() -> Measurement {
    let mut m = accessible_http();
    m.http = vec![page(0, HTTP, sa(IP, 80), 200, 1_000, "Доступ ограничен")];
    m
}

pub(super) fn http_no_control() -> Measurement {
    let mut m = accessible_http();
    no_control(&mut m);
    m
}

pub(super) fn https_403_verified() -> Measurement {
    let mut m = accessible_https();
    m.http = vec![page(0, HTTPS, sa(IP, 443), 403, 2_000, "Forbidden")];
    m
}

/// The site itself shows a notice that matches a blockpage signature, over verified TLS.
pub(super) fn https_blockpage_from_site_itself() -> Measurement {
    let mut m = accessible_https();
    m.http[0].blockpage = Some("d_corp_kz_ps".into());
    m
}

/// http -> https -> www, all fine, same for the control.
pub(super) fn redirect_chain_accessible() -> Measurement {
    let mut m = accessible_http();
    let (u1, u2) = ("https://site.kz/", "https://www.site.kz/");
    let chain = vec![
        redirect(0, HTTP, sa(IP, 80), u1),
        redirect(1, u1, sa(IP, 443), u2),
        page(2, u2, sa(IP, 443), 200, 50_000, "Site news"),
    ];
    m.http = chain.clone();
    m.control.as_mut().unwrap().http = chain;
    m
}

/// The site redirects to a video host whose handshake is reset here, not for the control.
pub(super) fn redirect_to_blocked_site() -> Measurement {
    let mut m = accessible_https();
    let to = "https://video.example/watch";
    m.http = vec![
        redirect(0, HTTPS, sa(IP, 443), to),
        hop_fail(
            1,
            to,
            Some(sa(OTHER_IP, 443)),
            Step::Tls,
            Failure::ConnectionReset,
        ),
    ];
    m.control.as_mut().unwrap().http = vec![
        redirect(0, HTTPS, sa(IP, 443), to),
        page(1, to, sa(OTHER_IP, 443), 200, 80_000, "Video"),
    ];
    m
}

pub(super) fn redirect_to_blocked_site_no_control() -> Measurement {
    let mut m = redirect_to_blocked_site();
    no_control(&mut m);
    m
}

pub(super) fn too_many_redirects_probe_only() -> Measurement {
    let mut m = accessible_http();
    m.http = vec![
        redirect(0, HTTP, sa(IP, 80), "http://site.kz/a"),
        redirect(1, "http://site.kz/a", sa(IP, 80), HTTP),
        hop_fail(2, HTTP, None, Step::Http, Failure::HttpTooManyRedirects),
    ];
    m
}

pub(super) fn too_many_redirects_everywhere() -> Measurement {
    let mut m = too_many_redirects_probe_only();
    m.control.as_mut().unwrap().http = m.http.clone();
    m
}

/// A hostile chain: every hop answered just under the step timeout, until the probe's total
/// deadline cut hop 3; the control loaded the page (its deadline is its own).
pub(super) fn deadline_redirect_chain() -> Measurement {
    let mut m = accessible_https();
    let (u1, u2, u3) = (
        "https://site.kz/hop/1",
        "https://site.kz/hop/2",
        "https://site.kz/hop/3",
    );
    m.http = vec![
        redirect(0, HTTPS, sa(IP, 443), u1),
        redirect(1, u1, sa(IP, 443), u2),
        redirect(2, u2, sa(IP, 443), u3),
        hop_fail(3, u3, None, Step::Http, Failure::DeadlineExceeded),
    ];
    m
}

pub(super) fn deadline_redirect_chain_no_control() -> Measurement {
    let mut m = deadline_redirect_chain();
    no_control(&mut m);
    m
}

pub(super) fn deadline_everywhere() -> Measurement {
    let mut m = deadline_redirect_chain();
    m.control.as_mut().unwrap().http = m.http.clone();
    m
}

/// The deadline cut the connects: one address refused, the other still connecting; the
/// control connected. One refused connect of two is no proof of a block.
pub(super) fn deadline_during_connect() -> Measurement {
    let mut m = accessible_https();
    m.tcp = vec![tcp(sa(IP, 443), Some(Failure::ConnectionRefused))];
    m.tls = vec![];
    m.http = vec![hop_fail(
        0,
        HTTPS,
        None,
        Step::Tcp,
        Failure::DeadlineExceeded,
    )];
    m
}

pub(super) fn throttled_handshake() -> Measurement {
    let mut m = accessible_https();
    m.tls = vec![tls_ok(sa(IP, 443), 4_300.0)];
    m
}

/// A large page read up to the body cap, as fast as other sites.
pub(super) fn large_fast_page() -> Measurement {
    let mut m = accessible_https();
    let mut p = page(0, HTTPS, sa(IP, 443), 200, 512 * 1024, "Big");
    p.body_truncated = true;
    p.body_ms = Some(200.0);
    p.throughput_bps = Some(512.0 * 1024.0 / 0.2);
    m.http = vec![p];
    m.control.as_mut().unwrap().http = vec![page(0, HTTPS, sa(IP, 443), 200, 3_000_000, "Big")];
    m
}

pub(super) fn throttled_throughput() -> Measurement {
    let mut m = large_fast_page();
    m.http[0].body_ms = Some(8_000.0);
    m.http[0].throughput_bps = Some(512.0 * 1024.0 / 8.0);
    m
}

pub(super) fn offline() -> Measurement {
    let mut m = tcp_blocked();
    m.connectivity.anchors_tried = 4;
    m
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Ctx {
    Plain,
    Offline,
    Baseline,
}

pub(super) fn ctx(c: Ctx) -> RunContext {
    match c {
        Ctx::Plain => RunContext::default(),
        Ctx::Offline => RunContext {
            offline: true,
            baseline: None,
        },
        Ctx::Baseline => RunContext {
            offline: false,
            baseline: Some(Baseline {
                tls_handshake_ms: 40.0,
                throughput_bps: Some(3_000_000.0),
                samples: 12,
            }),
        },
    }
}

pub(super) type Case = (
    &'static str,
    fn() -> Measurement,
    Ctx,
    Status,
    Option<Method>,
);

/// `builder context => status [/ method];`: the builder's name is the scenario's name.
macro_rules! cases {
    ($($build:ident $ctx:ident => $status:ident $(/ $method:ident)?;)*) => {
        &[$((
            stringify!($build),
            $build as fn() -> Measurement,
            Ctx::$ctx,
            Status::$status,
            cases!(@method $($method)?),
        ),)*]
    };
    (@method) => { None };
    (@method $m:ident) => { Some(Method::$m) };
}
pub(crate) use cases;

/// Decide every case and report every mismatch at once.
pub(super) fn check(cases: &[Case]) {
    let mut failures = Vec::new();
    for (name, build, c, status, method) in cases {
        let v = decide(&build(), &ctx(*c));
        if (v.status, v.method) != (*status, *method) {
            failures.push(format!(
                "{name} ({c:?}): want {status:?}/{method:?}, got {:?}/{:?}: {} {:?}",
                v.status, v.method, v.reason, v.evidence
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The verdict of one scenario.
pub(super) fn verdict_of(build: fn() -> Measurement, c: Ctx) -> Verdict {
    decide(&build(), &ctx(c))
}

/// Whether the verdict cites this exact evidence line.
pub(super) fn cites(v: &Verdict, line: &str) -> bool {
    v.evidence.iter().any(|e| e == line)
}

/// Every stage's cases.
pub(super) fn all_cases() -> Vec<Case> {
    [
        super::offline::tests::CASES,
        super::dns::tests::CASES,
        super::tcp::tests::CASES,
        super::tls::tests::CASES,
        super::http::tests::CASES,
        super::throttle::tests::CASES,
        super::family::tests::CASES,
        super::compare::tests::AB_CASES,
    ]
    .concat()
}

// ---- local evidence: decoy Host, the site's own HTTPS, redirect hops as targets ----------

/// An exchange made as local evidence, with its role.
pub(super) fn with_role(mut h: HttpObservation, role: HttpRole) -> HttpObservation {
    h.role = role;
    h
}

/// The neutral-Host request to the site's address was answered (the lab origin's 404 for a
/// name it does not serve).
pub(super) fn decoy_host_ok() -> HttpObservation {
    with_role(
        page(0, "http://example.com/", sa(IP, 80), 404, 120, "Not Found"),
        HttpRole::DecoyHost,
    )
}

/// A `Host:`-matching censor resets the request; the neutral-Host request is answered.
pub(super) fn http_host_reset_decoy_ok() -> Measurement {
    let mut m = http_reset_after_request();
    m.tcp.push(tcp(sa(IP, 80), None));
    m.http.push(decoy_host_ok());
    m
}

pub(super) fn http_host_reset_decoy_ok_no_control() -> Measurement {
    let mut m = http_host_reset_decoy_ok();
    no_control(&mut m);
    m
}

/// The real Host times out and the neutral one is answered: a slow site looks the same, so
/// no proof.
pub(super) fn http_host_timeout_decoy_ok_no_control() -> Measurement {
    let mut m = http_host_reset_decoy_ok_no_control();
    m.http[0].failure = Some(Failure::GenericTimeout);
    m
}

/// Every request to the address is reset, whatever the Host: nothing tells a block from a
/// broken server.
pub(super) fn http_host_reset_decoy_reset_no_control() -> Measurement {
    let mut m = http_host_reset_decoy_ok_no_control();
    m.http[1] = with_role(
        hop_fail(
            0,
            "http://example.com/",
            Some(sa(IP, 80)),
            Step::Http,
            Failure::ConnectionReset,
        ),
        HttpRole::DecoyHost,
    );
    m
}

/// The site's own page over verified HTTPS, recorded as the witness for its cleartext page.
pub(super) fn with_https_witness(mut m: Measurement, title: &str, len: u64) -> Measurement {
    m.tcp.push(tcp(sa(IP, 443), None));
    m.tls.push(tls_ok(sa(IP, 443), 40.0));
    m.http.push(with_role(
        page(0, HTTPS, sa(IP, 443), 200, len, title),
        HttpRole::HttpsWitness,
    ));
    m
}

/// The censor replaced the cleartext page with a 200 notice no signature knows; no control,
/// but the site's own HTTPS page is untouched.
pub(super) fn http_notice_no_control_https_witness() -> Measurement {
    let mut m = http_page_differs();
    no_control(&mut m);
    with_https_witness(m, "Site news", 50_000)
}

/// The same notice, with the control up: the control and the witness both disagree with it.
pub(super) fn http_notice_https_witness() -> Measurement {
    with_https_witness(http_page_differs(), "Site news", 50_000)
}

/// No control, and the cleartext page is the site's own page over verified HTTPS.
pub(super) fn http_no_control_https_witness_same() -> Measurement {
    with_https_witness(http_no_control(), "Site news", 49_000)
}

/// The witness's certificate does not verify: it witnesses nothing.
pub(super) fn http_notice_no_control_https_unverified() -> Measurement {
    let mut m = http_notice_no_control_https_witness();
    let last = m.tls.len() - 1;
    m.tls[last] = tls_unverified(sa(IP, 443), Failure::SslUnknownAuthority, None);
    m
}

/// The witness could not be fetched (no HTTPS on the site): no more than before.
pub(super) fn http_notice_no_control_https_refused() -> Measurement {
    let mut m = http_page_differs();
    no_control(&mut m);
    m.tcp
        .push(tcp(sa(IP, 443), Some(Failure::ConnectionRefused)));
    m.http.push(with_role(
        hop_fail(0, HTTPS, None, Step::Tcp, Failure::ConnectionRefused),
        HttpRole::HttpsWitness,
    ));
    m
}

/// The site shows this network a challenge page (the control gets the real page), and shows
/// it over verified HTTPS too: the site's own doing.
pub(super) fn http_challenge_from_site_itself() -> Measurement {
    let mut m = accessible_http();
    m.http = vec![page(0, HTTP, sa(IP, 80), 403, 3_000, "Just a moment...")];
    let mut m = with_https_witness(m, "Just a moment...", 3_100);
    let last = m.http.len() - 1;
    m.http[last].status = Some(403);
    m
}

/// An https chain that loops for this network only, every hop over verified TLS: the site's
/// own broken redirect.
pub(super) fn https_redirect_loop_verified() -> Measurement {
    let mut m = accessible_https();
    let a = "https://site.kz/a";
    m.http = vec![
        redirect(0, HTTPS, sa(IP, 443), a),
        redirect(1, a, sa(IP, 443), HTTPS),
        hop_fail(2, HTTPS, None, Step::Http, Failure::HttpTooManyRedirects),
    ];
    m
}

/// A cleartext chain that loops for this network only, and loops the same way over verified
/// HTTPS.
pub(super) fn http_redirect_loop_https_witness_same() -> Measurement {
    let mut m = too_many_redirects_probe_only();
    let a = "https://site.kz/a";
    m.tcp.push(tcp(sa(IP, 443), None));
    m.tls.push(tls_ok(sa(IP, 443), 40.0));
    for h in [
        redirect(0, HTTPS, sa(IP, 443), a),
        redirect(1, a, sa(IP, 443), HTTPS),
        hop_fail(2, HTTPS, None, Step::Http, Failure::HttpTooManyRedirects),
    ] {
        m.http.push(with_role(h, HttpRole::HttpsWitness));
    }
    m
}

/// A redirect into a site whose handshake is reset by SNI, no control: the hop's own
/// handshakes are recorded, and its decoy handshake went through.
pub(super) fn redirect_to_sni_blocked_no_control() -> Measurement {
    let mut m = redirect_to_blocked_site_no_control();
    m.tcp.push(tcp(sa(OTHER_IP, 443), None));
    m.tcp.push(tcp(sa(OTHER_IP, 443), None));
    m.tls.push(TlsObservation {
        server_name: "video.example".into(),
        ..tls_fail(sa(OTHER_IP, 443), Failure::ConnectionReset)
    });
    m.tls.push(decoy(sa(OTHER_IP, 443), true));
    m
}

// ---- two DNS answers, two fetches ----------------------------------------------------------

/// The page fetched again from the encrypted resolver's address (the site's real one).
pub(super) fn with_control_address_page(
    mut m: Measurement,
    url: &str,
    port: u16,
    title: &str,
    len: u64,
) -> Measurement {
    m.tcp.push(tcp(sa(IP, port), None));
    if port == 443 {
        m.tls.push(tls_ok(sa(IP, 443), 40.0));
    }
    m.http.push(with_role(
        page(0, url, sa(IP, port), 200, len, title),
        HttpRole::ControlAddress,
    ));
    m
}

/// DNS sent the name to a transparent proxy that relays the real page; no control, but the
/// page fetched from the encrypted resolver's address is the same.
pub(super) fn dns_relay_no_control_same_page() -> Measurement {
    let mut m = dns_hijack_transparent_proxy();
    no_control(&mut m);
    with_control_address_page(m, HTTP, 80, "Site news", 50_000)
}

/// The same relay with the control up: the control's page and the second fetch agree.
pub(super) fn dns_relay_same_page() -> Measurement {
    with_control_address_page(
        dns_hijack_transparent_proxy(),
        HTTP,
        80,
        "Site news",
        50_000,
    )
}

/// DNS sent the name to a box that answers a 200 notice no signature knows; no control, and
/// the encrypted resolver's address serves the real page.
pub(super) fn dns_notice_no_control() -> Measurement {
    let mut m = dns_relay_no_control_same_page();
    m.http[0] = page(0, HTTP, sa(BOX_IP, 80), 200, 1_200, "Service notice");
    m
}

/// The same notice with the control up.
pub(super) fn dns_notice() -> Measurement {
    let mut m = dns_relay_same_page();
    m.http[0] = page(0, HTTP, sa(BOX_IP, 80), 200, 1_200, "Service notice");
    m
}

/// The network's answer is a sinkhole that refuses connections; no control, and the encrypted
/// resolver's address serves the page.
pub(super) fn dns_sinkhole_no_control() -> Measurement {
    let mut m = dns_notice_no_control();
    m.tcp[0] = tcp(sa(BOX_IP, 80), Some(Failure::ConnectionRefused));
    m.http.remove(0);
    m
}

/// A CDN gives this network another address, which serves the page; the encrypted resolver's
/// address cannot be reached from here, and there is no control: nothing to compare with.
pub(super) fn dns_cdn_other_address_unreachable_no_control() -> Measurement {
    let mut m = accessible_http();
    m.dns[0] = dns_ok(Network, SITE, &[CDN_IP]);
    m.tcp = vec![
        tcp(sa(CDN_IP, 80), None),
        tcp(sa(IP, 80), Some(Failure::GenericTimeout)),
    ];
    m.http = vec![
        page(0, HTTP, sa(CDN_IP, 80), 200, 49_000, "Site news"),
        with_role(
            hop_fail(0, HTTP, None, Step::Tcp, Failure::GenericTimeout),
            HttpRole::ControlAddress,
        ),
    ];
    no_control(&mut m);
    m
}

/// A CDN gives this network another address, and the site's name is cut by SNI at every
/// address (the encrypted resolver's too), no control: the addresses are not what fails, so
/// the decoy handshake decides (`tls`), never `dns`.
pub(super) fn dns_cdn_sni_blocked_everywhere_no_control() -> Measurement {
    let mut m = accessible_https();
    m.dns[0] = dns_ok(Network, SITE, &[CDN_IP]);
    m.tcp = vec![
        tcp(sa(CDN_IP, 443), None),
        tcp(sa(CDN_IP, 443), None),
        tcp(sa(IP, 443), None),
        tcp(sa(IP, 443), None),
    ];
    m.tls = vec![
        tls_fail(sa(CDN_IP, 443), Failure::GenericTimeout),
        decoy(sa(CDN_IP, 443), true),
        tls_fail(sa(IP, 443), Failure::GenericTimeout),
        decoy(sa(IP, 443), true),
    ];
    m.http = vec![with_role(
        hop_fail(0, HTTPS, None, Step::Tls, Failure::GenericTimeout),
        HttpRole::ControlAddress,
    )];
    no_control(&mut m);
    m
}

/// An encrypted resolver network: DoH reset by the censor, DoT answered.
pub(super) fn dns_nxdomain_doh_blocked() -> Measurement {
    let mut m = dns_nxdomain_with_control();
    m.connectivity.control_resolvers = vec![
        crate::model::ResolverCheck {
            transport: "doh".into(),
            resolver: "resolver.lab@198.18.100.54:443".into(),
            duration_ms: 3.0,
            failure: Some(Failure::ConnectionReset),
        },
        crate::model::ResolverCheck {
            transport: "dot".into(),
            resolver: "resolver.lab@198.18.100.54:853".into(),
            duration_ms: 9.0,
            failure: None,
        },
    ];
    m
}

// ---- the A/B test: the site's name against an innocent one, same server ------------------

/// One A/B trial: `ok` answered (for TLS with a chain valid for the site when `valid`).
pub(super) fn ab_trial(sent: AbName, ok: bool, valid: bool) -> AbTrial {
    AbTrial {
        sent,
        t_ms: 100.0,
        duration_ms: 12.0,
        failure: (!ok).then_some(Failure::ConnectionReset),
        leaf_sha256: ok.then(|| "c3".repeat(32)),
        valid_for_site: ok.then_some(valid),
        interception_ca: None,
        status: None,
        blockpage: None,
    }
}

/// An A/B test at `addr` with these trials (innocent, no SNI, then the site's repeat).
pub(super) fn ab_test(
    kind: AbKind,
    addr: SocketAddr,
    trigger: AbTrigger,
    trials: Vec<AbTrial>,
) -> AbObservation {
    AbObservation {
        kind,
        addr,
        name: SITE.into(),
        innocent: "example.com".into(),
        trigger,
        trials,
        t_ms: 90.0,
        duration_ms: 40.0,
    }
}

/// TLS reset after the ClientHello, no control, the decoy (`example.com`) reset too (a censor
/// that blocks the innocent name as well); the nameless ClientHello is answered and the site's
/// name is reset again.
pub(super) fn ab_tls_reset_no_control_name_differs() -> Measurement {
    let mut m = tls_timeout_no_control_no_decoy();
    m.tls[0].failure = Some(Failure::ConnectionReset);
    m.ab = vec![ab_test(
        AbKind::Tls,
        sa(IP, 443),
        AbTrigger::Reset,
        vec![
            ab_trial(AbName::Innocent, false, false),
            ab_trial(AbName::None, true, true),
            ab_trial(AbName::Site, false, false),
        ],
    )];
    m
}

/// Same, every innocent handshake failed too: nothing about the name.
pub(super) fn ab_tls_timeout_no_control_innocent_failed() -> Measurement {
    let mut m = tls_timeout_no_control_no_decoy();
    m.ab = vec![ab_test(
        AbKind::Tls,
        sa(IP, 443),
        AbTrigger::Timeout,
        vec![
            ab_trial(AbName::Innocent, false, false),
            ab_trial(AbName::None, false, false),
        ],
    )];
    m
}

/// The decoy handshake worked, but the site's name was answered when repeated: a flaky
/// server, not the name.
pub(super) fn ab_tls_timeout_no_control_site_answered() -> Measurement {
    let mut m = tls_timeout_no_control_decoy_ok();
    m.ab = vec![ab_test(
        AbKind::Tls,
        sa(IP, 443),
        AbTrigger::Timeout,
        vec![
            ab_trial(AbName::Innocent, true, false),
            ab_trial(AbName::None, true, true),
            ab_trial(AbName::Site, true, true),
        ],
    )];
    m
}

/// Cut before the site's name was repeated: no proof, no decoy.
pub(super) fn ab_tls_timeout_no_control_incomplete() -> Measurement {
    let mut m = ab_tls_reset_no_control_name_differs();
    m.ab[0].trials.pop();
    m
}

/// The control's handshake failed too (`down`): the A/B difference is cited, and changes
/// nothing (a server that routes by SNI to a dead backend looks the same).
pub(super) fn ab_tls_down_with_control_name_differs() -> Measurement {
    let mut m = tls_timeout_everywhere();
    m.ab = ab_tls_reset_no_control_name_differs().ab;
    m
}

/// The control completed the handshake: `blocked` as before, with the A/B cited.
pub(super) fn ab_tls_reset_with_control_name_differs() -> Measurement {
    let mut m = tls_reset_with_control();
    m.ab = ab_tls_reset_no_control_name_differs().ab;
    m
}

/// A certificate from an unknown CA for the site's name, no control; the same server proves
/// the site's name to a nameless ClientHello, and the site's name gets the forged one again.
pub(super) fn ab_forged_certificate_no_control() -> Measurement {
    let mut m = mitm_unverified_vs_control_verified();
    no_control(&mut m);
    m.ab = vec![ab_test(
        AbKind::Tls,
        sa(IP, 443),
        AbTrigger::ForgedCertificate,
        vec![
            ab_trial(AbName::Innocent, true, false),
            ab_trial(AbName::None, true, true),
            ab_trial(AbName::Site, true, false),
        ],
    )];
    m
}

/// The innocent handshakes got certificates, none valid for the site: a server presents one
/// per name, so nothing is proved.
pub(super) fn ab_forged_certificate_no_control_other_certificate() -> Measurement {
    let mut m = ab_forged_certificate_no_control();
    m.ab[0].trials[1].valid_for_site = Some(false);
    m
}

/// The site's certificate is invalid for the control too (`down`): the A/B changes nothing.
pub(super) fn ab_expired_everywhere_certificate_differs() -> Measurement {
    let mut m = expired_cert_everywhere();
    m.ab = ab_forged_certificate_no_control().ab;
    m
}

/// A `Host:` reset, no control, no decoy-Host request; the innocent Host is answered, and the
/// site's Host is reset again.
pub(super) fn ab_http_reset_no_control_name_differs() -> Measurement {
    let mut m = http_reset_after_request();
    no_control(&mut m);
    m.ab = vec![ab_test(
        AbKind::Http,
        sa(IP, 80),
        AbTrigger::Reset,
        vec![
            ab_trial(AbName::Innocent, true, false),
            ab_trial(AbName::Site, false, false),
        ],
    )];
    m
}

/// The same with a timeout: a site's own virtual host can hang, so no proof.
pub(super) fn ab_http_timeout_no_control_name_differs() -> Measurement {
    let mut m = ab_http_reset_no_control_name_differs();
    m.http[0].failure = Some(Failure::GenericTimeout);
    m.ab[0].trigger = AbTrigger::Timeout;
    m
}

/// The decoy Host was answered, but so was the site's Host when repeated: not the name.
pub(super) fn ab_http_reset_no_control_site_answered() -> Measurement {
    let mut m = http_host_reset_decoy_ok_no_control();
    m.ab = ab_http_reset_no_control_name_differs().ab;
    m.ab[0].trials[1] = ab_trial(AbName::Site, true, false);
    m
}

/// Every Host is reset at that address: nothing about the name.
pub(super) fn ab_http_reset_no_control_innocent_failed() -> Measurement {
    let mut m = ab_http_reset_no_control_name_differs();
    m.ab[0].trials = vec![ab_trial(AbName::Innocent, false, false)];
    m
}

/// A blockpage for the site's Host, the server's own answer for the innocent one: blocked by
/// the blockpage, the A/B cited.
pub(super) fn ab_http_blockpage_name_differs() -> Measurement {
    let mut m = accessible_http();
    no_control(&mut m);
    m.http[0].blockpage = Some("kz-test".into());
    m.ab = vec![ab_test(
        AbKind::Http,
        sa(IP, 80),
        AbTrigger::Blockpage,
        vec![
            ab_trial(AbName::Innocent, true, false),
            ab_trial(AbName::Site, false, false),
        ],
    )];
    m
}
