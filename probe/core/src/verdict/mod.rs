//! The verdict: a pure function from one measurement's observations, and the control's, to
//! accessible, blocked (and how), down, offline or inconclusive.
//!
//! No I/O and no clock, so every rule is table-tested and the collector can re-run it on stored
//! records. One module per stage, run in a fixed order by [`decide`]: [`offline`], [`dns`],
//! [`tcp`], [`tls`], [`http`], then [`throttle`] (against the [`baseline`]); the first stage
//! that decides wins. Every fact a rule cites is an [`Evidence`] value, spelled as a
//! `key=value` line in the JSON. `docs/verdicts.md` documents the procedure, the thresholds and
//! how it differs from OONI's Web Connectivity: keep the two in step.
//!
//! Two principles run through every rule: a plain failure is never called a block without a
//! comparison (the control service, or the encrypted control resolver for DNS), and local
//! evidence that cannot be innocent (an injected DNS answer, a bogon, a state CA, a blockpage, a
//! decoy handshake that works where the real one is cut) is enough on its own.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::failure::Failure;
use crate::model::{
    ControlResponse, DnsObservation, HttpObservation, HttpRole, Measurement, Method, ResolverRole,
    Status, Step, TcpObservation, TlsObservation, Verdict,
};

pub mod baseline;
pub mod dns;
pub mod evidence;
pub mod http;
pub mod offline;
pub mod tcp;
#[cfg(test)]
mod testkit;
pub mod throttle;
pub mod tls;

use dns::addrs_of;

pub use baseline::{baseline, Baseline, Samples, BASELINE_MIN_SAMPLES, THROUGHPUT_MIN_BYTES};
pub use evidence::Evidence;
pub use http::{pages_similar, BODY_LENGTH_RATIO};
pub use throttle::{THROTTLE_FACTOR, THROTTLE_MAX_THROUGHPUT_BPS, THROTTLE_MIN_HANDSHAKE_MS};

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
    /// This probe's own speed for unblocked sites in the same run.
    pub baseline: Option<Baseline>,
}

/// The verdict for one measurement. `m.verdict` is ignored; `m.control` is used only when
/// `m.control_failure` is `None`. Called once per target, after the run's baseline is known.
pub fn decide(m: &Measurement, ctx: &RunContext) -> Verdict {
    let f = Facts::new(m);
    let mut ev = Vec::new();
    if f.control.is_none() {
        ev.push(Evidence::ControlUnavailable);
    }
    let staged = offline::stage(&f, ctx, &mut ev)
        .or_else(|| dns::stage(&f, &mut ev))
        .or_else(|| tcp::stage(&f, &mut ev))
        .or_else(|| tls::stage(&f, &mut ev));
    let mut outcome = match staged {
        Some(o) => o,
        None => http::stage(&f, &mut ev),
    };
    if outcome.status == Status::Accessible {
        if let Some(throttled) = throttle::stage(&f, ctx, &mut ev) {
            outcome = throttled;
        }
    }
    if outcome.status == Status::Blocked {
        if let Some(e) = path_evidence(m) {
            ev.push(e);
        }
    }
    Verdict {
        status: outcome.status,
        method: outcome.method,
        reason: outcome.reason,
        evidence: evidence_lines(ev),
    }
}

/// `censor at hop N`, when the record's localisation named a hop.
fn path_evidence(m: &Measurement) -> Option<Evidence> {
    let p = m.path.as_ref()?;
    Some(Evidence::CensorAtHop {
        hop: p.censor_hop?,
        asn: p.censor_asn(),
    })
}

/// Add the localisation's evidence line to a decided blocked verdict, as [`decide`] would cite
/// it: the localisation runs after the verdict and never changes anything else.
pub fn add_path_evidence(m: &mut Measurement) {
    if m.verdict.status != Status::Blocked {
        return;
    }
    if let Some(line) = path_evidence(m).map(|e| e.to_string()) {
        if !m.verdict.evidence.contains(&line) {
            m.verdict.evidence.push(line);
        }
    }
}

/// The JSON form of the evidence: one line per fact, each once, in the order the rules cited
/// them.
fn evidence_lines(ev: Vec<Evidence>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    ev.into_iter()
        .map(|e| e.to_string())
        .filter(|l| seen.insert(l.clone()))
        .collect()
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
    /// HTTP hops of the page itself, in hop order.
    hops: Vec<&'a HttpObservation>,
    /// Decoy-Host requests ([`HttpRole::DecoyHost`]).
    decoy_hosts: Vec<&'a HttpObservation>,
    /// The site's own HTTPS page and its redirects ([`HttpRole::HttpsWitness`]), in hop order.
    witness: Vec<&'a HttpObservation>,
    /// The page fetched from the encrypted resolver's addresses ([`HttpRole::ControlAddress`]),
    /// in hop order: made only when the network's addresses had none in common with them.
    second: Vec<&'a HttpObservation>,
    /// The addresses that second fetch connected to (the control's, not the network's): their
    /// connects and handshakes are not the target's.
    second_ips: Vec<IpAddr>,
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
        let role = |r: HttpRole| {
            let mut hops: Vec<_> = m.http.iter().filter(|h| h.role == r).collect();
            hops.sort_by_key(|h| h.hop);
            hops
        };
        let second = role(HttpRole::ControlAddress);
        let second_ips: Vec<IpAddr> = if second.is_empty() {
            Vec::new()
        } else {
            ctl_addrs
                .iter()
                .filter(|a| !net_addrs.contains(a))
                .copied()
                .collect()
        };
        let tls = m
            .tls
            .iter()
            .filter(real_tls)
            .filter(|t| !second_ips.contains(&t.addr.ip()))
            .collect();
        let decoys = m.tls.iter().filter(|t| t.decoy).collect();
        let ctl_tls = control
            .map(|c| c.tls.iter().filter(real_tls).collect())
            .unwrap_or_default();
        let hops = role(HttpRole::Page);
        let decoy_hosts = role(HttpRole::DecoyHost);
        let witness = role(HttpRole::HttpsWitness);
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
            decoy_hosts,
            witness,
            second,
            second_ips,
        }
    }

    /// Whether the target's deadline cut the measurement while this step was running: the
    /// step's observations are then incomplete, so its stage must not judge them.
    fn cut_by_deadline(&self, step: Step) -> bool {
        self.hops
            .iter()
            .any(|h| h.failure == Some(Failure::DeadlineExceeded) && h.failed_step == Some(step))
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
// Small pure helpers shared by the stages.

/// The last hop of the page itself, when it got a response: the page the user would see.
fn final_response(http: &[HttpObservation]) -> Option<&HttpObservation> {
    http.iter()
        .filter(|h| h.role == HttpRole::Page)
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

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;

    /// Every scenario of every stage, each decided in full: the rules hang together.
    #[test]
    fn every_verdict_is_explained() {
        for (name, build, c, _, _) in all_cases() {
            let v = decide(&build(), &ctx(c));
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
            let mut lines = v.evidence.clone();
            lines.sort();
            lines.dedup();
            assert_eq!(lines.len(), v.evidence.len(), "{name}: repeated evidence");
        }
    }

    #[test]
    fn the_recorded_verdict_is_ignored() {
        let mut m = tcp_blocked();
        let want = decide(&m, &RunContext::default());
        m.verdict = Verdict::new(Status::Accessible, None, "stale");
        assert_eq!(decide(&m, &RunContext::default()), want);
    }

    #[test]
    fn the_censor_hop_is_cited_and_changes_nothing_else() {
        use crate::model::{PathAction, PathObservation, PathTrigger};
        let mut m = tcp_blocked();
        let before = decide(&m, &RunContext::default());
        assert_eq!(before.status, Status::Blocked);
        let mut path = PathObservation {
            trigger: PathTrigger::Syn,
            addr: "198.51.100.7:443".parse().unwrap(),
            action: PathAction::Reset,
            censor_hop: Some(3),
            unlocated: None,
            hops: vec![],
            max_ttl: 16,
            probes: 16,
            t_ms: 0.0,
            duration_ms: 0.0,
        };
        m.path = Some(path.clone());
        let after = decide(&m, &RunContext::default());
        assert_eq!((after.status, after.method), (before.status, before.method));
        assert_eq!(after.reason, before.reason);
        assert_eq!(after.evidence.last().unwrap(), "path.censor_hop=3");
        assert_eq!(
            after.evidence[..after.evidence.len() - 1],
            before.evidence[..]
        );
        // The engine's late addition reads the same, once.
        m.verdict = before.clone();
        add_path_evidence(&mut m);
        add_path_evidence(&mut m);
        assert_eq!(m.verdict, after);
        // No hop named: no line. Not blocked: no line.
        path.censor_hop = None;
        m.path = Some(path);
        assert_eq!(decide(&m, &RunContext::default()), before);
        let mut ok = accessible_https();
        ok.path = m.path.clone();
        ok.path.as_mut().unwrap().censor_hop = Some(2);
        let v = decide(&ok, &RunContext::default());
        assert!(!v.evidence.iter().any(|l| l.starts_with("path.")), "{v:?}");
    }

    #[test]
    fn a_failed_control_counts_as_no_control() {
        // A stale control next to a control failure is not trusted.
        let mut m = tcp_blocked();
        m.control_failure = Some("control service answered 503".into());
        let v = decide(&m, &RunContext::default());
        assert_eq!(v.status, Status::Inconclusive);
        assert!(v.evidence.contains(&"control=unavailable".to_string()));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 7.0]), Some(7.0));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn same_site_for_redirects() {
        assert!(same_site("www.site.kz", "site.kz"));
        assert!(same_site("m.site.kz", "www.site.kz"));
        assert!(!same_site("blocked.example.kz", "site.kz"));
        assert!(!same_site("notsite.kz", "site.kz"));
    }
}
