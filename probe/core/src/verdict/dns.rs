//! Stage 2, DNS: the network resolver's answers against the control's, and answers that
//! cannot be honest whatever the control says (injected, bogon).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use crate::failure::Failure;
use crate::model::{DnsObservation, LateDnsResponse, Method, QueryType};

use super::evidence::{DnsResult, DnsSource};
use super::http::pages_similar;
use super::{final_response, join_addrs, Evidence, Facts, Outcome, MAX_EVIDENCE_ADDRS};

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

pub(super) fn stage(f: &Facts, ev: &mut Vec<Evidence>) -> Option<Outcome> {
    if f.net_dns.is_empty() {
        // An IP-literal URL, or DNS not measured: nothing to judge here.
        return None;
    }
    ev.push(dns_summary(DnsSource::Network, &f.net_dns));
    if !f.svc_dns.is_empty() {
        ev.push(dns_summary(DnsSource::ControlService, &f.svc_dns));
    }
    if !f.doh_dns.is_empty() {
        ev.push(dns_summary(DnsSource::ControlResolver, &f.doh_dns));
    }
    let domain = &f.domain;

    // Injection: two different answers to one query cannot both be honest.
    let injected = injected_answers(&f.net_dns);
    if let Some((first, late)) = injected.first() {
        for (o, l) in injected.iter().take(MAX_EVIDENCE_ADDRS) {
            ev.push(injected_evidence(o, l));
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
        ev.push(Evidence::DnsBogon(bogons.clone()));
        let ctl_answers: Vec<_> = f
            .ctl_dns()
            .filter(|o| o.failure.is_none())
            .flat_map(|o| &o.answers)
            .collect();
        if !ctl_answers.is_empty() && ctl_answers.iter().all(|a| a.bogon) {
            ev.push(Evidence::DnsControlBogonAll);
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
            ev.push(Evidence::DnsConsistentByTls(addr));
            None
        }
        DnsConsistency::ProvenByPage => {
            ev.push(Evidence::DnsConsistentByPage);
            None
        }
        DnsConsistency::Inconsistent => {
            ev.push(Evidence::DnsInconsistent {
                network: f.net_addrs.clone(),
                control: f.ctl_addrs.clone(),
            });
            let blockpage = f.hops.iter().find_map(|h| h.blockpage.as_deref());
            if let Some(bp) = blockpage {
                ev.push(Evidence::Blockpage(bp.to_string()));
            }
            for t in f.tls.iter().take(MAX_EVIDENCE_ADDRS) {
                if let Some(ca) = &t.interception_ca {
                    ev.push(Evidence::InterceptionCa(ca.clone()));
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
fn dns_failure(f: &Facts, ev: &mut Vec<Evidence>) -> Outcome {
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
        ev.push(Evidence::ResolverDead);
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
pub(super) fn injected_answers<'a>(
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

/// The evidence of an injected answer: the first and the late one.
pub(super) fn injected_evidence(o: &DnsObservation, l: &LateDnsResponse) -> Evidence {
    Evidence::DnsInjected {
        first: first_answer_text(o),
        late: late_answer_text(l),
        after_ms: l.after_ms,
    }
}

/// How many addresses the queries resolved, else the failure (`nxdomain`, `timeout`, ...).
fn dns_summary(source: DnsSource, obs: &[&DnsObservation]) -> Evidence {
    let addrs = addrs_of(obs);
    if !addrs.is_empty() {
        return Evidence::Dns(source, DnsResult::Addrs(addrs.len()));
    }
    let failure = obs
        .iter()
        .find_map(|o| o.failure.as_ref())
        .map(|f| f.name().trim_start_matches("dns_").to_string())
        .unwrap_or_else(|| "no_answer".to_string());
    Evidence::Dns(source, DnsResult::Failed(failure))
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
pub(super) mod tests {
    use super::super::testkit::*;
    use crate::model::{Measurement, Method, Status};

    pub(in crate::verdict) const CASES: &[Case] = cases! {
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
    };

    #[test]
    fn table() {
        check(CASES);
    }

    #[test]
    fn reasons_and_evidence() {
        let v = verdict_of(dns_nxdomain_with_control, Ctx::Plain);
        assert!(cites(&v, "dns.network=nxdomain"), "{v:?}");
        assert!(cites(&v, "dns.control_resolver=1 addrs"), "{v:?}");

        let v = verdict_of(dns_inconsistent_blockpage, Ctx::Plain);
        assert!(v.reason.contains("d_corp_kz_ps"), "{}", v.reason);

        let v = verdict_of(dns_nxdomain_no_control, Ctx::Plain);
        assert!(
            v.reason.contains("the control was unavailable"),
            "{}",
            v.reason
        );
        assert!(cites(&v, "control=unavailable"));

        let v = verdict_of(dns_injected, Ctx::Plain);
        assert!(
            v.evidence
                .iter()
                .any(|e| e.starts_with("dns.injected=first:")),
            "{v:?}"
        );
        let v = verdict_of(dns_hijack_transparent_proxy, Ctx::Plain);
        assert!(cites(&v, "dns.consistent=same_page"), "{v:?}");
    }
}
