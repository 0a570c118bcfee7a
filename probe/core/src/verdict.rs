//! The verdict: a pure function from one measurement's observations, and the control's, to
//! accessible, blocked (and how), down, offline or inconclusive.
//!
//! No I/O and no clock, so every rule is table-tested and the collector can re-run it on stored
//! records. The rules run in a fixed order (offline, DNS, TCP, TLS, HTTP, then throttling); the
//! first one that decides wins. `docs/verdicts.md` documents the procedure, the thresholds and
//! how it differs from OONI's Web Connectivity: keep the two in step.
//!
//! Two principles run through every rule: a plain failure is never called a block without a
//! comparison (the control service, or the encrypted control resolver for DNS), and local
//! evidence that cannot be innocent (an injected DNS answer, a bogon, a state CA, a blockpage, a
//! decoy handshake that works where the real one is cut) is enough on its own.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use uuid::Uuid;

use crate::failure::Failure;
use crate::model::{
    ControlResponse, DnsObservation, HttpObservation, LateDnsResponse, Measurement, Method,
    QueryType, ResolverRole, Status, Step, TcpObservation, TlsObservation, Verdict,
};

/// Smallest body, in bytes, whose throughput means anything: shorter transfers measure latency
/// and TCP slow start, not bandwidth.
pub const THROUGHPUT_MIN_BYTES: u64 = 64 * 1024;

/// Fewest accessible measurements a baseline needs: the median of one or two sites is an
/// anecdote, and a single slow site would make everything else look fast.
pub const BASELINE_MIN_SAMPLES: usize = 3;

/// A handshake faster than this (milliseconds) is never called throttled, whatever the
/// baseline: on a fast link, five times a 20 ms baseline is just a far-away server.
pub const THROTTLE_MIN_HANDSHAKE_MS: f64 = 1000.0;

/// How many times slower than the baseline a target must be to be called throttled: enough to
/// absorb distance and server load, small enough to catch the 2022-2023 Kazakh throttling
/// (handshakes over 4 s against tens of milliseconds).
pub const THROTTLE_FACTOR: f64 = 5.0;

/// A transfer faster than this (bytes per second, about 2 Mbit/s) is never called throttled:
/// the throughput counterpart of [`THROTTLE_MIN_HANDSHAKE_MS`], so that on a very fast link a
/// merely slower server is not mistaken for throttling.
pub const THROTTLE_MAX_THROUGHPUT_BPS: f64 = 256.0 * 1024.0;

/// Shortest-to-longest body length ratio from which two pages count as the same (OONI's value):
/// dynamic pages vary a little, blockpages are usually much shorter than the real page.
pub const BODY_LENGTH_RATIO: f64 = 0.7;

/// Most per-address lines of one kind in the evidence: enough to show the pattern, bounded for
/// names with many addresses.
const MAX_EVIDENCE_ADDRS: usize = 4;

/// Longest page title quoted in evidence or a reason.
const MAX_TITLE_CHARS: usize = 60;

/// Run-level facts the per-target verdict needs: they come from the whole run, not from one
/// target's observations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunContext {
    /// The run-level connectivity check found no working network: every verdict is `offline`.
    pub offline: bool,
    /// This probe's own speed for unblocked sites in the same run; `None` in the first pass.
    pub baseline: Option<Baseline>,
}

/// This probe's own speed for unblocked sites in the same run: throttling is judged against the
/// probe's own link, because a slow village line is not censorship.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Baseline {
    /// Median over accessible sites of each site's median TLS handshake time, milliseconds.
    pub tls_handshake_ms: f64,
    /// Median body throughput in bytes per second over accessible sites whose final response
    /// had at least [`THROUGHPUT_MIN_BYTES`]; `None` with fewer than [`BASELINE_MIN_SAMPLES`].
    pub throughput_bps: Option<f64>,
    /// How many sites the handshake median came from.
    pub samples: usize,
}

/// The verdict for one measurement. `m.verdict` is ignored; `m.control` is used only when
/// `m.control_failure` is `None`.
pub fn decide(m: &Measurement, ctx: &RunContext) -> Verdict {
    let f = Facts::new(m);
    let mut ev = Vec::new();
    if f.control.is_none() {
        ev.push("control=unavailable".to_string());
    }
    let staged = offline_stage(&f, ctx, &mut ev)
        .or_else(|| dns_stage(&f, &mut ev))
        .or_else(|| tcp_stage(&f, &mut ev))
        .or_else(|| tls_stage(&f, &mut ev));
    let mut outcome = match staged {
        Some(o) => o,
        None => http_stage(&f, &mut ev),
    };
    if outcome.status == Status::Accessible {
        if let Some(throttled) = throttle_stage(&f, ctx, &mut ev) {
            outcome = throttled;
        }
    }
    Verdict {
        status: outcome.status,
        method: outcome.method,
        reason: outcome.reason,
        evidence: dedup(ev),
    }
}

/// This probe's speed for unblocked sites: from the measurements whose (first-pass) verdict is
/// accessible, leaving out `exclude_id` so a target is never compared with itself. Each site
/// counts once (its own median handshake), so a site with many addresses does not dominate.
/// `None` with fewer than [`BASELINE_MIN_SAMPLES`] sites that completed a handshake.
pub fn baseline(measurements: &[Measurement], exclude_id: Option<Uuid>) -> Option<Baseline> {
    let mut handshakes = Vec::new();
    let mut throughputs = Vec::new();
    for m in measurements
        .iter()
        .filter(|m| m.verdict.status == Status::Accessible && Some(m.id) != exclude_id)
    {
        if let Some(ms) = handshake_median(m) {
            handshakes.push(ms);
        }
        if let Some(bps) = final_response(&m.http).and_then(large_body_throughput) {
            throughputs.push(bps);
        }
    }
    let samples = handshakes.len();
    if samples < BASELINE_MIN_SAMPLES {
        return None;
    }
    let throughput_bps = if throughputs.len() >= BASELINE_MIN_SAMPLES {
        median(throughputs)
    } else {
        None
    };
    Some(Baseline {
        tls_handshake_ms: median(handshakes)?,
        throughput_bps,
        samples,
    })
}

/// Whether two final HTTP responses are the same page. Identical bodies are; otherwise the
/// status codes must match (any 2xx alike), and then the titles decide when both pages have one
/// (a censor's rewrite or notice of the same size as the real page differs by its title), and
/// the body lengths (within [`BODY_LENGTH_RATIO`]) when either has none. A body truncated at the
/// cap counts as "at least this long", so a large page read up to the cap is not mistaken for
/// a different one.
pub fn pages_similar(a: &HttpObservation, b: &HttpObservation) -> bool {
    if a.status == b.status && a.body_sha256.is_some() && a.body_sha256 == b.body_sha256 {
        return true;
    }
    let status_alike = match (a.status, b.status) {
        (Some(x), Some(y)) => x == y || ((200..300).contains(&x) && (200..300).contains(&y)),
        _ => false,
    };
    if !status_alike {
        return false;
    }
    match titles_compare(a, b) {
        Some(same) => same,
        None => body_length_ratio(a, b) >= BODY_LENGTH_RATIO,
    }
}

/// The largest shortest-to-longest ratio the two body lengths allow, treating a truncated
/// length as "at least this much".
fn body_length_ratio(a: &HttpObservation, b: &HttpObservation) -> f64 {
    let (la, lb) = (a.body_length as f64, b.body_length as f64);
    let ratio = |short: f64, long: f64| if long <= 0.0 { 1.0 } else { short / long };
    match (a.body_truncated, b.body_truncated) {
        (true, true) => 1.0,
        (true, false) if lb >= la => 1.0,
        (true, false) => ratio(lb, la),
        (false, true) if la >= lb => 1.0,
        (false, true) => ratio(la, lb),
        (false, false) => ratio(la.min(lb), la.max(lb)),
    }
}

/// `Some(equal)` when both pages have a non-empty title, `None` when either has none.
fn titles_compare(a: &HttpObservation, b: &HttpObservation) -> Option<bool> {
    match (
        a.title.as_deref().map(str::trim),
        b.title.as_deref().map(str::trim),
    ) {
        (Some(x), Some(y)) if !x.is_empty() && !y.is_empty() => Some(x == y),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Facts: the observations that belong to the target, sorted out once.

/// The observations attributed to the target name, sorted out once so every rule reads the
/// same view. Observations of other names (a redirect's host) are left to the HTTP rules.
struct Facts<'a> {
    m: &'a Measurement,
    /// The target host, lower case, without a trailing dot.
    domain: String,
    https: bool,
    /// The URL's port, to tell the target's connects from a redirect's.
    port: Option<u16>,
    /// The control service's answer, when it answered.
    control: Option<&'a ControlResponse>,
    /// The network resolver's queries for the target.
    net_dns: Vec<&'a DnsObservation>,
    /// The control service's own resolver queries for the target.
    svc_dns: Vec<&'a DnsObservation>,
    /// The probe's encrypted control resolver (DoH/DoT) queries for the target.
    doh_dns: Vec<&'a DnsObservation>,
    net_addrs: Vec<IpAddr>,
    /// Addresses from the control service and the encrypted resolver together.
    ctl_addrs: Vec<IpAddr>,
    /// Non-decoy handshakes with the target's name.
    tls: Vec<&'a TlsObservation>,
    decoys: Vec<&'a TlsObservation>,
    /// The control's non-decoy handshakes with the target's name.
    ctl_tls: Vec<&'a TlsObservation>,
    /// HTTP hops in hop order.
    hops: Vec<&'a HttpObservation>,
}

impl<'a> Facts<'a> {
    fn new(m: &'a Measurement) -> Self {
        let parsed = url::Url::parse(&m.url).ok();
        let https = match &parsed {
            Some(u) => u.scheme() == "https",
            None => m
                .url
                .get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("https://")),
        };
        let port = parsed.as_ref().and_then(|u| u.port_or_known_default());
        let domain = if m.domain.trim().is_empty() {
            url_host(&m.url).unwrap_or_default()
        } else {
            norm_host(&m.domain)
        };
        let control = m.control.as_ref().filter(|_| m.control_failure.is_none());
        let for_target = |o: &&DnsObservation| norm_host(&o.query) == domain;
        let net_dns: Vec<_> = m
            .dns
            .iter()
            .filter(|o| o.role == ResolverRole::Network)
            .filter(for_target)
            .collect();
        let doh_dns: Vec<_> = m
            .dns
            .iter()
            .filter(|o| o.role == ResolverRole::Control)
            .filter(for_target)
            .collect();
        let svc_dns: Vec<_> = control
            .map(|c| c.dns.iter().filter(for_target).collect())
            .unwrap_or_default();
        let net_addrs = addrs_of(&net_dns);
        let ctl_addrs = addrs_of(&svc_dns.iter().chain(&doh_dns).copied().collect::<Vec<_>>());
        let real_tls = |t: &&TlsObservation| !t.decoy && norm_host(&t.server_name) == domain;
        let tls = m.tls.iter().filter(real_tls).collect();
        let decoys = m.tls.iter().filter(|t| t.decoy).collect();
        let ctl_tls = control
            .map(|c| c.tls.iter().filter(real_tls).collect())
            .unwrap_or_default();
        let mut hops: Vec<_> = m.http.iter().collect();
        hops.sort_by_key(|h| h.hop);
        Facts {
            m,
            domain,
            https,
            port,
            control,
            net_dns,
            svc_dns,
            doh_dns,
            net_addrs,
            ctl_addrs,
            tls,
            decoys,
            ctl_tls,
            hops,
        }
    }

    /// Every control-side DNS observation: the control service's and the encrypted resolver's.
    fn ctl_dns(&self) -> impl Iterator<Item = &'a DnsObservation> + '_ {
        self.svc_dns.iter().chain(&self.doh_dns).copied()
    }

    /// The target's connects: the URL's port, and the target's addresses when any are known.
    fn target_tcp<'b>(&self, tcp: &'b [TcpObservation]) -> Vec<&'b TcpObservation> {
        tcp.iter()
            .filter(|t| self.port.is_none_or(|p| t.addr.port() == p))
            .filter(|t| {
                (self.net_addrs.is_empty() && self.ctl_addrs.is_empty())
                    || self.net_addrs.contains(&t.addr.ip())
                    || self.ctl_addrs.contains(&t.addr.ip())
            })
            .collect()
    }
}

/// What a rule decided, before the evidence is attached.
struct Outcome {
    status: Status,
    method: Option<Method>,
    reason: String,
}

impl Outcome {
    fn new(status: Status, method: Option<Method>, reason: impl Into<String>) -> Self {
        Outcome {
            status,
            method,
            reason: reason.into(),
        }
    }
    fn blocked(method: Method, reason: impl Into<String>) -> Self {
        Self::new(Status::Blocked, Some(method), reason)
    }
    fn down(reason: impl Into<String>) -> Self {
        Self::new(Status::Down, None, reason)
    }
    fn inconclusive(reason: impl Into<String>) -> Self {
        Self::new(Status::Inconclusive, None, reason)
    }
    fn accessible(reason: impl Into<String>) -> Self {
        Self::new(Status::Accessible, None, reason)
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Offline.

/// Offline when the run found no network, or a step was skipped for that reason: nothing
/// measured in that state says anything about the site.
fn offline_stage(f: &Facts, ctx: &RunContext, ev: &mut Vec<String>) -> Option<Outcome> {
    let m = f.m;
    let skipped = m
        .dns
        .iter()
        .any(|o| o.failure == Some(Failure::NetworkOffline))
        || m.tcp
            .iter()
            .any(|o| o.failure == Some(Failure::NetworkOffline))
        || m.tls
            .iter()
            .any(|o| o.failure == Some(Failure::NetworkOffline))
        || m.http
            .iter()
            .any(|o| o.failure == Some(Failure::NetworkOffline));
    if !(ctx.offline || m.connectivity.offline || skipped) {
        return None;
    }
    let c = &m.connectivity;
    if c.anchors_tried > 0 {
        ev.push(format!(
            "connectivity.anchors={}/{}",
            c.anchors_ok, c.anchors_tried
        ));
    }
    if skipped {
        ev.push("failure=network_offline".to_string());
    }
    let why = if c.anchors_tried > 0 {
        format!(
            "{} of {} reference hosts answered",
            c.anchors_ok, c.anchors_tried
        )
    } else {
        "no reference host answered".to_string()
    };
    Some(Outcome::new(
        Status::Offline,
        None,
        format!("the network looks cut off: {why}, so this says nothing about the site itself"),
    ))
}

// ---------------------------------------------------------------------------------------------
// 2. DNS.

/// How the network resolver's addresses compare with the control's.
#[derive(Clone, Debug, PartialEq)]
enum DnsConsistency {
    /// Nothing to compare with: no control addresses, or no network addresses.
    Unknown,
    /// At least one address in common.
    Common,
    /// No address in common, but a verified handshake to a network address proves it serves
    /// the real site (typically a CDN that answers differently per vantage point).
    ProvenByTls(SocketAddr),
    /// No address in common, but (cleartext) the page fetched from a network address matches
    /// the control's: a transparent proxy relaying the real content is not a block.
    ProvenByPage,
    /// No address in common and no proof: the answers are forged.
    Inconsistent,
}

/// Compare the network resolver's addresses with the control's, and look for proof that
/// differing addresses still serve the real site.
fn dns_consistency(f: &Facts) -> DnsConsistency {
    if f.net_addrs.is_empty() || f.ctl_addrs.is_empty() {
        return DnsConsistency::Unknown;
    }
    if f.net_addrs.iter().any(|a| f.ctl_addrs.contains(a)) {
        return DnsConsistency::Common;
    }
    if let Some(t) = f
        .tls
        .iter()
        .find(|t| t.verified() && f.net_addrs.contains(&t.addr.ip()))
    {
        return DnsConsistency::ProvenByTls(t.addr);
    }
    if !f.https {
        let from_network_addr = f
            .hops
            .first()
            .and_then(|h| h.addr)
            .is_some_and(|a| f.net_addrs.contains(&a.ip()));
        let same_page = match (
            final_response(&f.m.http),
            f.control.and_then(|c| final_response(&c.http)),
        ) {
            (Some(p), Some(c)) => p.blockpage.is_none() && pages_similar(p, c),
            _ => false,
        };
        if from_network_addr && same_page {
            return DnsConsistency::ProvenByPage;
        }
    }
    DnsConsistency::Inconsistent
}

fn dns_stage(f: &Facts, ev: &mut Vec<String>) -> Option<Outcome> {
    if f.net_dns.is_empty() {
        // An IP-literal URL, or DNS not measured: nothing to judge here.
        return None;
    }
    ev.push(dns_summary("dns.network", &f.net_dns));
    if !f.svc_dns.is_empty() {
        ev.push(dns_summary("dns.control", &f.svc_dns));
    }
    if !f.doh_dns.is_empty() {
        ev.push(dns_summary("dns.control_resolver", &f.doh_dns));
    }
    let domain = &f.domain;

    // Injection: two different answers to one query cannot both be honest.
    let injected = injected_answers(&f.net_dns);
    if let Some((first, late)) = injected.first() {
        for (o, l) in injected.iter().take(MAX_EVIDENCE_ADDRS) {
            ev.push(format!(
                "dns.injected=first:{} late:{} +{:.0}ms",
                first_answer_text(o),
                late_answer_text(l),
                l.after_ms
            ));
        }
        return Some(Outcome::blocked(
            Method::Dns,
            format!(
                "two different DNS answers came back for one query about {domain} ({}, then {}): \
                 an injected answer raced the real one",
                first_answer_text(first),
                late_answer_text(late)
            ),
        ));
    }

    if f.net_addrs.is_empty() {
        return Some(dns_failure(f, ev));
    }

    // Bogons: no public site has a private or reserved address, unless its own DNS says so.
    let bogons: Vec<IpAddr> = f
        .net_dns
        .iter()
        .filter(|o| o.failure.is_none())
        .flat_map(|o| &o.answers)
        .filter(|a| a.bogon && !f.ctl_addrs.contains(&a.addr))
        .map(|a| a.addr)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !bogons.is_empty() {
        ev.push(format!("dns.network.bogon={}", join_addrs(&bogons)));
        let ctl_answers: Vec<_> = f
            .ctl_dns()
            .filter(|o| o.failure.is_none())
            .flat_map(|o| &o.answers)
            .collect();
        if !ctl_answers.is_empty() && ctl_answers.iter().all(|a| a.bogon) {
            ev.push("dns.control.bogon=all".to_string());
            return Some(Outcome::down(format!(
                "{domain} points at addresses no public site can have ({}) for the control too: \
                 the site's own DNS is broken",
                join_addrs(&f.ctl_addrs)
            )));
        }
        let compared = if f.ctl_addrs.is_empty() {
            "a bogon is never a real site's address".to_string()
        } else {
            format!("the control resolved {}", join_addrs(&f.ctl_addrs))
        };
        return Some(Outcome::blocked(
            Method::Dns,
            format!(
                "the network's resolver answered {} for {domain}, an address no public site can \
                 have ({compared}): DNS tampering",
                join_addrs(&bogons)
            ),
        ));
    }

    match dns_consistency(f) {
        DnsConsistency::Unknown | DnsConsistency::Common => None,
        DnsConsistency::ProvenByTls(addr) => {
            ev.push(format!("dns.consistent=tls_verified@{addr}"));
            None
        }
        DnsConsistency::ProvenByPage => {
            ev.push("dns.consistent=same_page".to_string());
            None
        }
        DnsConsistency::Inconsistent => {
            ev.push(format!(
                "dns.inconsistent=network:{} control:{}",
                join_addrs(&f.net_addrs),
                join_addrs(&f.ctl_addrs)
            ));
            let blockpage = f.hops.iter().find_map(|h| h.blockpage.as_deref());
            if let Some(bp) = blockpage {
                ev.push(format!("http.blockpage={bp}"));
            }
            for t in f.tls.iter().take(MAX_EVIDENCE_ADDRS) {
                if let Some(ca) = &t.interception_ca {
                    ev.push(format!("tls.interception_ca={ca}"));
                }
            }
            let tail = match blockpage {
                Some(bp) => format!("which serves the blockpage {bp}"),
                None => "and nothing shows that it serves the real site".to_string(),
            };
            Some(Outcome::blocked(
                Method::Dns,
                format!(
                    "the network's resolver points {domain} at {} instead of the control's {}, \
                     {tail}: DNS tampering",
                    join_addrs(&f.net_addrs),
                    join_addrs(&f.ctl_addrs)
                ),
            ))
        }
    }
}

/// The network resolver gave no address: compare with the control, query type by query type,
/// so a name with only IPv6 addresses is not called blocked for lacking an A record.
fn dns_failure(f: &Facts, ev: &mut Vec<String>) -> Outcome {
    let domain = &f.domain;
    let failure = f
        .net_dns
        .iter()
        .filter(|o| o.query_type == QueryType::A)
        .chain(&f.net_dns)
        .find_map(|o| o.failure.clone())
        .unwrap_or(Failure::DnsNoAnswer);
    let what = match &failure {
        Failure::DnsNxdomain => format!("the network's resolver says {domain} does not exist"),
        Failure::DnsNoAnswer => format!("the network's resolver returned no address for {domain}"),
        Failure::DnsTimeout => format!("the network's resolver did not answer for {domain}"),
        Failure::DnsServfail => format!("the network's resolver answered SERVFAIL for {domain}"),
        Failure::DnsRefused => format!("the network's resolver refused to resolve {domain}"),
        Failure::DnsBadResponse => format!("the network's resolver answered garbage for {domain}"),
        other => format!("resolving {domain} failed ({})", other.name()),
    };
    let failed_types: Vec<QueryType> = f.net_dns.iter().map(|o| o.query_type).collect();
    let ctl_resolved = f.ctl_dns().any(|o| {
        o.failure.is_none()
            && !o.answers.is_empty()
            && (failed_types.contains(&o.query_type) || failure == Failure::DnsNxdomain)
    });
    // The control service is uncensored, so any failure of its own counts; the encrypted
    // resolver runs from the probe's network, so only an actual answer (NXDOMAIN, no address,
    // SERVFAIL) counts, never a timeout that the censor may have caused.
    let ctl_denies = f.svc_dns.iter().any(|o| o.failure.is_some())
        || f.doh_dns.iter().any(|o| {
            matches!(
                o.failure,
                Some(Failure::DnsNxdomain | Failure::DnsNoAnswer | Failure::DnsServfail)
            )
        });
    let resolver_dead = f.m.connectivity.resolver_ok == Some(false)
        && !matches!(
            failure,
            Failure::DnsNxdomain | Failure::DnsNoAnswer | Failure::DnsServfail
        );
    if resolver_dead {
        ev.push("connectivity.resolver=dead".to_string());
        return Outcome::inconclusive(format!(
            "{what}, but that resolver answered nothing else in this run either, so its silence \
             says nothing about this site"
        ));
    }
    if ctl_resolved {
        return Outcome::blocked(
            Method::Dns,
            format!("{what} while the control resolved it: DNS blocking"),
        );
    }
    if ctl_denies {
        return Outcome::down(format!(
            "{what}, and the control cannot resolve it either: the name does not resolve anywhere"
        ));
    }
    if f.control.is_none() {
        Outcome::inconclusive(format!(
            "{what}, but the control was unavailable, so a block cannot be told from a dead name"
        ))
    } else {
        Outcome::inconclusive(format!(
            "{what}, and the control gave no usable answer to compare with"
        ))
    }
}

/// Late responses that differ from the first answer: a censor's forged answer racing the real
/// one (or the other way round).
fn injected_answers<'a>(
    obs: &[&'a DnsObservation],
) -> Vec<(&'a DnsObservation, &'a LateDnsResponse)> {
    obs.iter()
        .flat_map(|o| {
            o.late_responses
                .iter()
                .filter(|l| late_differs(o, l))
                .map(move |l| (*o, l))
        })
        .collect()
}

/// Whether a late response says something else than the first: other addresses, or another
/// response code. Order does not matter.
fn late_differs(o: &DnsObservation, l: &LateDnsResponse) -> bool {
    let first: BTreeSet<IpAddr> = o.answers.iter().map(|a| a.addr).collect();
    let late: BTreeSet<IpAddr> = l.answers.iter().copied().collect();
    first != late
        || o.rcode
            .as_deref()
            .is_some_and(|r| !r.eq_ignore_ascii_case(&l.rcode))
}

fn first_answer_text(o: &DnsObservation) -> String {
    if o.answers.is_empty() {
        o.rcode
            .clone()
            .or_else(|| o.failure.as_ref().map(|f| f.name().to_string()))
            .unwrap_or_else(|| "nothing".to_string())
    } else {
        join_addrs(&o.answers.iter().map(|a| a.addr).collect::<Vec<_>>())
    }
}

fn late_answer_text(l: &LateDnsResponse) -> String {
    if l.answers.is_empty() {
        l.rcode.clone()
    } else {
        join_addrs(&l.answers)
    }
}

/// `key=N addrs` when the queries resolved, else `key=<failure>` (`nxdomain`, `timeout`, ...).
fn dns_summary(key: &str, obs: &[&DnsObservation]) -> String {
    let addrs = addrs_of(obs);
    if !addrs.is_empty() {
        return format!("{key}={} addrs", addrs.len());
    }
    let failure = obs
        .iter()
        .find_map(|o| o.failure.as_ref())
        .map(|f| f.name().trim_start_matches("dns_").to_string())
        .unwrap_or_else(|| "no_answer".to_string());
    format!("{key}={failure}")
}

/// Distinct addresses of successful queries, in answer order.
fn addrs_of(obs: &[&DnsObservation]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for a in obs
        .iter()
        .filter(|o| o.failure.is_none())
        .flat_map(|o| &o.answers)
    {
        if !out.contains(&a.addr) {
            out.push(a.addr);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 3. TCP.

fn tcp_stage(f: &Facts, ev: &mut Vec<String>) -> Option<Outcome> {
    let domain = &f.domain;
    // A probe without IPv6 connectivity fails every IPv6 connect with "network unreachable":
    // that is this network's shape, not a block, so those attempts do not count.
    let (no_v6_route, tried): (Vec<&TcpObservation>, Vec<&TcpObservation>) = f
        .target_tcp(&f.m.tcp)
        .into_iter()
        .partition(|t| t.addr.is_ipv6() && t.failure == Some(Failure::NetworkUnreachable));
    if !no_v6_route.is_empty() {
        ev.push("tcp.ipv6=no_route".to_string());
    }
    if tried.is_empty() {
        if no_v6_route.is_empty() {
            return None;
        }
        return Some(Outcome::inconclusive(format!(
            "this network has no IPv6 route and every address of {domain} that was tried is IPv6"
        )));
    }
    if tried.iter().any(|t| t.failure.is_none()) {
        return None;
    }
    for t in tried.iter().take(MAX_EVIDENCE_ADDRS) {
        if let Some(x) = &t.failure {
            ev.push(format!("tcp.failure={}@{}", x.name(), t.addr));
        }
    }
    let failure = tried.iter().find_map(|t| t.failure.clone());
    let how = match &failure {
        Some(Failure::ConnectionRefused) => "was refused".to_string(),
        Some(Failure::GenericTimeout) => "timed out".to_string(),
        Some(Failure::ConnectionReset) => "was reset".to_string(),
        Some(Failure::HostUnreachable) => "found the host unreachable".to_string(),
        Some(Failure::NetworkUnreachable) => "found no route".to_string(),
        Some(other) => format!("failed ({})", other.name()),
        None => "failed".to_string(),
    };
    let what = format!("every connection to {domain} {how}");
    let Some(c) = f.control else {
        return Some(Outcome::inconclusive(format!(
            "{what}, but the control was unavailable, so a block cannot be told from a site that \
             is down"
        )));
    };
    let ctl_tcp = f.target_tcp(&c.tcp);
    if ctl_tcp.iter().any(|t| t.failure.is_none()) {
        ev.push("tcp.control=ok".to_string());
        return Some(Outcome::blocked(
            Method::Tcp,
            format!("{what} here while the control connected: the site's addresses are blocked"),
        ));
    }
    if !ctl_tcp.is_empty() {
        ev.push("tcp.control=failed".to_string());
        return Some(Outcome::down(format!(
            "{what}, for the control too: the site is down"
        )));
    }
    Some(Outcome::inconclusive(format!(
        "{what}, and the control did not get as far as connecting, so there is nothing to \
         compare with"
    )))
}

// ---------------------------------------------------------------------------------------------
// 4. TLS.

/// How far the control got with the TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ControlTls {
    /// No control at all.
    Unavailable,
    /// The control answered but made no handshake (it failed earlier).
    NotReached,
    /// Every control handshake failed.
    Failed,
    /// A handshake completed, but no chain verified.
    Unverified,
    /// A handshake completed with a verified chain.
    Verified,
}

fn control_tls(f: &Facts) -> ControlTls {
    if f.control.is_none() {
        ControlTls::Unavailable
    } else if f.ctl_tls.is_empty() {
        ControlTls::NotReached
    } else if f.ctl_tls.iter().any(|t| t.verified()) {
        ControlTls::Verified
    } else if f.ctl_tls.iter().any(|t| completed(t)) {
        ControlTls::Unverified
    } else {
        ControlTls::Failed
    }
}

/// The handshake got as far as the certificate (a certificate failure recorded as the handshake
/// failure still means the server answered).
fn completed(t: &TlsObservation) -> bool {
    t.failure.as_ref().is_none_or(Failure::is_certificate)
}

fn tls_stage(f: &Facts, ev: &mut Vec<String>) -> Option<Outcome> {
    if !f.https || f.tls.is_empty() {
        return None;
    }
    let domain = &f.domain;

    // A state interception CA anywhere is interception, even if other addresses verified.
    if let Some(t) = f.tls.iter().find(|t| t.interception_ca.is_some()) {
        let ca = t.interception_ca.as_deref().unwrap_or_default();
        ev.push(format!("tls.interception_ca={ca}"));
        push_verification_evidence(f, ev);
        let partial = if f.tls.iter().any(|t| t.verified()) {
            " on some of its addresses"
        } else {
            ""
        };
        return Some(Outcome::blocked(
            Method::Mitm,
            format!(
                "the certificate presented for {domain}{partial} was issued by {ca}, the state's \
                 interception authority: the connection is intercepted"
            ),
        ));
    }
    if f.tls.iter().any(|t| t.verified()) {
        return None;
    }
    if f.tls.iter().any(|t| completed(t)) {
        return Some(tls_unverified(f, ev));
    }
    Some(tls_interrupted(f, ev))
}

fn push_verification_evidence(f: &Facts, ev: &mut Vec<String>) {
    for t in f
        .tls
        .iter()
        .filter(|t| completed(t) && !t.verified())
        .take(MAX_EVIDENCE_ADDRS)
    {
        ev.push(format!(
            "tls.verification={}@{}",
            verification_name(t),
            t.addr
        ));
        if let Some(leaf) = t.peer_certificates.first() {
            ev.push(format!("tls.leaf={}", leaf.sha256));
            ev.push(format!("tls.issuer={}", leaf.issuer));
        }
    }
}

fn verification_name(t: &TlsObservation) -> &'static str {
    t.verification_failure
        .as_ref()
        .or(t.failure.as_ref())
        .map(Failure::name)
        .unwrap_or("verified")
}

/// Handshakes completed, none verified, no state CA: compare with the control's certificate.
fn tls_unverified(f: &Facts, ev: &mut Vec<String>) -> Outcome {
    let domain = &f.domain;
    push_verification_evidence(f, ev);
    let why = f
        .tls
        .iter()
        .find(|t| completed(t))
        .map(|t| verification_name(t))
        .unwrap_or("unverified");
    match control_tls(f) {
        ControlTls::Verified => {
            if let Some(leaf) = f
                .ctl_tls
                .iter()
                .find(|t| t.verified())
                .and_then(|t| t.peer_certificates.first())
            {
                ev.push(format!("tls.control.leaf={}", leaf.sha256));
            }
            ev.push("tls.control=verified".to_string());
            Outcome::blocked(
                Method::Mitm,
                format!(
                    "the certificate presented for {domain} does not verify here ({why}) while \
                     the control got a valid one: the connection is intercepted with a forged \
                     certificate"
                ),
            )
        }
        ControlTls::Unverified => {
            ev.push("tls.control=unverified".to_string());
            Outcome::down(format!(
                "the site's own certificate is invalid for everyone ({why}), the control's too: a \
                 broken site, not interception"
            ))
        }
        ControlTls::Failed | ControlTls::NotReached => Outcome::inconclusive(format!(
            "the certificate presented for {domain} does not verify ({why}), and the control \
             completed no handshake to compare it with"
        )),
        ControlTls::Unavailable => Outcome::inconclusive(format!(
            "the certificate presented for {domain} does not verify ({why}), but the control was \
             unavailable to tell interception from a broken certificate"
        )),
    }
}

/// No handshake with the real name got as far as the certificate.
fn tls_interrupted(f: &Facts, ev: &mut Vec<String>) -> Outcome {
    let domain = &f.domain;
    let failed: Vec<&TlsObservation> = f.tls.iter().copied().filter(|t| !completed(t)).collect();
    for t in failed.iter().take(MAX_EVIDENCE_ADDRS) {
        if let Some(x) = &t.failure {
            ev.push(format!("tls.failure={}@{}", x.name(), t.addr));
        }
    }
    let failure = failed
        .iter()
        .filter_map(|t| t.failure.clone())
        .find(Failure::is_interruption)
        .or_else(|| failed.iter().find_map(|t| t.failure.clone()));
    let decoys: Vec<&TlsObservation> = f
        .decoys
        .iter()
        .copied()
        .filter(|d| failed.iter().any(|t| t.addr == d.addr))
        .collect();
    for d in decoys.iter().take(MAX_EVIDENCE_ADDRS) {
        let result = if completed(d) {
            "ok".to_string()
        } else {
            d.failure
                .as_ref()
                .map_or("failed", Failure::name)
                .to_string()
        };
        ev.push(format!("tls.decoy={result}@{}", d.addr));
    }
    let decoy_ok = decoys.iter().any(|d| completed(d));
    let decoy_failed = !decoys.is_empty() && !decoy_ok;
    let what = interruption_phrase(failure.as_ref(), domain);
    let interruption = failure.as_ref().is_some_and(Failure::is_interruption);
    match control_tls(f) {
        ControlTls::Verified | ControlTls::Unverified => {
            ev.push("tls.control=ok".to_string());
            let tail = if decoy_failed {
                "the server's address is filtered during the handshake, whatever the name"
            } else if interruption {
                "SNI filtering"
            } else {
                "TLS interference"
            };
            Outcome::blocked(
                Method::Tls,
                format!("{what} while the control completed the handshake: {tail}"),
            )
        }
        ControlTls::Failed => {
            ev.push("tls.control=failed".to_string());
            Outcome::down(format!(
                "{what}, and the control's handshake failed too: the site's TLS server is down"
            ))
        }
        ControlTls::NotReached | ControlTls::Unavailable if decoy_ok => Outcome::blocked(
            Method::Tls,
            format!(
                "{what} while a handshake with another name to the same server succeeded: SNI \
                 filtering, shown locally without the control"
            ),
        ),
        ControlTls::NotReached => Outcome::inconclusive(format!(
            "{what}, and the control did not get as far as a handshake, so there is nothing to \
             compare with"
        )),
        ControlTls::Unavailable => Outcome::inconclusive(format!(
            "{what}, but the control was unavailable, so a block cannot be told from a failing \
             server"
        )),
    }
}

fn interruption_phrase(failure: Option<&Failure>, domain: &str) -> String {
    match failure {
        Some(Failure::ConnectionReset) => {
            format!("the connection was reset right after the ClientHello naming {domain}")
        }
        Some(Failure::GenericTimeout) => {
            format!("the TLS handshake timed out right after the ClientHello naming {domain}")
        }
        Some(Failure::Eof) => {
            format!("the connection was closed right after the ClientHello naming {domain}")
        }
        Some(Failure::SslFailedHandshake) => {
            format!("the TLS handshake was broken off right after the ClientHello naming {domain}")
        }
        Some(other) => format!("the TLS handshake with {domain} failed ({})", other.name()),
        None => format!("the TLS handshake with {domain} failed"),
    }
}

// ---------------------------------------------------------------------------------------------
// 5 and 6. HTTP.

fn http_stage(f: &Facts, ev: &mut Vec<String>) -> Outcome {
    let domain = &f.domain;
    if f.hops.is_empty() {
        return Outcome::inconclusive(format!(
            "no HTTP exchange with {domain} was recorded, so whether the page loads is unknown"
        ));
    }
    // A hop is trusted when its content provably comes from the site: it was fetched over a
    // verified TLS connection, and the redirect that led there was trusted too or the hop is
    // on the target's own site (http -> https upgrades). A cleartext hop can be forged.
    let mut trusted = Vec::with_capacity(f.hops.len());
    for (i, h) in f.hops.iter().enumerate() {
        let same_site = url_host(&h.url).is_some_and(|host| same_site(&host, domain));
        let prev = i > 0 && trusted[i - 1];
        trusted.push(hop_verified(f.m, h) && (i == 0 || prev || same_site));
    }

    if let Some(h) = f
        .hops
        .iter()
        .zip(&trusted)
        .find_map(|(h, t)| (!t && h.blockpage.is_some()).then_some(*h))
    {
        let bp = h.blockpage.as_deref().unwrap_or_default();
        ev.push(format!("http.blockpage={bp}"));
        if h.hop > 0 {
            ev.push(format!("http.blockpage.hop={}", h.hop));
        }
        return Outcome::blocked(
            Method::Http,
            format!("the answer for {domain} is a known blockpage ({bp})"),
        );
    }

    if let Some(h) = f.hops.iter().find(|h| h.failure.is_some()) {
        return hop_failure(f, h, ev);
    }

    let (last, last_trusted) = match (f.hops.last(), trusted.last()) {
        (Some(h), Some(t)) => (*h, *t),
        _ => return Outcome::inconclusive(format!("no HTTP exchange with {domain} was recorded")),
    };
    let Some(status) = last.status else {
        return Outcome::inconclusive(format!(
            "the last HTTP exchange with {domain} recorded no status"
        ));
    };
    let ctl_final = f.control.and_then(|c| final_response(&c.http));
    match ctl_final {
        Some(c) => ev.push(format!(
            "http.status={status} control={}",
            c.status.unwrap_or_default()
        )),
        None => ev.push(format!("http.status={status}")),
    }

    if last_trusted {
        if let Some(bp) = &last.blockpage {
            ev.push(format!("http.blockpage={bp}"));
        }
        let differs = ctl_final.is_some_and(|c| !pages_similar(last, c));
        if status >= 400 || differs || last.blockpage.is_some() {
            ev.push("server_side_refusal".to_string());
            if let Some(c) = ctl_final {
                push_page_comparison(last, c, ev);
            }
            let said = match &last.blockpage {
                _ if status >= 400 => format!("answered {status}"),
                Some(bp) => format!("served a page that looks like the blockpage {bp}"),
                None => format!("served a different page than the control's (status {status})"),
            };
            return Outcome::accessible(format!(
                "the site itself {said} over an authenticated connection: a server-side \
                 restriction, not network censorship"
            ));
        }
        return Outcome::accessible(format!(
            "{domain} loaded over an authenticated (verified TLS) connection"
        ));
    }

    match ctl_final {
        Some(c) if pages_similar(last, c) => Outcome::accessible(format!(
            "{domain} loaded and the page matches the control's"
        )),
        Some(c) => {
            push_page_comparison(last, c, ev);
            Outcome::blocked(
                Method::Http,
                format!(
                    "the page differs from the control's: {}",
                    page_difference(last, c)
                ),
            )
        }
        None => {
            let why = if f.control.is_none() {
                "the control was unavailable"
            } else {
                "the control did not load it"
            };
            Outcome::accessible(format!(
                "{domain} loaded, but the page could not be compared because {why}"
            ))
        }
    }
}

/// A hop failed at some step: compare with the control, then look for local evidence.
fn hop_failure(f: &Facts, h: &HttpObservation, ev: &mut Vec<String>) -> Outcome {
    let failure = h.failure.clone().unwrap_or_else(|| Failure::unknown(""));
    let step = h.failed_step.unwrap_or(Step::Http);
    let method = match step {
        Step::Dns => Method::Dns,
        Step::Tcp => Method::Tcp,
        Step::Tls if failure.is_certificate() => Method::Mitm,
        Step::Tls => Method::Tls,
        Step::Http => Method::Http,
    };
    ev.push(format!(
        "http.hop{}.failure={}@{step}",
        h.hop,
        failure.name()
    ));
    let what = hop_failure_phrase(f, h, step, &failure);
    let ctl_final = f.control.and_then(|c| final_response(&c.http));
    if ctl_final.is_some() {
        ev.push("http.control=ok".to_string());
        return Outcome::blocked(method, format!("{what}, while the control loaded the page"));
    }
    let ctl_step = f.control.and_then(control_failed_step);
    if ctl_step == Some(step) {
        ev.push(format!("http.control.failed_step={step}"));
        return Outcome::down(format!(
            "{what}, and the control failed the same way: the site is down or broken"
        ));
    }
    if let Some((method, why)) = local_evidence(f, h, step, &failure, ev) {
        return Outcome::blocked(method, format!("{what}, and {why}"));
    }
    match (f.control, ctl_step) {
        (None, _) => Outcome::inconclusive(format!(
            "{what}, but the control was unavailable, so a block cannot be told from a failing \
             site"
        )),
        (Some(_), Some(s)) => Outcome::inconclusive(format!(
            "{what}, and the control failed too, at another step ({s}), so the two cannot be \
             compared"
        )),
        (Some(_), None) => Outcome::inconclusive(format!(
            "{what}, and the control recorded no result to compare with"
        )),
    }
}

fn hop_failure_phrase(f: &Facts, h: &HttpObservation, step: Step, failure: &Failure) -> String {
    let name = failure.name();
    if h.hop > 0 {
        let to = url_host(&h.url).unwrap_or_else(|| "another address".to_string());
        return match failure {
            Failure::HttpTooManyRedirects => {
                format!("{} redirected too many times (or in a loop) here", f.domain)
            }
            Failure::HttpInvalidRedirect => {
                format!(
                    "{} redirected to an address that cannot be followed",
                    f.domain
                )
            }
            _ => format!("the redirect to {to} {} ({name})", step_phrase(step)),
        };
    }
    match (step, failure) {
        (Step::Http, Failure::ConnectionReset) => {
            "the connection was reset after the HTTP request was sent".to_string()
        }
        (Step::Http, Failure::GenericTimeout) => {
            "the HTTP request got no answer before the timeout".to_string()
        }
        (Step::Http, Failure::Eof) => {
            "the connection was closed after the HTTP request was sent".to_string()
        }
        (Step::Http, Failure::HttpTooManyRedirects) => {
            format!("{} redirected too many times (or in a loop) here", f.domain)
        }
        (Step::Http, Failure::HttpInvalidRedirect) => {
            format!(
                "{} redirected to an address that cannot be followed",
                f.domain
            )
        }
        _ => format!("the request to {} {} ({name})", f.domain, step_phrase(step)),
    }
}

fn step_phrase(step: Step) -> &'static str {
    match step {
        Step::Dns => "could not be resolved",
        Step::Tcp => "could not connect",
        Step::Tls => "failed during the TLS handshake",
        Step::Http => "failed during the HTTP exchange",
    }
}

/// Where the control's own measurement stopped: its first failing hop's step, or (with no HTTP
/// at all) the first step at which every attempt failed.
fn control_failed_step(c: &ControlResponse) -> Option<Step> {
    if let Some(h) = c
        .http
        .iter()
        .filter(|h| h.failure.is_some())
        .min_by_key(|h| h.hop)
    {
        return Some(h.failed_step.unwrap_or(Step::Http));
    }
    if !c.http.is_empty() {
        return None;
    }
    let real_tls: Vec<_> = c.tls.iter().filter(|t| !t.decoy).collect();
    if !c.dns.is_empty() && c.dns.iter().all(|o| o.answers.is_empty()) {
        Some(Step::Dns)
    } else if !c.tcp.is_empty() && c.tcp.iter().all(|t| t.failure.is_some()) {
        Some(Step::Tcp)
    } else if !real_tls.is_empty() && real_tls.iter().all(|t| !completed(t)) {
        Some(Step::Tls)
    } else {
        None
    }
}

/// Evidence recorded by the probe alone that cannot be innocent, about the failing hop's host:
/// an injected or bogon DNS answer, a state interception CA, or a decoy handshake that works
/// where the real one is cut.
fn local_evidence(
    f: &Facts,
    h: &HttpObservation,
    step: Step,
    failure: &Failure,
    ev: &mut Vec<String>,
) -> Option<(Method, String)> {
    let host = url_host(&h.url)?;
    let dns: Vec<&DnsObservation> =
        f.m.dns
            .iter()
            .filter(|o| o.role == ResolverRole::Network && norm_host(&o.query) == host)
            .collect();
    if let Some((o, l)) = injected_answers(&dns).first() {
        ev.push(format!(
            "dns.injected=first:{} late:{} +{:.0}ms",
            first_answer_text(o),
            late_answer_text(l),
            l.after_ms
        ));
        return Some((
            Method::Dns,
            format!("two different DNS answers came back for {host}: an injected answer"),
        ));
    }
    let bogons: Vec<IpAddr> = dns
        .iter()
        .filter(|o| o.failure.is_none())
        .flat_map(|o| &o.answers)
        .filter(|a| a.bogon)
        .map(|a| a.addr)
        .collect();
    if !bogons.is_empty() {
        ev.push(format!("dns.network.bogon={}", join_addrs(&bogons)));
        return Some((
            Method::Dns,
            format!(
                "the network's resolver answered {} for {host}, an address no public site can have",
                join_addrs(&bogons)
            ),
        ));
    }
    let tls: Vec<&TlsObservation> =
        f.m.tls
            .iter()
            .filter(|t| !t.decoy && norm_host(&t.server_name) == host)
            .collect();
    if let Some(ca) = tls.iter().find_map(|t| t.interception_ca.as_deref()) {
        ev.push(format!("tls.interception_ca={ca}"));
        return Some((
            Method::Mitm,
            format!("its certificate was issued by {ca}, the state's interception authority"),
        ));
    }
    if step == Step::Tls && failure.is_interruption() {
        let cut: Vec<SocketAddr> = tls
            .iter()
            .filter(|t| !completed(t))
            .map(|t| t.addr)
            .chain(h.addr)
            .collect();
        if let Some(d) = f
            .decoys
            .iter()
            .find(|d| completed(d) && cut.contains(&d.addr))
        {
            ev.push(format!("tls.decoy=ok@{}", d.addr));
            return Some((
                Method::Tls,
                "a handshake with another name to the same server succeeded: SNI filtering"
                    .to_string(),
            ));
        }
    }
    None
}

/// Whether a hop was fetched over a TLS connection whose chain verified for the hop's host.
/// Hop 0's handshake is in the measurement's TLS list; a redirect hop's handshake is not
/// recorded there, but the engine refuses to send a request over an unverified redirect hop
/// (it records a TLS failure instead), so an https redirect hop with a response was verified.
fn hop_verified(m: &Measurement, h: &HttpObservation) -> bool {
    let Ok(u) = url::Url::parse(&h.url) else {
        return false;
    };
    if u.scheme() != "https" || h.failure.is_some() {
        return false;
    }
    let Some(host) = url_host(&h.url) else {
        return false;
    };
    let matching: Vec<&TlsObservation> = m
        .tls
        .iter()
        .filter(|t| !t.decoy && norm_host(&t.server_name) == host)
        .filter(|t| h.addr.is_none_or(|a| a == t.addr))
        .collect();
    if matching.is_empty() {
        return h.hop > 0 && h.status.is_some();
    }
    matching.iter().any(|t| t.verified())
}

fn push_page_comparison(p: &HttpObservation, c: &HttpObservation, ev: &mut Vec<String>) {
    ev.push(format!(
        "http.body_length={} control={}",
        p.body_length, c.body_length
    ));
    if p.title.is_some() || c.title.is_some() {
        ev.push(format!(
            "http.title=\"{}\" control=\"{}\"",
            short_title(p.title.as_deref()),
            short_title(c.title.as_deref())
        ));
    }
}

fn page_difference(p: &HttpObservation, c: &HttpObservation) -> String {
    let mut s = format!(
        "status {} against {}, {} against {}",
        p.status.unwrap_or_default(),
        c.status.unwrap_or_default(),
        fmt_bytes(p.body_length, p.body_truncated),
        fmt_bytes(c.body_length, c.body_truncated)
    );
    if p.title.is_some() || c.title.is_some() {
        s.push_str(&format!(
            ", title \"{}\" against \"{}\"",
            short_title(p.title.as_deref()),
            short_title(c.title.as_deref())
        ));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// 7. Throttling.

fn throttle_stage(f: &Facts, ctx: &RunContext, ev: &mut Vec<String>) -> Option<Outcome> {
    let b = ctx.baseline?;
    let domain = &f.domain;
    if let Some(ms) = handshake_median(f.m) {
        let limit = THROTTLE_MIN_HANDSHAKE_MS.max(THROTTLE_FACTOR * b.tls_handshake_ms);
        if ms > limit {
            ev.push(format!(
                "throttle.handshake_ms={ms:.0} baseline={:.0}",
                b.tls_handshake_ms
            ));
            return Some(Outcome::blocked(
                Method::Throttle,
                format!(
                    "the TLS handshake with {domain} took {} against {} for other sites in this \
                     run: the connection is throttled",
                    fmt_ms(ms),
                    fmt_ms(b.tls_handshake_ms)
                ),
            ));
        }
    }
    let base = b.throughput_bps?;
    let bps = final_response(&f.m.http).and_then(large_body_throughput)?;
    if bps < base / THROTTLE_FACTOR && bps < THROTTLE_MAX_THROUGHPUT_BPS {
        ev.push(format!(
            "throttle.throughput_bps={bps:.0} baseline={base:.0}"
        ));
        return Some(Outcome::blocked(
            Method::Throttle,
            format!(
                "the page from {domain} downloaded at {} against {} for other sites in this run: \
                 the connection is throttled",
                fmt_rate(bps),
                fmt_rate(base)
            ),
        ));
    }
    None
}

/// Median duration of the target's completed non-decoy handshakes: the figure throttling by
/// SNI inflates.
fn handshake_median(m: &Measurement) -> Option<f64> {
    let domain = norm_host(&m.domain);
    median(
        m.tls
            .iter()
            .filter(|t| !t.decoy && t.failure.is_none() && norm_host(&t.server_name) == domain)
            .map(|t| t.duration_ms)
            .collect(),
    )
}

/// Throughput of a response large enough to measure bandwidth, bytes per second.
fn large_body_throughput(h: &HttpObservation) -> Option<f64> {
    if h.body_length < THROUGHPUT_MIN_BYTES {
        return None;
    }
    let bps = h.throughput_bps.or_else(|| {
        h.body_ms
            .filter(|ms| *ms > 0.0)
            .map(|ms| h.body_length as f64 * 1000.0 / ms)
    })?;
    (bps.is_finite() && bps > 0.0).then_some(bps)
}

// ---------------------------------------------------------------------------------------------
// Small pure helpers.

/// The last hop, when it got a response: the page the user would see.
fn final_response(http: &[HttpObservation]) -> Option<&HttpObservation> {
    http.iter()
        .max_by_key(|h| h.hop)
        .filter(|h| h.failure.is_none() && h.status.is_some())
}

/// Median of the finite values; the mean of the two middle ones for an even count.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// A host name as compared everywhere: lower case, without the root dot.
fn norm_host(s: &str) -> String {
    s.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn url_host(u: &str) -> Option<String> {
    let parsed = url::Url::parse(u).ok()?;
    let host = parsed.host_str()?;
    Some(norm_host(
        host.trim_start_matches('[').trim_end_matches(']'),
    ))
}

/// Same site for redirect purposes: equal, or one is a subdomain of the other (`www.` and
/// `m.` variants), ignoring a leading `www.`.
fn same_site(a: &str, b: &str) -> bool {
    let a = a.strip_prefix("www.").unwrap_or(a);
    let b = b.strip_prefix("www.").unwrap_or(b);
    a == b || a.ends_with(&format!(".{b}")) || b.ends_with(&format!(".{a}"))
}

fn join_addrs(addrs: &[IpAddr]) -> String {
    let mut s = addrs
        .iter()
        .take(MAX_EVIDENCE_ADDRS)
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if addrs.len() > MAX_EVIDENCE_ADDRS {
        s.push_str(",...");
    }
    s
}

fn short_title(t: Option<&str>) -> String {
    let t = t.unwrap_or("").trim();
    let mut s: String = t.chars().take(MAX_TITLE_CHARS).collect();
    if t.chars().count() > MAX_TITLE_CHARS {
        s.push_str("...");
    }
    s.replace('"', "'")
}

fn fmt_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

fn fmt_rate(bps: f64) -> String {
    if bps >= 1e6 {
        format!("{:.1} MB/s", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.0} kB/s", bps / 1e3)
    } else {
        format!("{bps:.0} B/s")
    }
}

fn fmt_bytes(n: u64, truncated: bool) -> String {
    let more = if truncated { "over " } else { "" };
    if n >= 1_000_000 {
        format!("{more}{:.1} MB", n as f64 / 1e6)
    } else if n >= 1000 {
        format!("{more}{:.1} kB", n as f64 / 1e3)
    } else {
        format!("{more}{n} B")
    }
}

/// Keep the first occurrence of each line, in order.
fn dedup(lines: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    lines
        .into_iter()
        .filter(|l| seen.insert(l.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CertificateInfo, ConnectivitySummary, DnsAnswer, ProbeNetwork, Software};
    use chrono::DateTime;
    use ResolverRole::{Control, Network};

    const SITE: &str = "site.kz";
    /// The site's real address (lab range, declared public, so not a bogon).
    const IP: &str = "198.18.0.10";
    /// Another CDN address, handed only to the probe's network.
    const CDN_IP: &str = "198.18.5.5";
    /// A censor's box: proxy, blockpage server or sinkhole.
    const BOX_IP: &str = "198.18.9.9";
    /// A second site that the target redirects to.
    const OTHER_IP: &str = "198.18.7.7";
    const STATE_CA: &str = "Qaznet Trust Network";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip(s), port)
    }

    fn blank(url: &str) -> Measurement {
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
            connectivity: ConnectivitySummary::default(),
            verdict: Verdict::new(Status::Inconclusive, None, "not analysed yet"),
        }
    }

    fn dns_ok(role: ResolverRole, name: &str, ips: &[&str]) -> DnsObservation {
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

    fn dns_fail(role: ResolverRole, name: &str, failure: Failure) -> DnsObservation {
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

    fn tcp(addr: SocketAddr, failure: Option<Failure>) -> TcpObservation {
        TcpObservation {
            addr,
            t_ms: 5.0,
            duration_ms: 20.0,
            failure,
        }
    }

    fn cert(subject: &str, issuer: &str, sha: &str) -> CertificateInfo {
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

    fn tls_ok(addr: SocketAddr, ms: f64) -> TlsObservation {
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

    fn tls_fail(addr: SocketAddr, failure: Failure) -> TlsObservation {
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
    fn tls_unverified(addr: SocketAddr, why: Failure, ca: Option<&str>) -> TlsObservation {
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

    fn decoy(addr: SocketAddr, ok: bool) -> TlsObservation {
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

    fn page(
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
        }
    }

    fn redirect(hop: u32, url: &str, addr: SocketAddr, to: &str) -> HttpObservation {
        HttpObservation {
            location: Some(to.into()),
            ..page(hop, url, addr, 301, 0, "")
        }
    }

    fn hop_fail(
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

    fn control(
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
        }
    }

    fn no_control(m: &mut Measurement) {
        m.control = None;
        m.control_failure = Some("control service timed out".into());
    }

    const HTTPS: &str = "https://site.kz/";
    const HTTP: &str = "http://site.kz/";

    // ---- scenarios: one builder each --------------------------------------------------------

    /// The real site over https, the same from the probe and the control.
    fn accessible_https() -> Measurement {
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
    fn accessible_http() -> Measurement {
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
    fn without_steps_after_dns(mut m: Measurement) -> Measurement {
        m.tcp.clear();
        m.tls.clear();
        m.http.clear();
        m
    }

    fn dns_nxdomain_with_control() -> Measurement {
        let mut m = without_steps_after_dns(accessible_https());
        m.dns = vec![
            dns_fail(Network, SITE, Failure::DnsNxdomain),
            dns_ok(Control, SITE, &[IP]),
        ];
        m
    }

    fn dns_nxdomain_everywhere() -> Measurement {
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

    fn dns_nxdomain_no_control() -> Measurement {
        let mut m = without_steps_after_dns(accessible_https());
        m.dns = vec![dns_fail(Network, SITE, Failure::DnsNxdomain)];
        no_control(&mut m);
        m
    }

    /// The network's resolver is dead for every name in the run: not a targeted block.
    fn dns_timeout_resolver_dead() -> Measurement {
        let mut m = dns_nxdomain_with_control();
        m.dns[0] = dns_fail(Network, SITE, Failure::DnsTimeout);
        m.connectivity.resolver_ok = Some(false);
        m
    }

    fn dns_bogon() -> Measurement {
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
    fn dns_bogon_everywhere() -> Measurement {
        let mut m = dns_bogon();
        m.dns.truncate(1);
        let mut c = dns_ok(Network, SITE, &["127.0.0.2"]);
        c.answers[0].bogon = true;
        m.control = Some(control(vec![c], vec![], vec![], vec![]));
        m
    }

    /// An injected answer raced the real one; the rest works, as the real answer won.
    fn dns_injected() -> Measurement {
        let mut m = accessible_https();
        m.dns[0].late_responses = vec![LateDnsResponse {
            after_ms: 12.0,
            rcode: "NOERROR".into(),
            answers: vec![ip(BOX_IP)],
        }];
        m
    }

    /// A CDN answers differently per vantage point; a verified handshake proves the address.
    fn dns_inconsistent_cdn_verified() -> Measurement {
        let mut m = accessible_https();
        m.dns[0] = dns_ok(Network, SITE, &[CDN_IP]);
        m.tcp = vec![tcp(sa(CDN_IP, 443), None)];
        m.tls = vec![tls_ok(sa(CDN_IP, 443), 35.0)];
        m.http = vec![page(0, HTTPS, sa(CDN_IP, 443), 200, 49_000, "Site news")];
        m
    }

    /// The network resolver points at a box that refuses connections.
    fn dns_inconsistent_failing() -> Measurement {
        let mut m = accessible_https();
        m.dns[0] = dns_ok(Network, SITE, &[BOX_IP]);
        m.tcp = vec![tcp(sa(BOX_IP, 443), Some(Failure::ConnectionRefused))];
        m.tls.clear();
        m.http.clear();
        m
    }

    /// The network resolver points an https site at a blockpage server with its own certificate.
    fn dns_inconsistent_blockpage() -> Measurement {
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
    fn dns_hijack_transparent_proxy() -> Measurement {
        let mut m = accessible_http();
        m.dns[0] = dns_ok(Network, SITE, &[BOX_IP]);
        m.tcp = vec![tcp(sa(BOX_IP, 80), None)];
        m.http = vec![page(0, HTTP, sa(BOX_IP, 80), 200, 49_500, "Site news")];
        m
    }

    fn tcp_blocked() -> Measurement {
        let mut m = accessible_https();
        m.tcp = vec![tcp(sa(IP, 443), Some(Failure::GenericTimeout))];
        m.tls.clear();
        m.http.clear();
        m
    }

    fn tcp_down_everywhere() -> Measurement {
        let mut m = tcp_blocked();
        let c = m.control.as_mut().unwrap();
        c.tcp = vec![tcp(sa(IP, 443), Some(Failure::ConnectionRefused))];
        c.tls.clear();
        c.http.clear();
        m
    }

    fn tcp_failure_control_unavailable() -> Measurement {
        let mut m = tcp_blocked();
        no_control(&mut m);
        m
    }

    /// An IPv6-only site, and a probe without an IPv6 route.
    fn tcp_ipv6_no_route() -> Measurement {
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

    fn tls_reset_with_control() -> Measurement {
        let mut m = accessible_https();
        m.tls = vec![tls_fail(sa(IP, 443), Failure::ConnectionReset)];
        m.http.clear();
        m
    }

    fn tls_timeout_no_control_decoy_ok() -> Measurement {
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

    fn tls_timeout_no_control_no_decoy() -> Measurement {
        let mut m = tls_timeout_no_control_decoy_ok();
        m.tls[1] = decoy(sa(IP, 443), false);
        m
    }

    fn tls_timeout_everywhere() -> Measurement {
        let mut m = accessible_https();
        m.tls = vec![tls_fail(sa(IP, 443), Failure::GenericTimeout)];
        m.http.clear();
        let c = m.control.as_mut().unwrap();
        c.tls = vec![tls_fail(sa(IP, 443), Failure::GenericTimeout)];
        c.http.clear();
        m
    }

    /// The state CA intercepts; the engine still fetches the page over the intercepted link.
    fn mitm_state_ca_with_control() -> Measurement {
        let mut m = accessible_https();
        m.tls = vec![tls_unverified(
            sa(IP, 443),
            Failure::SslUnknownAuthority,
            Some(STATE_CA),
        )];
        m
    }

    fn mitm_state_ca_no_control() -> Measurement {
        let mut m = mitm_state_ca_with_control();
        no_control(&mut m);
        m
    }

    /// One address verifies, another is intercepted by the state CA.
    fn mitm_state_ca_on_one_address() -> Measurement {
        let mut m = mitm_state_ca_with_control();
        m.dns[0] = dns_ok(Network, SITE, &[IP, CDN_IP]);
        m.tcp.push(tcp(sa(CDN_IP, 443), None));
        m.tls.push(tls_ok(sa(CDN_IP, 443), 40.0));
        m
    }

    fn mitm_unverified_vs_control_verified() -> Measurement {
        let mut m = accessible_https();
        m.tls = vec![tls_unverified(
            sa(IP, 443),
            Failure::SslUnknownAuthority,
            None,
        )];
        m
    }

    fn expired_cert_everywhere() -> Measurement {
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

    fn http_reset_after_request() -> Measurement {
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

    fn http_blockpage() -> Measurement {
        let mut m = accessible_http();
        let mut bp = page(0, HTTP, sa(IP, 80), 200, 1_200, "Ресурс заблокирован");
        bp.blockpage = Some("d_corp_kz_ps".into());
        m.http = vec![bp];
        m
    }

    /// A cleartext hop redirects to a blockpage host served over (valid) https.
    fn http_redirect_to_blockpage_server() -> Measurement {
        let mut m = accessible_http();
        let to = "https://blocked.example.kz/";
        let mut bp = page(1, to, sa(BOX_IP, 443), 200, 1_500, "Blocked");
        bp.blockpage = Some("d_corp_kz_ps".into());
        m.http = vec![redirect(0, HTTP, sa(IP, 80), to), bp];
        m
    }

    fn http_page_differs() -> Measurement {
        let mut m = accessible_http();
        m.http = vec![page(0, HTTP, sa(IP, 80), 200, 1_000, "Доступ ограничен")];
        m
    }

    fn http_no_control() -> Measurement {
        let mut m = accessible_http();
        no_control(&mut m);
        m
    }

    fn https_403_verified() -> Measurement {
        let mut m = accessible_https();
        m.http = vec![page(0, HTTPS, sa(IP, 443), 403, 2_000, "Forbidden")];
        m
    }

    /// The site itself shows a notice that matches a blockpage signature, over verified TLS.
    fn https_blockpage_from_site_itself() -> Measurement {
        let mut m = accessible_https();
        m.http[0].blockpage = Some("d_corp_kz_ps".into());
        m
    }

    /// http -> https -> www, all fine, same for the control.
    fn redirect_chain_accessible() -> Measurement {
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
    fn redirect_to_blocked_site() -> Measurement {
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

    fn redirect_to_blocked_site_no_control() -> Measurement {
        let mut m = redirect_to_blocked_site();
        no_control(&mut m);
        m
    }

    fn too_many_redirects_probe_only() -> Measurement {
        let mut m = accessible_http();
        m.http = vec![
            redirect(0, HTTP, sa(IP, 80), "http://site.kz/a"),
            redirect(1, "http://site.kz/a", sa(IP, 80), HTTP),
            hop_fail(2, HTTP, None, Step::Http, Failure::HttpTooManyRedirects),
        ];
        m
    }

    fn too_many_redirects_everywhere() -> Measurement {
        let mut m = too_many_redirects_probe_only();
        m.control.as_mut().unwrap().http = m.http.clone();
        m
    }

    fn throttled_handshake() -> Measurement {
        let mut m = accessible_https();
        m.tls = vec![tls_ok(sa(IP, 443), 4_300.0)];
        m
    }

    /// A large page read up to the body cap, as fast as other sites.
    fn large_fast_page() -> Measurement {
        let mut m = accessible_https();
        let mut p = page(0, HTTPS, sa(IP, 443), 200, 512 * 1024, "Big");
        p.body_truncated = true;
        p.body_ms = Some(200.0);
        p.throughput_bps = Some(512.0 * 1024.0 / 0.2);
        m.http = vec![p];
        m.control.as_mut().unwrap().http = vec![page(0, HTTPS, sa(IP, 443), 200, 3_000_000, "Big")];
        m
    }

    fn throttled_throughput() -> Measurement {
        let mut m = large_fast_page();
        m.http[0].body_ms = Some(8_000.0);
        m.http[0].throughput_bps = Some(512.0 * 1024.0 / 8.0);
        m
    }

    fn offline() -> Measurement {
        let mut m = tcp_blocked();
        m.connectivity.anchors_tried = 4;
        m
    }

    #[derive(Clone, Copy, Debug)]
    enum Ctx {
        Plain,
        Offline,
        Baseline,
    }

    fn ctx(c: Ctx) -> RunContext {
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

    type Case = (
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

    const CASES: &[Case] = cases! {
        accessible_https Plain => Accessible;
        accessible_http Plain => Accessible;
        dns_nxdomain_with_control Plain => Blocked / Dns;
        dns_nxdomain_everywhere Plain => Down;
        dns_nxdomain_no_control Plain => Inconclusive;
        dns_timeout_resolver_dead Plain => Inconclusive;
        dns_bogon Plain => Blocked / Dns;
        dns_bogon_everywhere Plain => Down;
        dns_injected Plain => Blocked / Dns;
        dns_inconsistent_cdn_verified Plain => Accessible;
        dns_inconsistent_failing Plain => Blocked / Dns;
        dns_inconsistent_blockpage Plain => Blocked / Dns;
        dns_hijack_transparent_proxy Plain => Accessible;
        tcp_blocked Plain => Blocked / Tcp;
        tcp_down_everywhere Plain => Down;
        tcp_failure_control_unavailable Plain => Inconclusive;
        tcp_ipv6_no_route Plain => Inconclusive;
        tls_reset_with_control Plain => Blocked / Tls;
        tls_timeout_no_control_decoy_ok Plain => Blocked / Tls;
        tls_timeout_no_control_no_decoy Plain => Inconclusive;
        tls_timeout_everywhere Plain => Down;
        mitm_state_ca_with_control Plain => Blocked / Mitm;
        mitm_state_ca_no_control Plain => Blocked / Mitm;
        mitm_state_ca_on_one_address Plain => Blocked / Mitm;
        mitm_unverified_vs_control_verified Plain => Blocked / Mitm;
        expired_cert_everywhere Plain => Down;
        http_reset_after_request Plain => Blocked / Http;
        http_blockpage Plain => Blocked / Http;
        http_redirect_to_blockpage_server Plain => Blocked / Http;
        http_page_differs Plain => Blocked / Http;
        http_no_control Plain => Accessible;
        https_403_verified Plain => Accessible;
        https_blockpage_from_site_itself Plain => Accessible;
        redirect_chain_accessible Plain => Accessible;
        redirect_to_blocked_site Plain => Blocked / Tls;
        redirect_to_blocked_site_no_control Plain => Inconclusive;
        too_many_redirects_probe_only Plain => Blocked / Http;
        too_many_redirects_everywhere Plain => Down;
        throttled_handshake Baseline => Blocked / Throttle;
        throttled_handshake Plain => Accessible;
        large_fast_page Baseline => Accessible;
        throttled_throughput Baseline => Blocked / Throttle;
        offline Offline => Offline;
    };

    #[test]
    fn scenarios() {
        let mut failures = Vec::new();
        for (name, build, c, status, method) in CASES {
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

    #[test]
    fn every_verdict_is_explained() {
        for (name, build, c, _, _) in CASES {
            let v = decide(&build(), &ctx(*c));
            assert!(!v.reason.trim().is_empty(), "{name}: empty reason");
            assert!(!v.reason.contains('\n'), "{name}: {}", v.reason);
            assert!(
                !v.reason.contains(". "),
                "{name}: more than one sentence: {}",
                v.reason
            );
            assert_eq!(v.method.is_some(), v.status == Status::Blocked, "{name}");
            if v.status == Status::Blocked {
                assert!(!v.evidence.is_empty(), "{name}: blocked without evidence");
            }
        }
    }

    #[test]
    fn the_recorded_verdict_is_ignored() {
        let mut m = tcp_blocked();
        let want = decide(&m, &RunContext::default());
        m.verdict = Verdict::new(Status::Accessible, None, "stale");
        assert_eq!(decide(&m, &RunContext::default()), want);
    }

    fn verdict_of(build: fn() -> Measurement, c: Ctx) -> Verdict {
        decide(&build(), &ctx(c))
    }

    #[test]
    fn reasons_and_evidence_name_what_decided() {
        let v = verdict_of(https_403_verified, Ctx::Plain);
        assert!(
            v.evidence.contains(&"server_side_refusal".to_string()),
            "{v:?}"
        );
        assert!(
            v.reason.contains("the site itself answered 403"),
            "{}",
            v.reason
        );

        let v = verdict_of(throttled_handshake, Ctx::Baseline);
        assert!(
            v.reason.contains("4.3 s") && v.reason.contains("40 ms"),
            "{}",
            v.reason
        );
        assert!(v
            .evidence
            .contains(&"throttle.handshake_ms=4300 baseline=40".to_string()));

        let v = verdict_of(tls_reset_with_control, Ctx::Plain);
        assert!(
            v.reason.contains("reset right after the ClientHello"),
            "{}",
            v.reason
        );
        assert!(v
            .evidence
            .contains(&"tls.failure=connection_reset@198.18.0.10:443".to_string()));

        let v = verdict_of(tls_timeout_no_control_decoy_ok, Ctx::Plain);
        assert!(
            v.evidence
                .contains(&"tls.decoy=ok@198.18.0.10:443".to_string()),
            "{v:?}"
        );
        assert!(v.reason.contains("without the control"), "{}", v.reason);

        let v = verdict_of(mitm_state_ca_no_control, Ctx::Plain);
        assert!(v
            .evidence
            .contains(&format!("tls.interception_ca={STATE_CA}")));
        assert!(v.reason.contains(STATE_CA), "{}", v.reason);

        let v = verdict_of(mitm_unverified_vs_control_verified, Ctx::Plain);
        assert!(
            v.evidence.iter().any(|e| e.starts_with("tls.leaf=f0")),
            "{v:?}"
        );
        assert!(
            v.evidence
                .iter()
                .any(|e| e.starts_with("tls.control.leaf=a1")),
            "{v:?}"
        );

        let v = verdict_of(dns_nxdomain_with_control, Ctx::Plain);
        assert!(
            v.evidence.contains(&"dns.network=nxdomain".to_string()),
            "{v:?}"
        );
        assert!(
            v.evidence
                .contains(&"dns.control_resolver=1 addrs".to_string()),
            "{v:?}"
        );

        let v = verdict_of(dns_inconsistent_blockpage, Ctx::Plain);
        assert!(v.reason.contains("d_corp_kz_ps"), "{}", v.reason);

        let v = verdict_of(http_blockpage, Ctx::Plain);
        assert!(v
            .evidence
            .contains(&"http.blockpage=d_corp_kz_ps".to_string()));

        let v = verdict_of(redirect_to_blocked_site, Ctx::Plain);
        assert!(
            v.reason
                .contains("the redirect to video.example failed during the TLS handshake"),
            "{}",
            v.reason
        );

        for build in [tcp_failure_control_unavailable, dns_nxdomain_no_control] {
            let v = verdict_of(build, Ctx::Plain);
            assert!(
                v.reason.contains("the control was unavailable"),
                "{}",
                v.reason
            );
            assert!(v.evidence.contains(&"control=unavailable".to_string()));
        }

        let v = verdict_of(http_no_control, Ctx::Plain);
        assert!(v.reason.contains("could not be compared"), "{}", v.reason);

        let v = verdict_of(offline, Ctx::Offline);
        assert!(
            v.reason.starts_with("the network looks cut off"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn a_failed_control_counts_as_no_control() {
        // A stale control next to a control failure is not trusted.
        let mut m = tcp_blocked();
        m.control_failure = Some("control service answered 503".into());
        assert_eq!(
            decide(&m, &RunContext::default()).status,
            Status::Inconclusive
        );
    }

    // ---- baseline ---------------------------------------------------------------------------

    fn accessible_with(id: u128, handshakes: &[f64], body: u64, bps: f64) -> Measurement {
        let mut m = accessible_https();
        m.id = Uuid::from_u128(id);
        m.verdict = Verdict::new(Status::Accessible, None, "");
        m.tls = handshakes
            .iter()
            .map(|ms| tls_ok(sa(IP, 443), *ms))
            .collect();
        let mut p = page(0, HTTPS, sa(IP, 443), 200, body, "");
        p.throughput_bps = Some(bps);
        m.http = vec![p];
        m
    }

    #[test]
    fn baseline_needs_three_samples() {
        let mut blocked = accessible_with(3, &[40.0], 100_000, 1e6);
        blocked.verdict = Verdict::new(Status::Blocked, Some(Method::Tls), "");
        let ms = vec![
            accessible_with(1, &[40.0], 100_000, 1e6),
            accessible_with(2, &[50.0], 100_000, 1e6),
            blocked,
            accessible_with(4, &[60.0], 100_000, 1e6),
        ];
        assert!(baseline(&ms, None).is_some());
        assert_eq!(baseline(&ms, Some(Uuid::from_u128(4))), None);
        assert_eq!(baseline(&ms[..2], None), None);
        assert_eq!(baseline(&[], None), None);
    }

    #[test]
    fn baseline_medians() {
        let ms = vec![
            // One site with many addresses counts once, by its own median (10).
            accessible_with(1, &[10.0, 10.0, 900.0], 100_000, 4e6),
            accessible_with(2, &[30.0], 100_000, 1e6),
            accessible_with(3, &[20.0], 1_000, 5.0),
            accessible_with(4, &[1000.0], 100_000, 2e6),
        ];
        let b = baseline(&ms, None).unwrap();
        assert_eq!(b.samples, 4);
        assert_eq!(b.tls_handshake_ms, 25.0);
        // The small response (1 kB) does not count for throughput.
        assert_eq!(b.throughput_bps, Some(2e6));

        let b = baseline(&ms, Some(Uuid::from_u128(4))).unwrap();
        assert_eq!(b.tls_handshake_ms, 20.0);
        // Two large responses left: too few for a throughput baseline.
        assert_eq!(b.throughput_bps, None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 7.0]), Some(7.0));
        assert_eq!(median(vec![]), None);
    }

    // ---- page similarity --------------------------------------------------------------------

    #[test]
    fn page_similarity() {
        let a = page(0, HTTP, sa(IP, 80), 200, 10_000, "News");
        let short = page(0, HTTP, sa(IP, 80), 200, 6_000, "");
        let short_same_title = page(0, HTTP, sa(IP, 80), 200, 6_000, "News");
        let created = page(0, HTTP, sa(IP, 80), 201, 9_000, "");
        let forbidden = page(0, HTTP, sa(IP, 80), 403, 10_000, "News");
        assert!(pages_similar(&a, &a));
        assert!(!pages_similar(&a, &short));
        assert!(pages_similar(&a, &short_same_title));
        assert!(pages_similar(&a, &created), "2xx are alike");
        assert!(!pages_similar(&a, &forbidden));
        // Same size, another title: a rewrite or a notice, not the page.
        let notice = page(0, HTTP, sa(IP, 80), 200, 10_000, "Notice");
        assert!(!pages_similar(&a, &notice));

        // A body truncated at the cap is at least that long.
        let mut capped = page(0, HTTP, sa(IP, 80), 200, 512 * 1024, "");
        capped.body_truncated = true;
        let huge = page(0, HTTP, sa(IP, 80), 200, 5_000_000, "");
        let small = page(0, HTTP, sa(IP, 80), 200, 100_000, "");
        assert!(pages_similar(&capped, &huge));
        assert!(pages_similar(&huge, &capped));
        assert!(!pages_similar(&capped, &small));
    }

    #[test]
    fn same_site_for_redirects() {
        assert!(same_site("www.site.kz", "site.kz"));
        assert!(same_site("m.site.kz", "www.site.kz"));
        assert!(!same_site("blocked.example.kz", "site.kz"));
        assert!(!same_site("notsite.kz", "site.kz"));
    }
}
