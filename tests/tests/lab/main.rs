//! The censorship lab: the real `witness` and `witness-collector` binaries in a small internet
//! of network namespaces, censored by the kernel (nftables, iptables string match, htb), a
//! lying dnsmasq, a DNS injector and the censor's userspace boxes (transparent proxy, TLS
//! interception). Every scenario is a site with one expected verdict; see `docs/lab.md`.
//!
//! Needs root and `ip netns`; without them it skips, loudly. In CI (root,
//! `WITNESS_REQUIRE_TOOLS=1`) a missing tool is a failure.
//!
//! Six client networks run at once, each behind its own ISP:
//! - AS9198 (ISP 1): every technique, with the control; most scenarios, one probe run.
//! - AS21299 (ISP 2): another censor, so the collector must raise a block for one network only.
//! - AS41798 (ISP 3): the censor also blocks the collector: no control, no upload (one probe
//!   without an encrypted resolver, one with it).
//! - AS29355 (ISP 4): a shutdown; `witness daemon` spools, then uploads once the link is back.
//! - AS48716 (ISP 5): DoH and DoT blocked.
//! - AS64512 (ISP 6): no censor, a slow line; one site on it throttled.
//!
//! One test binary, `lab`: cargo builds `tests/lab/main.rs` as the test and the files beside it
//! as its modules (not as tests of their own); nothing else includes them.

mod dualstack;
mod fleet;
mod hops;
mod judge;
mod netlab;
mod probes;
mod topology;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use witness_core::model::{Measurement, Method, Status};
use witness_tests::{collector_bin, witness_bin};

use judge::{Expect, Outcome, Row};
use netlab::{report, Lab};
use probes::ProbeFiles;
use topology::{
    expired_cert, forbidden, redirect, Censor, Internet, Network, Site, Technique, LAB_RANGE,
};
use witness_core::model::ResolverRole;
use Technique::*;

/// Step timeout given to every probe (`--timeout`): room for the handshake-delay relay's
/// 2.6 s and a loaded machine's second.
const PROBE_TIMEOUT_SECS: &str = "5";
/// A page large enough to be cut at the probe's 512 KiB body cap.
const LARGE_PAGE: usize = 2 * 1024 * 1024;
/// The throttled page: over the probe's 64 KiB throughput minimum, and read in about 1.3 s at
/// 1 mbit, well inside the 5 s step timeout.
const THROTTLED_PAGE: usize = 160 * 1024;
/// The anchors' reference page: large enough (over the 64 KiB throughput minimum) to measure
/// the line, small enough to move in about 1 s on the slow line.
const ANCHOR_PAGE: usize = 256 * 1024;
/// The single-URL runs' (and ISP 3's list's) throttled page: large enough that htb's coarse shaping of 64 KiB GSO
/// packets averages out to the class's rate (a 160 KiB page came through at twice it), read in
/// about 3 s at 1 mbit, inside the 5 s step timeout.
const SINGLE_THROTTLED_PAGE: usize = 384 * 1024;
/// The throttled site on the slow line: over the probe's 64 KiB throughput minimum, read in
/// about 2.7 s at the throttled rate, inside the 5 s step timeout.
const SLOW_LINE_THROTTLED_PAGE: usize = 66 * 1024;
/// The IDN site as a list writes it.
const IDN_URL: &str = "https://пример-сайт.lab/";

/// The networks' AS numbers (from the Kazakh context: Kazakhtelecom, Beeline, Transtelecom,
/// Kcell).
const ASN_MAIN: u32 = 9198;
const ASN_OTHER: u32 = 21299;
const ASN_NO_CONTROL: u32 = 41798;
const ASN_SHUTDOWN: u32 = 29355;
const ASN_NO_ENCRYPTED_DNS: u32 = 48716;
/// The slow line's network: a private-use AS number (no real network is meant).
const ASN_SLOW_LINE: u32 = 64512;

/// One scenario of the main network (ISP 1): the URL the probe measures, what ISP 1 does to
/// its host, and the verdict the probe must give.
struct Scenario {
    name: &'static str,
    url: String,
    censor: Vec<Technique>,
    expect: Expect,
    /// A wrong verdict that is a known probe bug: reported, does not fail the run.
    known_bug: Option<&'static str>,
}

fn scenario(name: &'static str, url: &str, censor: &[Technique], expect: Expect) -> Scenario {
    Scenario {
        name,
        url: url.to_owned(),
        censor: censor.to_vec(),
        expect,
        known_bug: None,
    }
}

/// The large page was read up to the probe's body cap (512 KiB), not to its end.
fn read_to_body_cap(m: &Measurement) -> Option<String> {
    match m.http.last() {
        Some(h) if h.body_truncated && h.body_length == 512 * 1024 => None,
        Some(h) => Some(format!(
            "body of {} bytes, truncated: {}",
            h.body_length, h.body_truncated
        )),
        None => Some("no HTTP exchange".to_owned()),
    }
}

/// http -> https -> www: three hops, the last one the page.
fn three_hops(m: &Measurement) -> Option<String> {
    let statuses: Vec<Option<u16>> = m.http.iter().map(|h| h.status).collect();
    (statuses != [Some(301), Some(302), Some(200)]).then(|| format!("hops {statuses:?}"))
}

/// The record keeps the URL as listed (Unicode) and measures the punycode name.
fn idn_as_listed(m: &Measurement) -> Option<String> {
    (m.url != IDN_URL || !m.domain.starts_with("xn--"))
        .then(|| format!("url {} domain {}", m.url, m.domain))
}

fn ascii_host(url: &str) -> String {
    witness_core::targets::Target::from_url(url, "lab")
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .domain
}

/// What the lab internet serves: one origin per host (each on its own address unless hosted
/// with another), the honest resolver's zone.
fn sites() -> Vec<Site> {
    vec![
        Site::both("open.lab"),
        Site::http("open-http.lab"),
        Site::https("large-1.lab").size(LARGE_PAGE),
        Site::https("large-2.lab").size(LARGE_PAGE),
        Site::https("large-3.lab").size(LARGE_PAGE),
        Site::https(&ascii_host(IDN_URL)),
        Site::both("redirect-chain.lab")
            .http_does(redirect(301, "https://redirect-chain.lab/"))
            .https_does(redirect(302, "https://www.redirect-chain.lab/welcome")),
        Site::https("www.redirect-chain.lab").hosted_with("redirect-chain.lab"),
        Site::https("dns-nxdomain.lab"),
        Site::https("dns-bogon.lab"),
        Site::http("dns-blockpage-http.lab"),
        Site::https("dns-blockpage-https.lab"),
        Site::https("dnsdrop.lab"),
        Site::https("dnsinject.lab"),
        Site::http("dns-hijack.lab"),
        Site::http("dns-notice.lab"),
        Site::https("tcp-blackhole.lab"),
        Site::https("tcp-rst.lab"),
        Site::both("tcp-port443.lab"),
        Site::https("tls-sni-reset.lab"),
        Site::https("tls-sni-timeout.lab"),
        Site::https("sni-neighbour.lab").hosted_with("tls-sni-timeout.lab"),
        Site::https("mitm-state-ca.lab"),
        Site::https("mitm-neighbour.lab").hosted_with("mitm-state-ca.lab"),
        Site::http("http-blockpage.lab"),
        Site::http("http-host-reset.lab"),
        Site::both("http-notice.lab"),
        Site::https("throttled.lab").size(THROTTLED_PAGE),
        Site::https("slow-handshake.lab"),
        Site::https("throttled-single.lab").size(SINGLE_THROTTLED_PAGE),
        Site::https("throttled-list.lab").size(SINGLE_THROTTLED_PAGE),
        Site::https("slow-line-throttled.lab").size(SLOW_LINE_THROTTLED_PAGE),
        Site::https("anchor.lab").size(ANCHOR_PAGE),
        Site::https("anchor-2.lab").size(ANCHOR_PAGE),
        Site::https("redirect-to-blocked.lab")
            .https_does(redirect(302, "https://tls-sni-reset.lab/")),
        Site::nothing("down-closed.lab"),
        Site::https("down-nxdomain.lab").not_in_dns(),
        Site::https("down-expired.lab").https_does(expired_cert()),
        Site::https("server-403.lab").https_does(forbidden()),
        Site::https("isp2-blocked.lab"),
    ]
}

/// The main network's scenarios: one probe run measures them all at once (each host has its
/// own address, so the techniques do not interfere).
fn scenarios() -> Vec<Scenario> {
    let blocked = Expect::blocked;
    let accessible = Expect::accessible();
    vec![
        scenario("accessible_https", "https://open.lab/", &[], accessible),
        scenario("accessible_http", "http://open-http.lab/", &[], accessible),
        scenario(
            "large_page_not_throttled",
            "https://large-1.lab/",
            &[],
            accessible.check(read_to_body_cap),
        ),
        scenario("large_page_2", "https://large-2.lab/", &[], accessible),
        scenario("large_page_3", "https://large-3.lab/", &[], accessible),
        scenario("idn_domain", IDN_URL, &[], accessible.check(idn_as_listed)),
        scenario(
            "redirect_chain_accessible",
            "http://redirect-chain.lab/",
            &[],
            accessible.check(three_hops),
        ),
        scenario(
            "dns_nxdomain",
            "https://dns-nxdomain.lab/",
            &[DnsNxdomain],
            blocked(Method::Dns).evidence(&["dns.network=nxdomain"]),
        ),
        scenario(
            "dns_bogon",
            "https://dns-bogon.lab/",
            &[DnsBogon],
            blocked(Method::Dns).evidence(&["dns.network.bogon=10.10.34.34"]),
        ),
        scenario(
            "dns_blockpage_http",
            "http://dns-blockpage-http.lab/",
            &[DnsToBlockpage],
            blocked(Method::Dns).evidence(&["dns.inconsistent=", "http.blockpage="]),
        ),
        scenario(
            "dns_blockpage_https",
            "https://dns-blockpage-https.lab/",
            &[DnsToBlockpage],
            blocked(Method::Dns).evidence(&["dns.inconsistent=", "http.blockpage="]),
        ),
        scenario(
            "dns_query_dropped",
            "https://dnsdrop.lab/",
            &[DnsDrop],
            blocked(Method::Dns).evidence(&["dns.network=timeout"]),
        ),
        scenario(
            "dns_injected",
            "https://dnsinject.lab/",
            &[DnsInject],
            blocked(Method::Dns).evidence(&["dns.injected="]),
        ),
        scenario(
            "dns_hijack_transparent_proxy",
            "http://dns-hijack.lab/",
            &[DnsToProxy],
            accessible.evidence(&[
                "dns.consistent=same_page",
                "dns.redirected=network:198.18.11.8",
                "dns.control_address_page=same_page",
            ]),
        ),
        scenario(
            "dns_to_notice",
            "http://dns-notice.lab/",
            &[DnsToNotice],
            blocked(Method::Dns).evidence(&[
                "dns.inconsistent=network:198.18.11.8",
                "dns.control_address_page=different_page status=200",
            ]),
        ),
        scenario(
            "tcp_blackhole",
            "https://tcp-blackhole.lab/",
            &[TcpBlackhole],
            blocked(Method::Tcp).evidence(&["tcp.failure=generic_timeout", "tcp.control=ok"]),
        ),
        scenario(
            "tcp_rst_on_syn",
            "https://tcp-rst.lab/",
            &[TcpRstOnSyn],
            blocked(Method::Tcp).evidence(&["tcp.failure=connection_refused", "tcp.control=ok"]),
        ),
        scenario(
            "tcp_port_443_blocked",
            "https://tcp-port443.lab/",
            &[TcpDropPort(443)],
            blocked(Method::Tcp).evidence(&["tcp.failure=generic_timeout", "tcp.control=ok"]),
        ),
        scenario(
            "tcp_port_443_blocked_http_ok",
            "http://tcp-port443.lab/",
            &[],
            accessible,
        ),
        scenario(
            "tls_sni_reset",
            "https://tls-sni-reset.lab/",
            &[SniReset],
            blocked(Method::Tls).evidence(&[
                "tls.failure=connection_reset",
                "tls.decoy=ok",
                "tls.control=ok",
            ]),
        ),
        scenario(
            "tls_sni_timeout",
            "https://tls-sni-timeout.lab/",
            &[SniDrop],
            blocked(Method::Tls).evidence(&[
                "tls.failure=generic_timeout",
                "tls.decoy=ok",
                "tls.control=ok",
            ]),
        ),
        scenario(
            "tls_sni_timeout_same_ip_other_sni_ok",
            "https://sni-neighbour.lab/",
            &[],
            accessible,
        ),
        scenario(
            "mitm_state_ca",
            "https://mitm-state-ca.lab/",
            &[Mitm],
            blocked(Method::Mitm).evidence(&["tls.interception_ca="]),
        ),
        scenario(
            "mitm_unlisted_sni_passes",
            "https://mitm-neighbour.lab/",
            &[],
            accessible,
        ),
        scenario(
            "http_blockpage_injected",
            "http://http-blockpage.lab/",
            &[HttpBlockpage],
            blocked(Method::Http).evidence(&["http.blockpage="]),
        ),
        scenario(
            "http_host_reset",
            "http://http-host-reset.lab/",
            &[HttpHostReset],
            blocked(Method::Http).evidence(&[
                "http.hop0.failure=connection_reset@http",
                "http.decoy_host=ok@",
                "http.control=ok",
            ]),
        ),
        scenario(
            "http_notice_replaced_https_untouched",
            "http://http-notice.lab/",
            &[HttpNotice],
            blocked(Method::Http).evidence(&["http.https_witness=different_page status=200"]),
        ),
        scenario(
            "accessible_http_site_with_https",
            "http://open.lab/",
            &[],
            accessible,
        ),
        scenario(
            "throttle_htb_1mbit",
            "https://throttled.lab/",
            &[Throttle],
            blocked(Method::Throttle).evidence(&["throttle.throughput_bps="]),
        ),
        scenario(
            "redirect_to_blocked_site",
            "https://redirect-to-blocked.lab/",
            &[],
            blocked(Method::Tls)
                .evidence(&["http.hop1.failure=connection_reset@tls", "http.control=ok"]),
        ),
        scenario(
            "down_nothing_listening",
            "https://down-closed.lab/",
            &[],
            Expect::down().evidence(&["tcp.failure=connection_refused", "tcp.control=failed"]),
        ),
        scenario(
            "down_nxdomain_everywhere",
            "https://down-nxdomain.lab/",
            &[],
            Expect::down().evidence(&["dns.network=nxdomain", "dns.control=nxdomain"]),
        ),
        scenario(
            "down_expired_certificate",
            "https://down-expired.lab/",
            &[],
            Expect::down().evidence(&[
                "tls.verification=ssl_invalid_certificate",
                "tls.control=unverified",
            ]),
        ),
        scenario(
            "server_side_403",
            "https://server-403.lab/",
            &[],
            accessible.evidence(&["server_side_refusal"]),
        ),
        scenario(
            "other_networks_block_not_here",
            "https://isp2-blocked.lab/",
            &[],
            accessible,
        ),
    ]
}

/// The second network (AS21299): another censor that blocks one other site.
fn other_network() -> (Censor, Vec<(&'static str, &'static str, Expect)>) {
    let censor = Censor {
        rules: vec![("isp2-blocked.lab".to_owned(), TcpBlackhole)],
        // DoH reset on its SNI: the probe must fall back to DoT.
        block_doh: true,
        ..Censor::default()
    };
    let rows = vec![
        (
            "as21299_accessible_https",
            "https://open.lab/",
            Expect::accessible(),
        ),
        (
            "as21299_sni_blocked_elsewhere_only",
            "https://tls-sni-timeout.lab/",
            Expect::accessible(),
        ),
        (
            "as21299_tcp_blackhole",
            "https://isp2-blocked.lab/",
            Expect::blocked(Method::Tcp)
                .evidence(&["dns.control_resolver.failed=connection_reset@doh:resolver.lab@"]),
        ),
    ];
    (censor, rows)
}

/// The third network (AS41798): the censor blocks the collector too, so the probe has no
/// control; verdicts must fall back to what local evidence proves.
fn no_control_network(main: &[Scenario]) -> (Censor, Vec<(&'static str, &'static str, Expect)>) {
    let rows = vec![
        (
            "control_unreachable_accessible_https",
            "https://open.lab/",
            Expect::accessible(),
        ),
        (
            "control_unreachable_accessible_http",
            "http://open-http.lab/",
            Expect::accessible(),
        ),
        (
            "control_unreachable_tls_sni_timeout",
            "https://tls-sni-timeout.lab/",
            Expect::blocked(Method::Tls).evidence(&["tls.decoy=ok", "ab.tls=name_differs@"]),
        ),
        (
            "control_unreachable_dns_bogon",
            "https://dns-bogon.lab/",
            Expect::blocked(Method::Dns).evidence(&["dns.network.bogon="]),
        ),
        (
            "control_unreachable_mitm_state_ca",
            "https://mitm-state-ca.lab/",
            Expect::blocked(Method::Mitm).evidence(&["tls.interception_ca="]),
        ),
        (
            "control_unreachable_http_blockpage",
            "http://http-blockpage.lab/",
            Expect::blocked(Method::Http).evidence(&["http.blockpage="]),
        ),
        (
            "control_unreachable_dns_nxdomain",
            "https://dns-nxdomain.lab/",
            Expect::inconclusive(),
        ),
        (
            "control_unreachable_tcp_rst_on_syn",
            "https://tcp-rst.lab/",
            Expect::inconclusive(),
        ),
        (
            "control_unreachable_http_host_reset",
            "http://http-host-reset.lab/",
            Expect::blocked(Method::Http).evidence(&[
                "http.hop0.failure=connection_reset@http",
                "http.decoy_host=ok@",
                "ab.http=name_differs@",
            ]),
        ),
        (
            "control_unreachable_http_notice_replaced",
            "http://http-notice.lab/",
            Expect::blocked(Method::Http)
                .evidence(&["http.https_witness=different_page status=200"]),
        ),
        (
            "control_unreachable_accessible_http_site_with_https",
            "http://open.lab/",
            Expect::accessible().evidence(&["http.https_witness=same_page"]),
        ),
        (
            "control_unreachable_tls_sni_reset",
            "https://tls-sni-reset.lab/",
            Expect::blocked(Method::Tls).evidence(&["tls.decoy=ok", "ab.tls=name_differs@"]),
        ),
        (
            "control_unreachable_redirect_to_blocked_site",
            "https://redirect-to-blocked.lab/",
            Expect::blocked(Method::Tls)
                .evidence(&["http.hop1.failure=connection_reset@tls", "tls.decoy=ok@"]),
        ),
        (
            "control_unreachable_expired_certificate",
            "https://down-expired.lab/",
            Expect::inconclusive(),
        ),
        (
            "control_unreachable_throttle_htb",
            "https://throttled-list.lab/",
            Expect::blocked(Method::Throttle).evidence(&["throttle.reference=anchors"]),
        ),
    ];
    let rows: Vec<_> = rows
        .into_iter()
        .map(|(name, url, expect)| (name, url, expect.without_control()))
        .collect();
    // The same techniques as on the main network, for these hosts and for those of the probe
    // with an encrypted resolver on this network.
    let edns_rows = no_control_edns_rows();
    let rules: Vec<(String, Technique)> = main
        .iter()
        .filter(|s| {
            rows.iter().any(|(_, url, _)| *url == s.url)
                || edns_rows.iter().any(|(_, url, _)| *url == s.url)
        })
        .flat_map(|s| s.censor.iter().map(|t| (ascii_host(&s.url), *t)))
        .collect();
    let censor = Censor {
        rules: rules.into_iter().chain(single_url_censor()).collect(),
        block_collector: true,
        ..Censor::default()
    };
    (censor, rows)
}

/// A second probe on the third network (the control blocked) that has the encrypted resolver:
/// two DNS answers, two fetches, proven without the control.
fn no_control_edns_rows() -> Vec<(&'static str, &'static str, Expect)> {
    vec![
        (
            "control_unreachable_dns_hijack_transparent_proxy",
            "http://dns-hijack.lab/",
            Expect::accessible().evidence(&[
                "dns.redirected=network:198.18.13.8",
                "dns.control_address_page=same_page",
            ]),
        ),
        (
            "control_unreachable_dns_to_notice",
            "http://dns-notice.lab/",
            Expect::blocked(Method::Dns).evidence(&[
                "dns.inconsistent=network:198.18.13.8",
                "dns.control_address_page=different_page status=200",
            ]),
        ),
    ]
    .into_iter()
    .map(|(name, url, expect)| (name, url, expect.without_control()))
    .collect()
}

/// Single-URL runs (`witness run --url URL`, no list, so no other site to compare with): the
/// throttling reference comes from the anchors' transfers and the control. Label (the run and
/// the scenario), network (1 main, 3 control blocked), URL, expectation.
fn single_url_runs() -> Vec<(&'static str, u8, &'static str, Expect)> {
    vec![
        (
            "single_url_throttle_htb",
            1,
            "https://throttled-single.lab/",
            Expect::blocked(Method::Throttle).evidence(&[
                "throttle.throughput_bps=",
                "throttle.reference=anchors",
                "throttle.control_throughput_bps=",
            ]),
        ),
        (
            "single_url_throttle_htb_control_blocked",
            3,
            "https://throttled-single.lab/",
            Expect::blocked(Method::Throttle)
                .evidence(&["throttle.throughput_bps=", "throttle.reference=anchors"])
                .without_control(),
        ),
        (
            "single_url_throttle_handshake_latency",
            1,
            "https://slow-handshake.lab/",
            Expect::blocked(Method::Throttle).evidence(&[
                "throttle.handshake_ms=",
                "throttle.reference=anchors",
                "throttle.control_handshake_ms=",
            ]),
        ),
        (
            "single_url_throttle_handshake_latency_control_blocked",
            3,
            "https://slow-handshake.lab/",
            Expect::blocked(Method::Throttle)
                .evidence(&["throttle.handshake_ms=", "throttle.reference=anchors"])
                .without_control(),
        ),
    ]
}

/// What ISPs 1 and 3 do to the single-URL runs' hosts: a throttled site of their own, and one
/// for ISP 3's list (each its own htb class: two fetches sharing one would each get half the
/// rate and time out), and the site whose
/// handshake the relay delays (measured alone, or in ISP 3's short list: in ISP 1's long list
/// every handshake of the moment is slow on a loaded 2-core machine, the reference too).
fn single_url_censor() -> Vec<(String, Technique)> {
    vec![
        ("throttled-single.lab".to_owned(), Throttle),
        ("throttled-list.lab".to_owned(), Throttle),
        ("slow-handshake.lab".to_owned(), HandshakeDelay),
    ]
}

/// The fifth network (AS48716): the censor blocks both encrypted resolvers (DoH reset on its
/// SNI, DoT's port dropped), so the control service's DNS is the only DNS control; the
/// verdicts must stay right, and the record must say which resolvers failed and how.
fn no_encrypted_dns_network(
    main: &[Scenario],
) -> (Censor, Vec<(&'static str, &'static str, Expect)>) {
    let rows = vec![
        (
            "encrypted_dns_blocked_accessible_https",
            "https://open.lab/",
            Expect::accessible().check(both_encrypted_resolvers_failed),
        ),
        (
            "encrypted_dns_blocked_dns_nxdomain",
            "https://dns-nxdomain.lab/",
            Expect::blocked(Method::Dns)
                .evidence(&[
                    "dns.network=nxdomain",
                    "dns.control=1 addrs",
                    "dns.control_resolver.failed=connection_reset@doh:resolver.lab@",
                    "dns.control_resolver.failed=dns_timeout@dot:resolver.lab@",
                ])
                .check(both_encrypted_resolvers_failed),
        ),
        (
            "encrypted_dns_blocked_tls_sni_timeout",
            "https://tls-sni-timeout.lab/",
            Expect::blocked(Method::Tls).evidence(&["tls.decoy=ok", "tls.control=ok"]),
        ),
    ];
    let rules = main
        .iter()
        .filter(|s| rows.iter().any(|(_, url, _)| *url == s.url))
        .flat_map(|s| s.censor.iter().map(|t| (ascii_host(&s.url), *t)))
        .collect();
    let censor = Censor {
        rules,
        block_doh: true,
        block_dot: true,
        ..Censor::default()
    };
    (censor, rows)
}

/// The sixth network (a private AS): a slow line, not a censor. Every connection to the sites
/// its probe measures, the anchors included, is paced to 200 kB/s by a userspace relay in the
/// ISP (a slow DSL line), and one site on that line to 25 kB/s (throttled). The probe measures
/// the two sites in one short list (no run baseline: the anchors are the reference), with the
/// control up, whose fetches are fast.
fn slow_line_network() -> (Censor, Vec<(&'static str, &'static str, Expect)>) {
    let censor = Censor {
        rules: vec![
            ("anchor.lab".to_owned(), SlowLine),
            ("anchor-2.lab".to_owned(), SlowLine),
            ("large-1.lab".to_owned(), SlowLine),
            ("slow-line-throttled.lab".to_owned(), ThrottledOnSlowLine),
        ],
        ..Censor::default()
    };
    let rows = vec![
        (
            "slow_line_stays_accessible",
            "https://large-1.lab/",
            Expect::accessible().check(slow_line_really_slow),
        ),
        (
            "slow_line_throttled_site",
            "https://slow-line-throttled.lab/",
            Expect::blocked(Method::Throttle).evidence(&[
                "throttle.throughput_bps=",
                "throttle.reference=anchors",
                "throttle.control_throughput_bps=",
            ]),
        ),
    ];
    (censor, rows)
}

/// The slow line really was slow: the page and the anchors' transfers came under the probe's
/// 256 KiB/s throttling ceiling (so only the line's reference kept the page `accessible`), while
/// the control fetched it fast.
fn slow_line_really_slow(m: &Measurement) -> Option<String> {
    let ceiling = witness_core::verdict::THROTTLE_MAX_THROUGHPUT_BPS;
    let page = m
        .http
        .iter()
        .filter(|h| h.role.is_page())
        .max_by_key(|h| h.hop)
        .and_then(|h| h.throughput_bps);
    let refs: Vec<Option<f64>> = m
        .connectivity
        .references
        .iter()
        .map(|r| r.throughput_bps)
        .collect();
    let control = m
        .control
        .as_ref()
        .and_then(|c| c.http.iter().max_by_key(|h| h.hop))
        .and_then(|h| h.throughput_bps);
    let slow = |v: Option<f64>| v.is_some_and(|v| v < ceiling);
    let ok = slow(page)
        && refs.len() == 2
        && refs.iter().all(|r| slow(*r))
        && control.is_some_and(|c| c > 5.0 * ceiling);
    (!ok).then(|| {
        format!(
            "page {page:?} B/s, anchors {refs:?} B/s, control {control:?} B/s (ceiling {ceiling})"
        )
    })
}

/// The encrypted resolver's answer for the measured host, through `transport`.
fn control_resolver_answer(m: &Measurement, transport: &str) -> Option<String> {
    let answered = m.dns.iter().any(|o| {
        o.role == ResolverRole::Control
            && o.transport == transport
            && o.query == m.domain
            && o.failure.is_none()
            && !o.answers.is_empty()
    });
    (!answered).then(|| {
        let seen: Vec<String> = m
            .dns
            .iter()
            .filter(|o| o.role == ResolverRole::Control)
            .map(|o| {
                format!(
                    "{} {}",
                    o.transport,
                    o.failure.as_ref().map_or("ok", |f| f.name())
                )
            })
            .collect();
        format!(
            "no {transport} answer for {}; control resolver queries: {seen:?}",
            m.domain
        )
    })
}

/// The run's resolver check, as `transport=failure` (`ok` when it answered).
fn resolver_checks(m: &Measurement) -> Vec<String> {
    m.connectivity
        .control_resolvers
        .iter()
        .map(|c| {
            format!(
                "{}={}",
                c.transport,
                c.failure.as_ref().map_or("ok", |f| f.name())
            )
        })
        .collect()
}

/// Measured through DoH, which works.
fn through_doh(m: &Measurement) -> Option<String> {
    let checks = resolver_checks(m);
    if checks != ["doh=ok", "dot=ok"] {
        return Some(format!("resolver checks {checks:?}"));
    }
    control_resolver_answer(m, "doh")
}

/// DoH reset on its SNI; measured through DoT.
fn doh_reset_through_dot(m: &Measurement) -> Option<String> {
    let checks = resolver_checks(m);
    if checks != ["doh=connection_reset", "dot=ok"] {
        return Some(format!("resolver checks {checks:?}"));
    }
    control_resolver_answer(m, "dot")
}

/// Both encrypted resolvers failed, each in the censor's way; no encrypted answer.
fn both_encrypted_resolvers_failed(m: &Measurement) -> Option<String> {
    let checks = resolver_checks(m);
    if checks != ["doh=connection_reset", "dot=dns_timeout"] {
        return Some(format!("resolver checks {checks:?}"));
    }
    if !m
        .connectivity
        .summary
        .contains("no resolver of the chain answered")
    {
        return Some(format!("summary: {}", m.connectivity.summary));
    }
    None
}

/// The shutdown network's list.
const SHUTDOWN_URLS: &[&str] = &[
    "https://open.lab/",
    "https://large-1.lab/",
    "http://open-http.lab/",
];

/// A probe: its namespace, its network's resolver, its home (config, credentials, spool).
struct Probe<'a> {
    label: &'static str,
    net: &'a Network,
    files: ProbeFiles,
    spool: PathBuf,
    /// `--url URL` instead of `--list`: a volunteer checking one site.
    single: Option<String>,
    /// `--control-resolver`: the lab's DoH/DoT chain, or `none`.
    control_resolver: String,
    /// Localise blocks to a hop (off, `--no-path`, except in the hop lab: the main lab is
    /// about verdicts, and its run time stays what it was).
    path: bool,
}

impl<'a> Probe<'a> {
    fn new(
        lab: &Lab,
        label: &'static str,
        net: &'a Network,
        asn: u32,
        urls: &[&str],
    ) -> Result<Self> {
        let files = ProbeFiles::new(
            lab,
            label,
            &format!("consent = true\n\n[probe]\nasn = {asn}\ncountry = \"KZ\"\n"),
            urls,
        )?;
        Ok(Self {
            label,
            net,
            spool: files.home.join("spool"),
            files,
            single: None,
            control_resolver: "none".to_owned(),
            path: false,
        })
    }

    /// A probe that measures one URL given on the command line.
    fn single(
        lab: &Lab,
        label: &'static str,
        net: &'a Network,
        asn: u32,
        url: &str,
    ) -> Result<Self> {
        let mut probe = Self::new(lab, label, net, asn, &[])?;
        probe.single = Some(url.to_owned());
        Ok(probe)
    }

    /// Measure with the lab's encrypted resolvers (DoH, then DoT) as the control resolver.
    fn with_encrypted_dns(mut self) -> Self {
        self.control_resolver = topology::control_resolver_chain();
        self
    }

    /// `witness --config CFG <args>`.
    fn argv(&self, args: &[String]) -> Vec<String> {
        self.files.argv(args)
    }

    /// The probe's environment: its own HOME (credentials), logs without colours.
    fn envs(&self) -> Vec<(&'static str, String)> {
        self.files.envs()
    }

    /// `ip netns exec CLIENT lab-origin guard -- witness --config CFG <args>`.
    fn command(&self, args: &[String]) -> Command {
        self.files.command(&self.net.client, args)
    }

    /// The measurement flags shared by `run` and `daemon`.
    fn measure_args(&self, internet: &Internet) -> Vec<String> {
        let mut args: Vec<String> = [
            "--yes",
            "--no-progress",
            "--lab-public-range",
            LAB_RANGE,
            "--timeout",
            PROBE_TIMEOUT_SECS,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !self.path {
            args.push("--no-path".to_owned());
        }
        match &self.single {
            Some(url) => args.extend(["--url".to_owned(), url.clone()]),
            None => args.extend(["--list".to_owned(), self.files.list.display().to_string()]),
        }
        args.extend([
            "--control-resolver".to_owned(),
            self.control_resolver.clone(),
            "--resolver".to_owned(),
            self.net.resolver().to_string(),
            "--extra-ca".to_owned(),
            internet.ca.display().to_string(),
            "--control".to_owned(),
            topology::collector_url(),
        ]);
        // Two reference hosts of the lab internet stand in for the real anchors, by name as
        // the real ones are: the probe makes its reference transfers to them.
        for host in ["anchor.lab", "anchor-2.lab"] {
            args.extend(["--anchor".to_owned(), format!("{host}:443")]);
        }
        args
    }

    fn upload_args(&self) -> Vec<String> {
        vec![
            "--collector".to_owned(),
            topology::collector_url(),
            "--spool-dir".to_owned(),
            self.spool.display().to_string(),
        ]
    }

    fn register(&self, lab: &Lab) -> Result<()> {
        let args = vec![
            "register".to_owned(),
            "--collector".to_owned(),
            topology::collector_url(),
        ];
        let (status, out, err) = netlab::run_with_limit(
            self.command(&args),
            &lab.path(&format!("{}-register", self.label)),
            Duration::from_secs(30),
        )?;
        if !status.success() {
            bail!("{} could not register ({status}): {out}{err}", self.label);
        }
        Ok(())
    }

    /// `witness run --json` (and `--upload`): the measurements by URL.
    fn run(
        &self,
        lab: &Lab,
        internet: &Internet,
        upload: bool,
    ) -> Result<HashMap<String, Measurement>> {
        let mut args = vec!["run".to_owned(), "--json".to_owned()];
        args.extend(self.measure_args(internet));
        if upload {
            args.push("--upload".to_owned());
            args.extend(self.upload_args());
        }
        let (status, out, err) = netlab::run_with_limit(
            self.command(&args),
            &lab.path(&format!("{}-run", self.label)),
            Duration::from_secs(180),
        )?;
        if !status.success() {
            bail!("{}: witness run failed ({status}):\n{err}", self.label);
        }
        probes::by_url(self.label, &out)
    }
}

/// Everything the probes and the collector produced.
struct Results {
    main: HashMap<String, Measurement>,
    other: HashMap<String, Measurement>,
    no_control: HashMap<String, Measurement>,
    /// The third network's probe with the encrypted resolver.
    no_control_edns: HashMap<String, Measurement>,
    /// The slow line's probe.
    slow_line: HashMap<String, Measurement>,
    /// The single-URL runs' measurements, by run label.
    single: HashMap<&'static str, Option<Measurement>>,
    no_encrypted_dns: HashMap<String, Measurement>,
    /// The daemon's log, for the report.
    shutdown_log: String,
    events: Vec<Value>,
    shutdown_measurements: Vec<Value>,
}

fn collector_json(lab: &Lab, internet: &Internet, path: &str, key: &str) -> Result<Vec<Value>> {
    let body = topology::get(
        lab,
        &internet.ns,
        &format!("{}{path}", topology::collector_url()),
    )?;
    let value: Value = serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))?;
    value[key]
        .as_array()
        .cloned()
        .with_context(|| format!("{path}: no {key} in {body}"))
}

fn events_of<'a>(events: &'a [Value], kind: &str, domain: Option<&str>) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind)
        .filter(|e| domain.is_none_or(|d| e["domain"] == d))
        .collect()
}

fn event_text(e: &Value) -> String {
    let method = e["method"]
        .as_str()
        .map(|m| format!("/{m}"))
        .unwrap_or_default();
    let ended = if e["ended_at"].is_null() {
        ""
    } else {
        ",ended"
    };
    format!(
        "{}{method}@AS{}{ended}",
        e["kind"].as_str().unwrap_or("?"),
        e["asn"]
    )
}

/// Builds the lab, runs the probes at once, and collects what they and the collector saw.
fn run_lab(lab: &Lab, scenarios: &[Scenario]) -> Result<Results> {
    let (witness, collector) = (witness_bin(), collector_bin());
    assert!(witness.exists() && collector.exists());
    let internet = topology::build_internet(lab, &sites())?;
    let main_censor = Censor {
        rules: scenarios
            .iter()
            .flat_map(|s| s.censor.iter().map(|t| (ascii_host(&s.url), *t)))
            .chain(single_url_censor())
            .collect(),
        ..Censor::default()
    };
    let (other_censor, other_rows) = other_network();
    let (no_control_censor, no_control_rows) = no_control_network(scenarios);
    let (no_edns_censor, no_edns_rows) = no_encrypted_dns_network(scenarios);
    let main_net = topology::build_network(lab, &internet, 1, &main_censor)?;
    let other_net = topology::build_network(lab, &internet, 2, &other_censor)?;
    let no_control_net = topology::build_network(lab, &internet, 3, &no_control_censor)?;
    let shutdown_net = topology::build_network(lab, &internet, 4, &Censor::default())?;
    let no_edns_net = topology::build_network(lab, &internet, 5, &no_edns_censor)?;
    let (slow_line_censor, slow_line_rows) = slow_line_network();
    let slow_line_net = topology::build_network(lab, &internet, 6, &slow_line_censor)?;
    topology::start_collector(lab, &internet, &collector, "")?;

    let main_urls: Vec<&str> = scenarios.iter().map(|s| s.url.as_str()).collect();
    let other_urls: Vec<&str> = other_rows.iter().map(|r| r.1).collect();
    let no_control_urls: Vec<&str> = no_control_rows.iter().map(|r| r.1).collect();
    let no_edns_urls: Vec<&str> = no_edns_rows.iter().map(|r| r.1).collect();
    let main =
        Probe::new(lab, "probe-as9198", &main_net, ASN_MAIN, &main_urls)?.with_encrypted_dns();
    let other =
        Probe::new(lab, "probe-as21299", &other_net, ASN_OTHER, &other_urls)?.with_encrypted_dns();
    let no_edns = Probe::new(
        lab,
        "probe-as48716",
        &no_edns_net,
        ASN_NO_ENCRYPTED_DNS,
        &no_edns_urls,
    )?
    .with_encrypted_dns();
    let no_control = Probe::new(
        lab,
        "probe-as41798",
        &no_control_net,
        ASN_NO_CONTROL,
        &no_control_urls,
    )?;
    let shutdown = Probe::new(
        lab,
        "probe-as29355",
        &shutdown_net,
        ASN_SHUTDOWN,
        SHUTDOWN_URLS,
    )?;
    let no_control_edns_urls: Vec<&str> = no_control_edns_rows().iter().map(|r| r.1).collect();
    let no_control_edns = Probe::new(
        lab,
        "probe-as41798-edns",
        &no_control_net,
        ASN_NO_CONTROL,
        &no_control_edns_urls,
    )?
    .with_encrypted_dns();
    let slow_line_urls: Vec<&str> = slow_line_rows.iter().map(|r| r.1).collect();
    let slow_line = Probe::new(
        lab,
        "probe-as64512",
        &slow_line_net,
        ASN_SLOW_LINE,
        &slow_line_urls,
    )?;
    let singles = single_url_runs();
    let single_probes = singles
        .iter()
        .map(|(label, n, url, _)| {
            let (net, asn) = match n {
                3 => (&no_control_net, ASN_NO_CONTROL),
                _ => (&main_net, ASN_MAIN),
            };
            Probe::single(lab, label, net, asn, url)
        })
        .collect::<Result<Vec<_>>>()?;
    for probe in [&main, &other, &shutdown] {
        probe.register(lab)?;
    }
    for probe in single_probes.iter().filter(|p| p.net.n != 3) {
        probe.register(lab)?;
    }

    // The shutdown starts before the daemon's first run, and ends when that run is over.
    topology::cut(lab, &shutdown_net)?;
    let mut daemon_args = vec![
        "daemon".to_owned(),
        "--interval".to_owned(),
        "4".to_owned(),
        "--jitter".to_owned(),
        "0".to_owned(),
        "--upload-retry".to_owned(),
        "1".to_owned(),
        "--runs".to_owned(),
        "2".to_owned(),
    ];
    daemon_args.extend(shutdown.measure_args(&internet));
    daemon_args.extend(shutdown.upload_args());
    lab.spawn(
        &shutdown_net.client,
        "daemon-as29355",
        &shutdown.argv(&daemon_args),
        &shutdown.envs(),
    )?;

    let (main_m, other_m, no_control_m, no_control_edns_m, no_edns_m, slow_m, daemon, single_m) =
        std::thread::scope(|s| {
            let a = s.spawn(|| main.run(lab, &internet, true));
            let b = s.spawn(|| other.run(lab, &internet, true));
            let c = s.spawn(|| no_control.run(lab, &internet, false));
            let g = s.spawn(|| no_control_edns.run(lab, &internet, false));
            let h = s.spawn(|| slow_line.run(lab, &internet, false));
            let e: Vec<_> = single_probes
                .iter()
                .map(|p| s.spawn(|| p.run(lab, &internet, false)))
                .collect();
            let f = s.spawn(|| no_edns.run(lab, &internet, false));
            let d = s.spawn(|| -> Result<()> {
                lab.wait_for_output("daemon-as29355", "witness daemon:", Duration::from_secs(90))?;
                topology::restore(lab, &shutdown_net)?;
                let status = lab.wait_exit("daemon-as29355", Duration::from_secs(120))?;
                if !status.success() {
                    bail!("witness daemon failed ({status})");
                }
                Ok(())
            });
            fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
                h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            }
            let singles: Vec<_> = e.into_iter().map(join).collect();
            (
                join(a),
                join(b),
                join(c),
                join(g),
                join(f),
                join(h),
                join(d),
                singles,
            )
        });
    let (main_m, other_m, no_control_m, no_edns_m) = (main_m?, other_m?, no_control_m?, no_edns_m?);
    let no_control_edns_m = no_control_edns_m?;
    let slow_m = slow_m?;
    let mut single = HashMap::new();
    for ((label, _, url, _), by_url) in singles.iter().zip(single_m) {
        single.insert(*label, by_url?.remove(*url));
    }
    daemon?;

    // The collector evaluates after each upload; give it a moment to settle.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (events, shutdown_measurements) = loop {
        let events = collector_json(lab, &internet, "api/v1/events?limit=1000", "events")?;
        let shutdown_measurements = collector_json(
            lab,
            &internet,
            &format!("api/v1/measurements?asn={ASN_SHUTDOWN}&limit=1000"),
            "measurements",
        )?;
        let settled = !events_of(&events, "shutdown", None).is_empty()
            && events_of(&events, "new_block", Some("isp2-blocked.lab")).len()
                + events_of(&events, "new_block", Some("tls-sni-timeout.lab")).len()
                >= 2
            && shutdown_measurements.len() >= 2 * SHUTDOWN_URLS.len();
        if settled || Instant::now() > deadline {
            break (events, shutdown_measurements);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    Ok(Results {
        main: main_m,
        other: other_m,
        no_control: no_control_m,
        no_control_edns: no_control_edns_m,
        slow_line: slow_m,
        single,
        no_encrypted_dns: no_edns_m,
        shutdown_log: lab.log("daemon-as29355"),
        events,
        shutdown_measurements,
    })
}

/// The collector's side, as table rows.
fn collector_rows(results: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    let all = |kind: &str, domain: Option<&str>| -> Vec<String> {
        events_of(&results.events, kind, domain)
            .into_iter()
            .map(event_text)
            .collect()
    };
    for (name, domain, asn, method, not_asn) in [
        (
            "collector_new_block_only_on_its_network",
            "tls-sni-timeout.lab",
            ASN_MAIN,
            "tls",
            ASN_OTHER,
        ),
        (
            "collector_new_block_on_the_other_network",
            "isp2-blocked.lab",
            ASN_OTHER,
            "tcp",
            ASN_MAIN,
        ),
    ] {
        let events = events_of(&results.events, "new_block", Some(domain));
        let here = events
            .iter()
            .any(|e| e["asn"] == asn && e["method"] == method && e["ended_at"].is_null());
        let there = events.iter().any(|e| e["asn"] == not_asn);
        let got = all("new_block", Some(domain));
        rows.push(judge::check(
            name,
            &format!("new_block/{method}@AS{asn}, none @AS{not_asn}"),
            &if got.is_empty() {
                "no event".to_owned()
            } else {
                got.join(" ")
            },
            here && !there,
            &format!("events for {domain}: {got:?}"),
        ));
    }

    // The shutdown: the first run is offline, spooled, uploaded after the link came back.
    let statuses: Vec<&str> = results
        .shutdown_measurements
        .iter()
        .filter_map(|m| m["verdict"]["status"].as_str())
        .collect();
    let n = SHUTDOWN_URLS.len();
    let offline = statuses.iter().filter(|s| **s == "offline").count();
    let accessible = statuses.iter().filter(|s| **s == "accessible").count();
    let first_run_offline =
        statuses.len() == 2 * n && statuses[..n].iter().all(|s| *s == "offline");
    rows.push(judge::check(
        "shutdown_offline_spooled_then_uploaded",
        &format!("{n} offline then {n} accessible uploaded"),
        &format!("{offline} offline, {accessible} accessible uploaded"),
        first_run_offline && accessible == n,
        &format!(
            "statuses at the collector, oldest first: {statuses:?}\n      daemon log:\n{}",
            results.shutdown_log
        ),
    ));
    let shutdowns = events_of(&results.events, "shutdown", None);
    let shutdown_here = shutdowns.iter().any(|e| e["asn"] == ASN_SHUTDOWN);
    let blocks_here: Vec<String> = results
        .events
        .iter()
        .filter(|e| e["asn"] == ASN_SHUTDOWN && e["kind"] != "shutdown")
        .map(event_text)
        .collect();
    let mut got: Vec<String> = shutdowns.iter().map(|e| event_text(e)).collect();
    got.extend(blocks_here.iter().cloned());
    rows.push(judge::check(
        "shutdown_event_not_blocks",
        &format!("shutdown@AS{ASN_SHUTDOWN}, no block event"),
        &if got.is_empty() {
            "no event".to_owned()
        } else {
            got.join(" ")
        },
        shutdown_here && blocks_here.is_empty(),
        &format!("events: {got:?}"),
    ));
    rows
}

#[test]
fn censorship_lab() {
    if !netlab::ready(
        "the censorship lab",
        "sudo cargo test -p witness-tests --test lab",
    ) {
        return;
    }
    // Build first: the clock is for the lab alone.
    let _ = (witness_bin(), collector_bin());
    let started = Instant::now();
    let scenarios = scenarios();
    let lab = Lab::new().expect("creating the lab");
    let results = match run_lab(&lab, &scenarios) {
        Ok(results) => results,
        Err(e) => panic!("the lab could not run: {e:#}"),
    };

    let mut rows: Vec<Row> = scenarios
        .iter()
        .map(|s| judge::judge(s.name, s.expect, s.known_bug, results.main.get(&s.url)))
        .collect();
    let (_, other_rows) = other_network();
    for (name, url, expect) in other_rows {
        rows.push(judge::judge(name, expect, None, results.other.get(url)));
    }
    let (_, no_control_rows) = no_control_network(&scenarios);
    for (name, url, expect) in no_control_rows {
        rows.push(judge::judge(
            name,
            expect,
            None,
            results.no_control.get(url),
        ));
    }
    for (name, url, expect) in no_control_edns_rows() {
        rows.push(judge::judge(
            name,
            expect,
            None,
            results.no_control_edns.get(url),
        ));
    }
    let (_, slow_line_rows) = slow_line_network();
    for (name, url, expect) in slow_line_rows {
        rows.push(judge::judge(name, expect, None, results.slow_line.get(url)));
    }
    for (label, _, _, expect) in single_url_runs() {
        rows.push(judge::judge(
            label,
            expect,
            None,
            results.single.get(label).and_then(Option::as_ref),
        ));
    }
    let (_, no_edns_rows) = no_encrypted_dns_network(&scenarios);
    for (name, url, expect) in no_edns_rows {
        rows.push(judge::judge(
            name,
            expect,
            None,
            results.no_encrypted_dns.get(url),
        ));
    }
    // The encrypted resolvers themselves: DoH where nothing blocks it, DoT where DoH is reset.
    rows.push(judge::judge(
        "encrypted_dns_doh",
        Expect::accessible().check(through_doh),
        None,
        results.main.get("https://open.lab/"),
    ));
    rows.push(judge::judge(
        "encrypted_dns_doh_reset_falls_back_to_dot",
        Expect::accessible().check(doh_reset_through_dot),
        None,
        results.other.get("https://open.lab/"),
    ));
    rows.extend(collector_rows(&results));
    drop(lab);

    report(&format!(
        "\nCensorship lab: {} scenarios in {:.0} s\n\n{}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        judge::table(&rows, std::env::var_os("WITNESS_LAB_VERBOSE").is_some())
    ));

    // The lab can fail: a real verdict against a deliberately wrong expectation is a mismatch.
    let sni = &results.main["https://tls-sni-timeout.lab/"];
    let wrong = judge::judge(
        "tls_sni_timeout_wrong_expectation",
        Expect::accessible(),
        None,
        Some(sni),
    );
    assert_eq!(
        wrong.outcome,
        Outcome::Fail,
        "a wrong expectation must be a mismatch"
    );
    assert!(!judge::passed(&[wrong]));

    assert!(
        judge::passed(&rows),
        "the lab found wrong verdicts (table above)"
    );
    // Every record of every network in OONI's format, read back by OONI's parser.
    let records: Vec<&Measurement> = [
        &results.main,
        &results.other,
        &results.no_control,
        &results.no_control_edns,
        &results.slow_line,
        &results.no_encrypted_dns,
    ]
    .into_iter()
    .flat_map(|r| r.values())
    .chain(results.single.values().flatten())
    .collect();
    witness_tests::ooni::check_records("the censorship lab", &records);
}

/// The hop lab (`lab/hops.rs`): the probe's localisation behind a chain of routers with
/// two censors, each kind of block at its exact hop. A test of this binary, so it runs in
/// parallel with `censorship_lab`.
#[test]
fn hop_lab() {
    hops::hop_lab();
}

/// The dual-stack lab (`lab/dualstack.rs`): IPv6 homes against dual-stack sites.
#[test]
fn dual_stack_lab() {
    dualstack::dual_stack_lab();
}

/// The fleet lab (`lab/fleet.rs`): four probes on one network share the control.
#[test]
fn fleet_lab() {
    fleet::fleet_lab();
}

/// Without root: the comparison the lab uses reports a real probe verdict that contradicts the
/// expectation as a mismatch, and fails the run.
#[test]
fn lab_comparison_reports_wrong_expectations() {
    let dir = tempfile::tempdir().unwrap();
    // No network at all: the real probe says `offline` for the site.
    let out = Command::new(witness_bin())
        .args(["run", "--yes", "--no-progress", "--json", "--no-control"])
        .args(["--url", "https://tls-sni-timeout.lab/"])
        .args(["--resolver", "127.0.0.1:9", "--anchor", "127.0.0.1:9"])
        .args(["--control-resolver", "none", "--timeout", "1"])
        .env("HOME", dir.path())
        .env_remove("WITNESS_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Measurement = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(m.verdict.status, Status::Offline);

    let right = judge::judge("shutdown", Expect::offline(), None, Some(&m));
    let wrong = judge::judge(
        "tls_sni_timeout",
        Expect::blocked(Method::Tls),
        None,
        Some(&m),
    );
    let missing = judge::judge("dns_nxdomain", Expect::blocked(Method::Dns), None, None);
    // The right verdict for the wrong reason is a mismatch too.
    let reason = judge::judge(
        "shutdown_wrong_reason",
        Expect::offline().evidence(&["dns.injected="]),
        None,
        Some(&m),
    );
    assert_eq!(reason.outcome, Outcome::Fail, "{reason:?}");
    assert!(
        reason.got.contains("no evidence dns.injected="),
        "{reason:?}"
    );
    let known = judge::judge(
        "known",
        Expect::accessible(),
        Some("a known probe bug"),
        Some(&m),
    );
    assert_eq!(right.outcome, Outcome::Pass);
    assert_eq!(wrong.outcome, Outcome::Fail);
    assert_eq!(missing.outcome, Outcome::Fail);
    assert_eq!(known.outcome, Outcome::KnownBug);
    let table = judge::table(
        &[right.clone(), wrong.clone(), missing, known.clone()],
        false,
    );
    assert!(table.contains("| tls_sni_timeout"), "{table}");
    assert!(
        table.contains("MISMATCH tls_sni_timeout: expected blocked/tls, got offline"),
        "{table}"
    );
    assert!(table.contains("KNOWN-BUG"), "{table}");
    assert!(judge::passed(&[right.clone(), known]));
    assert!(!judge::passed(&[right, wrong]));
}
