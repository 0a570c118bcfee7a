//! The facts every stage reads: one measurement's observations sorted out once ([`Facts`]),
//! what a stage decides ([`Outcome`]), and the small pure helpers the stages share (host names,
//! medians, how figures are written in a reason).
//!
//! It depends on the model alone, so every stage can use it without depending on another.

use std::net::IpAddr;

use crate::failure::Failure;
use crate::model::{
    AbObservation, ControlResponse, DnsObservation, HttpObservation, HttpRole, Measurement, Method,
    ResolverRole, Status, Step, TcpObservation, TlsObservation,
};

/// Most per-address lines of one kind in the evidence: enough to show the pattern, bounded for
/// names with many addresses.
pub(super) const MAX_EVIDENCE_ADDRS: usize = 4;

/// Longest page title quoted in evidence or a reason.
const MAX_TITLE_CHARS: usize = 60;

/// The observations attributed to the target name, sorted out once so every rule reads the
/// same view. Observations of other names (a redirect's host) are left to the HTTP rules.
pub(super) struct Facts<'a> {
    pub(super) m: &'a Measurement,
    /// The target host, lower case, without a trailing dot.
    pub(super) domain: String,
    pub(super) https: bool,
    /// The URL's port, to tell the target's connects from a redirect's.
    pub(super) port: Option<u16>,
    /// The control service's answer, when it answered.
    pub(super) control: Option<&'a ControlResponse>,
    /// The network resolver's queries for the target.
    pub(super) net_dns: Vec<&'a DnsObservation>,
    /// The control service's own resolver queries for the target.
    pub(super) svc_dns: Vec<&'a DnsObservation>,
    /// The probe's encrypted control resolver (DoH/DoT) queries for the target.
    pub(super) doh_dns: Vec<&'a DnsObservation>,
    pub(super) net_addrs: Vec<IpAddr>,
    /// Addresses from the control service and the encrypted resolver together.
    pub(super) ctl_addrs: Vec<IpAddr>,
    /// Non-decoy handshakes with the target's name.
    pub(super) tls: Vec<&'a TlsObservation>,
    pub(super) decoys: Vec<&'a TlsObservation>,
    /// The control's non-decoy handshakes with the target's name.
    pub(super) ctl_tls: Vec<&'a TlsObservation>,
    /// HTTP hops of the page itself, in hop order.
    pub(super) hops: Vec<&'a HttpObservation>,
    /// Decoy-Host requests ([`HttpRole::DecoyHost`]).
    pub(super) decoy_hosts: Vec<&'a HttpObservation>,
    /// The site's own HTTPS page and its redirects ([`HttpRole::HttpsWitness`]), in hop order.
    pub(super) witness: Vec<&'a HttpObservation>,
    /// The page fetched from the encrypted resolver's addresses ([`HttpRole::ControlAddress`]),
    /// in hop order: made only when the network's addresses had none in common with them.
    pub(super) second: Vec<&'a HttpObservation>,
    /// The A/B tests of the target's name (see [`crate::checks::ab`]).
    pub(super) ab: Vec<&'a AbObservation>,
    /// The addresses that second fetch connected to (the control's, not the network's): their
    /// connects and handshakes are not the target's.
    pub(super) second_ips: Vec<IpAddr>,
}
impl<'a> Facts<'a> {
    pub(super) fn new(m: &'a Measurement) -> Self {
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
        let ab =
            m.ab.iter()
                .filter(|o| norm_host(&o.name) == domain)
                .collect();
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
            ab,
            second,
            second_ips,
        }
    }

    /// Whether the target's deadline cut the measurement while this step was running: the
    /// step's observations are then incomplete, so its stage must not judge them.
    pub(super) fn cut_by_deadline(&self, step: Step) -> bool {
        self.hops
            .iter()
            .any(|h| h.failure == Some(Failure::DeadlineExceeded) && h.failed_step == Some(step))
    }

    /// Every control-side DNS observation: the control service's and the encrypted resolver's.
    pub(super) fn ctl_dns(&self) -> impl Iterator<Item = &'a DnsObservation> + '_ {
        self.svc_dns.iter().chain(&self.doh_dns).copied()
    }

    /// The target's connects: the URL's port, and the target's addresses when any are known.
    pub(super) fn target_tcp<'b>(&self, tcp: &'b [TcpObservation]) -> Vec<&'b TcpObservation> {
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
pub(super) struct Outcome {
    pub(super) status: Status,
    pub(super) method: Option<Method>,
    pub(super) reason: String,
}

impl Outcome {
    pub(super) fn new(status: Status, method: Option<Method>, reason: impl Into<String>) -> Self {
        Outcome {
            status,
            method,
            reason: reason.into(),
        }
    }
    pub(super) fn blocked(method: Method, reason: impl Into<String>) -> Self {
        Self::new(Status::Blocked, Some(method), reason)
    }
    pub(super) fn down(reason: impl Into<String>) -> Self {
        Self::new(Status::Down, None, reason)
    }
    pub(super) fn inconclusive(reason: impl Into<String>) -> Self {
        Self::new(Status::Inconclusive, None, reason)
    }
    pub(super) fn accessible(reason: impl Into<String>) -> Self {
        Self::new(Status::Accessible, None, reason)
    }
}

// ---------------------------------------------------------------------------------------------
// Small pure helpers shared by the stages.

/// The last hop of the page itself, when it got a response: the page the user would see.
pub(super) fn final_response(http: &[HttpObservation]) -> Option<&HttpObservation> {
    http.iter()
        .filter(|h| h.role == HttpRole::Page)
        .max_by_key(|h| h.hop)
        .filter(|h| h.failure.is_none() && h.status.is_some())
}

/// Median of the finite values; the mean of the two middle ones for an even count.
pub(super) fn median(mut values: Vec<f64>) -> Option<f64> {
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
pub(super) fn norm_host(s: &str) -> String {
    s.trim().trim_end_matches('.').to_ascii_lowercase()
}

pub(super) fn url_host(u: &str) -> Option<String> {
    let parsed = url::Url::parse(u).ok()?;
    let host = parsed.host_str()?;
    Some(norm_host(
        host.trim_start_matches('[').trim_end_matches(']'),
    ))
}

/// Same site for redirect purposes: equal, or one is a subdomain of the other (`www.` and
/// `m.` variants), ignoring a leading `www.`.
pub(super) fn same_site(a: &str, b: &str) -> bool {
    let a = a.strip_prefix("www.").unwrap_or(a);
    let b = b.strip_prefix("www.").unwrap_or(b);
    a == b || a.ends_with(&format!(".{b}")) || b.ends_with(&format!(".{a}"))
}

pub(super) fn join_addrs(addrs: &[IpAddr]) -> String {
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

pub(super) fn short_title(t: Option<&str>) -> String {
    let t = t.unwrap_or("").trim();
    let mut s: String = t.chars().take(MAX_TITLE_CHARS).collect();
    if t.chars().count() > MAX_TITLE_CHARS {
        s.push_str("...");
    }
    s.replace('"', "'")
}

pub(super) fn fmt_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

pub(super) fn fmt_rate(bps: f64) -> String {
    if bps >= 1e6 {
        format!("{:.1} MB/s", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.0} kB/s", bps / 1e3)
    } else {
        format!("{bps:.0} B/s")
    }
}

pub(super) fn fmt_bytes(n: u64, truncated: bool) -> String {
    let more = if truncated { "over " } else { "" };
    if n >= 1_000_000 {
        format!("{more}{:.1} MB", n as f64 / 1e6)
    } else if n >= 1000 {
        format!("{more}{:.1} kB", n as f64 / 1e3)
    } else {
        format!("{more}{n} B")
    }
}

/// Distinct addresses of successful queries, in answer order.
pub(super) fn addrs_of(obs: &[&DnsObservation]) -> Vec<IpAddr> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
